"""``auto``, the default backend of an ONNX model: ONNX Runtime or OpenVINO, whichever is the fastest path whose decisions are proven for this model on this CPU.

    runner = make_runner("lfm.onnx")         # auto
    runner.activate().describe()             # "auto -> onnxruntime CPUExecutionProvider, ...: <why>"
    runner.chosen, runner.why                # "onnxruntime", "<why>"

The choice is one rule table (``RULES``: first match wins), read by ``choose_backend``, a pure
function of the model's facts and the machine's, so every rule is tested without the hardware.
The model's facts (custom ops, lfm.precision, the spec's input) come from its protobuf
(onnx_wire) without onnxruntime, openvino or onnx; whether OpenVINO is installed is asked of
importlib, which does not import it. The runner chosen is made through the registry
(``make_runner``) when the runner is activated, so importing this module imports no backend.

The figures in the reasons were measured on upstream's checkpoint, batch 8, 224 px, two cores
(issue 28): an AVX2-only AMD EPYC and one with AVX512-VNNI and BF16. Where the rules send a
model to OpenVINO, OpenVINO computes in the precision ``openvino_precision`` proves faithful
(f32, or bf16 for a uint8-input graph on a bf16 CPU).
"""
from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from functools import cached_property
from typing import Callable

from ..cpu_features import cpu_flags, has_bf16
from ..custom_ops import uses_custom_ops
from ..onnx_wire import metadata_props
from ..spec import ModelSpec
from .base import REGISTRY, BackendError, Runner, make_runner, provider_list


@dataclass(frozen=True)
class ModelFacts:
    """What the rules read of a model file, without loading it."""

    custom_ops: bool = False  # the plugin graph (LFM's custom ops)
    precision: str = "fp32"  # lfm.precision: fp32 | fp16 | int8
    input: str | None = None  # the spec's input: "uint8" | "float"; None when unreadable

    @classmethod
    def read(cls, path: str | os.PathLike) -> "ModelFacts":
        """The facts of the file at ``path``; defaults where it cannot be read or is no ONNX model,
        so that the backend chosen (ONNX Runtime) reports the problem in its usual line."""
        try:
            with open(path, "rb") as f:
                data = f.read()
            props = metadata_props(data)
        except (OSError, ValueError, IndexError):
            return cls()
        try:
            spec_input = ModelSpec.from_dict(json.loads(props["lfm.spec"])).input
        except (KeyError, ValueError, TypeError, AttributeError):
            spec_input = None
        return cls(uses_custom_ops(data), props.get("lfm.precision", "fp32"), spec_input)


@dataclass
class Situation:
    """The model's facts and the machine's, as the rules read them. ``ort_gpu`` is asked of
    onnxruntime only when a rule reaches it (``onnxruntime_has_gpu``)."""

    model: ModelFacts
    providers: list[str] | None
    precision: str  # --openvino-precision
    openvino_installed: bool
    ort_gpu_given: bool | None
    flags: frozenset[str]

    @cached_property
    def ort_gpu(self) -> bool:
        return onnxruntime_has_gpu() if self.ort_gpu_given is None else self.ort_gpu_given


INT8_WHY = ("INT8 graph: OpenVINO's INT8 kernels ran 1.16x ONNX Runtime's on the same INT8 graph on an AVX2 CPU "
            "(84 vs 73 images/s), ~1.5x with AVX512-VNNI (144 vs 93-103)")
BF16_WHY = ("uint8-input graph on a CPU with bf16: OpenVINO's bf16 keeps the uint8 graph's decisions (0 of 80 flips) "
            "at 1.86x ONNX Runtime fp32")

NOT_INSTALLED_WHY = "OpenVINO would run this model faster here but is not installed (pip install -e '.[openvino]')"


def int8_graph(s: "Situation") -> bool:
    return s.model.precision == "int8"


def bf16_uint8_graph(s: "Situation") -> bool:
    return s.model.input == "uint8" and s.model.precision in ("fp32", "fp16") and has_bf16(s.flags)


