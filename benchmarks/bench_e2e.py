"""End-to-end CPU throughput: image files in, scores out, decoding included.

    python benchmarks/bench_e2e.py [--model lfm.int8.onnx] [--data DIR] [--repeat 4] [--quick]

The runtime's Detector (decoding in worker threads ahead of ONNX Runtime, batches of
--batch-size) against the loop a user would write first, in the same run: for each file, PIL
open -> RGB -> bilinear resize -> one session.run. Both score the same files (the
../shared/reference/cnndetection JPEGs by default, 356x356, listed --repeat times) with the
same INT8 model at 224 px, and must give the same logits. Rounds alternate the two, so a
drift of the shared machine hits both; the figure is the median over rounds.
Target (issue 5): >= 150 images/s on this 2-core machine.

Default model: upstream's checkpoint exported to the uint8 INT8 graph at 224 px, calibrated on
the reference images (in a temp folder, removed at the end, also on an error or Ctrl-C).
Writes bench_e2e.{json,md} to --output-dir (default ./bench-results/; the committed ones in
benchmarks/results/ only with --output-dir benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import DEFAULT_OUTPUT_DIR, OUTPUT_DIR_HELP, work_folder  # noqa: E402

REFERENCE = Path(os.environ.get("LFM_REFERENCE", ROOT.parent / "shared" / "reference"))
TARGET_IPS = 150.0


def plain_loop(model: str, files: list[str], size: int, threads: int):
    """What a user writes first: decode, resize and run one image at a time."""
    import onnxruntime as ort
    from PIL import Image

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name

    def run():
        out = []
        for f in files:
            img = Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)
            out.append(float(sess.run(["logit"], {name: np.asarray(img)[None]})[0][0]))
        return np.array(out)

    return run


def detector_loop(model: str, files: list[str], batch_size: int, threads: int):
    from lfm.runtime.detector import Detector

    det = Detector(model=model, batch_size=batch_size, threads=threads, providers=["cpu"])

    def run():
        recs = det.predict(files)
        bad = [r for r in recs if not r.ok]
        if bad:
            raise RuntimeError(f"{len(bad)} inputs failed, first: {bad[0].path}: {bad[0].error}")
        return np.array([r.logit for r in recs])

    return run, det


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="uint8 ONNX model (default: upstream's INT8 at 224, exported here)")
    p.add_argument("--data", default=str(REFERENCE / "cnndetection"))
    p.add_argument("--repeat", type=int, default=4, help="list the files this many times per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    p.add_argument("--quick", action="store_true", help="2 rounds, files listed once")
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help=OUTPUT_DIR_HELP)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.repeat = 2, 1

    from lfm.runtime.preprocess import is_image_path

    data = Path(args.data)
    files = sorted(str(f) for f in data.iterdir() if is_image_path(f)) if data.is_dir() else []
    if not files:
        print(f"error: no images in {data}", file=sys.stderr)
        return 2
    with work_folder(None, "lfm-e2e-") as work:
        return measure(args, files, work)


def measure(args, files: list[str], work: Path) -> int:
    model = args.model
    if model is None:
        model = str(work / "upstream_int8_224.onnx")
        cmd = [sys.executable, str(ROOT / "export" / "to_onnx.py"), str(REFERENCE / "lfm_upstream.pth"), "-o", model,
               "--input", "uint8", "--size", "224", "--int8", "--calib", str(REFERENCE / "cnndetection")]
        print("exporting:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    import onnx

    props = {q.key: q.value for q in onnx.load(model, load_external_data=False).metadata_props}
    spec = json.loads(props["lfm.spec"])
    size = int(spec["size"])
    listed = files * args.repeat
    run_plain = plain_loop(model, listed, size, args.threads)
    run_det, det = detector_loop(model, listed, args.batch_size, args.threads)
    # Same answers first: the two loops must agree before their speeds are compared.
    a, b = run_plain(), run_det()
    max_diff = float(np.max(np.abs(a - b)))
    times = {"plain": [], "detector": []}
    for r in range(args.rounds):
        for name, fn in (("plain", run_plain), ("detector", run_det)) if r % 2 == 0 else (("detector", run_det), ("plain", run_plain)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
        print(f"round {r + 1}/{args.rounds}: plain {len(listed) / times['plain'][-1]:.1f} img/s, "
              f"detector {len(listed) / times['detector'][-1]:.1f} img/s", flush=True)
    det.close()
    ips = {k: len(listed) / float(np.median(v)) for k, v in times.items()}
    ratio = ips["detector"] / ips["plain"]
    status = "PASS" if ips["detector"] >= TARGET_IPS else "FAIL"
    import onnxruntime

    doc = {"benchmark": "bench_e2e", "command": "python benchmarks/bench_e2e.py" + (" --quick" if args.quick else ""),
           "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads,
                       "python": platform.python_version(), "onnxruntime": onnxruntime.__version__},
           "model": "upstream checkpoint, INT8 QDQ, uint8 input" if args.model is None else model,
           "precision": props.get("lfm.precision"), "size": size, "policy": spec.get("policy"),
           "files": len(files), "images_per_round": len(listed), "rounds": args.rounds, "batch_size": args.batch_size,
           "images_per_s": {k: round(v, 1) for k, v in ips.items()}, "detector_vs_plain": round(ratio, 2),
           "max_abs_logit_diff": max_diff, "target": f">= {TARGET_IPS:g} images/s end to end", "status": status}
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_e2e.json").write_text(json.dumps(doc, indent=1) + "\n")
    md = (f"# End-to-end CPU throughput\n\n`{doc['command']}`\n\n{len(files)} files from {args.data} x {args.repeat} per round, "
          f"{doc['precision']} model at {size} px ({doc['policy']}), {args.threads} threads, median of {args.rounds} rounds.\n\n"
          "| loop | images/s |\n|---|---:|\n"
          f"| plain: PIL then session.run, one image at a time | {ips['plain']:.1f} |\n"
          f"| runtime Detector (threaded decoding, batch {args.batch_size}) | {ips['detector']:.1f} |\n\n"
          f"Detector / plain: {ratio:.2f}x; same logits (max |difference| {max_diff:.2e}).\n\n"
          f"Target: **{status}** {doc['target']}: {ips['detector']:.1f}.\n")
    (out / "bench_e2e.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
