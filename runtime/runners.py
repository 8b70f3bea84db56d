"""Backends as Polygraphy-style runners: one small interface, one runner per backend.

    runner = make_runner("ckpt.pt")      # chosen by file type
    with runner:                          # activate() ... deactivate()
        out = runner.infer({"image": x})  # float32 [B, 3, H, W] normalised, or {"pixels": uint8 [B, H, W, 3]}
        out["logit"]                      # float32 [B]

Heavy libraries are imported in ``activate``, never at module import: the lean runtime does not
pull in torch unless the torch backend is asked for.
"""
from __future__ import annotations

import os

import numpy as np

from .spec import ModelSpec


class BackendError(RuntimeError):
    """A model that cannot be loaded or run; the message names the file and the problem."""


class Runner:
    """activate() loads; infer(feed) -> {"logit": [B]}; deactivate() frees. ``spec`` is the
    model's preprocessing spec, valid once active."""

    name = "runner"
    spec: ModelSpec

    def __init__(self):
        self.is_active = False

    def activate(self) -> "Runner":
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise BackendError(f"{self.name}: infer() before activate()")
        return self.infer_impl(feed)

    # Batches in flight: submit(feed) starts a batch and returns a handle, result(handle) waits for
    # its outputs. A runner that overlaps batches (TensorRT) overrides both and raises
    # max_in_flight; by default submit runs the batch at once, so callers need no second path.
    max_in_flight = 1

    def submit(self, feed: dict[str, np.ndarray]):
        return self.infer(feed)

    def result(self, handle) -> dict[str, np.ndarray]:
        return handle

    def describe(self) -> str:
        """One line for a run's summary: the backend and what it computes in (valid once active)."""
        return self.name

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc):
        self.deactivate()

    # subclasses
    def activate_impl(self): ...

    def deactivate_impl(self): ...

    def infer_impl(self, feed): raise NotImplementedError


