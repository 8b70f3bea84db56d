"""Smoke test of the benchmark harness, the one entry point: `benchmarks/bench.py --quick` runs
and writes the documented fields; the machine rates name their library and implausible shares
are flagged; ad-hoc runs write ./bench-results (never the committed benchmarks/results)
and leave no temp folder; --model times a given file. It checks the report, never the speed
(speed targets live in benchmarks/)."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
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
    # Each limit names its library; the Detector is set beside the plain loop on the same graph.
    assert set(doc["rate_libraries"]) == set(doc["rates"]) and all(doc["rate_libraries"].values())
    assert "ort-int8 plain loop" in {x["backend"] for x in e2e}
    det = next(x for x in e2e if x["backend"] == "ort-int8" and "x_plain_loop" in x)
    assert det["max_abs_dlogit_vs_plain_loop"] < 1e-3
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


# --------------------------------------------------------------------------------------------
# Ad-hoc runs leave the committed results and the temp folder alone; --model; help defaults

BENCH = ROOT / "benchmarks" / "bench.py"
COMMITTED = ROOT / "benchmarks" / "results"


def _committed_snapshot() -> dict:
    return {p.name: p.read_bytes() for p in COMMITTED.glob("bench*") if p.is_file()}


def _run_bench(args, cwd: Path, tmpdir: Path, timeout=900):
    """bench.py ARGS from CWD with its temp folder (TMPDIR) at TMPDIR."""
    import os

    cwd.mkdir(parents=True, exist_ok=True)
    tmpdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    return subprocess.run([sys.executable, str(BENCH), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _left_in(tmpdir: Path) -> list[str]:
    """What a run left in its temp folder, but for onnxruntime's own session-id file (.ses, which
    it writes on import and keeps on purpose)."""
    return sorted(p.name for p in tmpdir.iterdir() if p.name != ".ses")


def _bench_module():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench

    return bench


def test_bench_help_states_the_default_of_every_option():
    parser = _bench_module().build_parser()
    for action in parser._actions:
        if action.dest in ("help", "version"):
            continue
        assert action.help and "(default: " in action.help, action.option_strings
    out_help = next(a.help for a in parser._actions if a.dest == "output_dir")
    assert "./bench-results/" in out_help and "--output-dir benchmarks/results" in out_help


@pytest.mark.slow
def test_bench_default_output_is_not_the_committed_results_and_its_temp_folder_goes(tmp_path):
    """The smallest run that makes a work folder (torch only, no export), with no --output-dir:
    it writes ./bench-results, leaves benchmarks/results as committed and nothing in TMPDIR."""
    before = _committed_snapshot()
    r = _run_bench(["--backends", "torch", "--mode", "engine", "--sizes", "64", "--batch-sizes", "1", "--rounds", "1"],
                   tmp_path / "cwd", tmp_path / "tmp")
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((tmp_path / "cwd" / "bench-results" / "bench.json").read_text())
    assert [x["backend"] for x in doc["results"]] == ["torch"]
    assert _committed_snapshot() == before
    assert _left_in(tmp_path / "tmp") == []


@pytest.mark.parametrize("stop", [KeyboardInterrupt, RuntimeError])
def test_bench_removes_its_temp_folder_on_ctrl_c_and_errors(tmp_path, monkeypatch, stop):
    import tempfile

    bench = _bench_module()
    seen = []

    def interrupted(work, quick):  # called once the work folder exists
        seen.append(work)
        assert work.is_dir()
        raise stop("stopped")

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    monkeypatch.setattr(bench, "image_files", interrupted)
    with pytest.raises(stop):
        bench.main(["--backends", "torch", "--mode", "engine", "--output-dir", str(tmp_path / "out")])
    assert seen and seen[0].parent == tmp_path / "tmp"
    assert _left_in(tmp_path / "tmp") == []


@pytest.mark.parametrize("name", ["absent.onnx", "model.txt", "weights"])
def test_bench_model_missing_or_of_unknown_kind_is_one_line_and_exit_2(tmp_path, name):
    if name != "absent.onnx":
        (tmp_path / name).write_bytes(b"not a model")
    r = _run_bench(["--model", str(tmp_path / name)], tmp_path / "cwd", tmp_path / "tmp", timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], r.stderr
    assert ("no such file" if name == "absent.onnx" else "unknown model kind") in lines[0]
    assert not (tmp_path / "cwd" / "bench-results").exists()


def test_bench_model_backends_must_fit_the_file(tmp_path, random_onnx):
    r = _run_bench(["--model", str(random_onnx), "--backends", "ort,torch"], tmp_path / "cwd", tmp_path / "tmp",
                   timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "torch" in lines[0] and "ort,openvino,openvino-f32" in lines[0], r.stderr


@pytest.mark.slow
def test_bench_model_times_the_given_onnx_graph(tmp_path, random_onnx):
    """--model lfm.onnx: ort and openvino run that very graph (64 px, its own size), nothing is
    exported, results go to ./bench-results, the committed ones and TMPDIR stay as they were."""
    before = _committed_snapshot()
    r = _run_bench(["--model", str(random_onnx), "--quick"], tmp_path / "cwd", tmp_path / "tmp")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exported" not in r.stderr
    doc = json.loads((tmp_path / "cwd" / "bench-results" / "bench.json").read_text())
    assert doc["settings"]["model"] == str(random_onnx) and doc["settings"]["model_kind"] == "onnx"
    assert doc["settings"]["checkpoint"] is None and doc["settings"]["sizes"] == [64]
    ran = {x["backend"] for x in doc["results"]}
    loop = "ort plain loop"  # e2e mode's first-written loop, on the given graph
    if importlib.util.find_spec("openvino"):
        assert ran == {"ort", "openvino", loop}
    else:
        assert ran == {"ort", loop} and "openvino" in doc["unavailable"]
    assert {x["mode"] for x in doc["results"]} == {"engine", "e2e"}
    assert all(x["size"] == 64 and x["precision"].startswith("fp32") for x in doc["results"])
    assert _committed_snapshot() == before
    assert _left_in(tmp_path / "tmp") == []


def test_bf16_gemm_rate_is_not_measured_on_a_cpu_without_bf16(monkeypatch):
    """Emulated bf16 products take minutes on such a CPU and mean nothing (OpenVINO runs f32 there)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import common

    monkeypatch.setattr(common, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_vnni"})
    assert common.bf16_gemm_rate(1, n=64) is None
    monkeypatch.setattr(common, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    assert common.bf16_gemm_rate(1, n=64, reps=1) > 0


def _row(backend, precision, share, mode="engine"):
    return {"mode": mode, "backend": backend, "precision": precision, "size": 224, "batch": 8,
            "images_per_s": share * 100 / 2.387,  # 100 GFLOP/s x share at 2.387 GFLOP per image
            "p50_ms": 1.0, "p90_ms": 1.0, "p99_ms": 1.0, "host_added_mb": 1.0, "device_peak_mb": None}


def test_a_backend_above_its_gemm_rate_is_flagged_with_the_library_named():
    """The plausibility check: above 100 % of the rate a row is set against is flagged (report and
    JSON), naming the library that measured that rate; rows within it are not."""
    bench = _bench_module()
    rates = {"fp32_gflop_per_s": 100.0, "int8_gop_per_s": 100.0}
    libraries = {"fp32_gflop_per_s": "PyTorch matmul (oneDNN/MKL)", "int8_gop_per_s": "ONNX Runtime MatMulInteger (MLAS)"}
    rows = [_row("ort", "fp32", 1.6), _row("ort-int8", "int8", 0.8), _row("openvino", "auto (bf16 ...)", 1.2)]
    bench.add_limits(rows, rates, libraries)
    ort, int8, ov = rows
    assert ort["of_gemm_rate"] == pytest.approx(1.6, abs=0.01)
    assert "160 %" in ort["plausibility"] and "PyTorch matmul (oneDNN/MKL)" in ort["plausibility"]
    assert "plausibility" not in int8
    # No bf16 rate measured (a CPU without bf16): OpenVINO's auto precision is set against fp32.
    assert ov["gemm_rate_key"] == "fp32_gflop_per_s" and "plausibility" in ov
    doc = {"machine": {"cpu": "x", "usable_cpus": 2, "threads": 2, "memory_gb": 1, "gpus": [], "versions": {}},
           "quick": True, "command": "c", "rates": rates, "rate_libraries": libraries, "results": rows,
           "settings": {"sizes": [224], "baseline": "torch", "files_from": "f"}, "unavailable": {}}
    md = bench.markdown(doc)
    assert "## Plausibility" in md and ort["plausibility"] in md and "ort-int8 (engine" not in md.split("## Plausibility")[1]


def test_machine_rates_take_the_fastest_library_and_name_it(monkeypatch):
    """A throttled numpy BLAS (OPENBLAS_CORETYPE) must not pass for the machine's fp32 limit: the
    fastest library's rate is, and the report names it beside every rate."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import common

    bench = _bench_module()
    monkeypatch.setattr(common, "fp32_gemm_rates", lambda threads: {common.NUMPY_BLAS: 20.0, common.TORCH_MATMUL: 90.0,
                                                                   common.ORT_MATMUL: 70.0})
    monkeypatch.setattr(common, "int8_gemm_rate", lambda threads: 150.0)
    monkeypatch.setattr(common, "bf16_gemm_rate", lambda threads: None)
    limits = common.machine_rates(2)
    assert limits["rates"] == {"fp32_gflop_per_s": 90.0, "int8_gop_per_s": 150.0}
    assert limits["libraries"] == {"fp32_gflop_per_s": common.TORCH_MATMUL, "int8_gop_per_s": common.ORT_MATMUL_INTEGER}
    text = bench.rates_text({"rates": limits["rates"], "rate_libraries": limits["libraries"],
                             "fp32_by_library": limits["fp32_by_library"]})
    assert "fp32 GEMM 90 GFLOP/s (PyTorch matmul (oneDNN/MKL))" in text
    assert "INT8 GEMM 150 GOP/s (ONNX Runtime MatMulInteger (MLAS))" in text and "numpy BLAS (OpenBLAS) 20" in text


def test_fp32_gemm_rates_are_measured_with_pytorch_and_onnx_runtime():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import common

    rates = common.fp32_gemm_rates(1, n=64, reps=1)
    assert set(rates) == {common.NUMPY_BLAS, common.TORCH_MATMUL, common.ORT_MATMUL}
    assert all(v > 0 for v in rates.values())


@pytest.mark.parametrize("argv,want", [
    (["--mode", "serve", "--quick"], ("bench_serve.py", ["--quick"])),
    (["--output-dir", "x", "--mode=batch"], ("bench_batch.py", ["--output-dir", "x"])),
    (["--mode", "engine", "--quick"], None),
])
def test_serve_and_batch_modes_run_their_scripts_with_the_other_options(argv, want):
    assert _bench_module().script_mode(argv) == want


def test_benchmarks_list_image_folders_through_the_one_walker():
    """bench, bench_batch, bench_decode, bench_serve and fidelity_table had listings of their own
    (iterdir, rglob, glob with suffix filters); they use lfm.runtime.inputs.image_files, so a
    folder lists the same images here as in every command. A glob for files of another kind
    (bench_batch's shard-*.parquet) stays."""
    import ast

    from lfm.runtime.preprocess import is_image_path

    def other_kind(pattern) -> bool:
        return isinstance(pattern, ast.Constant) and not is_image_path(pattern.value) and not pattern.value.endswith("*")

    own = [f"{path.name}:{n.lineno} .{n.func.attr}({', '.join(ast.unparse(a) for a in n.args)})"
           for path in sorted((ROOT / "benchmarks").glob("*.py")) for n in ast.walk(ast.parse(path.read_text()))
           if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
           and (n.func.attr == "iterdir" or n.func.attr in ("glob", "rglob") and not (n.args and other_kind(n.args[0])))]
    assert not own, own


def test_bench_serve_images_folder_without_images_is_one_line_and_exit_2(tmp_path, random_onnx):
    """--images lists the folder's image files (the runtime's rules); one holding none is refused
    before a server starts (it used to start one with nothing to send, or fail on a non-image)."""
    for holds in ([], ["notes.txt"]):
        images = tmp_path / f"images{len(holds)}"
        images.mkdir()
        for name in holds:
            (images / name).write_text("not an image")
        r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_serve.py"), "--images", str(images),
                            "--model", str(random_onnx), "--quick", "--output-dir", str(tmp_path / "out")],
                           capture_output=True, text=True, timeout=120)
        assert (r.returncode, r.stderr) == (2, f"error: {images}: holds no image files\n"), r.stderr[-2000:]

def test_plain_loop_answers_as_the_detector_on_real_files(tmp_path, random_onnx):
    """e2e mode's baseline loop (PIL, resize, one session.run per file; from bench_e2e.py) scores
    files as the runtime's Detector does, so their speeds compare like with like."""
    from PIL import Image

    from lfm.runtime.backends import make_runner
    from lfm.runtime.detector import Detector

    bench = _bench_module()
    rng = np.random.default_rng(0)
    files = []
    for i in range(3):
        f = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (80 + 10 * i, 90, 3), dtype=np.uint8)).save(f)
        files.append(str(f))
    loop = bench.plain_loop(str(random_onnx), files, 64, 1)()
    with Detector(make_runner(random_onnx, providers=["cpu"], threads=1), batch_size=2, size=64, policy="resize") as det:
        want = np.array([r.logit for r in det.predict(files)])
    assert loop.shape == (3,) and np.allclose(loop, want, atol=1e-3), (loop, want)


