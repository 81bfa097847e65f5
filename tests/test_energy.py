"""Energy monitor on fake sensors and a fake clock: windows, wrap-around, polling, failures, RAPL and NVML paths."""

import json
import math
import sys
import time
import types

import numpy as np
import pytest

from profiling import energy, sensors
from profiling.energy import EnergyMonitor, FakeClock, FakeSensor, NvmlSensor, RaplSensor


def _monitor(*sensors, clock, **kwargs):
    return EnergyMonitor(list(sensors), clock=clock, background=False, **kwargs)


def _window(monitor, clock, name, seconds):
    monitor.begin_window(name)
    clock.advance(seconds)
    return monitor.end_window(name)


def test_counter_window_integrates_constant_power_exactly():
    clock = FakeClock(100.0)
    gpu = FakeSensor({"gpu0": 250.0, "gpu1": 200.0}, clock)
    cpu = FakeSensor({"package-0": 50.0, "dram-0": 5.0}, clock, device="cpu")
    monitor = _monitor(gpu, cpu, clock=clock)
    m = _window(monitor, clock, "train", 10.0)
    assert m.seconds == 10.0
    assert m.gpu_j == {"gpu0": 2500.0, "gpu1": 2000.0}
    assert m.cpu_j == {"package-0": 500.0, "dram-0": 50.0}
    assert m.sources == dict.fromkeys(["gpu0", "gpu1", "package-0", "dram-0"], "fake")
    assert (m.samples, m.complete, m.warnings) == (0, True, ())
    assert (m.gpu_total_j, m.cpu_total_j, m.total_j, m.avg_power_w) == (4500.0, 550.0, 5050.0, 505.0)
    assert json.loads(json.dumps(m.to_dict()))["total_j"] == 5050.0


def test_counter_integrates_linear_power_exactly():
    clock = FakeClock()
    monitor = _monitor(FakeSensor({"gpu0": lambda t: 100.0 + 10.0 * t}, clock), clock=clock)
    assert _window(monitor, clock, "w", 10.0).gpu_j["gpu0"] == pytest.approx(1500.0, rel=1e-12)


def test_polling_integrates_power_within_tolerance():
    clock = FakeClock()
    sensor = FakeSensor({"gpu0": lambda t: 200.0 + 50.0 * math.sin(t)}, clock, mode="power")
    monitor = _monitor(sensor, clock=clock, poll_interval_s=0.1)
    monitor.begin_window("w")
    for _ in range(99):
        clock.advance(0.1)
        monitor.poll_once()
    clock.advance(0.1)
    m = monitor.end_window("w")
    exact = 200.0 * 10.0 + 50.0 * (1.0 - math.cos(10.0))
    assert m.gpu_j["gpu0"] == pytest.approx(exact, rel=1e-3)
    assert (m.samples, m.complete, m.warnings) == (101, True, ())


def test_counter_wraparound_between_edges_and_with_refreshes():
    clock = FakeClock()
    sensor = FakeSensor({"package-0": 300.0}, clock, device="cpu", counter_max_j=1000.0)
    monitor = _monitor(sensor, clock=clock)
    clock.advance(2.0)  # Raw counter at 600 J; the window takes it past 1000 and back to 200.
    assert _window(monitor, clock, "one-wrap", 2.0).cpu_j["package-0"] == pytest.approx(600.0)
    sensor.refresh_interval_s = 1.0  # Several wraps per window need reads in between, as RAPL's refresh does.
    monitor = _monitor(sensor, clock=clock)
    monitor.begin_window("many-wraps")
    for _ in range(10):
        clock.advance(1.0)
        monitor.poll_once()
    assert monitor.end_window("many-wraps").cpu_j["package-0"] == pytest.approx(3000.0)


