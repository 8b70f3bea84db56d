"""The reference images as labelled folders for train/evaluate.py, and small images made from them.

    python benchmarks/reference_sets.py cnndetection OUT              # the 102 reference images, as symlinks
    python benchmarks/reference_sets.py photos OUT                    # the 8 reference PNGs, all real
    python benchmarks/reference_sets.py small OUT [--sides 112,160]   # small images made from them

cnndetection: OUT/<subset>/{0_real,1_fake}/NAME, a symlink to ../shared/reference/cnndetection/NAME.
The label is the one in labels_and_upstream_logits.tsv (1 = generated), not the file name's: five
files of the deepfake subset are named *_real.jpg and labelled 1. The subset is the name's second
field (0_cyclegan_real.jpg: cyclegan; example_fake.png: example).

photos: OUT/{photo,upsampled}/0_real/NAME, symlinks to ../shared/reference/images/*_photo.png (four
real photographs, 256 px) and *_upsampled.png (the same photographs enlarged: real too, but carrying
the up-sampling trace NPR reads). There is no generated image among them: only their real accuracy
(1 - the false-positive rate) means anything.

small: each of the cnndetection images made small two ways for each side S of --sides, written as PNG
(lossless: no JPEG trace added), in OUT/<way>-S/{0_real,1_fake}/NAME.png, so that each way
and side is one subset of evaluate.py's report:
  down-S   the whole image shrunk so that its longer side is S (Pillow LANCZOS, antialiased), as a
           thumbnail or a messaging app's copy is made
  crop-S   its central S x S square at native resolution, as a detail cut out of a larger picture
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the installed package, not benchmarks/ siblings
    sys.path.pop(0)

from PIL import Image  # noqa: E402

from lfm.runtime.perturb import center_square, rescaled_size  # noqa: E402
from lfm.runtime.preprocess import open_image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("LFM_REFERENCE", ROOT.parent / "shared" / "reference"))
LABEL_DIRS = ("0_real", "1_fake")
SMALL_SIDES = (112, 160)


def cnndetection_labels(reference: Path = REFERENCE) -> list[tuple[Path, int, str]]:
    """(path, label 1 = generated, subset) of each labelled reference image, in the TSV's order."""
    folder = reference / "cnndetection"
    rows = [line.rstrip("\n").split("\t") for line in open(folder / "labels_and_upstream_logits.tsv")
            if line.strip() and not line.startswith("#")]
    return [(folder / name, int(label), subset_of(name)) for name, label, *_ in rows]


def subset_of(name: str) -> str:
    parts = Path(name).stem.split("_")
    return "example" if parts[0] == "example" else parts[1]


def lay_out_cnndetection(out: Path, reference: Path = REFERENCE) -> Path:
    """OUT/<subset>/{0_real,1_fake}/NAME symlinks to the labelled reference images; OUT."""
    for path, label, subset in cnndetection_labels(reference):
        folder = out / subset / LABEL_DIRS[label]
        folder.mkdir(parents=True, exist_ok=True)
        os.symlink(path, folder / path.name)
    return out


def reference_pngs(reference: Path = REFERENCE) -> list[Path]:
    """The reference PNGs (images/: photographs and their enlarged copies), by the runtime's one listing."""
    from lfm.runtime.inputs import image_files

    return [Path(p) for p in image_files(str(reference / "images"))]


def lay_out_photos(out: Path, reference: Path = REFERENCE) -> Path:
    """OUT/{photo,upsampled}/0_real/NAME symlinks to the reference PNGs (every one real); OUT."""
    for path in reference_pngs(reference):
        subset = "upsampled" if path.stem.endswith("_upsampled") else "photo"
        folder = out / subset / LABEL_DIRS[0]
        folder.mkdir(parents=True, exist_ok=True)
        os.symlink(path, folder / path.name)
    return out


def shrunk(img: Image.Image, side: int) -> Image.Image:
    """The whole image, its longer side ``side`` (LANCZOS)."""
    scale = side / max(img.size)
    return img.resize(rescaled_size(img.width, img.height, scale), Image.LANCZOS)


def make_small_set(out: Path, sides=SMALL_SIDES, reference: Path = REFERENCE) -> Path:
    """OUT/{down,crop}-S/{0_real,1_fake}/NAME.png for each labelled reference image; OUT."""
    for path, label, _ in cnndetection_labels(reference):
        img = open_image(path)  # as the runtime decodes it
        for side in sides:
            for way, small in (("down", shrunk(img, side)), ("crop", center_square(img, side))):
                folder = out / f"{way}-{side}" / LABEL_DIRS[label]
                folder.mkdir(parents=True, exist_ok=True)
                small.save(folder / f"{path.stem}.png")
    return out


def sides(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated sides in pixels, got {text!r}") from None
    if not values or min(values) < 48:
        raise argparse.ArgumentTypeError(f"sides must be at least 48 px (LFM's smallest input), got {text!r}")
    return values


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("set", choices=("cnndetection", "photos", "small"))
    p.add_argument("out", help="folder to create (must not exist)")
    p.add_argument("--sides", type=sides, default=list(SMALL_SIDES), help="small: the sides S, comma-separated")
    p.add_argument("--reference", type=Path, default=REFERENCE, help="the reference folder (default: %(default)s)")
    args = p.parse_args(argv)
    out = Path(args.out)
    if out.exists():
        p.error(f"{out}: exists; give a new folder")
    if not (args.reference / "cnndetection" / "labels_and_upstream_logits.tsv").is_file():
        p.error(f"{args.reference}: no cnndetection/labels_and_upstream_logits.tsv (set LFM_REFERENCE or --reference)")
    if args.set == "cnndetection":
        lay_out_cnndetection(out, args.reference)
    elif args.set == "photos":
        lay_out_photos(out, args.reference)
    else:
        make_small_set(out, args.sides, args.reference)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
