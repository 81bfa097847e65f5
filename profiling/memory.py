"""Memory of the compiled train step: parameters, optimizer state and activations, and the measured GPU peak.

    python -m profiling.memory --config=configs/r34.py [--batch_size=256] [--json]

XLA's `memory_analysis()` of the compiled step gives its argument, output, aliased (donated) and temporary buffer
sizes for one device; the temporaries are the activations kept for the backward pass plus scratch, which is what
grows with the batch. Parameters, BN statistics and optimizer state are split out of the arguments from the state's
shapes. Like the cost analysis, these figures are per device (checked on 4 fake CPU devices: a data-sharded jit
reports its shard's argument bytes): with the state replicated and the batch split, each device holds the whole
state and 1/N of the activations. `peak_bytes_in_use` is the runtime allocator's high-water mark, which only
backends with `memory_stats()` (GPU, TPU) keep; it is None elsewhere, with the reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from absl import app, flags
import jax
import jax.numpy as jnp

from profiling import flops as flops_lib
from sv_jax import parallel


@dataclasses.dataclass(frozen=True)
class MemoryReport:
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

    def scalars(self) -> dict[str, float]:
        """Slash-grouped metrics for a summary writer."""
        names = ("params_bytes", "optimizer_state_bytes", "activation_bytes", "peak_bytes_in_use")
        return {f"memory/{name}": getattr(self, name) for name in names if getattr(self, name) is not None}


def tree_bytes(tree: Any) -> int:
    """Bytes of a pytree of arrays or jax.ShapeDtypeStructs (whole arrays, not one device's shard)."""
    return sum(int(x.size) * jnp.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree))


def peak_bytes_in_use(device: jax.Device) -> tuple[int | None, str]:
    """(bytes, source) of the device allocator's high-water mark, or (None, reason) where it is not kept."""
    try:
        stats = device.memory_stats()
    except Exception as error:  # pylint: disable=broad-except  # backends raise various errors for "unsupported"
        return None, f"unavailable: {device.platform} memory_stats() failed ({error})"
    if not stats or "peak_bytes_in_use" not in stats:
        return None, f"unavailable: the {device.platform} backend keeps no memory_stats()"
    return int(stats["peak_bytes_in_use"]), "device.memory_stats() (process high-water mark)"


def memory_from_compiled(compiled_step: jax.stages.Compiled, state: Any, *, batch_size: int | None = None,
                         model: str | None = None) -> MemoryReport:
    """Memory of a trainer's compiled step; `state` is its TrainState (arrays or ShapeDtypeStructs).

    Reads the allocator's peak as it is now (the process's high-water mark so far), so a trainer that calls it
    after some steps gets the steps' peak; nothing is compiled or run here.
    """
    analysis = compiled_step.memory_analysis()
    shardings = jax.tree_util.tree_leaves(compiled_step.input_shardings)
    device = min(shardings[0].device_set, key=lambda d: d.id)
    peak, peak_source = peak_bytes_in_use(device)
    return MemoryReport(
        model=model, batch_size=batch_size, devices=flops_lib.program_devices(compiled_step),
        platform=device.platform, params_bytes=tree_bytes(state.params),
        batch_stats_bytes=tree_bytes(state.batch_stats), optimizer_state_bytes=tree_bytes(state.opt_state),
        activation_bytes=int(analysis.temp_size_in_bytes), argument_bytes=int(analysis.argument_size_in_bytes),
        output_bytes=int(analysis.output_size_in_bytes), alias_bytes=int(analysis.alias_size_in_bytes),
        generated_code_bytes=int(analysis.generated_code_size_in_bytes),
        peak_bytes_in_use=peak, peak_bytes_in_use_source=peak_source)


def memory_report(config, batch_size: int | None = None, num_classes: int | None = None,
                  devices: Sequence[jax.Device] | None = None, run_step: bool | None = None) -> MemoryReport:
    """Compiles the config's train step for the global `batch_size` (default: the config's) on `devices`
    (default: all) and reports its memory.

    With `run_step` (default: where the backend keeps memory_stats()), one step runs on a zero state and batch so
    that `peak_bytes_in_use` measures the step; values do not matter for memory. `num_classes` as in
    profiling.flops.default_num_classes (17,982 for the VoxCeleb2 recipe).
    """
    devices = list(devices) if devices is not None else jax.devices()
    batch_size = batch_size or config.data.batch_size
    programs = flops_lib.lower_programs(config, batch_size, num_classes, devices)
    compiled = programs.train_step.compile()
    if run_step is None:
        run_step = peak_bytes_in_use(devices[0])[0] is not None
    if run_step:
        mesh = parallel.create_mesh(devices)
        zeros = lambda tree, sharding: jax.jit(
            lambda: jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), tree), out_shardings=sharding)()
        batch = {"feats": jax.ShapeDtypeStruct((batch_size, config.data.num_frames, config.data.num_mel_bins),
                                               jnp.float32),
                 "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
        outputs = compiled(zeros(programs.state, parallel.replicated(mesh)),
                           zeros(batch, parallel.data_sharded(mesh)))
        jax.block_until_ready(outputs)
        del outputs
    return memory_from_compiled(compiled, programs.state, batch_size=batch_size, model=config.model.name)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    values = flags.FLAGS
    report = memory_report(values.config, batch_size=values.batch_size, num_classes=values.num_classes)
    print(flops_lib.to_json(report.to_dict()) if values.json else flops_lib.format_table(report.to_dict()))


if __name__ == "__main__":
    flops_lib.define_flags(None, "Global batch the step is compiled for; default: the config's data.batch_size.")
    app.run(main)