def test_no_sensor_windows_time_but_report_no_energy(tmp_path):
    clock = FakeClock()
    rapl = RaplSensor(root=str(tmp_path / "no-powercap"))
    monitor = EnergyMonitor([rapl], clock=clock)
    assert not monitor.available and monitor._thread is None
    assert "not found" in monitor.unavailable["rapl"]
    m = _window(monitor, clock, "w", 3.0)
    assert (m.seconds, m.gpu_j, m.cpu_j, m.sources, m.available) == (3.0, {}, {}, {}, False)
    assert math.isnan(m.total_j) and math.isnan(m.avg_power_w)
    assert m.to_dict()["total_j"] is None and m.to_dict()["unavailable"] == monitor.unavailable
    assert m.warnings == ()  # No energy, so nothing to warn about its quality.


def test_autodetect_explains_every_missing_sensor():
    monitor = EnergyMonitor(background=False)
    try:
        assert {"nvml", "rapl"} <= {s.name for s in monitor.sensors} | set(monitor.unavailable)
        assert all(monitor.unavailable.values())  # Every missing sensor or domain says why.
    finally:
        monitor.close()


def test_nested_and_overlapping_windows():
    clock = FakeClock()
    monitor = _monitor(FakeSensor({"gpu0": 100.0}, clock), clock=clock)
    monitor.begin_window("epoch")
    clock.advance(1.0)
    monitor.begin_window("a")
    clock.advance(1.0)
    monitor.begin_window("step")
    clock.advance(2.0)
    step = monitor.end_window("step")
    monitor.begin_window("b")
    clock.advance(2.0)
    a = monitor.end_window("a")  # Overlaps b: a opened first, closes first.
    clock.advance(3.0)
    b = monitor.end_window("b")
    epoch = monitor.end_window("epoch")
    assert [(m.name, m.seconds, m.gpu_j["gpu0"]) for m in (step, a, b, epoch)] == [
        ("step", 2.0, 200.0), ("a", 5.0, 500.0), ("b", 5.0, 500.0), ("epoch", 9.0, 900.0)]


def test_window_name_errors_and_context_manager():
    clock = FakeClock()
    monitor = _monitor(FakeSensor({"gpu0": 10.0}, clock), clock=clock)
    monitor.begin_window("w")
    with pytest.raises(ValueError, match="already open"):
        monitor.begin_window("w")
    with pytest.raises(KeyError, match="no open energy window 'x'"):
        monitor.end_window("x")
    monitor.end_window("w")
    with monitor.window("ctx") as w:
        clock.advance(5.0)
    assert (w.measurement.seconds, w.measurement.gpu_j) == (5.0, {"gpu0": 50.0})
    with pytest.raises(RuntimeError):
        with monitor.window("ctx"):
            raise RuntimeError("step failed")
    monitor.begin_window("ctx")  # The failed block's window was discarded, so the name is free again.


def test_sync_runs_before_each_edge():
    import jax.numpy as jnp
    clock = FakeClock()
    calls = []
    monitor = _monitor(FakeSensor({"gpu0": 1.0}, clock), clock=clock, sync=lambda: calls.append("default"))
    monitor.begin_window("w")
    monitor.end_window("w", sync=lambda: calls.append("override"))
    assert calls == ["default", "override"]
    monitor.begin_window("arrays", sync=[jnp.ones(3) * 2])  # Arrays go through jax.block_until_ready.
    assert monitor.end_window("arrays", sync={"x": jnp.zeros(2)}).seconds == 0.0


def test_counter_failure_at_edge_gives_no_figure_and_incomplete():
    clock = FakeClock()
    bad = FakeSensor({"gpu0": 100.0}, clock)
    good = FakeSensor({"package-0": 10.0}, clock, device="cpu")
    monitor = _monitor(bad, good, clock=clock)
    monitor.begin_window("w")
    clock.advance(5.0)
    bad.failing = True
    m = monitor.end_window("w")
    assert m.gpu_j == {} and m.cpu_j == {"package-0": 50.0} and not m.complete
    assert any("gpu0: no figure" in w for w in m.warnings) and any("failed reads" in w for w in m.warnings)
    bad.failing = False
    assert _window(monitor, clock, "after", 5.0).complete  # Failures before a window do not taint it.


