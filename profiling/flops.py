"""FLOPs and bytes per utterance of the compiled train step and of inference, cross-checked by an analytic count.

    python -m profiling.flops --config=configs/r34.py [--batch_size=8] [--json]

XLA's `cost_analysis()` of a compiled program is the measured figure. Four things make it easy to misread:
- For a program sharded over N devices it describes one device's partition (checked on 4 fake CPU devices with
  jax 0.10.2: a data-sharded jit reports 1/4 of the single-device FLOPs, and `memory_analysis()` likewise), so
  `compiled_cost` multiplies by N. Per-utterance numbers then barely depend on the device count: the replicated
  optimizer update is done, and counted, on every device (r34, batch 8: +0.2% train-step FLOPs on 4 devices).
- Convolution taps that fall on padding are skipped, so it should match the analytic count of multiply-adds that
  touch real input ('real'), not WeSpeaker's full-kernel count ('full', what its README's FLOPs column derives
  from; r34 at 200x80: 4.345 vs 4.528 GMACs). It also counts BN, ReLU, pooling and the loss elementwise, which
  the analytic count leaves out.
- It counts what the optimised program executes. XLA's CPU loop fusion recomputes the residual stream's
  BN + add + ReLU chain inside later blocks instead of reading it back, quadratically in a stage's depth: the
  compiled CPU forward is +0.8% over 2x the analytic MACs for r34 but +13.6% for r293. The count of the program
  before optimisation (`Lowered.cost_analysis()`, global, no fusion, no custom calls) is reported next to it
  as `*_unoptimized`: +0.4% for r34, +1.0% for r293.
- On GPU, cuDNN convolutions are custom calls that can be reported as -1 or not at all. A count under 90% of the
  analytic minimum is treated as unusable; the same program is then compiled for the CPU backend and that count
  is reported, labelled in `source`.
- Reversible models (`model.reversible`) run their couplings in a lax.scan, whose body XLA counts once. Their
  counts (optimised and unoptimised) come from a CPU copy lowered with the scans unrolled, labelled in `source`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from typing import Any, Callable, NamedTuple, Sequence, TypedDict

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_flags

from sv_jax import models
from sv_jax.models import reversible
from sv_jax import parallel
from sv_jax import step as step_lib

# Small, so that any model compiles in seconds. Per utterance, r34's FLOPs differ by <0.1% between batch 8 and 128;
# bytes accessed by +9% at 8 (the state's reads and writes are shared by fewer utterances).
DEFAULT_BATCH_SIZE = 8
VOXCELEB2_DEV_SPEAKERS = 5994
CONVENTIONS = ("real", "full")
SOURCE_XLA = "xla"
# A usable count is at least this fraction of the analytic minimum (CPU forward counts: 100.8-113.6% of it, r18-r293).
_USABLE_FRACTION = 0.9


class CompiledCost(TypedDict):
    """XLA's cost analysis of one compiled program, summed over the devices it runs on (a dict, for JSON)."""

    flops: float  # floating-point operations of one call, all devices (XLA counts a multiply-add as 2)
    bytes_accessed: float  # bytes read and written by the program's HLO ops, all devices
    num_devices: int  # devices the per-device figures were multiplied by
    source: str  # 'xla', or 'xla-cpu (<platform> count unusable)' where the CPU backend's count replaced it


