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
paths, fewer than 8 calibration images, or a flag that does not apply to the format chosen (fp32,
--fp16, --int8, --variant plugins: export/pipeline.py's FORMATS), each in one line before any work.

--variant plugins: NPR and Top-K pooling as the custom nodes LfmNpr and LfmTopKPool (TensorRT
plugins "lfm::..."; ONNX Runtime runs them with the [plugins] extra). Verified against PyTorch
as fp32 and against the standard graph of the same model. fp32 only.
"""
from __future__ import annotations

import sys

if __package__ in (None, ""):  # run as a script: don't let export/'s modules shadow libraries
    sys.path.pop(0)

from lfm.export.pipeline import MIN_CALIBRATION_IMAGES, export  # noqa: E402  (torch only when it runs)
from lfm.runtime.cli import ArgumentParser, positive_int, run, unit_interval  # noqa: E402
from lfm.runtime.spec import min_input_size  # noqa: E402
from lfm.export.quantize import DEFAULT_INT8_LAYERS  # noqa: E402  (numpy and Pillow; onnx only when it quantises)

MIN_OPSET = 17  # = lfm.export.onnx_export.MIN_OPSET (not imported here: that module needs torch)


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
    p.add_argument("--calib-count", type=positive_int(MIN_CALIBRATION_IMAGES), default=64, help="images used for calibration (default 64)")
    p.add_argument("--int8-profile", choices=("cpu", "tensorrt"), default="cpu",
                   help="cpu: uint8 activations, fast on ONNX Runtime/OpenVINO (default); tensorrt: symmetric int8 "
                        "activations with zero points 0, as TensorRT's explicit INT8 requires (slow on ORT CPU)")
    p.add_argument("--int8-layers", default=",".join(DEFAULT_INT8_LAYERS), metavar="LAYERS",
                   help="layers quantised: 'all' or some of conv1,conv2,conv3,conv4,salience (default: "
                        f"{','.join(DEFAULT_INT8_LAYERS)}, the ones that keep the decisions; see export/sensitivity.py)")
    p.add_argument("--report-count", type=positive_int(1), default=512, help="held-out images scored for the INT8 report (default 512)")
    p.add_argument("--stress-count", type=int, default=32,
                   help="images per group of the cross-domain stress set (default 32)")
    p.add_argument("--force", action="store_true",
                   help="keep a reduced-precision model that fails the cross-domain check (the report says it was forced)")
    p.add_argument("--policy", choices=("resize", "center-crop", "none"), default=None, help="override the checkpoint's policy")
    p.add_argument("--size", type=positive_int(min_input_size()), default=None,
                   help=f"override the checkpoint's size (at least {min_input_size()}, the smallest input K=16 can pool)")
    p.add_argument("--threshold", type=unit_interval, default=None, help="override the checkpoint's threshold, in [0, 1]")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    args = p.parse_args(argv)
    if args.stress_count < 4:
        p.error(f"--stress-count must be >= 4, got {args.stress_count}")
    # what the format table (lfm.export.pipeline.FORMATS) checks against the format chosen
    args.given = {dest for dest, value in vars(args).items() if value != p.get_default(dest)}
    return args


def main(argv=None) -> int:
    """The export (lfm.export.pipeline); errors are cli.run's to report: ExportError in one line,
    exit 2."""
    args = parse_args(argv)
    return export(args, args.given)


if __name__ == "__main__":
    sys.exit(run(main))
