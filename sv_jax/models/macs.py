"""Analytic multiply-adds of the models' forward pass, counted from the model code itself.

The count is taken from the traced program of one utterance's forward pass (profiling.macs walks its jaxpr and
counts every convolution and matrix product from their shapes), so the model code in resnet.py and reversible.py
is the one description of each architecture: nothing here mirrors it. It is the independent check on XLA's cost
analysis (sv_jax.programs): it does not depend on XLA's optimiser, fusion or cost model.

Conventions: 'real' counts only kernel taps that land on real (non-padding) input, as XLA does; 'full' counts
every tap, WeSpeaker's convention (the GMACs column of docs/design.md's table). BN, ReLU, residual adds and TSTP
are elementwise, not multiply-adds, and together about 1% of the FLOPs.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from profiling import macs as macs_lib
from sv_jax.models import create_model
from sv_jax.models.resnet import ResNet

CONVENTIONS = macs_lib.CONVENTIONS


def backbone_macs(backbone: ResNet, num_frames: int, num_mel_bins: int, convention: str = "real") -> int:
    """Multiply-adds of one utterance (`num_frames` x `num_mel_bins`) through a built ResNet module."""
    feats = jax.ShapeDtypeStruct((1, num_frames, num_mel_bins), jnp.float32)
    variables = jax.eval_shape(backbone.init, jax.random.key(0), feats)
    return macs_lib.count_macs(lambda v, x: backbone.apply(v, x), variables, feats, convention=convention)


def forward_macs(model_config, num_frames: int, num_mel_bins: int, convention: str = "real") -> int:
    """`backbone_macs` of the embedding extractor that `model_config` describes (the head is training only)."""
    return backbone_macs(create_model(model_config, num_classes=1).backbone, num_frames, num_mel_bins, convention)
