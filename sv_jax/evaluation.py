"""Evaluation: whole-utterance embeddings, cosine scoring (optionally AS-norm), EER and minDCF per trial list.

Utterances of different length are batched in padded buckets (a few shapes, so a few compilations); the model
masks the padding, so every embedding equals that of the unpadded utterance. With several processes every process
reads the same batches but feeds only its share of each batch's rows to the devices, and every process receives all
embeddings (`local_rows`).

As in WeSpeaker's VoxCeleb recipe (examples/voxceleb/v2/local/score_norm.sh, tools/vector_mean.py), the training
data gives two things: the mean embedding, subtracted before cosine scoring (`eval.subtract_mean`), and one mean
embedding per training speaker, the AS-norm cohort (`eval.as_norm`). WeSpeaker averages all of a speaker's
utterances; here a seeded choice of `eval.cohort_utts_per_speaker` of them (0 = all), every speaker present, and the
mean is that of the utterances embedded. `eval.num_train_utts` caps the utterances embedded; a cohort that leaves
speakers out is labelled so in the results. The scoring itself lives in sv_jax.scoring (numpy only).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
from typing import Iterable, Mapping, Sequence

import jax
import numpy as np

from cli import ConfigError, UserError
from sv_jax import data_sources
from sv_jax import scoring
from sv_jax import parallel

log = logging.getLogger(__name__)


def local_rows(rows: int, mesh_processes: Sequence[int], process_index: int) -> slice | np.ndarray:
    """The rows of a padded batch of `rows` that process `process_index` feeds to the mesh.

    `mesh_processes` is the process of each mesh device, in mesh order. A 'data'-sharded global array puts rows
    [j * rows / M, (j + 1) * rows / M) on mesh position j, and `jax.make_array_from_process_local_data` fills this
    process's positions, in mesh order, from its local rows; so this process feeds exactly those rows. With the
    mesh over `jax.devices()` (devices listed process by process) that is the process_index-th of process_count
    equal slices; one process gets slice(0, rows), the whole batch.
    """
    size = len(mesh_processes)
    if rows % size:
        raise ValueError(f"{rows} rows do not split evenly over a mesh of {size} devices")
    per_device = rows // size
    positions = [j for j, p in enumerate(mesh_processes) if p == process_index]
    if not positions:
        raise ValueError(f"process {process_index} has no device in the mesh (processes {sorted(set(mesh_processes))})")
    if positions == list(range(positions[0], positions[-1] + 1)):
        return slice(positions[0] * per_device, (positions[-1] + 1) * per_device)
    return np.concatenate([np.arange(j * per_device, (j + 1) * per_device) for j in positions])


def padded_rows(batch: Mapping[str, np.ndarray], rows: int) -> tuple[np.ndarray, np.ndarray]:
    """`feats` and `lengths` padded to `rows`; dummy rows get the padded length so their (discarded) pooling does
    not divide 0 by 0."""
    count, length = len(batch["lengths"]), batch["feats"].shape[1]
    feats = parallel.pad_rows({"feats": batch["feats"]}, rows)["feats"]
    lengths = np.concatenate([batch["lengths"], np.full(rows - count, length, batch["lengths"].dtype)])
    return feats, lengths


class Embedder:
    """Jit-compiled, data-parallel `model.embed` (or `apply_fn`: a tagger's clip logits) over padded evaluation
    batches.

    Every process iterates the same batches; each feeds only its own rows of each (`local_rows`), so the devices
    of the whole mesh compute every embedding once, and the replicated output gives every process all of them.
    `process_index` is jax.process_index() unless given (tests)."""

    def __init__(self, model, mesh, process_index: int | None = None, apply_fn=None, audio_key: str = "data.eval_dir"):
        self.mesh = mesh
        self._mesh_processes = [d.process_index for d in mesh.devices.flat]
        self._process_index = jax.process_index() if process_index is None else process_index
        self._audio_key = audio_key  # what to check when every file was skipped
        replicated, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
        # `apply_fn(variables, feats, lengths)`: what is computed per row; default the speaker model's embedding.
        apply_fn = apply_fn or (lambda variables, feats, lengths: model.apply(variables, feats, lengths,
                                                                              method=model.embed))
        self._embed = jax.jit(apply_fn, in_shardings=(replicated, sharded, sharded), out_shardings=replicated)

    def __call__(self, variables, batches: Iterable[Mapping[str, np.ndarray]], num_utts: int,
                 batch_frames: int, allow_missing: bool = False) -> np.ndarray:
        """Embeddings [num_utts, D] from batches of {'feats', 'lengths', 'index'} (index into the output).

        Rows no batch provided are NaN with `allow_missing` (files skipped as bad audio), otherwise an error."""
        outputs, fed, total = [], 0, 0
        for batch in batches:
            length = batch["feats"].shape[1]
            # One row count per bucket (rounded to the device count) keeps the number of compiled shapes small; it
            # also gives every process a slice of the same shape.
            rows = parallel.round_up(max(1, batch_frames // length), self.mesh.size)
            feats, lengths = padded_rows(batch, rows)
            mine = local_rows(rows, self._mesh_processes, self._process_index)
            local = {"feats": feats[mine], "lengths": lengths[mine]}
            sharded = parallel.shard_batch(local, self.mesh)
            fed, total = fed + len(local["lengths"]), total + rows
            count = len(batch["index"])
            outputs.append((batch["index"], self._embed(variables, sharded["feats"], sharded["lengths"]), count))
        embeddings = None
        for index, emb, count in outputs:
            emb = np.asarray(jax.device_get(emb))[:count]
            if embeddings is None:
                embeddings = np.full((num_utts, emb.shape[-1]), np.nan, np.float32)
            embeddings[index] = emb
        if embeddings is None:
            if not allow_missing:
                raise RuntimeError("the evaluation pipeline produced no embeddings")
            # Every file was skipped: the width is unknown, and nothing can be scored anyway.
            raise UserError(f"all {num_utts} evaluation files were skipped as bad audio: check {self._audio_key}")
        if not allow_missing and np.isnan(embeddings).any():
            raise RuntimeError("the evaluation pipeline did not produce an embedding for every utterance")
        if fed < total:
            log.info("process %d fed %d of the %d padded rows embedded", self._process_index, fed, total)
        return embeddings


def embed_files(embedder: Embedder, variables, config, paths, bad_audio_log=None) -> np.ndarray:
    """Embeddings [len(paths), D]; rows of files skipped under data.on_bad_audio='skip' are NaN."""
    start = time.perf_counter()
    paths = [str(p) for p in paths]
    embeddings = embedder(variables, data_sources.eval_batches(config.data, config.eval, paths, bad_audio_log),
                          len(paths), config.eval.batch_frames, allow_missing=config.data.on_bad_audio == "skip")
    log.info("embedded %d utterances in %.1f s", len(paths), time.perf_counter() - start)
    return embeddings


def _present(embeddings: np.ndarray) -> np.ndarray:
    return ~np.isnan(embeddings).any(axis=1)


@dataclasses.dataclass(frozen=True)
class TrainingStatistics:
    """What scoring takes from the training data: the mean embedding and the AS-norm cohort."""

    mean: np.ndarray  # [D] mean of the training embeddings (every utterance embedded)
    cohort: np.ndarray  # [S, D] one mean embedding per speaker of the cohort, in label order
    cohort_speakers: int  # S
    train_speakers: int  # speakers of the training data (WeSpeaker's cohort has one row for each)
    utterances: int  # training utterances embedded (files skipped as bad audio not counted)
    label: str  # what the cohort is, e.g. 'per-speaker means of 5 utterances each, 5994 speakers'


def _check_eval_config(ev) -> None:
    zero = {"cohort_utts_per_speaker": "all of each speaker's utterances", "num_train_utts": "no cap"}
    for key, meaning in zero.items():
        value = ev[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"config eval.{key}={value!r} must be an integer >= 0 (0 = {meaning})")


def training_selection(labels: np.ndarray, per_speaker: int, cap: int, seed: int) -> np.ndarray:
    """Sorted indices of the training utterances embedded for the mean and the cohort.

    Every speaker gets a seeded choice of `per_speaker` of its utterances (all when 0, or when it has fewer). A
    `cap` > 0 keeps at most that many in all, taken round by round (every speaker's first choice before any second,
    speakers in a seeded order), so all speakers stay in while cap >= the number of speakers."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    order = np.argsort(labels, kind="stable")
    _, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
    priority = rng.permutation(len(counts))
    picks, keys = [], []
    for speaker, (start, count) in enumerate(zip(starts, counts)):
        take = count if per_speaker == 0 else min(per_speaker, count)
        picks.append(order[start + rng.permutation(count)[:take]])
        keys.append(np.arange(take) * len(counts) + priority[speaker])  # round, then the speaker's place
    picks, keys = np.concatenate(picks), np.concatenate(keys)
    if 0 < cap < len(picks):
        picks = picks[np.argsort(keys, kind="stable")[:cap]]
    return np.sort(picks)


def speaker_statistics(embeddings: np.ndarray, labels: np.ndarray, *, train_speakers: int, per_speaker: int,
                       capped_at: int = 0, skipped: int = 0) -> TrainingStatistics:
    """Mean embedding and per-speaker means of the embedded training utterances `embeddings` [N, D] (labels [N]);
    `capped_at` (eval.num_train_utts, when it left utterances out) and `skipped` (bad audio) go into the label."""
    speakers, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    sums = np.zeros((len(speakers), embeddings.shape[1]), np.float64)
    np.add.at(sums, inverse, embeddings)
    cohort = (sums / counts[:, None]).astype(np.float32)
    each = f"{counts.min()}" if counts.min() == counts.max() else f"{counts.min()}-{counts.max()}"
    if per_speaker == 0 and not capped_at and not skipped:
        label = f"per-speaker means of all their utterances ({each} each)"
    else:
        label = f"per-speaker means of {each} utterance{'' if each == '1' else 's'} each"
        if per_speaker and each != str(per_speaker):
            label += f" (eval.cohort_utts_per_speaker={per_speaker})"
    if len(speakers) < train_speakers:
        label = (f"smaller than WeSpeaker's (one mean per training speaker): {label}, {len(speakers)} of "
                 f"{train_speakers} training speakers")
    else:
        label = f"{label}, {len(speakers)} speakers"
    reasons = ([f"eval.num_train_utts={capped_at} caps the utterances embedded"] if capped_at else []) + (
        [f"{skipped} training files skipped as bad audio"] if skipped else [])
    if reasons:
        label = f"{label} ({'; '.join(reasons)})"
    return TrainingStatistics(mean=embeddings.mean(axis=0), cohort=cohort, cohort_speakers=len(speakers),
                              train_speakers=train_speakers, utterances=len(labels), label=label)


def training_statistics(embedder, variables, config, train) -> TrainingStatistics:
    """Embeds the training utterances `training_selection` picks; their mean and per-speaker means."""
    if not pathlib.Path(train.root).is_dir():
        raise FileNotFoundError(
            f"the training audio {train.root} (embedded for eval.subtract_mean / eval.as_norm) does not exist: "
            f"set data.train_dir to the tree the shards were written from, or turn both options off")
    ev = config.eval
    _check_eval_config(ev)
    chosen = training_selection(train.labels, ev.cohort_utts_per_speaker, ev.num_train_utts, config.seed)
    per_speaker = np.bincount(train.labels)
    uncapped = int(np.minimum(per_speaker, ev.cohort_utts_per_speaker or per_speaker.max()).sum())
    embeddings = embed_files(embedder, variables, config, [train.paths[i] for i in chosen])
    present = _present(embeddings)
    if not present.any():
        raise UserError(f"all {len(chosen)} training files embedded for the mean / cohort were skipped as bad audio: "
                        "check data.train_dir")
    stats = speaker_statistics(embeddings[present], train.labels[chosen][present], train_speakers=train.num_speakers,
                               per_speaker=ev.cohort_utts_per_speaker,
                               capped_at=ev.num_train_utts if len(chosen) < uncapped else 0,
                               skipped=int((~present).sum()))
    log.info("training statistics from %d utterances; AS-norm cohort: %s", stats.utterances, stats.label)
    return stats


def num_embedded(config, data: data_sources.DataSources) -> int:
    """Utterances `evaluate` embeds: every trial utterance, plus the training utterances for the mean / cohort
    (whole-job counts, whatever the process count; files that turn out to be bad audio are counted too)."""
    count = len({u for trials in data.trials for u in trials.utterances})
    ev = config.eval
    if (ev.subtract_mean or ev.as_norm) and data.train is not None:
        _check_eval_config(ev)
        count += len(training_selection(data.train.labels, ev.cohort_utts_per_speaker, ev.num_train_utts,
                                        config.seed))
    return count


def _as_norm_top_k(config, stats: TrainingStatistics) -> int:
    """eval.as_norm_top_k, clamped (with a warning) to the cohort: WeSpeaker's 300 assumes 5,994 speakers."""
    top_k = int(config.eval.as_norm_top_k)
    if stats.cohort_speakers < 2:
        raise ConfigError(f"eval.as_norm needs a cohort of at least 2 speakers, got {stats.label}: raise "
                          f"eval.num_train_utts (0 = no cap) or turn eval.as_norm off")
    if top_k > stats.cohort_speakers:
        log.warning("eval.as_norm_top_k=%d exceeds the AS-norm cohort (%s): using all %d", top_k, stats.label,
                    stats.cohort_speakers)
        top_k = stats.cohort_speakers
    return top_k


def evaluate(embedder: Embedder, variables, config, data: data_sources.DataSources) -> dict:
    """{trial-list name: verification metrics}, plus '<name>_asnorm' entries when eval.as_norm is set."""
    utterances = sorted({u for trials in data.trials for u in trials.utterances})
    bad_audio_log = data_sources.new_bad_audio_log()
    embeddings = embed_files(embedder, variables, config, [pathlib.Path(data.eval_root) / u for u in utterances],
                             bad_audio_log)
    by_key = {u: e for u, e, ok in zip(utterances, embeddings, _present(embeddings)) if ok}
    mean = stats = None
    if (config.eval.subtract_mean or config.eval.as_norm) and data.train is not None:
        stats = training_statistics(embedder, variables, config, data.train)
        mean = stats.mean if config.eval.subtract_mean else None
    as_norm = config.eval.as_norm and stats is not None
    top_k = _as_norm_top_k(config, stats) if as_norm else 0
    results = {}
    for trials in data.trials:
        skipped = 0
        if len(by_key) < len(utterances):  # data.on_bad_audio='skip' left files out: score the trials left
            keep = np.fromiter((e in by_key and t in by_key for e, t in zip(trials.enroll, trials.test)), bool,
                               count=len(trials))
            skipped = int(len(trials) - keep.sum())
            trials = dataclasses.replace(trials, enroll=tuple(u for u, k in zip(trials.enroll, keep) if k),
                                         test=tuple(u for u, k in zip(trials.test, keep) if k),
                                         labels=trials.labels[keep])
            log.warning("%s: %d trials left out, they use skipped bad audio (%d files)", trials.name, skipped,
                        bad_audio_log.count)
        scores = scoring.score_trials(by_key, trials, mean=mean)
        results[trials.name] = scoring.verification_metrics(scores, trials.labels)
        if skipped:
            results[trials.name]["skipped_trials"] = skipped
        if as_norm:
            normed = scoring.as_norm_trials(scores, by_key, trials, stats.cohort, top_k=top_k, mean=mean)
            results[f"{trials.name}_asnorm"] = {**scoring.verification_metrics(normed, trials.labels),
                                                "as_norm_top_k": top_k, "cohort_speakers": stats.cohort_speakers,
                                                "cohort": stats.label}
    return results
