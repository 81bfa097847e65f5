"""WeSpeaker's ResNet speaker-embedding extractors in Flax linen.

Layer for layer the model of `wespeaker/models/resnet.py`, so that results and checkpoints transfer: features
(B, T, F) become an NHWC image with F as height and T as width; a 3x3 stem conv (1 -> width) with BN and ReLU and no
max-pool; four stages of width * (1, 2, 4, 8) planes with strides (1, 2, 2, 2) on both axes; basic (two 3x3) or
bottleneck (1x1, 3x3 carrying the stride, 1x1 x4) blocks; a conv1x1+BN projection shortcut where the shape changes;
no conv biases; TSTP pooling; one Linear to the embedding.

Inference on padded batches is exact: given `lengths`, every activation that feeds a 3x3 convolution is zeroed past
the valid frames of its resolution, which is what the convolution's own zero padding would have seen on the unpadded
utterance, and TSTP pools over valid frames only. Evaluation therefore batches whole utterances of different length
into a few padded shapes without changing a single embedding.

`reversible` ('partial' or 'full') swaps blocks for the invertible couplings of sv_jax/models/reversible.py, which
describes them; 'none' is the model above.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sv_jax.models import cpu_conv
from sv_jax.models import depthwise
from sv_jax.models import reversible as reversible_lib
from sv_jax.models.pooling import tstp

# PyTorch's default conv/linear init (kaiming_uniform with a=sqrt(5)) is uniform with variance 1/(3 fan_in).
torch_default_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")

STAGE_STRIDES = (1, 2, 2, 2)
STAGE_WIDTH_MULTIPLIERS = (1, 2, 4, 8)


def _torch_default_bias_init(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def downsampled_lengths(lengths: jax.Array, stride: int) -> jax.Array:
    """Valid frames after a stride-`stride` conv with kernel 3 / padding 1 (or kernel 1 / padding 0)."""
    return (lengths + stride - 1) // stride if stride > 1 else lengths


def time_mask(lengths: jax.Array | None, width: int, dtype) -> jax.Array | None:
    """[B, 1, W, 1] mask of valid time steps for NHWC activations, or None for unpadded batches."""
    if lengths is None:
        return None
    return (jnp.arange(width)[None, :] < lengths[:, None]).astype(dtype)[:, None, :, None]


def _apply_mask(x: jax.Array, mask: jax.Array | None) -> jax.Array:
    return x if mask is None else x * mask


def check_call(reversible: str, width: int, train: bool, lengths: jax.Array | None) -> None:
    """What a backbone's (ResNet's, DFResNet's) attributes and call must agree on; ValueError otherwise."""
    if reversible not in reversible_lib.MODES:
        raise ValueError(f"unknown reversible {reversible!r}; choose one of {list(reversible_lib.MODES)}")
    if reversible != "none" and width % 2:
        raise ValueError(f"reversible couplings split channels in halves: width must be even, got {width}")
    if train and lengths is not None:
        raise ValueError("lengths (padded batches) are for inference only: padding would bias BN statistics")


def conv_function(lowering: str, counting: bool = False):
    """The lax.conv_general_dilated-like function of a resolved `cpu_conv` lowering ('onednn' or 'xla'), with
    depthwise convolutions (DF-ResNets) as sv_jax.models.depthwise computes them (`counting`: for counting FLOPs)."""
    fallback = cpu_conv.conv_general_dilated if lowering == "onednn" else jax.lax.conv_general_dilated
    return depthwise.conv_function(fallback, counting)


class _ConvBN(nn.Module):
    """Conv (no bias, explicit symmetric padding) + BatchNorm (eps 1e-5, momentum 0.9 = PyTorch's 0.1).
    `stride`: one for both axes or (frequency, time); `groups`: feature groups (= channels: depthwise)."""

    features: int
    kernel: int
    stride: int | tuple[int, int] = 1
    dtype: Any = jnp.float32
    lowering: str = "xla"  # of the convolution: 'onednn' or 'xla' (sv_jax.models.cpu_conv)
    groups: int = 1
    counting: bool = False  # depthwise convolutions in the form XLA counts right (sv_jax.models.depthwise)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        pad = self.kernel // 2
        x = nn.Conv(self.features, (self.kernel, self.kernel), strides=self.stride,
                    padding=((pad, pad), (pad, pad)), use_bias=False, dtype=self.dtype,
                    feature_group_count=self.groups, kernel_init=torch_default_kernel_init,
                    conv_general_dilated=conv_function(self.lowering, self.counting), name="conv")(x)
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                            dtype=self.dtype, name="bn")(x)


class BasicBlock(nn.Module):
    planes: int
    stride: int = 1
    dtype: Any = jnp.float32
    lowering: str = "xla"
    expansion = 1

    @nn.compact
    def __call__(self, x, mask_in, mask_out, train: bool):
        out = nn.relu(_ConvBN(self.planes, 3, self.stride, self.dtype, self.lowering, name="conv_bn1")(x, train))
        out = _apply_mask(out, mask_out)
        out = _ConvBN(self.planes, 3, 1, self.dtype, self.lowering, name="conv_bn2")(out, train)
        return nn.relu(out + _shortcut(self, x, train))


