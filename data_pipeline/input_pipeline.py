"""tf.data pipelines: random fixed-length chunks for training, whole utterances in padded buckets for evaluation.

Training stream. Every epoch is a seeded permutation of the file list (stateless, so epoch e's order depends only on
(seed, e)), and every example carries its position in that endless stream (`index`). The random chunk start and the
dither noise are drawn from (seed, index), so a batch is a pure function of the positions it holds: a resumed run
skips to the first position after the last one trained on and sees exactly the batches an uninterrupted run would.

Audio is read with soundfile inside a parallel `numpy_function` (only the chunk's samples are read from disk); bad
files raise `BadAudioError` naming the file, or with `on_bad_audio='skip'` are logged once, counted and filtered out.
Fbank runs batched in TensorFlow after batching, which is several times faster than per utterance.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Sequence

import numpy as np
import tensorflow as tf

# The accelerator belongs to JAX: TensorFlow (input only) must not reserve GPU memory.
tf.config.set_visible_devices([], "GPU")

from data_pipeline import audio as audio_lib
from data_pipeline import features

log = logging.getLogger(__name__)

ON_BAD_AUDIO = ("error", "skip")


@dataclasses.dataclass(frozen=True)
class FbankConfig:
    """Kaldi fbank options of the pipeline (WeSpeaker's: 80 bins, 25/10 ms, hamming, dither 1.0 in training)."""

    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window_type: str = "hamming"
    dither: float = 1.0

    def compute(self, waveform, dither: float, seed=None):
        feats = features.fbank(waveform, self.sample_rate, num_mel_bins=self.num_mel_bins,
                               frame_length_ms=self.frame_length_ms, frame_shift_ms=self.frame_shift_ms,
                               window_type=self.window_type, dither=dither, seed=seed)
        return features.mean_normalize(feats)

    def num_samples(self, num_frames: int) -> int:
        return features.num_samples_for_frames(num_frames, self.sample_rate, self.frame_length_ms,
                                               self.frame_shift_ms)


class BadAudioLog:
    """Files skipped under on_bad_audio='skip': each is logged once; the count goes into the run summary."""

    def __init__(self):
        self._lock = threading.Lock()
        self._reasons: dict[str, str] = {}

    def add(self, error: audio_lib.BadAudioError) -> None:
        with self._lock:
            if error.path in self._reasons:
                return
            self._reasons[error.path] = str(error)
        log.warning("skipping bad audio (data.on_bad_audio='skip'): %s", error)

    @property
    def count(self) -> int:
        with self._lock:
            return len(self._reasons)

    @property
    def files(self) -> list[str]:
        with self._lock:
            return sorted(self._reasons)


def _check_on_bad_audio(on_bad_audio: str) -> None:
    if on_bad_audio not in ON_BAD_AUDIO:
        raise ValueError(f"unknown data.on_bad_audio {on_bad_audio!r}; choose one of {list(ON_BAD_AUDIO)}")


def random_chunk(path: str, num_samples: int, rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """A random `num_samples` window of the file; shorter audio is repeated to length (as WeSpeaker does)."""
    info = audio_lib.audio_info(path)
    audio_lib.check_sample_rate(info, path, sample_rate)
    if info.num_samples >= num_samples:
        start = int(rng.integers(0, info.num_samples - num_samples + 1))
        return audio_lib.load_audio(path, sample_rate, start=start, num_samples=num_samples)
    wav = audio_lib.load_audio(path, sample_rate)
    return np.tile(wav, num_samples // len(wav) + 1)[:num_samples]


def create_train_dataset(paths: Sequence[str], labels: Sequence[int], *, batch_size: int, num_frames: int,
                         seed: int, fbank: FbankConfig = FbankConfig(), start_index: int = 0,
                         on_bad_audio: str = "error", bad_audio_log: BadAudioLog | None = None,
                         num_parallel_calls: int = tf.data.AUTOTUNE, prefetch_batches: int = 2,
                         process_index: int = 0, process_count: int = 1) -> tf.data.Dataset:
    """Endless batches {'feats': f32[B, num_frames, bins], 'label': i32[B], 'index': i64[B]}.

    `start_index` is the first stream position to produce (one past the last `index` already trained on).
    With several processes, each takes every process_count-th position and `batch_size` is per process.
    """
    _check_on_bad_audio(on_bad_audio)
    if len(paths) == 0 or len(paths) != len(labels):
        raise ValueError(f"need one label per path and at least one path, got {len(paths)} and {len(labels)}")
    bad_audio_log = bad_audio_log if bad_audio_log is not None else BadAudioLog()
    num_samples = fbank.num_samples(num_frames)
    paths_t = tf.constant([str(p) for p in paths])
    labels_t = tf.constant(np.asarray(labels, np.int32))
    n = len(paths)

    def epoch_order(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(order)

    def load(index, file_index):
        path = paths_t[file_index]

        def read(path_bytes, position):
            path_str = path_bytes.decode()
            try:
                wav = random_chunk(path_str, num_samples, np.random.default_rng([seed, int(position)]),
                                   fbank.sample_rate)
                return wav.astype(np.float32), True
            except audio_lib.BadAudioError as error:
                if on_bad_audio == "error":
                    raise
                bad_audio_log.add(error)
                return np.zeros(num_samples, np.float32), False

        wav, ok = tf.numpy_function(read, [path, index], [tf.float32, tf.bool], stateful=False)
        wav.set_shape([num_samples])
        ok.set_shape([])
        return {"wav": wav, "label": labels_t[file_index], "index": index, "ok": ok}

    def featurize(batch):
        # Dither noise is seeded by the batch's first stream position: reproducible across resumes.
        feats = fbank.compute(batch["wav"], fbank.dither, seed=tf.stack([tf.constant(seed, tf.int64),
                                                                          batch["index"][0]]))
        return {"feats": feats, "label": batch["label"], "index": batch["index"]}

    # (stream position, file index) from `start_index` on, without walking through the epochs before it.
    start_epoch, offset = divmod(start_index, n)
    ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_order).enumerate(start=start_epoch * n)
    ds = ds.skip(offset)
    if process_count > 1:
        ds = ds.filter(lambda position, _: position % process_count == process_index)
    ds = ds.map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.filter(lambda x: x["ok"])
    ds = ds.batch(batch_size, drop_remainder=True)
    ds = ds.map(featurize, num_parallel_calls=num_parallel_calls, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    return ds.with_options(options).prefetch(prefetch_batches)


def create_eval_dataset(paths: Sequence[str], *, fbank: FbankConfig = FbankConfig(), bucket_frames: int = 200,
                        batch_frames: int = 16000, num_parallel_calls: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
    """Whole utterances, no dither, grouped by length into padded batches.

    Yields {'feats': f32[b, L, bins], 'lengths': i32[b], 'index': i64[b]} where L is a multiple of `bucket_frames`
    and b <= max(1, batch_frames // L) (the last batch of a bucket may be smaller); `index` points into `paths`.
    Padding is zeros after mean normalisation; the model masks it, so embeddings equal unpadded ones.
    """
    paths_t = tf.constant([str(p) for p in paths])
    min_samples = fbank.num_samples(1)

    def read(path_bytes):
        path_str = path_bytes.decode()
        wav = audio_lib.load_audio(path_str, fbank.sample_rate)
        if len(wav) < min_samples:
            raise audio_lib.BadAudioError(path_str, f"only {len(wav)} samples, shorter than one frame")
        return wav.astype(np.float32)

    def load(index):
        wav = tf.numpy_function(read, [paths_t[index]], tf.float32, stateful=False)
        wav.set_shape([None])
        feats = fbank.compute(wav, 0.0)
        return {"feats": feats, "lengths": tf.shape(feats)[0], "index": index}

    def bucket_id(x):
        return tf.cast((x["lengths"] + bucket_frames - 1) // bucket_frames - 1, tf.int64)

    def window_size(key):
        return tf.maximum(tf.constant(1, tf.int64), batch_frames // ((key + 1) * bucket_frames))

    def pad_batch(key, window):
        length = (key + 1) * bucket_frames
        return window.padded_batch(window_size(key), padded_shapes={
            "feats": tf.stack([length, tf.constant(fbank.num_mel_bins, tf.int64)]), "lengths": [], "index": []})

    ds = tf.data.Dataset.range(len(paths)).map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
    return ds.group_by_window(bucket_id, pad_batch, window_size_func=window_size).prefetch(2)


class PipelineError(ValueError):
    """A failure inside the tf.data pipeline, re-raised with the message of its cause (e.g. the bad file)."""


def numpy_batches(ds: tf.data.Dataset, hint: str = ""):
    """Iterates a dataset as numpy dicts; an error raised while reading audio surfaces with its own message
    (plus `hint`, e.g. how to skip bad files in training)."""
    iterator = ds.as_numpy_iterator()
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except tf.errors.OpError as error:
            # numpy_function wraps Python exceptions; keep their text (which names the file), drop TF's trace.
            message = error.message
            for marker in ("BadAudioError: ", "Error: "):
                if marker in message:
                    message = message.split(marker, 1)[1].split("\n", 1)[0]
                    break
            raise PipelineError(message + hint) from None
        yield batch
