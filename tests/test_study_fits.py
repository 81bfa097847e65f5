"""The study's fits on synthetic rows: weighted dynamic-energy fits, the fit constant, and FLOP sources (one per fit)."""

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

import cli
from profiling.study import analysis
from profiling.study import report
from profiling.study import results

ROOT = pathlib.Path(__file__).resolve().parents[1]
SLOPE, CONSTANT = 2e-10, 1.5  # the planted relation: dynamic J per call = SLOPE·FLOPs + CONSTANT
FLOPS = np.geomspace(1e10, 2e11, 6)


def _row(name, flops, dynamic, dynamic_std, windows=3, **extra):
    """A done row of the shape profiling.study.measure writes (total J = dynamic J + 5 J of idle per call)."""
    row = {"sweep": "synthetic", "variant": name, "status": results.DONE, "quick": False,
           "measured_at": "2026-11-21T00:00:00", "model": "ResNet", "block": "basic", "num_blocks": "2-2-2-2",
           "width": 32, "dtype": "float32", "batch_size": 64, "num_frames": 200, "num_devices": 1, "params": 1e6,
           "activation_bytes": 1e6, "energy_sources": "gpu0: fake", "energy_unavailable": "",
           "forward_macs_per_utt_analytic": flops / 6 / 64, "forward_macs_per_utt_projection": flops / 6 / 64,
           "train_step_flops_source": "xla", "forward_flops_source": "xla"}
    for program, scale in (("train_step", 1.0), ("forward", 1 / 3)):
        row |= {f"{program}_flops": flops * scale, f"{program}_bytes_accessed": 0.01 * flops * scale,
                f"{program}_windows": windows, f"{program}_calls": 10 * windows,
                f"{program}_s_mean": flops * scale / 1e11, f"{program}_s_std": 0.0,
                f"{program}_j_mean": dynamic * scale + 5.0, f"{program}_j_std": dynamic_std * scale,
                f"{program}_dynamic_j_mean": dynamic * scale, f"{program}_dynamic_j_std": dynamic_std * scale}
    return row | extra


def _meta(variants=()):
    return {"sweep": "synthetic", "description": "synthetic rows", "quick": False, "base_config": "configs/tiny.py",
            "settings": {"repetitions": 3, "window_s": 5.0, "cooldown_s": 2.0, "warmup_steps": 1, "train": False},
            "projection": {"epochs": 150, "utterances_per_epoch": 1_092_009, "global_batch": 256,
                           "num_frames": 200},
            "variants": list(variants),
            "grid": {"intensity_g_per_kwh": 475.0, "intensity_source": "test", "pue": 1.0},
            "machine": {"cpu": "fake", "cpu_count": 1, "devices": "1 x fake", "jax": "-"}}


