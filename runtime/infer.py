"""Score images with LFM: one record per input path, real or generated.

    python runtime/infer.py --model lfm.onnx PATHS... [--format jsonl|csv|table] [--output FILE]
    python runtime/infer.py --checkpoint ckpt.pt PATHS...        (PyTorch, the reference backend)
    python runtime/infer.py --engine lfm.plan PATHS...           (TensorRT engine from export/to_trt.py)

PATHS are files, directories (image files inside, recursively), globs ("photos/**/*.jpg"),
@LIST (the paths in the text file LIST, one per line) or - (paths from standard input).
Each record holds path, logit, score (sigmoid of the logit), label ("fake" when the score is
above the threshold, else "real") and error (null on success). Every input appears once per
mention; an unreadable file gets an error record in its place.

--output FILE: the format follows the extension (.csv, .jsonl, .txt = table) unless --format
is given. FILE may not be one of the inputs or the model (by any name); a symlink is written
through to its target. Records go to a temporary file beside FILE that replaces it when the run
ends, so an earlier FILE survives a crashed or failed run (a full disk), and no temporary file
is left; Ctrl-C (or SIGTERM) stops the run, keeps the records finished so far and exits 130 (143).

Exit status: 0 when every input was scored, 1 when any failed, 2 for bad arguments or a model
that could not be loaded, 130 when interrupted, 143 when terminated (SIGTERM).
"""
from __future__ import annotations

import sys

if __package__ in (None, ""):  # run as a script: runtime/ is sys.path[0]; import the installed package
    sys.path.pop(0)

from lfm.runtime.backends import BackendError, backends_for, make_runner, source_from_flags  # noqa: E402
from lfm.runtime.backends.openvino_rt import OPENVINO_PRECISIONS  # noqa: E402
from lfm.runtime.cli import (ArgumentParser, add_path_arguments, describe_os_error, positive_int,  # noqa: E402
                             read_path_arguments, run, summary_exit, unit_interval, write_records)
from lfm.runtime.decode_pool import DecodePoolError  # noqa: E402  (standard library + numpy)
from lfm.runtime.detector import DECODE_MODES, DEFAULT_MAX_MODEL_PIXELS, Detector, default_workers  # noqa: E402
from lfm.runtime.files import output_problem, overwrite_refusal  # noqa: E402
from lfm.runtime.inputs import expand_paths  # noqa: E402
from lfm.runtime.preprocess import DEFAULT_MAX_PIXELS  # noqa: E402
from lfm.runtime.records import FORMATS, format_for, in_input_order  # noqa: E402
from lfm.runtime.spec import POLICIES, min_input_size  # noqa: E402

