"""One harness for latency and throughput of every LFM backend, with reports and plots.

    python benchmarks/bench.py [--quick] [--backends torch,ort,ort-int8,...] [--batch-sizes 1,8,32]
                               [--sizes 224,256] [--mode engine|e2e|both] [--output-dir DIR]
                               [--model lfm.onnx|lfm.plan|ckpt.pt]

Backends (those whose libraries or hardware are missing are listed as unavailable, with why):
  torch            PyTorch eager on the CPU, our faithful model (upstream's setting): the baseline
  torch-compile    torch.compile (inductor) of the same
  ort, ort-int8    ONNX Runtime on the exported fp32 / INT8 QDQ graph (uint8 input)
  ort-plugins      ONNX Runtime on the custom-op graph (export --variant plugins)
  openvino, openvino-f32, openvino-int8
                   OpenVINO on the fp32 graph (precision auto: bf16 for this uint8 graph where the
                   CPU has it; f32 forced) and on the INT8 graph
  trt-fp16, trt-int8
                   TensorRT engines (export/to_trt.py) where tensorrt and a GPU exist
  torch-cuda, torch-cuda-fp16, torch-cuda-graphs, torch-cuda-fused, torch-cuda-triton
                   PyTorch on a GPU, one step more each: fp32 eager; fp16 + channels-last; + a
                   CUDA graph per batch shape; + BatchNorm folded and max-pool before ReLU; + our
                   Triton kernels: the fused stem (NPR + conv1 + pool + ReLU from the uint8
                   bytes) and Top-K pooling

Modes: `engine` times one backend call on a batch already in the backend's own format (uint8
NHWC bytes, or normalised float NCHW for torch); `e2e` times files in, scores out through the
runtime's Detector (decoding in worker threads, batching), on the reference JPEGs (or generated
images without ../shared). Timing interleaves the backends round by round (benchmarks/common.py)
so drifts of a shared machine hit all of them; on GPUs a call is timed with CUDA events.

Per configuration: images/s (batch / median latency), p50/p90/p99 latency, the ratio to the
`torch` baseline at the same size and batch in the same run (on a GPU-only run, `torch-cuda`:
torch eager fp32 on the GPU), the largest logit difference from that baseline on the timed batch (speed is worth
nothing without the same answers), peak host memory (process peak and what the backend added while it was created, warmed up and run), peak device memory where
measurable, and achieved GFLOP/s against the machine's measured GEMM rate (fp32 BLAS; INT8
with ONNX Runtime's MatMulInteger; on GPUs cuBLAS fp16, and TF32 for fp32), so a reader
sees how close each backend gets. On a GPU the report also states the best images/s against
the paper's 1789/s (one A6000) and our target of 40,000/s at 256 x 256.
Writes bench.json, bench.md and bench_throughput.png / bench_latency.png to --output-dir:
./bench-results/ unless told; the committed figures (the README's tables) are replaced only by
an explicit --output-dir benchmarks/results. Exported models go to a temp folder that is removed
at the end (also on an error, Ctrl-C or SIGTERM), unless --work-dir names one to keep.
--quick (< 2 min on 2 cores): torch, ort, ort-int8, openvino at 224, batches 1 and 8, few rounds.
--model FILE times an existing model instead of exporting one: an ONNX graph (ort, openvino,
openvino-f32 run it), a TensorRT plan with its sidecar (trt) or a checkpoint (as --checkpoint),
at the model's own size unless --sizes says otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DEFAULT_OUTPUT_DIR, OUTPUT_DIR_HELP, PeakRSS, bf16_gemm_rate, fp32_gemm_rate, gpu_gemm_rates,  # noqa: E402
                    int8_gemm_rate, lfm_gflop_per_image, log, machine, max_rss_bytes, run_main, summarize,
                    time_interleaved, usable_cpus, work_folder, write_report)

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("LFM_REFERENCE", ROOT.parent / "shared" / "reference"))
CPU_BACKENDS = ("torch", "torch-compile", "ort", "ort-int8", "ort-plugins", "openvino", "openvino-f32", "openvino-int8")
GPU_BACKENDS = ("torch-cuda", "torch-cuda-fp16", "torch-cuda-graphs", "torch-cuda-fused", "torch-cuda-triton",
                "trt-fp16", "trt-int8")
ALL_BACKENDS = CPU_BACKENDS + GPU_BACKENDS
QUICK_BACKENDS = ("torch", "ort", "ort-int8", "openvino")
PAPER_IMAGES_PER_S = 1789  # the LFM paper's throughput, one A6000
TARGET_GPU_IMAGES_PER_S = 40_000  # ours, best backend on one H200 at 256 x 256
E2E_CAPABLE = ("torch", "torch-cuda", "ort", "ort-int8", "ort-plugins", "openvino", "openvino-int8", "trt-fp16", "trt-int8",
               "trt")
# --model FILE: the backends that run a file of that kind as it is (a checkpoint: every backend,
# the graphs exported from it as without --model); "trt" is the given plan in its own precision.
MODEL_KINDS = {"model": "onnx", "engine": "plan", "checkpoint": "checkpoint"}  # lfm.runtime.detector.source_kind's names
MODEL_BACKENDS = {"onnx": ("ort", "openvino", "openvino-f32"), "plan": ("trt",)}
MODEL_DEFAULT_BACKENDS = {"onnx": ("ort", "openvino"), "plan": ("trt",)}
PRECISION = {"torch": "fp32", "torch-compile": "fp32", "ort": "fp32", "ort-int8": "int8", "ort-plugins": "fp32",
             "openvino": "auto (bf16 on uint8 graphs where supported)", "openvino-f32": "fp32", "openvino-int8": "int8",
             "torch-cuda": "fp32", "torch-cuda-fp16": "fp16", "torch-cuda-graphs": "fp16", "torch-cuda-fused": "fp16", "torch-cuda-triton": "fp16", "trt-fp16": "fp16",
             "trt-int8": "int8"}


class Unavailable(Exception):
    """A backend that cannot run here; the message says why (one line)."""


class UsageError(Exception):
    """Bad options or input files: printed as one line, exit status 2."""


# --------------------------------------------------------------------------------------------
# Models: exported once per run through the project's own CLIs (the contract users run)


@dataclass
class Models:
    work: Path
    checkpoint: str | None
    calib_dir: str | None
    calib_count: int
    size: int
    given: str | None = None  # --model: an ONNX graph or TensorRT plan that every fitting backend runs as it is
    given_precision: str | None = None  # its own precision (metadata or sidecar)
    _paths: dict = field(default_factory=dict)
    _torch: object = None

    def _export(self, key: str, extra: list[str]) -> str:
        """python export/to_onnx.py CHECKPOINT -o OUT EXTRA... once per key; a failure makes the
        backends that need it unavailable, with the CLI's own one-line error."""
        if key not in self._paths:
            out = str(self.work / f"lfm_{key}.onnx")
            t = time.perf_counter()
            r = subprocess.run([sys.executable, str(ROOT / "export" / "to_onnx.py"), self.checkpoint, "-o", out, *extra],
                               capture_output=True, text=True)
            if r.returncode != 0:
                last = (r.stderr.strip() or r.stdout.strip() or "failed").splitlines()[-1]
                self._paths[key] = Unavailable(f"export failed: {last}")
            else:
                self._paths[key] = out
                log(f"exported {key} -> {out} ({time.perf_counter() - t:.1f}s)")
        if isinstance(self._paths[key], Unavailable):
            raise self._paths[key]
        return self._paths[key]

    def onnx(self, kind: str) -> str:
        """The uint8-input graph of a kind: fp32, int8 (QDQ) or plugins (custom ops); with --model the
        given graph (only the backends that run it as it is get here)."""
        if self.given:
            return self.given
        common = ["--input", "uint8", "--size", str(self.size)]
        if kind == "fp32":
            return self._export("fp32", common)
        if kind == "plugins":
            return self._export("plugins", [*common, "--variant", "plugins"])
        if kind == "int8":
            calib = ["--calib", self.calib_dir] if self.calib_dir else ["--calib-synthetic"]
            # --force: a speed harness measures the model even where the export's cross-domain check
            # would refuse it (its logit differences are reported beside its speed; the check's
            # verdict is in the model's report, and --mode fidelity tabulates it).
            return self._export("int8", [*common, "--int8", *calib, "--calib-count", str(self.calib_count),
                                         "--report-count", "16", "--stress-count", "16", "--force"])
        raise ValueError(kind)

    def plan(self, precision: str) -> str:
        if self.given:  # --model lfm.plan
            return self.given
        key = f"plan_{precision}"
        if key not in self._paths:
            onnx_path = self.onnx("int8" if precision == "int8" else "fp32")
            out = str(self.work / f"lfm_{precision}.plan")
            r = subprocess.run([sys.executable, str(ROOT / "export" / "to_trt.py"), onnx_path, "-o", out,
                                "--precision", precision], capture_output=True, text=True)
            if r.returncode != 0:
                last = (r.stderr.strip() or r.stdout.strip() or "failed").splitlines()[-1]
                self._paths[key] = Unavailable(f"engine build failed: {last}")
            else:
                self._paths[key] = out
        if isinstance(self._paths[key], Unavailable):
            raise self._paths[key]
        return self._paths[key]

    def precision(self, backend: str) -> str:
        """The precision column of a backend's rows; with --model, the given model's own."""
        if self.given_precision is None:
            return PRECISION.get(backend, "?")
        return {"openvino": f"{self.given_precision} graph, OpenVINO auto",
                "openvino-f32": f"{self.given_precision} graph, f32 forced"}.get(backend, self.given_precision)

    def torch_model(self):
        if self._torch is None:
            from lfm.train.checkpoint import load_checkpoint

            ckpt = load_checkpoint(self.checkpoint)
            self._torch = (ckpt.model.eval(), ckpt.spec)
        return self._torch