class Bottleneck(nn.Module):
    planes: int
    stride: int = 1
    dtype: Any = jnp.float32
    lowering: str = "xla"
    expansion = 4

    @nn.compact
    def __call__(self, x, mask_in, mask_out, train: bool):
        # The 1x1 output feeds the strided 3x3 conv, so it is masked at the block's input resolution.
        out = nn.relu(_ConvBN(self.planes, 1, 1, self.dtype, self.lowering, name="conv_bn1")(x, train))
        out = _apply_mask(out, mask_in)
        out = nn.relu(_ConvBN(self.planes, 3, self.stride, self.dtype, self.lowering, name="conv_bn2")(out, train))
        out = _ConvBN(self.planes * 4, 1, 1, self.dtype, self.lowering, name="conv_bn3")(out, train)
        return nn.relu(out + _shortcut(self, x, train))


def _shortcut(block: nn.Module, x: jax.Array, train: bool) -> jax.Array:
    out_planes = block.planes * block.expansion
    if block.stride == 1 and x.shape[-1] == out_planes:
        return x
    return _ConvBN(out_planes, 1, block.stride, block.dtype, block.lowering, name="shortcut")(x, train)


BLOCKS = {"basic": BasicBlock, "bottleneck": Bottleneck}


class ResNet(nn.Module):
    """ResNet speaker-embedding extractor: [B, T, F] features -> [B, embed_dim] float32 embeddings.

    Attributes:
      block: 'basic' or 'bottleneck'.
      num_blocks: blocks in each of the four stages, e.g. (3, 4, 6, 3) for ResNet34.
      width: planes of the first stage (WeSpeaker's m_channels, 32).
      embed_dim: embedding size (256).
      dtype: computation dtype; parameters and BN statistics stay float32, pooling and the embedding are float32.
      reversible: 'none', 'partial' or 'full' (sv_jax/models/reversible.py); reversible stages compute in float32.
      unroll_scans: unroll the reversible stages' scans over blocks: for counting FLOPs only (sv_jax.programs;
        XLA's cost analysis counts a scan body once), not for training.
      conv_lowering: 'xla' (lax.conv_general_dilated) or 'onednn' (sv_jax.models.cpu_conv, CPU float32 only; the
        same parameters and results): `model.cpu_conv` as sv_jax.models.create_model resolves it.
    """

    block: str = "basic"
    num_blocks: Sequence[int] = (3, 4, 6, 3)
    width: int = 32
    embed_dim: int = 256
    dtype: Any = jnp.float32
    reversible: str = "none"
    unroll_scans: bool = False
    conv_lowering: str = "xla"

    @nn.compact
    def __call__(self, feats: jax.Array, lengths: jax.Array | None = None, *, train: bool = False) -> jax.Array:
        if self.block not in BLOCKS:
            raise ValueError(f"unknown block {self.block!r}; choose one of {sorted(BLOCKS)}")
        if len(self.num_blocks) != 4:
            raise ValueError(f"num_blocks needs one entry per stage (4), got {tuple(self.num_blocks)}")
        check_call(self.reversible, self.width, train, lengths)
        block_cls = BLOCKS[self.block]
        x = jnp.transpose(feats, (0, 2, 1))[..., None].astype(self.dtype)  # (B, F, T, 1): F is height, T width
        mask = time_mask(lengths, x.shape[2], self.dtype)
        x = _apply_mask(x, mask)
        lowering = self.conv_lowering
        x = nn.relu(_ConvBN(self.width, 3, 1, self.dtype, lowering, name="stem")(x, train))
        x = _apply_mask(x, mask)
        for stage, (count, stride, mult) in enumerate(
                zip(self.num_blocks, STAGE_STRIDES, STAGE_WIDTH_MULTIPLIERS), start=1):
            planes = self.width * mult
            ordinary = reversible_lib.ordinary_blocks(self.reversible, count)
            if ordinary == 0 and stride > 1:  # 'full': an invertible squeeze replaces the strided block
                x = reversible_lib.squeeze(x)
                if lengths is not None:
                    lengths = downsampled_lengths(lengths, stride)
                    mask = time_mask(lengths, x.shape[2], self.dtype)
            for index in range(ordinary):
                block_stride = stride if index == 0 else 1
                mask_in = mask
                if lengths is not None and block_stride > 1:
                    lengths = downsampled_lengths(lengths, block_stride)
                    mask = time_mask(lengths, -(-x.shape[2] // block_stride), self.dtype)
                x = block_cls(planes, block_stride, self.dtype, lowering,
                              name=f"layer{stage}_{index}")(x, mask_in, mask, train)
                x = _apply_mask(x, mask)
            if count > ordinary:  # named after its first block
                convs = reversible_lib.coupling_convs(self.reversible, self.block, x.shape[-1], planes)
                x = reversible_lib.ReversibleStage(count - ordinary, convs, torch_default_kernel_init,
                                                   self.unroll_scans, conv_function(lowering),
                                                   name=f"layer{stage}_{ordinary}")(x, mask, train)
                x = x.astype(self.dtype)
        if self.reversible == "full":  # the stream (width * 64 channels) to the ordinary model's last planes
            x = nn.relu(_ConvBN(planes * block_cls.expansion, 1, 1, self.dtype, lowering, name="out_conv")(x, train))
            x = _apply_mask(x, mask)
        stats = tstp(x.astype(jnp.float32), lengths)
        return nn.Dense(self.embed_dim, dtype=jnp.float32, kernel_init=torch_default_kernel_init,
                        bias_init=_torch_default_bias_init(stats.shape[-1]), name="seg_1")(stats)
