"""The plain half of ``export/to_trt.py``: everything about building an engine that is not a
TensorRT call, tested without TensorRT or a GPU.

    proto, props = read_onnx("lfm.onnx")          # the model and its metadata_props
    inp = input_info(proto, props)                # {"name": "pixels", "dtype": "uint8", "layout": "NHWC"}
    profile = make_profile(inp, "1,16,32", None, model_spec(props))     # min/opt/max shapes
    mode = choose_mode("lfm.onnx", onnx_precision(proto, props), "fp16", int8_profile(props))
    half = fp16_model(onnx.load("lfm.onnx"))      # when mode["convert_fp16"]: the graph TensorRT builds
    sidecar = make_sidecar(...)                   # -> PLAN.json, read back by runtime/backends/trt_plan.py

Precision comes from the ONNX graph TensorRT parses; every network is strongly typed (the only
kind TensorRT 11 builds: it removed weak typing and BuilderFlag.FP16 / INT8), the same on 10.x:

    ONNX model (export/to_onnx.py)          --precision   TensorRT builds
    fp32                                     fp32          the fp32 graph (TF32 off)
    fp16 (--fp16)                            fp16          the fp16 graph
    fp32                                     fp16          the fp16 graph converted from it here (fp16_model)
    INT8 QDQ (--int8 --int8-profile tensorrt) int8         the QDQ graph: explicit quantisation

INT8 always comes from the QDQ model of the export stage: no calibrator (TensorRT's implicit
calibrators are deprecated in 10.x and removed in 11). ``fp16_model`` is export/to_onnx.py
--fp16's conversion (inputs and outputs keep their types) with LFM's custom ops kept in float32:
it is how the fp32-only plugin graph gets an fp16 engine.

Which TensorRT, NumPy and Polygraphy releases work is declared in
``lfm.runtime.backends.trt_plan.TENSORRT_SUPPORT``; ``tensorrt_problem``, ``plugin_graph_problem`` and
``polygraphy_problem`` turn an unsupported combination into one line before anything is built.

Tolerances of the build's comparison with ONNX Runtime on the same ONNX model (``TOLERANCES``):
fp32 and fp16 are judged on the logit's max error, relative or absolute (Polygraphy's
SimpleCompareFunc), plus no decision flip farther than ``margin`` from the threshold; INT8 is
judged by decisions only (see ``Tolerance``).
"""
from __future__ import annotations

import json
import math
import os
import shlex
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from lfm.export.paths import output_problem
from lfm.runtime import custom_ops
from lfm.runtime.cli import CommandError
from lfm.runtime.spec import ModelSpec, logit_boundary, min_input_size
from lfm.runtime.backends.trt_plan import (SIDECAR_FORMAT, TENSORRT_SUPPORT, at_least, describe_profile, profile_axes,
                                           tensorrt_problem, tensorrt_untested, trt_release)

PRECISIONS = ("fp32", "fp16", "int8")
DEFAULT_BATCH = "1,16,32"
DEFAULT_WORKSPACE_MIB = 2048
OPT_LEVELS = (0, 1, 2, 3, 4, 5)
DEFAULT_OPT_LEVEL = 3  # TensorRT's default
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
SCRIPT = "export/to_trt.py"
INSTALL = "pip install -e '.[tensorrt]' (CUDA 13 driver) or '.[tensorrt-cu12]' (CUDA 12 driver)"


class BuildError(CommandError, RuntimeError):
    """A one-line, user-facing build failure (exit 2)."""


@dataclass(frozen=True)
class Tolerance:
    """How the engine is judged against ONNX Runtime running the same ONNX model.

    rtol, atol: on the logit's max error (passes when either holds, Polygraphy's rule); None:
        not judged on error (reported only).
    margin: decisions (score above the threshold) may differ only for images whose ONNX Runtime
        logit lies within ``margin`` of the threshold's logit; farther flips fail the build.
    """

    rtol: float | None
    atol: float | None
    margin: float
    why: str


