"""The study by architecture family (audio-tagging rows): fits per family, the F test of one line for all families,
the mAP Pareto front and the report's section, on synthetic rows with planted per-family lines."""

import math
import re

import numpy as np
import pytest

from profiling.study import analysis
from profiling.study import report
from profiling.study import results

# The planted relations: J per train step = slope·FLOPs + constant, per family (forward: a third of both).
LINES = {"MLP": (1e-9, 0.1), "CNN": (3e-9, 0.2), "CRNN": (5e-9, 0.3)}
FLOPS = {"MLP": np.geomspace(1e9, 8e9, 4), "CNN": np.geomspace(1.5e9, 1.2e10, 4),
         "CRNN": np.geomspace(2e9, 2e10, 4)}
SIZES = ("small", "medium", "large", "xlarge")


def _row(name, family, flops, cost, std, size="small", **extra):
    """A done audio-tagging row: a `family`, `size` and `architecture`, no block, num_blocks or width; 10-s clips.

    `cost` is both the Joules and the seconds per train step (forward: a third of FLOPs and cost).
    """
    row = {"sweep": "tagging", "variant": name, "status": results.DONE, "quick": False,
           "measured_at": "2026-11-21T00:00:00", "model": f"{family}Tagger", "family": family, "size": size,
           "architecture": f"{family.lower()} {size}", "dtype": "float32", "batch_size": 32, "num_frames": 625,
           "num_devices": 1, "params": 1e6, "activation_bytes": 1e6, "energy_sources": "gpu0: fake",
           "energy_unavailable": "", "forward_macs_per_utt_analytic": flops / 6 / 32,
           "forward_macs_per_utt_projection": flops / 6 / 32, "train_step_flops_source": "xla",
           "forward_flops_source": "xla"}
    for program, scale in (("train_step", 1.0), ("forward", 1 / 3)):
        row |= {f"{program}_flops": flops * scale,
                f"{program}_bytes_accessed": 0.01 * flops * scale * (1 + 0.3 * math.sin(flops / 1e9)),
                f"{program}_windows": 3, f"{program}_calls": 30,
                f"{program}_s_mean": cost * scale, f"{program}_s_std": std * scale,
                f"{program}_j_mean": cost * scale, f"{program}_j_std": std * scale,
                f"{program}_dynamic_j_mean": cost * scale - 0.05, f"{program}_dynamic_j_std": std * scale}
    return row | extra


def _meta():
    return {"sweep": "tagging", "description": "synthetic tagging rows", "quick": False,
            "base_config": "configs/tiny.py",
            "settings": {"repetitions": 3, "window_s": 5.0, "cooldown_s": 2.0, "warmup_steps": 1, "train": False},
            "projection": {"epochs": 200, "utterances_per_epoch": 10_000, "global_batch": 32, "num_frames": 625},
            "variants": [], "grid": {"intensity_g_per_kwh": 475.0, "intensity_source": "test", "pue": 1.0},
            "machine": {"cpu": "fake", "cpu_count": 1, "devices": "1 x fake", "jax": "-"}}


def _family_rows(lines=LINES, noise=0.002, seed=0, **extra):
    """Rows of each family about its planted line, with a relative scatter `noise` (seeded)."""
    rng = np.random.default_rng(seed)
    rows = []
    for family, (slope, constant) in lines.items():
        for size, flops in zip(SIZES, FLOPS[family]):
            true = slope * flops + constant
            rows.append(_row(f"{family.lower()}-{size}", family, flops, true * (1 + noise * rng.standard_normal()),
                             0.01 * true, size=size, **extra))
    return rows


def _rss(x, y):
    slope, constant = np.polyfit(x, y, 1)
    return float(((np.asarray(y) - slope * np.asarray(x) - constant) ** 2).sum())


def test_per_family_lines_are_recovered_and_one_line_for_all_is_rejected():
    rows = _family_rows()
    study = analysis.study(_meta(), rows)
    assert list(study.family_fits) == ["MLP", "CNN", "CRNN", "all"]  # first-seen order, then all rows
    for program, scale in (("train_step", 1.0), ("forward", 1 / 3)):
        for family, (slope, _) in LINES.items():
            fits = study.family_fits[family][program]
            assert fits["n"] == 4 and "missing" not in fits
            assert fits["line"].slope == pytest.approx(slope, rel=1e-2)
            assert fits["weighted"].slope == pytest.approx(slope, rel=1e-2) and fits["weighted"].weighted
            assert fits["plane"].n == 4 and fits["correlation"]["pearson_r"] > 0.999
            assert study.family_fits["all"][program]["line"].r2 < fits["line"].r2
        # The constant is well determined only where it is not swamped by the scatter: the MLP's (costs of 1-8 J).
        assert study.family_fits["MLP"][program]["line"].fit_constant == pytest.approx(0.1 * scale, abs=0.01 * scale)
        pooled = study.family_fits["all"][program]
        assert pooled["n"] == 12 and pooled["line"] == study.fits[program]["line"]  # `fits` is still all rows
        assert pooled["line"].r2 < 0.95

        test = study.family_test[program]
        assert test["df"] == (4, 6) and test["families"] == 3 and test["n"] == 12
        assert test["p_value"] < 0.01 and test["f"] > 100
        # The statistic, recomputed here from numpy's own line fits.
        x = {f: [r[f"{program}_flops"] for r in rows if r["family"] == f] for f in LINES}
        y = {f: [r[f"{program}_j_mean"] for r in rows if r["family"] == f] for f in LINES}
        separate = sum(_rss(x[f], y[f]) for f in LINES)
        pooled_rss = _rss(sum(x.values(), []), sum(y.values(), []))
        assert test["rss_separate"] == pytest.approx(separate, rel=1e-6)
        assert test["rss_pooled"] == pytest.approx(pooled_rss, rel=1e-6)
        assert test["f"] == pytest.approx((pooled_rss - separate) / 4 / (separate / 6), rel=1e-6)
        assert test["slope_spread"] == pytest.approx(5.0, rel=2e-2)  # CRNN 5e-9 J/FLOP over MLP 1e-9


