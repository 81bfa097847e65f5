"""What embedding extraction costs per utterance length: FLOPs per second of audio, time, and Joules where a sensor is.

    python -m profiling.study.inference_cost --config=configs/r34.py --workdir=runs/r34_wespeaker \
        [--seconds=2,4,8,16] [--repeats=5] [--json]

The model is the workdir's inference checkpoint, as `--mode=extract` restores it (an imported WeSpeaker model, the
average of the last checkpoints, or the latest one); without `--workdir`, the config's model with its initial
weights (what inference costs does not depend on the weights' values; the output says which weights were used).

Per length L: one utterance of L seconds is `kaldi fbank` frames (25 ms / 10 ms: 2 s = 198 frames), embedded whole
as extraction embeds it (`model.embed`, batch 1, one device, compiled once per length; compilation excluded).
- FLOPs: XLA's count of the compiled program, checked against the analytic multiply-adds (sv_jax.programs'
  counting rules: a count, not a measurement), per utterance and per second of audio.
- Time: `--repeats` blocks of back-to-back calls, each of at least `--block_s` (whole calls, the last one waited
  for), after `--warmup` calls; the median seconds per utterance, every block's figure, and the real-time factor
  (seconds of compute per second of audio).
- Energy: with a sensor (NVML for the device's GPU, RAPL for CPU packages), `--energy_windows` windows of at least
  `--window_s` of back-to-back calls (profiling.windows, the study's windows): Joules per utterance, mean and spread.
  Without one, energy is reported as unavailable with the reason (nothing is estimated).

Feature extraction (fbank) is not included: it is the input pipeline's, on the host, and the same for every model.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import sys
import time
from typing import Any, Callable, Sequence, TextIO

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from ml_collections import config_flags

import cli
from data_pipeline import framing
from profiling import energy as energy_lib
from profiling import windows as windows_lib
from profiling import xla_cost
from sv_jax import averaging
from sv_jax import models
from sv_jax import programs as programs_lib
from sv_jax.models import macs as macs_lib

DEFAULT_SECONDS = (2.0, 4.0, 8.0, 16.0)
PROGRAM = "embed"


@dataclasses.dataclass(frozen=True)
class LengthCost:
    """The cost of embedding one utterance of `audio_s` seconds."""

    audio_s: float
    frames: int
    flops: float  # XLA's count (see flops_source), one utterance
    flops_source: str
    gflop_per_audio_s: float
    analytic_macs: int
    s_per_utt: float  # median over blocks
    block_s_per_utt: list[float]  # every block's seconds per utterance
    real_time_factor: float  # compute seconds per second of audio
    j_per_utt: float | None
    j_per_utt_std: float | None
    j_per_audio_s: float | None
    energy_window_s_per_utt: float | None  # seconds per utterance inside the energy windows (their own timing)
    energy_unavailable: str | None
    window_warnings: list[str]


def _frames(seconds: float, data_config) -> int:
    samples = int(round(seconds * data_config.sample_rate))
    return framing.num_frames_for_samples(samples, data_config.sample_rate, data_config.frame_length_ms,
                                           data_config.frame_shift_ms)


def _time_blocks(run: Callable[[int], Any], repeats: int, block_s: float, clock=time.perf_counter) -> list[float]:
    """Seconds per call of `repeats` blocks, each of at least `block_s` of whole calls."""
    start = clock()
    run(1)
    per_call = max(clock() - start, 1e-9)
    out = []
    for _ in range(repeats):
        n = max(1, int(np.ceil(block_s / per_call)))
        start = clock()
        run(n)
        elapsed = clock() - start
        out.append(elapsed / n)
        per_call = elapsed / n
    return out


def measure(config, variables, *, seconds: Sequence[float] = DEFAULT_SECONDS, repeats: int = 5,
            block_s: float = 2.0, warmup: int = 2, monitor: energy_lib.EnergyMonitor | None = None,
            energy_windows: int = 3, window_s: float = 5.0, cooldown_s: float = 2.0,
            device: jax.Device | None = None) -> list[LengthCost]:
    """The module docstring's figures for each length in `seconds`, `variables` ({'params', 'batch_stats'} of the
    config's model, the head optional) on `device` (default: the first local one)."""
    device = device or jax.local_devices()[0]
    model = models.create_model(config.model, num_classes=1)
    counting_model = models.create_model(config.model, num_classes=1, for_counting=True)
    variables = jax.device_put({"params": {"backbone": variables["params"]["backbone"]},
                                "batch_stats": variables["batch_stats"]}, device)
    fallback = programs_lib.counting_fallback(config.model)
    bins = config.data.num_mel_bins
    rows = []
    for audio_s in seconds:
        frames = _frames(audio_s, config.data)
        if frames < 1:
            raise cli.ConfigError(f"--seconds: {audio_s:g} s is shorter than one frame")
        feats = jax.device_put(jnp.asarray(np.random.default_rng(0).standard_normal((1, frames, bins)),
                                           jnp.float32), device)
        embed = jax.jit(lambda v, x, m=model: m.apply(v, x, method=m.embed))
        compiled = embed.lower(variables, feats).compile()
        macs = macs_lib.forward_macs(config.model, frames, bins)
        counting = lambda cm=counting_model: jax.jit(lambda v, x: cm.apply(v, x, method=cm.embed)).lower(
            variables, feats)
        cost = xla_cost.checked_cost(lambda c=compiled: c, 2 * macs, counting, 1, always_fallback=fallback)

        def run(n, c=compiled, x=feats):
            out = None
            for _ in range(n):
                out = c(variables, x)
            jax.block_until_ready(out)

        for _ in range(warmup):
            run(1)
        blocks = _time_blocks(run, repeats, block_s)
        j_mean = j_std = window_s_per_utt = None
        warnings: list[str] = []
        unavailable = "no sensor given" if monitor is None else None
        if monitor is not None and monitor.available:
            series = windows_lib.measure_windows(PROGRAM, run, monitor, window_s=window_s,
                                                 repetitions=energy_windows, cooldown_s=cooldown_s)
            j_mean, j_std = series.per_call(series.energy_j)
            window_s_per_utt = series.per_call(series.seconds)[0]
            warnings = list(series.warnings)
            unavailable = None if j_mean is not None else "a window without a figure (see window_warnings)"
        elif monitor is not None:
            unavailable = monitor.unavailable_reason()
        s_per_utt = statistics.median(blocks)
        rows.append(LengthCost(
            audio_s=float(audio_s), frames=frames, flops=cost.flops, flops_source=cost.source,
            gflop_per_audio_s=cost.flops / 1e9 / audio_s, analytic_macs=macs, s_per_utt=s_per_utt,
            block_s_per_utt=blocks, real_time_factor=s_per_utt / audio_s, j_per_utt=j_mean, j_per_utt_std=j_std,
            j_per_audio_s=j_mean / audio_s if j_mean is not None else None,
            energy_window_s_per_utt=window_s_per_utt, energy_unavailable=unavailable,
            window_warnings=warnings))
    return rows