TOLERANCES = {
    "fp32": Tolerance(1e-3, 1e-3, 1e-3, "TensorRT's fp32 kernels (TF32 off) against ONNX Runtime's: other convolution "
                      "algorithms and summation orders, so 1e-3 rather than the export's 1e-4"),
    "fp16": Tolerance(1e-2, 1e-1, 0.1, "fp16 kernels against ONNX Runtime on the same fp16 model (the export's, or "
                      "the one converted from the fp32 model for --precision fp16): logits reach ~80, fp16 keeps ~3 "
                      "significant digits"),
    "int8": Tolerance(None, None, 1.0, "ONNX Runtime runs the QDQ model with its own int8 kernels or simulated "
                      "int8 while TensorRT fuses each Q/DQ pair into int8 kernels that requantise differently, so "
                      "logits move by more than float error; judged by decisions: none may flip unless the ONNX "
                      "Runtime logit is within 1.0 of the threshold (the export's INT8 report found every flip "
                      "against fp32 there); agreement and max |dlogit| are reported"),
}


# ----------------------------------------------------------------------------------------------
# The ONNX model


def read_onnx(path: str):
    """(ModelProto without external data, metadata dict). BuildError when unusable."""
    try:
        import onnx
    except ImportError:
        raise BuildError(f"reading {path} needs the onnx package: {INSTALL}") from None

    if not os.path.exists(path):
        raise BuildError(f"{path}: no such file")
    if not os.path.isfile(path):
        raise BuildError(f"{path}: not a file")
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf raises DecodeError and friends
        raise BuildError(f"{path}: not a readable ONNX model ({type(e).__name__})") from None
    props = {p.key: p.value for p in proto.metadata_props}
    if "lfm.spec" not in props:
        raise BuildError(f"{path}: no lfm.spec metadata; export the model with export/to_onnx.py")
    return proto, props


def model_spec(props: dict) -> ModelSpec:
    try:
        return ModelSpec.from_dict(json.loads(props["lfm.spec"]))
    except (KeyError, ValueError, TypeError) as e:
        raise BuildError(f"unreadable lfm.spec metadata ({e}); re-export the model with export/to_onnx.py") from None


_DTYPES = {1: "float32", 2: "uint8", 10: "float16"}
_ONNX_UINT8 = 2


def input_info(proto, props: dict) -> dict:
    """The graph's one input: {"name", "dtype", "layout"} (layout from lfm.layout, else by dtype)."""
    initializers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise BuildError(f"expected one graph input, found {len(inputs)} ({', '.join(i.name for i in inputs)})")
    (inp,) = inputs
    tensor = inp.type.tensor_type
    dtype = _DTYPES.get(tensor.elem_type)
    if dtype is None:
        raise BuildError(f"input {inp.name!r} has ONNX element type {tensor.elem_type}; LFM's graphs take uint8 or float32")
    dims = tensor.shape.dim
    if len(dims) != 4:
        raise BuildError(f"input {inp.name!r} has {len(dims)} axes; LFM's graphs take 4 (NHWC uint8 or NCHW float)")
    layout = props.get("lfm.layout") or ("NHWC" if dtype == "uint8" else "NCHW")
    channel_axis = 3 if layout == "NHWC" else 1
    c = dims[channel_axis]
    if c.HasField("dim_value") and c.dim_value != 3:
        raise BuildError(f"input {inp.name!r} has {c.dim_value} channels on axis {channel_axis} ({layout}); expected 3")
    return {"name": inp.name, "dtype": dtype, "layout": layout}


def plugin_ops(proto) -> list[str]:
    """LFM's custom op types used by the graph (LfmNpr, LfmTopKPool): nodes in domain
    ai.onnx.contrib; empty for the standard graph."""
    return sorted({n.op_type for n in proto.graph.node
                   if n.domain == custom_ops.DOMAIN and n.op_type in custom_ops.OP_TYPES})


def onnx_precision(proto, props: dict) -> str:
    """'int8' for a QDQ graph, else the export's lfm.precision ('fp16' or 'fp32')."""
    if any(n.op_type in QDQ_OPS for n in proto.graph.node):
        return "int8"
    precision = props.get("lfm.precision", "fp32")
    return precision if precision in PRECISIONS else "fp32"


def int8_profile(props: dict) -> str | None:
    """The QDQ export's profile ('tensorrt' or 'cpu') from lfm.calibration, if recorded."""
    try:
        return json.loads(props["lfm.calibration"]).get("profile")
    except (KeyError, ValueError, AttributeError):
        return None


