"""Write a Triton Inference Server model repository for an exported LFM model.

    python export/to_triton.py lfm.onnx --repository DIR [--name lfm] [--max-batch-size 32]
                               [--preferred-batch-sizes 8,16] [--max-queue-delay-us 2000]
                               [--max-queue-size 40] [--queue-timeout-ms 5000]
                               [--instances 2] [--kind auto|cpu|gpu] [--force]
    python export/to_triton.py lfm.plan --repository DIR ...     (TensorRT; reads lfm.plan.json)

For NVIDIA's Triton containers (nvcr.io/nvidia/tritonserver:<yy.mm>-py3), which bring the
onnxruntime, tensorrt and python backends. Four models, named from --name (default lfm):

    DIR/lfm_model/       the model itself: config.pbtxt (platform onnxruntime_onnx or tensorrt_plan,
                         dynamic batching, instance group) and 1/model.onnx | 1/model.plan;
                         input and outputs as the graph has them (pixels uint8 [-1,-1,3] or image
                         fp32 [3,-1,-1]; logit and score fp32, [batch] reshaped to [batch, 1])
    DIR/lfm_preprocess/  python backend, 1/model.py: encoded image bytes -> the model's input, by
                         the runtime's own decoding and preprocessing (lfm.runtime.preprocess, the
                         spec from the model's metadata, kept in config.pbtxt parameters),
                         each image's error (a bad image costs only its own answer) and its facts
                         (FP64 [2]: the policy's enlargement, its JPEG quality; for the flags).
    DIR/lfm_postprocess/ python backend, 1/model.py: logit + error + facts -> the serving contract's
                         outputs (lfm.runtime.serve_contract), labelled at the model's threshold
                         (lfm.threshold, a parameter of this config, from the model's spec) and
                         flagged as infer.py flags records (lfm.uncertain_band: the model's band).
    DIR/lfm/             ensemble: image BYTES [1] -> lfm_preprocess -> lfm_model -> lfm_postprocess
                         -> logit, score (FP64), label, error, flags (BYTES): the same name, input and
                         outputs as runtime/serve.py's model, so runtime/client.py reads both alike.

Load shedding, as runtime/serve.py does it: the ensemble's first step, lfm_preprocess, holds
at most --max-queue-size requests in its dynamic batcher's queue and refuses more at once (HTTP
503 / gRPC UNAVAILABLE, "Exceeds maximum queue size": runtime/client.py's ServerOverloaded);
both models refuse a request still queued after --queue-timeout-ms. lfm_model's queue has no
size bound of its own: what reaches it was admitted, and preprocessed, already (a bound there
would throw that work away); its inflow is bounded by lfm_preprocess's instances and batches.

The python-backend models import the lfm package: install it in the container first, e.g.
``pip install --no-deps /path/to/lfm-deploy pillow`` (numpy is there already); they refuse to
load, naming the problem, without it. Every config.pbtxt written is parsed back into
Triton's ModelConfig protobuf when tritonclient is installed (the [serve] extra).

--engine plans: the input, precision and optimisation profile come from the sidecar that
export/to_trt.py writes (PLAN.json); --max-batch-size is capped at the profile's largest batch.
An engine built with LFM's plugins needs no plugin library: export/to_trt.py builds them ahead of
time (AOT), so their kernels are inside the plan (nothing to LD_PRELOAD). A plan only runs on the
GPU architecture and TensorRT release it was built with: build it in (or for) the container you
deploy.
Policy "tiles" (several arrays per image) is not expressible as one preprocessing step: serve it
with runtime/serve.py. Exit status: 0 written, 2 bad model or arguments.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile

import numpy as np

if __package__ in (None, ""):  # run as a script: don't let export/'s modules shadow libraries
    sys.path.pop(0)

from lfm.runtime import serve_defaults as defaults  # noqa: E402  (serve.py's batching and queue defaults)
from lfm.runtime.cli import describe_os_error, run  # noqa: E402  (standard library only)
from lfm.runtime.files import files_under, first_line, overwrite_refusal  # noqa: E402  (standard library only)
from lfm.runtime.serve_contract import FACTS_WIDTH, OUTPUTS as SERVED_OUTPUTS  # noqa: E402  (numpy only)

KINDS = {"auto": "KIND_AUTO", "cpu": "KIND_CPU", "gpu": "KIND_GPU"}
# ONNX TensorProto element types -> Triton data types (those LFM's graphs can have)
ONNX_TO_TRITON = {1: "TYPE_FP32", 2: "TYPE_UINT8", 3: "TYPE_INT8", 6: "TYPE_INT32", 7: "TYPE_INT64", 9: "TYPE_BOOL",
                  10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16"}
NUMPY_TO_TRITON = {"uint8": "TYPE_UINT8", "float32": "TYPE_FP32", "float16": "TYPE_FP16"}
OUTPUTS = ("logit", "score")  # the graph's
# What the ensemble answers: the serving contract's outputs (serve_contract), as Triton types
CONTRACT_OUTPUTS = tuple((o, {np.float64: "TYPE_FP64", np.bytes_: "TYPE_STRING"}[dtype]) for o, dtype in SERVED_OUTPUTS)


class RepositoryError(ValueError):
    """A one-line, user-facing failure."""


def _cannot_read(path: str, e: OSError) -> RepositoryError:
    """An input file's OSError as one line: the system's reason, never Python's "[Errno N] ..."."""
    return RepositoryError(f"{path}: cannot read it ({describe_os_error(e)}); check the file and its permissions")


