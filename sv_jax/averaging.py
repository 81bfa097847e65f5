"""Checkpoint averaging, as WeSpeaker's recipe does before it evaluates (`wespeaker/bin/average_model.py`).

WeSpeaker saves a model every epoch and evaluates `avg_model.pt`, the element-wise mean of the last 10 epochs'
state dicts: parameters and BN running statistics alike. sv_jax does the same with its checkpoints:

- `train.average_last = N` (N > 1; WeSpeaker's 10, the r* and DF-ResNet configs' default) averages the last N
  checkpoints at the end of training, evaluates the average instead of the last state, and keeps it as its own
  checkpoint in `<workdir>/averaged` (params and BN statistics, no optimizer state), which `--mode=eval` and
  `--mode=extract` then use. `python -m sv_jax.main --mode=average --average_last=N` does it for an existing workdir.
- Which checkpoints: those saved on the checkpoint cadence (`train.checkpoint_every_steps`; 0 = once per epoch,
  WeSpeaker's cadence) and the last step. A checkpoint written off the cadence (on a preemption signal) is marked
  so in its metadata and is not averaged.
- Keeping them: the trainer keeps max(`keep_checkpoints`, N + 1) checkpoints, the one extra for a preemption
  checkpoint, so that the last N on the cadence are still there at the end. With fewer (a short run, or checkpoints
  deleted by hand), the average is of those there are, with a warning.
- Training continues from the last training checkpoint, never from the average: a resumed run (more epochs) averages
  again at its end.
"""

from __future__ import annotations

import logging
import pathlib

import numpy as np

from cli import MissingInputError
from sv_jax import checkpoint as checkpoint_lib

log = logging.getLogger(__name__)


def checkpoints_to_keep(keep_checkpoints: int, average_last: int) -> int:
    """How many training checkpoints the trainer keeps so that averaging finds its N (see the module)."""
    return max(keep_checkpoints, average_last + 1) if average_last > 1 else keep_checkpoints


def averaged_steps(checkpointer: checkpoint_lib.Checkpointer, count: int) -> list[int]:
    """The last `count` steps saved on the checkpoint cadence (not on a preemption signal, not imported)."""
    steps = []
    for step in reversed(checkpointer.all_steps()):
        meta = checkpointer.read_meta(step)
        if meta.get("on_cadence", True) and not meta.get("imported_from"):
            steps.append(step)
            if len(steps) == count:
                break
    return sorted(steps)


def average_variables(trees: list[dict]) -> dict:
    """The element-wise mean of variable trees of one structure (accumulated in float64, stored float32)."""
    def mean(*leaves):
        total = np.zeros(np.shape(leaves[0]), np.float64)
        for leaf in leaves:
            total += np.asarray(leaf, np.float64)
        return (total / len(leaves)).astype(np.float32)

    def walk(nodes):
        if isinstance(nodes[0], dict):
            keys = set(nodes[0])
            if any(set(node) != keys for node in nodes):
                raise ValueError("the checkpoints do not have the same variables: was the model changed between them?")
            return {key: walk([node[key] for node in nodes]) for key in nodes[0]}
        return mean(*nodes)
    return walk(trees)


def average_last(workdir: str | pathlib.Path, count: int) -> tuple[dict, list[int]]:
    """Averages the last `count` cadence checkpoints of `workdir`, saves the result in `<workdir>/averaged` under the
    newest averaged step, and returns ({'params', 'batch_stats'} as numpy, the averaged steps)."""
    training = checkpoint_lib.Checkpointer(workdir, max_to_keep=None)
    try:
        steps = averaged_steps(training, count)
        if not steps:
            raise MissingInputError(f"no training checkpoint in {training.directory} to average: train first")
        if len(steps) < count:
            log.warning("averaging %d checkpoints (steps %s), not %d: only those are kept in %s", len(steps), steps,
                        count, training.directory)
        trees = []
        for step in steps:
            state = training.restore_raw(step)
            trees.append({"params": state["params"], "batch_stats": state["batch_stats"]})
    finally:
        training.close()
    variables = average_variables(trees)
    averaged = checkpoint_lib.Checkpointer(workdir, max_to_keep=1, subdir=checkpoint_lib.AVERAGED)
    try:
        if steps[-1] in averaged.all_steps():  # another count for the same step: the new average replaces it (the
            averaged.delete(steps[-1])         # training checkpoints it came from are untouched)
        averaged.save(steps[-1], variables, {"averaged_steps": steps, "step": steps[-1]})
    finally:
        averaged.close()
    log.info("averaged the checkpoints of steps %s into %s", steps, averaged.directory)
    return variables, steps


def latest_average(workdir: str | pathlib.Path, latest_training_step: int | None) -> tuple[dict, dict] | None:
    """(variables, meta) of the averaged checkpoint when there is one for the latest training step; None otherwise
    (no average, or training went on after it: the newer training checkpoint is then what inference uses)."""
    if not (pathlib.Path(workdir) / checkpoint_lib.AVERAGED).is_dir():
        return None
    averaged = checkpoint_lib.Checkpointer(workdir, max_to_keep=1, subdir=checkpoint_lib.AVERAGED)
    try:
        step = averaged.latest_step()
        if step is None or (latest_training_step is not None and step != latest_training_step):
            return None
        return averaged.restore_raw(step), averaged.read_meta(step)
    finally:
        averaged.close()


def inference_state(workdir: str | pathlib.Path) -> tuple[dict, dict]:
    """What inference (eval, extract, the inference-cost table) restores from `workdir`: the averaged checkpoint
    when there is one for the latest training step, otherwise the latest checkpoint (trained or imported). Returns
    (a tree with 'params' and 'batch_stats', {'step', 'checkpoint': what it is, in words})."""
    checkpointer = checkpoint_lib.Checkpointer(workdir)
    try:
        step = checkpointer.latest_step()
        if step is None:
            raise MissingInputError(f"no checkpoint in {checkpointer.directory}: train first (--mode=train), or "
                                    "import one (--mode=import)")
        found = latest_average(workdir, step)
        if found is not None:
            state, meta = found
            return state, {"step": step, "checkpoint": f"average of steps {meta['averaged_steps']}"}
        imported = checkpointer.read_meta(step).get("imported_from")
        return checkpointer.restore_raw(step), {
            "step": step, "checkpoint": f"imported from {imported}" if imported else f"step {step}"}
    finally:
        checkpointer.close()
