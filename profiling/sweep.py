"""Running a sweep: per model variant, its cost counts and steady-state energy (or time), one row each, resumable.

For every variant of a sweep config (configs/sweeps/): the variant's config is the sweep's base config with the
sweep's and the variant's overrides; its train step and inference are lowered and compiled as training runs them
(profiling.flops.lower_programs: state replicated, batch sharded over all local devices, state donated) on one
random in-memory batch of the config's shape. Recorded: parameters, XLA FLOPs and bytes of one train step and one
inference call (checked counts, see profiling.flops), the step's memory (profiling.memory), then repeated windows
of back-to-back calls, each at least `window_s` long and preceded by `cooldown_s` of idling, for the train step and
for inference: seconds and Joules per call, mean and spread over the windows. Optionally the variant is also
trained (`python -m sv_jax.main` in a subprocess, <out>/train/<variant>) and its EER read from summary.json.

Rows go to <out>/results.jsonl (append-only, with every window's measurement) and <out>/results.csv (rewritten from
the latest row per variant). A rerun skips variants whose latest row is done and retries failed ones; <out>/sweep.json
pins what the rows were measured with, so quick and full numbers, or two sweeps, never mix in one directory.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime
import json
import logging
import math
import os
import pathlib
import platform
import subprocess
import sys
import time
from typing import Any, Callable, Iterable, Mapping

import jax
import ml_collections
import numpy as np

from profiling import carbon
from profiling import energy as energy_lib
from profiling import flops as flops_lib
from profiling import memory as memory_lib
from profiling import sweep_config
from profiling.sweep_config import Settings
from sv_jax import models, parallel

log = logging.getLogger(__name__)

RESULTS_JSONL, RESULTS_CSV, META = "results.jsonl", "results.csv", "sweep.json"
DONE = "done"


# --- Windows ------------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Windows:
    """Repeated steady-state windows of one program: per-call seconds and Joules, mean and spread over windows."""

    calls: list[int]  # calls (train steps, inference batches) in each window
    seconds: list[float]
    energy_j: list[float | None]  # total over all measured domains; None where the window had no figure
    dynamic_j: list[float | None]  # energy above the idle baseline; None without a baseline
    sources: dict[str, str]
    warnings: list[str]
    unavailable: dict[str, str]

    def per_call(self, values: Iterable[float | None]) -> tuple[float | None, float | None]:
        """(mean, sample standard deviation) of value/calls over windows; None if any window lacks a figure."""
        values = list(values)
        if not values or any(v is None for v in values):
            return None, None
        x = np.asarray(values, float) / np.asarray(self.calls, float)
        return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0


def measure_windows(name: str, run: Callable[[int], Any], monitor: energy_lib.EnergyMonitor, *, window_s: float,
                    repetitions: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> Windows:
    """`repetitions` windows of `run(n)` (n calls, blocking until done), each at least `window_s` of whole calls.

    One call first sets the window's length in calls; a window that falls short is topped up before it closes.
    `clock` must be the monitor's clock (tests pass one FakeClock to both).
    """
    start = clock()
    run(1)
    per_call = max(clock() - start, 1e-9)
    calls, seconds, energy, dynamic, warnings, sources = [], [], [], [], [], {}
    for repetition in range(repetitions):
        sleep(cooldown_s)
        n, done = max(1, math.ceil(window_s / per_call)), 0
        monitor.begin_window(name, sync=lambda: None)  # `run` returns only when its calls have finished
        start = clock()
        while True:
            run(n)
            done += n
            elapsed = clock() - start
            if elapsed >= window_s:
                break
            n = max(1, math.ceil((window_s - elapsed) / (elapsed / done)))
        m = monitor.end_window(name, sync=lambda: None)
        per_call = m.seconds / done
        calls.append(done)
        seconds.append(m.seconds)
        energy.append(m.total_j if m.available else None)
        dynamic.append(sum(m.dynamic_j().values()) if m.available and m.idle_w else None)
        warnings.extend(f"{name} window {repetition + 1}: {w}" for w in m.warnings)
        sources.update(m.sources)
    return Windows(calls, seconds, energy, dynamic, sources, warnings, dict(monitor.unavailable))


def window_fields(program: str, windows: Windows) -> dict[str, Any]:
    """A row's columns for `program` ('train': per step, 'infer': per inference call)."""
    unit = "step" if program == "train" else "call"
    s_mean, s_std = windows.per_call(windows.seconds)
    j_mean, j_std = windows.per_call(windows.energy_j)
    return {f"{program}_windows": len(windows.calls), f"{program}_calls_measured": sum(windows.calls),
            f"{program}_s_per_{unit}_mean": s_mean, f"{program}_s_per_{unit}_std": s_std,
            f"{program}_j_per_{unit}_mean": j_mean, f"{program}_j_per_{unit}_std": j_std,
            f"{program}_dynamic_j_per_{unit}_mean": windows.per_call(windows.dynamic_j)[0]}


