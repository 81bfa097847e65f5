"""Reversible ResNet and DF-ResNet stages: backpropagation that recomputes activations instead of storing them.

`model.reversible` follows Liu & Qian, "Memory-Efficient Training for Deep Speaker Embedding Learning in Speaker
Verification" (arXiv 2412.01195), built from RevNet (Gomez et al., NeurIPS 2017) and i-RevNet (Jacobsen et al.,
ICLR 2018).

A coupling splits its input into channel halves x = (x1, x2) and computes

    y1 = x1 + F(x2),    y2 = x2 + G(y1),    inverted exactly by    x2 = y2 - G(y1),    x1 = y1 - F(x2).

F and G are the block type's layers on the half width, each conv followed by BN and ReLU: the ordinary block's
final ReLU (after the residual add, which would not be invertible) moves inside F and G. DF-ResNets' inverted
bottlenecks (block 'inverted': conv1x1-BN-ReLU, depthwise conv3x3-BN-ReLU, conv1x1-BN-ReLU on half the channels,
hidden width 4d) are described, with their 'partial' and 'full' forms, in sv_jax/models/dfresnet.py. Basic:
conv3x3-BN-ReLU-conv3x3-BN-ReLU; bottleneck: conv1x1-BN-ReLU-conv3x3-BN-ReLU-conv1x1-BN-ReLU.

- 'partial' (RevNet): in every stage the shape-preserving blocks (index >= 1) become couplings on halves of the
  stage's C = planes * expansion channels, with hidden width planes / 2 (basic: C/2 -> C/2 -> C/2; bottleneck:
  2p -> p/2 -> p/2 -> 2p). The first block of a stage (stride, channel change) stays an ordinary block. A coupling
  has half the parameters and MACs of the block it replaces.
- 'full' (i-RevNet): the transitions are invertible too, so a stage keeps nothing of its input. The stem stays
  (conv3x3 1 -> width, BN, ReLU: its input is the network input) and its `width` channels are the stream. A
  strided stage starts with an invertible 2x2 space-to-depth squeeze of (F, T) instead of the strided block:
  channels x4, resolution /2 on both axes, nothing lost. F and T are first zero-padded to even sizes; an odd T is
  the normal case for evaluation utterances, and the padded frame is exactly what a stride-2 conv's zero padding
  sees, so the resolutions (and padded-batch lengths, ceil(T/2)) are the ordinary model's. Every block of every
  stage is then a coupling on the stream's halves: width * 4^(s-1) / 2 channels in stage s, whose F and G
  bottleneck to the stage's planned `planes` (width * 2^(s-1)), the ordinary block's own hidden width. A final
  conv1x1 + BN + ReLU (`out_conv`, not invertible: its output feeds pooling) maps the stream (width * 64
  channels) to the ordinary stage 4's planes * expansion, so pooling and the embedding layer are unchanged.
  Cost: the stream of stage s is 2^(s-1) times as wide as the basic block's planes (2^(s-3) for bottleneck), so
  a coupling costs, relative to the block it replaces, 1/2/4/8x in stages 1-4 for basic (F and G touch the
  stream with 3x3 convs) and 1.18/1.29/1.53/2.0x for bottleneck (with 1x1 convs).

Parameters and forward MACs per 200-frame utterance (feat 80, emb 256; full-kernel convention as docs/design.md):

    ResNet34   none 6.63 M, 4.53 G    partial 4.59 M, 2.76 G    full 37.90 M, 17.54 G
    ResNet293  none 28.63 M, 27.63 G  partial 18.00 M, 14.68 G  full 43.47 M, 39.95 G

A training step recomputes each coupling's forward once more in the backward pass (about +1/3 of its FLOPs).
XLA's cost analysis counts a lax.scan body once, so it undercounts these models: sv_jax.programs counts them on a copy
with the scans unrolled, and the analytic count (sv_jax.models.macs) multiplies each scan body by its length.

Each stage's couplings are one `jax.custom_vjp` (`reversible_stage`), with parameters stacked over blocks and a
lax.scan over them. The forward keeps only the stage output (a float32 pair, see Numerics) and the parameters; the
backward walks the blocks in reverse (lax.scan reverse), reconstructs each block's input from its output, takes
the VJPs of G at y1 and of F at the reconstructed x2 (the same values the inversion computes, so each function
runs forward once more, as in RevNet's algorithm 1), and accumulates parameter cotangents. Activation memory is
therefore flat in depth: per stage, its output; at any moment one coupling's recomputed activations.

Numerics: in plain float32 the inverse is exact only up to rounding, and at ResNet293 depth that is not enough.
Each add rounds to the precision of the grown stream (F and G end in a ReLU, so it grows like the depth), and the
first couplings of a stage, where the BN-normalised F and G are as large as the stream, amplify the error: a
64-coupling stage fed unit-scale activations (as 'partial' feeds stage 3) came back with 2e-4 relative error,
which moved the gradients of the early blocks by 2-3% (deep stages' gradients are that sensitive to their
inputs). The stream is therefore carried as a float32 pair (value, rounding residue): each add is an error-free
TwoSum, so subtracting F and G again recovers the float32 values bit for bit when F and G are recomputed with the
same rounding (measured on CPU: zero reconstruction error at depth 64, custom_vjp gradients equal to plain
autodiff's). F and G see the float32 value; the residue costs elementwise adds and one more stage-output-sized
buffer per stage.

BatchNorm in training uses batch statistics, which makes F and G functions of the whole batch; the inverse stays
exact because G(y1) and F(x2) are recomputed on the same (reconstructed) batch. The stage function returns the
batch statistics of its forward pass as a non-differentiable output, and `ReversibleStage` folds them into the
running statistics (Flax momentum 0.9 = PyTorch 0.1, eps 1e-5) once per step; the backward's recomputation
touches no state. Stages compute in float32 whatever `model.dtype`. Inference is the plain forward with running
statistics (no custom_vjp) and masks padded frames like resnet.py.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

MODES = ("none", "partial", "full")
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5

# Per block: {"f": {"conv_bn1": {"kernel", "scale", "bias"}, ...}, "g": {...}}; stacked over blocks on axis 0.
Params = dict[str, Any]
# Same layout with {"mean", "var"} per layer.
Stats = dict[str, Any]
ConvSpec = tuple[int, int, int]  # (kernel size, in channels, out channels)


def ordinary_blocks(mode: str, count: int) -> int:
    """How many of a stage's `count` blocks stay ordinary (from its first); the rest are couplings."""
    return {"none": count, "partial": 1, "full": 0}[mode]


