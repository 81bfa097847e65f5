"""The GPU acceptance check's measurements: `Runner(plans.GPU_PLAN).run(command)` returns what report.py renders.

The parts run in the order of report.PARTS, each within the seconds plans.py plans for it; before each part and
each row the runner checks the time left, and a row the budget cannot hold is recorded as not run (a failure)
instead of overrunning it. A part or row that raises is recorded with its error and the rest runs. One EnergyMonitor
(the trainer's sensors, sv_jax.job_meter, with its idle baseline taken before anything compiles) and the trainer's
compiled programs (sv_jax.programs, compiled once per model, dtype and batch) are shared by all parts; windows are
profiling.windows'. Every figure is a report.q: value, unit, and how it was obtained.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import importlib
import importlib.metadata
import os
import platform
import shutil
import sys
import time
import traceback
from typing import Any, Callable

import jax
import numpy as np

import cli
from profiling import energy as energy_lib
from profiling import peaks
from profiling import windows as windows_lib
from profiling import xla_memory
from profiling.gpu_check import parity
from profiling.gpu_check import plans
from profiling.gpu_check import power
from profiling.gpu_check import report
from profiling.gpu_check.report import q, val
from sv_jax import costs
from sv_jax import job_meter
from sv_jax import parallel
from sv_jax import programs as programs_lib

MEASURED_STEP = "measured: mean over windows of window seconds / steps (profiling.windows, synchronised edges)"


def require_gpu(allow_cpu: bool) -> list[jax.Device]:
    """This process's devices; a cli.UserError (exit status 2) when none is a GPU, unless `allow_cpu`."""
    devices = jax.devices()
    platforms = sorted({d.platform for d in devices})
    if "gpu" not in platforms and not allow_cpu:
        raise cli.UserError(f"no GPU: jax.devices() are {', '.join(platforms)} ({len(devices)} x "
                            f"{devices[0].device_kind}); run this on a GPU node (with jax for CUDA: pip install "
                            "'jax[cuda12]')")
    return devices


def fit_line(x, y) -> tuple[float, float, float] | None:
    """Least squares y = slope * x + constant: (slope, constant, R²); None with fewer than two distinct x."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(np.unique(x)) < 2:
        return None
    design = np.stack([x, np.ones_like(x)], 1)
    (slope, constant), *_ = np.linalg.lstsq(design, y, rcond=None)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float(((y - design @ [slope, constant]) ** 2).sum()) / total if total > 0 else float("nan")
    return float(slope), float(constant), r2


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _nvml_driver() -> dict[str, str | None]:
    """The driver's version and the CUDA version it supports, read through NVML, or why they could not be."""
    out = {"driver_version": None, "cuda_driver_version": None, "nvml": "ok"}
    try:
        import pynvml  # pylint: disable=import-outside-toplevel  # optional: nvidia-ml-py
        pynvml.nvmlInit()
    except ImportError as error:
        return {**out, "nvml": f"pynvml not installed ({error})"}
    except Exception as error:  # pylint: disable=broad-except  # NVMLError: no driver, no library
        return {**out, "nvml": f"NVML unusable: {error}"}
    try:
        cuda = pynvml.nvmlSystemGetCudaDriverVersion()
        return {**out, "driver_version": str(pynvml.nvmlSystemGetDriverVersion()),
                "cuda_driver_version": f"{cuda // 1000}.{cuda % 1000 // 10}"}
    finally:
        pynvml.nvmlShutdown()


