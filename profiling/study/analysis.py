"""Analysis of a sweep's rows: Joules (or seconds) against FLOPs, the EER-vs-energy Pareto front, the projection.

    study = analysis.study(*analysis.load("results/depth"))   # profiling.study.report.write() also writes files

Cost is energy (Joules per train step / forward call) where every row has a measured figure; otherwise time
(seconds per call), and the report says so: a machine without a sensor gives a time-only study, never an estimate
shown as energy. FLOPs and bytes are XLA's counts of the compiled programs (sv_jax.programs), counted, not measured.
Fits are least squares of cost per call on the FLOPs of that call (cost = a·FLOPs + b: a is the marginal cost of a
FLOP; b is the *fit constant*, the line's value at zero FLOPs: the part of the cost that FLOPs do not explain, not a
measured idle power or static energy, and free to come out negative) and on FLOPs and bytes accessed, with R²;
Pearson and Spearman correlations across variants.

Each line is fitted twice: unweighted, and weighted (`weighted`), each variant by the inverse variance of its mean
per-call figure, windows / sd² (sd: the sample standard deviation of the per-call figure over the variant's windows).
The sd is floored at STD_FLOOR_FRACTION (1%) of the variant's own mean |figure|: one window (sd 0) or windows that
agree by chance would otherwise weigh without limit, and no figure here is known to better than about 1% (the
meters' own agreement: counter vs polling). With energy, the dynamic Joules per call (above the idle baseline taken
before the sweep: measured J − idle W × window seconds, `<program>_dynamic_j_mean`) are fitted the same two ways
(`dynamic_line`, `dynamic_weighted`; their sd is `<program>_dynamic_j_std`, or the total's `_j_std` in rows written
before it was recorded); without a baseline there are no dynamic fits, and the report says why.

FLOP counts of one program share a fit only if they share a source (`<program>_flops_source`: XLA's count of the
program as it runs, or a fallback's label, sv_jax.programs): `study()` refuses rows of mixed sources with a
cli.UserError naming the sources and the variants of each. Rows written before sources were recorded read as
'unrecorded' (profiling.study.results.flops_source) and fit together only with each other.

Architecture families (audio tagging: rows with a `family`, "MLP" | "CNN" | "RNN" | "CRNN"; Douwes & Serizel, "From
Computation to Consumption", find that FLOPs predict energy only within a family). Where rows name at least two
families, `family_fits` holds the same line, weighted line, plane and correlation per family (first-seen order)
and for "all" rows, and `family_test` asks whether one cost-per-FLOP line fits all families: a Chow-type F test of
one pooled line (2 parameters) against one line per family (2 per family), on the rows that name a family,
    F = ((RSS_pooled − RSS_separate) / (2(g − 1))) / (RSS_separate / (n − 2g)),   g families, n variants,
p from the F(2(g − 1), n − 2g) distribution. It assumes unweighted least squares is right: residuals independent,
normal and of equal variance in every family (cost figures of large variants usually scatter more, so it is an
approximation). With few variants per family (three or four in a sweep) it has little power: a p above 5% says the
data cannot tell the lines apart, not that one line fits. It is not run where a family has fewer than two variants
or n − 2g < 1 (no residual degrees of freedom). Beside it, the spread of the per-family slopes: the largest positive
slope over the smallest (how many times more a FLOP costs in the dearest family). Speaker rows have no `family`:
no grouping, and both fields stay empty.

The Pareto front keeps the variants that no cheaper variant matches in quality: EER % (lower is better) where rows
have `eer_percent`, else tagging rows' `map` (macro mean average precision, 0-1, higher is better; the front is
found on 1 − mAP and reported as mAP); cost there is the projected energy of the full recipe (or its device-hours,
time-only). The point of diminishing returns is the front's knee (the Kneedle idea): with cost and quality scaled to
[0, 1], the front point farthest below the chord from the cheapest to the most accurate variant, i.e. where further
energy starts buying markedly less quality. Fronts of fewer than three points, or with no point below the chord,
have no knee, and the report says so.

The projection scales measured cost per utterance to the recipe (`sweep.projection`: 150 epochs of VoxCeleb2 dev at
global batch 256 and 200-frame chunks) by the analytic forward MACs from the measured chunk to the recipe's, and
assumes cost per utterance at the recipe's batch equals the measured batch's. It is labelled a projection.
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
from typing import Any, Sequence

import numpy as np
from scipy import stats

import cli
from profiling import carbon
from profiling import names
from profiling.study import results

PROGRAMS = names.PROGRAMS  # 'train_step', 'forward'
ALL_FAMILIES = "all"  # the key of all rows in Study.family_fits
EER, MAP = "eer_percent", "map"  # quality metrics of the Pareto front: speaker EER % (lower is better), tagging mAP


# No variant's per-call spread is taken as smaller than this fraction of its mean (see the module docstring), nor,
# for a mean of zero, than STD_FLOOR_ABS.
STD_FLOOR_FRACTION = 0.01
STD_FLOOR_ABS = 1e-12


@dataclasses.dataclass(frozen=True)
class Fit:
    """Least squares `y = slope·x + fit_constant` (y: J or s per call, x: FLOPs per call) and its R².

    `fit_constant` is the line's value at zero FLOPs, not an idle power or a static energy. A weighted fit
    (`weighted`) weighs each point by the inverse variance of its y, and its R² is weighted alike; `floored` counts
    the points whose spread was raised to the floor (STD_FLOOR_FRACTION).
    """

    slope: float
    fit_constant: float
    r2: float
    n: int
    weighted: bool = False
    floored: int = 0

    @property
    def intercept(self) -> float:
        """`fit_constant` under its former name."""
        return self.fit_constant


@dataclasses.dataclass(frozen=True)
class PlaneFit:
    """Least squares `y = flops_coef·FLOPs + bytes_coef·bytes + fit_constant` and its R²."""

    flops_coef: float
    bytes_coef: float
    fit_constant: float
    r2: float
    n: int

    @property
    def intercept(self) -> float:
        """`fit_constant` under its former name."""
        return self.fit_constant


def _r2(y: np.ndarray, predicted: np.ndarray, weights: np.ndarray | None = None) -> float:
    weights = np.ones_like(y) if weights is None else weights
    mean = float((weights * y).sum() / weights.sum())
    total = float((weights * (y - mean) ** 2).sum())
    return 1.0 - float((weights * (y - predicted) ** 2).sum()) / total if total > 0 else math.nan


def fit_line(x: Sequence[float], y: Sequence[float], weights: Sequence[float] | None = None) -> Fit | None:
    """Least squares, weighted by `weights` if given; None with fewer than two distinct x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(np.unique(x)) < 2:
        return None
    w = np.ones_like(x) if weights is None else np.asarray(weights, float)
    scale = float(np.abs(x).max()) or 1.0  # FLOPs ~1e12 next to a column of ones: condition the solve
    design = np.stack([x / scale, np.ones_like(x)], 1)
    root = np.sqrt(w)
    (slope, constant), *_ = np.linalg.lstsq(design * root[:, None], y * root, rcond=None)
    return Fit(float(slope / scale), float(constant), _r2(y, design @ [slope, constant], w), len(x),
               weighted=weights is not None)