def test_reference_agreement_counts_flipped_decisions():
    """--agreement: each engine's decisions on the reference JPEGs against the baseline's."""
    bench = _bench_module()
    if bench.reference_set() is None:
        pytest.skip("no reference images (../shared/reference/cnndetection)")

    def engine(name, sign):
        def setup(batch):
            return lambda x: sign * (x.reshape(len(x), -1).mean(axis=1) - 110.0)
        return bench.Engine(name, "uint8", setup)

    rows = bench.reference_agreement([engine("torch", 1.0), engine("flipped", -1.0)], "torch", 32)
    by = {r["backend"]: r for r in rows}
    assert by["torch"]["agreement"] == 1.0 and by["torch"]["max_abs_logit_diff"] == 0
    assert by["flipped"]["agreement"] < 1.0 and by["flipped"]["n"] == by["torch"]["n"] > 100


def _fake_plan(folder: Path, sidecar: bool = True) -> Path:
    """A plan file and (optionally) its sidecar as export/to_trt.py writes them; the bytes are no
    engine, which is enough where TensorRT is absent (the sidecar is read without it)."""
    import hashlib

    from lfm.runtime.spec import ModelSpec

    folder.mkdir(parents=True, exist_ok=True)
    plan = folder / "lfm.plan"
    plan.write_bytes(b"serialized engine bytes")
    if sidecar:
        (folder / "lfm.plan.json").write_text(json.dumps({
            "format": "lfm-trt-engine/1", "spec": ModelSpec(input="uint8", layout="NHWC", size=96).to_dict(),
            "input": {"name": "pixels", "dtype": "uint8", "layout": "NHWC"},
            "profiles": [{"input": "pixels", "layout": "NHWC", "min": [1, 48, 48, 3], "opt": [16, 96, 96, 3],
                          "max": [32, 128, 128, 3]}],
            "precision": "fp16", "tensorrt": "10.8.0.43", "device": {"name": "NVIDIA H200", "compute_capability": "9.0"},
            "plan_sha256": hashlib.sha256(plan.read_bytes()).hexdigest(),
            "command": ["python", "export/to_trt.py", "lfm.onnx", "-o", "lfm.plan", "--precision", "fp16"]}))
    return plan