# --------------------------------------------------------------------------------------------
# What the model takes and gives


def describe_onnx(path: str) -> dict:
    """{"inputs": [(name, type, dims)], "outputs": [...], "spec": ModelSpec, "plugins": [...]} from
    the graph and its lfm.spec metadata; dims exclude the batch axis (-1 = dynamic)."""
    try:
        import onnx
    except ImportError:
        raise RepositoryError("reading an ONNX model needs onnx: pip install -e '.[export]'") from None
    from lfm.runtime.spec import ModelSpec

    try:
        proto = onnx.load(path, load_external_data=False)
    except OSError as e:  # the file itself (permissions, I/O), before onnx sees a byte
        raise _cannot_read(path, e) from None
    except Exception as e:
        raise RepositoryError(f"{path}: not a readable ONNX model ({first_line(e, empty='')})") from None
    for t in proto.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            raise RepositoryError(f"{path}: weights in external data files; re-export it as one file")
    props = {p.key: p.value for p in proto.metadata_props}
    if "lfm.spec" not in props:
        raise RepositoryError(f"{path}: no lfm.spec metadata; export it with export/to_onnx.py")
    spec = ModelSpec.from_dict(json.loads(props["lfm.spec"]))

    def tensors(values, kind):
        out = []
        for v in values:
            t = v.type.tensor_type
            if t.elem_type not in ONNX_TO_TRITON:
                raise RepositoryError(f"{path}: {kind} {v.name!r} has ONNX element type {t.elem_type}, not one Triton maps")
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            if not dims or dims[0] > 1:
                raise RepositoryError(f"{path}: {kind} {v.name!r} has shape {dims}; expected a leading dynamic batch axis")
            out.append((v.name, ONNX_TO_TRITON[t.elem_type], dims[1:]))
        return out

    initializers = {i.name for i in proto.graph.initializer}
    inputs = tensors([i for i in proto.graph.input if i.name not in initializers], "input")
    outputs = tensors(proto.graph.output, "output")
    if len(inputs) != 1:
        raise RepositoryError(f"{path}: expected one input, found {[n for n, _, _ in inputs]}")
    missing = [o for o in OUTPUTS if o not in [n for n, _, _ in outputs]]
    if missing:
        raise RepositoryError(f"{path}: no output(s) {missing}; export it with export/to_onnx.py")
    plugins = sorted({n.op_type for n in proto.graph.node if n.domain == "ai.onnx.contrib"})
    return {"inputs": inputs, "outputs": [o for o in outputs if o[0] in OUTPUTS], "spec": spec, "plugins": plugins,
            "max_batch": None}


