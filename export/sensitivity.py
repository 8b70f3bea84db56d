"""Which layer loses the decisions when LFM is quantised? A per-layer INT8 sensitivity analysis.

    python export/sensitivity.py lfm.onnx --calib DIR [--test DIR] [--profile cpu|tensorrt]
                                 [--stress-count 32] [-o sensitivity.json]

LFM is a chain of five quantisable layers (conv1..conv4 of SNet, each with its ReLU and
max-pool, then the 1x1 salience conv). The fp32 model is quantised with the export's settings
several ways: every layer, one layer only (the others kept fp32), and every layer but one (the
export's default, conv3 and conv4 only, came from this); each is scored against the fp32 model
on a stress set (export/fidelity.py:
images of other kinds derived from the --test images, or from images of DIR left out of
calibration, plus synthetic ones). A layer whose "only" row moves the logits or flips decisions,
or whose "all but" row is much better than "all", is where the INT8 model loses them: keep it fp32
with ``export/to_onnx.py --int8 --int8-layers ...``. Rerun it on your own
model and images before you deploy an INT8 model in a domain the export's check did not cover.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from lfm.runtime.cli import ArgumentParser, run
from lfm.export.fidelity import FidelityReport


def sensitivity(fp32_path: str, calib_files: Sequence[str], test_groups: dict[str, list[str]], *,
                profile: str = "cpu", tmp_dir: str, progress=print, **quant_options) -> list[dict]:
    """Rows {config, int8_layers, report}: "all", then "only <layer>" and "all but <layer>" for
    each layer. ``test_groups`` are {group: files} scored by the fp32 model once and by each
    configuration; ``quant_options`` go to ``quantize_int8``."""
    import onnx

    from lfm.export.onnx_files import run_logits
    from lfm.export.quantize import quant_layers, quantize_int8

    model = onnx.load(fp32_path, load_external_data=False)
    layers = quant_layers(model)
    files, group_of = [], []
    for g, fs in test_groups.items():
        files += fs
        group_of += [g] * len(fs)
    ref, idx = run_logits(fp32_path, files)
    group_of = [group_of[i] for i in idx]
    threshold = 0.5
    props = {p.key: p.value for p in model.metadata_props}
    if "lfm.threshold" in props:
        threshold = float(props["lfm.threshold"])

    configs = [("all", [])]
    for layer in layers:
        configs.append((f"only {layer.name}", [o for o in layers if o is not layer]))
    for layer in layers:
        configs.append((f"all but {layer.name}", [layer]))
    rows = []
    for name, fp32_layers in configs:
        path = os.path.join(tmp_dir, name.replace(" ", "_") + ".onnx")
        int8 = [layer.name for layer in layers if layer not in fp32_layers]
        quantize_int8(fp32_path, path, calib_files, profile=profile, int8_layers=int8, **quant_options)
        test, idx_t = run_logits(path, files)
        if idx_t != idx:
            raise RuntimeError("the fp32 and int8 models read different images")
        report = FidelityReport.compare(ref, test, group_of, threshold)
        rows.append({"config": name, "int8_layers": int8, "report": report})
        o = report.overall
        progress(f"  {name:<18} flips {o.flips:>3}/{o.n:<4} sure flips {o.sure_flips:>3}  "
                 f"median |dlogit| {o.median_abs_dlogit:7.3f}  max {o.max_abs_dlogit:7.3f}")
        os.unlink(path)
    return rows


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("inf") if a else 1.0


def summarize(rows: list[dict]) -> list[str]:
    """Lines naming the layers that matter: those that alone move the logits most (the "only"
    rows), and those whose fp32 fallback helps most (the "all but" rows)."""
    base = rows[0]["report"].overall
    alone = sorted((r for r in rows if r["config"].startswith("only")),
                   key=lambda r: (-r["report"].overall.sure_flips, -r["report"].overall.median_abs_dlogit))
    lines = ["layers that alone move the logits most (int8 alone, the rest fp32):"]
    for r in alone:
        o = r["report"].overall
        lines.append(f"  {r['config']:<18} median |dlogit| {o.median_abs_dlogit:.3f}, sure flips {o.sure_flips}")
    lines.append("layers whose fp32 fallback helps most (every other layer int8):")
    helped = []
    for r in rows:
        if r["config"].startswith("all but"):
            o = r["report"].overall
            gain = _ratio(base.median_abs_dlogit, o.median_abs_dlogit)
            helped.append((gain, f"  {r['config']:<18} median |dlogit| {base.median_abs_dlogit:.3f} -> "
                                 f"{o.median_abs_dlogit:.3f} ({gain:.1f}x), flips {base.flips} -> {o.flips}"))
    return lines + [line for _, line in sorted(helped, key=lambda t: -t[0])]


def _parse(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("model", metavar="ONNX", help="the fp32 model (export/to_onnx.py)")
    p.add_argument("--calib", metavar="DIR", required=True, help="calibration images, as for --int8")
    p.add_argument("--calib-count", type=int, default=64, help="images that calibrate (default 64)")
    p.add_argument("--test", metavar="DIR", help="images of another kind to test on (default: images of --calib "
                                                 "left out of calibration)")
    p.add_argument("--stress-count", type=int, default=32, help="test images per stress group (default 32)")
    p.add_argument("--profile", choices=("cpu", "tensorrt"), default="cpu", help="INT8 profile (default cpu)")
    p.add_argument("-o", "--output", metavar="JSON", help="write the rows here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    import json
    import sys
    import tempfile

    from lfm.export.fidelity import make_stress_set
    from lfm.export.onnx_files import model_spec
    from lfm.export.quantize import QuantizeError, calibration_images

    from lfm.export.paths import output_problem
    from lfm.runtime.files import ReplacedAtEnd, overwrite_refusal

    args = _parse(argv)
    if not os.path.isfile(args.model):
        print(f"error: {args.model}: no such model file", file=sys.stderr)
        return 2
    problem = output_problem(args.output, "sensitivity.json") if args.output else None
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    try:
        files = calibration_images(args.calib, n=0)
        given_test = calibration_images(args.test, n=0) if args.test else []
        problem = overwrite_refusal([args.output], [("the model", args.model), *files, *given_test])
        if problem:  # before any other refusal: the output is wrong whatever else is
            print(f"error: {problem}", file=sys.stderr)
            return 2
        files = [files[i] for i in np.random.default_rng(0).permutation(len(files))]
        calib = files[:args.calib_count]
        test = given_test or files[args.calib_count:]
        if not test:
            raise QuantizeError(f"{args.calib}: no image left to test on; give --test DIR or more images")
        test = test[:args.stress_count]
        spec = model_spec(args.model)
        with tempfile.TemporaryDirectory(prefix="lfm-sensitivity-") as tmp:
            groups = make_stress_set(test, os.path.join(tmp, "stress"), spec, synthetic=args.stress_count)
            print(f"{args.model}: {len(calib)} calibration images, {sum(map(len, groups.values()))} test images "
                  f"in {len(groups)} groups; profile {args.profile}")
            rows = sensitivity(args.model, calib, groups, profile=args.profile, tmp_dir=tmp)
    except (QuantizeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in summarize(rows):
        print(line)
    if args.output:
        with ReplacedAtEnd(args.output) as f:  # renamed into place: a failed write keeps an earlier file
            json.dump([{**r, "report": r["report"].to_dict()} for r in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(run(main))
