"""The GPU acceptance report: gpu_check.json (every figure with its unit and how it was obtained) and gpu_check.md.

    results = {"command": ..., "date": ..., "machine": {...}, "mode": "gpu", "parts": {"device": {...}, ...}}
    failures(results)            # acceptance failures in words: errors, missing parts, figures out of tolerance
    write("docs/gpu/2026-12-05", results)

Pure Python on the results dict alone (no jax), so that it can be fed canned results. A figure is a quantity
`q(value, unit, how)`; `how` starts with its kind: 'measured' (timed or read from a sensor), 'counted' (XLA's cost
or buffer analysis, an analytic count, the bytes of a state), 'derived' (counted over measured), 'datasheet' or
'fit'. Table headers carry unit and kind, so every figure in the markdown says measured or counted; the long `how`
of each column is listed under its table. A part that raised is recorded with its error (status 'error'), one
the time budget could not hold as 'not run'; both, and parts absent from the results, are failures and are listed
first. The acceptance rules (tolerances below) are here, next to the rendering, and apply to the JSON as written.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Callable

PARTS = ("device", "reversible", "memory", "throughput", "sweep", "flops")
TITLES = {"device": "Device and driver", "reversible": "Reversible stages on the GPU: inversion and gradients",
          "memory": "Peak memory of the train step", "throughput": "Train step: speed, MFU and energy",
          "sweep": "Depth sweep: Joules against FLOPs", "flops": "FLOP source of each program"}
DONE, ERROR, NOT_RUN = "done", "error", "not run"
BUDGET_S = 480  # the command must finish within 8 minutes on one H200

INVERSION_TOLERANCE = 1e-6  # relative (norm) error of a stage input reconstructed from its output; 0 on CPU
# custom_vjp gradients against plain autodiff: 10x the CPU tests' 1e-6 bound for the GPU's summation order; a stream
# without its rounding residue is ~5e-5 off at 32 couplings, so this still catches it.
GRADIENT_TOLERANCE = 1e-5
ZEUS_TOLERANCE = 0.02  # Zeus reads the same NVML counter over the same window (edges ms apart)
# nvidia-smi's power.draw is a ~1-s running average sampled every 100 ms: over a 5-s window after an idle
# cool-down it lags the load by ~0.5 s at each edge (up to ~10% low); more than this is a real disagreement.
SMI_TOLERANCE = 0.15
STEP_TO_FORWARD_MIN = 2.7  # a train step is ~3 forwards (0.9 x 3): below, the count may miss the weight gradients
EIGHT_BIT_MAX_FRACTION = 0.5  # 8-bit optimizer states: at most half the float32 states' bytes (~0.27 expected)


def q(value: Any, unit: str, how: str) -> dict[str, Any]:
    """A figure: value (None where there is none; NaN becomes None), its unit and how it was obtained."""
    if isinstance(value, float) and not math.isfinite(value):
        value = None
    return {"value": value, "unit": unit, "how": how}


def val(x: Any) -> Any:
    """The value of a figure (or x itself)."""
    return x.get("value") if isinstance(x, dict) and "how" in x else x


def kind(x: Any) -> str:
    return x["how"].split(":")[0].strip() if isinstance(x, dict) and x.get("how") else ""


def _percent(a: Any, b: Any) -> float | None:
    a, b = val(a), val(b)
    return 100.0 * (a - b) / b if a is not None and b else None


def _rows(part: dict) -> list[dict]:
    return [r for r in part.get("rows", []) if isinstance(r, dict)]


def _row_failures(part: dict) -> list[str]:
    out = []
    for row in _rows(part):
        if row.get("error"):
            out.append(f"{row.get('label', '?')}: {row.get('status', ERROR)}: {row['error']}")
    return out


# --- Acceptance rules, per part: (part, mode) -> failures in words ----------------------------------------------

def _device_rules(part: dict, mode: str) -> list[str]:
    return [f"the devices are {part.get('platform')!r}, not GPUs"] if mode == "gpu" and part.get("platform") != "gpu" \
        else []


def _reversible_rules(part: dict, mode: str) -> list[str]:
    del mode
    out, cases = [], [c for c in part.get("cases", []) if isinstance(c, dict)]
    for case in cases:
        rel, tolerance = val(case.get("rel")), case.get("tolerance")
        if case.get("error"):
            out.append(f"{case.get('name')}: error: {case['error']}")
        elif rel is None or tolerance is None or rel > tolerance:
            line = (f"{case.get('name')} at {case.get('precision')!r} precision: relative error {_fmt(rel)} > "
                    f"{tolerance}")
            other = [c for c in cases if c.get("name") == case.get("name") and c is not case]
            if case.get("precision") == "default" and other and all(
                    val(c.get("rel")) is not None and val(c["rel"]) <= c["tolerance"] for c in other):
                line += (" (within tolerance at 'highest': TF32/cuDNN rounding breaks exactness on this GPU; the fix "
                         "belongs in sv_jax/models/reversible.py, e.g. precision=HIGHEST inside the stages)")
            out.append(line)
    return out


def _memory_rules(part: dict, mode: str) -> list[str]:
    out, rows = _row_failures(part), [r for r in _rows(part) if not r.get("error")]
    if mode != "gpu":
        return out
    plain = next((r for r in rows if r.get("reversible") == "none" and r.get("state_bits") == 32), None)
    for row in rows:
        if val(row.get("peak_bytes_in_use")) is None:
            out.append(f"{row['label']}: no measured peak ({row.get('peak_bytes_in_use', {}).get('how', '?')})")
        if plain is None or row is plain:
            continue
        if row.get("reversible") != "none" and not val(row["activation_bytes"]) < val(plain["activation_bytes"]):
            out.append(f"{row['label']}: XLA temporaries {_mib(row['activation_bytes'])} MiB not below the plain "
                       f"model's {_mib(plain['activation_bytes'])} MiB")
        if row.get("state_bits") == 8 and not (val(row["optimizer_state_bytes"]) <= EIGHT_BIT_MAX_FRACTION
                                               * val(plain["optimizer_state_bytes"])):
            out.append(f"{row['label']}: optimizer state {_mib(row['optimizer_state_bytes'])} MiB, not under "
                       f"{EIGHT_BIT_MAX_FRACTION:.0%} of float32's {_mib(plain['optimizer_state_bytes'])} MiB")
    return out


def _energy_rules(row: dict, mode: str) -> list[str]:
    out, label = [], row.get("label", "?")
    if val(row.get("mfu")) is not None and val(row["mfu"]) > 1.0:
        out.append(f"{label}: MFU {_fmt(val(row['mfu']))} > 1: the FLOP count or the peak is wrong")
    if mode != "gpu":
        return out
    if val(row.get("j_per_step")) is None:
        out.append(f"{label}: no energy figure ({row.get('energy_unavailable') or 'no reason recorded'})")
    for index, window in enumerate(row.get("windows", []), start=1):
        for ref, name, tolerance in (("zeus_gpu_j", "Zeus", ZEUS_TOLERANCE),
                                     ("smi_gpu_j", "nvidia-smi", SMI_TOLERANCE)):
            diff = _percent(window.get("monitor_gpu_j"), window.get(ref))
            if diff is not None and abs(diff) > 100 * tolerance:
                out.append(f"{label} window {index}: EnergyMonitor {_fmt(val(window['monitor_gpu_j']))} J vs "
                           f"{name} {_fmt(val(window[ref]))} J ({diff:+.1f}%, tolerance {100 * tolerance:.0f}%)")
    return out


def _throughput_rules(part: dict, mode: str) -> list[str]:
    return _row_failures(part) + [f for r in _rows(part) if not r.get("error") for f in _energy_rules(r, mode)]


def _sweep_rules(part: dict, mode: str) -> list[str]:
    out = _throughput_rules(part, mode)
    fit = part.get("fit") or {}
    sources = sorted({r.get("flops_source") for r in _rows(part) if not r.get("error")
                      and val(r.get("j_per_step")) is not None})
    if len(sources) > 1 and not fit.get("refused"):
        out.append(f"the rows' FLOPs come from different sources {sources}: their fit compares unlike counts")
    if fit.get("refused"):
        out.append(f"fit refused: {fit['refused']}")
    elif mode == "gpu" and val(fit.get("slope_j_per_tflop")) is None:
        out.append(f"no J-vs-FLOPs fit ({fit.get('reason', 'fewer than two rows with energy')})")
    return out


def _flops_rules(part: dict, mode: str) -> list[str]:
    del mode
    return _row_failures(part)


RULES: dict[str, Callable[[dict, str], list[str]]] = {
    "device": _device_rules, "reversible": _reversible_rules, "memory": _memory_rules,
    "throughput": _throughput_rules, "sweep": _sweep_rules, "flops": _flops_rules}


def failures(results: dict) -> list[str]:
    """Every failed acceptance check, in words: errors, parts not run or missing, figures out of tolerance."""
    out, mode, parts = [], results.get("mode", "gpu"), results.get("parts") or {}
    for name in PARTS:
        part = parts.get(name)
        if not isinstance(part, dict):
            out.append(f"{name}: missing from the results (the check did not run or its record was lost)")
        elif part.get("status") in (ERROR, NOT_RUN):
            out.append(f"{name}: {part['status']}: {part.get('error') or 'no reason recorded'}")
        else:
            out += [f"{name}: {line}" for line in RULES[name](part, mode)]
    wall, budget = val(results.get("wall_s")), results.get("budget_s", BUDGET_S)
    if mode == "gpu" and wall is not None and wall > budget:
        out.append(f"time: the run took {wall:.0f} s, over its {budget}-s budget")
    return out


def notes(results: dict) -> list[str]:
    """What was not checked, or is suspect without failing: a missing reference, incomplete windows, caveats."""
    out, parts = [], results.get("parts") or {}
    for name in PARTS:
        part = parts.get(name) if isinstance(parts.get(name), dict) else {}
        out += [f"{name}: {n}" for n in part.get("notes", [])]
        for row in (r for r in _rows(part) if not r.get("reused")):
            if row.get("flops_note"):
                out.append(f"{name} {row.get('label')}: FLOP count: {row['flops_note']}")
            for key in ("zeus", "nvidia_smi"):
                if row.get(key) and row[key] != "ok":
                    out.append(f"{name} {row.get('label')}: {key.replace('_', '-')} not compared: {row[key]}")
            out += [f"{name} {row.get('label')}: {w}" for w in row.get("window_warnings", [])]
            ratio = val(row.get("step_to_forward"))
            if ratio is not None and ratio < STEP_TO_FORWARD_MIN:
                out.append(f"{name} {row.get('label')}: train step / forward FLOPs {ratio:.2f} < "
                           f"{STEP_TO_FORWARD_MIN}: the count may miss the weight gradients")
    return list(dict.fromkeys(out))


# --- Markdown ----------------------------------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value == 0.0:
            return "0"
        if 1e4 <= abs(value) < 1e9:
            return f"{value:,.0f}"
        return f"{value:.3g}" if abs(value) >= 1e9 or abs(value) < 1e-2 else f"{value:.4g}"
    return str(value).replace("|", "/").replace("\n", " ")


def _mib(x: Any) -> str:
    return _fmt(val(x) / 2**20) if val(x) is not None else "n/a"


def _table(rows: list[dict], columns: list[tuple[str, str]], scale: dict[str, tuple[float, str]] | None = None
           ) -> list[str]:
    """A markdown table of `rows` with (header, key) columns; figures get '(unit, kind)' in the header and their
    `how` below the table. `scale` maps a key to (divisor, unit), e.g. bytes to MiB."""
    scale, headers, hows = scale or {}, [], {}
    columns = [(h, k) for h, k in columns if k != "error" or any(k in r for r in rows)]  # errors only where any
    for header, key in columns:
        figure = next((r[key] for r in rows if isinstance(r.get(key), dict) and "how" in r[key]), None)
        if figure is None:
            headers.append(header)
            continue
        unit = scale.get(key, (1, figure.get("unit")))[1]
        shown = unit and unit != "1" and unit != header
        headers.append(f"{header} ({unit}, {kind(figure)})" if shown else f"{header} ({kind(figure)})")
        hows[header] = figure["how"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        cells = []
        for _, key in columns:
            value = val(row.get(key))
            if key in scale and isinstance(value, (int, float)) and not isinstance(value, bool):
                value = value / scale[key][0]
            cells.append(_fmt(value))
        lines.append("| " + " | ".join(cells) + " |")
    return lines + [""] + [f"- {header}: {how}" for header, how in hows.items()] + [""]


def _cell(value: Any) -> tuple[str, str]:
    """(value, how) of a device-table entry: a figure, a {name: figure or value} dict, a list or a plain value."""
    if isinstance(value, dict) and "how" in value:
        return _fmt(val(value)), value["how"]
    if isinstance(value, dict):
        cells = {k: _cell(v) for k, v in value.items()}
        hows = "; ".join(dict.fromkeys(h for _, h in cells.values() if h))
        return (", ".join(f"{k}: {v}" for k, (v, _) in cells.items()) or "none"), hows
    if isinstance(value, list):
        return (", ".join(_fmt(json.dumps(v) if isinstance(v, dict) else v) for v in value) or "none"), ""
    return _fmt(value), ""


def _device_md(part: dict) -> list[str]:
    lines = ["| | value | how |", "|---|---|---|"]
    for key in ("platform", "device_kind", "devices", "driver_version", "cuda_driver_version", "nvml", "jax", "jaxlib",
                "cuda_plugin", "peak_tflops", "idle_w", "idle_w_std", "energy_sources", "energy_unavailable",
                "nvml_boards"):
        if key in part:
            value, how = _cell(part[key])
            lines.append(f"| {key} | {_fmt(value)} | {_fmt(how)} |")
    return lines + [""]


def _reversible_md(part: dict) -> list[str]:
    cases = [dict(c) for c in part.get("cases", []) if isinstance(c, dict)]
    for case in cases:
        rel, tol = val(case.get("rel")), case.get("tolerance")
        case["pass"] = None if rel is None or tol is None else rel <= tol
    return [f"Tolerances: inversion {INVERSION_TOLERANCE:g}, gradients {GRADIENT_TOLERANCE:g} (relative, norm of "
            "the difference over the norm of the reference, worst leaf). Precision 'default' is JAX's, what "
            "training runs; a case out of tolerance is run again at 'highest' (no TF32) to tell whether TF32 is the "
            "cause.", ""] + _table(
        cases, [("case", "name"), ("precision", "precision"), ("max abs error", "max_abs"),
                ("relative error", "rel"), ("tolerance", "tolerance"), ("pass", "pass")])


def _memory_md(part: dict) -> list[str]:
    mib = {k: (2**20, "MiB") for k in ("params_bytes", "optimizer_state_bytes", "batch_stats_bytes",
                                       "activation_bytes", "argument_bytes", "peak_bytes_in_use", "peak_before_bytes")}
    return _table(_rows(part), [("variant", "label"), ("batch", "batch"), ("params", "params_bytes"),
                                ("optimizer state", "optimizer_state_bytes"), ("XLA temporaries", "activation_bytes"),
                                ("arguments", "argument_bytes"), ("peak in use", "peak_bytes_in_use"),
                                ("peak before the step", "peak_before_bytes"), ("peak separable", "peak_separable"),
                                ("compile", "compile_s"), ("error", "error")], mib)


def _window_rows(rows: list[dict]) -> list[dict]:
    out = []
    for row in rows:
        for index, w in enumerate(row.get("windows", []), start=1):
            out.append({**w, "label": f"{row.get('label')} #{index}",
                        "zeus_diff": q(_percent(w.get("monitor_gpu_j"), w.get("zeus_gpu_j")), "%",
                                       "derived: (EnergyMonitor - Zeus) / Zeus"),
                        "smi_diff": q(_percent(w.get("monitor_gpu_j"), w.get("smi_gpu_j")), "%",
                                      "derived: (EnergyMonitor - nvidia-smi) / nvidia-smi")})
    return out


SPEED_COLUMNS = [("row", "label"), ("utt/s", "utt_per_s"), ("TFLOP/s", "tflops"), ("MFU", "mfu"),
                 ("J/utt", "j_per_utt"), ("dynamic J/utt", "dynamic_j_per_utt"), ("FLOP source", "flops_source"),
                 ("compile", "compile_s"), ("error", "error")]


def _throughput_md(part: dict) -> list[str]:
    rows = _rows(part)
    windows = _window_rows(rows)
    return _table(rows, SPEED_COLUMNS) + ["The same windows, GPU Joules by three meters:", ""] + _table(
        windows, [("window", "label"), ("s", "seconds"), ("EnergyMonitor", "monitor_gpu_j"), ("Zeus", "zeus_gpu_j"),
                  ("nvidia-smi", "smi_gpu_j"), ("vs Zeus", "zeus_diff"), ("vs nvidia-smi", "smi_diff"),
                  ("complete", "complete")])


def _sweep_md(part: dict) -> list[str]:
    rows, fit = _rows(part), part.get("fit") or {}
    lines = _table(rows, [("model", "label"), ("TFLOP/step", "train_step_tflop"), ("J/step", "j_per_step"),
                          ("J/step sd", "j_per_step_std"), *SPEED_COLUMNS[1:]])
    if fit.get("refused") or val(fit.get("slope_j_per_tflop")) is None:
        return lines + [f"No fit: {fit.get('refused') or fit.get('reason', 'fewer than two rows with energy')}.", ""]
    lines.append(f"Least squares J/step = slope x TFLOP/step + fit constant over {fit.get('n')} models "
                 f"({fit.get('how', 'fit')}):")
    lines += ["", "| Joules | slope (J/TFLOP) | fit constant (J) | R² |", "|---|---|---|---|"]
    for name, prefix in (("total", ""), ("dynamic (idle subtracted)", "dynamic_")):
        if val(fit.get(f"{prefix}slope_j_per_tflop")) is not None:
            lines.append(f"| {name} | {_fmt(val(fit[prefix + 'slope_j_per_tflop']))} | "
                         f"{_fmt(val(fit[prefix + 'constant_j']))} | {_fmt(val(fit[prefix + 'r2']))} |")
    return lines + [""]


def _flops_md(part: dict) -> list[str]:
    return _table(_rows(part), [("program", "label"), ("batch", "batch"), ("train step source", "train_step_source"),
                                ("forward source", "forward_source"), ("notes", "notes_on_counts"),
                                ("train step GFLOP/utt", "train_step_gflop_per_utt"),
                                ("forward GFLOP/utt", "forward_gflop_per_utt"),
                                ("analytic forward GFLOP/utt", "forward_gflop_per_utt_analytic"),
                                ("step / forward", "step_to_forward"), ("counting", "count_s"), ("error", "error")])


SECTIONS = {"device": _device_md, "reversible": _reversible_md, "memory": _memory_md, "throughput": _throughput_md,
            "sweep": _sweep_md, "flops": _flops_md}


def markdown(results: dict) -> str:
    """The human-readable report: failures first, then what was not checked, the time per part, one section each."""
    parts, mode = results.get("parts") or {}, results.get("mode", "gpu")
    machine = results.get("machine") or {}
    lines = [f"# GPU acceptance check, {results.get('date', '?')}", "",
             f"`{results.get('command', '?')}` on {machine.get('devices', '?')} (driver "
             f"{machine.get('driver_version') or 'n/a'}, jax {machine.get('jax', '?')}), {machine.get('cpu', '?')}; "
             f"{_fmt(val(results.get('wall_s')))} s of a {results.get('budget_s', BUDGET_S)}-s budget.", ""]
    if mode != "gpu":
        lines += [f"**{mode}**: tiny shapes on the CPU, to exercise the pipeline. No figure here is a GPU "
                  "acceptance result.", ""]
    failed = failures(results)
    lines += ["## Failures", ""] + ([f"- {f}" for f in failed] or ["None: every acceptance check passed."]) + [""]
    lines += ["## Not checked, warnings", ""] + ([f"- {n}" for n in notes(results)] or ["None."]) + [""]
    lines += ["## Time", "", "| part | planned s | took s | status |", "|---|---|---|---|"]
    for name in PARTS:
        part = parts.get(name) if isinstance(parts.get(name), dict) else {}
        lines.append(f"| {name} | {_fmt(part.get('planned_s'))} | {_fmt(val(part.get('seconds')))} | "
                     f"{part.get('status', 'missing')} |")
    lines.append("")
    for name in PARTS:
        part = parts.get(name)
        lines += [f"## {TITLES[name]}", ""]
        if not isinstance(part, dict):
            lines += ["**error**: missing from the results.", ""]
            continue
        if part.get("status") in (ERROR, NOT_RUN):
            lines += [f"**{part['status']}**: {_fmt(part.get('error'))}", ""]
            continue
        if part.get("description"):
            lines += [part["description"], ""]
        try:
            lines += SECTIONS[name](part)
        except Exception as error:  # pylint: disable=broad-except  # a malformed record must not lose the report
            lines += [f"**error**: could not render this part ({type(error).__name__}: {error})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _finite(x: Any) -> Any:
    """NaN and infinities (which JSON has not) as None, anywhere in the results."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    return x


def write(out: str | pathlib.Path, results: dict) -> tuple[pathlib.Path, pathlib.Path]:
    """Writes <out>/gpu_check.json and <out>/gpu_check.md; returns their paths."""
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out / "gpu_check.json", out / "gpu_check.md"
    json_path.write_text(json.dumps(_finite(results), indent=1, default=str, allow_nan=False) + "\n")
    md_path.write_text(markdown(results))
    return json_path, md_path