def choose_mode(onnx_path: str, model_precision: str, requested: str | None, qdq_profile: str | None) -> dict:
    """{"precision", "strongly_typed", "convert_fp16"} for a model and a requested precision, or
    BuildError saying which model to export instead. Every build is strongly typed; an fp16 engine
    from an fp32 model is built from the fp16 graph ``fp16_model`` makes (``convert_fp16``)."""
    requested = requested or model_precision
    if requested not in PRECISIONS:
        raise BuildError(f"unknown precision {requested!r}; expected one of {', '.join(PRECISIONS)}")
    strong = {"precision": requested, "strongly_typed": True, "convert_fp16": False}
    if model_precision == "int8":
        if requested != "int8":
            raise BuildError(f"{onnx_path} is an INT8 QDQ model: TensorRT runs its Q/DQ nodes in int8 whatever the "
                             "precision asked; build it with --precision int8, or build an fp32/fp16 engine from the "
                             "fp32 or fp16 ONNX model")
        if qdq_profile == "cpu":
            raise BuildError(f"{onnx_path} is the cpu-profile INT8 model (uint8 activations), which TensorRT rejects; "
                             "export the TensorRT one: python export/to_onnx.py CKPT -o lfm.int8.onnx --int8 "
                             "--int8-profile tensorrt --calib DIR")
        return strong
    if requested == "int8":
        raise BuildError(f"--precision int8 needs the INT8 QDQ model from the export stage (no calibrator here): "
                         f"python export/to_onnx.py CKPT -o lfm.int8.onnx --int8 --int8-profile tensorrt --calib DIR; "
                         f"{onnx_path} is {model_precision}")
    if requested == model_precision:
        return strong
    if model_precision == "fp16":  # requested fp32
        raise BuildError(f"{onnx_path} is an fp16 model; an fp32 engine needs the fp32 one (export/to_onnx.py without --fp16)")
    return {**strong, "convert_fp16": True}  # fp32 model, fp16 engine


def uint8_input_problem(proto) -> str | None:
    """One line when a uint8 graph input feeds anything but a Cast, else None. TensorRT takes a
    uint8 network input only into a Cast / Identity (its DataType.UINT8 rule; plugins take no uint8
    tensors at all): graphs exported before export/to_onnx.py cast first fed it to a Transpose
    (standard graph) or to LfmNpr (plugin graph)."""
    uint8_inputs = {i.name for i in proto.graph.input if i.type.tensor_type.elem_type == _ONNX_UINT8}
    for node in proto.graph.node:
        fed = uint8_inputs.intersection(node.input)
        if fed and node.op_type != "Cast":
            return (f"its uint8 input {sorted(fed)[0]!r} feeds {node.op_type} directly, and TensorRT takes a uint8 "
                    "input only into a Cast (the graph was exported before export/to_onnx.py cast first); export "
                    "it again with this version's export/to_onnx.py, same options")
    return None


def fp16_model(proto):
    """The fp16 graph TensorRT builds, strongly typed, for ``--precision fp16`` on an fp32 model.

    export/to_onnx.py --fp16's conversion (onnxruntime.transformers.float16, inputs and outputs
    keep their types), with LFM's custom ops kept in float32 (their plugins take float32; the
    converter puts Casts around them), the nodes put back in topological order (the converter
    appends its Casts at the end; ONNX and TensorRT's parser want producers first) and
    ``lfm.precision`` set to fp16. Needs only onnx and onnxruntime, no torch."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    half = convert_float_to_float16(proto, keep_io_types=True,
                                    op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(custom_ops.OP_TYPES))
    sort_nodes(half.graph)
    props = {p.key: p.value for p in half.metadata_props}
    props.update({"lfm.precision": "fp16", "lfm.fp16_converted_by": SCRIPT})
    del half.metadata_props[:]
    for key, value in props.items():
        entry = half.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(half)
    return half


def sort_nodes(graph) -> None:
    """Put a graph's nodes in topological order, in place; nodes keep their order where they can.
    BuildError when some node's input is produced nowhere (a cycle or a dangling name)."""
    available = {""} | {i.name for i in graph.input} | {i.name for i in graph.initializer}
    pending, ordered = list(graph.node), []
    while pending:
        waiting = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
            else:
                waiting.append(node)
        if len(waiting) == len(pending):
            missing = sorted({n for node in waiting for n in node.input if n not in available})
            raise BuildError(f"the graph cannot be ordered: no node produces {', '.join(missing[:3])}")
        pending = waiting
    ordered = [type(node).FromString(node.SerializeToString()) for node in ordered]  # copies outlive the clear
    del graph.node[:]
    graph.node.extend(ordered)


