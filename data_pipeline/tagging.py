"""Audio tagging data in DESED's layout: the class list, the metadata loader, clips, log-mel features, batches.

DESED (DCASE task 4) keeps audio folders beside tab-separated metadata files:

    <root>/audio/train/weak/*.wav              <root>/metadata/train/weak.tsv             filename  event_labels
    <root>/audio/validation/validation/*.wav   <root>/metadata/validation/validation.tsv  filename  onset  offset
                                                                                                     event_label

Weak rows list a clip's classes comma-separated; strong rows are one event each (a clip's labels are the union of
its events; an empty event_label means no event). `load_split` / `read_metadata` turn either into a
`TaggingManifest` of paths and multi-hot float32 labels over `CLASSES` (column k is CLASSES[k], in this order
everywhere). Bad input is reported as in the speaker pipeline: a missing file or folder, a bad header, a malformed
row or an unknown class raise one error naming the file (and line) and what is expected; the audio files a tsv
names but that are missing are listed in one error, or skipped and counted under on_bad_audio='skip'; unreadable
audio raises audio.BadAudioError naming the file, or is skipped and counted. The built-in synthetic corpus
(`tagging_synthetic`) is written in this layout.

Features: Kaldi log-mel (`features.fbank`) with DCASE task 4's framing: 128 bins, 2048-sample (128 ms) hamming
windows every 256 samples (16 ms) at 16 kHz, no pre-emphasis, 0 Hz to Nyquist, frames centred as Kaldi's
snip_edges=False (625 frames per 10 s; DCASE's centred STFT gives 626). Batches are a tf.data stream with the
speaker pipeline's positions (`index`, `start_index`). TensorFlow is imported only where features or batches are
made, so reading metadata and generating the corpus need none.
"""

import dataclasses
import logging
import os
import pathlib
from typing import NamedTuple

import numpy as np

import cli
from data_pipeline import audio as audio_lib
from data_pipeline import framing

__all__ = ["CLASSES", "SPLITS", "Event", "TaggingMetadataError", "TaggingManifest", "FeatureConfig", "load_split",
           "read_metadata", "load_clip", "tagging_features", "create_dataset", "batches"]

logger = logging.getLogger(__name__)

CLASSES = ("Alarm_bell_ringing", "Blender", "Cat", "Dishes", "Dog", "Electric_shaver_toothbrush", "Frying",
           "Running_water", "Speech", "Vacuum_cleaner")
# split -> (audio folder, metadata tsv) under a DESED root.
SPLITS = {"train": ("audio/train/weak", "metadata/train/weak.tsv"),
          "validation": ("audio/validation/validation", "metadata/validation/validation.tsv")}
WEAK_HEADER = ("filename", "event_labels")
STRONG_HEADER = ("filename", "onset", "offset", "event_label")
ON_BAD_AUDIO = ("error", "skip")  # as the speaker pipeline's data.on_bad_audio
_MAX_LISTED = 10


class Event(NamedTuple):
    """One event of a strong label: its span in seconds from the clip's start, and its class."""

    onset: float
    offset: float
    label: str


class TaggingMetadataError(cli.UserError, ValueError):
    """A metadata tsv that cannot be read: bad header, malformed row, unknown class; the message names file and line."""


@dataclasses.dataclass(frozen=True, eq=False)
class TaggingManifest:
    """The clips of one tsv. labels[i, k] is 1 when clip i holds CLASSES[k]; `events` only from strong tsv files
    (and then also for clips whose rows say no event: an empty tuple); `skipped` are the rows' files that were
    missing under on_bad_audio='skip'."""

    audio_dir: pathlib.Path
    metadata: pathlib.Path
    paths: tuple[str, ...]
    labels: np.ndarray  # float32 [len(paths), len(CLASSES)], read-only
    events: tuple[tuple[Event, ...], ...] | None
    skipped: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.paths)