def inverse_variance_weights(mean: Sequence[float], std: Sequence[float | None], windows: Sequence[int]
                             ) -> tuple[np.ndarray, int]:
    """(windows / sd², how many sd were floored): the inverse variance of each mean over windows.

    An sd that is None, not finite or under max(STD_FLOOR_FRACTION·|mean|, STD_FLOOR_ABS) is replaced by that floor.
    """
    mean = np.asarray(mean, float)
    floor = np.maximum(STD_FLOOR_FRACTION * np.abs(mean), STD_FLOOR_ABS)
    sd = np.asarray([math.nan if s is None else s for s in std], float)
    low = ~np.isfinite(sd) | (sd < floor)
    sd = np.where(low, floor, sd)
    return np.asarray(windows, float) / sd ** 2, int(low.sum())


def fit_weighted_line(x: Sequence[float], mean: Sequence[float], std: Sequence[float | None],
                      windows: Sequence[int]) -> Fit | None:
    """`fit_line` of per-call means weighted by their inverse variance (`inverse_variance_weights`)."""
    weights, floored = inverse_variance_weights(mean, std, windows)
    fit = fit_line(x, mean, weights)
    return dataclasses.replace(fit, floored=floored) if fit is not None else None


def fit_plane(flops: Sequence[float], bytes_: Sequence[float], y: Sequence[float]) -> PlaneFit | None:
    """None with fewer than four points or collinear FLOPs and bytes (then the line says all there is)."""
    design = np.stack([np.asarray(flops, float), np.asarray(bytes_, float), np.ones(len(y))], 1)
    y = np.asarray(y, float)
    if len(y) < 4:
        return None
    scale = np.abs(design).max(0)  # FLOPs ~1e12 and bytes ~1e10: condition the solve
    if np.linalg.matrix_rank(design / scale) < 3:
        return None
    coef, *_ = np.linalg.lstsq(design / scale, y, rcond=None)
    coef = coef / scale
    return PlaneFit(float(coef[0]), float(coef[1]), float(coef[2]), _r2(y, design @ coef), len(y))


