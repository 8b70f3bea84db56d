"""Does a reduced-precision model keep its fp32 model's decisions on images unlike its calibration set?

    groups = make_stress_set(held_out_files, "stress/", spec)       # {group: [files]}
    report = FidelityReport.compare(fp32_logits, test_logits, groups_of_each_image, threshold=0.5)
    verdict = ACCEPTANCE.judge(report)                                # passed, worst group, one line

Images held out from the calibration folder are the same kind as the calibration images, so
they cannot show what a quantised model does to another kind: NPR residuals of up-sampled
content are small and structured, re-encoding moves them, and activation ranges taken from one
kind of image clip or crush another's. The stress set derives other kinds from the held-out
images themselves, and adds generated ones:

    held-out       the held-out files as they are
    nearest-2x     each image shrunk 2x (2x2 box average) and up-sampled 2x back by nearest,
    bilinear-2x    bilinear or bicubic interpolation: the trace a generator's up-sampling
    bicubic-2x     leaves, at the image's own size
    jpeg-q75       re-encoded as JPEG, quality 75 and 95 (4:2:0)
    jpeg-q95
    half-png       shrunk 2x (box), stored losslessly: clean content with no up-sampling or
                   compression trace at the pixel grid (the resize policy then up-samples it;
                   a half below the model's minimum, 48 px for K=16, is skipped and counted)
    synthetic      train/make_synthetic.py scenes, real and up-sampled (nearest, bilinear,
                   transposed conv), at the model's size

Per group, against the fp32 model: decision agreement, flips, *sure* flips (images the fp32
model scores at least ``SURE_LOGIT`` away from the decision boundary), median and max |dlogit|.
``AcceptanceLine`` says which reports pass; every reduced-precision export is judged by it.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Sequence

import numpy as np

from lfm.export.onnx_files import model_spec, run_logits
from lfm.runtime.inputs import image_files
from lfm.runtime.spec import ModelSpec, logit_boundary

STRESS_GROUPS = ("held-out", "nearest-2x", "bilinear-2x", "bicubic-2x", "jpeg-q75", "jpeg-q95", "half-png",
                 "synthetic")
# |fp32 logit - boundary| at or above this is a decision the fp32 model is sure of (score outside
# [0.12, 0.88] at threshold 0.5): flipping one of those is never acceptable.
SURE_LOGIT = 2.0


# --------------------------------------------------------------------------------------------
# The stress set


def _even_crop(img):
    w, h = img.size
    return img.crop((0, 0, w - w % 2, h - h % 2)) if (w % 2 or h % 2) else img


def _derived(img, group: str):
    """The stress variant ``group`` of an RGB image: (PIL image, file format) or None when the
    image is too small to derive it (under 4 px a side)."""
    from PIL import Image

    if group == "jpeg-q75":
        return img, ("JPEG", {"quality": 75})
    if group == "jpeg-q95":
        return img, ("JPEG", {"quality": 95})
    img = _even_crop(img)
    if min(img.size) < 4:
        return None
    half = img.reduce(2)  # 2x2 box average: no interpolation trace of its own
    if group == "half-png":
        return half, ("PNG", {"compress_level": 1})
    method = {"nearest-2x": Image.NEAREST, "bilinear-2x": Image.BILINEAR, "bicubic-2x": Image.BICUBIC}[group]
    return half.resize(img.size, method), ("PNG", {"compress_level": 1})


def make_stress_set(files: Sequence[str], out_dir: str | os.PathLike, spec: ModelSpec | None = None,
                    groups: Sequence[str] = STRESS_GROUPS, synthetic: int = 24, seed: int = 0,
                    max_pixels: int | None = None) -> dict[str, list[str]]:
    """Write the stress variants of ``files`` under ``out_dir`` (one folder per group) and return
    {group: [paths]}, "held-out" being ``files`` themselves. A file that cannot be decoded is left
    out of the derived groups (it is counted as skipped where the held-out group is scored).
    ``synthetic`` images (real and generated, the three up-sampling subsets) at the spec's size."""
    from lfm.runtime.preprocess import DEFAULT_MAX_PIXELS, ImageError, open_image

    spec = spec or ModelSpec()
    unknown = [g for g in groups if g not in STRESS_GROUPS]
    if unknown:
        raise ValueError(f"unknown stress group(s) {unknown}; expected some of {STRESS_GROUPS}")
    out_dir = os.fspath(out_dir)
    out: dict[str, list[str]] = {g: [] for g in groups}
    if "held-out" in out:
        out["held-out"] = [os.fspath(f) for f in files]
    derived = [g for g in groups if g not in ("held-out", "synthetic")]
    for g in derived:
        os.makedirs(os.path.join(out_dir, g), exist_ok=True)
    for i, f in enumerate(files):
        if not derived:
            break
        try:
            img = open_image(f, max_pixels or DEFAULT_MAX_PIXELS)
        except ImageError:
            continue
        stem = f"{i:05d}_" + os.path.splitext(os.path.basename(os.fspath(f)))[0][:40]
        for g in derived:
            made = _derived(img, g)
            if made is None:
                continue
            variant, (fmt, options) = made
            path = os.path.join(out_dir, g, stem + (".jpg" if fmt == "JPEG" else ".png"))
            variant.save(path, fmt, **options)
            out[g].append(path)
    if "synthetic" in out and synthetic > 0:
        from lfm.train.make_synthetic import make_synthetic

        root = os.path.join(out_dir, "synthetic")
        make_synthetic(root, n=max(2, synthetic), size=spec.size if spec.policy != "none" else 256, seed=seed,
                       val_fraction=0.0, jobs=1)
        out["synthetic"] = image_files(root)
    return out


