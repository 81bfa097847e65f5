"""Steady-state training and inference speed, achieved TFLOP/s, MFU and energy per step, on in-memory batches.

    python -m profiling.study.benchmark --config=configs/r34.py --batch_size=128 [--dtype=bfloat16] [--json]

No input pipeline and no TensorFlow: one random batch of the config's shape ([batch, num_frames, num_mel_bins],
labels over the config's classes) is placed on the devices once and the compiled train step (the trainer's, with
donated state, compiled by sv_jax.programs) runs on it back to back. Compilation and `--warmup` steps are excluded;
each timed block ends with a block on its outputs. The forward is `model.embed` on [batch, num_frames] chunks.

Monitoring overhead is measured in the same run: pairs of blocks, one without a monitor and one with the trainer's
run profiler (sv_jax.run_profiler.RunProfiler: a window every `profile.window_steps` steps, synchronised at its
edges), in ABBA order; the overhead is the median over pairs of the monitored block's extra time, printed with
every pair's figure and the unmonitored blocks' own spread (the machine's run-to-run noise). Where that noise
hides the difference (a shared CPU VM), `monitor_host_percent` bounds the cost directly: the time the hook itself
spends on the host (its window-edge waits for the device, which overlap queued work, excluded) per step time.

TFLOP/s use the checked FLOP count of the compiled step (sv_jax.programs; counted by XLA, not measured, and its
source named per program, `train_step_flops_source` / `forward_flops_source`), the whole mesh's; MFU divides them by
the datasheet peak (profiling.peaks) of every device in the mesh, for the compute dtype.

Energy per call comes from its own windows, after the overhead pairs: for each program, `--energy_windows` windows of
back-to-back calls, each at least `--window_s` (default 5 s, docs/design.md) of whole calls, `--cooldown_s` of idling
before each (profiling.windows.measure_windows, the study's windows): Joules per call, mean and spread over the
windows, and each window's length. Every window warning (a short or incomplete window, a failed read; those of the
overhead blocks' run-profiler windows too, labelled so) is kept in `window_warnings`, printed, and written into the
JSON. Without a sensor no energy window is run (there would be nothing to measure) and energy is reported as
unavailable, with the reason.

`--torch_reference` (CPU only; needs torch, requirements-bench.txt) then times a PyTorch reference of the same model,
head, loss, optimizer and batch (profiling.study.torch_reference, in a child process with as many threads as the
cores JAX uses; profiling.study.torch_comparison): after both sides are warmed up, `--blocks` pairs of `--steps`-call
blocks in ABAB order (sv_jax's block, torch's block), first train steps, then forward calls. Both sides' seconds per
train step and forward utt/s (medians over blocks, and every block's figure) and the ratios sv_jax / torch are
printed and written into the JSON (`torch_reference`); without the flag the output is what it was.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import Any, Callable, Mapping, Sequence, TextIO

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

import cli
from profiling import energy as energy_lib
from profiling import names
from profiling import windows as windows_lib
from profiling.study import torch_comparison
from sv_jax import costs
from sv_jax import models
from sv_jax import programs as programs_lib
from sv_jax import run_profiler

STEADY_WINDOW_S = 5.0  # docs/design.md: energy windows of at least 5 s


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    """Steady-state speed and cost of one configuration on this machine (FLOPs counted, time and energy measured)."""

    model: str
    dtype: str
    batch: int
    num_frames: int
    devices: str
    conv_lowering: str  # 'onednn' or 'xla': the convolutions model.cpu_conv selected (sv_jax.models.cpu_conv)
    train_step_s: float  # median seconds per train step over blocks, monitor off
    train_step_s_monitored: float  # the same with the run profiler's windows, as in training
    monitor_overhead_percent: float  # median over pairs of (monitored / unmonitored block time - 1)
    monitor_overhead_pairs_percent: list  # every pair's figure, in run order
    noise_percent: float  # relative standard deviation of the unmonitored blocks: the machine's run-to-run noise
    monitor_host_percent: float  # the hook's own host time (its waits for the device excluded) / monitored time
    train_step_utt_per_s: float
    train_step_tflops: float | None  # checked FLOPs of the step (counted by XLA) / measured step time
    train_step_mfu: float | None
    forward_utt_per_s: float
    forward_tflops: float | None
    forward_mfu: float | None
    peak_tflops: float | None
    peak_source: str
    flops_source: str  # both programs' FLOP sources, joined (as in summary.json)
    train_step_flops_source: str  # sv_jax.programs' ProgramCost.source: 'xla' or what was counted instead
    forward_flops_source: str
    energy_window_s: float  # the least length of an energy window (--window_s)
    train_step_energy_windows_s: list  # each energy window's length in seconds; empty without a sensor
    forward_energy_windows_s: list
    train_step_j: float | None  # Joules per train step: mean over the energy windows
    train_step_j_std: float | None  # their sample standard deviation
    train_step_j_per_utt: float | None
    forward_j: float | None  # Joules per forward call
    forward_j_std: float | None
    forward_j_per_utt: float | None
    energy_sources: dict
    energy_unavailable: str | None
    window_warnings: list  # every window's warnings, in words, each naming its window
    torch_reference: dict | None = None  # --torch_reference: torch_comparison.compare's result (None: not run)


def energy_windows(runs: Mapping[str, Callable[[int], Any]], monitor: energy_lib.EnergyMonitor, *, window_s: float,
                   repetitions: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> dict[str, windows_lib.WindowSeries]:
    """Per program, `repetitions` windows of at least `window_s` of whole calls of `runs[program](n)` (n calls, that
    return when finished). `clock` must be the monitor's."""
    return {program: windows_lib.measure_windows(program, run, monitor, window_s=window_s, repetitions=repetitions,
                                                 cooldown_s=cooldown_s, clock=clock, sleep=sleep)
            for program, run in runs.items()}


