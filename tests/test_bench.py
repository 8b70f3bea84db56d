"""Smoke test of the benchmark harness: `benchmarks/bench.py --quick` runs and writes the
documented fields. It checks the report, never the speed (speed targets live in benchmarks/)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytest.importorskip("torch", reason="the harness's baseline is PyTorch (the [train] extra)")
pytest.importorskip("onnx", reason="the harness exports ONNX models (the [export] extra)")


@pytest.mark.slow
def test_quick_benchmark_writes_json_markdown_and_plots(tmp_path):
    out = tmp_path / "results"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench.py"), "--quick", "--output-dir", str(out),
                        "--work-dir", str(tmp_path / "work")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((out / "bench.json").read_text())
    m = doc["machine"]
    assert m["cpu"] and m["usable_cpus"] >= 1 and "onnxruntime" in m["versions"] and "gpus" in m
    assert doc["rates"]["fp32_gflop_per_s"] > 0
    engine = [x for x in doc["results"] if x["mode"] == "engine"]
    e2e = [x for x in doc["results"] if x["mode"] == "e2e"]
    assert {x["backend"] for x in engine} >= {"torch", "ort", "ort-int8"}
    assert {(x["backend"], x["batch"]) for x in engine} >= {("torch", 1), ("torch", 8), ("ort", 1), ("ort", 8)}
    for x in engine:
        for key in ("images_per_s", "p50_ms", "p90_ms", "p99_ms", "x_torch", "host_added_mb", "host_peak_mb",
                    "achieved_gflop_per_s", "gflop_per_image"):
            assert key in x, (key, x)
        assert x["images_per_s"] > 0 and x["p50_ms"] <= x["p90_ms"] <= x["p99_ms"]
        assert x["gflop_per_image"] == pytest.approx(2.387, abs=1e-3)  # 224 px
    assert next(x for x in engine if x["backend"] == "torch")["x_torch"] == 1.0
    # The fp32 graph answers as torch does on the timed batch (the INT8 one only roughly).
    assert all(x["max_abs_dlogit_vs_torch"] < 1e-2 for x in engine if x["backend"] == "ort")
    assert {x["backend"] for x in e2e} >= {"torch", "ort-int8"} and all(x["images_per_s"] > 0 for x in e2e)
    md = (out / "bench.md").read_text()
    assert "Engine mode" in md and "End-to-end mode" in md and "x torch" in md
    if doc["plots"]:  # matplotlib present (the [viz] extra)
        for p in doc["plots"]:
            assert Path(p).stat().st_size > 10_000


def test_bench_without_reference_data_times_a_random_weight_checkpoint(tmp_path):
    """A user's clone has no ../shared: the harness falls back to a seeded random-weight checkpoint."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench

    from lfm.train.checkpoint import load_checkpoint

    path = bench.random_weight_checkpoint(tmp_path / "random.pt")
    loaded = load_checkpoint(path)
    assert loaded.model.config.top_k == 16 and loaded.spec.size == 256
    again = load_checkpoint(bench.random_weight_checkpoint(tmp_path / "again.pt"))
    for (k, a), b in zip(loaded.model.state_dict().items(), again.model.state_dict().values()):
        assert (a == b).all(), k  # seeded: the same model every time


def test_bench_baseline_and_gpu_backends_on_a_cpu_machine(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench

    assert bench.baseline_of(["torch", "ort"]) == "torch"
    assert bench.baseline_of(["torch-cuda", "torch-cuda-triton"]) == "torch-cuda"  # a GPU-only run
    assert bench.baseline_of(["ort"]) == "torch"
    import torch

    if not torch.cuda.is_available():
        models = bench.Models(tmp_path, bench.random_weight_checkpoint(tmp_path / "r.pt"), None, 0, 64)
        for name in ("torch-cuda", "torch-cuda-triton"):
            with pytest.raises(bench.Unavailable, match="no CUDA GPU"):
                bench.make_engine(name, models, 1)
