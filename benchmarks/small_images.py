"""Which preprocessing policy calls the fewest small real images fake, at equal detection of small generated ones.

    python benchmarks/small_images.py --model lfm.onnx [--data DIR] [--work DIR] [-o benchmarks/results/small_images.json]

Small images: the 102 labelled reference images (46 real, 56 generated) made small by
benchmarks/reference_sets.py small (--data: a folder it wrote; default: made in the work folder):
each shrunk whole to a longer side of 112 and of 160 px (Pillow LANCZOS) and cut to its central
112 and 160 px square, lossless PNGs: 4 x 102 images, each way and side a subset.

Each policy scores them through train/evaluate.py (the runtime's Detector): resize to 256 (the
model's default, enlarging every one of them 1.6-2.3x), none (native size), center-crop 96,
tiles 64 (max and mean of the tiles' logits). A policy's threshold is then chosen on the
generated images for each target true-positive rate (the lowest logit that calls that share of
them fake, scikit-learn's roc_curve), and its false-positive rate read on the real ones at that
threshold: the policy with the lower FPR at the same TPR separates better. Also: FPR and TPR at
the model's own threshold, AUC, AP, per subset and overall.

The default policy and native size also run with --perturb resize:1.5,2 and a JPEG sweep (the
figures the `upscaled` and `low-jpeg-quality` flags are set from): real images called fake and
decisions changed by each.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import the installed package, not benchmarks/ siblings
    sys.path.pop(0)

import numpy as np  # noqa: E402

from lfm.benchmarks.reference_sets import SMALL_SIDES, make_small_set  # noqa: E402
from lfm.train.metrics import average_precision, roc_auc, roc_curve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
POLICIES = (("resize", 256, "max"), ("none", 256, "max"), ("center-crop", 96, "max"), ("tiles", 64, "max"),
            ("tiles", 64, "mean"))
PERTURBED = ("resize", "none")  # the policies also scored degraded
PERTURB = ["--perturb", "resize:1.5,2", "--perturb", "jpeg:95,90,85,80,75,70,60,50"]
TARGET_TPRS = (0.1, 0.25, 0.5)


def policy_name(policy: str, size: int, reduce: str) -> str:
    return {"none": "none", "tiles": f"tiles {size} {reduce}"}.get(policy, f"{policy} {size}")


def evaluate(model: str, data: Path, policy, size: int, reduce: str, out: Path, perturb: bool) -> dict:
    cmd = [sys.executable, str(ROOT / "train" / "evaluate.py"), model, "--data", str(data), "--policy", policy,
           "--size", str(size), "--tile-reduce", reduce, "-o", str(out), *(PERTURB if perturb else [])]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def at_matched_tpr(y: np.ndarray, logit: np.ndarray, target: float) -> dict:
    """The operating point (a logit, roc_curve's: a logit equal to it counts as positive) that calls
    at least ``target`` of the generated images fake, and the rates it gives. A policy comparison,
    not a threshold to deploy: deployed thresholds follow spec.is_fake (strictly above)."""
    fpr, tpr, thresholds = roc_curve(y, logit)
    i = int(np.argmax(tpr >= target))
    return {"threshold_logit": float(thresholds[i]), "tpr": float(tpr[i]), "fpr": float(fpr[i]),
            "false_positives": int(round(fpr[i] * (y == 0).sum()))}


def separation(images: list[dict], condition: str = "clean") -> dict:
    """The figures of one set of images (clean logits): at the model's threshold (logit 0) and at
    each target TPR."""
    kept = [im for im in images if im["logit"].get(condition) is not None]
    y = np.array([im["label"] for im in kept])
    logit = np.array([im["logit"][condition] for im in kept])
    return {"n_real": int((y == 0).sum()), "n_fake": int((y == 1).sum()), "failed": len(images) - len(kept),
            "auc": roc_auc(y, logit), "ap": average_precision(y, logit),
            "at_model_threshold": {"fpr": float((logit[y == 0] > 0).mean()), "tpr": float((logit[y == 1] > 0).mean())},
            "matched": {str(t): at_matched_tpr(y, logit, t) for t in TARGET_TPRS}}


def degradation_figures(report: dict) -> dict:
    """Per condition, overall and per subset: real images called fake, decisions changed."""
    out = {}
    for name, c in report["conditions"].items():
        out[name] = {where: {"fpr": 1 - m["real_acc"], "tpr": m["fake_acc"], "changed": m["changed"],
                             "changed_share": m["changed_share"]}
                     for where, m in [("overall", c["overall"]), *c["subsets"].items()]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the model to measure (e.g. upstream's checkpoint exported to ONNX)")
    p.add_argument("--data", type=Path, help="a folder reference_sets.py small wrote (default: made in --work)")
    p.add_argument("--work", type=Path, required=True, help="folder for the small images and evaluate's reports")
    p.add_argument("-o", "--output", type=Path, default=ROOT / "benchmarks" / "results" / "small_images.json")
    args = p.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.data or make_small_set(args.work / "small", SMALL_SIDES)
    rows = []
    for policy, size, reduce in POLICIES:
        name = policy_name(policy, size, reduce)
        report = evaluate(args.model, data, policy, size, reduce, args.work / f"{name.replace(' ', '_')}.json",
                          perturb=policy in PERTURBED)
        by_subset = {}
        for im in report["images"]:
            by_subset.setdefault(im["subset"], []).append(im)
        row = {"policy": name, "overall": separation(report["images"]),
               "subsets": {s: separation(ims) for s, ims in sorted(by_subset.items())}}
        if policy in PERTURBED:
            row["degraded"] = degradation_figures(report)
        rows.append(row)
        o = row["overall"]
        print(f"{name:16s} AUC {o['auc']:.3f}  at the model's threshold FPR {o['at_model_threshold']['fpr']:.3f} "
              f"TPR {o['at_model_threshold']['tpr']:.3f}  " + "  ".join(
                  f"FPR@TPR{t} {o['matched'][str(t)]['fpr']:.3f}" for t in TARGET_TPRS))
    doc = {"benchmark": "small_images", "command": ["benchmarks/small_images.py", *(sys.argv[1:] if argv is None else argv)],
           "model": os.path.abspath(args.model), "data": str(data),
           "made_by": "benchmarks/reference_sets.py small (down-S: whole image, longer side S, LANCZOS; crop-S: "
                      "central S x S at native resolution; PNG)",
           "target_tprs": list(TARGET_TPRS), "policies": rows}
    args.output.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
