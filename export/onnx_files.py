"""An exported LFM model as an ONNX file, without torch: its metadata and spec, the checks, the
atomic write, and its logits on image files.

The export's lowest layer. Each stage of the export (onnx_export: the graph; verify; quantize;
fidelity: the cross-domain check) builds on this module and on none of the others' results but
through files; export/pipeline.py runs them in order. Nothing here imports another export module.

    proto = check(proto); set_metadata(proto, props); save_atomic(proto, "lfm.onnx")
    logits, read = run_logits("lfm.onnx", files)     # prepared per the model's own lfm.spec
"""
from __future__ import annotations

import json
import os
import tempfile
from typing import Sequence

import numpy as np

from lfm.runtime.backends.onnxrt import inference_session
from lfm.runtime.cli import CommandError
from lfm.runtime.files import give_default_mode, write_target
from lfm.runtime.preprocess import ImageError, load_array, normalize
from lfm.runtime.spec import ModelSpec


class ModelFileError(CommandError, ValueError):
    """A model file that is not what LFM's export writes; the message names it."""


# --------------------------------------------------------------------------------------------
# Metadata, checks, writing


def set_metadata(model_proto, props: dict[str, str]) -> None:
    del model_proto.metadata_props[:]
    for k, v in props.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = k, v


def read_metadata(path_or_proto) -> dict[str, str]:
    import onnx

    proto = path_or_proto if hasattr(path_or_proto, "metadata_props") else onnx.load(os.fspath(path_or_proto), load_external_data=False)
    return {p.key: p.value for p in proto.metadata_props}


def spec_of(props: dict[str, str]) -> ModelSpec:
    """The preprocessing spec in a model's metadata (``lfm.spec``); the default spec without one."""
    return ModelSpec.from_dict(json.loads(props["lfm.spec"])) if "lfm.spec" in props else ModelSpec()


def model_spec(model_path) -> ModelSpec:
    """The preprocessing spec an exported model carries in its metadata (``lfm.spec``)."""
    return spec_of(read_metadata(model_path))


def model_variant(model_proto) -> str:
    """'uint8' or 'float': the model's own input format (metadata lfm.input, checked against the
    graph input's dtype). It decides how images are fed, whatever a spec's input says."""
    import onnx

    props = read_metadata(model_proto)
    elem = model_proto.graph.input[0].type.tensor_type.elem_type
    from_graph = "uint8" if elem == onnx.TensorProto.UINT8 else "float"
    variant = props.get("lfm.input") or from_graph
    if variant != from_graph:
        raise ModelFileError(f"model metadata says input {variant!r} but the graph input is {from_graph}")
    return variant


def check(model_proto):
    """Full onnx.checker pass and strict shape inference; returns the inferred proto."""
    import onnx

    onnx.checker.check_model(model_proto, full_check=True)
    return onnx.shape_inference.infer_shapes(model_proto, check_type=True, strict_mode=True)


def save_atomic(model_proto, path: str | os.PathLike) -> None:
    """Write to a temp file beside ``path``, then rename: a failed export leaves no partial model."""
    import onnx

    path = write_target(os.fspath(path))  # through a symlink, as a shell's `> path` would
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    give_default_mode(fd)  # mkstemp's 600 would keep other users' services (Triton) from reading it
    os.close(fd)
    try:
        onnx.save(model_proto, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# --------------------------------------------------------------------------------------------
# Scoring image files


def cpu_session(model, threads: int | None = None):
    """An ONNX Runtime CPU session (a path or a proto), quiet: what the export's checks score with."""
    return inference_session(model, providers="cpu", threads=threads, log_severity=3)


def load_batches(files: Sequence[str], spec: ModelSpec, variant: str, batch_size: int = 8,
                 skipped: list | None = None) -> list[tuple[list[int], np.ndarray]]:
    """Decode and prepare files as the runtime does: [(indices, batch)], batch uint8 NHWC or
    normalised float32 NCHW. Consecutive images of one shape share a batch (policy 'none'
    gives each image its own size). Unreadable files are skipped and listed in ``skipped``."""
    batches, cur, cur_idx = [], [], []

    def flush():
        if cur:
            x = np.stack(cur)
            batches.append((list(cur_idx), x if variant == "uint8" else normalize(x, spec.mean, spec.std)))
            cur.clear()
            cur_idx.clear()

    for i, f in enumerate(files):
        try:
            a = load_array(f, spec)
        except ImageError as e:
            if skipped is not None:  # the caller counts and reports them, one line each
                skipped.append(str(e))
            continue
        if cur and (a.shape != cur[0].shape or len(cur) == batch_size):
            flush()
        cur.append(a)
        cur_idx.append(i)
    flush()
    return batches


def run_logits(model_path, files: Sequence[str], spec: ModelSpec | None = None, batch_size: int = 8,
               threads: int | None = None, skipped: list | None = None) -> tuple[np.ndarray, list[int]]:
    """Logits of an ONNX model on files (prepared per its own metadata); returns (logits, indices
    read). Unreadable files are left out and, with ``skipped``, listed there ("path: problem")."""
    import onnx

    model = onnx.load(os.fspath(model_path), load_external_data=False)
    if spec is None:
        spec = spec_of(read_metadata(model))
    variant = model_variant(model)
    sess = cpu_session(model_path, threads)
    name = sess.get_inputs()[0].name
    logits, idx = [], []
    for i, x in load_batches(files, spec.replace(input=variant), variant, batch_size, skipped):
        logits.append(sess.run(["logit"], {name: x})[0].astype(np.float64))
        idx += i
    return (np.concatenate(logits) if logits else np.zeros(0)), idx