def _check_on_bad_audio(on_bad_audio: str) -> None:
    if on_bad_audio not in ON_BAD_AUDIO:
        raise cli.ConfigError(f"unknown on_bad_audio {on_bad_audio!r}; choose one of {list(ON_BAD_AUDIO)}")


def _layout() -> str:
    return "; ".join(f"{split}: <root>/{audio}/*.wav with <root>/{tsv}" for split, (audio, tsv) in SPLITS.items())


def load_split(root, split: str, *, on_bad_audio: str = "error") -> TaggingManifest:
    """The clips of a DESED split ('train': weak labels, 'validation': strong) under root, as `read_metadata`."""
    if split not in SPLITS:
        raise cli.ConfigError(f"unknown tagging split {split!r}; choose one of {list(SPLITS)}")
    audio, tsv = SPLITS[split]
    return read_metadata(pathlib.Path(root) / tsv, pathlib.Path(root) / audio, on_bad_audio=on_bad_audio)


def _parse_rows(tsv: pathlib.Path) -> tuple[bool, dict]:
    """(strong?, {filename: [Event, ...]}) of a weak or strong tsv; weak events have no times (0, 0)."""
    lines = tsv.read_text(encoding="utf-8").splitlines()
    header = tuple(lines[0].split("\t")) if lines else ()
    weak, strong = "\t".join(WEAK_HEADER), "\t".join(STRONG_HEADER)
    if header not in (WEAK_HEADER, STRONG_HEADER):
        found = "\t".join(header)
        raise TaggingMetadataError(f"{tsv}:1: header {found!r} is neither DESED's weak {weak!r} nor its strong "
                                   f"{strong!r} (tab-separated)")
    is_strong, clips = header == STRONG_HEADER, {}
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != len(header) and not (is_strong and len(fields) == 1):  # a bare filename: no event
            raise TaggingMetadataError(f"{tsv}:{lineno}: {len(fields)} fields in {line!r}, expected "
                                       f"{len(header)}: {(strong if is_strong else weak)!r}")
        labels = fields[3:4] if is_strong else fields[1].split(",")
        events = clips.setdefault(fields[0], [])
        for label in filter(None, (x.strip() for x in labels)):
            if label not in CLASSES:
                raise TaggingMetadataError(f"{tsv}:{lineno}: unknown event class {label!r}; the classes are "
                                           f"{', '.join(CLASSES)}")
            try:
                onset, offset = (float(fields[1]), float(fields[2])) if is_strong else (0.0, 0.0)
            except ValueError:
                raise TaggingMetadataError(f"{tsv}:{lineno}: onset {fields[1]!r} or offset {fields[2]!r} is not a "
                                           f"number") from None
            events.append(Event(onset, offset, label))
    if not clips:
        raise TaggingMetadataError(f"{tsv} lists no clips")
    return is_strong, clips