MIN_PIXELS = min_input_size() ** 2  # the smallest image LFM (K=16) can score: 48 x 48


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--model", metavar="ONNX", help="exported ONNX model (ONNX Runtime; the embedded default)")
    model.add_argument("--checkpoint", metavar="CKPT", help="PyTorch checkpoint, ours or upstream's (needs the [train] extra)")
    model.add_argument("--engine", metavar="PLAN", help="TensorRT engine from export/to_trt.py, with its PLAN.json "
                       "sidecar (needs an NVIDIA GPU and the [tensorrt] extra)")
    add_path_arguments(p)
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="output format (default: from the --output extension, else jsonl)")
    p.add_argument("--output", "-o", metavar="FILE", help="write records here instead of standard output")
    p.add_argument("--threshold", type=unit_interval, default=None,
                   help="score above which an image is 'fake' (default: the model's, 0.5)")
    p.add_argument("--batch-size", type=positive_int(1, "--batch-size"), default=16, help="images per backend call")
    p.add_argument("--policy", choices=POLICIES, default=None,
                   help="resize (bilinear to SIZE, upstream's eval; the model's default), center-crop, none (native "
                        "size), or tiles (native resolution, SIZE x SIZE tiles, one score per image)")
    p.add_argument("--size", type=positive_int(1, "--size"), default=None,
                   help="side for resize / center-crop / tiles, at least 48 for K=16 (default: the model's, 256)")
    p.add_argument("--tile-reduce", choices=("max", "mean"), default="max",
                   help="--policy tiles: image logit = max or mean of its tiles' logits")
    p.add_argument("--max-tiles", type=positive_int(1, "--max-tiles"), default=64,
                   help="--policy tiles: at most this many tiles per image (larger images get spread-out tiles)")
    p.add_argument("--workers", type=positive_int(1, "--workers"), default=None,
                   help="decoding threads, or processes with --decode processes (default: the usable cores "
                        f"for processes, {default_workers('processes')} here; threads at most 8, "
                        f"{default_workers('threads')} here)")
    p.add_argument("--decode", choices=DECODE_MODES, default="threads",
                   help="decode files in threads, or in worker processes into shared memory (scales with cores; "
                        "same records, same order), or gpu: JPEGs by nvJPEG (needs torch + CUDA + torchvision; "
                        "pixels not bit-identical to the CPU decoder), other files on the CPU")
    p.add_argument("--device", default="auto", help="--checkpoint: torch device, auto | cpu | cuda[:N]")
    p.add_argument("--providers", default=None,
                   help="--model: comma-separated onnxruntime providers, e.g. cpu or cuda,cpu (default: TensorRT, CUDA, CPU as available)")
    p.add_argument("--threads", type=positive_int(1, "--threads"), default=None,
                   help="--model: intra-op threads (default: all cores)")
    p.add_argument("--backend", choices=backends_for("model"), default=None,
                   help="--model: onnxruntime, or openvino (the [openvino] extra) (default: onnxruntime)")
    p.add_argument("--precision", choices=OPENVINO_PRECISIONS, default="auto",
                   help="--backend openvino: inference precision; auto keeps the fp32 model's decisions: "
                        "f32 for float-input and INT8 graphs, bf16 for uint8-input graphs where the CPU has bf16")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="--engine, --checkpoint on a GPU: capture each batch shape as a CUDA graph once and replay it")
    p.add_argument("--kernels", action="store_true",
                   help="--checkpoint: run through our Triton kernels (lfm.kernels.triton_lfm, float16; "
                        "the fastest GPU path; needs a CUDA GPU and the [kernels] extra)")
    p.add_argument("--max-pixels", type=positive_int(MIN_PIXELS, "--max-pixels"), default=DEFAULT_MAX_PIXELS,
                   help="refuse image files with more pixels, before decoding (decompression bombs)")
    p.add_argument("--max-model-pixels", type=positive_int(MIN_PIXELS, "--max-model-pixels"), default=DEFAULT_MAX_MODEL_PIXELS,
                   help="pixels the model may see per image and per call (about 0.5 kB of memory each); under "
                        "--policy none a larger image gets an error record")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="a progress line on stderr: auto = when stderr is a terminal")
    args = p.parse_args(argv)
    args.format = format_for(args.output, args.format)
    return args


def runner_arguments(args) -> dict:
    """make_runner's arguments from the command line: which model, which backend, its options."""
    source, backend = source_from_flags(args.checkpoint, args.model, args.engine, args.backend)
    return dict(source=source, backend=backend, device=args.device, threads=args.threads, precision=args.precision,
                providers=args.providers, kernels=args.kernels,
                cuda_graphs=args.cuda_graphs)


def main(argv=None) -> int:
    args = parse_args(argv)
    paths, list_errors = read_path_arguments(args.paths, null=args.null)
    expansion = expand_paths(paths, list_errors)
    for note in expansion.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.output:
        protected = [("the model", args.model), ("the checkpoint", args.checkpoint), ("the engine", args.engine),
                     ("the engine's sidecar", args.engine and args.engine + ".json"), *expansion.inputs]
        problem = output_problem(args.output, "records.jsonl") or overwrite_refusal([args.output], protected)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    try:
        detector = Detector(make_runner(**runner_arguments(args)), threshold=args.threshold, policy=args.policy,
                            size=args.size, batch_size=args.batch_size, tile_reduce=args.tile_reduce,
                            max_tiles=args.max_tiles, workers=args.workers, decode=args.decode, max_pixels=args.max_pixels,
                            max_model_pixels=args.max_model_pixels)
    except (BackendError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with detector:
        records = in_input_order(expansion.inputs, expansion.errors, detector.predict_iter)
        try:
            result = write_records(records, len(expansion.inputs), args.output, args.format, args.progress)
        except OSError as e:  # the output itself failed (disk full, ...); not a record's problem
            print(f"error: cannot write {args.output or 'the output'}: {describe_os_error(e)}", file=sys.stderr)
            return 2
        except DecodePoolError as e:  # the decoding processes cannot start (an earlier output file is kept)
            print(f"error: {e}", file=sys.stderr)
            return 2
    return summary_exit(result, len(expansion.inputs), args.output, detector.runner.describe())


if __name__ == "__main__":
    sys.exit(run(main))
