"""Inference cost per utterance length (profiling/study/inference_cost.py): counted FLOPs that grow with the audio,
times, Joules from a sensor (a fake one here) and none without, and the command on an imported workdir."""

import subprocess
import sys
import time
import pathlib

import jax
import numpy as np
import pytest

from configs import tiny
from profiling import energy as energy_lib
from profiling.sensors import FakeSensor
from profiling.study import inference_cost
from sv_jax import models

REPO = pathlib.Path(__file__).resolve().parents[1]


def _variables(config):
    model = models.create_model(config.model, num_classes=1)
    init = jax.jit(lambda: model.backbone.init(jax.random.key(0), np.zeros((1, 50, 24), np.float32)))()
    return {"params": {"backbone": init["params"]}, "batch_stats": {"backbone": init["batch_stats"]}}


def test_flops_grow_with_the_audio_and_joules_come_from_the_sensor():
    config = tiny.get_config()
    monitor = energy_lib.EnergyMonitor([FakeSensor({"package-0": 40.0}, time.monotonic, device="cpu")],
                                       clock=time.monotonic, background=False)
    rows = inference_cost.measure(config, _variables(config), seconds=(1.0, 4.0), repeats=2, block_s=0.05,
                                  monitor=monitor, energy_windows=2, window_s=0.1, cooldown_s=0.0)
    short, long = rows
    assert (short.frames, long.frames) == (98, 398)  # 25 ms frames every 10 ms, snip_edges
    for row in rows:
        assert row.flops >= 0.9 * 2 * row.analytic_macs and row.flops_source.startswith("xla")
        assert row.s_per_utt > 0 and len(row.block_s_per_utt) == 2
        assert row.real_time_factor == pytest.approx(row.s_per_utt / row.audio_s)
        # 40 W for the seconds each call took inside the energy windows.
        assert row.j_per_utt == pytest.approx(40.0 * row.energy_window_s_per_utt, rel=1e-3)
        assert row.energy_unavailable is None and row.j_per_audio_s == pytest.approx(row.j_per_utt / row.audio_s)
    assert 3.0 < long.flops / short.flops < 4.5  # linear in frames, and a fixed part (the embedding layer)
    assert long.gflop_per_audio_s == pytest.approx(long.flops / 1e9 / 4.0)
    monitor.close()


def test_without_a_sensor_energy_is_unavailable_with_the_reason():
    config = tiny.get_config()
    monitor = energy_lib.EnergyMonitor([FakeSensor({"gpu0": 1.0}, time.monotonic, failing=True)],
                                       clock=time.monotonic, background=False)
    (row,) = inference_cost.measure(config, _variables(config), seconds=(1.0,), repeats=1, block_s=0.01,
                                    monitor=monitor, energy_windows=1, window_s=0.05, cooldown_s=0.0)
    assert row.j_per_utt is None and row.energy_unavailable
    monitor.close()
    assert "| 1 | 98 |" in inference_cost.markdown([row]) and "n/a" in inference_cost.markdown([row])


def test_the_command_prints_the_table_and_names_the_weights():
    result = subprocess.run([sys.executable, "-m", "profiling.study.inference_cost", "--config=configs/tiny.py",
                             "--seconds=1,2", "--repeats=1", "--block_s=0.01"], cwd=REPO, capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stderr
    assert "initial (random) weights" in result.stdout and "| 2 | 198 |" in result.stdout
    bad = subprocess.run([sys.executable, "-m", "profiling.study.inference_cost", "--config=configs/tiny.py",
                          "--seconds=two"], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "--seconds=two" in bad.stderr and "Traceback" not in bad.stderr