def read_metadata(tsv, audio_dir, *, on_bad_audio: str = "error") -> TaggingManifest:
    """The clips a DESED tsv lists, with multi-hot labels: a weak tsv (filename, event_labels: comma-separated) or a
    strong one (filename, onset, offset, event_label: one row per event; a clip's labels are the union of its
    events; an empty event_label means no event). Files are sorted by name and checked to exist (one listing of
    audio_dir); missing ones raise one MissingInputError listing them, or are skipped and counted (`skipped`) under
    on_bad_audio='skip'. The audio itself is read later (`load_clip`)."""
    tsv, audio_dir = pathlib.Path(tsv).absolute(), pathlib.Path(audio_dir).absolute()
    _check_on_bad_audio(on_bad_audio)
    if not tsv.is_file():
        raise cli.MissingInputError(f"{tsv}: no such metadata file; a DESED tree holds {_layout()}")
    if not audio_dir.is_dir():
        raise cli.MissingInputError(f"{audio_dir}: no such audio folder; a DESED tree holds {_layout()}")
    strong, clips = _parse_rows(tsv)
    with os.scandir(audio_dir) as it:
        present = {e.name for e in it if e.is_file()}
    names = sorted(clips)
    missing = [n for n in names if n not in present and not (audio_dir / n).is_file()]
    if missing and on_bad_audio == "error":
        more = f"\n  ... and {len(missing) - _MAX_LISTED} more" if len(missing) > _MAX_LISTED else ""
        raise cli.MissingInputError(
            f"{len(missing)} of {len(names)} clips listed in {tsv} are missing from {audio_dir} (on_bad_audio='skip' "
            f"skips them):\n  " + "\n  ".join(missing[:_MAX_LISTED]) + more)
    if missing:
        logger.warning("%s: skipping %d clips missing from %s (on_bad_audio='skip'), e.g. %s", tsv, len(missing),
                       audio_dir, missing[0])
    names = sorted(set(names) - set(missing))
    labels = np.zeros((len(names), len(CLASSES)), np.float32)
    for i, name in enumerate(names):
        labels[i, [CLASSES.index(e.label) for e in clips[name]]] = 1.0
    labels.flags.writeable = False
    events = tuple(tuple(sorted(clips[n])) for n in names) if strong else None
    return TaggingManifest(audio_dir, tsv, tuple(str(audio_dir / n) for n in names), labels, events,
                           tuple(str(audio_dir / n) for n in missing))


def load_clip(path, *, sample_rate: int = 16000, clip_seconds: float = 10.0, resample: bool = False) -> np.ndarray:
    """A clip as float32 [clip_seconds * sample_rate] in [-1, 1): cropped, or zero-padded at the end. A file at
    another rate is a BadAudioError, or with `resample` is converted (soxr, audio.decode_audio); so are missing,
    empty, truncated and corrupt files (the message names the file)."""
    if resample:
        wav, _ = audio_lib.decode_audio(path, sample_rate)
    else:
        wav = audio_lib.load_audio(path, sample_rate)
    out = np.zeros(int(round(clip_seconds * sample_rate)), np.float32)
    out[:min(len(out), len(wav))] = wav[:len(out)]
    return out


