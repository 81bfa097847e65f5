"""tf.data pipelines: random fixed-length chunks for training, whole utterances in padded buckets for evaluation.

Training stream. Audio comes from a wav tree or from TFRecord shards (shards.py). From files, every epoch is a
seeded permutation of the file list (stateless, so epoch e's order depends only on (seed, e)); from shards, a
seeded permutation of the shards read through a local shuffle buffer. Either way every example carries its position
in that endless stream (`index`), and everything random downstream is drawn from (seed, index): the chunk start,
the speed (0.9 / 1.0 / 1.1), the augmentation and the dither noise. So a batch is a pure function of the positions
it holds, and a resumed run skips to the first position after the last one trained on and sees exactly the batches
an uninterrupted run would.

Per example, WeSpeaker's order: random chunk -> speed perturbation -> reverb or noise (augment.py); per batch: Kaldi
fbank (features.py) with dither and mean normalisation, batched, which is several times faster than per utterance.
Speed perturbation reads a chunk long enough for the chosen speed and cuts the perturbed result to the chunk length
(WeSpeaker perturbs the whole utterance first; for a uniformly random chunk the two are the same distribution).

Wav files are read with soundfile inside a parallel `numpy_function` (only the chunk's samples are read from disk);
bad files raise `BadAudioError` naming the file, or with `on_bad_audio='skip'` are logged once, counted and filtered
out. The same holds for RIR / noise files and for corrupt shards.
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

from cli import UserError
from data_pipeline import audio as audio_lib
from data_pipeline import augment
from data_pipeline import features
from data_pipeline import manifest as manifest_lib
from data_pipeline import shards as shards_lib

log = logging.getLogger(__name__)

ON_BAD_AUDIO = ("error", "skip")

# tf.data functions are plain graph code (tf.cond and tf.switch_case where they branch), so they are traced as
# written, without AutoGraph: converting them re-parsed the source of every function they call (Kaldi fbank, speed
# perturbation): about 1 s of a tiny training run's start (11.2 -> 10.1 s on the 2-core Xeon), and it read
# lambdas' source from files.
graph_function = tf.autograph.experimental.do_not_convert
# tf.data's autotuning model off (map parallelism then stays at its default, the number of cores): with it, deleting
# an endless training iterator at the end of a run waited for the model's thread (RootDataset's destructor, blocked
# in UnboundedThreadPool's thread wrapper) for longer the longer the run: 13-63 s in 4 of 7 tagging demos, 37 s
# after the speaker demo's 370 steps, 4 s after 74 (2026-12-02, 2-core Xeon).
AUTOTUNE_MODEL = False


@dataclasses.dataclass(frozen=True)
class FbankConfig:
    """Kaldi fbank options of the pipeline (WeSpeaker's: 80 bins, 25/10 ms, hamming, dither 1.0 in training)."""

    sample_rate: int = 16000
    num_mel_bins: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    window_type: str = "hamming"
    dither: float = 1.0

    @classmethod
    def from_config(cls, data_config) -> "FbankConfig":
        """The options an sv_jax `config.data` gives."""
        return cls(sample_rate=data_config.sample_rate, num_mel_bins=data_config.num_mel_bins,
                   frame_length_ms=data_config.frame_length_ms, frame_shift_ms=data_config.frame_shift_ms,
                   window_type=data_config.window_type, dither=data_config.dither)

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


def _random_chunk_tf(audio, num_samples, seed):
    """random_chunk in TF ops for in-memory int16 audio [n] -> float32 [num_samples] in [-1, 1)."""
    n = tf.shape(audio)[0]
    start = tf.random.stateless_uniform([], seed=seed, minval=0, maxval=tf.maximum(n - num_samples, 0) + 1,
                                        dtype=tf.int32)
    repeats = num_samples // tf.maximum(n, 1) + 1
    chunk = tf.cond(n >= num_samples, lambda: audio[start:start + num_samples],
                    lambda: tf.tile(audio, [repeats])[:num_samples])
    return tf.cast(chunk, tf.float32) * (1.0 / 32768.0)


def create_train_dataset(train: manifest_lib.Manifest, *, batch_size: int, num_frames: int, seed: int,
                         fbank: FbankConfig = FbankConfig(), shards: shards_lib.ShardSet | None = None,
                         speed_perturb: bool = False, augmenter=None, start_index: int = 0,
                         on_bad_audio: str = "error", bad_audio_log: BadAudioLog | None = None,
                         num_parallel_calls: int = tf.data.AUTOTUNE, prefetch_batches: int = 2,
                         shuffle_buffer: int = 2500, process_index: int = 0,
                         process_count: int = 1) -> tf.data.Dataset:
    """Endless batches {'feats': f32[B, num_frames, bins], 'label': i32[B], 'index': i64[B]}.

    Audio comes from `train`'s files, or from `shards` (written from them) when given. Per example, in WeSpeaker's
    order: a random chunk, speed perturbation (`speed_perturb`: 0.9 / 1.0 / 1.1 with equal probability, perturbed
    copies are new classes: label + num_speakers * speed index), `augmenter` (reverb or noise; see augment.py);
    then per batch Kaldi fbank with dither and mean normalisation.
    `start_index` is the first stream position to produce (one past the last `index` already trained on).
    With several processes, `batch_size` is per process and each reads its share (every process_count-th
    position of the file stream, or its own shards) so `index` values never collide.
    """
    _check_on_bad_audio(on_bad_audio)
    if len(train) == 0:
        raise ValueError("the training manifest is empty")
    bad_audio_log = bad_audio_log if bad_audio_log is not None else BadAudioLog()
    num_samples = fbank.num_samples(num_frames)
    speeds = augment.SPEEDS if speed_perturb else (1.0,)
    read_lengths = tf.constant([augment.speed_input_length(num_samples, s) for s in speeds], tf.int32)

    def draw_speed(index):
        if len(speeds) == 1:
            return tf.constant(0, tf.int32)
        return tf.random.stateless_uniform([], seed=tf.stack([tf.constant(seed, tf.int64) + 1, index]),
                                           minval=0, maxval=len(speeds), dtype=tf.int32)

    if shards is None:
        ds, load = _wav_tree_examples(train, seed, start_index, fbank.sample_rate, draw_speed, read_lengths,
                                      on_bad_audio, bad_audio_log, process_index, process_count)
    else:
        ds, load = _shard_examples(train, shards, seed, start_index, draw_speed, read_lengths, on_bad_audio,
                                   bad_audio_log, shuffle_buffer, process_index, process_count)

    @graph_function
    def example(*source_item):
        x = load(*source_item)
        wav, speed = x.pop("wav"), x.pop("speed")
        if len(speeds) > 1:
            branches = [lambda s=s: augment.speed_perturb(wav, s)[:num_samples] for s in speeds]
            wav = tf.switch_case(speed, branches)
            x["label"] = x["label"] + speed * train.num_speakers
        wav = tf.ensure_shape(wav[:num_samples], [num_samples])
        if augmenter is not None:
            wav = augmenter(wav, x["index"])
        x["wav"] = wav
        return x

    # One map per example (fewer tf.data stages is measurably faster); bad files are dropped after it.
    ds = ds.map(example, num_parallel_calls=num_parallel_calls, deterministic=True).filter(lambda x: x["ok"])
    ds = ds.batch(batch_size, drop_remainder=True)

    @graph_function
    def featurize(batch):
        # Dither noise is seeded by the batch's first stream position: reproducible across resumes.
        feats = fbank.compute(batch["wav"], fbank.dither, seed=tf.stack([tf.constant(seed, tf.int64),
                                                                          batch["index"][0]]))
        return {"feats": feats, "label": batch["label"], "index": batch["index"]}

    ds = ds.map(featurize, num_parallel_calls=num_parallel_calls, deterministic=True)
    options = tf.data.Options()
    options.deterministic = True
    options.autotune.enabled = AUTOTUNE_MODEL
    return ds.with_options(options).prefetch(prefetch_batches)


def _wav_tree_examples(train, seed, start_index, sample_rate, draw_speed, read_lengths, on_bad_audio,
                       bad_audio_log, process_index, process_count):
    """(dataset of (position, file index), load: that -> {'wav', 'speed', 'label', 'index', 'ok'}) for the files;
    each epoch is a seeded permutation."""
    paths_t = tf.constant([str(p) for p in train.paths])
    labels_t = tf.constant(np.asarray(train.labels, np.int32))
    n = len(train)

    def epoch_order(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), epoch]))
        return tf.data.Dataset.from_tensor_slices(order)

    def read(path_bytes, position, length):
        path_str = path_bytes.decode()
        try:
            wav = random_chunk(path_str, int(length), np.random.default_rng([seed, int(position)]), sample_rate)
            return wav.astype(np.float32), True
        except audio_lib.BadAudioError as error:
            if on_bad_audio == "error":
                raise
            bad_audio_log.add(error)
            return np.zeros(int(length), np.float32), False

    @graph_function
    def load(index, file_index):
        speed = draw_speed(index)
        wav, ok = tf.numpy_function(read, [paths_t[file_index], index, read_lengths[speed]],
                                    [tf.float32, tf.bool], stateful=False)
        wav.set_shape([None])
        ok.set_shape([])
        return {"wav": wav, "speed": speed, "label": labels_t[file_index], "index": index, "ok": ok}

    # (stream position, file index) from `start_index` on, without walking through the epochs before it.
    start_epoch, offset = divmod(start_index, n)
    ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_order).enumerate(start=start_epoch * n)
    ds = ds.skip(offset)
    if process_count > 1:
        ds = ds.filter(lambda position, _: position % process_count == process_index)
    return ds, load


