"""WeSpeaker's Gemini DF-ResNets (depth-first ResNets of inverted bottlenecks) in Flax linen.

Layer for layer the model of `wespeaker/models/gemini_dfresnet.py` (Liu et al., "DF-ResNet: Boosting Speaker
Verification Performance with Depth-First Design", Interspeech 2022, with Golden Gemini's time strides, Liu et al.
2023), so that parameter counts and checkpoints transfer:

- features (B, T, F) become an NHWC image with F as height and T as width, as in resnet.py;
- a stem conv3x3 1 -> width + BN + ReLU;
- four downsampling layers, each a conv3x3 (no bias) + BN (no ReLU) with stride 2 along frequency and
  `time_strides` along time: Golden Gemini's "T14c", (1, 2, 1, 1), by default. Channels width * (1, 1, 2, 4, 8):
  the first downsampling keeps the stem's width;
- after each downsampling a stage of inverted bottlenecks at its width d: conv1x1 d -> 4d + BN + ReLU, depthwise
  conv3x3 on 4d + BN + ReLU, conv1x1 4d -> d + BN, add the input, ReLU;
- TSTP over the (F/16 x 8 width) channels, one Linear (`seg_1`) to the embedding.

Parameters at feat 80, embed 256 (`--mode=describe`, tests/test_models.py): DFResNet60 (3,3,9,3) 4,047,840,
DFResNet114 (3,3,27,3) 6,531,552, DFResNet183 (3,8,45,3) 9,196,384, DFResNet237 (3,8,63,3) 11,680,096, as counted
from WeSpeaker's code (the names count the four downsampling layers, so they are the paper's DF-ResNet56/110/179/233).

`time_strides=(2, 2, 2, 2)` is the symmetric-stride variant (the original DF-ResNet's downsampling on both axes):
not one of WeSpeaker's models, and a quarter of T14c's frames in stages 3 and 4.

Padded-batch inference is exact as in resnet.py: every activation that feeds a 3x3 convolution (the downsampling
and the depthwise convolutions) is zeroed past the valid frames of its resolution, and TSTP pools valid frames only.

The depthwise convolutions run as shifted multiply-adds on CPU, 10-15x faster there than XLA's grouped
convolution, and are counted in that form on every backend (sv_jax/models/depthwise.py); GPUs run lax's (cuDNN's).

`reversible` (sv_jax/models/reversible.py holds the couplings):

- 'partial': every inverted bottleneck becomes a RevNet coupling on its stage's d channels (all of a DF-ResNet's
  blocks keep their shape; the downsampling layers stay as they are). F and G are inverted bottlenecks on the
  halves, d/2 -> 4d -> d/2, each conv followed by BN and ReLU: they keep the ordinary block's hidden width 4d, so a
  coupling has the same 1x1 weights and multiply-adds as the block it replaces (8 d^2) and twice its depthwise
  taps. Parameters: 52 d more per block (the second depthwise kernel and BN), +2.8% to +4.2% over the plain
  models: DFResNet60 4,162,656, DFResNet114 6,766,176, DFResNet183 9,567,456, DFResNet237 12,170,976.
- 'full': the downsampling layers become invertible squeezes too (space-to-depth by 2 along frequency and the time
  stride along time: channels x2 or x4, nothing lost), so every block of every stage is a coupling on the
  stream's halves, with hidden width 4d of its stage's planned d; a final conv1x1 + BN + ReLU (`out_conv`) maps
  the stream (32 x width channels with T14c) to the plain stage 4's 8 x width for pooling.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from sv_jax.models import reversible as reversible_lib
from sv_jax.models.pooling import tstp
from sv_jax.models.resnet import (_ConvBN, _apply_mask, _torch_default_bias_init, check_call, conv_function,
                                  downsampled_lengths, time_mask, torch_default_kernel_init)

STAGE_WIDTH_MULTIPLIERS = (1, 2, 4, 8)
GEMINI_TIME_STRIDES = (1, 2, 1, 1)  # Golden Gemini's T14c, WeSpeaker's
FREQUENCY_STRIDE = 2
EXPANSION = 4  # an inverted bottleneck's hidden width / its width


class InvertedBottleneck(nn.Module):
    """conv1x1 d -> 4d + BN + ReLU, depthwise conv3x3 + BN + ReLU, conv1x1 4d -> d + BN, + input, ReLU."""

    dim: int
    dtype: Any = jnp.float32
    lowering: str = "xla"
    counting: bool = False  # see DFResNet.unroll_scans

    @nn.compact
    def __call__(self, x, mask, train: bool):
        hidden = EXPANSION * self.dim
        out = nn.relu(_ConvBN(hidden, 1, 1, self.dtype, self.lowering, name="conv_bn1")(x, train))
        out = _apply_mask(out, mask)  # feeds the depthwise 3x3
        out = nn.relu(_ConvBN(hidden, 3, 1, self.dtype, self.lowering, groups=hidden, counting=self.counting,
                              name="conv_bn2")(out, train))
        out = _ConvBN(self.dim, 1, 1, self.dtype, self.lowering, name="conv_bn3")(out, train)
        return nn.relu(out + x)


class DFResNet(nn.Module):
    """DF-ResNet speaker-embedding extractor: [B, T, F] features -> [B, embed_dim] float32 embeddings.

    Attributes:
      num_blocks: inverted bottlenecks per stage, e.g. (3, 3, 27, 3) for DFResNet114.
      width: the stem's channels and the first stage's (WeSpeaker's dims[0] = dims[1], 32).
      time_strides: the downsampling layers' strides along time (frequency is always 2); T14c by default.
      embed_dim, dtype, reversible, conv_lowering: as sv_jax.models.resnet.ResNet's.
      unroll_scans: the model as XLA counts it, for counting FLOPs only: the reversible stages' scans unrolled (as
        ResNet's) and the depthwise convolutions as shifted multiply-adds on every backend
        (sv_jax.models.depthwise: XLA's cost analysis overcounts their weight gradient).
    """

    num_blocks: Sequence[int] = (3, 3, 9, 3)
    width: int = 32
    time_strides: Sequence[int] = GEMINI_TIME_STRIDES
    embed_dim: int = 256
    dtype: Any = jnp.float32
    reversible: str = "none"
    unroll_scans: bool = False
    conv_lowering: str = "xla"

    @nn.compact
    def __call__(self, feats: jax.Array, lengths: jax.Array | None = None, *, train: bool = False) -> jax.Array:
        if len(self.num_blocks) != 4 or len(self.time_strides) != 4:
            raise ValueError(f"num_blocks and time_strides need one entry per stage (4), got "
                             f"{tuple(self.num_blocks)} and {tuple(self.time_strides)}")
        check_call(self.reversible, self.width, train, lengths)
        lowering, dtype = self.conv_lowering, self.dtype
        x = jnp.transpose(feats, (0, 2, 1))[..., None].astype(dtype)  # (B, F, T, 1): F is height, T width
        mask = time_mask(lengths, x.shape[2], dtype)
        x = _apply_mask(x, mask)
        x = nn.relu(_ConvBN(self.width, 3, 1, dtype, lowering, name="stem")(x, train))
        x = _apply_mask(x, mask)
        for stage, (count, time_stride, mult) in enumerate(
                zip(self.num_blocks, self.time_strides, STAGE_WIDTH_MULTIPLIERS), start=1):
            dim = self.width * mult
            if self.reversible == "full":
                x = reversible_lib.squeeze(x, (FREQUENCY_STRIDE, time_stride))
            else:
                x = _ConvBN(dim, 3, (FREQUENCY_STRIDE, time_stride), dtype, lowering,
                            name=f"downsample{stage}")(x, train)
            if lengths is not None:
                lengths = downsampled_lengths(lengths, time_stride)
                mask = time_mask(lengths, x.shape[2], dtype)
            x = _apply_mask(x, mask)
            if self.reversible == "none":
                for index in range(count):
                    x = InvertedBottleneck(dim, dtype, lowering, self.unroll_scans,
                                           name=f"layer{stage}_{index}")(x, mask, train)
                    x = _apply_mask(x, mask)
            elif count:  # every block of the stage a coupling
                convs = reversible_lib.coupling_convs(self.reversible, "inverted", x.shape[-1], dim)
                x = reversible_lib.ReversibleStage(count, convs, torch_default_kernel_init, self.unroll_scans,
                                                   conv_function(lowering, self.unroll_scans),
                                                   name=f"layer{stage}_0")(x, mask, train)
                x = x.astype(dtype)
        if self.reversible == "full":  # the stream to the plain model's last width
            x = nn.relu(_ConvBN(self.width * STAGE_WIDTH_MULTIPLIERS[-1], 1, 1, dtype, lowering,
                                name="out_conv")(x, train))
            x = _apply_mask(x, mask)
        stats = tstp(x.astype(jnp.float32), lengths)
        return nn.Dense(self.embed_dim, dtype=jnp.float32, kernel_init=torch_default_kernel_init,
                        bias_init=_torch_default_bias_init(stats.shape[-1]), name="seg_1")(stats)
