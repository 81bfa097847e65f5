"""Additive angular margin (ArcFace) classification head and WeSpeaker's margin schedule."""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp


class ArcMarginProduct(nn.Module):
    """Scaled cosine logits with an additive angular margin on the target class (WeSpeaker's ArcMarginProduct).

    The margin is a call argument, not an attribute, so the schedule can change it inside a jit-compiled step.
    Without `easy_margin`, target angles beyond pi - m fall back to cos(theta) - (1 + cos(pi - m)), WeSpeaker's
    choice that keeps the logit monotonic and continuous. Computed in float32 whatever the model dtype.
    """

    num_classes: int
    scale: float = 32.0
    easy_margin: bool = False

    @nn.compact
    def __call__(self, embeddings: jax.Array, labels: jax.Array, margin: jax.Array | float) -> jax.Array:
        weight = self.param("weight", nn.initializers.xavier_uniform(),
                            (embeddings.shape[-1], self.num_classes), jnp.float32)
        cosine = _normalize(embeddings.astype(jnp.float32), axis=-1) @ _normalize(weight, axis=0)
        margin = jnp.asarray(margin, jnp.float32)
        # Clamped away from 0 so the gradient of sqrt stays finite when an embedding hits its class centre exactly.
        sine = jnp.sqrt(jnp.clip(1.0 - cosine * cosine, 1e-12, 1.0))
        phi = cosine * jnp.cos(margin) - sine * jnp.sin(margin)
        if self.easy_margin:
            phi = jnp.where(cosine > 0, phi, cosine)
        else:
            phi = jnp.where(cosine > jnp.cos(math.pi - margin), phi, cosine - (1.0 + jnp.cos(math.pi - margin)))
        is_target = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.bool_)
        return self.scale * jnp.where(is_target, phi, cosine)


def _normalize(x: jax.Array, axis: int) -> jax.Array:
    # Same floor as torch.nn.functional.normalize (eps 1e-12 on the norm).
    return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)


def margin_schedule(initial_margin: float, final_margin: float, increase_start_epoch: int, fix_start_epoch: int,
                    steps_per_epoch: int, increase_type: str = "exp"):
    """Margin as a function of the step, as WeSpeaker's MarginScheduler (epochs counted from 1, as there).

    `initial_margin` until `increase_start_epoch`, then a rise to `final_margin` that is exponential
    (1 - 1e-3 ** progress) or linear, then `final_margin` from `fix_start_epoch` on. Works on traced steps.
    """
    if increase_type not in ("exp", "linear"):
        raise ValueError(f"unknown margin increase_type {increase_type!r}; choose 'exp' or 'linear'")
    start = (increase_start_epoch - 1) * steps_per_epoch
    fix = (fix_start_epoch - 1) * steps_per_epoch
    span = max(fix - start, 1)

    def schedule(step):
        progress = (jnp.asarray(step, jnp.float32) - start) / span
        if increase_type == "exp":
            ratio = 1.0 - jnp.exp(progress * math.log(1e-3 / (1.0 + 1e-6)))
        else:
            ratio = progress
        rising = initial_margin + (final_margin - initial_margin) * ratio
        return jnp.where(step >= fix, final_margin, jnp.where(step >= start, rising, initial_margin))

    return schedule
