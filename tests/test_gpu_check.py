"""The GPU acceptance command (profiling.gpu_check) as far as a CPU allows: its no-GPU exit, its report builder and
acceptance rules on canned results, its power-log integration, its time budget, and the whole pipeline end to end
at tiny sizes (--allow_cpu)."""

import copy
import json
import os
import pathlib
import re
import subprocess
import sys

import pytest

from profiling.gpu_check import report
from profiling.gpu_check.report import q

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _command(*flags):
    return subprocess.run([sys.executable, "-m", "profiling.gpu_check", *flags], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_without_a_gpu_it_stops_with_one_line_and_status_2(tmp_path):
    result = _command(f"--out={tmp_path / 'out'}")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: no GPU: jax.devices() are cpu"), lines
    assert "run this on a GPU node" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()  # nothing was done


# --- The report builder on canned results ------------------------------------------------------------------------

M = "measured: canned"


def _speed_row(label, batch, tflop, step_s, j, zeus=None, smi=None, source="xla"):
    windows = [{"calls": 10, "seconds": q(5.0, "s", M), "monitor_gpu_j": q(j * 10, "J", M),
                "monitor_total_j": q(j * 10, "J", M), "zeus_gpu_j": q(zeus or j * 10, "J", M), "zeus_error": None,
                "smi_gpu_j": q(smi or j * 10 * 0.95, "J", M), "complete": True, "warnings": []}]
    return {"label": label, "model": "ResNet34", "dtype": "float32", "batch": batch, "devices": 1,
            "flops_source": source, "flops_note": "", "train_step_tflop": q(tflop, "TFLOP", "counted: canned"),
            "train_step_s": q(step_s, "s", M), "utt_per_s": q(batch / step_s, "utt/s", M),
            "tflops": q(tflop / step_s, "TFLOP/s", "derived: canned"),
            "peak_tflops": q(494.7, "TFLOP/s", "datasheet: canned"),
            "mfu": q(tflop / step_s / 494.7, "1", "derived: canned"), "j_per_step": q(j, "J", M),
            "j_per_step_std": q(0.1, "J", M), "dynamic_j_per_step": q(0.8 * j, "J", M),
            "j_per_utt": q(j / batch, "J/utt", M), "dynamic_j_per_utt": q(0.8 * j / batch, "J/utt", M),
            "energy_unavailable": None, "window_warnings": [], "windows": windows, "zeus": "ok", "nvidia_smi": "ok",
            "compile_s": q(15.0, "s", M)}


def _memory_row(label, reversible, bits, temp, opt, peak):
    c = "counted: canned"
    return {"label": label, "model": "ResNet293", "reversible": reversible, "state_bits": bits, "batch": 64,
            "params_bytes": q(115e6, "B", c), "optimizer_state_bytes": q(opt, "B", c),
            "activation_bytes": q(temp, "B", c), "argument_bytes": q(300e6, "B", c),
            "peak_bytes_in_use": q(peak, "B", M), "peak_before_bytes": q(peak / 2, "B", M), "peak_separable": True,
            "compile_s": q(60.0, "s", M)}


def _passing() -> dict:
    def part(seconds, **fields):
        return {"status": report.DONE, "planned_s": 10, "seconds": q(seconds, "s", M), **fields}

    cases = [{"name": f"inversion, 64 bottleneck couplings, input scale {s}", "precision": "default",
              "tolerance": report.INVERSION_TOLERANCE, "max_abs": q(0.0, "1", M), "rel": q(0.0, "1", M)}
             for s in (5, 1)]
    cases.append({"name": "gradients, 32 partial basic couplings", "precision": "default",
                  "tolerance": report.GRADIENT_TOLERANCE, "max_abs": q(1e-8, "1", M), "rel": q(2e-7, "1", M)})
    sweep = [_speed_row(name, 128, tflop, step_s, j) for name, tflop, step_s, j in
             (("ResNet18", 1.6, 0.02, 10.0), ("ResNet34", 3.4, 0.04, 21.0), ("ResNet50", 4.0, 0.05, 26.0))]
    fit = {"how": "fit: canned", "slope_j_per_tflop": q(6.3, "J/TFLOP", "fit: canned"),
           "constant_j": q(0.1, "J", "fit: canned"), "r2": q(0.99, "1", "fit: canned"), "n": 3}
    flops = [{"label": "ResNet34 b128", "model": "ResNet34", "reversible": "none", "batch": 128,
              "train_step_source": "xla", "forward_source": "xla", "notes_on_counts": "",
              "train_step_gflop_per_utt": q(27.0, "GFLOP/utt", "counted: xla"),
              "forward_gflop_per_utt": q(9.1, "GFLOP/utt", "counted: xla"),
              "forward_gflop_per_utt_analytic": q(9.0, "GFLOP/utt", "counted: analytic"),
              "step_to_forward": q(2.97, "1", "counted: canned"), "count_s": q(3.0, "s", M)}]
    return {"command": "python -m profiling.gpu_check --out=docs/gpu/2026-12-05", "date": "2026-12-05T10:00:00",
            "machine": {"devices": "1 x NVIDIA H200", "driver_version": "570.1", "jax": "0.10.2", "cpu": "Xeon"},
            "mode": "gpu", "budget_s": 480, "wall_s": q(400.0, "s", M), "parts": {
                "device": part(8, platform="gpu", device_kind="NVIDIA H200", devices=["cuda:0"],
                               driver_version="570.1", idle_w=q(80.0, "W", M),
                               peak_tflops={"float32": q(494.7, "TFLOP/s", "datasheet: H200")}),
                "reversible": part(25, cases=cases),
                "memory": part(140, rows=[_memory_row("ResNet293 partial", "partial", 32, 20e9, 115e6, 25e9),
                                          _memory_row("ResNet293 8-bit", "none", 8, 60e9, 31e6, 62e9),
                                          _memory_row("ResNet293 plain", "none", 32, 60e9, 115e6, 63e9)]),
                "throughput": part(100, rows=[_speed_row("ResNet34 b128 float32", 128, 3.4, 0.04, 21.0),
                                              _speed_row("ResNet34 b256 bfloat16", 256, 6.8, 0.05, 30.0)]),
                "sweep": part(110, rows=sweep, fit=fit),
                "flops": part(40, rows=flops)}}


def test_report_of_a_passing_run(tmp_path):
    results = _passing()
    assert report.failures(results) == []
    json_path, md_path = report.write(tmp_path, results)
    assert json.loads(json_path.read_text()) == results
    md = md_path.read_text()
    assert "## Failures\n\nNone: every acceptance check passed." in md
    for text in ("| utt/s (measured) | TFLOP/s (derived) | MFU (derived) |", "| EnergyMonitor (J, measured) |",
                 "| peak in use (MiB, measured) |", "| XLA temporaries (MiB, counted) |", "| train step source |",
                 "| slope (J/TFLOP) | fit constant (J) | R² |",
                 "| inversion, 64 bottleneck couplings, input scale 5 |",
                 "| ResNet34 b256 bfloat16 #1 |", "- utt/s: measured: canned"):
        assert text in md, text


def test_report_lists_failures_first_and_shows_missing_parts_as_errors():
    results = _passing()
    parts = results["parts"]
    del parts["sweep"]
    parts["flops"] = {"status": report.ERROR, "error": "RuntimeError: out of memory", "planned_s": 60}
    parts["throughput"]["rows"][1]["windows"][0]["zeus_gpu_j"] = q(330.0, "J", M)  # 300 J measured: -9%
    parts["reversible"]["cases"][2]["rel"] = q(3e-3, "1", M)
    parts["reversible"]["cases"].append({**parts["reversible"]["cases"][2], "precision": "highest",
                                         "rel": q(1e-7, "1", M)})
    failed = report.failures(results)
    assert any("gradients, 32 partial basic couplings at 'default' precision" in f and "TF32" in f for f in failed)
    assert any("ResNet34 b256 bfloat16 window 1" in f and "Zeus" in f and "-9.1%" in f for f in failed)
    assert "sweep: missing from the results (the check did not run or its record was lost)" in failed
    assert "flops: error: RuntimeError: out of memory" in failed
    assert len(failed) == 4, failed
    md = report.markdown(results)
    head, _, rest = md.partition("## Not checked")
    assert all(f"- {f}" in head for f in failed) and "|" not in head.partition("## Failures")[2]
    assert "## Depth sweep: Joules against FLOPs\n\n**error**: missing from the results." in rest
    assert "## FLOP source of each program\n\n**error**: RuntimeError: out of memory" in rest
    assert "| sweep | n/a | n/a | missing |" in rest and "| flops | 60 | n/a | error |" in rest
    assert "| ResNet34 b128 float32 | 3200 |" in rest  # the other parts are still rendered


def _set(path, value):
    def change(results):
        node = results["parts"]
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value
    return change


@pytest.mark.parametrize("change, expected", [
    (_set(("throughput", "rows", 0, "mfu"), q(1.3, "1", "derived")), "MFU 1.3 > 1"),
    (_set(("throughput", "rows", 0, "j_per_step"), q(None, "J", M)), "no energy figure"),
    (_set(("throughput", "rows", 0, "windows", 0, "smi_gpu_j"), q(100.0, "J", M)), "vs nvidia-smi 100 J (+110.0%"),
    (_set(("memory", "rows", 1, "optimizer_state_bytes"), q(100e6, "B", "counted")), "not under 50% of float32's"),
    (_set(("memory", "rows", 0, "activation_bytes"), q(70e9, "B", "counted")), "not below the plain model's"),
    (_set(("memory", "rows", 2, "peak_bytes_in_use"), q(None, "B", "unavailable: no memory_stats()")),
     "no measured peak"),
    (_set(("sweep", "rows", 1, "flops_source"), "xla-unoptimized"), "come from different sources"),
    (_set(("sweep", "rows", 1), {"label": "ResNet34 b128", "status": "not run", "error": "10 s left"}),
     "ResNet34 b128: not run: 10 s left"),
    (lambda r: r.update(wall_s=q(500.0, "s", M)), "over its 480-s budget"),
    (_set(("device", "platform"), "cpu"), "not GPUs"),
])
def test_each_acceptance_rule_fails_when_broken(change, expected):
    results = copy.deepcopy(_passing())
    change(results)
    failed = report.failures(results)
    assert any(expected in f for f in failed), failed
    assert expected in report.markdown(results)


def test_a_tiny_cpu_run_is_judged_without_the_gpu_rules():
    results = _passing()
    results["mode"] = "tiny CPU run (--allow_cpu)"
    results["parts"]["throughput"]["rows"][0]["j_per_step"] = q(None, "J", M)
    assert report.failures(results) == []
    assert "**tiny CPU run (--allow_cpu)**: tiny shapes on the CPU" in report.markdown(results)


# --- Measurement helpers -----------------------------------------------------------------------------------------

def test_the_nvidia_smi_log_is_integrated_between_the_window_edges():
    from profiling.gpu_check import power
    sample = power.parse_smi_line("2026/12/05 10:11:12.300, 0, 250.5")
    assert sample[1:] == (0, 250.5) and power.parse_smi_line("2026/12/05 10:11:12.300, 0, [N/A]") is None
    # 100 W, stepping linearly to 300 W between t=1 and t=2: over [0.5, 2.5] 50 + 200 + 150 J.
    points = [(0.0, 100.0), (1.0, 100.0), (2.0, 300.0), (3.0, 300.0)]
    assert power.integrate(points, 0.5, 2.5) == pytest.approx(400.0)
    assert power.integrate(points, -1.0, 0.5) == pytest.approx(150.0)  # flat before the first sample
    t0 = sample[0]
    lines = [f"2026/12/05 10:11:{12.3 + 0.1 * k:06.3f}, {board}, {100.0 * (board + 1)}" for k in range(30)
             for board in (0, 1)]
    log = power.PowerLog(command=[sys.executable, "-c", f"print({chr(10).join(lines)!r})"])
    log.close()
    assert log.energy_j(t0 + 0.5, t0 + 2.5)[0] == pytest.approx(100.0 * 2 + 200.0 * 2)  # both boards
    joules, samples = log.energy_j(t0 + 0.5, t0 + 2.5, {1})
    assert joules == pytest.approx(400.0) and 19 <= samples <= 21


def test_fit_line_and_the_time_budget_table():
    from profiling.gpu_check import checks, plans
    slope, constant, r2 = checks.fit_line([1.0, 2.0, 4.0], [7.0, 13.0, 25.0])
    assert (slope, constant, r2) == (pytest.approx(6.0), pytest.approx(1.0), pytest.approx(1.0))
    assert checks.fit_line([2.0, 2.0], [1.0, 3.0]) is None
    table = dict(re.findall(r"^\| (\w+) \| (\d+) \|", plans.__doc__, re.MULTILINE))
    assert {k: int(v) for k, v in table.items() if k != "total"} == plans.PLANNED_S
    assert list(plans.PLANNED_S) == list(report.PARTS)
    assert int(table["total"]) == sum(plans.PLANNED_S.values()) <= report.BUDGET_S


def test_allow_cpu_runs_the_tiny_pipeline_end_to_end(tmp_path):
    result = _command(f"--out={tmp_path}", "--allow_cpu")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    assert results["mode"] == "tiny CPU run (--allow_cpu)" and report.failures(results) == []
    assert {name: part["status"] for name, part in results["parts"].items()} == dict.fromkeys(report.PARTS, "done")
    rows = [row for part in results["parts"].values() for row in part.get("rows", [])]
    assert len(rows) == 6 and not [row for row in rows if row.get("error")]
    assert all(case["rel"]["value"] == 0.0 for case in results["parts"]["reversible"]["cases"])  # exact on CPU
    memory = {row["label"]: row for row in results["parts"]["memory"]["rows"]}
    assert memory["tiny 8-bit"]["optimizer_state_bytes"]["value"] < memory["tiny"]["optimizer_state_bytes"]["value"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert "**tiny CPU run (--allow_cpu)**" in md and "None: every acceptance check passed." in md
    assert "zeus" in md and "nvidia-smi not found on PATH" in md  # references that could not run are named
