"""Which boards NvmlSensor meters (profile.nvml_gpus), the mapping it records, and the windows it flags: a stuck
counter, someone else's process on a board, all over the emulated NVML (tests/emulated_nvml.py)."""

import os
import types

import pytest

from cli import ConfigError
from emulated_nvml import Board, EmulatedNvml
from profiling.energy import EnergyMonitor
from profiling.sensors import FakeClock, NvmlSensor, parse_gpu_selection


def _nvml(*boards):
    return EmulatedNvml(list(boards), clock=FakeClock())


def _eight(overrides=None):
    return _nvml(*(Board(i, **(overrides or {}).get(i, {})) for i in range(8)))


def _device(platform="gpu", ordinal=0, bus=None, name=None):
    d = types.SimpleNamespace(platform=platform, local_hardware_id=ordinal, id=ordinal)
    if bus is not None:
        d.pci_bus_id = bus
    d.__str__ = lambda: name or f"{platform}:{ordinal}"
    return d


def _domains(sensor):
    return sorted(sensor.sources, key=lambda d: int(d[3:]))


@pytest.mark.parametrize("visible, expected", [
    (None, [f"gpu{i}" for i in range(8)]),          # unset: CUDA sees every board
    ("3", ["gpu3"]),
    ("5,1", ["gpu5", "gpu1"]),
    ("2, 4", ["gpu2", "gpu4"]),
    ("6,99,1", ["gpu6"]),                           # CUDA stops at the first entry it cannot resolve
])
def test_visible_selection_follows_cuda_visible_devices_integers(visible, expected):
    nvml = _eight()
    environ = {} if visible is None else {"CUDA_VISIBLE_DEVICES": visible}
    sensor = NvmlSensor("visible", nvml=nvml, environ=environ)
    assert [b.domain for b in sensor.boards] == expected
    assert set(sensor.sources) == set(expected)


def test_visible_selection_resolves_uuids_and_unique_prefixes():
    nvml = _eight()
    full, prefix = nvml.boards[6].uuid, nvml.boards[2].uuid[:12]
    sensor = NvmlSensor("visible", nvml=nvml, environ={"CUDA_VISIBLE_DEVICES": f"{full},{prefix}"})
    assert [b.domain for b in sensor.boards] == ["gpu6", "gpu2"]
    assert sensor.boards[0].uuid == full and sensor.boards[0].pci_bus_id == nvml.boards[6].pci_bus_id
    assert sensor.boards[0].selected_by == f"CUDA_VISIBLE_DEVICES entry {full}"
    assert sensor.boards[0].name == "NVIDIA H200"


def test_an_empty_cuda_visible_devices_meters_nothing_and_says_why():
    sensor = NvmlSensor("visible", nvml=_eight(), environ={"CUDA_VISIBLE_DEVICES": ""})
    assert not sensor.available and "CUDA_VISIBLE_DEVICES is empty" in sensor.reason


def test_a_mig_instance_in_cuda_visible_devices_is_refused():
    environ = {"CUDA_VISIBLE_DEVICES": "MIG-4f0e3b2a-1111-2222-3333-444455556666"}
    sensor = NvmlSensor("visible", nvml=_eight(), environ=environ)
    assert not sensor.available
    assert "MIG instance" in sensor.reason and "other tenants" in sensor.reason


def test_a_board_in_mig_mode_is_refused_with_its_reason():
    nvml = _eight({1: {"mig_mode": True}})
    sensor = NvmlSensor((0, 1), nvml=nvml)
    assert [b.domain for b in sensor.boards] == ["gpu0"]
    assert "MIG mode" in sensor.unavailable["gpu1"] and "other tenants" in sensor.unavailable["gpu1"]


