"""Write a small synthetic real-vs-generated dataset in the ForenSynths layout (no download).

    python train/make_synthetic.py OUT --n N [--size 256] [--real-dir DIR] [--seed 0]
                                   [--val-fraction 0.2] [--force] [--jobs J]

Layout written (PNG, lossless, so up-sampling traces survive)::

    OUT/train/{nearest,bilinear,transposed}/{0_real,1_fake}/000000.png ...
    OUT/val/{nearest,bilinear,transposed}/{0_real,1_fake}/000000.png ...

N counts every image written, both splits together: val gets round(N * val_fraction),
train the rest. In each split half the images are real (N_split // 2) and half fake, each
half spread as evenly as possible over the three subsets (earlier subsets get the
remainder). A split or folder that would be empty is not created.

How the images are made:
  * real: a procedural scene (colour gradient, soft-edged ellipses, rectangles and lines,
    band-limited texture) rendered at full resolution, plus per-pixel Gaussian "sensor"
    noise. With --real-dir, random square crops of the user's images instead, down-scaled
    (Lanczos) to size when the crop is larger; never up-scaled.
  * fake: the same kind of content, made the way generators make it: at HALF resolution
    (procedural content with its own half-resolution noise, or a real-dir crop down-scaled
    to size/2), then up-sampled 2x by the subset's method: ``nearest`` (pixel repeat),
    ``bilinear`` (half-pixel centres, like torch Upsample(align_corners=False)) or
    ``transposed`` (zero insertion + a random smooth 3x3 or 4x4 kernel, summing to 4).
Real and fake content come from the same distribution at the same scale, so colour and
brightness statistics match; what differs is the 2x up-sampling trace NPR looks for.

Each image is seeded by (seed, split, subset, label, index): the output is byte-identical for
a given seed and an image does not change when N changes.
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from typing import Optional

if __package__ in (None, ""):  # run as a script: don't let train/'s modules shadow libraries
    sys.path.pop(0)

import numpy as np
from PIL import Image

from lfm.runtime.cli import ArgumentParser, run  # noqa: E402
from lfm.runtime.files import files_under, overwrite_refusal
from lfm.runtime.inputs import image_files
from lfm.runtime.preprocess import ImageError, open_image, open_image_file

SPLITS = ("train", "val")
SUBSETS = ("nearest", "bilinear", "transposed")
LABEL_DIRS = ("0_real", "1_fake")
# zlib level 1: noisy images barely compress at any level, and level 1 is several times faster.
PNG_COMPRESS_LEVEL = 1


class SyntheticError(ValueError):
    """A bad argument or input folder; the message names it."""


# --------------------------------------------------------------------------------------------
# Procedural content
# --------------------------------------------------------------------------------------------


def render_scene(rng: np.random.Generator, h: int, w: int, full_size: int) -> np.ndarray:
    """A random scene as float32 [h, w, 3] in about [0, 255], without noise.

    Geometry is in image units ([0, 1] across), edges are about one pixel soft at the render
    resolution, and the texture band is fixed in cycles per image relative to ``full_size``,
    so the same draws give the same picture at full and at half resolution.
    """
    y = ((np.arange(h, dtype=np.float32) + 0.5) / h)[:, None]
    x = ((np.arange(w, dtype=np.float32) + 0.5) / w)[None, :]
    pixel = 1.0 / min(h, w)

    c0, c1 = rng.uniform(30, 225, (2, 3)).astype(np.float32)
    theta = rng.uniform(0, 2 * np.pi)
    t = ((x - 0.5) * math.cos(theta) + (y - 0.5) * math.sin(theta)) / math.sqrt(2) + 0.5
    img = c0 + (c1 - c0) * t[..., None]

    for _ in range(int(rng.integers(3, 9))):
        kind = int(rng.integers(3))
        color = rng.uniform(0, 255, 3).astype(np.float32)
        alpha = rng.uniform(0.4, 1.0)
        cx, cy, angle = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0, np.pi)
        a, b = (rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3)) if kind < 2 else \
               (rng.uniform(0.1, 0.5), rng.uniform(0.004, 0.02))  # line: a long thin rectangle
        # Only the shape's bounding box (plus a pixel) can change: work on that window.
        reach = math.hypot(a, b) + 2 * pixel
        rows = slice(max(0, int((cy - reach) * h)), min(h, int(math.ceil((cy + reach) * h))))
        cols = slice(max(0, int((cx - reach) * w)), min(w, int(math.ceil((cx + reach) * w))))
        if rows.start >= rows.stop or cols.start >= cols.stop:
            continue
        yy, xx = y[rows] - cy, x[:, cols] - cx
        u = xx * math.cos(angle) + yy * math.sin(angle)  # shape-aligned coordinates
        v = -xx * math.sin(angle) + yy * math.cos(angle)
        if kind == 0:  # ellipse; approximate signed distance to its outline
            dist = (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1.0) * min(a, b)
        else:  # rectangle or line
            dist = np.maximum(np.abs(u) - a, np.abs(v) - b)
        cover = (np.clip(0.5 - dist / pixel, 0.0, 1.0) * alpha).astype(np.float32)
        window = img[rows, cols]
        window += (color - window) * cover[..., None]

    amplitude = rng.uniform(4, 20)
    tint = rng.uniform(0.6, 1.0, 3).astype(np.float32)
    texture = band_noise(rng, h, w, f_lo=1.5, f_hi=full_size / 8)
    return img + (amplitude * texture)[..., None] * tint


def band_noise(rng: np.random.Generator, h: int, w: int, f_lo: float, f_hi: float) -> np.ndarray:
    """Unit-variance 1/f noise [h, w] with frequencies in [f_lo, f_hi] cycles per image."""
    spectrum = np.fft.rfft2(rng.standard_normal((h, w), dtype=np.float32))
    fy = np.fft.fftfreq(h, 1.0 / h)[:, None]
    fx = np.fft.rfftfreq(w, 1.0 / w)[None, :]
    f = np.sqrt(fy ** 2 + fx ** 2)
    gain = np.where((f >= f_lo) & (f <= f_hi), 1.0 / np.maximum(f, 1.0), 0.0)
    out = np.fft.irfft2(spectrum * gain, s=(h, w)).astype(np.float32)
    return out / (out.std() + 1e-8)


def add_sensor_noise(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Independent per-pixel, per-channel Gaussian noise, sigma ~ U(2, 6) grey levels."""
    sigma = rng.uniform(2.0, 6.0)
    return img + sigma * rng.standard_normal(img.shape, dtype=np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# 2x up-sampling, as generators do it
# --------------------------------------------------------------------------------------------


def upsample2x(x: np.ndarray, method: str, rng: np.random.Generator) -> np.ndarray:
    """[h, w, 3] -> float32 [2h, 2w, 3] by ``method`` (one of SUBSETS)."""
    x = x.astype(np.float32)
    if method == "nearest":
        return np.repeat(np.repeat(x, 2, axis=0), 2, axis=1)
    if method == "bilinear":
        return _linear2x(_linear2x(x, 0), 1)
    if method == "transposed":
        return _transposed2x(x, transposed_kernel(rng))
    raise ValueError(f"unknown up-sampling method {method!r}; expected one of {SUBSETS}")


def _linear2x(a: np.ndarray, axis: int) -> np.ndarray:
    """Linear 2x along ``axis`` with half-pixel centres and edge clamping:
    out[2i] = 0.75 a[i] + 0.25 a[i-1], out[2i+1] = 0.75 a[i] + 0.25 a[i+1]."""
    n = a.shape[axis]
    prev = np.take(a, np.r_[0, 0:n - 1], axis=axis)
    nxt = np.take(a, np.r_[1:n, n - 1], axis=axis)
    even, odd = 0.75 * a + 0.25 * prev, 0.75 * a + 0.25 * nxt
    out = np.stack([even, odd], axis=axis + 1)  # interleave: [..., n, 2, ...] -> [..., 2n, ...]
    return out.reshape(a.shape[:axis] + (2 * n,) + a.shape[axis + 1:])


def transposed_kernel(rng: np.random.Generator) -> np.ndarray:
    """A random smooth 3x3 or 4x4 kernel summing to 4 (so a stride-2 transposed conv keeps
    the mean brightness); its four phases do not sum to exactly 1 each, which gives the
    faint checkerboard real transposed convolutions leave."""
    base = np.array([1, 2, 1], np.float32) if rng.random() < 0.5 else np.array([1, 3, 3, 1], np.float32)
    k = np.outer(base, base)
    k = k * (1.0 + rng.uniform(-0.15, 0.15, k.shape).astype(np.float32))
    return k * (4.0 / k.sum())


def _transposed2x(x: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Stride-2 transposed convolution: insert zeros between pixels, then correlate with k."""
    h, w = x.shape[:2]
    size = k.shape[0]
    pad = 2  # input pixels of edge replication, enough for kernels up to 4x4
    xp = np.pad(x, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    z = np.zeros((2 * xp.shape[0], 2 * xp.shape[1], x.shape[2]), np.float32)
    z[::2, ::2] = xp
    start = 2 * pad - (size - 1) // 2  # centre the kernel on the input pixel's position
    out = np.zeros((2 * h, 2 * w, x.shape[2]), np.float32)
    for i in range(size):
        for j in range(size):
            out += k[i, j] * z[start + i:start + i + 2 * h, start + j:start + j + 2 * w]
    return out


# --------------------------------------------------------------------------------------------
# Image sources
# --------------------------------------------------------------------------------------------


class PhotoSource:
    """Random square crops of the images under a folder (by the runtime's listing rules: recursively,
    hidden names skipped, symlinked folders read once), never up-scaled."""

    def __init__(self, real_dir: str, size: int):
        if not os.path.isdir(real_dir):
            raise SyntheticError(f"--real-dir {real_dir}: no such directory")
        self.size = size
        self.files: list[str] = []
        self.read: list[str] = []  # every image file looked at: what --force must not delete
        skipped = []
        for path in image_files(real_dir):
            self.read.append(path)
            try:  # open_image_file: a FIFO or device is skipped, never opened for a blocking read
                with open_image_file(path) as f, Image.open(f) as img:
                    w, h = img.size
            except Exception as e:  # unreadable header: skip, reported below
                skipped.append(f"{path} ({e.problem if isinstance(e, ImageError) else e.__class__.__name__})")
                continue
            if min(w, h) < size:
                skipped.append(f"{path} ({w}x{h} < {size})")
            else:
                self.files.append(path)
        if skipped:
            warnings.warn(f"--real-dir: skipped {len(skipped)} images: {', '.join(skipped)}")
        if not self.files:
            raise SyntheticError(f"--real-dir {real_dir}: no readable image of at least {size}x{size} "
                                 f"({len(skipped)} skipped)")

    def crop(self, rng: np.random.Generator, out_side: int) -> np.ndarray:
        """A random crop of side in [size, min side], resized (down only) to out_side: uint8 [out, out, 3]."""
        path = self.files[int(rng.integers(len(self.files)))]
        try:
            img = open_image(path)
        except ImageError as e:
            raise SyntheticError(f"--real-dir: {e}") from None
        w, h = img.size
        side = int(rng.integers(self.size, min(w, h) + 1))
        left, top = int(rng.integers(w - side + 1)), int(rng.integers(h - side + 1))
        img = img.crop((left, top, left + side, top + side))
        if side != out_side:
            img = img.resize((out_side, out_side), Image.LANCZOS)
        return np.asarray(img, dtype=np.uint8)


def make_real(rng: np.random.Generator, size: int, photos: Optional[PhotoSource] = None) -> np.ndarray:
    """uint8 [size, size, 3] real image."""
    if photos is not None:
        return photos.crop(rng, size)
    return to_uint8(add_sensor_noise(rng, render_scene(rng, size, size, size)))


def make_fake(rng: np.random.Generator, size: int, method: str, photos: Optional[PhotoSource] = None) -> np.ndarray:
    """uint8 [size, size, 3] generated-looking image: half-resolution content up-sampled 2x."""
    half = size // 2
    if photos is not None:
        small = photos.crop(rng, half)
    else:
        # Quantised at half resolution, like a generator's intermediate feature map rendered
        # out; nearest up-sampling of uint8 values then leaves an exactly zero NPR residual.
        small = to_uint8(add_sensor_noise(rng, render_scene(rng, half, half, size)))
    return to_uint8(upsample2x(small, method, rng))


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


def plan_counts(n: int, val_fraction: float) -> dict:
    """counts[split][subset][label_dir] -> number of images (see the module docstring)."""
    n_val = int(round(n * val_fraction))
    counts = {}
    for split, n_split in (("train", n - n_val), ("val", n_val)):
        n_real = n_split // 2
        per_label = {"0_real": _spread(n_real, len(SUBSETS)), "1_fake": _spread(n_split - n_real, len(SUBSETS))}
        counts[split] = {s: {lab: per_label[lab][i] for lab in LABEL_DIRS} for i, s in enumerate(SUBSETS)}
    return counts


def _spread(n: int, k: int) -> list[int]:
    return [n // k + (i < n % k) for i in range(k)]


def make_synthetic(out, n: int, size: int = 256, real_dir: Optional[str] = None, seed: int = 0,
                   val_fraction: float = 0.2, force: bool = False, jobs: Optional[int] = None) -> dict:
    """Write the dataset under ``out``; returns counts[split][subset]["0_real" | "1_fake"].

    ``jobs`` worker processes (None: one per CPU) share the work; the output is the same.

    ``force`` replaces existing OUT/train and OUT/val (nothing else in OUT is touched);
    without it a non-empty ``out`` is an error.
    """
    out = os.fspath(out)
    if n < 1:
        raise SyntheticError(f"--n must be at least 1, got {n}")
    if size < 8 or size % 2:
        raise SyntheticError(f"--size must be an even number >= 8, got {size}")
    if not 0.0 <= val_fraction < 1.0:
        raise SyntheticError(f"--val-fraction must lie in [0, 1), got {val_fraction}")
    if seed < 0:
        raise SyntheticError(f"--seed must be >= 0, got {seed}")
    if os.path.exists(out) and not os.path.isdir(out):
        raise SyntheticError(f"{out}: exists and is not a directory")
    if os.path.isdir(out) and os.listdir(out) and not force:
        raise SyntheticError(f"{out}: directory exists and is not empty (use --force to replace its train/ and val/)")
    photos = PhotoSource(real_dir, size) if real_dir else None
    replaced = [path for split in SPLITS for path in files_under(os.path.join(out, split))]
    problem = overwrite_refusal(replaced, photos.read if photos else [], "OUT")
    if problem:
        raise SyntheticError(problem)
    for split in SPLITS:
        shutil.rmtree(os.path.join(out, split), ignore_errors=True)

    counts = plan_counts(n, val_fraction)
    tasks = []
    for split_id, split in enumerate(SPLITS):
        for subset_id, subset in enumerate(SUBSETS):
            for label, label_dir in enumerate(LABEL_DIRS):
                count = counts[split][subset][label_dir]
                folder = os.path.join(out, split, subset, label_dir)
                if count:
                    os.makedirs(folder, exist_ok=True)
                tasks += [(os.path.join(folder, f"{index:06d}.png"), (seed, split_id, subset_id, label, index),
                           subset, label, size, photos) for index in range(count)]

    jobs = min(jobs or os.cpu_count() or 1, max(1, len(tasks) // 64))  # a pool only pays for itself on many images
    if jobs == 1:
        for task in tasks:
            _write_one(task)
    else:
        with ProcessPoolExecutor(jobs) as pool:
            for _ in pool.map(_write_one, tasks, chunksize=16):
                pass
    return counts


def _write_one(task) -> None:
    """One image: its own RNG from its key, so the bytes do not depend on jobs or order."""
    path, key, subset, label, size, photos = task
    rng = np.random.default_rng(key)
    img = make_fake(rng, size, subset, photos) if label else make_real(rng, size, photos)
    Image.fromarray(img).save(path, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def format_counts(counts: dict) -> str:
    lines = [f"  {'split':<6} {'subset':<11} {'0_real':>7} {'1_fake':>7}"]
    for split, subsets in counts.items():
        for subset, labels in subsets.items():
            if any(labels.values()):
                lines.append(f"  {split:<6} {subset:<11} {labels['0_real']:>7} {labels['1_fake']:>7}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = ArgumentParser(description="Write a synthetic real-vs-2x-up-sampled dataset in the ForenSynths layout.")
    parser.add_argument("out", metavar="OUT", help="output directory (must be empty or absent unless --force)")
    parser.add_argument("--n", type=int, required=True, help="total number of images, both splits together")
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (even; default 256)")
    parser.add_argument("--real-dir", help="take real images (and fake content) from crops of these images")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of N for val/ (default 0.2)")
    parser.add_argument("--force", action="store_true", help="replace OUT/train and OUT/val if they exist")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes (default: one per CPU)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    try:
        counts = make_synthetic(args.out, args.n, args.size, args.real_dir, args.seed, args.val_fraction,
                                args.force, args.jobs)
    except SyntheticError as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 2
    total = sum(c for subsets in counts.values() for labels in subsets.values() for c in labels.values())
    print(f"wrote {total} images ({args.size}x{args.size} PNG) to {os.path.abspath(args.out)} "
          f"in {time.perf_counter() - start:.1f} s")
    print(format_counts(counts))
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