# --------------------------------------------------------------------------------------------
# Engine mode: backend -> (input kind, batch -> callable(x) -> logits)


@dataclass
class Engine:
    name: str
    input_kind: str  # "uint8" (NHWC bytes) or "float" (normalised NCHW)
    setup: Callable  # batch -> fn(x) -> logits (or (logits, device seconds))
    device_memory: Callable | None = None  # -> peak bytes on the device since the last reset, or None
    reset_device_memory: Callable | None = None
    fns: dict = field(default_factory=dict)
    error: str | None = None


def _need(module: str, why: str):
    try:
        return __import__(module)
    except Exception as e:  # noqa: BLE001
        raise Unavailable(f"{why} ({module}: {type(e).__name__})") from None


def _cuda():
    torch = _need("torch", "needs PyTorch")
    if not torch.cuda.is_available():
        raise Unavailable("no CUDA GPU")
    return torch


def make_engine(name: str, models: Models, threads: int) -> Engine:
    """The engine-mode callable factory of one backend; raises Unavailable with the reason."""
    if name in ("torch", "torch-compile"):
        torch = _need("torch", "needs PyTorch")
        torch.set_num_threads(threads)
        model, _ = models.torch_model()
        net = torch.compile(model) if name == "torch-compile" else model

        def setup(batch):
            def run(x):
                with torch.inference_mode():
                    return net(torch.from_numpy(x)).numpy()
            return run
        return Engine(name, "float", setup)

    if name.startswith("torch-cuda"):
        return torch_cuda_engine(name, models)

    if name in ("ort", "ort-int8", "ort-plugins", "openvino", "openvino-f32", "openvino-int8"):
        if name.startswith("openvino"):
            _need("openvino", "needs OpenVINO (pip install -e '.[openvino]')")
        path = models.onnx({"ort": "fp32", "ort-int8": "int8", "ort-plugins": "plugins", "openvino": "fp32",
                            "openvino-f32": "fp32", "openvino-int8": "int8"}[name])
        from lfm.runtime.runners import OnnxRunner, OpenVinoRunner

        if name.startswith("openvino"):
            runner = OpenVinoRunner(path, threads=threads, precision="f32" if name == "openvino-f32" else None)
        else:
            runner = OnnxRunner(path, providers=["cpu"], threads=threads)
        try:
            runner.activate()
        except Exception as e:  # noqa: BLE001
            raise Unavailable(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None

        def setup(batch):
            return lambda x: runner.infer({"pixels": x})["logit"]
        # Our exports take uint8 bytes; a --model graph may take normalised floats.
        return Engine(name, "float" if runner.spec.input == "float" else "uint8", setup)

    if name in ("trt-fp16", "trt-int8", "trt"):
        _need("tensorrt", "needs TensorRT (pip install tensorrt, on an NVIDIA GPU machine)")
        _cuda()
        plan = models.plan(name.removeprefix("trt-"))
        from lfm.runtime.runners import make_runner

        runner = make_runner(engine=plan).activate()

        def setup(batch):
            return lambda x: runner.infer({"pixels": x})["logit"]
        return Engine(name, "float" if runner.spec.input == "float" else "uint8", setup)
    raise Unavailable(f"unknown backend {name!r}; known: {', '.join(ALL_BACKENDS)}")


def torch_cuda_engine(name: str, models: Models) -> Engine:
    """PyTorch on the GPU, one step more per backend so each step's worth shows:

    torch-cuda         our faithful model, fp32, eager (PyTorch's defaults: TF32 convolutions)
    torch-cuda-fp16    + fp16 weights and activations, channels-last
    torch-cuda-graphs  + one CUDA graph per batch shape (no per-layer launch cost)
    torch-cuda-fused   + BatchNorm folded into the convolutions, max-pool before ReLU
                       (lfm.train.model.fuse_for_inference: same function, less memory traffic)
    torch-cuda-triton  + our Triton kernels (lfm.kernels.triton_lfm): the stem (NPR + conv1 + max-pool
                       + ReLU, one pass from the uint8 NHWC bytes) and Top-K pooling

    cuDNN's autotuner (cudnn.benchmark) is on for all of them. A call copies the batch into a
    static device buffer (not timed) and is timed with CUDA events around the forward pass.
    """
    import copy

    torch = _cuda()
    torch.backends.cudnn.benchmark = True
    from lfm.train.model import fuse_for_inference

    model, spec = models.torch_model()
    steps = ("torch-cuda", "torch-cuda-fp16", "torch-cuda-graphs", "torch-cuda-fused", "torch-cuda-triton")
    if name not in steps:
        raise Unavailable(f"unknown backend {name!r}")
    level = steps.index(name)
    half, graphs, fused, triton_kernels = level >= 1, level >= 2, level >= 3, level >= 4
    if triton_kernels:
        _need("triton", "needs Triton (pip install -e '.[kernels]')")
        from lfm.kernels.triton_lfm import TritonLFM

        net = TritonLFM(model, spec.std).cuda().eval()
    else:
        net = (fuse_for_inference(model) if fused else copy.deepcopy(model)).cuda().eval()
        if half:
            net = net.half().to(memory_format=torch.channels_last)

    def setup(batch):
        size = models.size
        if triton_kernels:
            static = torch.zeros(batch, size, size, 3, device="cuda", dtype=torch.uint8)
        else:
            static = torch.zeros(batch, 3, size, size, device="cuda", dtype=torch.half if half else torch.float32)
            if half:
                static = static.contiguous(memory_format=torch.channels_last)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if graphs:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s), torch.inference_mode():
                for _ in range(3):  # warm-up on a side stream before capture, as PyTorch asks
                    net(static)
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.inference_mode():
                out = net(static)

            def call():
                graph.replay()
                return out
        else:
            def call():
                with torch.inference_mode():
                    return net(static)

        def run(x):
            static.copy_(torch.from_numpy(x))
            start.record()
            y = call()
            end.record()
            end.synchronize()
            return y.float().cpu().numpy(), start.elapsed_time(end) / 1000.0  # device seconds
        return run

    def device_memory():
        return torch.cuda.max_memory_allocated()

    return Engine(name, "uint8" if triton_kernels else "float", setup, device_memory,
                  reset_device_memory=torch.cuda.reset_peak_memory_stats)