def describe_plan(path: str) -> dict:
    """The same description for a TensorRT engine, from its sidecar PLAN.json (export/to_trt.py)."""
    from lfm.runtime.spec import ModelSpec

    sidecar = path + ".json"
    if not os.path.isfile(path):
        raise RepositoryError(f"{path}: no such file")
    try:
        with open(sidecar) as f:
            meta = json.load(f)
        spec = ModelSpec.from_dict(meta["spec"])
        inp = meta["input"]
        dtype = NUMPY_TO_TRITON[inp["dtype"]]
        layout = inp.get("layout") or ("NHWC" if inp["dtype"] == "uint8" else "NCHW")
        profile = meta["profiles"][0]
    except FileNotFoundError:
        raise RepositoryError(f"{path}: no sidecar {sidecar}; build the engine with export/to_trt.py") from None
    except OSError as e:
        raise _cannot_read(sidecar, e) from None
    except (KeyError, IndexError, ValueError, TypeError) as e:
        raise RepositoryError(f"{sidecar}: not an export/to_trt.py sidecar ({type(e).__name__}: {e})") from None
    dims = [-1, -1, 3] if layout == "NHWC" else [3, -1, -1]
    batch_axis_max = profile.get("max", [None])[0]
    return {"inputs": [(inp["name"], dtype, dims)], "outputs": [(o, "TYPE_FP32", []) for o in OUTPUTS], "spec": spec,
            "plugins": list(meta.get("plugins", [])), "max_batch": batch_axis_max}


# --------------------------------------------------------------------------------------------
# config.pbtxt text


def _q(s: str) -> str:
    """A protobuf text-format string literal."""
    if not s.isascii() or not s.isprintable():
        raise RepositoryError(f"cannot write {s!r} into config.pbtxt: printable ASCII only")
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _dims(dims) -> str:
    return "[ " + ", ".join(str(d) for d in dims) + " ]"


def _tensor(name: str, dtype: str, dims: list) -> str:
    if not dims:  # [batch] in the model: the API needs a non-empty dims, [batch, 1]
        return f"  {{\n    name: {_q(name)}\n    data_type: {dtype}\n    dims: [ 1 ]\n    reshape: {{ shape: [ ] }}\n  }}"
    return f"  {{\n    name: {_q(name)}\n    data_type: {dtype}\n    dims: {_dims(dims)}\n  }}"


def _batching(preferred, delay_us: int, max_queue_size: int = 0, queue_timeout_ms: int = 0) -> str:
    """dynamic_batching, with a queue policy when either bound is set (0: none): refuse a request
    beyond max_queue_size at once, and one still queued after queue_timeout_ms."""
    pref = f"\n  preferred_batch_size: {_dims(preferred)}" if preferred else ""
    policy = ""
    if max_queue_size or queue_timeout_ms:
        policy = ("\n  default_queue_policy {\n    timeout_action: REJECT\n"
                  f"    default_timeout_microseconds: {queue_timeout_ms * 1000}\n"
                  f"    allow_timeout_override: false\n    max_queue_size: {max_queue_size}\n  }}")
    return f"dynamic_batching {{{pref}\n  max_queue_delay_microseconds: {delay_us}{policy}\n}}"


def _parameters(params: dict) -> str:
    return "\n".join(f"parameters {{\n  key: {_q(k)}\n  value: {{ string_value: {_q(str(v))} }}\n}}"
                     for k, v in params.items())


def model_config(name: str, platform: str, desc: dict, max_batch: int, preferred, delay_us: int,
                 instances: int, kind: str, queue_timeout_ms: int = 0) -> str:
    filename = "model.plan" if platform == "tensorrt_plan" else "model.onnx"
    return "\n".join([
        "# LFM: the model. Written by export/to_triton.py.",
        f"name: {_q(name)}",
        f"platform: {_q(platform)}",
        f"default_model_filename: {_q(filename)}",
        f"max_batch_size: {max_batch}",
        "input [\n" + ",\n".join(_tensor(*t) for t in desc["inputs"]) + "\n]",
        "output [\n" + ",\n".join(_tensor(*t) for t in desc["outputs"]) + "\n]",
        _batching(preferred, delay_us, 0, queue_timeout_ms),  # the queue is bounded at the door: lfm_preprocess
        f"instance_group [\n  {{\n    count: {instances}\n    kind: {kind}\n  }}\n]",
        _parameters({"lfm.spec": desc["spec"].to_json()}),
    ]) + "\n"


