"""Depthwise convolutions as shifted multiply-adds on CPU and for counting FLOPs; lax's (cuDNN's) elsewhere.

A depthwise convolution (`feature_group_count` = channels, one kernel per channel: the DF-ResNets' 3x3) is k*k
products of a shifted input slice and a per-channel weight, summed. Written that way it is elementwise work that
XLA fuses into one loop, and two things about XLA's own grouped convolution make that form the better one here
(measured on the 2-core dev VM, Intel Xeon with AVX-512, jax 0.10.2, x of 16 x 40 x 200 x 128, DF-ResNet60's
stage-1 hidden width, float32, another job on the other core):

- XLA:CPU runs the grouped convolution slowly: forward 3.1 s, forward and both gradients 9.5 s, against 0.21 s and
  1.0 s as shifted multiply-adds (the same numbers to 1e-5).
- XLA's cost analysis counts the weight gradient, a convolution with `batch_group_count` = channels, as if it were
  dense over the channels: 37.3 G FLOPs for forward and gradients where the multiply-adds are 0.87 G (analytic).

So, through `conv_function`: on CPU (`lax.platform_dependent`) the model's depthwise convolutions are the
shifted form, on other backends lax's (cuDNN's on GPUs: their path is untouched), and the copy of a program that
sv_jax.programs counts FLOPs on (`counting=True`) uses `counted` on every backend: lax's forward and input gradient,
and the weight gradient as per-tap products summed, which XLA counts at 2 FLOPs per multiply-add. (Counting the
shifted form itself is not stable: XLA fuses the BN and ReLU that feed it into each of the k*k slices and counts them
k*k times.) Any other convolution goes to the given `fallback` (lax's or oneDNN's, sv_jax.models.cpu_conv).
"""

from __future__ import annotations

import functools
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax import lax

DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")


def is_depthwise(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                 feature_group_count: int = 1, batch_group_count: int = 1) -> bool:
    """Whether this lax.conv_general_dilated call is a depthwise NHWC/HWIO convolution `taps` computes."""
    if lhs.ndim != 4 or rhs.ndim != 4 or dimension_numbers is None or isinstance(padding, str):
        return False
    dims = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    channels = lhs.shape[-1]
    return (dims == lax.conv_dimension_numbers(lhs.shape, rhs.shape, DIMENSION_NUMBERS) and channels > 1
            and feature_group_count == channels and rhs.shape[2] == 1 and rhs.shape[3] == channels
            and batch_group_count == 1 and all(d == 1 for d in (lhs_dilation or (1, 1)))
            and all(d == 1 for d in (rhs_dilation or (1, 1))))


def taps(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
         padding: Sequence[tuple[int, int]]) -> jax.Array:
    """Depthwise NHWC convolution with an (kh, kw, 1, C) kernel as the sum of kh * kw shifted products."""
    (kh, kw), (sh, sw) = kernel.shape[:2], strides
    x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    rows, cols = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            window = x[:, i:i + (rows - 1) * sh + 1:sh, j:j + (cols - 1) * sw + 1:sw, :]
            term = window * kernel[i, j, 0].astype(x.dtype)
            out = term if out is None else out + term
    return out


def _grouped(x, kernel, strides, padding):
    return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=DIMENSION_NUMBERS,
                                    feature_group_count=x.shape[-1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def counted(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
            padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
    """The depthwise convolution as XLA counts it right: lax's grouped convolution forward and input gradient
    (counted at 2 FLOPs per multiply-add), the weight gradient as per-tap products reduced over batch and space
    (2 FLOPs per multiply-add too) instead of the batch-grouped convolution XLA overcounts. Values equal lax's."""
    return _grouped(x, kernel, strides, padding)


def _counted_fwd(x, kernel, strides, padding):
    return _grouped(x, kernel, strides, padding), (x, kernel)


def _counted_bwd(strides, padding, residuals, g):
    x, kernel = residuals
    _, input_vjp = jax.vjp(lambda v: _grouped(v, kernel, strides, padding), x)
    (kh, kw), (sh, sw) = kernel.shape[:2], strides
    padded = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    rows, cols = g.shape[1], g.shape[2]
    taps_grad = [[jnp.sum(padded[:, i:i + (rows - 1) * sh + 1:sh, j:j + (cols - 1) * sw + 1:sw, :] * g,
                          axis=(0, 1, 2)) for j in range(kw)] for i in range(kh)]
    return input_vjp(g)[0], jnp.stack([jnp.stack(row) for row in taps_grad])[:, :, None, :].astype(kernel.dtype)


counted.defvjp(_counted_fwd, _counted_bwd)


@functools.cache
def conv_function(fallback: Callable, counting: bool = False) -> Callable:
    """A lax.conv_general_dilated-like function: depthwise convolutions as described above, the rest `fallback`.
    Cached, so that each combination is one function (flax fields and custom_vjp static arguments compare it)."""

    def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                             dimension_numbers=None, feature_group_count=1, batch_group_count=1, precision=None,
                             preferred_element_type=None):
        if preferred_element_type is None and is_depthwise(lhs, rhs, window_strides, padding, lhs_dilation,
                                                           rhs_dilation, dimension_numbers, feature_group_count,
                                                           batch_group_count):
            strides = tuple(int(s) for s in window_strides)
            pads = tuple((int(lo), int(hi)) for lo, hi in padding)
            if counting:
                return counted(lhs, rhs, strides, pads)
            return lax.platform_dependent(lhs, rhs, cpu=functools.partial(taps, strides=strides, padding=pads),
                                          default=lambda x, k: _grouped(x, k, strides, pads))
        return fallback(lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
                        feature_group_count, batch_group_count, precision, preferred_element_type)

    return conv_general_dilated
