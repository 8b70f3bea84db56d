"""The Detector's decode stage on this machine's CPUs, and the pipeline's own ceiling (issue 17, item 5).

    python benchmarks/bench_decode.py [--images N] [--workers 1,2] [--rounds 3] [--size 256] [--output-dir DIR]

For each decoding mode (threads, processes) and worker count it times, side by side (rounds
interleaved, so a shared machine's drift spreads over all of them):
- decode: ``Detector._decoded`` alone, files to uint8 arrays in input order (images/s);
- pipeline: ``Detector.predict_iter`` with a no-op runner (a Runner returning zero logits), i.e.
  everything but the model: decode, batching, feeding, records. Its rate as a fraction of the
  decode stage's own rate is the pipeline's ceiling (the issue's target: >= 90 %).
Inputs: the reference JPEGs in ../shared/reference/cnndetection listed repeatedly, or generated
JPEGs where that folder is absent. Reports: OUT_DIR/bench_decode.{json,md}.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DEFAULT_OUTPUT_DIR, OUTPUT_DIR_HELP, log, machine, run_main, summarize,  # noqa: E402
                    time_interleaved, work_folder, write_report)

REFERENCE_JPEGS = Path(__file__).resolve().parents[2] / "shared" / "reference" / "cnndetection"


def noop_runner(size: int):
    from lfm.runtime.backends.base import Runner
    from lfm.runtime.spec import ModelSpec

    class NoopRunner(Runner):
        """No model: zero logits, so the pipeline's own cost is all that is timed."""

        name = "no-op"

        def __init__(self):
            super().__init__()
            self.spec = ModelSpec(input="uint8", layout="NHWC", size=size)

        def infer_impl(self, feed):
            return {"logit": np.zeros(len(next(iter(feed.values()))), np.float32)}

    return NoopRunner()


def generated_jpegs(folder: Path, n: int = 64, side: int | None = None) -> list[Path]:
    """Smooth random JPEGs of 256-356 px a side, like the reference set (or ``side`` px square)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        h, w = rng.integers(256, 357, 2) if side is None else (side, side)
        small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((int(w), int(h)), Image.BILINEAR)
        paths.append(folder / f"gen{i}.jpg")
        img.save(paths[-1], quality=90)
    return paths


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--images", type=int, default=400, help="files per pass (the JPEGs listed repeatedly)")
    p.add_argument("--workers", default="1,2", help="worker counts to time, comma-separated")
    p.add_argument("--modes", default="threads,processes",
                   help="decoding modes to time (gpu: nvJPEG, needs torch + CUDA + torchvision)")
    p.add_argument("--generated-side", type=int, default=None,
                   help="time generated square JPEGs of this side (e.g. 1024) instead of the reference JPEGs")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each times every case twice)")
    p.add_argument("--size", type=int, default=256, help="the spec's resize side")
    p.add_argument("--batch-size", type=int, default=16, help="the pipeline's batch size")
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help=OUTPUT_DIR_HELP)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from lfm.runtime.detector import Detector

    workers = [int(w) for w in args.workers.split(",")]
    modes = args.modes.split(",")
    with work_folder(None, "bench_decode_") as tmp:
        files = sorted(REFERENCE_JPEGS.glob("*.jpg")) if REFERENCE_JPEGS.is_dir() and not args.generated_side else []
        source = str(REFERENCE_JPEGS) if files else (f"generated {args.generated_side} px JPEGs" if args.generated_side
                                                     else "generated (reference JPEGs absent)")
        files = files or generated_jpegs(tmp, side=args.generated_side)
        paths = [str(files[i % len(files)]) for i in range(args.images)]
        log(f"{len(paths)} files per pass from {source} ({len(files)} distinct)")
        detectors = {(m, w): Detector(noop_runner(args.size), workers=w, decode=m, batch_size=args.batch_size)
                     for m in modes for w in workers}
        try:
            fns = {}
            for (m, w), det in detectors.items():
                fns[f"decode {m} x{w}"] = lambda det=det: _count(det._decoded(paths))
                fns[f"pipeline {m} x{w}"] = lambda det=det: _count(det.predict_iter(paths))
            for fn in fns.values():  # warm-up: starts the worker processes, fills the page cache
                fn()
            log(f"timing {len(fns)} cases x {args.rounds} rounds")
            times = time_interleaved(fns, rounds=args.rounds, block=2, on_round=lambda r: log(f"round {r}"))
        finally:
            for det in detectors.values():
                det.close()
    rates = {name: summarize(t, len(paths)) for name, t in times.items()}
    doc = {"machine": machine(threads=max(workers), modules=("numpy", "PIL")), "source": source,
           "images_per_pass": len(paths), "size": args.size, "batch_size": args.batch_size,
           "rates": rates, "ratios": _ratios(rates, modes, workers)}
    write_report(args.output_dir, "bench_decode", doc, _markdown(doc, modes, workers))
    return 0


def _count(records) -> int:
    return sum(1 for _ in records)


def _ratios(rates, modes, workers) -> dict:
    ips = {name: r["images_per_s"] for name, r in rates.items()}
    out = {}
    for m in modes:
        for w in workers:
            out[f"pipeline / decode, {m} x{w}"] = round(ips[f"pipeline {m} x{w}"] / ips[f"decode {m} x{w}"], 3)
            if w != workers[0]:
                out[f"decode {m}: x{w} / x{workers[0]}"] = round(ips[f"decode {m} x{w}"] / ips[f"decode {m} x{workers[0]}"], 3)
    return out


def _markdown(doc, modes, workers) -> str:
    r = doc["rates"]
    lines = [f"# Decode stage and pipeline ceiling ({doc['machine']['cpu']}, {doc['machine']['usable_cpus']} usable CPUs)",
             "", f"{doc['images_per_pass']} files per pass from {doc['source']}; resize to {doc['size']}, "
             f"batch {doc['batch_size']}, no-op runner; median of {r[next(iter(r))]['runs']} passes.", "",
             "| mode | workers | decode images/s | pipeline (no-op engine) images/s | pipeline / decode |",
             "|---|---|---|---|---|"]
    for m in modes:
        for w in workers:
            d, p = r[f"decode {m} x{w}"]["images_per_s"], r[f"pipeline {m} x{w}"]["images_per_s"]
            lines.append(f"| {m} | {w} | {d:.0f} | {p:.0f} | {p / d:.2f} |")
    lines += ["", "Scaling: " + "; ".join(f"{k} = {v:.2f}" for k, v in doc["ratios"].items() if ": x" in k), ""]
    return "\n".join(lines)


if __name__ == "__main__":
    run_main(main)