def preprocess_config(name: str, desc: dict, max_batch: int, preferred, delay_us: int, instances: int,
                      max_pixels: int, max_queue_size: int = 0, queue_timeout_ms: int = 0) -> str:
    (in_name, in_type, in_dims) = desc["inputs"][0]
    spec = desc["spec"]
    if spec.policy in ("resize", "center-crop"):  # fixed size after the policy
        in_dims = [spec.size, spec.size, 3] if in_type == "TYPE_UINT8" else [3, spec.size, spec.size]
    return "\n".join([
        "# LFM: encoded image bytes -> the model's input (lfm.runtime.preprocess) and each image's error. "
        "Written by export/to_triton.py.",
        f"name: {_q(name)}",
        'backend: "python"',
        f"max_batch_size: {max_batch}",
        "input [\n" + _tensor("image", "TYPE_STRING", [1]) + "\n]",
        "output [\n" + ",\n".join([_tensor(in_name, in_type, in_dims), _tensor("error", "TYPE_STRING", [1]),
                                    _tensor("facts", "TYPE_FP64", [FACTS_WIDTH])]) + "\n]",
        _batching(preferred, delay_us, max_queue_size, queue_timeout_ms),
        f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}\n]",
        _parameters({"lfm.spec": spec.to_json(), "lfm.max_pixels": max_pixels}),
    ]) + "\n"


def postprocess_config(name: str, desc: dict, max_batch: int, instances: int) -> str:
    """The ensemble's last step: the model's logit, the preprocessing's error and facts -> the
    serving contract's outputs (serve_contract), labelled at the model's threshold (lfm.threshold)
    and flagged with the model's uncertain band (lfm.uncertain_band, ``flags.model_band``)."""
    from lfm.runtime.flags import model_band

    logit_type = next(t for o, t, _ in desc["outputs"] if o == "logit")
    try:
        band = model_band(desc["spec"].extra)
    except ValueError as e:
        raise RepositoryError(str(e)) from None
    return "\n".join([
        "# LFM: logit + preprocessing error and facts -> logit, score, label, error, flags "
        "(lfm.runtime.serve_contract). Written by export/to_triton.py.",
        f"name: {_q(name)}",
        'backend: "python"',
        f"max_batch_size: {max_batch}",
        "input [\n" + ",\n".join([_tensor("logit", logit_type, [1]), _tensor("error", "TYPE_STRING", [1]),
                                   _tensor("facts", "TYPE_FP64", [FACTS_WIDTH])]) + "\n]",
        "output [\n" + ",\n".join(_tensor(o, t, [1]) for o, t in CONTRACT_OUTPUTS) + "\n]",
        f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}\n]",
        _parameters({"lfm.threshold": desc["spec"].threshold, "lfm.uncertain_band": band}),
    ]) + "\n"


def _step(model: str, inputs: dict, outputs: dict) -> str:
    """One ensemble step: the model's tensors (keys) to and from the ensemble's (values)."""
    maps = [f"input_map {{ key: {_q(k)} value: {_q(v)} }}" for k, v in inputs.items()]
    maps += [f"output_map {{ key: {_q(k)} value: {_q(v)} }}" for k, v in outputs.items()]
    return f"    {{\n      model_name: {_q(model)}\n      model_version: -1" + "".join(f"\n      {m}" for m in maps) + "\n    }"


def ensemble_config(name: str, model_name: str, pre_name: str, post_name: str, desc: dict, max_batch: int) -> str:
    (in_name, _, _) = desc["inputs"][0]
    steps = [_step(pre_name, {"image": "image"},
                   {in_name: "preprocessed", "error": "preprocess_error", "facts": "preprocess_facts"}),
             _step(model_name, {in_name: "preprocessed"}, {"logit": "model_logit"}),
             _step(post_name, {"logit": "model_logit", "error": "preprocess_error", "facts": "preprocess_facts"},
                   {o: o for o, _ in CONTRACT_OUTPUTS})]
    return "\n".join([
        f"# LFM: image bytes -> {pre_name} -> {model_name} -> {post_name} -> logit, score, label, error, flags. "
        "Written by export/to_triton.py.",
        f"name: {_q(name)}",
        'platform: "ensemble"',
        f"max_batch_size: {max_batch}",
        "input [\n" + _tensor("image", "TYPE_STRING", [1]) + "\n]",
        "output [\n" + ",\n".join(_tensor(o, t, [1]) for o, t in CONTRACT_OUTPUTS) + "\n]",
        "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}",
        _parameters({"lfm.spec": desc["spec"].to_json()}),
    ]) + "\n"


