"""Fit a model's threshold to your own images: a false-positive rate you choose, met on known-real images.

    python export/calibrate.py MODEL --real PATH... [--fake PATH...] --target-fpr F -o OUT
                               [--bound clopper-pearson|none] [--confidence 0.95]
                               [--uncertain-band B | --keep-band] [--report FILE.json] [--plot FILE.png]
    lfm calibrate lfm.onnx --real photos/ --fake generated/ --target-fpr 0.05 -o lfm.calibrated.onnx

MODEL is any model the runtime runs: an ONNX model, a checkpoint (ours, or upstream's .pth) or a
TensorRT plan with its PLAN.json sidecar. --real names known-real images of the kind you will
score (files, folders, globs); --fake, optionally, known generated ones. Each is scored with MODEL
through the runtime's Detector and the model's own preprocessing (its spec's policy and size, as
`lfm infer` scores by default; no --policy or --size here, since OUT must be used the way it was
calibrated). An image that cannot be scored gets a warning line and is left out (counted).

The threshold: just above the score of the (k+1)-th highest of the n real images (1e-3 in
logit, less where the next score seen is nearer), so at most k of them are called fake (fake
means a score strictly above the threshold, the runtime's one rule) and rounding in a re-run
flips none. --bound clopper-pearson (the default): k is the most that keeps the one-sided
Clopper-Pearson upper bound on the false-positive rate at or below --target-fpr with
--confidence, so the target holds for new real images of the same kind with that confidence,
not only for these (export/threshold_choice.py says why); a set too small for that even with no
false positive is refused in one line naming the number of real images it needs (59 for 5 % at
95 %). --bound none: k = target x n, the rate on these images only (a small set then
over-promises).

The uncertain band (records whose logit lies within it of the threshold's are flagged
'uncertain'): measured on these images as the runtime's default was on the reference images
(runtime/perturb.py, measured_band): every image scored (real and generated) is resized by 0.9,
0.95, 1.05 and 1.1 before the model's preprocessing and scored again by the same Detector; the
band is the 95th percentile of |logit - its clean logit| over all of them (4 more scorings per
image; a copy that cannot be scored is left out, counted). --uncertain-band B writes B instead
(logits; 0: never flagged); --keep-band keeps MODEL's own (none: the runtime's default, 7.8).

OUT is MODEL with the new threshold and the calibration's record in its spec, and nothing else
changed (the same graph, weights or plan: identical logits). The record (spec.extra
["calibration"]): method, target_fpr, confidence, threshold, counts, false_positives, achieved_fpr,
fpr_upper_bound, TPR, AP, AUC and EER on the fakes (null without), uncertain_band (logits, how:
measured / given / kept / default; measured: images, copies, left_out, factors, quantile),
data_sha256 (the images' contents), model_sha256, date (UTC) and lfm_version; the band measured or
given is also spec.extra["uncertain_band"], the key every runtime path reads. infer, serve, batch,
client (through the server) and the Python API use the threshold and the band; `lfm inspect OUT`
shows the record, and infer's and serve's summaries say the threshold was calibrated. An .onnx
MODEL gives an .onnx OUT (only its metadata differs); a checkpoint, a checkpoint of ours
(upstream's weights stored in our layout); a plan, the plan copied byte for byte and OUT.json, its
sidecar with the new spec. OUT, --report and --plot may not be MODEL, its sidecar or an image, by
any name.

Printed: a table of the threshold, FPR, its bound and TPR against the model's own threshold, AP,
AUC and EER, and the band with how many of the images lie within it of the new threshold. --report
FILE.json: the record, every image's logit and score, the images left out. --plot FILE.png: the ROC
curve with the target and the chosen point (needs --fake and the [viz] extra).

Exit status: 0 when OUT was written; 2 for bad arguments, a set too small for the target, or a
model that cannot be loaded (one line); 130 / 143 when interrupted (nothing is written).
"""
from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field

