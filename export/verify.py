"""Proving an exported graph equal to PyTorch, with Polygraphy's Comparator.

ONNX Runtime (Polygraphy's ``OnnxrtRunner``) and the PyTorch model (``TorchCpuRunner``, a
Polygraphy runner on the CPU in exact fp32) run the same feeds: fixed patterns and seeded
random inputs over several shapes (batch 1 and more, odd sizes, the minimum size). Outputs
are compared by ``SimpleCompareFunc`` on the max error; the report records every pair.
A plugin graph (LFM's custom ops) runs in ONNX Runtime with the numpy ops registered, and is
also compared with the standard graph of the same model (``compare_graphs``).
"""
from __future__ import annotations

import json
import time
from collections import OrderedDict

import numpy as np
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.backend.onnxrt import OnnxrtRunner
from polygraphy.common import TensorMetadata
from polygraphy.comparator import Comparator, SimpleCompareFunc
from polygraphy.logger import G_LOGGER

from .onnx_export import INPUT_NAMES, OUTPUT_NAMES, FloatInputLFM

G_LOGGER.module_severity = G_LOGGER.ERROR  # our report says what matters; keep the console short

# (batch, height, width): batch 1 and more, the two eval sizes, odd sizes, non-square, the minimum.
SHAPES = ((1, 224, 224), (4, 224, 224), (2, 256, 256), (3, 255, 257), (2, 192, 320), (1, 48, 48))
TOLERANCES = {"fp32": (1e-4, 1e-4), "fp16": (5e-3, 5e-2)}  # (rtol, atol) on the max error


class TorchCpuRunner(BaseRunner):
    """The PyTorch model on the CPU in fp32 as a Polygraphy runner, fed like the ONNX graph.

    It always runs the float model on normalised input: for the uint8 graph it normalises the
    bytes itself (numpy, float64), so the comparison also proves the folded normalisation.
    """

    def __init__(self, model: torch.nn.Module, input_variant: str, mean, std, name: str = "pytorch"):
        super().__init__(name=name)
        self.module, self.input_variant = FloatInputLFM(model).eval(), input_variant
        self.mean, self.std = np.asarray(mean, np.float64), np.asarray(std, np.float64)

    def activate_impl(self):
        pass

    def deactivate_impl(self):
        pass

    def get_input_metadata_impl(self):
        dtype = np.uint8 if self.input_variant == "uint8" else np.float32
        shape = (None, None, None, 3) if self.input_variant == "uint8" else (None, 3, None, None)
        return TensorMetadata().add(INPUT_NAMES[self.input_variant], dtype, shape)

    def infer_impl(self, feed_dict):
        x = feed_dict[INPUT_NAMES[self.input_variant]]
        if self.input_variant == "uint8":
            x = ((x / 255.0 - self.mean) / self.std).transpose(0, 3, 1, 2).astype(np.float32)
        x = torch.from_numpy(np.ascontiguousarray(x))
        start = time.perf_counter()
        with torch.inference_mode():
            outputs = self.module(x)
        self.inference_time = time.perf_counter() - start
        return OrderedDict((n, o.numpy()) for n, o in zip(OUTPUT_NAMES, outputs))


