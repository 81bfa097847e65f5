"""Running a sweep: per model variant, its cost counts and steady-state energy (or time), one row each, resumable.

For every variant of a sweep config (configs/sweeps/): the variant's config is the sweep's base config with the
sweep's and the variant's overrides; its train step and forward are compiled as training compiles them
(sv_jax.programs: state replicated and donated, batch sharded over all local devices) and run on one random
in-memory batch of the config's shape. Recorded: parameters, the checked FLOP and byte counts of one train step and
one forward call (counted by XLA, not measured; each with its source, `<program>_flops_source`), the step's memory,
then repeated windows of back-to-back calls of each program (profiling.windows): seconds and Joules per call, and
the Joules above the idle baseline (`<program>_dynamic_j_mean` and `_dynamic_j_std`, where a baseline was taken),
mean and spread over the windows. Optionally the variant is also trained
(`python -m sv_jax.main` in a subprocess, <out>/train/<variant>) and its EER read from summary.json.

Rows go to the results directory (profiling.study.results). A rerun skips variants whose latest row is done and
retries failed ones; sweep.json pins what the rows were measured with, so quick and full numbers, or two sweeps,
never mix in one directory. Column names: profiling.names (`train_step_flops`, `forward_j_mean`, ...).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import pathlib
import platform
import subprocess
import sys
from typing import Any, Callable, Iterable, Mapping

import jax
import ml_collections

from profiling import carbon
from profiling import energy as energy_lib
from profiling import names
from profiling import windows as windows_lib
from profiling.study import results
from profiling.study import sweeps
from profiling.study.sweeps import Settings
from sv_jax import costs
from sv_jax import models
from sv_jax import programs as programs_lib
from sv_jax import tasks
from sv_jax.tagging import models as tagging_models

log = logging.getLogger(__name__)


# --- One variant --------------------------------------------------------------------------------------------------

def _model_fields(config, variant: str) -> dict[str, Any]:
    """The columns that say which model a row is: a ResNet's block, blocks per stage and width; a tagger's family,
    size (from a variant named '<family>-<size>', as configs/sweeps/tagging.py names them) and architecture."""
    model = config.model
    if tasks.get(config).name == "tagging":
        family, _, size = variant.partition("-")
        return {"task": "tagging", "model": model.name, "family": model.name,
                "size": size if family == model.name else "", "dtype": model.dtype,
                "architecture": tagging_models.describe(tagging_models.create_tagging_model(model, 10))}
    block, num_blocks = models.resolve_architecture(model)
    return {"model": model.name, "block": block, "num_blocks": "-".join(map(str, num_blocks)), "width": model.width,
            "dtype": model.dtype, "reversible": model.reversible}


def series_fields(program: str, series: windows_lib.WindowSeries) -> dict[str, Any]:
    """A row's columns of `program`'s windows: WindowSeries.fields and the spread of the idle-subtracted Joules per
    call (`<program>_dynamic_j_std`, for the study's weighted fit; None without an idle baseline)."""
    return series.fields(program) | {names.key(program, "dynamic_j_std"): series.per_call(series.dynamic_j)[1]}


def measure_variant(config: ml_collections.ConfigDict, setup: Settings, monitor: energy_lib.EnergyMonitor,
                    devices=None, status: Callable[[str], None] = lambda text: None, variant: str = ""
                    ) -> dict[str, Any]:
    """FLOP and byte counts (XLA's), memory and measured steady-state windows of one config's train step and
    forward on `devices`."""
    devices = list(devices or jax.local_devices())
    batch_size, frames = config.data.batch_size, config.data.num_frames
    status("compiling")
    programs = programs_lib.compile_programs(config, batch_size, costs.default_num_classes(config), devices)
    task = programs.lowered.components.task
    cost = {names.TRAIN_STEP: programs.train_step_cost, names.FORWARD: programs.forward_cost}
    memory = costs.step_memory(programs.train_step, programs.state, batch_size=batch_size)
    carry = {"state": programs.init_state(config.seed)}
    batch = programs.random_batch(config.seed)
    step_fn, forward_fn = programs.train_step, programs.forward

    def train_step(n):
        for _ in range(n):
            carry["state"], _ = step_fn(carry["state"], batch)
        jax.block_until_ready(carry["state"])

    def forward(n):
        out = None
        for _ in range(n):
            out = forward_fn(carry["state"].variables, batch["feats"])
        jax.block_until_ready(out)

    status("warm-up")
    for fn in (train_step, forward):
        for _ in range(setup.warmup_steps):
            fn(1)
    measured = {}
    for program, fn in ((names.TRAIN_STEP, train_step), (names.FORWARD, forward)):
        status(f"{program} windows")
        measured[program] = windows_lib.measure_windows(program, fn, monitor, window_s=setup.window_s,
                                                        repetitions=setup.repetitions, cooldown_s=setup.cooldown_s)
    row = {
        **_model_fields(config, variant), "batch_size": batch_size,
        "num_frames": frames, "num_devices": programs.mesh.size, "device_kind": devices[0].device_kind,
        **task.param_counts(programs.state.params),
        "flops_source": ", ".join(sorted({c.source for c in cost.values()})),
        "forward_macs_per_utt_analytic": programs.forward_macs_per_utt,
        "params_bytes": memory.params_bytes, "optimizer_state_bytes": memory.optimizer_state_bytes,
        "activation_bytes": memory.activation_bytes, "idle_w": sum(monitor.idle_w.values()) or None,
    }
    for program, series in measured.items():
        row[names.key(program, "flops")] = cost[program].flops
        row[names.key(program, "bytes_accessed")] = cost[program].bytes_accessed
        row[names.key(program, "flops_source")] = cost[program].source
        row |= series_fields(program, series)
    train_j = row[names.key(names.TRAIN_STEP, "j_mean")]
    row["energy_sources"] = "; ".join(f"{d}: {s}" for d, s in sorted(measured[names.TRAIN_STEP].sources.items()))
    row["energy_unavailable"] = "" if train_j is not None else monitor.unavailable_reason()
    row["window_warnings"] = [w for m in measured.values() for w in m.warnings]
    row["windows"] = {program: dataclasses.asdict(m) for program, m in measured.items()}
    return row


def train_variant(sweep: ml_collections.ConfigDict, overrides: Mapping[str, Any], workdir: pathlib.Path
                  ) -> dict[str, Any]:
    """Trains the variant with `python -m sv_jax.main` (resuming if a run is there) and reads its summary.json."""
    summary_path = workdir / "summary.json"
    if not summary_path.exists():
        workdir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "sv_jax.main", f"--config={sweep.base_config}", f"--workdir={workdir}",
                   *sweeps.command_line_flags(overrides)]
        log_path = workdir / "train.log"
        with open(log_path, "a") as log_file:
            log_file.write(" ".join(command) + "\n")
            log_file.flush()
            code = subprocess.call(command, stdout=log_file, stderr=subprocess.STDOUT)
        if code != 0:
            tail = log_path.read_text().splitlines()[-5:]
            raise RuntimeError(f"training exited with {code}; see {log_path}: " + " | ".join(tail))
    summary = json.loads(summary_path.read_text())
    profile_train = summary.get("profile", {}).get("train", {})
    run = {"train_run_steps": summary["steps"], "train_run_seconds": summary["wall_seconds"],
           # every (re)start of the run's measured windows (train.run), or this start's where older summaries lack it
           "train_run_kwh": profile_train.get("run", {}).get("kwh", profile_train.get("kwh"))}
    if summary.get("task") == "tagging":
        return {"map": summary["eval"]["map"], "macro_f1": summary["eval"]["f1_macro"],
                "eval_clips": summary["eval"]["clips"], **run}
    trials = next((k for k in summary["eval"] if not k.endswith("_asnorm")), None)
    if trials is None:
        raise RuntimeError(f"{summary_path}: no evaluation results (no trial list configured?)")
    result = summary["eval"][trials]
    return {"eer_percent": result["eer_percent"], "min_dcf_p01": result.get("min_dcf_p01"), "eer_trials": trials,
            **run}


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


