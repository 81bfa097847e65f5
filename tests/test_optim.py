"""Optimiser and schedule parity with WeSpeaker (torch.optim.SGD semantics, ExponentialDecrease)."""

import importlib
import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from sv_jax import optim


def _optim_config(**overrides):
    config = importlib.import_module("configs.default").get_config().optim
    config.update(overrides)
    return config


def _wespeaker_lr(it, initial, final, epochs, epoch_iter, warm_epochs, scale, warm_from_zero):
    """WeSpeaker's ExponentialDecrease.get_current_lr, transcribed."""
    max_iter, warm_iter = epochs * epoch_iter, warm_epochs * epoch_iter
    coeff = scale
    if it < warm_iter:
        if warm_from_zero:
            coeff = scale * it / warm_iter
        elif scale > 1:
            coeff = (scale - 1) * it / warm_iter + 1.0
    return coeff * initial * math.exp((it / max_iter) * math.log(final / initial))


@pytest.mark.parametrize("warm_from_zero", [True, False])
def test_schedule_matches_wespeaker(warm_from_zero):
    config = _optim_config(warm_from_zero=warm_from_zero)
    schedule = optim.create_schedule(config, steps_per_epoch=7, num_epochs=20, global_batch_size=256)
    for it in [0, 1, 20, 41, 42, 43, 100, 139]:
        expected = _wespeaker_lr(it, 0.1, 5e-5, 20, 7, 6, 256 / 64, warm_from_zero)
        assert float(schedule(it)) == pytest.approx(expected, rel=1e-5, abs=1e-12)
    assert float(schedule(0)) == (0.0 if warm_from_zero else pytest.approx(0.1))


def test_sgd_is_torch_nesterov_with_coupled_weight_decay():
    """p <- p - lr * (g' + m * buf), buf <- m * buf + g', g' = g + wd * p  (torch.optim.SGD, nesterov=True)."""
    config = _optim_config(weight_decay=0.01, momentum=0.9, nesterov=True)
    tx = optim.create_optimizer(config, 0.5)
    params = {"w": jnp.asarray([1.0, -2.0, 3.0])}
    state = tx.init(params)
    p, buf = np.array([1.0, -2.0, 3.0]), np.zeros(3)
    for step in range(4):
        grad = np.array([0.3, -0.1, 0.2]) * (step + 1)
        updates, state = tx.update({"w": jnp.asarray(grad)}, state, params)
        params = optax.apply_updates(params, updates)
        g = grad + 0.01 * p
        buf = 0.9 * buf + g
        p = p - 0.5 * (g + 0.9 * buf)
        np.testing.assert_allclose(params["w"], p, rtol=1e-5, atol=1e-6)


def test_unknown_optimizer_and_schedule_name_choices():
    with pytest.raises(ValueError, match="unknown optim.name 'lamb'.*sgd"):
        optim.create_optimizer(_optim_config(name="lamb"), 0.1)
    with pytest.raises(ValueError, match="unknown optim.schedule"):
        optim.create_schedule(_optim_config(schedule="cosine"), 10, 10, 64)


def test_adam_and_adamw_step():
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.asarray([1.0, -1.0, 0.5])}
    for name in ("adam", "adamw"):
        tx = optim.create_optimizer(_optim_config(name=name, weight_decay=0.0), 0.1)
        updates, _ = tx.update(grads, tx.init(params), params)
        # First Adam step moves every coordinate by lr against the sign of its gradient.
        np.testing.assert_allclose(updates["w"], -0.1 * np.sign(grads["w"]), rtol=1e-4)


def test_the_demos_schedules_are_fractions_of_training():
    """configs/demo.py at its 10 epochs keeps its schedules (1 epoch of warm-up, the margin rising over epochs 3-7);
    with num_epochs=100 they stretch, instead of applying the full margin from the 21st step of 300 (issue 15)."""
    import numpy as np

    from configs import demo
    from sv_jax import models
    from sv_jax import step as step_lib

    config = demo.get_config()
    steps_per_epoch = 37
    assert step_lib.schedule_epochs(config) == pytest.approx((1.0, 3.0, 7.0))
    by_epoch = models.margin_schedule(0.0, 0.2, 3, 7, steps_per_epoch)
    lr_by_epoch = optim.create_schedule(config.optim, steps_per_epoch, 10, 64, warmup_epochs=1.0)
    components = step_lib.create_train_components(config, 10, steps_per_epoch, 64)
    steps = np.arange(0, 10 * steps_per_epoch)
    np.testing.assert_allclose(components.margin_fn(steps), by_epoch(steps))
    np.testing.assert_allclose(components.learning_rate_fn(steps), lr_by_epoch(steps))

    config.train.num_epochs = 100
    warmup, start, fix = step_lib.schedule_epochs(config)
    assert (warmup, start, fix) == pytest.approx((10.0, 21.0, 61.0))
    margin = step_lib.create_train_components(config, 10, 3, 64).margin_fn
    assert float(margin(20)) == 0.0 and float(margin(0.2 * 300 - 1)) == 0.0  # nothing yet at step 21 of 300
    assert float(margin(0.6 * 300)) == pytest.approx(0.2)


@pytest.mark.parametrize("key, value, message", [
    ("optim.warmup_fraction", 1.5, r"optim.warmup_fraction=1.5 must be a fraction of training in \[0, 1\]"),
    ("loss.fix_start_fraction", 0.1, "the margin is fixed .* before it starts rising")])
def test_bad_schedule_fractions_name_their_key(key, value, message):
    from cli import ConfigError
    from configs import demo
    from sv_jax import step as step_lib

    config = demo.get_config()
    section, name = key.split(".")
    config[section][name] = value
    with pytest.raises(ConfigError, match=message):
        step_lib.schedule_epochs(config)