# ----------------------------------------------------------------------------------------------------------------
# Features and batches
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    """Log-mel options for tagging: DCASE task 4's 2048/256-sample framing at 16 kHz, 128 bins, no pre-emphasis.
    `mean_normalize` subtracts each clip's mean over frames; off by default, since an event that lasts the whole
    clip (a vacuum cleaner) would be subtracted with the background."""

    sample_rate: int = 16000
    clip_seconds: float = 10.0
    num_mel_bins: int = 128
    frame_length_ms: float = 128.0
    frame_shift_ms: float = 16.0
    mean_normalize: bool = False

    @property
    def num_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    @property
    def num_frames(self) -> int:
        """Frames of a clip: Kaldi's snip_edges=False count, (samples + shift // 2) // shift (625 for 10 s)."""
        _, shift = framing.frame_sizes(  # Kaldi's ms -> samples
            self.sample_rate, self.frame_length_ms, self.frame_shift_ms)
        return (self.num_samples + shift // 2) // shift


def tagging_features(waveform, config: FeatureConfig = FeatureConfig()):
    """Log-mel of `waveform` float [..., num_samples] -> tf float32 [..., num_frames, num_mel_bins]."""
    from data_pipeline import features  # pylint: disable=import-outside-toplevel  # TensorFlow: only here
    feats = features.fbank(waveform, config.sample_rate, num_mel_bins=config.num_mel_bins,
                           frame_length_ms=config.frame_length_ms, frame_shift_ms=config.frame_shift_ms,
                           preemphasis=0.0, snip_edges=False, low_freq_hz=0.0)
    return features.mean_normalize(feats) if config.mean_normalize else feats


def create_dataset(manifest: TaggingManifest, *, batch_size: int, seed: int = 0, start_index: int = 0,
                   num_epochs: int | None = None, shuffle: bool = True, feature_config: FeatureConfig = FeatureConfig(),
                   resample: bool = False, on_bad_audio: str = "error", bad_audio_log=None, process_index: int = 0,
                   process_count: int = 1, num_parallel_calls: int | None = None, prefetch_batches: int = 2):
    """tf.data batches {'feats': f32[B, num_frames, num_mel_bins], 'labels': f32[B, 10], 'index': i64[B]}.

    As the speaker pipeline's training stream: epoch e visits the clips in a permutation seeded by (seed, e)
    (`shuffle`; else in order), `index` is the position in that stream (the clip is manifest.paths[index % N] when
    not shuffled), and a batch is a function of its positions alone, so `start_index` (one past the last index
    trained on) resumes exactly. Endless with full batches, or `num_epochs` passes with a smaller last batch. Each
    of `process_count` processes takes every process_count-th position. Bad audio raises BadAudioError (through
    `batches`: a PipelineError naming the file), or under on_bad_audio='skip' is dropped and counted in
    `bad_audio_log` (an input_pipeline.BadAudioLog).
    """
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    from data_pipeline import input_pipeline  # pylint: disable=import-outside-toplevel

    _check_on_bad_audio(on_bad_audio)
    if len(manifest) == 0:
        raise ValueError(f"{manifest.metadata}: no clips to read")
    bad_audio_log = bad_audio_log if bad_audio_log is not None else input_pipeline.BadAudioLog()
    parallel = tf.data.AUTOTUNE if num_parallel_calls is None else num_parallel_calls
    n, cfg = len(manifest), feature_config
    paths_t, labels_t = tf.constant(list(manifest.paths)), tf.constant(manifest.labels)

    def epoch_order(epoch):
        order = tf.range(n, dtype=tf.int64)
        if shuffle:
            order = tf.random.experimental.stateless_shuffle(order, seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(order)

    def read(path_bytes):
        try:
            return load_clip(path_bytes.decode(), sample_rate=cfg.sample_rate, clip_seconds=cfg.clip_seconds,
                             resample=resample), True
        except audio_lib.BadAudioError as error:
            if on_bad_audio == "error":
                raise
            bad_audio_log.add(error)
            return np.zeros(cfg.num_samples, np.float32), False

    @input_pipeline.graph_function
    def load(index, clip):
        wav, ok = tf.numpy_function(read, [paths_t[clip]], [tf.float32, tf.bool], stateful=False)
        return {"wav": tf.ensure_shape(wav, [cfg.num_samples]), "labels": labels_t[clip], "index": index,
                "ok": tf.ensure_shape(ok, [])}

    start_epoch, offset = divmod(start_index, n)
    ds = tf.data.Dataset.range(start_epoch, 2**62 if num_epochs is None else max(num_epochs, start_epoch))
    ds = ds.flat_map(epoch_order).enumerate(start=start_epoch * n).skip(offset)
    if process_count > 1:
        ds = ds.filter(lambda position, _: position % process_count == process_index)
    ds = ds.map(load, num_parallel_calls=parallel, deterministic=True).filter(lambda x: x["ok"])
    ds = ds.batch(batch_size, drop_remainder=num_epochs is None)

    @input_pipeline.graph_function
    def featurize(b):
        return {"feats": tagging_features(b["wav"], cfg), "labels": b["labels"], "index": b["index"]}

    ds = ds.map(featurize, num_parallel_calls=parallel, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = input_pipeline.AUTOTUNE_MODEL
    return ds.with_options(options).prefetch(prefetch_batches)


def batches(manifest: TaggingManifest, **kwargs):
    """`create_dataset(manifest, **kwargs)` as an iterator of numpy dicts; a bad file surfaces as a PipelineError
    naming it, with how to skip such files."""
    from data_pipeline import input_pipeline  # pylint: disable=import-outside-toplevel
    return input_pipeline.numpy_batches(create_dataset(manifest, **kwargs), hint=(
        " (on_bad_audio='skip' skips such files; resample=True converts other sample rates while reading)"))
