"""The backend interface and its registry: Runner, BackendError, and make_runner, which picks a runner for a model file.

    runner = make_runner("lfm.onnx")                  # the backend by extension: auto here (ONNX Runtime or OpenVINO)
    runner = make_runner("lfm.onnx", backend="openvino", precision="f32")
    with runner:                                      # activate() ... deactivate()
        out = runner.infer({"pixels": uint8 [B, H, W, 3]})   # or {"image": float32 [B, 3, H, W]}
        out["logit"]                                  # float32 [B]

Adding a backend is one module with a ``Runner`` subclass and one line in ``REGISTRY``. Each
line names its runner as "module:Class", imported only when that backend is asked for, so this
module imports no backend and no heavy library (the lean runtime never loads torch unless the
torch backend is asked for).
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import numpy as np

from ..spec import ModelSpec


class BackendError(RuntimeError):
    """A model that cannot be loaded or run; the message names the file and the problem."""


class SourceError(BackendError, ValueError):
    """A model file whose backend cannot be told from its name (a ValueError too, as before)."""


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


@dataclass(frozen=True)
class Backend:
    """One registry line: a backend, the files it runs and the make_runner options it takes."""

    name: str
    runner: str  # "module:Class", imported when this backend is first asked for
    kind: str  # the kind of file: "model" (ONNX), "engine" (TensorRT plan) or "checkpoint"; also the CLI flag naming it
    extensions: tuple[str, ...]
    options: tuple[str, ...]  # make_runner's keywords that its runner takes
    what: str  # how messages name it

    def runner_class(self) -> type[Runner]:
        module, cls = self.runner.split(":")
        return getattr(importlib.import_module(module), cls)


# The registry. For a file extension the first backend listed is its default.
REGISTRY: dict[str, Backend] = {b.name: b for b in (
    Backend("auto", "lfm.runtime.backends.auto:AutoRunner", "model", (".onnx",), ("providers", "threads", "precision"),
            "an ONNX model (auto: the fastest faithful path)"),
    Backend("onnxruntime", "lfm.runtime.backends.onnxrt:OnnxRunner", "model", (".onnx",), ("providers", "threads"),
            "an ONNX model on ONNX Runtime"),
    Backend("openvino", "lfm.runtime.backends.openvino_rt:OpenVinoRunner", "model", (".onnx",), ("threads", "precision"),
            "--backend openvino"),
    Backend("tensorrt", "lfm.runtime.backends.trt_engine:TrtRunner", "engine", (".plan", ".engine", ".trt"),
            ("cuda_graphs",), "a TensorRT engine"),
    Backend("torch", "lfm.runtime.backends.pyt:TorchRunner", "checkpoint", (".pt", ".pth", ".ckpt", ".bin"),
            ("device", "kernels", "cuda_graphs", "amp"), "a PyTorch checkpoint"),
)}


OPENVINO_PRECISIONS = ("auto", "f32", "bf16", "f16")  # --openvino-precision; here so the CLI needs no backend module


@dataclass(frozen=True)
class Option:
    """A make_runner keyword: its default, its CLI flag, and what to do instead where it is refused."""

    default: object
    flag: str
    instead: str = ""
    strict: bool = True  # refused by a backend that cannot use it; False: that backend ignores it


OPTIONS: dict[str, Option] = {
    "device": Option("auto", "--device", "an ONNX model picks its device with providers (--providers cuda,cpu), a "
                     "TensorRT engine runs on its GPU"),
    "providers": Option(None, "--providers"),
    "threads": Option(None, "--threads", strict=False),  # a hint: the GPU backends schedule their own work
    "precision": Option("auto", "--openvino-precision", "the other backends compute in the precision the model was exported "
                        "or built in"),
    "kernels": Option(False, "--kernels", "it runs a PyTorch checkpoint through the Triton kernels: give --checkpoint"),
    "cuda_graphs": Option(False, "--cuda-graphs"),
    "amp": Option(False, "--amp", "an ONNX model or a TensorRT engine computes in the precision it was exported or "
                  "built in"),
}


def backends_for(kind: str) -> tuple[str, ...]:
    """The backends that run a kind of file ("model": ("auto", "onnxruntime", "openvino")), default first."""
    return tuple(b.name for b in REGISTRY.values() if b.kind == kind)


def backend_for(source: str | os.PathLike, backend: str | None = None) -> Backend:
    """The registry line that runs ``source``: the backend named, else the first one registered
    for the file's extension."""
    if backend is not None:
        if backend not in REGISTRY:
            raise BackendError(f"unknown backend {backend!r}; expected one of {tuple(REGISTRY)}")
        return REGISTRY[backend]
    ext = os.path.splitext(os.fspath(source))[1].lower()
    for entry in REGISTRY.values():
        if ext in entry.extensions:
            return entry
    runs: dict[tuple[str, ...], list[str]] = {}
    for entry in REGISTRY.values():
        runs.setdefault(entry.extensions, []).append(entry.name)
    known = "; ".join(f"{', '.join(exts)}: {', '.join(names)}" for exts, names in runs.items())
    raise SourceError(f"{os.fspath(source)}: cannot tell the model kind from its extension ({known}); name its "
                      "backend: make_runner(path, backend=...)")