def flops_sources(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, list[str]]]:
    """{program: {FLOP source: [variants]}}; a cli.UserError if any program's rows have more than one source."""
    found = {program: {} for program in PROGRAMS}
    for program, groups in found.items():
        for r in rows:
            groups.setdefault(results.flops_source(r, program), []).append(r["variant"])
    mixed = {program: groups for program, groups in found.items() if len(groups) > 1}
    if mixed:
        what = "; ".join(f"{program}: " + ", ".join(f"'{source}' ({', '.join(variants)})"
                                                    for source, variants in groups.items())
                         for program, groups in mixed.items())
        old = any(results.UNRECORDED in groups for groups in mixed.values())
        raise cli.UserError(
            f"refusing to fit FLOP counts of different sources in one line ({what})"
            + (f"; '{results.UNRECORDED}' rows were written before FLOP sources were recorded" if old else "")
            + f": re-run the sweep on one backend into a new --out, or filter the rows of {results.RESULTS_JSONL} "
              "to one source")
    return found


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, float | None]:
    """Pearson r and Spearman rho with p-values; None with fewer than three points."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return {"pearson_r": None, "pearson_p": None, "spearman_rho": None, "spearman_p": None}
    pearson, spearman = stats.pearsonr(x, y), stats.spearmanr(x, y)
    return {"pearson_r": float(pearson.statistic), "pearson_p": float(pearson.pvalue),
            "spearman_rho": float(spearman.statistic), "spearman_p": float(spearman.pvalue)}


def families(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """{family: its rows}, families in first-seen order; rows without a `family` (speaker rows) are in none."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r.get("family") is not None:
            groups.setdefault(r["family"], []).append(r)
    return groups


