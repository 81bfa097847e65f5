"""8-bit optimiser states: SGD momentum and Adam moments stored block-wise quantized as uint8.

Liu & Qian, "Memory-Efficient Training for Deep Speaker Embedding Learning in Speaker Verification" (arXiv
2412.01195) train speaker ResNets with the 8-bit optimisers of bitsandbytes (Dettmers et al., "8-bit Optimizers via
Block-wise Quantization", ICLR 2022). This module is that method in optax:

- Dynamic (tree) quantization map: 256 float values in [-1, 1] (signed) or [0, 1] (unsigned) spaced like a float
  with a variable-length exponent, so small magnitudes keep relative precision (`dynamic_map`).
- Block-wise quantization: each state tensor is flattened and cut into blocks of 256 elements; every element is
  divided by its block's absolute maximum and stored as the uint8 index of the nearest map value. One outlier then
  costs precision only in its own block. Dequantization is map[code] * absmax.
- Each step dequantizes the state, updates it and computes the update in float32, then requantizes (as the
  bitsandbytes kernels do, the update uses the float32 state, not its quantized copy).
- Tensors of fewer than `MIN_8BIT_SIZE` elements (biases, BatchNorm, the stem conv) keep float32 state, as
  bitsandbytes' `min_8bit_size`: they are a negligible part of the memory and the most sensitive to rounding.

Momentum and Adam's first moment use the signed map, Adam's second moment the unsigned one. Added here: a tensor
whose gradient holds any NaN or Inf is skipped: its state stays as it was and its update is zero, so one
bad batch cannot poison the quantization statistics (absmax) of a whole block. Step counts (Adam's bias correction,
the learning-rate schedule) still advance on such a step. The states are pytrees of uint8 / float32 arrays with
static shapes, so they jit, shard and checkpoint (orbax) like optax's own.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

BLOCK_SIZE = 256
MIN_8BIT_SIZE = 4096
_EXPONENT_LEVELS = 7  # bitsandbytes' max_exponent_bits for 8-bit maps


@functools.cache
def dynamic_map(signed: bool) -> np.ndarray:
    """The 256 sorted float32 values of bitsandbytes' `create_dynamic_map(signed, 7, 8)`.

    A code is a sign bit (signed map only), a run of zero bits ending in a one that gives the decimal exponent, and
    a linear fraction in the bits left over. Exponent level k = 0..6 covers magnitudes 10^(k-6) * [0.1, 1]; its
    fraction has k bits (signed) or k + 1 bits (unsigned: the sign bit becomes fraction), i.e. n = 2^k or 2^(k+1)
    equal bins of [0.1, 1], each represented by its midpoint. The levels hold 127 (signed: x2 for the sign) or 254
    values; 0 and 1 complete the 256.
    """
    magnitudes = []
    for level in range(_EXPONENT_LEVELS):
        bins = 2 ** (level + (0 if signed else 1))
        edges = np.linspace(0.1, 1.0, bins + 1)
        magnitudes.append(10.0 ** (level - _EXPONENT_LEVELS + 1) * (edges[:-1] + edges[1:]) / 2)
    magnitudes = np.concatenate(magnitudes)
    values = np.concatenate([magnitudes, -magnitudes] if signed else [magnitudes])
    values = np.sort(np.concatenate([values, [0.0, 1.0]])).astype(np.float32)
    assert values.size == 256 and np.all(np.diff(values) > 0)
    return values


@functools.cache
def _midpoints(signed: bool) -> np.ndarray:
    """Decision boundaries between neighbouring map values: searchsorted on them finds the nearest value."""
    values = dynamic_map(signed)
    return (values[:-1] + values[1:]) / 2


class QuantizedArray(NamedTuple):
    """A float32 tensor as uint8 codes (flat, padded to whole blocks) and one float32 absmax per block."""
    codes: jax.Array  # uint8[num_blocks * BLOCK_SIZE]
    absmax: jax.Array  # float32[num_blocks]


def quantize(x: jax.Array, signed: bool) -> QuantizedArray:
    """Block-wise quantization of `x` with the signed or unsigned dynamic map (nearest value)."""
    flat = jnp.ravel(x).astype(jnp.float32)
    blocks = jnp.pad(flat, (0, -flat.size % BLOCK_SIZE)).reshape(-1, BLOCK_SIZE)
    absmax = jnp.max(jnp.abs(blocks), axis=1)
    normed = blocks / jnp.where(absmax > 0, absmax, 1.0)[:, None]  # an all-zero block gets the code of 0.0
    codes = jnp.searchsorted(jnp.asarray(_midpoints(signed)), normed.ravel())
    return QuantizedArray(codes.astype(jnp.uint8), absmax)


def dequantize(q: QuantizedArray, shape: tuple[int, ...], signed: bool) -> jax.Array:
    """The float32 tensor of `shape` that `q` encodes."""
    values = jnp.asarray(dynamic_map(signed))[q.codes.astype(jnp.int32)]
    values = values.reshape(-1, BLOCK_SIZE) * q.absmax[:, None]
    return values.ravel()[:math.prod(shape)].reshape(shape)


def _zeros_state(param: jax.Array, signed: bool) -> jax.Array | QuantizedArray:
    """Zero state: float32 for small tensors, else what `quantize` gives for zeros (built without searching)."""
    if param.size < MIN_8BIT_SIZE:
        return jnp.zeros(param.shape, jnp.float32)
    num_blocks = -(-param.size // BLOCK_SIZE)
    zero_code = int(np.flatnonzero(dynamic_map(signed) == 0)[0])
    return QuantizedArray(jnp.full(num_blocks * BLOCK_SIZE, zero_code, jnp.uint8), jnp.zeros(num_blocks, jnp.float32))


def _load(state: jax.Array | QuantizedArray, shape: tuple[int, ...], signed: bool) -> jax.Array:
    return dequantize(state, shape, signed) if isinstance(state, QuantizedArray) else state


def _store(x: jax.Array, like: jax.Array | QuantizedArray, signed: bool) -> jax.Array | QuantizedArray:
    return quantize(x, signed) if isinstance(like, QuantizedArray) else x


def _finite_or_skip(grad: jax.Array, update: jax.Array, new_states: tuple, old_states: tuple) -> tuple:
    """(update, new_states), or (zeros, old_states) where `grad` has a NaN or Inf."""
    finite = jnp.all(jnp.isfinite(grad))
    keep = functools.partial(jax.tree.map, lambda new, old: jnp.where(finite, new, old))
    return jnp.where(finite, update, 0).astype(grad.dtype), keep(new_states, old_states)


def _map_leaves(fn: Callable, updates: optax.Updates, *states: optax.Params) -> tuple[optax.Updates, list]:
    """Applies `fn(grad, *leaf_states) -> (update, leaf_states)` per parameter; a leaf state may be a QuantizedArray."""
    grads, treedef = jax.tree.flatten(updates)
    per_leaf = [fn(g, *leaf_states) for g, *leaf_states in zip(grads, *(treedef.flatten_up_to(s) for s in states))]
    new_updates = treedef.unflatten([u for u, _ in per_leaf])
    new_states = [treedef.unflatten([s[i] for _, s in per_leaf]) for i in range(len(states))]
    return new_updates, new_states


class TraceState8bit(NamedTuple):
    trace: optax.Params  # per parameter: QuantizedArray (signed map) or float32 array


def trace_8bit(decay: float, nesterov: bool = False) -> optax.GradientTransformation:
    """optax.trace with the momentum buffer stored in 8 bits: t <- decay * t + g; update t (or g + decay * t)."""

    def init_fn(params):
        return TraceState8bit(jax.tree.map(lambda p: _zeros_state(p, signed=True), params))

    def leaf(grad, trace_state):
        g = grad.astype(jnp.float32)
        trace = decay * _load(trace_state, g.shape, signed=True) + g
        update = g + decay * trace if nesterov else trace
        return _finite_or_skip(grad, update, (_store(trace, trace_state, signed=True),), (trace_state,))

    def update_fn(updates, state, params=None):
        del params
        updates, (trace,) = _map_leaves(leaf, updates, state.trace)
        return updates, TraceState8bit(trace)

    return optax.GradientTransformation(init_fn, update_fn)


class ScaleByAdam8bitState(NamedTuple):
    count: jax.Array  # int32 step count for bias correction
    mu: optax.Params  # first moment: QuantizedArray (signed map) or float32 array
    nu: optax.Params  # second moment: QuantizedArray (unsigned map) or float32 array


def scale_by_adam_8bit(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> optax.GradientTransformation:
    """optax.scale_by_adam (bias-corrected, eps outside the square root) with both moments stored in 8 bits."""

    def init_fn(params):
        return ScaleByAdam8bitState(count=jnp.zeros([], jnp.int32),
                                    mu=jax.tree.map(lambda p: _zeros_state(p, signed=True), params),
                                    nu=jax.tree.map(lambda p: _zeros_state(p, signed=False), params))

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        correction1, correction2 = 1 - b1 ** count, 1 - b2 ** count

        def leaf(grad, mu_state, nu_state):
            g = grad.astype(jnp.float32)
            mu = b1 * _load(mu_state, g.shape, signed=True) + (1 - b1) * g
            nu = b2 * _load(nu_state, g.shape, signed=False) + (1 - b2) * g * g
            update = (mu / correction1) / (jnp.sqrt(nu / correction2) + eps)
            new = (_store(mu, mu_state, signed=True), _store(nu, nu_state, signed=False))
            return _finite_or_skip(grad, update, new, (mu_state, nu_state))

        updates, (mu, nu) = _map_leaves(leaf, updates, state.mu, state.nu)
        return updates, ScaleByAdam8bitState(count, mu, nu)

    return optax.GradientTransformation(init_fn, update_fn)


def sgd_8bit(learning_rate: optax.ScalarOrSchedule, momentum: float = 0.9,
             nesterov: bool = False) -> optax.GradientTransformation:
    """optax.sgd(learning_rate, momentum, nesterov) with an 8-bit momentum buffer (momentum 0: no buffer, optax.sgd)."""
    if not momentum:
        return optax.sgd(learning_rate)
    return optax.chain(trace_8bit(momentum, nesterov), optax.scale_by_learning_rate(learning_rate))


def adam_8bit(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999,
              eps: float = 1e-8) -> optax.GradientTransformation:
    """optax.adam with 8-bit moments."""
    return optax.chain(scale_by_adam_8bit(b1, b2, eps), optax.scale_by_learning_rate(learning_rate))


def adamw_8bit(learning_rate: optax.ScalarOrSchedule, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
               weight_decay: float = 1e-4) -> optax.GradientTransformation:
    """optax.adamw with 8-bit moments: decay added after the Adam scaling, before the learning rate, as optax.

    The decoupled decay does not read the gradient, so it still applies to a tensor whose gradient was non-finite.
    """
    return optax.chain(scale_by_adam_8bit(b1, b2, eps), optax.add_decayed_weights(weight_decay),
                       optax.scale_by_learning_rate(learning_rate))