def source_from_flags(checkpoint=None, model=None, engine=None, backend: str | None = None) -> tuple[str, str]:
    """(source, backend) for a model named the CLI's way: exactly one of --checkpoint, --model (run
    by ``backend``, auto unless named) and --engine. The flag, not the extension, decides."""
    named = [(path, kind) for path, kind in ((checkpoint, "checkpoint"), (model, "model"), (engine, "engine"))
             if path is not None]
    if len(named) != 1:
        raise BackendError("give exactly one model: a checkpoint, an ONNX model or a TensorRT engine")
    (path, kind), = named
    choices = backends_for(kind)
    if backend is None:
        backend = choices[0]
    elif backend not in choices:
        what = f"runs --{REGISTRY[backend].kind} files, not --{kind}" if backend in REGISTRY else "is unknown"
        raise BackendError(f"backend {backend!r} (--backend) {what}; --{kind} runs on {' or '.join(choices)}")
    return os.fspath(path), backend


def provider_list(providers: str | list[str] | tuple[str, ...] | None) -> list[str] | None:
    """ONNX Runtime's execution providers as a list, or None for the default choice. A string is
    the CLI's form, one provider or several separated by commas ("cpu", "cuda,cpu"); a list or
    tuple names one provider per item. Names are aliases ("cpu", "cuda", "tensorrt"/"trt") or
    ONNX Runtime's own ("CPUExecutionProvider"). The one parser of --providers and of
    make_runner(providers=...): a string was once split into its letters."""
    if providers is None:
        return None
    items = [providers] if isinstance(providers, str) else list(providers)
    if not all(isinstance(item, str) for item in items):
        raise BackendError(f"providers {providers!r} (--providers): expected provider names, e.g. 'cpu' or 'cuda,cpu'")
    names = [name.strip() for item in items for name in item.split(",")]
    if not names or not all(names):
        raise BackendError(f"providers {providers!r} (--providers) names an empty provider; e.g. 'cpu' or 'cuda,cpu'")
    return names


def make_runner(source: str | os.PathLike, *, backend: str | None = None, device: str = "auto",
                providers: str | list[str] | None = None, threads: int | None = None, precision: str = "auto",
                kernels: bool = False, cuda_graphs: bool = False, amp: bool = False) -> Runner:
    """The runner (not yet active) for a model file: by its extension (.onnx: auto, which runs
    ONNX Runtime or OpenVINO by the rules of ``backends.auto``; .plan/.engine/.trt: TensorRT,
    .pt/.pth/.ckpt/.bin: PyTorch) unless ``backend`` names one of ``REGISTRY``. Backend options:

    - device: the PyTorch device for a checkpoint (auto | cpu | cuda[:N]);
    - providers, threads: ONNX Runtime's execution providers and intra-op threads (threads also
      for OpenVINO; the other backends ignore it); providers is "cpu", "cuda,cpu" (a string is
      comma-separated, as --providers) or a list such as ["cuda", "cpu"] (see provider_list);
      under auto, providers runs ONNX Runtime;
    - precision: OpenVINO's inference precision (auto | f32 | bf16 | f16); under auto, anything
      but "auto" runs OpenVINO;
    - kernels: a checkpoint through our Triton kernels (a CUDA GPU);
    - cuda_graphs: replay each batch shape as a CUDA graph (TensorRT engines, checkpoints on a GPU);
    - amp: a checkpoint under float16 autocast on CUDA (faster, not exact fp32; no effect on a CPU).

    An option the chosen backend would silently ignore is refused with a BackendError (one line)."""
    entry = backend_for(source, backend)
    given = {"device": device, "providers": provider_list(providers), "threads": threads, "precision": precision,
             "kernels": kernels, "cuda_graphs": cuda_graphs, "amp": amp}
    check_runner_options(entry, given)
    return entry.runner_class()(os.fspath(source), **{k: v for k, v in given.items() if k in entry.options})


def check_runner_options(entry: Backend, given: dict) -> None:
    """Refuse (BackendError, one line) an option that ``entry`` would silently ignore; the command
    line's ModelArgs runs this while parsing, make_runner again when the runner is made."""
    for name, value in given.items():
        option = OPTIONS[name]
        if name in entry.options or not option.strict or value == option.default:
            continue
        takers = " or ".join(b.what for b in REGISTRY.values() if name in b.options)
        shown = "" if isinstance(value, bool) else f" {value!r}"
        raise BackendError(f"{name}{shown} ({option.flag}) applies to {takers} only"
                           + (f"; {option.instead}" if option.instead else ""))
