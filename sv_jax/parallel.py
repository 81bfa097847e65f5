"""Data parallelism with a device mesh: parameters replicated, batches sharded along a 'data' axis.

jit with NamedSharding is JAX's successor to pmap: one program for the global batch, and XLA inserts the
cross-device reductions, so BatchNorm statistics and the loss are those of the global batch (as with SyncBN).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from cli import ConfigError

DATA_AXIS = "data"


def create_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh over `devices` (default: every device of every process)."""
    devices = list(devices) if devices is not None else jax.devices()
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_global_batch(global_batch_size: int, mesh: Mesh) -> None:
    if global_batch_size % mesh.size:
        raise ConfigError(f"data.batch_size={global_batch_size} must be divisible by the number of devices "
                         f"({mesh.size})")


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Host numpy arrays (this process's part of the global batch) -> global arrays sharded on 'data'."""
    sharding = data_sharded(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def pad_rows(arrays: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """Pads the leading axis of every array with zeros to `rows` (for fixed evaluation batch shapes)."""
    out = {}
    for key, value in arrays.items():
        pad = rows - value.shape[0]
        if pad < 0:
            raise ValueError(f"{key}: {value.shape[0]} rows do not fit in {rows}")
        out[key] = np.pad(value, [(0, pad)] + [(0, 0)] * (value.ndim - 1)) if pad else value
    return out


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
