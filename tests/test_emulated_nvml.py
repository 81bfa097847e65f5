"""The emulated NVML (tests/emulated_nvml.py) behaves as specified, and NVML consumers measure planted traces with it:
our NvmlSensor/EnergyMonitor, and Zeus's ZeusMonitor as an independent reference (skipped where zeus is absent)."""

import inspect
import math
import sys
import time

import pynvml as real_pynvml
import pytest

from emulated_nvml import Board, EmulatedNvml, installed
from profiling.energy import EnergyMonitor
from profiling.sensors import FakeClock, NvmlSensor


def _nvml(*boards, t=0.0):
    clock = FakeClock(t)
    nvml = EmulatedNvml(list(boards), clock=clock)
    nvml.nvmlInit()
    return nvml, clock


def _handle(nvml, index=0):
    return nvml.nvmlDeviceGetHandleByIndex(index)


# The API surface --------------------------------------------------------------------------------------------------


def test_constants_errors_structures_and_signatures_are_the_real_modules():
    nvml, _ = _nvml(Board(0))
    for name in ("NVML_SUCCESS", "NVML_FI_DEV_POWER_INSTANT", "NVML_FI_DEV_POWER_AVERAGE", "NVML_DEVICE_MIG_ENABLE",
                 "NVML_DEVICE_ARCH_HOPPER", "NVML_VALUE_TYPE_UNSIGNED_INT", "NVML_ERROR_NOT_SUPPORTED",
                 "NVML_POWER_SCOPE_GPU"):
        assert getattr(nvml, name) == getattr(real_pynvml, name)
    # The real classes themselves, so `except pynvml.NVMLError` catches them whichever module `pynvml` names.
    assert nvml.NVMLError is real_pynvml.NVMLError
    assert nvml.NVMLError_NotSupported is real_pynvml.NVMLError_NotSupported
    assert type(nvml.NVMLError(nvml.NVML_ERROR_NOT_SUPPORTED)) is real_pynvml.NVMLError_NotSupported
    assert nvml.c_nvmlFieldValue_t is real_pynvml.c_nvmlFieldValue_t
    assert hasattr(nvml, "_nvmlGetFunctionPointer")  # Zeus's test for the official bindings.
    for name in EmulatedNvml.emulated_functions():
        emulated = list(inspect.signature(getattr(nvml, name)).parameters)
        assert emulated == list(inspect.signature(getattr(real_pynvml, name)).parameters), name


def test_unemulated_functions_raise_function_not_found_and_are_counted():
    nvml, _ = _nvml(Board(0))
    with pytest.raises(real_pynvml.NVMLError_FunctionNotFound):
        nvml.nvmlDeviceGetTemperature(_handle(nvml), nvml.NVML_TEMPERATURE_GPU)
    assert nvml.unemulated_calls == {"nvmlDeviceGetTemperature": 1}
    assert nvml.calls["nvmlDeviceGetHandleByIndex"] == 1
    with pytest.raises(AttributeError):
        nvml.not_an_nvml_name


