"""Memory of a compiled JAX program (XLA's buffer assignment) and the device allocator's high-water mark.

    memory = program_memory(compiled)     # ProgramMemory: argument, output, alias, temporary bytes; peak

XLA's `memory_analysis()` gives one device's argument, output, aliased (donated) and temporary buffer sizes; the
temporaries are the activations kept for a backward pass plus scratch, which is what grows with the batch. Like
the cost analysis these figures are per device (checked on 4 fake CPU devices: a data-sharded jit reports its
shard's argument bytes). `peak_bytes_in_use` is the runtime allocator's high-water mark, which only backends with
`memory_stats()` (GPU, TPU) keep; it is None elsewhere, with the reason.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class ProgramMemory:
    """Bytes of one compiled program on one device."""

    argument_bytes: int  # the inputs on this device (replicated state, this device's share of a sharded batch)
    output_bytes: int
    alias_bytes: int  # outputs written in place of donated arguments
    temp_bytes: int  # XLA's temporaries: activations saved for the backward pass and scratch
    generated_code_bytes: int
    peak_bytes_in_use: int | None  # allocator high-water mark of the process on the program's first device
    peak_bytes_in_use_source: str  # how peak_bytes_in_use was read, or why it is None


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


def first_device(compiled: jax.stages.Compiled) -> jax.Device:
    """The lowest-id device of a compiled program's first input."""
    return min(jax.tree_util.tree_leaves(compiled.input_shardings)[0].device_set, key=lambda d: d.id)


def program_memory(compiled: jax.stages.Compiled) -> ProgramMemory:
    """XLA's memory analysis of `compiled`, with the allocator's peak as it is now (the process's high-water mark
    so far: called after some calls, it covers them); nothing is compiled or run here."""
    analysis = compiled.memory_analysis()
    peak, peak_source = peak_bytes_in_use(first_device(compiled))
    return ProgramMemory(argument_bytes=int(analysis.argument_size_in_bytes),
                         output_bytes=int(analysis.output_size_in_bytes),
                         alias_bytes=int(analysis.alias_size_in_bytes), temp_bytes=int(analysis.temp_size_in_bytes),
                         generated_code_bytes=int(analysis.generated_code_size_in_bytes),
                         peak_bytes_in_use=peak, peak_bytes_in_use_source=peak_source)
