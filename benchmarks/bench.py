"""One harness for latency and throughput of every LFM backend, with reports and plots.

    python benchmarks/bench.py [--quick] [--backends torch,ort,ort-int8,...] [--batch-sizes 1,8,32]
                               [--sizes 224,256] [--mode engine|e2e|both|fidelity|serve|batch]
                               [--agreement] [--profile] [--output-dir DIR]
                               [--model lfm.onnx|lfm.plan|ckpt.pt]

The one entry point of the benchmarks: --mode serve and --mode batch run bench_serve.py and
bench_batch.py with the other options; the kernel and training benchmarks are
benchmarks/bench_kernels.py and benchmarks/train_synthetic.py.

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
images without ../shared), beside the loop a user writes first (PIL open, resize, one
session.run per file) on the same graph (ort-int8, else ort), which must give the same logits.
--agreement adds every engine's decision agreement with the baseline on the cnndetection
reference JPEGs; --profile the INT8 graph's time per convolution (ONNX Runtime's profiler) and
the images/s ceiling it implies. Timing interleaves the backends round by round (benchmarks/common.py)
so drifts of a shared machine hit all of them; on GPUs a call is timed with CUDA events.

Per configuration: images/s (batch / median latency), p50/p90/p99 latency, the ratio to the
`torch` baseline at the same size and batch in the same run (on a GPU-only run, `torch-cuda`:
torch eager fp32 on the GPU), the largest logit difference from that baseline on the timed batch (speed is worth
nothing without the same answers), peak host memory (process peak and what the backend added while it was created, warmed up and run), peak device memory where
measurable, and achieved GFLOP/s against the machine's measured GEMM rate, each named with the
library that measured it (fp32: the fastest of PyTorch's matmul, ONNX Runtime's MatMul and numpy's
BLAS, which this workplace may slow through OPENBLAS_CORETYPE; bf16: PyTorch; INT8: ONNX Runtime's
MatMulInteger; on GPUs cuBLAS fp16, and TF32 for fp32), so a reader sees how close each backend
gets; a backend above 100 % of its rate is flagged under Plausibility. On a GPU the report also states the best images/s against
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
from common import (DEFAULT_OUTPUT_DIR, OUTPUT_DIR_HELP, PeakRSS, cpu_text, lfm_gflop_per_image, log, machine,  # noqa: E402
                    machine_rates, max_rss_bytes, run_main, summarize,
                    report_refusal, time_interleaved, usable_cpus, work_folder, write_report)
from lfm.runtime.files import first_line  # noqa: E402  (standard library only)

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
        from lfm.runtime.backends.onnxrt import OnnxRunner
        from lfm.runtime.backends.openvino_rt import OpenVinoRunner

        if name.startswith("openvino"):
            runner = OpenVinoRunner(path, threads=threads, precision="f32" if name == "openvino-f32" else None)
        else:
            runner = OnnxRunner(path, providers=["cpu"], threads=threads)
        try:
            runner.activate()
        except Exception as e:  # noqa: BLE001
            raise Unavailable(f"{type(e).__name__}: {first_line(e, empty='')}") from None

        def setup(batch):
            return lambda x: runner.infer({"pixels": x})["logit"]
        # Our exports take uint8 bytes; a --model graph may take normalised floats.
        return Engine(name, "float" if runner.spec.input == "float" else "uint8", setup)

    if name in ("trt-fp16", "trt-int8", "trt"):
        _need("tensorrt", "needs TensorRT (pip install tensorrt, on an NVIDIA GPU machine)")
        _cuda()
        plan = models.plan(name.removeprefix("trt-"))
        from lfm.runtime.backends import make_runner

        runner = make_runner(plan, backend="tensorrt").activate()

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
    from lfm.runtime import inputs  # the project's walker (this module's image_files is the benchmark's choice)

    cnn = REFERENCE / "cnndetection"
    if cnn.is_dir():
        return inputs.image_files(str(cnn)), str(cnn)
    from lfm.train.make_synthetic import make_synthetic

    out = work / "synthetic"
    make_synthetic(out, n=32 if quick else 128, size=256, seed=0, val_fraction=0.0, force=True, jobs=1)
    return inputs.image_files(str(out)), str(out)


def batch_of(base: np.ndarray, batch: int) -> np.ndarray:
    return np.ascontiguousarray(np.resize(base, (batch, *base.shape[1:])))


# --------------------------------------------------------------------------------------------
# Runs


def baseline_of(names) -> str:
    """The backend the ratios and logit differences refer to: torch eager on the CPU where it runs
    (upstream's setting), else torch eager fp32 on the GPU (a GPU-only run)."""
    return "torch" if "torch" in names or "torch-cuda" not in names else "torch-cuda"


def run_engine_mode(names, models, sizes, batches, threads, rounds, warmup, files, agreement=None) -> tuple[list, dict, dict]:
    """Every backend at every size and batch, interleaved; `agreement`, a list, also gets each
    backend's decisions on the reference images at the first size (--agreement)."""
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
                    unavailable[name] = f"failed to build: {type(e).__name__}: {first_line(e, empty='')}"
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
                        log(f"  {eng.name} b{batch}: failed ({type(e).__name__}: {first_line(e, empty='')})")
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
        if agreement is not None and size == sizes[0] and engines:
            log(f"agreement on the reference images at {size} px")
            agreement += reference_agreement(engines, baseline, size)
    return rows, latencies, unavailable


def run_e2e_mode(names, models, size, batches, threads, rounds, files, repeat) -> tuple[list, dict]:
    from lfm.runtime.backends import make_runner
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
                    source, opts = models.checkpoint, {"device": "cpu" if name == "torch" else "cuda"}
                elif name.startswith("trt"):
                    _need("tensorrt", "needs TensorRT")
                    source, opts = models.plan(name.removeprefix("trt-")), {}
                else:
                    source = models.onnx({"ort": "fp32", "ort-int8": "int8", "ort-plugins": "plugins",
                                          "openvino": "fp32", "openvino-int8": "int8"}[name])
                    opts = ({"backend": "openvino", "threads": threads} if name.startswith("openvino")
                            else {"backend": "onnxruntime", "providers": ["cpu"], "threads": threads})
                det = Detector(make_runner(source, **opts), batch_size=batch, size=size, policy="resize")
            except (Unavailable, Exception) as e:  # noqa: BLE001
                unavailable[name] = first_line(e)
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
        plain = None
        if batch == batches[0]:  # the plain loop has no batch: timed once, beside the first batch
            plain = add_plain_loop(fns, dets, models, listed, size, threads, unavailable)
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
        if plain:
            compare_with_plain_loop(rows, plain, batch)
        for row in rows:
            if row["batch"] == batch and base:
                row["x_torch"] = round(row["images_per_s"] / base, 2)
        for d in dets.values():
            d.close()
    return rows, unavailable


PLAIN_LOOP = " plain loop"  # suffix of the row of the loop a user writes first


def plain_loop(model: str, files: list[str], size: int, threads: int):
    """What a user writes first: for each file, PIL open -> RGB -> bilinear resize -> one
    session.run; returns a callable -> logits. None where the graph does not take uint8 bytes."""
    from PIL import Image

    from lfm.runtime.backends.onnxrt import inference_session

    sess = inference_session(model, providers="cpu", threads=threads)
    if sess.get_inputs()[0].type != "tensor(uint8)":
        return None
    name = sess.get_inputs()[0].name

    def run():
        out = []
        for f in files:
            img = Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)
            out.append(float(sess.run(["logit"], {name: np.asarray(img)[None]})[0].reshape(-1)[0]))
        return np.array(out)
    return run


