"""Inspect a model, engine or checkpoint: what it is, what it takes, how it was made.

    python runtime/inspect_model.py MODEL [--json]
    python -m lfm.runtime.inspect_model MODEL [--json]

MODEL is an ONNX model (export/to_onnx.py), a TensorRT plan (export/to_trt.py, with its
PLAN.json sidecar beside it) or a PyTorch checkpoint (ours or upstream's), told apart by
content and extension. The report (text, or one JSON object with --json) gives the kind, size
and SHA-256 of the file, then:

  ONNX:        inputs and outputs (dtypes, shapes with their dynamic axes), the LFM spec from the
               metadata, precision (from the graph: QDQ nodes, float16 weights), opset, custom-op
               domains (the plugin variant), producer, and every lfm.* metadata key (provenance:
               source checkpoint and its SHA-256, exporter, library versions); and the backend
               --backend auto runs it on here, and why (``default_backend``). The graph itself
               is read with the `onnx` package ([export] extra) where it is installed; without
               it, what needs it is named as not read.
  plan:        its sidecar's record: TensorRT version, GPU, precision, optimisation profiles,
               spec, source model and its checksum. The plan is never deserialised (no TensorRT):
               it is taken for an engine when its SHA-256 is its sidecar's, or else when it starts
               as serialized engines are observed to (``trt_plan.plan_header``); otherwise exit 2.
  checkpoint:  architecture, ours or upstream's, the spec if stored, epoch and metrics if stored
               (needs PyTorch: the [train] extra).

Every model with a spec: where its threshold came from (lfm calibrate's record) and the band
its records are flagged 'uncertain' with, and where that came from (``uncertain_band`` in JSON).

Exit status: 0 when the file was inspected (warnings, if any, are part of the report), 2 when
it could not be (missing, unreadable, not a model, truncated): one line, ``error: PATH: problem``.
"""
from __future__ import annotations

import json
import os
import sys
import zipfile

if __package__ in (None, ""):  # run as a script: runtime/ is sys.path[0]; import the installed package
    sys.path.pop(0)

from lfm.runtime import custom_ops  # noqa: E402  (numpy only)
from lfm.runtime.backends.auto import choose_backend  # noqa: E402  (no backend imported)
from lfm.runtime.backends.base import BackendError  # noqa: E402
from lfm.runtime.backends.onnxrt import inference_session  # noqa: E402  (onnxruntime on use)
from lfm.runtime.backends.trt_plan import (EngineError, describe_profile, plan_header, read_sidecar,  # noqa: E402
                                           rebuild_command, recognise_plan, sidecar_path)
from lfm.runtime.files import file_sha256, first_line  # noqa: E402
from lfm.runtime.flags import band_text, model_band  # noqa: E402
from lfm.runtime.spec import ModelSpec, calibration_of, threshold_text  # noqa: E402

KINDS = {"onnx": "ONNX model", "plan": "TensorRT plan", "checkpoint": "PyTorch checkpoint"}
ONNX_EXTENSIONS = (".onnx",)
PLAN_EXTENSIONS = (".plan", ".engine", ".trt")
CHECKPOINT_EXTENSIONS = (".pt", ".pth", ".ckpt", ".tar")
EXPORT_HINT = "pip install -e '.[export]'"
TRAIN_HINT = "pip install -e '.[train]'"

# metadata_props written by export/onnx_export.py ``metadata`` (the spec and its parts) and by
# export/quantize.py; every other lfm.* key is provenance (source, exporter, library versions).
SPEC_KEYS = ("lfm.spec", "lfm.input", "lfm.layout", "lfm.policy", "lfm.size", "lfm.mean", "lfm.std",
             "lfm.threshold", "lfm.top_k")
DESCRIPTION_KEYS = ("lfm.precision", "lfm.variant", "lfm.calibration")
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
# ONNX Runtime's type strings that differ from numpy's names
ORT_DTYPES = {"float": "float32", "double": "float64"}


