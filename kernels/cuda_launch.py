"""Launch AOT PTX artifacts with cuda-python's driver API, the way TensorRT's AOT plugins do.

TensorRT takes (kernel name, PTX, grid / block / shared memory, extra int32 scalars) from an
``aot_impl`` and launches the kernel itself: the driver JIT-compiles the PTX
(``cuModuleLoadData``), looks the kernel up by name (``cuModuleGetFunction``) and calls
``cuLaunchKernel`` with the parameters in the AOT calling convention: input pointers, the extra
scalars, output pointers. This module does exactly that for an ``AotKernel``
(``lfm.kernels.aot``), so the artifacts are checked on a GPU without TensorRT. Triton's hidden
trailing pointer parameters (``global_scratch``, ``profile_scratch``; unused, size 0) get NULL.

GPU only; cuda-python (``cuda.bindings.driver``, or the older ``cuda.cuda``) is imported lazily.
Buffers are device pointers (ints) or CUDA tensors; the launch goes on torch's current stream
when torch is in use, else on ``stream`` (default: the legacy default stream, 0).
"""
from __future__ import annotations

import ctypes

from .aot import AotKernel, npr_launch, top_k_pool_launch

_driver = None
_loaded: dict = {}


def driver():
    """cuda-python's driver module (``cuda.bindings.driver``; ``cuda.cuda`` for cuda-python < 12.6)."""
    global _driver
    if _driver is None:
        try:
            from cuda.bindings import driver as drv
        except ImportError:
            from cuda import cuda as drv
        _driver = drv
    return _driver


def check(result):
    """Unpacks a cuda-python (err, *values) result, raising on an error with the driver's name for it."""
    drv = driver()
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != int(drv.CUresult.CUDA_SUCCESS):
        _, name = drv.cuGetErrorName(err)
        _, text = drv.cuGetErrorString(err)
        name = name.decode() if isinstance(name, bytes) else name
        text = text.decode() if isinstance(text, bytes) else text
        raise RuntimeError(f"CUDA driver error {name}: {text}")
    return values[0] if len(values) == 1 else tuple(values)


def _ensure_context(device: int = 0):
    drv = driver()
    check(drv.cuInit(0))
    ctx = check(drv.cuCtxGetCurrent())
    if ctx is None or int(ctx) == 0:  # no current context (torch not initialised): the primary one
        dev = check(drv.cuDeviceGet(device))
        ctx = check(drv.cuDevicePrimaryCtxRetain(dev))
        check(drv.cuCtxSetCurrent(ctx))
    return ctx


class LoadedKernel:
    """An artifact loaded into the current CUDA context: PTX JIT-compiled by the driver."""

    def __init__(self, kernel: AotKernel, device: int = 0):
        drv = driver()
        self.kernel = kernel
        self.context = _ensure_context(device)
        self.module = check(drv.cuModuleLoadData(kernel.ptx.encode() + b"\0"))
        self.function = check(drv.cuModuleGetFunction(self.module, kernel.name.encode()))
        if kernel.shared_mem > 48 * 1024:  # above the default limit: opt in, as Triton's launcher does
            attr = drv.CUfunction_attribute.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
            check(drv.cuFuncSetAttribute(self.function, attr, kernel.shared_mem))

    def launch(self, grid, block, shared_mem, inputs, extra_args, outputs, stream=None) -> None:
        """cuLaunchKernel with params (inputs..., extra_args..., outputs..., NULL per hidden param)."""
        k = self.kernel
        if len(inputs) != len(k.inputs) or len(outputs) != len(k.outputs) or len(extra_args) != len(k.scalars):
            raise ValueError(f"{k.name} takes {len(k.inputs)} inputs, {len(k.scalars)} scalars, {len(k.outputs)} "
                             f"outputs; got {len(inputs)}, {len(extra_args)}, {len(outputs)}")
        if tuple(block) != k.block:
            raise ValueError(f"{k.name} was compiled for block {k.block} (.reqntid), got {tuple(block)}")
        if any(int(g) < 1 for g in grid):
            raise ValueError(f"empty grid {tuple(grid)}: nothing to launch")
        values = []
        for buf in (*inputs, *outputs):
            ptr = _pointer(buf)
            if ptr % 16:
                raise ValueError(f"{k.name}: buffer at {ptr:#x} is not 16-byte aligned (the PTX assumes it)")
        for ptr in inputs:
            values.append(ctypes.c_uint64(_pointer(ptr)))
        for v in extra_args:
            v = int(v)
            if not -(2**31) <= v < 2**31:
                raise ValueError(f"{k.name}: scalar {v} does not fit int32")
            values.append(ctypes.c_int32(v))
        for ptr in outputs:
            values.append(ctypes.c_uint64(_pointer(ptr)))
        values += [ctypes.c_uint64(0) for _ in k.hidden_params]
        params = (ctypes.c_void_p * len(values))(*[ctypes.addressof(v) for v in values])
        if stream is None:
            stream = _torch_stream()
        drv = driver()
        check(drv.cuLaunchKernel(self.function, *(int(g) for g in grid), *(int(b) for b in block), int(shared_mem),
                                 drv.CUstream(stream), ctypes.addressof(params), 0))


