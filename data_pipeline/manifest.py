"""Manifests of VoxCeleb-layout audio trees and speaker-verification trial lists.

Training data
-------------
:func:`scan_dir` walks ``root/<speaker>/<video>/<utt>.wav`` (VoxCeleb1/2) or ``root/<speaker>/<utt>.wav``
and returns a :class:`Manifest`: absolute paths in sorted (deterministic) order, the speaker of every path
(always the first path component under ``root``) and an ``int32`` label per path, the index of its speaker in
the sorted tuple of unique speakers. The walk uses :func:`os.scandir` and the directory-entry type only, never
a per-file ``stat``, so VoxCeleb2 dev (1,092,009 utterances) is listed in seconds on a local disk.

Because even that is slow on network file systems, :func:`write_list` / :func:`read_list` cache a manifest as
a text file of ``<relative path> <speaker>`` lines (WeSpeaker's ``wav.scp`` and ``utt2spk`` in one file), with
a ``# root: <absolute root>`` header line::

    # root: /data/voxceleb2/dev/aac
    id00012/21Uxsk56VDQ/00001.wav id00012

Trial lists
-----------
:func:`read_trials` reads a verification trial list in either of the two usual formats, detected per file:

* VoxCeleb: ``1 id10270/x6uYqmx31kE/00001.wav id10270/8jEAjG6SegY/00008.wav`` (label first, ``1``/``0``);
* Kaldi: ``<enroll> <test> target|nontarget`` (label last).

:func:`check_trial_files` verifies that every utterance of a trial list exists under an audio root and reports
all missing files at once; :func:`parse_trial_paths` splits the comma-separated config form of several lists.

This module imports numpy and the standard library only.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib
from typing import Iterable, Sequence

import numpy as np

from cli import MissingInputError

__all__ = [
    "AUDIO_EXTENSIONS",
    "Manifest",
    "Trials",
    "VOX1_LIST_NAMES",
    "check_trial_files",
    "parse_trial_paths",
    "read_list",
    "read_trials",
    "scan_dir",
    "trial_list_name",
    "write_list",
]

AUDIO_EXTENSIONS = (".wav", ".flac")
# VoxCeleb2 dev, the recipe's training set (WeSpeaker's data lists).
VOXCELEB2_DEV_SPEAKERS = 5_994
VOXCELEB2_DEV_UTTERANCES = 1_092_009
_ROOT_HEADER = "# root:"
_MAX_LISTED = 10


# ----------------------------------------------------------------------------------------------------------------
# Training manifests
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Manifest:
    """Audio files of a speaker-labelled tree.

    Attributes:
      root: absolute root directory of the tree.
      paths: absolute paths of the audio files, sorted.
      speakers: speaker id per path (for :func:`scan_dir` the first path component under ``root``; for
        :func:`read_list` the speaker column of the list file).
      speaker_ids: sorted unique speakers; a path's label is the index of its speaker here.
      labels: ``int32`` label per path (read-only).
    """

    root: pathlib.Path
    paths: tuple[str, ...]
    speakers: tuple[str, ...]
    speaker_ids: tuple[str, ...]
    labels: np.ndarray

    def __post_init__(self):
        labels = np.asarray(self.labels, dtype=np.int32)
        if labels.ndim != 1 or not len(self.paths) == len(self.speakers) == labels.shape[0]:
            raise ValueError(
                f"Manifest fields disagree in length: {len(self.paths)} paths, {len(self.speakers)} speakers, "
                f"labels of shape {labels.shape}")
        if labels.flags.writeable:
            labels = labels.copy() if labels is self.labels else labels
            labels.flags.writeable = False
        object.__setattr__(self, "labels", labels)

    @property
    def num_speakers(self) -> int:
        return len(self.speaker_ids)

    def __len__(self) -> int:
        return len(self.paths)

    # ndarray fields make the generated __eq__/__hash__ unusable; compare by value instead.
    def __eq__(self, other):
        if not isinstance(other, Manifest):
            return NotImplemented
        return (self.root == other.root and self.paths == other.paths and self.speakers == other.speakers
                and self.speaker_ids == other.speaker_ids and np.array_equal(self.labels, other.labels))

    def __hash__(self):
        return hash((self.root, self.paths, self.speakers))

    def __repr__(self):
        return f"Manifest(root={str(self.root)!r}, {len(self)} files, {self.num_speakers} speakers)"


def _normalise_extensions(extensions: str | Iterable[str]) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = (extensions,)
    exts = tuple(e.lower() if e.startswith(".") else "." + e.lower() for e in extensions)
    if not exts:
        raise ValueError("extensions must name at least one file extension, e.g. ('.wav', '.flac')")
    return exts


def _build_manifest(root: pathlib.Path, rel_paths: list[str], speakers: Sequence[str]) -> Manifest:
    """Builds a Manifest from relative paths (os.sep-separated) and their speakers, sorting by path."""
    order = sorted(range(len(rel_paths)), key=rel_paths.__getitem__)
    prefix = str(root).rstrip(os.sep) + os.sep if str(root) != os.sep else os.sep
    paths = tuple(prefix + rel_paths[i] for i in order)
    spk = tuple(speakers[i] for i in order)
    speaker_ids = tuple(sorted(set(spk)))
    index = {s: i for i, s in enumerate(speaker_ids)}
    labels = np.fromiter((index[s] for s in spk), dtype=np.int32, count=len(spk))
    return Manifest(root=root, paths=paths, speakers=spk, speaker_ids=speaker_ids, labels=labels)


def scan_dir(root, extensions=AUDIO_EXTENSIONS) -> Manifest:
    """Lists the audio files of a speaker-per-directory tree.

    Accepts ``root/<speaker>/<video>/<utt>.wav`` (VoxCeleb1/2) and ``root/<speaker>/<utt>.wav``; deeper trees are
    walked as well. The speaker is always the first path component under ``root``; files directly in ``root`` have
    no speaker and are ignored, as are hidden entries (names starting with ``.``, e.g. macOS ``._x.wav`` files) and
    files whose extension (case-insensitive) is not in ``extensions``. Symbolic links to directories are followed.

    Args:
      root: the tree's root directory.
      extensions: file extensions counted as audio.

    Returns:
      A :class:`Manifest` sorted by path.

    Raises:
      FileNotFoundError: ``root`` does not exist or is not a directory.
      ValueError: no audio file was found.
    """
    exts = _normalise_extensions(extensions)
    root = pathlib.Path(os.path.abspath(os.fspath(root)))
    if not root.is_dir():
        raise MissingInputError(f"Audio root {str(root)!r} does not exist or is not a directory")

    rel_paths: list[str] = []
    speakers: list[str] = []
    sep = os.sep
    with os.scandir(root) as it:
        speaker_dirs = sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())
    for speaker in speaker_dirs:
        # Iterative depth-first walk; entry.is_dir()/is_file() use the d_type of the directory entry (no stat).
        stack = [(os.path.join(root, speaker), speaker)]
        while stack:
            abs_dir, rel_dir = stack.pop()
            with os.scandir(abs_dir) as it:
                for entry in it:
                    name = entry.name
                    if name.startswith("."):
                        continue
                    if entry.is_dir():
                        stack.append((entry.path, rel_dir + sep + name))
                    elif name.lower().endswith(exts) and entry.is_file():
                        rel_paths.append(rel_dir + sep + name)
                        speakers.append(speaker)
    if not rel_paths:
        raise ValueError(
            f"No audio files with extensions {list(exts)} found under {str(root)!r} "
            "(expected root/<speaker>/[<video>/]<utterance>)")
    return _build_manifest(root, rel_paths, speakers)


def write_list(manifest: Manifest, path) -> None:
    """Writes ``manifest`` as a ``<relative path> <speaker>`` list file (atomically) with a ``# root:`` header.

    Relative paths are written with ``/`` separators. Raises ValueError if a relative path or speaker contains
    whitespace (the list format could not represent it) or a path is not under ``manifest.root``.
    """
    path = pathlib.Path(path)
    root = str(manifest.root)
    prefix = root.rstrip(os.sep) + os.sep if root != os.sep else os.sep
    lines = [f"{_ROOT_HEADER} {root}\n"]
    for p, spk in zip(manifest.paths, manifest.speakers):
        if not p.startswith(prefix):
            raise ValueError(f"Path {p!r} is not under the manifest root {root!r}")
        rel = p[len(prefix):].replace(os.sep, "/")
        if len(rel.split()) != 1 or len(spk.split()) != 1 or rel.strip() != rel or spk.strip() != spk:
            raise ValueError(f"Cannot write {p!r} (speaker {spk!r}) to a list file: whitespace in path or speaker")
        lines.append(f"{rel} {spk}\n")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(lines)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def read_list(path, root=None) -> Manifest:
    """Reads a list file written by :func:`write_list` (or any ``<relative path> <speaker>`` file).

    Args:
      path: the list file. Blank lines and lines starting with ``#`` are ignored, except that a
        ``# root: <dir>`` line records the audio root.
      root: audio root the relative paths are joined to; ``None`` uses the file's ``# root:`` header. The files
        themselves are not checked (that would defeat the cache).

    Returns:
      A :class:`Manifest` sorted by path; speakers are taken from the list's second column.

    Raises:
      FileNotFoundError: the list file is missing.
      ValueError: a malformed line (file and line number named), a duplicate or absolute path, no entries, or
        ``root`` is None and the file has no ``# root:`` header.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise MissingInputError(f"Manifest list file {str(path)!r} does not exist")
    header_root = None
    rel_paths: list[str] = []
    speakers: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                if stripped.startswith(_ROOT_HEADER) and header_root is None:
                    header_root = stripped[len(_ROOT_HEADER):].strip()
                continue
            fields = stripped.split()
            if len(fields) != 2 or fields[0].startswith("/"):
                raise ValueError(
                    f"{path}:{lineno}: malformed manifest line {stripped!r} "
                    "(expected '<relative path> <speaker>')")
            rel_paths.append(fields[0].replace("/", os.sep))
            speakers.append(fields[1])
    if root is None:
        if not header_root:
            raise ValueError(f"Manifest list {str(path)!r} has no '{_ROOT_HEADER} <dir>' header; pass root=")
        root = header_root
    if not rel_paths:
        raise ValueError(f"Manifest list {str(path)!r} has no entries")
    if len(set(rel_paths)) != len(rel_paths):
        seen, dups = set(), []
        for r in rel_paths:
            if r in seen:
                dups.append(r)
            seen.add(r)
        raise ValueError(f"Manifest list {str(path)!r} has {len(dups)} duplicate paths, e.g. {dups[:_MAX_LISTED]}")
    return _build_manifest(pathlib.Path(os.path.abspath(os.fspath(root))), rel_paths, speakers)