# ----------------------------------------------------------------------------------------------
# Versions: TensorRT, NumPy and Polygraphy against lfm.runtime.backends.trt_plan.TENSORRT_SUPPORT


def plugin_graph_problem(trt_version: str, numpy_version: str, has_plugin_module: bool) -> str | None:
    """One line when the plugin graph cannot be built with this TensorRT (and NumPy), else None.
    ``has_plugin_module``: ``import tensorrt.plugin`` would work."""
    floor = TENSORRT_SUPPORT["plugin_graph"]
    pip_floor = TENSORRT_SUPPORT["pip_plugin_module"]
    standard = "or build the standard graph (export/to_onnx.py --variant standard)"
    if not at_least(trt_version, floor):
        return (f"the plugin graph needs TensorRT {floor} or newer (tensorrt.plugin.aot_impl, for the plugins' "
                f"ahead-of-time kernels); this is TensorRT {trt_version}: upgrade it, {INSTALL}, {standard}")
    if not has_plugin_module:
        return (f"TensorRT {trt_version} has no tensorrt.plugin module, which the plugin graph needs (pip's TensorRT "
                f"wheels ship it from {pip_floor} on; the wheels in NGC containers and TensorRT tarballs have it): "
                f"{INSTALL}, which ask for TensorRT {pip_floor}+, {standard}")
    numpy_below, fixed_in = TENSORRT_SUPPORT["plugin_graph_numpy_below"], TENSORRT_SUPPORT["plugin_graph_numpy_fixed_in"]
    if not at_least(trt_version, fixed_in) and at_least(numpy_version, numpy_below):
        return (f"the plugin graph on TensorRT {trt_version} needs numpy < {numpy_below}: its plugin creator reads "
                f"LfmTopKPool's k with int() on an array, which NumPy {numpy_version} refuses (fixed in TensorRT "
                f"{fixed_in}); pip install 'numpy<{numpy_below}', or TensorRT {fixed_in}+, {standard}")
    return None


def polygraphy_problem(version: str | None) -> str | None:
    """One line when Polygraphy is missing (None) or older than the comparison needs, else None."""
    floor = TENSORRT_SUPPORT["polygraphy"]
    if version is None:
        return f"building an engine needs Polygraphy {floor}+ (its loaders and Comparator): {INSTALL}"
    if not at_least(version, floor):
        return (f"Polygraphy {version} is too old: the comparison after the build needs {floor}+ (SimpleCompareFunc); "
                f"pip install 'polygraphy>={floor}'")
    return None


def iteration_verdicts(accuracy, output: str = "logit") -> list[bool]:
    """Per-iteration pass/fail of one output from Polygraphy's ``Comparator.compare_accuracy``
    (0.53+: a list with one result per comparison function, each {(runner, runner): [per-iteration
    {output: verdict}]}; one function and one runner pair here)."""
    (result,) = accuracy
    (iterations,) = result.values()
    return [bool(it[output]) for it in iterations]


# ----------------------------------------------------------------------------------------------
# Optimisation profile


def parse_triple(text: str, what: str) -> tuple[int, int, int]:
    """'N' -> (N, N, N); 'MIN,OPT,MAX' -> ints with 1 <= MIN <= OPT <= MAX."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise BuildError(f"{what} {text}: expected N or MIN,OPT,MAX (integers)") from None
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise BuildError(f"{what} {text}: expected N or MIN,OPT,MAX, got {len(values)} numbers")
    lo, opt, hi = values
    if lo < 1:
        raise BuildError(f"{what} {text}: values must be >= 1")
    if not lo <= opt <= hi:
        raise BuildError(f"{what} {text}: need MIN <= OPT <= MAX")
    return lo, opt, hi


def default_size(spec: ModelSpec) -> str:
    """LFM's minimum input, the model's size, twice the model's size."""
    return f"{min_input_size(spec.top_k)},{spec.size},{max(2 * spec.size, min_input_size(spec.top_k))}"


