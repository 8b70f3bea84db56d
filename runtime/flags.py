"""Flags: what is known to make one answer less trustworthy, on every record (issue 26, item 3).

    facts = ImageFacts(upscale=2.56, jpeg_quality=40)   # what preparing the image learned
    record_flags(facts, logit, threshold, band)         # ["upscaled:2.56", "low-jpeg-quality:40", "uncertain"]

A flag never changes the label; an empty list means nothing is known to be wrong:

- ``upscaled:F``: the preprocessing enlarged the image by F (its largest per-side factor, rounded
  up to 2 decimals; policy resize: center-crop, none and tiles never enlarge) above UPSCALE_LIMIT.
  NPR reads up-sampling traces, so an enlarged real photo can look generated.
- ``low-jpeg-quality:Q``: the file is a JPEG whose quantization tables fit the IJG quality Q
  (``jpeg_quality``), below JPEG_QUALITY_LIMIT. Compression erases the traces NPR reads, so a
  "real" answer on such a file says little (measured: at every quality, see the limits).
- ``uncertain``: the logit lies strictly within ``band`` (logit units) of the threshold's logit
  (``spec.logit_boundary``); a mild re-encoding or resize can move it across.

The limits and the default band were measured on upstream's checkpoint and the reference images
(``benchmarks/flag_limits.py``; the figures are in docs/runtime.md, "Flags").
Standard library and numpy only (and spec): the decoders, worker processes and Triton's python
backend use it.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .spec import ModelSpec, calibration_of, logit_boundary

# The limits, measured on upstream's checkpoint (benchmarks/results/flag_limits.json; docs/runtime.md, "Flags"):
# Any enlargement: already at 1.004x (255 -> 256 px) the policy moves real images' logits a median +16
# towards "fake" (+10 to +31 at every factor up to 3x); 2% of them turn fake at 1.004x, 24% at 2x.
UPSCALE_LIMIT = 1.0
# Every JPEG (below 101): re-encoded by Pillow at any quality 10..100, 4:2:0 or 4:4:4, none of the 17
# lossless images the model called fake stayed fake; it calls none of the 55 generated q75 JPEGs fake.
JPEG_QUALITY_LIMIT = 101
# The 95th percentile of |logit change| under a resize by 0.9, 0.95, 1.05 or 1.1 before the policy
# (perturb.measured_band, which lfm calibrate also measures a user's images by), rounded to 0.1.
DEFAULT_UNCERTAIN_BAND = 7.8
# Where a model's own band is kept: written by a calibration (export/calibrate.py), read by every runtime path.
BAND_KEY = "uncertain_band"
SEPARATOR = ";"  # flags in one text field (CSV, the server's BYTES output): none of them contains it


class ImageFacts(NamedTuple):
    """What preparing one image learned that bears on trusting its answer. Small and plain, so it
    crosses a process boundary (the decoding processes, Ray's tasks) as two numbers.

    upscale: the largest factor by which the policy stretched a side of the image (> 1: enlarged;
    1.0 when the policy kept the native resolution). jpeg_quality: the IJG quality its file's
    quantization tables fit (``jpeg_quality``), None when it was not a JPEG (or not a file)."""

    upscale: float = 1.0
    jpeg_quality: int | None = None


NO_FACTS = ImageFacts()


def upscale_factor(width: int, height: int, policy: str, size: int) -> float:
    """The largest per-side factor the policy stretches a ``width`` x ``height`` image by: policy
    resize scales each side to ``size`` (a non-square image is stretched more along its shorter
    side); center-crop, none and tiles keep the native resolution (1.0)."""
    if policy != "resize" or width <= 0 or height <= 0:
        return 1.0
    return max(size / width, size / height)


# The IJG (libjpeg) example tables, natural (row-major) order: what libjpeg, and so Pillow, scale by quality.
_LUMINANCE = (16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
              14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
              49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99)
_CHROMINANCE = (17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
                47, 66, 99, 99, 99, 99, 99, 99) + (99,) * 32
_QUALITIES = np.arange(1, 101)


def _ijg_tables(limit: int) -> np.ndarray:
    """[100, 2, 64]: the luminance and chrominance tables libjpeg writes at quality 1..100
    (``jpeg_set_quality``: scale 5000/Q below 50, else 200 - 2Q; entries clamped to [1, limit])."""
    scale = np.where(_QUALITIES < 50, 5000 // _QUALITIES, 200 - 2 * _QUALITIES)[:, None, None]
    base = np.array([_LUMINANCE, _CHROMINANCE], dtype=np.int64)[None]
    return np.clip((base * scale + 50) // 100, 1, limit)


_BASELINE, _EXTENDED = _ijg_tables(255), _ijg_tables(32767)


def jpeg_quality(quantization) -> int | None:
    """The IJG quality (1..100) whose tables best fit a JPEG's quantization tables (Pillow's
    ``Image.quantization``: {table id: 64 values in natural order}), by the least total absolute
    difference over its luminance (id 0) and chrominance (id 1) tables: exact for files libjpeg
    (Pillow, most software) wrote at a quality; the nearest such quality for others (cameras and
    editors with tables of their own). None without a luminance table."""
    if not quantization or 0 not in quantization:
        return None
    tables = [np.asarray(quantization[i], dtype=np.int64).reshape(-1) for i in (0, 1) if i in quantization]
    if any(t.size != 64 for t in tables):
        return None
    given = np.stack(tables)
    reference = _EXTENDED if given.max() > 255 else _BASELINE  # 16-bit tables: libjpeg without force_baseline
    error = np.abs(reference[:, :len(tables)] - given[None]).sum(axis=(1, 2))
    best = np.flatnonzero(error == error.min())
    return int(_QUALITIES[best[-1]])  # ties (tables clamped to 1 or 255): the highest quality


def image_jpeg_quality(img) -> int | None:
    """``jpeg_quality`` of a Pillow image opened from a JPEG (its header's tables; nothing is
    decoded), None for any other image."""
    return jpeg_quality(getattr(img, "quantization", None)) if getattr(img, "format", None) == "JPEG" else None


def fact_flags(facts: ImageFacts) -> list[str]:
    """The flags an image's facts raise, whatever the model says of it."""
    flags = []
    if facts.upscale > UPSCALE_LIMIT:
        flags.append(f"upscaled:{_rounded_up(facts.upscale):.2f}")
    if facts.jpeg_quality is not None and facts.jpeg_quality < JPEG_QUALITY_LIMIT:
        flags.append(f"low-jpeg-quality:{facts.jpeg_quality}")
    return flags


