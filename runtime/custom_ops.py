"""LFM's two custom ONNX operators: their contract (names, attributes, numpy references), in one place.

The plugin graph (``export/to_onnx.py --variant plugins``) computes NPR and Top-K pooling as
one node each. The same graph runs in ONNX Runtime on the CPU (numpy implementations below,
registered through onnxruntime-extensions' Python custom ops by the ONNX Runtime backend,
``lfm.runtime.backends.onnxrt``) and in TensorRT (the ``tensorrt.plugin`` definitions in
``kernels/trt_plugins.py``):

    LfmNpr       uint8 [B, H, W, 3] (raw RGB, NHWC) | float32 [B, 3, H, W] (normalised, NCHW)
                 -> float32 [B, 3, H - H%2, W - W%2] = |NPR(x)| * scale[c]
                 NPR(x) = x - nearest_up(x[..., ::2, ::2]) after dropping an odd last row/column;
                 scale: 1 / (255 std) for the uint8 input (the normalisation folded in), 1, 1, 1
                 for the float input. The exporter's uint8 graph feeds LfmNpr float32 NCHW (a Cast,
                 then a Transpose, of the bytes: TensorRT's plugins take no uint8 tensors) with the
                 1 / (255 std) scale, the same values exactly; the uint8 form stays for older graphs.
    LfmTopKPool  float32 [B, C, H, W] -> float32 [B, C * k]: per channel the k largest values,
                 sorted descending, channel-major (torch.topk: NaN counts as the largest);
                 H * W < k is an error.

Both nodes carry ``plugin_namespace = "lfm"`` and ``plugin_version = "1"`` (strings), so
TensorRT's ONNX parser finds the plugins "lfm::LfmNpr" and "lfm::LfmTopKPool": it looks a
plugin up by the node's op type plus those two attributes and ignores the node's domain. It
hands every other attribute the plugin declares over as a plugin field (INT -> INT32,
FLOAT -> FLOAT32, STRING -> CHAR with a trailing NUL, FLOATS -> FLOAT32 array).

Why ``scale`` is a STRING attribute ("s0,s1,s2") and not a FLOATS one: onnxruntime-extensions'
Python custom ops read only scalar int64, float and string attributes. A FLOATS attribute is
refused at session creation ("Attribute name and type don't match", onnxruntime-extensions
0.15.2 with onnxruntime 1.32), and a float attribute reaches Python printed with 6 significant
digits (0.0171247538 -> 0.0171248). The string holds each float32 in its shortest exact
decimal form, so ONNX Runtime and TensorRT (a ``str`` attribute of the QDP plugin) both get
the very float32 values the standard graph multiplies by. ``k`` is an INT attribute.

The domain is ``ai.onnx.contrib``: onnxruntime-extensions' Python ops default to it, and the
TensorRT parser does not look at domains, so one graph serves both.

numpy and the standard library only, and of the runtime only onnx_wire (the protobuf reader, standard
library): the backends, the exporter and the TensorRT plugins all import this module, never the
other way round.
"""
from __future__ import annotations

import os

import numpy as np

from .onnx_wire import opset_domains

DOMAIN = "ai.onnx.contrib"
DOMAIN_VERSION = 1
NPR_OP = "LfmNpr"
TOP_K_POOL_OP = "LfmTopKPool"
OP_TYPES = (NPR_OP, TOP_K_POOL_OP)
PLUGIN_NAMESPACE = "lfm"
PLUGIN_VERSION = "1"  # tensorrt.plugin registers every plugin as version "1"
PLUGIN_IDS = {op: f"{PLUGIN_NAMESPACE}::{op}" for op in OP_TYPES}  # "lfm::LfmNpr", "lfm::LfmTopKPool"
DEFAULT_TOP_K = 16
EXTRA = "plugins"  # pip install -e '.[plugins]'
INSTALL_HINT = f"pip install -e '.[{EXTRA}]' (onnxruntime-extensions)"

__all__ = [
    "DOMAIN", "DOMAIN_VERSION", "NPR_OP", "TOP_K_POOL_OP", "OP_TYPES", "PLUGIN_NAMESPACE", "PLUGIN_VERSION",
    "PLUGIN_IDS", "DEFAULT_TOP_K", "format_scale", "parse_scale", "npr_attributes", "top_k_pool_attributes",
    "npr", "top_k_pool", "uses_custom_ops",
]


# ----------------------------------------------------------------------------------------------
# Attributes


def format_scale(scale) -> str:
    """Three per-channel multipliers -> the ``scale`` attribute: each float32 in its shortest exact form."""
    values = np.asarray(scale, dtype=np.float32).reshape(-1)
    if values.shape != (3,) or not np.all(np.isfinite(values)):
        raise ValueError(f"scale must be 3 finite numbers, got {scale!r}")
    return ",".join(str(v) for v in values)