def make_profile(inp: dict, batch: str | None, size: str | None, spec: ModelSpec) -> dict:
    """The optimisation profile as min/opt/max shapes in the input's layout (height = width
    ranges; ``opt`` square). BuildError for ranges LFM cannot take."""
    b = parse_triple(batch or DEFAULT_BATCH, "--batch")
    s = parse_triple(size or default_size(spec), "--size")
    smallest = min_input_size(spec.top_k)
    if s[0] < smallest:
        raise BuildError(f"--size {size}: minimum {s[0]} is below LFM's smallest input, {smallest}x{smallest} for "
                         f"K={spec.top_k} (top-k pooling needs K values per salience map)")

    def shape(n, side):
        return [n, side, side, 3] if inp["layout"] == "NHWC" else [n, 3, side, side]

    profile = {"input": inp["name"], "layout": inp["layout"]}
    profile.update({k: shape(b[i], s[i]) for i, k in enumerate(("min", "opt", "max"))})
    return profile


# ----------------------------------------------------------------------------------------------
# Paths, commands, the sidecar


def default_output(onnx_path: str) -> str:
    base = onnx_path[:-5] if onnx_path.endswith(".onnx") else onnx_path
    return base + ".plan"


def rejected_path(plan: str) -> str:
    """lfm.plan -> lfm.rejected.plan (as to_onnx.py keeps lfm.rejected.onnx)."""
    base, ext = os.path.splitext(plan)
    return base + ".rejected" + (ext or ".plan")


def check_output(path: str) -> None:
    problem = output_problem(path, "lfm.plan")
    if problem:
        raise BuildError(problem)


def default_timing_cache(plan: str, trt_version: str, compute_capability: str) -> str:
    """Beside the plan, named by TensorRT release and GPU architecture (a timing cache holds
    measurements of one release on one architecture), so every build there reuses it."""
    cc = str(compute_capability).replace(".", "")
    return os.path.join(os.path.dirname(os.path.abspath(plan)), f"trt-{trt_release(trt_version)}-sm{cc}.timing.cache")


def build_command(onnx_path: str, plan: str, precision: str, profile: dict, workspace_mib: int, opt_level: int) -> list[str]:
    """The to_trt.py command that builds this engine again (kept in the sidecar, quoted in errors)."""
    b, h, _ = profile_axes(profile["layout"])
    batch = ",".join(str(profile[k][b]) for k in ("min", "opt", "max"))
    size = ",".join(str(profile[k][h]) for k in ("min", "opt", "max"))
    return ["python", SCRIPT, onnx_path, "-o", plan, "--precision", precision, "--batch", batch, "--size", size,
            "--workspace", str(workspace_mib), "--opt-level", str(opt_level)]


def make_sidecar(*, spec: ModelSpec, inp: dict, profile: dict, precision: str, mode: dict, trt_version: str,
                 device_name: str, compute_capability: str, onnx_path: str, onnx_sha256: str, onnx_props: dict,
                 plan_sha256: str, plugins: list[str], command: list[str], build: dict) -> dict:
    """What the engine cannot say about itself: the preprocessing spec, where and how it was built."""
    return {
        "format": SIDECAR_FORMAT,
        "spec": spec.to_dict(),
        "input": dict(inp),
        "profiles": [dict(profile)],
        "precision": precision,
        "strongly_typed": bool(mode["strongly_typed"]),
        "tensorrt": str(trt_version),
        "device": {"name": device_name, "compute_capability": str(compute_capability)},
        "onnx": {"path": onnx_path, "sha256": onnx_sha256, "precision": onnx_props.get("lfm.precision", ""),
                 "variant": onnx_props.get("lfm.variant", "standard"),
                 "source_sha256": onnx_props.get("lfm.source_sha256", "")},
        "plugins": list(plugins),
        "plan_sha256": plan_sha256,
        "command": list(command),
        "build": dict(build),
    }


def format_command(command: list[str]) -> str:
    return shlex.join(command)


