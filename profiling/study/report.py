"""The plots (PNG, matplotlib) and the markdown report of a study (profiling.study.analysis.Study).

    study = write("results/depth")   # reads the rows, writes analysis.json, the plots and report.md

Every figure says what it is: cost axes name Joules or seconds, FLOP and byte figures are XLA's counts ("counted by
XLA", never "measured") with their source per program, a fit's intercept is its "fit constant" (not an idle power),
projected figures say "projection", quick runs say "quick" in titles and at the top of the report.

Rows of both tasks: speaker rows (ResNet blocks per stage, EER %, per utterance) and audio-tagging rows (a `family`,
`size` and `architecture`, mAP, per clip). Where the study has fits per architecture family
(analysis.Study.family_fits), a section "By architecture family" shows them with the answer of the F test to "does
one cost-per-FLOP line fit all families?", and a plot per program shows each family's points and line.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

from profiling import names
from profiling.study import analysis
from profiling.study import results
from profiling.study.analysis import Study

_WHAT = {names.TRAIN_STEP: "train step", names.FORWARD: "forward call"}

STAGE_COLOURS = ("#4c72b0", "#55a868", "#c44e52", "#8172b2")

# The F test's level, and below how many variants in its smallest family the report warns that it has little power.
SIGNIFICANCE = 0.05
FEW_VARIANTS_PER_FAMILY = 5

# Name and axis label of each quality metric of the Pareto front.
_QUALITY = {analysis.EER: ("EER", "EER (%)"), analysis.MAP: ("mAP", "mAP (macro mean average precision)")}


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # Files only; no display on training machines.
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: pathlib.Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _pyplot().close(fig)


def _title(study: Study, text: str) -> str:
    return f"{study.meta['sweep']}: {text}" + (" (quick numbers)" if study.meta["quick"] else "")


def _cost_label(study: Study, program: str) -> str:
    return f"{'energy (J)' if study.energy else 'time (s)'} per {_WHAT[program]}"


def _tagging(study: Study) -> bool:
    """Audio-tagging rows (they name an architecture family): per clip, not per utterance."""
    return any(r.get("family") is not None for r in study.rows)


def _item(study: Study, short: bool = True) -> str:
    """What one example of the batch is: 'clip', or 'utt' ('utterance' unless short)."""
    return "clip" if _tagging(study) else "utt" if short else "utterance"


def plot_flops_vs_cost(study: Study, program: str, path: pathlib.Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    gflops = [r[names.key(program, "flops")] / 1e9 for r in study.rows]
    mean, std = zip(*(study.cost(r, program) for r in study.rows))
    ax.errorbar(gflops, mean, yerr=std, fmt="o", capsize=3, label="measured (mean ± sd over windows)")
    for r, x, y in zip(study.rows, gflops, mean):
        ax.annotate(r["variant"], (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    xs = [0.0, max(gflops) * 1.05]

    def line(fit, what, style, colour):
        if fit is not None:
            ax.plot(xs, [fit.slope * 1e9 * x + fit.fit_constant for x in xs], style, color=colour,
                    label=f"{what}: {fit.slope * 1e9:.4g}·GFLOP {'+' if fit.fit_constant >= 0 else '−'} "
                          f"{abs(fit.fit_constant):.3g} (fit constant), R² {fit.r2:.3f}")

    fits = study.fits[program]
    line(fits["line"], "fit", "--", "grey")
    if fits.get("dynamic_weighted") is not None:
        dynamic = [r[names.key(program, "dynamic_j_mean")] for r in study.rows]
        ax.plot(gflops, dynamic, "s", color="C2", markersize=4, label="measured above idle (dynamic J, mean)")
        line(fits["dynamic_weighted"], "dynamic, weighted fit", ":", "C2")
    ax.set_xlabel(f"GFLOP per {_WHAT[program]}, counted by XLA (batch {study.rows[0]['batch_size']}"
                  + (", varies" if len({r['batch_size'] for r in study.rows}) > 1 else "") + ")")
    ax.set_ylabel(_cost_label(study, program))
    ax.set_title(_title(study, f"{'training' if program == names.TRAIN_STEP else 'inference'} FLOPs vs "
                               f"{'energy' if study.energy else 'time'}"), fontsize=10)
    ax.set_xlim(left=0)
    if min(ax.get_ylim()) >= 0 or fits.get("dynamic_weighted") is None:
        ax.set_ylim(bottom=0)  # dynamic Joules may be negative (a baseline above the load): keep them in view
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_flops_vs_cost_by_family(study: Study, program: str, path: pathlib.Path) -> None:
    """Each family's variants and fitted line in its own colour; the line over all families dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    top = max(r[names.key(program, "flops")] for r in study.rows) / 1e9 * 1.05

    def line(fit, xs, style, colour, what):
        ax.plot(xs, [fit.slope * 1e9 * x + fit.fit_constant for x in xs], style, color=colour,
                label=f"{what}: {fit.slope * 1e9:.4g}·GFLOP {'+' if fit.fit_constant >= 0 else '−'} "
                      f"{abs(fit.fit_constant):.3g}, R² {fit.r2:.3f}")

    for i, (family, members) in enumerate(analysis.families(study.rows).items()):
        colour = f"C{i % 10}"
        gflops = [r[names.key(program, "flops")] / 1e9 for r in members]
        ax.plot(gflops, [study.cost(r, program)[0] for r in members], "o", color=colour,
                label=f"{family} (measured)")
        fit = study.family_fits[family][program]["line"]
        if fit is not None:
            line(fit, [min(gflops), max(gflops)], "-", colour, f"{family} fit")
    pooled = study.family_fits[analysis.ALL_FAMILIES][program]["line"]
    if pooled is not None:
        line(pooled, [0.0, top], "--", "grey", "one line, all families")
    ax.set_xlabel(f"GFLOP per {_WHAT[program]}, counted by XLA")
    ax.set_ylabel(_cost_label(study, program))
    ax.set_title(_title(study, f"{'training' if program == names.TRAIN_STEP else 'inference'} FLOPs vs "
                               f"{'energy' if study.energy else 'time'} by family"), fontsize=10)
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_quality_vs_cost(study: Study, path: pathlib.Path) -> None:
    """The Pareto front of projected cost against EER (lower is better) or mAP (higher is better)."""
    plt = _pyplot()
    pareto = study.pareto
    metric = pareto["metric"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    points = {p["variant"]: p for p in pareto["points"]}
    ax.scatter([p["cost"] for p in points.values()], [p[metric] for p in points.values()], label="variants")
    for p in points.values():
        ax.annotate(p["variant"], (p["cost"], p[metric]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    front = [points[v] for v in pareto["front"]]
    ax.plot([p["cost"] for p in front], [p[metric] for p in front], "-", color="C1", label="Pareto front")
    if pareto["knee"]:
        k = points[pareto["knee"]]
        ax.scatter([k["cost"]], [k[metric]], marker="*", s=220, color="C3", zorder=3,
                   label=f"diminishing returns past {pareto['knee']}")
    what = "kWh" if pareto["cost_key"] == "kwh" else "device-hours"
    ax.set_xlabel(f"projected full-recipe training {what} (projection)")
    ax.set_ylabel(_QUALITY[metric][1])
    ax.set_title(_title(study, f"{_QUALITY[metric][0]} vs {what}"), fontsize=10)
    ax.legend(fontsize=7)
    _save(fig, path)


def plot_stages(study: Study, path: pathlib.Path) -> None:
    """Blocks per stage next to training cost per utterance, one row per variant."""
    plt = _pyplot()
    rows = study.rows[::-1]  # first variant on top
    labels = [r["variant"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 0.45 * len(rows) + 1.6), sharey=True)
    starts = [0] * len(rows)
    for stage in range(4):
        counts = [int(r["num_blocks"].split("-")[stage]) for r in rows]
        left.barh(labels, counts, left=starts, color=STAGE_COLOURS[stage], label=f"stage {stage + 1}")
        starts = [s + c for s, c in zip(starts, counts)]
    left.set_xlabel("blocks per stage")
    left.set_xlim(right=max(starts) * 1.4)  # room for the legend beside the bars
    left.legend(fontsize=7, loc="center right")
    per_utt = [study.cost(r, names.TRAIN_STEP)[0] / r["batch_size"] for r in rows]
    right.barh(labels, per_utt, color="grey")
    for i, r in enumerate(rows):
        label = f"{_num(r[names.key(names.TRAIN_STEP, 'flops')] / r['batch_size'] / 1e9)} GFLOP/utt"
        if r.get("eer_percent") is not None:
            label += f", EER {r['eer_percent']:.2f}%"
        right.annotate(label, (per_utt[i], i), textcoords="offset points", xytext=(3, -3), fontsize=7)
    right.set_xlabel(f"training {'J' if study.energy else 's'} per utterance")
    right.set_xlim(right=max(per_utt) * 1.6)
    fig.suptitle(_title(study, "stage distributions"), fontsize=10)
    _save(fig, path)


def plot_all(study: Study, out: pathlib.Path) -> dict[str, str]:
    """Writes every plot the study supports; returns {what: file name}."""
    images = {program: f"{program}_flops_vs_cost.png" for program in names.PROGRAMS}
    for program in names.PROGRAMS:
        plot_flops_vs_cost(study, program, out / images[program])
    if study.family_fits:
        for program in names.PROGRAMS:
            images[f"{program}_by_family"] = f"flops_vs_{program}_by_family.png"
            plot_flops_vs_cost_by_family(study, program, out / images[f"{program}_by_family"])
    if all(r.get("num_blocks") for r in study.rows):  # ResNet stages; tagging rows have none
        images["stages"] = "stages.png"
        plot_stages(study, out / images["stages"])
    if "front" in study.pareto:
        metric = "eer" if study.pareto["metric"] == analysis.EER else "map"
        images[metric] = f"{metric}_vs_cost.png"
        plot_quality_vs_cost(study, out / images[metric])
    return images


# --- Markdown -----------------------------------------------------------------------------------------------------

def _per(value: float | None, unit: float) -> float | None:
    """`value` in `unit`s; None (no count: an unoptimised FLOP count has no bytes) stays None."""
    return None if value is None else value / unit


def _num(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}g}" if abs(value) < 1000 else f"{value:,.0f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _sources(study: Study) -> list[str]:
    """Markdown lines: where each program's FLOP counts come from (one source per program, analysis.flops_sources)."""
    sources = {program: list(study.flops_sources.get(program) or {results.UNRECORDED: []}) for program in _WHAT}
    out = ["FLOPs and bytes are XLA's counts of the compiled programs (counted by XLA, not measured). FLOP source: "
           + "; ".join(f"{_WHAT[program]}: " + ", ".join(f"`{s}`" for s in found)
                       for program, found in sources.items()) + ".", ""]
    if any(results.UNRECORDED in found for found in sources.values()):
        out += ["> **FLOP source unrecorded**: these rows were written before sweeps recorded where their FLOP counts "
                "come from (`train_step_flops_source`, `forward_flops_source`); they are fitted together on the "
                "assumption that they share one. Re-run the sweep to record it.", ""]
    return out


def markdown(study: Study, images: dict[str, str]) -> str:
    meta, u = study.meta, study.unit
    settings, m = meta["settings"], meta["machine"]
    dates = sorted(r["measured_at"] for r in study.rows)
    out = [f"# Compute–energy study: {meta['sweep']}", "", meta.get("description", ""), ""]
    if meta["quick"]:
        frames = "/".join(str(f) for f in sorted({r["num_frames"] for r in study.rows}))
        out += [f"> **Quick numbers** (`--quick`: smaller batch, {frames}-frame inputs, short windows" +
                (", a smoke training on a tiny synthetic corpus" if settings["train"] else "") +
                "): for trying the tool out, not for conclusions.", ""]
    if not study.energy:
        out += [f"> **Time only**: no energy sensor was available ({study.why_time_only}). Every cost below is "
                "seconds, not Joules; there are no kWh or CO2 figures.", ""]
    sources = sorted({r["energy_sources"] for r in study.rows if r.get("energy_sources")})
    out += [f"Measured {dates[0][:10]}" + (f" to {dates[-1][:10]}" if dates[-1][:10] != dates[0][:10] else "") +
            f" on {m['cpu']} ({m['cpu_count']} cores), {m['devices']}, jax {m['jax']}. Per program, "
            f"{settings['repetitions']} windows of at least {settings['window_s']:g} s of back-to-back calls on an "
            f"in-memory batch, {settings['cooldown_s']:g} s idle before each; compilation and "
            f"{settings['warmup_steps']} warm-up call(s) excluded."
            + (f" Energy sources: {'; '.join(sources)}." if sources else ""), ""]

    out += ["## Variants", "", f"GFLOP and GB are counted by XLA; {'Joules' if study.energy else 'seconds'} are "
            "measured (mean ± sd over windows).", ""]
    tagging, item = _tagging(study), _item(study)
    header = ((["variant", "family", "size", "architecture"] if tagging else ["variant", "blocks", "width"])
              + ["dtype", "batch × frames", "params (M)", "train GFLOP/step", "train GB/step",
                 f"forward GFLOP/{item}", "activations (MB)", f"train {u}/step (mean ± sd)", f"train {u}/{item}",
                 f"forward {u}/{item} (mean ± sd)", f"train {u}/GFLOP"]
              + (["mAP", "macro F1"] if tagging else ["EER %"]))
    table = []
    step, forward = names.TRAIN_STEP, names.FORWARD
    for r in study.rows:
        tm, ts = study.cost(r, step)
        im, isd = study.cost(r, forward)
        b = r["batch_size"]
        identity = ([r.get("family") or "–", r.get("size") or "–", r.get("architecture") or "–"] if tagging
                    else [f"{r['block']} {r['num_blocks']}", str(r["width"])])
        quality = [_num(r.get("map")), _num(r.get("macro_f1"))] if tagging else [_num(r.get("eer_percent"))]
        table.append([r["variant"]] + identity + [
            r["dtype"], f"{b} × {r['num_frames']}", _num(r["params"] / 1e6),
            _num(r[names.key(step, "flops")] / 1e9, 4), _num(_per(r[names.key(step, "bytes_accessed")], 1e9)),
            _num(r[names.key(forward, "flops")] / b / 1e9), _num(r["activation_bytes"] / 1e6),
            f"{_num(tm)} ± {_num(ts, 2)}", _num(tm / b), f"{_num(im / b)} ± {_num(isd / b, 2)}",
            _num(study.cost_per_gflop[r["variant"]][step])] + quality)
    out += [_table(header, table), ""]
    if any(r.get("window_warnings") for r in study.rows):
        out += ["Window warnings: " + "; ".join(w for r in study.rows for w in r.get("window_warnings", [])), ""]

    out += [f"## FLOPs against {'energy' if study.energy else 'time'}", ""] + _sources(study)
    out += [f"Least squares over variants of {u} per call on GFLOP per call counted by XLA (`{u} = a·GFLOP + b`). "
            "b is the **fit constant**: the line's value at zero FLOPs, the part of the cost per call that FLOPs do "
            "not explain, a property of the fit that may come out negative. Weighted fits "
            "weigh each variant by the inverse variance of its mean per-call figure (windows / sd², sd over its "
            f"windows, floored at {analysis.STD_FLOOR_FRACTION:.0%} of the variant's mean); their R² is weighted too."
            + (" Dynamic J is the energy above the idle baseline measured before the sweep (idle W × window seconds "
               "subtracted)." if not study.why_no_dynamic else ""), ""]
    if study.energy and study.why_no_dynamic:
        out += [f"No dynamic (idle-subtracted) fits: {study.why_no_dynamic}.", ""]
    table = []
    quantities = [("line", f"{'J (idle included)' if study.energy else 's'}", "none"),
                  ("weighted", f"{'J (idle included)' if study.energy else 's'}", "1/variance"),
                  ("dynamic_line", "dynamic J (above idle)", "none"),
                  ("dynamic_weighted", "dynamic J (above idle)", "1/variance")]
    for program, what in _WHAT.items():
        for key, quantity, weighting in quantities:
            if key.startswith("dynamic") and study.why_no_dynamic:
                continue
            f = study.fits[program].get(key)
            table.append([what, quantity, weighting, _num(f.slope * 1e9 if f else None, 4),
                          _num(f.fit_constant if f else None, 4), _num(f.r2 if f else None, 4),
                          str(f.n) if f else "–", str(f.floored) if f and f.weighted else "–"])
    out += [_table(["program", "cost per call", "weighting", f"a ({u}/GFLOP)", f"fit constant b ({u}/call)", "R²",
                    "variants", "sd floored"], table), ""]
    table = []
    for program, what in _WHAT.items():
        plane, c = study.fits[program]["plane"], study.fits[program]["correlation"]
        table.append([what, _num(c["pearson_r"], 4), _num(c["spearman_rho"], 4),
                      _num(study.fits[program]["correlation_bytes"]["pearson_r"], 4),
                      _num(plane.r2 if plane else None, 4)])
    out += [_table(["program", f"Pearson r ({u} vs FLOPs)", "Spearman ρ", f"Pearson r ({u} vs bytes)",
                    "R² on FLOPs and bytes"], table), ""]

    if study.family_fits:
        out += _by_family(study)

    out += ["## Accuracy against energy", ""]
    pareto = study.pareto
    if "missing" in pareto:
        out += [f"No Pareto front: {pareto['missing']}.", ""]
    else:
        eer = pareto["metric"] == analysis.EER
        rated = [r for r in study.rows if r.get(pareto["metric"]) is not None]
        how = {(f"{r['train_run_steps']} steps" + (f", trial list '{r['eer_trials']}'" if eer else "")
                if "train_run_steps" in r else f"{_QUALITY[pareto['metric']][0]} recorded in the row")
               for r in rated}
        what = ("EER" if eer else "mAP (macro mean average precision over the held-out clips, higher is better)")
        out += [f"{what} from training each variant with `python -m sv_jax.main` ({'; '.join(sorted(how))})"
                + (": a smoke training on a tiny synthetic corpus, which does not rank the models." if meta["quick"]
                   else ".") + f" Cost: projected full-recipe training "
                f"{'kWh' if pareto['cost_key'] == 'kwh' else 'device-hours'} (below).", "",
                f"Pareto front (cheapest first): {' → '.join(pareto['front'])}. "
                + (f"Diminishing returns past **{pareto['knee']}** (the front's knee)." if pareto["knee"] else
                   "No knee: the front has fewer than three points or none lies below the chord."), ""]
        if pareto["marginal"]:
            gain, gain_key = (("EER points", "eer_points_per_cost") if eer else ("mAP", "map_per_cost"))
            out += [_table(["step on the front", f"{gain} gained per unit of cost"],
                           [[f"{m_['from']} → {m_['to']}", _num(m_[gain_key])] for m_ in pareto["marginal"]]), ""]

    p = meta["projection"]
    out += ["## Projection: the full recipe (a projection, not a measurement)", "",
            f"{p['epochs']} epochs of {p['utterances_per_epoch']:,} {_item(study, short=False)}s at global batch "
            f"{p['global_batch']}, {p['num_frames']}-frame chunks, on the measured devices ({m['devices']}). Cost per "
            f"{_item(study, short=False)} is scaled "
            f"from the measured chunk to {p['num_frames']} frames by the analytic forward MACs and assumed equal at "
            "batch " f"{p['global_batch']} to the measured batch's."
            + (f" CO2: {meta['grid']['intensity_g_per_kwh']:g} g/kWh ({meta['grid']['intensity_source']}), "
               f"PUE {meta['grid']['pue']:g} (an estimate)." if study.energy else ""), ""]
    header = ["variant", "steps", "hours", "device-hours"] + (["kWh", "kg CO2eq"] if study.energy else [])
    table = []
    for r in study.rows:
        proj = study.projection[r["variant"]]
        table.append([r["variant"], f"{proj['steps']:,}", _num(proj["hours"]), _num(proj["device_hours"])]
                     + ([_num(proj["kwh"]), _num(proj["co2_kg"])] if study.energy else []))
    out += [_table(header, table), ""]
    if study.failed:
        out += ["## Failed variants", ""] + [f"- {v}: {why}" for v, why in study.failed.items()] + [""]
    if images:
        out += ["## Plots", ""] + [f"![{what}]({name})" for what, name in images.items()] + [""]
    return "\n".join(out)


def _by_family(study: Study) -> list[str]:
    """Markdown lines of the section on fits per architecture family (analysis.Study.family_fits, family_test)."""
    u = study.unit
    groups = analysis.families(study.rows)
    out = ["## By architecture family", "",
           f"The fits above, per architecture family: least squares of {u} per call on GFLOP per call counted by XLA "
           f"(`{u} = a·GFLOP + b`, unweighted), and on GFLOP and GB."
           + ("" if study.energy else " **Time only**: seconds per call, not Joules (no energy sensor).")
           + " Does one line fit all families? A Chow-type F test of one line for all families against one line "
             "per family (unweighted least squares; it assumes normal residuals of equal variance in every "
             "family).", ""]
    table, lonely = [], []
    for name in list(groups) + [analysis.ALL_FAMILIES]:
        for program, what in _WHAT.items():
            fits = study.family_fits[name][program]
            line, plane = fits["line"], fits["plane"]
            table.append([f"**{name} families**" if name == analysis.ALL_FAMILIES else name, what, str(fits["n"]),
                          _num(line.slope * 1e9 if line else None, 4), _num(line.fit_constant if line else None, 4),
                          _num(line.r2 if line else None, 4), _num(plane.r2 if plane else None, 4),
                          _num(fits["correlation"]["pearson_r"], 4)])
            if fits.get("missing") and name not in lonely:
                lonely.append(name)
    out += [_table(["family", "program", "variants", f"a ({u}/GFLOP)", f"fit constant b ({u}/call)", "R² (FLOPs)",
                    "R² (FLOPs + bytes)", "Pearson r"], table), ""]
    if lonely:
        out += [f"No fit for {', '.join(lonely)}: one variant (no line through one point).", ""]
    sizes = sorted(len(members) for members in groups.values())
    per_family = f"{sizes[0]}" if sizes[0] == sizes[-1] else f"{sizes[0]}–{sizes[-1]}"
    for program, what in _WHAT.items():
        test = study.family_test[program]
        if "missing" in test:
            answer = f"not tested: {test['missing']}."
        elif test["p_value"] < SIGNIFICANCE:
            answer = (f"F = {_num(test['f'])} (df {test['df'][0]}, {test['df'][1]}), p = {_num(test['p_value'], 2)}: "
                      f"separate lines per family fit significantly better ({SIGNIFICANCE:.0%} level).")
        else:
            answer = (f"F = {_num(test['f'])} (df {test['df'][0]}, {test['df'][1]}), p = {_num(test['p_value'], 2)}: "
                      f"no significant difference at the {SIGNIFICANCE:.0%} level"
                      + (f" (with {per_family} variants per family the test has little power)."
                         if sizes[0] < FEW_VARIANTS_PER_FAMILY else "."))
        spread = test["slope_spread"]
        slopes = ", ".join(f"{name} {_num(line.slope * 1e9, 3)}" for name in groups
                           if (line := study.family_fits[name][program]["line"]) is not None)
        out += [f"- {what}: one line for all families: {answer} Slopes ({u}/GFLOP): {slopes or 'none'}; "
                + (f"the largest positive slope is {_num(spread)}× the smallest." if spread is not None else
                   "no spread: fewer than two families have a positive slope.")]
    return out + [""]


def write(out: str | pathlib.Path, plots: bool = True) -> Study:
    """Reads a results directory and writes analysis.json, the plots and report.md into it."""
    out = pathlib.Path(out)
    result = analysis.study(*analysis.load(out))
    (out / "analysis.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    images = plot_all(result, out) if plots else {}
    (out / "report.md").write_text(markdown(result, images))
    return result
