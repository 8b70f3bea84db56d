"""TensorRT plugins for the plugin graph's custom nodes: "lfm::LfmNpr" and "lfm::LfmTopKPool".

    from lfm.kernels.trt_plugins import register_plugins
    register_plugins()   # before parsing the plugin graph (export/to_onnx.py --variant plugins)

Registered with TensorRT's Python plugin API (``tensorrt.plugin``; ``aot_impl``, ``KernelLaunchParams``
and ``SymInt32`` need TensorRT 10.9+, and pip's wheels ship ``tensorrt.plugin`` from 10.14 on;
export/to_trt.py checks both, and NumPy < 2.4 before TensorRT 11.2, against
``lfm.runtime.backends.trt_plan.TENSORRT_SUPPORT`` before it calls ``register_plugins``):

* ``@trtp.register``: output shape as shape expressions and dtype (float32) from the input's.
* ``@trtp.aot_impl``: the Triton kernel compiled ahead of time (``lfm.kernels.aot``) for this
  GPU's compute capability: kernel name, PTX, launch parameters from ``npr_launch`` /
  ``top_k_pool_launch`` applied to the symbolic input shape, and the int32 scalar arguments.
  The engine then runs the PTX with no Python. Attributes are not serialised into an AOT engine,
  so ``scale`` and ``k`` are compiled into the PTX.
* ``@trtp.impl``: the JIT fallback, the Triton launchers (``lfm.kernels.npr.npr``,
  ``lfm.kernels.top_k_pool.top_k_pool``) on TensorRT's stream; the engine then needs Python,
  torch and triton at inference.
* No ``@trtp.autotune``: without one TensorRT takes the input types the network gives (float32
  for both), the float32 outputs declared here and linear formats, which is all these kernels
  support.
* LfmNpr takes float32 NCHW only here. TensorRT's plugins take no uint8 tensors (a uint8 network
  input may only meet a Cast), so the exporter casts the uint8 graph's bytes to float32 and
  transposes them to NCHW before LfmNpr, with the scale 1 / (255 std) unchanged: the same values
  as the fused uint8 path of the kernels and of ONNX Runtime's op, which stays for those.

Both implementations are defined, so TensorRT must be told which to use: build the network
with ``NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS`` (``network_flags()``), or
TensorRT's plugin creator refuses the node.

How the ONNX parser finds them: a node whose op type is not an ONNX operator is looked up in the
plugin registry by op type, ``plugin_version`` and ``plugin_namespace`` (node attributes; the
node's domain is not consulted), and the attributes the plugin declares become its fields (INT
-> int32, STRING -> char with a trailing NUL). The contract lives in ``lfm.runtime.custom_ops``.

Everything TensorRT-free is a plain function here, tested without TensorRT: the arch choice,
the output shapes, symbolic arithmetic, the launch-parameter mapping and the node attributes.
No ``from __future__ import annotations`` in this module: ``tensorrt.plugin`` reads the
decorated functions' annotations as classes.
"""
import numbers
import threading
from typing import Tuple, Union

from lfm.runtime import custom_ops as ops

NPR_ID = ops.PLUGIN_IDS[ops.NPR_OP]  # "lfm::LfmNpr"
TOP_K_POOL_ID = ops.PLUGIN_IDS[ops.TOP_K_POOL_OP]  # "lfm::LfmTopKPool"
AOT_ARCHS = (80, 86, 89, 90)  # lfm.kernels.aot.ARCHS (not imported: it needs triton); 90 is sm_90a

__all__ = [
    "NPR_ID", "TOP_K_POOL_ID", "register_plugins", "network_flags", "arch_for_capability", "SymDim",
    "npr_geometry", "npr_output_dims", "top_k_pool_output_dims", "launch_config", "plugin_attributes",
]


# ----------------------------------------------------------------------------------------------
# Plain functions (no TensorRT)


def arch_for_capability(major: int, minor: int, archs=AOT_ARCHS) -> int:
    """The AOT target for a GPU of compute capability major.minor: the exact arch when the kernels
    are compiled for it, else the newest one below it that is not arch-specific (PTX for sm_80,
    sm_86 or sm_89 is JIT-compiled forward by the driver; sm_90a PTX runs on 9.0 only)."""
    cap = 10 * int(major) + int(minor)
    if cap in archs:
        return cap
    portable = [a for a in archs if a <= cap and a != 90]
    if not portable:
        raise ValueError(f"compute capability {major}.{minor} is below {min(archs) // 10}.{min(archs) % 10}: "
                         f"LFM's AOT kernels are built for sm_{'/sm_'.join(map(str, archs))}")
    return max(portable)