def energy_fields(series: Mapping[str, windows_lib.WindowSeries], monitor: energy_lib.EnergyMonitor,
                  batch_size: int, window_s: float, other_warnings: Sequence[str] = ()) -> dict[str, Any]:
    """The BenchmarkResult's energy fields from each program's windows (`series`; empty: none were run)."""
    out: dict[str, Any] = {"energy_window_s": window_s, "energy_sources": {}, "window_warnings": []}
    if series and window_s < STEADY_WINDOW_S:
        out["window_warnings"].append(f"energy windows of at least {window_s:g} s (--window_s) are shorter than the "
                                      f"{STEADY_WINDOW_S:g} s a steady-state energy figure needs")
    missing = not series
    for program in names.PROGRAMS:
        s = series.get(program)
        mean, std = s.per_call(s.energy_j) if s else (None, None)
        missing = missing or mean is None
        out |= {names.key(program, "energy_windows_s"): list(s.seconds) if s else [],
                names.key(program, "j"): mean, names.key(program, "j_std"): std,
                names.key(program, "j_per_utt"): mean / batch_size if mean is not None else None}
        if s:
            out["energy_sources"] |= s.sources
            out["window_warnings"] += s.warnings
    out["window_warnings"] += list(other_warnings)
    out["energy_unavailable"] = None if not missing else (
        monitor.unavailable_reason() if not series or not monitor.available
        else "a window without a figure (see window_warnings)")
    return out


class _NoWriter:
    def write_scalars(self, step, scalars):
        del step, scalars


def _time_block(fn, steps: int, carry):
    start = time.perf_counter()
    for _ in range(steps):
        carry = fn(carry)
    jax.block_until_ready(carry)
    return time.perf_counter() - start, carry


