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

from lfm.runtime.backends import BackendError, make_runner  # noqa: E402
from lfm.runtime.cli import (ArgumentParser, add_path_arguments, describe_os_error, read_path_arguments,  # noqa: E402
                             run, summary_exit, write_records)
from lfm.runtime.decode_pool import DecodePoolError  # noqa: E402  (standard library + numpy)
from lfm.runtime.detector import Detector  # noqa: E402
from lfm.runtime.files import output_problem, overwrite_refusal  # noqa: E402
from lfm.runtime.inputs import expand_paths  # noqa: E402
from lfm.runtime.options import ModelArgs, OutputArgs, PipelineArgs, parse_and_check  # noqa: E402
from lfm.runtime.records import FORMATS, format_for, in_input_order  # noqa: E402
from lfm.runtime.spec import threshold_text  # noqa: E402

MODEL, PIPELINE, OUTPUT = ModelArgs(), PipelineArgs(), OutputArgs(FORMATS)


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    add_path_arguments(p)
    for group in (MODEL, PIPELINE, OUTPUT):
        group.add_to(p)
    args = parse_and_check(p, argv, MODEL, PIPELINE, OUTPUT)
    args.format = format_for(args.output, args.format)
    return args


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
        detector = Detector(make_runner(**MODEL.runner_arguments(args)), PIPELINE.options(args))
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
    return summary_exit(result, len(expansion.inputs), args.output,
                        f"{detector.runner.describe()}; {threshold_text(detector.spec)}")


if __name__ == "__main__":
    sys.exit(run(main))