def _pointer(buf) -> int:
    if hasattr(buf, "data_ptr"):
        if not buf.is_cuda or not buf.is_contiguous():
            raise ValueError("buffers must be contiguous CUDA tensors")
        return buf.data_ptr()
    return int(buf)


def _torch_stream() -> int:
    try:
        import torch

        return torch.cuda.current_stream().cuda_stream if torch.cuda.is_initialized() else 0
    except ImportError:
        return 0


def load(kernel: AotKernel, device: int = 0) -> LoadedKernel:
    key = (kernel.name, kernel.arch, kernel.ptx, device)
    if key not in _loaded:
        _loaded[key] = LoadedKernel(kernel, device)
    return _loaded[key]


def run_npr(kernel: AotKernel, x, out=None):
    """NPR artifact on a CUDA tensor, launched as TensorRT would; returns the output tensor."""
    import torch

    from .npr import npr_out_shape

    c = kernel.constexprs
    if c["IN_NHWC"]:
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[3] != 3:
            raise ValueError(f"{kernel.name} takes uint8 [B, H, W, 3], got {x.dtype} {tuple(x.shape)}")
        b, h, w = x.shape[0], x.shape[1], x.shape[2]
    else:
        if x.dtype != torch.float32 or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"{kernel.name} takes float32 [B, 3, H, W], got {x.dtype} {tuple(x.shape)}")
        b, h, w = x.shape[0], x.shape[2], x.shape[3]
    dtype = torch.float16 if kernel.signature["out_ptr"] == "*fp16" else torch.float32
    layout = "NHWC" if c["OUT_NHWC"] else "NCHW"
    if out is None:
        out = torch.empty(npr_out_shape(b, h, w, layout), dtype=dtype, device=x.device)
    grid, block, shared, extra = npr_launch(kernel, b, h, w)
    load(kernel, x.device.index or 0).launch(grid, block, shared, [x.contiguous()], extra, [out])
    return out


def run_top_k_pool(kernel: AotKernel, maps, out=None):
    """Top-K artifact on CUDA maps [B, C, H, W]; returns [B, C * K]."""
    import torch

    k = kernel.constexprs["K"]
    want = torch.float16 if kernel.signature["maps_ptr"] == "*fp16" else torch.float32
    if maps.dtype != want or maps.dim() != 4:
        raise ValueError(f"{kernel.name} takes {want} [B, C, H, W], got {maps.dtype} {tuple(maps.shape)}")
    b, c, h, w = maps.shape
    if h * w < k:
        raise ValueError(f"maps have H * W = {h * w} values, fewer than K = {k}")
    if out is None:
        out = torch.empty((b, c * k), dtype=maps.dtype, device=maps.device)
    grid, block, shared, extra = top_k_pool_launch(kernel, b, c, h, w)
    load(kernel, maps.device.index or 0).launch(grid, block, shared, [maps.contiguous()], extra, [out])
    return out