# --------------------------------------------------------------------------------------------
# Comparing a model with its fp32 model, group by group


@dataclass
class GroupFidelity:
    """One group's comparison with the fp32 model's logits."""

    n: int
    flips: int
    sure: int  # images the fp32 model is sure about (|logit - boundary| >= SURE_LOGIT)
    sure_flips: int
    median_abs_dlogit: float
    max_abs_dlogit: float

    @property
    def agreement(self) -> float:
        return 1.0 - self.flips / self.n if self.n else float("nan")

    @classmethod
    def of(cls, ref: np.ndarray, test: np.ndarray, boundary: float = 0.0) -> "GroupFidelity":
        ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
        if ref.size == 0:
            return cls(0, 0, 0, 0, float("nan"), float("nan"))
        d = np.abs(ref - test)
        flipped = (ref > boundary) != (test > boundary)
        sure = np.abs(ref - boundary) >= SURE_LOGIT
        return cls(int(ref.size), int(flipped.sum()), int(sure.sum()), int((flipped & sure).sum()),
                   float(np.median(d)), float(d.max()))

    def to_dict(self) -> dict:
        return {**asdict(self), "agreement": self.agreement}


@dataclass
class FidelityReport:
    """Per-group and overall fidelity of a model to its fp32 model (logits on the same images)."""

    groups: dict[str, GroupFidelity]
    overall: GroupFidelity
    threshold: float = 0.5
    skipped: dict[str, int] = field(default_factory=dict)

    @classmethod
    def compare(cls, ref: np.ndarray, test: np.ndarray, group_of: Sequence[str], threshold: float = 0.5,
                skipped: dict[str, int] | None = None) -> "FidelityReport":
        """``ref``/``test``: logits of the fp32 and the tested model, image by image; ``group_of``:
        each image's group. The decision is score > threshold, as the runtime labels."""
        ref, test, group_of = np.asarray(ref, np.float64), np.asarray(test, np.float64), np.asarray(group_of)
        boundary = logit_boundary(threshold)
        groups = {g: GroupFidelity.of(ref[group_of == g], test[group_of == g], boundary)
                  for g in dict.fromkeys(group_of.tolist())}
        return cls(groups, GroupFidelity.of(ref, test, boundary), threshold, dict(skipped or {}))

    def to_dict(self) -> dict:
        return {"threshold": self.threshold, "sure_logit": SURE_LOGIT, "overall": self.overall.to_dict(),
                "groups": {g: r.to_dict() for g, r in self.groups.items()}, "skipped": self.skipped}

    def table(self) -> str:
        rows = [f"  {'group':<12} {'n':>4} {'agree %':>8} {'flips':>5} {'sure flips':>10} "
                f"{'median |dlogit|':>15} {'max |dlogit|':>12}"]
        for name, r in [*self.groups.items(), ("all", self.overall)]:
            rows.append(f"  {name:<12} {r.n:>4} {100 * r.agreement:>8.2f} {r.flips:>5} "
                        f"{f'{r.sure_flips}/{r.sure}':>10} {r.median_abs_dlogit:>15.3f} {r.max_abs_dlogit:>12.3f}")
        if self.skipped:  # e.g. images smaller than a centre crop: the model cannot score them at all
            rows.append("  not scorable by this model (skipped): "
                        + ", ".join(f"{g} {n}" for g, n in self.skipped.items()))
        return "\n".join(rows)


