"""From `config.data` to data: the training manifest, the trial lists and the pipelines that read them.

`data.source = 'synthetic'` generates (once) the built-in corpus under the workdir; `'voxceleb'` reads
`data.train_dir`, `data.eval_dir` and `data.trials`. Every missing path is an error naming its config key.
TensorFlow is imported here only when a pipeline is built, so the rest of sv_jax works without it.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import jax
from jax.experimental import multihost_utils

from cli import ConfigError, MissingInputError
from data_pipeline import manifest as manifest_lib

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "voxceleb")


@dataclasses.dataclass(frozen=True)
class DataSources:
    """What a run reads: the training utterances (from files or shards), the trial lists and their audio root."""

    train: manifest_lib.Manifest | None
    eval_root: pathlib.Path
    trials: tuple[manifest_lib.Trials, ...]
    train_shards: object = None  # data_pipeline.shards.ShardSet when training reads shards
    speed_perturb: bool = False

    @property
    def num_classes(self) -> int:
        """Training classes: speakers, times 3 with speed perturbation (WeSpeaker's perturbed copies)."""
        return self.train.num_speakers * (3 if self.speed_perturb else 1)


def _existing(path_str: str, key: str, kind: str = "directory") -> pathlib.Path:
    if not path_str:
        raise ConfigError(f"config {key} is empty: set --config.{key}=<{kind}> (or try configs/demo.py, which "
                          "generates its own data)")
    path = pathlib.Path(path_str).expanduser()
    if not path.exists():
        raise MissingInputError(f"config {key}={path_str!r}: no such {kind}; fix the path in --config.{key}")
    return path


def resolve_data(data_config, workdir: str | pathlib.Path, need_train: bool = True) -> DataSources:
    """Scans/generates the data the config names and checks that every trial file exists."""
    if data_config.source not in SOURCES:
        raise ConfigError(f"unknown data.source {data_config.source!r}; choose one of {list(SOURCES)}")
    if data_config.source == "synthetic":
        from data_pipeline import synthetic  # pylint: disable=import-outside-toplevel
        root = data_config.synthetic.root or pathlib.Path(workdir) / "synthetic"
        # One process writes the corpus, the others wait for it and then read it (generate_corpus returns at once
        # when the corpus is complete).
        if jax.process_index() == 0:
            synthetic.generate_corpus(root, synthetic_spec(data_config))
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("synthetic corpus written")
        corpus = synthetic.generate_corpus(root, synthetic_spec(data_config))
        train_dir, eval_root, trial_paths = corpus.train_dir, corpus.test_dir, [corpus.trials]
    else:
        need_dir = need_train and not data_config.get("train_shards")
        train_dir = _existing(data_config.train_dir, "data.train_dir") if need_dir else None
        eval_root = _existing(data_config.eval_dir, "data.eval_dir")
        trial_paths = manifest_lib.parse_trial_paths(data_config.trials)
        if not trial_paths:
            raise ConfigError("config data.trials is empty: give one or more trial lists, comma-separated")
        for path in trial_paths:
            _existing(str(path), "data.trials", "trial list")
    shard_set = None
    if need_train and data_config.get("train_shards"):
        from data_pipeline import shards  # pylint: disable=import-outside-toplevel
        shard_set = shards.read_index(_existing(data_config.train_shards, "data.train_shards"))
        # utterances.list names the source tree; data.train_dir, when set, says where it is on this machine.
        train = shard_set.manifest(source_root=data_config.train_dir or None)
    else:
        train = manifest_lib.scan_dir(train_dir) if train_dir is not None else None
    trials = tuple(manifest_lib.read_trials(p) for p in trial_paths)
    names = [t.name for t in trials]
    if len(set(names)) != len(names):
        raise ConfigError(f"config data.trials: two lists share a name ({', '.join(names)}); metrics are keyed "
                         f"by it, rename one file")
    for trial_list in trials:
        manifest_lib.check_trial_files(trial_list, eval_root)
    if train is not None:
        log.info("train: %d utterances of %d speakers in %s; trials: %s", len(train), train.num_speakers,
                     train_dir, ", ".join(f"{t.name} ({len(t)})" for t in trials))
    return DataSources(train=train, eval_root=pathlib.Path(eval_root), trials=trials, train_shards=shard_set,
                       speed_perturb=bool(data_config.get("speed_perturb", False)))


def _pipeline():
    """data_pipeline.input_pipeline, imported on first use: it brings in TensorFlow."""
    from data_pipeline import input_pipeline  # pylint: disable=import-outside-toplevel
    return input_pipeline


def synthetic_spec(data_config):
    """The built-in corpus that `data.synthetic` describes."""
    from data_pipeline import synthetic  # pylint: disable=import-outside-toplevel
    return synthetic.spec_from_config(data_config)


def fbank_config(data_config):
    return _pipeline().FbankConfig.from_config(data_config)


def augmenter(data_config, *, seed: int, bad_audio_log):
    """The reverb / noise augmenter `data.rir_dir` and `data.musan_dir` describe, or None when both are empty."""
    if not (data_config.rir_dir or data_config.musan_dir) or data_config.aug_prob <= 0.0:
        return None
    from data_pipeline import augment  # pylint: disable=import-outside-toplevel
    return augment.Augmenter(
        data_config.rir_dir, data_config.musan_dir, sample_rate=data_config.sample_rate,
        aug_prob=data_config.aug_prob, seed=seed, on_bad_audio=data_config.on_bad_audio,
        bad_audio_log=bad_audio_log, snr_db={"noise": tuple(data_config.snr_noise_db),
                                             "speech": tuple(data_config.snr_speech_db),
                                             "music": tuple(data_config.snr_music_db)})


def train_batches(data_config, data: DataSources, *, batch_size: int, seed: int, start_index: int,
                  bad_audio_log, process_index: int = 0, process_count: int = 1):
    """Iterator of numpy training batches (this process's `batch_size` rows), from stream position start_index."""
    input_pipeline = _pipeline()
    ds = input_pipeline.create_train_dataset(
        data.train, batch_size=batch_size, num_frames=data_config.num_frames, seed=seed,
        fbank=fbank_config(data_config), shards=data.train_shards, speed_perturb=data.speed_perturb,
        augmenter=augmenter(data_config, seed=seed, bad_audio_log=bad_audio_log), start_index=start_index,
        on_bad_audio=data_config.on_bad_audio, bad_audio_log=bad_audio_log,
        shuffle_buffer=data_config.shuffle_buffer, process_index=process_index, process_count=process_count,
        prefetch_batches=data_config.prefetch_batches)
    return input_pipeline.numpy_batches(ds, hint=" (data.on_bad_audio='skip' skips such files)")


def eval_batches(data_config, eval_config, paths, bad_audio_log=None):
    """Padded whole-utterance batches; under data.on_bad_audio='skip' bad files are left out (and logged)."""
    input_pipeline = _pipeline()
    ds = input_pipeline.create_eval_dataset(paths, fbank=fbank_config(data_config),
                                            bucket_frames=eval_config.bucket_frames,
                                            batch_frames=eval_config.batch_frames,
                                            on_bad_audio=data_config.on_bad_audio, bad_audio_log=bad_audio_log)
    return input_pipeline.numpy_batches(ds, hint=" (data.on_bad_audio='skip' leaves such files and their trials "
                                                 "out)")


def new_bad_audio_log():
    return _pipeline().BadAudioLog()