# --------------------------------------------------------------------------------------------
# Inputs


def image_files(work: Path, quick: bool) -> tuple[list[str], str]:
    """The e2e and calibration images: the reference JPEGs, or generated ones without them."""
    cnn = REFERENCE / "cnndetection"
    if cnn.is_dir():
        from lfm.runtime.preprocess import is_image_path

        return sorted(str(f) for f in cnn.iterdir() if is_image_path(f)), str(cnn)
    from lfm.train.make_synthetic import make_synthetic

    out = work / "synthetic"
    make_synthetic(out, n=32 if quick else 128, size=256, seed=0, val_fraction=0.0, force=True, jobs=1)
    files = sorted(str(p) for p in out.rglob("*.png"))
    return files, str(out)


def batch_of(base: np.ndarray, batch: int) -> np.ndarray:
    return np.ascontiguousarray(np.resize(base, (batch, *base.shape[1:])))


# --------------------------------------------------------------------------------------------
# Runs


def baseline_of(names) -> str:
    """The backend the ratios and logit differences refer to: torch eager on the CPU where it runs
    (upstream's setting), else torch eager fp32 on the GPU (a GPU-only run)."""
    return "torch" if "torch" in names or "torch-cuda" not in names else "torch-cuda"


def run_engine_mode(names, models, sizes, batches, threads, rounds, warmup, files) -> tuple[list, dict, dict]:
    from lfm.runtime.preprocess import load_array, normalize
    from lfm.runtime.spec import ModelSpec

    rows, latencies, unavailable = [], {}, {}
    baseline = baseline_of(names)
    for size in sizes:
        models.size = size
        engines = []
        for name in names:
            with PeakRSS() as mem:
                try:
                    eng = make_engine(name, models, threads)
                except Unavailable as e:
                    unavailable[name] = str(e)
                    log(f"  {name}: unavailable ({e})")
                    continue
                except Exception as e:  # noqa: BLE001  (one broken backend must not lose the others' figures)
                    unavailable[name] = f"failed to build: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                    log(f"  {name}: {unavailable[name]}")
                    continue
            eng.host_added = mem.delta
            engines.append(eng)
        spec = ModelSpec(size=size, policy="resize")
        base = np.stack([load_array(f, spec) for f in files[:8]])
        for batch in batches:
            x_u8 = batch_of(base, batch)
            x = {"uint8": x_u8, "float": normalize(x_u8, spec.mean, spec.std)}
            fns, meta = {}, {}
            for eng in engines:
                if eng.reset_device_memory:
                    eng.reset_device_memory()
                with PeakRSS() as mem:
                    try:
                        fn = eng.setup(batch)
                        for _ in range(warmup):
                            out = fn(x[eng.input_kind])
                    except Exception as e:  # noqa: BLE001  (e.g. out of memory at this batch)
                        log(f"  {eng.name} b{batch}: failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
                        continue
                logits = np.asarray(out[0] if isinstance(out, tuple) else out, dtype=np.float64).reshape(-1)
                meta[eng.name] = {"host_added_mb": round((eng.host_added + mem.delta) / 2**20, 1), "_logits": logits}
                if eng.device_memory:  # this backend's own peak: set up, captured and warmed up at this batch
                    meta[eng.name]["device_peak_mb"] = round(eng.device_memory() / 2**20, 1)
                fns[eng.name] = (lambda f=fn, a=x[eng.input_kind]: f(a))
            if not fns:
                continue
            log(f"engine {size}px b{batch}: {len(fns)} backends x {rounds} rounds")
            times = time_interleaved(fns, rounds, on_round=lambda r: log(f"  round {r}/{rounds}") if r % max(1, rounds // 2) == 0 else None)
            base_ips = None
            # Speed comes with correctness: each backend's logits on this very batch against the
            # baseline's (torch eager on the CPU; on a GPU-only run, torch eager fp32 on the GPU).
            ref = meta.get(baseline, {}).get("_logits")
            for eng in engines:
                if eng.name not in times:
                    continue
                t = times[eng.name]
                logits = meta[eng.name].pop("_logits")
                agree = {}
                if ref is not None and len(ref) == len(logits):
                    agree = {"max_abs_dlogit_vs_torch": round(float(np.max(np.abs(logits - ref))), 5),
                             "decisions_equal_to_torch": round(float(np.mean((logits > 0) == (ref > 0))), 4)}
                row = {"mode": "engine", "backend": eng.name, "precision": models.precision(eng.name), "size": size,
                       "batch": batch, **summarize(t, batch), "device_peak_mb": None, **meta[eng.name], **agree,
                       "host_peak_mb": round(max_rss_bytes() / 2**20, 1)}
                latencies[f"engine/{eng.name}/{size}/{batch}"] = [round(v * 1000, 3) for v in t]
                rows.append(row)
                if eng.name == baseline:
                    base_ips = row["images_per_s"]
            for row in rows:
                if row["mode"] == "engine" and row["size"] == size and row["batch"] == batch and base_ips:
                    row["x_torch"] = round(row["images_per_s"] / base_ips, 2)
    return rows, latencies, unavailable


def run_e2e_mode(names, models, size, batches, threads, rounds, files, repeat) -> tuple[list, dict]:
    from lfm.runtime.detector import Detector

    models.size = size
    listed = files * repeat
    rows, unavailable = [], {}
    baseline = baseline_of(names)
    for batch in batches:
        dets, fns = {}, {}
        for name in names:
            if name not in E2E_CAPABLE:
                continue
            try:
                if name in ("torch", "torch-cuda"):
                    if name == "torch-cuda":
                        _cuda()
                    kw = {"checkpoint": models.checkpoint, "device": "cpu" if name == "torch" else "cuda"}
                elif name.startswith("trt"):
                    _need("tensorrt", "needs TensorRT")
                    kw = {"engine": models.plan(name.removeprefix("trt-"))}
                else:
                    path = models.onnx({"ort": "fp32", "ort-int8": "int8", "ort-plugins": "plugins",
                                        "openvino": "fp32", "openvino-int8": "int8"}[name])
                    kw = {"model": path, "backend": "openvino" if name.startswith("openvino") else "onnxruntime"}
                    if not name.startswith("openvino"):
                        kw["providers"] = ["cpu"]
                det = Detector(**kw, threads=None if name.startswith("torch") else threads, batch_size=batch, size=size, policy="resize")
            except (Unavailable, Exception) as e:  # noqa: BLE001
                unavailable[name] = str(e).splitlines()[0] if str(e) else type(e).__name__
                continue
            if name == "torch":
                import torch

                torch.set_num_threads(threads)
            dets[name] = det
            recs = det.predict(files[: 2 * batch])  # warm-up, and a check that it scores
            bad = [r for r in recs if not r.ok]
            if bad:
                unavailable[name] = f"scoring failed: {bad[0].path}: {bad[0].error}"
                det.close()
                del dets[name]
                continue
            fns[name] = (lambda d=det: d.predict(listed))
        if not fns:
            continue
        log(f"e2e {size}px batch {batch}: {len(fns)} backends x {rounds} rounds of {len(listed)} files")
        times = time_interleaved(fns, rounds, block=1)
        base = None
        for name in fns:
            s = summarize(times[name], len(listed))
            row = {"mode": "e2e", "backend": name, "precision": models.precision(name), "size": size, "batch": batch,
                   "images_per_s": s["images_per_s"], "p50_ms_per_image": round(s["p50_ms"] / len(listed), 3),
                   "files_per_round": len(listed), "runs": s["runs"], "host_peak_mb": round(max_rss_bytes() / 2**20, 1)}
            rows.append(row)
            if name == baseline:
                base = row["images_per_s"]
        for row in rows:
            if row["batch"] == batch and base:
                row["x_torch"] = round(row["images_per_s"] / base, 2)
        for d in dets.values():
            d.close()
    return rows, unavailable


# --------------------------------------------------------------------------------------------
# Reports


def add_limits(rows, rates):
    for r in rows:
        gflop = lfm_gflop_per_image(r["size"])
        r["gflop_per_image"] = round(gflop, 3)
        r["achieved_gflop_per_s"] = round(r["images_per_s"] * gflop, 1)
        if r["backend"].startswith(("torch-cuda", "trt")):  # against the GPU's matrix-product rate
            key = {"fp32": "gpu_tf32_gflop_per_s", "int8": None}.get(r["precision"], "gpu_fp16_gflop_per_s")
        else:
            key = {"int8": "int8_gop_per_s", "fp32": "fp32_gflop_per_s"}.get(r["precision"], "bf16_gflop_per_s")
        rate = rates.get(key) if key else None
        r["of_gemm_rate"] = round(r["achieved_gflop_per_s"] / rate, 3) if rate else None


def markdown(doc) -> str:
    m = doc["machine"]
    gpus = "; ".join(f"{g['name']} (driver {g['driver']}, {g['memory']})" for g in m["gpus"]) or "none"
    lines = [f"# LFM benchmark ({'quick' if doc['quick'] else 'full'})", "", f"`{doc['command']}`", "",
             f"Machine: {m['cpu']}, {m['usable_cpus']} usable CPUs ({m['threads']} threads used), {m['memory_gb']} GB; "
             f"GPU: {gpus}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if "unavailable" not in str(v)), "",
             f"Machine rates measured in this run: fp32 GEMM {doc['rates']['fp32_gflop_per_s']:.0f} GFLOP/s (numpy BLAS)"
             + (f", bf16 GEMM {doc['rates']['bf16_gflop_per_s']:.0f} GFLOP/s (PyTorch)" if doc['rates'].get('bf16_gflop_per_s') else "")
             + (f", INT8 GEMM {doc['rates']['int8_gop_per_s']:.0f} GOP/s (ONNX Runtime MatMulInteger)" if doc['rates'].get('int8_gop_per_s') else "")
             + (f"; GPU GEMM (cuBLAS, 8192^3) fp16 {doc['rates']['gpu_fp16_gflop_per_s'] / 1e3:.0f} TFLOP/s, "
                f"fp32 with TF32 {doc['rates']['gpu_tf32_gflop_per_s'] / 1e3:.0f} TFLOP/s" if doc['rates'].get('gpu_fp16_gflop_per_s') else "")
             + ". LFM needs " + ", ".join(f"{lfm_gflop_per_image(s):.2f} GFLOP at {s}" for s in doc["settings"]["sizes"])
             + " per image. 'of GEMM' = achieved GFLOP/s over the GEMM rate of the backend's precision (OpenVINO's "
             "default: bf16); above 100 % means the backend's fused convolution kernels beat that plain GEMM, "
             "not that a limit was broken.", ""]
    base = doc["settings"].get("baseline", "torch")
    eng = [r for r in doc["results"] if r["mode"] == "engine"]
    gpu_rows = [r for r in eng if r["backend"].startswith(("torch-cuda", "trt"))]
    if gpu_rows:
        best = max(gpu_rows, key=lambda r: r["images_per_s"])
        lines += [f"**Best on the GPU: {best['backend']} at batch {best['batch']}, {best['size']} px: "
                  f"{best['images_per_s']:,.0f} images/s** = {best['images_per_s'] / PAPER_IMAGES_PER_S:.1f}x the paper's "
                  f"{PAPER_IMAGES_PER_S}/s (one A6000; a different GPU); our target at 256 px: {TARGET_GPU_IMAGES_PER_S:,}/s "
                  f"-> {'met' if best['size'] == 256 and best['images_per_s'] >= TARGET_GPU_IMAGES_PER_S else 'not met'}. "
                  "Engine mode on a GPU times the forward pass on a batch already in device memory (CUDA events); "
                  "the host-to-device copy is not in it.", ""]
    if eng:
        lines += ["## Engine mode (tensor in, logits out)", "",
                  f"Ratios and logit differences are against `{base}` on the same batch.", "",
                  f"| backend | precision | size | batch | img/s | p50 / p90 / p99 ms | x {base} | max abs dlogit vs {base} | host added MB | device peak MB | GFLOP/s | of GEMM |",
                  "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
        for r in eng:
            of_gemm = "-" if r["of_gemm_rate"] is None else f"{100 * r['of_gemm_rate']:.0f} %"
            lines.append(f"| {r['backend']} | {r['precision']} | {r['size']} | {r['batch']} | {r['images_per_s']:.1f} | "
                         f"{r['p50_ms']:.2f} / {r['p90_ms']:.2f} / {r['p99_ms']:.2f} | {r.get('x_torch', '-')} | "
                         f"{r.get('max_abs_dlogit_vs_torch', '-')} | "
                         f"{r['host_added_mb']} | {r['device_peak_mb'] if r['device_peak_mb'] is not None else '-'} | "
                         f"{r['achieved_gflop_per_s']:.0f} | {of_gemm} |")
        lines.append("")
    e2e = [r for r in doc["results"] if r["mode"] == "e2e"]
    if e2e:
        lines += ["## End-to-end mode (files in, scores out, decoding included)", "",
                  f"{e2e[0]['files_per_round']} files per round from {doc['settings']['files_from']}.", "",
                  f"| backend | precision | size | batch | img/s | ms per image | x {base} |", "|---|---|---:|---:|---:|---:|---:|"]
        for r in e2e:
            lines.append(f"| {r['backend']} | {r['precision']} | {r['size']} | {r['batch']} | {r['images_per_s']:.1f} | "
                         f"{r['p50_ms_per_image']:.2f} | {r.get('x_torch', '-')} |")
        lines.append("")
    if doc["unavailable"]:
        lines += ["Unavailable here:", ""] + [f"- {k}: {v}" for k, v in doc["unavailable"].items()] + [""]
    if doc.get("plots"):
        lines += [f"![{Path(p).stem}]({Path(p).name})" for p in doc["plots"]] + [""]
    return "\n".join(lines)


def plots(doc, latencies, out_dir: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib not installed (pip install -e '.[viz]'): no plots")
        return []
    made = []
    rows = doc["results"]
    # One colour per backend across every panel and plot.
    names = list(dict.fromkeys(r["backend"] for r in rows))
    colour = {n: plt.get_cmap("tab10" if len(names) <= 10 else "tab20")(i) for i, n in enumerate(names)}
    keys = sorted({(r["mode"], r["size"]) for r in rows})
    if keys:
        fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
        for ax, (mode, size) in zip(axes[0], keys):
            sel = [r for r in rows if r["mode"] == mode and r["size"] == size]
            for name in dict.fromkeys(r["backend"] for r in sel):
                pts = sorted((r["batch"], r["images_per_s"]) for r in sel if r["backend"] == name)
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name, color=colour[name])
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("batch size")
            ax.set_ylabel("images / s")
            ax.set_title(f"{'engine (tensor in)' if mode == 'engine' else 'end to end (files in)'}, {size} px")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"LFM throughput — {doc['machine']['cpu']}" + (f", {doc['machine']['gpus'][0]['name']}" if doc["machine"]["gpus"] else ""), fontsize=10)
        fig.tight_layout()
        p = out_dir / "bench_throughput.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(str(p))
    if latencies:
        batch = min(int(k.split("/")[3]) for k in latencies)
        size = min(int(k.split("/")[2]) for k in latencies)
        sel = {k.split("/")[1]: v for k, v in latencies.items() if k.endswith(f"/{size}/{batch}")}
        fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(sel)), 4.5))
        box = ax.boxplot(list(sel.values()), showfliers=True, patch_artist=True)
        for patch, name in zip(box["boxes"], sel):
            patch.set_facecolor(colour.get(name, "grey"))
            patch.set_alpha(0.6)
        ax.set_xticks(range(1, len(sel) + 1), list(sel), rotation=30, ha="right")
        ax.set_yscale("log")
        ax.set_ylabel("latency per call (ms)")
        ax.set_title(f"Latency distribution, engine mode, batch {batch}, {size} px")
        ax.grid(True, axis="y", which="both", alpha=0.3)
        fig.tight_layout()
        p = out_dir / "bench_latency.png"
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(str(p))
    return made