# The python-backend model written as DIR/<name>_preprocess/1/model.py.
PREPROCESS_MODEL_PY = '''\
"""LFM preprocessing for Triton's python backend (written by export/to_triton.py).

Encoded image bytes (input "image", BYTES [batch, 1]) -> the LFM model's input, with the
runtime's own decoding and preprocessing: lfm.runtime.preprocess (Pillow: EXIF orientation,
any mode to RGB, the pixel limit against decompression bombs, then the model's size policy),
output "error" (BYTES [batch, 1]): b"" for an image prepared, else its problem, as
runtime/serve.py words it, and output "facts" (FP64 [batch, 2]: what preparing it learned,
lfm.runtime.serve_contract.facts_row, for the postprocessing's flags). A failed image gets a black placeholder in the model's input (its
logit is dropped by the postprocessing step), so it costs only its own answer, never its
request's or the other requests' batched with it. The spec comes from this model's
config.pbtxt parameters (lfm.spec, lfm.max_pixels).

Needs the lfm package in the container's Python: pip install --no-deps /path/to/lfm-deploy pillow.
"""
import json

import numpy as np
import triton_python_backend_utils as pb_utils

try:
    from lfm.runtime.flags import NO_FACTS
    from lfm.runtime.preprocess import DEFAULT_MAX_PIXELS, load_tiles_or_problem, normalize
    from lfm.runtime.serve_contract import facts_row
    from lfm.runtime.spec import ModelSpec, check_input_size, min_input_size
except ImportError as e:  # pragma: no cover - the container lacks the package
    raise ImportError(f"LFM preprocessing needs the lfm package in Triton's Python ({e}); "
                      "install it with: pip install --no-deps /path/to/lfm-deploy pillow") from None


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.spec = ModelSpec.from_dict(json.loads(params["lfm.spec"]))
        if self.spec.policy == "tiles":
            raise ValueError("policy tiles gives several arrays per image; serve it with runtime/serve.py")
        self.max_pixels = int(params.get("lfm.max_pixels", DEFAULT_MAX_PIXELS))
        self.output_name = config["output"][0]["name"]
        self.output_dtype = pb_utils.triton_string_to_numpy(config["output"][0]["data_type"])
        side = self.spec.size if self.spec.policy in ("resize", "center-crop") else min_input_size(self.spec.top_k)
        self.placeholder = (side, side, 3)  # a failed image's place when no image of its request succeeded

    def execute(self, requests):
        responses = []
        for request in requests:
            pixels, errors, facts = self._prepare(pb_utils.get_input_tensor_by_name(request, "image").as_numpy())
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(self.output_name, pixels), pb_utils.Tensor("error", errors),
                pb_utils.Tensor("facts", facts)]))
        return responses

    def _prepare(self, blobs):
        prepared = [self._one(blob) for blob in blobs.reshape(-1)]
        shape = next((a.shape for a, _, _ in prepared if a is not None), self.placeholder)
        arrays, errors, facts = [], [], []
        for a, problem, row in prepared:
            if a is not None and a.shape != shape:  # policy none: one batch holds one size
                a, problem = None, (f"{a.shape[1]}x{a.shape[0]} at its native size, another image of this request "
                                    f"{shape[1]}x{shape[0]} (policy none): send it in a request of its own")
            arrays.append(np.zeros(shape, np.uint8) if a is None else a)
            errors.append([problem.encode() if problem else b""])
            facts.append(row)
        batch = np.stack(arrays)
        if self.spec.input != "uint8":
            batch = normalize(batch, self.spec.mean, self.spec.std)
        return batch.astype(self.output_dtype, copy=False), np.array(errors, dtype=object), np.array(facts, np.float64)

    def _one(self, blob):
        """(the image's model input, None, its facts row) or (None, its problem, a facts row)."""
        if not isinstance(blob, (bytes, bytearray)):
            return None, f"expected encoded image bytes, got {type(blob).__name__}", facts_row(NO_FACTS)
        arrays, problem, facts = load_tiles_or_problem(bytes(blob), self.spec, self.max_pixels)
        if problem is not None:
            return None, problem, facts_row(facts)
        try:
            check_input_size(arrays.shape[1], arrays.shape[2], self.spec.top_k)
        except ValueError as e:
            return None, str(e), facts_row(facts)
        return arrays[0], None, facts_row(facts)

    def finalize(self):
        pass
'''


