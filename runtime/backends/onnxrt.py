"""ONNX Runtime as a runner, with LFM's custom ops registered for plugin graphs.

The runner runs an exported LFM graph (float or uint8 input, fp32/fp16/INT8; standard or plugin
graph). A plugin graph (``export/to_onnx.py --variant plugins``) computes NPR and Top-K pooling
as one custom node each; ONNX Runtime runs them as the numpy functions of
``lfm.runtime.custom_ops`` (the ops' contract), registered here through onnxruntime-extensions'
Python custom ops (optional extra: ``pip install -e '.[plugins]'``). onnxruntime and
onnxruntime-extensions are imported on use only.
"""
from __future__ import annotations

import json
import os
import threading
import warnings

import numpy as np

from ..custom_ops import INSTALL_HINT, NPR_OP, OP_TYPES, TOP_K_POOL_OP, npr, parse_scale, top_k_pool, uses_custom_ops
from ..files import first_line
from ..spec import ModelSpec
from .base import BackendError, Runner, provider_list

PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PROVIDER_ALIASES = {"tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
                    "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


class OnnxRunner(Runner):
    """ONNX Runtime on an exported LFM graph (float or uint8 input, fp32/fp16/INT8).

    The preprocessing spec comes from the model's own metadata (``lfm.spec``). Providers:
    TensorRT, then CUDA, then CPU, whichever this onnxruntime build has, unless given.
    """

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, providers: str | list[str] | None = None, threads: int | None = None):
        super().__init__()
        self.path = os.fspath(path)
        self.requested_providers = provider_list(providers)  # "cpu", "cuda,cpu" or a list
        self.threads = threads

    def activate_impl(self):
        if not os.path.isfile(self.path):
            raise BackendError(f"{self.path}: no such file" if not os.path.exists(self.path) else f"{self.path}: not a file")
        try:
            # One inference at a time uses every core; decoding threads overlap with it.
            self.session = inference_session(self.path, providers=self.requested_providers,
                                             threads=self.threads or (os.cpu_count() or 1), inter_op_threads=1,
                                             optimization="all")
        except BackendError:
            raise
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            raise BackendError(f"{self.path}: not a loadable ONNX model ({first_line(e)})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "lfm.spec" not in meta:
            raise BackendError(f"{self.path}: no lfm.spec metadata; export it with export/to_onnx.py")
        self.spec = ModelSpec.from_dict(json.loads(meta["lfm.spec"]))
        self.metadata = dict(meta)
        self.providers = self.session.get_providers()
        (self.input_name,) = [i.name for i in self.session.get_inputs()]

    def deactivate_impl(self):
        del self.session

    def describe(self) -> str:
        return f"onnxruntime {', '.join(self.providers)}, model precision {self.metadata.get('lfm.precision', 'fp32')}"

    def infer_impl(self, feed):
        (x,) = feed.values()
        (logit,) = self.session.run(["logit"], {self.input_name: x})
        return {"logit": logit}


# ----------------------------------------------------------------------------------------------
# The one place the project builds an onnxruntime.InferenceSession

OPTIMIZATION_LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC",
                       "extended": "ORT_ENABLE_EXTENDED", "all": "ORT_ENABLE_ALL"}


