"""Energy of named windows, read from the hardware's own sensors (NVML for GPUs, RAPL for CPU package and DRAM).

    monitor = EnergyMonitor()                   # auto-detects; monitor.unavailable says why a sensor is missing
    monitor.measure_idle(10.0)                  # optional idle baseline, before anything runs
    ...compile and warm up...
    monitor.begin_window("train", sync=state)   # blocks on `state` so earlier queued work is not counted
    ...steps...
    m = monitor.end_window("train", sync=state) # EnergyMeasurement: m.gpu_j, m.cpu_j, m.sources, m.dynamic_j()
    monitor.close()

Counters (NVML total energy, RAPL) are read only at window edges, so a window costs a few sensor reads and nothing
per step. Instant-power sensors (GPUs without the counter) are sampled by one background thread and integrated with
the trapezoid rule; edges take a sample too, so windows start and end on a sample. Every figure names its source; a
missing sensor yields no figure plus a reason, never an estimate. JAX runs asynchronously, so pass `sync` (a callable
or arrays to block on): without it a window measures dispatch, not execution.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import threading
import time
from typing import Any, Callable, Iterator, Mapping

from profiling.sensors import (  # noqa: F401  (some re-exported: one import for users of the monitor)
    COUNTER, POWER, RAPL_PERMISSION_HINT, FakeClock, FakeSensor, NvmlSensor, RaplSensor, Sensor, SensorError)

NOISY_WINDOW_S = 2.0  # docs/design.md: shorter windows are noisy and biased low.
GAP_FACTOR = 3.0  # A sampling interval this many poll periods long means the thread starved: the window is suspect.
# Counters that refresh at least this coarsely (NVML's every ~100 ms) are read tick-aligned at window edges.
ALIGN_MIN_PERIOD_S = 0.01
ALIGN_POLL_S = 0.001  # how often an edge re-reads such a counter while it waits for the next tick
ALIGN_SPAN = 1.5  # ... for at most this many update periods
STUCK_MIN_S = 0.25  # a counter that must move (NVML, RAPL) and stays still this long (and 2 periods) is stuck


@dataclasses.dataclass(frozen=True)
class EnergyMeasurement:
    """Time and energy of one named window (cf. Zeus's `Measurement`).

    Attributes:
        name: the window's name.
        seconds: wall-clock duration between the two (synchronised) edges, in seconds.
        gpu_j: energy per GPU domain ('gpu0', ...) in Joules.
        cpu_j: energy per RAPL domain ('package-0', 'dram-0') in Joules.
        sources: domain -> where its figure came from: 'nvml-energy-counter', 'nvml-power-polling' (instant power),
            'nvml-averaged-power-polling' (1-s averaged power), 'rapl' or 'fake'.
        samples: power samples integrated in the window (most over polled domains); 0 when all come from counters.
        complete: False when a read failed or polling had gaps: a figure is then missing (see `warnings`) or bridges
            the gap by interpolation between the samples either side.
        warnings: caveats in words (short window, failed reads, gaps).
        idle_w: idle power per domain in W from `EnergyMonitor.measure_idle`; empty without a baseline.
        unavailable: sensor or domain -> why it was not measured.
    """

    name: str
    seconds: float
    gpu_j: dict[str, float]
    cpu_j: dict[str, float]
    sources: dict[str, str]
    samples: int = 0
    complete: bool = True
    warnings: tuple[str, ...] = ()
    idle_w: dict[str, float] = dataclasses.field(default_factory=dict)
    unavailable: dict[str, str] = dataclasses.field(default_factory=dict)

    @property
    def available(self) -> bool:
        """Whether any energy was measured; totals are NaN otherwise (an absent figure, not zero)."""
        return bool(self.gpu_j or self.cpu_j)

    @property
    def gpu_total_j(self) -> float:
        return sum(self.gpu_j.values()) if self.gpu_j else math.nan

    @property
    def cpu_total_j(self) -> float:
        return sum(self.cpu_j.values()) if self.cpu_j else math.nan

    @property
    def total_j(self) -> float:
        return sum(self.gpu_j.values()) + sum(self.cpu_j.values()) if self.available else math.nan

    @property
    def avg_power_w(self) -> float:
        return self.total_j / self.seconds if self.seconds > 0 else math.nan

    def dynamic_j(self, idle_w: Mapping[str, float] | None = None) -> dict[str, float]:
        """Energy above the idle baseline per domain (J): measured − idle W × seconds, for domains with a baseline.

        `idle_w` defaults to the baseline recorded with the measurement. Not clamped at zero: a negative figure says
        the baseline was higher than the load, which is worth seeing.
        """
        idle_w = self.idle_w if idle_w is None else idle_w
        return {d: j - idle_w[d] * self.seconds for d, j in {**self.gpu_j, **self.cpu_j}.items() if d in idle_w}

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: NaN totals become None."""
        out = dataclasses.asdict(self)
        out["warnings"] = list(self.warnings)
        for key in ("available", "gpu_total_j", "cpu_total_j", "total_j", "avg_power_w"):
            value = getattr(self, key)
            out[key] = None if isinstance(value, float) and math.isnan(value) else value
        out["dynamic_j"] = self.dynamic_j()
        return out


@dataclasses.dataclass
class WindowHandle:
    """What `EnergyMonitor.window` yields: `measurement` is set when the block exits normally."""

    name: str
    measurement: EnergyMeasurement | None = None


@dataclasses.dataclass
class _Edge:
    """Sensor state at one window edge; failure and gap counts are cumulative, so a window compares two edges."""

    t: float
    counter_j: dict[str, float]
    power_j: dict[str, float]
    samples: dict[str, int]
    failures: dict[str, int]
    gaps: dict[str, int]
    warnings: dict[str, str] = dataclasses.field(default_factory=dict)  # domain -> sensor's edge warning


class EnergyMonitor:
    """Named, possibly nested or overlapping, energy windows over a set of sensors (Zeus's begin/end_window).

    Args:
        sensors: sensors to use; None auto-detects NVML GPUs (the boards CUDA_VISIBLE_DEVICES shows: NvmlSensor's
            'visible'; pass `NvmlSensor('jax')` for the boards behind JAX's devices) and RAPL. Unavailable ones are
            dropped and their reasons kept in `unavailable`.
        poll_interval_s: sampling period for power sensors (and gap detection).
        clock: seconds, monotonic; tests inject a `FakeClock`.
        sync: default synchronisation at window edges: a callable, or arrays/pytrees for `jax.block_until_ready`.
        background: sample power sensors (and refresh wrapping counters) from a daemon thread; with False nothing
            runs on its own and tests drive sampling with `poll_once()`.
        align_counters: read coarse counters (NVML's ~100-ms total energy) tick-aligned at window edges: re-read
            until the counter moves (at most 1.5 periods of host time; the device keeps working) and interpolate
            linearly within the tick, so that the edge's energy is that at the edge's own time, not up to a period
            earlier (a 1-s window would be off by up to 10%). Default: on with the real clock, off with an injected one (which does not move by itself).
        sleep: how the aligned reads wait (tests pass `FakeClock.advance`).
    """

    def __init__(self, sensors: list[Sensor] | None = None, *, poll_interval_s: float = 0.1,
                 clock: Callable[[], float] = time.monotonic, sync: Any = None, background: bool = True,
                 align_counters: bool | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        if sensors is None:
            sensors = [NvmlSensor(), RaplSensor()]
        self.sensors = [s for s in sensors if s.available]
        self.unavailable: dict[str, str] = {}
        for s in sensors:
            if s.available:
                self.unavailable.update(s.unavailable)  # Domains a working sensor had to drop (e.g. one old GPU).
            else:
                self.unavailable[s.name] = s.reason
                s.close()
        self.sources = {d: s.sources[d] for s in self.sensors for d in (*s.counter_domains, *s.power_domains)}
        self.idle_w: dict[str, float] = {}
        self.poll_interval_s, self._clock, self._sync_default = poll_interval_s, clock, sync
        self._device = {d: s.device for s in self.sensors for d in (*s.counter_domains, *s.power_domains)}
        self._periods = {d: p for s in self.sensors for d, p in s.update_periods_s.items()}
        self._counter_domains = {d for s in self.sensors for d in s.counter_domains}
        self._must_move = {d for s in self.sensors if s.counters_always_move for d in s.counter_domains}
        self._align = clock is time.monotonic if align_counters is None else align_counters
        self._sleep = sleep
        self.idle_w_std: dict[str, float] = {}
        self.idle_measurement: EnergyMeasurement | None = None
        self._windows: dict[str, _Edge] = {}
        self._lock = threading.Lock()  # Sensor reads and integrator state are shared with the polling thread.
        power = [d for s in self.sensors for d in s.power_domains]
        self._power_j, self._samples = dict.fromkeys(power, 0.0), dict.fromkeys(power, 0)
        self._last: dict[str, tuple[float, float]] = {}
        self._failures, self._gaps = dict.fromkeys(self.sources, 0), dict.fromkeys(power, 0)
        self._refresh_due = {id(s): clock() for s in self.sensors if s.counter_domains and s.refresh_interval_s}
        self._stop = threading.Event()
        self._thread = None
        if background and (power or self._refresh_due):
            self._thread = threading.Thread(target=self._run, name="energy-monitor", daemon=True)
            self._thread.start()

    @property
    def available(self) -> bool:
        """Whether any sensor measures anything; windows still time themselves when not."""
        return bool(self.sensors)

    def unavailable_reason(self) -> str:
        """Why some sensor or domain is not measured, in one line ('no energy sensor' if nothing says more)."""
        return "; ".join(f"{k}: {v}" for k, v in self.unavailable.items()) or "no energy sensor"

    def begin_window(self, name: str, sync: Any = None) -> None:
        """Opens window `name` after synchronising; raises ValueError if a window of that name is open."""
        if name in self._windows:
            raise ValueError(f"energy window {name!r} is already open")
        self._synchronise(sync)
        self._windows[name] = self._edge()

    def end_window(self, name: str, sync: Any = None) -> EnergyMeasurement:
        """Synchronises, closes window `name` and returns its measurement; raises KeyError if it is not open."""
        if name not in self._windows:
            raise KeyError(f"no open energy window {name!r}; open: {sorted(self._windows)}")
        self._synchronise(sync)
        end = self._edge()
        return self._measure(name, self._windows.pop(name), end)

    def roll_window(self, name: str, sync: Any = None) -> EnergyMeasurement:
        """Ends window `name` and opens the next window of that name at the same edge (one synchronisation, one
        set of sensor reads: back-to-back windows share their edge); raises KeyError if it is not open."""
        if name not in self._windows:
            raise KeyError(f"no open energy window {name!r}; open: {sorted(self._windows)}")
        self._synchronise(sync)
        edge = self._edge()
        measurement = self._measure(name, self._windows[name], edge)
        # A read that failed at this edge would leave the next window without a start as well: read again for it.
        self._windows[name] = self._edge() if self._counter_domains - edge.counter_j.keys() else edge
        return measurement

    @contextlib.contextmanager
    def window(self, name: str, sync: Any = None) -> Iterator[WindowHandle]:
        """`with monitor.window("eval", sync=fn) as w: ...` then `w.measurement`. The block's results do not exist at
        entry, so `sync` should be a callable here. On an exception the window is discarded, not measured."""
        handle = WindowHandle(name)
        self.begin_window(name, sync)
        try:
            yield handle
        except BaseException:
            self._windows.pop(name, None)
            raise
        handle.measurement = self.end_window(name, sync)

    def measure_idle(self, seconds: float, *, settle_s: float = 0.0, parts: int = 1,
                     sleep: Callable[[float], None] = time.sleep) -> dict[str, float]:
        """Records idle power per domain (W) for `EnergyMeasurement.dynamic_j`: `settle_s` of waiting (a process that
        just started, or a device that just worked, is not yet at idle), then `seconds` of doing nothing in `parts`
        equal windows, whose spread (sample standard deviation of their W) lands in `idle_w_std`.

        Call it before compiling or running anything; it returns and stores the baseline in `idle_w`.
        """
        sleep(settle_s)
        parts = max(1, int(parts))
        measured = []
        for _ in range(parts):
            self.begin_window("__idle__")
            sleep(seconds / parts)
            measured.append(self.end_window("__idle__"))
        total_s = sum(m.seconds for m in measured)
        domains = set.intersection(*(set(m.gpu_j) | set(m.cpu_j) for m in measured))
        self.idle_w = ({d: sum({**m.gpu_j, **m.cpu_j}[d] for m in measured) / total_s for d in sorted(domains)}
                       if total_s > 0 else {})
        self.idle_w_std = {}
        if parts > 1 and all(m.seconds > 0 for m in measured):
            for d in self.idle_w:
                w = [{**m.gpu_j, **m.cpu_j}[d] / m.seconds for m in measured]
                mean = sum(w) / len(w)
                self.idle_w_std[d] = math.sqrt(sum((x - mean) ** 2 for x in w) / (len(w) - 1))
        self.idle_measurement = dataclasses.replace(
            measured[-1], seconds=total_s, warnings=tuple(w for m in measured for w in m.warnings),
            complete=all(m.complete for m in measured),
            gpu_j={d: sum(m.gpu_j[d] for m in measured) for d in measured[-1].gpu_j if d in domains},
            cpu_j={d: sum(m.cpu_j[d] for m in measured) for d in measured[-1].cpu_j if d in domains})
        return dict(self.idle_w)

    def poll_once(self) -> None:
        """Takes one power sample and refreshes wrapping counters when due (what the background thread does)."""
        with self._lock:
            now = self._clock()
            self._sample_power(now)
            for s in self.sensors:
                if id(s) in self._refresh_due and now >= self._refresh_due[id(s)]:
                    self._read_counters(s)
                    self._refresh_due[id(s)] = now + s.refresh_interval_s

    def close(self) -> None:
        """Stops the polling thread and releases the sensors; idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        for s in self.sensors:
            s.close()
        self.sensors = []

    def __enter__(self) -> EnergyMonitor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval_s):
            self.poll_once()

    def _synchronise(self, sync: Any) -> None:
        sync = self._sync_default if sync is None else sync
        if callable(sync):
            sync()
        elif sync is not None:
            import jax  # Lazily: the monitor itself has no use for jax.
            jax.block_until_ready(sync)

    def _read_counters(self, sensor: Sensor) -> dict[str, float]:
        try:
            return sensor.read_j()
        except Exception:  # A sensor going away must not kill training; the window reports it instead.
            for d in sensor.counter_domains:
                self._failures[d] += 1
            return {}

    def _sample_power(self, now: float) -> None:
        for s in self.sensors:
            if not s.power_domains:
                continue
            try:
                power = s.read_w()
            except Exception:
                for d in s.power_domains:
                    self._failures[d] += 1
                continue
            for d, w in power.items():
                if d in self._last:
                    t0, w0 = self._last[d]
                    self._power_j[d] += 0.5 * (w0 + w) * (now - t0)
                    self._gaps[d] += (now - t0) > GAP_FACTOR * self.poll_interval_s
                self._last[d] = (now, w)
                self._samples[d] += 1

    def _edge(self) -> _Edge:
        with self._lock:
            now = self._clock()
            self._sample_power(now)
            counter_j = {d: j for s in self.sensors if s.counter_domains
                         for d, j in self._read_counters_at(s, now).items()}
            warnings = {}
            for s in self.sensors:
                if id(s) in self._refresh_due:  # An edge read is as good as a refresh.
                    self._refresh_due[id(s)] = now + s.refresh_interval_s
                try:
                    warnings.update(s.edge_warnings())
                except Exception as e:  # pylint: disable=broad-except  # a check must not stop training
                    warnings[s.name] = f"{s.name}: edge check failed: {e}"
            return _Edge(now, counter_j, {d: j for d, j in self._power_j.items() if d in self._last},
                         dict(self._samples), dict(self._failures), dict(self._gaps), warnings)

    def _read_counters_at(self, sensor: Sensor, t: float) -> dict[str, float]:
        """Counter readings as of time `t`: read, and for coarse counters (with `align_counters`) re-read until each
        moves, then interpolate within the tick that straddles `t` (the tick before the move began one period
        earlier). Domains that do not move in time (idle, stuck) keep the plain reading."""
        first = self._read_counters(sensor)
        coarse = {d for d in first if self._periods.get(d, 0.0) >= ALIGN_MIN_PERIOD_S} if self._align else set()
        if not coarse:
            return first
        deadline = t + ALIGN_SPAN * max(self._periods[d] for d in coarse)
        moved: dict[str, tuple[float, float]] = {}
        before = t  # the time of the last read that showed no move
        for _ in range(int(ALIGN_SPAN * max(self._periods[d] for d in coarse) / ALIGN_POLL_S) + 1):
            self._sleep(ALIGN_POLL_S)
            again = self._read_counters(sensor)
            now = self._clock()
            for d in coarse - moved.keys():
                if d in again and again[d] != first[d]:
                    moved[d] = ((before + now) / 2, again[d])  # the tick fell between the two reads
            before = now
            if len(moved) == len(coarse) or not again or now >= deadline:
                break
        out = dict(first)
        for d, (t_move, value) in moved.items():
            period = self._periods[d]
            fraction = min(max((t - (t_move - period)) / period, 0.0), 1.0)
            out[d] = first[d] + fraction * (value - first[d])
        return out

    def _measure(self, name: str, start: _Edge, end: _Edge) -> EnergyMeasurement:
        seconds, energy, warnings, samples = end.t - start.t, {}, [], 0
        for d in self.sources:
            counter = d in self._counter_domains
            first, last = (start.counter_j, end.counter_j) if counter else (start.power_j, end.power_j)
            if d in first and d in last and last[d] >= first[d]:
                energy[d] = last[d] - first[d]
            else:
                warnings.append(f"{d}: no figure (read failed or counter went backwards at a window edge)")
            if d in end.samples:
                samples = max(samples, end.samples[d] - start.samples[d] + 1)
            if end.failures[d] > start.failures[d]:
                warnings.append(f"{d}: {end.failures[d] - start.failures[d]} failed reads in the window")
            if end.gaps.get(d, 0) > start.gaps.get(d, 0):
                warnings.append(f"{d}: polling gaps longer than {GAP_FACTOR:g}x {self.poll_interval_s:g} s")
            if (d in self._must_move and energy.get(d) == 0.0
                    and seconds >= max(STUCK_MIN_S, 2 * self._periods.get(d, 0.0))):
                del energy[d]
                warnings.append(f"{d}: its energy counter did not move in {seconds:.2f} s (stuck: the hardware draws "
                                "power even idle): no figure")
        for d in sorted({**start.warnings, **end.warnings}):
            warnings.append({**start.warnings, **end.warnings}[d])
        complete = not warnings
        if energy:
            period, slowest = max((self._periods.get(d, 0.0), d) for d in energy)
            if seconds < period:
                warnings.append(f"window {seconds:.2f} s is shorter than the ~{period:g} s update period of "
                                f"{slowest} ({self.sources[slowest]}): the figure is mostly quantisation")
            elif seconds < NOISY_WINDOW_S:
                warnings.append(f"window {seconds:.2f} s < {NOISY_WINDOW_S:g} s: energy is noisy and biased low; "
                                "aggregate steps into windows of >= 5 s")
        return EnergyMeasurement(
            name=name, seconds=seconds, sources={d: self.sources[d] for d in energy},
            gpu_j={d: j for d, j in energy.items() if self._device[d] == "gpu"},
            cpu_j={d: j for d, j in energy.items() if self._device[d] == "cpu"},
            samples=samples, complete=complete, warnings=tuple(warnings),
            idle_w={d: w for d, w in self.idle_w.items() if d in energy}, unavailable=dict(self.unavailable))