# --------------------------------------------------------------------------------------------


def random_weight_checkpoint(path: Path) -> str:
    """A seeded random-weight LFM checkpoint with the default spec: what the benchmark times where
    upstream's checkpoint is absent (a user's clone without ../shared). Timing needs no trained weights."""
    import torch

    from lfm.runtime.spec import ModelSpec
    from lfm.train.checkpoint import make_checkpoint, save_atomic
    from lfm.train.model import build_model

    torch.manual_seed(0)
    save_atomic(make_checkpoint(build_model(), ModelSpec()), path)
    return str(path)


def int_list(s: str) -> list[int]:
    try:
        vals = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not vals or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return vals


UPSTREAM_CHECKPOINT = REFERENCE / "lfm_upstream.pth"


def build_parser() -> argparse.ArgumentParser:
    from lfm.runtime.cli import ArgumentParser  # --version, the name as typed (lfm bench)

    p = ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="backends: " + ", ".join(ALL_BACKENDS) + "; trt (with --model lfm.plan)")
    p.add_argument("--quick", action="store_true",
                   help="< 2 min: torch, ort, ort-int8, openvino; 224 px; batches 1, 8; 3 rounds (default: off, the full run)")
    p.add_argument("--backends", default=None,
                   help="comma-separated (default: the CPU backends, or the GPU backends on a GPU machine; --quick: "
                        f"{', '.join(QUICK_BACKENDS)}; --model lfm.onnx: {', '.join(MODEL_DEFAULT_BACKENDS['onnx'])}; "
                        "--model lfm.plan: trt)")
    p.add_argument("--batch-sizes", type=int_list, default=None,
                   help="comma-separated (default: 1,8,32; on a GPU machine 1,32,256,1024; --quick: 1,8)")
    p.add_argument("--sizes", type=int_list, default=None,
                   help="image sides (default: 224,256; on a GPU machine 256; --quick: 224; --model lfm.onnx or "
                        "lfm.plan: the model's own size)")
    p.add_argument("--mode", choices=("engine", "e2e", "both", "fidelity"), default="both",
                   help="engine, e2e or both (default: both); fidelity: every CPU backend x precision x input on "
                        "cross-domain images, flips beside images/s (benchmarks/fidelity_table.py; ~15 min)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per configuration, each 3 calls (default: 8; --quick: 3)")
    p.add_argument("--threads", type=int, default=usable_cpus(), help="CPU threads (default: the usable CPUs, here %(default)s)")
    p.add_argument("--checkpoint", default=None,
                   help=f"the checkpoint to export and time (default: upstream's, {UPSTREAM_CHECKPOINT}; where it is "
                        "absent, a seeded random-weight model)")
    p.add_argument("--model", metavar="FILE", default=None,
                   help="time this model instead of exporting one: an ONNX graph .onnx (run by ort, openvino, "
                        "openvino-f32), a TensorRT plan .plan with its .plan.json sidecar (trt) or a checkpoint "
                        ".pt/.pth (as --checkpoint) (default: none, export from --checkpoint)")
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help=OUTPUT_DIR_HELP)
    p.add_argument("--work-dir", default=None,
                   help="where exported models go, kept after the run (default: a temp folder, removed at the end)")
    p.add_argument("--replot", metavar="BENCH_JSON", default=None,
                   help="only redraw the plots (and bench.md) of a results file into --output-dir (default: none)")
    return p