def test_all_and_named_indices_ignore_cuda_visible_devices():
    nvml = _eight()
    environ = {"CUDA_VISIBLE_DEVICES": "0"}
    assert len(NvmlSensor("all", nvml=nvml, environ=environ).boards) == 8
    named = NvmlSensor("4,7", nvml=nvml, environ=environ)
    assert [b.domain for b in named.boards] == ["gpu4", "gpu7"] and named.host_wide
    assert named.boards[0].selected_by == "named by NVML index"
    out_of_range = NvmlSensor("8", nvml=nvml)
    assert not out_of_range.available and "NVML lists 8 GPU(s)" in out_of_range.reason


def test_jax_selection_maps_devices_by_pci_bus_id():
    nvml = _eight()
    # JAX (via CUDA) spells bus ids with a 4-digit domain, lower case; NVML with 8, upper case.
    devices = [_device(ordinal=0, bus=nvml.boards[5].pci_bus_id[4:].lower()),
               _device(ordinal=1, bus=nvml.boards[3].pci_bus_id)]
    sensor = NvmlSensor("jax", nvml=nvml, devices=devices, environ={"CUDA_VISIBLE_DEVICES": "0,1"})
    assert [b.domain for b in sensor.boards] == ["gpu5", "gpu3"]  # the bus id wins over the ordinal
    assert "by PCI bus id" in sensor.boards[0].selected_by and not sensor.host_wide


@pytest.mark.parametrize("visible, ordinals, expected", [
    ({"CUDA_VISIBLE_DEVICES": "4,6"}, [1], ["gpu6"]),    # jax_cuda_visible_devices / SLURM's local id: ordinal 1
    ({}, [2, 3], ["gpu2", "gpu3"]),
    ("uuids", [0], ["gpu7"]),
])
def test_jax_selection_maps_cuda_ordinals_through_cuda_visible_devices(visible, ordinals, expected):
    nvml = _eight()
    if visible == "uuids":
        visible = {"CUDA_VISIBLE_DEVICES": f"{nvml.boards[7].uuid},{nvml.boards[0].uuid}"}
    sensor = NvmlSensor("jax", nvml=nvml, devices=[_device(ordinal=o) for o in ordinals], environ=visible)
    assert [b.domain for b in sensor.boards] == expected
    assert "CUDA ordinal" in sensor.boards[0].selected_by


def test_jax_on_cpu_meters_no_board_and_says_why():
    sensor = NvmlSensor("jax", nvml=_eight(), devices=[_device("cpu", 0), _device("cpu", 1)])
    assert not sensor.available
    assert "JAX runs on cpu" in sensor.reason and "profile.nvml_gpus='all'" in sensor.reason


def test_the_selection_is_parsed_or_refused_naming_the_key():
    assert parse_gpu_selection("jax") == "jax" and parse_gpu_selection(" ALL ") == "all"
    assert parse_gpu_selection("0,1") == (0, 1) and parse_gpu_selection(3) == (3,)
    assert parse_gpu_selection((2, 5)) == (2, 5)
    with pytest.raises(ConfigError, match=r"profile.nvml_gpus='gpu0' is not one of"):
        parse_gpu_selection("gpu0")


def test_a_stuck_counter_gives_no_figure_and_an_incomplete_window_naming_the_board():
    clock = FakeClock()
    nvml = EmulatedNvml([Board(0, power_w=300.0, stuck_counter=True), Board(1, power_w=100.0)], clock=clock)
    monitor = EnergyMonitor([NvmlSensor("all", nvml=nvml)], clock=clock, background=False)
    monitor.begin_window("w")
    clock.advance(5.0)
    m = monitor.end_window("w")
    monitor.close()
    assert "gpu0" not in m.gpu_j and m.gpu_j["gpu1"] == pytest.approx(500.0)
    assert not m.complete and any(w.startswith("gpu0: its energy counter did not move") for w in m.warnings)


