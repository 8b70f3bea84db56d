"""Degradations of a decoded image, as a user's pipeline would have applied them before the
model sees it (``train/evaluate.py --perturb``; training's JPEG augmentation). Pillow only.

    jpeg:Q     re-encoded as JPEG at quality Q (1-100) by Pillow with its other defaults (4:2:0
               chroma subsampling, libjpeg's standard tables scaled to Q), then decoded
    resize:S   resized by the factor S, each side round(side * S) (at least 1), with Pillow's
               bicubic filter (which widens its support when shrinking: antialiased)
    blur:R     Pillow's GaussianBlur of radius R, the Gaussian's standard deviation in pixels
    crop:PX    the central PX x PX square (a side shorter than PX is kept whole), as a user
               cropping a detail out of a larger picture

A condition is named ``kind:value`` with the value as Python's ``:g`` writes it (``jpeg:75``,
``resize:0.5``, ``resize:2``); ``parse_perturbations("jpeg:95,75")`` gives one per value.

The ``uncertain`` flag's band is measured here, one definition for the benchmark that set the
default (benchmarks/flag_limits.py) and for ``lfm calibrate`` on a user's images: each image
resized by each of BAND_RESIZES before the policy (``band_logits``), the band the BAND_QUANTILE
of |logit - clean logit| over all images and factors (``measured_band``).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from PIL import Image, ImageFilter

from .cli import number, whole_number
from .preprocess import ImageError
from .spec import min_input_size

# Largest resize factor: 8x already turns a 1000-pixel side into 8000.
MAX_SCALE = 8.0
MAX_BLUR = 50.0


def jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    """The JPEG file Pillow writes for ``img`` at ``quality`` (its other defaults): what a platform
    that re-encodes delivers (the review page scores it as a file, so its flags are a file's)."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()


def jpeg_roundtrip(img: Image.Image, quality: int) -> Image.Image:
    """The image as a JPEG file at ``quality`` would decode (``jpeg_bytes``, decoded)."""
    with Image.open(io.BytesIO(jpeg_bytes(img, quality))) as out:
        return out.convert("RGB")


def rescaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    return max(1, round(width * scale)), max(1, round(height * scale))


def center_square(img: Image.Image, side: int) -> Image.Image:
    w, h = img.size
    cw, ch = min(side, w), min(side, h)
    left, top = (w - cw) // 2, (h - ch) // 2
    return img.crop((left, top, left + cw, top + ch))


def _positive(what: str, high: float):
    """A check: a number in (0, high]."""
    within = number(0.0, high, what)

    def check(value) -> float:
        value = within(value)
        if value == 0:
            raise ValueError(f"must be {what} above 0, got 0")
        return value
    return check


# kind -> (the check of one value, what the value is)
KINDS = {
    "jpeg": (whole_number(1, 100), "JPEG quality, 1-100"),
    "resize": (_positive("a scale factor", MAX_SCALE), f"scale factor in (0, {MAX_SCALE:g}]"),
    "blur": (_positive("a blur radius", MAX_BLUR), f"Gaussian standard deviation in pixels, (0, {MAX_BLUR:g}]"),
    "crop": (whole_number(min_input_size()), f"side of the central square in pixels, at least {min_input_size()}"),
}


@dataclass(frozen=True)
class Perturbation:
    kind: str
    value: float

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.value:g}"

    def describe(self) -> str:
        v = self.value
        return {"jpeg": f"re-encoded by Pillow as JPEG at quality {v:g} (4:2:0), decoded",
                "resize": f"resized by {v:g} (each side round(side x {v:g})), Pillow bicubic",
                "blur": f"Pillow GaussianBlur, standard deviation {v:g} px",
                "crop": f"central {v:g} x {v:g} square (shorter sides kept whole)"}[self.kind]

    def apply(self, img: Image.Image, max_pixels: int | None = None) -> Image.Image:
        """The degraded RGB image. ImageError when an enlargement would exceed ``max_pixels``."""
        if self.kind == "jpeg":
            return jpeg_roundtrip(img, int(self.value))
        if self.kind == "resize":
            size = rescaled_size(img.width, img.height, self.value)
            if max_pixels is not None and size[0] * size[1] > max_pixels:
                raise ImageError(getattr(img, "filename", "") or "<image>",
                                 f"resized by {self.value:g} it would be {size[0]}x{size[1]} = {size[0] * size[1]} "
                                 f"pixels, over the limit of {max_pixels}")
            return img.resize(size, Image.BICUBIC)
        if self.kind == "blur":
            return img.filter(ImageFilter.GaussianBlur(radius=self.value))
        return center_square(img, int(self.value))