def save_build(plan: str, plan_bytes: bytes, sidecar: dict, report: dict) -> str | None:
    """Write the build's files. Passed (``report["passed"]``): PLAN, PLAN.json and PLAN.report.json,
    each written beside its place and renamed (the plan first, its sidecar right after). Failed:
    the plan only as lfm.rejected.plan and the report; PLAN and its sidecar stay as they were.
    Returns the rejected plan's path, or None."""
    import tempfile

    from lfm.runtime.files import give_default_mode, write_target
    from lfm.runtime.backends.trt_plan import sidecar_path, write_json_atomic

    target = write_target(plan)  # through a symlink, as `> lfm.plan` would
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(target) + ".", suffix=".tmp", dir=os.path.dirname(target))
    give_default_mode(fd)  # readable as a plain open() would make it, not mkstemp's 600
    report_path = plan + ".report.json"
    side_tmp = sidecar_path(plan) + ".new"
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(plan_bytes)
        if report["passed"]:
            write_json_atomic(side_tmp, sidecar)
            os.replace(tmp, target)
            os.replace(side_tmp, sidecar_path(plan))
            write_json_atomic(report_path, report)
            return None
        rejected = rejected_path(plan)
        os.replace(tmp, rejected)
        write_json_atomic(report_path, report)
        return rejected
    finally:  # a failure (a full disk, SIGTERM) leaves no temp file behind
        for leftover in (tmp, side_tmp):
            if os.path.exists(leftover):
                os.unlink(leftover)


# ----------------------------------------------------------------------------------------------
# Comparison feeds and the verdict


def comparison_shapes(profile: dict) -> list[tuple[int, int, int]]:
    """(batch, height, width) shapes to compare on: the profile's min, opt and max, and an odd,
    non-square one inside it (NPR's odd-size path) where the range allows."""
    b, h, w = profile_axes(profile["layout"])
    out = []
    for k in ("min", "opt", "max"):
        out.append((profile[k][b], profile[k][h], profile[k][w]))
    lo_b, hi_b = profile["min"][b], profile["max"][b]
    lo_h, hi_h = profile["min"][h], profile["max"][h]
    lo_w, hi_w = profile["min"][w], profile["max"][w]
    opt_h = profile["opt"][h]
    odd_h = next((v for v in (opt_h - 1, opt_h + 1, lo_h + 1, hi_h - 1) if lo_h <= v <= hi_h and v % 2), None)
    odd_w = next((v for v in (opt_h + 1, opt_h + 3, hi_w - 1, lo_w + 1) if lo_w <= v <= hi_w and v % 2 and v != odd_h), None)
    if odd_h is not None and odd_w is not None:
        out.append((min(max(3, lo_b), hi_b), odd_h, odd_w))
    unique = []
    for s in out:
        if s not in unique:
            unique.append(s)
    return unique


