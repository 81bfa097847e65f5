"""Profiling inside a training run: FLOPs, memory, energy windows (a fake sensor), carbon, traces, a sensor failing
mid-run, and the 'unavailable' path when a machine has no sensor."""

import dataclasses
import json
import pathlib
import subprocess
import sys
import time

import pytest

import jax

from configs import tiny
from profiling import energy, xla_cost
from sv_jax import data_sources
from sv_jax import run_profiler
from sv_jax import train

POWER_W = 100.0


class EdgeClock:
    """Real time for the monitor; the fake sensor reads the time of the monitor's last reading, so that a window's
    energy is exactly POWER_W x its seconds however loaded the machine is (reading two clocks apart was off by up to
    0.2% on a busy 2-core VM)."""

    def __init__(self):
        self.last = time.monotonic()

    def __call__(self):
        self.last = time.monotonic()
        return self.last

    def sensor_clock(self):
        return self.last


def _monitor_with(sensor_factory, monitor_class=None):
    """A stand-in for energy.EnergyMonitor(**kwargs) over one fake sensor sharing an EdgeClock with the monitor."""
    monitor_class = monitor_class or energy.EnergyMonitor

    def create(sensors=None, **kwargs):  # the fake sensor replaces any sensors asked for
        clock = EdgeClock()
        return monitor_class([sensor_factory(clock.sensor_clock)], clock=clock, **kwargs)
    return create


def test_run_with_a_sensor_reports_flops_energy_carbon_and_traces(corpus_root, tmp_path, monkeypatch):
    monkeypatch.setattr(energy, "EnergyMonitor", _monitor_with(lambda clock: energy.FakeSensor({"gpu0": POWER_W}, clock)))
    config = tiny.get_config()
    config.data.synthetic.root = str(corpus_root)
    config.profile.enabled = True
    config.profile.update(skip_steps=2, window_steps=3, idle_seconds=0.2, trace_steps=(6, 7))
    workdir = tmp_path / "run"

    profile = train.train_and_evaluate(config, str(workdir))["profile"]

    assert profile["train_step_flops_per_utt"] > 2.5 * profile["forward_flops_per_utt"] > 0
    assert profile["forward_flops_per_utt_analytic"] > 0 and profile["memory"]["params_bytes"] > 0
    windows = [json.loads(line) for line in (workdir / "energy.jsonl").read_text().splitlines()]
    # Steps 1-2 compile and warm up; 6-7 are traced: windows cover 3-5 and 8-10, then 11-12 at the end.
    assert [(w["step_start"], w["step_end"]) for w in windows] == [(3, 5), (8, 10), (11, 12)]
    for w in windows:
        assert w["energy_j"] == pytest.approx(POWER_W * w["seconds"], rel=1e-6)
        assert w["j_per_utt"] == pytest.approx(w["energy_j"] / (w["steps"] * config.data.batch_size))
        assert w["gpu_w"] == pytest.approx(POWER_W, rel=1e-6) and w["sources"] == {"gpu0": "fake"}
    measured = profile["train"]
    assert measured["steps_measured"] == 8 and measured["energy_j"] == pytest.approx(
        sum(w["energy_j"] for w in windows))
    assert measured["carbon"]["g_co2eq"] == pytest.approx(measured["energy_j"] / 3.6e6 * 475.0)
    assert measured["energy_j"] / measured["seconds_measured"] == pytest.approx(POWER_W, rel=1e-6)
    assert profile["idle_w"] == {"gpu0": pytest.approx(POWER_W, rel=1e-6)}
    assert profile["eval"]["energy_j"] > 0 and profile["eval"]["j_per_utt"] > 0
    assert list((workdir / "trace").rglob("*.xplane.pb")), "no jax.profiler trace written"