@dataclass
class GivenModel:
    """--model FILE: its kind ("onnx", "plan" or "checkpoint") and, for a graph or plan, its own
    preprocessing spec and precision."""
    path: str
    kind: str
    spec: object = None
    precision: str | None = None


def given_model(args) -> GivenModel | None:
    if not args.model:
        return None
    path = args.model
    if not Path(path).is_file():
        raise UsageError(f"--model {path}: no such file" if not Path(path).exists() else f"--model {path}: not a file")
    from lfm.runtime.detector import source_kind

    try:
        kind = MODEL_KINDS[source_kind(path)]
    except ValueError:
        raise UsageError(f"--model {path}: unknown model kind {Path(path).suffix or '(no extension)'!r}; expected an "
                         "ONNX model (.onnx), a TensorRT plan (.plan, with its .plan.json sidecar) or a checkpoint "
                         "(.pt, .pth)") from None
    if kind == "checkpoint":
        if args.checkpoint:
            raise UsageError("give the checkpoint once: --model or --checkpoint, not both")
        return GivenModel(path, kind)
    spec, precision = model_metadata(path, kind)
    return GivenModel(path, kind, spec, precision)


def model_metadata(path: str, kind: str):
    """(spec, precision) of an ONNX graph (its lfm.* metadata) or a TensorRT plan (its sidecar,
    readable without TensorRT); an unusable file is a UsageError naming it."""
    if kind == "onnx":
        from lfm.runtime.runners import BackendError, OnnxRunner

        try:
            with OnnxRunner(path, providers=["cpu"], threads=1) as runner:
                return runner.spec, runner.metadata.get("lfm.precision", "fp32")
        except BackendError as e:
            raise UsageError(str(e)) from None
    from lfm.runtime.spec import ModelSpec
    from lfm.runtime.trt_runner import EngineError, read_sidecar

    try:
        sidecar = read_sidecar(path)
    except EngineError as e:
        raise UsageError(str(e)) from None
    return ModelSpec.from_dict(sidecar["spec"]), str(sidecar["precision"])