def run_sweep(sweep: ml_collections.ConfigDict, out: str | os.PathLike, *, quick: bool = False,
              train: bool | None = None, only: Iterable[str] = (), monitor: energy_lib.EnergyMonitor | None = None,
              devices=None, progress: bool = True) -> dict[str, dict[str, Any]]:
    """Measures every variant (or those in `only`) not yet done in `out`; returns the latest rows by variant."""
    from tqdm import tqdm  # Lazily: only the command line shows a bar.
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    devices = list(devices or jax.local_devices())
    setup = sweeps.settings(sweep, quick, train)
    variants = list(only) or sweeps.variant_names(sweep)
    for name in variants:
        sweeps.variant_config(sweep, name, quick, len(devices))  # all checked before any runs
    meta = {"sweep": sweep.name, "description": sweep.description, "quick": quick,
            "base_config": sweep.base_config, "settings": dataclasses.asdict(setup),
            "projection": sweep.projection.to_dict(), "variants": sweeps.variant_names(sweep),
            "grid": dataclasses.asdict(carbon.from_profile_config(
                sweeps.load_config_file(sweep.base_config).profile)),
            "machine": machine()}
    results.pin_meta(out, meta)
    rows = results.read_rows(out)
    todo = [n for n in variants if rows.get(n, {}).get("status") != results.DONE]
    own_monitor = monitor is None
    profile = sweeps.load_config_file(sweep.base_config).profile
    # The boards behind the sweep's devices (profile.nvml_gpus), and RAPL; the idle baseline before any compilation.
    monitor = monitor or energy_lib.EnergyMonitor(
        [energy_lib.NvmlSensor(profile.nvml_gpus, devices=devices), energy_lib.RaplSensor()], poll_interval_s=0.1)
    if monitor.available and setup.idle_s > 0:
        monitor.measure_idle(setup.idle_s, settle_s=profile.idle_settle_s, parts=profile.idle_parts)
    bar = tqdm(total=len(variants), initial=len(variants) - len(todo), disable=not progress, unit="variant",
               desc=f"{sweep.name}{' (quick)' if quick else ''}", file=sys.stderr)
    try:
        for name in todo:
            show = lambda text, name=name: bar.set_postfix_str(f"{name}: {text}")
            row = {"sweep": sweep.name, "variant": name, "quick": quick, "status": results.DONE,
                   "measured_at": datetime.datetime.now().isoformat(timespec="seconds")}
            try:
                config = sweeps.variant_config(sweep, name, quick, len(devices))
                row |= measure_variant(config, setup, monitor, devices, show, variant=name)
                # For the projection to the recipe's chunk length (profiling.study.analysis).
                projected = config.copy_and_resolve_references()
                projected.data.num_frames = sweep.projection.num_frames
                row["forward_macs_per_utt_projection"] = tasks.get(config).forward_macs(
                    projected, costs.default_num_classes(config))
                if setup.train:
                    show("training")
                    overrides = sweeps.merge(sweeps.variant_overrides(sweep, name),
                                             sweep.quick.train_overrides if quick else sweep.train.overrides)
                    row |= train_variant(sweep, _with_synthetic_root(overrides, out), out / "train" / name)
            except Exception as error:  # pylint: disable=broad-except  # one variant failing (OOM) keeps the rest
                log.exception("variant %s failed", name)
                row["status"] = f"failed: {type(error).__name__}: {error}"
            rows[name] = row
            results.append_row(out, row)
            results.write_csv(out, [rows[n] for n in sweeps.variant_names(sweep) if n in rows])
            bar.update()
    finally:
        bar.close()
        if own_monitor:
            monitor.close()
    return rows


def _with_synthetic_root(overrides: dict[str, Any], out: pathlib.Path) -> dict[str, Any]:
    """Variants trained on the synthetic corpus share one copy of it in <out>/synthetic."""
    data = overrides.get("data", {})
    if data.get("source") == "synthetic" and "tagging" in data and not data["tagging"].get("synthetic_root"):
        return sweeps.merge(overrides, {"data": {"tagging": {
            "synthetic_root": str((out / "tagging_synthetic").resolve())}}})
    if data.get("source") == "synthetic" and not data.get("synthetic", {}).get("root"):
        return sweeps.merge(overrides, {"data": {"synthetic": {"root": str((out / "synthetic").resolve())}}})
    return overrides