class InspectError(RuntimeError):
    """A file that cannot be inspected; the message is one line, ``PATH: problem``."""


# ----------------------------------------------------------------------------------------------
# The file: readable, its kind, its checksum


def first_bytes(path: str, n: int = 64) -> bytes:
    """The file's first bytes; InspectError, naming the problem, when it is no readable file."""
    if not os.path.exists(path):
        raise InspectError(f"{path}: no such file")
    if os.path.isdir(path):
        raise InspectError(f"{path}: is a directory; give a model, engine or checkpoint file")
    try:
        with open(path, "rb") as f:
            head = f.read(n)
    except OSError as e:
        raise InspectError(f"{path}: cannot read it ({e.strerror})") from None
    if not head:
        raise InspectError(f"{path}: empty file (0 bytes)")
    return head


def looks_like_checkpoint(path: str, head: bytes) -> bool:
    """torch.save's zip archive (a data.pkl inside) or its legacy pickle (protocol byte 0x80).
    An ONNX file starts with a protobuf tag (0x08, ir_version), never with either."""
    if head.startswith(b"\x80"):
        return True
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                return any(name.endswith("data.pkl") for name in z.namelist())
        except (zipfile.BadZipFile, OSError):
            return False
    return False


def detect_kind(path: str, head: bytes) -> str:
    """'checkpoint', 'plan' or 'onnx': content first where it is recognisable, then extension;
    anything else is tried as ONNX (whose loader then names the problem)."""
    if looks_like_checkpoint(path, head):
        return "checkpoint"
    if plan_header(head) is not None:
        return "plan"
    ext = os.path.splitext(path)[1].lower()
    if ext in PLAN_EXTENSIONS:
        return "plan"
    if ext in CHECKPOINT_EXTENSIONS:
        return "checkpoint"  # not torch's format: loading it names the problem
    if ext not in ONNX_EXTENSIONS and os.path.isfile(sidecar_path(path)):
        return "plan"  # an engine named otherwise, found by its sidecar
    return "onnx"



def inspect_file(path: str | os.PathLike) -> dict:
    """Everything this module can tell about one file, as a JSON-ready dict. InspectError (one
    line, ``PATH: problem``) when it is missing, unreadable or not a model."""
    path = os.fspath(path)
    head = first_bytes(path)
    kind = detect_kind(path, head)
    report = {"path": path, "kind": kind, "kind_name": KINDS[kind], "size_bytes": os.path.getsize(path),
              "sha256": file_sha256(path), "warnings": []}
    {"onnx": inspect_onnx, "plan": inspect_plan, "checkpoint": inspect_checkpoint}[kind](path, report)
    report["uncertain_band"] = uncertain_band(report.get("spec"))
    return report


def uncertain_band(spec: dict | None) -> float | None:
    """The band the runtime flags this model's records 'uncertain' with (flags.model_band), None
    without a spec or with one whose band is unusable (the text says why)."""
    try:
        return model_band(ModelSpec.from_dict(spec).extra) if spec else None
    except ValueError:
        return None


# ----------------------------------------------------------------------------------------------
# ONNX: ONNX Runtime for inputs, outputs and metadata; the onnx package, where installed, for the graph


def one_line(error: Exception) -> str:
    first = first_line(error)
    # "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Load model from X failed:Protobuf parsing failed."
    return first.rsplit(" failed:", 1)[-1].strip() if "ONNXRuntimeError" in first else first


def ort_session(path: str):
    """(session, None) or (None, why not). CPU, no graph optimisation: only its description is read.
    A plugin graph gets LFM's custom ops registered, as the runtime's OnnxRunner does."""
    try:
        return inference_session(path, providers="cpu", threads=1, optimization="disable"), None
    except BackendError as e:  # a plugin graph without onnxruntime-extensions
        return None, str(e)
    except Exception as e:  # onnxruntime raises its own exception types for bad files
        return None, one_line(e)