if __package__ in (None, ""):  # run as a script: don't let export/'s modules shadow libraries
    sys.path.pop(0)

import numpy as np  # noqa: E402

from lfm.export.threshold_choice import Choice, choose_threshold, fpr_upper_bound, reals_needed  # noqa: E402
from lfm.runtime.backends.base import REGISTRY, BackendError, backend_for, make_runner  # noqa: E402
from lfm.runtime.backends.trt_plan import sidecar_path  # noqa: E402
from lfm.runtime.cli import ArgumentParser, CommandError, Progress, argtype, number, run, version  # noqa: E402
from lfm.runtime.detector import Detector  # noqa: E402
from lfm.runtime.flags import BAND_KEY, band_text, is_uncertain  # noqa: E402
from lfm.runtime.files import (ReplacedAtEnd, file_sha256, first_line, give_default_mode, output_problem,  # noqa: E402
                               overwrite_refusal, write_target)
from lfm.runtime.inputs import expand_paths  # noqa: E402
from lfm.runtime.options import ModelArgs, OutputArgs, PipelineArgs, parse_and_check  # noqa: E402
from lfm.runtime.perturb import BAND_QUANTILE, BAND_RESIZES, band_logits, band_shifts, measured_band  # noqa: E402
from lfm.runtime.preprocess import ImageError, open_image  # noqa: E402
from lfm.runtime.spec import ModelSpec, is_fake, threshold_text  # noqa: E402
from lfm.train.metrics import average_precision, equal_error_rate, roc_auc, roc_curve  # noqa: E402  (numpy only)

BOUNDS = ("clopper-pearson", "none")
MODEL_ARGS = ModelArgs(only=("threads", "device"))
PIPELINE = PipelineArgs(only=("batch_size", "workers", "decode", "max_pixels", "uncertain_band"),
                        help={"uncertain_band": "write this band (logits; 0: never flag 'uncertain') into OUT instead "
                                                "of measuring it on the images (default: measured)"})
OUTPUT = OutputArgs(only=("output", "progress"), required=True, metavar="OUT",
                    help={"output": "the calibrated model, a file of MODEL's kind (.onnx; .pt/.pth; a plan, its "
                                    "sidecar OUT.json beside it)"})


class CalibrationError(CommandError):
    """A calibration that cannot be made as asked; the message is one line."""


def open_unit(what: str):
    """A check: a number strictly between 0 and 1."""
    within = number(0.0, 1.0, what)

    def check(value) -> float:
        value = within(value)
        if value in (0.0, 1.0):
            raise ValueError(f"must be {what} strictly between 0 and 1, got {value:g}")
        return value
    return check


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("model", metavar="MODEL", help="an ONNX model, a checkpoint (ours or upstream's) or a TensorRT plan")
    images = p.add_argument_group("images")
    images.add_argument("--real", nargs="+", required=True, metavar="PATH",
                        help="known real images of the kind you will score: files, folders, globs")
    images.add_argument("--fake", nargs="+", default=[], metavar="PATH",
                        help="known generated images, for TPR, AP, AUC, EER and the ROC curve (default: none)")
    rule = p.add_argument_group("threshold")
    rule.add_argument("--target-fpr", type=argtype(open_unit("a rate")), required=True, metavar="F",
                      help="the share of real images you accept being called fake, e.g. 0.05")
    rule.add_argument("--bound", choices=BOUNDS, default="clopper-pearson",
                      help="clopper-pearson: meet the target at the upper confidence bound, so it holds for new real "
                           "images with --confidence; none: on these images only")
    rule.add_argument("--confidence", type=argtype(open_unit("a probability")), default=0.95, metavar="C",
                      help="--bound clopper-pearson: the one-sided confidence level")
    report = p.add_argument_group("report")
    report.add_argument("--report", metavar="FILE.json", help="write the record, every image's scores and the "
                                                               "images left out here (default: none)")
    report.add_argument("--plot", metavar="FILE.png", help="draw the ROC curve here (needs --fake and the [viz] "
                                                          "extra) (default: none)")
    for group in (MODEL_ARGS, PIPELINE, OUTPUT):
        group.add_to(p)
    p.add_argument("--keep-band", action="store_true",
                   help="OUT keeps MODEL's uncertain band (its own, else the runtime's default) instead of one "
                        "measured on the images (skips the 4 resized copies of each image)")
    args = parse_and_check(p, argv, MODEL_ARGS, PIPELINE, OUTPUT)
    if args.plot and not args.fake:
        p.error("--plot draws the ROC curve, which needs generated images: give --fake")
    if args.keep_band and args.uncertain_band is not None:
        p.error("--keep-band keeps MODEL's band and --uncertain-band gives one: choose one")
    args.confidence_level = None if args.bound == "none" else args.confidence
    return args


