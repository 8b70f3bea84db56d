"""The limits behind the records' flags (runtime/flags.py), measured on the reference images.

    python benchmarks/flag_limits.py [--model lfm.onnx] [--reference DIR] [-o benchmarks/results/flag_limits.json]

Every image is scored through the runtime's Detector (ONNX Runtime, policy resize 256, upstream's
default), as users get it. Three groups of images from ../shared/reference:
  real        the cnndetection images labelled 0 (JPEG q75) and images/*_photo.png (PNG)
  generated   the cnndetection images labelled 1 (JPEG q75, and example_fake.png)
  upsampled   real content carrying the up-sampling trace NPR reads in generated images, lossless:
              images/*_upsampled.png, and each real image's central 256 px halved (Lanczos) and
              enlarged 2x (bilinear)

- upscale: each real image's central native window of side 256/F, scored under policy resize
  (enlarged by F) and under policy none (the same pixels, not enlarged): which enlargement
  turns real images "fake" (the ``upscaled`` limit).
- jpeg: each image re-encoded by Pillow at quality Q (4:2:0; 4:4:4 too at 100 and 95):
  decisions changed, and how many of the images the model called fake it still calls fake (the
  ``low-jpeg-quality`` limit).
- mild: a resize by 0.9, 0.95, 1.05, 1.1 (runtime/perturb.py's, Pillow bicubic) before the
  policy: how far a logit moves (the ``uncertain`` band: the 95th percentile of those moves),
  and how far from the boundary the images lay whose decision moved. JPEG q95 is not among
  them: any re-encoding moves every fake-looking logit to "real" (the jpeg table), a one-way
  loss the ``low-jpeg-quality`` flag names, not noise around the threshold.
Writes one JSON; docs/runtime.md ("Flags") states the limits chosen from it.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from lfm.benchmarks.common import log, work_folder
from lfm.benchmarks.reference_sets import cnndetection_labels, reference_pngs
from lfm.runtime.perturb import BAND_QUANTILE, BAND_RESIZES, band_logits, band_shifts, center_square, measured_band

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("LFM_REFERENCE", ROOT.parent / "shared" / "reference"))
FACTORS = (1.0, 1.004, 1.01, 1.02, 1.05, 1.1, 1.15, 1.2, 1.25, 1.33, 1.5, 2.0, 2.5, 3.0)
QUALITIES = (100, 95, 90, 85, 80, 75, 70, 60, 50, 40, 30, 20, 10)
FULL_CHROMA = (100, 95)  # also re-encoded without chroma subsampling (4:4:4): is it the subsampling?
SIZE = 256
GROUPS = ("real", "generated", "upsampled")


def reference_groups(reference: Path) -> dict[str, list[tuple[str, Image.Image]]]:
    """GROUPS -> [(name, RGB image)]."""
    from lfm.runtime.preprocess import open_image

    groups = {g: [] for g in GROUPS}
    for path, label, _ in cnndetection_labels(reference):
        groups[("real", "generated")[label]].append((f"cnndetection/{path.name}", open_image(str(path))))
    for path in reference_pngs(reference):
        group = "upsampled" if path.stem.endswith("_upsampled") else "real"
        groups[group].append((f"images/{path.name}", open_image(str(path))))
    groups["upsampled"] += [(f"{name} halved-2x", halved_2x(img)) for name, img in groups["real"]]
    return groups


def halved_2x(img: Image.Image) -> Image.Image:
    """The central SIZE px halved (Lanczos) and enlarged 2x (bilinear): a lossless up-sampling trace."""
    c = center_square(img, SIZE)
    half = c.resize((c.width // 2, c.height // 2), Image.LANCZOS)
    return half.resize((half.width * 2, half.height * 2), Image.BILINEAR)


def jpeg_bytes(img: Image.Image, quality: int, subsampling: int = -1) -> bytes:
    """The image as a JPEG file by Pillow at ``quality`` (its default 4:2:0, or 0: 4:4:4): the file
    itself, read back as users' files are."""
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, subsampling=subsampling)
    return buf.getvalue()


class Scorer:
    def __init__(self, model: str):
        from lfm.runtime.backends import make_runner
        from lfm.runtime.detector import Detector

        self.detectors = {policy: Detector(make_runner(model, backend="onnxruntime"), policy=policy, size=SIZE,
                                           batch_size=16) for policy in ("resize", "none")}

    def logits(self, items: list, policy: str = "resize") -> np.ndarray:
        records = self.detectors[policy].predict(items)
        bad = [r for r in records if not r.ok]
        if bad:
            raise RuntimeError(f"{len(bad)} image(s) failed, first: {bad[0].path}: {bad[0].error}")
        return np.array([r.logit for r in records])

    def close(self):
        for d in self.detectors.values():
            d.close()


def share(mask) -> float | None:
    mask = np.asarray(mask, bool)
    return round(float(mask.mean()), 4) if mask.size else None


def quantiles(x: np.ndarray) -> dict:
    return {k: round(float(np.quantile(x, q)), 3) for k, q in (("p50", 0.5), ("p90", 0.9), ("p95", 0.95),
                                                               ("p99", 0.99), ("max", 1.0))}


