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
"""
from __future__ import annotations

import io
from dataclasses import dataclass

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


__all__ = ["KINDS", "Perturbation", "center_square", "jpeg_bytes", "jpeg_roundtrip", "parse_perturbations", "rescaled_size"]