def onnx_proto(path: str):
    """(ModelProto, None) or (None, why not): the graph, without external data, where the onnx
    package is installed."""
    try:
        import onnx
    except ImportError:
        return None, f"the onnx package is not installed ({EXPORT_HINT})"
    try:
        proto = onnx.load(path, load_external_data=False)
    except Exception as e:  # protobuf's DecodeError, and whatever else a corrupt file raises
        return None, f"onnx cannot parse it ({one_line(e)})"
    if not proto.graph.node:
        return None, "onnx finds no graph in it"
    return proto, None


def io_from_session(session) -> dict:
    def describe(arg):
        dtype = arg.type[len("tensor("):-1] if arg.type.startswith("tensor(") else arg.type
        # shape: ints, axis names for dynamic axes, None for unnamed ones
        return {"name": arg.name, "dtype": ORT_DTYPES.get(dtype, dtype), "shape": list(arg.shape or [])}

    return {"inputs": [describe(a) for a in session.get_inputs()],
            "outputs": [describe(a) for a in session.get_outputs()]}


def io_from_proto(proto) -> dict:
    from onnx import helper

    initializers = {i.name for i in proto.graph.initializer}

    def describe(value):
        tensor = value.type.tensor_type
        try:
            dtype = helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
        except (KeyError, TypeError, ValueError):
            dtype = str(tensor.elem_type)
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim]
        return {"name": value.name, "dtype": dtype, "shape": shape}

    return {"inputs": [describe(v) for v in proto.graph.input if v.name not in initializers],
            "outputs": [describe(v) for v in proto.graph.output]}


def graph_precision(proto) -> dict:
    """What the graph computes in, from the graph itself: 'int8' when it holds quantisation nodes
    (QDQ, or QOperator/integer ops), 'fp16' when float16 weights outnumber float32 ones (by
    values), else 'fp32'; with the counts it was decided from."""
    from onnx import TensorProto

    ops: dict[str, int] = {}
    for node in proto.graph.node:
        ops[node.op_type] = ops.get(node.op_type, 0) + 1
    weights: dict[str, dict] = {}
    for init in proto.graph.initializer:
        name = TensorProto.DataType.Name(init.data_type).lower()
        values = 1
        for d in init.dims:
            values *= d
        entry = weights.setdefault(name, {"tensors": 0, "values": 0})
        entry["tensors"] += 1
        entry["values"] += values
    quant_ops = {op: n for op, n in ops.items()
                 if op in QDQ_OPS or op.startswith("QLinear") or op.endswith("Integer") or op == "DynamicQuantizeLinear"}
    fp16 = weights.get("float16", {}).get("values", 0)
    fp32 = weights.get("float", {}).get("values", 0)
    precision = "int8" if quant_ops else "fp16" if fp16 > fp32 else "fp32"
    return {"precision": precision, "quantization_ops": quant_ops, "weights": weights}


def graph_description(proto) -> dict:
    """Opset, IR version, producer, custom-op domains and the ops used from them."""
    opsets = {o.domain or "ai.onnx": o.version for o in proto.opset_import}
    custom: dict[str, list[str]] = {}
    for node in proto.graph.node:
        if node.domain not in STANDARD_DOMAINS:
            ops = custom.setdefault(node.domain, [])
            if node.op_type not in ops:
                ops.append(node.op_type)
    for domain in opsets:  # imported but unused domains are listed too
        if domain not in STANDARD_DOMAINS:
            custom.setdefault(domain, [])
    return {"opset": opsets.get("ai.onnx"), "opset_imports": opsets, "ir_version": proto.ir_version,
            "producer_version": proto.producer_version, "custom_domains": {d: sorted(o) for d, o in custom.items()},
            "nodes": len(proto.graph.node), **graph_precision(proto)}


