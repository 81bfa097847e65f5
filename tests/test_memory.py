"""Train-step memory (sv_jax.costs, profiling.xla_memory): state split by pytree, XLA's per-device temporaries, the
CPU's missing peak, the command line."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from configs import tiny
from sv_jax import costs as memory
from sv_jax import models
from sv_jax import programs as programs_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


def _config(optimizer: str = "sgd"):
    config = tiny.get_config()
    config.optim.name = optimizer
    config.optim.momentum = 0.9
    return config


@pytest.fixture(scope="module")
def sgd_report():
    return memory.memory_report(_config("sgd"), batch_size=8, devices=jax.devices()[:1])


def test_params_bytes_are_four_per_float32_parameter(sgd_report):
    state = programs_lib.lower_programs(_config(), 8, memory.default_num_classes(_config()), jax.devices()[:1]).state
    assert sgd_report.params_bytes == 4 * models.count_params(state.params)
    assert sgd_report.batch_stats_bytes == 4 * models.count_params(state.batch_stats)
    assert sgd_report.model == "ResNet" and sgd_report.batch_size == 8 and sgd_report.devices == 1


def test_optimizer_state_is_one_trace_for_sgd_and_two_moments_for_adam(sgd_report):
    adam = memory.memory_report(_config("adam"), batch_size=8, devices=jax.devices()[:1])
    # Besides the per-parameter buffers, only step counters (a few scalars) are kept.
    assert 0 <= sgd_report.optimizer_state_bytes - sgd_report.params_bytes <= 64
    assert 0 <= adam.optimizer_state_bytes - 2 * adam.params_bytes <= 64
    # The compiled step's arguments are the whole state plus the batch (f32 feats, i32 labels).
    state_bytes = sgd_report.params_bytes + sgd_report.batch_stats_bytes + sgd_report.optimizer_state_bytes
    batch_bytes = 8 * 50 * 24 * 4 + 8 * 4
    assert sgd_report.argument_bytes == pytest.approx(state_bytes + batch_bytes, abs=64)
    # The state is donated: the new state is written in place of the old.
    assert sgd_report.alias_bytes == pytest.approx(state_bytes, abs=64)


def test_activation_bytes_grow_with_batch_and_split_over_devices(sgd_report):
    big = memory.memory_report(_config(), batch_size=32, devices=jax.devices()[:1])
    assert big.activation_bytes > 2 * sgd_report.activation_bytes
    assert big.params_bytes == sgd_report.params_bytes
    # Four devices: each holds the whole (replicated) state and a quarter of the batch's activations.
    split = memory.memory_report(_config(), batch_size=32, devices=jax.devices())
    assert split.devices == 4 and split.params_bytes == big.params_bytes
    assert split.activation_bytes < big.activation_bytes / 2
    assert split.argument_bytes < big.argument_bytes


def test_from_compiled_reads_the_same_numbers(sgd_report):
    programs = programs_lib.lower_programs(_config(), 8, memory.default_num_classes(_config()), jax.devices()[:1])
    report = memory.step_memory(programs.train_step.compile(), programs.state, batch_size=8, model="ResNet")
    assert report == sgd_report


def test_peak_in_use_is_none_with_a_reason_on_cpu(sgd_report):
    assert sgd_report.platform == "cpu"
    assert sgd_report.peak_bytes_in_use is None
    assert sgd_report.peak_bytes_in_use_source.startswith("unavailable")
    # The step a GPU runs to measure its peak also runs here (on zeros, data-parallel), only the reading is None.
    ran = memory.memory_report(_config(), batch_size=8, devices=jax.devices(), run_step=True)
    assert ran.peak_bytes_in_use is None and ran.activation_bytes > 0


def test_cli_prints_json():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    out = subprocess.run([sys.executable, "-m", "profiling.study.memory", "--config=configs/tiny.py", "--json"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("params_bytes", "optimizer_state_bytes", "activation_bytes", "argument_bytes", "output_bytes",
                "peak_bytes_in_use", "peak_bytes_in_use_source"):
        assert key in record
    assert record["params_bytes"] > 0 and record["activation_bytes"] > 0