@dataclasses.dataclass(frozen=True)
class FlopsReport:
    """FLOPs and bytes per utterance (= per chunk of `num_frames` frames) of inference and of one train step.

    `bytes_accessed_per_utt` and `arithmetic_intensity_flops_per_byte` are the train step's; the forward's have a
    `forward_` prefix. `forward_flops_per_utt_analytic` is 2 x the MACs on real input (what XLA should match);
    `forward_macs_full_kernel_per_utt` is WeSpeaker's convention (the GMACs of DESIGN.md's table).
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
    source: str  # 'xla', or 'xla-cpu (<platform> count unusable)' when the CPU backend's counts replaced them
    forward_flops_per_utt: float
    forward_flops_per_utt_unoptimized: float  # XLA's count of the program before optimisation
    forward_flops_per_utt_analytic: float
    forward_macs_per_utt_analytic: int
    forward_macs_full_kernel_per_utt: int
    forward_bytes_accessed_per_utt: float
    forward_arithmetic_intensity_flops_per_byte: float
    train_step_flops_per_utt: float
    train_step_flops_per_utt_unoptimized: float
    train_step_to_forward_flops_ratio: float
    bytes_accessed_per_utt: float
    arithmetic_intensity_flops_per_byte: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def scalars(self) -> dict[str, float]:
        """Slash-grouped metrics for a summary writer."""
        return {"flops/forward_per_utt": self.forward_flops_per_utt,
                "flops/forward_per_utt_analytic": self.forward_flops_per_utt_analytic,
                "flops/train_step_per_utt": self.train_step_flops_per_utt,
                "flops/train_step_bytes_accessed_per_utt": self.bytes_accessed_per_utt,
                "flops/train_step_arithmetic_intensity_flops_per_byte": self.arithmetic_intensity_flops_per_byte}


# --- XLA's count -------------------------------------------------------------------------------------------------

def program_devices(compiled: jax.stages.Compiled) -> int:
    """Number of devices a compiled program runs on (all processes), from its input shardings."""
    shardings = jax.tree_util.tree_leaves(compiled.input_shardings)
    return max((len(s.device_set) for s in shardings), default=1)


def compiled_cost(compiled: jax.stages.Compiled, num_devices: int | None = None) -> CompiledCost:
    """FLOPs and bytes of one call of `compiled`, over all its devices (default: those of its input shardings).

    XLA's figures as they are: a missing count is 0 and XLA's -1 stays negative; `checked_cost` validates.
    """
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older jax: one dict per module
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    num_devices = program_devices(compiled) if num_devices is None else num_devices
    return CompiledCost(flops=float(analysis.get("flops", 0.0)) * num_devices,
                        bytes_accessed=float(analysis.get("bytes accessed", 0.0)) * num_devices,
                        num_devices=num_devices, source=SOURCE_XLA)


def unoptimized_flops(lowered: jax.stages.Lowered) -> float:
    """XLA's FLOP count of a lowered program before optimisation: the whole (global) computation, as written,
    with no fusion or custom calls; NaN where the backend gives none."""
    try:
        analysis = lowered.cost_analysis()
    except Exception:  # pylint: disable=broad-except  # backends without a cost model raise various errors
        return float("nan")
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    flops = (analysis or {}).get("flops", -1.0)
    return float(flops) if flops >= 0 else float("nan")


SOURCE_UNROLLED = "xla-cpu (reversible stages' scans unrolled for counting)"


def checked_cost(compiled: Callable[[], jax.stages.Compiled], minimum_flops: float,
                 lower_for_cpu: Callable[[], Any], num_devices: int | None = None,
                 reversible_mode: str = "none") -> CompiledCost:
    """`compiled_cost` of `compiled()`, or, when it is under 90% of `minimum_flops` (an analytic floor for the
    whole program), the cost of `lower_for_cpu()` (the same program lowered for one CPU device) compiled, labelled
    so. Both are callables, so that nothing is compiled that is not counted.

    For a reversible model (`reversible_mode` != 'none') XLA's count of `compiled()` is always too low (its cost
    analysis counts a lax.scan body once, not once per coupling), so the count is that of `lower_for_cpu()`, which
    must then lower the model with its scans unrolled (`models.create_model(..., unroll_scans=True)`).
    """
    if reversible_mode != "none":
        return {**compiled_cost(lower_for_cpu().compile(), 1), "source": SOURCE_UNROLLED}
    program = compiled()
    cost = compiled_cost(program, num_devices)
    if cost["flops"] >= _USABLE_FRACTION * minimum_flops:
        return cost
    platform = next(iter(jax.tree_util.tree_leaves(program.input_shardings)[0].device_set)).platform
    return {**compiled_cost(lower_for_cpu().compile(), 1), "source": f"xla-cpu ({platform} count unusable)"}


# --- Analytic count ----------------------------------------------------------------------------------------------

class _Conv(NamedTuple):
    in_channels: int
    out_channels: int
    kernel: int
    stride: int
    in_size: tuple[int, int]  # (height = mel bins, width = frames)


def _conv_layers(backbone: models.ResNet, num_frames: int, num_mel_bins: int) -> tuple[list[_Conv], int]:
    """Every convolution of the ResNet in order, and the input size of the embedding layer."""
    width, expansion = backbone.width, models.resnet.BLOCKS[backbone.block].expansion
    size = (num_mel_bins, num_frames)
    layers, channels = [_Conv(1, width, 3, 1, size)], width
    for count, stride, mult in zip(backbone.num_blocks, models.resnet.STAGE_STRIDES,
                                   models.resnet.STAGE_WIDTH_MULTIPLIERS):
        planes = width * mult
        ordinary = reversible.ordinary_blocks(backbone.reversible, count)
        if ordinary == 0 and stride > 1:  # the invertible squeeze of 'full'
            channels, size = 4 * channels, tuple(-(-n // stride) for n in size)
        for index in range(ordinary):
            block_stride = stride if index == 0 else 1
            out_size = tuple(-(-n // block_stride) for n in size)
            if backbone.block == "basic":
                layers += [_Conv(channels, planes, 3, block_stride, size), _Conv(planes, planes, 3, 1, out_size)]
            else:
                layers += [_Conv(channels, planes, 1, 1, size), _Conv(planes, planes, 3, block_stride, size),
                           _Conv(planes, planes * 4, 1, 1, out_size)]
            if block_stride != 1 or channels != planes * expansion:
                layers.append(_Conv(channels, planes * expansion, 1, block_stride, size))
            channels, size = planes * expansion, out_size
        if count > ordinary:  # F and G of each coupling
            convs = reversible.coupling_convs(backbone.reversible, backbone.block, channels, planes)
            layers += [_Conv(cin, cout, kernel, 1, size) for kernel, cin, cout in convs] * 2 * (count - ordinary)
    if backbone.reversible == "full":
        layers.append(_Conv(channels, planes * expansion, 1, 1, size))
        channels = planes * expansion
    return layers, 2 * channels * size[0]  # TSTP: mean and std per (channel, frequency)


def _taps(in_size: int, kernel: int, stride: int, convention: str) -> int:
    """Kernel taps summed over the output positions of one spatial axis (padding kernel // 2 on both sides)."""
    pad = kernel // 2
    out_size = (in_size + 2 * pad - kernel) // stride + 1
    if convention == "full":
        return out_size * kernel
    return sum(1 for o in range(out_size) for t in range(kernel) if 0 <= o * stride - pad + t < in_size)


def backbone_macs(backbone: models.ResNet, num_frames: int, num_mel_bins: int, convention: str = "real") -> int:
    """`analytic_forward_macs` of a built ResNet module."""
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose one of {list(CONVENTIONS)}")
    layers, embed_in = _conv_layers(backbone, num_frames, num_mel_bins)
    # Taps factor over the two spatial axes, so the count is exact without visiting every output position.
    macs = sum(c.in_channels * c.out_channels * _taps(c.in_size[0], c.kernel, c.stride, convention)
               * _taps(c.in_size[1], c.kernel, c.stride, convention) for c in layers)
    return macs + embed_in * backbone.embed_dim


def analytic_forward_macs(model_config, num_frames: int, num_mel_bins: int, convention: str = "real") -> int:
    """Multiply-adds of one utterance's forward pass: every convolution plus the embedding layer.

    'real' counts only kernel taps that land on real (non-padding) input, as XLA does; 'full' counts every tap,
    WeSpeaker's convention. BN, ReLU, residual adds and TSTP are left out: they are elementwise, not multiply-adds,
    and together about 1% of the FLOPs.
    """
    return backbone_macs(models.create_model(model_config, num_classes=1).backbone, num_frames, num_mel_bins,
                         convention)


def default_num_classes(config) -> int:
    """Classes of the ArcMargin head a config trains: VoxCeleb2 dev's 5,994 speakers (or the synthetic corpus's
    training speakers), times 3 with speed perturbation. The head is ~0.2% of r34's train-step FLOPs."""
    speakers = (config.data.synthetic.num_train_speakers if config.data.source == "synthetic"
                else VOXCELEB2_DEV_SPEAKERS)
    return speakers * (3 if config.data.speed_perturb else 1)


# --- Programs and reports ----------------------------------------------------------------------------------------

class Programs(NamedTuple):
    """The lowered (not yet compiled) inference and train-step programs of a config, and the abstract state."""

    forward: jax.stages.Lowered  # model.embed on f32[B, T, F] without lengths (full chunks)
    train_step: jax.stages.Lowered  # sv_jax.step.train_step, state donated as in training
    state: Any  # TrainState of jax.ShapeDtypeStruct leaves
    num_devices: int
    parts: step_lib.StepParts  # the model, optimizer and schedules they were lowered from


def lower_programs(config, batch_size: int = DEFAULT_BATCH_SIZE, num_classes: int | None = None,
                   devices: Sequence[jax.Device] | None = None, unroll_scans: bool = False) -> Programs:
    """Lowers the config's forward and train step as training runs them: state replicated, batch sharded.

    Nothing is initialised or run: the state is abstract (jax.eval_shape), so any model size lowers in seconds.
    `unroll_scans` lowers a reversible model for counting its FLOPs (see `checked_cost`), not as training runs it.
    """
    num_classes = default_num_classes(config) if num_classes is None else num_classes
    mesh = parallel.create_mesh(devices)
    parallel.check_global_batch(batch_size, mesh)
    # Schedules are scalar functions of the step: their length does not change the program's cost.
    parts = step_lib.create_step_parts(config, num_classes, config.train.steps_per_epoch or 1000, batch_size,
                                       unroll_scans=unroll_scans)
    feat_shape = (config.data.num_frames, config.data.num_mel_bins)
    state = jax.eval_shape(lambda: step_lib.create_train_state(jax.random.key(0), parts.model, parts.tx, feat_shape))
    feats = jax.ShapeDtypeStruct((batch_size, *feat_shape), jnp.float32)
    batch = {"feats": feats, "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
    return Programs(forward=_lower_forward(parts.model, state.variables, feats, mesh),
                    train_step=step_lib.jit_train_step(parts, mesh).lower(state, batch), state=state,
                    num_devices=mesh.size, parts=parts)


def random_inputs(programs: Programs, config, batch_size: int, num_classes: int, devices: Sequence[jax.Device],
                  seed: int = 0) -> tuple[Any, dict[str, jax.Array]]:
    """A concrete, initialised state and one random batch for `programs`, placed as training places them; for
    timing the compiled programs (benchmark, sweeps), where the values do not matter."""
    mesh = parallel.create_mesh(devices)
    model, tx = programs.parts.model, programs.parts.tx
    feat_shape = (config.data.num_frames, config.data.num_mel_bins)
    state = jax.jit(lambda rng: step_lib.create_train_state(rng, model, tx, feat_shape),
                    out_shardings=parallel.replicated(mesh))(jax.random.key(seed))
    rng = np.random.default_rng(seed)
    batch = parallel.shard_batch({"feats": rng.standard_normal((batch_size, *feat_shape), np.float32),
                                  "label": rng.integers(0, num_classes, batch_size).astype(np.int32)}, mesh)
    return state, batch


def _lower_forward(model, variables, feats: jax.ShapeDtypeStruct, mesh) -> jax.stages.Lowered:
    forward = jax.jit(lambda v, x: model.apply(v, x, method=model.embed),
                      in_shardings=(parallel.replicated(mesh), parallel.data_sharded(mesh)),
                      out_shardings=parallel.data_sharded(mesh))
    return forward.lower(_abstract(variables), feats)


def _abstract(tree):
    return jax.tree_util.tree_map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


def forward_cost(model, variables, num_frames: int, num_mel_bins: int, mesh,
                 batch_size: int | None = None) -> dict[str, Any]:
    """Cost of the model's inference (`model.embed`, full chunks) on `mesh`, for a trainer that has its model and
    (concrete or abstract) variables: CompiledCost plus flops_per_utt, bytes_accessed_per_utt and batch_size.
    `batch_size` defaults to DEFAULT_BATCH_SIZE rounded up to a multiple of the mesh size."""
    batch_size = batch_size or parallel.round_up(DEFAULT_BATCH_SIZE, mesh.size)
    feats = jax.ShapeDtypeStruct((batch_size, num_frames, num_mel_bins), jnp.float32)
    minimum = 2 * backbone_macs(model.backbone, num_frames, num_mel_bins) * batch_size
    cpu_mesh = parallel.create_mesh(jax.devices("cpu")[:1])
    counted = model.clone(backbone=model.backbone.clone(unroll_scans=True))
    cost = checked_cost(_lower_forward(model, variables, feats, mesh).compile, minimum,
                        lambda: _lower_forward(counted, variables, feats, cpu_mesh), mesh.size,
                        model.backbone.reversible)
    return {**cost, "flops_per_utt": cost["flops"] / batch_size,
            "bytes_accessed_per_utt": cost["bytes_accessed"] / batch_size, "batch_size": batch_size}


def train_step_cost(config, compiled_step: jax.stages.Compiled, batch_size: int, num_classes: int | None = None,
                    num_devices: int | None = None) -> CompiledCost:
    """`compiled_cost` of a trainer's compiled step for the global `batch_size`, validated against the analytic
    count; where the backend's count is unusable, that of the config's step compiled for one CPU device."""
    minimum = _train_step_minimum_flops(config, batch_size)
    return checked_cost(lambda: compiled_step, minimum, lambda: lower_programs(
        config, batch_size, num_classes, jax.devices("cpu")[:1], unroll_scans=True).train_step, num_devices,
                        config.model.reversible)


def forward_step_cost(config, compiled_forward: jax.stages.Compiled, batch_size: int,
                      num_classes: int | None = None, num_devices: int | None = None) -> CompiledCost:
    """`compiled_cost` of a compiled `Programs.forward` for the global `batch_size`, checked like
    `train_step_cost` (the CPU copy, scans unrolled, where the backend's count is unusable or rolled)."""
    minimum = 2 * analytic_forward_macs(config.model, config.data.num_frames, config.data.num_mel_bins) * batch_size
    return checked_cost(lambda: compiled_forward, minimum, lambda: lower_programs(
        config, batch_size, num_classes, jax.devices("cpu")[:1], unroll_scans=True).forward, num_devices,
                        config.model.reversible)


def _train_step_minimum_flops(config, batch_size: int) -> float:
    # Forward plus at least one backward product per convolution: no cheaper than 2x the forward's MACs.
    macs = analytic_forward_macs(config.model, config.data.num_frames, config.data.num_mel_bins)
    return 2 * 2 * macs * batch_size


def flops_report(config, batch_size: int = DEFAULT_BATCH_SIZE, num_classes: int | None = None,
                 devices: Sequence[jax.Device] | None = None) -> FlopsReport:
    """Compiles the config's forward and train step for `devices` (default: all) and reports their cost per
    utterance at the config's chunk length, next to the analytic counts. `num_classes` defaults to
    `default_num_classes(config)` (17,982 for the VoxCeleb2 recipe with speed perturbation)."""
    devices = list(devices) if devices is not None else jax.devices()
    frames, bins = config.data.num_frames, config.data.num_mel_bins
    macs_real = analytic_forward_macs(config.model, frames, bins, "real")
    programs = lower_programs(config, batch_size, num_classes, devices)
    cpu_programs = functools.cache(lambda: lower_programs(config, batch_size, num_classes, jax.devices("cpu")[:1],
                                                          unroll_scans=True))
    forward = checked_cost(programs.forward.compile, 2 * macs_real * batch_size,
                           lambda: cpu_programs().forward, programs.num_devices, config.model.reversible)
    step = checked_cost(programs.train_step.compile, _train_step_minimum_flops(config, batch_size),
                        lambda: cpu_programs().train_step, programs.num_devices, config.model.reversible)
    per_utt = lambda value: value / batch_size
    counted = cpu_programs() if config.model.reversible != "none" else programs  # what XLA counts in full
    sources = sorted({forward["source"], step["source"]})
    return FlopsReport(
        model=config.model.name, params=models.count_params(programs.state.params["backbone"]),
        head_params=models.count_params(programs.state.params["head"]),
        num_classes=programs.state.params["head"]["weight"].shape[-1], num_frames=frames, num_mel_bins=bins,
        batch_size=batch_size, devices=len(devices), platform=devices[0].platform, source=", ".join(sources),
        forward_flops_per_utt=per_utt(forward["flops"]),
        forward_flops_per_utt_unoptimized=per_utt(unoptimized_flops(counted.forward)),
        forward_flops_per_utt_analytic=2.0 * macs_real,
        forward_macs_per_utt_analytic=macs_real,
        forward_macs_full_kernel_per_utt=analytic_forward_macs(config.model, frames, bins, "full"),
        forward_bytes_accessed_per_utt=per_utt(forward["bytes_accessed"]),
        forward_arithmetic_intensity_flops_per_byte=_ratio(forward["flops"], forward["bytes_accessed"]),
        train_step_flops_per_utt=per_utt(step["flops"]),
        train_step_flops_per_utt_unoptimized=per_utt(unoptimized_flops(counted.train_step)),
        train_step_to_forward_flops_ratio=_ratio(step["flops"], forward["flops"]),
        bytes_accessed_per_utt=per_utt(step["bytes_accessed"]),
        arithmetic_intensity_flops_per_byte=_ratio(step["flops"], step["bytes_accessed"]))


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator > 0 else float("nan")


def format_table(record: dict[str, Any]) -> str:
    """Two readable columns: bytes in MB (1e6), FLOP and MAC counts in G (1e9), other numbers as they are."""
    def cell(key, value):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return str(value)
        if "bytes" in key and "per_byte" not in key:
            return f"{value / 1e6:,.2f} MB"
        if ("flops" in key or "macs" in key) and "ratio" not in key and "per_byte" not in key:
            return f"{value / 1e9:,.3f} G"
        return f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"
    width = max(len(key) for key in record)
    return "\n".join(f"{key:<{width}}  {cell(key, value)}" for key, value in record.items())


def to_json(record: dict[str, Any]) -> str:
    """One line of strict JSON: a missing (NaN) figure becomes null."""
    return json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()})


# --- Command line ------------------------------------------------------------------------------------------------

def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    values = flags.FLAGS
    report = flops_report(values.config, batch_size=values.batch_size, num_classes=values.num_classes)
    print(to_json(report.to_dict()) if values.json else format_table(report.to_dict()))


def define_flags(default_batch_size: int | None, batch_size_help: str) -> None:
    """The flags of `python -m profiling.flops` and `profiling.memory`; defined only when run as a script, so that
    importing these modules next to sv_jax.main (which defines --config too) is harmless."""
    config_flags.DEFINE_config_file("config", None, "Python config file (get_config()).", lock_config=True)
    flags.DEFINE_integer("batch_size", default_batch_size, batch_size_help)
    flags.DEFINE_integer("num_classes", None, "ArcMargin classes; default from the config (17,982 for "
                                              "VoxCeleb2 with speed perturbation).")
    flags.DEFINE_bool("json", False, "Print one JSON object instead of a table.")
    flags.mark_flags_as_required(["config"])


if __name__ == "__main__":
    define_flags(DEFAULT_BATCH_SIZE, "Global batch the programs are compiled for (FLOPs per utterance barely "
                                     "depend on it, bytes do a little).")
    app.run(main)