def spec_from_metadata(props: dict, report: dict) -> dict | None:
    """The spec as the runtime reads it (``lfm.spec``, JSON, through ModelSpec.from_dict, as
    backends.onnxrt.OnnxRunner does); None, with a warning, when absent or unreadable."""
    if "lfm.spec" not in props:
        report["warnings"].append(f"{report['path']}: no lfm.spec metadata: not exported by export/to_onnx.py, "
                                  "so runtime/infer.py will refuse it")
        return None
    try:
        return ModelSpec.from_dict(json.loads(props["lfm.spec"])).to_dict()
    except (ValueError, TypeError, AttributeError) as e:
        report["warnings"].append(f"{report['path']}: unreadable lfm.spec metadata ({e}); re-export the model "
                                  "with export/to_onnx.py")
        return None


def inspect_onnx(path: str, report: dict) -> None:
    session, session_problem = ort_session(path)
    proto, proto_problem = onnx_proto(path)
    if session is None and proto is None:
        raise InspectError(f"{path}: not a loadable ONNX model, or truncated/corrupt ({session_problem})")
    report["onnxruntime_loads"] = session is not None
    if session is not None:
        meta = session.get_modelmeta()
        report.update(io_from_session(session))
        props = dict(meta.custom_metadata_map)
        report["producer"] = meta.producer_name
    else:
        report["warnings"].append(f"{path}: ONNX Runtime cannot load it ({session_problem}); read with onnx instead")
        report.update(io_from_proto(proto))
        props = {p.key: p.value for p in proto.metadata_props}
        report["producer"] = proto.producer_name

    report["spec"] = spec_from_metadata(props, report)
    report["metadata"] = {k: props[k] for k in sorted(props) if k.startswith("lfm.")}
    report["other_metadata"] = {k: props[k] for k in sorted(props) if not k.startswith("lfm.")}
    report["provenance"] = {k[len("lfm."):]: v for k, v in report["metadata"].items()
                            if k not in SPEC_KEYS + DESCRIPTION_KEYS}
    try:
        report["calibration"] = json.loads(props["lfm.calibration"]) if "lfm.calibration" in props else None
    except ValueError:
        report["calibration"] = None
        report["warnings"].append(f"{path}: unreadable lfm.calibration metadata")
    report["uses_lfm_custom_ops"] = custom_ops.uses_custom_ops(path)  # read from the protobuf, no onnx needed

    declared = props.get("lfm.precision")
    if proto is not None:
        report["graph"] = graph_description(proto)
        report["precision"], report["precision_from"] = report["graph"]["precision"], "graph"
        if declared and declared != report["precision"]:
            report["warnings"].append(f"{path}: metadata says lfm.precision={declared}, the graph is "
                                      f"{report['precision']}")
    else:
        report["graph"] = None
        report["graph_not_read"] = (f"{proto_problem}: opset, custom-op domains and precision from the graph "
                                    "were not read")
        report["precision"] = declared
        report["precision_from"] = "metadata" if declared else None
    plugins = report["uses_lfm_custom_ops"]
    report["variant"] = props.get("lfm.variant") or ("plugins" if plugins else "standard")
    backend, why = choose_backend(path)  # what --model runs it on here by default (--backend auto)
    report["default_backend"] = {"backend": backend, "why": why}


# ----------------------------------------------------------------------------------------------
# TensorRT plan: its sidecar only