# (condition, backend, why), first match wins. The why is what describe() and the run's summary say.
# An option that only one backend takes comes first: it picks that backend, never silently dropped
# (a plugin graph with --openvino-precision gets OpenVINO's one-line refusal).
RULES: tuple[tuple[Callable[[Situation], bool], str, str], ...] = (
    (lambda s: s.providers is not None, "onnxruntime", "providers named (--providers are ONNX Runtime's)"),
    (lambda s: s.precision != "auto", "openvino", "--openvino-precision is OpenVINO's"),
    (lambda s: s.model.custom_ops, "onnxruntime", "OpenVINO cannot run LFM's custom ops (a plugin graph)"),
    (lambda s: s.ort_gpu, "onnxruntime", "a GPU through ONNX Runtime (its CUDA/TensorRT execution provider)"),
    # The lean install: said only where OpenVINO would have run the model (the two rules below).
    (lambda s: not s.openvino_installed and (int8_graph(s) or bf16_uint8_graph(s)), "onnxruntime",
     NOT_INSTALLED_WHY),
    (int8_graph, "openvino", INT8_WHY),
    (bf16_uint8_graph, "openvino", BF16_WHY),
    (lambda s: True, "onnxruntime",
     "OpenVINO would compute in f32 here, which measured no faster than ONNX Runtime (0.97-0.99x on AVX2)"),
)


def openvino_is_installed() -> bool:
    """Whether ``import openvino`` would find it (without importing it)."""
    return importlib.util.find_spec("openvino") is not None


def onnxruntime_has_gpu() -> bool:
    """Whether this onnxruntime build has a GPU execution provider (what OnnxRunner prefers when
    no providers are named)."""
    import onnxruntime as ort

    from .onnxrt import PROVIDER_PREFERENCE  # imported here: this module imports no backend at import time

    gpu = set(PROVIDER_PREFERENCE) - {"CPUExecutionProvider"}
    return bool(gpu & set(ort.get_available_providers()))


def choose_backend(model: str | os.PathLike | ModelFacts, *, providers=None, precision: str | None = "auto",
                   openvino_installed: bool | None = None, ort_gpu: bool | None = None,
                   isa=None) -> tuple[str, str]:
    """(backend name, why) for an ONNX model under ``auto``: the first of ``RULES`` that holds.

    model: a path (its facts read by ModelFacts.read) or ModelFacts; providers, precision: the
    runner's options (--providers, --openvino-precision); openvino_installed, ort_gpu, isa (the
    CPU's feature flags): the machine, found out when None."""
    situation = Situation(
        model=model if isinstance(model, ModelFacts) else ModelFacts.read(model),
        providers=provider_list(providers), precision=precision or "auto",
        openvino_installed=openvino_is_installed() if openvino_installed is None else openvino_installed,
        ort_gpu_given=ort_gpu, flags=frozenset(cpu_flags() if isa is None else isa))
    for condition, backend, why in RULES:
        if condition(situation):
            return backend, why
    raise AssertionError("RULES ends with a rule that always holds")


class AutoRunner(Runner):
    """The runner ``choose_backend`` picks for the model (``runner``), made and activated on
    ``activate``; ``chosen`` and ``why`` say which and why, ``describe()`` says both. Options: threads goes to
    either backend, providers only to ONNX Runtime and precision only to OpenVINO (each forces
    that backend, so giving both is refused)."""

    name = "auto"

    def __init__(self, path: str | os.PathLike, providers: str | list[str] | None = None, threads: int | None = None,
                 precision: str | None = "auto"):
        super().__init__()
        self.path, self.threads = os.fspath(path), threads
        self.requested_providers, self.precision = provider_list(providers), precision or "auto"
        if self.requested_providers is not None and self.precision != "auto":
            raise BackendError(f"providers {self.requested_providers!r} (--providers) run ONNX Runtime and precision "
                               f"{self.precision!r} (--openvino-precision) OpenVINO: give one, or name the backend "
                               "(--backend onnxruntime or openvino)")
        self.chosen: str | None = None
        self.why: str | None = None
        self.runner: Runner | None = None

    def activate_impl(self):
        self.chosen, self.why = choose_backend(self.path, providers=self.requested_providers, precision=self.precision)
        given = {"providers": self.requested_providers, "threads": self.threads, "precision": self.precision}
        options = {k: v for k, v in given.items() if k in REGISTRY[self.chosen].options}
        self.runner = make_runner(self.path, backend=self.chosen, **options).activate()
        self.spec = self.runner.spec
        if hasattr(self.runner, "metadata"):
            self.metadata = self.runner.metadata

    def deactivate_impl(self):
        self.runner.deactivate()

    def describe(self) -> str:
        return f"auto -> {self.runner.describe()}: {self.why}"

    # submit/result stay Runner's (the batch runs at submit, through infer): both backends auto
    # picks run one batch at a time (max_in_flight 1), so every batch passes through here.
    def infer_impl(self, feed):
        return self.runner.infer(feed)