def _pattern(kind: str, h: int, w: int) -> np.ndarray:
    """Deterministic uint8 HWC images: a smooth gradient and 2x nearest up-sampled noise."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    if kind == "gradient":
        img = np.stack([xx / w, yy / h, (xx + yy) / (w + h)], -1) * 255
    else:
        small = np.random.default_rng(7).integers(0, 256, ((h + 1) // 2, (w + 1) // 2, 3))
        img = small.repeat(2, 0).repeat(2, 1)[:h, :w]
    return img.astype(np.uint8)


def to_input(pixels: np.ndarray, inp: dict, spec: ModelSpec) -> np.ndarray:
    """uint8 NHWC pixels -> what the graph takes (the bytes for uint8 NHWC; normalised NCHW float32)."""
    if inp["dtype"] == "uint8":
        return np.ascontiguousarray(pixels)
    x = (pixels.astype(np.float32) / np.float32(255) - np.float32(spec.mean)) / np.float32(spec.std)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.dtype(inp["dtype"]))


def synthetic_feeds(inp: dict, spec: ModelSpec, profile: dict, seed: int = 0) -> list[OrderedDict]:
    """The two fixed patterns at the profile's opt size (padded with noise to its minimum batch),
    then seeded random images at every ``comparison_shapes`` shape."""
    rng = np.random.default_rng(seed)
    b, h, w = profile_axes(profile["layout"])
    opt_h, opt_w = profile["opt"][h], profile["opt"][w]
    fixed = [_pattern("gradient", opt_h, opt_w), _pattern("upsampled", opt_h, opt_w)]
    n_fixed = min(max(2, profile["min"][b]), profile["max"][b])
    while len(fixed) < n_fixed:
        fixed.append(rng.integers(0, 256, (opt_h, opt_w, 3), dtype=np.uint8))
    batches = [np.stack(fixed[:n_fixed])]
    batches += [rng.integers(0, 256, (n, hh, ww, 3), dtype=np.uint8) for n, hh, ww in comparison_shapes(profile)]
    return [OrderedDict([(inp["name"], to_input(p, inp, spec))]) for p in batches]


def image_feeds(files: list[str], inp: dict, spec: ModelSpec, profile: dict) -> tuple[list[OrderedDict], list[str]]:
    """Images prepared by the model's own spec (lfm.runtime's decoder), grouped by shape into
    batches of the profile's opt batch; (feeds, notes on images left out)."""
    from lfm.runtime.preprocess import ImageError, load_tiles
    from lfm.runtime.backends.trt_plan import ShapeError, check_shape

    groups: dict[tuple, list[np.ndarray]] = {}
    notes = []
    for f in files:
        try:
            arrays = load_tiles(f, spec)
        except ImageError as e:
            notes.append(f"{f}: {e.problem}")
            continue
        for a in arrays:
            shape = (1,) + a.shape if inp["layout"] == "NHWC" else (1, 3) + a.shape[:2]
            try:
                check_shape(shape, profile)
            except ShapeError:
                notes.append(f"{f}: {a.shape[0]}x{a.shape[1]} is outside the profile ({describe_profile(profile)})")
                continue
            groups.setdefault(a.shape, []).append(a)
    batch = profile["opt"][profile_axes(profile["layout"])[0]]
    feeds = []
    for arrays in groups.values():
        for i in range(0, len(arrays), batch):
            chunk = arrays[i:i + batch]
            while len(chunk) < profile["min"][profile_axes(profile["layout"])[0]]:
                chunk = chunk + chunk[:1]
            feeds.append(OrderedDict([(inp["name"], to_input(np.stack(chunk), inp, spec))]))
    return feeds, notes


def logit_threshold(threshold: float) -> float:
    """The logit at which sigmoid(logit) equals the score threshold (``spec.logit_boundary``)."""
    return logit_boundary(threshold)


def judge(precision: str, reference: list, engine: list, threshold: float = 0.5,
          tolerance_passed: list[bool] | None = None) -> dict:
    """The verdict from per-feed logits of ONNX Runtime (reference) and the engine.

    ``tolerance_passed``: Polygraphy's SimpleCompareFunc verdict per feed (fp32/fp16); ignored
    for INT8. Decisions: score > threshold, as the runtime's records."""
    tol = TOLERANCES[precision]
    t = logit_threshold(threshold)
    feeds, flips, beyond, n = [], 0, 0, 0
    max_abs = max_rel = 0.0
    for i, (r, e) in enumerate(zip(reference, engine)):
        r = np.asarray(r, np.float64).reshape(-1)
        e = np.asarray(e, np.float64).reshape(-1)
        if r.shape != e.shape:
            raise ValueError(f"feed {i}: reference has {r.size} logits, engine {e.size}")
        diff = np.abs(r - e)
        finite = bool(np.all(np.isfinite(e)))
        abs_d = float(diff.max()) if finite else math.inf
        rel_d = float((diff / np.maximum(np.abs(r), 1e-12)).max()) if finite else math.inf
        flip = (r > t) != (e > t)
        far = flip & (np.abs(r - t) > tol.margin)
        entry = {"images": int(r.size), "max_absdiff": abs_d, "max_reldiff": rel_d, "flips": int(flip.sum()),
                 "flips_beyond_margin": int(far.sum())}
        if tol.rtol is not None:
            ok = (abs_d <= tol.atol or rel_d <= tol.rtol) if tolerance_passed is None else bool(tolerance_passed[i])
            entry["within_tolerance"] = ok and finite
        feeds.append(entry)
        flips, beyond, n = flips + entry["flips"], beyond + entry["flips_beyond_margin"], n + entry["images"]
        max_abs, max_rel = max(max_abs, abs_d), max(max_rel, rel_d)
    tolerance_ok = all(f.get("within_tolerance", True) for f in feeds)
    return {
        "precision": precision,
        "tolerance": {"rtol": tol.rtol, "atol": tol.atol, "decision_margin": tol.margin, "why": tol.why},
        "feeds": feeds,
        "images": n,
        "decision_flips": flips,
        "flips_beyond_margin": beyond,
        "decision_agreement": (1 - flips / n) if n else None,
        "max_abs_logit_diff": max_abs,
        "max_rel_logit_diff": max_rel,
        "passed": bool(feeds) and tolerance_ok and beyond == 0,
    }


