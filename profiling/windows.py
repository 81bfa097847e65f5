"""Steady-state cost of a program: repeated energy windows of back-to-back calls, each at least `window_s` long.

    series = measure_windows("train_step", run, monitor, window_s=5.0, repetitions=3, cooldown_s=5.0)
    series.fields("train_step")   # {'train_step_s_mean': ..., 'train_step_j_mean': ..., ...}

`run(n)` makes n calls and returns when they have finished (it blocks on their results). One call first sets a
window's length in calls; a window that falls short of `window_s` is topped up before it closes, so every window
holds whole calls and lasts at least `window_s`. Each window is preceded by `cooldown_s` of idling, so that one
window's heat does not carry into the next.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Iterable

import numpy as np

from profiling import energy as energy_lib
from profiling import names


@dataclasses.dataclass(frozen=True)
class WindowSeries:
    """Repeated steady-state windows of one program: per-call seconds and Joules, mean and spread over windows."""

    calls: list[int]  # calls in each window
    seconds: list[float]
    energy_j: list[float | None]  # total over all measured domains; None where the window had no figure
    dynamic_j: list[float | None]  # energy above the idle baseline; None without a baseline
    sources: dict[str, str]
    warnings: list[str]
    unavailable: dict[str, str]

    def per_call(self, values: Iterable[float | None]) -> tuple[float | None, float | None]:
        """(mean, sample standard deviation) of value/calls over windows; None if any window lacks a figure."""
        values = list(values)
        if not values or any(v is None for v in values):
            return None, None
        x = np.asarray(values, float) / np.asarray(self.calls, float)
        return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else 0.0

    def fields(self, program: str) -> dict[str, Any]:
        """Flat per-call figures of `program` (see profiling.names): windows, calls, s/J/dynamic J mean and sd."""
        s_mean, s_std = self.per_call(self.seconds)
        j_mean, j_std = self.per_call(self.energy_j)
        values = {"windows": len(self.calls), "calls": sum(self.calls), "s_mean": s_mean, "s_std": s_std,
                  "j_mean": j_mean, "j_std": j_std, "dynamic_j_mean": self.per_call(self.dynamic_j)[0]}
        return {names.key(program, quantity): value for quantity, value in values.items()}


def measure_windows(name: str, run: Callable[[int], Any], monitor: energy_lib.EnergyMonitor, *, window_s: float,
                    repetitions: int, cooldown_s: float, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> WindowSeries:
    """`repetitions` windows of `run(n)`, each at least `window_s` of whole calls (see the module docstring).

    `clock` must be the monitor's clock (tests pass one FakeClock to both).
    """
    start = clock()
    run(1)
    per_call = max(clock() - start, 1e-9)
    calls, seconds, energy, dynamic, warnings, sources = [], [], [], [], [], {}
    for repetition in range(repetitions):
        sleep(cooldown_s)
        n, done = max(1, math.ceil(window_s / per_call)), 0
        monitor.begin_window(name, sync=lambda: None)  # `run` returns only when its calls have finished
        start = clock()
        while True:
            run(n)
            done += n
            elapsed = clock() - start
            if elapsed >= window_s:
                break
            n = max(1, math.ceil((window_s - elapsed) / (elapsed / done)))
        m = monitor.end_window(name, sync=lambda: None)
        per_call = m.seconds / done
        calls.append(done)
        seconds.append(m.seconds)
        energy.append(m.total_j if m.available else None)
        dynamic.append(sum(m.dynamic_j().values()) if m.available and m.idle_w else None)
        warnings.extend(f"{name} window {repetition + 1}: {w}" for w in m.warnings)
        sources.update(m.sources)
    return WindowSeries(calls, seconds, energy, dynamic, sources, warnings, dict(monitor.unavailable))