def backend_names(args, p, gpu: bool, given: GivenModel | None) -> list[str]:
    """--backends checked against what runs the model (a given graph or plan only as it is)."""
    kind = given.kind if given else "checkpoint"
    # On a GPU machine the default is the GPU backends: the CPU ones at batch 1024 would take hours.
    default = MODEL_DEFAULT_BACKENDS.get(kind) or (QUICK_BACKENDS if args.quick else (GPU_BACKENDS if gpu else CPU_BACKENDS))
    names = args.backends.split(",") if args.backends else list(default)
    unknown = [n for n in names if n not in (*ALL_BACKENDS, "trt")]
    if unknown:
        p.error(f"unknown backend(s) {', '.join(unknown)}; known: {', '.join(ALL_BACKENDS)}, trt")
    fitting = MODEL_BACKENDS.get(kind, ALL_BACKENDS)
    misfits = [n for n in names if n not in fitting]
    if misfits and given:
        raise UsageError(f"--model {given.path}: {', '.join(misfits)} cannot run this {kind} as it is; "
                         f"for a {kind}: --backends {','.join(fitting)}")
    if misfits:
        raise UsageError("backend trt times a given plan: --model lfm.plan; to build plans here: trt-fp16, trt-int8")
    return names


def replot(results: Path, out: Path) -> int:
    if not results.is_file():
        raise UsageError(f"--replot {results}: no such results file")
    doc = json.loads(results.read_text())
    out.mkdir(parents=True, exist_ok=True)
    doc["plots"] = plots(doc, doc.get("latencies_ms", {}), out)
    (out / "bench.md").write_text(markdown(doc))
    log(f"redrew {len(doc['plots'])} plot(s) in {out}")
    return 0


