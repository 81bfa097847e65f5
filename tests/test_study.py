"""The compute–energy study: windows, fits, Pareto front and knee, projection, sweep configs, the benchmark's energy
windows, and the command line. (Weighted fits and FLOP sources: test_study_fits.py.)"""

import io
import json
import math
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest

from profiling import carbon, energy, windows as windows_lib
from profiling.study import analysis as study_lib
from profiling.study import benchmark
from profiling.study import measure
from profiling.study import report as report_lib
from profiling.study import results
from profiling.study import sweeps as sweep_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
SWEEPS = sorted(p for p in (ROOT / "configs" / "sweeps").glob("*.py") if p.stem not in ("__init__", "common"))

# The planted relation: energy per train step = A * FLOPs + B, on variants of 10-200 GFLOP per step.
A_J_PER_FLOP, B_J = 2.5e-10, 10.0
IDLE_W = 20.0


class PlantedMachine:
    """A fake device: a call of `flops` takes flops / 1e11 + 0.01 s and draws (A·flops + B) / that time watts, with
    a small seeded error per run; idle (cool-downs, between windows) it draws IDLE_W."""

    def __init__(self, noise: float = 0.002, seed: int = 0):
        self.clock = energy.FakeClock(100.0)
        self.segments = []  # (start, end, watts), closed intervals; later ones win
        self.noise, self.rng = noise, np.random.default_rng(seed)
        self.sensor = energy.FakeSensor({"gpu0": self.power}, self.clock)

    def power(self, t):
        for start, end, watts in reversed(self.segments):
            if start <= t <= end:
                return watts
        return IDLE_W

    def runner(self, flops):
        seconds = flops / 1e11 + 0.01

        def run(n):
            watts = (A_J_PER_FLOP * flops + B_J) / seconds * (1 + self.noise * self.rng.standard_normal())
            self.segments.append((self.clock(), self.clock() + n * seconds, watts))
            self.clock.advance(n * seconds)
        return run


def _windows(machine, monitor, flops, program="train_step"):
    return windows_lib.measure_windows(program, machine.runner(flops), monitor, window_s=5.0, repetitions=3,
                                     cooldown_s=2.0, clock=machine.clock, sleep=machine.clock.advance)


def _row(name, flops, train, infer, **extra):
    row = {"sweep": "planted", "variant": name, "status": results.DONE, "quick": False,
           "measured_at": "2026-11-21T00:00:00", "model": "ResNet", "block": "basic", "num_blocks": "2-2-2-2",
           "width": 32, "dtype": "float32", "batch_size": 64, "num_frames": 200, "num_devices": 1, "params": 1e6,
           "train_step_flops": flops, "train_step_bytes_accessed": 0.01 * flops * (1 + 0.3 * math.sin(flops)),
           "forward_flops": flops / 3, "forward_bytes_accessed": 0.004 * flops,
           "forward_macs_per_utt_analytic": flops / 6 / 64, "forward_macs_per_utt_projection": flops / 6 / 64,
           "activation_bytes": 1e6, "energy_sources": "gpu0: fake", "energy_unavailable": ""}
    row |= measure.series_fields("train_step", train) | measure.series_fields("forward", infer)
    return row | extra


def _meta(quick=False):
    return {"sweep": "planted", "description": "planted relation", "quick": quick, "base_config": "configs/tiny.py",
            "settings": {"repetitions": 3, "window_s": 5.0, "cooldown_s": 2.0, "warmup_steps": 1, "train": False},
            "projection": {"epochs": 150, "utterances_per_epoch": 1_092_009, "global_batch": 256,
                           "num_frames": 200},
            "variants": [], "grid": {"intensity_g_per_kwh": 475.0, "intensity_source": "test", "pue": 1.0},
            "machine": {"cpu": "fake", "cpu_count": 1, "devices": "1 x fake", "jax": "-"}}


