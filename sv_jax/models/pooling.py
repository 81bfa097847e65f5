"""Temporal statistics pooling (TSTP), WeSpeaker's pooling for its ResNets."""

from __future__ import annotations

import jax
import jax.numpy as jnp

# WeSpeaker adds 1e-7 to the variance under the square root.
STD_EPSILON = 1e-7


def tstp(x: jax.Array, lengths: jax.Array | None = None) -> jax.Array:
    """Mean and unbiased standard deviation over time of NHWC activations (B, F, T, C) -> (B, 2*C*F).

    Statistics are flattened channel-major (index c*F + f), as PyTorch flattens (B, C, F) after pooling (B, C, F, T),
    so that a WeSpeaker embedding layer's weights apply unchanged. With `lengths`, only the first lengths[b] time
    steps of example b count (padded evaluation batches).
    """
    if lengths is None:
        count = jnp.asarray(x.shape[2], x.dtype)
        mean = jnp.mean(x, axis=2)
        sq_dev = jnp.sum(jnp.square(x - mean[:, :, None, :]), axis=2)
    else:
        mask = (jnp.arange(x.shape[2])[None, :] < lengths[:, None]).astype(x.dtype)[:, None, :, None]
        count = lengths.astype(x.dtype)[:, None, None]
        mean = jnp.sum(x * mask, axis=2) / count
        sq_dev = jnp.sum(jnp.square(x - mean[:, :, None, :]) * mask, axis=2)
    # Unbiased (n - 1) like torch.var; a single frame would divide by zero, so it counts as one degree of freedom.
    std = jnp.sqrt(sq_dev / jnp.maximum(count - 1, 1) + STD_EPSILON)
    flatten = lambda s: jnp.transpose(s, (0, 2, 1)).reshape(s.shape[0], -1)  # (B, F, C) -> (B, C*F)
    return jnp.concatenate([flatten(mean), flatten(std)], axis=-1)