def test_sensor_failing_mid_run_marks_its_window_incomplete_and_training_goes_on(corpus_root, tmp_path,
                                                                                 monkeypatch):
    class FlakySensor(energy.FakeSensor):
        fail_next_read = False

        def read_j(self):
            self.failing, self.fail_next_read = self.fail_next_read, False
            return super().read_j()

    sensors = []
    real_step = run_profiler.RunProfiler.step
    monkeypatch.setattr(energy, "EnergyMonitor", _monitor_with(
        lambda clock: sensors.append(FlakySensor({"gpu0": POWER_W}, clock)) or sensors[-1]))

    def step(self, step, outputs):
        sensors[-1].fail_next_read = step == 9  # the read that closes the window of steps 6-8
        real_step(self, step, outputs)

    monkeypatch.setattr(run_profiler.RunProfiler, "step", step)
    config = tiny.get_config()
    config.data.synthetic.root = str(corpus_root)
    config.profile.enabled = True
    config.profile.update(skip_steps=2, window_steps=3, idle_seconds=0.0)
    workdir = tmp_path / "run"

    summary = train.train_and_evaluate(config, str(workdir))

    assert summary["steps"] == 12 and summary["eval"]["trials"]["num_trials"] > 0  # trained and evaluated
    windows = {(w["step_start"], w["step_end"]): w
               for w in map(json.loads, (workdir / "energy.jsonl").read_text().splitlines())}
    assert list(windows) == [(3, 5), (6, 8), (9, 11), (12, 12)]
    broken = windows.pop((6, 8))
    assert broken["complete"] is False and "energy_j" not in broken
    assert broken["energy"] == "missing: no figure for gpu0 (see warnings)"
    assert any("1 failed reads in the window" in w for w in broken["warnings"])
    for w in windows.values():  # before and after the failure: measured as usual
        assert w["complete"] is True and w["energy_j"] == pytest.approx(POWER_W * w["seconds"], rel=1e-6)
    measured = summary["profile"]["train"]
    assert measured["windows_incomplete"] == 1 and measured["complete"] is False
    assert measured["steps_with_energy"] == 7 and measured["steps_measured"] == 10
    assert measured["energy_j"] == pytest.approx(sum(w["energy_j"] for w in windows.values()))


class _Writer:
    def __init__(self):
        self.scalars, self.texts = {}, {}

    def write_scalars(self, step, scalars):
        self.scalars.update(scalars)

    def write_texts(self, step, texts):
        self.texts.update(texts)


def _cost(flops_per_step=1e9):
    return run_profiler.RunCost(global_batch=8, train_step=xla_cost.ProgramCost(flops_per_step, 1e6, 1),
                                forward=xla_cost.ProgramCost(8e8, 1e6, 1), forward_batch=8,
                                forward_flops_per_utt_analytic=1e8, memory=None, peak_tflops=None,
                                peak_source="none")


def test_without_sensors_windows_time_steps_and_energy_says_why(tmp_path):
    config = tiny.get_config()
    writer = _Writer()
    monitor = energy.EnergyMonitor([], poll_interval_s=0.1)
    with run_profiler.RunProfiler(config.profile, tmp_path, _cost(), writer=writer, monitor=monitor) as profiler:
        for step in range(1, 12):
            profiler.step(step, None)
    summary = profiler.summary(total_steps_run=11)["profile"]
    assert summary["train"]["steps_measured"] == 11 - config.profile.skip_steps
    assert summary["train"]["energy"].startswith("unavailable: ")
    assert summary["train"]["carbon"].startswith("unavailable")
    assert summary["train_step_flops"] == 1e9 and summary["forward_flops_per_utt"] == 1e8
    assert writer.texts["profile/energy"].startswith("unavailable: ")
    assert "475 gCO2eq/kWh" in writer.texts["profile/carbon"] and "none measured" in writer.texts["profile/carbon"]
    assert writer.scalars["profile/forward_gflops_per_utt"] == pytest.approx(0.1)
    assert "perf/tflops" in writer.scalars and "energy/j_per_step" not in writer.scalars