# ----------------------------------------------------------------------------------------------------------------
# Trial lists
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Trials:
    """A verification trial list.

    Attributes:
      name: used in metric names: the file's stem (e.g. ``vox1_O_cleaned``), except that the official VoxCeleb1
        files are renamed as WeSpeaker does (``veri_test2.txt`` -> ``vox1_O_cleaned``; see VOX1_LIST_NAMES).
      path: the list file.
      enroll: enrollment utterance key per trial, as written in the list (VoxCeleb: relative paths).
      test: test utterance key per trial.
      labels: ``int8`` per trial, 1 target / 0 non-target (read-only).
    """

    name: str
    path: pathlib.Path
    enroll: tuple[str, ...]
    test: tuple[str, ...]
    labels: np.ndarray

    def __post_init__(self):
        labels = np.asarray(self.labels, dtype=np.int8)
        if labels.ndim != 1 or not len(self.enroll) == len(self.test) == labels.shape[0]:
            raise ValueError(
                f"Trials fields disagree in length: {len(self.enroll)} enroll, {len(self.test)} test, "
                f"labels of shape {labels.shape}")
        if labels.flags.writeable:
            labels = labels.copy() if labels is self.labels else labels
            labels.flags.writeable = False
        object.__setattr__(self, "labels", labels)

    @functools.cached_property
    def utterances(self) -> tuple[str, ...]:
        """Sorted unique utterance keys of ``enroll`` and ``test``."""
        return tuple(sorted(set(self.enroll).union(self.test)))

    def __len__(self) -> int:
        return len(self.enroll)

    def __eq__(self, other):
        if not isinstance(other, Trials):
            return NotImplemented
        return (self.name == other.name and self.path == other.path and self.enroll == other.enroll
                and self.test == other.test and np.array_equal(self.labels, other.labels))

    def __hash__(self):
        return hash((self.name, self.path, self.enroll, self.test))

    def __repr__(self):
        return (f"Trials(name={self.name!r}, {len(self)} trials, {int(np.sum(self.labels))} target, "
                f"path={str(self.path)!r})")