def test_polling_failures_and_gaps_mark_window_incomplete():
    clock = FakeClock()
    sensor = FakeSensor({"gpu0": 100.0}, clock, mode="power")
    monitor = _monitor(sensor, clock=clock, poll_interval_s=0.1)
    monitor.begin_window("failing")
    for i in range(30):
        sensor.failing = 10 <= i < 12
        clock.advance(0.1)
        monitor.poll_once()
    m = monitor.end_window("failing")
    assert m.gpu_j["gpu0"] == pytest.approx(300.0) and not m.complete
    assert any("2 failed reads" in w for w in m.warnings)
    monitor.begin_window("gap")
    clock.advance(1.0)  # Nobody polled: the thread was starved for ten periods.
    m = monitor.end_window("gap")
    assert m.gpu_j["gpu0"] == pytest.approx(100.0) and not m.complete
    assert any("polling gaps" in w for w in m.warnings)


def test_short_windows_warn():
    clock = FakeClock()
    monitor = _monitor(FakeSensor({"gpu0": 100.0}, clock, update_period_s=1.0), clock=clock)
    (warning,) = _window(monitor, clock, "tiny", 0.4).warnings
    assert "0.40 s is shorter than the ~1 s update period of gpu0" in warning
    (warning,) = _window(monitor, clock, "short", 1.5).warnings
    assert "noisy" in warning
    m = _window(monitor, clock, "ok", 5.0)
    assert m.warnings == () and m.complete  # Quality caveats are warnings; they do not make a window incomplete.


def test_idle_baseline_and_dynamic_energy():
    clock = FakeClock()
    sensor = FakeSensor({"gpu0": lambda t: 60.0 if t < 10.0 else 300.0}, clock)
    monitor = _monitor(sensor, FakeSensor({"package-0": 20.0}, clock, device="cpu"), clock=clock)
    assert monitor.measure_idle(5.0, sleep=clock.advance) == {"gpu0": 60.0, "package-0": 20.0}
    clock.advance(5.0)
    m = _window(monitor, clock, "train", 10.0)
    assert m.gpu_j == {"gpu0": pytest.approx(3000.0)} and m.idle_w == {"gpu0": 60.0, "package-0": 20.0}
    assert m.dynamic_j() == {"gpu0": pytest.approx(2400.0), "package-0": pytest.approx(0.0)}
    assert m.dynamic_j({"gpu0": 100.0}) == {"gpu0": pytest.approx(2000.0)}  # Another baseline, e.g. from a config.
    assert m.to_dict()["dynamic_j"]["gpu0"] == pytest.approx(2400.0)


def test_background_thread_samples_and_close_stops_it():
    sensor = FakeSensor({"gpu0": 50.0}, time.monotonic, mode="power")
    monitor = EnergyMonitor([sensor], poll_interval_s=0.01)
    thread = monitor._thread
    monitor.begin_window("w")
    time.sleep(0.2)
    m = monitor.end_window("w")
    monitor.close()
    assert not thread.is_alive() and m.samples >= 3  # Two edges plus at least one sample from the thread.
    assert m.gpu_j["gpu0"] == pytest.approx(50.0 * m.seconds)


def _rapl_tree(root, zones):
    for zone, (name, energy_uj, max_uj) in zones.items():
        (root / zone).mkdir(parents=True)
        (root / zone / "name").write_text(name + "\n")
        (root / zone / "energy_uj").write_text(f"{energy_uj}\n")
        (root / zone / "max_energy_range_uj").write_text(f"{max_uj}\n")