def test_windows_measure_only_the_calls_and_last_at_least_window_s():
    machine = PlantedMachine(noise=0.0)
    with energy.EnergyMonitor([machine.sensor], clock=machine.clock, background=False) as monitor:
        windows = _windows(machine, monitor, 5e10)
    step_s = 5e10 / 1e11 + 0.01
    assert windows.calls == [10, 10, 10] and all(s >= 5.0 for s in windows.seconds)
    assert windows.seconds == pytest.approx([10 * step_s] * 3)
    # Cool-downs at IDLE_W are outside the windows: exactly A·F + B per call.
    assert windows.per_call(windows.energy_j)[0] == pytest.approx(A_J_PER_FLOP * 5e10 + B_J, rel=1e-9)
    assert windows.per_call(windows.energy_j)[1] == pytest.approx(0.0, abs=1e-9)
    assert windows.sources == {"gpu0": "fake"} and not windows.warnings


def test_analysis_recovers_a_planted_energy_flops_relation(tmp_path):
    machine = PlantedMachine()
    variants = {f"v{i}": f for i, f in enumerate(np.geomspace(1e10, 2e11, 7))}
    rows = []
    with energy.EnergyMonitor([machine.sensor], clock=machine.clock, background=False) as monitor:
        monitor.measure_idle(2.0, sleep=machine.clock.advance)  # IDLE_W: the baseline of the dynamic Joules
        for name, flops in variants.items():
            rows.append(_row(name, flops, _windows(machine, monitor, flops),
                             _windows(machine, monitor, flops / 3, "forward")))
    # Through the files, as `analyze` reads them.
    meta = _meta() | {"variants": list(variants)}
    (tmp_path / results.META).write_text(json.dumps(meta))
    (tmp_path / results.RESULTS_JSONL).write_text("".join(json.dumps(r, default=str) + "\n" for r in rows))

    result = report_lib.write(tmp_path)

    fit = result.fits["train_step"]["line"]
    assert result.energy and fit.n == 7
    assert fit.slope == pytest.approx(A_J_PER_FLOP, rel=0.02) and fit.intercept == pytest.approx(B_J, rel=0.02)
    assert fit.r2 > 0.999 and result.fits["train_step"]["correlation"]["spearman_rho"] == pytest.approx(1.0)
    infer = result.fits["forward"]["line"]
    assert infer.slope == pytest.approx(A_J_PER_FLOP, rel=0.02) and infer.intercept == pytest.approx(B_J, rel=0.02)
    # Above idle, a call of F FLOPs (F / 1e11 + 0.01 s) costs (A - IDLE_W / 1e11)·F + (B - IDLE_W · 0.01) J.
    assert not result.why_no_dynamic
    for program in ("train_step", "forward"):
        for key in ("dynamic_line", "dynamic_weighted"):
            fit = result.fits[program][key]
            assert fit.slope == pytest.approx(A_J_PER_FLOP - IDLE_W / 1e11, rel=0.05)
            assert fit.fit_constant == pytest.approx(B_J - IDLE_W * 0.01, rel=0.02)
        assert result.fits[program]["dynamic_weighted"].weighted and result.fits[program]["weighted"].weighted
    assert rows[0]["train_step_dynamic_j_std"] > 0  # the spread of the dynamic figure itself, from measure
    report = (tmp_path / "report.md").read_text()
    assert "Time only" not in report and "Quick numbers" not in report and "No Pareto front: no EER" in report
    assert "dynamic J (above idle)" in report and "fit constant b (J/call)" in report and "1/variance" in report
    assert "counted by XLA" in report and "FLOP source: train step: `unrecorded`" in report  # _row records none
    assert "**FLOP source unrecorded**" in report
    analysis_json = json.loads((tmp_path / "analysis.json").read_text())
    assert "fit_constant" in analysis_json["fits"]["train_step"]["dynamic_weighted"]
    for name in ("train_step_flops_vs_cost.png", "forward_flops_vs_cost.png", "stages.png", "analysis.json"):
        assert (tmp_path / name).stat().st_size > 1000


def test_fit_plane_recovers_flops_and_bytes_coefficients():
    rng = np.random.default_rng(1)
    flops, bytes_ = rng.uniform(1e10, 1e11, 12), rng.uniform(1e8, 1e9, 12)
    fit = study_lib.fit_plane(flops, bytes_, 3e-10 * flops + 2e-8 * bytes_ + 5.0)
    assert (fit.flops_coef, fit.bytes_coef, fit.intercept) == pytest.approx((3e-10, 2e-8, 5.0), rel=1e-6)
    assert fit.r2 == pytest.approx(1.0)
    assert study_lib.fit_plane(flops[:3], bytes_[:3], flops[:3]) is None  # too few points for three unknowns
    assert study_lib.fit_plane(flops, 2 * flops, flops) is None  # bytes proportional to FLOPs: no separate fit