def _planted_rows(seed=0):
    """Rows whose figures scatter about the planted line by their own (heteroscedastic) sd over 3 windows."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, flops in enumerate(FLOPS):
        true = SLOPE * flops + CONSTANT
        std = 0.02 * true * (1 + i)  # the larger variants are noisier
        rows.append(_row(f"v{i}", flops, true + std / math.sqrt(3) * rng.standard_normal(), std))
    return rows


def _write(out, rows):
    (out / results.META).write_text(json.dumps(_meta(r["variant"] for r in rows)))
    (out / results.RESULTS_JSONL).write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_weighted_fit_recovers_a_planted_dynamic_energy_line():
    study = analysis.study(_meta(), _planted_rows())
    for program, scale in (("train_step", 1.0), ("forward", 1 / 3)):
        fit = study.fits[program]["dynamic_weighted"]
        assert fit.weighted and fit.n == len(FLOPS) and fit.floored == 0
        # FLOPs of the forward are a third, its Joules a third: same slope, a third of the constant.
        assert fit.slope == pytest.approx(SLOPE, rel=0.03)
        assert fit.fit_constant == pytest.approx(CONSTANT * scale, rel=0.05)
        assert fit.r2 > 0.99
        assert study.fits[program]["dynamic_line"].slope == pytest.approx(SLOPE, rel=0.05)
    # The idle-inclusive fits are still there, next to the dynamic ones: 5 J of idle more per call.
    assert study.fits["train_step"]["line"].fit_constant == pytest.approx(CONSTANT + 5.0, rel=0.05)
    assert study.fits["train_step"]["weighted"].slope == pytest.approx(SLOPE, rel=0.03)


def test_an_outlier_with_a_large_spread_is_down_weighted():
    rows = [_row(f"v{i}", f, SLOPE * f + CONSTANT, 0.01 * (SLOPE * f + CONSTANT)) for i, f in enumerate(FLOPS)]
    # The largest variant lies 40% above the line, and its windows say it is that uncertain.
    big = SLOPE * FLOPS[-1] + CONSTANT
    rows[-1] = _row("outlier", FLOPS[-1], 1.4 * big, 0.4 * big)
    study = analysis.study(_meta(), rows)
    weighted, unweighted = study.fits["train_step"]["dynamic_weighted"], study.fits["train_step"]["dynamic_line"]
    assert abs(weighted.slope - SLOPE) < abs(unweighted.slope - SLOPE) / 10
    assert weighted.slope == pytest.approx(SLOPE, rel=0.02) and unweighted.slope > 1.2 * SLOPE


def test_zero_or_missing_spread_is_floored_not_infinitely_weighted():
    weights, floored = analysis.inverse_variance_weights([10.0, 10.0, 10.0, 0.0], [0.0, None, 1.0, 0.0], [3, 3, 3, 1])
    floor = analysis.STD_FLOOR_FRACTION * 10.0
    assert floored == 3 and np.isfinite(weights).all()
    assert weights[:3] == pytest.approx([3 / floor ** 2, 3 / floor ** 2, 3.0])
    assert weights[3] == pytest.approx(1 / analysis.STD_FLOOR_ABS ** 2)
    # Single-window rows (sd 0 everywhere): a relative-error fit, still finite and still on the line.
    rows = [_row(f"v{i}", f, SLOPE * f + CONSTANT, 0.0, windows=1) for i, f in enumerate(FLOPS)]
    fit = analysis.study(_meta(), rows).fits["forward"]["dynamic_weighted"]
    assert fit.floored == len(FLOPS) and fit.slope == pytest.approx(SLOPE, rel=1e-6)


def test_report_calls_the_intercept_a_fit_constant_and_shows_the_flop_source():
    study = analysis.study(_meta(), _planted_rows())
    text = report.markdown(study, {})
    assert "fit constant b (J/call)" in text and "**fit constant**" in text
    assert "intercept" not in text.lower() and "static energy" not in text.lower() and "idle power" not in text
    assert "dynamic J (above idle)" in text and text.count("1/variance") == 4  # 2 programs x (total, dynamic)
    assert "FLOP source: train step: `xla`; forward call: `xla`" in text and "counted by XLA" in text
    assert "measured FLOP" not in text and "unrecorded" not in text
    assert study.flops_sources["train_step"] == {"xla": [f"v{i}" for i in range(len(FLOPS))]}
    assert set(analysis.Fit.__dataclass_fields__) >= {"fit_constant", "weighted", "floored"}
    assert "intercept" not in analysis.Fit.__dataclass_fields__  # analysis.json: fit_constant; .intercept reads it


def test_no_dynamic_fit_without_an_idle_baseline():
    rows = [r | {"train_step_dynamic_j_mean": None} if r["variant"] == "v2" else r for r in _planted_rows()]
    study = analysis.study(_meta(), rows)
    assert study.fits["train_step"]["dynamic_weighted"] is None and study.fits["train_step"]["weighted"]
    assert "no idle baseline for v2" in study.why_no_dynamic
    assert "No dynamic (idle-subtracted) fits: no idle baseline for v2" in report.markdown(study, {})


def test_mixed_flop_sources_are_refused_naming_sources_and_variants():
    rows = _planted_rows()
    rows[4]["train_step_flops_source"] = rows[5]["train_step_flops_source"] = "xla-cpu (gpu count unusable)"
    with pytest.raises(cli.UserError) as error:
        analysis.study(_meta(), rows)
    message = str(error.value)
    assert "\n" not in message
    assert "train_step: 'xla' (v0, v1, v2, v3), 'xla-cpu (gpu count unusable)' (v4, v5)" in message
    assert "forward" not in message  # its sources agree
    assert "re-run the sweep on one backend" in message and "filter the rows of results.jsonl" in message


def test_unrecorded_sources_fit_only_with_each_other():
    old = [{k: v for k, v in r.items() if not k.endswith("flops_source")} for r in _planted_rows()]
    study = analysis.study(_meta(), old)
    assert study.flops_sources["forward"] == {results.UNRECORDED: [r["variant"] for r in old]}
    text = report.markdown(study, {})
    assert "FLOP source: train step: `unrecorded`" in text and "**FLOP source unrecorded**" in text
    # One old row next to recorded ones: refused, and the message says what 'unrecorded' means.
    with pytest.raises(cli.UserError, match=r"'xla' \(v1, .*'unrecorded' \(v0\).*before FLOP sources were recorded"):
        analysis.study(_meta(), [old[0]] + _planted_rows()[1:])
    # Rows of the first layout carry only `flops_source`, both programs' sources joined: compared as one string.
    joined = [r | {"flops_source": "xla"} for r in old]
    assert analysis.study(_meta(), joined).flops_sources["train_step"] == {"xla": [r["variant"] for r in old]}
    assert results.flops_source(old[0] | {"flops_source": "xla, xla-cpu (x)"}, "forward") == "xla, xla-cpu (x)"


def test_analyze_command_refuses_mixed_sources_with_one_line_and_status_2(tmp_path):
    rows = _planted_rows()
    rows[0]["forward_flops_source"] = "xla-cpu (gpu count unusable)"
    _write(tmp_path, rows)
    result = subprocess.run([sys.executable, "-m", "profiling.study", "analyze", f"--out={tmp_path}"], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == cli.EXIT_USER_ERROR, result.stderr[-3000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[-1].startswith("error: refusing to fit FLOP counts of different sources")
    assert "forward: 'xla-cpu (gpu count unusable)' (v0), 'xla' (v1, v2, v3, v4, v5)" in lines[-1]
    assert "re-run the sweep on one backend" in lines[-1] and "Traceback" not in result.stderr
    assert not (tmp_path / "report.md").exists()
