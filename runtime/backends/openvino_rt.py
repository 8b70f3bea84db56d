"""OpenVINO as a runner, on the same exported ONNX graph (an optional extra: pip install -e '.[openvino]').

``openvino_precision`` picks the inference precision that keeps the fp32 model's decisions for a
graph; the runner compiles one model per input shape it sees first. openvino is imported in
``activate`` only.
"""
from __future__ import annotations

import json
import os
import threading

import numpy as np

from ..custom_ops import OP_TYPES, uses_custom_ops
from ..files import first_line
from ..spec import ModelSpec
from .base import OPENVINO_PRECISIONS, BackendError, Runner



def openvino_precision(spec: ModelSpec, model_precision: str, requested: str | None = "auto") -> tuple[str, str]:
    """(inference precision hint, why) for OpenVINO, which on CPUs with AVX512-BF16/AMX lowers
    float work to bf16 unless told otherwise. ``auto`` keeps the fp32 model's decisions:

    - float-input graphs: f32. bf16 keeps ~3 significant digits of the normalised pixels, whose
      2x2 differences (NPR, ~0.02 per grey level) it erases: measured on a bf16 CPU, 5 of 80
      cross-domain images flipped, median |dlogit| 4.8 (issue 13).
    - INT8 graphs: f32 for their float layers, kept fp32 by the export because they could not
      lose precision (conv1, conv2, salience, fc).
    - uint8-input fp32/fp16 graphs: bf16. NPR of bytes is exact in bf16 (integers to 256), so
      bf16 costs only its relative rounding in the convolutions: 0 of 80 flips, median |dlogit|
      0.12 on a bf16 CPU (issue 13; not re-measured on CPUs without bf16, where OpenVINO runs
      f32 whatever the hint).
    """
    requested = requested or "auto"
    if requested not in OPENVINO_PRECISIONS:
        raise BackendError(f"unknown OpenVINO precision {requested!r}; expected one of {OPENVINO_PRECISIONS}")
    if requested != "auto":
        return requested, "asked for"
    if spec.input != "uint8":
        return "f32", "auto: float-input graph"
    if model_precision == "int8":
        return "f32", "auto: INT8 graph, float layers kept fp32"
    return "bf16", "auto: uint8-input graph"


class OpenVinoRunner(Runner):
    """OpenVINO on the same exported ONNX graph (an optional extra: pip install -e '.[openvino]').

    OpenVINO keeps ONNX metadata_props under rt_info["framework"], so the spec travels as with
    ONNX Runtime. ``precision`` is OpenVINO's inference precision hint, "auto" (default: the
    precision that keeps the fp32 model's decisions for this graph, see ``openvino_precision``),
    "f32", "bf16" or "f16"; ``inference_precision`` says what the compiled model uses (a CPU
    without bf16/f16 runs f32 whatever the hint).

    OpenVINO runs a model compiled for one static shape about 8-9 % faster than the dynamic one
    (2-core EPYC, 224 px, batch 8: INT8 256 -> 280 images/s, fp32 143 -> 153), so the first
    ``static_shapes`` input shapes seen (a detector sees few: the batch size and the last, short
    batch) each get their own compiled model; any further shape runs on the dynamic one.

    Thread-safe, as ONNX Runtime's session.run is: an InferRequest runs one inference at a time
    (a second thread's call fails with "Infer Request is busy"), so each compiled model's request
    is used under its own lock, and the compiled models are added under another.
    """

    name = "openvino"

    def __init__(self, path: str | os.PathLike, device: str = "CPU", precision: str | None = "auto",
                 threads: int | None = None, static_shapes: int = 4):
        super().__init__()
        if (precision or "auto") not in OPENVINO_PRECISIONS:
            raise BackendError(f"unknown precision {precision!r}; expected one of {OPENVINO_PRECISIONS}")
        self.path, self.device, self.precision, self.threads = os.fspath(path), device, precision, threads
        self.static_shapes = static_shapes

    def activate_impl(self):
        try:
            import openvino as ov
        except ImportError:
            raise BackendError("--backend openvino needs OpenVINO: pip install -e '.[openvino]'") from None
        if not os.path.isfile(self.path):
            raise BackendError(f"{self.path}: no such file")
        if uses_custom_ops(self.path):
            raise BackendError(f"{self.path}: a plugin graph (custom ops {', '.join(OP_TYPES)}), which OpenVINO cannot "
                               "run; use the ONNX Runtime backend or export --variant standard")
        self.core = ov.Core()
        try:
            self.model = self.core.read_model(self.path)
        except Exception as e:
            raise BackendError(f"{self.path}: OpenVINO cannot read it ({first_line(e)})") from None
        if not self.model.has_rt_info(["framework", "lfm.spec"]):
            raise BackendError(f"{self.path}: no lfm.spec metadata; export it with export/to_onnx.py")
        self.spec = ModelSpec.from_dict(json.loads(self.model.get_rt_info(["framework", "lfm.spec"]).astype(str)))
        model_precision = (self.model.get_rt_info(["framework", "lfm.precision"]).astype(str)
                           if self.model.has_rt_info(["framework", "lfm.precision"]) else "fp32")
        self.precision_hint, self.precision_reason = openvino_precision(self.spec, model_precision, self.precision)
        self.config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": self.precision_hint}
        if self.threads:
            self.config["INFERENCE_NUM_THREADS"] = self.threads
        self.dynamic = self._compile(self.model)
        self.by_shape = {}  # input shape -> (compiled model, infer request, the request's lock)
        self.compiling = threading.Lock()
        # What the compiled model really computes in: a CPU without bf16 runs f32 whatever the hint.
        self.inference_precision = self.dynamic[0].get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def describe(self) -> str:
        return (f"openvino {self.device}, inference precision {self.inference_precision} "
                f"(hint {self.precision_hint}: {self.precision_reason})")

    def _compile(self, model):
        compiled = self.core.compile_model(model, self.device, self.config)
        return compiled, compiled.create_infer_request(), threading.Lock()

    def deactivate_impl(self):
        del self.dynamic, self.by_shape, self.model, self.core

    def infer_impl(self, feed):
        (x,) = feed.values()
        compiled, request, lock = self._compiled_for(tuple(x.shape))
        with lock:  # the request's outputs are overwritten by its next inference: copied before release
            out = request.infer([x])
            return {"logit": np.asarray(out[compiled.output("logit")]).copy()}

    def _compiled_for(self, shape: tuple[int, ...]):
        """(compiled model, request, lock) for inputs of ``shape``: its own, compiled on first
        sight while fewer than ``static_shapes`` exist, else the dynamic one."""
        entry = self.by_shape.get(shape)
        if entry is not None:
            return entry
        with self.compiling:
            if shape not in self.by_shape and len(self.by_shape) < self.static_shapes:
                model = self.model.clone()
                model.reshape({model.inputs[0].get_any_name(): list(shape)})
                self.by_shape[shape] = self._compile(model)
            return self.by_shape.get(shape, self.dynamic)