def coupling_convs(mode: str, block: str, channels: int, planes: int) -> tuple[ConvSpec, ...]:
    """The convolutions of F (and of G) of a coupling on `channels` with the stage's planned `planes`.
    A spec with 1 input channel on more than one is depthwise (`_residual`)."""
    if block == "inverted":  # a DF-ResNet's inverted bottleneck keeps its hidden width 4 d (dfresnet.py)
        half, hidden = channels // 2, 4 * planes
        return (1, half, hidden), (3, 1, hidden), (1, hidden, half)
    half, hidden = channels // 2, planes // 2 if mode == "partial" else planes
    if block == "basic":
        return (3, half, hidden), (3, hidden, half)
    return (1, half, hidden), (3, hidden, hidden), (1, hidden, half)


def squeeze(x: jax.Array, factors: tuple[int, int] = (2, 2)) -> jax.Array:
    """Invertible space-to-depth of NHWC (B, H, W, C) -> (B, ceil(H/fh), ceil(W/fw), fh fw C) for `factors`
    (fh, fw), zero-padding H and W to multiples. Channel-major: channel c becomes fh fw c ... fh fw (c + 1) - 1, so
    the halves of the result are the squeezed halves of x. The 2x2 squeeze replaces a stride-2 stage transition."""
    (fh, fw), (b, h, w, c) = factors, x.shape
    x = jnp.pad(x, ((0, 0), (0, -h % fh), (0, -w % fw), (0, 0)))
    rows, cols = x.shape[1] // fh, x.shape[2] // fw
    x = x.reshape(b, rows, fh, cols, fw, c).transpose(0, 1, 3, 5, 2, 4)
    return x.reshape(b, rows, cols, fh * fw * c)


# --- The coupling as pure functions of explicit parameters and statistics ------------------------------------

