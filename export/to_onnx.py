"""Export an LFM checkpoint (ours or upstream's) to ONNX, verified against PyTorch.

    python export/to_onnx.py CKPT [-o lfm.onnx] [--input float|uint8] [--variant standard|plugins]
                                  [--fp16 | --int8 (--calib DIR | --calib-synthetic)] [--opset 17]

The graph has dynamic batch, height and width, outputs ``logit`` and ``score``, passes the
full onnx.checker and strict shape inference, is simplified with onnxslim and carries the
model's preprocessing spec in its metadata. Every export is verified before it is written:
ONNX Runtime against the PyTorch model (Polygraphy's Comparator) on fixed and random inputs;
fp32 must agree to 1e-4 (rtol and atol on the max error), fp16 to 5e-3 relative, with no
decision flipping; INT8 is scored on images disjoint from its calibration set for decision
agreement and AP. Every reduced-precision model (fp16, INT8) must also keep the fp32 model's
decisions on a stress set of other kinds of images (export/fidelity.py: the held-out images
up-sampled 2x, re-encoded as JPEG, shrunk, and synthetic images; for fp16, synthetic images
and their variants): no sure decision flipped, at most 1 % flipped, median |dlogit| <= 0.3
over all images. The report is printed and saved as OUT.report.json. A model that fails
verification is kept aside as OUT.rejected.onnx and the command exits 1 (--force keeps it, and
the report says so); nothing partial is ever left at OUT. Exit 2: bad arguments, checkpoint or
paths, or fewer than 8 calibration images.

--variant plugins: NPR and Top-K pooling as the custom nodes LfmNpr and LfmTopKPool (TensorRT
plugins "lfm::..."; ONNX Runtime runs them with the [plugins] extra). Verified against PyTorch
as fp32 and against the standard graph of the same model. fp32 only.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

if __package__ in (None, ""):  # run as a script: don't let export/'s modules shadow libraries
    sys.path.pop(0)

from lfm.export.paths import output_problem  # noqa: E402
from lfm.runtime.cli import ArgumentParser, positive_int, run, unit_interval  # noqa: E402
from lfm.runtime.files import first_line, overwrite_refusal, write_target  # noqa: E402
from lfm.runtime.spec import min_input_size  # noqa: E402
from lfm.export.quantize import DEFAULT_INT8_LAYERS  # noqa: E402  (numpy and Pillow; onnx only when it quantises)

MIN_OPSET = 17  # = lfm.export.onnx_export.MIN_OPSET (not imported here: that module needs torch)
MIN_CALIBRATION_IMAGES = 8  # fewer: refused
FEW_CALIBRATION_IMAGES = 32  # fewer: a loud warning


class ExportError(RuntimeError):
    """A one-line, user-facing export failure."""


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("checkpoint", metavar="CKPT", help="our ckpt.pt or upstream's .pth")
    p.add_argument("-o", "--output", default="lfm.onnx", help="where to write the model (default: lfm.onnx)")
    p.add_argument("--input", choices=("float", "uint8"), default="uint8",
                   help="uint8 (default): raw NHWC RGB bytes, normalisation folded in, NPR exact on bytes; "
                        "float: normalised NCHW, as upstream's pipelines feed it")
    p.add_argument("--variant", choices=("standard", "plugins"), default="standard",
                   help="standard: ONNX operators only (default); plugins: NPR and Top-K pooling as LFM's custom "
                        "nodes (TensorRT plugins; ONNX Runtime needs the [plugins] extra)")
    p.add_argument("--opset", type=int, default=MIN_OPSET,
                   help=f"ONNX opset, {MIN_OPSET} up to the newest this PyTorch's exporter writes (20 for 2.x)")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="float16 graph, float32 inputs/outputs kept (GPU runtimes)")
    precision.add_argument("--int8", action="store_true", help="static INT8 QDQ model (ONNX Runtime CPU, TensorRT explicit INT8)")
    calib = p.add_mutually_exclusive_group()
    calib.add_argument("--calib", metavar="DIR", help="calibration images for --int8 (a share is held out for the report)")
    calib.add_argument("--calib-synthetic", action="store_true", help="calibrate on generated synthetic images (demos)")
    p.add_argument("--calib-count", type=positive_int(MIN_CALIBRATION_IMAGES, "--calib-count"), default=64, help="images used for calibration (default 64)")
    p.add_argument("--int8-profile", choices=("cpu", "tensorrt"), default="cpu",
                   help="cpu: uint8 activations, fast on ONNX Runtime/OpenVINO (default); tensorrt: symmetric int8 "
                        "activations with zero points 0, as TensorRT's explicit INT8 requires (slow on ORT CPU)")
    p.add_argument("--int8-layers", default=",".join(DEFAULT_INT8_LAYERS), metavar="LAYERS",
                   help="layers quantised: 'all' or some of conv1,conv2,conv3,conv4,salience (default: "
                        f"{','.join(DEFAULT_INT8_LAYERS)}, the ones that keep the decisions; see export/sensitivity.py)")
    p.add_argument("--report-count", type=positive_int(1, "--report-count"), default=512, help="held-out images scored for the INT8 report (default 512)")
    p.add_argument("--stress-count", type=int, default=32,
                   help="images per group of the cross-domain stress set (default 32)")
    p.add_argument("--force", action="store_true",
                   help="keep a reduced-precision model that fails the cross-domain check (the report says it was forced)")
    p.add_argument("--policy", choices=("resize", "center-crop", "none"), default=None, help="override the checkpoint's policy")
    p.add_argument("--size", type=positive_int(min_input_size(), "--size"), default=None,
                   help=f"override the checkpoint's size (at least {min_input_size()}, the smallest input K=16 can pool)")
    p.add_argument("--threshold", type=unit_interval, default=None, help="override the checkpoint's threshold, in [0, 1]")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    if args.stress_count < 4:
        p.error(f"--stress-count must be >= 4, got {args.stress_count}")
    if args.int8 and not (args.calib or args.calib_synthetic):
        p.error("--int8 needs --calib DIR or --calib-synthetic")
    if (args.calib or args.calib_synthetic) and not args.int8:
        p.error("--calib/--calib-synthetic only make sense with --int8")
    return args


def check_output_path(path: str) -> None:
    problem = output_problem(path, "lfm.onnx")
    if problem:
        raise ExportError(problem)


def written_files(output: str) -> tuple[str, str, str]:
    """(the model, its report, the rejected model): every file an export may write."""
    return output, output + ".report.json", os.path.splitext(output)[0] + ".rejected.onnx"


def check_overwrite(args, calibration_files=()) -> None:
    """No file the export writes may be one of its inputs (the checkpoint, a calibration image)."""
    problem = overwrite_refusal(written_files(args.output), [("the checkpoint", args.checkpoint), *calibration_files])
    if problem:
        raise ExportError(problem)


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


def export(args) -> int:
    from lfm.export import onnx_export as ox
    from lfm.export.verify import format_report, save_report, verify
    from lfm.train.checkpoint import CheckpointError, load_checkpoint

    check_output_path(args.output)
    if args.int8:  # a bad calibration folder or layer list fails here, before minutes of export
        from lfm.export.quantize import QuantizeError, parse_int8_layers

        try:
            int8_layers = parse_int8_layers(args.int8_layers)
            calib_files, held_out = split_calibration(args)
        except QuantizeError as e:
            raise ExportError(str(e)) from None
    check_overwrite(args, [*calib_files, *held_out] if args.calib else ())
    if args.variant == "plugins" and (args.fp16 or args.int8):
        raise ExportError(f"--variant plugins is exported in fp32 only (not with --{'fp16' if args.fp16 else 'int8'}): "
                          "TensorRT lowers its precision when it builds the engine; export --variant standard for an "
                          "fp16 or INT8 ONNX model")
    if args.variant == "plugins":  # its verification runs LFM's custom ops in ONNX Runtime
        from lfm.runtime.backends.onnxrt import BackendError, register_ops

        try:
            register_ops()
        except BackendError as e:
            raise ExportError(str(e)) from None
    if not ox.MIN_OPSET <= args.opset <= ox.max_opset():
        raise ExportError(f"opset {args.opset} is not supported: this PyTorch exports LFM with opsets "
                          f"{ox.MIN_OPSET} to {ox.max_opset()}")
    try:
        ckpt = load_checkpoint(args.checkpoint)
    except CheckpointError as e:
        raise ExportError(str(e)) from None
    if args.variant == "plugins" and ckpt.model.config.pooling != "topk":
        raise ExportError(f"{args.checkpoint}: --variant plugins needs a Top-K pooling model; this one uses "
                          f"pooling={ckpt.model.config.pooling!r}")
    spec = ckpt.spec.replace(input=args.input, policy=args.policy, size=args.size, threshold=args.threshold)
    precision = "fp16" if args.fp16 else "int8" if args.int8 else "fp32"
    t0 = time.perf_counter()
    # The C++-backed libraries are imported before the temp folder exists: a Ctrl-C or SIGTERM that
    # lands while one initialises raises inside its C++ init and aborts the process (exit -6 seen
    # with onnx's nanobind module), which no clean-up survives; once imported, a signal is an exception.
    import onnx  # noqa: F401
    import onnxruntime  # noqa: F401
    if not args.no_simplify:
        import onnxslim  # noqa: F401

    with tempfile.TemporaryDirectory(dir=os.path.dirname(write_target(args.output))) as tmp:  # renamed from there
        def build(variant: str, path: str):
            proto = ox.torch_to_onnx(ckpt.model, spec, args.input, opset=args.opset, variant=variant)
            if not args.no_simplify:
                proto = ox.simplify(proto)
            proto = ox.check(proto)
            props = ox.metadata(spec, precision="fp32", source=args.checkpoint,
                                source_sha256=ox.sha256(args.checkpoint), variant=variant)
            ox.set_metadata(proto, props)
            ox.save_atomic(proto, path)
            return proto, props

        fp32_path = os.path.join(tmp, "fp32.onnx")
        proto, props = build(args.variant, fp32_path)
        report = {"checkpoint": os.path.abspath(args.checkpoint), "checkpoint_source": ckpt.source,
                  "output": os.path.abspath(args.output), "precision": precision, "input": args.input,
                  "variant": args.variant, "opset": args.opset, "simplified": not args.no_simplify, "metadata": props}
        # fp32 is verified in every case: fp16 and INT8 are derived from it.
        report["fp32_verification"] = fp32 = verify(fp32_path, ckpt.model, args.input, "fp32", spec.mean, spec.std)
        print(format_report(fp32))
        passed = fp32["passed"]
        final = fp32_path

        if args.variant == "plugins" and passed:
            from lfm.export.verify import compare_graphs

            standard_path = os.path.join(tmp, "standard.onnx")
            build("standard", standard_path)
            report["standard_agreement"] = agree = compare_graphs(fp32_path, standard_path, args.input,
                                                                  spec.mean, spec.std)
            print(format_report(agree))
            passed = agree["passed"]

        if args.fp16 and passed:
            import onnxslim
            from onnxruntime.transformers.float16 import convert_float_to_float16

            # The converter appends its casts unsorted; onnxslim puts the graph back in order.
            half = ox.check(onnxslim.slim(convert_float_to_float16(proto, keep_io_types=True)))
            ox.set_metadata(half, {**props, "lfm.precision": "fp16"})
            final = os.path.join(tmp, "fp16.onnx")
            ox.save_atomic(half, final)
            report["verification"] = fp16 = verify(final, ckpt.model, args.input, "fp16", spec.mean, spec.std)
            print(format_report(fp16))
            passed = fp16["passed"]
            if passed:  # no calibration folder here: the stress set grows from synthetic images
                from lfm.export.quantize import calibration_images

                base = calibration_images(synthetic=True, n=args.stress_count, seed=1, size=spec.size)
                passed = cross_domain(report, fp32_path, final, base, os.path.join(tmp, "stress"), spec, args)

        if args.int8 and passed:
            from lfm.export.quantize import int8_report, quantize_int8

            final = os.path.join(tmp, "int8.onnx")
            info = quantize_int8(fp32_path, final, calib_files, spec, profile=args.int8_profile, int8_layers=int8_layers)
            for problem in info.pop("skipped_files"):
                print(f"skipped (calibration): {problem}", file=sys.stderr)
            report["quantization"] = info
            if info["count"] < MIN_CALIBRATION_IMAGES:
                raise ExportError(f"{args.calib or 'synthetic set'}: only {info['count']} of {len(calib_files)} "
                                  f"calibration images could be read; INT8 needs at least {MIN_CALIBRATION_IMAGES}")
            int8 = int8_report(fp32_path, final, held_out, labels=labels_from_paths(held_out), spec=spec)
            for problem in int8["skipped_files"]:
                print(f"skipped (held out): {problem}", file=sys.stderr)
            report["verification"] = int8
            agreement = int8["agreement"]
            print(f"INT8 ({args.int8_profile} profile; int8 layers {', '.join(info['int8_layers'])}; fp32 layers "
                  f"{', '.join(info['fp32_layers'] + ['fc'])}): calibrated on {info['count']} images "
                  f"({info['skipped']} of the {len(calib_files)} chosen skipped), held out {int8['n']} "
                  f"({int8['skipped']} skipped)")
            line = (f"INT8 on the {int8['n']} held-out images: decision agreement with fp32 {100 * agreement:.2f} %, "
                    f"max |dlogit| {int8['max_abs_logit_diff']:.3f}")
            if int8.get("ap_fp32") is not None:
                line += f", AP fp32 {100 * int8['ap_fp32']:.2f} / int8 {100 * int8['ap_int8']:.2f}"
            print(line)
            if info["count"] < FEW_CALIBRATION_IMAGES:
                print("\n" + "!" * 78 + f"\nWARNING: only {info['count']} images calibrated this model (< "
                      f"{FEW_CALIBRATION_IMAGES}); its activation ranges may not hold for other images.\n"
                      "Calibrate on more, and more varied, images before deploying it.\n" + "!" * 78 + "\n",
                      file=sys.stderr)
            passed = cross_domain(report, fp32_path, final, held_out,
                                  os.path.join(tmp, "stress"), spec, args)

        report["seconds"] = round(time.perf_counter() - t0, 2)
        report["passed"] = passed
        _, report_path, rejected = written_files(args.output)
        if passed:
            os.replace(final, write_target(args.output))  # through a symlink, as `> lfm.onnx` would
            save_report(report, report_path)
            variant = ", plugin graph" if args.variant == "plugins" else ""
            print(f"wrote {args.output} ({precision}, {args.input} input{variant}, {os.path.getsize(args.output) / 1e6:.1f} MB) "
                  f"and {report_path} in {report['seconds']:.1f} s")
            return 0
        os.replace(final, rejected)
        save_report(report, report_path)
        why = f" ({report['fidelity']['verdict']})" if "fidelity" in report and not report["fidelity"]["passed"] else ""
        print(f"error: verification FAILED{why}; nothing written to {args.output}; the model is kept as {rejected} "
              f"and the report in {report_path}", file=sys.stderr)
        return 1


def split_calibration(args) -> tuple[list[str], list[str]]:
    """(calibration files, held-out files): DIR's images shuffled with a fixed seed so neither set
    is one subset or one label, then split, disjoint. Checked before anything is exported."""
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


def cross_domain(report: dict, fp32_path: str, model_path: str, base_files, work_dir: str, spec, args) -> bool:
    """The stress-set check of a reduced-precision model (export/fidelity.py); prints the table and
    the verdict, records both in ``report["fidelity"]``, returns whether the model may be kept."""
    from lfm.export.fidelity import ACCEPTANCE, cross_domain_report

    fidelity, counts = cross_domain_report(fp32_path, model_path, base_files, work_dir, spec, per_group=args.stress_count)
    ok, verdict = ACCEPTANCE.judge(fidelity)
    report["fidelity"] = {**fidelity.to_dict(), "images": counts, "acceptance": ACCEPTANCE.to_dict(),
                          "passed": ok, "verdict": verdict, "forced": bool(args.force and not ok)}
    print(f"cross-domain check against fp32 (decision = score > {spec.threshold:g}; sure = |fp32 logit| >= 2):")
    print(fidelity.table())
    if ok:
        print(f"  PASSED: {verdict}")
        return True
    if args.force:
        print(f"  FAILED: {verdict}\n  kept anyway (--force); the report records that it was forced", file=sys.stderr)
        return True
    print(f"  FAILED: {verdict}", file=sys.stderr)
    return False


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        return export(args)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except ModuleNotFoundError:
        raise  # cli.run names the extra to install
    except Exception as e:  # one line, not a traceback wall, unless asked
        if args.debug:
            raise
        name = type(e).__name__
        if name == "QuantizeError":
            print(f"error: {e}", file=sys.stderr)
            return 2
        first = first_line(e, empty="")
        print(f"error: export failed: {name}: {first} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(run(main))