def test_rapl_sensor_reads_package_and_dram_with_wrap(tmp_path):
    _rapl_tree(tmp_path, {"intel-rapl:0": ("package-0", 900_000_000, 1_000_000_000),
                          "intel-rapl:0:0": ("core", 5, 1_000_000_000),
                          "intel-rapl:0:1": ("dram", 1_000_000, 1_000_000_000),
                          "intel-rapl:1": ("psys", 7, 1_000_000_000)})
    (tmp_path / "intel-rapl").mkdir()  # The control-type directory sits next to the zones and is not one.
    sensor = RaplSensor(root=str(tmp_path))
    assert sensor.counter_domains == ("package-0", "dram-0") and sensor.sources == dict.fromkeys(sensor.counter_domains,
                                                                                                  "rapl")
    clock = FakeClock()
    monitor = _monitor(sensor, clock=clock)
    monitor.begin_window("w")
    clock.advance(10.0)
    (tmp_path / "intel-rapl:0" / "energy_uj").write_text("100000000\n")  # Wrapped: 900 J -> 1000 J -> 100 J.
    (tmp_path / "intel-rapl:0:1" / "energy_uj").write_text("31000000\n")
    m = monitor.end_window("w")
    assert m.cpu_j == {"package-0": pytest.approx(200.0), "dram-0": pytest.approx(30.0)}
    assert m.gpu_j == {} and m.complete


def test_rapl_unreadable_energy_is_unavailable_with_reason(tmp_path, monkeypatch):
    _rapl_tree(tmp_path, {"intel-rapl:0": ("package-0", 1, 1000)})
    real_read = sensors._read_text

    def read(path):  # chmod cannot deny root, so deny the read the way Linux >= 5.10 does for non-root users.
        if path.endswith("energy_uj"):
            raise PermissionError(13, "Permission denied", path)
        return real_read(path)

    monkeypatch.setattr(sensors, "_read_text", read)
    sensor = RaplSensor(root=str(tmp_path))
    assert not sensor.available
    assert "energy_uj not readable (root only since Linux 5.10" in sensor.unavailable["package-0"]
    assert EnergyMonitor([sensor]).unavailable == {"rapl": sensor.reason}


class _StubNvml(types.ModuleType):
    """pynvml's surface as NvmlSensor uses it; devices are 'counter', 'instant', 'averaged' or 'none'."""

    NVML_SUCCESS, NVML_FI_DEV_POWER_INSTANT = 0, 186

    class NVMLError(Exception):
        pass

    def __init__(self, kinds, clock, power_w=100.0, init_error=None):
        super().__init__("pynvml")
        self.kinds, self.clock, self.power_w, self.init_error, self.shutdowns = kinds, clock, power_w, init_error, 0

    def nvmlInit(self):
        if self.init_error:
            raise self.NVMLError(self.init_error)

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return len(self.kinds)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        if self.kinds[handle] != "counter":
            raise self.NVMLError("Not Supported")
        return round(self.power_w * self.clock() * 1e3)

    def nvmlDeviceGetFieldValues(self, handle, field_ids):
        assert field_ids == [self.NVML_FI_DEV_POWER_INSTANT]
        ok = self.kinds[handle] == "instant"
        return [types.SimpleNamespace(nvmlReturn=0 if ok else 3, valueType=1,
                                      value=types.SimpleNamespace(uiVal=round(self.power_w * 1e3)))]

    def nvmlDeviceGetPowerUsage(self, handle):
        if self.kinds[handle] not in ("instant", "averaged"):
            raise self.NVMLError("Not Supported")
        return round(self.power_w * 1e3)