def _mask(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    return x if mask is None else x * mask


def _residual(layers: Params, x: jax.Array, stats: Stats | None, mask: jax.Array | None,
              conv: Callable = lax.conv_general_dilated) -> tuple[jax.Array, Stats]:
    """F or G: conv-BN-ReLU per layer. BN uses batch statistics when `stats` is None (training) and returns the
    statistics it used. `conv` is lax.conv_general_dilated or a function of its signature (resnet.conv_function)."""
    used = {}
    for index in range(1, len(layers) + 1):
        name = f"conv_bn{index}"
        layer = layers[name]
        pad = layer["kernel"].shape[0] // 2
        x = conv(x, layer["kernel"], (1, 1), ((pad, pad), (pad, pad)), dimension_numbers=("NHWC", "HWIO", "NHWC"),
                 feature_group_count=x.shape[-1] // layer["kernel"].shape[2])  # > 1: depthwise
        if stats is None:
            mean = jnp.mean(x, axis=(0, 1, 2))
            var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
        else:
            mean, var = stats[name]["mean"], stats[name]["var"]
        used[name] = {"mean": mean, "var": var}
        x = _mask(nn.relu((x - mean) * (layer["scale"] * lax.rsqrt(var + BN_EPSILON)) + layer["bias"]), mask)
    return x, used


def _add(hi: jax.Array, lo: jax.Array, f: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(hi + lo) + f as a normalised float32 pair: hi is the float32 sum, lo its rounding error (TwoSum, then
    FastTwoSum). Subtracting f again gives back (hi, lo) to ~2^-48, so the float32 hi is recovered exactly."""
    s = hi + f
    s_f = s - hi
    lo = lo + ((hi - (s - s_f)) + (f - s_f))
    out = s + lo
    return out, lo - (out - s)


def _coupling(params: Params, x: jax.Array, x_lo: jax.Array, stats: Stats | None,
              mask: jax.Array | None, conv: Callable) -> tuple[jax.Array, jax.Array, Stats]:
    """y1 = x1 + F(x2), y2 = x2 + G(y1) on the stream (x, x_lo); F and G see its float32 part. x arrives masked and
    F and G mask their outputs, so y is masked too."""
    (x1, x2), (x1_lo, x2_lo) = jnp.split(x, 2, axis=-1), jnp.split(x_lo, 2, axis=-1)
    f, f_stats = _residual(params["f"], x2, None if stats is None else stats["f"], mask, conv)
    y1, y1_lo = _add(x1, x1_lo, f)
    g, g_stats = _residual(params["g"], y1, None if stats is None else stats["g"], mask, conv)
    y2, y2_lo = _add(x2, x2_lo, g)
    return (jnp.concatenate([y1, y2], axis=-1), jnp.concatenate([y1_lo, y2_lo], axis=-1),
            {"f": f_stats, "g": g_stats})


def _coupling_backward(params: Params, y: jax.Array, y_lo: jax.Array, dy: jax.Array,
                       conv: Callable) -> tuple[jax.Array, jax.Array, jax.Array, Params]:
    """A training-mode coupling's input stream reconstructed from its output stream, and dy pulled back to the
    input and to the parameters: (x, x_lo, dx, dparams)."""
    (y1, y2), (y1_lo, y2_lo) = jnp.split(y, 2, axis=-1), jnp.split(y_lo, 2, axis=-1)
    dy1, dy2 = jnp.split(dy, 2, axis=-1)
    residual = lambda layers, v: _residual(layers, v, None, None, conv)[0]
    g, g_vjp = jax.vjp(residual, params["g"], y1)
    x2, x2_lo = _add(y2, y2_lo, -g)
    dg, dy1_through_g = g_vjp(dy2)
    dy1 = dy1 + dy1_through_g  # = dx1: y1 feeds the output directly and through G
    f, f_vjp = jax.vjp(residual, params["f"], x2)
    x1, x1_lo = _add(y1, y1_lo, -f)
    df, dx2_through_f = f_vjp(dy1)
    return (jnp.concatenate([x1, x2], axis=-1), jnp.concatenate([x1_lo, x2_lo], axis=-1),
            jnp.concatenate([dy1, dy2 + dx2_through_f], axis=-1), {"f": df, "g": dg})


def stage_forward(params: Params, x: jax.Array, stats: Stats | None = None, mask: jax.Array | None = None,
                  unroll: bool = False, conv: Callable = lax.conv_general_dilated
                  ) -> tuple[jax.Array, jax.Array, Stats]:
    """A stage's couplings in sequence, differentiable by plain autodiff (which stores every block's activations).

    `params` (and `stats`) are stacked over blocks. BN uses batch statistics when `stats` is None. Returns the
    float32 output y, its rounding residue y_lo (y + y_lo is the output to ~2^-48) and the statistics used, stacked
    over blocks. `conv`: see `_residual`.
    """
    def step(carry, block):
        y, y_lo, used = _coupling(block[0], *carry, block[1], mask, conv)
        return (y, y_lo), used

    (y, y_lo), used = lax.scan(step, (x, jnp.zeros_like(x)), (params, stats), unroll=unroll)
    return y, y_lo, used


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def reversible_stage(params: Params, x: jax.Array, unroll: bool = False,
                     conv: Callable = lax.conv_general_dilated) -> tuple[jax.Array, Stats]:
    """`stage_forward` in training mode whose backward pass reconstructs activations instead of storing them.

    Returns the output and the batch statistics, which are not differentiable: their cotangent is ignored.
    `unroll` unrolls the scans: only for counting FLOPs (XLA's cost analysis counts a scan body once). `conv`: see
    `_residual`.
    """
    y, _, batch_stats = stage_forward(params, x, unroll=unroll, conv=conv)
    return y, batch_stats


def _reversible_stage_fwd(params: Params, x: jax.Array, unroll: bool,
                          conv: Callable) -> tuple[tuple[jax.Array, Stats], tuple]:
    y, y_lo, batch_stats = stage_forward(params, x, unroll=unroll, conv=conv)
    return (y, batch_stats), (params, y, y_lo)


def _reversible_stage_bwd(unroll: bool, conv: Callable, residuals: tuple,
                          cotangents: tuple) -> tuple[Params, jax.Array]:
    params, y, y_lo = residuals
    dy, _ = cotangents

    def step(carry, block_params):
        x, x_lo, dx, dparams = _coupling_backward(block_params, *carry, conv)
        return (x, x_lo, dx), dparams

    (_, _, dx), dparams = lax.scan(step, (y, y_lo, dy), params, reverse=True, unroll=unroll)
    return dparams, dx


reversible_stage.defvjp(_reversible_stage_fwd, _reversible_stage_bwd)


def invert_stage(params: Params, y: jax.Array, y_lo: jax.Array, conv: Callable = lax.conv_general_dilated
                 ) -> jax.Array:
    """The training-mode stage input reconstructed from its output stream, exactly as the backward pass does it."""
    def step(carry, block_params):
        x, x_lo, _, _ = _coupling_backward(block_params, *carry, jnp.zeros_like(carry[0]), conv)
        return (x, x_lo), None

    return lax.scan(step, (y, y_lo), params, reverse=True)[0][0]


# --- Flax module ---------------------------------------------------------------------------------------------

def _init_params(key: jax.Array, num_blocks: int, convs: tuple[ConvSpec, ...],
                 kernel_init: Callable) -> Params:
    params = {}
    for index, (layer_key, (size, cin, cout)) in enumerate(zip(jax.random.split(key, len(convs)), convs), start=1):
        kernels = jax.vmap(lambda k: kernel_init(k, (size, size, cin, cout)))(jax.random.split(layer_key, num_blocks))
        params[f"conv_bn{index}"] = {"kernel": kernels, "scale": jnp.ones((num_blocks, cout), jnp.float32),
                                     "bias": jnp.zeros((num_blocks, cout), jnp.float32)}
    return params


def _init_stats(num_blocks: int, convs: tuple[ConvSpec, ...]) -> Stats:
    return {f"conv_bn{index}": {"mean": jnp.zeros((num_blocks, cout), jnp.float32),
                                "var": jnp.ones((num_blocks, cout), jnp.float32)}
            for index, (_, _, cout) in enumerate(convs, start=1)}


class ReversibleStage(nn.Module):
    """A stage's `num_blocks` couplings: parameters `f` and `g` stacked over blocks, running BN statistics in
    `batch_stats`. Training runs `reversible_stage`; inference the plain forward with `mask` for padded frames.
    Computes and returns float32.

    Attributes:
      num_blocks: couplings in the stage.
      convs: (kernel, in, out) of F's (and G's) convolutions, from `coupling_convs`.
      kernel_init: initializer of one block's conv kernel (HWIO).
      unroll: unroll the scans over blocks, for counting FLOPs only (see `reversible_stage`).
      conv: lax.conv_general_dilated or a function of its signature (see `_residual`).
    """

    num_blocks: int
    convs: tuple[ConvSpec, ...]
    kernel_init: Callable
    unroll: bool = False
    conv: Callable = lax.conv_general_dilated

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None, train: bool) -> jax.Array:
        params = {name: self.param(name, _init_params, self.num_blocks, self.convs, self.kernel_init)
                  for name in ("f", "g")}
        running = {name: self.variable("batch_stats", name, _init_stats, self.num_blocks, self.convs)
                   for name in ("f", "g")}
        x = x.astype(jnp.float32)
        if not train:
            return stage_forward(params, x, {name: v.value for name, v in running.items()}, mask, self.unroll,
                                 self.conv)[0]
        y, batch_stats = reversible_stage(params, x, self.unroll, self.conv)
        if not self.is_initializing():
            for name, variable in running.items():
                variable.value = jax.tree_util.tree_map(
                    lambda old, new: BN_MOMENTUM * old + (1.0 - BN_MOMENTUM) * new, variable.value,
                    batch_stats[name])
        return y