# --- One variant --------------------------------------------------------------------------------------------------

def _architecture(config) -> tuple[str, str]:
    block, num_blocks = models.resolve_architecture(config.model)
    return block, "-".join(map(str, num_blocks))


def measure_variant(config: ml_collections.ConfigDict, setup: Settings, monitor: energy_lib.EnergyMonitor,
                    devices=None, status: Callable[[str], None] = lambda text: None) -> dict[str, Any]:
    """Counts, memory and steady-state windows of one config's train step and inference on `devices`."""
    devices = list(devices or jax.local_devices())
    mesh = parallel.create_mesh(devices)
    batch_size, frames, bins = config.data.batch_size, config.data.num_frames, config.data.num_mel_bins
    num_classes = flops_lib.default_num_classes(config)
    status("compiling")
    programs = flops_lib.lower_programs(config, batch_size, num_classes, devices)
    step_fn, embed_fn = programs.train_step.compile(), programs.forward.compile()
    train_cost = flops_lib.train_step_cost(config, step_fn, batch_size, num_classes, mesh.size)
    infer_cost = flops_lib.forward_step_cost(config, embed_fn, batch_size, num_classes, mesh.size)
    memory = memory_lib.memory_from_compiled(step_fn, programs.state, batch_size=batch_size)
    state, batch = flops_lib.random_inputs(programs, config, batch_size, num_classes, devices, config.seed)
    carry = {"state": state}

    def train(n):
        for _ in range(n):
            carry["state"], _ = step_fn(carry["state"], batch)
        jax.block_until_ready(carry["state"])

    def infer(n):
        out = None
        for _ in range(n):
            out = embed_fn(carry["state"].variables, batch["feats"])
        jax.block_until_ready(out)

    status("warm-up")
    for fn in (train, infer):
        for _ in range(setup.warmup_steps):
            fn(1)
    measured = {}
    for name, fn in (("train", train), ("infer", infer)):
        status(f"{name} windows")
        measured[name] = measure_windows(name, fn, monitor, window_s=setup.window_s,
                                         repetitions=setup.repetitions, cooldown_s=setup.cooldown_s)
    block, num_blocks = _architecture(config)
    row = {
        "model": config.model.name, "block": block, "num_blocks": num_blocks, "width": config.model.width,
        "dtype": config.model.dtype, "reversible": config.model.reversible, "batch_size": batch_size,
        "num_frames": frames, "num_devices": mesh.size, "device_kind": devices[0].device_kind,
        "params": models.count_params(programs.state.params["backbone"]),
        "head_params": models.count_params(programs.state.params["head"]),
        "train_flops_per_step": train_cost["flops"], "train_bytes_per_step": train_cost["bytes_accessed"],
        "infer_flops_per_call": infer_cost["flops"], "infer_bytes_per_call": infer_cost["bytes_accessed"],
        "flops_source": ", ".join(sorted({train_cost["source"], infer_cost["source"]})),
        "forward_macs_per_utt_analytic": flops_lib.analytic_forward_macs(config.model, frames, bins),
        "params_bytes": memory.params_bytes, "optimizer_state_bytes": memory.optimizer_state_bytes,
        "activation_bytes": memory.activation_bytes, "idle_w": sum(monitor.idle_w.values()) or None,
    }
    for name, windows in measured.items():
        row |= window_fields(name, windows)
    row["energy_sources"] = "; ".join(f"{d}: {s}" for d, s in sorted(measured["train"].sources.items()))
    row["energy_unavailable"] = ("" if row["train_j_per_step_mean"] is not None else
                                 "; ".join(f"{k}: {v}" for k, v in measured["train"].unavailable.items())
                                 or "no energy sensor")
    row["window_warnings"] = [w for m in measured.values() for w in m.warnings]
    row["windows"] = {name: dataclasses.asdict(m) for name, m in measured.items()}
    return row


