"""Decoding and preprocessing with Pillow and numpy only (no torch, no torchvision).

One image's path: bytes -> ``open_image`` (EXIF orientation applied, any mode to RGB, pixel
limit enforced) -> ``apply_policy`` (resize | center-crop | none) -> uint8 HWC array, or
``to_tiles`` (policy tiles) -> uint8 [N, h, w, 3], N tiles of one image at native resolution.
A batch of such arrays -> ``normalize`` -> float32 NCHW, the input of the float graph.
``load_prepared`` also gives what preparing learned (``flags.ImageFacts``: the policy's
enlargement, the file's JPEG quality), which the records' flags are made of.

``resize`` is Pillow's bilinear resize, which is exactly what upstream's eval transform
(torchvision ``Resize((256, 256))`` on a PIL image) runs.
"""
from __future__ import annotations

import io
import os
import re
import stat
import warnings
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .flags import NO_FACTS, ImageFacts, image_jpeg_quality, upscale_factor
from .spec import IMAGENET_MEAN, IMAGENET_STD, POLICIES, ModelSpec, too_small_to_score

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}
)
# 100 megapixels: a 10000 x 10000 photo passes, a decompression bomb does not.
DEFAULT_MAX_PIXELS = 100_000_000
# Tiles per image: 64 tiles of 256 cover a 2048 x 2048 image; larger ones get spread-out tiles.
DEFAULT_MAX_TILES = 64
# Tile origins are multiples of 8: every tile then sees the JPEG 8x8 block grid and NPR's 2x2
# grid in the same phase as the whole image does.
TILE_ALIGN = 8

Source = Union[str, os.PathLike, bytes]


class ImageError(ValueError):
    """An input that cannot be turned into a model input; the message names the input."""

    def __init__(self, source, problem: str):
        self.source = _describe(source)
        self.problem = problem
        super().__init__(f"{self.source}: {problem}")


def _describe(source) -> str:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes>"
    return os.fspath(source) if isinstance(source, os.PathLike) else str(source)


def is_image_path(path: Union[str, os.PathLike]) -> bool:
    return os.path.splitext(os.fspath(path))[1].lower() in IMAGE_EXTENSIONS


# What each kind of non-regular file is called in its error record.
_SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def read_image_bytes(path: Union[str, os.PathLike]) -> bytes:
    """The bytes of the image file at ``path``: the one place every decoding path (threads,
    processes, GPU, Ray, the client) reads a file; see ``open_image_file``. Raises ImageError."""
    with open_image_file(path) as f:
        try:
            return f.read()
        except OSError as e:
            raise ImageError(path, _read_problem(e)) from None


def open_image_file(path: Union[str, os.PathLike]) -> BinaryIO:
    """``path`` opened for binary reading if it is a regular file. A FIFO, socket or device is
    refused (ImageError) without a blocking open (a FIFO with no writer would block forever,
    /dev/zero never ends): checked by stat, opened with O_NONBLOCK, and checked again on the
    open descriptor (the name may have been replaced in between)."""
    try:
        _refuse_special(path, os.stat(path).st_mode)
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
                     | getattr(os, "O_BINARY", 0))
    except OSError as e:
        raise ImageError(path, _read_problem(e)) from None
    f = open(fd, "rb")
    try:
        _refuse_special(path, os.fstat(fd).st_mode)
    except BaseException:
        f.close()
        raise
    return f


def _read_problem(e: OSError) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "is a directory, not an image file"
    if isinstance(e, PermissionError):
        return "permission denied"
    return f"cannot read file ({e.strerror or e})"


def _refuse_special(path, mode: int) -> None:
    if stat.S_ISDIR(mode):
        raise ImageError(path, "is a directory, not an image file")
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _SPECIAL_FILES if test(mode)), "an unknown kind")
        raise ImageError(path, f"not a regular file ({kind}); left unread")