def test_mfu_divides_by_the_peak_of_every_device_in_the_mesh(tmp_path):
    """4 devices at a 1-TFLOP/s peak each: MFU is the mesh's TFLOP/s over 4 (it used to be over 1: 4x too high)."""
    config = tiny.get_config()
    config.profile.update(skip_steps=1, window_steps=5)
    cost = dataclasses.replace(_cost(), peak_tflops=1.0, num_devices=4)
    with run_profiler.RunProfiler(config.profile, tmp_path, cost, writer=_Writer(),
                                  monitor=energy.EnergyMonitor([], poll_interval_s=0.1)) as profiler:
        for step in range(1, 12):
            profiler.step(step, None)
    train = profiler.summary(11)["profile"]["train"]
    assert train["tflops"] > 0 and train["mfu"] == pytest.approx(train["tflops"] / 4)
    assert all(w.mfu == pytest.approx(w.tflops / 4) for w in profiler.windows)


def test_disabled_profiling_is_a_null_profiler_that_adds_nothing(tmp_path):
    config = tiny.get_config()
    config.profile.enabled = False
    profiler = run_profiler.create(config, tmp_path, programs=None, writer=_Writer())
    with profiler:
        profiler.step(1, None)
        with profiler.paused():
            pass
        with profiler.evaluation(10):
            pass
    assert isinstance(profiler, run_profiler.NullProfiler) and profiler.summary(1) == {}
    assert not (tmp_path / "energy.jsonl").exists()


def test_the_profiler_is_closed_when_the_training_loop_raises(corpus_root, tmp_path, monkeypatch):
    """The input fails at step 4, while a trace (steps 3-4) is running: the error reaches the caller, the trace is
    stopped and the sensors are released (the monitor's close() ran), so nothing is left running."""
    closed = []

    class Monitor(energy.EnergyMonitor):
        def close(self):
            closed.append(True)
            super().close()

    monkeypatch.setattr(energy, "EnergyMonitor", _monitor_with(lambda clock: energy.FakeSensor({"gpu0": POWER_W}, clock),
                                                                Monitor))
    real_batches = data_sources.train_batches

    def failing_batches(*args, **kwargs):
        batches = real_batches(*args, **kwargs)
        try:
            for _ in range(3):
                yield next(batches)
            raise OSError("the disk went away")
        finally:
            batches.close()

    monkeypatch.setattr(data_sources, "train_batches", failing_batches)
    config = tiny.get_config()
    config.data.synthetic.root = str(corpus_root)
    config.profile.enabled = True
    config.profile.update(skip_steps=1, window_steps=1, idle_seconds=0.0, trace_steps=(3, 4))
    with pytest.raises(OSError, match="disk went away"):
        train.train_and_evaluate(config, str(tmp_path / "run"))
    assert closed == [True]
    jax.profiler.start_trace(str(tmp_path / "again"))  # raises if the run's trace were still running
    jax.profiler.stop_trace()


def test_benchmark_cli_reports_speed_flops_and_monitor_cost():
    repo = pathlib.Path(__file__).resolve().parents[1]
    result = subprocess.run(
        [sys.executable, "-m", "profiling.study.benchmark", "--config=configs/tiny.py", "--batch_size=8", "--steps=6",
         "--blocks=2", "--warmup=1", "--num_classes=6", "--json"],
        cwd=repo, capture_output=True, text=True, check=True, timeout=600)
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["batch"] == 8 and report["num_frames"] == 50
    assert report["train_step_s"] > 0
    assert report["train_step_utt_per_s"] == pytest.approx(8 / report["train_step_s"])
    assert report["train_step_tflops"] > 0 and report["forward_tflops"] > 0  # checked XLA counts, not -1 or 0
    assert len(report["monitor_overhead_pairs_percent"]) == 2
    assert 0 <= report["monitor_host_percent"] < 100
    # This VM (and CI) has no NVML or RAPL: energy is reported unavailable, with the reason.
    if report["train_step_j"] is None:
        assert report["energy_unavailable"]