# -- before any work: the files --------------------------------------------------------------------

def model_kind(model: str, out: str) -> str:
    """'model' (ONNX), 'checkpoint' or 'engine': MODEL's kind, which OUT must share."""
    kinds = {}
    for entry in REGISTRY.values():
        kinds.setdefault(entry.kind, set()).update(entry.extensions)
    listing = "; ".join(f"{kind} {', '.join(sorted(exts))}" for kind, exts in kinds.items())
    try:
        kind = backend_for(model).kind
    except BackendError:
        raise CalibrationError(f"{model}: cannot tell the kind of model from its extension ({listing})") from None
    if os.path.splitext(out)[1].lower() not in kinds[kind]:
        raise CalibrationError(f"{out}: OUT is written as MODEL is, a {kind} file: give it one of the extensions "
                               f"{', '.join(sorted(kinds[kind]))}")
    return kind


def image_set(paths: list[str], flag: str) -> list[str]:
    """The image files the arguments name (the runtime's listing rules); every one must exist."""
    expansion = expand_paths(paths)
    for note in expansion.notes:
        print(f"note: {flag}: {note}", file=sys.stderr)
    for arg, problem in expansion.errors.items():
        raise CalibrationError(f"{flag} {arg}: {problem}")
    for path in expansion.inputs:
        if not os.path.exists(path):
            raise CalibrationError(f"{flag} {path}: no such file or folder")
    if not expansion.inputs:
        raise CalibrationError(f"{flag} {' '.join(paths)}: no image files there")
    return expansion.inputs


def check_sets(real: list[str], fake: list[str]) -> None:
    both = {os.path.realpath(p) for p in real} & {os.path.realpath(p) for p in fake}
    if both:
        raise CalibrationError(f"{sorted(both)[0]}: is in both --real and --fake ({len(both)} such image(s)); "
                               "an image is one or the other")


def refuse_overwrites(args, images: list[str]) -> None:
    """The one output guard (files.overwrite_refusal) for OUT (and a plan's sidecar), --report and
    --plot, before anything is read as a model; and no two of them the same file."""
    plan = os.path.splitext(args.model)[1].lower() in REGISTRY["tensorrt"].extensions
    inputs = [("the model", args.model), *([("the model's sidecar", sidecar_path(args.model))] if plan else []),
              *(("one of the images", p) for p in images)]
    outputs = {"--output": [args.output] + ([sidecar_path(args.output)] if plan else []),
               "--report": [args.report], "--plot": [args.plot]}
    targets: dict[str, str] = {}
    for option, paths in outputs.items():
        for path in filter(None, paths):
            problem = output_problem(path, os.path.basename(path)) or overwrite_refusal([path], inputs, option)
            if not problem and write_target(path) in targets:
                problem = f"{path}: is also {targets[write_target(path)]}; choose another {option}"
            if problem:
                raise CalibrationError(problem)
            targets[write_target(path)] = f"the {option} file"


