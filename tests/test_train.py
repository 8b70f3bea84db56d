"""Training and evaluation end to end, on tiny synthetic data and on upstream's reference images."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lfm.train.checkpoint import load_checkpoint, save_atomic
from lfm.train.make_synthetic import make_synthetic
from lfm.train.metrics import average_precision

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, str(ROOT / "train" / "train.py")]
EVALUATE = [sys.executable, str(ROOT / "train" / "evaluate.py")]
# Tiny and fast: 64 px images, 48 px crops (the minimum for K=16), no workers.
FAST = ["--load-size", "0", "--crop-size", "48", "--eval-policy", "center-crop", "--eval-size", "64",
        "--batch-size", "4", "--workers", "0", "--progress", "none"]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn") / "data"
    make_synthetic(root, n=48, size=64, seed=0)
    return root


def run(cmd, **kw):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, **kw)


def test_train_writes_checkpoints_and_log_then_resumes(tiny_data, tmp_path):
    out = tmp_path / "run"
    r = run(TRAIN + ["--data", str(tiny_data), "--out", str(out), "--epochs", "1", "--steps-per-epoch", "3", *FAST])
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["best.pt", "last.pt", "metrics.jsonl"]
    last = load_checkpoint(out / "last.pt")  # weights_only=True inside
    assert last.source == "lfm-deploy" and last.raw["step"] == 3 and last.raw["epoch"] == 1
    assert last.spec.policy == "center-crop" and last.spec.size == 64
    assert {"optimizer", "train_args", "best"} <= set(last.raw)

    r = run(TRAIN + ["--data", str(tiny_data), "--out", str(out), "--epochs", "2", "--steps-per-epoch", "3",
                     "--resume", *FAST])
    assert r.returncode == 0, r.stderr
    assert "resumed from" in r.stdout
    log = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [e["epoch"] for e in log] == [0, 1] and [e["step"] for e in log] == [3, 6]
    assert load_checkpoint(out / "last.pt").raw["step"] == 6
    # the weights moved during the second run
    again = load_checkpoint(out / "last.pt").model.state_dict()
    assert not torch.equal(again["fc.weight"], last.model.state_dict()["fc.weight"])

    # a fresh run into the same folder starts a fresh log and keeps the previous one aside
    r = run(TRAIN + ["--data", str(tiny_data), "--out", str(out), "--epochs", "1", "--steps-per-epoch", "1", *FAST])
    assert r.returncode == 0, r.stderr
    assert [json.loads(line)["step"] for line in open(out / "metrics.jsonl")] == [1]
    assert [json.loads(line)["step"] for line in open(out / "metrics.jsonl.old")] == [3, 6]


def test_train_rejects_bad_data_with_one_line(tmp_path):
    r = run(TRAIN + ["--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"), *FAST])
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert str(tmp_path / "nowhere") in r.stderr


@pytest.mark.slow
def test_torchrun_two_processes_end_with_identical_weights(tiny_data, tmp_path):
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not on PATH")
    out = tmp_path / "ddp"
    r = run(["torchrun", "--nproc_per_node=2", "--standalone", str(ROOT / "train" / "train.py"),
             "--data", str(tiny_data), "--out", str(out), "--epochs", "1", "--steps-per-epoch", "3", *FAST,
             "--device", "cpu"])
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 process(es) on cpu" in r.stdout
    assert "replicas identical across 2 processes: yes" in r.stdout
    log = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert log[0]["step"] == 3 and log[0]["train_images"] == 3 * 4 * 2  # each rank its own batches


def test_save_atomic_never_leaves_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_atomic({"a": torch.ones(3)}, path)
    before = path.read_bytes()

    def crash(obj, f):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"a": torch.zeros(3)}, path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_evaluate_matches_upstream_logits(upstream_ckpt, reference_dir, tmp_path):
    """Lay cnndetection/ out as ForenSynths folders; evaluate.py's per-subset figures must equal
    figures computed independently from upstream's own logits in the TSV."""
    rows = [line.rstrip("\n").split("\t") for line in open(reference_dir / "cnndetection" / "labels_and_upstream_logits.tsv")
            if not line.startswith("#")]
    data = tmp_path / "cnn"
    by_subset = {}
    for name, label, logit in rows:
        subset = name.split("_")[1]
        d = data / subset / ("1_fake" if label == "1" else "0_real")
        d.mkdir(parents=True, exist_ok=True)
        os.symlink(reference_dir / "cnndetection" / name, d / name)
        by_subset.setdefault(subset, []).append((int(label), float(logit)))
    report = tmp_path / "eval.json"
    r = run(EVALUATE + [str(upstream_ckpt), "--data", str(data), "--workers", "1", "-o", str(report)])
    assert r.returncode == 0, r.stderr
    results = json.load(open(report))["results"]
    assert set(results) == set(by_subset) | {"mean"}
    for subset, pairs in by_subset.items():
        y = np.array([p[0] for p in pairs])
        s = 1 / (1 + np.exp(-np.array([p[1] for p in pairs])))
        assert results[subset]["n"] == len(pairs)
        assert results[subset]["acc"] == pytest.approx(((s > 0.5) == y).mean())
        if y.any():
            assert results[subset]["ap"] == pytest.approx(average_precision(y, s), abs=1e-9)
    assert "mean" in r.stdout and "AP" in r.stdout


def test_init_from_upstream_weights(upstream_ckpt, tiny_data, tmp_path):
    out = tmp_path / "ft"
    r = run(TRAIN + ["--data", str(tiny_data), "--out", str(out), "--init", str(upstream_ckpt), "--epochs", "1",
                     "--steps-per-epoch", "1", "--lr", "0", *FAST])
    assert r.returncode == 0, r.stderr
    assert "(upstream)" in r.stdout
    # lr 0: the convolution weights are upstream's untouched (BN statistics do move in train mode)
    ours = load_checkpoint(out / "last.pt").model.state_dict()
    theirs = load_checkpoint(upstream_ckpt).model.state_dict()
    for key in ("snet.layer1.0.weight", "salience.weight", "fc.weight"):
        assert torch.equal(ours[key], theirs[key]), key
    r = run(TRAIN + ["--data", str(tiny_data), "--out", str(out), "--init", str(upstream_ckpt), "--top-k", "8", *FAST])
    assert r.returncode == 2 and "top_k=16" in r.stderr and "Traceback" not in r.stderr
