"""CUDA paths: upstream parity on the GPU, AMP training, and torchrun with NCCL.

These run only where torch sees a CUDA device (never in CI here); elsewhere they skip, saying why.
"""
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

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--load-size", "0", "--crop-size", "96", "--eval-policy", "center-crop", "--eval-size", "128",
        "--batch-size", "16", "--workers", "2", "--progress", "none", "--device", "cuda"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from lfm.train.make_synthetic import make_synthetic

    root = tmp_path_factory.mktemp("syn") / "data"
    make_synthetic(root, n=160, size=128, seed=0)
    return root


def test_upstream_parity_on_cuda(upstream_ckpt, upstream_tensors):
    from lfm.train.checkpoint import load_checkpoint
    from lfm.train.model import use_exact_fp32

    use_exact_fp32()
    model = load_checkpoint(upstream_ckpt).model.cuda()
    for name in ("rand_b1_256", "rand_b1_224", "rand_b1_192x320"):
        x = torch.from_numpy(upstream_tensors[name].astype(np.float32)).cuda()
        with torch.no_grad():
            logit = model(x).cpu().numpy()
        np.testing.assert_allclose(logit, upstream_tensors[f"{name}__logit"], rtol=1e-4, atol=1e-4)


def test_amp_training_on_cuda(data, tmp_path):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, str(ROOT / "train" / "train.py"), "--data", str(data), "--out", str(out),
                        "--epochs", "2", "--steps-per-epoch", "5", *FAST], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "on cuda with AMP" in r.stdout
    log = [json.loads(line) for line in open(out / "metrics.jsonl")]
    assert [e["step"] for e in log] == [5, 10] and all(np.isfinite(e["train_loss"]) for e in log)
    from lfm.train.checkpoint import load_checkpoint

    ck = load_checkpoint(out / "last.pt")
    assert "scaler" in ck.raw and all(torch.isfinite(v).all() for v in ck.model.state_dict().values() if v.is_floating_point())


def test_torchrun_nccl(data, tmp_path):
    if shutil.which("torchrun") is None:
        pytest.skip("torchrun is not on PATH")
    n = torch.cuda.device_count()
    out = tmp_path / "ddp"
    r = subprocess.run(["torchrun", "--standalone", f"--nproc_per_node={n}", str(ROOT / "train" / "train.py"),
                        "--data", str(data), "--out", str(out), "--epochs", "1", "--steps-per-epoch", "3", *FAST],
                       capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"{n} process(es) on cuda" in r.stdout
    assert f"replicas identical across {n} processes: yes" in r.stdout  # NCCL collectives ran