_VOX_LABELS = {"1": 1, "0": 0}
_KALDI_LABELS = {"target": 1, "nontarget": 0}


def _detect_trial_format(fields: list[str]) -> str | None:
    if len(fields) != 3:
        return None
    if fields[0] in _VOX_LABELS:
        return "voxceleb"
    if fields[2].lower() in _KALDI_LABELS:
        return "kaldi"
    return None


def read_trials(path) -> Trials:
    """Reads a trial list in VoxCeleb (``1 enroll test``) or Kaldi (``enroll test target|nontarget``) format.

    The format is detected from the first non-blank line and every other line must follow it. Blank lines and
    surrounding whitespace are ignored; Kaldi labels are case-insensitive.

    Raises:
      FileNotFoundError: the file does not exist.
      ValueError: a malformed line (message names the file and line number and shows the line), or no trials.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise MissingInputError(f"Trial list {str(path)!r} does not exist")
    fmt = None
    enroll: list[str] = []
    test: list[str] = []
    labels: list[int] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            fields = line.split()
            if not fields:
                continue
            if fmt is None:
                fmt = _detect_trial_format(fields)
            ok = len(fields) == 3
            if ok and fmt == "voxceleb":
                label = _VOX_LABELS.get(fields[0])
                e, t = fields[1], fields[2]
            elif ok and fmt == "kaldi":
                label = _KALDI_LABELS.get(fields[2].lower())
                e, t = fields[0], fields[1]
            else:
                label = None
            if label is None:
                expected = {"voxceleb": "'<1|0> <enroll> <test>'", "kaldi": "'<enroll> <test> <target|nontarget>'"}
                raise ValueError(
                    f"{path}:{lineno}: malformed trial line {line.strip()!r}; expected "
                    f"{expected.get(fmt, expected['voxceleb'] + ' or ' + expected['kaldi'])}")
            enroll.append(e)
            test.append(t)
            labels.append(label)
    if not labels:
        raise ValueError(f"Trial list {str(path)!r} contains no trials")
    return Trials(name=trial_list_name(path), path=path, enroll=tuple(enroll), test=tuple(test),
                  labels=np.asarray(labels, dtype=np.int8))


# The official VoxCeleb1 list files, by the names WeSpeaker's recipe gives them (the '2' lists are the cleaned ones).
VOX1_LIST_NAMES = {"veri_test": "vox1_O", "veri_test2": "vox1_O_cleaned", "list_test_all": "vox1_E",
                   "list_test_all2": "vox1_E_cleaned", "list_test_hard": "vox1_H", "list_test_hard2": "vox1_H_cleaned"}


def trial_list_name(path) -> str:
    """A trial list's name in metrics: the official VoxCeleb1 files map to vox1_O/E/H[_cleaned]; others: the stem."""
    stem = pathlib.Path(path).stem
    return VOX1_LIST_NAMES.get(stem, stem)