# The uncertain band's measurement: how far a mild resize, which a user's pipeline applies without
# thinking, moves a logit; the band holds BAND_QUANTILE of those moves (flags.DEFAULT_UNCERTAIN_BAND).
BAND_RESIZES = tuple(Perturbation("resize", s) for s in (0.9, 0.95, 1.05, 1.1))
BAND_QUANTILE = 0.95


def band_logits(score: Callable[[Iterable[Image.Image]], Iterable[float]], images: Iterable[Image.Image | None],
                max_pixels: int | None = None) -> np.ndarray:
    """[n images, len(BAND_RESIZES)]: the logit of each image resized by each of BAND_RESIZES.
    ``score`` takes the resized images (a lazy iterable: only a few are held at a time) and gives
    their logits in order, NaN for one it could not score; an image given as None, or one whose
    enlargement would exceed ``max_pixels``, gets NaN."""
    sent: list[tuple[int, int]] = []
    count = 0

    def resized() -> Iterator[Image.Image]:
        nonlocal count
        for i, img in enumerate(images):
            count = i + 1
            for j, resize in enumerate(BAND_RESIZES):
                try:
                    out = None if img is None else resize.apply(img, max_pixels)
                except ImageError:
                    out = None
                if out is not None:
                    sent.append((i, j))
                    yield out

    got = list(score(resized()))
    logits = np.full((count, len(BAND_RESIZES)), np.nan)
    for (i, j), logit in zip(sent, got):
        logits[i, j] = logit
    return logits


def band_shifts(clean: np.ndarray, resized: np.ndarray) -> np.ndarray:
    """|resized logit - clean logit| per image and factor (``band_logits``' shape; NaN where either is missing)."""
    return np.abs(np.asarray(resized, np.float64) - np.asarray(clean, np.float64)[:, None])


def measured_band(clean: np.ndarray, resized: np.ndarray) -> float | None:
    """The band: numpy's (linear) BAND_QUANTILE of every finite ``band_shifts``; None when there is none."""
    shifts = band_shifts(clean, resized)
    shifts = shifts[np.isfinite(shifts)]
    return float(np.quantile(shifts, BAND_QUANTILE)) if shifts.size else None


def parse_perturbations(text: str) -> list[Perturbation]:
    """``KIND:V[,V...]`` -> one Perturbation per value; ValueError (one line) for anything else."""
    kind, sep, values = text.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS or not sep:
        raise ValueError(f"{text!r}: expected KIND:VALUE[,VALUE...] with KIND one of {', '.join(KINDS)} "
                         "(e.g. jpeg:95,75,50 or resize:0.5,2)")
    check, what = KINDS[kind]
    out = []
    for item in values.split(","):
        try:
            value = check(item.strip())
        except ValueError as e:
            raise ValueError(f"{text!r}: {kind} takes a {what}: {e}") from None
        out.append(Perturbation(kind, value))
    return out


__all__ = ["BAND_QUANTILE", "BAND_RESIZES", "KINDS", "Perturbation", "band_logits", "band_shifts", "center_square",
           "jpeg_bytes", "jpeg_roundtrip", "measured_band", "parse_perturbations", "rescaled_size"]
