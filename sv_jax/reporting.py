"""What a run tells its user: TensorBoard scalars (clu metric writers), a console progress line, JSON-lines logs."""

from __future__ import annotations

import json
import logging
import math
import os
import pathlib
import time
from typing import Any, Iterator, Mapping

log = logging.getLogger(__name__)


def create_writer(workdir: str, enabled: bool = True):
    """TensorBoard event files in workdir (asynchronous), or nothing on processes other than the first.

    clu's SummaryWriter needs TensorFlow; without it (e.g. a GPU box with only JAX) the torch TensorBoard writer is
    used if present, and otherwise scalars only go to the log, with a warning. (clu is imported here, not at the
    top: its writers bring in TensorFlow, which nothing else in this module needs.)
    """
    from clu import metric_writers  # pylint: disable=import-outside-toplevel
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
    """Step rate, ETA and input wait. The first interval after a (re)start holds the compilation and is not
    counted as steady state.

    The input wait is the share of an interval's wall time the training loop spent blocked on the input pipeline
    for its next batch (`waited`): near 0 the pipeline keeps ahead of the train step (steps are dispatched
    asynchronously, so the loop otherwise blocks only when it fetches metrics); large, training is input-bound.
    """

    def __init__(self, total_steps: int, global_batch: int, start_step: int, unit: str = "utt"):
        self.total_steps, self.global_batch, self.unit = total_steps, global_batch, unit
        self._last_time, self._last_step = time.perf_counter(), start_step
        self._first_interval = True
        self._steady_seconds, self._steady_steps = 0.0, 0
        self._rate = 0.0
        self._waited = 0.0
        self._wait_fraction = 0.0

    def waited(self, seconds: float) -> None:
        """The loop spent `seconds` waiting for a batch."""
        self._waited += seconds

    def update(self, step: int, num_steps: int) -> dict[str, float]:
        now = time.perf_counter()
        seconds = max(now - self._last_time, 1e-9)
        self._rate = num_steps / seconds
        self._wait_fraction, self._waited = self._waited / seconds, 0.0
        if not self._first_interval:
            self._steady_seconds += seconds
            self._steady_steps += num_steps
        self._first_interval = False
        self._last_time, self._last_step = now, step
        return {"perf/steps_per_s": self._rate, "perf/utt_per_s": self._rate * self.global_batch,
                "perf/input_wait_fraction": self._wait_fraction}

    def steady_utt_per_s(self) -> float | None:
        """Mean training throughput after the first interval; None if the run had no later interval."""
        if not self._steady_steps:
            return None
        return self._steady_steps * self.global_batch / self._steady_seconds

    def line(self, step: int, metrics: dict[str, float]) -> str:
        rate = self.steady_utt_per_s() or self._rate * self.global_batch
        eta = (self.total_steps - step) * self.global_batch / rate if rate else float("nan")
        skipped = f"  skipped {metrics['skipped_steps']}" if metrics.get("skipped_steps") else ""
        margin = f"  margin {metrics['margin']:.3f}" if "margin" in metrics else ""
        return (f"step {step}/{self.total_steps}  loss {metrics.get('loss', math.nan):.4f}  "
                f"acc {metrics.get('accuracy', math.nan):.3f}  lr {metrics['lr']:.3g}{margin}  "
                f"{rate:.1f} {self.unit}/s  input wait {100 * self._wait_fraction:.0f}%  ETA {_duration(eta)}{skipped}")


def _duration(seconds: float) -> str:
    if seconds != seconds:  # NaN
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def append_jsonl(path: str | os.PathLike, record: Mapping[str, Any]) -> None:
    """Appends one JSON line so that a kill at any moment leaves every earlier line intact: the line goes out in
    one write, and a line cut short by an earlier kill is ended first, so the new one never extends it."""
    with open(path, "a+b") as f:
        size = f.seek(0, os.SEEK_END)
        if size:
            f.seek(size - 1)
            if f.read(1) != b"\n":
                f.write(b"\n")
        f.write((json.dumps(record, default=str) + "\n").encode())


def read_jsonl(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """The records of a JSON-lines file; a line cut short by a kill is skipped with a warning."""
    path = pathlib.Path(path)
    if not path.exists():
        return
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d: unreadable line skipped (written by a run that was killed?)", path, number)


class TrainLog:
    """workdir/train_log.jsonl: one JSON line per log step, for scripts that should not parse TensorBoard.

    On resume, lines past the restored step (written before the run was killed, then lost with the state) are
    dropped, so the file always describes the run that produced the checkpoint.
    """

    def __init__(self, workdir, enabled: bool = True, resume_step: int = 0):
        self.path = pathlib.Path(workdir) / "train_log.jsonl"
        self.enabled = enabled
        if enabled and self.path.exists():
            kept = [record for record in read_jsonl(self.path) if record["step"] <= resume_step]
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(json.dumps(record) + "\n" for record in kept))
            os.replace(tmp, self.path)  # a kill now leaves the old file or the new one, never half of one

    def append(self, record: dict) -> None:
        if self.enabled:
            append_jsonl(self.path, record)
