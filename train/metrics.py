"""Detection metrics as the paper reports them (numpy only, no scikit-learn needed).

An image is called generated when its score (sigmoid of the logit) is above the threshold,
as upstream's ``validate`` does (``y_pred > 0.5``).
"""
from __future__ import annotations

import numpy as np

from lfm.runtime.spec import is_fake


def average_precision(y_true, scores) -> float:
    """Area under the precision-recall curve as a step sum, the definition of scikit-learn's
    ``average_precision_score``: sum over thresholds of (R_n - R_{n-1}) * P_n. NaN without positives."""
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    n_pos = int(y.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    # One precision/recall point per distinct score (ties share a threshold).
    last = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
    tp = np.cumsum(y)[last]
    precision = tp / (last + 1)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def binary_metrics(y_true, scores, threshold: float = 0.5) -> dict:
    """accuracy, AP, accuracy on real images, accuracy on generated images, and counts."""
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    pred = is_fake(s, threshold).astype(int)

    def acc(mask):
        return float((pred[mask] == y[mask]).mean()) if mask.any() else float("nan")

    return {
        "acc": acc(np.ones_like(y, dtype=bool)) if y.size else float("nan"),
        "ap": average_precision(y, s),
        "real_acc": acc(y == 0),
        "fake_acc": acc(y == 1),
        "n": int(y.size),
        "n_real": int((y == 0).sum()),
        "n_fake": int((y == 1).sum()),
    }
