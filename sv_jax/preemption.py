"""Preemption: on SIGTERM (a scheduler's notice) or SIGINT (Ctrl-C), finish the step, checkpoint it, exit cleanly.

One process: the signal sets a flag that the loop reads after each step; a second SIGINT interrupts at once (the
previous handler is restored after the first). Several processes: JAX's preemption service (started by
`jax.distributed.initialize`) spreads a SIGTERM that reaches any process to all, and
`multihost_utils.reached_preemption_sync_point` makes them stop at the same step, so all of them take part in the
checkpoint. Either way the run ends with the checkpoint of the step it stopped at, and the same command resumes it.
"""

from __future__ import annotations

import logging
import signal
import threading

import jax
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class PreemptionWatcher:
    """`with PreemptionWatcher() as watcher: ... if watcher.should_stop(step): save and leave`."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, object] = {}
        self._multi = jax.process_count() > 1

    def __enter__(self) -> PreemptionWatcher:
        # Handlers can only be set from the main thread; elsewhere (a test driving training from a worker thread)
        # the watcher only reports what JAX's preemption service sees.
        if not self._multi and threading.current_thread() is threading.main_thread():
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        del frame
        self.signal_name = signal.Signals(signum).name
        log.warning("%s received: finishing this step, then checkpointing and exiting (again to interrupt now)",
                    self.signal_name)
        signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))

    def should_stop(self, step: int) -> bool:
        """Whether to checkpoint `step` and stop; every process must call it after every step when several run."""
        if self._multi:
            if multihost_utils.reached_preemption_sync_point(step):
                self.signal_name = "SIGTERM (JAX preemption service)"
                return True
            return False
        return self.signal_name is not None