def markdown(rows: Sequence[LengthCost]) -> str:
    lines = ["| audio (s) | frames | GFLOP / utt (XLA count) | GFLOP / s of audio | ms / utt (median) | real-time "
             "factor | J / utt |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        joules = f"{r.j_per_utt:.3g} ± {r.j_per_utt_std:.2g}" if r.j_per_utt is not None else "n/a"
        lines.append(f"| {r.audio_s:g} | {r.frames} | {r.flops / 1e9:.2f} | {r.gflop_per_audio_s:.2f} | "
                     f"{1e3 * r.s_per_utt:.0f} | {r.real_time_factor:.3f} | {joules} |")
    return "\n".join(lines)


def run_from_flags(config, workdir: str | None, seconds: Sequence[float], repeats: int, block_s: float,
                   energy_windows: int, window_s: float) -> dict:
    if workdir:
        variables, source = averaging.inference_state(workdir)
        weights = f"{workdir}: {source['checkpoint']}"
    else:
        model = models.create_model(config.model, num_classes=1)
        feats = jnp.zeros((1, config.data.num_frames, config.data.num_mel_bins), jnp.float32)
        backbone = jax.jit(lambda: model.backbone.init(jax.random.key(config.seed), feats))()
        variables = {"params": {"backbone": backbone["params"]}, "batch_stats": {"backbone":
                                                                                   backbone["batch_stats"]}}
        weights = "initial (random) weights, no --workdir: the cost does not depend on their values"
    device = jax.local_devices()[0]
    monitor = energy_lib.EnergyMonitor([energy_lib.NvmlSensor(config.profile.nvml_gpus, devices=[device]),
                                        energy_lib.RaplSensor()], poll_interval_s=config.profile.poll_interval_s)
    try:
        rows = measure(config, variables, seconds=seconds, repeats=repeats, block_s=block_s, monitor=monitor,
                       energy_windows=energy_windows, window_s=window_s, device=device)
    finally:
        monitor.close()
    return {"model": config.model.name, "weights": weights, "device": str(device),
            "device_kind": device.device_kind, "conv_lowering": models.conv_lowering(config.model),
            "rows": [dataclasses.asdict(r) for r in rows], "markdown": markdown(rows)}


def print_result(result: dict, as_json: bool, out: TextIO = sys.stdout) -> None:
    if as_json:
        out.write(json.dumps(result, indent=2) + "\n")
        return
    out.write(f"{result['model']} on {result['device']} ({result['device_kind']}), convolutions "
              f"{result['conv_lowering']}; weights: {result['weights']}\n{result['markdown']}\n")
    for row in result["rows"]:
        if row["energy_unavailable"]:
            out.write(f"energy unavailable: {row['energy_unavailable']}\n")
            break


def _define_flags() -> None:
    config_flags.DEFINE_config_file("config", "configs/r34.py", "an sv_jax config file", lock_config=True)
    flags.DEFINE_string("workdir", None, "a run's workdir: its inference checkpoint (default: initial weights)")
    flags.DEFINE_list("seconds", [f"{s:g}" for s in DEFAULT_SECONDS], "utterance lengths in seconds")
    flags.DEFINE_integer("repeats", 5, "timed blocks per length")
    flags.DEFINE_float("block_s", 2.0, "least seconds of whole calls per timed block")
    flags.DEFINE_integer("energy_windows", 3, "energy windows per length (with a sensor)")
    flags.DEFINE_float("window_s", 5.0, "least length of an energy window in seconds")
    flags.DEFINE_bool("json", False, "print one JSON object instead of a table")


def main(argv) -> None:
    if len(argv) > 1:
        raise cli.ConfigError(f"unexpected arguments: {argv[1:]}")
    FLAGS = flags.FLAGS  # pylint: disable=invalid-name
    logging.set_verbosity(logging.WARNING)  # orbax logs every read through absl
    try:
        seconds = [float(s) for s in FLAGS.seconds]
    except ValueError as error:
        raise cli.ConfigError(f"--seconds={','.join(FLAGS.seconds)}: lengths in seconds, e.g. 2,4,8,16") from error
    result = run_from_flags(FLAGS.config, FLAGS.workdir, seconds, FLAGS.repeats, FLAGS.block_s,
                            FLAGS.energy_windows, FLAGS.window_s)
    print_result(result, FLAGS.json)


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
