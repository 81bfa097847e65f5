"""Speaker-verification scoring and metrics in numpy: cosine scoring, AS-norm, EER and minDCF.

:mod:`sv_jax.evaluation` extracts embeddings with the model; everything after that lives here and needs numpy
only, so it can be tested against independent references (scikit-learn's ``roc_curve``, brute-force loops).

Operating points
----------------
A trial is *accepted* when ``score >= threshold``. Sorting the scores in descending order and stepping the
threshold down through every distinct score gives the operating points of the ROC/DET curve (exactly the points
of ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``), preceded by the trivial point "reject all"
(threshold ``+inf``: P_miss = 1, P_fa = 0). The last point, threshold = the lowest score, is "accept all"
(P_miss = 0, P_fa = 1). Tied scores form a single operating point whatever their labels, so results do not
depend on the order of tied trials.

* EER (:func:`compute_eer`): let ``i`` be the first operating point with FNR <= FPR. The EER is where the straight
  segment between points ``i-1`` and ``i`` in (FPR, FNR) space crosses FNR = FPR (the same as linearly
  interpolating the ROC curve, ``brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)``); the returned threshold
  is the threshold of point ``i``, the highest threshold whose FNR <= FPR.
* minDCF (:func:`compute_min_dcf`): ``min_t (c_miss * P_miss(t) * p_target + c_fa * P_fa(t) * (1 - p_target))``
  divided by ``min(c_miss * p_target, c_fa * (1 - p_target))`` (NIST SRE / WeSpeaker normalisation), the minimum
  taken over all operating points including reject-all and accept-all, so it is at most 1.

Scoring
-------
:func:`score_trials` scores a trial list by the cosine of the two utterances' embeddings after optionally
subtracting a mean embedding (WeSpeaker subtracts the mean of the training embeddings). :func:`as_norm` applies
adaptive symmetric score normalisation against a cohort, computing each unique utterance's cohort statistics once;
:func:`as_norm_trials` does the same from an embedding mapping without materialising per-trial arrays.
"""

from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np

__all__ = [
    "as_norm",
    "as_norm_trials",
    "compute_eer",
    "compute_min_dcf",
    "cosine_scores",
    "operating_points",
    "score_trials",
    "verification_metrics",
]

_EPS = 1e-12
_CHUNK_ELEMENTS = 1 << 22  # elements per chunk of gathered embeddings / cohort scores (16 MiB float32)
_MAX_LISTED = 10


# ----------------------------------------------------------------------------------------------------------------
# EER and minDCF
# ----------------------------------------------------------------------------------------------------------------


