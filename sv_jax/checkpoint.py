"""Orbax checkpoints of the train state plus the data-stream position, saved atomically, restored on start.

Orbax writes each step into a temporary directory and renames it when complete, so a run killed mid-save (even by
SIGKILL) leaves the previous checkpoints intact and the partial one is ignored on restart. A finished checkpoint
that later goes bad (a truncated or overwritten file, a missing part) fails to restore: `Checkpointer.restore` then
warns, falls back to the newest one that restores, and renames the bad ones `<step>.unreadable` (kept, not deleted;
orbax no longer sees them, so the step can be saved again).
"""

from __future__ import annotations

import logging
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from cli import UserError

log = logging.getLogger(__name__)


class UnreadableCheckpointError(UserError, RuntimeError):
    """Checkpoints exist, but none of them restores."""


def _describe(error: Exception) -> str:
    """The error's type and first line (tensorstore's messages run to pages)."""
    return f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"


TRAINING = "checkpoints"  # the train state of training steps (and an imported model's variables, step 0)
AVERAGED = "averaged"  # the average of the last checkpoints (sv_jax.averaging): params and BN statistics only


class Checkpointer:
    """Keeps the latest `max_to_keep` checkpoints of `workdir/<subdir>` (None: all)."""

    def __init__(self, workdir: str | pathlib.Path, max_to_keep: int | None = 3, subdir: str = TRAINING):
        self.directory = pathlib.Path(workdir).absolute() / subdir
        options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                               enable_async_checkpointing=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_names=("state", "meta"))

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def delete(self, step: int) -> None:
        self._manager.delete(step)

    def save(self, step: int, state: Any, meta: dict) -> None:
        """Starts an asynchronous save; the next save or `close` waits for it."""
        self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                         meta=ocp.args.JsonSave(meta)), force=True)

    def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict] | None:
        """(state, meta) placed like `abstract_state`: of `step`, or by default of the newest checkpoint that restores
        (newer unreadable ones are set aside with a warning); None if there is none.

        Raises UnreadableCheckpointError when checkpoints exist but none restores (nothing is renamed then).
        """
        abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, abstract_state)
        if step is not None:
            return self._restore(abstract, step)
        unreadable = []
        for candidate in sorted(self._manager.all_steps(), reverse=True):
            try:
                restored = self._restore(abstract, candidate)
            except Exception as error:  # orbax and tensorstore raise plain Exception, OSError, KeyError, ValueError
                log.warning("checkpoint of step %d in %s does not restore (%s); trying the one before", candidate,
                            self.directory, _describe(error))
                unreadable.append((candidate, error))
                continue
            if unreadable:
                self._set_aside([s for s, _ in unreadable])
                log.warning("resuming from step %d instead of %d; unreadable checkpoints renamed %s", candidate,
                            unreadable[0][0], ", ".join(f"{s}.unreadable" for s, _ in unreadable))
            return restored
        if unreadable:
            step, error = unreadable[0]
            raise UnreadableCheckpointError(
                f"no checkpoint in {self.directory} restores (steps {[s for s, _ in unreadable]}); the newest, step "
                f"{step}, failed with {_describe(error)}. Was the config "
                f"changed since they were written? To start afresh, use another workdir.") from error
        return None

    def _restore(self, abstract: Any, step: int) -> tuple[Any, dict]:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
        log.info("restored checkpoint of step %d from %s", step, self.directory)
        return restored["state"], dict(restored["meta"])

    def _set_aside(self, steps: list[int]) -> None:
        """Renames step directories `<step>.unreadable` (process 0; all processes wait) and rescans."""
        if jax.process_index() == 0:
            for step in steps:
                source = self.directory / str(step)
                target = source.with_name(f"{step}.unreadable")
                suffix = 1
                while target.exists():
                    target, suffix = source.with_name(f"{step}.unreadable.{suffix}"), suffix + 1
                source.rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("sv_jax.checkpoint.set_aside")
        self._manager.reload()

    def restore_raw(self, step: int) -> dict:
        """The saved state of `step` as a plain tree of arrays (for inference: no optimizer needed)."""
        return self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))["state"]

    def read_meta(self, step: int) -> dict:
        """The metadata saved with `step` (data-stream positions, skipped steps)."""
        return dict(self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()
