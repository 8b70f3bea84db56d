"""How far does training get on the synthetic data in at most 3 minutes of CPU?

    python benchmarks/train_synthetic.py [--minutes 3] [--output-dir benchmarks/results]

Makes the synthetic dataset (not timed), runs ``train/train.py`` with a wall-clock budget
(the whole process, start-up and every validation included, must end inside --minutes),
then scores best.pt with ``train/evaluate.py`` on the held-out split. Writes
train_synthetic.json (settings, machine, per-epoch log, final per-subset figures) and prints
a summary. Target (issue 2): at least 95 % validation accuracy within 3 minutes on 2 cores.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The recipe demo.sh uses too: 128 px synthetic images, 96 px random crops, whole-image eval.
DATA = ["--n", "2000", "--size", "128", "--seed", "0"]
TRAIN = ["--load-size", "0", "--crop-size", "96", "--eval-policy", "center-crop", "--eval-size", "128",
         "--batch-size", "32", "--steps-per-epoch", "25", "--workers", "1", "--progress", "none", "--seed", "0"]


def machine() -> dict:
    import torch

    cpu = platform.processor()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "platform": platform.platform()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=3.0, help="wall-clock budget for the whole training run")
    p.add_argument("--output-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--work-dir", default=None, help="where data and checkpoints go (default: a temp folder)")
    args = p.parse_args(argv)

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="lfm-bench-"))
    data, run = work / "data", work / "run"
    subprocess.run([sys.executable, str(ROOT / "train" / "make_synthetic.py"), str(data), *DATA, "--force"],
                   check=True, stdout=subprocess.DEVNULL)
    # Leave ~25 s of the budget for start-up, the last validation and the checkpoint writes.
    budget = max(0.5, args.minutes - 25 / 60)
    cmd = [sys.executable, str(ROOT / "train" / "train.py"), "--data", str(data), "--out", str(run),
           "--max-minutes", f"{budget:.3f}", *TRAIN]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - t0
    report_path = work / "eval.json"
    subprocess.run([sys.executable, str(ROOT / "train" / "evaluate.py"), str(run / "best.pt"), "--data",
                    str(data / "val"), "--workers", "1", "-o", str(report_path)], check=True)
    evaluation = json.load(open(report_path))["results"]
    log = [json.loads(line) for line in open(run / "metrics.jsonl")]
    first_95 = next((e for e in log if e["val_acc"] >= 0.95), None)
    result = {
        "benchmark": "train_synthetic",
        "command": "python benchmarks/train_synthetic.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine(),
        "budget_minutes": args.minutes,
        "train_command": " ".join(["python", "train/train.py", "--data", "DATA", "--out", "RUN",
                                   "--max-minutes", f"{budget:.3f}", *TRAIN]),
        "data": " ".join(["python", "train/make_synthetic.py", "DATA", *DATA]),
        "train_wall_s": round(wall, 1),
        "within_budget": wall <= args.minutes * 60,
        "val_acc": evaluation["mean"]["acc"],
        "val_ap": evaluation["mean"]["ap"],
        "first_epoch_at_95": None if first_95 is None else {"epoch": first_95["epoch"], "elapsed_s": first_95["elapsed_s"]},
        "per_subset": evaluation,
        "epochs": log,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_synthetic.json").write_text(json.dumps(result, indent=2) + "\n")
    ok = result["within_budget"] and result["val_acc"] >= 0.95
    print(f"\ntrain_synthetic: {wall:.0f} s of {args.minutes * 60:.0f} s budget, val acc {100 * result['val_acc']:.2f} %, "
          f"AP {100 * result['val_ap']:.2f} %"
          + (f"; >= 95 % first at epoch {first_95['epoch']} ({first_95['elapsed_s']:.0f} s)" if first_95 else "")
          + f" -> {'PASS' if ok else 'FAIL'} (target: >= 95 % within {args.minutes:g} min); wrote {out / 'train_synthetic.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
