"""What every benchmark here shares: the machine record, timing and summaries, peak memory,
and the machine's own arithmetic rates (the physical limits figures are set against).

Imported by bench.py and friends as a sibling module (`benchmarks/` is put on
sys.path by running a script from it).
"""
from __future__ import annotations

import contextlib
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from lfm.runtime.cpu_features import cpu_flags, cpu_isa, has_bf16  # the one reader of the CPU's ISA

T0 = time.perf_counter()
# Ad-hoc runs write here (relative to the current folder); the committed figures in
# benchmarks/results/ (the README's tables) change only when a run is pointed at them.
DEFAULT_OUTPUT_DIR = "bench-results"
OUTPUT_DIR_HELP = ("where the reports go (default: ./bench-results/ in the current folder; the committed "
                   "results in benchmarks/results/ are replaced only with --output-dir benchmarks/results)")


def log(msg: str) -> None:
    """Progress on stderr, stamped with the seconds since start (stdout stays for results)."""
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


# --------------------------------------------------------------------------------------------
# Machine


def gpu_info() -> list[dict]:
    """NVIDIA GPUs as nvidia-smi sees them (name, driver, memory); [] without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,compute_cap",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return []
    gpus = []
    for line in out.stdout.strip().splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) >= 3:
            gpus.append({"name": parts[0], "driver": parts[1], "memory": parts[2],
                         **({"compute_capability": parts[3]} if len(parts) > 3 else {})})
    return gpus


def machine(threads: int, modules=("numpy", "torch", "onnx", "onnxruntime", "openvino", "tensorrt", "triton")) -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    versions = {"python": platform.python_version()}
    for mod in modules:
        try:
            versions[mod] = __import__(mod).__version__
        except Exception as e:  # noqa: BLE001  (recorded, not fatal)
            versions[mod] = f"unavailable ({type(e).__name__})"
    try:
        mem_gb = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        mem_gb = None
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "usable_cpus": usable_cpus(), "threads": threads,
            "memory_gb": mem_gb, "isa": cpu_isa(), "gpus": gpu_info(), "platform": platform.platform(),
            "versions": versions,
            "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OMP_NUM_THREADS") if k in os.environ}}


def cpu_text(m: dict) -> str:
    """The CPU and its vector ISA as every report names it ("AMD EPYC (ISA avx2)"): CPU figures
    compare only within one run on one ISA (issue 28), so each table says which."""
    return f"{m.get('cpu') or '?'} (ISA {isa_text(m)})"


def isa_text(m: dict) -> str:
    """The machine record's ISA list as one label ("avx2", "avx2+avx512f+avx512_vnni")."""
    return "+".join(m.get("isa") or []) or "no AVX2"


# --------------------------------------------------------------------------------------------
# Timing


def summarize(times, batch: int) -> dict:
    """Seconds per call -> images/s (batch / median) and latency percentiles in ms."""
    t = np.asarray(times, dtype=np.float64)
    p50, p90, p99 = np.percentile(t, [50, 90, 99]) * 1000
    return {"images_per_s": round(batch / float(np.median(t)), 1), "p50_ms": round(float(p50), 3),
            "p90_ms": round(float(p90), 3), "p99_ms": round(float(p99), 3), "runs": int(t.size)}


def time_interleaved(fns: dict, rounds: int, block: int = 3, gap_s: float = 0.03, on_round=None) -> dict:
    """Time several callables side by side: each round runs every one for 1 + `block` calls in
    a rotated order; the first call of a block (which wakes the callee's thread pool after the
    previous one's) is not counted. Drifts of a shared machine thus spread over all of them.
    fns: name -> (callable with no arguments); one that returns (result, seconds) is timed by
    those seconds (CUDA events) instead of the wall clock. Returns name -> seconds per call."""
    names = list(fns)
    times = {n: [] for n in names}
    for r in range(rounds):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            time.sleep(gap_s)  # let the previous callee's spinning worker threads go idle
            for i in range(block + 1):
                t = time.perf_counter()
                out = fns[n]()
                wall = time.perf_counter() - t
                if i:  # a callee timing itself on a device returns (result, device seconds)
                    device = out[1] if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], float) else None
                    times[n].append(wall if device is None else device)
        if on_round:
            on_round(r + 1)
    return times


# --------------------------------------------------------------------------------------------
# Memory