def test_a_foreign_process_on_a_metered_board_flags_the_window():
    clock = FakeClock()
    nvml = EmulatedNvml([Board(0, processes=[(os.getpid(), 2**30)]),
                         Board(1, processes=[(os.getpid(), 2**30), (424242, 2**31)])], clock=clock)
    sensor = NvmlSensor("all", nvml=nvml)
    assert list(sensor.edge_warnings()) == ["gpu1"]  # this process itself is not foreign
    monitor = EnergyMonitor([sensor], clock=clock, background=False)
    monitor.begin_window("w")
    clock.advance(5.0)
    m = monitor.end_window("w")
    monitor.close()
    assert not m.complete and m.gpu_j["gpu1"] == pytest.approx(500.0)  # the figure stays; it is flagged
    assert any(w.startswith("gpu1: compute processes of others") and "424242" in w for w in m.warnings)
    sensor.own_pids.add(424242)  # e.g. a sibling process of this job, after the run profiler gathered pids
    assert sensor.edge_warnings() == {}


def _short_window(start, align):
    clock = FakeClock(start)
    nvml = EmulatedNvml([Board(0, power_w=100.0), Board(1, power_w=50.0)], clock=clock)
    clock.advance(0.0456)  # the driver loaded earlier: ticks are not on the window's grid
    monitor = EnergyMonitor([NvmlSensor("all", nvml=nvml)], clock=clock, background=False, align_counters=align,
                            sleep=clock.advance)
    monitor.begin_window("w")
    clock.advance(0.98)
    m = monitor.end_window("w")
    monitor.close()
    return m


@pytest.mark.parametrize("start", [0.0, 0.03, 0.071, 1.234])
def test_tick_aligned_edges_measure_short_windows_exactly(start):
    """The counter moves every 100 ms: a plain read is up to one tick late at each edge (up to 150 W x 0.1 s on a
    1-s window: 10%); aligned edges interpolate within the tick. (The begin edge's wait for a tick is in the window,
    as the work that runs meanwhile is; the end edge's is not.)"""
    m = _short_window(start, align=True)
    assert 0.98 <= m.seconds <= 0.98 + 0.1 + 0.002
    assert m.avg_power_w == pytest.approx(150.0, rel=1e-3)
    assert m.gpu_j["gpu0"] == pytest.approx(100.0 * m.seconds, rel=1e-3)


def test_plain_counter_reads_of_a_short_window_are_off_by_a_tick():
    m = _short_window(0.03, align=False)  # the edges fall at different phases of the 100-ms tick
    assert m.seconds == pytest.approx(0.98) and abs(m.avg_power_w / 150.0 - 1) > 0.02


def test_short_windows_over_the_emulated_counter_are_warned():
    clock = FakeClock()
    monitor = EnergyMonitor([NvmlSensor("all", nvml=EmulatedNvml([Board(0, power_w=100.0)], clock=clock))],
                            clock=clock, background=False)
    warnings = {}
    for seconds in (0.05, 1.0, 5.0):
        monitor.begin_window("w")
        clock.advance(seconds)
        warnings[seconds] = monitor.end_window("w").warnings
    monitor.close()
    assert any("shorter than the ~0.1 s update period of gpu0" in w for w in warnings[0.05])
    assert any("energy is noisy and biased low" in w for w in warnings[1.0])
    assert warnings[5.0] == ()


def test_polled_instant_power_of_a_varying_trace_is_within_two_percent():
    """A board without the counter (pre-Volta): instant power sampled every 100 ms and integrated."""
    import math
    clock = FakeClock()
    trace = lambda t: 200.0 + 120.0 * math.sin(2.0 * t)  # noqa: E731
    nvml = EmulatedNvml([Board(0, power_w=trace, supports_energy_counter=False)], clock=clock)
    monitor = EnergyMonitor([NvmlSensor("all", nvml=nvml)], clock=clock, background=False, poll_interval_s=0.1)
    monitor.begin_window("w")
    for _ in range(100):
        clock.advance(0.1)
        monitor.poll_once()
    m = monitor.end_window("w")
    monitor.close()
    assert m.sources == {"gpu0": "nvml-power-polling"} and m.samples >= 100
    assert m.gpu_j["gpu0"] == pytest.approx(nvml.true_energy_j(0, 0.0, 10.0), rel=0.02)