def check_enough(n_real: int, target: float, confidence: float | None, after: str = "") -> None:
    """Refuse, in one line, a real set too small to show the target at this confidence."""
    if confidence is None or n_real >= reals_needed(target, confidence):
        return
    raise CalibrationError(
        f"{n_real} real images{after} cannot show FPR <= {target:.3g} at {confidence:.3g} confidence: even with none "
        f"of them called fake that needs at least {reals_needed(target, confidence)} real images (give more, raise "
        "--target-fpr, lower --confidence, or --bound none for the rate on these images only)")


# -- scoring ------------------------------------------------------------------------------------------

@dataclass
class Scored:
    """Logits and scores of the images that were scored, by set, and those left out."""

    real: list = field(default_factory=list)  # [(path, logit, score)]
    fake: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # [(path, problem)]
    model_threshold: float = 0.5
    describe: str = ""
    band: dict = field(default_factory=dict)  # the uncertain band OUT gets and how (band_note)

    def array(self, which: str, column: int) -> np.ndarray:
        return np.array([row[column] for row in getattr(self, which)], dtype=np.float64)


def score(args, real: list[str], fake: list[str]) -> Scored:
    """Every image through the runtime's Detector with the model's own spec; a failure is a warning."""
    try:
        detector = Detector(make_runner(args.model, threads=args.threads, device=args.device), PIPELINE.options(args))
    except (BackendError, ValueError) as e:
        raise CalibrationError(first_line(e)) from None
    scored = Scored()
    progress = progress_line(args, len(real) + len(fake))
    with detector:
        scored.model_threshold, scored.describe = detector.spec.threshold, detector.runner.describe()
        for i, record in enumerate(detector.predict_iter(real + fake)):
            progress.update(record.ok)
            if not record.ok:
                progress.close()
                print(f"warning: {record.path}: {record.error}; left out", file=sys.stderr)
                scored.skipped.append((record.path, record.error))
                continue
            (scored.real if i < len(real) else scored.fake).append((record.path, record.logit, record.score))
        progress.close()
        if scored.real:
            scored.band = band_note(args, detector, scored)
    return scored


def progress_line(args, total: int, what: str = "scored") -> Progress:
    return Progress(total, what, enabled={"auto": None, "on": True, "off": False}[args.progress])


def band_note(args, detector: Detector, scored: Scored) -> dict:
    """The uncertain band OUT gets and how it was obtained: --uncertain-band as given, --keep-band
    MODEL's own (or, where it has none, the default the runtime then uses), else measured."""
    if args.uncertain_band is not None:
        return {"logits": args.uncertain_band, "how": "given"}
    if args.keep_band:
        own = isinstance(detector.spec.extra, dict) and detector.spec.extra.get(BAND_KEY) is not None
        return {"logits": detector.uncertain_band, "how": "kept" if own else "default"}
    return measure_band(args, detector, scored)


def measure_band(args, detector: Detector, scored: Scored) -> dict:
    """The band measured on the images scored, as the default was on the reference images
    (perturb.band_logits, measured_band): each resized by each of BAND_RESIZES before the model's
    policy, scored by the same Detector; BAND_QUANTILE of |logit - clean logit| over all of them."""
    rows = scored.real + scored.fake
    progress = progress_line(args, len(rows) * len(BAND_RESIZES), "resized copies scored")

    def decoded():
        for path, _, _ in rows:
            try:
                yield open_image(path, args.max_pixels)
            except ImageError:  # scored a moment ago: changed since; its copies are left out (counted)
                yield None

    def logits(copies):
        for record in detector.predict_iter(copies):
            progress.update(record.ok)
            yield record.logit if record.ok else math.nan

    clean = np.array([logit for _, logit, _ in rows])
    resized = band_logits(logits, decoded(), args.max_pixels)
    progress.close()
    band, measured = measured_band(clean, resized), np.isfinite(band_shifts(clean, resized))
    if band is None:
        raise CalibrationError("no resized copy of the images could be scored, so the uncertain band cannot be "
                               "measured: give it with --uncertain-band, or --keep-band")
    if not measured.all():
        print(f"warning: {int((~measured).sum())} of {measured.size} resized copies could not be scored; the "
              "uncertain band is measured without them", file=sys.stderr)
    return {"logits": band, "how": "measured", "images": int(measured.any(axis=1).sum()),
            "copies": int(measured.sum()), "left_out": int((~measured).sum()),
            "factors": [p.value for p in BAND_RESIZES], "quantile": BAND_QUANTILE}