def fidelity(args) -> int:
    if args.model:
        raise UsageError("--model does not apply to --mode fidelity (it exports every variant from upstream's checkpoint)")
    from fidelity_table import run as run_fidelity

    args.reference = str(REFERENCE)
    with work_folder(args.work_dir, "lfm-fidelity-") as work:
        args.work_dir = str(work)
        return run_fidelity(args)


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    try:
        if args.replot:
            return replot(Path(args.replot), Path(args.output_dir))
        if args.mode == "fidelity":
            return fidelity(args)
        return bench(args, p, argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def bench(args, p, argv) -> int:
    given = given_model(args)
    checkpoint = None  # a given ONNX graph or plan needs none
    if given is None or given.kind == "checkpoint":
        checkpoint = given.path if given else (args.checkpoint or str(UPSTREAM_CHECKPOINT))
        if args.checkpoint and not Path(checkpoint).is_file():
            raise UsageError(f"--checkpoint {checkpoint}: no such checkpoint")
    gpu = bool(machine(args.threads, modules=())["gpus"])
    names = backend_names(args, p, gpu, given)
    batches = args.batch_sizes or ([1, 8] if args.quick else ([1, 32, 256, 1024] if gpu else [1, 8, 32]))
    own_size = [given.spec.size] if given and given.spec else None
    sizes = args.sizes or own_size or ([224] if args.quick else ([256] if gpu else [224, 256]))
    rounds = args.rounds or (3 if args.quick else 8)
    out_dir = Path(args.output_dir)
    log(f"results go to {out_dir.resolve()} (--output-dir)")
    with work_folder(args.work_dir, "lfm-bench-") as work:
        doc, latencies = measure(args, names, sizes, batches, rounds, gpu, given, checkpoint, work)
    doc["command"] = ("python benchmarks/bench.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    out_dir.mkdir(parents=True, exist_ok=True)
    doc["plots"] = plots(doc, latencies, out_dir)
    doc["latencies_ms"] = latencies
    doc["seconds"] = round(time.perf_counter() - __import__("common").T0, 1)
    write_report(out_dir, "bench", doc, markdown(doc))
    log(f"wrote {out_dir / 'bench.json'}, {out_dir / 'bench.md'} and {len(doc['plots'])} plot(s) in {doc['seconds']:.0f}s")
    return 0


def measure(args, names, sizes, batches, rounds, gpu, given, checkpoint, work: Path) -> tuple[dict, dict]:
    """Every mode asked for, timed; (the report without its command and plots, latencies)."""
    if checkpoint and not Path(checkpoint).is_file():
        checkpoint = random_weight_checkpoint(work / "random.pt")
        log(f"no reference checkpoint at {UPSTREAM_CHECKPOINT}: timing a random-weight model ({checkpoint})")

    log(f"backends {', '.join(names)}; sizes {sizes}; batches {batches}; {rounds} rounds; work dir {work}"
        + (f"; model {given.path}" if given else ""))
    files, files_from = image_files(work, args.quick)
    calib = files_from  # the cnndetection JPEGs (or generated images): enough to calibrate (>= 8)
    as_is = given if given and given.kind != "checkpoint" else None
    models = Models(work, checkpoint, calib, 16 if args.quick else 64, sizes[0],
                    given=as_is.path if as_is else None, given_precision=as_is.precision if as_is else None)
    log("measuring the machine's GEMM rates")
    rates = {"fp32_gflop_per_s": round(fp32_gemm_rate(args.threads), 1)}
    for key, fn in (("int8_gop_per_s", int8_gemm_rate), ("bf16_gflop_per_s", bf16_gemm_rate)):
        v = fn(args.threads)
        if v:
            rates[key] = round(v, 1)
    if any(n.startswith(("torch-cuda", "trt")) for n in names):
        rates.update({k: round(v, 1) for k, v in gpu_gemm_rates().items()})
    results, latencies, unavailable = [], {}, {}
    if args.mode in ("engine", "both"):
        rows, latencies, unavailable = run_engine_mode(names, models, sizes, batches, args.threads, rounds,
                                                       2 if args.quick else 5, files)
        results += rows
    if args.mode in ("e2e", "both"):
        e2e_batches = [16] if args.quick else sorted({8, 32} | ({256} if gpu else set()))
        rows, un = run_e2e_mode(names, models, sizes[0], e2e_batches, args.threads, 2 if args.quick else 4,
                                files[:32] if args.quick else files, 1 if args.quick else 2)
        results += rows
        unavailable.update({k: v for k, v in un.items() if k not in unavailable})
    add_limits(results, rates)
    doc = {"benchmark": "bench", "command": None, "quick": args.quick, "machine": machine(args.threads),
           "settings": {"backends": names, "baseline": baseline_of(names), "sizes": sizes, "batches": batches, "rounds": rounds, "mode": args.mode,
                        "checkpoint": "upstream (reference)" if checkpoint == str(UPSTREAM_CHECKPOINT) else checkpoint,
                        "model": given.path if given else None, "model_kind": given.kind if given else None,
                        "files_from": files_from, "timing": "interleaved rounds of 1 + 3 calls, the first not counted; "
                                                            "CUDA events on GPUs"},
           "rates": rates, "results": results, "unavailable": unavailable, "seconds": None}
    return doc, latencies


if __name__ == "__main__":
    run_main(main)
