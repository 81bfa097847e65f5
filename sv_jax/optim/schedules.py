"""WeSpeaker's learning-rate schedule as an optax schedule (a pure function of the step, jit-friendly)."""

from __future__ import annotations

import math

import jax.numpy as jnp


def exponential_decrease(initial_lr: float, final_lr: float, num_epochs: int, steps_per_epoch: int,
                         warmup_epochs: float = 6, scale_ratio: float = 1.0, warm_from_zero: bool = True):
    """WeSpeaker's ExponentialDecrease: lr(t) = c(t) * initial_lr * (final_lr / initial_lr) ** (t / total).

    c(t) is `scale_ratio` (global batch / 64 in the recipe) after warm-up; during the first `warmup_epochs` it rises
    linearly from 0 (`warm_from_zero`) or, without that, from 1 to `scale_ratio`. Note the scale applies to the final
    rate too, exactly as in WeSpeaker.
    """
    if initial_lr <= 0 or final_lr <= 0:
        raise ValueError(f"learning rates must be positive, got initial {initial_lr}, final {final_lr}")
    total = max(num_epochs * steps_per_epoch, 1)
    warmup = warmup_epochs * steps_per_epoch
    log_ratio = math.log(final_lr / initial_lr)

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        if warm_from_zero:
            warm_coeff = scale_ratio * step / max(warmup, 1)
        elif scale_ratio > 1:
            warm_coeff = (scale_ratio - 1) * step / max(warmup, 1) + 1.0
        else:
            warm_coeff = jnp.asarray(scale_ratio, jnp.float32)
        coeff = jnp.where(step < warmup, warm_coeff, scale_ratio)
        return coeff * initial_lr * jnp.exp(step / total * log_ratio)

    return schedule
