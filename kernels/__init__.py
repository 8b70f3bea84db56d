"""Fused Triton kernels for LFM: NPR from raw pixels, and Top-K pooling (``lfm.kernels``).

Modules (Triton tutorials' layout: a ``@triton.jit`` kernel, a thin wrapper that checks inputs,
allocates the output and states the grid, and a plain PyTorch reference beside it):

    lfm.kernels.npr          npr_kernel, npr(x, scale, out_dtype=, out_layout=), npr_reference, npr_grid
    lfm.kernels.top_k_pool   top_k_pool_kernel, top_k_pool(maps, k), top_k_pool_reference, top_k_pool_grid
    lfm.kernels.npr_stem     npr_stem_kernel, npr_stem(x, w, b): NPR + conv1 + max-pool + ReLU in one pass
    lfm.kernels.max_pool_relu  max_pool_relu(x): 2x2 max-pool + ReLU in one pass, channels-last
    lfm.kernels.triton_lfm   TritonLFM: the whole model on a GPU from uint8 pixels, built on the above
    lfm.kernels.resize       resize_bilinear(pixels, out_h, out_w): Pillow's resize, bit for bit (uint8
                             NHWC; pillow_resize_reference beside it), center_crop / tiles as slices
    lfm.kernels.aot          ahead-of-time compilation to PTX for TensorRT's AOT plugins (below)
    lfm.kernels.cuda_launch  launches those PTX artifacts with cuda-python, as TensorRT would (GPU checks)
    lfm.kernels.trt_plugins  the TensorRT plugin registration built on ``aot`` (separate module)

Semantics: NPR's odd-size rule and Top-K's ordering (NaN largest, -inf smallest, ties by value)
are documented in their modules and match ``lfm.train.model.NPR`` / ``TopKPool`` bit for bit.

The wrappers run on CUDA tensors natively, or, where ``TRITON_INTERPRET=1`` was set before
triton was first imported, on CPU tensors in Triton's interpreter (how CI tests them; the mode is
fixed per process at triton's import). Importing this package imports neither torch nor triton;
``npr`` / ``top_k_pool`` need both, ``aot`` needs triton only and compiles in a child process
when this one is in interpreter mode (Triton cannot compile there).

AOT contract (``lfm.kernels.aot``; what the TensorRT plugin glue builds on)
---------------------------------------------------------------------------
``compile_npr(arch, *, input_dtype="uint8"|"float32", scale=(s0, s1, s2),
out_dtype="float32"|"float16", out_layout="NCHW"|"NHWC") -> AotKernel``
    NPR for ``arch`` in {80, 86, 89, 90} (an int, or "sm_90"). uint8 input is [B, H, W, 3]
    (NHWC), float32 input [B, 3, H, W] (NCHW); ``scale`` is baked into the PTX as constants
    (required for uint8, default 1 for float32). Keywords with defaults: ``block_w``,
    ``num_warps``, ``ptx_version``.

``compile_top_k_pool(arch, *, k=16) -> AotKernel``
    Top-K pooling of float32 maps [B, C, H, W] -> [B, C * k]; ``k`` is baked in. Keywords with
    defaults: ``dtype`` ("float32" | "float16", input and output), ``block``, ``num_warps``,
    ``ptx_version``.

``AotKernel`` (a frozen dataclass): ``kind`` ("npr" | "top_k_pool"), ``name`` (the PTX
entry), ``ptx`` (text), ``arch`` (e.g. 90), ``target`` (the PTX ``.target``: "sm_80", ...,
"sm_90a"), ``ptx_version`` ("8.0", the pinned ISA, ``aot.PTX_VERSION``), ``num_warps``
(``block`` = (num_warps * 32, 1, 1)), ``shared_mem`` (bytes of dynamic shared memory to launch
with), ``params`` (the parameter names in kernel order, e.g. ("x_ptr", "height", "width",
"out_ptr")), ``param_kinds`` (per parameter: "input", "scalar" or "output"), ``hidden_params``
(pointer parameters Triton appends after the outputs: pass NULL; unused, their scratch sizes
are 0), ``constexprs`` (the baked values), ``signature``, ``triton_version``; ``save(dir)`` /
``AotKernel.load(json)``.

``npr_launch(kernel, batch, height, width) -> (grid, block, shared_mem, extra_args)``
``top_k_pool_launch(kernel, batch, channels, height, width) -> (grid, block, shared_mem, extra_args)``
    ``grid`` and ``block`` are 3-tuples, ``shared_mem`` an int, ``extra_args`` the kernel's
    int32 scalars in kernel order (NPR: (height, width) of the input; Top-K: (height * width,)).
    Computed with + - * // only, so they take ints or TensorRT's symbolic shape expressions.

Kernel parameters follow TensorRT's AOT calling convention: (input pointers..., int32 scalars...,
output pointers...), then Triton's hidden pointers.
"""
from __future__ import annotations


def interpreted(kernel) -> bool:
    """Whether ``kernel`` runs in Triton's interpreter (TRITON_INTERPRET=1 when it was defined)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(kernel, InterpretedFunction)


def _patch_interpreter_index() -> None:
    """Triton <= 3.6's interpreter makes a scalar a Python int (Top-K's ``range(0, n, BLOCK)``)
    with ``int(array of shape (1,))``, a TypeError since NumPy 2.4 (triton-lang/triton#9171; 3.7
    has the fix, ``.squeeze()``): apply that fix. Interpreter (CPU) runs only."""
    import re

    import triton
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    version = tuple(int(v) for v in re.findall(r"\d+", triton.__version__)[:2])
    if original is None or getattr(original, "_lfm_fixed", False) or version >= (3, 7):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patched._lfm_fixed = True
    interpreter._patch_lang_tensor = patched


def check_device(kernel, tensor) -> None:
    """A clear error where the tensor's device and the kernel's mode do not go together (and, for
    the interpreter, the fix of ``_patch_interpreter_index``)."""
    on_cpu = tensor.device.type == "cpu"
    if on_cpu and interpreted(kernel):
        _patch_interpreter_index()
    if on_cpu and not interpreted(kernel):
        raise RuntimeError("Triton kernels run on CPU tensors only in Triton's interpreter: set "
                           "TRITON_INTERPRET=1 before triton is first imported, or pass CUDA tensors")
    if not on_cpu and interpreted(kernel):
        raise RuntimeError(f"TRITON_INTERPRET=1 is set in this process: the kernel runs on CPU tensors "
                           f"only, got a {tensor.device} tensor")