def train_variant(sweep: ml_collections.ConfigDict, overrides: Mapping[str, Any], workdir: pathlib.Path
                  ) -> dict[str, Any]:
    """Trains the variant with `python -m sv_jax.main` (resuming if a run is there) and reads its summary.json."""
    summary_path = workdir / "summary.json"
    if not summary_path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "sv_jax.main", f"--config={sweep.base_config}", f"--workdir={workdir}",
                   *sweep_config.command_line_flags(overrides)]
        log_path = workdir / "train.log"
        with open(log_path, "a") as log_file:
            log_file.write(" ".join(command) + "\n")
            log_file.flush()
            code = subprocess.call(command, stdout=log_file, stderr=subprocess.STDOUT)
        if code != 0:
            tail = log_path.read_text().splitlines()[-5:]
            raise RuntimeError(f"training exited with {code}; see {log_path}: " + " | ".join(tail))
    summary = json.loads(summary_path.read_text())
    trials = next((k for k in summary["eval"] if not k.endswith("_asnorm")), None)
    if trials is None:
        raise RuntimeError(f"{summary_path}: no evaluation results (no trial list configured?)")
    result = summary["eval"][trials]
    profile_train = summary.get("profile", {}).get("train", {})
    return {"eer_percent": result["eer_percent"], "min_dcf_p01": result.get("min_dcf_p01"), "eer_trials": trials,
            "train_run_steps": summary["steps"], "train_run_seconds": summary["wall_seconds"],
            "train_run_kwh": profile_train.get("kwh")}


# --- The sweep ----------------------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    devices = jax.local_devices()
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "platform": devices[0].platform,
            "devices": f"{len(devices)} x {devices[0].device_kind}", "processes": jax.process_count(),
            "jax": jax.__version__, "python": platform.python_version()}


def read_rows(out: pathlib.Path) -> dict[str, dict[str, Any]]:
    """The latest row per variant in <out>/results.jsonl (a truncated last line, from a kill, is ignored)."""
    rows: dict[str, dict[str, Any]] = {}
    path = out / RESULTS_JSONL
    if path.exists():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: unreadable line skipped (a run killed while writing?)", path, number)
                continue
            rows[row["variant"]] = row
    return rows


