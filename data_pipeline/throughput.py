"""Input-pipeline throughput: utterances and seconds of audio per second, from a wav tree and from shards.

    python -m data_pipeline.throughput --config=configs/r34.py

prints one row per pipeline: fbank only; + speed perturbation; + full augmentation (speed perturbation, then RIR
reverb or MUSAN noise with data.aug_prob), each reading a wav tree and reading TFRecord shards. A row is the
training pipeline the trainer runs (random 2.015-s chunks, fbank with the config's dither, mean normalisation,
batches of data.batch_size), timed after a warm-up for --seconds, with the CPU time the process used over the same
window (cpu/wall = how many cores it kept busy) and the cores it was allowed (sched_getaffinity).

Data: data.train_dir when set (and data.train_shards, else shards are written under --workdir); otherwise the
built-in synthetic corpus (data.synthetic: 200 speakers x 12 utterances of 2-4 s) is generated under --workdir.
Augmentation reads data.rir_dir / data.musan_dir when set; otherwise generated stand-ins (decaying-noise RIRs and
noise / speech / music files of a few seconds) under --workdir, which cost the same per utterance as real ones.
The files are read through the page cache after the first row, so rows measure CPU cost, not disk speed.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pathlib
import resource
import time

from absl import flags
from ml_collections import config_flags

import cli
from data_pipeline import augment, input_pipeline, manifest, shards, synthetic

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Throughput:
    """One timed pipeline."""

    pipeline: str
    source: str
    utt_per_s: float
    audio_s_per_s: float  # seconds of (chunked) audio delivered per wall-clock second
    cpu_s_per_s: float  # process CPU seconds per wall-clock second: cores kept busy
    cores: int  # cores the process may run on
    batches: int
    wall_s: float


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def time_pipeline(ds, *, batch_size: int, chunk_seconds: float, seconds: float, warmup_batches: int,
                  pipeline: str, source: str) -> Throughput:
    iterator = iter(ds)
    for _ in range(warmup_batches):
        next(iterator)
    batches, cpu0, start = 0, _cpu_seconds(), time.perf_counter()
    while True:
        next(iterator)["feats"].numpy()  # the pipeline's output is materialised, as the trainer's host copy does
        batches += 1
        wall = time.perf_counter() - start
        if wall >= seconds:
            break
    cpu = _cpu_seconds() - cpu0
    utt_per_s = batches * batch_size / wall
    return Throughput(pipeline, source, utt_per_s, utt_per_s * chunk_seconds, cpu / wall,
                      len(os.sched_getaffinity(0)), batches, wall)


def _data(config, work_dir: pathlib.Path):
    data = config.data
    if data.train_dir:
        train = manifest.scan_dir(data.train_dir)
    else:
        train = manifest.scan_dir(synthetic.generate_corpus(work_dir / "synthetic", synthetic.spec_from_config(data)).train_dir)
    if data.train_shards:
        shard_set = shards.read_index(data.train_shards)
    else:
        shard_set = shards.write_shards(train, work_dir / "shards", utts_per_shard=200,
                                        sample_rate=data.sample_rate)
    if data.rir_dir or data.musan_dir:
        rir_dir, musan_dir, generated = data.rir_dir, data.musan_dir, False
    else:
        rir_dir, musan_dir = augment.write_fake_sources(work_dir / "aug_sources", sample_rate=data.sample_rate)
        generated = True
    return train, shard_set, rir_dir, musan_dir, generated


def main(argv) -> None:
    del argv
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    f = flags.FLAGS
    config = f.config
    data = config.data
    work_dir = pathlib.Path(f.workdir)
    train, shard_set, rir_dir, musan_dir, generated = _data(config, work_dir)
    fbank = input_pipeline.FbankConfig.from_config(data)
    chunk_seconds = fbank.num_samples(data.num_frames) / data.sample_rate
    print(f"data: {len(train)} utterances of {train.num_speakers} speakers ({train.root}); "
          f"{len(shard_set.files)} shards ({shard_set.root}); augmentation sources: {rir_dir}, {musan_dir}"
          f"{' (generated stand-ins)' if generated else ''}")
    print(f"batch {data.batch_size} x {data.num_frames} frames ({chunk_seconds:.3f} s), {data.num_mel_bins} mel "
          f"bins, dither {data.dither}; {f.seconds:.0f} s per row after {f.warmup_batches} warm-up batches")
    print(f"{'pipeline':<14} {'source':<7} {'utt/s':>8} {'audio s/s':>10} {'cpu s/s':>8} {'cores':>6}")
    for row in f.rows:
        speed = row in ("speed", "full")
        augmenter = None
        if row == "full":
            augmenter = augment.Augmenter(rir_dir, musan_dir, sample_rate=data.sample_rate, aug_prob=data.aug_prob,
                                          seed=config.seed)
        for source in f.sources:
            ds = input_pipeline.create_train_dataset(
                train, batch_size=data.batch_size, num_frames=data.num_frames, seed=config.seed, fbank=fbank,
                shards=shard_set if source == "shards" else None, speed_perturb=speed, augmenter=augmenter,
                shuffle_buffer=data.shuffle_buffer, prefetch_batches=data.prefetch_batches)
            result = time_pipeline(ds, batch_size=data.batch_size, chunk_seconds=chunk_seconds,
                                   seconds=f.seconds, warmup_batches=f.warmup_batches,
                                   pipeline={"fbank": "fbank only", "speed": "+ speed perturb",
                                             "full": "+ full aug"}[row], source=source)
            print(f"{result.pipeline:<14} {result.source:<7} {result.utt_per_s:8.0f} {result.audio_s_per_s:10.0f} "
                  f"{result.cpu_s_per_s:8.2f} {result.cores:6d}", flush=True)


def _define_flags() -> None:
    config_flags.DEFINE_config_file("config", "configs/r34.py", "an sv_jax config file", lock_config=True)
    flags.DEFINE_string("workdir", "/tmp/sv_jax_throughput", "where generated data and shards go")
    flags.DEFINE_float("seconds", 20.0, "timed seconds per row (after warm-up)")
    flags.DEFINE_integer("warmup_batches", 3, "batches before timing starts (tracing, autotune)")
    flags.DEFINE_list("rows", ["fbank", "speed", "full"], "pipelines to time: fbank, speed, full")
    flags.DEFINE_list("sources", ["wav", "shards"], "where audio is read from: wav, shards")


if __name__ == "__main__":
    _define_flags()
    cli.run(main)
