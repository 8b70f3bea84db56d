"""Metrics against known answers and a brute-force definition."""
from __future__ import annotations

import numpy as np
import pytest

from lfm.train.metrics import average_precision, binary_metrics, equal_error_rate, roc_auc, roc_curve


def ap_by_definition(y, s):
    """AP = sum over distinct thresholds t (descending) of (R(t) - R(prev)) * P(t), in float64 loops."""
    y, s = list(map(int, y)), list(map(float, s))
    total, prev_recall = 0.0, 0.0
    for t in sorted(set(s), reverse=True):
        called = [yi for yi, si in zip(y, s) if si >= t]
        tp = sum(called)
        recall, precision = tp / sum(y), tp / len(called)
        total += (recall - prev_recall) * precision
        prev_recall = recall
    return total


def test_known_answers():
    assert average_precision([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.8333333333)  # scikit-learn's doc example
    assert average_precision([1, 0], [0.5, 0.5]) == pytest.approx(0.5)  # a tie is one threshold
    assert average_precision([1, 1, 0], [0.9, 0.8, 0.1]) == 1.0
    assert np.isnan(average_precision([0, 0], [0.2, 0.3]))


def test_matches_definition_on_random_data_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 50)
        y[0] = 1
        s = rng.integers(0, 10, 50) / 10  # many ties
        assert average_precision(y, s) == pytest.approx(ap_by_definition(y, s), abs=1e-12)


def test_binary_metrics():
    m = binary_metrics([0, 0, 1, 1, 1], [0.2, 0.7, 0.9, 0.4, 0.5])
    assert m["real_acc"] == 0.5 and m["fake_acc"] == pytest.approx(1 / 3)  # 0.5 is not above 0.5
    assert m["acc"] == pytest.approx(2 / 5) and (m["n_real"], m["n_fake"]) == (2, 3)


def test_roc_auc_equals_scikit_learns_with_and_without_ties():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn (the [viz] extra)")
    rng = np.random.default_rng(1)
    for i in range(40):
        y = rng.integers(0, 2, 30)
        y[:2] = (0, 1)
        s = rng.integers(0, 6, 30).astype(float) if i % 2 else rng.normal(size=30)  # ties, then none
        assert roc_auc(y, s) == pytest.approx(metrics.roc_auc_score(y, s), abs=1e-12)
    assert np.isnan(roc_auc([1, 1], [0.2, 0.3]))


def test_ranking_metrics_use_the_logits_where_the_sigmoid_ties_them():
    """sigmoid(40) == sigmoid(50) == 1.0 in float64: ranked by scores a real image at 40 ties a
    generated one at 50; the logits order them."""
    logits = np.array([40.0, 50.0, -3.0])
    y, scores = [0, 1, 0], 1 / (1 + np.exp(-logits))
    assert scores[0] == scores[1] == 1.0
    assert binary_metrics(y, scores)["auc"] == 0.75
    assert binary_metrics(y, scores, logits=logits)["auc"] == 1.0 == binary_metrics(y, scores, logits=logits)["ap"]


def test_roc_curve_equals_scikit_learns_with_and_without_ties():
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn (the [viz] extra)")
    rng = np.random.default_rng(2)
    for i in range(40):
        y = rng.integers(0, 2, 30)
        y[:2] = (0, 1)
        s = rng.integers(0, 6, 30).astype(float) if i % 2 else rng.normal(size=30)
        fpr, tpr, thresholds = roc_curve(y, s)
        ref_fpr, ref_tpr, ref_thresholds = metrics.roc_curve(y, s, drop_intermediate=False)
        np.testing.assert_allclose(fpr, ref_fpr, atol=1e-15)
        np.testing.assert_allclose(tpr, ref_tpr, atol=1e-15)
        np.testing.assert_array_equal(thresholds[1:], ref_thresholds[1:])  # the first: inf here, max + 1 in older releases
    with pytest.raises(ValueError):
        roc_curve([1, 1], [0.2, 0.3])


def test_equal_error_rate_is_where_the_two_error_rates_meet():
    """Without cross-class ties the joined ROC curve is a staircase, so the crossing is the least
    max(FPR, FNR) over scikit-learn's operating points: an independent computation."""
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn (the [viz] extra)")
    rng = np.random.default_rng(3)
    for _ in range(40):
        y = rng.integers(0, 2, 40)
        y[:2] = (0, 1)
        s = rng.normal(size=40) + y
        fpr, tpr, _ = metrics.roc_curve(y, s, drop_intermediate=False)
        assert equal_error_rate(y, s) == pytest.approx(np.min(np.maximum(fpr, 1 - tpr)), abs=1e-12)
    assert equal_error_rate([0, 1], [0.5, 0.5]) == 0.5  # one tie: the diagonal, crossed at its middle
    assert equal_error_rate([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 0.0
    assert equal_error_rate([1, 1, 0, 0], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert np.isnan(equal_error_rate([0, 0], [0.1, 0.2]))
