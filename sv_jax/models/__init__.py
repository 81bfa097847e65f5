"""Model construction: WeSpeaker ResNet and Gemini DF-ResNet presets, custom depths/widths, and the training head.

`create_model(config.model, num_classes)` returns a `SpeakerNet` whose parameters are split into `backbone`
(the embedding extractor, what WeSpeaker counts as the model) and `head` (the ArcMargin classifier, training only).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cli import ConfigError
from sv_jax.models import cpu_conv
from sv_jax.models.dfresnet import GEMINI_TIME_STRIDES, DFResNet
from sv_jax.models.heads import ArcMarginProduct, margin_schedule
from sv_jax.models.resnet import BLOCKS, ResNet
from sv_jax.models.reversible import MODES

# name -> (block, blocks per stage), as wespeaker/models/resnet.py defines them.
RESNET_PRESETS = {
    "ResNet18": ("basic", (2, 2, 2, 2)),
    "ResNet34": ("basic", (3, 4, 6, 3)),
    "ResNet50": ("bottleneck", (3, 4, 6, 3)),
    "ResNet101": ("bottleneck", (3, 4, 23, 3)),
    "ResNet152": ("bottleneck", (3, 8, 36, 3)),
    "ResNet221": ("bottleneck", (6, 16, 48, 3)),
    "ResNet293": ("bottleneck", (10, 20, 64, 3)),
}
CUSTOM = "ResNet"  # model.name for any other depth: model.block and model.num_blocks say what it is
# name -> inverted bottlenecks per stage, as wespeaker/models/gemini_dfresnet.py defines them (Gemini DF-ResNets).
DFRESNET_PRESETS = {
    "DFResNet60": (3, 3, 9, 3),
    "DFResNet114": (3, 3, 27, 3),
    "DFResNet183": (3, 8, 45, 3),
    "DFResNet237": (3, 8, 63, 3),
}
CUSTOM_DFRESNET = "DFResNet"  # model.name for any other DF-ResNet: model.num_blocks says its depth
INVERTED = "inverted"  # the DF-ResNets' block, as resolve_architecture names it
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

__all__ = ["ArcMarginProduct", "DFResNet", "ResNet", "SpeakerNet", "create_model", "margin_schedule",
           "resolve_architecture", "resolve_time_strides", "DFRESNET_PRESETS", "RESNET_PRESETS"]


class SpeakerNet(nn.Module):
    """Embedding extractor plus margin head; `embed` is what inference uses."""

    backbone: nn.Module
    head: nn.Module

    def __call__(self, feats, labels, margin, *, train: bool):
        embeddings = self.backbone(feats, train=train)
        return embeddings, self.head(embeddings, labels, margin)

    def embed(self, feats, lengths=None):
        return self.backbone(feats, lengths, train=False)


def resolve_architecture(model_config) -> tuple[str, tuple[int, ...]]:
    """(block, num_blocks) for a preset name, for name 'ResNet' from model.block and model.num_blocks, or for name
    'DFResNet' from model.num_blocks. DF-ResNets' block is 'inverted'."""
    name, block, num_blocks = model_config.name, model_config.get("block"), model_config.get("num_blocks")
    if name in RESNET_PRESETS:
        preset = RESNET_PRESETS[name]
        if (block is not None and block != preset[0]) or (
                num_blocks is not None and tuple(num_blocks) != preset[1]):
            raise ConfigError(f"model.name={name!r} fixes block={preset[0]!r} and num_blocks={preset[1]}; "
                             f"use model.name={CUSTOM!r} for another block type or depth")
        return preset
    if name in DFRESNET_PRESETS or name == CUSTOM_DFRESNET:
        if block not in (None, INVERTED):
            raise ConfigError(f"model.block {block!r} is a ResNet block: DF-ResNets are made of inverted "
                              f"bottlenecks (leave model.block unset), or use model.name={CUSTOM!r}")
        if name in DFRESNET_PRESETS:
            preset = DFRESNET_PRESETS[name]
            if num_blocks is not None and tuple(num_blocks) != preset:
                raise ConfigError(f"model.name={name!r} fixes num_blocks={preset}; use "
                                  f"model.name={CUSTOM_DFRESNET!r} for another depth")
            return INVERTED, preset
    elif name != CUSTOM:
        raise ConfigError(f"unknown model.name {name!r}; choose one of "
                          f"{sorted(RESNET_PRESETS) + [CUSTOM] + sorted(DFRESNET_PRESETS) + [CUSTOM_DFRESNET]}")
    elif block not in BLOCKS:
        raise ConfigError(f"model.name={CUSTOM!r} needs model.block in {sorted(BLOCKS)}, got {block!r}")
    if num_blocks is None or len(num_blocks) != 4 or min(num_blocks) < 1:
        raise ConfigError(f"model.name={name!r} needs model.num_blocks as 4 positive ints, got {num_blocks!r}")
    return block or INVERTED, tuple(int(n) for n in num_blocks)