def parse_scale(text) -> tuple[float, float, float]:
    """The ``scale`` attribute -> three Python floats holding float32 values. Accepts bytes and the
    trailing NUL TensorRT's parser appends to a string field."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8")
    parts = str(text).strip().rstrip("\x00").strip().split(",")
    try:
        values = tuple(float(np.float32(p)) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3 or not all(np.isfinite(values)):
        raise ValueError(f"{NPR_OP}: attribute scale must be three comma-separated numbers, got {text!r}")
    return values  # type: ignore[return-value]


def npr_attributes(scale) -> dict[str, str]:
    """The LfmNpr node's attributes, exactly."""
    return {"scale": format_scale(scale), "plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION}


def top_k_pool_attributes(k: int = DEFAULT_TOP_K) -> dict[str, object]:
    """The LfmTopKPool node's attributes, exactly."""
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return {"k": int(k), "plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": PLUGIN_VERSION}


# ----------------------------------------------------------------------------------------------
# numpy implementations (what ONNX Runtime runs on the CPU; also the references for the kernels)


def npr(x: np.ndarray, scale) -> np.ndarray:
    """LfmNpr: uint8 [B, H, W, 3] or float32 [B, 3, H, W] -> float32 [B, 3, H - H%2, W - W%2].

    |x - nearest_up(x[..., ::2, ::2])| * scale[c], in float32 as the standard graph computes it
    (exact on bytes before the scaling)."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{NPR_OP}: expected a 4-D input, got shape {list(x.shape)}")
    if x.dtype == np.uint8:
        if x.shape[3] != 3:
            raise ValueError(f"{NPR_OP}: uint8 input must be [B, H, W, 3] (NHWC RGB), got {list(x.shape)}")
        x = x.transpose(0, 3, 1, 2)
    elif x.dtype == np.float32:
        if x.shape[1] != 3:
            raise ValueError(f"{NPR_OP}: float32 input must be [B, 3, H, W] (NCHW), got {list(x.shape)}")
    else:
        raise ValueError(f"{NPR_OP}: input must be uint8 NHWC or float32 NCHW, got {x.dtype}")
    b, c, h, w = x.shape
    h2, w2 = h - h % 2, w - w % 2
    if h2 == 0 or w2 == 0:
        raise ValueError(f"{NPR_OP}: input of {h}x{w} pixels is too small (at least 2x2)")
    # View each 2x2 block on its own axes; the block's top-left value is what nearest_up copies.
    x = x[:, :, :h2, :w2].astype(np.float32).reshape(b, c, h2 // 2, 2, w2 // 2, 2)
    out = np.abs(x - x[:, :, :, :1, :, :1]).reshape(b, c, h2, w2)
    s = np.asarray(parse_scale(scale) if isinstance(scale, (str, bytes)) else scale, dtype=np.float32)
    return out * s.reshape(1, 3, 1, 1)


def top_k_pool(maps: np.ndarray, k: int = DEFAULT_TOP_K) -> np.ndarray:
    """LfmTopKPool: float32 [B, C, H, W] -> float32 [B, C * k], the k largest per channel, sorted
    descending, channel-major; NaN counts as the largest value (torch.topk)."""
    maps = np.asarray(maps)
    k = int(k)
    if maps.ndim != 4:
        raise ValueError(f"{TOP_K_POOL_OP}: expected [B, C, H, W], got shape {list(maps.shape)}")
    b, c, h, w = maps.shape
    n = h * w
    if k < 1 or n < k:
        raise ValueError(f"{TOP_K_POOL_OP}: maps of {h}x{w} = {n} values cannot give the top k={k} "
                         "(the input image is too small)")
    flat = maps.reshape(b, c, n).astype(np.float32, copy=False)
    # numpy orders NaN after every number, so the k largest (NaN first, as torch.topk) are the
    # last k in ascending order, reversed.
    top = np.partition(flat, n - k, axis=-1)[..., n - k:] if k < n else flat
    top = np.sort(top, axis=-1)[..., ::-1]
    return np.ascontiguousarray(top.reshape(b, c * k), dtype=np.float32)


# ----------------------------------------------------------------------------------------------
# Finding the ops in a graph (no onnx needed)


def uses_custom_ops(model) -> bool:
    """True for a graph that imports our custom-op domain (a path, serialized bytes or an onnx
    ModelProto). An unreadable or malformed file says False: loading it reports the real problem."""
    if hasattr(model, "opset_import"):
        return any(o.domain == DOMAIN for o in model.opset_import)
    try:
        if isinstance(model, (bytes, bytearray, memoryview)):
            data = bytes(model)
        else:
            with open(os.fspath(model), "rb") as f:
                data = f.read()
        return DOMAIN in opset_domains(data)
    except (OSError, ValueError, IndexError):
        return False
