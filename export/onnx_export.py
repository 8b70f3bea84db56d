"""PyTorch LFM -> ONNX: the graph wrappers, the export, simplification and metadata (checking and
writing the file: export/onnx_files.py).

Two input variants, both with dynamic batch, height and width and outputs ``logit`` [B] and
``score`` [B] (sigmoid of the logit):

    float   image  float32 [B, 3, H, W]  normalised RGB, as upstream
    uint8   pixels uint8   [B, H, W, 3]  raw RGB bytes, as decoded

The uint8 graph folds the normalisation into NPR. NPR is linear and the mean is constant over
each 2x2 block, so for x_norm = (x / 255 - mean) / std:

    |NPR(x_norm)| = |NPR(x)| / (255 * std)       (per channel; the mean cancels)

and the graph scales |NPR| of the raw bytes by one constant per channel: no float image is
ever materialised by the runtime.

Two graph variants: ``standard`` (ONNX operators only) and ``plugins``, where NPR (with the
scaling) and Top-K pooling are one custom node each, ``LfmNpr`` and ``LfmTopKPool`` in the
domain ``ai.onnx.contrib`` (contract: ``lfm.runtime.custom_ops``). The plugin graph is what
TensorRT builds with LFM's plugins; ONNX Runtime runs it on the CPU through the numpy ops.
"""
from __future__ import annotations

import json
import os
import tempfile
import warnings

import torch
import torch.nn as nn

from lfm.runtime import custom_ops
from lfm.runtime.spec import ModelSpec
from lfm.train.model import LFM, NPR

EXPORTER_VERSION = "lfm-deploy-export/1"
INPUT_NAMES = {"float": "image", "uint8": "pixels"}
OUTPUT_NAMES = ("logit", "score")
MIN_OPSET = 17


def max_opset() -> int:
    """The newest opset this PyTorch's TorchScript exporter (dynamo=False, used here) writes."""
    from torch.onnx import _constants

    return int(getattr(_constants, "ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET", 20))
VARIANTS = ("standard", "plugins")


class FloatInputLFM(nn.Module):
    """image float32 [B, 3, H, W] (normalised) -> (logit [B], score [B])."""

    def __init__(self, model: LFM):
        super().__init__()
        self.model = model.eval()

    def forward(self, image):
        logit = self.model(image)
        return logit, torch.sigmoid(logit)


class Uint8InputLFM(nn.Module):
    """pixels uint8 [B, H, W, 3] (raw RGB) -> (logit [B], score [B]); normalisation folded into NPR."""

    def __init__(self, model: LFM, std):
        super().__init__()
        self.model = model.eval()
        scale = 1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))
        self.register_buffer("scale", scale.view(1, 3, 1, 1))

    def forward(self, pixels):
        # Cast, then Transpose: TensorRT takes a uint8 network input only into a Cast (bytes are exact in float32)
        x = pixels.to(torch.float32).permute(0, 3, 1, 2)
        return self._head(self.model.npr(x).abs() * self.scale)

    def _head(self, residual_abs):
        logit = self.model.logit_from_residual(residual_abs)
        return logit, torch.sigmoid(logit)


class _NprOp(torch.autograd.Function):
    """LfmNpr: the torch reference runs while tracing; the graph gets one custom node."""

    @staticmethod
    def forward(ctx, x, scale: tuple, nhwc: bool):
        if nhwc:
            x = x.permute(0, 3, 1, 2).to(torch.float32)
        return NPR()(x).abs() * torch.tensor(scale, dtype=torch.float32).view(1, 3, 1, 1)

    @staticmethod
    def symbolic(g, x, scale, nhwc):
        attrs = {f"{k}_s": v for k, v in custom_ops.npr_attributes(scale).items()}
        out = g.op(f"{custom_ops.DOMAIN}::{custom_ops.NPR_OP}", x, **attrs)
        out.setType(x.type().with_dtype(torch.float32).with_sizes([None, 3, None, None]))
        return out


class _TopKPoolOp(torch.autograd.Function):
    """LfmTopKPool: torch.topk while tracing (TopKPool's semantics); one custom node in the graph."""

    @staticmethod
    def forward(ctx, maps, k: int, channels: int):
        return torch.topk(maps.flatten(2), k, dim=-1, largest=True, sorted=True).values.flatten(1)

    @staticmethod
    def symbolic(g, maps, k, channels):
        attrs = custom_ops.top_k_pool_attributes(k)
        out = g.op(f"{custom_ops.DOMAIN}::{custom_ops.TOP_K_POOL_OP}", maps, k_i=attrs["k"],
                   plugin_namespace_s=attrs["plugin_namespace"], plugin_version_s=attrs["plugin_version"])
        out.setType(maps.type().with_dtype(torch.float32).with_sizes([None, channels * k]))
        return out