def inspect_plan(path: str, report: dict) -> None:
    report["deserialised"] = False
    report["sidecar_path"] = sidecar_path(path)
    try:
        sidecar = read_sidecar(path)  # validated as TrtRunner reads it
    except EngineError as e:
        sidecar, sidecar_problem = None, str(e)
    head = first_bytes(path)
    try:
        report["recognised_by"] = recognise_plan(path, head, report["sha256"], sidecar)
    except EngineError as e:  # random bytes named lfm.plan: not reported as an engine
        raise InspectError(str(e)) from None
    report["header"] = plan_header(head)
    if sidecar is None:
        report["sidecar_read"] = False
        report["warnings"].append(sidecar_problem)
        return
    report["sidecar_read"] = True
    report["tensorrt"] = sidecar["tensorrt"]
    report["device"] = sidecar["device"]
    report["precision"] = sidecar["precision"]
    report["strongly_typed"] = sidecar.get("strongly_typed")
    report["input"] = sidecar["input"]
    report["profiles"] = []
    for profile in sidecar["profiles"]:
        try:
            ranges = describe_profile(profile)
        except (KeyError, TypeError, ValueError, IndexError):
            ranges = None
        report["profiles"].append({**profile, "ranges": ranges})
    try:
        report["spec"] = ModelSpec.from_dict(sidecar["spec"]).to_dict()  # as TrtRunner reads it
    except (ValueError, TypeError, AttributeError) as e:
        report["spec"] = None
        report["warnings"].append(f"{report['sidecar_path']}: unreadable spec ({e})")
    report["source_model"] = sidecar.get("onnx")
    report["plugins"] = sidecar.get("plugins", [])
    report["build"] = sidecar.get("build")
    report["rebuild_command"] = rebuild_command(sidecar)
    report["plan_sha256_matches_sidecar"] = report["sha256"] == sidecar["plan_sha256"]
    if not report["plan_sha256_matches_sidecar"]:
        report["warnings"].append(f"{path}: its SHA-256 differs from the one in its sidecar (modified, truncated or "
                                  f"replaced): runtime/infer.py --engine refuses it; rebuild it: {report['rebuild_command']}")


# ----------------------------------------------------------------------------------------------
# Checkpoint: through train/'s loader (torch, imported here only)


def inspect_checkpoint(path: str, report: dict) -> None:
    try:
        import torch  # noqa: F401  (only checkpoints need it)

        from lfm.train.checkpoint import CheckpointError, load_checkpoint
    except ImportError as e:
        raise InspectError(f"{path}: inspecting a PyTorch checkpoint needs PyTorch ({e}); install the [train] extra: "
                           f"{TRAIN_HINT}") from None
    try:
        loaded = load_checkpoint(path)
    except CheckpointError as e:
        raise InspectError(str(e)) from None
    raw = loaded.raw
    report["source"] = loaded.source
    report["ours"] = loaded.source == "lfm-deploy"
    report["format"] = raw.get("format")
    report["architecture"] = loaded.model.config.to_dict()
    report["parameters"] = sum(p.numel() for p in loaded.model.parameters())
    report["spec_stored"] = "spec" in raw
    report["spec"] = loaded.spec.to_dict()  # upstream's: the default the loader gives it
    report["training"] = {k: raw[k] for k in ("epoch", "step", "best", "elapsed") if k in raw}
    val = raw.get("val")
    report["metrics"] = val.get("mean") if isinstance(val, dict) and isinstance(val.get("mean"), dict) else None
    report["train_args"] = raw.get("train_args")
    report["stored_keys"] = sorted(raw)


# ----------------------------------------------------------------------------------------------
# Text


