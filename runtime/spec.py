"""The model's preprocessing spec: one source of truth for every stage.

A checkpoint carries it (``ckpt["spec"]``), export writes it into the ONNX metadata, and the
runtime reads it back instead of assuming constants (as timm attaches a ``pretrained_cfg``
to every weight).
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

POLICIES = ("resize", "center-crop", "none", "tiles")


@dataclass(frozen=True)
class ModelSpec:
    """How images must be prepared for a model, and how its logit is read.

    input:     "float" = normalised float32 NCHW RGB (upstream's input).
    policy:    "resize" (bilinear to size x size, upstream's eval), "center-crop"
               (size x size from the centre, no resize), "none" (native resolution) or
               "tiles" (native resolution cut into size x size tiles, one score per image
               reduced over its tiles; see runtime/preprocess.py ``tile_boxes``).
    size:      side of the square the policy produces (the tile side for "tiles").
    mean, std: per-channel RGB statistics applied after scaling bytes to [0, 1].
    threshold: score (sigmoid of the logit) above which an image is called "fake": strictly
               above, a score equal to it is "real" (``is_fake``, the one decision rule).
    top_k:     values kept per salience map (decides the minimum input size).
    """

    input: str = "float"
    layout: str = "NCHW"
    policy: str = "resize"
    size: int = 256
    interpolation: str = "bilinear"
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    threshold: float = 0.5
    top_k: int = 16
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"unknown preprocessing policy {self.policy!r}; expected one of {POLICIES}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must lie in [0, 1], got {self.threshold}")

    def replace(self, **changes) -> "ModelSpec":
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        for key in ("mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(float(v) for v in kwargs[key])
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


# The decision, stated once: every label, metric and fidelity check in the project calls these.


def is_fake(score, threshold: float):
    """An image is "fake" when its score (sigmoid of the logit) is strictly above the threshold;
    a score equal to the threshold is "real" (upstream's ``y_pred > 0.5``). score: a float or a
    numpy array (then an array of booleans)."""
    return score > threshold


def logit_boundary(threshold: float) -> float:
    """The logit whose sigmoid is ``threshold``, for deciding on logits: ``logit > logit_boundary(t)``
    is ``is_fake(sigmoid(logit), t)`` (threshold 0: every finite logit is fake; 1: none is)."""
    if threshold <= 0.0:
        return -math.inf
    if threshold >= 1.0:
        return math.inf
    return math.log(threshold / (1.0 - threshold))


# Where a threshold came from, said the same way by every command that shows it (infer's summary,
# serve's start-up line, inspect). export/calibrate.py writes spec.extra["calibration"].


def calibration_of(spec: ModelSpec) -> dict | None:
    """The threshold calibration a model carries (export/calibrate.py), or None."""
    calibration = spec.extra.get("calibration") if isinstance(spec.extra, dict) else None
    return calibration if isinstance(calibration, dict) else None


def calibration_summary(calibration: dict) -> str:
    """'calibrated on 120 real images: FPR <= 4.9% at 95% confidence' (or, without a bound, the
    share of those images called fake)."""
    n = calibration.get("n_real", "?")
    bound, confidence = calibration.get("fpr_upper_bound"), calibration.get("confidence")
    if isinstance(bound, (int, float)) and isinstance(confidence, (int, float)):
        return f"calibrated on {n} real images: FPR <= {bound:.1%} at {confidence:.0%} confidence"
    achieved = calibration.get("achieved_fpr")
    rate = f"{achieved:.1%}" if isinstance(achieved, (int, float)) else "?"
    return (f"calibrated on {n} real images: {calibration.get('false_positives', '?')} of them called fake ({rate}), "
            "no confidence bound")


def threshold_text(spec: ModelSpec) -> str:
    """The threshold in use and, where the model was calibrated, on what: 'threshold 0.87
    (calibrated on 120 real images: FPR <= 4.9% at 95% confidence)'; a threshold given instead
    of the calibrated one says so."""
    text = f"threshold {spec.threshold:.4g}"
    calibration = calibration_of(spec)
    if calibration is None:
        return text
    calibrated = calibration.get("threshold")
    if calibrated != spec.threshold:
        shown = f"{calibrated:.4g}" if isinstance(calibrated, (int, float)) else "?"
        return f"{text} (given; the model's calibrated threshold {shown} is not used)"
    return f"{text} ({calibration_summary(calibration)})"


# Geometry: which input sizes the network accepts (here, not in train/, so the runtime can
# name the problem before a backend fails on it).


def salience_size(height: int, width: int) -> tuple[int, int]:
    """Spatial size of the salience maps for an input of height x width (odd sizes included)."""

    def side(n: int) -> int:
        n -= n % 2  # NPR drops a trailing odd row / column
        for _ in range(3):  # conv k=2 (n - 1), then 2x2 max-pool (floor)
            n = (n - 1) // 2
        return n - 1  # last conv, no pool

    return side(height), side(width)


def min_input_size(top_k: int = 16) -> int:
    """Smallest square side whose salience maps hold at least ``top_k`` values (48 for K=16)."""
    n = 2
    while True:
        h, w = salience_size(n, n)
        if h > 0 and h * w >= top_k:
            return n
        n += 1


def too_small_to_score(width: int, height: int, top_k: int = 16) -> str | None:
    """Why an image of this native size is not scored under any policy, or None if it can be.

    The rule is the network's own (``check_input_size``) applied to the image as it arrives,
    before any policy: a smaller image holds too few pixels for its salience maps to give the
    K values Top-K pooling keeps, and enlarging it to fit would add exactly the up-sampling
    traces NPR reads as "generated" (a 1x1 PNG resized to 256 x 256 scored "fake, 0.9957")."""
    h, w = salience_size(height, width)
    if h > 0 and w > 0 and h * w >= top_k:
        return None
    m = min_input_size(top_k)
    return (f"{width}x{height} pixels is too small for LFM: the smallest square image it scores is {m}x{m}, the "
            f"least that leaves {top_k} values in each salience map for its Top-K pooling (K={top_k}); a smaller "
            "image is not enlarged to fit, since enlarging adds the up-sampling traces NPR reads as generated")


def check_input_size(height: int, width: int, top_k: int = 16) -> None:
    h, w = salience_size(height, width)
    if h <= 0 or w <= 0 or h * w < top_k:
        m = min_input_size(top_k)
        raise ValueError(
            f"input of {height}x{width} pixels is too small for LFM: its salience maps are "
            f"{max(h, 0)}x{max(w, 0)} = {max(h, 0) * max(w, 0)} values, top-k pooling needs K={top_k}; "
            f"the minimum square input is {m}x{m}"
        )