# The python-backend model written as DIR/<name>_postprocess/1/model.py.
POSTPROCESS_MODEL_PY = '''\
"""LFM postprocessing for Triton's python backend (written by export/to_triton.py).

The model's logit (FP32 [batch, 1]), the preprocessing's error (BYTES [batch, 1]) and facts
(FP64 [batch, 2]) -> the serving contract's outputs, as runtime/serve.py answers
(lfm.runtime.serve_contract): logit and score FP64, label b"fake" | b"real" at the model's
threshold (this config's lfm.threshold, from the model's spec), error, and flags (";"-joined,
the uncertain band from this config's lfm.uncertain_band); a failed image's logit and score are
the contract's placeholders.

Needs the lfm package in the container's Python: pip install --no-deps /path/to/lfm-deploy pillow.
"""
import json

import triton_python_backend_utils as pb_utils

try:
    from lfm.runtime.serve_contract import OUTPUT_NAMES, outputs, records_from_logits
except ImportError as e:  # pragma: no cover - the container lacks the package
    raise ImportError(f"LFM postprocessing needs the lfm package in Triton's Python ({e}); "
                      "install it with: pip install --no-deps /path/to/lfm-deploy pillow") from None


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.threshold = float(config["parameters"]["lfm.threshold"]["string_value"])
        self.band = float(config["parameters"]["lfm.uncertain_band"]["string_value"])

    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, "logit").as_numpy()
            errors = pb_utils.get_input_tensor_by_name(request, "error").as_numpy()
            facts = pb_utils.get_input_tensor_by_name(request, "facts").as_numpy()
            out = outputs(records_from_logits(logits, errors, self.threshold, facts, self.band))
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(n, out[n]) for n in OUTPUT_NAMES]))
        return responses

    def finalize(self):
        pass
'''


# --------------------------------------------------------------------------------------------
# The repository