def run(config, *, batch_size: int, dtype: str | None = None, steps: int = 40, blocks: int = 4, warmup: int = 5,
        num_classes: int | None = None, window_s: float = STEADY_WINDOW_S, repetitions: int = 3,
        cooldown_s: float = 2.0, monitor: energy_lib.EnergyMonitor | None = None, devices=None,
        clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
        torch_reference: bool = False) -> BenchmarkResult:
    """The benchmark of the module docstring on `devices` (default: all local ones). A `monitor` passed in stays the
    caller's; `clock` must be its clock. `torch_reference`: also the PyTorch comparison, last."""
    openmp = ""
    if torch_reference:
        torch_comparison.require_torch()  # before anything is compiled
        openmp = torch_comparison.set_wait_policy()  # before the oneDNN convolutions load libgomp
    config = config.copy_and_resolve_references()
    dtype = dtype or config.model.dtype
    num_frames = config.data.num_frames
    with config.unlocked():
        config.model.dtype = dtype
    num_classes = num_classes or costs.default_num_classes(config)
    devices = list(devices or jax.local_devices())
    reference_spec = (torch_comparison.reference_spec(config, batch_size, num_classes, devices) if torch_reference
                      else None)
    # The trainer's train step and forward, compiled as training compiles them, on a concrete state.
    programs = programs_lib.compile_programs(config, batch_size, num_classes, devices)
    state, batch = programs.init_state(config.seed), programs.random_batch(config.seed)
    step_fn, embed_fn = programs.train_step, programs.forward
    train_cost, infer_cost = programs.train_step_cost, programs.forward_cost
    train_flops, infer_flops = train_cost.flops, infer_cost.flops
    device_kind = devices[0].device_kind
    cost = run_profiler.RunCost.of(config, programs)  # what the trainer's profiler starts from, the peak included
    peak, peak_source = cost.peak_tflops, cost.peak_source

    def train_steps(carry):
        return step_fn(carry[0], batch)

    carry = (state, None)
    for _ in range(warmup):
        carry = train_steps(carry)
    jax.block_until_ready(carry)

    own_monitor = monitor is None
    monitor = monitor or energy_lib.EnergyMonitor(  # the boards behind the benchmark's devices, and RAPL
        [energy_lib.NvmlSensor(config.profile.nvml_gpus, devices=devices), energy_lib.RaplSensor()],
        poll_interval_s=config.profile.poll_interval_s)
    profile_config = config.profile.copy_and_resolve_references()
    with profile_config.unlocked():
        profile_config.skip_steps, profile_config.trace_steps, profile_config.idle_seconds = 1, (), 0.0
    off, on, hook_host, block_warnings = [], [], [], []

    def monitored_block(carry):
        # The trainer's own profiler, stepped exactly as train.py steps it.
        profiler = run_profiler.RunProfiler(profile_config, "/nonexistent", cost, writer=_NoWriter(),
                                            write_files=False, monitor=monitor)
        start, in_hook = time.perf_counter(), 0.0
        with profiler:
            for step in range(1, steps + 1):
                carry = train_steps(carry)
                hook_start = time.perf_counter()
                profiler.step(step, carry[1])
                in_hook += time.perf_counter() - hook_start
            hook_start = time.perf_counter()
        in_hook += time.perf_counter() - hook_start  # leaving the profiler closes its last window
        block = len(on) + 1
        block_warnings.extend(f"monitor-overhead block {block} window {i} (no figure is taken from it): {w}"
                              for i, record in enumerate(profiler.windows, 1) for w in record.warnings)
        seconds = time.perf_counter() - start
        hook_host.append((in_hook - profiler.sync_seconds) / seconds)
        return seconds, carry

    try:
        # Pairs in ABBA order (off-on, on-off, ...) so that drift in machine speed cancels within two pairs.
        for pair in range(blocks):
            for monitored in ((False, True) if pair % 2 == 0 else (True, False)):
                seconds, carry = (monitored_block(carry) if monitored
                                  else _time_block(train_steps, steps, carry))
                (on if monitored else off).append(seconds / steps)
        variables = carry[0].variables
        embed_fn(variables, batch["feats"]).block_until_ready()
        seconds, _ = _time_block(lambda _: embed_fn(variables, batch["feats"]), steps, None)
        held = {"state": carry[0]}

        def run_train(n):
            for _ in range(n):
                held["state"], _ = step_fn(held["state"], batch)
            jax.block_until_ready(held["state"])

        def run_forward(n):
            out, current = None, held["state"].variables  # the train step donates the state it is given
            for _ in range(n):
                out = embed_fn(current, batch["feats"])
            jax.block_until_ready(out)

        series = energy_windows({names.TRAIN_STEP: run_train, names.FORWARD: run_forward}, monitor,
                                window_s=window_s, repetitions=repetitions, cooldown_s=cooldown_s, clock=clock,
                                sleep=sleep) if monitor.available else {}
        energy = energy_fields(series, monitor, batch_size, window_s, block_warnings)
    finally:
        if own_monitor:
            monitor.close()

    def jax_train_block(n):
        seconds, (held["state"], _) = _time_block(train_steps, n, (held["state"], None))
        return seconds

    def jax_forward_block(n):
        current = held["state"].variables
        return _time_block(lambda _: embed_fn(current, batch["feats"]), n, None)[0]

    reference = None if reference_spec is None else torch_comparison.run_reference(
        reference_spec, {names.TRAIN_STEP: jax_train_block, names.FORWARD: jax_forward_block}, calls=steps,
        pairs=blocks, warmup=warmup, batch_size=batch_size,
        jax_params=models.count_params(programs.state.params["backbone"]), openmp=openmp)

    step_s, step_s_on = float(np.median(off)), float(np.median(on))
    pair_percent = 100.0 * (np.asarray(on) / np.asarray(off) - 1.0)
    infer_s = seconds / steps

    def tflops(flops, seconds_per_call):
        return flops / seconds_per_call / 1e12 if flops else None

    return BenchmarkResult(
        model=config.model.name,
        dtype=dtype, batch=batch_size, num_frames=num_frames, devices=f"{len(devices)} x {device_kind}",
        conv_lowering=models.conv_lowering(config.model),
        train_step_s=step_s, train_step_s_monitored=step_s_on,
        monitor_overhead_percent=float(np.median(pair_percent)),
        monitor_overhead_pairs_percent=[round(float(p), 3) for p in pair_percent],
        noise_percent=float(100.0 * np.std(off) / np.mean(off)),
        monitor_host_percent=float(100.0 * np.mean(hook_host)),
        train_step_utt_per_s=batch_size / step_s, train_step_tflops=tflops(train_flops, step_s),
        train_step_mfu=cost.mfu(tflops(train_flops, step_s)) if train_flops else None,
        forward_utt_per_s=batch_size / infer_s, forward_tflops=tflops(infer_flops, infer_s),
        forward_mfu=cost.mfu(tflops(infer_flops, infer_s)) if infer_flops else None,
        peak_tflops=peak, peak_source=peak_source,
        flops_source=", ".join(sorted({train_cost.source, infer_cost.source})),
        train_step_flops_source=train_cost.source, forward_flops_source=infer_cost.source, **energy,
        torch_reference=reference)


