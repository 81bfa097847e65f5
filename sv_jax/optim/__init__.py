"""Optimisers and schedules: SGD (momentum, Nesterov, coupled weight decay, as WeSpeaker), Adam and AdamW, with
float32 or 8-bit block-wise quantized states (quantized.py)."""

from __future__ import annotations

import optax

from cli import ConfigError
from sv_jax.optim import quantized
from sv_jax.optim.schedules import exponential_decrease

OPTIMIZERS = ("sgd", "adam", "adamw")
STATE_BITS = (32, 8)

__all__ = ["OPTIMIZERS", "STATE_BITS", "create_optimizer", "create_schedule", "exponential_decrease"]


def create_schedule(optim_config, steps_per_epoch: int, num_epochs: int, global_batch_size: int, *,
                    warmup_epochs: float | None = None):
    """The config's learning-rate schedule; `optim.scale_lr_by_batch` scales it by global_batch/64 (WeSpeaker).
    `warmup_epochs` overrides `optim.warmup_epochs` (sv_jax.step.schedule_epochs resolves `optim.warmup_fraction`)."""
    if optim_config.schedule != "exponential_decrease":
        raise ConfigError(f"unknown optim.schedule {optim_config.schedule!r}; choose 'exponential_decrease'")
    scale = global_batch_size / 64.0 if optim_config.scale_lr_by_batch else 1.0
    return exponential_decrease(optim_config.initial_lr, optim_config.final_lr, num_epochs, steps_per_epoch,
                                warmup_epochs=optim_config.warmup_epochs if warmup_epochs is None else warmup_epochs,
                                scale_ratio=scale,
                                warm_from_zero=optim_config.warm_from_zero)


def create_optimizer(optim_config, learning_rate) -> optax.GradientTransformation:
    """optax transformation for optim.name in OPTIMIZERS, its states in optim.state_bits (STATE_BITS).

    'sgd' and 'adam' use coupled weight decay (added to the gradient before momentum, as torch.optim.SGD/Adam with
    weight_decay, applied to every parameter as WeSpeaker does); 'adamw' decouples it (torch.optim.AdamW).
    state_bits 8 stores the momentum / Adam moments block-wise quantized (quantized.py) with the same update rules.
    """
    name, wd, bits = optim_config.name, optim_config.weight_decay, optim_config.state_bits
    if bits not in STATE_BITS:
        raise ConfigError(f"unknown optim.state_bits {bits!r}; choose one of {list(STATE_BITS)}")
    sgd, adam, adamw = ((optax.sgd, optax.adam, optax.adamw) if bits == 32 else
                        (quantized.sgd_8bit, quantized.adam_8bit, quantized.adamw_8bit))
    if name == "sgd":
        return optax.chain(optax.add_decayed_weights(wd),
                           sgd(learning_rate, momentum=optim_config.momentum or None, nesterov=optim_config.nesterov))
    if name == "adam":
        return optax.chain(optax.add_decayed_weights(wd),
                           adam(learning_rate, b1=optim_config.beta1, b2=optim_config.beta2, eps=optim_config.eps))
    if name == "adamw":
        return adamw(learning_rate, b1=optim_config.beta1, b2=optim_config.beta2, eps=optim_config.eps,
                     weight_decay=wd)
    raise ConfigError(f"unknown optim.name {name!r}; choose one of {list(OPTIMIZERS)}")
