"""Evaluate any deployed model on labelled folders, clean and under the degradations users' images go through.

    python train/evaluate.py MODEL --data DIR [--classes a,b] [--perturb jpeg:95,75,50 ...] [-o eval.json] [--plot acc.png]

MODEL is what the runtime runs: a checkpoint (.pt, .pth; PyTorch, ours or upstream's), an ONNX
model (.onnx; auto: ONNX Runtime or OpenVINO, or --backend) or a TensorRT engine (.plan). Every image is
scored through the runtime's Detector, as infer.py scores it: the same decoding, the model's
policy, size and threshold unless overridden. DIR is root/<subset>/{0_real,1_fake}/* or
root/{0_real,1_fake}/*.

--perturb KIND:V[,V...] (repeatable) scores every image again under each value of each
degradation, applied to the decoded image before the model's preprocessing, as a user's pipeline
would have degraded it: jpeg:Q (Pillow JPEG at quality Q), resize:S (by the factor S, bicubic),
blur:R (Gaussian, standard deviation R px), crop:PX (the central PX x PX square); see
lfm.runtime.perturb. Each value is a condition named KIND:V (jpeg:75, resize:0.5) beside clean.

Prints the paper's table for clean images (accuracy, AP, AUC, real and fake accuracy per subset
and their mean), then one line per condition over all images, with the decisions that changed
against clean. -o writes every condition's figures per subset and overall, and each image's logit
under each condition, as JSON; --plot draws accuracy against each degradation's value.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

if __package__ in (None, ""):  # run as a script: don't let train/'s modules shadow libraries
    sys.path.pop(0)

import numpy as np
import torch

from lfm.runtime.backends import BackendError, make_runner
from lfm.runtime.cli import ArgumentParser, CommandError, argtype, describe_os_error, run
from lfm.runtime.detector import Detector
from lfm.runtime.files import ReplacedAtEnd, output_problem, overwrite_refusal
from lfm.runtime.options import ModelArgs, OutputArgs, PipelineArgs, parse_and_check, usable_cpus
from lfm.runtime.perturb import Perturbation, parse_perturbations
from lfm.runtime.preprocess import ImageError, open_image
from lfm.train.data import BadFileLog, DatasetError, check_image_header, find_samples
from lfm.train.metrics import binary_metrics

METRICS = ("acc", "ap", "auc", "real_acc", "fake_acc")
CLEAN = "clean"


class EvaluateError(CommandError):
    """A model, data folder or output evaluate cannot use: one line, exit 2."""


@torch.no_grad()
def predict(model, loader, device, amp: bool = False, on_bad=None):
    """Training's validation pass: the model in this process over a loader of (images, labels,
    indices, bad_indices). Returns (indices, labels, logits) as numpy arrays in loader order;
    unreadable files are passed to ``on_bad(index)`` and left out of the arrays."""
    model.eval()
    idx, labels, logits = [], [], []
    for images, y, index, bad in loader:
        for i in bad:
            if on_bad is not None:
                on_bad(i)
        if len(index) == 0:
            continue
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
            out = model(images.to(device, non_blocking=True))
        logits.append(out.float().cpu().numpy())
        labels.append(y.numpy())
        idx.append(np.asarray(index))
    if not idx:
        return np.zeros(0, int), np.zeros(0, np.float32), np.zeros(0, np.float32)
    return np.concatenate(idx), np.concatenate(labels), np.concatenate(logits)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))


def subset_metrics(samples, indices, logits, threshold: float = 0.5) -> dict:
    """{subset: metrics} for every subset present, plus "mean" over subsets (as the paper averages)."""
    subsets = np.array([samples[i].subset for i in indices])
    labels = np.array([samples[i].label for i in indices])
    logits = np.asarray(logits, dtype=np.float64)
    out = {}
    for name in sorted(set(subsets.tolist())):
        m = subsets == name
        out[name] = binary_metrics(labels[m], sigmoid(logits[m]), threshold, logits=logits[m])
    out["mean"] = mean_over_subsets(list(out.values()))
    return out


def mean_over_subsets(per: list[dict]) -> dict:
    mean = {k: float(np.nanmean([p[k] for p in per])) if per else float("nan") for k in METRICS}
    mean["n"] = int(sum(p["n"] for p in per))
    return mean


def _percent(value: float) -> str:
    return f"{100 * value:8.2f}" if not math.isnan(value) else f"{'-':>8}"


def format_table(results: dict) -> str:
    head = f"{'subset':<16}{'n':>7}{'acc':>8}{'AP':>8}{'AUC':>8}{'r_acc':>8}{'f_acc':>8}"
    lines = [head, "-" * len(head)]
    for name, m in results.items():
        if name == "mean":
            lines.append("-" * len(head))
        lines.append(f"{name:<16}{m['n']:>7}" + "".join(_percent(m[k]) for k in METRICS))
    return "\n".join(lines)


def readable_samples(samples, bad: BadFileLog) -> list:
    """The samples whose header reads as an image; each other one goes to ``bad`` (one warning
    naming it), so the files skipped here and those failing at decode are counted together."""
    kept = []
    for s in samples:
        reason = check_image_header(s.path)
        if reason is None:
            kept.append(s)
        else:
            bad.add(s.path, reason)
    return kept


def plain_warnings():
    """Command-line warnings as one 'warning: ...' line, without the source location."""
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"


# -- the command line -------------------------------------------------------------------------------

MODEL = ModelArgs(positional=True, only=("backend", "providers", "threads", "device"))
PIPELINE = PipelineArgs(only=("policy", "size", "threshold", "batch_size", "workers", "tile_reduce", "max_tiles",
                              "max_pixels", "max_model_pixels"),
                        defaults={"batch_size": 32, "workers": min(4, usable_cpus())},
                        help={"workers": "decoding threads"})
OUTPUT = OutputArgs(only=("output",), help={"output": "JSON file for the figures (default: print only)"})


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--data", required=True, help="root/<subset>/{0_real,1_fake}/* or root/{0_real,1_fake}/*")
    p.add_argument("--classes", default=None, help="comma-separated subsets to evaluate (default: all)")
    p.add_argument("--perturb", action="append", default=[], metavar="KIND:V,V",
                   type=argtype(parse_perturbations, "perturbation"),
                   help="also score every image degraded so, one condition per value (repeatable): jpeg:Q, "
                        "resize:S, blur:R, crop:PX, e.g. --perturb jpeg:95,75,50 --perturb resize:0.5,2")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="draw accuracy against each --perturb kind's value (needs the [viz] extra)")
    p.add_argument("--amp", action="store_true", help="a checkpoint on CUDA: float16 autocast (faster; "
                                                      "default: exact fp32)")
    for group in (MODEL, PIPELINE, OUTPUT):
        group.add_to(p)
    args = parse_and_check(p, argv, MODEL, PIPELINE, OUTPUT)
    args.perturb = list({x.name: x for group in args.perturb for x in group}.values())  # each condition once
    if args.plot and not args.perturb:
        p.error("--plot draws accuracy against --perturb's values: give at least one --perturb")
    if args.plot and args.output and os.path.abspath(args.plot) == os.path.abspath(args.output):
        p.error("--plot and --output name the same file")
    return args


# -- scoring ----------------------------------------------------------------------------------------

@dataclass
class Scored:
    """One condition's answers, by sample index: logit and decision of each image scored, and
    the problem of each that could not be."""

    logit: dict[int, float] = field(default_factory=dict)
    fake: dict[int, bool] = field(default_factory=dict)
    failed: dict[int, str] = field(default_factory=dict)


def score(detector: Detector, samples, indices, load) -> Scored:
    """Score ``samples[i]`` for each i of ``indices``; ``load(path)`` is the item the Detector
    gets (the path itself, or the decoded image degraded); its ImageError is that image's failure."""
    out, sent = Scored(), []

    def items():
        for i in indices:
            try:
                item = load(samples[i].path)
            except ImageError as e:
                out.failed[i] = e.problem
                continue
            sent.append(i)
            yield item

    records = list(detector.predict_iter(items()))
    for i, record in zip(sent, records):
        if record.ok:
            out.logit[i], out.fake[i] = record.logit, record.label == "fake"
        else:
            out.failed[i] = record.error
    return out