# -- the record ----------------------------------------------------------------------------------------

def finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def data_fingerprint(scored: Scored) -> str:
    """SHA-256 over the sorted 'real|fake <file SHA-256>' lines of the images scored: the same images
    in the same roles give the same fingerprint, whatever their names or order."""
    lines = sorted(f"{which} {file_sha256(path)}\n" for which in ("real", "fake")
                   for path, _, _ in getattr(scored, which))
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def ranking_metrics(scored: Scored) -> dict:
    """AP, AUC and EER with the generated images as positives, ranked by logit (the sigmoid rounds
    logits above about 37 to a score of 1.0); null without generated images."""
    if not scored.fake:
        return {"ap": None, "auc": None, "eer": None}
    y = np.r_[np.zeros(len(scored.real)), np.ones(len(scored.fake))]
    logits = np.r_[scored.array("real", 1), scored.array("fake", 1)]
    return {"ap": finite(average_precision(y, logits)), "auc": finite(roc_auc(y, logits)),
            "eer": finite(equal_error_rate(y, logits))}


def rates_at(scored: Scored, threshold: float) -> dict:
    """False positives among the real images and true positives among the generated ones at a threshold."""
    fp = int(np.count_nonzero(is_fake(scored.array("real", 2), threshold)))
    tp = int(np.count_nonzero(is_fake(scored.array("fake", 2), threshold)))
    return {"threshold": threshold, "false_positives": fp, "fpr": fp / len(scored.real),
            "true_positives": tp, "tpr": tp / len(scored.fake) if scored.fake else None}


def calibration_record(args, choice: Choice, scored: Scored) -> dict:
    """What OUT's spec carries in extra["calibration"] (JSON values only)."""
    return {
        "method": "clopper-pearson" if args.confidence_level else "empirical",
        "target_fpr": args.target_fpr, "confidence": args.confidence_level,
        "threshold": choice.threshold, "previous_threshold": scored.model_threshold,
        "n_real": choice.n, "n_fake": len(scored.fake), "skipped": len(scored.skipped),
        "allowed_false_positives": choice.allowed, "false_positives": choice.false_positives,
        "achieved_fpr": choice.achieved_fpr, "fpr_upper_bound": choice.fpr_upper_bound,
        "tpr": rates_at(scored, choice.threshold)["tpr"], **ranking_metrics(scored), "uncertain_band": scored.band,
        "data_sha256": data_fingerprint(scored), "model_sha256": file_sha256(args.model),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "lfm_version": version(),
    }


# -- writing OUT: the same model, the new spec -----------------------------------------------------------

def calibrated(spec: ModelSpec, calibration: dict) -> ModelSpec:
    """The new threshold and record; the band where one was measured or given (kept: as it was)."""
    band = calibration.get("uncertain_band") or {}
    own = {BAND_KEY: band["logits"]} if band.get("how") in ("measured", "given") else {}
    return spec.replace(threshold=calibration["threshold"], extra={**spec.extra, **own, "calibration": calibration})


def write_onnx(model: str, out: str, calibration: dict) -> ModelSpec:
    """The same graph; the metadata's lfm.spec and lfm.threshold replaced."""
    import onnx

    from lfm.export.onnx_files import read_metadata, save_atomic, set_metadata, spec_of

    proto = onnx.load(model)
    props = read_metadata(proto)
    spec = calibrated(spec_of(props), calibration)
    set_metadata(proto, {**props, "lfm.spec": spec.to_json(), "lfm.threshold": repr(spec.threshold)})
    save_atomic(proto, out)
    return spec


