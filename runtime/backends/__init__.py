"""Backends: one runner per inference library (ONNX Runtime, OpenVINO, TensorRT, PyTorch) behind one registry.

    from lfm.runtime.backends import make_runner
    runner = make_runner("lfm.onnx")                      # the backend by extension (.onnx: auto), or backend="openvino"

Layout, as Polygraphy's ``polygraphy/backend/{base,onnxrt,trt,pyt}``:

    base.py          Runner, BackendError, the registry and make_runner
    auto.py          auto, an ONNX model's default: ONNX Runtime or OpenVINO by one rule table
    onnxrt.py        ONNX Runtime (and LFM's custom ops registered for plugin graphs)
    openvino_rt.py   OpenVINO
    pyt.py           PyTorch on a checkpoint (the reference; our Triton kernels)
    trt_engine.py    TensorRT engines
    trt_plan.py      an engine's sidecar, profile and supported versions, without TensorRT
    cuda_support.py  cuda-python plumbing shared by the GPU paths: checks, buffers, stream, slot ring

Importing this package imports ``base`` only; a backend's module (and its library) is imported
when that backend is asked for.
"""
from .base import (REGISTRY, Backend, BackendError, Runner, SourceError, backend_for, backends_for, make_runner,
                   source_from_flags)

__all__ = ["REGISTRY", "Backend", "BackendError", "Runner", "SourceError", "backend_for", "backends_for", "make_runner",
           "source_from_flags"]
