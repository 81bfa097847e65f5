"""Converts an audio tree to 16-bit mono WAV at one sample rate (VoxCeleb2's .m4a, VoxCeleb1 at other rates).

    python -m data_pipeline.prepare --src=/data/voxceleb2/dev/aac --dst=/data/voxceleb2/dev/wav

Every file under --src whose extension is in --extensions (at any depth; VoxCeleb's <speaker>/<video>/<utt>.m4a)
becomes --dst/<same relative path, extension .wav>: PCM_16, channel 0, at --sample_rate. Decoding and resampling
are `data_pipeline.audio.decode_audio`'s (soundfile or ffmpeg, then soxr), so a VoxCeleb1 tree of 8 or 44.1 kHz
wavs is brought to 16 kHz the same way. --num_workers processes convert chunks of files; the parent holds only
the relative paths, a few chunks are in flight at a time, so VoxCeleb2 dev's 1,092,009 files are fine.

Resumable. Each output is written under a hidden temporary name in its own directory (`.<utt>.wav.prepare-tmp`)
and renamed into place, so a file under its final name is complete and a rerun skips it without reading it. A
killed run leaves at most temporary files; the rerun converts those utterances again, overwriting them. Finished
files are not checked against the flags: use a new --dst for another rate. One run per --dst at a time.

Bad files do not stop the conversion: they are written to dst/prepare_failures.tsv (`<relative path>\\t<reason>`
lines; deleted when a later run has no failures) and counted in the summary. Exit status: 0 when every file is
converted or was already done; 1 when some failed with --on_bad_audio=error (the default); 0 with
--on_bad_audio=skip (the report is written either way); 2 when the run cannot start: --src missing or without
audio, or ffmpeg needed (.m4a, .aac) and not found, which is found out once, before any file is converted
(absl's own exit status for invalid flags is 1).

`prepare_tree` is the library form; it returns a `PrepareReport`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import itertools
import logging
import multiprocessing
import os
import pathlib
import time
from typing import Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import soundfile

import cli
from data_pipeline import audio as audio_lib

log = logging.getLogger(__name__)

DEFAULT_EXTENSIONS = (".m4a", ".aac", ".wav", ".flac")
FAILURES_FILE = "prepare_failures.tsv"
TMP_SUFFIX = ".prepare-tmp"
_CHUNK_FILES = 64  # files per task: amortises inter-process traffic, short enough for even load and progress


@dataclasses.dataclass(frozen=True)
class PrepareReport:
    """What one `prepare_tree` run did. `audio_s` counts only audio converted in this run (finished files are
    skipped unread); `wall_s` is the whole run, listing included.

    Attributes:
      failures: (relative source path, reason) per file that could not be converted, sorted by path.
      failures_file: dst/prepare_failures.tsv when there were failures, else None.
    """

    src: pathlib.Path
    dst: pathlib.Path
    sample_rate_hz: int
    converted: int
    already_done: int
    failures: tuple[tuple[str, str], ...]
    audio_s: float
    wall_s: float
    failures_file: pathlib.Path | None

    @property
    def failed(self) -> int:
        return len(self.failures)

    def summary(self) -> str:
        text = (f"{self.dst}: {self.converted} converted, {self.already_done} already done, {self.failed} failed; "
                f"{self.audio_s / 3600:.2f} h of audio converted to {self.sample_rate_hz} Hz in {self.wall_s:.1f} s")
        return text + (f"; failures listed in {self.failures_file}" if self.failures_file else "")


class _Outcome(NamedTuple):
    rel: str
    status: str  # "converted" | "done" | "failed"
    audio_s: float = 0.0
    reason: str = ""


def output_path(rel: str) -> str:
    """Relative output path of relative source path `rel`: the same path with extension .wav."""
    return os.path.splitext(rel)[0] + ".wav"


def list_audio_files(root, extensions: Iterable[str] = DEFAULT_EXTENSIONS) -> list[str]:
    """Sorted relative paths of the files under `root` (any depth) with one of `extensions` (case-insensitive).

    Hidden entries (names starting with '.', e.g. macOS `._x.wav` or this module's temporary files) are skipped.
    Raises FileNotFoundError if `root` is not a directory and ValueError if it holds no such file.
    """
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    root = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(f"source directory {root!r} does not exist or is not a directory")
    found: list[str] = []
    stack = [(root, "")]
    while stack:  # scandir's entry types need no per-file stat: listing VoxCeleb2 dev takes seconds
        abs_dir, rel_dir = stack.pop()
        with os.scandir(abs_dir) as it:
            for entry in it:
                if entry.name.startswith("."):
                    continue
                rel = os.path.join(rel_dir, entry.name)
                if entry.is_dir():
                    stack.append((entry.path, rel))
                elif entry.name.lower().endswith(exts) and entry.is_file():
                    found.append(rel)
    if not found:
        raise ValueError(f"source directory {root!r} contains no files with extensions {list(exts)}")
    return sorted(found)


def _write_wav_atomic(path: str, pcm: np.ndarray, sample_rate: int) -> None:
    directory, name = os.path.split(path)
    os.makedirs(directory, exist_ok=True)
    # The temporary name is fixed, not per process, so a killed run's leftover is overwritten by the rerun.
    tmp = os.path.join(directory, f".{name}{TMP_SUFFIX}")
    try:
        soundfile.write(tmp, pcm, sample_rate, subtype="PCM_16", format="WAV")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _convert_chunk(items: Sequence[tuple[str, str, str]], sample_rate: int, ffmpeg) -> list[_Outcome]:
    """Converts (source, output, relative path) items; runs in a worker process."""
    outcomes = []
    for source, output, rel in items:
        if os.path.exists(output):
            outcomes.append(_Outcome(rel, "done"))
            continue
        try:
            wav, _ = audio_lib.decode_audio(source, sample_rate, ffmpeg=ffmpeg)
        except audio_lib.BadAudioError as error:
            outcomes.append(_Outcome(rel, "failed", reason=error.problem))
            continue
        # x * 32768 inverts load_audio's int16 scaling, so a 16-bit source at the target rate is copied exactly.
        pcm = np.clip(np.round(wav * 32768.0), -32768, 32767).astype(np.int16)
        _write_wav_atomic(output, pcm, sample_rate)
        outcomes.append(_Outcome(rel, "converted", audio_s=len(pcm) / sample_rate))
    return outcomes


def _run_chunks(chunks: Iterator[list], num_workers: int, sample_rate: int, ffmpeg) -> Iterator[list[_Outcome]]:
    if num_workers == 1:
        for chunk in chunks:
            yield _convert_chunk(chunk, sample_rate, ffmpeg)
        return
    # 'spawn': safe whatever the parent has loaded (TensorFlow, threads), which a fork is not.
    with concurrent.futures.ProcessPoolExecutor(num_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: set = set()
        while True:
            # A few chunks in flight per worker, not all of them: memory stays flat for a million files.
            for chunk in itertools.islice(chunks, 2 * num_workers - len(pending)):
                pending.add(pool.submit(_convert_chunk, chunk, sample_rate, ffmpeg))
            if not pending:
                return
            done, pending = concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in done:
                yield future.result()


def _write_failures(dst: pathlib.Path, failures: Sequence[tuple[str, str]]) -> pathlib.Path | None:
    path = dst / FAILURES_FILE
    if not failures:
        path.unlink(missing_ok=True)  # a previous run's list would be stale: those files are now converted
        return None
    tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
    with open(tmp, "w", encoding="utf-8") as f:
        for rel, reason in failures:
            f.write(f"{rel}\t{' '.join(reason.split())}\n")  # ffmpeg's messages span lines; one line per file
    os.replace(tmp, path)
    return path


def prepare_tree(src, dst, *, sample_rate: int = 16000, num_workers: int | None = None,
                 extensions: Iterable[str] = DEFAULT_EXTENSIONS, limit: int | None = None, ffmpeg=None,
                 log_every: int = 10000) -> PrepareReport:
    """Converts the audio files under `src` to 16-bit mono WAVs at `sample_rate` under `dst` (see the module).

    Args:
      num_workers: processes converting files; None: os.cpu_count(); 1 converts in this process.
      limit: convert only the first `limit` files in sorted order (a trial run).
      ffmpeg: ffmpeg executable to use (see `audio.find_ffmpeg` for the default).
      log_every: log progress every this many files.

    Raises:
      FileNotFoundError / ValueError: `src` is missing, holds no audio, or contains `dst`; bad arguments.
      FfmpegNotFoundError: some file needs ffmpeg and none is found (before any file is converted).
    """
    start_time = time.monotonic()
    if int(sample_rate) != sample_rate or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit!r}")
    if log_every < 1:
        raise ValueError(f"log_every must be >= 1, got {log_every!r}")
    src_root = pathlib.Path(os.path.abspath(os.fspath(src)))
    dst_root = pathlib.Path(os.path.abspath(os.fspath(dst)))
    if dst_root == src_root or src_root in dst_root.parents:
        raise ValueError(f"destination {str(dst_root)!r} is inside the source {str(src_root)!r}; its outputs "
                         "would be read as sources on the next run: choose a directory outside it")
    rels = list_audio_files(src_root, extensions)[:limit]
    outputs = [output_path(rel) for rel in rels]
    if len(set(outputs)) != len(outputs):
        seen: dict[str, str] = {}
        clashes = [f"{seen[o]} and {r}" for r, o in zip(rels, outputs) if seen.setdefault(o, r) != r]
        raise ValueError(f"{src_root}: {len(clashes)} pairs of files would be written to the same .wav, e.g. "
                         f"{clashes[:5]}; keep one of each pair or convert them separately")
    first_needing_ffmpeg = next((rel for rel in rels if audio_lib.needs_ffmpeg(rel)), None)
    if first_needing_ffmpeg is not None:  # once here, not once per file in every worker
        ffmpeg = audio_lib.find_ffmpeg(ffmpeg, for_path=src_root / first_needing_ffmpeg)

    dst_root.mkdir(parents=True, exist_ok=True)
    num_workers = max(1, min(num_workers or os.cpu_count() or 1, len(rels)))
    log.info("%s: %d audio files to %s at %d Hz with %d workers", src_root, len(rels), dst_root, sample_rate,
             num_workers)
    chunk_files = max(1, min(_CHUNK_FILES, -(-len(rels) // num_workers)))
    chunks = ([(os.path.join(src_root, rel), os.path.join(dst_root, out), rel)
               for rel, out in zip(rels[i:i + chunk_files], outputs[i:i + chunk_files])]
              for i in range(0, len(rels), chunk_files))  # built as submitted: absolute paths never all in memory

    counts = {"converted": 0, "done": 0, "failed": 0}
    failures: list[tuple[str, str]] = []
    audio_s, seen_files = 0.0, 0
    for outcomes in _run_chunks(chunks, num_workers, int(sample_rate), ffmpeg):
        for outcome in outcomes:
            counts[outcome.status] += 1
            audio_s += outcome.audio_s
            if outcome.status == "failed":
                failures.append((outcome.rel, outcome.reason))
                log.warning("cannot convert %s: %s", outcome.rel, outcome.reason)
        if (seen_files + len(outcomes)) // log_every > seen_files // log_every:
            log.info("%d/%d files: %d converted (%.1f h of audio), %d already done, %d failed; %.0f s",
                     seen_files + len(outcomes), len(rels), counts["converted"], audio_s / 3600, counts["done"],
                     counts["failed"], time.monotonic() - start_time)
        seen_files += len(outcomes)

    failures.sort()
    return PrepareReport(src=src_root, dst=dst_root, sample_rate_hz=int(sample_rate), converted=counts["converted"],
                         already_done=counts["done"], failures=tuple(failures), audio_s=audio_s,
                         wall_s=time.monotonic() - start_time, failures_file=_write_failures(dst_root, failures))


def main(argv):
    from absl import app, flags  # pylint: disable=import-outside-toplevel
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    f = flags.FLAGS
    try:
        report = prepare_tree(f.src, f.dst, sample_rate=f.sample_rate, num_workers=f.num_workers,
                              extensions=f.extensions, limit=f.limit, ffmpeg=f.ffmpeg, log_every=f.log_every)
    except (FileNotFoundError, ValueError) as error:  # the source, destination or an argument: the user's to fix
        raise cli.UserError(str(error)) from error
    print(report.summary())
    return 1 if report.failures and f.on_bad_audio == "error" else 0


if __name__ == "__main__":
    from absl import flags  # pylint: disable=ungrouped-imports

    # Defined here, not at import: worker processes and tests import this module, and flags are global.
    flags.DEFINE_string("src", None, "audio tree to convert, e.g. VoxCeleb2's <speaker>/<video>/<utt>.m4a")
    flags.DEFINE_string("dst", None, "output tree: the same relative paths with extension .wav")
    flags.DEFINE_integer("sample_rate", 16000, "Hz of the output; other rates are resampled (soxr)")
    flags.DEFINE_integer("num_workers", None, "converting processes (default: all cores; 1: no subprocesses)")
    flags.DEFINE_list("extensions", list(DEFAULT_EXTENSIONS), "source file extensions, comma-separated")
    flags.DEFINE_enum("on_bad_audio", "error", ["error", "skip"],
                      "files that cannot be converted are listed either way; 'error' also makes the exit status 1")
    flags.DEFINE_integer("limit", None, "convert only the first N files in sorted order (a trial run)")
    flags.DEFINE_string("ffmpeg", None, f"ffmpeg executable (default: ${audio_lib.FFMPEG_ENV}, PATH, "
                                        "imageio-ffmpeg)")
    flags.DEFINE_integer("log_every", 10000, "log progress every N files")
    flags.mark_flags_as_required(["src", "dst"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cli.run(main)
