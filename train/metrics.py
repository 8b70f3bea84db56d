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


def roc_auc(y_true, scores) -> float:
    """Area under the ROC curve, the definition of scikit-learn's ``roc_auc_score``: the chance
    that a random generated image scores above a random real one, ties counting one half
    (Mann-Whitney U over average ranks). NaN unless both classes are present."""
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(s.size)
    ranks[order] = np.arange(1, s.size + 1)
    _, first, count = np.unique(s[order], return_index=True, return_counts=True)
    for start, n in zip(first[count > 1], count[count > 1]):  # tied scores share their average rank
        ranks[order[start:start + n]] = start + (n + 1) / 2
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds) as scikit-learn's ``roc_curve(drop_intermediate=False)``: one point
    per distinct score, highest first, after a first point (0, 0) at threshold +inf; a point's
    rates count the images scoring at or above its threshold. Needs both classes (ValueError)."""
    y = np.asarray(y_true).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if y.shape != s.shape or n_pos == 0 or n_neg == 0:
        raise ValueError("roc_curve needs labels and scores of one length, with both classes present")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], y.size - 1]
    tp = np.cumsum(y)[last]
    fp = (last + 1) - tp
    return np.r_[0.0, fp / n_neg], np.r_[0.0, tp / n_pos], np.r_[np.inf, s[last]]


def equal_error_rate(y_true, scores) -> float:
    """The rate at which false positives (real called generated) and false negatives (generated
    called real) are equal, on the ROC curve joined by straight lines: where FNR - FPR, which only
    falls along the curve, crosses 0. With no tied scores across the classes this is the least,
    over thresholds, of max(FPR, FNR). NaN unless both classes are present."""
    try:
        fpr, tpr, _ = roc_curve(y_true, scores)
    except ValueError:
        return float("nan")
    gap = (1.0 - tpr) - fpr  # 1 at (0, 0), -1 at (1, 1)
    i = int(np.nonzero(gap <= 0)[0][0])  # the first point at or past the crossing (i >= 1)
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def binary_metrics(y_true, scores, threshold: float = 0.5, logits=None) -> dict:
    """accuracy, AP, ROC AUC, accuracy on real images, accuracy on generated images, and counts.
    logits: rank by them for AP and AUC where given (the sigmoid rounds every logit above about
    37 to a score of 1.0, tying images the logits tell apart)."""
    y = np.asarray(y_true).astype(int).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    pred = is_fake(s, threshold).astype(int)
    rank = s if logits is None else np.asarray(logits, dtype=np.float64).ravel()

    def acc(mask):
        return float((pred[mask] == y[mask]).mean()) if mask.any() else float("nan")

    return {
        "acc": acc(np.ones_like(y, dtype=bool)) if y.size else float("nan"),
        "ap": average_precision(y, rank),
        "auc": roc_auc(y, rank),
        "real_acc": acc(y == 0),
        "fake_acc": acc(y == 1),
        "n": int(y.size),
        "n_real": int((y == 0).sum()),
        "n_fake": int((y == 1).sum()),
    }
