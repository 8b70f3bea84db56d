"""TensorRT engines as a runner: ``runtime/infer.py --engine lfm.plan``.

    runner = TrtRunner("lfm.plan")                 # + its sidecar lfm.plan.json (export/to_trt.py writes both)
    with runner:
        out = runner.infer({"pixels": uint8 [B, H, W, 3]})     # or {"image": float32 [B, 3, H, W]}
        h1 = runner.submit(feed1); h2 = runner.submit(feed2)   # two batches in flight
        runner.result(h1)["logit"], runner.result(h2)["logit"]

Three layers, so that most of it is plain Python tested without a GPU:

1. Plain functions (numpy and the standard library only): the engine's JSON sidecar (read,
   validate, ``check_compatible`` with the rebuild command in its error), the optimisation
   profile (``check_shape`` with the range in its error, ``batch_parts`` splitting or padding a
   batch to fit it), ``cuda_check`` for cuda-python's ``(err, value)`` tuples and ``SlotRing``,
   the bookkeeping of the in-flight slots.
2. CUDA plumbing with cuda-python, as TensorRT's samples do it (``samples/python/common_runtime.py``):
   ``PinnedBuffer`` (page-locked host memory seen as a numpy array), ``DeviceBuffer``, one
   non-blocking stream, asynchronous copies, an event per slot, optional CUDA graphs.
3. ``TrtRunner``: the TensorRT 10 / 11 calls (``Runtime.deserialize_cuda_engine``, tensor names,
   ``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``) over layers 1 and 2.

The supported versions are declared once, in ``TENSORRT_SUPPORT`` below (the README's TensorRT
support table says the same in words).

Pipelining: the runner owns ``in_flight`` slots (default 2), each with its own pinned input,
device input/outputs, pinned output and completion event. ``submit`` stages a batch into a free
slot's pinned buffer and enqueues copy-in, inference and copy-out on the stream without waiting;
``result`` waits for that slot's event only. While the GPU runs batch k the caller decodes and
stages batch k+1. All slots share one execution context and one stream (TensorRT runs work on a
stream in order, and a context with dynamic shapes may not be used concurrently from several
streams unless the engine has one optimisation profile per context), so the GPU itself runs the
batches one after another; what overlaps is the host's decoding, staging and Python work with
the GPU's copies and kernels. ``cuda_graphs=True`` captures copy-in + inference + copy-out once
per (slot, input shape) and replays it with one launch. A graph fixes the input shape, the tensor
addresses and the execution context it was captured from, so each graph gets its own context;
those contexts share one user-managed scratch block (they never run at the same time: one
stream). As TensorRT asks, each (slot, shape) is enqueued once on its context before capture.

Nothing here imports torch, ``lfm.train`` or ``lfm.export``; tensorrt and cuda-python are
imported in ``activate`` only (``pip install -e '.[tensorrt]'``).
"""
from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shlex
import warnings
from collections import OrderedDict

import numpy as np

from .runners import BackendError, Runner
from .spec import ModelSpec

SIDECAR_FORMAT = "lfm-trt-engine/1"
SIDECAR_SUFFIX = ".json"  # lfm.plan -> lfm.plan.json
REQUIRED_KEYS = ("format", "spec", "input", "profiles", "precision", "tensorrt", "device", "plan_sha256", "command")
INSTALL_HINT = ("on a machine with an NVIDIA GPU and driver: pip install -e '.[tensorrt]' (TensorRT and cuda-python "
                "for a CUDA 13 driver; '.[tensorrt-cu12]' for a CUDA 12 driver); or run the ONNX model with --model "
                "lfm.onnx instead")
NO_GPU_ERRORS = {"cudaErrorNoDevice", "cudaErrorInitializationError", "cudaErrorDevicesUnavailable",
                 "CUDA_ERROR_NO_DEVICE", "CUDA_ERROR_NOT_INITIALIZED"}
DRIVER_TOO_OLD_ERRORS = {"cudaErrorInsufficientDriver", "CUDA_ERROR_INSUFFICIENT_DRIVER"}