class SymDim:
    """An int or a TensorRT shape expression with + - * // from either side.

    TensorRT's ``ShapeExpr`` implements only the left-hand operators (``h * 3`` works, ``3 * h``
    does not); launch functions written for ints may use either. ``lift`` turns an int into an
    expression (``tensorrt.plugin.ShapeExpr``) when an int meets an expression on its left."""

    __slots__ = ("value", "lift")

    def __init__(self, value, lift=None):
        self.value = value.value if isinstance(value, SymDim) else value
        self.lift = lift

    def _apply(self, other, op, reflected=False):
        other = other.value if isinstance(other, SymDim) else other
        a, b = (other, self.value) if reflected else (self.value, other)
        if isinstance(a, numbers.Integral) and not isinstance(b, numbers.Integral):
            if self.lift is None:
                raise TypeError("an int on the left of a symbolic dimension needs SymDim(..., lift=...)")
            a = self.lift(int(a))
        return SymDim(op(a, b), self.lift)

    def __add__(self, o): return self._apply(o, lambda a, b: a + b)
    def __radd__(self, o): return self._apply(o, lambda a, b: a + b, True)
    def __sub__(self, o): return self._apply(o, lambda a, b: a - b)
    def __rsub__(self, o): return self._apply(o, lambda a, b: a - b, True)
    def __mul__(self, o): return self._apply(o, lambda a, b: a * b)
    def __rmul__(self, o): return self._apply(o, lambda a, b: a * b, True)
    def __floordiv__(self, o): return self._apply(o, lambda a, b: a // b)
    def __rfloordiv__(self, o): return self._apply(o, lambda a, b: a // b, True)

    def __repr__(self):
        return f"SymDim({self.value!r})"


def _unwrap(v):
    return v.value if isinstance(v, SymDim) else v


def npr_geometry(dims, nhwc: bool):
    """(batch, height, width) of LfmNpr's input: uint8 [B, H, W, 3] (nhwc) or float32 [B, 3, H, W]."""
    dims = tuple(dims)
    if len(dims) != 4:
        raise ValueError(f"{ops.NPR_OP} takes a 4-d input, got {len(dims)} dimensions")
    return (dims[0], dims[1], dims[2]) if nhwc else (dims[0], dims[2], dims[3])


def npr_output_dims(dims, nhwc: bool):
    """LfmNpr's output [B, 3, H - H%2, W - W%2] (written H // 2 * 2: shape expressions have no %)."""
    b, h, w = npr_geometry(dims, nhwc)
    return (b, 3, h // 2 * 2, w // 2 * 2)


def top_k_pool_output_dims(dims, k: int):
    """LfmTopKPool's output [B, C * k]."""
    dims = tuple(dims)
    if len(dims) != 4:
        raise ValueError(f"{ops.TOP_K_POOL_OP} takes [B, C, H, W], got {len(dims)} dimensions")
    return (dims[0], dims[1] * int(k))


def launch_config(launch, kernel, *dims, lift=None) -> dict:
    """Call an ``lfm.kernels.aot`` launch function on (possibly symbolic) dims and normalise its
    (grid, block, shared_mem, extra_args) into KernelLaunchParams fields plus the scalar args:
    {"grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem", "extra_args"}."""
    grid, block, shared_mem, extra_args = launch(kernel, *(SymDim(d, lift) for d in dims))

    def three(v, what):
        v = tuple(v) if isinstance(v, (tuple, list)) else (v,)
        if not 1 <= len(v) <= 3:
            raise ValueError(f"{what} must have 1 to 3 dimensions, got {len(v)}")
        return tuple(_unwrap(x) for x in v) + (1,) * (3 - len(v))

    gx, gy, gz = three(grid, "grid")
    bx, by, bz = three(block, "block")
    return {"grid_x": gx, "grid_y": gy, "grid_z": gz, "block_x": bx, "block_y": by, "block_z": bz,
            "shared_mem": _unwrap(shared_mem), "extra_args": tuple(_unwrap(e) for e in extra_args)}


def plugin_attributes(node) -> dict:
    """The plugin attributes of a plugin-graph node (an onnx NodeProto or an onnx-graphsurgeon
    Node), as the ONNX parser hands them over and as ``trtp.op.lfm.<Op>(tensor, **attrs)`` takes
    them when a network is built by hand: LfmNpr {"scale": str}, LfmTopKPool {"k": int}.
    ``plugin_namespace``/``plugin_version`` address the plugin and are checked, not returned."""
    op = getattr(node, "op_type", None) or getattr(node, "op", None)
    if hasattr(node, "attribute"):  # onnx NodeProto
        from onnx import helper

        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    else:
        attrs = dict(node.attrs)
    attrs = {k: v.decode() if isinstance(v, bytes) else v for k, v in attrs.items()}
    if op not in ops.OP_TYPES:
        raise ValueError(f"{op!r} is not one of LFM's custom ops {ops.OP_TYPES}")
    where = (attrs.get("plugin_namespace"), attrs.get("plugin_version"))
    if where != (ops.PLUGIN_NAMESPACE, ops.PLUGIN_VERSION):
        raise ValueError(f"{op}: plugin_namespace/plugin_version {where} are not "
                         f"{(ops.PLUGIN_NAMESPACE, ops.PLUGIN_VERSION)}")
    if op == ops.NPR_OP:
        return {"scale": ops.format_scale(ops.parse_scale(attrs["scale"]))}
    return {"k": int(attrs["k"])}


# ----------------------------------------------------------------------------------------------
# TensorRT glue (needs tensorrt; the kernels need triton, the JIT path torch too)

_lock = threading.Lock()
_registered = False


def network_flags() -> int:
    """INetworkDefinition creation flags for the plugin graph: prefer the AOT implementations."""
    import tensorrt as trt

    return 1 << int(trt.NetworkDefinitionCreationFlag.PREFER_AOT_PYTHON_PLUGINS)


def _device_arch() -> int:
    """The AOT arch for the current CUDA device (through Triton's driver, which compiles anyway)."""
    import triton

    target = triton.runtime.driver.active.get_current_target()
    cap = int(target.arch)
    return arch_for_capability(cap // 10, cap % 10)


def _aot_result(trtp, kernel, launch, dims):
    cfg = launch_config(launch, kernel, *dims, lift=trtp.ShapeExpr)
    params = trtp.KernelLaunchParams()
    for field in ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z", "shared_mem"):
        setattr(params, field, cfg[field])
    extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in cfg["extra_args"]])
    return kernel.name, kernel.ptx, params, extra


def register_plugins() -> None:
    """Register "lfm::LfmNpr" and "lfm::LfmTopKPool" with TensorRT (once per process)."""
    global _registered
    with _lock:
        if _registered:
            return
        _register()
        _registered = True


def _register() -> None:
    import tensorrt as trt
    import tensorrt.plugin as trtp

    # ---- LfmNpr ----------------------------------------------------------------------------

    @trtp.register(NPR_ID)
    def npr_desc(x: trtp.TensorDesc, scale: str) -> trtp.TensorDesc:
        if x.dtype != trt.float32:
            raise ValueError(f"{ops.NPR_OP} takes float32 NCHW input in TensorRT, got {x.dtype}; export the plugin "
                             "graph again (export/to_onnx.py casts a uint8 input to float32 before it)")
        dims = npr_output_dims(tuple(x.shape_expr), nhwc=False)
        return trtp.from_shape_expr(tuple(_unwrap(d) for d in dims), dtype=trt.float32)

    @trtp.aot_impl(NPR_ID)
    def npr_aot(x: trtp.TensorDesc, scale: str, outputs: Tuple[trtp.TensorDesc], tactic: int
                ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]:
        from . import aot

        # compiled once per (arch, scale): lfm.kernels.aot caches
        kernel = aot.compile_npr(_device_arch(), input_dtype="float32", scale=ops.parse_scale(scale),
                                 out_dtype="float32", out_layout="NCHW")
        return _aot_result(trtp, kernel, aot.npr_launch, npr_geometry(tuple(x.shape_expr), nhwc=False))

    @trtp.impl(NPR_ID)
    def npr_impl(x: trtp.Tensor, scale: str, outputs: Tuple[trtp.Tensor], stream: int) -> None:
        import torch

        from .npr import npr

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            out = torch.as_tensor(outputs[0], device="cuda")
            out.copy_(npr(torch.as_tensor(x, device="cuda"), scale=ops.parse_scale(scale)))

    # ---- LfmTopKPool -----------------------------------------------------------------------

    @trtp.register(TOP_K_POOL_ID)
    def top_k_pool_desc(maps: trtp.TensorDesc, k: int) -> trtp.TensorDesc:
        if maps.dtype != trt.float32:
            raise ValueError(f"{ops.TOP_K_POOL_OP} takes float32 maps, got {maps.dtype}")
        return trtp.from_shape_expr(top_k_pool_output_dims(tuple(maps.shape_expr), k), dtype=trt.float32)

    @trtp.aot_impl(TOP_K_POOL_ID)
    def top_k_pool_aot(maps: trtp.TensorDesc, k: int, outputs: Tuple[trtp.TensorDesc], tactic: int
                       ) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymIntExprs]:
        from . import aot

        kernel = aot.compile_top_k_pool(_device_arch(), k=int(k))
        return _aot_result(trtp, kernel, aot.top_k_pool_launch, tuple(maps.shape_expr))

    @trtp.impl(TOP_K_POOL_ID)
    def top_k_pool_impl(maps: trtp.Tensor, k: int, outputs: Tuple[trtp.Tensor], stream: int) -> None:
        import torch

        from .top_k_pool import top_k_pool

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            out = torch.as_tensor(outputs[0], device="cuda")
            out.copy_(top_k_pool(torch.as_tensor(maps, device="cuda"), int(k)).reshape(out.shape))
