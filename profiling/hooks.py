"""Cost measurement inside a training run: energy windows, FLOP rates, traces, carbon, the summary's profile.

The trainer calls `after_step(step, outputs)` after dispatching each step; everything else happens at window
edges, so steps in between cost nothing extra (no host syncs). A window opens once `profile.skip_steps` steps of
this (re)start have run (compilation and warm-up stay out), spans `profile.window_steps` steps, and is synchronised
at both edges by blocking on the step's outputs. Steps traced with jax.profiler (`profile.trace_steps`) are kept out
of windows too: an open window is closed before a trace starts. Every window gives one line of
`<workdir>/energy.jsonl` and TensorBoard scalars (`energy/j_per_step`, `energy/j_per_utt`, `power/gpu_w`,
`power/cpu_w`, `carbon/g_total`, `perf/tflops`, `perf/mfu`); evaluation is one more window whose energy is divided
by the utterances embedded. Energy figures come only from sensors (NVML, RAPL); without one, the windows still time
the steps and the energy fields say "unavailable" with the reason. A sensor that fails mid-run never stops training:
a window with failed reads is marked `complete: false` with the reason in `warnings`, and one left without a figure
for some domain gets no energy total ("missing: ...") and is kept out of the run's energy sums.
"""

from __future__ import annotations

import contextlib
import json
import logging
import pathlib
import time

import jax

from profiling import carbon as carbon_lib
from profiling import energy as energy_lib

log = logging.getLogger(__name__)

_TRAIN_WINDOW = "train"


