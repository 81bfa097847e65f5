"""Tests for sv_jax.scoring against hand-worked cases and independent references (sklearn, brute-force loops)."""

import contextlib
import time
import types
import warnings

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from sv_jax import scoring


# ------------------------------------------------------------------------------------------------------------
# References
# ------------------------------------------------------------------------------------------------------------


def sklearn_eer(scores, labels):
    """EER by linear interpolation of sklearn's ROC at the first point where FNR <= FPR."""
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1.0 - tpr
    i = np.flatnonzero(fnr <= fpr)[0]
    d0, d1 = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
    return fpr[i - 1] + d0 / (d0 - d1) * (fpr[i] - fpr[i - 1])


def brute_force_min_dcf(scores, labels, p_target, c_miss=1.0, c_fa=1.0):
    scores = np.asarray(scores)
    labels = np.asarray(labels).astype(bool)
    best = np.inf
    for t in list(np.unique(scores)) + [np.inf]:
        accept = scores >= t
        p_miss = np.mean(~accept[labels])
        p_fa = np.mean(accept[~labels])
        best = min(best, c_miss * p_miss * p_target + c_fa * p_fa * (1 - p_target))
    return best / min(c_miss * p_target, c_fa * (1 - p_target))


def _random_trials(seed, n=2000, shift=1.5):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(np.int8)
    scores = rng.normal(size=n) + shift * labels
    return scores, labels


# ------------------------------------------------------------------------------------------------------------
# EER
# ------------------------------------------------------------------------------------------------------------


def test_eer_perfect_separation():
    eer, thr = scoring.compute_eer([0.9, 0.8, 0.7, 0.6, 0.1, 0.2, 0.3, 0.4], [1, 1, 1, 1, 0, 0, 0, 0])
    assert eer == 0.0
    assert 0.4 < thr <= 0.6


def test_eer_fully_reversed():
    eer, _ = scoring.compute_eer([0.1, 0.2, 0.3, 0.4, 0.9, 0.8, 0.7, 0.6], [1, 1, 1, 1, 0, 0, 0, 0])
    assert eer == 1.0


def test_eer_one_swap_hand_worked():
    # Descending: .9T .8T .7T .6N .4T .3N .2N .1N -> at threshold 0.6: FNR = 1/4 (0.4 rejected), FPR = 1/4.
    eer, thr = scoring.compute_eer([0.9, 0.8, 0.7, 0.4, 0.6, 0.3, 0.2, 0.1], [1, 1, 1, 1, 0, 0, 0, 0])
    assert eer == pytest.approx(0.25)
    assert thr == pytest.approx(0.6)


def test_eer_interpolated_hand_worked():
    # 2 targets (0.9, 0.3), 2 non-targets (0.6, 0.1). Points (FPR, FNR): (0,1) (0,.5) (.5,.5)... -> crossing
    # exactly at (.5, .5). With 3 targets (0.9, 0.8, 0.3): (0,1) (0,2/3) (0,1/3) (.5,1/3): i = 3,
    # d0 = 1/3, d1 = 1/3 - 1/2 = -1/6, a = 2/3 -> EER = 0 + 2/3 * 0.5 = 1/3.
    assert scoring.compute_eer([0.9, 0.3, 0.6, 0.1], [1, 1, 0, 0])[0] == pytest.approx(0.5)
    assert scoring.compute_eer([0.9, 0.8, 0.3, 0.6, 0.1], [1, 1, 1, 0, 0])[0] == pytest.approx(1 / 3)


def test_eer_ties_across_classes():
    # All scores equal: one operating point (accept all) besides reject-all -> EER 0.5 whatever the order.
    assert scoring.compute_eer(np.zeros(6), [1, 0, 1, 0, 0, 0])[0] == pytest.approx(0.5)
    # A tie between a target and a non-target must not depend on input order.
    scores = np.array([0.9, 0.5, 0.5, 0.1])
    a = scoring.compute_eer(scores, [1, 1, 0, 0])
    b = scoring.compute_eer(scores, [1, 0, 1, 0])
    assert a == b
    assert a[0] == pytest.approx(sklearn_eer(scores, [1, 1, 0, 0]))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_eer_matches_sklearn_reference(seed):
    scores, labels = _random_trials(seed)
    eer, thr = scoring.compute_eer(scores, labels)
    assert abs(eer - sklearn_eer(scores, labels)) <= 1e-3
    # The returned threshold is an operating point with FNR <= FPR next to the EER.
    accept = scores >= thr
    p_miss = np.mean(~accept[labels == 1])
    p_fa = np.mean(accept[labels == 0])
    assert p_miss <= p_fa and abs(p_miss - eer) < 0.01 and abs(p_fa - eer) < 0.01


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_eer_matches_sklearn_with_heavy_ties(seed):
    scores, labels = _random_trials(seed)
    scores = np.round(scores, 1)  # many ties across classes
    assert abs(scoring.compute_eer(scores, labels)[0] - sklearn_eer(scores, labels)) <= 1e-9