def _check_scores_labels(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 1 or labels.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D, got shapes {scores.shape} and {labels.shape}")
    if scores.shape[0] != labels.shape[0]:
        raise ValueError(f"scores and labels differ in length: {scores.shape[0]} vs {labels.shape[0]}")
    if scores.shape[0] == 0:
        raise ValueError("scores and labels are empty")
    if np.isnan(scores).any():
        raise ValueError(f"scores contain NaN ({int(np.isnan(scores).sum())} of {scores.shape[0]})")
    if labels.dtype == np.bool_:
        is_target = labels
    else:
        is_target = labels == 1
        if not np.all(is_target | (labels == 0)):
            raise ValueError(f"labels must be 0/1 (or bool), got values {np.unique(labels)[:10]}")
    n_target = int(is_target.sum())
    if n_target == 0 or n_target == is_target.shape[0]:
        raise ValueError(
            f"labels contain only one class ({n_target} target, {is_target.shape[0] - n_target} non-target); "
            "EER/minDCF need both")
    return scores, is_target


def operating_points(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All operating points of a verification system, accepting trials with ``score >= threshold``.

    Returns ``(p_fa, p_miss, thresholds)``, each of length (number of distinct scores + 1), ordered by decreasing
    threshold; the first point is reject-all (threshold ``+inf``, P_miss = 1, P_fa = 0) and the last accept-all.
    ``p_fa`` is non-decreasing and ``p_miss`` non-increasing. Tied scores form a single point.

    Raises:
      ValueError: lengths differ, scores contain NaN, labels are not 0/1 or contain only one class.
    """
    scores, is_target = _check_scores_labels(scores, labels)
    order = np.argsort(scores, kind="stable")[::-1]
    s = scores[order]
    tp = np.cumsum(is_target[order], dtype=np.int64)
    # Last index of each run of equal scores (comparison, not np.diff, so that runs of +-inf stay one point).
    ends = np.flatnonzero(np.r_[s[1:] != s[:-1], True])
    tp = tp[ends]
    fp = ends + 1 - tp
    n_target, n_nontarget = tp[-1], fp[-1]
    p_miss = np.r_[1.0, (n_target - tp) / n_target]
    p_fa = np.r_[0.0, fp / n_nontarget]
    thresholds = np.r_[np.inf, s[ends]]
    return p_fa, p_miss, thresholds


def _eer_from_points(p_fa, p_miss, thresholds) -> tuple[float, float]:
    i = int(np.argmax(p_miss <= p_fa))  # exists: the last point has p_miss = 0 <= p_fa = 1; i >= 1
    d0 = p_miss[i - 1] - p_fa[i - 1]
    d1 = p_miss[i] - p_fa[i]
    a = d0 / (d0 - d1)
    eer = p_fa[i - 1] + a * (p_fa[i] - p_fa[i - 1])
    return float(eer), float(thresholds[i])


def _check_dcf_params(p_target, c_miss, c_fa) -> None:
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1), got {p_target}")
    if not (c_miss > 0 and c_fa > 0):
        raise ValueError(f"c_miss and c_fa must be positive, got {c_miss}, {c_fa}")


def _min_dcf_from_points(p_fa, p_miss, thresholds, p_target, c_miss, c_fa) -> tuple[float, float]:
    dcf = c_miss * p_miss * p_target + c_fa * p_fa * (1.0 - p_target)
    i = int(np.argmin(dcf))
    return float(dcf[i] / min(c_miss * p_target, c_fa * (1.0 - p_target))), float(thresholds[i])


def compute_eer(scores, labels) -> tuple[float, float]:
    """Equal error rate of a verification system.

    With ``i`` the first operating point (see the module docstring) where FNR <= FPR, the EER is the point where
    the segment from operating point ``i-1`` to ``i`` crosses FNR = FPR::

        d0 = fnr[i-1] - fpr[i-1] > 0,  d1 = fnr[i] - fpr[i] <= 0,  a = d0 / (d0 - d1)
        eer = fpr[i-1] + a * (fpr[i] - fpr[i-1])          (= fnr[i-1] + a * (fnr[i] - fnr[i-1]))

    i.e. linear interpolation of the ROC curve; when an operating point has FNR == FPR exactly, that value is the
    EER. Perfect separation gives 0, fully reversed scores give 1, all-equal scores give 0.5.

    Args:
      scores: ``[N]`` scores, higher = more likely target.
      labels: ``[N]`` 1 target / 0 non-target (or bool).

    Returns:
      ``(eer, threshold)``: the EER as a fraction in [0, 1] and the threshold of operating point ``i`` (accept
      ``score >= threshold``).

    Raises:
      ValueError: lengths differ, scores contain NaN, or labels contain only one class.
    """
    return _eer_from_points(*operating_points(scores, labels))


def compute_min_dcf(scores, labels, p_target=0.01, c_miss=1.0, c_fa=1.0) -> tuple[float, float]:
    """Normalised minimum detection cost.

    ``min_t (c_miss * P_miss(t) * p_target + c_fa * P_fa(t) * (1 - p_target)) / min(c_miss * p_target,
    c_fa * (1 - p_target))`` over all operating points including reject-all (threshold ``+inf``) and accept-all,
    so the result is in [0, 1].

    Returns:
      ``(min_dcf, threshold)``: the threshold of the minimising operating point (the highest one on ties);
      ``+inf`` when rejecting everything is optimal.

    Raises:
      ValueError: invalid p_target/costs, lengths differ, scores contain NaN, or labels contain only one class.
    """
    _check_dcf_params(p_target, c_miss, c_fa)
    return _min_dcf_from_points(*operating_points(scores, labels), p_target, c_miss, c_fa)


def _p_target_name(p: float) -> str:
    """0.01 -> 'p01', 0.05 -> 'p05', 0.001 -> 'p001', 0.1 -> 'p1' (the digits after the decimal point)."""
    text = np.format_float_positional(float(p), trim="-")
    if not text.startswith("0.") or len(text) <= 2:
        raise ValueError(f"p_target must be in (0, 1), got {p}")
    return "p" + text[2:]


def verification_metrics(scores, labels, p_targets=(0.01, 0.05)) -> dict:
    """EER and minDCF at each ``p_target`` (c_miss = c_fa = 1).

    Returns:
      ``{"eer_percent", "eer_threshold", "min_dcf_p01", "min_dcf_p05", "num_trials", "num_target"}`` with one
      ``min_dcf_pXX`` key per ``p_target`` named by its digits after the decimal point (0.01 -> ``p01``,
      0.05 -> ``p05``, 0.001 -> ``p001``). Values are Python floats / ints.
    """
    scores, is_target = _check_scores_labels(scores, labels)
    points = operating_points(scores, is_target)
    eer, eer_threshold = _eer_from_points(*points)
    out = {"eer_percent": 100.0 * eer, "eer_threshold": eer_threshold}
    for p in p_targets:
        key = "min_dcf_" + _p_target_name(p)
        if key in out:
            raise ValueError(f"duplicate p_target {p} in {p_targets}")
        out[key] = _min_dcf_from_points(*points, p, 1.0, 1.0)[0]
    out["num_trials"] = int(scores.shape[0])
    out["num_target"] = int(is_target.sum())
    return out


# ----------------------------------------------------------------------------------------------------------------
# Scoring
# ----------------------------------------------------------------------------------------------------------------


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norm = np.sqrt(np.einsum("...d,...d->...", x, x))[..., None]
    return x / np.maximum(norm, _EPS)


def cosine_scores(enroll, test) -> np.ndarray:
    """Row-wise cosine similarity of two ``[N, D]`` arrays -> ``[N]`` float64 (0 where a row is all zeros)."""
    enroll = np.asarray(enroll, dtype=np.float64)
    test = np.asarray(test, dtype=np.float64)
    if enroll.ndim != 2 or enroll.shape != test.shape:
        raise ValueError(f"enroll and test must both be [N, D], got {enroll.shape} and {test.shape}")
    return np.einsum("nd,nd->n", _l2_normalise(enroll), _l2_normalise(test))


def _index_trials(embeddings: Mapping[str, np.ndarray], trials, mean=None):
    """Unique-utterance embedding matrix (mean-subtracted, L2-normalised, float32) and per-trial row indices."""
    enroll_keys = list(trials.enroll)
    test_keys = list(trials.test)
    if len(enroll_keys) != len(test_keys):
        raise ValueError(f"trials have {len(enroll_keys)} enroll but {len(test_keys)} test keys")
    index = dict.fromkeys(enroll_keys)
    index.update(dict.fromkeys(test_keys))
    keys = list(index)
    missing = [k for k in keys if k not in embeddings]
    if missing:
        raise KeyError(
            f"{len(missing)} of {len(keys)} trial utterances have no embedding, e.g. {missing[:_MAX_LISTED]}")
    rows = []
    for k in keys:
        v = np.asarray(embeddings[k])
        if v.ndim == 2 and v.shape[0] == 1:
            v = v[0]
        if v.ndim != 1:
            raise ValueError(f"embedding of {k!r} must be [D] (or [1, D]), got shape {v.shape}")
        rows.append(v)
    dims = {r.shape[0] for r in rows}
    if len(dims) > 1:
        raise ValueError(f"embeddings have different dimensions: {sorted(dims)}")
    matrix = np.stack(rows).astype(np.float64 if mean is not None else np.float32, copy=False)
    if mean is not None:
        mean = np.asarray(mean, dtype=np.float64).reshape(-1)
        if mean.shape[0] != matrix.shape[1]:
            raise ValueError(f"mean has dimension {mean.shape[0]}, embeddings {matrix.shape[1]}")
        matrix = matrix - mean
    matrix = _l2_normalise(matrix).astype(np.float32, copy=False)
    index = dict(zip(keys, range(len(keys))))
    enroll_idx = np.array(list(map(index.__getitem__, enroll_keys)), dtype=np.int64)
    test_idx = np.array(list(map(index.__getitem__, test_keys)), dtype=np.int64)
    return matrix, enroll_idx, test_idx


def _indexed_cosine(matrix: np.ndarray, enroll_idx: np.ndarray, test_idx: np.ndarray) -> np.ndarray:
    """Dot products of rows of an L2-normalised matrix, gathered in chunks to bound memory."""
    out = np.empty(enroll_idx.shape[0], dtype=np.float64)
    chunk = max(1, _CHUNK_ELEMENTS // max(1, matrix.shape[1]))
    for start in range(0, enroll_idx.shape[0], chunk):
        e = matrix[enroll_idx[start:start + chunk]]
        t = matrix[test_idx[start:start + chunk]]
        out[start:start + chunk] = np.einsum("nd,nd->n", e, t)
    return out


def score_trials(embeddings: Mapping[str, np.ndarray], trials, mean=None) -> np.ndarray:
    """Cosine score of every trial.

    Args:
      embeddings: utterance key -> ``[D]`` embedding (``[1, D]`` accepted).
      trials: any object with ``.enroll`` and ``.test`` sequences of keys (e.g. ``data_pipeline.manifest.Trials``).
      mean: optional ``[D]`` vector subtracted from every embedding before the cosine.

    Returns:
      ``[N]`` float64 scores in trial order. Each utterance is normalised once (float32) and trials are scored in
      chunks, so 500k trials take well under a second.

    Raises:
      KeyError: keys without an embedding (message gives their count and up to 10 of them).
    """
    matrix, enroll_idx, test_idx = _index_trials(embeddings, trials, mean)
    return _indexed_cosine(matrix, enroll_idx, test_idx)


def _cohort_stats(emb: np.ndarray, cohort: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (ddof=0) of each row's top-k cosine scores against the cohort (inputs L2-normalised)."""
    n, c = emb.shape[0], cohort.shape[0]
    mu = np.empty(n, dtype=np.float64)
    sd = np.empty(n, dtype=np.float64)
    chunk = max(1, _CHUNK_ELEMENTS // c)
    cohort_t = np.ascontiguousarray(cohort.T)
    for start in range(0, n, chunk):
        s = emb[start:start + chunk] @ cohort_t
        if top_k < c:
            s = np.partition(s, c - top_k, axis=1)[:, c - top_k:]
        s = s.astype(np.float64)
        mu[start:start + chunk] = s.mean(axis=1)
        sd[start:start + chunk] = s.std(axis=1)
    return mu, np.maximum(sd, _EPS)


def _prepare_cohort(cohort, dim: int, top_k: int, mean=None) -> tuple[np.ndarray, int]:
    cohort = np.asarray(cohort, dtype=np.float64)
    if cohort.ndim != 2 or cohort.shape[1] != dim:
        raise ValueError(f"cohort must be [C, {dim}], got {cohort.shape}")
    k = min(int(top_k), cohort.shape[0])
    if k < 2:
        raise ValueError(f"AS-norm needs top_k >= 2 and a cohort of >= 2 embeddings (top_k={top_k}, "
                         f"cohort size {cohort.shape[0]})")
    if k < int(top_k):
        # The statistics are then those of the whole cohort (s-norm), not of the closest top_k: say so.
        warnings.warn(f"AS-norm top_k={top_k} exceeds the cohort of {cohort.shape[0]} embeddings: using all "
                      f"{cohort.shape[0]}", stacklevel=4)
    if mean is not None:
        cohort = cohort - np.asarray(mean, dtype=np.float64).reshape(-1)
    return _l2_normalise(cohort).astype(np.float32), k


def _as_norm_indexed(scores, matrix, enroll_idx, test_idx, cohort, top_k, mean=None) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != enroll_idx.shape:
        raise ValueError(f"scores have shape {scores.shape}, expected ({enroll_idx.shape[0]},)")
    cohort, k = _prepare_cohort(cohort, matrix.shape[1], top_k, mean)
    # Statistics only for utterances that occur in the trials, each computed once.
    used = np.unique(np.concatenate([enroll_idx, test_idx]))
    mu_u, sd_u = _cohort_stats(matrix[used], cohort, k)
    e = np.searchsorted(used, enroll_idx)
    t = np.searchsorted(used, test_idx)
    return 0.5 * ((scores - mu_u[e]) / sd_u[e] + (scores - mu_u[t]) / sd_u[t])


def as_norm(scores, enroll, test, cohort, top_k=300) -> np.ndarray:
    """Adaptive symmetric score normalisation (WeSpeaker's ``asnorm``).

    For trial ``n`` with score ``s``, ``mu_e``/``std_e`` are the mean and standard deviation (ddof=0) of the
    ``top_k`` highest cosine scores of the enrollment embedding against the cohort, likewise ``mu_t``/``std_t``
    for the test embedding, and the result is ``0.5 * ((s - mu_e) / std_e + (s - mu_t) / std_t)``.

    Embeddings (and the cohort) are L2-normalised inside; any mean subtraction is the caller's (or use
    :func:`as_norm_trials`). Identical rows are deduplicated so each unique utterance is scored against the cohort
    once, in chunks of bounded memory, with top-k selection by ``np.partition``.

    Args:
      scores: ``[N]`` raw trial scores.
      enroll: ``[N, D]`` enrollment embedding per trial.
      test: ``[N, D]`` test embedding per trial.
      cohort: ``[C, D]`` cohort embeddings (WeSpeaker: the mean embedding of every training speaker).
      top_k: number of highest cohort scores used; clipped to ``C`` with a ``UserWarning``; must be >= 2.

    Returns:
      ``[N]`` float64 normalised scores.
    """
    enroll = np.asarray(enroll)
    test = np.asarray(test)
    if enroll.ndim != 2 or enroll.shape != test.shape:
        raise ValueError(f"enroll and test must both be [N, D], got {enroll.shape} and {test.shape}")
    n, d = enroll.shape
    both = np.ascontiguousarray(np.concatenate([enroll, test]).astype(np.float32, copy=False))
    # Deduplicate rows by their bytes (per-trial arrays repeat each utterance many times).
    _, first, inverse = np.unique(both.view(np.dtype((np.void, both.dtype.itemsize * d))).reshape(-1),
                                  return_index=True, return_inverse=True)
    matrix = _l2_normalise(both[first].astype(np.float64)).astype(np.float32)
    inverse = inverse.reshape(-1)
    return _as_norm_indexed(scores, matrix, inverse[:n], inverse[n:], cohort, top_k)


def as_norm_trials(scores, embeddings: Mapping[str, np.ndarray], trials, cohort, top_k=300,
                   mean=None) -> np.ndarray:
    """:func:`as_norm` for a trial list scored by :func:`score_trials`, without per-trial ``[N, D]`` arrays.

    ``mean`` (optional ``[D]``) is subtracted from the trial embeddings and the cohort, as WeSpeaker does when it
    subtracts the training mean; pass the same ``mean`` as to :func:`score_trials`.
    """
    matrix, enroll_idx, test_idx = _index_trials(embeddings, trials, mean)
    return _as_norm_indexed(scores, matrix, enroll_idx, test_idx, cohort, top_k, mean)
