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

TFLOP/s use the checked FLOP count of the compiled step (sv_jax.programs), the whole mesh's; MFU divides them by the
datasheet peak (profiling.peaks) of every device in the mesh, for the compute dtype. Energy per step comes from the monitor's windows (NVML / RAPL); without a
sensor it is reported as unavailable, with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import numpy as np
from absl import flags
from ml_collections import config_flags

import cli
from profiling import energy as energy_lib
from sv_jax import costs
from sv_jax import programs as programs_lib
from sv_jax import run_profiler


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    """Steady-state speed and cost of one configuration on this machine."""

    model: str
    dtype: str
    batch: int
    num_frames: int
    devices: str
    train_step_s: float  # median seconds per train step over blocks, monitor off
    train_step_s_monitored: float  # the same with the run profiler's windows, as in training
    monitor_overhead_percent: float  # median over pairs of (monitored / unmonitored block time - 1)
    monitor_overhead_pairs_percent: list  # every pair's figure, in run order
    noise_percent: float  # relative standard deviation of the unmonitored blocks: the machine's run-to-run noise
    monitor_host_percent: float  # the hook's own host time (its waits for the device excluded) / monitored time
    train_step_utt_per_s: float
    train_step_tflops: float | None  # checked FLOPs of the step / step time
    train_step_mfu: float | None
    forward_utt_per_s: float
    forward_tflops: float | None
    forward_mfu: float | None
    peak_tflops: float | None
    peak_source: str
    flops_source: str
    train_step_j: float | None  # Joules per train step
    train_step_j_per_utt: float | None
    forward_j_per_utt: float | None
    energy_sources: dict
    energy_unavailable: str | None


class _NoWriter:
    def write_scalars(self, step, scalars):
        del step, scalars


def _time_block(fn, steps: int, carry):
    start = time.perf_counter()
    for _ in range(steps):
        carry = fn(carry)
    jax.block_until_ready(carry)
    return time.perf_counter() - start, carry


