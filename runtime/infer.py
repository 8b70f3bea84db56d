"""Score images with LFM: one record per input path, real or generated.

    python runtime/infer.py --model lfm.onnx PATHS... [--format jsonl|csv|table] [--output FILE]
    python runtime/infer.py --checkpoint ckpt.pt PATHS...        (PyTorch, the reference backend)
    python runtime/infer.py --engine lfm.plan PATHS...           (TensorRT engine from export/to_trt.py)

PATHS are files, directories (image files inside, recursively) or globs ("photos/**/*.jpg").
Each record holds path, logit, score (sigmoid of the logit), label ("fake" when the score is
above the threshold, else "real") and error (null on success). Every input appears exactly
once; an unreadable file gets an error record in its place. Exit status: 0 when every input
was scored, 1 when any failed, 2 when the model itself could not be loaded.
"""
from __future__ import annotations

import argparse
import sys
import time

if __package__ in (None, ""):  # run as a script: runtime/ is sys.path[0]; import the installed package
    sys.path.pop(0)

from lfm.runtime.detector import Detector, default_workers  # noqa: E402
from lfm.runtime.inputs import expand_paths  # noqa: E402
from lfm.runtime.preprocess import DEFAULT_MAX_PIXELS  # noqa: E402
from lfm.runtime.records import FORMATS, RecordWriter, in_input_order  # noqa: E402
from lfm.runtime.runners import BACKENDS, OPENVINO_PRECISIONS, BackendError  # noqa: E402
from lfm.runtime.spec import POLICIES  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="infer.py", description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", metavar="ONNX", help="exported ONNX model (ONNX Runtime; the embedded default)")
    model.add_argument("--checkpoint", metavar="CKPT", help="PyTorch checkpoint, ours or upstream's (needs the [train] extra)")
    model.add_argument("--engine", metavar="PLAN", help="TensorRT engine from export/to_trt.py, with its PLAN.json "
                       "sidecar (needs an NVIDIA GPU and the [tensorrt] extra)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files, directories or glob patterns")
    p.add_argument("--format", choices=FORMATS, default="jsonl", help="output format (default: jsonl)")
    p.add_argument("--output", "-o", metavar="FILE", help="write records here instead of standard output")
    p.add_argument("--threshold", type=float, default=None, help="score above which an image is 'fake' (default: the model's, 0.5)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--policy", choices=POLICIES, default=None,
                   help="resize (bilinear to SIZE, upstream's eval; the model's default), center-crop, none (native "
                        "size), or tiles (native resolution, SIZE x SIZE tiles, one score per image)")
    p.add_argument("--size", type=int, default=None, help="side for resize / center-crop / tiles (default: the model's, 256)")
    p.add_argument("--tile-reduce", choices=("max", "mean"), default="max",
                   help="--policy tiles: image logit = max (default) or mean of its tiles' logits")
    p.add_argument("--max-tiles", type=int, default=64,
                   help="--policy tiles: at most this many tiles per image (larger images get spread-out tiles)")
    p.add_argument("--workers", type=int, default=default_workers(), help="decoding threads")
    p.add_argument("--device", default="auto", help="--checkpoint: torch device, auto | cpu | cuda[:N]")
    p.add_argument("--providers", default=None,
                   help="--model: comma-separated onnxruntime providers, e.g. cpu or cuda,cpu (default: TensorRT, CUDA, CPU as available)")
    p.add_argument("--threads", type=int, default=None, help="--model: intra-op threads (default: all cores)")
    p.add_argument("--backend", choices=BACKENDS, default="onnxruntime",
                   help="--model: onnxruntime (default) or openvino (optional extra)")
    p.add_argument("--precision", choices=OPENVINO_PRECISIONS, default="auto",
                   help="--backend openvino: inference precision; auto (default) keeps the fp32 model's decisions: "
                        "f32 for float-input and INT8 graphs, bf16 for uint8-input graphs where the CPU has bf16")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="--engine, --checkpoint on a GPU: capture each batch shape as a CUDA graph once and replay it")
    p.add_argument("--kernels", action="store_true",
                   help="--checkpoint: run through our Triton kernels (lfm.kernels.triton_lfm, float16; "
                        "the fastest GPU path; needs a CUDA GPU and the [kernels] extra)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="refuse larger images (decompression bombs)")
    args = p.parse_args(argv)
    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        p.error(f"--threshold must lie in [0, 1], got {args.threshold}")
    if args.batch_size < 1:
        p.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.max_tiles < 1:
        p.error(f"--max-tiles must be >= 1, got {args.max_tiles}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    expansion = expand_paths(args.paths)
    for note in expansion.notes:
        print(f"note: {note}", file=sys.stderr)
    try:
        providers = args.providers.split(",") if args.providers else None
        detector = Detector(checkpoint=args.checkpoint, model=args.model, engine=args.engine,
                            cuda_graphs=args.cuda_graphs, kernels=args.kernels, device=args.device, providers=providers,
                            threads=args.threads, backend=args.backend, precision=args.precision,
                            threshold=args.threshold,
                            policy=args.policy, size=args.size, batch_size=args.batch_size,
                            tile_reduce=args.tile_reduce, max_tiles=args.max_tiles,
                            workers=args.workers, max_pixels=args.max_pixels)
    except (BackendError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        out = open(args.output, "w", newline="") if args.output else sys.stdout
    except OSError as e:
        print(f"error: cannot write {args.output}: {e.strerror}", file=sys.stderr)
        detector.close()
        return 2

    n = failed = 0
    t0 = time.perf_counter()
    with detector:
        writer = RecordWriter(out, args.format)
        for record in in_input_order(expansion.inputs, expansion.errors, detector.predict_iter):
            writer.write(record)
            n += 1
            failed += not record.ok
    if args.output:
        out.close()
    dt = time.perf_counter() - t0
    where = f" -> {args.output}" if args.output else ""
    print(f"scored {n - failed} of {n} inputs in {dt:.2f} s{where}; {failed} failed; {detector.runner.describe()}",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