def validate_config(text: str, path: str = "config.pbtxt"):
    """Parse config.pbtxt text into Triton's ModelConfig protobuf (tritonclient's copy of
    model_config.proto); returns the message, or None when tritonclient is not installed."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError:
        return None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise RepositoryError(f"{path}: not a valid Triton ModelConfig ({e})") from None


def write_repository(source: str, repository: str, *, name: str = "lfm",
                     max_batch_size: int = defaults.MAX_BATCH_SIZE, preferred=defaults.PREFERRED_BATCH_SIZES,
                     max_queue_delay_us: int = defaults.MAX_QUEUE_DELAY_US, instances: int = defaults.INSTANCES,
                     kind: str = "auto", max_pixels: int | None = None, force: bool = False,
                     max_queue_size: int = defaults.MAX_QUEUE_SIZE,
                     queue_timeout_ms: int = defaults.QUEUE_TIMEOUT_MS) -> dict:
    """Write the four models; returns {"models": {name: dir}, "validated": bool, "notes": [...]}."""
    from lfm.runtime.preprocess import DEFAULT_MAX_PIXELS

    if not os.path.isfile(source):
        raise RepositoryError(f"{source}: no such file")
    model_name, pre_name, post_name = f"{name}_model", f"{name}_preprocess", f"{name}_postprocess"
    models = (name, model_name, pre_name, post_name)
    replaced = [f for m in models for f in files_under(os.path.join(repository, m))] if force else []
    problem = name_problem(name) or repository_problem(repository) or overwrite_refusal(
        replaced, [("the model", source), ("the engine's sidecar", source + ".json")], "--repository")
    if problem:  # before the work
        raise RepositoryError(problem)
    is_plan = source.endswith((".plan", ".engine", ".trt"))
    desc = describe_plan(source) if is_plan else describe_onnx(source)
    spec, notes = desc["spec"], []
    if spec.policy == "tiles":
        raise RepositoryError(f"{source}: policy 'tiles' gives several arrays per image, which one preprocessing "
                              "step cannot express; serve it with runtime/serve.py or re-export with --policy resize")
    if desc["plugins"]:
        if is_plan:
            notes.append(f"engine uses LFM's TensorRT plugins ({', '.join(desc['plugins'])}), built ahead of time: "
                         "their kernels are inside the plan, so tritonserver needs no plugin library (no LD_PRELOAD)")
        else:
            raise RepositoryError(f"{source}: a plugin graph (custom ops {', '.join(desc['plugins'])}) that Triton's "
                                  "onnxruntime backend cannot run; export --variant standard")
    if desc["max_batch"] and max_batch_size > desc["max_batch"]:
        notes.append(f"max_batch_size {max_batch_size} capped at the engine profile's {desc['max_batch']}")
        max_batch_size = desc["max_batch"]
    preferred = [b for b in preferred if b <= max_batch_size]
    platform = "tensorrt_plan" if is_plan else "onnxruntime_onnx"
    if is_plan and kind != "gpu":
        if kind == "cpu":
            raise RepositoryError("a TensorRT plan runs on the GPU only; --kind cpu is for ONNX models")
        kind = "gpu"
    texts = {
        model_name: model_config(model_name, platform, desc, max_batch_size, preferred, max_queue_delay_us,
                                 instances, KINDS[kind], queue_timeout_ms),
        pre_name: preprocess_config(pre_name, desc, max_batch_size, preferred, max_queue_delay_us, instances,
                                    max_pixels or DEFAULT_MAX_PIXELS, max_queue_size, queue_timeout_ms),
        post_name: postprocess_config(post_name, desc, max_batch_size, instances),
        name: ensemble_config(name, model_name, pre_name, post_name, desc, max_batch_size),
    }
    parsed = {m: validate_config(t, os.path.join(repository, m, "config.pbtxt")) for m, t in texts.items()}

    try:
        os.makedirs(repository, exist_ok=True)
    except OSError as e:  # e.g. under /proc, or a race with the check above
        raise RepositoryError(f"{repository}: cannot create the folder ({describe_os_error(e)}); "
                              "choose another --repository") from None
    existing = [m for m in texts if os.path.lexists(os.path.join(repository, m))]
    if existing and not force:
        them = "them" if len(existing) > 1 else "it"
        raise RepositoryError(f"{repository}: {', '.join(existing)} already exist{'s' * (len(existing) == 1)}; "
                              f"pass --force to replace {them} or choose another --repository")
    model_file = os.path.join(model_name, "1", "model.plan" if is_plan else "model.onnx")
    try:
        _install(repository, texts, copies={model_file: source},
                 sources={os.path.join(pre_name, "1", "model.py"): PREPROCESS_MODEL_PY,
                          os.path.join(post_name, "1", "model.py"): POSTPROCESS_MODEL_PY})
    except OSError as e:  # disk full, permissions changed under us: one line, never Python's "[Errno N]"
        raise RepositoryError(f"{repository}: writing the models failed ({describe_os_error(e)}); check "
                              "its free space and permissions, then run again with --force") from None
    return {"models": {m: os.path.join(repository, m) for m in texts}, "validated": all(parsed.values()),
            "notes": notes, "platform": platform, "max_batch_size": max_batch_size}


def _install(repository: str, texts: dict, copies: dict, sources: dict) -> None:
    """Write every model (texts: {model: config.pbtxt}, copies: {path in the repository: file to
    copy}, sources: {path: text}) into a hidden staging folder beside them, then move each model
    into place: a failure while writing leaves the repository as it was."""
    staging = tempfile.mkdtemp(prefix=".lfm-triton-", dir=repository)
    try:
        for m, text in texts.items():
            os.makedirs(os.path.join(staging, m, "1"))
            with open(os.path.join(staging, m, "config.pbtxt"), "w") as f:
                f.write(text)
        for path, source in copies.items():
            shutil.copyfile(source, os.path.join(staging, path))
        for path, text in sources.items():
            with open(os.path.join(staging, path), "w") as f:
                f.write(text)
        for m in texts:
            target = os.path.join(repository, m)
            if os.path.isdir(target) and not os.path.islink(target):
                shutil.rmtree(target)
            elif os.path.lexists(target):  # a file or a link in the model's place
                os.remove(target)
            os.replace(os.path.join(staging, m), target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name the models (each is a folder of the repository); None if it can."""
    if not name or not all(c.isalnum() or c in "_-." for c in name):
        return f"--name {name!r}: letters, digits, '_', '-' and '.' only"
    if name.startswith("."):  # '..' would be the repository's parent, '.x' a hidden folder
        return f"--name {name!r}: must not start with '.'"
    return None


def repository_problem(repository: str) -> str | None:
    """Why ``repository`` cannot be created (parents included) and written into, in one line;
    None if it can. Checked before the work; creates nothing."""
    target = os.path.abspath(repository)
    existing = target
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "" if existing == target else f" {existing}"  # the repository itself, or a folder above it
        return f"{repository}:{where} is a file, not a folder; choose another --repository"
    if not os.access(existing, os.W_OK):
        return f"{repository}: folder {existing} is not writable; choose another --repository"
    return None