def residual_sum_of_squares(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Of the unweighted `fit_line`; None where there is no line (fewer than two distinct x)."""
    fit = fit_line(x, y)
    if fit is None:
        return None
    x, y = np.asarray(x, float), np.asarray(y, float)
    return float(((y - fit.slope * x - fit.fit_constant) ** 2).sum())


def one_line_test(groups: dict[str, tuple[Sequence[float], Sequence[float]]]) -> dict[str, Any]:
    """Chow-type F test of one pooled line against one line per group ({group: (FLOPs, cost)}; module docstring).

    {'f', 'p_value', 'df': (2(g-1), n-2g), 'rss_pooled', 'rss_separate', 'families': g, 'n'}, or {'missing': why}.
    """
    small = [name for name, (x, _) in groups.items() if len(x) < 2]
    if small:
        return {"missing": f"fewer than two variants in {', '.join(small)}"}
    g, n = len(groups), sum(len(x) for x, _ in groups.values())
    if n - 2 * g < 1:
        return {"missing": f"{n} variants in {g} families leave no residual degrees of freedom "
                           f"(n − 2g = {n - 2 * g})"}
    separate = {name: residual_sum_of_squares(x, y) for name, (x, y) in groups.items()}
    flat = [name for name, rss in separate.items() if rss is None]
    if flat:
        return {"missing": f"fewer than two distinct FLOP counts in {', '.join(flat)}"}
    rss_separate = sum(separate.values())
    rss_pooled = residual_sum_of_squares([v for x, _ in groups.values() for v in x],
                                         [v for _, y in groups.values() for v in y])
    df = (2 * (g - 1), n - 2 * g)
    gain = max(rss_pooled - rss_separate, 0.0)  # nested models: negative only by rounding
    if rss_separate > 0:
        f = (gain / df[0]) / (rss_separate / df[1])
        p_value = float(stats.f.sf(f, *df))
    else:  # every family exactly on its own line
        f, p_value = (math.inf, 0.0) if gain > 0 else (0.0, 1.0)
    return {"f": f, "p_value": p_value, "df": df, "rss_pooled": rss_pooled, "rss_separate": rss_separate,
            "families": g, "n": n}


def slope_spread(slopes: Sequence[float | None]) -> float | None:
    """Largest over smallest of the positive slopes; None with fewer than two."""
    positive = [s for s in slopes if s is not None and s > 0]
    return max(positive) / min(positive) if len(positive) >= 2 else None


def quality_metric(rows: Sequence[dict[str, Any]]) -> str:
    """EER where any row has one (speaker rows), else MAP where any row has one or names a family (tagging rows)."""
    if any(r.get(EER) is not None for r in rows):
        return EER
    return MAP if any(r.get(MAP) is not None or r.get("family") is not None for r in rows) else EER


def pareto_front(cost: Sequence[float], error: Sequence[float]) -> list[int]:
    """Indices of the variants no cheaper (or equally cheap) variant matches in error (EER, 1 − mAP: lower is
    better), by increasing cost."""
    front, best = [], math.inf
    for i in sorted(range(len(cost)), key=lambda i: (cost[i], error[i])):
        if error[i] < best:
            front.append(i)
            best = error[i]
    return front


def knee(cost: Sequence[float], error: Sequence[float], front: Sequence[int]) -> int | None:
    """The front's point of diminishing returns (see the module docstring), as an index into cost/error."""
    if len(front) < 3:
        return None
    x = np.asarray([cost[i] for i in front], float)
    y = np.asarray([error[i] for i in front], float)
    x, y = (x - x[0]) / (x[-1] - x[0]), (y - y[-1]) / (y[0] - y[-1])  # cheapest (0, 1) to best (1, 0)
    below = (1.0 - x) - y  # how far each point lies below the chord y = 1 - x
    k = int(np.argmax(below[1:-1])) + 1
    return front[k] if below[k] > 1e-9 else None


def project(row: dict[str, Any], projection: dict[str, Any], grid: carbon.Grid, energy: bool) -> dict[str, Any]:
    """The full recipe's training time, energy and CO2 from one row's steady-state figures (a projection)."""
    utterances = projection["epochs"] * projection["utterances_per_epoch"]
    scale = row["forward_macs_per_utt_projection"] / row["forward_macs_per_utt_analytic"]
    out = {"steps": projection["epochs"] * (projection["utterances_per_epoch"] // projection["global_batch"]),
           "chunk_scale": scale,
           "hours": row[names.key(names.TRAIN_STEP, "s_mean")] / row["batch_size"] * scale * utterances / 3600}
    out["device_hours"] = out["hours"] * row["num_devices"]
    if energy:
        joules = row[names.key(names.TRAIN_STEP, "j_mean")] / row["batch_size"] * scale * utterances
        out |= {"kwh": joules / carbon.J_PER_KWH, "co2_kg": grid.grams(joules) / 1000}
    return out


@dataclasses.dataclass
class Study:
    """Everything the report and plots show; `analysis.json` is its `to_dict()`."""

    meta: dict[str, Any]
    rows: list[dict[str, Any]]  # done rows, in sweep order
    failed: dict[str, str]  # variant -> why
    energy: bool  # cost is Joules (True) or seconds (False)
    why_time_only: str
    # 'train_step' / 'forward' -> {'line': Fit, 'weighted': Fit, 'dynamic_line': Fit | None,
    # 'dynamic_weighted': Fit | None, 'plane': PlaneFit, 'correlation': {...}, 'correlation_bytes': {...}}
    fits: dict[str, Any]
    cost_per_gflop: dict[str, dict[str, float]]  # variant -> {'train_step': J (or s) per GFLOP, 'forward': ...}
    projection: dict[str, dict[str, Any]]  # variant -> project()
    # {'metric': EER | MAP, 'cost_key', 'points': [{'variant', 'cost', <metric>}], 'front', 'knee',
    # 'marginal': [{'from', 'to', 'eer_points_per_cost' | 'map_per_cost'}]} or {'metric', 'missing': why}
    pareto: dict[str, Any]
    flops_sources: dict[str, dict[str, list[str]]] = dataclasses.field(default_factory=dict)  # flops_sources()
    why_no_dynamic: str = ""  # why there are no dynamic (idle-subtracted) fits; "" when there are
    # Only where rows name two or more families, else {} (module docstring). family ('MLP', ..., ALL_FAMILIES) ->
    # program -> {'line': Fit | None, 'weighted': Fit | None, 'plane': PlaneFit | None, 'correlation': {...},
    # 'n': variants}, plus 'missing': why where the family has one variant (its fits are None).
    family_fits: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    # program -> one_line_test() | {'slope_spread': slope_spread() of the families' unweighted slopes}
    family_test: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

    @property
    def unit(self) -> str:
        return "J" if self.energy else "s"

    def cost(self, row: dict[str, Any], program: str) -> tuple[float, float]:
        """(mean, std) cost per call of `program` ('train_step' | 'forward') in the study's unit."""
        kind = "j" if self.energy else "s"
        return row[names.key(program, f"{kind}_mean")], row[names.key(program, f"{kind}_std")]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["rows"] = [{k: v for k, v in r.items() if k != "windows"} for r in self.rows]
        return out


def load(out: str | pathlib.Path) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, str]]:
    """(sweep.json, done rows in sweep order, failed variants with reasons) of a results directory."""
    out = pathlib.Path(out)
    meta = results.read_meta(out)
    latest = results.read_rows(out)
    order = meta["variants"] + [v for v in latest if v not in meta["variants"]]
    rows = [latest[v] for v in order if v in latest and latest[v]["status"] == results.DONE]
    failed = {v: latest[v]["status"] for v in order if v in latest and latest[v]["status"] != results.DONE}
    if not rows:
        raise cli.UserError(f"{out}: no finished variants in {results.RESULTS_JSONL}")
    return meta, rows, failed


