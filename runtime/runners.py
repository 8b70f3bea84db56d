"""Old home of the runners, kept so that existing imports work: the backends now live in lfm.runtime.backends.

    lfm.runtime.runners.X        ->  lfm.runtime.backends...
    Runner, BackendError         ->  .base
    OnnxRunner                   ->  .onnxrt
    OpenVinoRunner               ->  .openvino_rt
    TorchRunner                  ->  .pyt
    make_runner(checkpoint=, model=, engine=, ...)  ->  .base.make_runner(path, backend=..., ...)

``make_runner`` here keeps its old signature (one of checkpoint / model / engine, ``backend``
for ONNX models) and warns (DeprecationWarning) with the new form.
"""
from __future__ import annotations

import warnings

from .backends import base
from .backends.base import BackendError, Runner
from .backends.onnxrt import PROVIDER_ALIASES, PROVIDER_PREFERENCE, OnnxRunner
from .backends.openvino_rt import OPENVINO_PRECISIONS, OpenVinoRunner, openvino_precision
from .backends.pyt import TorchRunner

BACKENDS = base.backends_for("model")  # the --backend choices for an ONNX model: ("onnxruntime", "openvino")

__all__ = ["BACKENDS", "BackendError", "OPENVINO_PRECISIONS", "OnnxRunner", "OpenVinoRunner", "PROVIDER_ALIASES",
           "PROVIDER_PREFERENCE", "Runner", "TorchRunner", "make_runner", "openvino_precision"]


def make_runner(checkpoint: str | None = None, model: str | None = None, device: str = "auto",
                providers: list[str] | None = None, threads: int | None = None,
                backend: str = "onnxruntime", engine: str | None = None, cuda_graphs: bool = False,
                kernels: bool = False, precision: str = "auto") -> Runner:
    """Deprecated: ``lfm.runtime.backends.make_runner(path, backend=..., ...)``. The runner for one
    of a checkpoint, an ONNX model (run by ``backend``) or a TensorRT engine."""
    warnings.warn("lfm.runtime.runners.make_runner(checkpoint=/model=/engine=...) is deprecated; use "
                  "lfm.runtime.backends.make_runner(path, backend=..., ...)", DeprecationWarning, stacklevel=2)
    # "onnxruntime" was the default for every kind of file; only an ONNX model's is a choice
    named = backend if model is not None or backend != "onnxruntime" else None
    source, backend = base.source_from_flags(checkpoint, model, engine, named)
    return base.make_runner(source, backend=backend, device=device, providers=providers, threads=threads,
                            precision=precision, kernels=kernels, cuda_graphs=cuda_graphs)