# The supported-version matrix, declared here only: "MAJOR.MINOR" floors (>=) and ceilings (<).
# What each one guards:
TENSORRT_SUPPORT = {
    # every TensorRT name the engine code uses exists from 10.8 on (tests/test_trt_conformance.py
    # reads the real bindings); 12 is not out yet: a newer major gets a warning, not a refusal
    "tensorrt": ("10.8", "12"),
    # the plugin graph: tensorrt.plugin.aot_impl, KernelLaunchParams, SymInt32 and
    # NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS appear in 10.9
    "plugin_graph": "10.9",
    # pip's tensorrt-cu12 / -cu13 wheels ship the tensorrt.plugin package from 10.14 on (the wheels
    # in NGC containers and TensorRT tarballs have it): the [tensorrt-cu12] / [tensorrt-cu13] floor
    "pip_plugin_module": "10.14",
    # TensorRT < 11.2's plugin creator reads an int attribute (LfmTopKPool's k) as int(1-element
    # array), which NumPy 2.4 refuses (TypeError): there the plugin graph needs numpy < 2.4
    "plugin_graph_numpy_below": "2.4",
    "plugin_graph_numpy_fixed_in": "11.2",
    # cuda-python's major follows the CUDA major of TensorRT's wheel and of the driver
    "cuda_python": {"cu12": ("12.6", "13"), "cu13": ("13.0", "14")},
    # SimpleCompareFunc, and compare_accuracy returning a list of results, arrive in Polygraphy 0.53
    "polygraphy": "0.53",
}


class EngineError(BackendError):
    """A plan that cannot be used here: missing, corrupt, or built for another TensorRT or GPU."""


class ShapeError(ValueError):
    """An input shape outside the engine's optimisation profile."""


class CudaError(BackendError):
    """A CUDA runtime call that failed; the message names the call and the error."""


# ==============================================================================================
# 1. Plain functions
# ==============================================================================================

def version_tuple(version: str) -> tuple[int, ...]:
    """'10.14.1.48.post1' -> (10, 14, 1, 48); '2.4.0rc1' -> (2, 4, 0): the leading digits of each
    dotted part, stopping at the first part that is not all digits."""
    out = []
    for part in str(version).split("."):
        digits = len(part) - len(part.lstrip("0123456789"))
        if not digits:
            break
        out.append(int(part[:digits]))
        if digits < len(part):  # '0rc1': a pre-release tag ends the number
            break
    return tuple(out)


def at_least(version: str, floor: str) -> bool:
    return version_tuple(version) >= version_tuple(floor)


def tensorrt_problem(trt_version: str) -> str | None:
    """One line when this TensorRT is older than LFM's engine code supports, else None."""
    floor, _ = TENSORRT_SUPPORT["tensorrt"]
    if at_least(trt_version, floor):
        return None
    return (f"TensorRT {trt_version} is older than {floor}, the oldest release LFM's engine code supports; "
            "install a newer one: pip install -e '.[tensorrt]' (CUDA 13 driver) or '.[tensorrt-cu12]' (CUDA 12 driver)")


def tensorrt_untested(trt_version: str) -> str | None:
    """A warning (one line) for a TensorRT major newer than any this code was checked against."""
    floor, ceiling = TENSORRT_SUPPORT["tensorrt"]
    if not at_least(trt_version, ceiling):
        return None
    return (f"TensorRT {trt_version} is newer than the releases LFM's engine code is checked against "
            f"({floor} up to, not including, {ceiling}); if a TensorRT call fails, that is why")


def driver_too_old_message(call: str, error: str, cuda_python: str) -> str:
    """cudaErrorInsufficientDriver: the driver is older than the CUDA this cuda-python targets. Its
    major follows TensorRT's wheel (the cu12 / cu13 extras): the fix is the cu12 extra or a newer driver."""
    if version_tuple(cuda_python)[:1] >= (13,):
        fix = ("with a CUDA 12 driver install the cu12 extra, which pins TensorRT and cuda-python for CUDA 12: "
               "pip install -e '.[tensorrt-cu12]' (nvidia-smi shows the driver's CUDA version), or update the driver")
    else:
        fix = "update the NVIDIA driver (nvidia-smi shows the CUDA version it supports)"
    return (f"the CUDA driver is older than cuda-python {cuda_python} needs ({call}: {error}): {fix}; or run the "
            "ONNX model with --model lfm.onnx instead")


