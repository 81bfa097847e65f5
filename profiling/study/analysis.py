"""Analysis of a sweep's rows: Joules (or seconds) against FLOPs, the EER-vs-energy Pareto front, the projection.

    study = analysis.study(*analysis.load("results/depth"))   # profiling.study.report.write() also writes files

Cost is energy (Joules per train step / forward call) where every row has a measured figure; otherwise time
(seconds per call), and the report says so: a machine without a sensor gives a time-only study, never an estimate
shown as energy. Fits are least squares of cost per call on the XLA FLOPs of that call (cost = a·FLOPs + b: a is the
marginal cost of a FLOP, b the per-call overhead that FLOPs do not explain) and on FLOPs and bytes accessed, with
R²; Pearson and Spearman correlations across variants.

The Pareto front keeps the variants that no cheaper variant matches in EER; cost there is the projected energy of
the full recipe (or its device-hours, time-only). The point of diminishing returns is the front's knee (the
Kneedle idea): with cost and EER scaled to [0, 1], the front point farthest below the chord from the cheapest to
the most accurate variant, i.e. where further energy starts buying markedly less EER. Fronts of fewer than three
points, or with no point below the chord, have no knee, and the report says so.

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


@dataclasses.dataclass(frozen=True)
class Fit:
    """Least squares `y = slope·x + intercept` (y: J or s per call, x: FLOPs per call) and its R²."""

    slope: float
    intercept: float
    r2: float
    n: int


@dataclasses.dataclass(frozen=True)
class PlaneFit:
    """Least squares `y = flops_coef·FLOPs + bytes_coef·bytes + intercept` and its R²."""

    flops_coef: float
    bytes_coef: float
    intercept: float
    r2: float
    n: int


def _r2(y: np.ndarray, predicted: np.ndarray) -> float:
    total = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - predicted) ** 2).sum()) / total if total > 0 else math.nan


def fit_line(x: Sequence[float], y: Sequence[float]) -> Fit | None:
    """None with fewer than two distinct x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(np.unique(x)) < 2:
        return None
    design = np.stack([x, np.ones_like(x)], 1)
    (slope, intercept), *_ = np.linalg.lstsq(design, y, rcond=None)
    return Fit(float(slope), float(intercept), _r2(y, design @ [slope, intercept]), len(x))


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


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, float | None]:
    """Pearson r and Spearman rho with p-values; None with fewer than three points."""
    if len(x) < 3 or len(set(x)) < 2 or len(set(y)) < 2:
        return {"pearson_r": None, "pearson_p": None, "spearman_rho": None, "spearman_p": None}
    pearson, spearman = stats.pearsonr(x, y), stats.spearmanr(x, y)
    return {"pearson_r": float(pearson.statistic), "pearson_p": float(pearson.pvalue),
            "spearman_rho": float(spearman.statistic), "spearman_p": float(spearman.pvalue)}


def pareto_front(cost: Sequence[float], eer: Sequence[float]) -> list[int]:
    """Indices of the variants no cheaper (or equally cheap) variant matches in EER, by increasing cost."""
    front, best = [], math.inf
    for i in sorted(range(len(cost)), key=lambda i: (cost[i], eer[i])):
        if eer[i] < best:
            front.append(i)
            best = eer[i]
    return front


def knee(cost: Sequence[float], eer: Sequence[float], front: Sequence[int]) -> int | None:
    """The front's point of diminishing returns (see the module docstring), as an index into cost/eer."""
    if len(front) < 3:
        return None
    x = np.asarray([cost[i] for i in front], float)
    y = np.asarray([eer[i] for i in front], float)
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
    fits: dict[str, Any]  # 'train_step' / 'forward' -> {'line': Fit, 'plane': PlaneFit, 'correlation': {...}}
    cost_per_gflop: dict[str, dict[str, float]]  # variant -> {'train_step': J (or s) per GFLOP, 'forward': ...}
    projection: dict[str, dict[str, Any]]  # variant -> project()
    pareto: dict[str, Any]  # {'cost_key', 'points', 'front', 'knee'} or {'missing': why}

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
    result = Study(meta, rows, dict(failed or {}), energy, why, {}, {}, {}, {})
    for program in PROGRAMS:
        flops = [r[names.key(program, "flops")] for r in rows]
        bytes_ = [r[names.key(program, "bytes_accessed")] for r in rows]
        cost = [result.cost(r, program)[0] for r in rows]
        result.fits[program] = {"line": fit_line(flops, cost), "plane": fit_plane(flops, bytes_, cost),
                                "correlation": correlation(flops, cost),
                                "correlation_bytes": correlation(bytes_, cost)}
        for r, f, c in zip(rows, flops, cost):
            result.cost_per_gflop.setdefault(r["variant"], {})[program] = c / (f / 1e9)
    grid = carbon.Grid(**meta["grid"])
    result.projection = {r["variant"]: project(r, meta["projection"], grid, energy) for r in rows}
    with_eer = [r for r in rows if r.get("eer_percent") is not None]
    if len(with_eer) < 2:
        result.pareto = {"missing": "no EER: run with --train (or sweep.train.enabled) to train each variant"
                         if not with_eer else "EER for only one variant"}
        return result
    cost_key = "kwh" if energy else "device_hours"
    cost = [result.projection[r["variant"]][cost_key] for r in with_eer]
    eer = [r["eer_percent"] for r in with_eer]
    front = pareto_front(cost, eer)
    k = knee(cost, eer, front)
    result.pareto = {"cost_key": cost_key,
                     "points": [{"variant": r["variant"], "cost": c, "eer_percent": e}
                                for r, c, e in zip(with_eer, cost, eer)],
                     "front": [with_eer[i]["variant"] for i in front],
                     "knee": with_eer[k]["variant"] if k is not None else None,
                     "marginal": [{"from": with_eer[a]["variant"], "to": with_eer[b]["variant"],
                                   "eer_points_per_cost": (eer[a] - eer[b]) / (cost[b] - cost[a])
                                   if cost[b] > cost[a] else None}
                                  for a, b in zip(front, front[1:])]}
    return result
