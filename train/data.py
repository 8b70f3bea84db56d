"""Datasets for training and evaluation: discovery, augmentation, loading (PIL + numpy + torch).

Decoding and normalisation are the runtime's (``lfm.runtime.preprocess``), so a training image
goes through exactly the bytes -> RGB -> float32 CHW path that inference uses.

Typical use::

    samples = find_samples("data/train", classes=["car", "cat"])
    ds = ImageDataset(samples, TrainTransform(), seed=0)
    loader = DataLoader(ds, batch_size=32, sampler=balanced_sampler(samples),
                        num_workers=4, collate_fn=collate_skip_bad)
    bad = BadFileLog()
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for images, labels, indices, bad_indices in loader:   # [B,3,224,224], [B], [B], list
            bad.add_indices(ds, bad_indices)
            if len(indices) == 0:
                continue
            ...
    print(bad.summary())

Problems are reported with the ``warnings`` module, category ``DatasetWarning``.
"""
from __future__ import annotations

import os
import random
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageFilter, UnidentifiedImageError
from torch.utils.data import Dataset, WeightedRandomSampler

from lfm.runtime.inputs import image_files
from lfm.runtime.perturb import jpeg_roundtrip
from lfm.runtime.preprocess import DEFAULT_MAX_PIXELS, ImageError, apply_policy, is_image_path, normalize, open_image
from lfm.runtime.spec import IMAGENET_MEAN, IMAGENET_STD, POLICIES

# Folder name -> label, as in ForenSynths / CNNDetection (torchvision ImageFolder sorts them so).
LABEL_DIRS = ("0_real", "1_fake")
EXPECTED_LAYOUT = "ROOT/<class>/{0_real,1_fake}/<images> or ROOT/{0_real,1_fake}/<images>"

PathLike = Union[str, os.PathLike]
RngLike = Union[np.random.Generator, random.Random, int, None]


class DatasetError(ValueError):
    """A dataset root that cannot be used; the message is one line naming the path."""


class DatasetWarning(UserWarning):
    """A dataset problem that was worked around (skipped file, class missing a label)."""


class Sample(NamedTuple):
    path: str
    label: int  # 0 real, 1 fake
    subset: str  # class folder name (or the root's name for the flat layout)


# --------------------------------------------------------------------------------------------
# Discovery
# --------------------------------------------------------------------------------------------