def _pattern(kind: str, h: int, w: int) -> np.ndarray:
    """Deterministic uint8 HWC images: smooth content and a 2x nearest up-sampled one."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == "gradient":
        img = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * 255
    else:  # half-resolution noise repeated 2x: what NPR calls generated
        small = np.random.default_rng(7).integers(0, 256, ((h + 1) // 2, (w + 1) // 2, 3))
        img = small.repeat(2, 0).repeat(2, 1)[:h, :w]
    return img.astype(np.uint8)


def feeds(input_variant: str, mean, std, seed: int = 0) -> list[OrderedDict]:
    """Fixed patterns, then seeded random images for every shape in SHAPES."""
    rng = np.random.default_rng(seed)
    batches = [np.stack([_pattern("gradient", 224, 224), _pattern("upsampled", 224, 224)])]
    batches += [rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8) for b, h, w in SHAPES]
    name = INPUT_NAMES[input_variant]
    out = []
    for pixels in batches:
        if input_variant == "uint8":
            x = pixels
        else:
            x = ((pixels.astype(np.float32) / 255 - np.float32(mean)) / np.float32(std)).transpose(0, 3, 1, 2)
            x = np.ascontiguousarray(x, dtype=np.float32)
        out.append(OrderedDict([(name, x)]))
    return out


def ort_session(onnx_path: str, providers=("CPUExecutionProvider",)):
    """A session loader for Polygraphy's OnnxrtRunner; for a plugin graph, LFM's custom ops
    registered. Intra- and inter-op threads: the usable cores, as Polygraphy's SessionFromOnnx
    sets them (ONNX Runtime's default binds threads to cores a container may not have)."""
    from lfm.runtime.backends.onnxrt import inference_session
    from lfm.runtime.options import usable_cpus

    cpus = usable_cpus()
    return lambda: inference_session(onnx_path, providers=list(providers), threads=cpus, inter_op_threads=cpus)


def verify(onnx_path: str, model: torch.nn.Module, input_variant: str, precision: str, mean, std,
           providers=("CPUExecutionProvider",)) -> dict:
    """Run ONNX Runtime and PyTorch on the same feeds; return a JSON-able report with ``passed``."""
    rtol, atol = TOLERANCES[precision]
    data = feeds(input_variant, mean, std)
    ort_runner = OnnxrtRunner(ort_session(onnx_path, providers), name="onnxruntime")
    torch_runner = TorchCpuRunner(model, input_variant, mean, std)
    report = _compare(torch_runner, ort_runner, data, rtol, atol)
    return {
        "model": str(onnx_path),
        "precision": precision,
        "input": input_variant,
        "reference": "PyTorch eager float model, CPU, fp32" + (" (bytes normalised in numpy)" if input_variant == "uint8" else ""),
        "compare": f"polygraphy SimpleCompareFunc(check_error_stat='max', rtol={rtol}, atol={atol})",
        "providers": list(providers),
        **report,
    }


def compare_graphs(onnx_path: str, reference_path: str, input_variant: str, mean, std,
                   providers=("CPUExecutionProvider",)) -> dict:
    """Two graphs of one model (the plugin graph and the standard one) in ONNX Runtime on the same
    feeds, at the fp32 tolerances; a JSON-able report with ``passed``."""
    rtol, atol = TOLERANCES["fp32"]
    data = feeds(input_variant, mean, std)
    reference = OnnxrtRunner(ort_session(reference_path, providers), name="standard-graph")
    runner = OnnxrtRunner(ort_session(onnx_path, providers), name="plugin-graph")
    return {
        "model": str(onnx_path),
        "precision": "fp32",
        "input": input_variant,
        "reference": "the standard graph of the same model in ONNX Runtime",
        "compare": f"polygraphy SimpleCompareFunc(check_error_stat='max', rtol={rtol}, atol={atol})",
        "providers": list(providers),
        **_compare(reference, runner, data, rtol, atol),
    }


def _compare(reference, runner, data, rtol, atol) -> dict:
    results = Comparator.run([reference, runner], data_loader=data)
    accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(
        rtol=rtol, atol=atol, check_error_stat="max"))
    per_feed = []
    (pair, iterations), = accuracy[0].items()
    for feed, iteration in zip(data, iterations):
        shape = list(next(iter(feed.values())).shape)
        entry = {"input_shape": shape}
        for name, res in iteration.items():
            entry[name] = {"max_absdiff": float(res.max_absdiff), "max_reldiff": float(res.max_reldiff),
                           "passed": bool(res)}
        per_feed.append(entry)
    # Decisions too: the label at the default threshold must not flip anywhere.
    (_, ref_outs), (_, outs) = results[0], results[1]
    flips = sum(int(((a["score"] > 0.5) != (b["score"] > 0.5)).sum()) for a, b in zip(ref_outs, outs))
    n = sum(len(a["score"]) for a in ref_outs)
    return {
        "feeds": per_feed,
        "max_abs_logit_diff": max(e["logit"]["max_absdiff"] for e in per_feed),
        "max_rel_logit_diff": max(e["logit"]["max_reldiff"] for e in per_feed),
        "images": n,
        "decision_flips": flips,
        "passed": bool(accuracy) and flips == 0,
    }


def format_report(report: dict) -> str:
    lines = [f"verification ({report['precision']}, {report['input']} input) against {report['reference']}:"]
    for e in report["feeds"]:
        lg = e["logit"]
        lines.append(f"  input {str(e['input_shape']):<20} max |dlogit| {lg['max_absdiff']:.2e}  "
                     f"rel {lg['max_reldiff']:.2e}  {'ok' if lg['passed'] else 'FAIL'}")
    lines.append(f"  {report['images']} images, {report['decision_flips']} decision flips; {report['compare']}: "
                 f"{'PASSED' if report['passed'] else 'FAILED'}")
    return "\n".join(lines)


def save_report(report: dict, path: str) -> None:
    """Written beside ``path`` and renamed: a failed write leaves an earlier report as it was."""
    from lfm.runtime.files import ReplacedAtEnd

    with ReplacedAtEnd(path) as f:
        json.dump(report, f, indent=2)