def main(argv) -> None:
    del argv
    f = flags.FLAGS
    config = f.config
    dtype = f.dtype or config.model.dtype
    batch_size, num_frames = f.batch_size, config.data.num_frames
    with config.unlocked():
        config.model.dtype = dtype
    num_classes = f.num_classes or costs.default_num_classes(config)
    devices = jax.local_devices()
    # The trainer's train step and forward, compiled as training compiles them, on a concrete state.
    programs = programs_lib.compile_programs(config, batch_size, num_classes, devices)
    state, batch = programs.init_state(config.seed), programs.random_batch(config.seed)
    step_fn, embed_fn = programs.train_step, programs.forward
    train_flops, infer_flops = programs.train_step_cost.flops, programs.forward_cost.flops
    device_kind = devices[0].device_kind
    cost = run_profiler.RunCost.of(config, programs)  # what the trainer's profiler starts from, the peak included
    peak, peak_source = cost.peak_tflops, cost.peak_source

    def train_steps(carry):
        return step_fn(carry[0], batch)

    carry = (state, None)
    for _ in range(f.warmup):
        carry = train_steps(carry)
    jax.block_until_ready(carry)

    monitor = energy_lib.EnergyMonitor(poll_interval_s=config.profile.poll_interval_s)
    profile_config = config.profile.copy_and_resolve_references()
    with profile_config.unlocked():
        profile_config.skip_steps, profile_config.trace_steps, profile_config.idle_seconds = 1, (), 0.0
    off, on, windows, hook_host = [], [], [], []

    def monitored_block(carry):
        # The trainer's own profiler, stepped exactly as train.py steps it.
        profiler = run_profiler.RunProfiler(profile_config, "/nonexistent", cost, writer=_NoWriter(),
                                            write_files=False, monitor=monitor)
        start, in_hook = time.perf_counter(), 0.0
        with profiler:
            for step in range(1, f.steps + 1):
                carry = train_steps(carry)
                hook_start = time.perf_counter()
                profiler.step(step, carry[1])
                in_hook += time.perf_counter() - hook_start
            hook_start = time.perf_counter()
        in_hook += time.perf_counter() - hook_start  # leaving the profiler closes its last window
        windows.extend(profiler.windows)
        seconds = time.perf_counter() - start
        hook_host.append((in_hook - profiler.sync_seconds) / seconds)
        return seconds, carry

    # Pairs in ABBA order (off-on, on-off, ...) so that drift in machine speed cancels within two pairs.
    for pair in range(f.blocks):
        for monitored in ((False, True) if pair % 2 == 0 else (True, False)):
            seconds, carry = (monitored_block(carry) if monitored
                              else _time_block(train_steps, f.steps, carry))
            (on if monitored else off).append(seconds / f.steps)
    variables = carry[0].variables
    embed_fn(variables, batch["feats"]).block_until_ready()
    monitor.begin_window("forward", sync=lambda: None)
    seconds, _ = _time_block(lambda _: embed_fn(variables, batch["feats"]), f.steps, None)
    infer = monitor.end_window("forward", sync=lambda: None)
    monitor.close()

    step_s, step_s_on = float(np.median(off)), float(np.median(on))
    pair_percent = 100.0 * (np.asarray(on) / np.asarray(off) - 1.0)
    infer_s = seconds / f.steps
    measured = [w for w in windows if w.energy_j is not None]
    train_j = sum(w.energy_j for w in measured)
    train_steps_measured = sum(w.steps for w in measured)

    def tflops(flops, seconds_per_call):
        return flops / seconds_per_call / 1e12 if flops else None

    result = BenchmarkResult(
        model=config.model.name,
        dtype=dtype, batch=batch_size, num_frames=num_frames, devices=f"{len(devices)} x {device_kind}",
        train_step_s=step_s, train_step_s_monitored=step_s_on,
        monitor_overhead_percent=float(np.median(pair_percent)),
        monitor_overhead_pairs_percent=[round(float(p), 3) for p in pair_percent],
        noise_percent=float(100.0 * np.std(off) / np.mean(off)),
        monitor_host_percent=float(100.0 * np.mean(hook_host)),
        train_step_utt_per_s=batch_size / step_s, train_step_tflops=tflops(train_flops, step_s),
        train_step_mfu=cost.mfu(tflops(train_flops, step_s)) if train_flops else None,
        forward_utt_per_s=batch_size / infer_s, forward_tflops=tflops(infer_flops, infer_s),
        forward_mfu=cost.mfu(tflops(infer_flops, infer_s)) if infer_flops else None,
        peak_tflops=peak, peak_source=peak_source, flops_source=programs.train_step_cost.source,
        train_step_j=train_j / train_steps_measured if measured else None,
        train_step_j_per_utt=train_j / train_steps_measured / batch_size if measured else None,
        forward_j_per_utt=infer.total_j / (f.steps * batch_size) if infer.available else None,
        energy_sources=dict(measured[-1].sources) if measured else {},
        energy_unavailable=None if measured else monitor.unavailable_reason())
    if f.json:
        print(json.dumps(dataclasses.asdict(result), indent=2))
        return
    for key, value in dataclasses.asdict(result).items():
        print(f"{key:<28} {value:.4g}" if isinstance(value, float) else f"{key:<28} {value}")


def _define_flags() -> None:
    config_flags.DEFINE_config_file("config", "configs/r34.py", "an sv_jax config file", lock_config=True)
    flags.DEFINE_integer("batch_size", 128, "global batch (split over all local devices)")
    flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "compute dtype (default: the config's)")
    flags.DEFINE_integer("steps", 40, "timed train steps per block")
    flags.DEFINE_integer("blocks", 4, "timed pairs of blocks (monitor off / on, in ABBA order)")
    flags.DEFINE_integer("warmup", 5, "untimed steps after compilation")
    flags.DEFINE_integer("num_classes", None, "ArcMargin classes (default: the config's, 17,982 for VoxCeleb2 "
                                              "dev x 3 speeds)")
    flags.DEFINE_bool("json", False, "print one JSON object instead of a table")


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