def add_plain_loop(fns, dets, models, listed, size, threads, unavailable) -> dict | None:
    """Time the plain loop on the deployment model (ort-int8, else ort) beside its Detector, after
    checking the two give the same logits: {"of": backend, "name": row name, "max_abs_dlogit": d}."""
    of = next((n for n in ("ort-int8", "ort") if n in fns), None)
    if of is None:
        return None
    path = models.onnx({"ort-int8": "int8", "ort": "fp32"}[of])
    run = plain_loop(path, listed, size, threads)
    if run is None:
        unavailable[of + PLAIN_LOOP] = "the graph takes floats; the plain loop feeds uint8 bytes"
        return None
    recs = dets[of].predict(listed)
    det_logits = np.array([r.logit for r in recs], dtype=np.float64)
    fns[of + PLAIN_LOOP] = run
    return {"of": of, "name": of + PLAIN_LOOP, "max_abs_dlogit": float(np.max(np.abs(run() - det_logits)))}


def compare_with_plain_loop(rows, plain, batch) -> None:
    """The Detector's row gets its speed over the plain loop's and their largest logit difference."""
    by_name = {r["backend"]: r for r in rows if r["batch"] == batch and r["mode"] == "e2e"}
    det, loop = by_name.get(plain["of"]), by_name.get(plain["name"])
    if det and loop:
        det["x_plain_loop"] = round(det["images_per_s"] / loop["images_per_s"], 2)
        det["max_abs_dlogit_vs_plain_loop"] = round(plain["max_abs_dlogit"], 6)
        loop["precision"] = det["precision"]


