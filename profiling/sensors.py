"""Energy sensors behind one small interface: NVML (GPUs), RAPL powercap (CPU package and DRAM), and a fake.

Each sensor offers cumulative counters or instantaneous power per domain, the source label of every figure, and a
reason for every domain it cannot cover; profiling.energy.EnergyMonitor reads them at window edges (counters) or
samples them from a background thread (power). FakeSensor and FakeClock make windows deterministic in tests.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
from typing import Any, Callable, Mapping, Sequence

COUNTER, POWER = "counter", "power"
RAPL_ROOT = "/sys/class/powercap"  # where RaplSensor looks by default (tests point it elsewhere)
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
    counters_always_move = False  # True: a counter that does not move over a window is stuck, not idle
    host_wide = True  # True: the domains are the host's (RAPL, a named board list), metered by one process per host

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

    def edge_warnings(self) -> dict[str, str]:
        """Domain -> why a window touching this edge is suspect (e.g. someone else's process on the board)."""
        return {}

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
    counters_always_move = True  # A package draws power whenever the machine is on.
    refresh_interval_s = 10.0  # Ranges are ~2^32-2^38 uJ: at 10 s a wrap needs > 400 W on the smallest.

    def __init__(self, root: str | None = None, include: tuple[str, ...] = ("package", "dram")) -> None:
        super().__init__()
        root = RAPL_ROOT if root is None else root
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
GPU_SELECTIONS = ("jax", "visible", "all")  # profile.nvml_gpus: these, or NVML indices such as '0,1'
_BUS_ID = re.compile(r"^(?:([0-9a-f]{1,8}):)?([0-9a-f]{1,2}):([0-9a-f]{1,2})(?:\.([0-7]))?$", re.IGNORECASE)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def parse_bus_id(text: Any) -> tuple[int, int, int, int] | None:
    """(domain, bus, device, function) of a PCI bus id in NVML's, CUDA's or lspci's form (hex; domain and function
    optional): '00000000:19:00.0', '0000:19:00.0', '19:00.0'; None if it is not one."""
    m = _BUS_ID.match(_text(text).strip())
    if not m:
        return None
    domain, bus, device, function = m.groups()
    return int(domain or "0", 16), int(bus, 16), int(device, 16), int(function or "0", 16)


def parse_gpu_selection(spec: Any) -> str | tuple[int, ...]:
    """profile.nvml_gpus as given ('jax', 'visible', 'all', '0,1', 3 or (0, 1)) -> a selection name or indices."""
    if isinstance(spec, int) and not isinstance(spec, bool):
        return (spec,)
    if isinstance(spec, (tuple, list)) and all(isinstance(i, int) for i in spec):
        return tuple(spec)
    text = str(spec).strip().lower().replace(" ", "")
    if text in GPU_SELECTIONS:
        return text
    if re.fullmatch(r"\d+(,\d+)*", text):
        return tuple(int(i) for i in text.split(","))
    from cli import ConfigError  # The bottom package; lazily, the sensors need nothing else from it.
    raise ConfigError(f"profile.nvml_gpus={spec!r} is not one of {', '.join(map(repr, GPU_SELECTIONS))} or a list of "
                      "NVML indices such as '0,1': set it to one of those")


@dataclasses.dataclass(frozen=True)
class Board:
    """One metered GPU and how it was chosen: recorded next to every figure it contributes to."""

    domain: str  # 'gpu<NVML index>'
    index: int  # NVML index (NVML numbers boards in PCI bus order)
    uuid: str
    name: str
    pci_bus_id: str
    selected_by: str  # e.g. 'JAX device cuda:1 by PCI bus id', 'CUDA_VISIBLE_DEVICES entry GPU-1a2b...'

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class NvmlSensor(Sensor):
    """NVIDIA GPUs through NVML, per board: the total-energy counter (Volta and newer, mJ) when supported, else
    instant power (field NVML_FI_DEV_POWER_INSTANT, mW) polled, else `nvmlDeviceGetPowerUsage` polled and labelled
    averaged: it is a 1-s running average, so short windows smear and it is a last resort.

    Which boards (`gpus`; NVML knows nothing of CUDA_VISIBLE_DEVICES or of JAX, so the sensor must be told):
    - 'jax': the boards behind `devices` (default: this process's JAX devices), matched by PCI bus id where the
      device reports one, else by CUDA ordinal (`local_hardware_id`) through CUDA_VISIBLE_DEVICES as 'visible'
      resolves it. None when JAX runs on CPU: the reason says so.
    - 'visible': what CUDA_VISIBLE_DEVICES names (integers are NVML indices, which equal CUDA ordinals under
      CUDA_DEVICE_ORDER=PCI_BUS_ID; 'GPU-<uuid>' entries, or unique prefixes, by UUID; empty: none; unset: all).
    - 'all': every board on the host. NVML indices, e.g. (0, 1): those boards (a whole node, say).
    A board in MIG mode is refused: its counter is the whole board's, other tenants' included; so is a 'MIG-<uuid>'
    entry of CUDA_VISIBLE_DEVICES. `boards` records the mapping (index, UUID, name, PCI bus id, how it was chosen).

    At each window edge `edge_warnings` names boards whose compute processes are not this job's (`own_pids`, by
    default this process; NVML reports host pids, so inside a container without the host's pid namespace this
    job's own processes look foreign too, and the warning says so).
    """

    name, device = "nvml", "gpu"
    counters_always_move = True  # A board draws power even idle: a counter that does not move is stuck.

    def __init__(self, gpus: Any = "visible", *, nvml: Any = None, devices: Sequence[Any] | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        super().__init__()
        selection = parse_gpu_selection(gpus)
        self.selection = selection if isinstance(selection, str) else ",".join(map(str, selection))
        self.boards: list[Board] = []
        self.host_wide = selection != "jax"  # several processes on one host would meter the same boards
        self.own_pids: set[int] = {os.getpid()}
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
        environ = os.environ if environ is None else environ
        try:
            chosen = self._select(selection, count, devices, environ)
        except _NoBoards as e:
            self.reason = str(e)
            return
        for index, selected_by in chosen:
            self._add_board(index, selected_by)
        self.counter_domains = tuple(d for d, s in self.sources.items() if s == "nvml-energy-counter")
        self.power_domains = tuple(d for d, s in self.sources.items() if s != "nvml-energy-counter")
        if not self.available:
            self.reason = "; ".join(self.unavailable.values()) or "NVML lists no GPU"

    # -- which boards -------------------------------------------------------------------------------------------

    def _select(self, selection, count: int, devices, environ) -> list[tuple[int, str]]:
        if isinstance(selection, tuple):
            bad = [i for i in selection if not 0 <= i < count]
            if bad:
                raise _NoBoards(f"profile.nvml_gpus names NVML index {bad[0]}, but NVML lists {count} GPU(s) "
                                f"(0..{count - 1})")
            return [(i, "named by NVML index") for i in selection]
        if selection == "all":
            return [(i, "every board on the host") for i in range(count)]
        visible = self._visible(count, environ)
        if selection == "visible":
            return visible
        if devices is None:
            import jax  # Lazily: only the 'jax' selection needs it.
            devices = jax.local_devices()
        gpus = [d for d in devices if d.platform in ("gpu", "cuda", "rocm")]
        if not gpus:
            platforms = sorted({d.platform for d in devices}) or ["none"]
            raise _NoBoards(f"JAX runs on {'/'.join(platforms)}, not on a GPU: no board behind its devices "
                            "(profile.nvml_gpus='all' or NVML indices meter boards anyway)")
        by_bus = {}
        for i in range(count):
            try:
                by_bus[parse_bus_id(self._nvml.nvmlDeviceGetPciInfo(
                    self._nvml.nvmlDeviceGetHandleByIndex(i)).busId)] = i
            except Exception:  # NVMLError, or no such function
                continue
        chosen = []
        for d in gpus:
            bus = parse_bus_id(getattr(d, "pci_bus_id", "") or "")
            if bus is not None and bus in by_bus:
                chosen.append((by_bus[bus], f"JAX device {d} by PCI bus id"))
                continue
            ordinal = getattr(d, "local_hardware_id", None)
            if ordinal is None or not 0 <= ordinal < len(visible):
                self.unavailable[f"jax:{d}"] = (f"JAX device {d}: no PCI bus id and CUDA ordinal {ordinal} is not "
                                                f"among the {len(visible)} visible board(s)")
                continue
            index, how = visible[ordinal]
            chosen.append((index, f"JAX device {d}, CUDA ordinal {ordinal}, {how}"))
        if not chosen:
            raise _NoBoards("; ".join(self.unavailable.values()))
        return list(dict(chosen).items())  # one entry per board, in the devices' order

    def _visible(self, count: int, environ) -> list[tuple[int, str]]:
        """(NVML index, how) of each board CUDA_VISIBLE_DEVICES shows, in CUDA ordinal order."""
        if "CUDA_VISIBLE_DEVICES" not in environ:
            return [(i, "CUDA_VISIBLE_DEVICES unset: every board") for i in range(count)]
        text = environ["CUDA_VISIBLE_DEVICES"].replace(" ", "")
        if not text:
            raise _NoBoards("CUDA_VISIBLE_DEVICES is empty: CUDA sees no GPU")
        uuids = {}
        for i in range(count):
            try:
                uuids[_text(self._nvml.nvmlDeviceGetUUID(self._nvml.nvmlDeviceGetHandleByIndex(i)))] = i
            except Exception:  # NVMLError, or no such function
                continue
        out = []
        for entry in text.split(","):  # CUDA stops at the first entry it cannot resolve
            if entry.isdigit():
                if int(entry) >= count:
                    break
                out.append((int(entry), f"CUDA_VISIBLE_DEVICES entry {entry}"))
            elif entry.upper().startswith("MIG-"):
                raise _NoBoards(f"CUDA_VISIBLE_DEVICES names MIG instance {entry}: NVML's energy counter is the whole "
                                "board's, other tenants' included, so a MIG instance's energy cannot be metered")
            else:
                matches = [i for u, i in uuids.items() if u.upper().startswith(entry.upper() if entry.upper()
                           .startswith("GPU-") else "GPU-" + entry.upper())]
                if len(matches) != 1:
                    break
                out.append((matches[0], f"CUDA_VISIBLE_DEVICES entry {entry}"))
        if not out:
            raise _NoBoards(f"CUDA_VISIBLE_DEVICES={text!r} names no board NVML lists")
        return out

    def _add_board(self, index: int, selected_by: str) -> None:
        nvml, domain = self._nvml, f"gpu{index}"
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except nvml.NVMLError as e:
            self.unavailable[domain] = f"NVML handle for GPU {index}: {e}"
            return
        board = Board(domain, index, _text(self._try("nvmlDeviceGetUUID", handle, "")),
                      _text(self._try("nvmlDeviceGetName", handle, "")),
                      _text(getattr(self._try("nvmlDeviceGetPciInfo", handle, None), "busId", "")), selected_by)
        mig = self._try("nvmlDeviceGetMigMode", handle, None)
        if mig is not None and mig[0] == getattr(nvml, "NVML_DEVICE_MIG_ENABLE", 1):
            self.unavailable[domain] = (f"GPU {index} ({board.uuid}) is in MIG mode: NVML's energy counter is the "
                                        "whole board's, other tenants' included; not metered")
            return
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
            self.boards.append(board)
            break

    def _try(self, function: str, handle: Any, default: Any) -> Any:
        try:
            return getattr(self._nvml, function)(handle)
        except Exception:  # NVMLError, or a function this driver (or a stand-in) lacks
            return default

    # -- readings -----------------------------------------------------------------------------------------------

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

    def edge_warnings(self) -> dict[str, str]:
        """Boards running compute processes that are not this job's (`own_pids`), by domain."""
        out = {}
        for domain, handle in self._handles.items():
            processes = self._try("nvmlDeviceGetComputeRunningProcesses", handle, [])
            foreign = sorted({p.pid for p in processes} - self.own_pids)
            if foreign:
                out[domain] = (f"{domain}: compute processes of others on the board (pids {foreign[:8]}): its "
                               "energy is theirs too (inside a container NVML shows host pids, so this job's own "
                               "may be listed)")
        return out

    def close(self) -> None:
        if self._initialised:
            self._initialised = False
            self._nvml.nvmlShutdown()


class _NoBoards(Exception):
    """No board to meter; the message is the sensor's reason."""


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
    `counter_max_j`, wraps like RAPL; mode 'power' returns the power. Set `failing` to make reads raise SensorError, `stuck` for a
    counter that reads 0 forever (and is declared one that must move), `host_wide` for the host's domains.
    """

    def __init__(self, power_w: Mapping[str, float | Callable[[float], float]], clock: Callable[[], float], *,
                 mode: str = COUNTER, device: str = "gpu", counter_max_j: float | None = None,
                 update_period_s: float = 0.0, failing: bool = False, name: str = "fake",
                 host_wide: bool = False, stuck: bool = False) -> None:
        super().__init__()
        self.host_wide, self.counters_always_move, self.stuck = host_wide, stuck, stuck
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
        if self.stuck:
            return dict.fromkeys(self._true_j, 0.0)
        return {d: self._counters[d].update(j % self._max if self._max else j) for d, j in self._true_j.items()}

    def read_w(self) -> dict[str, float]:
        if self.failing:
            raise SensorError("fake sensor failure")
        return {d: p(self._clock()) for d, p in self._power.items()}
