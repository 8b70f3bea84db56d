"""Make the README's pictures, docs/figures/{gradcam,topk,tsne}.png: generated here, never copied.

    python docs/make_figures.py [--reference DIR] [--out docs/figures] [--work DIR] [--steps 80]

1. Synthetic data (train/make_synthetic.py, seed 0) in a temporary folder: 600 images of 128 px
   (480 to train on, 120 held out) and 6 of 256 px to look at, one real and one generated image
   per up-sampling subset (nearest, bilinear, transposed).
2. Two small models trained on the 128 px training split with the same recipe and the same
   number of steps, one with Top-K pooling and one with global average pooling
   (train/train.py --pooling topk | gap), for the t-SNE comparison.
3. ``visualize.py gradcam`` (contact sheet of the six) and ``topk`` (the generated one with the
   highest score) on the 256 px images, with upstream's checkpoint (REFERENCE/lfm_upstream.pth;
   REFERENCE defaults to $LFM_REFERENCE or ../shared/reference) when it is there, else with the
   Top-K model of step 2; ``tsne`` on the held-out split with both trained models. Every figure
   names its checkpoint (folder/file) in its title.

PNG files over 250 KB are stored with a 256-colour palette (Floyd-Steinberg dithered) to keep the
repository small. About 3-5 minutes on 2 CPU cores, most of it training.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_REFERENCE = Path(os.environ.get("LFM_REFERENCE", ROOT.parent / "shared" / "reference"))
MAX_BYTES = 250_000
# The training recipe for both t-SNE models: demo.sh's, shorter (fixed steps, so it is deterministic).
RECIPE = ["--load-size", "0", "--crop-size", "64", "--eval-policy", "center-crop", "--eval-size", "128",
          "--batch-size", "32", "--workers", "1", "--seed", "0", "--progress", "none", "--patience", "100"]


def run(cmd: list[str]) -> None:
    print("$", " ".join(str(c) for c in cmd), flush=True)
    subprocess.run([str(c) for c in cmd], check=True, cwd=ROOT)


def visualize(*args) -> None:
    from lfm.train import visualize as viz

    print("$ python train/visualize.py", " ".join(str(a) for a in args), flush=True)
    if viz.main([str(a) for a in args]) != 0:
        raise SystemExit(f"visualize.py {args[0]} failed")


def store(src: Path, dst: Path) -> None:
    """Copy a PNG into the docs, as a 256-colour palette image when it is larger than MAX_BYTES."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.stat().st_size <= MAX_BYTES:
        shutil.copyfile(src, dst)
    else:
        with Image.open(src) as im:
            rgb = im.convert("RGB")
            palette = rgb.quantize(256, method=Image.Quantize.FASTOCTREE)
            rgb.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(dst, optimize=True)
    print(f"  {dst.relative_to(ROOT)}: {dst.stat().st_size / 1000:.0f} KB")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", type=Path, default=DEFAULT_REFERENCE, help="folder holding lfm_upstream.pth")
    p.add_argument("--out", type=Path, default=ROOT / "docs" / "figures")
    p.add_argument("--work", type=Path, default=None, help="keep the data, checkpoints and raw outputs here")
    p.add_argument("--steps", type=int, default=80, help="training steps of each t-SNE model (default 80)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="lfm-figures-"))
    try:
        py = sys.executable
        data, show = work / "synthetic-128px", work / "synthetic-256px"
        run([py, "train/make_synthetic.py", data, "--n", 600, "--size", 128, "--seed", 0, "--force"])
        run([py, "train/make_synthetic.py", show, "--n", 6, "--size", 256, "--seed", 1, "--val-fraction", 0, "--force"])

        runs = {}
        for pooling in ("topk", "gap"):
            runs[pooling] = work / f"synthetic-{pooling}-{args.steps}-steps"
            if (runs[pooling] / "best.pt").is_file():  # a kept --work folder: training is deterministic, reuse it
                continue
            run([py, "train/train.py", "--data", data, "--out", runs[pooling], "--pooling", pooling,
                 "--max-steps", args.steps, "--steps-per-epoch", max(1, args.steps // 2), "--epochs", 2, *RECIPE])

        upstream = args.reference / "lfm_upstream.pth"
        ckpt = upstream if upstream.is_file() else runs["topk"] / "best.pt"
        print(f"gradcam / topk checkpoint: {ckpt}" + ("" if ckpt == upstream else f" ({upstream} not found)"))
        images = sorted((show / "train").glob("*/*/*.png"))
        visualize("gradcam", ckpt, *images, "-o", work / "gradcam", "--sheet-cols", 3)
        # the Top-K view of the generated image the checkpoint is surest about (the sheet shows them all)
        scores = [json.loads(line) for line in (work / "gradcam" / "scores.jsonl").read_text().splitlines()]
        fake = max((r for r in scores if "1_fake" in r["path"]), key=lambda r: r["score"])["path"]
        visualize("topk", ckpt, fake, "-o", work / "topk")
        visualize("tsne", runs["topk"] / "best.pt", "--gap-checkpoint", runs["gap"] / "best.pt",
                  "--data", data / "val", "-o", work / "tsne" / "tsne.png")

        store(work / "gradcam" / "gradcam.png", args.out / "gradcam.png")
        store(next((work / "topk").glob("000_*.topk.png")), args.out / "topk.png")
        store(work / "tsne" / "tsne.png", args.out / "tsne.png")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"done in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
