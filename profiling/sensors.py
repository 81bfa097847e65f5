"""Energy sensors behind one small interface: NVML (GPUs), RAPL powercap (CPU package and DRAM), and a fake.

Each sensor offers cumulative counters or instantaneous power per domain, the source label of every figure, and a
reason for every domain it cannot cover; profiling.energy.EnergyMonitor reads them at window edges (counters) or
samples them from a background thread (power). FakeSensor and FakeClock make windows deterministic in tests.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Mapping

COUNTER, POWER = "counter", "power"
RAPL_PERMISSION_HINT = "root only since Linux 5.10 and its backports (CVE-2020-8694): chmod a+r it or run as root"


class SensorError(RuntimeError):
    """A sensor read failed (driver gone, file vanished); windows it touches are marked incomplete."""



class Sensor:
    """One or more energy domains behind one interface.

    A sensor offers cumulative counters (`counter_domains`, read with `read_j() -> {domain: J}`, monotonic: the sensor
    undoes wrap-around) and/or instantaneous power (`power_domains`, read with `read_w() -> {domain: W}`, which the
    monitor samples and integrates). It reports `sources` (domain -> label), `update_periods_s` (domain -> how often
    the hardware refreshes the value), `reason` when it covers nothing, and `unavailable` for domains it had to drop.
    `refresh_interval_s`, when set, asks the monitor to read the counters at least that often so no wrap is missed.
    """

    name = "sensor"
    device = "gpu"  # 'gpu' or 'cpu': which dict of EnergyMeasurement the domains land in.
    refresh_interval_s: float | None = None

    def __init__(self) -> None:
        self.counter_domains: tuple[str, ...] = ()
        self.power_domains: tuple[str, ...] = ()
        self.sources: dict[str, str] = {}
        self.update_periods_s: dict[str, float] = {}
        self.unavailable: dict[str, str] = {}
        self.reason = ""

    @property
    def available(self) -> bool:
        return bool(self.counter_domains or self.power_domains)

    def read_j(self) -> dict[str, float]:
        raise NotImplementedError

    def read_w(self) -> dict[str, float]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _WrapCounter:
    """Makes a counter that wraps at `max_raw` monotonic; it must be read at least once per wrap period."""

    def __init__(self, max_raw: float | None) -> None:
        self.max_raw, self.last, self.offset = max_raw, None, 0

    def update(self, raw: float) -> float:
        if self.max_raw and self.last is not None and raw < self.last:
            self.offset += self.max_raw
        self.last = raw
        return raw + self.offset


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


class RaplSensor(Sensor):
    """RAPL powercap counters: `intel-rapl:N` (package-N) and `intel-rapl:N:M` sub-zones named by their `name` file.

    Only package and DRAM by default: core and uncore are parts of the package and psys overlaps it, so including
    them would count energy twice in `cpu_total_j`.
    """

    name, device = "rapl", "cpu"
    refresh_interval_s = 10.0  # Ranges are ~2^32-2^38 uJ: at 10 s a wrap needs > 400 W on the smallest.

    def __init__(self, root: str = "/sys/class/powercap", include: tuple[str, ...] = ("package", "dram")) -> None:
        super().__init__()
        self._paths: dict[str, str] = {}
        self._counters: dict[str, _WrapCounter] = {}
        if not os.path.isdir(root):
            self.reason = f"{root} not found (no RAPL powercap interface: VM, container or non-x86 machine)"
            return
        zones = sorted(z for z in os.listdir(root) if z.startswith("intel-rapl:"))
        for zone in zones:
            path = os.path.join(root, zone)
            try:
                label = _read_text(os.path.join(path, "name"))
            except OSError as e:
                self.unavailable[zone] = f"{path}/name not readable: {e}"
                continue
            if label.split("-")[0] not in include:
                continue
            domain = label if label.startswith("package") else f"{label}-{zone.split(':')[1]}"
            try:
                max_uj = int(_read_text(os.path.join(path, "max_energy_range_uj")))
                counter = _WrapCounter(max_uj)
                counter.update(int(_read_text(os.path.join(path, "energy_uj"))))
            except PermissionError:
                self.unavailable[domain] = f"{path}/energy_uj not readable ({RAPL_PERMISSION_HINT})"
                continue
            except (OSError, ValueError) as e:
                self.unavailable[domain] = f"{path}/energy_uj unreadable: {e}"
                continue
            self._paths[domain], self._counters[domain] = os.path.join(path, "energy_uj"), counter
            self.sources[domain], self.update_periods_s[domain] = "rapl", 0.001  # RAPL updates about every ms.
        self.counter_domains = tuple(self._paths)
        if not self.counter_domains:
            self.reason = "; ".join(self.unavailable.values()) or f"no RAPL {'/'.join(include)} zones under {root}"

    def read_j(self) -> dict[str, float]:
        out = {}
        for domain, path in self._paths.items():
            try:
                out[domain] = self._counters[domain].update(int(_read_text(path))) / 1e6
            except (OSError, ValueError) as e:
                raise SensorError(f"{domain}: {e}") from e
        return out


_NVML_VALUE_FIELDS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")  # By nvmlValueType_t.


class NvmlSensor(Sensor):
    """NVIDIA GPUs through NVML, per device: the total-energy counter (Volta and newer, mJ) when supported, else
    instant power (field NVML_FI_DEV_POWER_INSTANT, mW) polled, else `nvmlDeviceGetPowerUsage` polled and labelled
    averaged: it is a 1-s running average, so short windows smear and it is a last resort.

    `indices` are NVML indices (default: CUDA_VISIBLE_DEVICES when it lists integers, else every GPU); NVML ignores
    CUDA_VISIBLE_DEVICES, so on a shared node name the job's GPUs or the others' energy is counted too.
    """

    name, device = "nvml", "gpu"

    def __init__(self, indices: list[int] | None = None, *, nvml: Any = None) -> None:
        super().__init__()
        self._handles: dict[str, Any] = {}
        self._initialised = False
        try:
            self._nvml = nvml = nvml or importlib.import_module("pynvml")
            nvml.nvmlInit()
            self._initialised = True
            count = nvml.nvmlDeviceGetCount()
        except ImportError as e:
            self.reason = f"pynvml not installed ({e})"
            return
        except Exception as e:  # NVMLError and its per-code subclasses: no driver, no library, no permission.
            self.reason = f"NVML unusable: {e} (no NVIDIA driver or GPU?)"
            return
        if indices is None:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").replace(" ", "")
            indices = [int(i) for i in visible.split(",")] if visible.replace(",", "").isdigit() else range(count)
        for i in indices:
            domain = f"gpu{i}"
            try:
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
            except nvml.NVMLError as e:
                self.unavailable[domain] = f"NVML handle for GPU {i}: {e}"
                continue
            for source, probe in (("nvml-energy-counter", nvml.nvmlDeviceGetTotalEnergyConsumption),
                                  ("nvml-power-polling", self._instant_mw),
                                  ("nvml-averaged-power-polling", nvml.nvmlDeviceGetPowerUsage)):
                try:
                    probe(handle)
                except nvml.NVMLError as e:
                    self.unavailable[domain] = f"no energy counter or power reading: {e}"
                    continue
                self.unavailable.pop(domain, None)
                self._handles[domain], self.sources[domain] = handle, source
                self.update_periods_s[domain] = 1.0 if source.startswith("nvml-averaged") else 0.1
                break
        self.counter_domains = tuple(d for d, s in self.sources.items() if s == "nvml-energy-counter")
        self.power_domains = tuple(d for d, s in self.sources.items() if s != "nvml-energy-counter")
        if not self.available:
            self.reason = "; ".join(self.unavailable.values()) or "NVML lists no GPU"

    def _instant_mw(self, handle: Any) -> float:
        value = self._nvml.nvmlDeviceGetFieldValues(handle, [self._nvml.NVML_FI_DEV_POWER_INSTANT])[0]
        if value.nvmlReturn != self._nvml.NVML_SUCCESS:
            raise self._nvml.NVMLError(value.nvmlReturn)
        return float(getattr(value.value, _NVML_VALUE_FIELDS[value.valueType]))

    def read_j(self) -> dict[str, float]:
        try:
            return {d: self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handles[d]) / 1e3
                    for d in self.counter_domains}
        except self._nvml.NVMLError as e:
            raise SensorError(str(e)) from e

    def read_w(self) -> dict[str, float]:
        try:
            return {d: (self._instant_mw(self._handles[d]) if self.sources[d] == "nvml-power-polling"
                        else self._nvml.nvmlDeviceGetPowerUsage(self._handles[d])) / 1e3
                    for d in self.power_domains}
        except self._nvml.NVMLError as e:
            raise SensorError(str(e)) from e

    def close(self) -> None:
        if self._initialised:
            self._initialised = False
            self._nvml.nvmlShutdown()


class FakeClock:
    """A clock for tests: call it for the time in seconds, `advance(s)` to move it (usable as `sleep`)."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class FakeSensor(Sensor):
    """Deterministic sensor: power per domain in W (a constant or a function of the clock's time).

    mode 'counter' integrates that power exactly for constant or linear power (Simpson's rule between reads) and, with
    `counter_max_j`, wraps like RAPL; mode 'power' returns the power. Set `failing` to make reads raise SensorError.
    """

    def __init__(self, power_w: Mapping[str, float | Callable[[float], float]], clock: Callable[[], float], *,
                 mode: str = COUNTER, device: str = "gpu", counter_max_j: float | None = None,
                 update_period_s: float = 0.0, failing: bool = False, name: str = "fake") -> None:
        super().__init__()
        if mode not in (COUNTER, POWER):
            raise ValueError(f"mode must be {COUNTER!r} or {POWER!r}, got {mode!r}")
        self.name, self.device, self.failing, self._clock = name, device, failing, clock
        self._power = {d: (p if callable(p) else (lambda t, p=float(p): p)) for d, p in power_w.items()}
        self._t, self._true_j = clock(), {d: 0.0 for d in power_w}
        self._counters = {d: _WrapCounter(counter_max_j) for d in power_w}
        self._max = counter_max_j
        self.sources = {d: "fake" for d in power_w}
        self.update_periods_s = {d: update_period_s for d in power_w}
        setattr(self, "counter_domains" if mode == COUNTER else "power_domains", tuple(power_w))

    def read_j(self) -> dict[str, float]:
        t0, t1 = self._t, self._clock()
        for d, p in self._power.items():  # The true energy accrues whether or not a read succeeds.
            self._true_j[d] += (t1 - t0) / 6 * (p(t0) + 4 * p((t0 + t1) / 2) + p(t1))
        self._t = t1
        if self.failing:
            raise SensorError("fake sensor failure")
        return {d: self._counters[d].update(j % self._max if self._max else j) for d, j in self._true_j.items()}

    def read_w(self) -> dict[str, float]:
        if self.failing:
            raise SensorError("fake sensor failure")
        return {d: p(self._clock()) for d, p in self._power.items()}