def check_trial_files(trials: Trials, root) -> None:
    """Checks that every utterance of ``trials`` exists as a file ``root/<key>``.

    Lists each needed directory once with :func:`os.scandir` rather than stat-ing every file, and reports all
    missing files in one error.

    Raises:
      FileNotFoundError: ``root`` is missing, or files are missing; the message names the trial list, the root,
        the number of missing files and the first 10 of them.
    """
    root_str = os.path.abspath(os.fspath(root))
    if not os.path.isdir(root_str):
        raise MissingInputError(
            f"Audio root {root_str!r} for trial list {str(trials.path)!r} does not exist or is not a directory")
    by_dir: dict[str, list[tuple[str, str]]] = {}
    for key in trials.utterances:
        parent, name = os.path.split(os.path.join(root_str, key))
        by_dir.setdefault(parent, []).append((key, name))
    missing: list[str] = []
    for parent, entries in by_dir.items():
        try:
            with os.scandir(parent) as it:
                files = {e.name for e in it if e.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            files = set()
        missing.extend(key for key, name in entries if name not in files)
    if missing:
        missing.sort()
        shown = "\n  ".join(missing[:_MAX_LISTED])
        more = f"\n  ... and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        raise MissingInputError(
            f"{len(missing)} of {len(trials.utterances)} utterances of trial list {str(trials.path)!r} are missing "
            f"under audio root {root_str!r}:\n  {shown}{more}")


def parse_trial_paths(spec: str) -> list[pathlib.Path]:
    """Splits a config string of comma-separated trial-list paths; whitespace is stripped, empty entries skipped.

    >>> parse_trial_paths(" a/vox1_O.txt, ,b/vox1_E.txt ,")
    [PosixPath('a/vox1_O.txt'), PosixPath('b/vox1_E.txt')]
    """
    if spec is None:
        return []
    return [pathlib.Path(p.strip()) for p in str(spec).split(",") if p.strip()]