def test_one_line_for_all_is_not_rejected_when_families_share_it():
    shared = {family: (2e-9, 0.2) for family in LINES}
    study = analysis.study(_meta(), _family_rows(shared, noise=0.01, seed=3))
    for program in ("train_step", "forward"):
        test = study.family_test[program]
        assert test["p_value"] > 0.05 and test["df"] == (4, 6)
        assert test["slope_spread"] == pytest.approx(1.0, abs=0.2)
    text = report.markdown(study, {})
    assert text.count("no significant difference at the 5% level (with 4 variants per family the test has little "
                      "power).") == 2


def test_rows_without_family_or_of_one_family_are_not_grouped():
    speaker = [{k: v for k, v in r.items() if k not in ("family", "size", "architecture")}
               | {"block": "basic", "num_blocks": "2-2-2-2", "width": 32, "eer_percent": 5.0 - i}
               for i, r in enumerate(_family_rows()[:4])]
    study = analysis.study(_meta(), speaker)
    assert study.family_fits == {} and study.family_test == {}
    assert study.pareto["metric"] == "eer_percent" and study.pareto["front"] == [r["variant"] for r in speaker]
    text = report.markdown(study, {})
    assert "By architecture family" not in text and "| EER % |" in text and "mAP" not in text
    one_family = [r for r in _family_rows() if r["family"] == "CNN"]
    assert analysis.study(_meta(), one_family).family_fits == {}


def test_a_family_of_one_variant_has_no_fit_and_no_test():
    rows = _family_rows() + [_row("rnn-small", "RNN", 3e9, 1.0, 0.01)]
    study = analysis.study(_meta(), rows)
    rnn = study.family_fits["RNN"]["train_step"]
    assert rnn["n"] == 1 and rnn["line"] is None and rnn["weighted"] is None and rnn["plane"] is None
    assert rnn["missing"] == "one variant: no line through one point"
    assert study.family_test["train_step"] == {"missing": "fewer than two variants in RNN",
                                               "slope_spread": pytest.approx(5.0, rel=2e-2)}
    assert study.family_fits["all"]["train_step"]["n"] == 13
    text = report.markdown(study, {})
    assert "No fit for RNN: one variant (no line through one point)." in text
    assert "- train step: one line for all families: not tested: fewer than two variants in RNN." in text
    # Two families of two variants: four points, four parameters, nothing left to test against.
    test = analysis.one_line_test({"MLP": ([1, 2], [1, 2]), "CNN": ([1, 3], [2, 7])})
    assert test == {"missing": "4 variants in 2 families leave no residual degrees of freedom (n − 2g = 0)"}


def test_markdown_and_plots_show_the_families(tmp_path):
    study = analysis.study(_meta(), _family_rows(map=0.5, macro_f1=0.4))
    images = report.plot_all(study, tmp_path)
    assert "stages" not in images  # no ResNet stages in tagging rows
    for program in ("train_step", "forward"):
        assert images[f"{program}_by_family"] == f"flops_vs_{program}_by_family.png"
        assert (tmp_path / f"flops_vs_{program}_by_family.png").stat().st_size > 1000
    text = report.markdown(study, images)
    section = text[text.index("## By architecture family"):text.index("## Accuracy against energy")]
    assert "| family | program | variants | a (J/GFLOP) | fit constant b (J/call) | R² (FLOPs) | " \
           "R² (FLOPs + bytes) | Pearson r |" in section
    assert re.search(r"\| CRNN \| train step \| 4 \| 5\.0\d* \|", section)
    assert "| **all families** | train step | 12 |" in section and "Time only" not in section
    answer = re.search(r"- train step: one line for all families: F = (\S+) \(df 4, 6\), p = (\S+): separate lines "
                       r"per family fit significantly better \(5% level\)\. Slopes \(J/GFLOP\): MLP (\S+), "
                       r"CNN (\S+), CRNN (\S+); the largest positive slope is (\S+)× the smallest\.", section)
    assert answer, section
    assert float(answer[1].replace(",", "")) == pytest.approx(study.family_test["train_step"]["f"], rel=1e-2)
    assert float(answer[2]) < 0.01
    assert [float(a) for a in answer.groups()[2:]] == pytest.approx([1, 3, 5, 5], rel=1e-2)
    # The variants table: family, size, architecture and mAP per clip, not blocks and EER.
    assert "| variant | family | size | architecture | dtype |" in text and "| mAP | macro F1 |" in text
    assert "forward GFLOP/clip" in text and "EER" not in text and "blocks" not in text
    assert "| crnn-large | CRNN | large | crnn large | float32 | 32 × 625 |" in text
    assert "10,000 clips at global batch 32" in text and "Cost per clip is scaled" in text
    assert "![train_step_by_family](flops_vs_train_step_by_family.png)" in text