def write_checkpoint(model: str, out: str, calibration: dict) -> ModelSpec:
    """Ours: the same dict with the new spec. Upstream's: its weights in our layout (what our loader
    makes of them), with the new spec."""
    from lfm.train.checkpoint import load_checkpoint, make_checkpoint, save_atomic

    loaded = load_checkpoint(model)
    spec = calibrated(loaded.spec, calibration)
    if loaded.source == "lfm-deploy":
        state = {**loaded.raw, "spec": spec.to_dict()}
    else:
        state = make_checkpoint(loaded.model, spec, converted_from={"source": loaded.source,
                                                                    "file": os.path.basename(model)})
    save_atomic(state, out)
    return spec


def write_plan(model: str, out: str, calibration: dict) -> ModelSpec:
    """The plan's bytes unchanged (its sidecar's SHA-256 still holds), its sidecar with the new spec."""
    from lfm.runtime.backends.trt_plan import read_sidecar, write_json_atomic

    sidecar = read_sidecar(model)
    spec = calibrated(ModelSpec.from_dict(sidecar["spec"]), calibration)
    target = write_target(out)
    fd, temp = tempfile.mkstemp(prefix=os.path.basename(target) + ".", suffix=".tmp", dir=os.path.dirname(target))
    try:
        give_default_mode(fd)
        with os.fdopen(fd, "wb") as f, open(model, "rb") as src:
            shutil.copyfileobj(src, f)
        os.replace(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)
    write_json_atomic(sidecar_path(out), {**sidecar, "spec": spec.to_dict()})
    return spec


WRITERS = {"model": write_onnx, "checkpoint": write_checkpoint, "engine": write_plan}


# -- the report ------------------------------------------------------------------------------------------

def percent(value) -> str:
    return "-" if value is None else f"{value:.1%}"


def report_lines(args, calibration: dict, scored: Scored, spec: ModelSpec) -> list[str]:
    c, before, after = calibration, rates_at(scored, scored.model_threshold), rates_at(scored, calibration["threshold"])
    n, n_fake = c["n_real"], c["n_fake"]
    how = (f"Clopper-Pearson upper bound at {c['confidence']:.0%} confidence" if c["confidence"]
           else "on these images only (--bound none)")
    # the model's own threshold was not chosen from these images: its bound is the plain Clopper-Pearson one
    old_bound = fpr_upper_bound(before["false_positives"], n, c["confidence"]) if c["confidence"] else None
    fakes = [f"{r['true_positives']}/{n_fake} = {percent(r['tpr'])}" for r in (before, after)] if n_fake else ["-", "-"]
    rows = [("", "model's", "calibrated"),
            ("threshold", f"{scored.model_threshold:.4g}", f"{c['threshold']:.4g}"),
            ("real called fake (FPR)", f"{before['false_positives']}/{n} = {percent(before['fpr'])}",
             f"{c['false_positives']}/{n} = {percent(c['achieved_fpr'])}"),
            (f"FPR upper bound ({c['confidence']:.0%})" if c["confidence"] else "FPR upper bound", percent(old_bound),
             percent(c["fpr_upper_bound"])),
            ("generated called fake (TPR)", *fakes)]
    lines = [f"calibration of {args.model} on {n} real and {n_fake} generated images"
             + (f" ({c['skipped']} left out)" if c["skipped"] else "")
             + f"; target FPR {c['target_fpr']:.3g}, {how}"]
    lines += [f"  {a:<30}{b:<20}{d}" for a, b, d in rows]
    if n_fake:
        lines.append(f"  AP {c['ap']:.4f}   AUC {c['auc']:.4f}   EER {percent(c['eer'])}   (any threshold; ranked by logit)")
    logits = [logit for which in ("real", "fake") for _, logit, _ in getattr(scored, which)]
    within = sum(is_uncertain(logit, c["threshold"], c["uncertain_band"]["logits"]) for logit in logits)
    lines.append(f"  {band_text(spec)}: {within} of these {len(logits)} images lie within it of the threshold "
                 "(flagged 'uncertain')")
    if c["threshold"] >= 1.0:
        lines.append("  warning: the threshold is 1: no image will be called fake (real images score 1.0)")
    return lines