def session_providers(providers) -> list[str]:
    """ONNX Runtime's provider names for ``providers`` (see ``provider_list``: "cpu", "cuda,cpu", a
    list, aliases or ONNX Runtime's own names); None: TensorRT, CUDA, CPU, whichever this build has.
    A provider this build lacks is a BackendError."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    requested = provider_list(providers)
    if not requested:
        return [p for p in PROVIDER_PREFERENCE if p in available]
    names = [PROVIDER_ALIASES.get(p.lower(), p) for p in requested]
    missing = [p for p in names if p not in available]
    if missing:
        raise BackendError(f"onnxruntime provider(s) {missing} not available here; available: {available}")
    return names


def inference_session(model, *, providers=None, threads: int | None = None, inter_op_threads: int | None = None,
                      optimization: str | None = None, log_severity: int | None = None,
                      profile_prefix: str | None = None):
    """An ``onnxruntime.InferenceSession`` on ``model`` (a path, serialized bytes or an onnx
    ModelProto), with the project's conventions: providers parsed by ``session_providers``; a
    plugin graph gets LFM's custom ops registered (``session_options_for``). Every option left
    None keeps ONNX Runtime's default: ``threads`` (intra-op), ``inter_op_threads``,
    ``optimization`` (a key of OPTIMIZATION_LEVELS), ``log_severity`` (0 verbose .. 4 fatal),
    ``profile_prefix`` (turns profiling on, files named from it)."""
    import onnxruntime as ort

    if hasattr(model, "SerializeToString"):
        model = model.SerializeToString()
    elif isinstance(model, (bytearray, memoryview)):
        model = bytes(model)
    elif not isinstance(model, bytes):
        model = os.fspath(model)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if inter_op_threads:
        options.inter_op_num_threads = inter_op_threads
    if optimization is not None:
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, OPTIMIZATION_LEVELS[optimization])
    if log_severity is not None:
        options.log_severity_level = log_severity
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    options = session_options_for(model, options)
    return ort.InferenceSession(model, options, providers=session_providers(providers))


# ----------------------------------------------------------------------------------------------
# LFM's custom ops in ONNX Runtime, through onnxruntime-extensions


def session_options_for(model, so=None):
    """ONNX Runtime session options for ``model``: for a graph that uses LFM's custom ops, the ops
    registered and onnxruntime-extensions' library added to ``so`` (a new SessionOptions when None);
    any other graph gets ``so`` back untouched. A missing onnxruntime-extensions is a BackendError."""
    if so is None:
        import onnxruntime as ort

        so = ort.SessionOptions()
    if uses_custom_ops(model):
        so.register_custom_ops_library(register_ops())
    return so


_lock = threading.Lock()
_registered = False


def _extensions():
    try:
        import onnxruntime_extensions
    except ImportError:
        raise BackendError(f"this model uses LFM's custom ops ({', '.join(OP_TYPES)}), which ONNX Runtime runs "
                           f"through onnxruntime-extensions: {INSTALL_HINT}") from None
    return onnxruntime_extensions


def register_ops() -> str:
    """Register both ops with onnxruntime-extensions' Python custom ops (once per process; further
    calls do nothing). Returns the custom-op library path to hand to ``register_custom_ops_library``."""
    global _registered
    ortx = _extensions()
    with _lock:
        if not _registered:
            P = ortx.PyCustomOpDef
            # One LfmNpr kernel per input type; ONNX Runtime picks by the node's input type.
            for dtype in (P.dt_uint8, P.dt_float):
                ortx.onnx_op(op_type=NPR_OP, inputs=[dtype], outputs=[P.dt_float],
                             attrs={"scale": P.dt_string})(_ort_npr)
            ortx.onnx_op(op_type=TOP_K_POOL_OP, inputs=[P.dt_float], outputs=[P.dt_float],
                         attrs={"k": P.dt_int64})(_ort_top_k_pool)
            _registered = True
    return ortx.get_library_path()


# A Python exception inside an onnxruntime-extensions op aborts the whole process (it crosses
# ONNX Runtime's C boundary as an uncaught C++ exception). So the ops never raise: a refused
# input yields an empty float32 output, the next node fails with an ordinary, catchable ONNX
# Runtime error, and the reason goes to stderr as a RuntimeWarning.
_REFUSED = np.zeros((0,), np.float32)


def _refuse(error: Exception) -> np.ndarray:
    warnings.warn(f"{error} (the next node of the graph reports the failure)", RuntimeWarning, stacklevel=2)
    return _REFUSED


def _ort_npr(x, scale):
    try:
        return npr(x, parse_scale(scale))
    except Exception as e:  # noqa: BLE001  (see above: never raise into ONNX Runtime)
        return _refuse(e)


def _ort_top_k_pool(maps, k):
    try:
        return top_k_pool(maps, int(k))
    except Exception as e:  # noqa: BLE001
        return _refuse(e)