def test_uninitialised_before_init_and_after_the_last_shutdown():
    nvml = EmulatedNvml([Board(0)], clock=FakeClock())
    with pytest.raises(real_pynvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetCount()
    nvml.nvmlInit()
    nvml.nvmlInit()  # Reference counted, as the real library: Zeus and our sensor each init and shut down.
    handle = _handle(nvml)
    nvml.nvmlShutdown()
    assert nvml.nvmlDeviceGetCount() == 1 and nvml.initialised
    nvml.nvmlShutdown()
    with pytest.raises(real_pynvml.NVMLError_Uninitialized):
        nvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    with pytest.raises(real_pynvml.NVMLError_Uninitialized):
        nvml.nvmlShutdown()


def test_handles_by_index_uuid_and_pci_bus_id():
    nvml, _ = _nvml(Board(0), Board(1, uuid="GPU-12345678-9abc-def0-1234-56789abcdef0",
                                     pci_bus_id="0000:3b:00.0", name="NVIDIA H100 80GB HBM3"))
    assert nvml.nvmlDeviceGetCount() == 2
    h1 = _handle(nvml, 1)
    assert nvml.nvmlDeviceGetIndex(h1) == 1
    assert nvml.nvmlDeviceGetUUID(h1) == "GPU-12345678-9abc-def0-1234-56789abcdef0"
    assert nvml.nvmlDeviceGetName(h1) == "NVIDIA H100 80GB HBM3"
    assert nvml.nvmlDeviceGetName(_handle(nvml, 0)) == "NVIDIA H200"
    assert nvml.nvmlDeviceGetUUID(_handle(nvml, 0)).startswith("GPU-")
    assert nvml.nvmlDeviceGetHandleByUUID("GPU-12345678-9abc-def0-1234-56789abcdef0") is h1
    assert nvml.nvmlDeviceGetHandleByUUID(b"GPU-12345678-9abc-def0-1234-56789abcdef0") is h1
    pci = nvml.nvmlDeviceGetPciInfo(h1)
    assert isinstance(pci, real_pynvml.nvmlPciInfo_t)  # The real struct (which decodes its char arrays).
    assert (pci.busId, pci.busIdLegacy, pci.domain, pci.bus, pci.device) == (
        "00000000:3B:00.0", "0000:3B:00.0", 0, 0x3B, 0)
    for form in ("00000000:3B:00.0", "0000:3B:00.0", "0000:3b:00.0", "3B:00.0", "0000:3B:00", b"00000000:3B:00.0"):
        assert nvml.nvmlDeviceGetHandleByPciBusId(form) is h1, form
    assert nvml.nvmlDeviceGetPciInfo(_handle(nvml, 0)).busId == "00000000:19:00.0"
    with pytest.raises(real_pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetHandleByIndex(2)
    with pytest.raises(real_pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetHandleByUUID("GPU-00000000-0000-0000-0000-000000000000")
    with pytest.raises(real_pynvml.NVMLError_NotFound):
        nvml.nvmlDeviceGetHandleByPciBusId("0000:AA:00.0")
    with pytest.raises(real_pynvml.NVMLError_InvalidArgument):
        nvml.nvmlDeviceGetHandleByPciBusId("not a bus id")
    other, _ = _nvml(Board(0))
    for bad in (0, None, _handle(other)):  # Not a handle of this emulation.
        with pytest.raises(real_pynvml.NVMLError_InvalidArgument):
            nvml.nvmlDeviceGetTotalEnergyConsumption(bad)
    with pytest.raises(ValueError, match="indices"):
        EmulatedNvml([Board(1)], clock=FakeClock())
    with pytest.raises(ValueError, match="uuid"):
        EmulatedNvml([Board(0, uuid="GPU-a"), Board(1, uuid="GPU-a")], clock=FakeClock())


def test_system_architecture_and_power_limits():
    nvml, _ = _nvml(Board(0), Board(1, supports_energy_counter=False))
    assert isinstance(nvml.nvmlSystemGetDriverVersion(), str)
    h0, h1 = _handle(nvml, 0), _handle(nvml, 1)
    assert nvml.nvmlDeviceGetArchitecture(h0) == real_pynvml.NVML_DEVICE_ARCH_HOPPER
    assert nvml.nvmlDeviceGetCudaComputeCapability(h0) == (9, 0)
    assert nvml.nvmlDeviceGetArchitecture(h1) < real_pynvml.NVML_DEVICE_ARCH_VOLTA  # No counter: pre-Volta.
    assert nvml.nvmlDeviceGetPowerManagementLimit(h0) == 700_000
    assert nvml.nvmlDeviceGetPowerManagementLimitConstraints(h0) == [200_000, 700_000]
    with pytest.raises(real_pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetC2cModeInfoV(h0)  # Not a Grace Hopper module.


# Energy and power -------------------------------------------------------------------------------------------------


def test_counter_is_integer_mj_and_moves_only_on_100_ms_ticks():
    nvml, clock = _nvml(Board(0, power_w=100.0, energy_offset_mj=123_456_789))
    h = _handle(nvml)
    readings = []
    for _ in range(8):  # 0, 0.03, ..., 0.21 s: ticks at 0.1 and 0.2 s.
        readings.append(nvml.nvmlDeviceGetTotalEnergyConsumption(h) - 123_456_789)
        clock.advance(0.03)
    assert all(isinstance(r, int) for r in readings)
    assert readings == [0, 0, 0, 0, 10_000, 10_000, 10_000, 20_000]  # 100 W x 0.1 s = 10 J = 10000 mJ per tick.


def test_counter_integrates_constant_and_linear_traces():
    nvml, clock = _nvml(Board(0, power_w=100.0), Board(1, power_w=lambda t: 50.0 + 20.0 * t))
    clock.advance(5.0)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(_handle(nvml, 0)) == 500_000  # 100 W x 5 s
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(_handle(nvml, 1)) == 500_000  # 50*5 + 10*5^2 J
    assert nvml.true_energy_j(1, 1.0, 3.0) == pytest.approx(50.0 * 2 + 10.0 * (9 - 1))
    clock.advance(0.07)  # Between ticks the counter holds the last tick's integral; the truth moves on.
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(_handle(nvml, 1)) == 500_000
    assert nvml.true_energy_j(1, 0.0, clock()) > 510.0


def test_counter_starts_at_the_emulations_clock_origin():
    nvml, clock = _nvml(Board(0, power_w=lambda t: t), t=1000.0)  # The trace sees clock readings, not offsets.
    assert nvml.t_origin == 1000.0 and nvml.nvmlDeviceGetTotalEnergyConsumption(_handle(nvml)) == 0
    clock.advance(1.0)
    assert nvml.nvmlDeviceGetTotalEnergyConsumption(_handle(nvml)) == 1_000_500  # (1001^2 - 1000^2) / 2 J


def test_instant_power_field_and_averaged_power_usage():
    step = Board(0, power_w=lambda t: 0.0 if t < 1.0 else 100.0)
    nvml, clock = _nvml(step, Board(1, power_w=40.0, supports_instant_power=False))
    h0, h1 = _handle(nvml, 0), _handle(nvml, 1)
    clock.advance(1.55)
    fields = [nvml.NVML_FI_DEV_POWER_INSTANT, (nvml.NVML_FI_DEV_POWER_AVERAGE, nvml.NVML_POWER_SCOPE_GPU),
              (nvml.NVML_FI_DEV_POWER_INSTANT, nvml.NVML_POWER_SCOPE_MEMORY),
              nvml.NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, nvml.NVML_FI_DEV_MEMORY_TEMP]
    values = nvml.nvmlDeviceGetFieldValues(h0, fields)
    assert isinstance(values[0], real_pynvml.c_nvmlFieldValue_t)
    instant, average, memory, energy, temp = values
    assert (instant.nvmlReturn, instant.valueType, instant.value.uiVal) == (
        nvml.NVML_SUCCESS, nvml.NVML_VALUE_TYPE_UNSIGNED_INT, 100_000)
    assert instant.fieldId == nvml.NVML_FI_DEV_POWER_INSTANT and instant.timestamp == 1_550_000
    # The 1-s average ends on the last tick (1.5 s): half of [0.5, 1.5] at 0 W, half at 100 W.
    assert average.value.uiVal == 50_000 == nvml.nvmlDeviceGetPowerUsage(h0)
    assert (energy.valueType, energy.value.ullVal) == (nvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG, 50_000)
    assert memory.nvmlReturn == temp.nvmlReturn == nvml.NVML_ERROR_NOT_SUPPORTED
    assert nvml.nvmlDeviceGetFieldValues(h1, [nvml.NVML_FI_DEV_POWER_INSTANT])[0].nvmlReturn == \
        nvml.NVML_ERROR_NOT_SUPPORTED
    assert nvml.nvmlDeviceGetPowerUsage(h1) == 40_000


def test_board_without_counter_raises_not_supported():
    nvml, _ = _nvml(Board(0, supports_energy_counter=False, supports_power_usage=False))
    with pytest.raises(real_pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetTotalEnergyConsumption(_handle(nvml))
    with pytest.raises(nvml.NVMLError):  # The base class catches the per-code subclass.
        nvml.nvmlDeviceGetPowerUsage(_handle(nvml))


def test_stuck_counter_never_moves():
    nvml, clock = _nvml(Board(0, power_w=300.0, stuck_counter=True, energy_offset_mj=42))
    for _ in range(5):
        assert nvml.nvmlDeviceGetTotalEnergyConsumption(_handle(nvml)) == 42
        clock.advance(1.0)
    assert nvml.nvmlDeviceGetPowerUsage(_handle(nvml)) == 300_000  # Power still reads.


def test_boards_are_independent():
    nvml, clock = _nvml(Board(0, power_w=100.0), Board(1, power_w=50.0), Board(2, power_w=lambda t: 10.0 * t))
    clock.advance(2.0)
    counters = [nvml.nvmlDeviceGetTotalEnergyConsumption(_handle(nvml, i)) for i in range(3)]
    assert counters == [200_000, 100_000, 20_000]
    assert [nvml.true_energy_j(i, 0.0, 2.0) for i in range(3)] == pytest.approx([200.0, 100.0, 20.0])


# Processes, memory, MIG -------------------------------------------------------------------------------------------


def test_compute_processes_memory_and_mig_mode():
    nvml, _ = _nvml(Board(0, processes=[(1234, 2**30), (5678, None)], mig_mode=True), Board(1),
                    Board(2, mig_mode=None, name="Tesla V100-SXM2-16GB"))
    h0, h1, h2 = (_handle(nvml, i) for i in range(3))
    procs = nvml.nvmlDeviceGetComputeRunningProcesses(h0)
    assert [(p.pid, p.usedGpuMemory) for p in procs] == [(1234, 2**30), (5678, None)]
    assert nvml.nvmlDeviceGetComputeRunningProcesses(h1) == []
    memory = nvml.nvmlDeviceGetMemoryInfo(h0)
    assert (memory.used, memory.total - memory.free) == (2**30, 2**30)
    assert nvml.nvmlDeviceGetMigMode(h0) == [nvml.NVML_DEVICE_MIG_ENABLE] * 2
    assert nvml.nvmlDeviceGetMigMode(h1) == [nvml.NVML_DEVICE_MIG_DISABLE] * 2
    with pytest.raises(real_pynvml.NVMLError_NotSupported):
        nvml.nvmlDeviceGetMigMode(h2)


# Installed as pynvml ----------------------------------------------------------------------------------------------


def test_installed_replaces_and_restores_sys_modules_pynvml():
    nvml, _ = _nvml(Board(0))
    before = sys.modules.get("pynvml")
    holder = type(sys)("holder")
    holder.pynvml = before
    with installed(nvml, holder):
        import pynvml
        assert pynvml is nvml and sys.modules["pynvml"] is nvml and holder.pynvml is nvml
    assert sys.modules.get("pynvml") is before and holder.pynvml is before


# Our sensor and monitor over the emulation ------------------------------------------------------------------------


def test_nvml_sensor_and_energy_monitor_measure_two_boards(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    clock = FakeClock(0.05)  # Window edges between ticks: the counter's 0.1-s steps cancel over the window.
    nvml = EmulatedNvml([Board(0, power_w=100.0), Board(1, power_w=50.0)], clock=clock)
    sensor = NvmlSensor(nvml=nvml)
    assert sensor.sources == {"gpu0": "nvml-energy-counter", "gpu1": "nvml-energy-counter"}
    monitor = EnergyMonitor([sensor], clock=clock, background=False)
    monitor.begin_window("w")
    clock.advance(5.0)
    m = monitor.end_window("w")
    assert m.seconds == pytest.approx(5.0) and m.complete
    assert m.gpu_j == {"gpu0": pytest.approx(nvml.true_energy_j(0, 0.05, 5.05), rel=1e-9),
                       "gpu1": pytest.approx(nvml.true_energy_j(1, 0.05, 5.05), rel=1e-9)}
    assert m.avg_power_w == pytest.approx(150.0, rel=0.01)
    monitor.close()
    assert not nvml.initialised  # The sensor shut NVML down.


def test_energy_monitor_autodetects_the_installed_emulation(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    clock = FakeClock()
    nvml = EmulatedNvml([Board(0, power_w=100.0), Board(1, power_w=lambda t: 40.0 + 4.0 * t)], clock=clock)
    with installed(nvml):
        monitor = EnergyMonitor(clock=clock, background=False)  # NvmlSensor() imports pynvml itself.
    assert monitor.sources["gpu0"] == monitor.sources["gpu1"] == "nvml-energy-counter"
    monitor.begin_window("w")
    clock.advance(5.0)
    m = monitor.end_window("w")
    monitor.close()
    assert m.gpu_j == {"gpu0": pytest.approx(500.0), "gpu1": pytest.approx(40.0 * 5 + 2.0 * 25)}


def test_energy_monitor_polls_instant_power_in_real_time(monkeypatch):
    """Boards without the counter, on the real clock: the background thread samples instant power (~0.5 s)."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = EmulatedNvml([Board(0, power_w=100.0, supports_energy_counter=False),
                         Board(1, power_w=50.0, supports_energy_counter=False)], clock=time.monotonic)
    sensor = NvmlSensor(nvml=nvml)
    assert sensor.sources == {"gpu0": "nvml-power-polling", "gpu1": "nvml-power-polling"}
    with EnergyMonitor([sensor], poll_interval_s=0.05) as monitor:
        monitor.begin_window("w")
        time.sleep(0.5)
        m = monitor.end_window("w")
    assert 0.5 <= m.seconds < 5.0 and m.samples >= 2
    assert m.avg_power_w == pytest.approx(150.0, rel=0.01)  # Trapezoids of constant power are exact.
    assert nvml.calls["nvmlDeviceGetFieldValues"] >= 2 * m.samples


def test_nvml_sensor_falls_back_to_averaged_power_usage(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml, _ = _nvml(Board(0, supports_energy_counter=False, supports_instant_power=False),
                    Board(1, supports_energy_counter=False, supports_instant_power=False, supports_power_usage=False))
    sensor = NvmlSensor(nvml=nvml)
    assert sensor.sources == {"gpu0": "nvml-averaged-power-polling"}
    assert "Not Supported" in sensor.unavailable["gpu1"]
    sensor.close()


# Zeus as an independent reference ---------------------------------------------------------------------------------


@pytest.fixture
def zeus_over(monkeypatch):
    """Returns install(nvml, clock): Zeus's GPU layer over `nvml`, its window timestamps on `clock`, no CPU/RAPL.

    Zeus imports pynvml when zeus.device.gpu.nvidia is imported, caches `nvml_is_available()` and the `get_gpus()`
    singleton, and reads `time()` (imported into zeus.monitor.energy) for window timestamps: all rebound here.
    """
    pytest.importorskip("zeus.monitor", reason="zeus (pip install zeus==0.16.0) is not installed")
    import zeus.device.gpu as zeus_gpu
    import zeus.device.gpu.nvidia as zeus_nvidia
    import zeus.monitor.energy as zeus_energy
    from zeus.device.cpu.common import ZeusCPUInitError

    def no_cpus():  # RAPLCPUs would spawn a wrap-around tracking process where RAPL exists.
        raise ZeusCPUInitError("CPU measurement disabled in this test")

    for var in ("CUDA_VISIBLE_DEVICES", "ZEUSD_SOCK_PATH", "ZEUSD_HOST_PORT", "ZEUSD_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(zeus_energy, "get_cpus", no_cpus)
    monkeypatch.setattr(zeus_gpu, "_gpus", None)
    stack = []

    def install(nvml, clock):
        monkeypatch.setattr(zeus_energy, "time", clock)
        zeus_nvidia.nvml_is_available.cache_clear()
        context = installed(nvml, zeus_nvidia)
        context.__enter__()
        stack.append(context)

    yield install
    for context in stack:
        context.__exit__(None, None, None)
    zeus_nvidia.nvml_is_available.cache_clear()


def test_zeus_monitor_agrees_with_energy_monitor(zeus_over):
    from zeus.monitor import ZeusMonitor
    clock = FakeClock(1000.05)
    nvml = EmulatedNvml([Board(0, power_w=100.0), Board(1, power_w=50.0)], clock=clock)
    zeus_over(nvml, clock)
    zeus = ZeusMonitor(gpu_indices=[0, 1], cpu_indices=[])
    ours = EnergyMonitor([NvmlSensor(nvml=nvml)], clock=clock, background=False)
    ours.begin_window("w")
    zeus.begin_window("w", sync_execution=False)  # Syncing needs torch, or jax with a GPU.
    clock.advance(5.0)
    theirs = zeus.end_window("w", sync_execution=False)
    m = ours.end_window("w")
    ours.close()
    assert theirs.time == pytest.approx(5.0) and m.seconds == pytest.approx(5.0)
    assert theirs.gpu_energy == {0: pytest.approx(500.0), 1: pytest.approx(250.0)}
    assert m.gpu_j["gpu0"] == pytest.approx(theirs.gpu_energy[0], rel=0.01)
    assert m.gpu_j["gpu1"] == pytest.approx(theirs.gpu_energy[1], rel=0.01)
    assert theirs.total_energy / theirs.time == pytest.approx(m.avg_power_w, rel=0.01) == 150.0
    # What Zeus needs at start and per window: nothing the emulation lacks.
    assert not nvml.unemulated_calls
    assert {"nvmlInit", "nvmlDeviceGetCount", "nvmlDeviceGetHandleByIndex", "nvmlDeviceGetC2cModeInfoV",
            "nvmlDeviceGetArchitecture", "nvmlDeviceGetTotalEnergyConsumption"} <= set(nvml.calls)
    assert not math.isnan(m.total_j)
