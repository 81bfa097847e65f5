"""The training step: state, initialisation and one optimisation step, as pure functions (no I/O, no loop).

Kept apart from sv_jax.train (the loop, which calls profiling) so that profiling can compile and measure exactly
this step without importing the trainer.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any

    @property
    def variables(self):
        return {"params": self.params, "batch_stats": self.batch_stats}


def create_train_state(rng, model, tx, feat_shape: tuple[int, int]) -> TrainState:
    feats = jnp.zeros((2, *feat_shape), jnp.float32)
    variables = model.init(rng, feats, jnp.zeros((2,), jnp.int32), 0.0, train=False)
    params = variables["params"]
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=variables["batch_stats"],
                      opt_state=tx.init(params))


def train_step(state: TrainState, batch, *, model, tx, learning_rate_fn, margin_fn):
    margin = margin_fn(state.step)

    def loss_fn(params):
        (_, logits), updates = model.apply({"params": params, "batch_stats": state.batch_stats}, batch["feats"],
                                           batch["label"], margin, train=True, mutable=["batch_stats"])
        logits = logits.astype(jnp.float32)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, (logits, updates["batch_stats"])

    (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    new_state = TrainState(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                           batch_stats=batch_stats, opt_state=opt_state)
    metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
               "lr": learning_rate_fn(state.step), "margin": margin}
    return new_state, metrics
