"""Which threshold meets a false-positive rate on real images, and how sure that is (numpy only).

The rule (export/calibrate.py): an image is called fake when its score is strictly above the
threshold (``spec.is_fake``). Of n real images, k may be called fake; the threshold leaves at
most k of them above it: the lowest such is the (k+1)-th highest real score, and
``choose_threshold`` places it just above that image (ROUNDING_MARGIN in logit, less where the
next higher score seen is nearer), with the same counts, so that rounding in a re-run does not
flip that image.

How k is chosen:

- ``confidence=None`` (``--bound none``): the largest k with k / n <= target. The target holds on
  these images; on new ones the rate can be higher, and with few images it often is.
- ``confidence=c`` (``--bound clopper-pearson``, the default): the largest k whose one-sided
  Clopper-Pearson upper bound at level c is at most the target. Since k depends on n, the target
  and c only (never on the scores), the threshold is an order statistic of the real scores,
  and for real images drawn from one distribution its true false-positive rate exceeds
  ``fpr_upper_bound(k, n, c)`` with probability at most 1 - c (exactly 1 - c for continuous
  scores: the rate is Beta(k + 1, n - k) distributed, the identity behind Clopper-Pearson).
  Too few images for even k = 0 (the bound of 0 of n is 1 - (1 - c)^(1/n)) is refused, naming
  ``reals_needed`` (59 for 5 % at 95 %).

Clopper-Pearson is computed here from the binomial tail (log-space sums, bisection), so the
runtime needs no scipy; tests/test_calibrate.py checks it against ``scipy.stats.beta.ppf``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from lfm.runtime.records import sigmoid
from lfm.runtime.spec import is_fake


def _log_pmf(n: int, p: float, k: int) -> np.ndarray:
    """log P(X = i) for i = 0..k, X ~ Binomial(n, p), 0 < p < 1."""
    i = np.arange(1, k + 1, dtype=np.float64)
    log_choose = np.r_[0.0, np.cumsum(np.log((n - i + 1) / i))]
    i = np.r_[0.0, i]
    return log_choose + i * math.log(p) + (n - i) * math.log1p(-p)


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    if k < 0:
        return 0.0
    if k >= n or p <= 0.0:
        return 1.0
    if p >= 1.0:
        return 0.0
    terms = _log_pmf(n, p, k)
    top = terms.max()
    return min(1.0, float(math.exp(top) * np.exp(terms - top).sum()))


def fpr_upper_bound(false_positives: int, n: int, confidence: float) -> float:
    """One-sided Clopper-Pearson upper bound on a rate seen as ``false_positives`` of ``n``: the p at
    which P(Binomial(n, p) <= false_positives) = 1 - confidence (``beta.ppf(c, k + 1, n - k)``)."""
    if n < 1:
        raise ValueError("no images: no bound")
    if false_positives >= n:
        return 1.0
    alpha, low, high = 1.0 - confidence, 0.0, 1.0
    for _ in range(200):  # the tail falls as p rises: bisect until the interval is one float wide
        middle = (low + high) / 2
        if middle in (low, high):
            break
        if binomial_cdf(false_positives, n, middle) > alpha:
            low = middle
        else:
            high = middle
    return high


def reals_needed(target: float, confidence: float) -> int:
    """The fewest real images that can show FPR <= target at this confidence: with none of them
    called fake, (1 - target)^n <= 1 - confidence."""
    alpha = 1.0 - confidence
    n = max(1, math.ceil(math.log(alpha) / math.log1p(-target)))
    while binomial_cdf(0, n, target) > alpha:  # the logarithms' rounding, either way
        n += 1
    while n > 1 and binomial_cdf(0, n - 1, target) <= alpha:
        n -= 1
    return n


def allowed_false_positives(n: int, target: float, confidence: float | None) -> int | None:
    """The most of n real images the threshold may call fake (see the module's docstring); None
    when even 0 cannot meet the target at this confidence."""
    if confidence is None:
        return math.floor(Fraction(repr(target)) * n)  # exact: 0.05 x 100 is 5, not 5.000000000000001
    alpha = 1.0 - confidence
    cdf = np.cumsum(np.exp(_log_pmf(n, target, n)))  # P(X <= k) for k = 0..n at p = target
    allowed = int(np.count_nonzero(cdf <= alpha)) - 1
    return None if allowed < 0 else allowed


# Logits of one model from two fp32 backends or batch sizes differ by rounding: up to 5.3e-5 between
# PyTorch and ONNX Runtime on upstream's checkpoint (docs/export.md). The threshold sits this far
# above the boundary image's logit, 20x that; a reduced-precision model is a model of its own, to
# be calibrated itself.
ROUNDING_MARGIN = 1e-3


@dataclass(frozen=True)
class Choice:
    threshold: float  # a score: an image is fake when its score is strictly above it
    allowed: int  # how many real images the rule let it call fake
    false_positives: int  # how many it does (fewer than allowed where scores tie)
    n: int
    fpr_upper_bound: float | None  # None without a confidence level

    @property
    def achieved_fpr(self) -> float:
        return self.false_positives / self.n


def scores_of(logits) -> np.ndarray:
    """The runtime's scores of these logits, computed as its records compute them."""
    return np.array([sigmoid(float(x)) for x in np.ravel(logits)], dtype=np.float64)


def choose_threshold(real_logits, target: float, confidence: float | None, other_logits=()) -> Choice | None:
    """The threshold meeting the target on these real images; None when there are too few of them
    for the confidence asked (``reals_needed`` says how many).

    The lowest such threshold is the score of the (allowed + 1)-th highest real image, which a
    re-run can flip to fake when its logit moves by rounding (another batch size, another fp32
    backend). So the threshold is placed ROUNDING_MARGIN above that image's logit, or halfway to
    the next higher logit among all the images scored (``other_logits``: the generated ones)
    where that is nearer: every count on these images is the lowest threshold's, and the true
    false-positive rate can only be lower (the bound still holds)."""
    logits = np.sort(np.asarray(real_logits, dtype=np.float64).ravel())
    n = logits.size
    allowed = allowed_false_positives(n, target, confidence) if n else None
    if allowed is None:
        return None
    boundary = float(logits[n - 1 - allowed])
    seen = np.r_[logits, np.asarray(other_logits, dtype=np.float64).ravel()]
    above = seen[seen > boundary]
    margin = min(ROUNDING_MARGIN, (above.min() - boundary) / 2) if above.size else ROUNDING_MARGIN
    threshold = sigmoid(boundary + margin)
    lowest, seen_scores = sigmoid(boundary), scores_of(seen)
    if np.count_nonzero(is_fake(seen_scores, threshold)) != np.count_nonzero(is_fake(seen_scores, lowest)):
        threshold = lowest  # the scores round together (near 0 or 1): no room between them
    bound = None if confidence is None else fpr_upper_bound(allowed, n, confidence)
    return Choice(threshold, allowed, int(np.count_nonzero(is_fake(scores_of(logits), threshold))), n, bound)