# --------------------------------------------------------------------------------------------
# Agreement on the reference images and the INT8 profile (--agreement, --profile)


def reference_set() -> tuple[list[str], list[int]] | None:
    """The cnndetection reference JPEGs and their labels (1 = generated); None without them."""
    tsv = REFERENCE / "cnndetection" / "labels_and_upstream_logits.tsv"
    if not tsv.is_file():
        return None
    rows = [line.rstrip("\n").split("\t") for line in open(tsv) if line.strip() and not line.startswith("#")]
    return [str(REFERENCE / "cnndetection" / r[0]) for r in rows], [int(r[1]) for r in rows]


def logits_in_batches(fn, x: np.ndarray, batch: int) -> np.ndarray:
    """fn's logits over every image of x, in batches of `batch` (the last one padded)."""
    out = []
    for i in range(0, len(x), batch):
        chunk = x[i:i + batch]
        n = len(chunk)
        if n < batch:
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch - n, axis=0)])
        got = fn(np.ascontiguousarray(chunk))
        out.append(np.asarray(got[0] if isinstance(got, tuple) else got, dtype=np.float64).reshape(-1)[:n])
    return np.concatenate(out)


def reference_agreement(engines, baseline: str, size: int, batch: int = 8) -> list[dict]:
    """Each engine's decisions on the reference images against the baseline's (speed is worth
    nothing without the same answers on real images); [] without the reference set."""
    from lfm.export.quantize import compare_logits
    from lfm.runtime.preprocess import load_array, normalize
    from lfm.runtime.spec import ModelSpec

    ref_set = reference_set()
    by_name = {e.name: e for e in engines}
    if ref_set is None or baseline not in by_name:
        return []
    files, labels = ref_set
    spec = ModelSpec(size=size, policy="resize")
    x_u8 = np.stack([load_array(f, spec) for f in files])
    x = {"uint8": x_u8, "float": normalize(x_u8, spec.mean, spec.std)}
    logits = {e.name: logits_in_batches(e.setup(batch), x[e.input_kind], batch) for e in engines}
    out = []
    for name, test in logits.items():
        c = compare_logits(logits[baseline], test, spec.threshold, labels)
        out.append({"backend": name, "set": "cnndetection", "size": size, "n": c["n"], "agreement": round(c["agreement"], 4),
                    "disagreements": c["disagreements"], "max_abs_logit_diff": round(c["max_abs_logit_diff"], 4),
                    "ap": round(c["ap_test"], 4) if "ap_test" in c else None})
    return out


def conv_macs(model, size: int) -> dict[str, int]:
    """Multiply-accumulates per image of every Conv2d at size x size (module name -> MACs)."""
    import torch

    macs, hooks = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Conv2d):
            def hook(m, _inp, out, name=name):
                macs[name] = int(out[0].numel()) * m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model.eval()(torch.zeros(1, 3, size, size))
    for h in hooks:
        h.remove()
    return macs


