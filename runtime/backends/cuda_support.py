"""CUDA plumbing with cuda-python, shared by the GPU paths: error checks, devices, buffers, streams, the slot ring.

As TensorRT's samples do it (``samples/python/common_runtime.py``): ``cuda_check`` turns
cuda-python's ``(err, value...)`` tuples into values or one-line ``CudaError``s (no GPU, a driver
older than cuda-python needs); ``PinnedBuffer`` is page-locked host memory seen as a numpy array,
``DeviceBuffer`` device memory, ``new_stream`` one non-blocking stream; ``SlotRing`` is the
bookkeeping of N in-flight slots (plain Python). The TensorRT backend
(``lfm.runtime.backends.trt_engine``) and any other GPU path import this module.

cuda-python is imported by ``import_cudart`` only (it comes with ``pip install -e '.[tensorrt]'``);
importing this module needs numpy and the standard library.
"""
from __future__ import annotations

import ctypes

import numpy as np

from .base import BackendError

INSTALL_HINT = ("on a machine with an NVIDIA GPU and driver: pip install -e '.[tensorrt]' (TensorRT and cuda-python "
                "for a CUDA 13 driver; '.[tensorrt-cu12]' for a CUDA 12 driver); or run the ONNX model with --model "
                "lfm.onnx instead")
NO_GPU_ERRORS = {"cudaErrorNoDevice", "cudaErrorInitializationError", "cudaErrorDevicesUnavailable",
                 "CUDA_ERROR_NO_DEVICE", "CUDA_ERROR_NOT_INITIALIZED"}
DRIVER_TOO_OLD_ERRORS = {"cudaErrorInsufficientDriver", "CUDA_ERROR_INSUFFICIENT_DRIVER"}


class CudaError(BackendError):
    """A CUDA runtime call that failed; the message names the call and the error."""


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


def driver_too_old_message(call: str, error: str, cuda_python: str) -> str:
    """cudaErrorInsufficientDriver: the driver is older than the CUDA this cuda-python targets. Its
    major follows TensorRT's wheel (the cu12 / cu13 extras): the fix is the cu12 extra or a newer driver."""
    if _major(cuda_python) >= 13:
        fix = ("with a CUDA 12 driver install the cu12 extra, which pins TensorRT and cuda-python for CUDA 12: "
               "pip install -e '.[tensorrt-cu12]' (nvidia-smi shows the driver's CUDA version), or update the driver")
    else:
        fix = "update the NVIDIA driver (nvidia-smi shows the CUDA version it supports)"
    return (f"the CUDA driver is older than cuda-python {cuda_python} needs ({call}: {error}): {fix}; or run the "
            "ONNX model with --model lfm.onnx instead")


def _major(version: str) -> int:
    """'13.0.1' -> 13; 0 for a version without a leading number ('(version unknown)')."""
    digits = str(version).split(".")[0]
    return int(digits) if digits.isdigit() else 0


def cuda_python_version() -> str:
    """The installed cuda-python's version (the runtime API lives in 'cuda-bindings' from 12.8 on)."""
    from importlib import metadata

    for dist in ("cuda-bindings", "cuda-python"):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return "(version unknown)"


def capability_str(major: int, minor: int) -> str:
    return f"{int(major)}.{int(minor)}"


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


def new_stream(cudart):
    """A non-blocking CUDA stream (it does not wait on the legacy default stream); destroy it with
    ``cudart.cudaStreamDestroy``."""
    return cuda_check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking), "cudaStreamCreateWithFlags")


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
