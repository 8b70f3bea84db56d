"""Evaluate a checkpoint (ours or upstream's) on a ForenSynths-layout folder, per subset.

    python train/evaluate.py CKPT --data DIR [--classes a,b] [--policy resize] [--output eval.json]

Prints a table in the paper's style (accuracy, AP, real and fake accuracy per subset, and their
means) and writes the same figures as JSON.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings

if __package__ in (None, ""):  # run as a script: don't let train/'s modules shadow libraries
    sys.path.pop(0)

import numpy as np
import torch
from torch.utils.data import DataLoader

from lfm.runtime.cli import ArgumentParser, describe_os_error, run
from lfm.runtime.files import ReplacedAtEnd, output_problem, overwrite_refusal
from lfm.runtime.options import ModelArgs, OutputArgs, PipelineArgs, parse_and_check, usable_cpus
from lfm.train.checkpoint import CheckpointError, load_checkpoint
from lfm.train.data import (BadFileLog, DatasetError, EvalTransform, ImageDataset, check_image_header, collate_skip_bad,
                            find_samples)
from lfm.train.metrics import binary_metrics
from lfm.train.model import use_exact_fp32

METRICS = ("acc", "ap", "real_acc", "fake_acc")


@torch.no_grad()
def predict(model, loader, device, amp: bool = False, on_bad=None):
    """Run the model over a loader of (images, labels, indices, bad_indices).

    Returns (indices, labels, logits) as numpy arrays in loader order; unreadable files are
    passed to ``on_bad(index)`` and left out of the arrays.
    """
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
    scores = sigmoid(logits)
    out = {}
    for name in sorted(set(subsets.tolist())):
        m = subsets == name
        out[name] = binary_metrics(labels[m], scores[m], threshold)
    per = [out[k] for k in out]
    out["mean"] = {k: float(np.nanmean([p[k] for p in per])) if per else float("nan") for k in METRICS}
    out["mean"]["n"] = int(sum(p["n"] for p in per))
    return out


def format_table(results: dict) -> str:
    head = f"{'subset':<16}{'n':>7}{'acc':>8}{'AP':>8}{'r_acc':>8}{'f_acc':>8}"
    lines = [head, "-" * len(head)]
    for name, m in results.items():
        if name == "mean":
            lines.append("-" * len(head))
        cells = "".join(f"{100 * m[k]:8.2f}" if not math.isnan(m[k]) else f"{'-':>8}" for k in METRICS)
        lines.append(f"{name:<16}{m['n']:>7}{cells}")
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


PIPELINE = PipelineArgs(only=("policy", "size", "threshold", "batch_size", "workers"),
                        defaults={"batch_size": 32, "workers": min(4, usable_cpus())}, help={
                            "policy": "eval preprocessing: resize, center-crop or none (default: the checkpoint's, "
                                      "upstream's is resize to 256)",
                            "workers": "data-loading processes"})
BACKEND = ModelArgs(only=("device",))
OUTPUT = OutputArgs(only=("output",), help={"output": "JSON file for the figures (default: print only)"})


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="our ckpt.pt or upstream's .pth")
    p.add_argument("--data", required=True, help="root/<subset>/{0_real,1_fake}/* or root/{0_real,1_fake}/*")
    p.add_argument("--classes", default=None, help="comma-separated subsets to evaluate (default: all)")
    p.add_argument("--amp", action="store_true", help="float16 autocast on CUDA (faster; default: exact fp32)")
    for group in (BACKEND, PIPELINE, OUTPUT):
        group.add_to(p)
    args = parse_and_check(p, argv, BACKEND, PIPELINE, OUTPUT)
    if args.policy == "tiles":  # the training pipeline's transforms give one tensor per image
        p.error("--policy tiles is not evaluated here: use resize, center-crop or none (infer.py scores tiles)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    plain_warnings()

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    problem = output_problem(args.output, "eval.json") if args.output else None
    if problem:  # before the work, and no folder is created for it
        print(f"error: {problem}", file=sys.stderr)
        return 2
    bad = BadFileLog()  # one warning per skipped file, naming it; its count is the one printed
    try:
        classes = args.classes.split(",") if args.classes else None
        found = find_samples(args.data, classes, check=False)  # checked here, so each skip is counted
        problem = overwrite_refusal([args.output], [("the checkpoint", args.checkpoint), *(s.path for s in found)])
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
        ckpt = load_checkpoint(args.checkpoint)
        samples = readable_samples(found, bad)
    except (CheckpointError, DatasetError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a folder of --data that cannot be listed
        print(f"error: {e.filename or args.data}: cannot read it ({describe_os_error(e)}); check its "
              "permissions", file=sys.stderr)
        return 2
    if not samples:
        print(f"error: {args.data}: none of its {len(found)} files is a usable image (each named above)",
              file=sys.stderr)
        return 2
    spec = ckpt.spec.replace(policy=args.policy, size=args.size, threshold=args.threshold)
    dataset = ImageDataset(samples, EvalTransform(spec.policy, spec.size, spec.mean, spec.std))
    # Native-size images differ in shape: they cannot share a batch.
    batch_size = 1 if spec.policy == "none" else args.batch_size
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=args.workers,
                        collate_fn=collate_skip_bad)
    model = ckpt.model.to(device)
    t0 = time.perf_counter()
    amp = args.amp and device.type == "cuda"
    if device.type == "cuda" and not amp:
        use_exact_fp32()
    indices, _, logits = predict(model, loader, device, amp=amp,
                                 on_bad=lambda i: bad.add_indices(dataset, [i]))
    elapsed = time.perf_counter() - t0
    results = subset_metrics(samples, indices, logits, spec.threshold)
    print(format_table(results))
    print(f"{len(indices)} images in {elapsed:.1f} s ({len(indices) / max(elapsed, 1e-9):.1f} images/s); "
          f"policy {spec.policy} {spec.size}, threshold {spec.threshold}; "
          f"{bad.count} file{'s' * (bad.count != 1)} skipped{' (each named above)' if bad.count else ''}")
    if args.output:
        report = {"checkpoint": os.path.abspath(args.checkpoint), "data": os.path.abspath(args.data),
                  "spec": spec.to_dict(), "results": results, "skipped": bad.reasons}
        try:  # beside it, then renamed: a failed write leaves an earlier report as it was
            with ReplacedAtEnd(args.output) as f:
                json.dump(report, f, indent=2)
        except OSError as e:
            print(f"error: {args.output}: cannot write the report ({describe_os_error(e)})", file=sys.stderr)
            return 2
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