def rss_bytes() -> int:
    """This process's resident set size now (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


class PeakRSS:
    """Peak resident memory while a block runs, sampled every `interval` s in a thread (plus
    the start and end values). `peak` and `delta` (peak minus the value at entry) in bytes."""

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak, self.start = interval, 0, 0
        self._stop = threading.Event()

    def _sample(self):
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, rss_bytes())

    def __enter__(self):
        self.start = self.peak = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def delta(self) -> int:
        return self.peak - self.start


def max_rss_bytes() -> int:
    """Lifetime peak RSS of this process (getrusage; kilobytes on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# --------------------------------------------------------------------------------------------
# The machine's arithmetic rates


# The libraries a limit is measured with, as the report names them. numpy's BLAS alone is not
# trusted: this workplace sets OPENBLAS_CORETYPE on some CPUs, which slows it on purpose, and a
# slowed rate makes backends look faster than the machine (above 100 %).
NUMPY_BLAS = "numpy BLAS (OpenBLAS)"
TORCH_MATMUL = "PyTorch matmul (oneDNN/MKL)"
ORT_MATMUL = "ONNX Runtime MatMul (MLAS)"
ORT_MATMUL_INTEGER = "ONNX Runtime MatMulInteger (MLAS)"
CUBLAS = "PyTorch matmul (cuBLAS)"


def fp32_gemm_rates(threads: int, n: int = 2048, reps: int = 5) -> dict[str, float]:
    """GFLOP/s of a square float32 matrix product (best of `reps`) per library that is here:
    PyTorch (oneDNN/MKL), ONNX Runtime's MatMul (constant, prepacked B, as a model's weights) and
    numpy's BLAS. The machine's fp32 limit is the fastest of them (see machine_rates)."""
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    rates = {NUMPY_BLAS: _best_rate(lambda: a @ b, n, reps)}
    try:
        import torch

        torch.set_num_threads(threads)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        rates[TORCH_MATMUL] = _best_rate(lambda: torch.matmul(ta, tb), n, reps)
    except ImportError:
        pass
    sess = _ort_matmul_session("MatMul", b, threads)
    if sess is not None:
        rates[ORT_MATMUL] = _best_rate(lambda: sess.run(None, {"a": a}), n, reps)
    return rates


def fp32_gemm_rate(threads: int, n: int = 2048, reps: int = 5) -> float:
    """The machine's fp32 GEMM rate: the fastest library's (fp32_gemm_rates)."""
    return max(fp32_gemm_rates(threads, n, reps).values())


def _best_rate(fn, n: int, reps: int) -> float:
    """GFLOP/s of fn, a square n matrix product: one warm-up call, then the best of `reps`."""
    fn()
    return 2 * n ** 3 / min(_timed(fn) for _ in range(reps)) / 1e9


def _ort_matmul_session(op: str, weight: np.ndarray, threads: int):
    """An ONNX Runtime session of one `op` node (MatMul or MatMulInteger), input "a" times the
    constant `weight`; None without onnx/onnxruntime."""
    try:
        import onnxruntime  # noqa: F401
        from onnx import TensorProto, helper, numpy_helper

        from lfm.runtime.backends.onnxrt import inference_session
    except ImportError:
        return None
    n = weight.shape[0]
    in_type, out_type = ((TensorProto.FLOAT, TensorProto.FLOAT) if op == "MatMul"
                         else (TensorProto.UINT8, TensorProto.INT32))
    g = helper.make_graph([helper.make_node(op, ["a", "w"], ["y"])], op.lower(),
                          [helper.make_tensor_value_info("a", in_type, [n, n])],
                          [helper.make_tensor_value_info("y", out_type, [n, n])], [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return inference_session(model, providers="cpu", threads=threads)


def bf16_gemm_rate(threads: int, n: int = 2048, reps: int = 5) -> float | None:
    """GFLOP/s of a square bfloat16 matrix product with PyTorch (oneDNN; fast where the CPU has
    AVX512-BF16 or AMX, OpenVINO's default precision there); None without torch, or on a CPU
    known to lack bf16 instructions: there the product is emulated (minutes for a meaningless
    figure) and OpenVINO computes in f32 anyway."""
    flags = cpu_flags()
    if flags and not has_bf16(flags):
        return None
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    a = torch.randn(n, n, dtype=torch.bfloat16)
    b = torch.randn(n, n, dtype=torch.bfloat16)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(reps))
    return 2 * n ** 3 / best / 1e9


def int8_gemm_rate(threads: int, n: int = 2048, reps: int = 5) -> float | None:
    """GOP/s (2 ops per multiply-accumulate) of ONNX Runtime's MatMulInteger, uint8 activations
    x constant int8 weights (prepacked, as a model's convolution weights are), square n; None
    without onnx/onnxruntime."""
    rng = np.random.default_rng(0)
    sess = _ort_matmul_session("MatMulInteger", rng.integers(-127, 128, (n, n), dtype=np.int8), threads)
    if sess is None:
        return None
    feed = {"a": rng.integers(0, 256, (n, n), dtype=np.uint8)}
    return _best_rate(lambda: sess.run(None, feed), n, reps)


def time_cuda(fn, *, rounds: int, inner: int, warmup: int) -> list[float]:
    """Milliseconds per call of `fn` on the GPU: `warmup` calls, then `rounds` rounds of `inner`
    back-to-back calls, each round timed with CUDA events (the queue never drains between calls,
    so launch gaps hide as they do in a real pipeline). Returns one value per round, sorted."""
    import torch

    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(rounds)]
    for start, end in events:
        start.record()
        for _ in range(inner):
            fn()
        end.record()
    torch.cuda.synchronize()
    return sorted(start.elapsed_time(end) / inner for start, end in events)


def gpu_gemm_rates(n: int = 8192, reps: int = 10) -> dict:
    """GFLOP/s of a square matrix product on the GPU through PyTorch (cuBLAS), median of `reps`
    timed with CUDA events after warm-up, on random data: fp16, and fp32 with TF32 (what cuDNN
    uses for fp32 convolutions by PyTorch's default). {} without torch or a CUDA GPU."""
    try:
        import torch
    except ImportError:
        return {}
    if not torch.cuda.is_available():
        return {}
    rates = {}
    for key, dtype in (("gpu_fp16_gflop_per_s", torch.float16), ("gpu_tf32_gflop_per_s", torch.float32)):
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            a = torch.randn(n, n, device="cuda", dtype=dtype)
            b = torch.randn(n, n, device="cuda", dtype=dtype)
            for _ in range(3):
                a @ b
            times = []
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                a @ b
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end) / 1e3)
            rates[key] = 2 * n ** 3 / sorted(times)[reps // 2] / 1e9
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
            a = b = None
            torch.cuda.empty_cache()
    return rates


def machine_rates(threads: int, gpu: bool = False) -> dict:
    """The limits a run's figures are set against: {"rates": key -> GFLOP/s (GOP/s for INT8),
    "libraries": key -> the library that measured it, "fp32_by_library": every fp32 candidate}.
    fp32 is the fastest library's (a throttled one cannot pass for the machine); bf16 is PyTorch's
    (oneDNN), INT8 ONNX Runtime's MatMulInteger, GPU rates cuBLAS's (gpu=True)."""
    fp32 = fp32_gemm_rates(threads)
    fastest = max(fp32, key=fp32.get)
    rates, libraries = {"fp32_gflop_per_s": round(fp32[fastest], 1)}, {"fp32_gflop_per_s": fastest}
    for key, fn, library in (("int8_gop_per_s", int8_gemm_rate, ORT_MATMUL_INTEGER),
                             ("bf16_gflop_per_s", bf16_gemm_rate, TORCH_MATMUL)):
        v = fn(threads)
        if v:
            rates[key], libraries[key] = round(v, 1), library
    if gpu:
        for key, v in gpu_gemm_rates().items():
            rates[key], libraries[key] = round(v, 1), CUBLAS
    return {"rates": rates, "libraries": libraries, "fp32_by_library": {k: round(v, 1) for k, v in fp32.items()}}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def lfm_gflop_per_image(size: int, top_k: int = 16) -> float:
    """Convolution FLOPs (2 per multiply-accumulate) of one size x size image through LFM,
    from the layer geometry (upstream's widths 64-128-256-512, salience 512->64): 2.39 at 224,
    3.15 at 256. NPR, pooling, top-k and the 1024->1 linear are negligible beside them."""
    n = size - size % 2
    macs, c_in = 0, 3
    for i, c_out in enumerate((64, 128, 256, 512)):
        n -= 1  # conv k=2, no padding
        macs += n * n * c_out * c_in * 4
        c_in = c_out
        if i < 3:
            n //= 2
    macs += n * n * 64 * 512  # salience 1x1
    return 2 * macs / 1e9


# --------------------------------------------------------------------------------------------
# Reports and the scripts' entry point


def write_report(out_dir, stem: str, doc: dict, markdown_text: str) -> None:
    """OUT_DIR/STEM.json and OUT_DIR/STEM.md, the Markdown also printed (stdout is for results)."""
    import json
    from pathlib import Path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{stem}.json").write_text(json.dumps(doc, indent=1) + "\n")
    (out_dir / f"{stem}.md").write_text(markdown_text)
    print(markdown_text)


def report_refusal(out_dir, names, inputs) -> str | None:
    """The shared output guard (lfm.runtime.files.overwrite_refusal) for a benchmark: the files
    it writes into OUT_DIR (``names``: STEM.json, STEM.md, plots) must not be one of its inputs."""
    import os

    from lfm.runtime.files import overwrite_refusal

    return overwrite_refusal([os.path.join(out_dir, n) for n in names], inputs, "--output-dir")


@contextlib.contextmanager
def work_folder(path, prefix: str):
    """PATH as given (created, kept), or a new temp folder PREFIX* that is removed at the end,
    also on an error or Ctrl-C: exported models and generated images are not left behind."""
    if path:
        Path(path).mkdir(parents=True, exist_ok=True)
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix=prefix, ignore_cleanup_errors=True) as tmp:
        yield Path(tmp)


def run_main(main) -> None:
    """sys.exit(main()), with Ctrl-C as 130, a termination (SIGTERM, e.g. from `timeout`) as 143
    and an unexpected error as its traceback and 1. SIGTERM becomes an exit in the main thread,
    so that temp folders (work_folder) are removed as on Ctrl-C."""
    import signal
    import traceback

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception:
        traceback.print_exc()
        sys.exit(1)