def upscale_table(scorer: Scorer, real: list) -> list[dict]:
    rows = []
    for f in FACTORS:
        side = round(SIZE / f)
        windows = [center_square(img, side) for _, img in real]
        enlarged, native = scorer.logits(windows, "resize"), scorer.logits(windows, "none")
        rows.append({"factor": round(SIZE / side, 3), "window": side, "n": len(windows),
                     "called_fake_enlarged": share(enlarged > 0), "called_fake_native": share(native > 0),
                     "turned_fake_by_enlarging": share((enlarged > 0) & (native <= 0)),
                     "median_logit_shift": round(float(np.median(enlarged - native)), 3)})
        log(f"upscale {rows[-1]}")
    return rows


def jpeg_table(scorer: Scorer, groups: dict, clean: dict) -> list[dict]:
    """Per quality, per group: decisions changed, called fake, and still fake of those called fake clean."""
    rows = []
    for q, subsampling in [(q, -1) for q in QUALITIES] + [(q, 0) for q in FULL_CHROMA]:
        row = {"quality": q, "chroma": "4:2:0" if subsampling else "4:4:4"}
        for g, images in groups.items():
            got = scorer.logits([jpeg_bytes(img, q, subsampling) for _, img in images])
            was_fake = clean[g] > 0
            row[g] = {"n": len(images), "decisions_changed": share((got > 0) != was_fake),
                      "called_fake": share(got > 0), "clean_fake": int(was_fake.sum()),
                      "still_fake": int((got[was_fake] > 0).sum()),
                      "median_abs_logit_shift": round(float(np.median(np.abs(got - clean[g]))), 3)}
        rows.append(row)
        log(f"jpeg {row}")
    return rows


def mild_table(scorer: Scorer, images: list, clean: np.ndarray) -> dict:
    """Resizes by perturb.BAND_RESIZES (as evaluate --perturb applies them): how far each logit
    moves; the band (perturb.measured_band: the BAND_QUANTILE of those moves, the one definition
    lfm calibrate also measures by), and where the flipped images lay."""
    names = [n for n, _ in images]
    resized = band_logits(lambda items: scorer.logits(list(items)), [img for _, img in images])
    shifts, flips, rows = band_shifts(clean, resized), [], []
    for j, perturbation in enumerate(BAND_RESIZES):
        got, shift = resized[:, j], shifts[:, j]
        flipped = (got > 0) != (clean > 0)
        flips += [(abs(float(c)), name) for c, name, f in zip(clean, names, flipped) if f]
        rows.append({"perturbation": perturbation.name, "n": len(images), "flipped": int(flipped.sum()),
                     "abs_logit_shift": quantiles(shift)})
        log(f"mild {rows[-1]}")
    band = round(measured_band(clean, resized), 1)
    distances = np.array([d for d, _ in flips])
    return {"rows": rows, "abs_logit_shift_all": quantiles(shifts.ravel()),
            "band": {"quantile": BAND_QUANTILE, "logits": band,
                     "flips_within_band": int((distances < band).sum()), "flips": len(flips),
                     "clean_images_within_band": share(np.abs(clean) < band)},
            "flipped": sorted([round(d, 3), name] for d, name in flips),
            "share_within": {str(b): share(np.abs(clean) < b) for b in (1, 2, 4, 6, 8, 10)}}


def upstream_onnx(reference: Path, folder: Path) -> str:
    """Upstream's checkpoint exported by the project's CLI (fp32, uint8 input) into ``folder``."""
    model = str(folder / "upstream_uint8.onnx")
    subprocess.run([sys.executable, str(ROOT / "export" / "to_onnx.py"), str(reference / "lfm_upstream.pth"),
                    "-o", model], check=True, stdout=subprocess.DEVNULL)
    return model


def measure(model: str, reference: Path) -> dict:
    from lfm.runtime.flags import jpeg_quality

    groups = reference_groups(reference)
    scorer = Scorer(model)
    try:
        if scorer.detectors["resize"].spec.threshold != 0.5:
            raise SystemExit("error: the model's threshold is not 0.5; this table reads logits against 0")
        clean = {g: scorer.logits([img for _, img in images]) for g, images in groups.items()}
        upscale = upscale_table(scorer, groups["real"])
        jpeg = jpeg_table(scorer, groups, clean)
        every = [item for g in GROUPS for item in groups[g]]
        mild = mild_table(scorer, every, np.concatenate([clean[g] for g in GROUPS]))
    finally:
        scorer.close()
    qualities = sorted({jpeg_quality(Image.open(reference / name).quantization)
                        for g in ("real", "generated") for name, _ in groups[g] if name.endswith(".jpg")})
    return {"images": {g: len(images) for g, images in groups.items()}, "reference_jpeg_qualities": qualities,
            "clean_called_fake": {g: share(clean[g] > 0) for g in GROUPS},
            "upscale": upscale, "jpeg": jpeg, "mild": mild}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="ONNX model (default: upstream's checkpoint, exported here)")
    p.add_argument("--reference", default=str(REFERENCE), help="the reference folder (cnndetection/, images/)")
    p.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "results" / "flag_limits.json"))
    args = p.parse_args(argv)
    reference = Path(args.reference)
    if not (reference / "cnndetection").is_dir():
        print(f"error: {reference}: no cnndetection/ reference images (set LFM_REFERENCE)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    with work_folder(None, "lfm-flags-") as work:
        doc = measure(args.model or upstream_onnx(reference, work), reference)
    doc = {"benchmark": "flag_limits", "command": " ".join(["python benchmarks/flag_limits.py", *(argv or sys.argv[1:])]),
           "model": "upstream checkpoint, fp32 uint8 ONNX" if args.model is None else args.model,
           "policy": f"resize {SIZE}", **doc, "seconds": round(time.perf_counter() - t0, 1)}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
