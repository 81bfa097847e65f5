"""The training step: state, initialisation and one optimisation step, as pure functions (no I/O, no loop).

Kept apart from sv_jax.train (the loop) so that sv_jax.programs can lower exactly this step for training, counting
and benchmarks without the loop's input pipeline (and TensorFlow).
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax

from cli import ConfigError
from sv_jax import models
from sv_jax import optim
from sv_jax import parallel
from sv_jax import tasks


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

    @property
    def variables(self):
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(rng, model, tx, feat_shape: tuple[int, int], task=None) -> TrainState:
    """A fresh state: `task`'s (sv_jax.tasks; default the speaker task) initial variables of `model` for features
    of `feat_shape`, step 0, the optimizer's initial state. Models without batch statistics get an empty tree."""
    task = task or tasks.SPEAKER
    variables = task.init_variables(model, rng, jnp.zeros((2, *feat_shape), jnp.float32))
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables.get("batch_stats", {}),
                      opt_state=tx.init(params))


def train_step(state: TrainState, batch, *, loss_fn: Callable, tx, learning_rate_fn, skip_nonfinite: bool = False):
    """One optimisation step of `loss_fn(params, batch_stats, batch, step) -> (loss, (metrics, batch_stats))` (the
    task's: sv_jax.tasks.speaker_loss, sv_jax.tagging_task.tagging_loss). Metrics: the loss, the task's, the learning rate,
    and `nonfinite`, 1 when the loss or a gradient is NaN/Inf. With `skip_nonfinite` such a step leaves parameters,
    batch statistics and optimizer state as they were (the step counter still advances past the batch); without
    it, the step is applied and the loop's check stops the run before the next checkpoint."""
    (loss, (task_metrics, batch_stats)), grads = jax.value_and_grad(
        lambda params: loss_fn(params, state.batch_stats, batch, state.step), has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                           batch_stats=batch_stats, opt_state=opt_state)
    finite = functools.reduce(jnp.logical_and, [jnp.isfinite(x).all() for x in jax.tree.leaves((loss, grads))])
    if skip_nonfinite:
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = new_state.replace(params=keep(new_state.params, state.params),
                                      batch_stats=keep(new_state.batch_stats, state.batch_stats),
                                      opt_state=keep(new_state.opt_state, state.opt_state))
    metrics = {"loss": loss, **task_metrics, "lr": learning_rate_fn(state.step),
               "nonfinite": jnp.logical_not(finite).astype(jnp.int32)}
    return new_state, metrics


class TrainComponents(NamedTuple):
    """What a config's train step is made of: the task (sv_jax.tasks), its model and loss, the optimizer, the
    schedules (the margin's only for the speaker task, else None) and the non-finite policy."""
    model: Any
    tx: optax.GradientTransformation
    learning_rate_fn: Callable
    margin_fn: Callable | None
    loss_fn: Callable
    task: Any
    skip_nonfinite: bool = False


def schedule_epochs(config) -> tuple[float, float, float]:
    """(warm-up epochs, margin increase start epoch, margin fix epoch), epochs counted from 1 for the margin as in
    WeSpeaker: from `optim.warmup_fraction` and `loss.*_fraction` of `train.num_epochs` where set, else the epochs."""
    epochs, optim_config, loss = config.train.num_epochs, config.optim, config.loss
    fractions = {"optim.warmup_fraction": optim_config.get("warmup_fraction"),
                 "loss.increase_start_fraction": loss.get("increase_start_fraction"),
                 "loss.fix_start_fraction": loss.get("fix_start_fraction")}
    for key, value in fractions.items():
        if value is not None and not 0.0 <= value <= 1.0:
            raise ConfigError(f"config {key}={value!r} must be a fraction of training in [0, 1] (or None to use the "
                              "epochs)")
    warmup = optim_config.warmup_epochs if fractions["optim.warmup_fraction"] is None else (
        fractions["optim.warmup_fraction"] * epochs)
    start = loss.increase_start_epoch if fractions["loss.increase_start_fraction"] is None else (
        1 + fractions["loss.increase_start_fraction"] * epochs)
    fix = loss.fix_start_epoch if fractions["loss.fix_start_fraction"] is None else (
        1 + fractions["loss.fix_start_fraction"] * epochs)
    if fix < start:
        raise ConfigError(f"the margin is fixed (epoch {fix:g}) before it starts rising (epoch {start:g}): set "
                          "loss.fix_start_epoch / loss.fix_start_fraction after loss.increase_start_*")
    return warmup, start, fix


def create_train_components(config, num_classes: int, steps_per_epoch: int, global_batch: int, *,
                            for_counting: bool = False) -> TrainComponents:
    """The config's task, model (`for_counting`: as XLA counts it, models.create_model), loss, optimizer,
    learning-rate (and, for speakers, margin) schedules, and whether a non-finite step is skipped
    (`train.on_nonfinite`)."""
    task = tasks.get(config)
    warmup_epochs, increase_start_epoch, fix_start_epoch = schedule_epochs(config)
    learning_rate_fn = optim.create_schedule(config.optim, steps_per_epoch, config.train.num_epochs, global_batch,
                                             warmup_epochs=warmup_epochs)
    margin_fn = models.margin_schedule(config.loss.initial_margin, config.loss.final_margin,
                                       increase_start_epoch, fix_start_epoch, steps_per_epoch,
                                       config.loss.increase_type) if task.uses_margin else None
    if config.train.on_nonfinite not in ("stop", "skip"):
        raise ConfigError(f"train.on_nonfinite must be 'stop' or 'skip', got {config.train.on_nonfinite!r}")
    model = task.create_model(config.model, num_classes, for_counting=for_counting)
    return TrainComponents(model, optim.create_optimizer(config.optim, learning_rate_fn), learning_rate_fn,
                           margin_fn, task.loss_fn(model, margin_fn=margin_fn, seed=config.seed), task,
                           skip_nonfinite=config.train.on_nonfinite == "skip")


def jit_train_step(components: TrainComponents, mesh) -> Callable:
    """`train_step` jit-compiled for `mesh`: state replicated and donated, batch sharded along 'data'."""
    replicated, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
    step = functools.partial(train_step, loss_fn=components.loss_fn, tx=components.tx,
                             learning_rate_fn=components.learning_rate_fn, skip_nonfinite=components.skip_nonfinite)
    return jax.jit(step,
                   in_shardings=(replicated, sharded), out_shardings=(replicated, replicated), donate_argnums=0)
