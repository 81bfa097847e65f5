"""What a training run costs, measured inside the run: one object the loop drives with one call per step.

    with run_profiler.create(config, workdir, programs, writer=writer, start_step=start_step) as profiler:
        for step in ...:
            state, metrics = train_step(state, batch)
            profiler.step(step, metrics)
            with profiler.paused():            # a mid-run evaluation is not training time
                ...
        with profiler.evaluation(num_utterances):
            ...
        summary |= profiler.summary(total_steps_run)   # {'profile': {...}}, or {} with profile.enabled off

`create` returns a `NullProfiler` (every call does nothing) when `profile.enabled` is off, so the loop never asks.
The profiler is a context manager: leaving it, also on an error, stops a running trace and closes the sensors.

Energy windows (sensors: profiling.energy). `step` is called after each step was dispatched; everything else
happens at window edges, so steps in between cost nothing extra (no host syncs). A window opens once
`profile.skip_steps` steps of this (re)start have run (compilation and warm-up stay out), spans
`profile.window_steps` steps, and is synchronised at both edges by blocking on a step's outputs. Edges are taken at
the previous step's completion: by then the next step is queued behind it, so the wait never leaves the device
idle. Steps traced with jax.profiler (`profile.trace_steps`) are kept out of windows: an open window is closed
before a trace starts. Every window gives one `WindowRecord`: a line of `<workdir>/energy.jsonl` and TensorBoard
scalars (`energy/j_per_step`, `energy/j_per_utt`, `power/gpu_w`, `power/cpu_w`, `carbon/g_total`, `perf/tflops`,
`perf/mfu`); the final evaluation is one more window whose energy is divided by the utterances embedded. Energy
comes only from sensors (NVML, RAPL); without one the windows still time the steps and the energy fields say
"unavailable" with the reason. A sensor that fails mid-run never stops training: a window with failed reads is
marked `complete: false` with the reason in `warnings`, and one left without a figure for some domain (a failed
read, a stuck counter) gets no energy total ("missing: ...") and is kept out of the run's energy sums.

The job (sv_jax.job_meter): every process meters a disjoint share of the job's domains, and each window's figure is
gathered from every process at its edge and summed before any division, so energy.jsonl and the summary (written
by process 0) hold the job's Joules, with each host's share in `hosts`.

Counts (sv_jax.programs): the compiled train step's and forward's checked FLOPs, the step's memory and the
device's peak (profiling.peaks) are read once at the start and reported in the summary's `profile` section, which
this object alone writes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pathlib
import time
from typing import Any, Iterator

import jax

from profiling import carbon as carbon_lib
from profiling import energy as energy_lib
from profiling import names
from profiling import peaks
from profiling import xla_cost
from sv_jax import costs
from sv_jax import job_meter
from sv_jax import reporting

log = logging.getLogger(__name__)

TRAIN_WINDOW, EVAL_WINDOW = "train", "eval"
# WindowRecord field -> TensorBoard scalar.
_WINDOW_SCALARS = {"j_per_step": names.scalar("energy", "j_per_step"), "j_per_utt": names.scalar("energy", "j_per_utt"),
                   "gpu_w": names.scalar("power", "gpu_w"), "cpu_w": names.scalar("power", "cpu_w"),
                   "tflops": names.scalar("perf", "tflops"), "mfu": names.scalar("perf", "mfu")}


@dataclasses.dataclass(frozen=True)
class RunCost:
    """The counts a run's profile starts from: checked costs of its programs, the step's memory, the device peak."""

    global_batch: int
    train_step: xla_cost.ProgramCost
    forward: xla_cost.ProgramCost
    forward_batch: int
    forward_flops_per_utt_analytic: float  # 2 x the analytic MACs of one utterance (sv_jax.models.macs)
    memory: costs.StepMemory | None
    peak_tflops: float | None  # one device's
    peak_source: str
    num_devices: int = 1  # devices of the mesh the programs run on

    def mfu(self, tflops: float) -> float | None:
        """Model FLOPs utilisation: achieved TFLOP/s (the whole mesh's) over the peak of every device in the mesh."""
        return tflops / (self.peak_tflops * self.num_devices) if self.peak_tflops else None

    def profile_fields(self) -> dict[str, Any]:
        """The summary's `profile` counts (names per profiling.names)."""
        step_per_utt = self.train_step.per(self.global_batch)
        return {names.key(names.TRAIN_STEP, "flops"): self.train_step.flops,
                names.key(names.TRAIN_STEP, "flops_per_utt"): step_per_utt[0],
                names.key(names.TRAIN_STEP, "bytes_accessed_per_utt"): step_per_utt[1],
                names.key(names.FORWARD, "flops_per_utt"): self.forward.per(self.forward_batch)[0],
                names.key(names.FORWARD, "flops_per_utt_analytic"): self.forward_flops_per_utt_analytic,
                "flops_source": self.train_step.source,
                names.key(names.TRAIN_STEP, "flops_source"): self.train_step.source,
                names.key(names.FORWARD, "flops_source"): self.forward.source,
                "flops_note": "; ".join(sorted({n for n in (self.train_step.note, self.forward.note) if n})),
                "peak_tflops": self.peak_tflops,
                "peak_source": self.peak_source, "memory": self.memory.to_dict() if self.memory else None}

    @classmethod
    def of(cls, config, programs) -> RunCost:
        """Counts of a run's CompiledPrograms (compiles the forward, and a CPU copy where counting needs one)."""
        kind = programs.mesh.devices.flat[0].device_kind
        peak, peak_source = peaks.peak_tflops(kind, config.model.dtype, config.profile.peak_tflops)
        return cls(global_batch=programs.lowered.batch_size, train_step=programs.train_step_cost,
                   forward=programs.forward_cost, forward_batch=programs.lowered.forward_batch_size,
                   forward_flops_per_utt_analytic=2 * programs.forward_macs_per_utt,
                   memory=costs.step_memory(programs.train_step, programs.state,
                                            batch_size=programs.lowered.batch_size),
                   peak_tflops=peak, peak_source=peak_source, num_devices=programs.mesh.size)


@dataclasses.dataclass(frozen=True)
class WindowRecord:
    """One energy window of training steps (or of the final evaluation): a line of energy.jsonl.

    Energy fields are None where nothing was measured; `energy` then says why ("unavailable: ..." without a sensor,
    "missing: ..." when a sensor failed at an edge).
    """

    seconds: float
    utt_per_s: float | None
    step_start: int | None = None  # first and last step of the window (None for evaluation)
    step_end: int | None = None
    steps: int | None = None
    utterances: int | None = None  # utterances embedded (evaluation only)
    tflops: float | None = None  # achieved, from the checked FLOP count
    mfu: float | None = None  # tflops / the device's peak
    energy_j: float | None = None  # the whole job's: every process's share summed
    j_per_step: float | None = None
    j_per_utt: float | None = None
    gpu_w: float | None = None
    cpu_w: float | None = None
    dynamic_j: dict[str, float] | None = None  # energy above the idle baseline, per domain
    hosts: dict[str, float] | None = None  # each host's share of energy_j (jobs of several processes)
    sources: dict[str, str] | None = None
    complete: bool | None = None
    energy: str | None = None
    run_start_step: int | None = None  # the step this (re)start of the run resumed from
    warnings: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The JSON line: fields without a value are left out, except `mfu` next to `tflops` (null: no peak known)."""
        return {k: (list(v) if k == "warnings" else v) for k, v in dataclasses.asdict(self).items()
                if (v is not None and v != ()) or (k == "mfu" and self.tflops is not None)}

    def scalars(self) -> dict[str, float]:
        """TensorBoard scalars: the job's figures, and each host's Joules (`energy/host_j/<host>`) with several."""
        out = {scalar: getattr(self, field) for field, scalar in _WINDOW_SCALARS.items()
               if getattr(self, field) is not None}
        for host, j in (self.hosts or {}).items():
            out[names.scalar("energy", f"host_j/{host}")] = j
        return out


class NullProfiler:
    """What `create` returns when `profile.enabled` is off: the profiler's interface, doing nothing."""

    def __enter__(self) -> NullProfiler:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass

    def step(self, step: int, outputs: Any) -> None:
        pass

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        yield

    @contextlib.contextmanager
    def evaluation(self, num_utterances: int) -> Iterator[None]:
        yield

    def summary(self, total_steps_run: int) -> dict[str, Any]:
        return {}


class RunProfiler(NullProfiler):
    """Energy windows over training steps and evaluation, traces, and the summary's `profile`, for one process."""

    def __init__(self, profile_config, workdir, cost: RunCost, *, writer, start_step: int = 0,
                 write_files: bool = True, monitor: energy_lib.EnergyMonitor | None = None,
                 job: job_meter.JobMeter | None = None):
        self.config, self.cost, self.writer = profile_config, cost, writer
        self.start_step = start_step
        self.carbon = carbon_lib.from_profile_config(profile_config)
        # A job meter (sv_jax.job_meter.start, which took the idle baseline before compilation) is handed over and
        # closed here; so is a monitor made here. A monitor passed in belongs to the caller (the benchmark lends
        # one to many profilers).
        self._owns_monitor = monitor is None
        if job is None:
            monitor = monitor if monitor is not None else energy_lib.EnergyMonitor(
                poll_interval_s=profile_config.poll_interval_s)
            job = job_meter.JobMeter(monitor, job_meter.Layout(0, (job_meter.host_name(),)))
        self.job, self.monitor = job, job.monitor
        self.trace_dir = pathlib.Path(workdir) / "trace"
        self._jsonl = pathlib.Path(workdir) / "energy.jsonl" if write_files else None
        self._trace_steps = set(int(s) for s in profile_config.trace_steps)
        self._tracing = False
        self._first_step = None
        self._window_start = None  # last step completed before the open window, or None
        self._previous = None  # (step, outputs) of the step dispatched last
        self.windows: list[WindowRecord] = []
        self.eval_record: WindowRecord | None = None
        self.idle_w: dict[str, float] = dict(self.monitor.idle_w)
        self.sync_seconds = 0.0  # time spent waiting for the device at window edges (the benchmark subtracts it)
        self._edges = 0  # window edges so far (names the barrier of each)

    # -- start and end ------------------------------------------------------------------------------------------

    def __enter__(self) -> RunProfiler:
        self._write_start()
        if self.config.idle_seconds > 0 and self.monitor.available and not self.idle_w:  # no job meter took it
            self.idle_w = dict(self.monitor.measure_idle(self.config.idle_seconds,
                                                         settle_s=self.config.idle_settle_s,
                                                         parts=self.config.idle_parts))
            log.info("idle power: %s", ", ".join(f"{k} {v:.1f} W" for k, v in self.idle_w.items()))
        if self.start_step + 1 in self._trace_steps:
            self._start_trace()
        return self

    def __exit__(self, exc_type, *exc: Any) -> None:
        try:
            if exc_type is None:
                self._finish_training()
            else:
                self._stop_trace(None)
        finally:
            if self._owns_monitor:
                self.job.close()

    def _write_start(self) -> None:
        """FLOP counts as TensorBoard scalars; the carbon intensity used and, without sensors, why there will be no
        energy or carbon scalars, as TensorBoard text."""
        fields = self.cost.profile_fields()
        scalars = {}
        for program in names.PROGRAMS:
            value = fields[names.key(program, "flops_per_utt")]
            if value:
                scalars[names.scalar("profile", names.key(program, "gflops_per_utt"))] = value / 1e9
        if scalars:
            self.writer.write_scalars(self.start_step, scalars)
        if hasattr(self.writer, "write_texts"):
            grid = self.carbon
            texts = {"profile/carbon": f"{grid.intensity_source}, PUE {grid.pue:g}: an estimate on measured energy"
                                       + ("" if self.job.available else " (none measured here)")}
            if not self.job.available:
                texts["profile/energy"] = f"unavailable: {self.monitor.unavailable_reason()}"
            self.writer.write_texts(self.start_step, texts)

    # -- training -----------------------------------------------------------------------------------------------

    def step(self, step: int, outputs: Any) -> None:
        """Window and trace bookkeeping after step `step` was dispatched; `outputs` are its results (to block on)."""
        previous, self._previous = self._previous, (step, outputs)
        if self._first_step is None:
            self._first_step = step
        if self._tracing:
            if step + 1 in self._trace_steps:
                return
            self._stop_trace(outputs)
            self._edge(step, outputs)
        elif previous is not None:
            self._edge(*previous)
        if step + 1 in self._trace_steps and not self._tracing:
            self._close_window(step, outputs)
            self._start_trace()

    def _start_trace(self) -> None:
        self.trace_dir.mkdir(parents=True, exist_ok=True)
        options = jax.profiler.ProfileOptions()
        options.python_tracer_level = int(self.config.trace_python)
        jax.profiler.start_trace(str(self.trace_dir), profiler_options=options)
        self._tracing = True

    def _stop_trace(self, outputs: Any) -> None:
        """Stops a running trace once `outputs` (the last traced step's; None after an error) are computed."""
        if self._tracing:
            jax.block_until_ready(outputs)
            jax.profiler.stop_trace()
            self._tracing = False

    def _edge(self, done_step: int, done_outputs: Any) -> None:
        if self._window_start is not None and done_step - self._window_start >= self.config.window_steps:
            self._close_window(done_step, done_outputs, reopen=True)  # the next window starts at the same edge
        if self._window_start is None and done_step - self._first_step + 1 >= self.config.skip_steps:
            self.monitor.begin_window(TRAIN_WINDOW, sync=lambda: self._sync(done_outputs))
            self._window_start = done_step

    def _sync(self, outputs: Any) -> None:
        """Blocks on `outputs`; with several processes, then waits for every process to reach the same edge, so
        that all of them read their sensors at the same time and their windows span the same interval."""
        start = time.perf_counter()
        jax.block_until_ready(outputs)
        self._edges += 1
        job_meter.barrier(f"sv_jax.run_profiler.edge_{self._edges}", self.job.layout.process_count)
        self.sync_seconds += time.perf_counter() - start

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Closes the open window before non-training work (a mid-run evaluation); the next step reopens one."""
        if self._previous is not None:
            self._close_window(*self._previous)
        yield

    def _finish_training(self) -> None:
        """Stops a running trace and closes the open window (recorded if it holds any step)."""
        if self._previous is None:
            return
        step, outputs = self._previous
        self._stop_trace(outputs)
        self._close_window(step, outputs)

    def _close_window(self, step: int, outputs: Any, reopen: bool = False) -> None:
        """Ends the open training window at `step`: recorded if it holds steps, dropped if it opened at `step`.
        With `reopen` the next window opens at the same edge."""
        if self._window_start is None:
            return
        start, self._window_start = self._window_start, step if reopen else None
        end = self.monitor.roll_window if reopen else self.monitor.end_window
        measurement = end(TRAIN_WINDOW, sync=lambda: self._sync(outputs))
        if step == start:
            return
        steps = step - start
        record = self._record(measurement, steps * self.cost.global_batch, step_start=start + 1, step_end=step,
                              steps=steps)
        self.windows.append(record)
        if self._jsonl is not None:
            reporting.append_jsonl(self._jsonl, record.to_dict())
        scalars = record.scalars()
        if record.energy_j is not None:
            total_j = sum(w.energy_j for w in self.windows if w.energy_j is not None)
            scalars[names.scalar("carbon", "g_total")] = self.carbon.grams(total_j)
        if scalars:
            self.writer.write_scalars(step, scalars)

    def _record(self, measurement: energy_lib.EnergyMeasurement, num_utterances: int, **where: Any) -> WindowRecord:
        """The job's record of a window: this process's share gathered with every other's (a collective with
        several processes: every process closes the same windows) and summed before any per-utterance division."""
        seconds, steps = measurement.seconds, where.get("steps")
        utterances = num_utterances
        fields: dict[str, Any] = {"seconds": seconds, "utt_per_s": utterances / seconds if seconds > 0 else None,
                                  "run_start_step": self.start_step}
        if steps and seconds > 0 and self.cost.train_step.flops:
            fields["tflops"] = self.cost.train_step.flops * steps / seconds / 1e12
            fields["mfu"] = self.cost.mfu(fields["tflops"])
        job = self.job.combine(self.job.gather(self.job.share(measurement, self.idle_w)))
        if job.energy_j is not None:
            fields.update(energy_j=job.energy_j, j_per_step=job.energy_j / steps if steps else None,
                          j_per_utt=job.energy_j / utterances if utterances else None,
                          gpu_w=job.gpu_j / seconds if job.gpu_j is not None and seconds > 0 else None,
                          cpu_w=job.cpu_j / seconds if job.cpu_j is not None and seconds > 0 else None,
                          sources=job.sources, complete=job.complete, dynamic_j=job.dynamic_j, hosts=job.host_j)
        elif job.measured:  # a sensor failed at an edge, or a counter is stuck: no total rather than a partial one
            fields.update(energy=f"missing: no figure for {', '.join(job.missing)} (see warnings)", complete=False)
        else:
            fields["energy"] = f"unavailable: {self.monitor.unavailable_reason()}"
        return WindowRecord(**fields, **where, warnings=job.warnings)

    # -- evaluation ---------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def evaluation(self, num_utterances: int) -> Iterator[None]:
        """Ends training (trace, open window), then measures an evaluation of `num_utterances` utterances as one
        window; on an error inside the block the window is dropped."""
        self._finish_training()  # blocks on the last step: the device is idle when the window opens
        count, edges = self.job.layout.process_count, iter(("start", "end"))

        def sync() -> None:  # every process's window spans the same time
            job_meter.barrier(f"sv_jax.run_profiler.eval_{next(edges)}", count)

        with self.monitor.window(EVAL_WINDOW, sync=sync) as window:
            yield  # the evaluation returns host values: its device work is done when the block ends
        self.eval_record = self._record(window.measurement, num_utterances, utterances=num_utterances)

    # -- summary ------------------------------------------------------------------------------------------------

    def summary(self, total_steps_run: int) -> dict[str, Any]:
        """{'profile': ...}: the counts, the energy of this (re)start's measured windows summed, and the run's over
        every (re)start (`train.run`, from energy.jsonl)."""
        measured = [w for w in self.windows if w.energy_j is not None]
        seconds = sum(w.seconds for w in self.windows)
        train: dict[str, Any] = {"windows": len(self.windows), "steps_measured": sum(w.steps for w in self.windows),
                                 "seconds_measured": seconds,
                                 "windows_incomplete": sum(w.complete is False for w in self.windows)}
        if self.windows and self.cost.train_step.flops:
            train["tflops"] = self.cost.train_step.flops * train["steps_measured"] / seconds / 1e12
            train["mfu"] = self.cost.mfu(train["tflops"])
        if measured:
            energy_j = sum(w.energy_j for w in measured)
            steps = sum(w.steps for w in measured)
            train.update(energy_j=energy_j, kwh=energy_j / carbon_lib.J_PER_KWH,
                         carbon=self.carbon.estimate(energy_j).to_dict(), j_per_step=energy_j / steps,
                         j_per_utt=energy_j / (steps * self.cost.global_batch), sources=measured[-1].sources,
                         complete=len(measured) == len(self.windows) and all(w.complete for w in measured),
                         steps_with_energy=steps,
                         # An estimate, and labelled so: measured J per step times every step the run took.
                         energy_j_all_steps_estimate=energy_j / steps * total_steps_run)
            if measured[-1].hosts is not None:
                hosts: dict[str, float] = {}
                for w in measured:
                    for host, j in (w.hosts or {}).items():
                        hosts[host] = hosts.get(host, 0.0) + j
                train["hosts"] = hosts
        else:
            train["energy"] = f"unavailable: {self.monitor.unavailable_reason()}"
            train["carbon"] = "unavailable: no measured energy"
        run = self._run_totals()
        if run is not None:
            train["run"] = run
        profile = {**self.cost.profile_fields(), "train": train,
                   "eval": self.eval_record.to_dict() if self.eval_record else None, "idle_w": self.idle_w or None,
                   "idle_w_std": dict(self.monitor.idle_w_std) or None,
                   "carbon_intensity": self.carbon.describe(), "sensors_unavailable": dict(self.monitor.unavailable),
                   "meters": self.job.meters}
        if self._trace_steps:
            profile["trace_dir"] = str(self.trace_dir)
        return {"profile": profile}

    def _run_totals(self) -> dict[str, Any] | None:
        """Measured training energy of every (re)start of the run in this workdir, from energy.jsonl: steps redone
        after a restart are counted again (they were spent again); steps outside windows are not counted."""
        if self._jsonl is None or not self._jsonl.exists():
            return None
        records = [r for r in reporting.read_jsonl(self._jsonl) if r.get("step_start") is not None]
        measured = [r for r in records if r.get("energy_j") is not None]
        if not measured:
            return {"windows": len(records), "energy": "unavailable: no window of any (re)start has a figure"}
        energy_j = sum(r["energy_j"] for r in measured)
        return {"energy_j": energy_j, "kwh": energy_j / carbon_lib.J_PER_KWH,
                "carbon": self.carbon.estimate(energy_j).to_dict(), "windows": len(records),
                "windows_with_energy": len(measured), "steps_with_energy": sum(r["steps"] for r in measured),
                "starts": len({r.get("run_start_step") for r in records})}


def create(config, workdir, programs, *, writer, start_step: int = 0, write_files: bool = True,
           job: job_meter.JobMeter | None = None) -> RunProfiler | NullProfiler:
    """The run's profiler: a RunProfiler over `programs` (sv_jax.programs.CompiledPrograms), or a NullProfiler
    with `profile.enabled` off. Only the first process should `write_files` (energy.jsonl)."""
    if not config.profile.enabled:
        return NullProfiler()
    cost = RunCost.of(config, programs)
    log.info("profile: %.3g GFLOP per training utterance (XLA), %.3g GFLOP forward (analytic %.3g)",
             cost.train_step.per(cost.global_batch)[0] / 1e9, cost.forward.per(cost.forward_batch)[0] / 1e9,
             cost.forward_flops_per_utt_analytic / 1e9)
    return RunProfiler(config.profile, workdir, cost, writer=writer, start_step=start_step,
                       write_files=write_files, job=job)