@dataclass(frozen=True)
class AcceptanceLine:
    """What a reduced-precision model must keep of its fp32 model's decisions.

    No flip of a decision the fp32 model is sure of, in any group; at most ``max_flip_rate`` of
    all decisions flipped (those lie near the boundary, where the fp32 model itself is unsure);
    a median |dlogit| of at most ``max_median_dlogit`` over all images. Group medians are
    reported, not judged: a group can be one input many times over (2x nearest up-samples of
    images at the model's size all have an NPR residual of exactly zero, so the network sees the
    same blank input for each), and its median is then that one input's error."""

    max_sure_flips: int = 0
    max_flip_rate: float = 0.01
    max_median_dlogit: float = 0.3

    def problems(self, report: FidelityReport) -> list[tuple[str, str]]:
        """(group, problem) for every breach, worst first."""
        found = []
        for name, r in sorted(report.groups.items(), key=lambda kv: (-kv[1].sure_flips, -kv[1].median_abs_dlogit)):
            if r.sure_flips > self.max_sure_flips:
                found.append((name, f"{r.sure_flips} of {r.sure} sure decisions flipped"))
        o = report.overall
        if o.n and o.flips / o.n > self.max_flip_rate:
            worst = max(report.groups.items(), key=lambda kv: kv[1].flips / max(kv[1].n, 1))[0]
            found.append((worst, f"{o.flips} of {o.n} decisions flipped over all images ({100 * o.flips / o.n:.1f} % "
                                 f"> {100 * self.max_flip_rate:g} %; this group: {report.groups[worst].flips} of "
                                 f"{report.groups[worst].n})"))
        worst, r = max(report.groups.items(), key=lambda kv: kv[1].median_abs_dlogit if kv[1].n else -1.0)
        if o.n and o.median_abs_dlogit > self.max_median_dlogit:
            found.append((worst, f"median |dlogit| {o.median_abs_dlogit:.3f} over all images > "
                                 f"{self.max_median_dlogit} (this group: {r.median_abs_dlogit:.3f})"))
        return found

    def judge(self, report: FidelityReport) -> tuple[bool, str]:
        """(passed, one line: the summary, or the worst group and its problem)."""
        problems = self.problems(report)
        o = report.overall
        if not problems:
            return True, (f"{o.n} images in {len(report.groups)} groups: {o.flips} flips, 0 sure flips, "
                          f"median |dlogit| {o.median_abs_dlogit:.3f}")
        group, problem = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        return False, f"worst group '{group}': {problem}{more}"

    def to_dict(self) -> dict:
        return {"max_sure_flips": self.max_sure_flips, "max_flip_rate": self.max_flip_rate,
                "max_median_dlogit": self.max_median_dlogit, "sure_logit": SURE_LOGIT}


ACCEPTANCE = AcceptanceLine()


def cross_domain_report(fp32_path: str, model_path: str, base_files: Sequence[str], work_dir: str,
                        spec: ModelSpec | None = None, per_group: int = 32, seed: int = 0) -> tuple[FidelityReport, dict]:
    """Score the fp32 model and ``model_path`` on the stress set derived from up to ``per_group``
    of ``base_files`` (written under ``work_dir``) plus ``per_group`` synthetic images. Returns the
    report and the images counted per group (scored, skipped)."""
    spec = spec or model_spec(fp32_path)
    groups = make_stress_set(list(base_files)[:per_group], work_dir, spec, synthetic=per_group, seed=seed)
    files, group_of = [], []
    for g, fs in groups.items():
        files += fs
        group_of += [g] * len(fs)
    ref, idx = run_logits(fp32_path, files, spec)
    test, idx_test = run_logits(model_path, files, spec)
    if idx != idx_test:
        raise RuntimeError("the fp32 and the tested model read different images")
    scored = [group_of[i] for i in idx]
    counts = {g: {"scored": scored.count(g), "skipped": len(fs) - scored.count(g)} for g, fs in groups.items()}
    skipped = {g: c["skipped"] for g, c in counts.items() if c["skipped"]}
    return FidelityReport.compare(ref, test, scored, spec.threshold, skipped), counts
