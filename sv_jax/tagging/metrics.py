"""Clip-level tagging metrics in numpy: per-class and macro average precision (mAP), macro F1 at a threshold.

Both follow scikit-learn, so that figures compare with papers that use it (tests/test_tagging_metrics.py checks
them against sklearn.metrics to 1e-12):
- AP of a class is sklearn's `average_precision_score`: the clips sorted by score, one threshold per distinct score
  (tied clips enter together), AP = sum_n (R_n - R_{n-1}) P_n over those thresholds, from the highest. A class with
  no positive clip has AP 0 (sklearn warns and sets recall to 1 at every threshold, so the sum is the precision at
  the highest threshold, 0); the macro mean includes it, as sklearn's average='macro' does.
- F1 of a class is 2 TP / (2 TP + FP + FN) with clips detected where the probability is above the threshold (0.5:
  the baseline's torchmetrics rule); 0 where the class has neither positives nor detections (sklearn's default
  zero_division), and the macro mean includes it.

AP depends only on the order of the scores, so it is computed from logits: sigmoids in float32 round large logits
to the same 1.0 and would make ties that the model did not.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

THRESHOLD = 0.5


def average_precision(labels, scores) -> np.ndarray:
    """AP of each class, [C], for labels [N, C] in {0, 1} and scores [N, C] (logits or probabilities)."""
    labels, scores = _check(labels, scores)
    return np.array([_binary_average_precision(labels[:, c], scores[:, c]) for c in range(labels.shape[1])])


def mean_average_precision(labels, scores) -> float:
    """Macro mAP: the mean over classes of `average_precision`."""
    return float(np.mean(average_precision(labels, scores)))


def f1_per_class(labels, probabilities, threshold: float = THRESHOLD) -> np.ndarray:
    """F1 of each class, [C], detecting a class in a clip where its probability is above `threshold`."""
    labels, probabilities = _check(labels, probabilities)
    detected = probabilities > threshold
    tp = np.sum(detected & labels, axis=0)
    errors = np.sum(detected != labels, axis=0)  # FP + FN
    denominator = 2 * tp + errors
    return np.divide(2.0 * tp, denominator, out=np.zeros(tp.shape), where=denominator > 0)


def macro_f1(labels, probabilities, threshold: float = THRESHOLD) -> float:
    """The mean over classes of `f1_per_class`."""
    return float(np.mean(f1_per_class(labels, probabilities, threshold)))


def clip_metrics(labels, logits, class_names: Sequence[str] | None = None) -> dict[str, float]:
    """{'map', 'f1_macro', 'ap/<class>'} of clip logits [N, C] against weak labels [N, C], for logging under a
    prefix (`eval/map`); classes are named by `class_names`, or by index."""
    logits = np.asarray(logits, np.float64)
    ap = average_precision(labels, logits)
    names = [str(c) for c in range(ap.size)] if class_names is None else list(class_names)
    if len(names) != ap.size:
        raise ValueError(f"{len(names)} class names for {ap.size} classes")
    metrics = {"map": float(np.mean(ap)), "f1_macro": macro_f1(labels, 1.0 / (1.0 + np.exp(-logits)))}
    metrics.update({f"ap/{name}": float(value) for name, value in zip(names, ap)})
    return metrics


def _check(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    labels, scores = np.asarray(labels), np.asarray(scores, np.float64)
    if labels.ndim != 2 or labels.shape != scores.shape:
        raise ValueError(f"labels and scores need the same [clips, classes] shape, got {labels.shape} and "
                         f"{scores.shape}")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1 (multi-label indicator matrix)")
    return labels.astype(bool), scores


def _binary_average_precision(positive: np.ndarray, scores: np.ndarray) -> float:
    order = np.argsort(scores, kind="stable")[::-1]
    positive, scores = positive[order], scores[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), scores.size - 1]  # one threshold per distinct score
    true_positives = np.cumsum(positive)[last_of_tie]
    if true_positives[-1] == 0:
        return 0.0
    precision = true_positives / (last_of_tie + 1)
    recall_steps = np.diff(true_positives, prepend=0) / true_positives[-1]
    return float(np.sum(recall_steps * precision))
