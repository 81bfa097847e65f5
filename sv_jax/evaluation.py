"""Evaluation: whole-utterance embeddings, cosine scoring (optionally AS-norm), EER and minDCF per trial list.

Utterances of different length are batched in padded buckets (a few shapes, so a few compilations); the model
masks the padding, so every embedding equals that of the unpadded utterance. As in WeSpeaker, the mean embedding
of training data is subtracted before cosine scoring (`eval.subtract_mean`), and AS-norm uses speaker-mean training
embeddings as the cohort (`eval.as_norm`). The scoring itself lives in sv_jax.scoring (numpy only).
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib
import time
from typing import Iterable, Mapping

import jax
import numpy as np

from cli import UserError
from sv_jax import data_sources
from sv_jax import scoring
from sv_jax import parallel

log = logging.getLogger(__name__)


class Embedder:
    """Jit-compiled, data-parallel `model.embed` over padded evaluation batches."""

    def __init__(self, model, mesh):
        self.mesh = mesh
        replicated, sharded = parallel.replicated(mesh), parallel.data_sharded(mesh)
        self._embed = jax.jit(lambda variables, feats, lengths: model.apply(variables, feats, lengths,
                                                                            method=model.embed),
                              in_shardings=(replicated, sharded, sharded), out_shardings=replicated)

    def __call__(self, variables, batches: Iterable[Mapping[str, np.ndarray]], num_utts: int,
                 batch_frames: int, allow_missing: bool = False) -> np.ndarray:
        """Embeddings [num_utts, D] from batches of {'feats', 'lengths', 'index'} (index into the output).

        Rows no batch provided are NaN with `allow_missing` (files skipped as bad audio), otherwise an error."""
        outputs = []
        for batch in batches:
            length = batch["feats"].shape[1]
            # One row count per bucket (rounded to the device count) keeps the number of compiled shapes small.
            rows = parallel.round_up(max(1, batch_frames // length), self.mesh.size)
            count = len(batch["index"])
            feats = parallel.pad_rows({"feats": batch["feats"]}, rows)["feats"]
            # Dummy rows get a non-zero length so their (discarded) pooling does not divide 0 by 0.
            lengths = np.concatenate([batch["lengths"], np.full(rows - count, length, batch["lengths"].dtype)])
            sharded = parallel.shard_batch({"feats": feats, "lengths": lengths}, self.mesh)
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
            raise UserError(f"all {num_utts} evaluation files were skipped as bad audio: check data.eval_dir")
        if not allow_missing and np.isnan(embeddings).any():
            raise RuntimeError("the evaluation pipeline did not produce an embedding for every utterance")
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


def _training_statistics(embedder, variables, config, train) -> tuple[np.ndarray, np.ndarray]:
    """Mean embedding and per-speaker mean embeddings (the AS-norm cohort) of a seeded sample of training data."""
    if not pathlib.Path(train.root).is_dir():
        raise FileNotFoundError(
            f"the training audio {train.root} (embedded for eval.subtract_mean / eval.as_norm) does not exist: "
            f"set data.train_dir to the tree the shards were written from, or turn both options off")
    rng = np.random.default_rng(config.seed)
    count = min(config.eval.num_train_utts, len(train))
    chosen = np.sort(rng.choice(len(train), size=count, replace=False))
    embeddings = embed_files(embedder, variables, config, [train.paths[i] for i in chosen])
    labels = train.labels[chosen]
    embeddings, labels = embeddings[_present(embeddings)], labels[_present(embeddings)]
    speakers = np.unique(labels)
    cohort = np.stack([embeddings[labels == s].mean(axis=0) for s in speakers])
    return embeddings.mean(axis=0), cohort


def num_embedded(config, data: data_sources.DataSources) -> int:
    """Utterances `evaluate` embeds: every trial utterance, plus the training sample for the mean / cohort."""
    count = len({u for trials in data.trials for u in trials.utterances})
    if (config.eval.subtract_mean or config.eval.as_norm) and data.train is not None:
        count += min(config.eval.num_train_utts, len(data.train))
    return count


def evaluate(embedder: Embedder, variables, config, data: data_sources.DataSources) -> dict:
    """{trial-list name: verification metrics}, plus '<name>_asnorm' entries when eval.as_norm is set."""
    utterances = sorted({u for trials in data.trials for u in trials.utterances})
    bad_audio_log = data_sources.new_bad_audio_log()
    embeddings = embed_files(embedder, variables, config, [pathlib.Path(data.eval_root) / u for u in utterances],
                             bad_audio_log)
    by_key = {u: e for u, e, ok in zip(utterances, embeddings, _present(embeddings)) if ok}
    mean = cohort = None
    if (config.eval.subtract_mean or config.eval.as_norm) and data.train is not None:
        mean, cohort = _training_statistics(embedder, variables, config, data.train)
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
        scores = scoring.score_trials(by_key, trials, mean=mean if config.eval.subtract_mean else None)
        results[trials.name] = scoring.verification_metrics(scores, trials.labels)
        if skipped:
            results[trials.name]["skipped_trials"] = skipped
        if config.eval.as_norm:
            normed = scoring.as_norm_trials(scores, by_key, trials, cohort, top_k=config.eval.as_norm_top_k,
                                            mean=mean if config.eval.subtract_mean else None)
            results[f"{trials.name}_asnorm"] = scoring.verification_metrics(normed, trials.labels)
    return results
