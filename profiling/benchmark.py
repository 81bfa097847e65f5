"""Steady-state training and inference speed, achieved TFLOP/s, MFU and energy per step, on in-memory batches.

    python -m profiling.benchmark --config=configs/r34.py --batch=128 [--dtype=bfloat16] [--json]

No input pipeline and no TensorFlow: one random batch of the config's shape ([batch, num_frames, num_mel_bins],
labels over the config's classes) is placed on the devices once and the compiled train step (the trainer's, with
donated state) runs on it back to back. Compilation and `--warmup` steps are excluded; each timed block ends with a
block on its outputs. Inference is `model.embed` on [batch, num_frames] chunks.

Monitoring overhead is measured in the same run: pairs of blocks, one without a monitor and one with the trainer's
profiling hook (profiling.hooks.RunProfiler: a window every `profile.window_steps` steps, synchronised at its
edges), in ABBA order; the overhead is the median over pairs of the monitored block's extra time, printed with
every pair's figure and the unmonitored blocks' own spread (the machine's run-to-run noise). Where that noise
hides the difference (a shared CPU VM), `monitor_host_percent` bounds the cost directly: the time the hook itself
spends on the host (its window-edge waits for the device, which overlap queued work, excluded) per step time.

TFLOP/s use XLA's FLOP count of the compiled step (profiling.flops); MFU divides by the device's datasheet peak
(profiling.peaks) for the compute dtype. Energy per step comes from the monitor's windows (NVML / RAPL); without a
sensor it is reported as unavailable, with the reason.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from profiling import energy as energy_lib
from profiling import flops as flops_lib
from profiling import hooks
from profiling import peaks
from sv_jax import parallel

_CONFIG = config_flags.DEFINE_config_file("config", "configs/r34.py", "an sv_jax config file", lock_config=True)
_BATCH = flags.DEFINE_integer("batch", 128, "global batch (split over all local devices)")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16"], "compute dtype (default: the config's)")
_STEPS = flags.DEFINE_integer("steps", 40, "timed train steps per block")
_BLOCKS = flags.DEFINE_integer("blocks", 4, "timed pairs of blocks (monitor off / on, in ABBA order)")
_WARMUP = flags.DEFINE_integer("warmup", 5, "untimed steps after compilation")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 5994 * 3, "ArcMargin classes (VoxCeleb2 dev x 3 speeds)")
_JSON = flags.DEFINE_bool("json", False, "print one JSON object instead of a table")


@dataclasses.dataclass(frozen=True)
class BenchmarkResult:
    """Steady-state speed and cost of one configuration on this machine."""

    model: str
    dtype: str
    batch: int
    num_frames: int
    devices: str
    train_step_s: float  # median seconds per train step over blocks, monitor off
    train_step_s_monitored: float  # the same with the energy monitor's windows, as in training
    monitor_overhead_percent: float  # median over pairs of (monitored / unmonitored block time - 1)
    monitor_overhead_pairs_percent: list  # every pair's figure, in run order
    noise_percent: float  # relative standard deviation of the unmonitored blocks: the machine's run-to-run noise
    monitor_host_percent: float  # the hook's own host time (its waits for the device excluded) / monitored time
    train_utt_per_s: float
    train_tflops: float | None  # XLA FLOPs of the step / step time
    train_mfu: float | None
    infer_utt_per_s: float
    infer_tflops: float | None
    infer_mfu: float | None
    peak_tflops: float | None
    peak_source: str
    train_j_per_step: float | None
    train_j_per_utt: float | None
    infer_j_per_utt: float | None
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
    config = _CONFIG.value
    dtype = _DTYPE.value or config.model.dtype
    batch_size, num_frames = _BATCH.value, config.data.num_frames
    devices = jax.local_devices()
    mesh = parallel.create_mesh(devices)
    parallel.check_global_batch(batch_size, mesh)
    with config.unlocked():
        config.model.dtype = dtype
    # The trainer's step and inference programs, as profiling.flops lowers them; here on a concrete state.
    programs = flops_lib.lower_programs(config, batch_size, _NUM_CLASSES.value, devices)
    state, batch = flops_lib.random_inputs(programs, config, batch_size, _NUM_CLASSES.value, devices)
    step_fn, embed_fn = programs.train_step.compile(), programs.forward.compile()
    # Checked counts: the CPU-compiled count where the backend's is unusable (cuDNN's -1), every coupling of a
    # reversible model counted.
    train_flops = flops_lib.train_step_cost(config, step_fn, batch_size, _NUM_CLASSES.value, mesh.size)["flops"]
    infer_flops = flops_lib.forward_step_cost(config, embed_fn, batch_size, _NUM_CLASSES.value, mesh.size)["flops"]
    device_kind = devices[0].device_kind
    peak, peak_source = peaks.peak_tflops(device_kind, dtype, config.profile.peak_tflops)

    def train_steps(carry):
        return step_fn(carry[0], batch)

    carry = (state, None)
    for _ in range(_WARMUP.value):
        carry = train_steps(carry)
    jax.block_until_ready(carry)

    monitor = energy_lib.EnergyMonitor(poll_interval_s=config.profile.poll_interval_s)
    profile_config = config.profile.copy_and_resolve_references()
    with profile_config.unlocked():
        profile_config.skip_steps, profile_config.trace_steps = 1, ()
    off, on, windows, hook_host = [], [], [], []

    def monitored_block(carry):
        # The trainer's own hook, stepping exactly as train.py does.
        profiler = hooks.RunProfiler(profile_config, "/nonexistent", global_batch=batch_size,
                                     flops_per_step=train_flops, peak_tflops=peak, writer=_NoWriter(),
                                     write_files=False, monitor=monitor)
        start, in_hook = time.perf_counter(), 0.0
        for step in range(1, _STEPS.value + 1):
            carry = train_steps(carry)
            hook_start = time.perf_counter()
            profiler.after_step(step, carry[1])
            in_hook += time.perf_counter() - hook_start
        hook_start = time.perf_counter()
        profiler.finish_training(_STEPS.value, carry[1])
        in_hook += time.perf_counter() - hook_start
        windows.extend(profiler.windows)
        seconds = time.perf_counter() - start
        hook_host.append((in_hook - profiler.sync_seconds) / seconds)
        return seconds, carry

    # Pairs in ABBA order (off-on, on-off, ...) so that drift in machine speed cancels within two pairs.
    for pair in range(_BLOCKS.value):
        for monitored in ((False, True) if pair % 2 == 0 else (True, False)):
            seconds, carry = (monitored_block(carry) if monitored
                              else _time_block(train_steps, _STEPS.value, carry))
            (on if monitored else off).append(seconds / _STEPS.value)
    variables = carry[0].variables
    embed_fn(variables, batch["feats"]).block_until_ready()
    monitor.begin_window("infer", sync=lambda: None)
    seconds, _ = _time_block(lambda _: embed_fn(variables, batch["feats"]), _STEPS.value, None)
    infer = monitor.end_window("infer", sync=lambda: None)
    monitor.close()

    step_s, step_s_on = float(np.median(off)), float(np.median(on))
    pair_percent = 100.0 * (np.asarray(on) / np.asarray(off) - 1.0)
    infer_s = seconds / _STEPS.value
    measured = [w for w in windows if w.get("energy_j") is not None]
    train_j = sum(w["energy_j"] for w in measured)
    train_steps_measured = sum(w["steps"] for w in measured)

    def tflops(flops, seconds_per_call):
        return flops / seconds_per_call / 1e12 if flops else None

    result = BenchmarkResult(
        model=config.model.name,
        dtype=dtype, batch=batch_size, num_frames=num_frames, devices=f"{mesh.size} x {device_kind}",
        train_step_s=step_s, train_step_s_monitored=step_s_on,
        monitor_overhead_percent=float(np.median(pair_percent)),
        monitor_overhead_pairs_percent=[round(float(p), 3) for p in pair_percent],
        noise_percent=float(100.0 * np.std(off) / np.mean(off)),
        monitor_host_percent=float(100.0 * np.mean(hook_host)),
        train_utt_per_s=batch_size / step_s, train_tflops=tflops(train_flops, step_s),
        train_mfu=tflops(train_flops, step_s) / peak if peak and train_flops else None,
        infer_utt_per_s=batch_size / infer_s, infer_tflops=tflops(infer_flops, infer_s),
        infer_mfu=tflops(infer_flops, infer_s) / peak if peak and infer_flops else None,
        peak_tflops=peak, peak_source=peak_source,
        train_j_per_step=train_j / train_steps_measured if measured else None,
        train_j_per_utt=train_j / train_steps_measured / batch_size if measured else None,
        infer_j_per_utt=infer.total_j / (_STEPS.value * batch_size) if infer.available else None,
        energy_sources=dict(measured[-1]["sources"]) if measured else {},
        energy_unavailable=None if measured else "; ".join(f"{k}: {v}" for k, v in monitor.unavailable.items())
        or "no energy sensor")
    if _JSON.value:
        print(json.dumps(dataclasses.asdict(result), indent=2))
        return
    for key, value in dataclasses.asdict(result).items():
        print(f"{key:<28} {value:.4g}" if isinstance(value, float) else f"{key:<28} {value}")


if __name__ == "__main__":
    app.run(main)