def find_samples(root: PathLike, classes: Optional[Sequence[str]] = None, check: bool = True) -> list[Sample]:
    """List the labelled images of a ForenSynths-style dataset.

    Layouts (checked in this order):
      * flat:  ``root/{0_real,1_fake}/*``           -> subset = basename of root
      * class: ``root/<class>/{0_real,1_fake}/*``    -> subset = class folder name
    Files are found recursively under each 0_real/1_fake folder (as ImageFolder does) by the
    runtime's listing rules (``lfm.runtime.inputs.image_files``): hidden files and folders
    (``.DS_Store``, ``.ipynb_checkpoints``) are ignored, symlinked folders followed, each real
    folder read once. Order is deterministic: class name, then label, then path (a folder's
    files before its subfolders', each sorted).

    ``classes`` keeps only those class folders (for the flat layout the one class is the
    root's basename). ``check`` opens every file's header (no pixel decode) and skips,
    with one DatasetWarning naming each file and its reason, files with a non-image
    extension, empty files and unrecognised formats. Data that is truncated further in
    only fails at decode time; ImageDataset + collate_skip_bad handle that.

    Decisions:
      * root with both 0_real/1_fake and class folders containing them: DatasetError
        (ambiguous; which one was meant?).
      * a class folder with only one of 0_real/1_fake: kept, with a DatasetWarning (a
        test set may legitimately be one-sided, a training set rarely is).
      * sub-folders of root without 0_real/1_fake are ignored; if 0_real/1_fake exist only
        deeper (e.g. ROOT/train/<class>/0_real) the error says which folder to pass instead.

    Raises DatasetError: root missing or not a directory; no 0_real/1_fake anywhere; an
    unknown class requested; no usable image file.
    """
    root = os.fspath(root)
    if not os.path.exists(root):
        raise DatasetError(f"{root}: no such directory (expected {EXPECTED_LAYOUT})")
    if not os.path.isdir(root):
        raise DatasetError(f"{root}: is a file, not a dataset directory (expected {EXPECTED_LAYOUT})")

    groups = _discover_layout(root)
    groups = _filter_classes(root, groups, classes)
    for name, label_dirs in groups.items():
        present = {label for label, _ in label_dirs}
        if len(present) == 1:
            (label,) = present
            missing = LABEL_DIRS[1 - label]
            warnings.warn(
                f"{os.path.dirname(label_dirs[0][1])}: no {missing} folder; its samples are all "
                f"{'real' if label == 0 else 'fake'}", DatasetWarning, stacklevel=2)

    samples, bad, n_files = [], [], 0
    for name, label_dirs in groups.items():
        for label, folder in label_dirs:
            for path in image_files(folder, other_files=True):  # the others: skipped, and named
                n_files += 1
                reason = check_image_header(path) if check else None
                if reason is None:
                    samples.append(Sample(path, label, name))
                else:
                    bad.append((path, reason))

    if bad:
        listing = "\n".join(f"  {path}: {reason}" for path, reason in bad)
        warnings.warn(f"skipped {len(bad)} of {n_files} files under {root}:\n{listing}",
                      DatasetWarning, stacklevel=2)
    if not samples:
        folders = ", ".join(os.path.relpath(f, root) for dirs in groups.values() for _, f in dirs)
        what = f"all {n_files} files were unusable" if n_files else "they contain no files"
        raise DatasetError(f"{root}: found {folders} but {what} (expected images, e.g. .png/.jpg)")
    return samples


def _discover_layout(root: str) -> dict[str, list[tuple[int, str]]]:
    """root -> {subset name: [(label, folder), ...]} for the flat or the class layout."""
    flat = _label_dirs(root)
    class_dirs = {os.path.basename(d): _label_dirs(d) for d in _subdirs(root) if os.path.basename(d) not in LABEL_DIRS}
    class_dirs = {name: dirs for name, dirs in class_dirs.items() if dirs}
    if flat and class_dirs:
        raise DatasetError(
            f"{root}: mixed layout, has both {'/'.join(os.path.basename(f) for _, f in flat)} and class "
            f"folders ({', '.join(sorted(class_dirs))}) with 0_real/1_fake; expected one of {EXPECTED_LAYOUT}")
    if flat:
        return {os.path.basename(os.path.abspath(root)): flat}
    if class_dirs:
        return dict(sorted(class_dirs.items()))

    # Nothing at depth 1 or 2: say what is there, and point at a deeper root if there is one.
    entries = sorted(e for e in os.listdir(root) if not e.startswith("."))
    found = ", ".join(e + ("/" if os.path.isdir(os.path.join(root, e)) else "") for e in entries[:8])
    found = (found + (", ..." if len(entries) > 8 else "")) if entries else "an empty directory"
    hint = ""
    for sub in _subdirs(root):
        if any(_label_dirs(d) for d in _subdirs(sub)):
            hint = f"; 0_real/1_fake are one level deeper: did you mean {sub}?"
            break
    raise DatasetError(f"{root}: no 0_real/1_fake folders (expected {EXPECTED_LAYOUT}); found {found}{hint}")


def _filter_classes(root, groups, classes):
    if classes is None:
        return groups
    if isinstance(classes, str):
        classes = [classes]
    unknown = [c for c in classes if c not in groups]
    if unknown:
        raise DatasetError(f"{root}: no class folder {', '.join(map(repr, unknown))}; "
                           f"available: {', '.join(groups)}")
    return {name: groups[name] for name in sorted(set(classes))}