def print_result(result: BenchmarkResult, as_json: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> None:
    """A table (or, `as_json`, one JSON object) on `out`; window warnings as `warning: ...` lines after the table,
    or on `err` next to the JSON (which holds them too); the torch comparison (when run) likewise after the table, or
    on `err` as well as in the JSON."""
    fields = dataclasses.asdict(result)
    if fields["torch_reference"] is None:
        del fields["torch_reference"]  # without --torch_reference the output is what it always was
    if as_json:
        print(json.dumps(fields, indent=2), file=out)
    else:
        for key, value in fields.items():
            if key == "torch_reference":
                continue
            if key == "window_warnings":
                value = f"{len(value)} (below)" if value else "none"
            print(f"{key:<28} {value:.4g}" if isinstance(value, float) else f"{key:<28} {value}", file=out)
    for warning in result.window_warnings:
        print(f"warning: {warning}", file=err if as_json else out)
    for line in torch_comparison.report_lines(result.torch_reference) if result.torch_reference else ():
        print(line, file=err if as_json else out)


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    if f.window_s <= 0 or f.energy_windows < 1:
        raise cli.ConfigError(f"--window_s={f.window_s:g} and --energy_windows={f.energy_windows}: need a window "
                              "length > 0 and at least one window")
    result = run(f.config, batch_size=f.batch_size, dtype=f.dtype, steps=f.steps, blocks=f.blocks, warmup=f.warmup,
                 num_classes=f.num_classes, window_s=f.window_s, repetitions=f.energy_windows,
                 cooldown_s=f.cooldown_s, torch_reference=f.torch_reference)
    print_result(result, f.json)


def _define_flags() -> None:
    config_flags.DEFINE_config_file("config", "configs/r34.py", "an sv_jax config file", lock_config=True)
    flags.DEFINE_integer("batch_size", 128, "global batch (split over all local devices)")
    flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "compute dtype (default: the config's)")
    flags.DEFINE_integer("steps", 40, "timed train steps per block")
    flags.DEFINE_integer("blocks", 4, "timed pairs of blocks (monitor off / on, in ABBA order; with "
                                      "--torch_reference also sv_jax / torch, in ABAB order)")
    flags.DEFINE_integer("warmup", 5, "untimed steps after compilation")
    flags.DEFINE_integer("num_classes", None, "ArcMargin classes (default: the config's, 17,982 for VoxCeleb2 "
                                              "dev x 3 speeds)")
    flags.DEFINE_float("window_s", STEADY_WINDOW_S, "least length of an energy window in seconds (whole calls)")
    flags.DEFINE_integer("energy_windows", 3, "energy windows per program (with a sensor)")
    flags.DEFINE_float("cooldown_s", 2.0, "idle seconds before each energy window")
    flags.DEFINE_bool("json", False, "print one JSON object instead of a table")
    flags.DEFINE_bool("torch_reference", False, "also time a PyTorch reference of the same model in a child process, "
                                                "in ABAB blocks with sv_jax's (CPU; needs torch: "
                                                "requirements-bench.txt)")


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