def test_map_pareto_front_prefers_higher_map(tmp_path):
    # Train J per step 1, 2, 4, 8, 16 in this order; 'd' costs more than 'c' for a lower mAP.
    maps = {"a": 0.30, "b": 0.45, "c": 0.50, "d": 0.40, "e": 0.51}
    rows = [_row(name, "MLP" if i % 2 else "CNN", 1e9 * 2 ** i, 2.0 ** i, 0.01, map=m)
            for i, (name, m) in enumerate(maps.items())]
    study = analysis.study(_meta(), rows)
    pareto = study.pareto
    assert pareto["metric"] == "map" and pareto["cost_key"] == "kwh"
    assert pareto["front"] == ["a", "b", "c", "e"] and pareto["knee"] == "c"
    assert [p["map"] for p in pareto["points"]] == list(maps.values())
    kwh = {v: study.projection[v]["kwh"] for v in maps}
    assert kwh["a"] == pytest.approx(1.0 / 32 * 200 * 10_000 / 3.6e6)
    assert [m_["map_per_cost"] for m_ in pareto["marginal"]] == pytest.approx(
        [0.15 / (kwh["b"] - kwh["a"]), 0.05 / (kwh["c"] - kwh["b"]), 0.01 / (kwh["e"] - kwh["c"])])
    images = report.plot_all(study, tmp_path)
    assert images["map"] == "map_vs_cost.png" and (tmp_path / "map_vs_cost.png").stat().st_size > 1000
    text = report.markdown(study, images)
    assert "Pareto front (cheapest first): a → b → c → e. Diminishing returns past **c**" in text
    assert "mAP (macro mean average precision over the held-out clips, higher is better) from training" in text
    assert "| step on the front | mAP gained per unit of cost |" in text
    # Without mAP: no front, and the reason names mAP.
    bare = analysis.study(_meta(), _family_rows())
    assert bare.pareto == {"metric": "map",
                           "missing": "no mAP: run with --train (or sweep.train.enabled) to train each variant"}
    assert "No Pareto front: no mAP" in report.markdown(bare, {})


def test_time_only_rows_fit_seconds_per_family():
    rows = [r | {"train_step_j_mean": None, "forward_j_mean": None, "energy_unavailable": "no sensor"}
            for r in _family_rows()]
    study = analysis.study(_meta(), rows)
    assert not study.energy and study.unit == "s"
    for family, (slope, _) in LINES.items():
        assert study.family_fits[family]["train_step"]["line"].slope == pytest.approx(slope, rel=1e-2)
    assert study.family_test["forward"]["p_value"] < 0.01
    text = report.markdown(study, {})
    section = text[text.index("## By architecture family"):text.index("## Accuracy against energy")]
    assert "**Time only**: seconds per call, not Joules" in section and "| a (s/GFLOP) |" in section
    assert re.search(r"Slopes \(s/GFLOP\): MLP 1(\.00\d*)?, CNN 3\.0\d*, CRNN 5(\.00\d*)?;", section), section


def test_train_steps_counted_without_bytes_fit_on_flops_alone(tmp_path):
    """Tagging train steps are counted before optimisation (no bytes): their plane fit is absent, the table shows
    no GB, and the forward (with bytes) keeps its plane."""
    rows = [r | {"train_step_bytes_accessed": None, "train_step_flops_source": "xla-unoptimized"}
            for r in _family_rows()]
    study = analysis.study(_meta(), rows)
    assert study.fits["train_step"]["plane"] is None and study.fits["forward"]["plane"] is not None
    assert all(study.family_fits[f]["train_step"]["plane"] is None for f in LINES)
    assert study.family_fits["MLP"]["train_step"]["line"].slope == pytest.approx(LINES["MLP"][0], rel=1e-2)
    text = report.markdown(study, report.plot_all(study, tmp_path))
    variants = text[text.index("## Variants"):text.index("## FLOPs against")]
    row = next(line for line in variants.splitlines() if line.startswith("| mlp-small |"))
    assert row.split("|")[9].strip() == "–", row  # train GB/step
    assert (tmp_path / "flops_vs_train_step_by_family.png").stat().st_size > 0