def _subdirs(folder: str) -> list[str]:
    return [os.path.join(folder, e) for e in sorted(os.listdir(folder))
            if not e.startswith(".") and os.path.isdir(os.path.join(folder, e))]


def _label_dirs(folder: str) -> list[tuple[int, str]]:
    return [(label, os.path.join(folder, name)) for label, name in enumerate(LABEL_DIRS)
            if os.path.isdir(os.path.join(folder, name))]


def check_image_header(path: PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> Optional[str]:
    """Why ``path`` is not a usable image, from its extension and header only; None if it looks fine."""
    if not is_image_path(path):
        return f"not an image file extension ({os.path.splitext(os.fspath(path))[1] or 'none'!r})"
    try:
        if os.path.getsize(path) == 0:
            return "empty file (0 bytes)"
        with warnings.catch_warnings():
            # the size check below decides; Pillow's notes on odd headers ("Truncated File Read")
            # name no file, and the decode decides about those
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                w, h = img.size
    except UnidentifiedImageError:
        return "not an image (unrecognised format)"
    except Image.DecompressionBombError:
        return "rejected as a decompression bomb"
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        if isinstance(e, OSError) and e.errno is not None:  # the file itself: the system's reason, not "[Errno N] ..."
            return f"cannot read file ({e.strerror})"
        return f"unreadable header ({e})"
    if w * h > max_pixels:
        return f"{w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}"
    return None


# --------------------------------------------------------------------------------------------
# Transforms: PIL RGB image (+ RNG) -> float32 CHW numpy array
# --------------------------------------------------------------------------------------------


def as_generator(rng: RngLike) -> np.random.Generator:
    """numpy Generator from a Generator, a random.Random, an int seed, or None (unseeded)."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, random.Random):
        return np.random.default_rng(rng.getrandbits(64))
    return np.random.default_rng(rng)


@dataclass(frozen=True)
class AugParams:
    """One draw of TrainTransform's randomness. crop_box is (left, top, right, bottom)."""

    blur_sigma: Optional[float]
    jpeg_quality: Optional[int]
    crop_box: Optional[tuple[int, int, int, int]]
    flip: bool


class TrainTransform:
    """Upstream (CNNDetection / NPR) training augmentation, in its order:

    resize (bilinear, load_size x load_size; None or 0: keep size) -> Gaussian blur with
    probability blur_prob (sigma ~ U(blur_sigma); PIL's GaussianBlur radius is the standard
    deviation) -> JPEG re-compression with probability jpeg_prob (quality ~ U{jpeg_quality},
    inclusive) -> random crop_size x crop_size crop (None or 0: no crop) -> horizontal flip
    with p = 0.5 when ``flip`` -> normalize. Output: float32 [3, crop, crop].

    An image smaller than the crop (only possible with load_size=None) raises ImageError
    naming the file rather than being padded or up-scaled: both would add exactly the
    kind of resampling trace the detector learns to call fake. ImageDataset reports it as a
    bad sample.

    The RNG is explicit and always consumed the same way (every random value is drawn
    whether or not its augmentation fires), so one seed gives one crop whatever the
    probabilities are.
    """

    def __init__(self, load_size: Optional[int] = 256, crop_size: Optional[int] = 224, flip: bool = True,
                 blur_prob: float = 0.0, blur_sigma=(0.0, 3.0), jpeg_prob: float = 0.0,
                 jpeg_quality=(30, 100), mean=IMAGENET_MEAN, std=IMAGENET_STD):
        for name, p in (("blur_prob", blur_prob), ("jpeg_prob", jpeg_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {p}")
        self.load_size = load_size or None
        self.crop_size = crop_size or None
        if self.load_size and self.crop_size and self.crop_size > self.load_size:
            raise ValueError(f"crop_size {crop_size} is larger than load_size {load_size}")
        self.flip = flip
        self.blur_prob, self.blur_sigma = blur_prob, _as_range(blur_sigma, float)
        self.jpeg_prob, self.jpeg_quality = jpeg_prob, _as_range(jpeg_quality, int)
        self.mean, self.std = mean, std

    def __call__(self, img: Image.Image, rng: RngLike = None, path: Optional[str] = None) -> np.ndarray:
        img = self.resize(img)
        params = self.sample_params(as_generator(rng), img.size, path)
        return self.apply(img, params)

    def resize(self, img: Image.Image) -> Image.Image:
        if self.load_size is None or img.size == (self.load_size, self.load_size):
            return img
        return img.resize((self.load_size, self.load_size), Image.BILINEAR)

    def sample_params(self, rng: np.random.Generator, size: tuple[int, int], path=None) -> AugParams:
        """Draw the augmentation for an image of ``size`` = (width, height) after resizing."""
        do_blur, sigma = rng.random() < self.blur_prob, rng.uniform(*self.blur_sigma)
        do_jpeg, quality = rng.random() < self.jpeg_prob, int(rng.integers(self.jpeg_quality[0], self.jpeg_quality[1] + 1))
        u_left, u_top, do_flip = rng.random(), rng.random(), rng.random() < 0.5
        box = None
        if self.crop_size is not None:
            w, h, c = size[0], size[1], self.crop_size
            if w < c or h < c:
                raise ImageError(path or "<image>", f"{w}x{h} is smaller than the {c}x{c} training crop "
                                 "(set load_size, or drop images this small)")
            left, top = int(u_left * (w - c + 1)), int(u_top * (h - c + 1))
            box = (left, top, left + c, top + c)
        return AugParams(float(sigma) if do_blur else None, quality if do_jpeg else None, box,
                         bool(self.flip and do_flip))

    def apply(self, img: Image.Image, p: AugParams) -> np.ndarray:
        """Apply drawn parameters to an already resized image -> float32 [3, H, W]."""
        if p.blur_sigma is not None:
            img = img.filter(ImageFilter.GaussianBlur(radius=p.blur_sigma))
        if p.jpeg_quality is not None:
            img = jpeg_roundtrip(img, p.jpeg_quality)
        if p.crop_box is not None:
            img = img.crop(p.crop_box)
        a = np.asarray(img, dtype=np.uint8)
        if p.flip:
            a = a[:, ::-1]
        return normalize(a, self.mean, self.std)


class EvalTransform:
    """Deterministic eval preprocessing, shared with the runtime: apply_policy -> normalize.

    policy "resize": bilinear to size x size (upstream eval); "center-crop": the central
    size x size (ImageError naming the file if smaller); "none": native resolution.
    Output float32 [3, H, W]. ``rng`` is accepted and ignored, so both transforms are called alike.
    """

    def __init__(self, policy: str = "resize", size: int = 256, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        if policy not in POLICIES:
            raise ValueError(f"unknown policy {policy!r}; expected one of {POLICIES}")
        self.policy, self.size, self.mean, self.std = policy, size, mean, std

    def __call__(self, img: Image.Image, rng: RngLike = None, path: Optional[str] = None) -> np.ndarray:
        try:
            # top_k None: a model in training may be configured for inputs smaller than a deployed one's
            img = apply_policy(img, self.policy, self.size, top_k=None)
        except ImageError as e:
            raise ImageError(path or e.source, e.problem) from None
        return normalize(np.asarray(img, dtype=np.uint8), self.mean, self.std)


def _as_range(value, kind) -> tuple:
    """3 -> (3, 3); (a, b) -> (a, b) with a <= b."""
    lo, hi = (value, value) if np.isscalar(value) else tuple(value)
    if lo > hi:
        raise ValueError(f"range {value!r} has min > max")
    return kind(lo), kind(hi)


# --------------------------------------------------------------------------------------------
# Dataset, collate, sampler
# --------------------------------------------------------------------------------------------


class ImageDataset(Dataset):
    """samples + transform -> (image float32 [3, H, W], label float32 [], index).

    A sample that fails to decode or transform (ImageError: truncated data, too small for the
    crop) yields the marker ``(None, None, index)`` instead of raising, so one bad file does
    not kill a DataLoader worker; collate_skip_bad drops it and reports the index.

    Sample i's RNG is seeded by (seed, epoch, i): results do not depend on num_workers or on
    which worker loads it. Call set_epoch before each epoch (this reaches workers only when
    they are re-created per epoch, i.e. persistent_workers=False, the default).
    """

    def __init__(self, samples: Sequence[Sample], transform, seed: int = 0, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.samples = list(samples)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0
        self.max_pixels = max_pixels

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]

    def rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def load(self, index: int) -> np.ndarray:
        """Decode + transform sample ``index``; raises ImageError naming the file."""
        path = self.samples[index].path
        img = open_image(path, self.max_pixels)
        return self.transform(img, self.rng(index), path)

    def __getitem__(self, index: int):
        try:
            x = self.load(index)
        except ImageError:
            return None, None, index
        label = torch.tensor(self.samples[index].label, dtype=torch.float32)
        return torch.from_numpy(x), label, index

    def error(self, index: int) -> Optional[str]:
        """Why sample ``index`` fails to load (re-runs it; meant for the rare bad ones), or None."""
        try:
            self.load(index)
        except ImageError as e:
            return e.problem
        return None


def collate_skip_bad(batch):
    """DataLoader collate_fn: drop ImageDataset's (None, None, i) markers.

    Returns (images [B, 3, H, W] float32, labels [B] float32, indices [B] int64, bad_indices
    list[int]). When every sample was bad, B = 0 and images is an empty tensor.
    """
    good = [item for item in batch if item[0] is not None]
    bad = [int(item[2]) for item in batch if item[0] is None]
    if not good:
        return torch.empty(0), torch.empty(0), torch.empty(0, dtype=torch.long), bad
    images = torch.stack([item[0] for item in good])
    labels = torch.stack([item[1] for item in good])
    indices = torch.tensor([int(item[2]) for item in good], dtype=torch.long)
    return images, labels, indices, bad


def balanced_weights(samples) -> torch.Tensor:
    """float64 [N] sampling weights 1 / count(label): real and fake drawn equally often
    (CNNDetection's get_bal_sampler). ``samples``: Samples or plain int labels."""
    labels = [s.label if isinstance(s, Sample) else int(s) for s in samples]
    if not labels:
        raise DatasetError("balanced sampling: no samples")
    counts = Counter(labels)
    return torch.tensor([1.0 / counts[label] for label in labels], dtype=torch.double)


def balanced_sampler(samples, num_samples: Optional[int] = None,
                     generator: Optional[torch.Generator] = None) -> WeightedRandomSampler:
    """WeightedRandomSampler over ``balanced_weights``, with replacement."""
    weights = balanced_weights(samples)
    return WeightedRandomSampler(weights, num_samples or len(weights), replacement=True, generator=generator)


class BadFileLog:
    """Files that failed at load time: warns once per file, then summarises at the end."""

    def __init__(self):
        self.reasons: dict[str, str] = {}

    def add(self, path: PathLike, reason: str) -> bool:
        """Record a bad file; warns (DatasetWarning) the first time. Returns True if it was new."""
        path = os.fspath(path)
        if path in self.reasons:
            return False
        self.reasons[path] = reason
        warnings.warn(f"skipping unreadable image {path}: {reason}", DatasetWarning, stacklevel=2)
        return True

    def add_indices(self, dataset: ImageDataset, indices) -> None:
        """Record collate_skip_bad's bad_indices of ``dataset``."""
        for i in indices:
            path = dataset.samples[i].path
            if path not in self.reasons:
                self.add(path, dataset.error(i) or "failed to load")

    @property
    def count(self) -> int:
        return len(self.reasons)

    def summary(self) -> str:
        if not self.reasons:
            return "no bad files"
        lines = [f"  {path}: {reason}" for path, reason in self.reasons.items()]
        return f"skipped {self.count} bad file{'s' * (self.count != 1)}:\n" + "\n".join(lines)