def test_pareto_front_and_knee():
    # Cost doubles each step; EER gains shrink after the third variant; 'x' is dominated.
    cost = [1.0, 2.0, 4.0, 8.0, 16.0, 5.0]
    eer = [3.0, 2.0, 1.2, 1.1, 1.05, 1.5]
    front = study_lib.pareto_front(cost, eer)
    assert front == [0, 1, 2, 3, 4]
    assert study_lib.knee(cost, eer, front) == 2
    # Gains proportional to cost (a straight front) or a concave one: no diminishing returns to mark.
    assert study_lib.knee([1, 2, 3], [3, 2, 1], [0, 1, 2]) is None
    assert study_lib.knee([1, 2, 3], [3, 2.9, 1], [0, 1, 2]) is None
    assert study_lib.knee([1, 2], [2, 1], [0, 1]) is None


def test_projection_scales_to_the_recipe():
    row = {"forward_macs_per_utt_projection": 4e9, "forward_macs_per_utt_analytic": 1e9, "batch_size": 8,
           "num_devices": 2, "train_step_s_mean": 0.4, "train_step_j_mean": 100.0}
    projection = {"epochs": 150, "utterances_per_epoch": 1_092_009, "global_batch": 256, "num_frames": 200}
    grid = carbon.Grid(400.0, "test", 1.5)
    out = study_lib.project(row, projection, grid, energy=True)
    utterances = 150 * 1_092_009
    assert out["steps"] == 150 * 4265 and out["chunk_scale"] == 4.0
    assert out["hours"] == pytest.approx(0.4 / 8 * 4 * utterances / 3600)
    assert out["device_hours"] == pytest.approx(2 * out["hours"])
    assert out["kwh"] == pytest.approx(100 / 8 * 4 * utterances / 3.6e6)
    assert out["co2_kg"] == pytest.approx(out["kwh"] * 1.5 * 400 / 1000)
    assert "kwh" not in study_lib.project(row, projection, grid, energy=False)


def test_time_only_when_any_variant_lacks_energy(tmp_path):
    machine = PlantedMachine()
    with energy.EnergyMonitor([machine.sensor], clock=machine.clock, background=False) as monitor:
        train, infer = _windows(machine, monitor, 1e10), _windows(machine, monitor, 3e9, "forward")
    rows = [_row("a", 1e10, train, infer, eer_percent=5.0),
            _row("b", 2e10, train, infer, train_step_j_mean=None, energy_unavailable="rapl: not readable",
                 eer_percent=4.0)]
    result = study_lib.study(_meta(quick=True), rows)
    assert not result.energy and result.why_time_only == "rapl: not readable"
    assert result.pareto["cost_key"] == "device_hours" and "kwh" not in result.projection["a"]
    text = report_lib.markdown(result, {})
    assert "**Time only**" in text and "rapl: not readable" in text and "**Quick numbers**" in text


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_every_sweep_config_resolves_every_variant(path):
    sweep = sweep_config.load_config_file(path)
    names = sweep_config.variant_names(sweep)
    assert names
    for name in names:
        full = sweep_config.variant_config(sweep, name, quick=False, num_devices=1)
        quick = sweep_config.variant_config(sweep, name, quick=True, num_devices=4)
        assert quick.data.num_frames == sweep.quick.num_frames and quick.data.batch_size % 4 == 0
        assert quick.data.batch_size < full.data.batch_size or full.data.batch_size <= 8
        assert quick.model.to_dict() == full.model.to_dict()


def test_stage_sweep_variants_have_similar_flops():
    from sv_jax.models import macs as macs_lib
    sweep = sweep_config.load_config_file(ROOT / "configs/sweeps/stages.py")
    macs = [macs_lib.forward_macs(sweep_config.variant_config(sweep, n, False, 1).model, 200, 80)
            for n in sweep_config.variant_names(sweep)]
    assert max(macs) / min(macs) < 1.01