class TorchRunner(Runner):
    """PyTorch on a checkpoint (ours or upstream's). By default the model as trained, eager, in
    true fp32: the reference backend. ``kernels=True``: ``lfm.kernels.triton_lfm.TritonLFM``, our
    fastest GPU path (uint8 pixels in, the fused Triton stem and Top-K kernels, float16 cuDNN
    convolutions); it needs a CUDA GPU (on a CPU the kernels run only in Triton's interpreter,
    TRITON_INTERPRET=1, slowly, in float32: for checks). ``cuda_graphs=True`` on a GPU captures each
    batch shape once as a CUDA graph and replays it (fewer launches; most useful at small batches).
    """

    name = "torch"

    def __init__(self, checkpoint: str | os.PathLike, device: str = "auto", kernels: bool = False,
                 cuda_graphs: bool = False):
        super().__init__()
        self.checkpoint = os.fspath(checkpoint)
        self.device_name = device
        self.kernels = kernels
        self.cuda_graphs = cuda_graphs
        if kernels:
            self.name = "torch-kernels"

    def activate_impl(self):
        try:
            import torch  # noqa: F401  (lazy: only this backend needs torch)
            from lfm.train.checkpoint import CheckpointError, load_checkpoint
            from lfm.train.model import use_exact_fp32
        except ImportError as e:
            raise BackendError(
                f"--checkpoint needs PyTorch and the training package ({e}); install with: pip install -e '.[train]'"
            ) from None
        self._torch = torch
        try:
            loaded = load_checkpoint(self.checkpoint)
        except CheckpointError as e:
            raise BackendError(str(e)) from None
        dev = self.device_name
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(dev)
        except RuntimeError as e:
            raise BackendError(f"--device {dev}: {e}") from None
        on_gpu = self.device.type == "cuda"
        if on_gpu and not torch.cuda.is_available():
            raise BackendError(f"--device {dev}: no CUDA GPU visible to PyTorch")
        self.spec = loaded.spec
        if self.kernels:
            self.model = self._kernel_model(loaded, on_gpu)
            # TritonLFM takes the decoded bytes as they are: the normalisation is folded into its stem
            self.spec = loaded.spec.replace(input="uint8", layout="NHWC")
        else:
            if on_gpu:
                use_exact_fp32()  # the reference backend: true fp32, no TF32
            self.model = loaded.model.to(self.device).eval()
        self._graphs = {}  # input shape -> (static input, graph, static output)

    def _kernel_model(self, loaded, on_gpu: bool):
        torch = self._torch
        try:
            from lfm.kernels.triton_lfm import TritonLFM
        except ImportError as e:
            raise BackendError(f"--kernels needs Triton ({e}); install with: pip install -e '.[train,kernels]'") from None
        if not on_gpu and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            raise BackendError(f"--kernels runs Triton kernels on a CUDA GPU (device here: {self.device}); on a CPU "
                               "they run only in Triton's interpreter (TRITON_INTERPRET=1: slow, for checks)")
        try:
            net = TritonLFM(loaded.model.eval(), loaded.spec.std, dtype=torch.float16 if on_gpu else torch.float32)
        except ValueError as e:
            raise BackendError(f"{self.checkpoint}: {e}") from None
        return net.to(self.device).eval()

    def deactivate_impl(self):
        del self.model
        self._graphs.clear()

    def infer_impl(self, feed):
        torch = self._torch
        if self.kernels:
            x = torch.from_numpy(np.ascontiguousarray(feed["pixels"], dtype=np.uint8))
        else:
            x = torch.from_numpy(np.ascontiguousarray(feed["image"], dtype=np.float32))
        x = x.to(self.device)
        with torch.inference_mode():
            if self.cuda_graphs and self.device.type == "cuda":
                logit = self._replay(x)
            else:
                logit = self.model(x)
        return {"logit": logit.float().cpu().numpy()}

    def _replay(self, x):
        """The model as a CUDA graph for x's shape, captured on first sight (after a warm-up on a
        side stream, as PyTorch asks), then replayed with x copied into its static input."""
        torch = self._torch
        key = tuple(x.shape)
        if key not in self._graphs:
            static = x.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.model(static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.model(static)
            self._graphs[key] = (static, graph, out)
        static, graph, out = self._graphs[key]
        static.copy_(x)
        graph.replay()
        return out.clone()


PROVIDER_PREFERENCE = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
PROVIDER_ALIASES = {"tensorrt": "TensorrtExecutionProvider", "trt": "TensorrtExecutionProvider",
                    "cuda": "CUDAExecutionProvider", "cpu": "CPUExecutionProvider"}


class OnnxRunner(Runner):
    """ONNX Runtime on an exported LFM graph (float or uint8 input, fp32/fp16/INT8).

    The preprocessing spec comes from the model's own metadata (``lfm.spec``). Providers:
    TensorRT, then CUDA, then CPU, whichever this onnxruntime build has, unless given.
    """

    name = "onnxruntime"

    def __init__(self, path: str | os.PathLike, providers: list[str] | None = None, threads: int | None = None):
        super().__init__()
        self.path = os.fspath(path)
        self.requested_providers = providers
        self.threads = threads

    def activate_impl(self):
        import json

        import onnxruntime as ort

        if not os.path.isfile(self.path):
            raise BackendError(f"{self.path}: no such file" if not os.path.exists(self.path) else f"{self.path}: not a file")
        available = ort.get_available_providers()
        if self.requested_providers:
            providers = [PROVIDER_ALIASES.get(p.lower(), p) for p in self.requested_providers]
            missing = [p for p in providers if p not in available]
            if missing:
                raise BackendError(f"onnxruntime provider(s) {missing} not available here; available: {available}")
        else:
            providers = [p for p in PROVIDER_PREFERENCE if p in available]
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # One inference at a time uses every core; decoding threads overlap with it.
        options.intra_op_num_threads = self.threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        from .custom_ops import session_options_for

        options = session_options_for(self.path, options)  # a plugin graph: LFM's custom ops registered
        try:
            self.session = ort.InferenceSession(self.path, options, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for bad files
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackendError(f"{self.path}: not a loadable ONNX model ({first})") from None
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


OPENVINO_PRECISIONS = ("auto", "f32", "bf16", "f16")


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
    """

    name = "openvino"

    def __init__(self, path: str | os.PathLike, device: str = "CPU", precision: str | None = "auto",
                 threads: int | None = None, static_shapes: int = 4):
        super().__init__()
        self.path, self.device, self.precision, self.threads = os.fspath(path), device, precision, threads
        self.static_shapes = static_shapes

    def activate_impl(self):
        import json

        try:
            import openvino as ov
        except ImportError:
            raise BackendError("--backend openvino needs OpenVINO: pip install -e '.[openvino]'") from None
        if not os.path.isfile(self.path):
            raise BackendError(f"{self.path}: no such file")
        from .custom_ops import OP_TYPES, uses_custom_ops

        if uses_custom_ops(self.path):
            raise BackendError(f"{self.path}: a plugin graph (custom ops {', '.join(OP_TYPES)}), which OpenVINO cannot "
                               "run; use the ONNX Runtime backend or export --variant standard")
        self.core = ov.Core()
        try:
            self.model = self.core.read_model(self.path)
        except Exception as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise BackendError(f"{self.path}: OpenVINO cannot read it ({first})") from None
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
        self.by_shape = {}  # input shape -> (compiled model, infer request)
        # What the compiled model really computes in: a CPU without bf16 runs f32 whatever the hint.
        self.inference_precision = self.dynamic[0].get_property("INFERENCE_PRECISION_HINT").get_type_name()

    def describe(self) -> str:
        return (f"openvino {self.device}, inference precision {self.inference_precision} "
                f"(hint {self.precision_hint}: {self.precision_reason})")

    def _compile(self, model):
        compiled = self.core.compile_model(model, self.device, self.config)
        return compiled, compiled.create_infer_request()

    def deactivate_impl(self):
        del self.dynamic, self.by_shape, self.model, self.core

    def infer_impl(self, feed):
        (x,) = feed.values()
        shape = tuple(x.shape)
        if shape not in self.by_shape and len(self.by_shape) < self.static_shapes:
            model = self.model.clone()
            model.reshape({model.inputs[0].get_any_name(): list(shape)})
            self.by_shape[shape] = self._compile(model)
        compiled, request = self.by_shape.get(shape, self.dynamic)
        out = request.infer([x])
        return {"logit": np.asarray(out[compiled.output("logit")]).copy()}


BACKENDS = ("onnxruntime", "openvino")


def make_runner(checkpoint: str | None = None, model: str | None = None, device: str = "auto",
                providers: list[str] | None = None, threads: int | None = None,
                backend: str = "onnxruntime", engine: str | None = None, cuda_graphs: bool = False,
                kernels: bool = False, precision: str = "auto") -> Runner:
    """The runner for a model source: a PyTorch checkpoint (``kernels=True``: through our Triton
    kernels, on a GPU), an exported ONNX model run by ONNX Runtime (default) or OpenVINO, or a
    TensorRT engine (export/to_trt.py). ``precision``: OpenVINO's inference precision
    (``OPENVINO_PRECISIONS``; the other backends compute in the model's own precision)."""
    if precision not in OPENVINO_PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; expected one of {OPENVINO_PRECISIONS}")
    if precision != "auto" and not (model is not None and backend == "openvino"):
        raise BackendError(f"--precision {precision} applies to --backend openvino only; the other backends "
                           "compute in the precision the model was exported or built in")
    if sum(source is not None for source in (checkpoint, model, engine)) != 1:
        raise BackendError("give exactly one model: a checkpoint, an ONNX model or a TensorRT engine")
    if kernels and checkpoint is None:
        raise BackendError("--kernels runs a PyTorch checkpoint through the Triton kernels: give --checkpoint")
    # Options that another kind of model would silently ignore are refused instead.
    if device != "auto" and checkpoint is None:
        raise BackendError(f"device {device!r} (--device) applies to a PyTorch checkpoint only; an ONNX model picks "
                           "its device with providers (--providers cuda,cpu), a TensorRT engine runs on its GPU")
    if cuda_graphs and model is not None:
        raise BackendError("cuda_graphs (--cuda-graphs) applies to a TensorRT engine or a checkpoint, not to an "
                           "ONNX model")
    if model is None and (providers is not None or backend != "onnxruntime"):
        raise BackendError("providers and backend (--providers, --backend) apply to an ONNX model only")
    if engine is not None:
        from .trt_runner import TrtRunner  # numpy only at import; tensorrt and cuda-python on activate()

        return TrtRunner(engine, cuda_graphs=cuda_graphs)
    if model is not None:
        if backend == "openvino":
            return OpenVinoRunner(model, threads=threads, precision=precision)
        if backend != "onnxruntime":
            raise BackendError(f"unknown backend {backend!r}; expected one of {BACKENDS}")
        return OnnxRunner(model, providers=providers, threads=threads)
    return TorchRunner(checkpoint, device=device, kernels=kernels, cuda_graphs=cuda_graphs)
