"""What a run tells its user: TensorBoard scalars (clu metric writers) and a console progress line."""

from __future__ import annotations

import json
import logging
import math
import pathlib
import time

from clu import metric_writers

log = logging.getLogger(__name__)


def create_writer(workdir: str, enabled: bool = True) -> metric_writers.MetricWriter:
    """TensorBoard event files in workdir (asynchronous), or nothing on processes other than the first.

    clu's SummaryWriter needs TensorFlow; without it (e.g. a GPU box with only JAX) the torch TensorBoard writer is
    used if present, and otherwise scalars only go to the log, with a warning.
    """
    if not enabled:
        return metric_writers.MultiWriter([])
    try:
        writer = metric_writers.SummaryWriter(workdir)
    except ImportError:
        try:
            from clu.metric_writers import torch_tensorboard_writer  # pylint: disable=import-outside-toplevel
            writer = torch_tensorboard_writer.TorchTensorBoardWriter(workdir)
        except ImportError:
            log.warning("neither TensorFlow nor torch is installed: TensorBoard scalars go to the log only")
            writer = metric_writers.LoggingWriter()
    return metric_writers.AsyncWriter(writer)


def eval_scalars(results: dict) -> dict[str, float]:
    """{'vox1_O': {'eer_percent': ..}} -> {'eval/vox1_O/eer': ..}, slash-grouped for TensorBoard."""
    names = {"eer_percent": "eer", "min_dcf_p01": "min_dcf_p01", "min_dcf_p05": "min_dcf_p05"}
    return {f"eval/{trials}/{names[key]}": value for trials, metrics in results.items()
            for key, value in metrics.items() if key in names}


class Progress:
    """Step rate and ETA. The first interval after a (re)start holds the compilation and is not counted as
    steady state."""

    def __init__(self, total_steps: int, global_batch: int, start_step: int):
        self.total_steps, self.global_batch = total_steps, global_batch
        self._last_time, self._last_step = time.perf_counter(), start_step
        self._first_interval = True
        self._steady_seconds, self._steady_steps = 0.0, 0
        self._rate = 0.0

    def update(self, step: int, num_steps: int) -> dict[str, float]:
        now = time.perf_counter()
        seconds = max(now - self._last_time, 1e-9)
        self._rate = num_steps / seconds
        if not self._first_interval:
            self._steady_seconds += seconds
            self._steady_steps += num_steps
        self._first_interval = False
        self._last_time, self._last_step = now, step
        return {"perf/steps_per_s": self._rate, "perf/utt_per_s": self._rate * self.global_batch}

    def steady_utt_per_s(self) -> float | None:
        """Mean training throughput after the first interval; None if the run had no later interval."""
        if not self._steady_steps:
            return None
        return self._steady_steps * self.global_batch / self._steady_seconds

    def line(self, step: int, metrics: dict[str, float]) -> str:
        rate = self.steady_utt_per_s() or self._rate * self.global_batch
        eta = (self.total_steps - step) * self.global_batch / rate if rate else float("nan")
        skipped = f"  skipped {metrics['skipped_steps']}" if metrics.get("skipped_steps") else ""
        return (f"step {step}/{self.total_steps}  loss {metrics.get('loss', math.nan):.4f}  "
                f"acc {metrics.get('accuracy', math.nan):.3f}  lr {metrics['lr']:.3g}  margin {metrics['margin']:.3f}  "
                f"{rate:.1f} utt/s  ETA {_duration(eta)}{skipped}")


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class TrainLog:
    """workdir/train_log.jsonl: one JSON line per log step, for scripts that should not parse TensorBoard.

    On resume, lines past the restored step (written before the run was killed, then lost with the state) are
    dropped, so the file always describes the run that produced the checkpoint.
    """

    def __init__(self, workdir, enabled: bool = True, resume_step: int = 0):
        self.path = pathlib.Path(workdir) / "train_log.jsonl"
        self.enabled = enabled
        if enabled and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines()
                    if line.strip() and json.loads(line)["step"] <= resume_step]
            self.path.write_text("".join(line + "\n" for line in kept))

    def append(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as log:
                log.write(json.dumps(record) + "\n")