def test_bench_model_plan_without_its_sidecar_is_one_line_and_exit_2(tmp_path):
    plan = _fake_plan(tmp_path / "m", sidecar=False)
    r = _run_bench(["--model", str(plan)], tmp_path / "cwd", tmp_path / "tmp", timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "lfm.plan" in lines[0] and "sidecar" in lines[0], r.stderr


@pytest.mark.slow
def test_bench_model_plan_is_timed_by_trt_or_listed_unavailable(tmp_path):
    """--model lfm.plan: backend trt on that plan at its own size (96 here, from the sidecar);
    where TensorRT or a GPU is missing it is listed as unavailable, and the run still reports."""
    import torch

    if importlib.util.find_spec("tensorrt") and torch.cuda.is_available():
        pytest.skip("a real TensorRT machine would try to deserialise the fake plan")
    plan = _fake_plan(tmp_path / "m")
    r = _run_bench(["--model", str(plan), "--mode", "engine", "--rounds", "1", "--batch-sizes", "1"],
                   tmp_path / "cwd", tmp_path / "tmp")
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((tmp_path / "cwd" / "bench-results" / "bench.json").read_text())
    assert doc["settings"]["backends"] == ["trt"] and doc["settings"]["sizes"] == [96]
    assert doc["results"] == [] and ("TensorRT" in doc["unavailable"]["trt"] or "GPU" in doc["unavailable"]["trt"])
    assert _left_in(tmp_path / "tmp") == []


def test_bench_model_float_input_graph_gets_normalised_floats(tmp_path):
    """A --model graph with float input (export --input float) is fed normalised NCHW floats, the
    uint8 one the bytes: each answers as ONNX Runtime does on its own input."""
    import onnxruntime as ort

    from conftest import random_lfm
    from lfm.export.onnx_export import metadata, simplify, torch_to_onnx
    from lfm.export.onnx_files import check, save_atomic, set_metadata
    from lfm.runtime.preprocess import normalize
    from lfm.runtime.spec import ModelSpec

    bench = _bench_module()
    spec = ModelSpec(input="float", layout="NCHW", size=64)
    proto = check(simplify(torch_to_onnx(random_lfm(), spec, "float")))
    set_metadata(proto, metadata(spec, precision="fp32", source=None, source_sha256=None))
    path = tmp_path / "float.onnx"
    save_atomic(proto, path)
    models = bench.Models(tmp_path, None, None, 0, 64, given=str(path), given_precision="fp32")
    x_u8 = np.random.default_rng(0).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    x = normalize(x_u8, spec.mean, spec.std)
    for name in ("ort", "openvino-f32"):
        if name.startswith("openvino") and not importlib.util.find_spec("openvino"):
            continue
        engine = bench.make_engine(name, models, 1)
        assert engine.input_kind == "float"
        got = np.asarray(engine.setup(2)(x)).reshape(-1)
        want = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["logit"], {"image": x})[0]
        assert np.allclose(got, want.reshape(-1), atol=1e-3), (name, got, want)