def _append_row(path: pathlib.Path, row: Mapping[str, Any]) -> None:
    with open(path, "a+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                f.write(b"\n")  # after a line cut short by a kill: start afresh rather than extend it
        f.write((json.dumps(row, default=str) + "\n").encode())


def write_csv(out: pathlib.Path, rows: Iterable[Mapping[str, Any]]) -> None:
    """results.csv with the scalar columns of `rows`, written atomically."""
    rows = list(rows)
    columns = list(dict.fromkeys(k for row in rows for k, v in row.items() if not isinstance(v, (dict, list))))
    tmp = out / (RESULTS_CSV + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, out / RESULTS_CSV)


def _check_meta(out: pathlib.Path, meta: dict[str, Any]) -> None:
    path = out / META
    if path.exists():
        old = json.loads(path.read_text())
        for key in ("sweep", "quick", "base_config"):
            if old.get(key) != meta[key]:
                raise ValueError(f"{out} holds results of {key}={old.get(key)!r}, this run has {meta[key]!r}: "
                                 "use another --out (rows measured differently must not mix)")
    path.write_text(json.dumps(meta, indent=2, default=str))


def run_sweep(sweep: ml_collections.ConfigDict, out: str | os.PathLike, *, quick: bool = False,
              train: bool | None = None, only: Iterable[str] = (), monitor: energy_lib.EnergyMonitor | None = None,
              devices=None, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Measures every variant (or those in `only`) not yet done in `out`; returns the latest rows by variant."""
    from tqdm import tqdm  # Lazily: only the command line shows a bar.
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    devices = list(devices or jax.local_devices())
    setup = sweep_config.settings(sweep, quick, train)
    names = list(only) or sweep_config.variant_names(sweep)
    for name in names:
        sweep_config.variant_config(sweep, name, quick, len(devices))  # all checked before any runs
    meta = {"sweep": sweep.name, "description": sweep.description, "quick": quick,
            "base_config": sweep.base_config, "settings": dataclasses.asdict(setup),
            "projection": sweep.projection.to_dict(), "variants": sweep_config.variant_names(sweep),
            "grid": dataclasses.asdict(carbon.from_profile_config(
                sweep_config.load_config_file(sweep.base_config).profile)),
            "machine": machine()}
    _check_meta(out, meta)
    rows = read_rows(out)
    todo = [n for n in names if rows.get(n, {}).get("status") != DONE]
    own_monitor = monitor is None
    monitor = monitor or energy_lib.EnergyMonitor(poll_interval_s=0.1)
    if monitor.available and setup.idle_s > 0:
        monitor.measure_idle(setup.idle_s)
    bar = tqdm(total=len(names), initial=len(names) - len(todo), disable=not progress, unit="variant",
               desc=f"{sweep.name}{' (quick)' if quick else ''}", file=sys.stderr)
    try:
        for name in todo:
            show = lambda text, name=name: bar.set_postfix_str(f"{name}: {text}")
            row = {"sweep": sweep.name, "variant": name, "quick": quick, "status": DONE,
                   "measured_at": datetime.datetime.now().isoformat(timespec="seconds")}
            try:
                config = sweep_config.variant_config(sweep, name, quick, len(devices))
                row |= measure_variant(config, setup, monitor, devices, show)
                # For the projection to the recipe's chunk length (profiling.study).
                row["forward_macs_per_utt_projection"] = flops_lib.analytic_forward_macs(
                    config.model, sweep.projection.num_frames, config.data.num_mel_bins)
                if setup.train:
                    show("training")
                    overrides = sweep_config.merge(sweep_config.variant_overrides(sweep, name),
                                       sweep.quick.train_overrides if quick else sweep.train.overrides)
                    row |= train_variant(sweep, _with_synthetic_root(overrides, out), out / "train" / name)
            except Exception as error:  # pylint: disable=broad-except  # one variant failing (OOM) keeps the rest
                log.exception("variant %s failed", name)
                row["status"] = f"failed: {type(error).__name__}: {error}"
            rows[name] = row
            _append_row(out / RESULTS_JSONL, row)
            write_csv(out, [rows[n] for n in sweep_config.variant_names(sweep) if n in rows])
            bar.update()
    finally:
        bar.close()
        if own_monitor:
            monitor.close()
    return rows


def _with_synthetic_root(overrides: dict[str, Any], out: pathlib.Path) -> dict[str, Any]:
    """Variants trained on the synthetic corpus share one copy of it in <out>/synthetic."""
    data = overrides.get("data", {})
    if data.get("source") == "synthetic" and not data.get("synthetic", {}).get("root"):
        return sweep_config.merge(overrides, {"data": {"synthetic": {"root": str((out / "synthetic").resolve())}}})
    return overrides