def cuda_python_version() -> str:
    """The installed cuda-python's version (the runtime API lives in 'cuda-bindings' from 12.8 on)."""
    from importlib import metadata

    for dist in ("cuda-bindings", "cuda-python"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "(version unknown)"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sidecar_path(plan: str | os.PathLike) -> str:
    return os.fspath(plan) + SIDECAR_SUFFIX


def trt_release(version: str) -> str:
    """'10.8.0.43' -> '10.8.0': engines are tied to the TensorRT release that built them."""
    return ".".join(str(version).split(".")[:3])


def capability_str(major: int, minor: int) -> str:
    return f"{int(major)}.{int(minor)}"


def profile_axes(layout: str) -> tuple[int, int, int]:
    """Axes of (batch, height, width) in a 4-D input of this layout."""
    if layout == "NHWC":
        return 0, 1, 2
    if layout == "NCHW":
        return 0, 2, 3
    raise ValueError(f"unknown input layout {layout!r}; expected NHWC or NCHW")


def profile_ranges(profile: dict) -> dict[str, tuple[int, int]]:
    """{"batch": (lo, hi), "height": (lo, hi), "width": (lo, hi)} of a profile dict."""
    axes = profile_axes(profile["layout"])
    return {k: (int(profile["min"][a]), int(profile["max"][a])) for k, a in zip(("batch", "height", "width"), axes)}


def describe_profile(profile: dict) -> str:
    r = profile_ranges(profile)
    return ", ".join(f"{k} {lo}..{hi}" if lo != hi else f"{k} {lo}" for k, (lo, hi) in r.items())


def check_shape(shape, profile: dict, plan: str = "the engine", batch_ok: bool = True) -> None:
    """Raise ShapeError, one line naming the profile's range, if an input shape cannot run.

    ``batch_ok``: the runner splits batches above the profile's maximum and pads those below its
    minimum (``batch_parts``), so only height, width and the fixed axes are checked by default."""
    shape = tuple(int(s) for s in shape)
    lo, hi = tuple(profile["min"]), tuple(profile["max"])
    if len(shape) != len(lo):
        raise ShapeError(f"input of shape {list(shape)} has {len(shape)} axes; {plan} takes {len(lo)} "
                         f"({profile['layout']})")
    b, h, w = profile_axes(profile["layout"])
    fixed = [i for i in range(len(shape)) if i not in (b, h, w)]
    bad_fixed = [i for i in fixed if not lo[i] <= shape[i] <= hi[i]]
    if bad_fixed:
        raise ShapeError(f"input of shape {list(shape)} does not fit {plan}: axis {bad_fixed[0]} must be "
                         f"{lo[bad_fixed[0]]} ({profile['layout']} layout)")
    outside = [(name, shape[a], lo[a], hi[a]) for name, a in (("height", h), ("width", w))
               if not lo[a] <= shape[a] <= hi[a]]
    if not batch_ok and not lo[b] <= shape[b] <= hi[b]:
        outside.insert(0, ("batch", shape[b], lo[b], hi[b]))
    if outside:
        what = ", ".join(f"{n} {v} not in {a}..{z}" for n, v, a, z in outside)
        raise ShapeError(f"input {shape[h]}x{shape[w]} (batch {shape[b]}) is outside {plan}'s optimisation "
                         f"profile ({describe_profile(profile)}): {what}; use --size/--policy to fit it, or "
                         f"rebuild the engine with a wider export/to_trt.py --size/--batch")


def batch_parts(n: int, min_batch: int, max_batch: int) -> list[tuple[int, int, int]]:
    """Split a batch of n into runs the profile accepts: [(start, stop, run_batch)], run_batch >=
    stop - start (the rest is padding, for batches below the profile's minimum)."""
    if n < 1:
        raise ValueError(f"empty batch ({n})")
    if not 1 <= min_batch <= max_batch:
        raise ValueError(f"bad batch range {min_batch}..{max_batch}")
    parts = []
    for start in range(0, n, max_batch):
        stop = min(n, start + max_batch)
        parts.append((start, stop, max(stop - start, min_batch)))
    return parts


def read_sidecar(plan: str | os.PathLike) -> dict:
    """The engine's sidecar (PLAN.json) as a dict; EngineError, one line, when missing or unusable."""
    plan, path = os.fspath(plan), sidecar_path(plan)
    if not os.path.exists(path):
        raise EngineError(f"{plan}: its sidecar {os.path.basename(path)} is missing (it holds the engine's "
                          "preprocessing spec and build record); rebuild the engine with export/to_trt.py, which "
                          "writes both")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise EngineError(f"{path}: not a readable engine sidecar ({type(e).__name__}: {e})") from None
    validate_sidecar(data, path)
    return data


def validate_sidecar(data, path: str = "sidecar") -> None:
    if not isinstance(data, dict):
        raise EngineError(f"{path}: not an engine sidecar (expected a JSON object)")
    if data.get("format") != SIDECAR_FORMAT:
        raise EngineError(f"{path}: unknown sidecar format {data.get('format')!r} (expected {SIDECAR_FORMAT!r}); "
                          "rebuild the engine with this version's export/to_trt.py")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise EngineError(f"{path}: sidecar lacks {', '.join(missing)}; rebuild the engine with export/to_trt.py")
    if not data["profiles"]:
        raise EngineError(f"{path}: sidecar lists no optimisation profile")


def write_json_atomic(path: str, data: dict) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def rebuild_command(sidecar: dict) -> str:
    command = sidecar.get("command")
    return shlex.join(command) if isinstance(command, list) else str(command)


def check_compatible(sidecar: dict, trt_version: str, device_name: str, compute_capability: str,
                     plan: str = "the engine") -> str | None:
    """Can this machine run the engine? Raise EngineError naming both sides and the exact rebuild
    command when the TensorRT release or the GPU's compute capability differ (an engine is built for
    one TensorRT release and one GPU architecture). Return a warning (or None) when only the GPU
    model differs within one compute capability: TensorRT loads such engines, tuned for the other
    model."""
    built_trt, built_dev = str(sidecar["tensorrt"]), sidecar["device"]
    built_cc, built_name = str(built_dev.get("compute_capability")), str(built_dev.get("name"))
    problems = []
    if trt_release(built_trt) != trt_release(trt_version):
        problems.append(f"TensorRT {trt_release(built_trt)} built it, this machine has TensorRT {trt_release(trt_version)}")
    if built_cc != str(compute_capability):
        problems.append(f"it was built for {built_name} (compute capability {built_cc}), this GPU is {device_name} "
                        f"(compute capability {compute_capability})")
    if problems:
        raise EngineError(f"{plan} cannot run here: {'; '.join(problems)}. A TensorRT engine runs only on the "
                          f"TensorRT release and GPU architecture it was built for; rebuild it on this machine: "
                          f"{rebuild_command(sidecar)}")
    if built_name != device_name:
        return (f"{plan} was built on {built_name} and runs here on {device_name} (same compute capability "
                f"{built_cc}): it works, tuned for the other GPU; for best speed rebuild it here: {rebuild_command(sidecar)}")
    return None


def check_plan_bytes(plan: str, data: bytes, sidecar: dict) -> None:
    if not data:
        raise EngineError(f"{plan}: empty file; rebuild it: {rebuild_command(sidecar)}")
    if sha256_bytes(data) != sidecar["plan_sha256"]:
        raise EngineError(f"{plan}: does not match its sidecar {os.path.basename(sidecar_path(plan))} (SHA-256 "
                          f"differs: the plan was modified, truncated or replaced); rebuild it: {rebuild_command(sidecar)}")


_NAMES = {"cudaSuccess", "CUDA_SUCCESS"}


def cuda_check(result, call: str = "CUDA call"):
    """cuda-python returns ``(err, value...)`` tuples (``(err,)`` for calls without a value); raise
    CudaError unless err is success (0), else return None, the value, or the tuple of values."""
    if isinstance(result, tuple):
        err, values = result[0], result[1:]
    else:
        err, values = result, ()
    if int(err) != 0:
        name = getattr(err, "name", None) or str(err)
        if name in DRIVER_TOO_OLD_ERRORS:
            raise CudaError(driver_too_old_message(call, name, cuda_python_version()))
        if name in NO_GPU_ERRORS:
            raise CudaError(f"no usable NVIDIA GPU ({call}: {name}): --engine needs a GPU and its driver; "
                            "run the ONNX model with --model lfm.onnx instead")
        raise CudaError(f"{call} failed: {name} ({int(err)})")
    if not values:
        return None
    return values[0] if len(values) == 1 else values


class SlotRing:
    """Round-robin ownership of N slots. ``acquire(job)`` hands out the next slot and returns the
    job that held it and was not collected yet (the caller must fetch that one's result first), or
    None; ``release(slot, job)`` marks a slot free once its job's result is taken."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"need at least one slot, got {n}")
        self.owners: list = [None] * n
        self._next = 0

    def __len__(self):
        return len(self.owners)

    def acquire(self, job):
        i = self._next
        self._next = (i + 1) % len(self.owners)
        previous, self.owners[i] = self.owners[i], job
        return i, previous

    def release(self, slot: int, job) -> None:
        if self.owners[slot] is job:
            self.owners[slot] = None

    def busy(self) -> list[int]:
        return [i for i, o in enumerate(self.owners) if o is not None]


# ==============================================================================================
# 2. CUDA plumbing (cuda-python)
# ==============================================================================================

def import_cudart():
    """cuda-python's runtime API: ``cuda.bindings.runtime`` (cuda-python 12.6+ and 13), else the
    older ``cuda.cudart``. BackendError with what to install when neither is there."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python < 12.6
        except ImportError as e:
            raise BackendError(f"--engine needs cuda-python ({e}); {INSTALL_HINT}") from None
    return cudart


def device_info(cudart, device: int = 0) -> tuple[str, str]:
    """(name, "major.minor") of a CUDA device; CudaError (one line) when there is none."""
    count = cuda_check(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    if not count:
        raise CudaError("no usable NVIDIA GPU (cudaGetDeviceCount: 0 devices): --engine needs one; run the ONNX "
                        "model with --model lfm.onnx instead")
    if not 0 <= device < count:
        raise CudaError(f"GPU {device} does not exist (this machine has {count})")
    props = cuda_check(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name
    name = name.split(b"\0", 1)[0].decode(errors="replace") if isinstance(name, (bytes, bytearray)) else str(name)
    return name.strip(), capability_str(props.major, props.minor)


class PinnedBuffer:
    """Page-locked host memory (cudaMallocHost) of ``nbytes``; ``view(shape, dtype)`` is a numpy
    array over its start. Copies from it run asynchronously and at full bus speed."""

    def __init__(self, cudart, nbytes: int):
        self._cudart, self.nbytes = cudart, int(nbytes)
        self.ptr = int(cuda_check(cudart.cudaMallocHost(self.nbytes), "cudaMallocHost"))
        self._bytes = np.ctypeslib.as_array((ctypes.c_uint8 * self.nbytes).from_address(self.ptr))

    def view(self, shape, dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        n = int(np.prod(shape)) * dtype.itemsize
        if n > self.nbytes:
            raise ValueError(f"{n} bytes do not fit a pinned buffer of {self.nbytes}")
        return self._bytes[:n].view(dtype).reshape(shape)

    def free(self):
        if self.ptr:
            self._bytes = None
            cuda_check(self._cudart.cudaFreeHost(self.ptr), "cudaFreeHost")
            self.ptr = 0


class DeviceBuffer:
    """Device memory (cudaMalloc) of ``nbytes``; ``ptr`` is the address TensorRT is given."""

    def __init__(self, cudart, nbytes: int):
        self._cudart, self.nbytes = cudart, int(nbytes)
        self.ptr = int(cuda_check(cudart.cudaMalloc(self.nbytes), "cudaMalloc"))

    def free(self):
        if self.ptr:
            cuda_check(self._cudart.cudaFree(self.ptr), "cudaFree")
            self.ptr = 0


class _Slot:
    """One batch in flight: pinned input, device input and outputs, pinned logit, an event, and
    the CUDA graphs captured for it (input shape -> (its context, graph exec), None where capture
    failed)."""

    def __init__(self, cudart, in_bytes: int, out_bytes: dict[str, int], logit_name: str):
        self.host_in = PinnedBuffer(cudart, in_bytes)
        self.dev_in = DeviceBuffer(cudart, in_bytes)
        self.dev_out = {name: DeviceBuffer(cudart, n) for name, n in out_bytes.items()}
        self.host_logit = PinnedBuffer(cudart, out_bytes[logit_name])
        self.done = cuda_check(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming), "cudaEventCreateWithFlags")
        self.graphs: OrderedDict = OrderedDict()  # shape -> (context, graph exec), or None: not capturable

    def free(self, cudart):
        for entry in self.graphs.values():
            if entry is not None:
                cuda_check(cudart.cudaGraphExecDestroy(entry[1]), "cudaGraphExecDestroy")
        self.graphs.clear()
        cuda_check(cudart.cudaEventDestroy(self.done), "cudaEventDestroy")
        for buf in (self.host_in, self.dev_in, self.host_logit, *self.dev_out.values()):
            buf.free()


class _Part:
    """One engine run of a submitted batch (a batch may need several: see batch_parts)."""

    __slots__ = ("slot", "n", "value")

    def __init__(self, slot: int, n: int):
        self.slot, self.n, self.value = slot, n, None


class _Handle:
    __slots__ = ("parts",)

    def __init__(self):
        self.parts: list[_Part] = []


# ==============================================================================================
# 3. The runner
# ==============================================================================================

class TrtRunner(Runner):
    """A TensorRT engine (PLAN + PLAN.json sidecar from export/to_trt.py) on one GPU.

    in_flight: slots, i.e. batches that may be submitted before the first result is taken (>= 1).
    cuda_graphs: capture each (slot, input shape) once and replay it; at most ``max_graphs`` shapes
    per slot (least recently used dropped first). A detector sees few shapes: the batch size and
    the last, short batch (or one static batch: build the engine with --batch N to pad every batch
    to N)."""

    name = "tensorrt"

    def __init__(self, plan: str | os.PathLike, device: int = 0, in_flight: int = 2, cuda_graphs: bool = False,
                 max_graphs: int = 4):
        super().__init__()
        if in_flight < 1:
            raise ValueError(f"in_flight must be >= 1, got {in_flight}")
        self.plan, self.device, self.in_flight = os.fspath(plan), int(device), int(in_flight)
        self.cuda_graphs, self.max_graphs = bool(cuda_graphs), int(max_graphs)

    @property
    def max_in_flight(self) -> int:
        return self.in_flight

    # -- loading ---------------------------------------------------------------------------------
    def load_checked(self) -> tuple[dict, bytes]:
        """The sidecar and plan bytes, checked against each other (no TensorRT needed)."""
        if not os.path.exists(self.plan):
            raise EngineError(f"{self.plan}: no such file")
        if not os.path.isfile(self.plan):
            raise EngineError(f"{self.plan}: not a file")
        sidecar = read_sidecar(self.plan)
        with open(self.plan, "rb") as f:
            data = f.read()
        check_plan_bytes(self.plan, data, sidecar)
        return sidecar, data

    def activate_impl(self):
        sidecar, data = self.load_checked()
        try:
            import tensorrt as trt
        except ImportError as e:
            raise BackendError(f"--engine needs TensorRT ({e}); {INSTALL_HINT}") from None
        cudart = import_cudart()
        name, cc = device_info(cudart, self.device)
        warning = check_compatible(sidecar, trt.__version__, name, cc, plan=self.plan)
        if warning:
            warnings.warn(warning, RuntimeWarning, stacklevel=2)
        cuda_check(cudart.cudaSetDevice(self.device), "cudaSetDevice")
        self._trt, self._cudart, self.sidecar = trt, cudart, sidecar
        self.spec = ModelSpec.from_dict(sidecar["spec"])
        self.metadata = sidecar
        self.device_name, self.compute_capability = name, cc

        logger = _error_logger(trt)
        trt.init_libnvinfer_plugins(logger, "")  # TensorRT's own plugins, as its samples do
        self._runtime = trt.Runtime(logger)
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            why = logger.errors[-1].strip().splitlines()[0] if logger.errors else "TensorRT gave no reason"
            raise EngineError(f"{self.plan}: TensorRT could not load the engine ({why}); rebuild it: "
                              f"{rebuild_command(sidecar)}")
        self._bind_io(sidecar)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineError(f"{self.plan}: TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = cuda_check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")
        max_shape = self.profile["max"]
        in_bytes = int(np.prod(max_shape)) * self.input_dtype.itemsize
        out_bytes = {n: int(np.prod([max_shape[0] if d < 0 else d for d in shape])) * dt.itemsize
                     for n, (shape, dt) in self.outputs.items()}
        self.slots = []
        try:
            for _ in range(self.in_flight):
                self.slots.append(_Slot(cudart, in_bytes, out_bytes, "logit"))
        except BaseException:
            for slot in self.slots:
                slot.free(cudart)
            cudart.cudaStreamDestroy(self.stream)
            raise
        self.ring = SlotRing(self.in_flight)
        self._context_shapes = {}  # id(context) -> the input shape last set on it
        self._scratch, self._graph_warned = None, False  # CUDA graphs' shared context memory

    def _bind_io(self, sidecar):
        trt, engine = self._trt, self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or "logit" not in outputs:
            raise EngineError(f"{self.plan}: not an LFM engine (inputs {inputs}, outputs {outputs}; expected one input "
                              "and a 'logit' output)")
        (self.input_name,) = inputs
        if self.input_name != sidecar["input"]["name"]:
            raise EngineError(f"{self.plan}: engine input {self.input_name!r} differs from its sidecar's "
                              f"{sidecar['input']['name']!r}; rebuild it: {rebuild_command(sidecar)}")
        self.input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input_name)))
        self.outputs = {n: (tuple(engine.get_tensor_shape(n)), np.dtype(trt.nptype(engine.get_tensor_dtype(n))))
                        for n in outputs}
        lo, opt, hi = engine.get_tensor_profile_shape(self.input_name, 0)
        self.profile = {"input": self.input_name, "layout": sidecar["input"]["layout"],
                        "min": [int(d) for d in lo], "opt": [int(d) for d in opt], "max": [int(d) for d in hi]}

    def deactivate_impl(self):
        cudart = self._cudart
        try:
            cuda_check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        finally:
            for slot in self.slots:
                slot.free(cudart)
            if self._scratch is not None:
                self._scratch.free()
            cuda_check(cudart.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            del self.slots, self.context, self.engine, self._runtime

    # -- inference -------------------------------------------------------------------------------
    def infer_impl(self, feed):
        return self.result(self.submit(feed))

    def submit(self, feed: dict[str, np.ndarray]) -> _Handle:
        """Enqueue a batch without waiting; ``result(handle)`` returns its {"logit": [B]}."""
        if not self.is_active:
            raise BackendError(f"{self.name}: submit() before activate()")
        (x,) = feed.values()
        x = np.asarray(x)
        if x.dtype != self.input_dtype:
            raise BackendError(f"{self.plan}: input {self.input_name!r} takes {self.input_dtype}, got {x.dtype}")
        check_shape(x.shape, self.profile, os.path.basename(self.plan))
        b = profile_axes(self.profile["layout"])[0]
        handle = _Handle()
        for start, stop, run in batch_parts(x.shape[b], self.profile["min"][b], self.profile["max"][b]):
            part = _Part(-1, stop - start)
            slot, previous = self.ring.acquire(part)
            if previous is not None:  # the ring came round to a batch nobody has collected yet
                self._fetch(previous)
            part.slot = slot
            self._launch(self.slots[slot], x[start:stop], run)
            handle.parts.append(part)
        return handle

    def result(self, handle: _Handle) -> dict[str, np.ndarray]:
        for part in handle.parts:
            if part.value is None:
                self._fetch(part)
        return {"logit": np.concatenate([p.value for p in handle.parts])}

    def _fetch(self, part: _Part) -> None:
        slot = self.slots[part.slot]
        cuda_check(self._cudart.cudaEventSynchronize(slot.done), "cudaEventSynchronize")
        part.value = slot.host_logit.view((part.n,), self.outputs["logit"][1]).astype(np.float32, copy=True)
        self.ring.release(part.slot, part)

    def _launch(self, slot: _Slot, x: np.ndarray, run: int) -> None:
        cudart = self._cudart
        shape = (run,) + tuple(x.shape[1:])
        staged = slot.host_in.view(shape, self.input_dtype)
        staged[:len(x)] = x  # the one host-side copy: into pinned memory
        if run > len(x):
            staged[len(x):] = 0  # padding up to the profile's minimum batch
        entry = slot.graphs.get(shape, False) if self.cuda_graphs else None
        if entry:  # a captured graph: one launch does copy-in, inference and copy-out
            slot.graphs.move_to_end(shape)
            cuda_check(cudart.cudaGraphLaunch(entry[1], self.stream), "cudaGraphLaunch")
        elif entry is False:  # first time for this (slot, shape): run it, then capture it
            context = self._graph_context()
            if context is not None:
                try:
                    self._enqueue(context, slot, shape)
                except BackendError as e:  # TensorRT would not run a second context here: no graphs
                    self._graphs_off(e)
                    context = None
            if context is None:
                self._enqueue(self.context, slot, shape)
            self._capture(context, slot, shape)
        else:  # no graphs, or capture failed for this shape
            self._enqueue(self.context, slot, shape)
        cuda_check(cudart.cudaEventRecord(slot.done, self.stream), "cudaEventRecord")

    def _enqueue(self, context, slot: _Slot, shape) -> None:
        """Copy in, run, copy the logits out: all asynchronous on the stream."""
        cudart = self._cudart
        if self._context_shapes.get(id(context)) != shape:
            if not context.set_input_shape(self.input_name, shape):
                raise BackendError(f"{self.plan}: TensorRT refused input shape {list(shape)} "
                                   f"(profile: {describe_profile(self.profile)})")
            self._context_shapes[id(context)] = shape
        context.set_tensor_address(self.input_name, slot.dev_in.ptr)
        for name, buf in slot.dev_out.items():
            context.set_tensor_address(name, buf.ptr)
        nbytes = int(np.prod(shape)) * self.input_dtype.itemsize
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_check(cudart.cudaMemcpyAsync(slot.dev_in.ptr, slot.host_in.ptr, nbytes, h2d, self.stream), "cudaMemcpyAsync")
        if not context.execute_async_v3(int(self.stream)):  # TensorRT takes the stream handle as an int
            raise BackendError(f"{self.plan}: TensorRT failed to enqueue a batch of shape {list(shape)}")
        out_bytes = shape[0] * self.outputs["logit"][1].itemsize
        cuda_check(cudart.cudaMemcpyAsync(slot.host_logit.ptr, slot.dev_out["logit"].ptr, out_bytes, d2h, self.stream),
                   "cudaMemcpyAsync")

    def _graph_context(self):
        """A fresh execution context for one CUDA graph (a graph fixes its context's shapes and
        addresses, so each graph gets its own). All of them share one scratch block of
        ``device_memory_size_v2`` bytes: their work runs one at a time, in order, on the one stream.
        None (graphs off, with a warning) where this TensorRT cannot make such a context."""
        trt, engine = self._trt, self.engine
        try:
            if self._scratch is None:
                # _v2 exists in 10.x and 11.x (11 removed device_memory_size); 0 is a valid size
                self._scratch = DeviceBuffer(self._cudart, max(int(engine.device_memory_size_v2), 1))
            strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
            try:
                context = engine.create_execution_context(strategy)
            except TypeError:  # TensorRT versions that take an IRuntimeConfig instead
                config = engine.create_runtime_config()
                config.set_execution_context_allocation_strategy(strategy)
                context = engine.create_execution_context(config)
            if context is None:
                raise RuntimeError("create_execution_context returned None")
            if hasattr(context, "set_device_memory"):
                context.set_device_memory(self._scratch.ptr, self._scratch.nbytes)
            else:
                context.device_memory = self._scratch.ptr
            return context
        except Exception as e:  # noqa: BLE001 (any failure here only costs the graphs)
            self._graphs_off(e)
            return None

    def _graphs_off(self, why: Exception) -> None:
        if not self._graph_warned:
            warnings.warn(f"{self.plan}: cannot run CUDA graphs' execution contexts here ({type(why).__name__}: {why}); "
                          "running without graphs", RuntimeWarning, stacklevel=5)
            self._graph_warned = True
        self.cuda_graphs = False

    def _capture(self, context, slot: _Slot, shape) -> None:
        """Record copy-in + inference + copy-out for (slot, shape) as a CUDA graph. The enqueue just
        made on ``context`` for this shape is the one TensorRT asks for after a shape change and
        before capturing. If capture fails (an engine that cannot be captured), this shape keeps the
        plain enqueue."""
        cudart = self._cudart
        if context is None:
            slot.graphs[shape] = None
            return
        if len(slot.graphs) >= self.max_graphs:
            old = slot.graphs.popitem(last=False)[1]
            if old is not None:
                cuda_check(cudart.cudaGraphExecDestroy(old[1]), "cudaGraphExecDestroy")
                self._context_shapes.pop(id(old[0]), None)
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_check(cudart.cudaStreamBeginCapture(self.stream, mode), "cudaStreamBeginCapture")
        try:
            self._enqueue(context, slot, shape)
        finally:
            err, graph = cudart.cudaStreamEndCapture(self.stream)
        if int(err) != 0 or graph is None:
            warnings.warn(f"{self.plan}: CUDA graph capture failed for input {list(shape)} ({getattr(err, 'name', err)}); "
                          "this shape runs without a graph", RuntimeWarning, stacklevel=4)
            slot.graphs[shape] = None
            return
        try:
            slot.graphs[shape] = (context, cuda_check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate"))
        finally:
            cuda_check(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")


def _error_logger(trt):
    """A TensorRT logger that keeps errors (for one-line messages) and prints nothing."""

    class ErrorLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))

    return ErrorLogger()


def engine_summary(sidecar: dict) -> str:
    """One line about an engine, for logs: precision, input, profile, built with/for."""
    prof = sidecar["profiles"][0]
    dev = sidecar["device"]
    return (f"{sidecar['precision']} engine, input {sidecar['input']['name']} {sidecar['input']['dtype']} "
            f"{sidecar['input']['layout']}, {describe_profile(prof)}; TensorRT {sidecar['tensorrt']} on {dev['name']} "
            f"(compute capability {dev['compute_capability']})")