@pytest.mark.slow
def test_bench_removes_its_temp_folder_when_terminated(tmp_path):
    """`timeout` (gpu_checks.sh) stops a run with SIGTERM: its temp folder goes as on Ctrl-C."""
    import os
    import signal
    import time

    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    proc = subprocess.Popen([sys.executable, str(BENCH), "--backends", "torch", "--mode", "engine", "--sizes", "64",
                             "--output-dir", str(tmp_path / "out")], cwd=tmp_path, env={**os.environ, "TMPDIR": str(tmpdir)},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmpdir.glob("lfm-bench-*")) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(tmpdir.glob("lfm-bench-*")), "the run made no work folder"
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143, err[-2000:]
    assert _left_in(tmpdir) == []


# --------------------------------------------------------------------------------------------
# bench_decode.py: files to scores per decoding mode and worker count (issue 17, item 5)

BENCH_DECODE = ROOT / "benchmarks" / "bench_decode.py"


def _run_bench_decode(args, folder: Path, timeout=600):
    """bench_decode.py on 40 files, workers 1 and 2, one timed pass per case, reports in FOLDER/out.
    TRITON_INTERPRET (set by kernel test modules of this session) is not passed on: with it a
    checkpoint's --kernels path would run interpreted on the CPU instead of being refused."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, str(BENCH_DECODE), "--images", "40", "--rounds", "1", "--block", "1",
                           "--workers", "1,2", "--batch-size", "8", *args, "--output-dir", str(folder / "out")],
                          env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def decode_run_with_model(tmp_path_factory, random_onnx):
    """One real run with a small ONNX model (random weights, 64 px) on both CPU decoding modes:
    (JSON, Markdown). The reference JPEGs where ../shared is there, generated JPEGs elsewhere."""
    folder = tmp_path_factory.mktemp("bench_decode_model")
    r = _run_bench_decode(["--model", str(random_onnx), "--modes", "threads,processes"], folder)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((folder / "out" / "bench_decode.json").read_text()), (folder / "out" / "bench_decode.md").read_text()


@pytest.mark.slow
def test_bench_decode_with_a_model_scores_files_and_the_cpu_modes_agree_exactly(decode_run_with_model):
    doc, md = decode_run_with_model
    scores = {(x["mode"], x["workers"]): x for x in doc["rates"].values() if x["kind"] == "scores"}
    assert set(scores) == {("threads", 1), ("threads", 2), ("processes", 1), ("processes", 2)}
    assert all(x["images_per_s"] > 0 for x in doc["rates"].values())
    assert doc["size"] == 64 and doc["model"]["engine_place"] == "host"  # the model's own size
    d = doc["decisions"]
    assert d["reference"] == "threads x1" and d["reference_records"] == 40 and d["reference_errors"] == 0
    assert set(d["cases"]) == {"threads x2", "processes x1", "processes x2"}
    for label, c in d["cases"].items():
        assert (c["records"], c["flips"], c["max_abs_dlogit"], c["errors_differ"], c["paths_differ"]) == (40, 0, 0.0, 0, 0), label
        assert c["identical"], label
    stages = {s["stage"]: s for s in doc["stages"]}
    for name in ("read", "decode", "resize", "to array", "engine"):
        assert stages[name]["ms_per_image"] > 0 and stages[name]["images_per_s"] > 0, name
    assert stages["stage/copy"]["ms_per_image"] is None and "host backend" in stages["stage/copy"]["note"]
    # A host engine's threads run in this process: its parent CPU is reported but is no ceiling.
    assert scores["processes", 2]["parent_cpu_us_per_image"] > 0
    assert scores["processes", 2]["parent_ceiling_images_per_s"] is None
    assert "## Scores" in md and "files to scores images/s" in md and "| identical |" in md and "## Stages" in md


def test_bench_decode_compares_records_by_flips_dlogit_and_errors():
    """The decisions table's arithmetic: a flipped label, the largest logit move, a differing error."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_decode

    from lfm.runtime.records import Record

    ref = [Record.from_logit("a", 0.2, 0.5), Record.from_logit("b", -3.0, 0.5), Record.failed("c", "no such file"),
           Record.from_logit("d", 1.0, 0.5)]
    same = bench_decode.compare_records(ref, list(ref))
    assert same["identical"] and same["flips"] == same["errors_differ"] == 0 and same["max_abs_dlogit"] == 0.0
    other = [Record.from_logit("a", -0.1, 0.5), Record.from_logit("b", -2.5, 0.5), Record.failed("c", "no such file"),
             Record.failed("d", "corrupt")]
    got = bench_decode.compare_records(ref, other)
    assert (got["flips"], got["errors_differ"], got["paths_differ"]) == (1, 1, 0) and not got["identical"]
    assert got["max_abs_dlogit"] == pytest.approx(0.5)


