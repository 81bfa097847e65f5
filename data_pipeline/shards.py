"""TFRecord shards of whole utterances (int16 audio + speaker), written once and read sequentially.

Random reads of a million small wav files starve an accelerator on network or spinning disks; WeSpeaker therefore
packs VoxCeleb into tar shards and shuffles in two levels. sv_jax does the same with TFRecord files:

    python -m data_pipeline.shards --src=/data/voxceleb2/dev/wav --dst=/data/voxceleb2/dev/shards

writes ``shard-00000-of-01092.tfrecord`` ... (about `utts_per_shard` utterances each, drawn in a seeded random
order so every shard mixes speakers), one ``<shard>.json`` sidecar per shard (its record count and the files
skipped), ``utterances.list`` (the utterances written, in manifest.write_list's format, so the trainer knows the
speakers and counts without reading the shards) and ``shards.json`` (the index, written last).

Each record is a ``tf.train.Example`` with ``audio`` (the whole utterance as little-endian int16 bytes), ``speaker``
(the speaker id) and ``key`` (the path relative to the source root). Writing is parallel (one process per shard at
a time) and resumable: a shard is written under a temporary name and renamed when complete, after its sidecar, so a
rerun skips finished shards. Bad audio is handled at writing time: `on_bad_audio='error'` stops naming the file;
`'skip'` logs it, leaves it out and lists it in the sidecar and the index.

Reading (`create_shard_dataset`): per epoch, a seeded permutation of the shard list (the same on every host);
process p of P reads shards p, p + P, ... of it, several at a time (interleaved), through a local shuffle buffer
of serialized records seeded by (seed, epoch). Every record gets its position in the process's endless stream, so
crops, speed perturbation, augmentation and dither (seeded from it downstream) are reproducible, and a resumed run
starts at the exact position it stopped at: whole epochs are skipped arithmetically (record counts are in the
index), the records of the current epoch before the position are read and dropped (sequential I/O, no decoding).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import multiprocessing
import os
import pathlib
from typing import Sequence

import numpy as np
import tensorflow as tf

import cli
from data_pipeline import audio as audio_lib
from data_pipeline import manifest as manifest_lib

log = logging.getLogger(__name__)

INDEX_FILE = "shards.json"
UTTERANCES_FILE = "utterances.list"
FORMAT_VERSION = 1
_CYCLE_LENGTH = 8  # shards open at once per process: sequential reads, yet a mix of speakers before the buffer
_BLOCK = 16  # records taken from one shard in turn (shards are already in random order)


@dataclasses.dataclass(frozen=True)
class ShardSet:
    """An index of written shards.

    Attributes:
      root: the directory holding the shards.
      files: shard file names, in writing order.
      num_examples: records per shard.
      sample_rate: Hz of every record's audio.
      skipped: source files left out when writing (on_bad_audio='skip'), as 'path: problem' lines.
    """

    root: pathlib.Path
    files: tuple[str, ...]
    num_examples: tuple[int, ...]
    sample_rate: int
    skipped: tuple[str, ...] = ()

    @property
    def total_examples(self) -> int:
        return int(sum(self.num_examples))

    def manifest(self, source_root=None) -> manifest_lib.Manifest:
        """The utterances the shards hold (paths under the source tree, or under `source_root` if given)."""
        return manifest_lib.read_list(self.root / UTTERANCES_FILE, root=source_root)


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------


def _shard_name(i: int, n: int) -> str:
    return f"shard-{i:05d}-of-{n:05d}.tfrecord"


def _to_int16(wav: np.ndarray) -> np.ndarray:
    # load_audio returns int16 PCM as x / 32768 exactly, so this round trip is lossless for 16-bit sources.
    return np.clip(np.round(wav * 32768.0), -32768, 32767).astype("<i2")


def _example(audio: np.ndarray, speaker: str, key: str) -> bytes:
    feature = {
        "audio": tf.train.Feature(bytes_list=tf.train.BytesList(value=[audio.tobytes()])),
        "speaker": tf.train.Feature(bytes_list=tf.train.BytesList(value=[speaker.encode()])),
        "key": tf.train.Feature(bytes_list=tf.train.BytesList(value=[key.encode()])),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def _write_shard(path: str, items: Sequence[tuple[str, str, str]], sample_rate: int, on_bad_audio: str) -> dict:
    """Writes one shard (atomically: temporary name, sidecar, rename) and returns its sidecar contents."""
    min_samples = 400  # one 25-ms frame at 16 kHz: shorter audio gives no features
    tmp = f"{path}.tmp{os.getpid()}"
    written, skipped = [], []
    try:
        with tf.io.TFRecordWriter(tmp) as writer:
            for source, speaker, key in items:
                try:
                    wav = audio_lib.load_audio(source, sample_rate)
                    if len(wav) < min_samples * sample_rate // 16000:
                        raise audio_lib.BadAudioError(source, f"only {len(wav)} samples, shorter than one frame")
                except audio_lib.BadAudioError as error:
                    if on_bad_audio == "error":
                        raise
                    skipped.append(str(error))
                    continue
                writer.write(_example(_to_int16(wav), speaker, key))
                written.append((key, speaker))
        info = {"num_examples": len(written), "utterances": written, "skipped": skipped}
        _write_json_atomic(pathlib.Path(path + ".json"), info)
        os.replace(tmp, path)
        return info
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _write_json_atomic(path: pathlib.Path, value) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def write_shards(manifest: manifest_lib.Manifest, out_dir, *, utts_per_shard: int = 1000, seed: int = 0,
                 sample_rate: int = 16000, on_bad_audio: str = "error", num_workers: int | None = None) -> ShardSet:
    """Writes `manifest`'s files as shards under out_dir (skipping shards already complete) and returns the index.

    Raises BadAudioError naming the file for bad audio with on_bad_audio='error'.
    """
    if on_bad_audio not in ("error", "skip"):
        raise ValueError(f"unknown on_bad_audio {on_bad_audio!r}; choose 'error' or 'skip'")
    if utts_per_shard < 1:
        raise ValueError(f"utts_per_shard must be >= 1, got {utts_per_shard}")
    out = pathlib.Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    prefix = str(manifest.root).rstrip(os.sep) + os.sep
    order = np.random.default_rng(seed).permutation(len(manifest))
    num_shards = -(-len(manifest) // utts_per_shard)
    chunks = np.array_split(order, num_shards)
    names = [_shard_name(i, num_shards) for i in range(num_shards)]
    infos: dict[int, dict] = {}
    todo = []
    for i, (name, chunk) in enumerate(zip(names, chunks)):
        if (out / name).exists():
            infos[i] = json.loads((out / (name + ".json")).read_text())
        else:
            items = [(manifest.paths[j], manifest.speakers[j], manifest.paths[j][len(prefix):].replace(os.sep, "/"))
                     for j in chunk]
            todo.append((i, items))
    if infos:
        log.info("%s: %d of %d shards already written, writing the rest", out, len(infos), num_shards)
    workers = max(1, min(num_workers or os.cpu_count() or 1, len(todo) or 1))
    # 'spawn': the parent has TensorFlow loaded, which is not fork-safe.
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_write_shard, str(out / names[i]), items, sample_rate, on_bad_audio): i
                   for i, items in todo}
        for done, future in enumerate(concurrent.futures.as_completed(futures), start=1):
            infos[futures[future]] = info = future.result()
            for problem in info["skipped"]:
                log.warning("skipping bad audio (on_bad_audio='skip'): %s", problem)
            if done % 50 == 0 or done == len(futures):
                log.info("%s: %d/%d shards written", out, done + num_shards - len(futures), num_shards)

    utterances = [u for i in range(num_shards) for u in infos[i]["utterances"]]
    if not utterances:
        raise ValueError(f"no usable audio among the {len(manifest)} files under {manifest.root}")
    keys, speakers = zip(*utterances)
    written = manifest_lib.Manifest(
        root=manifest.root, paths=tuple(prefix + k.replace("/", os.sep) for k in keys), speakers=speakers,
        speaker_ids=tuple(sorted(set(speakers))), labels=np.zeros(len(keys), np.int32))
    manifest_lib.write_list(written, out / UTTERANCES_FILE)
    index = {"format_version": FORMAT_VERSION, "sample_rate": sample_rate, "source_root": str(manifest.root),
             "shards": [{"file": names[i], "num_examples": infos[i]["num_examples"]} for i in range(num_shards)],
             "skipped": [s for i in range(num_shards) for s in infos[i]["skipped"]]}
    _write_json_atomic(out / INDEX_FILE, index)
    return read_index(out)


def read_index(shard_dir) -> ShardSet:
    """Reads shard_dir/shards.json; errors name the directory and how to create the shards."""
    root = pathlib.Path(shard_dir).expanduser()
    path = root / INDEX_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no shard index; write shards with `python -m data_pipeline.shards "
                                f"--src=<wav tree> --dst={root}`")
    index = json.loads(path.read_text())
    if index.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: shard format version {index.get('format_version')}, expected {FORMAT_VERSION}; "
                         f"rewrite the shards")
    files = tuple(s["file"] for s in index["shards"])
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{root}: {len(missing)} shard files of the index are missing: "
                                f"{', '.join(missing[:10])}{' ...' if len(missing) > 10 else ''}")
    return ShardSet(root=root, files=files, num_examples=tuple(int(s["num_examples"]) for s in index["shards"]),
                    sample_rate=int(index["sample_rate"]), skipped=tuple(index.get("skipped", ())))


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------


def epoch_shards(num_shards: int, epoch, seed: int, process_index: int = 0, process_count: int = 1):
    """The shards (int64 tensor of indices) process `process_index` reads in `epoch`: a seeded permutation of all
    shards (the same on every host), split by process. Works eagerly and inside tf.data (`epoch` may be a tensor)."""
    if num_shards < process_count:
        raise ValueError(f"{num_shards} shards cannot be split over {process_count} processes: write at least "
                         f"one shard per process (lower utts_per_shard)")
    order = tf.random.experimental.stateless_shuffle(
        tf.range(num_shards, dtype=tf.int64), seed=tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)]))
    return order[process_index::process_count]


def parse_record(serialized) -> dict:
    """A serialized record -> {'audio': int16 [n], 'speaker': string, 'key': string}."""
    parsed = tf.io.parse_single_example(serialized, {
        "audio": tf.io.FixedLenFeature([], tf.string), "speaker": tf.io.FixedLenFeature([], tf.string),
        "key": tf.io.FixedLenFeature([], tf.string)})
    parsed["audio"] = tf.io.decode_raw(parsed["audio"], tf.int16, little_endian=True)
    return parsed


def create_shard_dataset(shard_set: ShardSet, *, seed: int, start_position: int = 0, shuffle_buffer: int = 2500,
                         process_index: int = 0, process_count: int = 1, on_bad_audio: str = "error",
                         bad_audio_log=None) -> tf.data.Dataset:
    """Endless (position int64, serialized record) pairs of this process's stream, from `start_position` on.

    Positions count this process's records (0, 1, 2, ...). A corrupt or truncated shard raises BadAudioError
    naming the shard (on_bad_audio='error'), or (on_bad_audio='skip') ends that shard for the epoch and is passed
    to `bad_audio_log.add` (anything with an add(BadAudioError) method).
    """
    files = tf.constant([str(shard_set.root / f) for f in shard_set.files])
    counts = np.asarray(shard_set.num_examples, np.int64)
    num_shards = len(shard_set.files)
    cycle = min(_CYCLE_LENGTH, max(1, num_shards // process_count))

    def report(path, read, expected):
        error = audio_lib.BadAudioError(path.decode(), f"corrupt or truncated shard: read {read} of its "
                                                       f"{expected} records (rewrite it)")
        if on_bad_audio == "error" or bad_audio_log is None:
            raise error
        bad_audio_log.add(error)
        return True

    def read(shard):
        # TFRecordDataset's own error names no file; reading until the first bad record and comparing the count
        # with the index (a sentinel closes every shard) does. Records travel in blocks of _BLOCK: the count and
        # the check then cost a few ops per block instead of per record.
        path = files[shard]
        blocks = tf.data.TFRecordDataset(path, buffer_size=4 << 20).ignore_errors().batch(_BLOCK)
        blocks = blocks.map(lambda b: (b, False)).concatenate(
            tf.data.Dataset.from_tensors((tf.constant([], tf.string), True)))

        def count(n, block):
            records, is_sentinel = block
            return n + tf.size(records, tf.int64), (records, is_sentinel, n)

        def check(records, is_sentinel, n):
            expected = tf.gather(counts, shard)
            return tf.cond(tf.logical_and(is_sentinel, n != expected),
                           lambda: tf.numpy_function(report, [path, n, expected], tf.bool, stateful=True),
                           lambda: tf.logical_not(is_sentinel))

        return blocks.scan(tf.constant(0, tf.int64), count).filter(check).map(lambda r, s, n: r)

    def epoch_records(epoch):
        chosen = epoch_shards(num_shards, epoch, seed, process_index, process_count)
        ds = tf.data.Dataset.from_tensor_slices(chosen).interleave(
            read, cycle_length=cycle, block_length=1, num_parallel_calls=cycle, deterministic=True).unbatch()
        # A fresh buffer per epoch, seeded by (seed, epoch): an epoch's order does not depend on the one before,
        # which is what lets a resumed run rebuild it exactly.
        return ds.shuffle(shuffle_buffer, seed=seed * 1_000_003 + epoch)

    # Whole epochs before start_position are skipped by their record counts; the rest is read and dropped.
    epoch, first = 0, 0
    while True:
        size = int(counts[epoch_shards(num_shards, epoch, seed, process_index, process_count).numpy()].sum())
        if size == 0:
            raise ValueError(f"{shard_set.root}: process {process_index} of {process_count} has no records in "
                             f"epoch {epoch}")
        if first + size > start_position:
            break
        epoch, first = epoch + 1, first + size
    ds = tf.data.Dataset.range(epoch, 2**62).flat_map(epoch_records).enumerate(start=first)
    return ds.skip(start_position - first)


def main(argv):
    del argv
    from absl import flags  # pylint: disable=import-outside-toplevel
    f = flags.FLAGS
    source = manifest_lib.scan_dir(f.src)
    log.info("%s: %d utterances of %d speakers", f.src, len(source), source.num_speakers)
    shard_set = write_shards(source, f.dst, utts_per_shard=f.utts_per_shard, seed=f.seed,
                             sample_rate=f.sample_rate, on_bad_audio=f.on_bad_audio, num_workers=f.num_workers)
    print(f"{shard_set.root}: {len(shard_set.files)} shards, {shard_set.total_examples} utterances, "
          f"{len(shard_set.skipped)} files skipped")


if __name__ == "__main__":
    from absl import flags  # pylint: disable=ungrouped-imports

    flags.DEFINE_string("src", None, "wav tree <speaker>/<video>/<utt>.wav (16 kHz; see data_pipeline.prepare)")
    flags.DEFINE_string("dst", None, "output directory for the shards and their index")
    flags.DEFINE_integer("utts_per_shard", 1000, "utterances per shard (VoxCeleb2 dev: ~250 MB shards)")
    flags.DEFINE_integer("seed", 0, "seed of the utterance-to-shard assignment")
    flags.DEFINE_integer("sample_rate", 16000, "Hz; audio at another rate is an error")
    flags.DEFINE_enum("on_bad_audio", "error", ["error", "skip"], "stop at a bad file, or skip and list it")
    flags.DEFINE_integer("num_workers", None, "processes writing shards (default: all cores)")
    flags.mark_flags_as_required(["src", "dst"])
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    cli.run(main)