def study(meta: dict[str, Any], rows: list[dict[str, Any]], failed: dict[str, str] | None = None) -> Study:
    """Fits, correlations, projection and Pareto front of `rows` (see the module docstring)."""
    j_mean = {program: names.key(program, "j_mean") for program in PROGRAMS}
    energy = all(r.get(column) is not None for r in rows for column in j_mean.values())
    why = "" if energy else "; ".join(sorted({r.get("energy_unavailable") or "a window without a figure"
                                              for r in rows if any(r.get(c) is None for c in j_mean.values())}))
    sources = flops_sources(rows)  # before anything is fitted: mixed sources are refused
    dynamic_mean = {program: names.key(program, "dynamic_j_mean") for program in PROGRAMS}
    if not energy:
        why_no_dynamic = "a time-only study has no energy to subtract a baseline from"
    elif any(r.get(column) is None for r in rows for column in dynamic_mean.values()):
        why_no_dynamic = ("no idle baseline for " + ", ".join(r["variant"] for r in rows
                                                               if any(r.get(c) is None for c in dynamic_mean.values()))
                          + " (the sweep's idle_s was 0, or the rows predate dynamic Joules)")
    else:
        why_no_dynamic = ""
    result = Study(meta, rows, dict(failed or {}), energy, why, fits={}, cost_per_gflop={}, projection={},
                   pareto={}, flops_sources=sources, why_no_dynamic=why_no_dynamic)
    for program in PROGRAMS:
        flops = [r[names.key(program, "flops")] for r in rows]
        bytes_ = [r[names.key(program, "bytes_accessed")] for r in rows]
        cost = [result.cost(r, program)[0] for r in rows]
        windows = [r.get(names.key(program, "windows")) or 1 for r in rows]
        fits = cost_fits(result, rows, program) | {
            "dynamic_line": None, "dynamic_weighted": None,
            "correlation_bytes": correlation(bytes_, cost) if None not in bytes_ else correlation([], [])}
        if not why_no_dynamic:
            dynamic = [r[dynamic_mean[program]] for r in rows]
            dynamic_std = [r.get(names.key(program, "dynamic_j_std"), r.get(names.key(program, "j_std")))
                           for r in rows]
            fits |= {"dynamic_line": fit_line(flops, dynamic),
                     "dynamic_weighted": fit_weighted_line(flops, dynamic, dynamic_std, windows)}
        result.fits[program] = fits
        for r, f, c in zip(rows, flops, cost):
            result.cost_per_gflop.setdefault(r["variant"], {})[program] = c / (f / 1e9)
    groups = families(rows)
    if len(groups) >= 2:
        result.family_fits = {name: {program: group_fits(result, members, program) for program in PROGRAMS}
                              for name, members in (groups | {ALL_FAMILIES: rows}).items()}
        for program in PROGRAMS:
            test = one_line_test({name: ([r[names.key(program, "flops")] for r in members],
                                         [result.cost(r, program)[0] for r in members])
                                  for name, members in groups.items()})
            lines = [result.family_fits[name][program]["line"] for name in groups]
            result.family_test[program] = test | {"slope_spread": slope_spread([fit.slope if fit else None
                                                                                for fit in lines])}
    grid = carbon.Grid(**meta["grid"])
    result.projection = {r["variant"]: project(r, meta["projection"], grid, energy) for r in rows}
    result.pareto = pareto(result)
    return result