def write_report(path: str, args, calibration: dict, scored: Scored) -> None:
    images = [{"path": p, "set": which, "logit": logit, "score": s} for which in ("real", "fake")
              for p, logit, s in getattr(scored, which)]
    report = {"model": args.model, "output": args.output, "calibration": calibration,
              "at_model_threshold": rates_at(scored, scored.model_threshold), "images": images,
              "left_out": [{"path": p, "error": e} for p, e in scored.skipped]}
    with ReplacedAtEnd(path) as f:
        json.dump(report, f, indent=2)
        f.write("\n")


def pyplot_figure():
    """matplotlib's Figure (the [viz] extra); imported before the work, so a missing extra is one line first."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure


def plot_roc(path: str, args, calibration: dict, scored: Scored) -> None:
    y = np.r_[np.zeros(len(scored.real)), np.ones(len(scored.fake))]
    fpr, tpr, _ = roc_curve(y, np.r_[scored.array("real", 1), scored.array("fake", 1)])
    c = calibration
    fig = pyplot_figure()(figsize=(4.6, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.plot(fpr, tpr, color="black", label=f"ROC (AUC {c['auc']:.3f}, EER {percent(c['eer'])})")
    ax.axvline(c["target_fpr"], color="tab:red", linestyle=":", label=f"target FPR {percent(c['target_fpr'])}")
    if c["fpr_upper_bound"] is not None:
        ax.axvline(c["fpr_upper_bound"], color="tab:orange", linestyle="--", linewidth=1,
                   label=f"FPR bound {percent(c['fpr_upper_bound'])} ({c['confidence']:.0%} confidence)")
    ax.plot([c["achieved_fpr"]], [c["tpr"]], "o", color="tab:blue",
            label=f"threshold {c['threshold']:.3g}: FPR {percent(c['achieved_fpr'])}, TPR {percent(c['tpr'])}")
    ax.set_xlabel(f"false-positive rate ({c['n_real']} real images)")
    ax.set_ylabel(f"true-positive rate ({c['n_fake']} generated images)")
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(os.path.basename(args.model), fontsize="medium")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    target = write_target(path)
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".png", dir=os.path.dirname(target))
    os.close(fd)
    try:
        fig.savefig(temp, dpi=110, metadata={"Software": None})
        give_default_mode(temp)
        os.replace(temp, target)
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


# -- the command -----------------------------------------------------------------------------------------

def main(argv=None) -> int:
    args = parse_args(argv)
    real = image_set(args.real, "--real")
    fake = image_set(args.fake, "--fake") if args.fake else []
    refuse_overwrites(args, real + fake)
    kind = model_kind(args.model, args.output)
    check_sets(real, fake)
    check_enough(len(real), args.target_fpr, args.confidence_level)
    if args.plot:
        pyplot_figure()
    scored = score(args, real, fake)
    if not scored.real:
        raise CalibrationError(f"none of the {len(real)} real images could be scored (see the warnings)")
    check_enough(len(scored.real), args.target_fpr, args.confidence_level, after=" that could be scored")
    choice = choose_threshold(scored.array("real", 1), args.target_fpr, args.confidence_level, scored.array("fake", 1))
    calibration = calibration_record(args, choice, scored)
    spec = WRITERS[kind](args.model, args.output, calibration)
    print("\n".join(report_lines(args, calibration, scored, spec)))
    if args.report:
        write_report(args.report, args, calibration, scored)
    if args.plot:
        plot_roc(args.plot, args, calibration, scored)
    written = [args.output] + [p for p in (args.report, args.plot) if p]
    print(f"wrote {', '.join(written)}: {threshold_text(spec)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
