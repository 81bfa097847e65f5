"""An emulated NVML for tests: a stand-in for the `pynvml` module (nvidia-ml-py) driven by planted power traces.

    boards = [Board(0, power_w=100.0), Board(1, power_w=lambda t: 50.0 + 10.0 * t)]
    nvml = EmulatedNvml(boards, clock=fake_clock)     # behaves as the pynvml module
    with installed(nvml):                              # sys.modules["pynvml"] is the emulation inside
        ...code that does `import pynvml`...

What is copied from the real module (so `except pynvml.NVMLError` and `pynvml.NVML_*` work in any code, and objects
have the real shapes): every constant, the `NVMLError` class and its per-code subclasses (`NVMLError(3)` is an
`NVMLError_NotSupported`, as in the real module), and the ctypes structures, which the emulated functions return
(`nvmlPciInfo_t` with `busId` '00000000:19:00.0' and `busIdLegacy` '0000:19:00.0', arrays of `c_nvmlFieldValue_t`,
`nvmlFriendlyObject` processes).
The emulated functions keep the real names and parameter names; every other `nvml*` function of the real module
exists too but raises `NVMLError_FunctionNotFound` (what a driver without it does) and is counted in
`unemulated_calls`. Every emulated call is counted in `calls`.

Time: the power trace of a board is a constant in W or a function of the emulation's clock reading (seconds) -> W.
The emulated driver "loads" when the emulation is built: its clock reading then, `t_origin`, starts the 100-ms tick
grid and the energy counters.

- `nvmlDeviceGetTotalEnergyConsumption`: mJ, an integer that moves only on the 100-ms ticks: `energy_offset_mj` plus
  the integral of the trace from `t_origin` to the last tick at or before now, rounded down (Gauss-Legendre on
  50-ms panels: exact for traces polynomial to degree 5 in time, and for steps placed on ticks). Raises
  NotSupported without `supports_energy_counter`; with `stuck_counter` it always reads `energy_offset_mj`.
- `nvmlDeviceGetPowerUsage` and field `NVML_FI_DEV_POWER_AVERAGE`: mW, the average over the second before the last
  tick (over less right after `t_origin`).
- field `NVML_FI_DEV_POWER_INSTANT`: mW, the trace at the current clock reading (per-field `nvmlReturn`
  NOT_SUPPORTED without `supports_instant_power`); field `NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION`: the counter.

`EmulatedNvml.true_energy_j(index, t0, t1)` gives the truth: the integral of a board's trace over [t0, t1].
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import dataclasses
import functools
import math
import re
import sys
import threading
import time
import types
import uuid as uuid_module
from typing import Any, Callable, Iterator, Sequence, Union

import pynvml as _real  # nvidia-ml-py: importing it loads no library, so this works on machines without a GPU.

if not hasattr(_real, "_LoadNvmlLibrary"):
    raise ImportError("tests/emulated_nvml.py copies nvidia-ml-py's pynvml, but sys.modules['pynvml'] is "
                      f"{_real!r}: import it before installing any stand-in")

PowerTrace = Union[float, Callable[[float], float]]

TICK_S = 0.1  # The total-energy counter's update period.
AVERAGE_S = 1.0  # nvmlDeviceGetPowerUsage averages over this long.
_PANELS_PER_TICK = 2  # Gauss-Legendre panels per tick for traces given as functions.
_GAUSS_3 = ((-math.sqrt(0.6), 5 / 9), (0.0, 8 / 9), (math.sqrt(0.6), 5 / 9))  # Nodes on [-1, 1], weights.
# PCI bus numbers of the eight GPUs of an HGX H100/H200 board, for default bus ids.
_HGX_BUSES = (0x19, 0x3B, 0x4C, 0x5D, 0x9B, 0xBB, 0xCB, 0xDB)
_COMPUTE_CAPABILITY = {
    _real.NVML_DEVICE_ARCH_KEPLER: (3, 5), _real.NVML_DEVICE_ARCH_MAXWELL: (5, 2),
    _real.NVML_DEVICE_ARCH_PASCAL: (6, 0), _real.NVML_DEVICE_ARCH_VOLTA: (7, 0),
    _real.NVML_DEVICE_ARCH_TURING: (7, 5), _real.NVML_DEVICE_ARCH_AMPERE: (8, 0),
    _real.NVML_DEVICE_ARCH_ADA: (8, 9), _real.NVML_DEVICE_ARCH_HOPPER: (9, 0),
    _real.NVML_DEVICE_ARCH_BLACKWELL: (10, 0)}


@dataclasses.dataclass
class Board:
    """One emulated GPU.

    Attributes:
        index: NVML index (boards of one emulation are numbered 0..n-1).
        power_w: the power trace: W, constant or a function of the clock reading in seconds. Fixed once the
            emulation is built (the counter caches its integral).
        uuid: 'GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx'; default derived from the index.
        name: the model name nvmlDeviceGetName returns.
        pci_bus_id: 'DDDDDDDD:BB:DD.F' (NVML's form, upper-case hex); default from the bus numbers of an HGX board.
        stuck_counter: the total-energy counter never moves (some drivers and virtualised GPUs).
        supports_energy_counter: nvmlDeviceGetTotalEnergyConsumption works (Volta and newer).
        supports_instant_power: field NVML_FI_DEV_POWER_INSTANT works.
        supports_power_usage: nvmlDeviceGetPowerUsage (and field NVML_FI_DEV_POWER_AVERAGE) works.
        mig_mode: MIG on (True) or off (False), current and pending alike; None: no MIG (pre-Ampere: NotSupported).
        processes: compute processes as (pid, used GPU memory in bytes, or None as on Windows WDDM).
        architecture: NVML_DEVICE_ARCH_*; default Hopper, or Pascal for a board without the energy counter
            (Zeus decides by architecture whether to read the counter).
        power_limit_w, power_limit_range_w: power management limit (also the default and enforced one) and its
            (min, max) constraints.
        memory_total_bytes: nvmlDeviceGetMemoryInfo's total (143771 MiB, an H200's); used is the processes' sum.
        energy_offset_mj: counter reading at `t_origin` (real counters count from driver load, not from zero).
    """

    index: int
    power_w: PowerTrace = 100.0
    uuid: str = ""
    name: str = "NVIDIA H200"
    pci_bus_id: str = ""
    stuck_counter: bool = False
    supports_energy_counter: bool = True
    supports_instant_power: bool = True
    supports_power_usage: bool = True
    mig_mode: bool | None = False
    processes: Sequence[tuple[int, int | None]] = ()
    architecture: int | None = None
    power_limit_w: float = 700.0
    power_limit_range_w: tuple[float, float] = (200.0, 700.0)
    memory_total_bytes: int = 143771 * 2**20
    energy_offset_mj: int = 0
    pci_device_id: int = 0x233510DE  # (device << 16) | vendor: GH100 [H200 SXM 141GB], NVIDIA.

    def __post_init__(self) -> None:
        if not self.uuid:
            self.uuid = f"GPU-{uuid_module.uuid5(uuid_module.NAMESPACE_OID, f'emulated-nvml-{self.index}')}"
        if not self.pci_bus_id:
            bus = _HGX_BUSES[self.index] if self.index < len(_HGX_BUSES) else 0x100 - len(_HGX_BUSES) + self.index
            self.pci_bus_id = f"00000000:{bus:02X}:00.0"
        self.pci_bus_id = _format_bus_id(_parse_bus_id(self.pci_bus_id, strict=True))
        if self.architecture is None:
            self.architecture = (_real.NVML_DEVICE_ARCH_HOPPER if self.supports_energy_counter
                                 else _real.NVML_DEVICE_ARCH_PASCAL)

    def power_at(self, t: float) -> float:
        """The trace at clock reading `t`, in W."""
        return float(self.power_w(t)) if callable(self.power_w) else float(self.power_w)

    def energy_j(self, t0: float, t1: float, panels: int | None = None) -> float:
        """Integral of the trace over [t0, t1] in J: 3-point Gauss-Legendre on panels of at most 50 ms, exact for
        traces polynomial to degree 5 in time within each panel; never evaluated at panel ends, so a step placed
        on a 100-ms tick is integrated exactly too."""
        if not callable(self.power_w):
            return float(self.power_w) * (t1 - t0)
        if panels is None:
            panels = max(1, math.ceil(abs(t1 - t0) / TICK_S * _PANELS_PER_TICK - 1e-9))
        h = (t1 - t0) / panels
        total = 0.0
        for k in range(panels):
            mid = t0 + (k + 0.5) * h
            total += sum(w * self.power_at(mid + x * h / 2) for x, w in _GAUSS_3)
        return total * h / 2


_BUS_ID = re.compile(r"^(?:([0-9a-f]{1,8}):)?([0-9a-f]{1,2}):([0-9a-f]{1,2})(?:\.([0-7]))?$", re.IGNORECASE)


def _parse_bus_id(text: str | bytes, strict: bool = False) -> tuple[int, int, int, int] | None:
    """(domain, bus, device, function) from the forms nvmlDeviceGetHandleByPciBusId accepts (hex, domain and
    function optional): '00000000:19:00.0', '0000:19:00.0', '19:00.0', '0000:19:00'."""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    m = _BUS_ID.match(text.strip())
    if not m:
        if strict:
            raise ValueError(f"not a PCI bus id: {text!r}")
        return None
    domain, bus, device, function = m.groups()
    return int(domain or "0", 16), int(bus, 16), int(device, 16), int(function or "0", 16)


def _format_bus_id(parts: tuple[int, int, int, int], domain_digits: int = 8) -> str:
    domain, bus, device, function = parts
    return f"{domain:0{domain_digits}X}:{bus:02X}:{device:02X}.{function:X}"


class _Handle:
    """What nvmlDeviceGetHandleBy* return (the real ones are opaque `c_nvmlDevice_t` pointers)."""

    __slots__ = ("_owner", "board")

    def __init__(self, owner: EmulatedNvml, board: Board) -> None:
        self._owner, self.board = owner, board

    def __repr__(self) -> str:
        return f"<emulated c_nvmlDevice_t of GPU {self.board.index} ({self.board.uuid})>"


class _BoardState:
    """The board's tick-resolution energy integral: `cumulative_j[k]` is the energy from t_origin to tick k."""

    def __init__(self, board: Board, t_origin: float) -> None:
        self.board, self.t_origin, self.cumulative_j = board, t_origin, [0.0]

    def tick_time(self, k: int) -> float:
        return self.t_origin + k * TICK_S

    def energy_to_tick_j(self, k: int) -> float:
        if not callable(self.board.power_w):
            return float(self.board.power_w) * k * TICK_S
        while len(self.cumulative_j) <= k:  # Extended lazily, one tick at a time.
            n = len(self.cumulative_j)
            step = self.board.energy_j(self.tick_time(n - 1), self.tick_time(n), panels=_PANELS_PER_TICK)
            self.cumulative_j.append(self.cumulative_j[-1] + step)
        return self.cumulative_j[k]