def test_nvml_sensor_chooses_counter_then_instant_then_averaged(monkeypatch):
    clock = FakeClock(1000.0)
    stub = _StubNvml(["counter", "instant", "averaged", "none"], clock)
    monkeypatch.setitem(sys.modules, "pynvml", stub)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    sensor = NvmlSensor()
    assert sensor.sources == {"gpu0": "nvml-energy-counter", "gpu1": "nvml-power-polling",
                              "gpu2": "nvml-averaged-power-polling"}
    assert (sensor.counter_domains, sensor.power_domains) == (("gpu0",), ("gpu1", "gpu2"))
    assert "Not Supported" in sensor.unavailable["gpu3"]
    monitor = _monitor(sensor, clock=clock, poll_interval_s=0.5)
    monitor.begin_window("w")
    for _ in range(4):
        clock.advance(0.5)
        monitor.poll_once()
    m = monitor.end_window("w")
    assert m.gpu_j == {"gpu0": pytest.approx(200.0), "gpu1": pytest.approx(200.0), "gpu2": pytest.approx(200.0)}
    assert m.samples == 6 and m.unavailable == {"gpu3": sensor.unavailable["gpu3"]}
    monitor.close()
    assert stub.shutdowns == 1


def test_nvml_respects_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    sensor = NvmlSensor(nvml=_StubNvml(["counter", "counter"], FakeClock()))
    assert sensor.counter_domains == ("gpu1",)


def test_nvml_init_failure_is_unavailable_with_reason(monkeypatch):
    stub = _StubNvml(["counter"], FakeClock(), init_error="Driver Not Loaded")
    monkeypatch.setitem(sys.modules, "pynvml", stub)
    sensor = NvmlSensor()
    assert not sensor.available and "Driver Not Loaded" in sensor.reason
    monitor = EnergyMonitor([sensor])
    assert not monitor.available and "NVML unusable: Driver Not Loaded" in monitor.unavailable["nvml"]
    assert stub.shutdowns == 0  # Never initialised, so nothing to shut down.


def test_idle_baseline_waits_to_settle_and_records_its_spread():
    """A device still warm from start-up draws more for a while: the settle period keeps that out of the baseline,
    and the parts' spread says how steady idle is."""
    clock = FakeClock()
    power = lambda t: 200.0 if t < 2.0 else 40.0 + (t - 2.0)  # noqa: E731  (linear: integrated exactly)
    monitor = _monitor(FakeSensor({"gpu0": power}, clock), clock=clock)
    idle = monitor.measure_idle(4.0, settle_s=2.0, parts=4, sleep=clock.advance)
    assert idle == {"gpu0": pytest.approx(42.0)}
    assert monitor.idle_w_std["gpu0"] == pytest.approx(np.std([40.5, 41.5, 42.5, 43.5], ddof=1))
    assert monitor.idle_measurement.seconds == pytest.approx(4.0)
    clock = FakeClock()
    unsettled = _monitor(FakeSensor({"gpu0": power}, clock), clock=clock)
    assert unsettled.measure_idle(4.0, parts=4, sleep=clock.advance)["gpu0"] > 100.0


def test_rolled_windows_share_their_edge_and_a_failed_read_spoils_only_one():
    class Flaky(FakeSensor):
        fail_next_read = False

        def read_j(self):
            self.failing, self.fail_next_read = self.fail_next_read, False
            return super().read_j()

    clock = FakeClock()
    sensor = Flaky({"gpu0": 80.0}, clock)
    monitor = _monitor(sensor, clock=clock)
    monitor.begin_window("w")
    clock.advance(2.0)
    first = monitor.roll_window("w")
    clock.advance(3.0)
    second = monitor.roll_window("w")
    assert (first.seconds, second.seconds) == (2.0, 3.0)
    assert first.gpu_j["gpu0"] + second.gpu_j["gpu0"] == pytest.approx(80.0 * 5.0)
    clock.advance(1.0)
    sensor.fail_next_read = True  # the edge that ends the third window fails; the fourth starts on a fresh read
    third = monitor.roll_window("w")
    clock.advance(1.0)
    fourth = monitor.end_window("w")
    assert "gpu0" not in third.gpu_j and not third.complete
    assert fourth.gpu_j["gpu0"] == pytest.approx(80.0 * 1.0) and fourth.complete