def test_eer_errors():
    with pytest.raises(ValueError, match="one class"):
        scoring.compute_eer([0.1, 0.2, 0.3], [1, 1, 1])
    with pytest.raises(ValueError, match="one class"):
        scoring.compute_min_dcf([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="NaN"):
        scoring.compute_eer([0.1, np.nan, 0.3], [1, 0, 1])
    with pytest.raises(ValueError, match="length"):
        scoring.compute_eer([0.1, 0.2, 0.3], [1, 0])
    with pytest.raises(ValueError, match="0/1"):
        scoring.compute_eer([0.1, 0.2, 0.3], [1, 0, 2])


# ------------------------------------------------------------------------------------------------------------
# minDCF
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("p_target, c_miss, c_fa", [(0.01, 1, 1), (0.05, 1, 1), (0.5, 1, 1), (0.01, 10, 1)])
def test_min_dcf_matches_brute_force(seed, p_target, c_miss, c_fa):
    scores, labels = _random_trials(seed, n=400, shift=1.0)
    scores = np.round(scores, 2)  # include ties
    dcf, thr = scoring.compute_min_dcf(scores, labels, p_target=p_target, c_miss=c_miss, c_fa=c_fa)
    assert dcf == pytest.approx(brute_force_min_dcf(scores, labels, p_target, c_miss, c_fa), abs=1e-12)
    assert dcf <= 1.0
    # The threshold achieves the reported cost.
    accept = scores >= thr
    cost = (c_miss * np.mean(~accept[labels == 1]) * p_target
            + c_fa * np.mean(accept[labels == 0]) * (1 - p_target))
    assert cost / min(c_miss * p_target, c_fa * (1 - p_target)) == pytest.approx(dcf)


def test_min_dcf_trivial_and_perfect():
    # Useless system: the trivial reject-all decision gives normalised cost exactly 1.
    dcf, thr = scoring.compute_min_dcf([0.1, 0.2, 0.3, 0.4], [1, 0, 1, 0], p_target=0.01)
    assert dcf == pytest.approx(1.0) and thr == np.inf
    assert scoring.compute_min_dcf([0.9, 0.8, 0.1, 0.2], [1, 1, 0, 0])[0] == 0.0
    # Reversed scores: still at most 1.
    assert scoring.compute_min_dcf([0.1, 0.2, 0.9, 0.8], [1, 1, 0, 0], p_target=0.5)[0] == pytest.approx(1.0)


def test_verification_metrics():
    scores, labels = _random_trials(7)
    out = scoring.verification_metrics(scores, labels)
    assert set(out) == {"eer_percent", "eer_threshold", "min_dcf_p01", "min_dcf_p05", "num_trials", "num_target"}
    eer, thr = scoring.compute_eer(scores, labels)
    assert out["eer_percent"] == pytest.approx(100 * eer)
    assert out["eer_threshold"] == thr
    assert out["min_dcf_p01"] == pytest.approx(scoring.compute_min_dcf(scores, labels, 0.01)[0])
    assert out["min_dcf_p05"] == pytest.approx(scoring.compute_min_dcf(scores, labels, 0.05)[0])
    assert out["num_trials"] == 2000 and out["num_target"] == int(labels.sum())
    assert isinstance(out["num_trials"], int) and isinstance(out["eer_percent"], float)
    out = scoring.verification_metrics(scores, labels, p_targets=(0.001, 0.1))
    assert "min_dcf_p001" in out and "min_dcf_p1" in out


def test_metrics_speed_500k():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 500_000)
    scores = rng.normal(size=500_000) + 2 * labels
    start = time.perf_counter()
    scoring.verification_metrics(scores, labels)
    assert time.perf_counter() - start < 1.5  # typically ~0.2 s; generous for shared CI machines


# ------------------------------------------------------------------------------------------------------------
# Scoring
# ------------------------------------------------------------------------------------------------------------


def test_cosine_scores():
    rng = np.random.default_rng(0)
    e, t = rng.normal(size=(5, 8)), rng.normal(size=(5, 8))
    expected = [a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(e, t)]
    np.testing.assert_allclose(scoring.cosine_scores(e, t), expected, rtol=1e-12)
    np.testing.assert_allclose(scoring.cosine_scores(e, 3 * e), 1.0)
    with pytest.raises(ValueError):
        scoring.cosine_scores(e, t[:4])


def _embeddings(seed=0, n_utts=12, dim=16):
    rng = np.random.default_rng(seed)
    keys = [f"id{i % 4:05d}/vid/{i:05d}.wav" for i in range(n_utts)]
    emb = {k: (rng.normal(size=dim) + 0.5).astype(np.float32) for k in keys}
    idx = rng.integers(0, n_utts, size=(40, 2))
    trials = types.SimpleNamespace(enroll=tuple(keys[i] for i in idx[:, 0]), test=tuple(keys[j] for j in idx[:, 1]))
    return emb, trials, rng