def format_report(report: dict, shapes: list) -> str:
    v = report
    tol = v["tolerance"]
    rule = (f"max error within rtol {tol['rtol']} or atol {tol['atol']}" if tol["rtol"] is not None
            else "decisions only")
    lines = [(f"comparison ({v['precision']} engine against ONNX Runtime on the same ONNX model; {rule}; no decision "
              f"flip beyond {tol['decision_margin']} of the threshold's logit):")]
    for shape, f in zip(shapes, v["feeds"]):
        ok = f.get("within_tolerance")
        mark = "" if ok is None else ("  ok" if ok else "  FAIL")
        lines.append(f"  input {str(list(shape)):<20} max |dlogit| {f['max_absdiff']:.2e}  rel {f['max_reldiff']:.2e}  "
                     f"flips {f['flips']} ({f['flips_beyond_margin']} beyond margin){mark}")
    agreement = v["decision_agreement"]
    lines.append(f"  {v['images']} images, decision agreement {100 * agreement:.2f} %, {v['decision_flips']} flips "
                 f"({v['flips_beyond_margin']} beyond margin): {'PASSED' if v['passed'] else 'FAILED'}"
                 if agreement is not None else "  no images compared: FAILED")
    return "\n".join(lines)


def import_tensorrt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BuildError(f"building an engine needs TensorRT ({e}); on a machine with an NVIDIA GPU: "
                         "pip install -e '.[tensorrt]' (TensorRT and cuda-python for a CUDA 13 driver; "
                         "'.[tensorrt-cu12]' for a CUDA 12 driver)") from None
    problem = tensorrt_problem(trt.__version__)
    if problem:
        raise BuildError(problem)
    return trt


def check_polygraphy() -> None:
    """BuildError before the build (not after it) when Polygraphy cannot do the comparison."""
    try:
        import polygraphy
    except ImportError:
        version = None
    else:
        version = getattr(polygraphy, "__version__", "0")
    problem = polygraphy_problem(version)
    if problem:
        raise BuildError(problem)


def check_plugin_graph(trt_version: str) -> None:
    """BuildError before registering plugins when this TensorRT / NumPy cannot build the plugin graph."""
    import importlib.util

    try:
        has_module = importlib.util.find_spec("tensorrt.plugin") is not None
    except ImportError:
        has_module = False
    problem = plugin_graph_problem(trt_version, np.__version__, has_module)
    if problem:
        raise BuildError(problem)


def import_plugins():
    """lfm.kernels.trt_plugins, for the plugin graph only (it needs torch and triton)."""
    try:
        from lfm.kernels import trt_plugins
    except ImportError as e:
        raise BuildError(f"the plugin graph needs LFM's TensorRT plugins (lfm.kernels.trt_plugins: {e}); install the "
                         "package with its kernels, or build the standard graph (export/to_onnx.py --variant standard)") from None
    return trt_plugins


__all__ = [
    "BuildError", "Tolerance", "TOLERANCES", "PRECISIONS", "read_onnx", "model_spec", "input_info", "plugin_ops",
    "onnx_precision", "int8_profile", "choose_mode", "uint8_input_problem", "fp16_model", "sort_nodes",
    "plugin_graph_problem", "polygraphy_problem", "iteration_verdicts", "tensorrt_untested", "parse_triple",
    "default_size", "make_profile",
    "default_output", "rejected_path", "check_output", "default_timing_cache", "build_command", "make_sidecar",
    "format_command", "save_build", "comparison_shapes", "synthetic_feeds", "image_feeds", "to_input", "logit_threshold", "judge",
    "format_report", "import_tensorrt", "check_polygraphy", "check_plugin_graph", "import_plugins",
]
