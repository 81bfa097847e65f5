"""Two independent references for the EnergyMonitor's GPU Joules, over the very windows it measures.

    zeus, status = zeus_monitor()              # zeus.monitor.ZeusMonitor, or None and why ('zeus not installed ...')
    log = PowerLog()                           # nvidia-smi --query-gpu=timestamp,index,power.draw ... -lms 100
    tee = Tee(monitor, zeus)                   # what profiling.windows.measure_windows is given as its monitor
    ...measure_windows("train_step", run, tee, ...)...
    log.close()
    for m, t0, t1, zeus_j, zeus_error in tee.windows: log.energy_j(t0, t1, boards)

Zeus reads NVML's energy counter itself (its own code, its own handles); its window opens just before and closes
just after the monitor's, at the same synchronised edges. nvidia-smi is a separate process logging `power.draw`
(a ~1-s running average on recent drivers) every 100 ms; its samples are integrated (trapezoids, linear between
samples) from the window's begin edge to its end edge in wall-clock time, which nvidia-smi's timestamps share.
"""

from __future__ import annotations

import datetime
import itertools
import subprocess
import threading
import time
from typing import Any

_KEYS = itertools.count()  # Zeus window names, unique in the process (a failed row may leave one open)
SMI_COMMAND = ("nvidia-smi", "--query-gpu=timestamp,index,power.draw", "--format=csv,noheader,nounits", "-lms", "100")


def parse_smi_line(line: str) -> tuple[float, int, float] | None:
    """'2026/12/05 10:11:12.345, 0, 612.34' -> (seconds since the epoch, board index, W); None if unreadable."""
    try:
        stamp, index, watts = (field.strip() for field in line.split(","))
        t = datetime.datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f").timestamp()
        return t, int(index), float(watts)
    except ValueError:  # '[N/A]', a header, a partial line
        return None


def integrate(points: list[tuple[float, float]], t0: float, t1: float) -> float | None:
    """Joules over [t0, t1] of the piecewise-linear power through (t, W) `points`, flat beyond its ends."""
    points = sorted(points)
    if not points or t1 <= t0:
        return None

    def at(t: float) -> float:
        for (ta, wa), (tb, wb) in zip(points, points[1:]):
            if ta <= t <= tb:
                return wa + (wb - wa) * (t - ta) / (tb - ta) if tb > ta else wa
        return points[0][1] if t < points[0][0] else points[-1][1]

    trace = [(t0, at(t0))] + [p for p in points if t0 < p[0] < t1] + [(t1, at(t1))]
    return sum((tb - ta) * (wa + wb) / 2 for (ta, wa), (tb, wb) in zip(trace, trace[1:]))


class PowerLog:
    """nvidia-smi's power log as a subprocess started around a series of windows; it returns once samples arrive."""

    def __init__(self, command=SMI_COMMAND, wait_s: float = 3.0) -> None:
        self.lines: list[str] = []
        self._process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._thread = threading.Thread(target=self._read, name="nvidia-smi-log", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + wait_s
        while not self.lines and time.monotonic() < deadline and self._process.poll() is None:
            time.sleep(0.05)

    def _read(self) -> None:
        for line in self._process.stdout:
            self.lines.append(line.rstrip("\n"))

    def close(self) -> None:
        time.sleep(0.3)  # a sample after the last window's end edge
        self._process.terminate()
        try:
            self._process.wait(timeout=3)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._thread.join(timeout=3)

    def energy_j(self, t0: float, t1: float, boards: set[int] | None = None) -> tuple[float | None, int]:
        """(Joules of `boards` (NVML indices; None: every board logged) over [t0, t1], samples inside it)."""
        samples = [s for s in map(parse_smi_line, self.lines) if s and (boards is None or s[1] in boards)]
        per_board = [integrate([(t, w) for t, i, w in samples if i == board], t0, t1)
                     for board in sorted({s[1] for s in samples})]
        inside = sum(1 for t, _, _ in samples if t0 <= t <= t1)
        return (sum(per_board) if per_board and None not in per_board else None), inside


def zeus_monitor() -> tuple[Any, str]:
    """(ZeusMonitor over every visible GPU, 'ok'), or (None, why not)."""
    try:
        from zeus.monitor import ZeusMonitor  # pylint: disable=import-outside-toplevel  # optional
    except ImportError as error:
        return None, f"zeus not installed ({error})"
    try:
        zeus = ZeusMonitor(cpu_indices=[], sync_execution_with="jax")
    except Exception as error:  # pylint: disable=broad-except  # NVML errors of every kind
        return None, f"zeus unusable: {type(error).__name__}: {error}"
    return (zeus, "ok") if zeus.gpu_indices else (None, "zeus sees no GPU")


class Tee:
    """An EnergyMonitor as measure_windows uses it, with a Zeus window around each of its windows and the wall-clock
    edges kept for the nvidia-smi log: `windows` holds (measurement, t0, t1, Zeus GPU J, Zeus error) per window."""

    def __init__(self, monitor: Any, zeus: Any = None) -> None:
        self._monitor, self._zeus, self.windows = monitor, zeus, []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._monitor, name)

    def begin_window(self, name: str, sync: Any = None) -> None:
        self._key, self._zeus_error = f"gpu_check_{next(_KEYS)}", None
        if self._zeus is not None:
            try:
                self._zeus.begin_window(self._key, sync_execution=False)  # measure_windows' run() blocks itself
            except Exception as error:  # pylint: disable=broad-except  # a reference failing must not stop the check
                self._zeus_error = f"begin_window: {type(error).__name__}: {error}"
        self._monitor.begin_window(name, sync)
        self._t0 = time.time()

    def end_window(self, name: str, sync: Any = None) -> Any:
        measurement = self._monitor.end_window(name, sync)
        t1, zeus_j = time.time(), None
        if self._zeus is not None and self._zeus_error is None:
            try:
                zeus_j = sum(self._zeus.end_window(self._key, sync_execution=False).gpu_energy.values())
            except Exception as error:  # pylint: disable=broad-except
                self._zeus_error = f"end_window: {type(error).__name__}: {error}"
        self.windows.append((measurement, self._t0, t1, zeus_j, self._zeus_error))
        return measurement