def resolve_time_strides(model_config) -> tuple[int, ...] | None:
    """A DF-ResNet's downsampling strides along time (model.time_strides, default Golden Gemini's T14c); None for
    ResNets, which stride (1, 2, 2, 2) on both axes."""
    block, _ = resolve_architecture(model_config)
    strides = model_config.get("time_strides")
    if block != INVERTED:
        if strides is not None:
            raise ConfigError(f"model.time_strides applies to DF-ResNets (model.name DFResNet60 ... or "
                              f"{CUSTOM_DFRESNET!r}); {model_config.name} strides (1, 2, 2, 2) on both axes: unset it")
        return None
    if strides is None:
        return GEMINI_TIME_STRIDES
    if len(strides) != 4 or any(s not in (1, 2) for s in strides):
        raise ConfigError(f"model.time_strides needs 4 ints in (1, 2), one per downsampling layer, got {strides!r} "
                          f"(WeSpeaker's: {GEMINI_TIME_STRIDES})")
    return tuple(int(s) for s in strides)


def create_model(model_config, num_classes: int, *, for_counting: bool = False) -> SpeakerNet:
    """The config's model. `for_counting`: the same model as XLA counts it, its reversible stages' scans unrolled
    and XLA's convolutions in place of oneDNN's (a custom call has no FLOP count), for counting FLOPs only (see
    ResNet.unroll_scans, sv_jax.models.cpu_conv)."""
    block, num_blocks = resolve_architecture(model_config)
    if model_config.dtype not in DTYPES:
        raise ConfigError(f"unknown model.dtype {model_config.dtype!r}; choose one of {sorted(DTYPES)}")
    reversible = model_config.reversible
    if reversible not in MODES:
        raise ConfigError(f"unknown model.reversible {reversible!r}; choose one of {list(MODES)}")
    if model_config.head.type != "arc_margin":
        raise ConfigError(f"unknown model.head.type {model_config.head.type!r}; choose 'arc_margin'")
    common = dict(num_blocks=num_blocks, width=model_config.width, embed_dim=model_config.embed_dim,
                  dtype=DTYPES[model_config.dtype], reversible=reversible, unroll_scans=for_counting,
                  conv_lowering=conv_lowering(model_config, for_counting))
    if block == INVERTED:
        backbone = DFResNet(time_strides=resolve_time_strides(model_config), **common)
    else:
        resolve_time_strides(model_config)  # rejects time strides set for a ResNet
        backbone = ResNet(block=block, **common)
    head = ArcMarginProduct(num_classes=num_classes, scale=model_config.head.scale,
                            easy_margin=model_config.head.easy_margin)
    return SpeakerNet(backbone=backbone, head=head)


def conv_lowering(model_config, for_counting: bool = False) -> str:
    """'onednn' or 'xla': the convolutions `model.cpu_conv` selects on this backend (sv_jax.models.cpu_conv)."""
    lowering = cpu_conv.resolve(model_config.get("cpu_conv", "auto"), DTYPES[model_config.dtype])
    return "xla" if for_counting else lowering


def count_params(tree: Any) -> int:
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))


# Why a model's programs are counted on a copy lowered for counting (sv_jax.programs).
SCANS_UNROLLED = "reversible stages' scans unrolled for counting"
XLA_CONVS = "counted with XLA's convolutions in place of oneDNN's (custom calls carry no count)"
DEPTHWISE = ("depthwise convolutions counted as shifted multiply-adds (XLA's cost analysis counts their "
             "batch-grouped weight gradient once per channel)")


def counting_fallback(model_config) -> str:
    """Why the model's programs must be counted on a copy lowered for counting (models.create_model's
    `for_counting`), in words; '' when the programs themselves can be counted."""
    reasons = (SCANS_UNROLLED if model_config.reversible != "none" else "",
               XLA_CONVS if conv_lowering(model_config) == "onednn" else "",
               DEPTHWISE if resolve_architecture(model_config)[0] == INVERTED else "")
    return "; ".join(r for r in reasons if r)
