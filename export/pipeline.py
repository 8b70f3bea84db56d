"""The export as a declared pipeline: an LFM checkpoint -> a verified ONNX model.

In the manner of Ultralytics' exporter: a table of the formats (``FORMATS``: fp32, fp16, int8
and the plugin graph), each with the options it accepts, the checks it needs before anything is
loaded and the stages it runs; a flag that does not apply to the chosen format is refused in one
line before any work. The stages are small functions over one context (``Export``), each run by
``run_stage``, which times it and turns the lower layers' user-facing errors into one line:

    checks -> load checkpoint -> export graph -> verify fp32 -> [plugins: against the standard
    graph | fp16: convert, verify | int8: quantise, held-out report] -> [cross-domain check] -> write

export/to_onnx.py is the command. Below this module, each stage's module imports none of the
others: onnx_export (the graph, torch), verify (against PyTorch), quantize (INT8), fidelity (the
cross-domain check), all on onnx_files (the model file: metadata, checks, writing, scoring).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Collection

from lfm.export.paths import output_problem
from lfm.runtime.cli import CommandError
from lfm.runtime.files import file_sha256, overwrite_refusal, write_target
from lfm.runtime.spec import ModelSpec

MIN_CALIBRATION_IMAGES = 8  # fewer: refused
FEW_CALIBRATION_IMAGES = 32  # fewer: a loud warning


class ExportError(CommandError, RuntimeError):
    """A one-line, user-facing export failure (exit 2)."""


@dataclass
class Export:
    """One export: what was asked (the command's ``args``, the options it set, its ``format``)
    and what the stages made, in the order they make it."""

    args: object  # the command's argparse.Namespace
    given: Collection[str]  # the options set to other than their defaults (argparse dests)
    format: "ExportFormat"
    int8_recipe: dict = field(default_factory=dict)  # quantize_int8's keywords (int8_recipe)
    calib_files: list[str] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)
    checkpoint: object = None  # lfm.train.checkpoint.LoadedCheckpoint
    spec: ModelSpec | None = None
    work_dir: str = ""  # a temp folder beside OUT: the model is written there, then renamed
    fp32_path: str = ""
    fp32_proto: object = None
    props: dict = field(default_factory=dict)  # the fp32 model's metadata
    model_path: str = ""  # the model OUT gets: the fp32 graph or its fp16 / INT8 form
    report: dict = field(default_factory=dict)
    passed: bool = True
    started: float = 0.0
    stage_seconds: dict = field(default_factory=dict)  # each check and stage, as run_stage timed it


# --------------------------------------------------------------------------------------------
# Checks, before the checkpoint is loaded


def written_files(output: str) -> tuple[str, str, str]:
    """(the model, its report, the rejected model): every file an export may write."""
    return output, output + ".report.json", os.path.splitext(output)[0] + ".rejected.onnx"


def check_output(ex: Export) -> None:
    problem = output_problem(ex.args.output, "lfm.onnx")
    if problem:
        raise ExportError(problem)


def check_calibration(ex: Export) -> None:
    """INT8: the recipe (its layer list checked), and the calibration and held-out images, split
    now: a bad folder fails here, before minutes of export."""
    ex.int8_recipe = int8_recipe(ex.args)
    ex.calib_files, ex.held_out = split_calibration(ex.args)


def split_calibration(args) -> tuple[list[str], list[str]]:
    """(calibration files, held-out files): DIR's images shuffled with a fixed seed so neither set
    is one subset or one label, then split, disjoint."""
    import numpy as np

    from lfm.export.quantize import calibration_images

    n = 0 if args.calib else args.calib_count + min(args.report_count, 256)  # 0: every file in DIR
    files = calibration_images(args.calib, synthetic=args.calib_synthetic, n=n, seed=0)
    files = [files[i] for i in np.random.default_rng(0).permutation(len(files))]
    n_calib = min(args.calib_count, max(1, (len(files) * 3) // 4))
    calib_files, held_out = files[:n_calib], files[n_calib:n_calib + args.report_count]
    source = args.calib or "the synthetic set"
    if len(calib_files) < MIN_CALIBRATION_IMAGES:
        raise ExportError(f"{source}: {len(files)} image(s) give {len(calib_files)} to calibrate and {len(held_out)} to "
                          f"hold out; INT8 needs at least {MIN_CALIBRATION_IMAGES} calibration images (32 or more "
                          "recommended)")
    if not held_out:
        raise ExportError(f"{source}: {len(files)} image(s) leave none for the held-out report; "
                          "give more images than --calib-count")
    return calib_files, held_out


def check_custom_ops(ex: Export) -> None:
    """The plugin graph's verification runs LFM's custom ops in ONNX Runtime."""
    from lfm.runtime.backends.onnxrt import register_ops

    register_ops()


def check_overwrite(ex: Export) -> None:
    """No file the export writes may be one of its inputs (the checkpoint, a calibration image)."""
    inputs = [*ex.calib_files, *ex.held_out] if ex.args.calib else []
    problem = overwrite_refusal(written_files(ex.args.output), [("the checkpoint", ex.args.checkpoint), *inputs])
    if problem:
        raise ExportError(problem)


def check_opset(ex: Export) -> None:
    from lfm.export import onnx_export as ox

    if not ox.MIN_OPSET <= ex.args.opset <= ox.max_opset():
        raise ExportError(f"opset {ex.args.opset} is not supported: this PyTorch exports LFM with opsets "
                          f"{ox.MIN_OPSET} to {ox.max_opset()}")


# --------------------------------------------------------------------------------------------
# Stages


def load_checkpoint(ex: Export) -> None:
    from lfm.train.checkpoint import load_checkpoint as load

    args = ex.args
    ex.checkpoint = load(args.checkpoint)
    if ex.format.variant == "plugins" and ex.checkpoint.model.config.pooling != "topk":
        raise ExportError(f"{args.checkpoint}: --variant plugins needs a Top-K pooling model; this one uses "
                          f"pooling={ex.checkpoint.model.config.pooling!r}")
    ex.spec = ex.checkpoint.spec.replace(input=args.input, policy=args.policy, size=args.size, threshold=args.threshold)


def build_graph(ex: Export, variant: str, path: str):
    """The fp32 graph of ``variant``, simplified (unless --no-simplify), checked and described,
    written at ``path``; returns (proto, metadata)."""
    from lfm.export import onnx_export as ox
    from lfm.export.onnx_files import check, save_atomic, set_metadata

    args = ex.args
    proto = ox.torch_to_onnx(ex.checkpoint.model, ex.spec, args.input, opset=args.opset, variant=variant)
    if not args.no_simplify:
        proto = ox.simplify(proto)
    proto = check(proto)
    props = ox.metadata(ex.spec, precision="fp32", source=args.checkpoint, source_sha256=file_sha256(args.checkpoint),
                        variant=variant)
    set_metadata(proto, props)
    save_atomic(proto, path)
    return proto, props


def export_graph(ex: Export) -> None:
    args = ex.args
    ex.fp32_path = ex.model_path = os.path.join(ex.work_dir, "fp32.onnx")
    ex.fp32_proto, ex.props = build_graph(ex, args.variant, ex.fp32_path)
    ex.report.update({"checkpoint": os.path.abspath(args.checkpoint), "checkpoint_source": ex.checkpoint.source,
                      "output": os.path.abspath(args.output), "precision": ex.format.precision, "input": args.input,
                      "variant": args.variant, "opset": args.opset, "simplified": not args.no_simplify,
                      "metadata": ex.props})


def verify_fp32(ex: Export) -> None:
    """fp32 is verified in every case: fp16 and INT8 are derived from it."""
    from lfm.export.verify import format_report, verify

    ex.report["fp32_verification"] = fp32 = verify(ex.fp32_path, ex.checkpoint.model, ex.args.input, "fp32",
                                                   ex.spec.mean, ex.spec.std)
    print(format_report(fp32))
    ex.passed = fp32["passed"]


def compare_with_standard(ex: Export) -> None:
    """The plugin graph against the standard graph of the same model."""
    from lfm.export.verify import compare_graphs, format_report

    standard_path = os.path.join(ex.work_dir, "standard.onnx")
    build_graph(ex, "standard", standard_path)
    ex.report["standard_agreement"] = agree = compare_graphs(ex.fp32_path, standard_path, ex.args.input,
                                                             ex.spec.mean, ex.spec.std)
    print(format_report(agree))
    ex.passed = agree["passed"]


def convert_fp16(ex: Export) -> None:
    import onnxslim
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from lfm.export.onnx_files import check, save_atomic, set_metadata
    from lfm.export.verify import format_report, verify

    # The converter appends its casts unsorted; onnxslim puts the graph back in order.
    half = check(onnxslim.slim(convert_float_to_float16(ex.fp32_proto, keep_io_types=True)))
    set_metadata(half, {**ex.props, "lfm.precision": "fp16"})
    ex.model_path = os.path.join(ex.work_dir, "fp16.onnx")
    save_atomic(half, ex.model_path)
    ex.report["verification"] = fp16 = verify(ex.model_path, ex.checkpoint.model, ex.args.input, "fp16",
                                              ex.spec.mean, ex.spec.std)
    print(format_report(fp16))
    ex.passed = fp16["passed"]


def int8_recipe(args) -> dict:
    """quantize_int8's keywords for the command line's INT8 options: the recipe an export uses (the
    CI's fidelity regression test, tests/test_int8_regression.py, quantises through it too)."""
    from lfm.export.quantize import parse_int8_layers

    return {"profile": args.int8_profile, "int8_layers": parse_int8_layers(args.int8_layers)}


def quantize(ex: Export) -> None:
    from lfm.export.quantize import quantize_int8

    ex.model_path = os.path.join(ex.work_dir, "int8.onnx")
    info = quantize_int8(ex.fp32_path, ex.model_path, ex.calib_files, ex.spec, **ex.int8_recipe)
    for problem in info.pop("skipped_files"):
        print(f"skipped (calibration): {problem}", file=sys.stderr)
    ex.report["quantization"] = info
    if info["count"] < MIN_CALIBRATION_IMAGES:
        raise ExportError(f"{ex.args.calib or 'synthetic set'}: only {info['count']} of {len(ex.calib_files)} "
                          f"calibration images could be read; INT8 needs at least {MIN_CALIBRATION_IMAGES}")


def report_int8(ex: Export) -> None:
    """The INT8 model against fp32 on the held-out images: decisions, logits, AP where labelled."""
    from lfm.export.quantize import int8_report

    info = ex.report["quantization"]
    int8 = int8_report(ex.fp32_path, ex.model_path, ex.held_out, labels=labels_from_paths(ex.held_out), spec=ex.spec)
    for problem in int8["skipped_files"]:
        print(f"skipped (held out): {problem}", file=sys.stderr)
    ex.report["verification"] = int8
    print(f"INT8 ({ex.args.int8_profile} profile; int8 layers {', '.join(info['int8_layers'])}; fp32 layers "
          f"{', '.join(info['fp32_layers'] + ['fc'])}): calibrated on {info['count']} images "
          f"({info['skipped']} of the {len(ex.calib_files)} chosen skipped), held out {int8['n']} "
          f"({int8['skipped']} skipped)")
    line = (f"INT8 on the {int8['n']} held-out images: decision agreement with fp32 {100 * int8['agreement']:.2f} %, "
            f"max |dlogit| {int8['max_abs_logit_diff']:.3f}")
    if int8.get("ap_fp32") is not None:
        line += f", AP fp32 {100 * int8['ap_fp32']:.2f} / int8 {100 * int8['ap_int8']:.2f}"
    print(line)
    if info["count"] < FEW_CALIBRATION_IMAGES:
        print("\n" + "!" * 78 + f"\nWARNING: only {info['count']} images calibrated this model (< "
              f"{FEW_CALIBRATION_IMAGES}); its activation ranges may not hold for other images.\n"
              "Calibrate on more, and more varied, images before deploying it.\n" + "!" * 78 + "\n",
              file=sys.stderr)


def labels_from_paths(files):
    """ForenSynths folder names give labels (1_fake -> 1, 0_real -> 0); None if any is unknown."""
    labels = []
    for f in files:
        parts = os.path.normpath(f).split(os.sep)
        if "1_fake" in parts:
            labels.append(1)
        elif "0_real" in parts:
            labels.append(0)
        else:
            return None
    return labels


def cross_domain_check(ex: Export) -> None:
    """The stress-set check of a reduced-precision model (export/fidelity.py), grown from the
    held-out images (INT8) or, with no calibration folder (fp16), from synthetic ones; prints the
    table and the verdict, records both in the report's ``fidelity``."""
    from lfm.export.fidelity import ACCEPTANCE, cross_domain_report
    from lfm.export.quantize import calibration_images

    args, spec = ex.args, ex.spec
    base = ex.held_out or calibration_images(synthetic=True, n=args.stress_count, seed=1, size=spec.size)
    fidelity, counts = cross_domain_report(ex.fp32_path, ex.model_path, base, os.path.join(ex.work_dir, "stress"), spec,
                                           per_group=args.stress_count)
    ok, verdict = ACCEPTANCE.judge(fidelity)
    ex.report["fidelity"] = {**fidelity.to_dict(), "images": counts, "acceptance": ACCEPTANCE.to_dict(),
                             "passed": ok, "verdict": verdict, "forced": bool(args.force and not ok)}
    print(f"cross-domain check against fp32 (decision = score > {spec.threshold:g}; sure = |fp32 logit| >= 2):")
    print(fidelity.table())
    if ok:
        print(f"  PASSED: {verdict}")
    elif args.force:
        print(f"  FAILED: {verdict}\n  kept anyway (--force); the report records that it was forced", file=sys.stderr)
    else:
        print(f"  FAILED: {verdict}", file=sys.stderr)
    ex.passed = ok or args.force


def write(ex: Export) -> int:
    """The model to OUT and its report beside it (0), or, when a check failed, the model kept
    aside as OUT.rejected.onnx with the report (1): nothing partial is ever left at OUT."""
    from lfm.export.verify import save_report

    args, report = ex.args, ex.report
    report["seconds"] = round(time.perf_counter() - ex.started, 2)
    report["stage_seconds"] = ex.stage_seconds
    report["passed"] = ex.passed
    _, report_path, rejected = written_files(args.output)
    if ex.passed:
        os.replace(ex.model_path, write_target(args.output))  # through a symlink, as `> lfm.onnx` would
        save_report(report, report_path)
        variant = ", plugin graph" if args.variant == "plugins" else ""
        print(f"wrote {args.output} ({ex.format.precision}, {args.input} input{variant}, "
              f"{os.path.getsize(args.output) / 1e6:.1f} MB) and {report_path} in {report['seconds']:.1f} s")
        return 0
    os.replace(ex.model_path, rejected)
    save_report(report, report_path)
    why = f" ({report['fidelity']['verdict']})" if "fidelity" in report and not report["fidelity"]["passed"] else ""
    print(f"error: verification FAILED{why}; nothing written to {args.output}; the model is kept as {rejected} "
          f"and the report in {report_path}", file=sys.stderr)
    return 1


# --------------------------------------------------------------------------------------------
# The formats


@dataclass(frozen=True)
class ExportFormat:
    """One kind of model the export writes: how it is chosen, the options it accepts beyond the
    common ones, the checks it needs before the checkpoint is loaded and the stages it runs
    after the fp32 graph is exported (every format starts from it)."""

    name: str
    chosen_by: str  # the flags that choose it, for messages
    variant: str  # the graph: standard | plugins
    precision: str  # fp32 | fp16 | int8
    options: tuple[str, ...] = ()  # of FORMAT_OPTIONS (argparse dests)
    needs_one_of: tuple[str, ...] = ()
    checks: tuple[Callable[[Export], None], ...] = ()
    stages: tuple[Callable[[Export], None], ...] = ()


REDUCED_PRECISION_OPTIONS = ("stress_count", "force")  # the cross-domain check's
INT8_OPTIONS = ("calib", "calib_synthetic", "calib_count", "int8_profile", "int8_layers", "report_count")
FORMAT_OPTIONS = INT8_OPTIONS + REDUCED_PRECISION_OPTIONS  # the options not every format accepts

FORMATS = (
    ExportFormat("fp32", "the default", "standard", "fp32", stages=(verify_fp32,)),
    ExportFormat("fp16", "--fp16", "standard", "fp16", REDUCED_PRECISION_OPTIONS,
                 stages=(verify_fp32, convert_fp16, cross_domain_check)),
    ExportFormat("int8", "--int8", "standard", "int8", INT8_OPTIONS + REDUCED_PRECISION_OPTIONS,
                 needs_one_of=("calib", "calib_synthetic"), checks=(check_calibration,),
                 stages=(verify_fp32, quantize, report_int8, cross_domain_check)),
    ExportFormat("plugins", "--variant plugins", "plugins", "fp32", checks=(check_custom_ops,),
                 stages=(verify_fp32, compare_with_standard)),
)


def flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def choose_format(args, given: Collection[str]) -> ExportFormat:
    """The format the flags choose, or ExportError (one line) when none has that graph and
    precision, a flag does not apply to it, or it lacks a flag it needs."""
    precision = "fp16" if args.fp16 else "int8" if args.int8 else "fp32"
    fmt = next((f for f in FORMATS if (f.variant, f.precision) == (args.variant, precision)), None)
    if fmt is None:
        kept = ", ".join(f.precision for f in FORMATS if f.variant == args.variant)
        raise ExportError(f"--variant {args.variant} is exported in {kept} only (not with --{precision}): TensorRT "
                          "lowers its precision when it builds the engine; export --variant standard for an fp16 or "
                          "INT8 ONNX model")
    stray = [name for name in FORMAT_OPTIONS if name in given and name not in fmt.options]
    if stray:
        takers = ", ".join(f"{f.name} ({f.chosen_by})" for f in FORMATS if stray[0] in f.options)
        raise ExportError(f"{flag(stray[0])} does not apply to the {fmt.name} export ({fmt.chosen_by}); "
                          f"it applies to: {takers}")
    if fmt.needs_one_of and not any(name in given for name in fmt.needs_one_of):
        raise ExportError(f"{fmt.chosen_by} needs {' or '.join(map(flag, fmt.needs_one_of))}")
    return fmt


# --------------------------------------------------------------------------------------------
# Running it


def run_stage(stage: Callable[[Export], None], ex: Export) -> None:
    """Run one check or stage, timed (the report's ``stage_seconds``); the lower layers' errors that
    are the user's to fix (a checkpoint, a missing extra's custom ops) become ExportError."""
    from lfm.runtime.backends.base import BackendError
    from lfm.train.checkpoint import CheckpointError

    t0 = time.perf_counter()
    try:
        stage(ex)
    except (CheckpointError, BackendError) as e:
        raise ExportError(str(e)) from None
    finally:
        ex.stage_seconds[stage.__name__] = round(time.perf_counter() - t0, 2)


def export(args, given: Collection[str] = ()) -> int:
    """Run the export the command line asks for: 0 written, 1 failed verification (kept aside),
    ExportError (exit 2) for what is refused. ``given``: the options set to other than their
    defaults, which the format table checks."""
    ex = Export(args, given, choose_format(args, given))
    for check in (check_output, *ex.format.checks, check_overwrite, check_opset):
        run_stage(check, ex)
    run_stage(load_checkpoint, ex)
    ex.started = time.perf_counter()
    # The C++-backed libraries are imported before the temp folder exists: a Ctrl-C or SIGTERM that
    # lands while one initialises raises inside its C++ init and aborts the process (exit -6 seen
    # with onnx's nanobind module), which no clean-up survives; once imported, a signal is an exception.
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    if not args.no_simplify:
        import onnxslim  # noqa: F401

    with tempfile.TemporaryDirectory(dir=os.path.dirname(write_target(args.output))) as ex.work_dir:
        for stage in (export_graph, *ex.format.stages):
            run_stage(stage, ex)
            if not ex.passed:
                break
        return write(ex)