class PluginLFM(nn.Module):
    """Either input variant -> (logit [B], score [B]) with NPR and Top-K pooling as custom nodes.

    uint8: the bytes are cast to float32 and put in NCHW order first (Cast, then Transpose: TensorRT's
    plugins take no uint8 tensors, and a uint8 network input may only meet a Cast), then LfmNpr scales
    by 1 / (255 std) (the same float32 constants as Uint8InputLFM); bytes are exact in float32, so the
    values are those of the uint8 path. float: LfmNpr scales by 1, 1, 1. What lies between the two
    nodes (SNet, salience) and after (fc) is unchanged."""

    def __init__(self, model: LFM, input_variant: str, std):
        super().__init__()
        if model.config.pooling != "topk":
            raise ValueError(f"the plugin graph needs Top-K pooling; this model uses pooling={model.config.pooling!r}")
        self.model = model.eval()
        self.nhwc = input_variant == "uint8"
        if self.nhwc:
            self.scale = tuple((1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).tolist())
        else:
            self.scale = (1.0, 1.0, 1.0)
        self.k, self.channels = model.config.top_k, model.config.salience_channels

    def forward(self, x):
        m = self.model
        if self.nhwc:  # Cast first: TensorRT takes a uint8 network input only into a Cast
            x = x.to(torch.float32).permute(0, 3, 1, 2)
        maps = m.salience(m.snet(_NprOp.apply(x, self.scale, False)))
        logit = m.fc(_TopKPoolOp.apply(maps, self.k, self.channels)).squeeze(-1)
        return logit, torch.sigmoid(logit)


def wrap(model: LFM, spec: ModelSpec, input_variant: str, variant: str = "standard") -> nn.Module:
    if input_variant not in INPUT_NAMES:
        raise ValueError(f"unknown input variant {input_variant!r}; expected 'float' or 'uint8'")
    if variant == "plugins":
        return PluginLFM(model, input_variant, spec.std).eval()
    if variant != "standard":
        raise ValueError(f"unknown graph variant {variant!r}; expected one of {VARIANTS}")
    if input_variant == "float":
        return FloatInputLFM(model).eval()
    return Uint8InputLFM(model, spec.std).eval()


def example_input(input_variant: str, batch: int = 2, height: int = 224, width: int = 224) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if input_variant == "uint8":
        return torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8, generator=g)
    return torch.randn(batch, 3, height, width, generator=g)



def metadata(spec: ModelSpec, *, precision: str, source: str | None, source_sha256: str | None,
             variant: str = "standard", extra: dict | None = None) -> dict[str, str]:
    """The model's own description, written into metadata_props and read back by the runtime."""
    layout = "NHWC" if spec.input == "uint8" else "NCHW"
    props = {
        "lfm.spec": spec.replace(layout=layout).to_json(),
        "lfm.input": spec.input,
        "lfm.layout": layout,
        "lfm.policy": spec.policy,
        "lfm.size": str(spec.size),
        "lfm.mean": json.dumps(list(spec.mean)),
        "lfm.std": json.dumps(list(spec.std)),
        "lfm.threshold": repr(spec.threshold),
        "lfm.top_k": str(spec.top_k),
        "lfm.precision": precision,
        "lfm.variant": variant,
        "lfm.source": os.path.basename(source) if source else "",
        "lfm.source_sha256": source_sha256 or "",
        "lfm.exporter": EXPORTER_VERSION,
        "lfm.torch": torch.__version__,
    }
    props.update(extra or {})
    return props


def torch_to_onnx(model: LFM, spec: ModelSpec, input_variant: str, opset: int = MIN_OPSET, variant: str = "standard"):
    """Export the wrapped model; returns the onnx ModelProto (not yet checked or simplified).
    ``variant="plugins"``: NPR and Top-K pooling as LFM's custom nodes (see PluginLFM)."""
    import onnx

    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is not supported: LFM's export needs opset {MIN_OPSET} or newer")
    net = wrap(model, spec, input_variant, variant)
    x = example_input(input_variant)
    name = INPUT_NAMES[input_variant]
    h_axis, w_axis = (1, 2) if input_variant == "uint8" else (2, 3)
    dims = {0: "batch", h_axis: "height", w_axis: "width"}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        path = os.path.join(tmp, "model.onnx")
        # TorchScript-based exporter: exact, fast, and it keeps dynamic H/W through the odd-size crop.
        torch.onnx.export(net, (x,), path, input_names=[name], output_names=list(OUTPUT_NAMES),
                          dynamic_axes={name: dims, "logit": {0: "batch"}, "score": {0: "batch"}},
                          opset_version=opset, dynamo=False, do_constant_folding=True,
                          custom_opsets={custom_ops.DOMAIN: custom_ops.DOMAIN_VERSION} if variant == "plugins" else None)
        model.eval()  # export restores the wrapper's mode, which can leave the caller's model in train mode
        return onnx.load(path)


def simplify(model_proto):
    """onnxslim (measured against onnxsim on this graph: see README); returns the simplified proto."""
    import onnxslim

    return onnxslim.slim(model_proto)
