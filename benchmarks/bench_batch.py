"""Corpus scoring throughput: runtime/batch.py (Ray Data) with 1 and 2 actors against infer.py,
on the same files, in the same run.

    python benchmarks/bench_batch.py [--model lfm.onnx] [--data DIR] [--images 1000] [--rounds 2]
                                     [--quick] [--output-dir DIR (default: ./bench-results)]

Each command runs as a user runs it: a fresh process (batch.py starts its own local Ray) on one
list of files, the ../shared/reference/cnndetection JPEGs (356 x 356) repeated to --images.
Configurations on this machine's cores (2 here):
  infer.py        ONNX Runtime on all cores, decoding threads ahead of it (its defaults)
  batch, 1 actor  --actors 1 --cpus-per-actor 1 --threads 2 --decode-cpus 1
  batch, 2 actors --actors 2 --cpus-per-actor 0.5 --threads 1 --decode-cpus 1
Throughput is the marginal rate a long corpus sees: each command also scores a short list
(--warm-images), and images/s = (N - n) / (T(N) - T(n)), T being the scoring time the command
reports itself (infer.py: after loading the model; batch.py: after Ray is up, the actors' start
and model loading included), so fixed start-up costs cancel. Its wall time (Ray's start
included) is listed too. The configurations rotate their order every round and the figure is
the median over rounds; the load average is recorded, since this machine is shared.
The records are checked first: batch.py's logits equal infer.py's within 1e-6.
Target (issue 19): 2 actors within 15 % of infer.py's images/s.

Default model: upstream's checkpoint exported to the uint8 INT8 graph at 224 px (the CPU
deployment model, as bench_e2e uses; the fastest model leaves Ray's overhead the least room),
in a temp folder removed at the end. Writes batch.{json,md} to --output-dir (default
./bench-results/; the committed ones in benchmarks/results/ only with --output-dir
benchmarks/results).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import (DEFAULT_OUTPUT_DIR, OUTPUT_DIR_HELP, cpu_text, log, machine, report_refusal, run_main,  # noqa: E402
                    usable_cpus, work_folder, write_report)

REFERENCE = Path(os.environ.get("LFM_REFERENCE", ROOT.parent / "shared" / "reference"))
TARGET_RATIO = 0.85
CONFIGS = {
    "infer.py": [],
    "batch, 1 actor": ["--actors", "1", "--cpus-per-actor", "1", "--threads", "2", "--decode-cpus", "1"],
    "batch, 2 actors": ["--actors", "2", "--cpus-per-actor", "0.5", "--threads", "1", "--decode-cpus", "1"],
}
INFER_TIME = re.compile(r"scored \d+ of (\d+) inputs in ([\d.]+) s")
BATCH_TIME = re.compile(r"this run: (\d+) in ([\d.]+) s")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="uint8 ONNX model (default: upstream's INT8 at 224, exported here)")
    p.add_argument("--data", default=str(REFERENCE / "cnndetection"), help="folder of images to repeat")
    p.add_argument("--images", type=int, default=1000, help="inputs per timed run")
    p.add_argument("--warm-images", type=int, default=64, help="inputs of the short run subtracted")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--quick", action="store_true", help="400 images, one round")
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help=OUTPUT_DIR_HELP)
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.rounds = 400, 1
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        import ray  # noqa: F401  (present: the [cluster] extra)
    except ImportError:
        print("error: bench_batch.py needs the [cluster] extra: pip install 'lfm-deploy[cluster]'", file=sys.stderr)
        return 2
    from lfm.runtime.inputs import image_files

    files = image_files(args.data)
    if not files:
        print(f"error: no images in {args.data} (set --data or LFM_REFERENCE)", file=sys.stderr)
        return 2
    problem = report_refusal(args.output_dir, ["batch.json", "batch.md"], [("the --model", args.model), *files])
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    with work_folder(None, "lfm-bench-batch-") as work:
        return measure(args, files, work)


def measure(args, files: list[str], work: Path) -> int:
    model = args.model or export_int8(work)
    lists = {n: work / f"list{n}.txt" for n in (args.warm_images, args.images)}
    for n, path in lists.items():
        path.write_text("\n".join((files * (n // len(files) + 1))[:n]) + "\n")
    log(f"{len(files)} files from {args.data}, {args.images} inputs per run; model {model}")

    # Same answers first: batch.py's records must equal infer.py's before their speeds are compared.
    for name in CONFIGS:
        run_config(name, model, lists[args.warm_images], work, args.batch_size)
    max_diff = compare_records(work, list(CONFIGS))
    log(f"records agree: max |logit difference| {max_diff:.2e}")

    times: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    names = list(CONFIGS)
    for r in range(args.rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            short = run_config(name, model, lists[args.warm_images], work, args.batch_size)
            long = run_config(name, model, lists[args.images], work, args.batch_size)
            rate = (args.images - args.warm_images) / max(long["seconds"] - short["seconds"], 1e-9)
            times[name].append({"images_per_s": rate, "long": long, "short": short})
            log(f"round {r + 1}/{args.rounds} {name}: {rate:.1f} images/s (scoring {long['seconds']:.1f} s, "
                f"wall {long['wall_s']:.1f} s, load {long['load_before']:.1f}->{long['load_after']:.1f})")

    results = []
    for name in names:
        rates = [t["images_per_s"] for t in times[name]]
        walls = [t["long"]["wall_s"] for t in times[name]]
        results.append({"config": name, "flags": CONFIGS[name], "images_per_s": round(float(np.median(rates)), 1),
                        "rounds": [round(x, 1) for x in rates], "wall_s_median": round(float(np.median(walls)), 1)})
    base = results[0]["images_per_s"]
    for row in results:
        row["vs_infer"] = round(row["images_per_s"] / base, 3) if base else None
    two = next(r for r in results if r["config"] == "batch, 2 actors")
    status = "PASS" if two["vs_infer"] and two["vs_infer"] >= TARGET_RATIO else "FAIL"
    import ray

    doc = {"machine": machine(usable_cpus(), modules=("numpy", "onnxruntime", "ray", "pyarrow")),
           "settings": {"model": Path(model).name, "data": args.data, "files": len(files), "images": args.images,
                        "warm_images": args.warm_images, "rounds": args.rounds, "batch_size": args.batch_size,
                        "ray": ray.__version__},
           "records_max_abs_logit_diff": max_diff, "results": results,
           "target": {"what": "2 actors within 15 % of infer.py", "ratio": two["vs_infer"], "status": status}}
    write_report(args.output_dir, "batch", doc, markdown(doc))
    return 0


def run_config(name: str, model: str, listing: Path, work: Path, batch_size: int) -> dict:
    """One command on one list, as a user runs it; its own scoring time and the wall time."""
    out = work / f"out-{name.replace(' ', '').replace(',', '-')}"
    if name == "infer.py":
        cmd = [sys.executable, str(ROOT / "runtime" / "infer.py"), "--model", model, f"@{listing}",
               "--output", str(out) + ".jsonl", "--batch-size", str(batch_size), "--progress", "off"]
    else:
        subprocess.run(["rm", "-rf", str(out)], check=True)
        cmd = [sys.executable, str(ROOT / "runtime" / "batch.py"), model, f"@{listing}", "--output", str(out),
               "--batch-size", str(batch_size), "--progress", "off", *CONFIGS[name]]
    load_before = os.getloadavg()[0]
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - t
    found = (INFER_TIME if name == "infer.py" else BATCH_TIME).search(r.stderr)
    if r.returncode != 0 or not found:
        raise RuntimeError(f"{name} failed ({r.returncode}): {r.stderr.strip().splitlines()[-1:]}")
    return {"seconds": float(found.group(2)), "wall_s": wall, "load_before": load_before,
            "load_after": os.getloadavg()[0]}


def compare_records(work: Path, names: list[str]) -> float:
    import pyarrow.parquet as pq

    want = [json.loads(line) for line in (work / "out-infer.py.jsonl").read_text().splitlines()]
    worst = 0.0
    for name in names[1:]:
        folder = work / f"out-{name.replace(' ', '').replace(',', '-')}"
        got = [row for shard in sorted(folder.glob("shard-*.parquet")) for row in pq.read_table(shard).to_pylist()]
        assert [g["path"] for g in got] == [w["path"] for w in want], f"{name}: other paths than infer.py's"
        assert all(g["error"] is None and g["label"] == w["label"] for g, w in zip(got, want)), name
        worst = max(worst, max(abs(g["logit"] - w["logit"]) for g, w in zip(got, want)))
    if worst > 1e-6:
        raise RuntimeError(f"batch.py's logits differ from infer.py's by {worst:.2e} (> 1e-6)")
    return worst


def export_int8(work: Path) -> str:
    model = str(work / "upstream_int8_224.onnx")
    cmd = [sys.executable, str(ROOT / "export" / "to_onnx.py"), str(REFERENCE / "lfm_upstream.pth"), "-o", model,
           "--input", "uint8", "--size", "224", "--int8", "--calib", str(REFERENCE / "cnndetection")]
    log("exporting: " + " ".join(cmd))
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return model


def markdown(doc: dict) -> str:
    s, m = doc["settings"], doc["machine"]
    lines = ["# Corpus scoring on Ray Data: batch.py against infer.py", "",
             "`python benchmarks/bench_batch.py`", "",
             f"{s['images']} inputs per run ({s['files']} files from {s['data']}, repeated), model {s['model']}, "
             f"batch {s['batch_size']}, Ray {s['ray']}, on {cpu_text(m)}, {m['usable_cpus']} usable cores. Images/s is "
             f"the marginal rate, ({s['images']} - {s['warm_images']}) / (T({s['images']}) - T({s['warm_images']})) "
             f"of each command's own scoring time, median of {s['rounds']} round(s) in rotated order; wall time "
             "includes the process start and, for batch.py, starting Ray.", "",
             "| configuration | images/s | vs infer.py | rounds | wall s |", "|---|---:|---:|---|---:|"]
    for r in doc["results"]:
        flags = " ".join(r["flags"]) or "(defaults)"
        lines.append(f"| {r['config']} `{flags}` | {r['images_per_s']:.1f} | {r['vs_infer']:.2f}x | "
                     f"{', '.join(f'{x:.1f}' for x in r['rounds'])} | {r['wall_s_median']:.1f} |")
    t = doc["target"]
    lines += ["", f"Records: batch.py's logits equal infer.py's (max |difference| {doc['records_max_abs_logit_diff']:.1e}).",
              "", f"Target: **{t['status']}** {t['what']}: {t['ratio']:.2f}x.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    run_main(main)