def machine(devices: list[jax.Device]) -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    return {"devices": f"{len(devices)} x {devices[0].device_kind}", "platform": devices[0].platform,
            **_nvml_driver(), "cpu": cpu, "cpu_count": os.cpu_count(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "jax": jax.__version__, "jaxlib": _version("jaxlib"),
            "cuda_plugin": _version("jax-cuda12-plugin") or _version("jax-cuda13-plugin"),
            "python": platform.python_version()}


class Runner:
    """Runs the plan's parts in order within `budget_s`, sharing one EnergyMonitor and the compiled programs."""

    def __init__(self, plan: plans.Plan, budget_s: float = report.BUDGET_S, *, parts=report.PARTS,
                 seed: int = 0) -> None:
        self.plan, self.budget_s, self.parts, self.seed = plan, budget_s, tuple(parts), seed
        self.start = time.monotonic()
        self.devices = jax.local_devices()
        self._meter: job_meter.JobMeter | None = None
        self._programs: dict[tuple, tuple[Any, float]] = {}  # (variant, dtype, batch) -> (programs, compile s)
        self._state: tuple[plans.Variant, Any] | None = None  # the last steps' state, for the next row of its model
        self._rows: dict[tuple, dict] = {}  # (variant, dtype, batch) -> its speed row, which the sweep reuses

    @property
    def monitor(self) -> energy_lib.EnergyMonitor:
        """The trainer's sensors (sv_jax.job_meter: the boards behind this process's JAX devices, RAPL), started
        on first use, with the idle baseline taken then: before anything compiles."""
        if self._meter is None:
            profile = importlib.import_module("configs.default").get_config().profile
            profile.idle_seconds, profile.idle_settle_s, profile.idle_parts = self.plan.idle_s, 2.0, 3
            self._meter = job_meter.start(profile, devices=self.devices)
        return self._meter.monitor

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.start)

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.start:6.1f} s] {text}", file=sys.stderr, flush=True)

    def run(self, command: str) -> dict[str, Any]:
        results = {"command": command, "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                   "machine": machine(self.devices), "mode": self.plan.mode, "budget_s": self.budget_s,
                   "plan": dataclasses.asdict(self.plan), "parts": {}}
        try:
            for name in report.PARTS:
                results["parts"][name] = (self._part(name, getattr(self, f"check_{name}")) if name in self.parts else
                                          {"status": report.NOT_RUN, "planned_s": plans.PLANNED_S[name],
                                           "error": f"not selected (--parts={','.join(self.parts)})"})
        finally:
            if self._meter is not None:
                self._meter.close()
        results["wall_s"] = q(time.monotonic() - self.start, "s", "measured: wall clock of all parts")
        return results

    def _part(self, name: str, check: Callable[[], dict]) -> dict:
        planned, start = plans.PLANNED_S[name], time.monotonic()
        if self.left() <= 0:
            return {"status": report.NOT_RUN, "planned_s": planned,
                    "error": f"the {self.budget_s:.0f}-s budget was spent before it started"}
        self.say(f"{name} (planned {planned} s, {self.left():.0f} s of the budget left)")
        try:
            result = {"status": report.DONE, **check()}
        except Exception as error:  # pylint: disable=broad-except  # a part that raised is recorded; the rest runs
            result = {"status": report.ERROR, "error": f"{type(error).__name__}: {error}",
                      "traceback": traceback.format_exc(limit=-6)}
        return {**result, "planned_s": planned,
                "seconds": q(time.monotonic() - start, "s", "measured: wall clock of the part")}

    def _row(self, label: str, measure: Callable[[], dict]) -> dict:
        if self.left() < self.plan.row_min_s:
            return {"label": label, "status": report.NOT_RUN,
                    "error": f"{max(self.left(), 0):.0f} s of the {self.budget_s:.0f}-s budget left"}
        self.say(f"  {label}")
        try:
            return {"label": label, **measure()}
        except Exception as error:  # pylint: disable=broad-except  # one row failing (out of memory) keeps the rest
            return {"label": label, "status": report.ERROR, "error": f"{type(error).__name__}: {error}"}

    def programs(self, variant: plans.Variant, batch: int, dtype: str | None = None):
        """(config, CompiledPrograms, compile seconds) of a variant: the trainer's, compiled once per dtype and
        batch."""
        config = variant.config(dtype)
        key = (variant, config.model.dtype, batch)
        if key not in self._programs:
            start = time.monotonic()
            compiled = programs_lib.compile_programs(config, batch, costs.default_num_classes(config), self.devices)
            self._programs[key] = compiled, time.monotonic() - start
        return (config, *self._programs[key])

    # -- device, reversible, memory -----------------------------------------------------------------------------

    def check_device(self) -> dict:
        monitor, info, kind = self.monitor, machine(self.devices), self.devices[0].device_kind
        result = {k: info[k] for k in ("platform", "driver_version", "cuda_driver_version", "nvml", "jax", "jaxlib",
                                       "cuda_plugin")}
        result |= {"device_kind": kind, "devices": [str(d) for d in self.devices],
                   "peak_tflops": {d: q(peak, "TFLOP/s", f"datasheet: {source}") for d, (peak, source) in
                                   ((d, peaks.peak_tflops(kind, d)) for d in ("float32", "bfloat16"))},
                   "energy_sources": dict(monitor.sources), "energy_unavailable": dict(monitor.unavailable),
                   "nvml_boards": [b.to_dict() for s in monitor.sensors for b in getattr(s, "boards", [])]}
        if monitor.idle_w:
            how = (f"measured: EnergyMonitor, {self.plan.idle_s:g} s idle after a 2-s settle, before anything "
                   f"compiled ({', '.join(sorted(monitor.idle_w))})")
            result["idle_w"] = q(sum(monitor.idle_w.values()), "W", how)
            result["idle_w_std"] = q(sum(getattr(monitor, "idle_w_std", {}).values()) or None, "W",
                                     f"{how}: spread of 3 parts, summed over domains")
        return result

    def check_reversible(self) -> dict:
        plan = self.plan
        notes = [] if plan.parity_models else [f"no whole-model case in the {plan.mode} plan (stages only)"]
        return {"notes": notes,
                "description": "The CPU tests' exactness checks (tests/test_reversible.py) on this device: a stage's "
                               "input reconstructed from its output; custom_vjp gradients against plain autodiff.",
                "cases": parity.parity_cases(inversion_blocks=plan.inversion_blocks,
                                             gradient_blocks=plan.gradient_blocks, stages=plan.gradient_stages,
                                             models=plan.parity_models, diagnose=plan.diagnose_precision)}

    def check_memory(self) -> dict:
        return {"rows": [self._row(v.label, lambda v=v: self._memory_row(v)) for v in self.plan.memory],
                "notes": ["'peak in use' is the process's allocator high-water mark after one step on a "
                          "zero state; the variants ran in the order shown, smallest expected peak first"]}

    def _memory_row(self, variant: plans.Variant) -> dict:
        batch = self.plan.memory_batch
        config, programs, compile_s = self.programs(variant, batch)
        before, _ = xla_memory.peak_bytes_in_use(programs.mesh.devices.flat[0])
        replicated = parallel.replicated(programs.mesh)
        state = jax.tree_util.tree_map(lambda s: jax.device_put(np.zeros(s.shape, s.dtype), replicated), programs.state)
        jax.block_until_ready(programs.train_step(state, programs.random_batch(self.seed)))
        memory = costs.step_memory(programs.train_step, programs.state, batch_size=batch)
        counted = "counted: XLA's buffer assignment of the compiled step, one device (profiling.xla_memory)"
        peak = memory.peak_bytes_in_use
        return {"model": config.model.name, "reversible": config.model.reversible,
                "state_bits": config.optim.state_bits, "batch": batch,
                "params_bytes": q(memory.params_bytes, "B", "counted: bytes of the state's parameters"),
                "optimizer_state_bytes": q(memory.optimizer_state_bytes, "B", "counted: bytes of the optimizer state"),
                "activation_bytes": q(memory.activation_bytes, "B", f"{counted}, temporaries"),
                "argument_bytes": q(memory.argument_bytes, "B", f"{counted}, arguments"),
                "peak_bytes_in_use": q(peak, "B", f"measured: {memory.peak_bytes_in_use_source}" if peak is not None
                                       else memory.peak_bytes_in_use_source),
                "peak_before_bytes": q(before, "B", "measured: the same high-water mark before this variant's step"),
                "peak_separable": None if peak is None or before is None else peak > before,
                "compile_s": q(compile_s, "s", "measured: wall clock of compile_programs")}

    # -- speed and energy ---------------------------------------------------------------------------------------

    def check_throughput(self) -> dict:
        plan, rows = self.plan, []
        zeus, zeus_status = power.zeus_monitor()
        for dtype in plan.dtypes:
            for batch in plan.throughput_batches:
                reused = plan.throughput in plan.sweep and batch == plan.sweep_batch and dtype == "float32"
                rows.append(self._row(f"{plan.throughput.label} b{batch} {dtype}", lambda b=batch, d=dtype, r=reused:
                                      self._speed_row(plan.throughput, b, d, plan.sweep_windows if r else 1,
                                                      (zeus, zeus_status))))
        return {"rows": rows}

    def check_sweep(self) -> dict:
        plan = self.plan
        rows = [self._row(f"{v.label} b{plan.sweep_batch}",
                          lambda v=v: self._speed_row(v, plan.sweep_batch, None, plan.sweep_windows))
                for v in plan.sweep]
        self._state = None
        good = [r for r in rows if not r.get("error") and val(r.get("j_per_step")) is not None]
        fit = {"how": "fit: least squares of the models' mean J per step (measured) on their FLOPs (counted)"}
        sources = sorted({r["flops_source"] for r in good})
        if len(sources) > 1:
            return {"rows": rows, "fit": {**fit, "refused": f"the rows' FLOPs come from different sources {sources}"}}
        for prefix in ("", "dynamic_"):
            points = [(val(r["train_step_tflop"]), val(r[f"{prefix}j_per_step"])) for r in good
                      if val(r[f"{prefix}j_per_step"]) is not None]
            line = fit_line(*zip(*points)) if len(points) >= 2 else None
            if line is None:
                fit.setdefault("reason", f"{len(points)} rows with {prefix}J per step")
                continue
            fit |= {f"{prefix}slope_j_per_tflop": q(line[0], "J/TFLOP", fit["how"]),
                    f"{prefix}constant_j": q(line[1], "J", fit["how"]), f"{prefix}r2": q(line[2], "1", fit["how"])}
        return {"rows": rows, "fit": {**fit, "n": len(good)}}

    def _speed_row(self, variant: plans.Variant, batch: int, dtype: str | None, repetitions: int,
                   references: tuple[Any, str] | None = None) -> dict:
        """Steady-state windows of the variant's train step; with `references` (Zeus, its status) Zeus and an
        nvidia-smi log measure the same windows."""
        config, programs, compile_s = self.programs(variant, batch, dtype)
        key = (variant, config.model.dtype, batch)
        if key in self._rows and len(self._rows[key]["windows"]) >= repetitions:
            return {**self._rows[key], "reused": "the throughput part's windows"}
        start = time.monotonic()
        cost = programs.train_step_cost
        compile_s += time.monotonic() - start
        leaves = lambda tree: [(a.shape, a.dtype) for a in jax.tree_util.tree_leaves(tree)]
        state = self._state[1] if self._state and self._state[0] == variant else None
        if state is None or leaves(state) != leaves(programs.state):  # float32 and bfloat16 share a state
            self._state = None
            state = programs.init_state(self.seed)
        data, carry = programs.random_batch(self.seed), [state]

        def run(n: int) -> None:
            for _ in range(n):
                carry[0], _ = programs.train_step(carry[0], data)
            jax.block_until_ready(carry[0])

        run(self.plan.warmup_steps)
        zeus, zeus_status = references or (None, None)
        smi, smi_status = None, None
        if references is not None:
            smi_status = "ok" if shutil.which("nvidia-smi") else "nvidia-smi not found on PATH"
            smi = power.PowerLog() if smi_status == "ok" else None
        tee = power.Tee(self.monitor, zeus)
        try:
            series = windows_lib.measure_windows("train_step", run, tee, window_s=self.plan.window_s,
                                                 repetitions=repetitions, cooldown_s=self.plan.cooldown_s)
        finally:
            if smi is not None:
                smi.close()
        self._state = (variant, carry[0])
        row = self._speed_fields(config, programs, batch, cost, series, compile_s)
        row["windows"] = [self._window(*w, smi, calls) for w, calls in zip(tee.windows, series.calls)]
        if references is not None:
            errors = [w["zeus_error"] for w in row["windows"] if w["zeus_error"]]
            row["zeus"] = f"zeus {errors[0]}" if errors else zeus_status
            row["nvidia_smi"] = "nvidia-smi printed nothing" if smi is not None and not smi.lines else smi_status
        self._rows[key] = row
        return row

    def _speed_fields(self, config, programs, batch: int, cost, series, compile_s: float) -> dict:
        fields = series.fields("train_step")
        step_s, j, dynamic = (fields[f"train_step_{k}"] for k in ("s_mean", "j_mean", "dynamic_j_mean"))
        devices = programs.mesh.size
        peak, peak_source = peaks.peak_tflops(self.devices[0].device_kind, config.model.dtype)
        tflops = cost.flops / step_s / 1e12 if cost.flops > 0 else None
        sources = ", ".join(f"{d}: {s}" for d, s in sorted(series.sources.items())) or "no sensor"
        measured_j = f"measured: EnergyMonitor windows ({sources}), mean over windows of J / steps"
        per_utt = lambda x: x / batch if x is not None else None
        return {
            "model": config.model.name, "dtype": config.model.dtype, "batch": batch, "devices": devices,
            "flops_source": cost.source, "flops_note": getattr(cost, "note", ""),
            "train_step_tflop": q(cost.flops / 1e12, "TFLOP", f"counted: XLA's cost analysis ({cost.source})"),
            "train_step_s": q(step_s, "s", MEASURED_STEP),
            "utt_per_s": q(batch / step_s, "utt/s", "measured: batch / step seconds"),
            "tflops": q(tflops, "TFLOP/s", "derived: counted FLOPs / measured step seconds"),
            "peak_tflops": q(peak, "TFLOP/s", f"datasheet: {peak_source}"),
            "mfu": q(tflops / (peak * devices) if tflops and peak else None, "1",
                     f"derived: TFLOP/s / (datasheet peak x {devices} devices)"),
            "j_per_step": q(j, "J", measured_j), "j_per_step_std": q(fields["train_step_j_std"], "J", measured_j),
            "dynamic_j_per_step": q(dynamic, "J", f"{measured_j}, less the idle baseline"),
            "j_per_utt": q(per_utt(j), "J/utt", measured_j),
            "dynamic_j_per_utt": q(per_utt(dynamic), "J/utt", f"{measured_j}, less the idle baseline"),
            "energy_unavailable": None if j is not None else self.monitor.unavailable_reason(),
            "window_warnings": list(series.warnings),
            "compile_s": q(compile_s, "s", "measured: wall clock of compile_programs and the FLOP count")}

    @staticmethod
    def _window(m, t0: float, t1: float, zeus_j, zeus_error, smi: power.PowerLog | None, calls: int) -> dict:
        boards = {int(d[3:]) for d in m.gpu_j if d[3:].isdigit()} or None  # domains are 'gpu<NVML index>'
        smi_j, samples = smi.energy_j(t0, t1, boards) if smi is not None else (None, 0)
        gpu = ", ".join(f"{d}: {m.sources.get(d)}" for d in sorted(m.gpu_j)) or "no GPU domain"
        return {"calls": calls, "seconds": q(m.seconds, "s", "measured: between the window's synchronised edges"),
                "monitor_gpu_j": q(m.gpu_total_j, "J", f"measured: EnergyMonitor ({gpu})"),
                "monitor_total_j": q(m.total_j, "J", "measured: EnergyMonitor, every domain (GPUs and RAPL)"),
                "zeus_gpu_j": q(zeus_j, "J", "measured: zeus.monitor.ZeusMonitor begin/end_window at the same edges"),
                "zeus_error": zeus_error,
                "smi_gpu_j": q(smi_j, "J", f"measured: nvidia-smi power.draw every 100 ms ({samples} samples in the "
                                           "window), trapezoid-integrated between the edges"),
                "complete": m.complete, "warnings": list(m.warnings)}

    # -- FLOP sources -------------------------------------------------------------------------------------------

    def check_flops(self) -> dict:
        return {"rows": [self._row(f"{v.label} b{batch}", lambda v=v, b=batch: self._flops_row(v, b))
                         for v, batch in self.plan.flops]}

    def _flops_row(self, variant: plans.Variant, batch: int) -> dict:
        config, programs, compile_s = self.programs(variant, batch)
        start = time.monotonic()
        step, forward = programs.train_step_cost, programs.forward_cost
        count_s = time.monotonic() - start
        step_per_utt, forward_per_utt = step.flops / batch, forward.flops / programs.lowered.forward_batch_size
        return {"model": config.model.name, "reversible": config.model.reversible, "batch": batch,
                "train_step_source": step.source, "forward_source": forward.source,
                "notes_on_counts": "; ".join(dict.fromkeys(n for n in (getattr(step, "note", ""),
                                                                        getattr(forward, "note", "")) if n)),
                "train_step_gflop_per_utt": q(step_per_utt / 1e9, "GFLOP/utt", f"counted: {step.source}"),
                "forward_gflop_per_utt": q(forward_per_utt / 1e9, "GFLOP/utt", f"counted: {forward.source}"),
                "forward_gflop_per_utt_analytic": q(2 * programs.forward_macs_per_utt / 1e9, "GFLOP/utt",
                                                    "counted: 2 x the model's MACs on real input (sv_jax.models.macs)"),
                "step_to_forward": q(step_per_utt / forward_per_utt if forward_per_utt > 0 else None, "1",
                                     "counted: train step / forward FLOPs per utterance (~3 expected)"),
                "count_s": q(count_s + compile_s, "s", "measured: wall clock of compiling and counting")}