def int8_roofline(model_path, macs: dict[str, int], size: int, threads: int, batch: int = 8, runs: int = 10) -> dict:
    """Where the INT8 time goes, from ONNX Runtime's own profiler: per-conv ms and GMAC/s at
    `batch`, and the images/s ceiling if every convolution ran at the best rate measured and
    nothing else took any time. This is what bounds the INT8 speed on a given machine."""
    import collections
    import tempfile

    from lfm.runtime.backends.onnxrt import inference_session

    def profiled_session():
        return inference_session(model_path, providers="cpu", threads=threads,
                                 profile_prefix=str(Path(tempfile.gettempdir()) / "lfm_bench_profile"))

    x = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    sess = profiled_session()
    name = sess.get_inputs()[0].name
    for _ in range(3):
        sess.run(None, {name: x})
    Path(sess.end_profiling()).unlink(missing_ok=True)  # drop the warm-up events (and their file)
    sess = profiled_session()
    for _ in range(3):
        sess.run(None, {name: x})
    t = time.perf_counter()
    for _ in range(runs):
        sess.run(None, {name: x})
    wall_ms = (time.perf_counter() - t) / runs * 1000
    profile = Path(sess.end_profiling())
    events = json.loads(profile.read_text())
    profile.unlink()  # read: nothing left in the temp folder
    per_op = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            per_op[(e["args"].get("op_name", "?"), e["name"][: -len("_kernel_time")])] += e["dur"] / 1000 / (runs + 3)
    convs = []
    for (op, node), ms in per_op.items():
        if "Conv" not in op:
            continue
        last = node.split("/Conv")[0].rsplit("/", 1)[-1]  # '/snet/layer2/layer2.0/Conv_token_5' -> 'layer2.0'
        module = next((m for m in macs if m == last or m.endswith("." + last)), None)
        if module:
            convs.append({"module": module, "ms": round(ms, 3), "gmac": round(macs[module] * batch / 1e9, 3),
                          "gmac_per_s": round(macs[module] * batch / 1e6 / ms, 1)})
    convs.sort(key=lambda c: c["module"])
    best = max(c["gmac_per_s"] for c in convs)
    total_gmac = sum(macs.values()) * batch / 1e9
    return {"batch": batch, "size": size, "wall_ms": round(wall_ms, 2), "ops_ms": round(sum(per_op.values()), 2),
            "conv_ms": round(sum(c["ms"] for c in convs), 2), "gmac_per_image": round(sum(macs.values()) / 1e9, 3),
            "convs": convs, "best_gmac_per_s": best, "ceiling_images_per_s": round(batch / (total_gmac / best), 1),
            "top_ops": [{"op": op, "node": node, "ms": round(ms, 3)} for (op, node), ms in per_op.most_common(12)]}


# --------------------------------------------------------------------------------------------
# Reports


def rate_key(row, rates) -> str | None:
    """Which measured rate a row is set against: its precision's GEMM rate on its device.
    OpenVINO's automatic precision computes in f32 where the CPU has no bf16 (no bf16 rate then)."""
    if row["backend"].startswith(("torch-cuda", "trt")):  # against the GPU's matrix-product rate
        return {"fp32": "gpu_tf32_gflop_per_s", "int8": None}.get(row["precision"], "gpu_fp16_gflop_per_s")
    key = {"int8": "int8_gop_per_s", "fp32": "fp32_gflop_per_s"}.get(row["precision"], "bf16_gflop_per_s")
    if key == "bf16_gflop_per_s" and key not in rates:
        return "fp32_gflop_per_s"
    return key


def add_limits(rows, rates, libraries=None):
    """Each row's achieved GFLOP/s and its share of the rate it is set against (of_gemm_rate),
    then the plausibility check (flag_implausible)."""
    for r in rows:
        gflop = lfm_gflop_per_image(r["size"])
        r["gflop_per_image"] = round(gflop, 3)
        r["achieved_gflop_per_s"] = round(r["images_per_s"] * gflop, 1)
        key = rate_key(r, rates)
        rate = rates.get(key) if key else None
        r["of_gemm_rate"] = round(r["achieved_gflop_per_s"] / rate, 3) if rate else None
        r["gemm_rate_key"] = key if rate else None
    flag_implausible(rows, libraries or {})