def _shape(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB ({n:,} bytes)" if n >= 1e5 else f"{n:,} bytes"


def _spec_line(spec: dict) -> str:
    return (f"input {spec['input']} {spec['layout']}, policy {spec['policy']}, size {spec['size']}, threshold "
            f"{spec['threshold']:g}, top-k K={spec['top_k']}, mean {list(spec['mean'])}, std {list(spec['std'])}")


def _onnx_lines(r: dict) -> list[str]:
    lines = [f"  loads in ONNX Runtime: {'yes' if r['onnxruntime_loads'] else 'no'}"]
    g = r["graph"]
    producer = r["producer"] + (f" {g['producer_version']}" if g and g["producer_version"] else "")
    lines.append(f"  producer: {producer or 'not recorded'}")
    if g:
        lines.append(f"  opset: {g['opset']} (imports: {', '.join(f'{d} {v}' for d, v in g['opset_imports'].items())}); "
                     f"IR version {g['ir_version']}; {g['nodes']} nodes")
        domains = "; ".join(f"{d} ({', '.join(ops) or 'imported, unused'})" for d, ops in g["custom_domains"].items())
        lines.append(f"  custom-op domains: {domains or 'none'}")
        how = ", ".join(f"{n} {op}" for op, n in g["quantization_ops"].items())
        weights = ", ".join(f"{d} {w['tensors']} ({w['values']:,} values)" for d, w in sorted(g["weights"].items()))
        lines.append(f"  precision: {r['precision']} (from the graph: {how or 'no quantisation nodes'}; weights: "
                     f"{weights or 'none'}; metadata says {r['metadata'].get('lfm.precision', 'nothing')})")
    else:
        lines.append(f"  custom-op domains: {custom_ops.DOMAIN if r['uses_lfm_custom_ops'] else 'none'} "
                     "(LFM's only; others not read)")
        lines.append(f"  precision: {r['precision'] or 'unknown'} (from the metadata)")
        lines.append(f"  graph not read: {r['graph_not_read']}")
    lines.append(f"  variant: {r['variant']}")
    lines.append(f"  runs on (--backend auto, on this machine): {r['default_backend']['backend']}: "
                 f"{r['default_backend']['why']}")
    lines.append("  inputs:")
    lines += [f"    {a['name']}  {a['dtype']}  {_shape(a['shape'])}" for a in r["inputs"]]
    lines.append("  outputs:")
    lines += [f"    {a['name']}  {a['dtype']}  {_shape(a['shape'])}" for a in r["outputs"]]
    lines.append(f"  spec: {_spec_line(r['spec']) if r['spec'] else 'none'}")
    if r["calibration"]:
        c = r["calibration"]
        lines.append(f"  calibration: profile {c.get('profile')}, {c.get('count')} images, method {c.get('method')}, "
                     f"int8 layers {', '.join(c.get('int8_layers') or [])}")
    if r["provenance"]:
        lines.append("  provenance: " + ", ".join(f"{k} {v or '(empty)'}" for k, v in r["provenance"].items()))
    lines.append("  metadata:")
    lines += [f"    {k} = {v}" for k, v in {**r["metadata"], **r["other_metadata"]}.items()]
    return lines


def _plan_lines(r: dict) -> list[str]:
    lines = ["  the plan itself was not deserialised (inspect never loads TensorRT)"]
    header = r["header"]
    if r["recognised_by"] == "sidecar":
        lines.append("  recognised as an engine by: its SHA-256, the one its sidecar records")
    else:
        built = f"; bytes 24-26 say TensorRT {header['tensorrt']}" if header["tensorrt"] else ""
        lines.append(f"  recognised as an engine by: its header only (magic {header['magic']!r}{built}; an observed "
                     "layout, not a documented one): whether TensorRT loads it is not known")
    if not r["sidecar_read"]:
        return lines + [f"  sidecar: {r['sidecar_path']}: not usable (see the warning)"]
    dev, inp, src = r["device"], r["input"], r["source_model"] or {}
    lines += [f"  sidecar: {r['sidecar_path']} (everything below comes from it)",
              f"  TensorRT {r['tensorrt']}, built on {dev.get('name')} (compute capability {dev.get('compute_capability')})",
              f"  precision: {r['precision']}{', strongly typed' if r['strongly_typed'] else ''}",
              f"  input: {inp.get('name')}  {inp.get('dtype')}  {inp.get('layout')}"]
    for i, p in enumerate(r["profiles"]):
        lines.append(f"  profile {i}: {p['ranges'] or '?'} (min {p.get('min')}, opt {p.get('opt')}, max {p.get('max')})")
    lines.append(f"  spec: {_spec_line(r['spec']) if r['spec'] else 'unreadable'}")
    lines.append(f"  source model: {src.get('path')} (sha256 {src.get('sha256')}, {src.get('precision') or '?'}, "
                 f"{src.get('variant')} variant; its checkpoint's sha256 {src.get('source_sha256') or 'not recorded'})")
    lines.append(f"  plugins: {', '.join(r['plugins']) or 'none'}")
    lines.append(f"  plan matches the sidecar's SHA-256: {'yes' if r['plan_sha256_matches_sidecar'] else 'NO'}")
    lines.append(f"  rebuild: {r['rebuild_command']}")
    return lines


def _checkpoint_lines(r: dict) -> list[str]:
    whose = "ours (lfm-deploy)" if r["ours"] else "upstream's (lmlpy/LFM)"
    lines = [f"  {whose}{', format ' + r['format'] if r['format'] else ''}",
             "  architecture: " + ", ".join(f"{k} {v}" for k, v in r["architecture"].items()),
             f"  parameters: {r['parameters']:,}",
             f"  spec: {_spec_line(r['spec'])}" + ("" if r["spec_stored"] else " (not stored: the loader's default)")]
    t = r["training"]
    if t:
        lines.append("  training: " + ", ".join(f"{k} {json.dumps(v)}" for k, v in t.items()))
    if r["metrics"]:
        lines.append("  validation: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in r["metrics"].items()))
    if not t and not r["metrics"]:
        lines.append("  training state: not stored")
    return lines


def _threshold_lines(spec: dict | None) -> list[str]:
    """Where the threshold came from, when export/calibrate.py fitted it (spec.extra["calibration"])."""
    calibration = calibration_of(ModelSpec.from_dict(spec)) if spec else None
    if calibration is None:
        return []
    c = calibration

    def rate(key):
        return f"{c[key]:.1%}" if isinstance(c.get(key), (int, float)) else "-"

    def figure(key):
        return f"{c[key]:.4f}" if isinstance(c.get(key), (int, float)) else "-"

    return [f"  {threshold_text(ModelSpec.from_dict(spec))}",
            f"  calibrated: {c.get('method')}, target FPR {rate('target_fpr')}, {c.get('false_positives')} of "
            f"{c.get('n_real')} real images called fake ({rate('achieved_fpr')}); on {c.get('n_fake')} generated: "
            f"TPR {rate('tpr')}, AP {figure('ap')}, AUC {figure('auc')}, EER {rate('eer')}; {c.get('skipped', 0)} "
            f"left out; was {c.get('previous_threshold')}; {c.get('date')}, lfm {c.get('lfm_version')}",
            f"  calibration data sha256 {c.get('data_sha256')}, model sha256 {c.get('model_sha256')}"]


def format_text(r: dict) -> str:
    lines = [f"{r['path']}: {r['kind_name']}", f"  size: {_size(r['size_bytes'])}", f"  sha256: {r['sha256']}"]
    lines += {"onnx": _onnx_lines, "plan": _plan_lines, "checkpoint": _checkpoint_lines}[r["kind"]](r)
    lines += _threshold_lines(r.get("spec"))
    lines += [f"  {band_text(ModelSpec.from_dict(r['spec']))}"] if r.get("spec") else []
    lines += [f"warning: {w}" for w in r["warnings"]]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# CLI


def parse_args(argv=None):
    from lfm.runtime.cli import ArgumentParser

    p = ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("model", metavar="MODEL", help="an ONNX model, a TensorRT plan (with PLAN.json) or a checkpoint")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        report = inspect_file(args.model)
    except InspectError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001  (one line, never a traceback: a file broken in a way not foreseen)
        print(f"error: {args.model}: cannot inspect it ({type(e).__name__}: {one_line(e)})", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2) if args.json else format_text(report))
    return 0


if __name__ == "__main__":
    from lfm.runtime.cli import run

    sys.exit(run(main))