def test_bench_decode_kernels_without_cuda_is_one_line_and_exit_2(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --kernels runs here")
    checkpoint = _bench_module().random_weight_checkpoint(tmp_path / "random.pt")
    r = _run_bench_decode(["--model", str(checkpoint), "--kernels"], tmp_path, timeout=300)
    assert r.returncode == 2, r.stderr[-3000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--kernels" in lines[0] and "CUDA" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_bench_decode_reports_the_parent_cost_of_every_pipeline_case(tmp_path):
    """Without --model: decode and no-op pipeline rows and the stages up to the array, nothing
    more; each pipeline case carries this process's CPU per image, and with decode processes
    (the decoding elsewhere) the images/s one parent can feed."""
    r = _run_bench_decode(["--modes", "threads,processes"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((tmp_path / "out" / "bench_decode.json").read_text())
    assert {x["kind"] for x in doc["rates"].values()} == {"decode", "pipeline"}
    assert doc["model"] is None and doc["decisions"] is None
    assert [s["stage"] for s in doc["stages"]] == ["read", "decode", "resize", "to array"]
    pipeline = {(x["mode"], x["workers"]): x for x in doc["rates"].values() if x["kind"] == "pipeline"}
    for w in (1, 2):
        p, t = pipeline["processes", w], pipeline["threads", w]
        assert p["parent_cpu_us_per_image"] > 0 and "other processes" in p["parent_cpu_covers"]
        assert p["parent_ceiling_images_per_s"] == pytest.approx(1e6 / p["parent_cpu_us_per_image"], rel=0.01)
        assert t["parent_cpu_us_per_image"] > 0 and t["parent_ceiling_images_per_s"] is None
        assert "decoding threads" in t["parent_cpu_covers"]
    assert "parent ceiling images/s" in (tmp_path / "out" / "bench_decode.md").read_text()
