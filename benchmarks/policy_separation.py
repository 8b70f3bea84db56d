"""Which preprocessing policy separates real from generated images better, on labelled images.

    python benchmarks/policy_separation.py [--model lfm.onnx] [--data DIR] [-o benchmarks/results/policy_separation.json]

Scores every labelled image under each policy (resize 256 as upstream's eval, center-crop,
native resolution, tiles with max and mean reduction at two tile sides) through the runtime's
Detector, and reports accuracy, AP, real and fake accuracy per policy. Default data: the 102
cnndetection images of ../shared/reference (labels in labels_and_upstream_logits.tsv); default
model: upstream's checkpoint exported to a uint8 fp32 ONNX graph in a temp folder.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("LFM_REFERENCE", ROOT.parent / "shared" / "reference"))
POLICIES = [("resize", 256, "max"), ("center-crop", 256, "max"), ("none", 256, "max"),
            ("tiles", 256, "max"), ("tiles", 256, "mean"), ("tiles", 128, "max"), ("tiles", 128, "mean")]


def labelled(data: Path) -> tuple[list[str], np.ndarray]:
    tsv = data / "labels_and_upstream_logits.tsv"
    if tsv.is_file():
        rows = [l.rstrip("\n").split("\t") for l in open(tsv) if l.strip() and not l.startswith("#")]
        return [str(data / r[0]) for r in rows], np.array([int(r[1]) for r in rows])
    from lfm.train.data import find_samples  # ForenSynths layout: 0_real / 1_fake folders

    samples = find_samples(data, check=False)
    return [s.path for s in samples], np.array([s.label for s in samples])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="ONNX model (default: upstream's checkpoint, exported here)")
    p.add_argument("--data", default=str(REFERENCE / "cnndetection"))
    p.add_argument("-o", "--output", default=str(ROOT / "benchmarks" / "results" / "policy_separation.json"))
    args = p.parse_args(argv)

    from lfm.runtime.backends import make_runner
    from lfm.runtime.detector import Detector
    from lfm.train.metrics import average_precision

    files, y = labelled(Path(args.data))
    if not files:
        print(f"error: no labelled images in {args.data}", file=sys.stderr)
        return 2
    model = args.model
    if model is None:
        model = os.path.join(tempfile.mkdtemp(prefix="lfm-policy-"), "upstream_uint8.onnx")
        subprocess.run([sys.executable, str(ROOT / "export" / "to_onnx.py"), str(REFERENCE / "lfm_upstream.pth"),
                        "-o", model, "--input", "uint8"], check=True, stdout=subprocess.DEVNULL)
    rows = []
    print(f"{len(files)} images ({int(y.sum())} generated) from {args.data}; model {model}")
    for policy, size, reduce in POLICIES:
        t = time.perf_counter()
        with Detector(make_runner(model, backend="onnxruntime"), policy=policy, size=size, tile_reduce=reduce) as det:
            records = det.predict(files)
        failed = [r for r in records if not r.ok]
        ok = np.array([r.ok for r in records])
        logit = np.array([r.logit for r in records if r.ok])
        yy, pred = y[ok], logit > 0
        row = {"policy": policy, "size": size, "tile_reduce": reduce if policy == "tiles" else None,
               "n": int(ok.sum()), "failed": len(failed),
               "accuracy": float((pred == yy).mean()), "ap": float(average_precision(yy, logit)),
               "real_accuracy": float((~pred[yy == 0]).mean()), "fake_accuracy": float(pred[yy == 1].mean()),
               "seconds": round(time.perf_counter() - t, 2)}
        rows.append(row)
        name = f"{policy} {size}" + (f" {reduce}" if policy == "tiles" else "")
        print(f"{name:18s} acc {100 * row['accuracy']:5.1f}  AP {100 * row['ap']:5.1f}  "
              f"real {100 * row['real_accuracy']:5.1f}  fake {100 * row['fake_accuracy']:5.1f}  ({row['failed']} failed)")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"benchmark": "policy_separation", "data": args.data, "n": len(files),
                               "generated": int(y.sum()), "model": "upstream checkpoint, uint8 fp32 ONNX" if args.model is None else model,
                               "results": rows}, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