def degraded(perturbation: Perturbation, max_pixels: int):
    """path -> the decoded image (as the runtime decodes it) after ``perturbation``."""
    return lambda path: perturbation.apply(open_image(path, max_pixels), max_pixels)


# -- figures ----------------------------------------------------------------------------------------

def group_metrics(samples, members: list[int], scored: Scored, clean: Scored, threshold: float) -> dict:
    """The figures of one condition over the samples ``members``: binary_metrics on those it
    scored, the decisions that differ from clean (over those scored in both), its failures."""
    done = [i for i in members if i in scored.logit]
    logits = np.array([scored.logit[i] for i in done], dtype=np.float64)
    m = binary_metrics([samples[i].label for i in done], sigmoid(logits), threshold, logits=logits)
    both = [i for i in done if i in clean.fake]
    changed = sum(scored.fake[i] != clean.fake[i] for i in both)
    m.update(changed=int(changed), changed_share=changed / len(both) if both else float("nan"),
             failed=sum(i in scored.failed for i in members))
    return m


def condition_report(samples, scored: Scored, clean: Scored, threshold: float) -> dict:
    """{"overall": all images, "mean": the mean over subsets (the paper's), "subsets": {name: ...}}."""
    by_subset: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        by_subset.setdefault(s.subset, []).append(i)
    subsets = {name: group_metrics(samples, members, scored, clean, threshold)
               for name, members in sorted(by_subset.items())}
    return {"overall": group_metrics(samples, list(range(len(samples))), scored, clean, threshold),
            "mean": mean_over_subsets(list(subsets.values())), "subsets": subsets}