def open_image(source: Source, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a file path or encoded bytes into a fully loaded RGB image.

    Raises ImageError (naming the input) for a missing file, a directory, a file that is not
    an image, truncated data, or more than ``max_pixels`` pixels (checked from the header,
    before the pixels are decoded).
    """
    return decode_image(source, max_pixels)[0]


def decode_image(source: Source, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, int | None]:
    """``open_image``'s image, and the JPEG quality its file's quantization tables fit
    (``flags.image_jpeg_quality``, read from the header; None for any other format)."""
    data = bytes(source) if isinstance(source, (bytes, bytearray, memoryview)) else read_image_bytes(source)
    if not data:
        raise ImageError(source, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow's notes on damaged EXIF etc.: the image still decodes
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(source, f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}")
            img.load()
            quality = image_jpeg_quality(img)  # before exif_transpose: its copy has no tables
            img = ImageOps.exif_transpose(img)
    except ImageError:
        raise
    except UnidentifiedImageError:
        fmt = _sniff(data)
        if fmt:  # a known signature Pillow could not get past: damaged, not foreign
            raise ImageError(source, f"corrupt {fmt} data (signature present, header unreadable)") from None
        raise ImageError(source, "not an image (unrecognised format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own guard fired while opening (its limit is 2x MAX_IMAGE_PIXELS).
        m = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{m.group(1)} pixels" if m else "its size"
        raise ImageError(source, f"{size} exceeds the limit of {max_pixels} (rejected as a decompression bomb)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise ImageError(source, f"truncated or corrupt image data ({e})") from None
    return to_rgb(img), quality


_SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
               (b"BM", "BMP"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"))


def _sniff(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return next((fmt for sig, fmt in _SIGNATURES if data.startswith(sig)), None)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB. Alpha is dropped; 16/32-bit greyscale is scaled, not clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        a = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or a.max() > 255 else 255.0
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a).convert("RGB")
    if img.mode == "F":
        a = np.nan_to_num(np.asarray(img, dtype=np.float64))
        a = np.clip(a * (255.0 if a.max() <= 1.0 else 1.0) + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a).convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # avoids Pillow's palette-transparency warning
    return img.convert("RGB")


def refuse_too_small(img: Image.Image, top_k: int | None = 16) -> None:
    """ImageError for an image too small to score at its native size (``spec.too_small_to_score``):
    under every policy, before one enlarges it into a confident answer. top_k None: no minimum
    (training prepares images for a model configured at its own size)."""
    problem = top_k is not None and too_small_to_score(img.width, img.height, top_k)
    if problem:
        raise ImageError(getattr(img, "filename", "") or "<image>", problem)


def apply_policy(img: Image.Image, policy: str, size: int, top_k: int | None = 16) -> Image.Image:
    """resize: bilinear to size x size; center-crop: the central size x size; none: as is. An
    image too small for the model (K = ``top_k``) at its native size is refused under each."""
    refuse_too_small(img, top_k)
    if policy == "resize":
        return img if img.size == (size, size) else img.resize((size, size), Image.BILINEAR)
    if policy == "center-crop":
        w, h = img.size
        if w < size or h < size:
            raise ImageError(
                getattr(img, "filename", "") or "<image>",
                # read by CLI, Python API and Triton users alike: name the policy, not a flag; never
                # advise enlarging (policy resize): it adds the traces NPR reads as generated
                f"{w}x{h} is smaller than the {size}x{size} centre crop; score it at its native size with policy "
                "'none' or 'tiles'",
            )
        left, top = (w - size) // 2, (h - size) // 2
        return img.crop((left, top, left + size, top + size))
    if policy == "none":
        return img
    if policy == "tiles":
        raise ValueError("policy 'tiles' gives several arrays per image: use to_tiles")
    raise ValueError(f"unknown policy {policy!r}; expected one of {POLICIES}")


def tile_origins(length: int, tile: int, count: int) -> list[int]:
    """`count` origins for tiles of side `tile` along an axis of `length`, evenly spread from 0
    to the far edge, each rounded down to a multiple of TILE_ALIGN (so the last tile may stop
    up to TILE_ALIGN - 1 pixels short of the edge)."""
    if count <= 1 or length <= tile:
        return [0]
    last = length - tile
    return [(i * last // (count - 1)) // TILE_ALIGN * TILE_ALIGN for i in range(count)]


def tile_boxes(width: int, height: int, size: int, max_tiles: int = DEFAULT_MAX_TILES) -> list[tuple[int, int, int, int]]:
    """The (left, top, right, bottom) boxes of policy ``tiles``: size x size tiles at native
    resolution covering the image, neighbours overlapping by whatever the image leaves over
    (ceil(W / size) x ceil(H / size) tiles). A side shorter than ``size`` is taken whole, so a
    small image is one tile of its own size. More than ``max_tiles`` tiles: the grid is thinned
    (the longer axis first) and the tiles spread evenly, leaving gaps between them."""
    if max_tiles < 1:
        raise ValueError(f"max_tiles must be >= 1, got {max_tiles}")
    tw, th = min(size, width), min(size, height)
    nx, ny = -(-width // size), -(-height // size)
    while nx * ny > max_tiles:
        if nx >= ny:
            nx -= 1
        else:
            ny -= 1
    return [(x, y, x + tw, y + th) for y in tile_origins(height, th, ny) for x in tile_origins(width, tw, nx)]


def to_tiles(img: Image.Image, size: int, max_tiles: int = DEFAULT_MAX_TILES, top_k: int | None = 16) -> np.ndarray:
    """RGB image -> uint8 [N, h, w, 3]: its ``tile_boxes`` at native resolution (an image too
    small for the model is refused, as by ``apply_policy``)."""
    refuse_too_small(img, top_k)
    a = np.asarray(img, dtype=np.uint8)
    return np.stack([a[t:b, l:r] for l, t, r, b in tile_boxes(img.width, img.height, size, max_tiles)])


def load_array(source: Source, spec: ModelSpec, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """File or bytes -> uint8 HWC RGB array prepared by the spec's policy (not ``tiles``:
    see ``load_tiles``)."""
    if spec.policy == "tiles":
        raise ValueError("policy 'tiles' gives several arrays per image: use load_tiles")
    return load_prepared(source, spec, max_pixels)[0][0]


def load_tiles(source: Source, spec: ModelSpec, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_tiles: int = DEFAULT_MAX_TILES) -> np.ndarray:
    """File or bytes -> uint8 [N, h, w, 3]: the image's tiles for policy ``tiles``, or the one
    array of any other policy with a leading axis of 1."""
    return load_prepared(source, spec, max_pixels, max_tiles)[0]


def load_prepared(source: Source, spec: ModelSpec, max_pixels: int = DEFAULT_MAX_PIXELS,
                  max_tiles: int = DEFAULT_MAX_TILES) -> tuple[np.ndarray, ImageFacts]:
    """``load_tiles``'s arrays and what preparing them learned (``flags.ImageFacts``: how much
    the policy enlarged the image, the JPEG quality of its file)."""
    img, quality = decode_image(source, max_pixels)
    try:
        return prepare_image(img, spec, max_tiles, quality)
    except ImageError as e:
        raise ImageError(source, e.problem) from None


def prepare_image(img: Image.Image, spec: ModelSpec, max_tiles: int = DEFAULT_MAX_TILES,
                  jpeg_quality: int | None = None) -> tuple[np.ndarray, ImageFacts]:
    """A decoded RGB image -> uint8 [N, h, w, 3] by the spec's policy (its tiles, or one array),
    and its facts (``jpeg_quality``: its file's, when known)."""
    facts = image_facts(img.width, img.height, spec, jpeg_quality)
    if spec.policy == "tiles":
        return to_tiles(img, spec.size, max_tiles, spec.top_k), facts
    return np.asarray(apply_policy(img, spec.policy, spec.size, spec.top_k), dtype=np.uint8)[None], facts


def image_facts(width: int, height: int, spec: ModelSpec, jpeg_quality: int | None = None) -> ImageFacts:
    """The facts of a ``width`` x ``height`` image (after EXIF orientation) prepared by the spec's
    policy: every decoder's (the GPU decoder's too) one way of stating them."""
    return ImageFacts(upscale_factor(width, height, spec.policy, spec.size), jpeg_quality)


class Decoded(NamedTuple):
    """What every decoder gives per item: (arrays, None, facts), or (None, the problem as a
    record words it, NO_FACTS)."""

    arrays: np.ndarray | None
    error: str | None
    facts: ImageFacts = NO_FACTS


def load_tiles_or_problem(source: Source, spec: ModelSpec, max_pixels: int = DEFAULT_MAX_PIXELS,
                          max_tiles: int = DEFAULT_MAX_TILES) -> Decoded:
    """``load_prepared`` with its failure as a value, for every decoder (threads, processes, GPU
    fallback, Ray): ``Decoded``. Any other exception is a decoder bug, which costs this input
    only, never the run."""
    try:
        arrays, facts = load_prepared(source, spec, max_pixels, max_tiles)
        return Decoded(arrays, None, facts)
    except ImageError as e:
        return Decoded(None, e.problem)
    except Exception as e:
        return Decoded(None, f"{type(e).__name__}: {e}")


@dataclass(frozen=True)
class Prepared:
    """An image already prepared for the model: uint8 [N, h, w, 3], what ``load_tiles`` gives
    under the model's policy (N = 1, or its tiles). The Detector scores it as it is: neither
    decoded nor resized nor tiled again (``runtime/batch.py``'s decoding tasks hand these to its
    scorers). ``name``: the record's path (default: a description of the arrays); ``facts``: what
    preparing them learned (``load_prepared``'s), for the record's flags."""

    arrays: np.ndarray
    name: str = ""
    facts: ImageFacts = NO_FACTS

    def checked(self) -> np.ndarray:
        """The arrays, if they are a stack of RGB uint8 images; else ImageError."""
        a = self.arrays
        if not isinstance(a, np.ndarray) or a.dtype != np.uint8 or a.ndim != 4 or a.shape[3] != 3 or not len(a):
            got = f"{a.dtype} {list(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__
            raise ImageError(self.name or "<prepared>", f"expected prepared uint8 [N, h, w, 3] arrays, got {got}")
        return a


def normalize(images: np.ndarray, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """uint8 HWC or NHWC -> float32 CHW or NCHW: (x / 255 - mean) / std, as ToTensor + Normalize."""
    if images.dtype != np.uint8:
        raise TypeError(f"expected uint8 pixels, got {images.dtype}")
    x = images.astype(np.float32) / np.float32(255.0)
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    axes = (2, 0, 1) if x.ndim == 3 else (0, 3, 1, 2)
    return np.ascontiguousarray(x.transpose(axes))
