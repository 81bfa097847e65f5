"""Orbax checkpoints of the train state plus the data-stream position, saved atomically, restored on start.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed mid-save (even by
SIGKILL) leaves the previous checkpoints intact and the partial one is ignored on restart.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """Keeps the latest `max_to_keep` checkpoints of `workdir/checkpoints`."""

    def __init__(self, workdir: str | pathlib.Path, max_to_keep: int = 3):
        self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts an asynchronous save; the next save or `close` waits for it."""
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict] | None:
        """(state, meta) of `step` (default: the latest), placed like `abstract_state`; None if there is none."""
        step = self.latest_step() if step is None else step
        if step is None:
            return None
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        log.info("restored checkpoint of step %d from %s", step, self.directory)
        return restored["state"], dict(restored["meta"])

    def restore_raw(self, step: int) -> dict:
        """The saved state of `step` as a plain tree of arrays (for inference: no optimizer needed)."""
        return self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