def flag_implausible(rows, libraries: dict) -> list[str]:
    """A backend above 100 % of the GEMM rate it is set against beats the machine's own matrix
    product: either that rate was measured low (a throttled library, a busy machine) or the
    backend skips work the FLOP count assumes. Such rows get a `plausibility` note (also returned)."""
    notes = []
    for r in rows:
        share = r.get("of_gemm_rate")
        if share is None or share <= 1.0:
            continue
        key = r["gemm_rate_key"]
        library = libraries.get(key, "an unnamed library")
        r["plausibility"] = (f"{r['backend']} ({r['mode']}, {r['size']} px, batch {r['batch']}) runs at {100 * share:.0f} % "
                             f"of the {key} measured with {library}: above the machine's GEMM rate, so that rate "
                             "was measured low (a throttled library or a busy machine) or the backend does less work "
                             "than the FLOP count assumes; do not read it as a physical result")
        notes.append(r["plausibility"])
    return notes


RATE_NAMES = (("fp32_gflop_per_s", "fp32 GEMM", "GFLOP/s"), ("bf16_gflop_per_s", "bf16 GEMM", "GFLOP/s"),
              ("int8_gop_per_s", "INT8 GEMM", "GOP/s"), ("gpu_fp16_gflop_per_s", "GPU fp16 GEMM (8192^3)", "GFLOP/s"),
              ("gpu_tf32_gflop_per_s", "GPU fp32 GEMM with TF32 (8192^3)", "GFLOP/s"))


def rates_text(doc) -> str:
    """'fp32 GEMM 73 GFLOP/s (ONNX Runtime MatMul (MLAS); ...)': each rate with the library that
    measured it, and for fp32 every library tried (the fastest is the limit)."""
    rates, libraries = doc["rates"], doc.get("rate_libraries", {})
    parts = []
    for key, label, unit in RATE_NAMES:
        if rates.get(key):
            parts.append(f"{label} {rates[key]:,.0f} {unit} ({libraries.get(key, 'library not recorded')})")
    tried = doc.get("fp32_by_library")
    if tried:
        parts.append("fp32 tried: " + ", ".join(f"{lib} {v:.0f}" for lib, v in tried.items()) + " (the fastest is the limit)")
    return "; ".join(parts)


def markdown(doc) -> str:
    m = doc["machine"]
    gpus = "; ".join(f"{g['name']} (driver {g['driver']}, {g['memory']})" for g in m["gpus"]) or "none"
    lines = [f"# LFM benchmark ({'quick' if doc['quick'] else 'full'})", "", f"`{doc['command']}`", "",
             f"Machine: {cpu_text(m)}, {m['usable_cpus']} usable CPUs ({m['threads']} threads used), {m['memory_gb']} GB; "
             f"GPU: {gpus}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if "unavailable" not in str(v)), "",
             f"Machine rates measured in this run: {rates_text(doc)}"
             + ". LFM needs " + ", ".join(f"{lfm_gflop_per_image(s):.2f} GFLOP at {s}" for s in doc["settings"]["sizes"])
             + " per image. 'of GEMM' = achieved GFLOP/s over the GEMM rate of the backend's precision (OpenVINO's "
             "default: bf16 where the CPU has it, else fp32); a row above 100 % is flagged under Plausibility.", ""]
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
        for r in e2e:
            if "x_plain_loop" in r:
                lines += [f"The runtime's Detector ({r['backend']}, batch {r['batch']}) against the loop a user writes "
                          f"first (PIL open, resize, one session.run per file): {r['x_plain_loop']:.2f}x, same logits "
                          f"(max abs difference {r['max_abs_dlogit_vs_plain_loop']:.2e}).", ""]
    lines += agreement_markdown(doc.get("agreement"), base) + roofline_markdown(doc.get("int8_roofline"))
    flagged = [r["plausibility"] for r in doc["results"] if r.get("plausibility")]
    if flagged:
        lines += ["## Plausibility", "", "Above 100 % of the rate they are set against (not physical results):", ""]
        lines += [f"- {n}" for n in flagged] + [""]
    if doc["unavailable"]:
        lines += ["Unavailable here:", ""] + [f"- {k}: {v}" for k, v in doc["unavailable"].items()] + [""]
    if doc.get("plots"):
        lines += [f"![{Path(p).stem}]({Path(p).name})" for p in doc["plots"]] + [""]
    return "\n".join(lines)


