"""The whole job's energy sensors: which process meters what, and window figures summed over every process.

    job = job_meter.start(config.profile)       # before compiling: sensors chosen, idle baseline taken
    ...
    m = job.monitor.end_window("train")         # this process's measurement
    share = job.share(m)                        # its part of the job's figure
    shares = job.gather(share)                  # every process's, in process order (a collective; at window edges)
    total = job.combine(shares)                 # JobFigure: the job's Joules, each host's share, what is missing

Every process meters a disjoint set of domains, so that the sum over processes is the job's energy, counted once:
- `profile.nvml_gpus='jax'` (the default): each process its own JAX devices' boards (processes never share one);
- host-wide readings: RAPL (the CPU packages and DRAM of the host), and NVML boards named explicitly or with
  'all' (which every process on the host would otherwise count again), by one process per host: its lowest.
A host is what `socket.gethostname()` says, or `SV_JAX_HOST` where set (containers of one node with different
hostnames should set it to the node's name). Window edges are already sync points (the profiler blocks on a step's
outputs), so gathering there costs two small collectives per window and nothing per step.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
from typing import Any

import numpy as np

from profiling import energy as energy_lib
from profiling import sensors as sensors_lib

log = logging.getLogger(__name__)

HOST_ENV = "SV_JAX_HOST"


def host_name() -> str:
    return os.environ.get(HOST_ENV) or socket.gethostname()


def allgather_json(value: Any, process_count: int) -> list[Any]:
    """Every process's JSON-serialisable `value`, in process order (a collective when there are several)."""
    if process_count == 1:
        return [value]
    from jax.experimental import multihost_utils  # Lazily: a single process never needs it.
    data = np.frombuffer(json.dumps(value).encode(), np.uint8)
    lengths = np.asarray(multihost_utils.process_allgather(np.asarray(len(data), np.int64))).reshape(-1)
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[:len(data)] = data
    gathered = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(lengths), -1)
    return [json.loads(row[:n].tobytes().decode()) for row, n in zip(gathered, lengths)]


def barrier(name: str, process_count: int) -> None:
    """All processes reach this point before any goes on (window edges that are not at a step: evaluation)."""
    if process_count > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where this process is in the job: its index, and every process's host."""

    process_index: int
    hosts: tuple[str, ...]  # per process, in process order

    @property
    def process_count(self) -> int:
        return len(self.hosts)

    @property
    def host(self) -> str:
        return self.hosts[self.process_index]

    @property
    def meters_host(self) -> bool:
        """Whether this process is its host's lowest, the one that meters host-wide domains."""
        return self.hosts.index(self.host) == self.process_index

    @classmethod
    def of_job(cls) -> Layout:
        import jax
        count = jax.process_count()
        return cls(jax.process_index(), tuple(allgather_json(host_name(), count)))


@dataclasses.dataclass(frozen=True)
class JobFigure:
    """One window's figures for the whole job, from every process's share."""

    energy_j: float | None  # None: nothing measured anywhere, or a figure missing somewhere
    gpu_j: float | None
    cpu_j: float | None
    dynamic_j: dict[str, float] | None  # per domain ('<host>/<domain>' with several processes)
    host_j: dict[str, float] | None  # each host's share, with several processes
    sources: dict[str, str]
    complete: bool
    missing: list[str]  # domains without a figure (a read failed, a counter stuck)
    warnings: tuple[str, ...]
    measured: bool  # whether any process has a sensor