_NOT_API = {"nvmlExceptionClass", "nvmlStructToFriendlyObject", "nvmlFriendlyObjectToStruct"}  # Pure helpers.
_NOT_COPIED = {"nvmlLib", "libLoadLock", "_nvmlLib_refcount", "_nvmlGetFunctionPointer_cache", "_LoadNvmlLibrary",
               "_nvmlGetFunctionPointer", "_extractNVMLErrorsAsClasses"}


def _is_real_api(name: str) -> bool:
    return (name.startswith("nvml") and name not in _NOT_API
            and isinstance(getattr(_real, name, None), types.FunctionType))


def _api(fn: Callable) -> Callable:
    """Marks an emulated NVML function: counted in `calls`, run under the lock, Uninitialized unless initialised."""
    name = fn.__name__

    @functools.wraps(fn)
    def wrapper(self: EmulatedNvml, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            self.calls[name] += 1
            if name not in ("nvmlInit", "nvmlInitWithFlags", "nvmlErrorString") and not self._refcount:
                raise _real.NVMLError(_real.NVML_ERROR_UNINITIALIZED)
            return fn(self, *args, **kwargs)

    wrapper._emulated = True  # type: ignore[attr-defined]
    return wrapper


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


class EmulatedNvml(types.ModuleType):
    """Behaves as the `pynvml` module over `boards`, on `clock` (seconds; a `profiling.sensors.FakeClock` in tests).

    Beyond the module's API: `boards`, `t_origin`, `true_energy_j(index, t0, t1)`, `calls` and `unemulated_calls`
    (Counters of function names), `initialised` (nvmlInit refcount above zero).
    """

    driver_version = "570.133.20"
    cuda_driver_version = 12080

    def __init__(self, boards: Sequence[Board], clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__("pynvml", "Emulated NVML (tests/emulated_nvml.py) over planted power traces.")
        for key, value in vars(_real).items():  # Constants, error classes, structures, pure helpers.
            if key.startswith("__") or key in _NOT_COPIED or _is_real_api(key) or key.startswith("c_nvmlSystem"):
                continue
            self.__dict__[key] = value
        self.__file__ = __file__
        boards = sorted(boards, key=lambda b: b.index)
        if [b.index for b in boards] != list(range(len(boards))):
            raise ValueError(f"board indices must be 0..{len(boards) - 1}, got {[b.index for b in boards]}")
        for attr in ("uuid", "pci_bus_id"):
            values = [getattr(b, attr) for b in boards]
            if len(set(values)) != len(values):
                raise ValueError(f"board {attr}s must be unique, got {values}")
        self.boards: tuple[Board, ...] = tuple(boards)
        self._clock = clock
        self.t_origin = clock()
        self._states = [_BoardState(b, self.t_origin) for b in self.boards]
        self._handles = [_Handle(self, b) for b in self.boards]
        self._lock = threading.RLock()
        self._refcount = 0
        self.calls: collections.Counter[str] = collections.Counter()
        self.unemulated_calls: collections.Counter[str] = collections.Counter()

    def __repr__(self) -> str:
        return f"<EmulatedNvml pynvml over {len(self.boards)} boards>"

    def __getattr__(self, name: str) -> Any:
        """Real `nvml*` functions the emulation does not cover: raise FunctionNotFound (counted), as a driver
        without them does; anything else is an AttributeError as on the real module."""
        if _is_real_api(name):
            real = getattr(_real, name)

            def unemulated(*args: Any, **kwargs: Any) -> Any:
                with self._lock:
                    self.unemulated_calls[name] += 1
                    if not self._refcount:
                        raise _real.NVMLError(_real.NVML_ERROR_UNINITIALIZED)
                    raise _real.NVMLError(_real.NVML_ERROR_FUNCTION_NOT_FOUND)

            return functools.wraps(real)(unemulated)
        raise AttributeError(f"module 'pynvml' (emulated) has no attribute {name!r}")

    # Beyond the API -------------------------------------------------------------------------------------------

    @property
    def initialised(self) -> bool:
        return self._refcount > 0

    @classmethod
    def emulated_functions(cls) -> list[str]:
        """Names of the NVML functions this class emulates."""
        return sorted(n for n, v in vars(cls).items() if getattr(v, "_emulated", False))

    def true_energy_j(self, index: int, t0: float, t1: float) -> float:
        """The truth: the integral of board `index`'s trace over clock readings [t0, t1], in J."""
        return self.boards[index].energy_j(t0, t1)

    def _now_tick(self) -> tuple[float, int]:
        now = self._clock()
        return now, max(0, math.floor((now - self.t_origin) / TICK_S + 1e-9))

    def _board(self, handle: Any) -> Board:
        if not isinstance(handle, _Handle) or handle._owner is not self:
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        return handle.board

    def _counter_mj(self, board: Board) -> int:
        if not board.supports_energy_counter:
            raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
        if board.stuck_counter:
            return int(board.energy_offset_mj)
        _, k = self._now_tick()
        mj = self._states[board.index].energy_to_tick_j(k) * 1e3
        return int(board.energy_offset_mj) + math.floor(mj + max(1e-6, abs(mj) * 1e-12))  # Float noise below 1 mJ.

    def _average_mw(self, board: Board) -> int:
        if not board.supports_power_usage:
            raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
        _, k = self._now_tick()
        state, k0 = self._states[board.index], max(0, k - round(AVERAGE_S / TICK_S))
        if k == k0:
            return round(board.power_at(self.t_origin) * 1e3)
        joules = state.energy_to_tick_j(k) - state.energy_to_tick_j(k0)
        return round(joules / ((k - k0) * TICK_S) * 1e3)

    # Initialisation and system ------------------------------------------------------------------------------

    @_api
    def nvmlInitWithFlags(self, flags):
        self._refcount += 1

    @_api
    def nvmlInit(self):
        self._refcount += 1

    @_api
    def nvmlShutdown(self):
        self._refcount -= 1

    @_api
    def nvmlErrorString(self, result):
        return _real.NVMLError._errcode_to_string.get(result, "Unknown Error")

    def _nvmlGetFunctionPointer(self, name):
        """Present because Zeus checks for it to tell nvidia-ml-py from the unofficial `pynvml` package; there is
        no C library behind the emulation."""
        if not self._refcount:
            raise _real.NVMLError(_real.NVML_ERROR_UNINITIALIZED)
        raise _real.NVMLError(_real.NVML_ERROR_FUNCTION_NOT_FOUND)

    @_api
    def nvmlSystemGetDriverVersion(self):
        return self.driver_version

    @_api
    def nvmlSystemGetNVMLVersion(self):
        return f"{self.cuda_driver_version // 1000}.{self.driver_version}"

    @_api
    def nvmlSystemGetCudaDriverVersion(self):
        return self.cuda_driver_version

    @_api
    def nvmlSystemGetCudaDriverVersion_v2(self):
        return self.cuda_driver_version

    # Handles and identity -----------------------------------------------------------------------------------

    @_api
    def nvmlDeviceGetCount(self):
        return len(self.boards)

    @_api
    def nvmlDeviceGetHandleByIndex(self, index):
        if not isinstance(index, int) or not 0 <= index < len(self.boards):
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        return self._handles[index]

    @_api
    def nvmlDeviceGetHandleByUUID(self, uuid):
        if uuid is None:
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        for handle in self._handles:
            if handle.board.uuid == _text(uuid).strip():
                return handle
        raise _real.NVMLError(_real.NVML_ERROR_NOT_FOUND)

    @_api
    def nvmlDeviceGetHandleByPciBusId(self, pciBusId):
        parts = _parse_bus_id(pciBusId) if pciBusId is not None else None
        if parts is None:
            raise _real.NVMLError(_real.NVML_ERROR_INVALID_ARGUMENT)
        for handle in self._handles:
            if _parse_bus_id(handle.board.pci_bus_id) == parts:
                return handle
        raise _real.NVMLError(_real.NVML_ERROR_NOT_FOUND)

    @_api
    def nvmlDeviceGetIndex(self, handle):
        return self._board(handle).index

    @_api
    def nvmlDeviceGetMinorNumber(self, handle):
        return self._board(handle).index

    @_api
    def nvmlDeviceGetUUID(self, handle):
        return self._board(handle).uuid

    @_api
    def nvmlDeviceGetName(self, handle):
        return self._board(handle).name

    def _pci_info(self, handle: Any) -> Any:
        board = self._board(handle)
        domain, bus, device, _ = _parse_bus_id(board.pci_bus_id)
        return _real.nvmlPciInfo_t(
            busIdLegacy=_format_bus_id(_parse_bus_id(board.pci_bus_id), 4).encode(), domain=domain, bus=bus,
            device=device, pciDeviceId=board.pci_device_id, pciSubSystemId=0x18BE10DE,
            busId=board.pci_bus_id.encode())

    @_api
    def nvmlDeviceGetPciInfo_v3(self, handle):
        return self._pci_info(handle)

    @_api
    def nvmlDeviceGetPciInfo(self, handle):
        return self._pci_info(handle)

    @_api
    def nvmlDeviceGetArchitecture(self, device):
        return self._board(device).architecture

    @_api
    def nvmlDeviceGetCudaComputeCapability(self, handle):
        return _COMPUTE_CAPABILITY.get(self._board(handle).architecture, (0, 0))

    @_api
    def nvmlDeviceGetC2cModeInfoV(self, handle):
        self._board(handle)
        raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)  # No Grace Hopper module: no C2C link.

    @_api
    def nvmlDeviceGetC2cModeInfoV1(self, handle):
        self._board(handle)
        raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)

    # Energy and power ---------------------------------------------------------------------------------------

    @_api
    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return self._counter_mj(self._board(handle))

    @_api
    def nvmlDeviceGetPowerUsage(self, handle):
        return self._average_mw(self._board(handle))

    @_api
    def nvmlDeviceGetFieldValues(self, handle, fieldIds):
        board = self._board(handle)
        values = (_real.c_nvmlFieldValue_t * len(fieldIds))()
        now = self._clock()
        for i, field in enumerate(fieldIds):
            try:
                (values[i].fieldId, values[i].scopeId) = field
            except TypeError:
                values[i].fieldId = field
            value = values[i]
            value.timestamp, value.latencyUsec = int(now * 1e6), 0
            fid, scope = value.fieldId, value.scopeId
            power_scope = scope in (_real.NVML_POWER_SCOPE_GPU, _real.NVML_POWER_SCOPE_MODULE)
            try:
                if fid == _real.NVML_FI_DEV_POWER_INSTANT and board.supports_instant_power and power_scope:
                    value.valueType, value.value.uiVal = _real.NVML_VALUE_TYPE_UNSIGNED_INT, round(
                        board.power_at(now) * 1e3)
                elif fid == _real.NVML_FI_DEV_POWER_AVERAGE and power_scope:
                    value.valueType, value.value.uiVal = _real.NVML_VALUE_TYPE_UNSIGNED_INT, self._average_mw(board)
                elif fid == _real.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION:
                    value.valueType = _real.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG
                    value.value.ullVal = self._counter_mj(board)
                else:
                    raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
                value.nvmlReturn = _real.NVML_SUCCESS
            except _real.NVMLError as e:  # Per field, as the real call: the call itself succeeds.
                value.nvmlReturn = e.value
        return values

    @_api
    def nvmlDeviceGetPowerManagementLimit(self, handle):
        return round(self._board(handle).power_limit_w * 1e3)

    @_api
    def nvmlDeviceGetPowerManagementDefaultLimit(self, handle):
        return round(self._board(handle).power_limit_w * 1e3)

    @_api
    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return round(self._board(handle).power_limit_w * 1e3)

    @_api
    def nvmlDeviceGetPowerManagementLimitConstraints(self, handle):
        low, high = self._board(handle).power_limit_range_w
        return [round(low * 1e3), round(high * 1e3)]

    # Processes, memory, MIG ---------------------------------------------------------------------------------

    def _processes(self, handle: Any) -> list:
        out = []
        for pid, used in self._board(handle).processes:
            info = _real.c_nvmlProcessInfo_t(
                pid=pid, usedGpuMemory=_real.NVML_VALUE_NOT_AVAILABLE_ulonglong.value if used is None else used,
                gpuInstanceId=_real.NVML_VALUE_NOT_AVAILABLE_uint.value,
                computeInstanceId=_real.NVML_VALUE_NOT_AVAILABLE_uint.value)
            obj = _real.nvmlStructToFriendlyObject(info)
            if obj.usedGpuMemory == _real.NVML_VALUE_NOT_AVAILABLE_ulonglong.value:
                obj.usedGpuMemory = None  # As the real wrapper does (Windows WDDM).
            out.append(obj)
        return out

    @_api
    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return self._processes(handle)

    @_api
    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle):
        return self._processes(handle)

    @_api
    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle):
        return self._processes(handle)

    @_api
    def nvmlDeviceGetGraphicsRunningProcesses(self, handle):
        self._board(handle)
        return []

    @_api
    def nvmlDeviceGetMemoryInfo(self, handle, version=None):
        board = self._board(handle)
        used = sum(u for _, u in board.processes if u is not None)
        if not version:
            return _real.c_nvmlMemory_t(total=board.memory_total_bytes, free=board.memory_total_bytes - used,
                                        used=used)
        return _real.c_nvmlMemory_v2_t(version=version, total=board.memory_total_bytes, reserved=0,
                                       free=board.memory_total_bytes - used, used=used)

    @_api
    def nvmlDeviceGetMigMode(self, device):
        mode = self._board(device).mig_mode
        if mode is None:
            raise _real.NVMLError(_real.NVML_ERROR_NOT_SUPPORTED)
        state = _real.NVML_DEVICE_MIG_ENABLE if mode else _real.NVML_DEVICE_MIG_DISABLE
        return [state, state]

    @_api
    def nvmlDeviceIsMigDeviceHandle(self, device):
        self._board(device)
        return ctypes.c_uint(0)  # The real wrapper returns the c_uint itself; handles here are whole GPUs.


@contextlib.contextmanager
def installed(emulated: EmulatedNvml, *also_in: types.ModuleType) -> Iterator[EmulatedNvml]:
    """Puts `emulated` into sys.modules['pynvml'] (restoring what was there, or nothing, after), so code that
    imports pynvml lazily gets it. Modules that did `import pynvml` when they were imported hold the real module
    in their global `pynvml`: pass them as `also_in` to rebind it for the duration (e.g. zeus.device.gpu.nvidia)."""
    missing = object()
    saved = sys.modules.get("pynvml", missing)
    saved_globals = [(m, m.__dict__.get("pynvml", missing)) for m in also_in]
    sys.modules["pynvml"] = emulated
    for module in also_in:
        module.pynvml = emulated
    try:
        yield emulated
    finally:
        for module, value in saved_globals:
            if value is missing:
                module.__dict__.pop("pynvml", None)
            else:
                module.pynvml = value
        if saved is missing:
            sys.modules.pop("pynvml", None)
        else:
            sys.modules["pynvml"] = saved