def agreement_markdown(agreement, base: str) -> list[str]:
    if not agreement:
        return []
    a0 = agreement[0]
    lines = [f"## Agreement on the reference images ({a0['n']} cnndetection JPEGs, {a0['size']} px, batch 8)", "",
             f"Decisions (score > threshold) against `{base}`'s.", "",
             "| backend | agreement | max abs dlogit | AP |", "|---|---:|---:|---:|"]
    for a in agreement:
        lines.append(f"| {a['backend']} | {100 * a['agreement']:.1f} % ({a['n'] - a['disagreements']}/{a['n']}) | "
                     f"{a['max_abs_logit_diff']:.3f} | {a['ap'] if a['ap'] is not None else '-'} |")
    return lines + [""]


def roofline_markdown(rf) -> list[str]:
    if not rf:
        return []
    lines = [f"## Where the ONNX Runtime INT8 time goes (batch {rf['batch']}, {rf['size']} px)", "",
             f"ONNX Runtime's profiler: {rf['wall_ms']:.1f} ms per call, {rf['ops_ms']:.1f} ms in kernels, "
             f"{rf['conv_ms']:.1f} ms of it in convolutions; {rf['gmac_per_image']:.2f} GMAC per image.", "",
             "| convolution | GMAC per batch | ms | GMAC/s |", "|---|---:|---:|---:|"]
    lines += [f"| {c['module']} | {c['gmac']:.3f} | {c['ms']:.2f} | {c['gmac_per_s']:.0f} |" for c in rf["convs"]]
    return lines + ["", f"Ceiling: if every convolution ran at the best rate measured here ({rf['best_gmac_per_s']:.0f} "
                        f"GMAC/s) and nothing else took time, batch {rf['batch']} would run at "
                        f"{rf['ceiling_images_per_s']:.0f} images/s.", ""]


PLOTS = ("bench_throughput.png", "bench_latency.png")


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
        p = out_dir / PLOTS[0]
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
        p = out_dir / PLOTS[1]
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
    from lfm.runtime.options import ModelArgs

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
    p.add_argument("--mode", choices=("engine", "e2e", "both", "fidelity", *SCRIPT_MODES), default="both",
                   help="engine, e2e or both (default: both); fidelity: every CPU backend x precision x input on "
                        "cross-domain images, flips beside images/s (benchmarks/fidelity_table.py; ~15 min); "
                        "serve, batch: run benchmarks/bench_serve.py / bench_batch.py with the other options "
                        "(see their --help)")
    p.add_argument("--agreement", action="store_true",
                   help="engine mode also scores the cnndetection reference JPEGs with every backend and reports "
                        "its decision agreement with the baseline (default: off)")
    p.add_argument("--profile", action="store_true",
                   help="also profile the INT8 graph with ONNX Runtime's profiler: per-convolution time, GMAC/s and "
                        "the images/s ceiling (default: off)")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per configuration, each 3 calls (default: 8; --quick: 3)")
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
    ModelArgs(only=("threads",), defaults={"threads": usable_cpus()},
              help={"threads": "CPU threads (default: the usable CPUs, here %(default)s)"}).add_to(p)
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
        from lfm.runtime.backends import BackendError
        from lfm.runtime.backends.onnxrt import OnnxRunner

        try:
            with OnnxRunner(path, providers=["cpu"], threads=1) as runner:
                return runner.spec, runner.metadata.get("lfm.precision", "fp32")
        except BackendError as e:
            raise UsageError(str(e)) from None
    from lfm.runtime.spec import ModelSpec
    from lfm.runtime.backends.trt_plan import EngineError, read_sidecar

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


SCRIPT_MODES = {"serve": "bench_serve.py", "batch": "bench_batch.py"}  # modes run by their own scripts


def script_mode(argv: list[str]) -> tuple[str, list[str]] | None:
    """(script, its arguments) where argv asks for --mode serve or batch: every option but the mode
    goes to that script; None for the modes run here."""
    for i, a in enumerate(argv):
        value, width = (argv[i + 1], 2) if a == "--mode" and i + 1 < len(argv) else (a[len("--mode="):], 1)
        if (a == "--mode" or a.startswith("--mode=")) and value in SCRIPT_MODES:
            return SCRIPT_MODES[value], argv[:i] + argv[i + width:]
    return None