class RunProfiler:
    """Energy windows over training steps and evaluation, for one process of a run."""

    def __init__(self, profile_config, workdir, *, global_batch: int, flops_per_step: float | None,
                 peak_tflops: float | None, writer, write_files: bool = True, monitor=None):
        self.config = profile_config
        self.global_batch = global_batch
        self.flops_per_step = flops_per_step
        self.peak_tflops = peak_tflops
        self.writer = writer
        self.monitor = monitor if monitor is not None else energy_lib.EnergyMonitor(
            poll_interval_s=profile_config.poll_interval_s)
        self.carbon = carbon_lib.from_profile_config(profile_config)
        self.trace_dir = pathlib.Path(workdir) / "trace"
        self._jsonl = pathlib.Path(workdir) / "energy.jsonl" if write_files else None
        self._trace_steps = set(int(s) for s in profile_config.trace_steps)
        self._tracing = False
        self._first_step = None
        self._window_start = None  # last step completed before the open window, or None
        self._previous = None  # (step, outputs) of the step dispatched before the current one
        self.windows: list[dict] = []
        self.eval_measurement: dict | None = None
        self.idle_w: dict[str, float] = {}
        self.sync_seconds = 0.0  # time spent waiting for the device at window edges (the benchmark subtracts it)

    # -- set up ---------------------------------------------------------------------------------------------------

    def write_start(self, step: int, flops: dict) -> None:
        """FLOP counts as TensorBoard scalars; the carbon intensity used and, without sensors, why there will be no
        energy or carbon scalars, as TensorBoard text."""
        scalars = {f"profile/{k}": flops[k] / 1e9 for k in ("train_step_flops_per_utt", "forward_flops_per_utt")
                   if flops.get(k)}
        if scalars:
            self.writer.write_scalars(step, {k.replace("flops", "gflops"): v for k, v in scalars.items()})
        if hasattr(self.writer, "write_texts"):
            grid = self.carbon
            texts = {"profile/carbon": f"{grid.intensity_source}, PUE {grid.pue:g}: an estimate on measured energy"
                                       + ("" if self.monitor.available else " (none measured here)")}
            if not self.monitor.available:
                texts["profile/energy"] = f"unavailable: {self.unavailable_reason()}"
            self.writer.write_texts(step, texts)

    def measure_idle(self) -> None:
        """Idle power of every sensed domain, before the run starts working (skipped without sensors)."""
        if self.config.idle_seconds > 0 and self.monitor.available:
            self.idle_w = dict(self.monitor.measure_idle(self.config.idle_seconds))
            log.info("idle power: %s", ", ".join(f"{k} {v:.1f} W" for k, v in self.idle_w.items()))

    # -- training -------------------------------------------------------------------------------------------------

    def before_step(self, step: int, outputs=None) -> None:
        """Starts a trace at a configured step (closing an open energy window first)."""
        if step in self._trace_steps and not self._tracing:
            if self._window_start is not None and step - 1 > self._window_start:
                self._close_window(step - 1, outputs)
            elif self._window_start is not None:  # opened after the previous step: holds no step
                self.monitor.end_window(_TRAIN_WINDOW)
                self._window_start = None
            self.trace_dir.mkdir(parents=True, exist_ok=True)
            options = jax.profiler.ProfileOptions()
            options.python_tracer_level = int(self.config.trace_python)
            jax.profiler.start_trace(str(self.trace_dir), profiler_options=options)
            self._tracing = True

    def after_step(self, step: int, outputs) -> None:
        """Window bookkeeping after step `step` was dispatched; `outputs` are that step's results (to block on).

        Edges are taken at the previous step's completion: by then `step` is queued behind it, so blocking on the
        previous outputs never leaves the device idle (blocking on the step just dispatched would drain the queue).
        """
        previous, self._previous = self._previous, (step, outputs)
        if self._first_step is None:
            self._first_step = step
        if self._tracing:
            if step + 1 in self._trace_steps:
                return
            jax.block_until_ready(outputs)
            jax.profiler.stop_trace()
            self._tracing = False
            self._edge(step, outputs)
        elif previous is not None:
            self._edge(*previous)

    def _edge(self, done_step: int, done_outputs) -> None:
        if self._window_start is not None and done_step - self._window_start >= self.config.window_steps:
            self._close_window(done_step, done_outputs)
        if self._window_start is None and done_step - self._first_step + 1 >= self.config.skip_steps:
            self.monitor.begin_window(_TRAIN_WINDOW, sync=lambda: self._sync(done_outputs))
            self._window_start = done_step

    def _sync(self, outputs) -> None:
        start = time.perf_counter()
        jax.block_until_ready(outputs)
        self.sync_seconds += time.perf_counter() - start

    def pause(self, step: int, outputs) -> None:
        """Closes the open window before non-training work (a mid-run evaluation); the next step reopens one."""
        if self._window_start is not None and step > self._window_start:
            self._close_window(step, outputs)

    def finish_training(self, step: int, outputs) -> None:
        """Closes the open window (if it holds any step) and a running trace."""
        if self._tracing:
            jax.block_until_ready(outputs)
            jax.profiler.stop_trace()
            self._tracing = False
        if self._window_start is not None:
            if step > self._window_start:
                self._close_window(step, outputs)
            else:
                self.monitor.end_window(_TRAIN_WINDOW)
                self._window_start = None

    def _close_window(self, step: int, outputs) -> None:
        measurement = self.monitor.end_window(_TRAIN_WINDOW, sync=lambda: self._sync(outputs))
        steps = step - self._window_start
        record = {"step_start": self._window_start + 1, "step_end": step, "steps": steps,
                  **self._rates(measurement, steps, steps * self.global_batch, self.flops_per_step)}
        self._window_start = None
        self.windows.append(record)
        if self._jsonl is not None:
            with open(self._jsonl, "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        scalars = {k: record[v] for k, v in (("energy/j_per_step", "j_per_step"), ("energy/j_per_utt", "j_per_utt"),
                                             ("power/gpu_w", "gpu_w"), ("power/cpu_w", "cpu_w"),
                                             ("perf/tflops", "tflops"), ("perf/mfu", "mfu"))
                   if record.get(v) is not None}
        total_j = sum(w["energy_j"] for w in self.windows if w.get("energy_j") is not None)
        if record.get("energy_j") is not None:
            scalars["carbon/g_total"] = self.carbon.grams(total_j)
        if scalars:
            self.writer.write_scalars(step, scalars)

    def _rates(self, measurement, steps: int, utterances: int, flops_per_step) -> dict:
        seconds = measurement.seconds
        out = {"seconds": seconds, "utt_per_s": utterances / seconds if seconds > 0 else None}
        if flops_per_step and seconds > 0:
            out["tflops"] = flops_per_step * steps / seconds / 1e12
            out["mfu"] = out["tflops"] / self.peak_tflops if self.peak_tflops else None
        missing = [d for d in self.monitor.sources if d not in measurement.sources]
        if measurement.available and not missing:
            energy_j = measurement.total_j
            out.update(energy_j=energy_j, j_per_step=energy_j / steps if steps else None,
                       j_per_utt=energy_j / utterances if utterances else None,
                       gpu_w=measurement.gpu_total_j / seconds if measurement.gpu_j and seconds > 0 else None,
                       cpu_w=measurement.cpu_total_j / seconds if measurement.cpu_j and seconds > 0 else None,
                       sources=dict(measurement.sources), complete=measurement.complete)
            if self.idle_w:
                out["dynamic_j"] = measurement.dynamic_j(self.idle_w)
        elif self.monitor.available:  # a sensor failed at an edge: no total rather than a partial one
            out.update(energy=f"missing: no figure for {', '.join(missing)} (sensor read failed)", complete=False)
        else:
            out["energy"] = f"unavailable: {self.unavailable_reason()}"
        if measurement.warnings:
            out["warnings"] = list(measurement.warnings)
        return out

    # -- evaluation -----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def eval_window(self, num_utterances: int):
        """Energy of an evaluation (embedding `num_utterances` utterances and scoring), per utterance."""
        self.monitor.begin_window("eval", sync=lambda: None)
        try:
            yield
        finally:
            measurement = self.monitor.end_window("eval", sync=lambda: None)
            self.eval_measurement = {"utterances": num_utterances,
                                     **self._rates(measurement, 0, num_utterances, None)}
            self.eval_measurement.pop("j_per_step", None)

    # -- summary --------------------------------------------------------------------------------------------------

    def unavailable_reason(self) -> str:
        reasons = self.monitor.unavailable
        return "; ".join(f"{k}: {v}" for k, v in reasons.items()) or "no energy sensor"

    def summary(self, total_steps_run: int) -> dict:
        """The summary.json `profile` section for the energy side (FLOPs and memory are added by the trainer)."""
        measured = [w for w in self.windows if w.get("energy_j") is not None]
        train = {"windows": len(self.windows), "steps_measured": sum(w["steps"] for w in self.windows),
                 "seconds_measured": sum(w["seconds"] for w in self.windows),
                 "windows_incomplete": sum(not w.get("complete", True) for w in self.windows)}
        if self.windows and self.flops_per_step:
            train["tflops"] = self.flops_per_step * train["steps_measured"] / train["seconds_measured"] / 1e12
            train["mfu"] = train["tflops"] / self.peak_tflops if self.peak_tflops else None
        if measured:
            energy_j = sum(w["energy_j"] for w in measured)
            steps = sum(w["steps"] for w in measured)
            train.update(energy_j=energy_j, kwh=energy_j / 3.6e6, carbon=self.carbon.estimate(energy_j).to_dict(),
                         j_per_step=energy_j / steps, j_per_utt=energy_j / (steps * self.global_batch),
                         sources=measured[-1]["sources"], complete=len(measured) == len(self.windows) and all(
                             w["complete"] for w in measured), steps_with_energy=steps,
                         # An estimate, and labelled so: measured J per step times every step the run took.
                         energy_j_all_steps_estimate=energy_j / steps * total_steps_run)
        else:
            train["energy"] = f"unavailable: {self.unavailable_reason()}"
            train["carbon"] = "unavailable: no measured energy"
        out = {"train": train, "eval": self.eval_measurement, "idle_w": self.idle_w or None,
               "carbon_intensity": self.carbon.describe(), "sensors_unavailable": dict(self.monitor.unavailable)}
        if self._trace_steps:
            out["trace_dir"] = str(self.trace_dir)
        return out

    def close(self) -> None:
        self.monitor.close()
