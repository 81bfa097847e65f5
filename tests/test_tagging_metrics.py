"""Tagging metrics against scikit-learn (ties, a class without positives, one without detections) and the loss
against optax."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn import metrics as skm

from sv_jax import tagging
from sv_jax.tagging import metrics


def _data(seed=0, clips=300, classes=7):
    """Weak labels and scores with many ties (scores on a 0.05 grid), class 2 without positives, class 4 without
    positives nor detections, class 5 with one positive, class 6 with every score tied."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((clips, classes)) < 0.3).astype(np.int64)
    scores = np.round(np.clip(labels * 0.25 + rng.random((clips, classes)) * 0.7, 0, 1) / 0.05) * 0.05
    labels[:, 2] = labels[:, 4] = 0
    scores[:, 4] = np.minimum(scores[:, 4], 0.45)
    labels[:, 5] = 0
    labels[17, 5] = 1
    scores[:, 6] = 0.6
    return labels, scores


def _sklearn(fn, *args, **kwargs):
    with warnings.catch_warnings():  # "No positive class found in y_true", ill-defined F-scores
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_average_precision_matches_sklearn(seed):
    labels, scores = _data(seed)
    expected = _sklearn(skm.average_precision_score, labels, scores, average=None)
    assert len(np.unique(scores)) < 30  # ties everywhere
    np.testing.assert_allclose(metrics.average_precision(labels, scores), expected, rtol=0, atol=1e-12)
    assert metrics.average_precision(labels, scores)[2] == 0.0  # no positives: sklearn's 0, kept in the mean
    assert metrics.mean_average_precision(labels, scores) == pytest.approx(
        _sklearn(skm.average_precision_score, labels, scores, average="macro"), abs=1e-12)


def test_average_precision_of_a_small_case_by_hand():
    # Sorted by score: 0.9 (pos), then 0.5 tied between a positive and a negative, 0.1 (pos).
    # Thresholds: 0.9 -> P 1, R 1/3; 0.5 -> P 2/3, R 2/3; 0.1 -> P 3/4, R 1.
    labels = np.array([[1], [1], [0], [1]])
    scores = np.array([[0.9], [0.5], [0.5], [0.1]])
    expected = (1 / 3) * 1 + (1 / 3) * (2 / 3) + (1 / 3) * (3 / 4)
    assert metrics.average_precision(labels, scores)[0] == pytest.approx(expected, abs=1e-15)


@pytest.mark.parametrize("seed", [0, 1])
def test_f1_matches_sklearn(seed):
    labels, scores = _data(seed)
    detected = scores > 0.5
    assert detected[:, 2].any() and not detected[:, 4].any() and not labels[:, 4].any()
    np.testing.assert_allclose(metrics.f1_per_class(labels, scores),
                               _sklearn(skm.f1_score, labels, detected, average=None), rtol=0, atol=1e-12)
    assert metrics.macro_f1(labels, scores) == pytest.approx(
        _sklearn(skm.f1_score, labels, detected, average="macro"), abs=1e-12)


def test_f1_threshold_is_strict():
    labels = np.array([[1, 0], [0, 1]])
    np.testing.assert_array_equal(metrics.f1_per_class(labels, np.array([[0.5, 0.2], [0.1, 0.51]])), [0.0, 1.0])
    np.testing.assert_array_equal(metrics.f1_per_class(labels, np.array([[0.5, 0.2], [0.1, 0.51]]), 0.4), [1, 1])


def test_clip_metrics_rank_logits_not_rounded_probabilities():
    # Logits 20 and 30 both round to probability 1.0 in float32: ranked as probabilities they would tie.
    labels = np.array([[1], [0], [1], [0]])
    logits = np.array([[30.0], [20.0], [-1.0], [-3.0]])
    result = metrics.clip_metrics(labels, logits, class_names=["dog"])
    assert result["ap/dog"] == result["map"] == pytest.approx(skm.average_precision_score(labels, logits))
    probabilities = np.asarray(jax.nn.sigmoid(jnp.asarray(logits, jnp.float32)))
    assert result["map"] > skm.average_precision_score(labels, probabilities)
    assert result["f1_macro"] == pytest.approx(skm.f1_score(labels, logits > 0, average="macro"))
    assert set(metrics.clip_metrics(labels, logits)) == {"map", "f1_macro", "ap/0"}


@pytest.mark.parametrize("labels, scores, message", [
    (np.zeros((3, 2)), np.zeros((3, 3)), "same"),
    (np.zeros(3), np.zeros(3), "same"),
    (np.full((3, 2), 0.5), np.zeros((3, 2)), "0 or 1"),
])
def test_bad_inputs_raise(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        metrics.average_precision(labels, scores)


def test_binary_cross_entropy_is_optax_mean():
    rng = np.random.default_rng(4)
    logits = jnp.asarray(rng.normal(size=(6, 10)) * np.array([1, 10, 100, 0.01, 5, 30, 1, 1, 2, 50]), jnp.float32)
    labels = jnp.asarray(rng.random((6, 10)) < 0.4, jnp.float32)
    soft = jnp.asarray(rng.random((6, 10)), jnp.float32)  # mixup's soft labels
    for target in (labels, soft):
        expected = optax.sigmoid_binary_cross_entropy(logits, target).mean()
        np.testing.assert_allclose(tagging.binary_cross_entropy(logits, target), expected, rtol=1e-6)
        grad = jax.grad(tagging.binary_cross_entropy)(logits, target)
        np.testing.assert_allclose(grad, (jax.nn.sigmoid(logits) - target) / logits.size, rtol=1e-5, atol=1e-9)
