"""Model construction: WeSpeaker ResNet presets, custom depths/widths, and the training head.

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
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

__all__ = ["ArcMarginProduct", "ResNet", "SpeakerNet", "create_model", "margin_schedule", "resolve_architecture",
           "RESNET_PRESETS"]


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
    """(block, num_blocks) for a preset name, or for name 'ResNet' from model.block and model.num_blocks."""
    name, block, num_blocks = model_config.name, model_config.get("block"), model_config.get("num_blocks")
    if name in RESNET_PRESETS:
        preset = RESNET_PRESETS[name]
        if (block is not None and block != preset[0]) or (
                num_blocks is not None and tuple(num_blocks) != preset[1]):
            raise ConfigError(f"model.name={name!r} fixes block={preset[0]!r} and num_blocks={preset[1]}; "
                             f"use model.name={CUSTOM!r} for another block type or depth")
        return preset
    if name != CUSTOM:
        raise ConfigError(f"unknown model.name {name!r}; choose one of {sorted(RESNET_PRESETS) + [CUSTOM]}")
    if block not in BLOCKS:
        raise ConfigError(f"model.name={CUSTOM!r} needs model.block in {sorted(BLOCKS)}, got {block!r}")
    if num_blocks is None or len(num_blocks) != 4 or min(num_blocks) < 1:
        raise ConfigError(f"model.name={CUSTOM!r} needs model.num_blocks as 4 positive ints, got {num_blocks!r}")
    return block, tuple(int(n) for n in num_blocks)


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
    backbone = ResNet(block=block, num_blocks=num_blocks, width=model_config.width,
                      embed_dim=model_config.embed_dim, dtype=DTYPES[model_config.dtype], reversible=reversible,
                      unroll_scans=for_counting, conv_lowering=conv_lowering(model_config, for_counting))
    head = ArcMarginProduct(num_classes=num_classes, scale=model_config.head.scale,
                            easy_margin=model_config.head.easy_margin)
    return SpeakerNet(backbone=backbone, head=head)


def conv_lowering(model_config, for_counting: bool = False) -> str:
    """'onednn' or 'xla': the convolutions `model.cpu_conv` selects on this backend (sv_jax.models.cpu_conv)."""
    lowering = cpu_conv.resolve(model_config.get("cpu_conv", "auto"), DTYPES[model_config.dtype])
    return "xla" if for_counting else lowering


def count_params(tree: Any) -> int:
    return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))