def build_parser() -> argparse.ArgumentParser:
    from lfm.runtime.cli import ArgumentParser  # --version, the name as typed (lfm triton-repo), defaults in --help

    p = ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("source", metavar="MODEL", help="lfm.onnx (export/to_onnx.py) or lfm.plan (export/to_trt.py)")
    p.add_argument("--repository", "-r", required=True, metavar="DIR",
                   help="model repository to write into; created if missing (required)")
    p.add_argument("--name", default="lfm", help="ensemble name; the others get _model, _preprocess and _postprocess (default: lfm)")
    p.add_argument("--max-batch-size", type=int, default=defaults.MAX_BATCH_SIZE,
                   help="largest batch Triton forms, capped at a plan's profile (default: %(default)s)")
    p.add_argument("--preferred-batch-sizes", default=",".join(map(str, defaults.PREFERRED_BATCH_SIZES)),
                   help="comma-separated, '' for none (default: %(default)s)")
    p.add_argument("--max-queue-delay-us", type=int, default=defaults.MAX_QUEUE_DELAY_US,
                   help="how long dynamic batching waits to fill a batch, microseconds (default: %(default)s)")
    p.add_argument("--max-queue-size", type=int, default=defaults.MAX_QUEUE_SIZE,
                   help="requests lfm_preprocess's queue holds; more are refused at once (HTTP 503 / gRPC UNAVAILABLE); "
                        "0: unbounded (default: %(default)s)")
    p.add_argument("--queue-timeout-ms", type=int, default=defaults.QUEUE_TIMEOUT_MS,
                   help="a request still queued after this long is refused, in either model; 0: never "
                        "(default: %(default)s)")
    p.add_argument("--instances", type=int, default=defaults.INSTANCES,
                   help="instances of the model and of the preprocessing (default: %(default)s)")
    p.add_argument("--kind", choices=sorted(KINDS), default="auto",
                   help="where the model's instances run: auto (GPU if there is one), cpu, gpu; plans always gpu "
                        "(default: auto)")
    p.add_argument("--max-pixels", type=int, default=None,
                   help="preprocessing's decompression-bomb limit, pixels per image "
                        "(default: 100000000, the runtime's)")
    p.add_argument("--force", action="store_true",
                   help="replace these models if the repository has them (default: stop and change nothing)")
    return p


def parse_args(argv=None):
    p = build_parser()
    args = p.parse_args(argv)
    try:
        args.preferred = [int(s) for s in args.preferred_batch_sizes.split(",") if s.strip()]
    except ValueError:
        p.error("--preferred-batch-sizes: expected comma-separated integers")
    if args.max_batch_size < 1 or args.instances < 1 or args.max_queue_delay_us < 0:
        p.error("--max-batch-size and --instances must be >= 1, --max-queue-delay-us >= 0")
    if args.max_queue_size < 0 or args.queue_timeout_ms < 0:
        p.error(f"--max-queue-size and --queue-timeout-ms must be >= 0 (0: no bound), got {args.max_queue_size} "
                f"and {args.queue_timeout_ms}")
    if any(b < 1 or b > args.max_batch_size for b in args.preferred):
        p.error("--preferred-batch-sizes must lie in [1, --max-batch-size]")
    problem = name_problem(args.name)
    if problem:
        p.error(problem)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        out = write_repository(args.source, args.repository, name=args.name, max_batch_size=args.max_batch_size,
                               preferred=args.preferred, max_queue_delay_us=args.max_queue_delay_us,
                               instances=args.instances, kind=args.kind, max_pixels=args.max_pixels, force=args.force,
                               max_queue_size=args.max_queue_size, queue_timeout_ms=args.queue_timeout_ms)
    except RepositoryError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # one the steps above did not foresee: still one line, without "[Errno N]"
        print(f"error: {e.filename or args.repository}: {describe_os_error(e)}; "
              f"check it and run again", file=sys.stderr)
        return 2
    for note in out["notes"]:
        print(f"note: {note}", file=sys.stderr)
    for m, d in out["models"].items():
        print(f"wrote {d}/config.pbtxt", file=sys.stderr)
    check = ("each config.pbtxt parsed into Triton's ModelConfig" if out["validated"]
             else "configs not parsed (install the [serve] extra for tritonclient's ModelConfig)")
    print(f"{args.repository}: '{args.name}' ({out['platform']}, max batch {out['max_batch_size']}); {check}.\n"
          f"run: tritonserver --model-repository {os.path.abspath(args.repository)}  "
          f"(the container needs: pip install --no-deps /path/to/lfm-deploy pillow)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