def _shard_examples(train, shard_set, seed, start_index, draw_speed, read_lengths, on_bad_audio, bad_audio_log,
                    shuffle_buffer, process_index, process_count):
    """(dataset of (position, record), load: that -> {'wav', 'speed', 'label', 'index', 'ok'}) for shards;
    index = this process's position * process_count + process_index."""
    table = tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
        tf.constant(list(train.speaker_ids)), tf.range(train.num_speakers, dtype=tf.int32)), default_value=-1)
    # start_index is this process's next index (its last index + 1, or 0): the local position after its last one.
    start_local = -(-start_index // process_count)
    records = shards_lib.create_shard_dataset(
        shard_set, seed=seed, start_position=start_local, shuffle_buffer=shuffle_buffer,
        process_index=process_index, process_count=process_count, on_bad_audio=on_bad_audio,
        bad_audio_log=bad_audio_log)

    def load(position, serialized):
        record = shards_lib.parse_record(serialized)
        index = position * process_count + process_index
        speed = draw_speed(index)
        label = table.lookup(record["speaker"])
        tf.debugging.assert_non_negative(label, message=f"{shard_set.root}: a record's speaker is not in "
                                                         f"{shards_lib.UTTERANCES_FILE}")
        wav = _random_chunk_tf(record["audio"], read_lengths[speed], tf.stack([tf.constant(seed, tf.int64), index]))
        return {"wav": wav, "speed": speed, "label": label, "index": index, "ok": tf.constant(True)}

    return records, load


def create_eval_dataset(paths: Sequence[str], *, fbank: FbankConfig = FbankConfig(), bucket_frames: int = 200,
                        batch_frames: int = 16000, on_bad_audio: str = "error", bad_audio_log: BadAudioLog | None = None,
                        num_parallel_calls: int = tf.data.AUTOTUNE) -> tf.data.Dataset:
    """Whole utterances, no dither, grouped by length into padded batches.

    Yields {'feats': f32[b, L, bins], 'lengths': i32[b], 'index': i64[b]} where L is a multiple of `bucket_frames`
    and b <= max(1, batch_frames // L) (the last batch of a bucket may be smaller); `index` points into `paths`.
    Padding is zeros after mean normalisation; the model masks it, so embeddings equal unpadded ones.
    A bad file raises BadAudioError naming it, or with on_bad_audio='skip' is logged, counted and left out (its
    index never appears).
    """
    _check_on_bad_audio(on_bad_audio)
    bad_audio_log = bad_audio_log if bad_audio_log is not None else BadAudioLog()
    paths_t = tf.constant([str(p) for p in paths])
    min_samples = fbank.num_samples(1)

    def read(path_bytes):
        path_str = path_bytes.decode()
        try:
            wav = audio_lib.load_audio(path_str, fbank.sample_rate)
            if len(wav) < min_samples:
                raise audio_lib.BadAudioError(path_str, f"only {len(wav)} samples, shorter than one frame")
        except audio_lib.BadAudioError as error:
            if on_bad_audio == "error":
                raise
            bad_audio_log.add(error)
            return np.zeros(min_samples, np.float32), False
        return wav.astype(np.float32), True

    @graph_function
    def load(index):
        wav, ok = tf.numpy_function(read, [paths_t[index]], [tf.float32, tf.bool], stateful=False)
        wav.set_shape([None])
        ok.set_shape([])
        return {"wav": wav, "index": index, "ok": ok}

    @graph_function
    def featurize(x):
        feats = fbank.compute(x["wav"], 0.0)
        return {"feats": feats, "lengths": tf.shape(feats)[0], "index": x["index"]}

    def bucket_id(x):
        return tf.cast((x["lengths"] + bucket_frames - 1) // bucket_frames - 1, tf.int64)

    def window_size(key):
        return tf.maximum(tf.constant(1, tf.int64), batch_frames // ((key + 1) * bucket_frames))

    def pad_batch(key, window):
        length = (key + 1) * bucket_frames
        return window.padded_batch(window_size(key), padded_shapes={
            "feats": tf.stack([length, tf.constant(fbank.num_mel_bins, tf.int64)]), "lengths": [], "index": []})

    ds = tf.data.Dataset.range(len(paths)).map(load, num_parallel_calls=num_parallel_calls, deterministic=True)
    ds = ds.filter(lambda x: x["ok"]).map(featurize, num_parallel_calls=num_parallel_calls, deterministic=True)
    return ds.group_by_window(bucket_id, pad_batch, window_size_func=window_size).prefetch(2)


class PipelineError(UserError, ValueError):
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