def main(argv=None) -> int:
    p = build_parser()
    raw = list(sys.argv[1:] if argv is None else argv)
    forwarded = script_mode(raw)
    if forwarded:
        script, rest = forwarded
        return subprocess.run([sys.executable, str(Path(__file__).resolve().parent / script), *rest]).returncode
    args = p.parse_args(argv)
    try:
        problem = overwrite_problem(args)
        if problem:
            raise UsageError(problem)
        if args.replot:
            return replot(Path(args.replot), Path(args.output_dir))
        if args.mode == "fidelity":
            return fidelity(args)
        return bench(args, p, argv)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def overwrite_problem(args) -> str | None:
    """The shared guard: what this run writes into --output-dir (its report and plots; --replot
    reads BENCH_JSON and rewrites only the Markdown and plots) and whatever is in --work-dir
    (exported models, images: all replaceable) must not be one of its inputs."""
    from lfm.runtime.files import files_under, overwrite_refusal

    stem, figures = ("fidelity", ()) if args.mode == "fidelity" and not args.replot else ("bench", PLOTS)
    names = [f"{stem}.md", *figures] + ([] if args.replot else [f"{stem}.json"])
    inputs = [("the --checkpoint", args.checkpoint), ("the --model", args.model), ("the --replot results", args.replot),
              ("the --model's sidecar", args.model and args.model + ".json")]
    return (report_refusal(args.output_dir, names, inputs)
            or overwrite_refusal(files_under(args.work_dir) if args.work_dir else [], inputs, "--work-dir"))


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


def profile_int8(models, size: int, threads: int, unavailable: dict) -> dict | None:
    """--profile: the INT8 graph's roofline (int8_roofline); a failure is listed, not fatal."""
    try:
        from lfm.train.model import build_model

        model = models.torch_model()[0] if models.checkpoint else build_model()  # MACs: geometry only
        roofline = int8_roofline(models.onnx("int8"), conv_macs(model, size), size, threads)
    except Exception as e:  # noqa: BLE001  (a profiler format change must not lose the timed results)
        unavailable["int8-profile"] = f"{type(e).__name__}: {first_line(e, empty='')}"
        return None
    log(f"INT8 roofline: best conv {roofline['best_gmac_per_s']:.0f} GMAC/s, "
        f"ceiling {roofline['ceiling_images_per_s']:.0f} img/s at b{roofline['batch']}")
    return roofline


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
    limits = machine_rates(args.threads, gpu=any(n.startswith(("torch-cuda", "trt")) for n in names))
    rates = limits["rates"]
    results, latencies, unavailable = [], {}, {}
    agreement = [] if args.agreement else None
    if args.mode in ("engine", "both"):
        rows, latencies, unavailable = run_engine_mode(names, models, sizes, batches, args.threads, rounds,
                                                       2 if args.quick else 5, files, agreement)
        results += rows
    if args.mode in ("e2e", "both"):
        e2e_batches = [16] if args.quick else sorted({8, 32} | ({256} if gpu else set()))
        rows, un = run_e2e_mode(names, models, sizes[0], e2e_batches, args.threads, 2 if args.quick else 4,
                                files[:32] if args.quick else files, 1 if args.quick else 2)
        results += rows
        unavailable.update({k: v for k, v in un.items() if k not in unavailable})
    add_limits(results, rates, limits["libraries"])
    roofline = profile_int8(models, sizes[0], args.threads, unavailable) if args.profile else None
    doc = {"benchmark": "bench", "command": None, "quick": args.quick, "machine": machine(args.threads),
           "settings": {"backends": names, "baseline": baseline_of(names), "sizes": sizes, "batches": batches, "rounds": rounds, "mode": args.mode,
                        "checkpoint": "upstream (reference)" if checkpoint == str(UPSTREAM_CHECKPOINT) else checkpoint,
                        "model": given.path if given else None, "model_kind": given.kind if given else None,
                        "files_from": files_from, "timing": "interleaved rounds of 1 + 3 calls, the first not counted; "
                                                            "CUDA events on GPUs"},
           "rates": rates, "rate_libraries": limits["libraries"], "fp32_by_library": limits["fp32_by_library"],
           "results": results, "agreement": agreement, "int8_roofline": roofline, "unavailable": unavailable, "seconds": None}
    return doc, latencies


if __name__ == "__main__":
    run_main(main)