def _rounded_up(factor: float) -> float:
    """The factor rounded up to 2 decimals (255 -> 256 px reads 1.01, never 1.00); 2.56 stays 2.56."""
    return math.ceil(round(factor * 100, 6)) / 100


def is_uncertain(logit: float, threshold: float, band: float) -> bool:
    """Whether ``logit`` lies strictly within ``band`` of the threshold's logit (band 0: never)."""
    boundary = logit_boundary(threshold)
    return math.isfinite(boundary) and abs(logit - boundary) < band


def record_flags(facts: ImageFacts, logit: float, threshold: float, band: float) -> list[str]:
    """Every flag of one scored image: its facts' flags, then ``uncertain``."""
    return fact_flags(facts) + (["uncertain"] if is_uncertain(logit, threshold, band) else [])


def model_band(extra: dict, given: float | None = None) -> float:
    """The band a run uses: ``given`` (--uncertain-band, checked by the options layer), else the
    model's own (its spec's extra["uncertain_band"], written by a calibration), else
    DEFAULT_UNCERTAIN_BAND. ValueError (one line) for a model whose own band is no band."""
    if given is not None:
        return float(given)
    own = extra.get(BAND_KEY) if isinstance(extra, dict) else None
    if own is None:
        return DEFAULT_UNCERTAIN_BAND
    if isinstance(own, bool) or not isinstance(own, (int, float)) or not (math.isfinite(own) and own >= 0):
        raise ValueError(f"the model's spec extra[{BAND_KEY!r}] must be a number of logits >= 0, got {own!r}")
    return float(own)


def band_text(spec: ModelSpec) -> str:
    """The band ``spec``'s model flags records with and where it came from, said one way (lfm
    calibrate's report, lfm inspect): 'uncertain band 2.31 logits (measured on 110 calibration
    images resized by 0.9 to 1.1)'; the calibration's note (extra["calibration"]["uncertain_band"])
    says how, where it describes the band the model carries."""
    try:
        band = model_band(spec.extra)
    except ValueError as e:
        return f"uncertain band: none usable ({e})"
    if not isinstance(spec.extra, dict) or spec.extra.get(BAND_KEY) is None:
        return f"uncertain band {band:.3g} logits (the default, measured on the reference images)"
    note = (calibration_of(spec) or {}).get("uncertain_band")
    note = note if isinstance(note, dict) and note.get("logits") == band else {}
    factors = note.get("factors") or [float("nan")]
    source = {"measured": f"measured on {note.get('images')} calibration images resized by {min(factors):g} to "
                          f"{max(factors):g}",
              "given": "given to lfm calibrate",
              "kept": "the model's own, kept by lfm calibrate"}.get(note.get("how"), "the model's own")
    return f"uncertain band {band:.3g} logits ({source})"


def parse_flags(text) -> list[str]:
    """Flags written as one text field (``SEPARATOR``-joined; bytes or str; empty: none) -> a list."""
    if isinstance(text, (bytes, np.bytes_)):
        text = text.decode("utf-8", "replace")
    return [f for f in str(text or "").split(SEPARATOR) if f]


def join_flags(flags) -> str:
    return SEPARATOR.join(flags)
