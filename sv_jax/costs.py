"""What the trainer's programs cost: FLOPs and bytes per utterance, and the train step's memory, as typed reports.

    report = flops_report(config)          # FlopsReport: XLA's checked counts next to the analytic ones
    memory = step_memory(programs.train_step, programs.state)  # StepMemory of a compiled train step

The counts come from sv_jax.programs (XLA's cost analysis, checked against the models' own MAC count); the
memory from XLA's buffer assignment (profiling.xla_memory), with the state split into parameters, BN statistics
and optimizer state. `python -m profiling.study.flops` and `python -m profiling.study.memory` print them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax

from profiling import xla_cost
from profiling import xla_memory
from sv_jax import models
from sv_jax import programs as programs_lib
from sv_jax import tasks
from sv_jax.models import macs as macs_lib


def default_num_classes(config) -> int:
    """Classes of the head a config trains (sv_jax.tasks): for speakers VoxCeleb2 dev's 5,994 (or the synthetic
    corpus's training speakers), times 3 with speed perturbation; for tagging DESED's 10. The speaker head is ~0.2%
    of r34's train-step FLOPs."""
    return tasks.get(config).default_num_classes(config)


@dataclasses.dataclass(frozen=True)
class FlopsReport:
    """FLOPs and bytes per utterance (= per chunk of `num_frames` frames) of the forward and of one train step.

    `forward_flops_per_utt_analytic` is 2 x the MACs on real input (what XLA should match);
    `forward_macs_full_kernel_per_utt` is WeSpeaker's convention (the GMACs of docs/design.md's table).
    """

    model: str
    params: int  # embedding extractor only (what WeSpeaker counts), not the ArcMargin head
    head_params: int
    num_classes: int
    num_frames: int
    num_mel_bins: int
    batch_size: int  # global batch the programs were compiled for
    devices: int
    platform: str  # backend the programs were compiled for first
    flops_source: str  # 'xla' (the compiled programs' counts) or 'xla-unoptimized' (profiling.xla_cost)
    flops_note: str  # why the programs themselves were not what was counted, if they were not
    forward_flops_per_utt: float
    forward_flops_per_utt_unoptimized: float  # XLA's count of the program before optimisation
    forward_flops_per_utt_analytic: float
    forward_macs_per_utt_analytic: int
    forward_macs_full_kernel_per_utt: int
    forward_bytes_accessed_per_utt: float | None  # None with 'xla-unoptimized' (no bytes of this backend)
    forward_arithmetic_intensity_flops_per_byte: float
    train_step_flops_per_utt: float
    train_step_flops_per_utt_unoptimized: float
    train_step_to_forward_flops_ratio: float
    train_step_bytes_accessed_per_utt: float | None
    train_step_arithmetic_intensity_flops_per_byte: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _ratio(numerator: float, denominator: float | None) -> float:
    return numerator / denominator if denominator else float("nan")