def test_score_trials_with_and_without_mean():
    emb, trials, rng = _embeddings()
    mean = rng.normal(size=16)
    for m in (None, mean):
        expected = []
        for e, t in zip(trials.enroll, trials.test):
            a = emb[e].astype(np.float64) - (0 if m is None else m)
            b = emb[t].astype(np.float64) - (0 if m is None else m)
            expected.append(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        np.testing.assert_allclose(scoring.score_trials(emb, trials, mean=m), expected, atol=1e-6)
    # The mean matters (embeddings are offset by +0.5).
    assert not np.allclose(scoring.score_trials(emb, trials), scoring.score_trials(emb, trials, mean=mean),
                           atol=1e-3)


def test_score_trials_missing_keys():
    emb, trials, _ = _embeddings()
    used = sorted(set(trials.enroll) | set(trials.test))
    for k in used[:3]:
        del emb[k]
    with pytest.raises(KeyError) as err:
        scoring.score_trials(emb, trials)
    msg = str(err.value)
    assert "3 of" in msg and all(k in msg for k in used[:3])


def test_score_trials_missing_keys_lists_at_most_ten():
    trials = types.SimpleNamespace(enroll=[f"e{i}" for i in range(15)], test=[f"t{i}" for i in range(15)])
    with pytest.raises(KeyError) as err:
        scoring.score_trials({}, trials)
    msg = str(err.value)
    assert "30 of 30" in msg and sum(f"'{p}{i}'" in msg for p in "et" for i in range(15)) == 10


def as_norm_reference(scores, enroll, test, cohort, top_k):
    """Slow per-trial AS-norm, written directly from the definition."""
    def unit(x):
        return x / np.linalg.norm(x)

    cohort = np.array([unit(c) for c in cohort])
    k = min(top_k, len(cohort))
    out = []
    for s, e, t in zip(scores, enroll, test):
        se = np.sort(cohort @ unit(e))[::-1][:k]
        st = np.sort(cohort @ unit(t))[::-1][:k]
        out.append(0.5 * ((s - se.mean()) / se.std() + (s - st.mean()) / st.std()))
    return np.array(out)


@pytest.mark.parametrize("top_k", [5, 30, 1000])
def test_as_norm_matches_reference(top_k):
    emb, trials, rng = _embeddings(seed=3)
    cohort = rng.normal(size=(50, 16)) + 0.2
    scores = scoring.score_trials(emb, trials)
    enroll = np.stack([emb[k] for k in trials.enroll])
    test = np.stack([emb[k] for k in trials.test])
    expected = as_norm_reference(scores, enroll.astype(np.float64), test.astype(np.float64), cohort, top_k)
    # top_k beyond the cohort uses the whole cohort, and warns (the statistics are then s-norm's).
    clipped = pytest.warns(UserWarning, match=f"top_k={top_k} exceeds the cohort of 50") if top_k > 50 else \
        contextlib.nullcontext()
    with clipped:
        np.testing.assert_allclose(scoring.as_norm(scores, enroll, test, cohort, top_k=top_k), expected, atol=1e-4)
    with clipped:
        np.testing.assert_allclose(scoring.as_norm_trials(scores, emb, trials, cohort, top_k=top_k), expected,
                                   atol=1e-4)


def test_as_norm_within_the_cohort_does_not_warn():
    emb, trials, rng = _embeddings(seed=4)
    cohort = rng.normal(size=(50, 16))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        normed = scoring.as_norm_trials(scoring.score_trials(emb, trials), emb, trials, cohort, top_k=50)
    assert [str(w.message) for w in caught] == [] and np.isfinite(normed).all()


def test_as_norm_trials_with_mean_and_chunking(monkeypatch):
    emb, trials, rng = _embeddings(seed=5)
    cohort = rng.normal(size=(40, 16))
    mean = rng.normal(size=16)
    scores = scoring.score_trials(emb, trials, mean=mean)
    enroll = np.stack([emb[k] - mean for k in trials.enroll])
    test = np.stack([emb[k] - mean for k in trials.test])
    expected = as_norm_reference(scores, enroll, test, cohort - mean, 10)
    monkeypatch.setattr(scoring, "_CHUNK_ELEMENTS", 64)  # force several chunks
    np.testing.assert_allclose(scoring.as_norm_trials(scores, emb, trials, cohort, top_k=10, mean=mean), expected,
                               atol=1e-4)
    np.testing.assert_allclose(scoring.score_trials(emb, trials, mean=mean), scores, atol=1e-6)


def test_as_norm_errors():
    rng = np.random.default_rng(0)
    e, t = rng.normal(size=(4, 8)), rng.normal(size=(4, 8))
    with pytest.raises(ValueError):
        scoring.as_norm(np.zeros(4), e, t, rng.normal(size=(1, 8)))  # cohort of one: no std
    with pytest.raises(ValueError):
        scoring.as_norm(np.zeros(4), e, t, rng.normal(size=(10, 7)))  # dimension mismatch
    with pytest.raises(ValueError):
        scoring.as_norm(np.zeros(3), e, t, rng.normal(size=(10, 8)))  # score count mismatch