def format_conditions(report: dict) -> str:
    head = (f"{'condition':<14}{'n':>6}{'acc':>8}{'AP':>8}{'AUC':>8}{'r_acc':>8}{'f_acc':>8}"
            f"{'changed':>9}{'%':>7}{'failed':>7}")
    lines = [head, "-" * len(head)]
    for name, c in report.items():
        m = c["overall"]
        share = f"{100 * m['changed_share']:7.1f}" if not math.isnan(m["changed_share"]) else f"{'-':>7}"
        lines.append(f"{name:<14}{m['n']:>6}" + "".join(_percent(m[k]) for k in METRICS)
                     + f"{m['changed']:>9}{share}{m['failed']:>7}")
    return "\n".join(lines)


def per_image(samples, conditions: dict[str, Scored]) -> list[dict]:
    return [{"path": s.path, "subset": s.subset, "label": s.label,
             "logit": {name: c.logit.get(i) for name, c in conditions.items()},
             **({"error": {name: c.failed[i] for name, c in conditions.items() if i in c.failed}}
                if any(i in c.failed for c in conditions.values()) else {})}
            for i, s in enumerate(samples)]


def plot_accuracy(report: dict, perturbations: list[Perturbation], path: str) -> None:
    """Accuracy (all, real, generated) against each degradation's value, clean as its own mark
    (at scale 1 for resize: the image as it came)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    kinds = list(dict.fromkeys(p.kind for p in perturbations))
    unchanged = {"resize": 1.0, "blur": 0.0}  # the value at which the degradation is the clean image
    axis = {"jpeg": "JPEG quality", "resize": "scale factor (bicubic)", "blur": "Gaussian blur sigma (px)",
            "crop": "central crop side (px)"}
    ncols = min(2, len(kinds))
    nrows = -(-len(kinds) // ncols)
    fig = Figure(figsize=(4.6 * ncols, 3.4 * nrows), layout="constrained")
    clean = report[CLEAN]["overall"]
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(kinds):]:
        ax.set_visible(False)
    for ax, kind in zip(axes, kinds):
        chosen = [(p.value, report[p.name]["overall"]) for p in perturbations if p.kind == kind]
        if kind in unchanged:
            chosen.append((unchanged[kind], report[CLEAN]["overall"]))
        chosen.sort(key=lambda point: point[0])
        for key, label, colour in (("acc", "all", "black"), ("real_acc", "real", "tab:blue"),
                                   ("fake_acc", "generated", "tab:red")):
            ax.plot([v for v, _ in chosen], [100 * m[key] for _, m in chosen], "o-", color=colour, label=label)
            ax.axhline(100 * clean[key], color=colour, linestyle=":", linewidth=1)
        ax.set_xlabel(f"{axis[kind]}; dotted: clean")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(-3, 103)
        if kind == "jpeg":
            ax.invert_xaxis()  # worse to the right
        ax.grid(alpha=0.3)
    fig.axes[0].legend(loc="best", fontsize="small")
    fig.savefig(path, dpi=110, metadata={"Software": None})


# -- the run ----------------------------------------------------------------------------------------

def load_samples(args, bad: BadFileLog) -> tuple[list, int]:
    """The labelled samples whose header reads, and how many files were found."""
    try:
        classes = args.classes.split(",") if args.classes else None
        found = find_samples(args.data, classes, check=False)  # checked here, so each skip is counted
        protected = [("the model", args.model_file), ("the engine's sidecar", args.model_file + ".json"),
                     *(s.path for s in found)]
        for output, option in ((args.output, "--output"), (args.plot, "--plot")):
            problem = overwrite_refusal([output], protected, option)
            if problem:
                raise EvaluateError(problem)
        return readable_samples(found, bad), len(found)
    except DatasetError as e:
        raise EvaluateError(str(e)) from None
    except OSError as e:  # a folder of --data that cannot be listed
        raise EvaluateError(f"{e.filename or args.data}: cannot read it ({describe_os_error(e)}); check its "
                            "permissions") from None


def open_detector(args) -> Detector:
    try:
        runner = make_runner(**MODEL.runner_arguments(args, **({"amp": True} if args.amp else {})))
        return Detector(runner, PIPELINE.options(args))
    except (BackendError, ValueError) as e:
        raise EvaluateError(str(e)) from None


def write_report(path: str, report: dict) -> None:
    try:  # beside it, then renamed: a failed write leaves an earlier report as it was
        with ReplacedAtEnd(path) as f:
            json.dump(report, f, indent=2)
    except OSError as e:
        raise EvaluateError(f"{path}: cannot write the report ({describe_os_error(e)})") from None


def main(argv=None) -> int:
    args = parse_args(argv)
    plain_warnings()
    for path, example in ((args.output, "eval.json"), (args.plot, "accuracy.png")):
        problem = output_problem(path, example) if path else None
        if problem:  # before the work, and no folder is created for it
            raise EvaluateError(problem)
    if args.plot:
        import matplotlib  # noqa: F401  (a missing [viz] extra is said now, not after the work)
    bad = BadFileLog()  # one warning per skipped file, naming it; its count is the one printed
    samples, found = load_samples(args, bad)
    if not samples:
        raise EvaluateError(f"{args.data}: none of its {found} files is a usable image (each named above)")
    t0 = time.perf_counter()
    with open_detector(args) as detector:
        spec, describe = detector.spec, detector.runner.describe()
        clean = score(detector, samples, range(len(samples)), lambda path: path)
        for i, problem in clean.failed.items():
            bad.add(samples[i].path, problem)
        conditions = {CLEAN: clean}
        usable = sorted(clean.logit)
        for p in args.perturb:
            conditions[p.name] = score(detector, samples, usable, degraded(p, detector.max_pixels))
    elapsed = time.perf_counter() - t0
    kept = [i for i in range(len(samples)) if i in clean.logit]
    results = subset_metrics(samples, kept, [clean.logit[i] for i in kept], spec.threshold)
    print(format_table(results))
    report = {name: condition_report(samples, c, clean, spec.threshold) for name, c in conditions.items()}
    if args.perturb:
        print()
        print(format_conditions(report))
    scored = sum(len(c.logit) for c in conditions.values())
    print(f"{len(kept)} images in {elapsed:.1f} s ({scored / max(elapsed, 1e-9):.1f} images/s over "
          f"{len(conditions)} condition{'s' * (len(conditions) != 1)}); {describe}; policy {spec.policy} {spec.size}, "
          f"threshold {spec.threshold}; {bad.count} file{'s' * (bad.count != 1)} skipped"
          f"{' (each named above)' if bad.count else ''}")
    if args.output:
        write_report(args.output, {
            "command": ["train/evaluate.py", *(sys.argv[1:] if argv is None else argv)],
            "model": os.path.abspath(args.model_file), "backend": describe, "data": os.path.abspath(args.data),
            "spec": spec.to_dict(), "results": results,
            "conditions": {name: {"perturbation": None if name == CLEAN else p.describe(), **report[name]}
                           for name, p in [(CLEAN, None), *((p.name, p) for p in args.perturb)]},
            "images": per_image(samples, conditions), "skipped": bad.reasons})
        print(f"wrote {args.output}")
    if args.plot:
        plot_accuracy(report, args.perturb, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