class JobMeter:
    """This process's monitor over its share of the job's domains, and how shares are combined."""

    def __init__(self, monitor: energy_lib.EnergyMonitor, layout: Layout, *, reasons: dict[str, str] | None = None):
        self.monitor, self.layout = monitor, layout
        self.not_metered_here = dict(reasons or {})  # sensor -> why this process leaves it to another
        self.meters = allgather_json(self._meters(), layout.process_count)  # every process's boards and sensors

    def _meters(self) -> dict[str, Any]:
        return {"host": self.layout.host, "process": self.layout.process_index,
                "domains": dict(self.monitor.sources),
                "boards": [b.to_dict() for s in self.monitor.sensors for b in getattr(s, "boards", [])],
                "unavailable": dict(self.monitor.unavailable), "left_to_another_process": self.not_metered_here}

    @property
    def available(self) -> bool:
        """Whether any process of the job measures anything."""
        return any(m["domains"] for m in self.meters)

    def unavailable_reason(self) -> str:
        return self.monitor.unavailable_reason()

    def _name(self, host: str, domain: str) -> str:
        return domain if self.layout.process_count == 1 else f"{host}/{domain}"

    def share(self, m: energy_lib.EnergyMeasurement, idle_w: dict[str, float] | None = None) -> dict[str, Any]:
        """This process's part of a window: its Joules, or what is missing."""
        missing = [d for d in self.monitor.sources if d not in m.sources]
        return {"host": self.layout.host, "gpu_j": sum(m.gpu_j.values()) if m.gpu_j else None,
                "cpu_j": sum(m.cpu_j.values()) if m.cpu_j else None, "sources": dict(m.sources),
                "dynamic_j": m.dynamic_j(idle_w) if idle_w else None, "complete": m.complete,
                "missing": missing, "warnings": list(m.warnings), "measured": self.monitor.available}

    def gather(self, share: dict[str, Any]) -> list[dict[str, Any]]:
        return allgather_json(share, self.layout.process_count)

    def combine(self, shares: list[dict[str, Any]]) -> JobFigure:
        """The job's figure: a sum over the processes' disjoint domains, or no total where any is missing."""
        measured = [s for s in shares if s["measured"]]
        missing = [self._name(s["host"], d) for s in measured for d in s["missing"]]
        warnings = tuple(w if len(shares) == 1 else f"process {i} ({s['host']}): {w}"
                         for i, s in enumerate(shares) for w in s["warnings"])
        sources = {self._name(s["host"], d): src for s in measured for d, src in s["sources"].items()}
        complete = all(s["complete"] for s in measured) and not missing
        if not measured or missing:
            return JobFigure(None, None, None, None, None, sources, complete, missing, warnings, bool(measured))

        def total(key: str) -> float | None:
            values = [s[key] for s in measured if s[key] is not None]
            return sum(values) if values else None

        gpu_j, cpu_j = total("gpu_j"), total("cpu_j")
        dynamic = None
        if all(s["dynamic_j"] is not None for s in measured):
            dynamic = {self._name(s["host"], d): j for s in measured for d, j in s["dynamic_j"].items()}
        host_j = None
        if len(shares) > 1:
            host_j = {}
            for s in measured:
                host_j[s["host"]] = host_j.get(s["host"], 0.0) + (s["gpu_j"] or 0.0) + (s["cpu_j"] or 0.0)
        return JobFigure((gpu_j or 0.0) + (cpu_j or 0.0), gpu_j, cpu_j, dynamic, host_j, sources, complete, [],
                         warnings, True)

    def close(self) -> None:
        self.monitor.close()


def job_sensors(profile_config, layout: Layout, devices=None) -> tuple[list[sensors_lib.Sensor], dict[str, str]]:
    """This process's sensors for `profile.nvml_gpus`, and the host-wide ones it leaves to its host's first process
    (with the reason)."""
    nvml = sensors_lib.NvmlSensor(profile_config.nvml_gpus, devices=devices)
    out, left = [], {}
    for sensor in (nvml, sensors_lib.RaplSensor()):
        if sensor.host_wide and not layout.meters_host:
            first = layout.hosts.index(layout.host)
            left[sensor.name] = (f"host-wide ({getattr(sensor, 'selection', sensor.name)}): metered by process "
                                 f"{first} of {layout.host}")
            sensor.close()
            continue
        out.append(sensor)
    return out, left


def start(profile_config, *, layout: Layout | None = None, devices=None,
          sensors: list[sensors_lib.Sensor] | None = None) -> JobMeter:
    """The job's meter for this process: sensors per `profile.nvml_gpus`, this host's job processes known to the
    foreign-process check, and the idle baseline (after `profile.idle_settle_s`, in `profile.idle_parts` parts),
    taken now: call it before compiling, when nothing runs yet."""
    layout = layout or Layout.of_job()
    left: dict[str, str] = {}
    if sensors is None:
        sensors, left = job_sensors(profile_config, layout, devices)
    pids = allgather_json([layout.host, os.getpid()], layout.process_count)
    for sensor in sensors:
        if hasattr(sensor, "own_pids"):
            sensor.own_pids |= {pid for host, pid in pids if host == layout.host}
    monitor = energy_lib.EnergyMonitor(sensors, poll_interval_s=profile_config.poll_interval_s)
    meter = JobMeter(monitor, layout, reasons=left)
    if profile_config.idle_seconds > 0 and meter.available:
        idle = monitor.measure_idle(profile_config.idle_seconds, settle_s=profile_config.idle_settle_s,
                                    parts=profile_config.idle_parts)
        log.info("idle power: %s", ", ".join(f"{k} {v:.1f} W" for k, v in idle.items()) or "none measured here")
    return meter
