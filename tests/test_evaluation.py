"""sv_jax.evaluation: each process's share of an evaluation batch, and the AS-norm cohort built as WeSpeaker does
(one mean embedding per training speaker), on planted embeddings and on the tiny corpus with a tiny model."""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli import ConfigError
from configs import tiny
from sv_jax import data_sources, evaluation, models, parallel

# ------------------------------------------------------------------------------------------------------------
# Evaluation split across processes
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_processes", [1, 2, 4])
@pytest.mark.parametrize("devices_per_process", [1, 2])
def test_each_process_feeds_an_equal_disjoint_share_of_every_batch(num_processes, devices_per_process):
    mesh_processes = np.repeat(np.arange(num_processes), devices_per_process).tolist()  # jax.devices() order
    size = len(mesh_processes)
    for count in range(1, 14):  # utterances in the batch, most not a multiple of the mesh
        rows = parallel.round_up(count, size)
        shares = [evaluation.local_rows(rows, mesh_processes, p) for p in range(num_processes)]
        fed = [np.arange(rows)[s] for s in shares]
        assert {len(f) for f in fed} == {rows // num_processes}  # one shape for every process
        np.testing.assert_array_equal(np.concatenate(fed), np.arange(rows))  # every row once, in order
    assert evaluation.local_rows(8, [0] * 4, 0) == slice(0, 8)  # one process: the whole batch, as before


def test_a_process_whose_devices_are_interleaved_feeds_their_rows():
    # make_array_from_process_local_data fills a process's mesh positions, in order, from its local rows.
    np.testing.assert_array_equal(evaluation.local_rows(8, [0, 1, 0, 1], 1), [2, 3, 6, 7])
    with pytest.raises(ValueError, match="do not split evenly"):
        evaluation.local_rows(6, [0, 0, 1, 1], 0)
    with pytest.raises(ValueError, match="process 2 has no device"):
        evaluation.local_rows(8, [0, 0, 1, 1], 2)


def test_the_embedder_hands_each_process_only_its_rows(monkeypatch):
    """Two emulated processes over one 4-device mesh: together they feed the padded batch once, not twice."""
    batches = [{"feats": np.random.default_rng(0).normal(size=(5, 100, 3)).astype(np.float32),
                "lengths": np.array([100, 90, 80, 70, 60], np.int32), "index": np.arange(5)}]
    mesh = parallel.create_mesh(jax.devices()[:4])
    fed = {}
    for process in range(2):
        embedder = evaluation.Embedder(None, mesh, process_index=process)
        embedder._mesh_processes = [0, 0, 1, 1]
        monkeypatch.setattr(parallel, "shard_batch", lambda batch, mesh, p=process: fed.setdefault(p, batch))
        embedder._embed = lambda variables, feats, lengths: np.zeros((2 * len(lengths), 4), np.float32)
        # 600 frames // 100 = 6 rows, rounded up to the 4 devices: 8, 4 per process.
        assert embedder(None, batches, 5, batch_frames=600).shape == (5, 4)
    assert fed[0]["feats"].shape == fed[1]["feats"].shape == (4, 100, 3)
    feats, lengths = evaluation.padded_rows(batches[0], 8)
    np.testing.assert_array_equal(np.concatenate([fed[0]["feats"], fed[1]["feats"]]), feats)
    np.testing.assert_array_equal(np.concatenate([fed[0]["lengths"], fed[1]["lengths"]]), lengths)
    np.testing.assert_array_equal(lengths, [100, 90, 80, 70, 60, 100, 100, 100])  # dummy rows: the padded length


# ------------------------------------------------------------------------------------------------------------
# The training utterances embedded and the cohort
# ------------------------------------------------------------------------------------------------------------

LABELS = np.repeat(np.arange(6), [1, 3, 5, 7, 10, 2])  # 28 utterances of 6 speakers, uneven


def test_every_speaker_gets_k_of_its_utterances_seeded():
    chosen = evaluation.training_selection(LABELS, per_speaker=5, cap=0, seed=1)
    assert np.all(np.diff(chosen) > 0)  # sorted, distinct
    np.testing.assert_array_equal(np.bincount(LABELS[chosen], minlength=6), [1, 3, 5, 5, 5, 2])
    np.testing.assert_array_equal(evaluation.training_selection(LABELS, 5, 0, seed=1), chosen)
    assert not np.array_equal(evaluation.training_selection(LABELS, 5, 0, seed=2), chosen)
    np.testing.assert_array_equal(evaluation.training_selection(LABELS, 0, 0, seed=1), np.arange(28))  # 0 = all


def test_a_cap_takes_every_speakers_first_choice_before_any_second():
    chosen = evaluation.training_selection(LABELS, per_speaker=5, cap=14, seed=0)
    counts = np.bincount(LABELS[chosen], minlength=6)
    assert len(chosen) == 14 and counts.min() >= 1
    # Round robin: a speaker has fewer than another only when it has no more utterances (or the last round ends).
    full = np.minimum(np.bincount(LABELS), 5)
    assert all(counts[s] == full[s] or counts[s] >= counts.max() - 1 for s in range(6))
    few = evaluation.training_selection(LABELS, per_speaker=5, cap=4, seed=0)
    assert len(np.unique(LABELS[few])) == 4  # fewer slots than speakers: 4 speakers, one utterance each


def _stats(embeddings, labels, **kwargs):
    return evaluation.speaker_statistics(embeddings, labels, per_speaker=kwargs.pop("per_speaker", 5), **kwargs)


def test_the_cohort_is_one_mean_per_speaker_and_says_what_it_is():
    rng = np.random.default_rng(0)
    chosen = evaluation.training_selection(LABELS, 5, 0, seed=0)
    embeddings = rng.normal(size=(len(chosen), 8)).astype(np.float32)
    labels = LABELS[chosen]
    stats = _stats(embeddings, labels, train_speakers=6)
    assert stats.cohort.shape == (6, 8) and stats.cohort_speakers == stats.train_speakers == 6
    for s in range(6):
        np.testing.assert_allclose(stats.cohort[s], embeddings[labels == s].mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(stats.mean, embeddings.mean(axis=0), rtol=1e-6)  # of the embedded set
    assert stats.utterances == len(chosen) == 21
    assert stats.label == "per-speaker means of 1-5 utterances each (eval.cohort_utts_per_speaker=5), 6 speakers"
    even = np.repeat(np.arange(3), 5)
    assert _stats(embeddings[:15], even, train_speakers=3).label == "per-speaker means of 5 utterances each, 3 speakers"
    assert _stats(embeddings[:15], even, train_speakers=3, per_speaker=0).label == (
        "per-speaker means of all their utterances (5 each), 3 speakers")


def test_a_smaller_cohort_is_labelled_smaller():
    embeddings = np.ones((4, 8), np.float32)
    capped = _stats(embeddings, np.arange(4), train_speakers=6, capped_at=4)
    assert capped.cohort_speakers == 4 and capped.label == (
        "smaller than WeSpeaker's (one mean per training speaker): per-speaker means of 1 utterance each "
        "(eval.cohort_utts_per_speaker=5), 4 of 6 training speakers (eval.num_train_utts=4 caps the utterances "
        "embedded)")
    skipped = _stats(embeddings, np.arange(4), train_speakers=5, skipped=2)
    assert skipped.label.startswith("smaller than WeSpeaker's") and "2 training files skipped as bad audio" in \
        skipped.label


def test_as_norm_top_k_is_clamped_to_the_cohort_with_a_warning(caplog):
    config = tiny.get_config()
    stats = _stats(np.ones((6, 8), np.float32), np.arange(6), train_speakers=6)
    with caplog.at_level(logging.WARNING):
        assert evaluation._as_norm_top_k(config, stats) == 6
    assert "eval.as_norm_top_k=300 exceeds the AS-norm cohort" in caplog.text
    config.eval.as_norm_top_k = 4
    assert evaluation._as_norm_top_k(config, stats) == 4
    with pytest.raises(ConfigError, match="at least 2 speakers"):
        evaluation._as_norm_top_k(config, _stats(np.ones((1, 8), np.float32), np.zeros(1), train_speakers=6))


@pytest.mark.parametrize("key,value", [("cohort_utts_per_speaker", -1), ("num_train_utts", -5)])
def test_bad_cohort_settings_name_their_key(key, value, corpus_root):
    config = tiny.get_config()
    config.data.synthetic.root = str(corpus_root)
    with config.unlocked():
        config.eval[key] = value
    data = data_sources.resolve_data(config.data, str(corpus_root))
    with pytest.raises(ConfigError, match=f"eval.{key}"):
        evaluation.num_embedded(config, data)


def test_evaluate_embeds_k_per_speaker_and_reports_the_cohort(corpus_root, tmp_path, monkeypatch):
    """The tiny corpus (6 speakers of 4 utterances) and an untrained tiny model: AS-norm over all 6 speakers."""
    config = tiny.get_config()
    config.data.synthetic.root = str(corpus_root)
    config.eval.as_norm = True
    config.eval.cohort_utts_per_speaker, config.eval.num_train_utts = 3, 0
    # One bucket (1-1.5 s utterances in 200 frames) of 4 rows, not two of 320 and 160: one small program.
    config.eval.bucket_frames, config.eval.batch_frames = 200, 800
    data = data_sources.resolve_data(config.data, str(tmp_path))
    model = models.create_model(config.model, data.num_classes)
    feats = jnp.zeros((2, config.data.num_frames, config.data.num_mel_bins))
    # Random variables of the model's shapes: compiling its init would take longer than this whole test.
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), feats,
                            jnp.zeros((2,), jnp.int32), 0.0)
    rng = np.random.default_rng(0)
    variables = jax.tree_util.tree_map_with_path(lambda path, leaf: np.ones(leaf.shape, np.float32) if "var" in str(
        path[-1]) else (rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]) or 1)).astype(np.float32),
        shapes)
    embedder = evaluation.Embedder(model, parallel.create_mesh(jax.devices()[:2]))
    embedded, statistics = [], []
    embed_files, training_statistics = evaluation.embed_files, evaluation.training_statistics

    def recording(embedder, variables, config, paths, bad_audio_log=None):
        embeddings = embed_files(embedder, variables, config, paths, bad_audio_log)
        embedded.append(([str(p) for p in paths], embeddings))
        return embeddings

    monkeypatch.setattr(evaluation, "embed_files", recording)
    monkeypatch.setattr(evaluation, "training_statistics", lambda *args: statistics.append(
        training_statistics(*args)) or statistics[-1])
    results = evaluation.evaluate(embedder, variables, config, data)

    train_paths, train_embeddings = embedded[1]
    assert evaluation.num_embedded(config, data) == len(embedded[0][0]) + len(train_paths)
    index = {p: i for i, p in enumerate(data.train.paths)}
    labels = data.train.labels[[index[p] for p in train_paths]]
    assert data.train.num_speakers == 6 and np.all(np.bincount(labels) == 3)  # k of every speaker
    (stats,) = statistics
    assert stats.cohort.shape == (6, config.model.embed_dim)
    for s in range(6):
        np.testing.assert_allclose(stats.cohort[s], train_embeddings[labels == s].mean(axis=0), rtol=1e-5,
                                   atol=1e-6)
    entry = results["trials_asnorm"]
    assert entry["cohort_speakers"] == 6 and entry["as_norm_top_k"] == 6
    assert entry["cohort"] == "per-speaker means of 3 utterances each, 6 speakers"
    assert 0.0 <= entry["eer_percent"] <= 100.0 and "cohort" not in results["trials"]