def test_bad_override_names_the_key_and_the_variant():
    sweep = sweep_config.load_config_file(ROOT / "configs/sweeps/tiny.py")
    with sweep.unlocked():
        sweep.variants = (("bad", {"model": {"depth": 3}}),)
    with pytest.raises(ValueError, match=r"variant bad: unknown config key 'model.depth'"):
        sweep_config.variant_config(sweep, "bad", False, 1)
    with pytest.raises(ValueError, match="no variant 'nope'"):
        sweep_config.variant_config(sweep, "nope", False, 1)


def test_command_line_flags_reproduce_the_overrides():
    flags = sweep_config.command_line_flags({"model": {"name": "ResNet", "num_blocks": (2, 2, 10, 2)},
                                          "data": {"speed_perturb": False, "synthetic": {"min_seconds": 1.0}}})
    assert flags == ["--config.model.name=ResNet", "--config.model.num_blocks=(2,2,10,2)",
                     "--config.data.speed_perturb=False", "--config.data.synthetic.min_seconds=1.0"]


def test_run_quick_then_rerun_resumes_and_refuses_to_mix(tmp_path):
    out = tmp_path / "tiny"
    command = [sys.executable, "-m", "profiling.study", "run", "--sweep=configs/sweeps/tiny.py",
               f"--out={out}", "--quick", "--variants=b4,b8", "--sweep.quick.window_s=0.3",
               "--sweep.quick.cooldown_s=0", "--sweep.quick.idle_s=0"]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "QUICK numbers" in result.stdout and "time only" in result.stdout and "FLOPs counted by XLA" in result.stdout
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["variant"], r["status"]) for r in rows] == [("b4", "done"), ("b8", "done")]
    for r in rows:  # counted, timed, trained
        assert r["train_step_flops"] > 2 * r["forward_flops"] > 0 and r["train_step_windows"] == 3
        assert r["train_step_s_mean"] > 0 and r["train_step_j_mean"] is None and r["energy_unavailable"]
        assert 0 <= r["eer_percent"] <= 100 and (out / "train" / r["variant"] / "summary.json").exists()
    assert rows[1]["train_step_flops"] > 1.5 * rows[0]["train_step_flops"]
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("sweep,variant,quick,status")
    report = (out / "report.md").read_text()
    assert "**Quick numbers**" in report and "**Time only**" in report and "eer_vs_cost.png" in report
    sources = {program: rows[0][f"{program}_flops_source"] for program in ("train_step", "forward")}
    assert all(sources.values()) and all(r[f"{p}_flops_source"] == s for r in rows for p, s in sources.items())
    assert f"FLOP source: train step: `{sources['train_step']}`; forward call: `{sources['forward']}`" in report
    assert "No dynamic" not in report  # time only: there is no energy to subtract a baseline from
    for name in ("train_step_flops_vs_cost.png", "forward_flops_vs_cost.png", "stages.png", "eer_vs_cost.png"):
        assert (out / name).stat().st_size > 1000

    # A rerun measures nothing new; a failed or missing variant is retried; quick and full rows never mix.
    with open(out / "results.jsonl", "a") as f:
        f.write(json.dumps(rows[0] | {"status": "failed: OOM"}) + "\n" + '{"variant": "b8", "sta')
    rerun = subprocess.run(command[:-3] + ["--sweep.quick.window_s=0.3", "--notrain"], cwd=ROOT,
                           capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    latest = results.read_rows(out)
    assert latest["b4"]["status"] == "done" and "eer_percent" not in latest["b4"]  # retried without training
    assert latest["b8"] == rows[1]
    full = subprocess.run([c for c in command if c != "--quick"], cwd=ROOT, capture_output=True, text=True)
    assert full.returncode == 2 and "quick=True" in full.stderr and "use another --out" in full.stderr
    assert "Traceback" not in full.stderr


# --- The benchmark's energy windows -----------------------------------------------------------------------------

def _fake_calls(clock, seconds_per_call):
    def run(n):
        clock.advance(n * seconds_per_call)
    return run


def test_benchmark_energy_windows_last_at_least_window_s_and_keep_their_warnings():
    clock = energy.FakeClock(50.0)
    runs = {"train_step": _fake_calls(clock, 0.3), "forward": _fake_calls(clock, 0.07)}
    with energy.EnergyMonitor([energy.FakeSensor({"gpu0": 100.0}, clock)], clock=clock, background=False) as monitor:
        steady = benchmark.energy_windows(runs, monitor, window_s=5.0, repetitions=3, cooldown_s=1.0, clock=clock,
                                          sleep=clock.advance)
        fields = benchmark.energy_fields(steady, monitor, batch_size=8, window_s=5.0)
        assert all(s >= 5.0 for series in steady.values() for s in series.seconds)
        assert fields["train_step_energy_windows_s"] == pytest.approx([5.1] * 3)  # 17 whole calls of 0.3 s
        assert fields["train_step_j"] == pytest.approx(30.0) and fields["train_step_j_per_utt"] == pytest.approx(3.75)
        assert fields["forward_j"] == pytest.approx(7.0) and fields["train_step_j_std"] == pytest.approx(0, abs=1e-9)
        assert fields["window_warnings"] == [] and fields["energy_unavailable"] is None
        assert fields["energy_sources"] == {"gpu0": "fake"}

        short = benchmark.energy_windows(runs, monitor, window_s=1.5, repetitions=2, cooldown_s=0.0, clock=clock,
                                         sleep=clock.advance)
        fields = benchmark.energy_fields(short, monitor, 8, 1.5, ["monitor-overhead block 1 window 1 (...): w"])
    assert all(s >= 1.5 for s in fields["forward_energy_windows_s"])
    warnings = fields["window_warnings"]
    assert "shorter than the 5 s" in warnings[0]
    assert any(w.startswith("train_step window 2: window 1.") and "s < 2 s" in w for w in warnings)
    assert any(w.startswith("forward window 1: window") for w in warnings)
    assert warnings[-1].startswith("monitor-overhead block 1")


def test_benchmark_carries_window_warnings_into_its_result_and_json():
    """The whole benchmark of a tiny model, on a fake sensor whose clock runs 10x faster than real time (1-s
    windows: 0.1 s). configs/tiny.py at batch 4 on the 4 devices is the tiny sweep's quick b4 variant: its programs
    come from the run's XLA cache when the sweep test ran first (4 s instead of 10 s on the 2-core VM)."""
    from configs import tiny
    start = time.perf_counter()
    clock = lambda: 100.0 + 10.0 * (time.perf_counter() - start)  # noqa: E731
    sleep = lambda seconds: time.sleep(seconds / 10.0)  # noqa: E731
    sensor = energy.FakeSensor({"gpu0": 100.0}, clock, update_period_s=10.0)  # windows under 10 s get a warning
    with energy.EnergyMonitor([sensor], clock=clock, background=False) as monitor:
        result = benchmark.run(tiny.get_config(), batch_size=4, steps=2, blocks=1, warmup=1,
                               window_s=1.0, repetitions=2, cooldown_s=0.0, monitor=monitor,
                               clock=clock, sleep=sleep)
        assert monitor.available  # a monitor passed in stays open: it is the caller's
    assert result.flops_source == result.train_step_flops_source == result.forward_flops_source == "xla"
    assert len(result.train_step_energy_windows_s) == len(result.forward_energy_windows_s) == 2
    assert min(result.train_step_energy_windows_s + result.forward_energy_windows_s) >= 1.0
    assert result.train_step_j > 0 and result.forward_j_per_utt > 0 and result.energy_unavailable is None
    assert any(w.startswith("train_step window 1: window") and "update period of gpu0" in w
               for w in result.window_warnings)
    out, err = io.StringIO(), io.StringIO()
    benchmark.print_result(result, as_json=True, out=out, err=err)
    assert json.loads(out.getvalue())["window_warnings"] == result.window_warnings
    assert err.getvalue().splitlines() == [f"warning: {w}" for w in result.window_warnings]
    table = io.StringIO()
    benchmark.print_result(result, as_json=False, out=table)
    assert f"warning: {result.window_warnings[0]}" in table.getvalue().splitlines()