def cost_fits(study: Study, rows: Sequence[dict[str, Any]], program: str) -> dict[str, Any]:
    """{'line', 'weighted', 'plane', 'correlation'} of `rows`' cost per call of `program` on its FLOPs (and bytes)."""
    flops = [r[names.key(program, "flops")] for r in rows]
    bytes_ = [r[names.key(program, "bytes_accessed")] for r in rows]
    cost, std = zip(*(study.cost(r, program) for r in rows))
    windows = [r.get(names.key(program, "windows")) or 1 for r in rows]
    return {"line": fit_line(flops, cost), "weighted": fit_weighted_line(flops, cost, std, windows),
            # No bytes where the count is not the running backend's ('xla-unoptimized'): FLOPs alone then.
            "plane": fit_plane(flops, bytes_, cost) if None not in bytes_ else None,
            "correlation": correlation(flops, list(cost))}


def group_fits(study: Study, rows: Sequence[dict[str, Any]], program: str) -> dict[str, Any]:
    """`cost_fits` of one family's rows and their number `n`; with one variant, None fits and 'missing'."""
    out = cost_fits(study, rows, program) | {"n": len(rows)}
    if len(rows) < 2:
        out["missing"] = "one variant: no line through one point"
    return out


def pareto(study: Study) -> dict[str, Any]:
    """The study's Pareto front of projected cost against quality (`quality_metric`; see the module docstring)."""
    metric = quality_metric(study.rows)
    label = "EER" if metric == EER else "mAP"
    rated = [r for r in study.rows if r.get(metric) is not None]
    if len(rated) < 2:
        return {"metric": metric,
                "missing": f"no {label}: run with --train (or sweep.train.enabled) to train each variant"
                if not rated else f"{label} for only one variant"}
    cost_key = "kwh" if study.energy else "device_hours"
    cost = [study.projection[r["variant"]][cost_key] for r in rated]
    quality = [r[metric] for r in rated]
    error = quality if metric == EER else [1.0 - q for q in quality]
    front = pareto_front(cost, error)
    k = knee(cost, error, front)
    gain_key = "eer_points_per_cost" if metric == EER else "map_per_cost"
    return {"metric": metric, "cost_key": cost_key,
            "points": [{"variant": r["variant"], "cost": c, metric: q} for r, c, q in zip(rated, cost, quality)],
            "front": [rated[i]["variant"] for i in front],
            "knee": rated[k]["variant"] if k is not None else None,
            "marginal": [{"from": rated[a]["variant"], "to": rated[b]["variant"],
                          gain_key: (error[a] - error[b]) / (cost[b] - cost[a]) if cost[b] > cost[a] else None}
                         for a, b in zip(front, front[1:])]}