def flops_report(config, batch_size: int = programs_lib.COUNTING_BATCH_SIZE, num_classes: int | None = None,
                 devices: Sequence[jax.Device] | None = None) -> FlopsReport:
    """Compiles the config's forward and train step for `devices` (default: all) at the global `batch_size` and
    reports their cost per utterance at the config's chunk length, next to the analytic counts. `num_classes`
    defaults to `default_num_classes(config)` (17,982 for the VoxCeleb2 recipe with speed perturbation)."""
    devices = list(devices) if devices is not None else jax.devices()
    num_classes = default_num_classes(config) if num_classes is None else num_classes
    frames, bins = config.data.num_frames, config.data.num_mel_bins
    programs = programs_lib.compile_programs(config, batch_size, num_classes, devices)
    forward, step = programs.forward_cost, programs.train_step_cost
    counted = programs.counted_lowering()
    per_utt = lambda value: None if value is None else value / batch_size
    macs_real = programs.forward_macs_per_utt
    return FlopsReport(
        model=config.model.name, params=models.count_params(programs.state.params["backbone"]),
        head_params=models.count_params(programs.state.params["head"]), num_classes=num_classes,
        num_frames=frames, num_mel_bins=bins, batch_size=batch_size, devices=len(devices),
        platform=devices[0].platform, flops_source=", ".join(sorted({forward.source, step.source})),
        flops_note="; ".join(sorted({n for n in (forward.note, step.note) if n})),
        forward_flops_per_utt=per_utt(forward.flops),
        forward_flops_per_utt_unoptimized=per_utt(xla_cost.unoptimized_flops(counted.forward)),
        forward_flops_per_utt_analytic=2.0 * macs_real, forward_macs_per_utt_analytic=macs_real,
        forward_macs_full_kernel_per_utt=macs_lib.forward_macs(config.model, frames, bins, "full"),
        forward_bytes_accessed_per_utt=per_utt(forward.bytes_accessed),
        forward_arithmetic_intensity_flops_per_byte=_ratio(forward.flops, forward.bytes_accessed),
        train_step_flops_per_utt=per_utt(step.flops),
        train_step_flops_per_utt_unoptimized=per_utt(xla_cost.unoptimized_flops(counted.train_step)),
        train_step_to_forward_flops_ratio=_ratio(step.flops, forward.flops),
        train_step_bytes_accessed_per_utt=per_utt(step.bytes_accessed),
        train_step_arithmetic_intensity_flops_per_byte=_ratio(step.flops, step.bytes_accessed))


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Bytes of one compiled train step on one device (state replicated, batch split over `devices`)."""

    model: str | None
    batch_size: int | None  # global batch the step was compiled for
    devices: int
    platform: str
    params_bytes: int  # every trainable parameter: embedding extractor and ArcMargin head
    batch_stats_bytes: int  # BN running statistics
    optimizer_state_bytes: int  # e.g. one momentum trace for SGD, two moments for Adam
    activation_bytes: int  # XLA's temporaries: activations saved for the backward pass and scratch
    argument_bytes: int  # state plus this device's share of the batch
    output_bytes: int
    alias_bytes: int  # outputs written in place of donated arguments (the new state)
    generated_code_bytes: int
    peak_bytes_in_use: int | None  # allocator high-water mark of the process on the first device
    peak_bytes_in_use_source: str  # how peak_bytes_in_use was read, or why it is None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def step_memory(compiled_step: jax.stages.Compiled, state: Any, *, batch_size: int | None = None,
                model: str | None = None) -> StepMemory:
    """Memory of a compiled train step; `state` is its TrainState (arrays or ShapeDtypeStructs). The allocator's
    peak is read as it is now (the process's high-water mark so far)."""
    memory = xla_memory.program_memory(compiled_step)
    return StepMemory(
        model=model, batch_size=batch_size, devices=xla_cost.program_devices(compiled_step),
        platform=xla_memory.first_device(compiled_step).platform, params_bytes=xla_memory.tree_bytes(state.params),
        batch_stats_bytes=xla_memory.tree_bytes(state.batch_stats),
        optimizer_state_bytes=xla_memory.tree_bytes(state.opt_state), activation_bytes=memory.temp_bytes,
        argument_bytes=memory.argument_bytes, output_bytes=memory.output_bytes, alias_bytes=memory.alias_bytes,
        generated_code_bytes=memory.generated_code_bytes, peak_bytes_in_use=memory.peak_bytes_in_use,
        peak_bytes_in_use_source=memory.peak_bytes_in_use_source)


def memory_report(config, batch_size: int | None = None, num_classes: int | None = None,
                  devices: Sequence[jax.Device] | None = None, run_step: bool | None = None) -> StepMemory:
    """Compiles the config's train step for the global `batch_size` (default: the config's) on `devices`
    (default: all) and reports its memory.

    With `run_step` (default: where the backend keeps memory_stats()), one step runs on an initialised state and a
    random batch so that `peak_bytes_in_use` measures the step; values do not matter for memory.
    """
    devices = list(devices) if devices is not None else jax.devices()
    batch_size = batch_size or config.data.batch_size
    num_classes = default_num_classes(config) if num_classes is None else num_classes
    programs = programs_lib.compile_programs(config, batch_size, num_classes, devices)
    if run_step is None:
        run_step = xla_memory.peak_bytes_in_use(devices[0])[0] is not None
    if run_step:
        outputs = programs.train_step(programs.init_state(config.seed), programs.random_batch(config.seed))
        jax.block_until_ready(outputs)
        del outputs
    return step_memory(programs.train_step, programs.state, batch_size=batch_size, model=config.model.name)
