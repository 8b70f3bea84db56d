"""Static INT8 QDQ quantisation (export/quantize.py): graph form, metadata, agreement with fp32.

The independent reference is the fp32 ONNX model the INT8 one was made from (itself checked
against PyTorch in test_export.py). Small images (64-96 px) keep this file fast.
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx.numpy_helper as nh
import pytest
import torch

from lfm.export.onnx_export import metadata, simplify, torch_to_onnx
from lfm.export.onnx_files import check, read_metadata, run_logits, save_atomic, set_metadata
from lfm.export.quantize import (QuantizeError, calibration_images, compare_logits, int8_report, qdq_summary,
                                 quantize_int8)
from lfm.runtime.spec import ModelSpec
from lfm.train.make_synthetic import make_synthetic
from lfm.train.model import build_model

SIZE = 64


def export(model, spec, variant, path):
    s = spec.replace(input=variant)
    proto = check(simplify(torch_to_onnx(model, s, variant)))
    set_metadata(proto, metadata(s, precision="fp32", source="test.pt", source_sha256="0" * 64))
    save_atomic(proto, path)
    return path


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """64 px synthetic set: train split calibrates, val split is held out."""
    root = tmp_path_factory.mktemp("syn")
    make_synthetic(root, n=120, size=SIZE, seed=3, val_fraction=0.5, jobs=1)
    train = calibration_images(root / "train", n=0)
    val = calibration_images(root / "val", n=0)
    return train, val


@pytest.fixture(scope="module")
def random_models(tmp_path_factory, synthetic):
    """A randomly initialised LFM (no reference data needed): fp32 uint8 model and its INT8 forms."""
    torch.manual_seed(0)
    model = build_model().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    d = tmp_path_factory.mktemp("random")
    spec = ModelSpec(size=SIZE, threshold=0.4)
    fp32 = export(model, spec, "uint8", d / "fp32.onnx")
    train, _ = synthetic
    # Every layer int8, so that the graph-form tests see each kind of quantised node; the
    # default (conv3, conv4 only) has its own test.
    cpu = d / "int8_cpu.onnx"
    info = quantize_int8(fp32, cpu, train[:24], spec, int8_layers="all")
    trt = d / "int8_trt.onnx"
    info_trt = quantize_int8(fp32, trt, train[:24], spec, profile="tensorrt", int8_layers="all")
    default = d / "int8_default.onnx"
    info_default = quantize_int8(fp32, default, train[:24], spec)
    return {"fp32": fp32, "cpu": cpu, "trt": trt, "default": default, "info": info, "info_trt": info_trt,
            "info_default": info_default, "spec": spec}


def _inits(model):
    return {t.name: nh.to_array(t) for t in model.graph.initializer}


def test_qdq_graph_has_int8_per_channel_weights_with_zero_points_0(random_models):
    m = onnx.load(random_models["cpu"])
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("QuantizeLinear") >= 5 and ops.count("DequantizeLinear") >= 10
    inits = _inits(m)
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    assert len(convs) == 5
    producers = {o: n for n in m.graph.node for o in n.output}
    for conv in convs:
        dq = producers[conv.input[1]]  # every Conv's weight is dequantised int8
        assert dq.op_type == "DequantizeLinear"
        w, scale, zp = (inits[t] for t in dq.input)
        assert w.dtype == np.int8 and np.abs(w.astype(int)).max() <= 127  # symmetric: -128 unused
        assert scale.shape == (w.shape[0],) and np.all(scale > 0)  # one scale per output channel
        assert zp.dtype == np.int8 and not zp.any()
        assert next(a.i for a in dq.attribute if a.name == "axis") == 0
        act = producers[conv.input[0]]  # and reads a dequantised activation
        assert act.op_type == "DequantizeLinear"
    # The fc layer stays fp32.
    gemm = next(n for n in m.graph.node if n.op_type == "Gemm")
    assert gemm.input[1] in inits and inits[gemm.input[1]].dtype == np.float32


def test_default_quantises_conv3_and_conv4_only(random_models):
    m = onnx.load(random_models["default"])
    inits = _inits(m)
    producers = {o: n for n in m.graph.node for o in n.output}
    convs = [n for n in m.graph.node if n.op_type == "Conv"]
    int8 = [c.name for c in convs if c.input[1] in producers and producers[c.input[1]].op_type == "DequantizeLinear"]
    fp32 = [c.name for c in convs if c.input[1] in inits and inits[c.input[1]].dtype == np.float32]
    assert [n.split("/")[-2] for n in int8] == ["layer3.0", "layer4.0"], int8
    assert len(fp32) == 3 and "/salience/Conv" in fp32
    info = random_models["info_default"]
    assert info["int8_layers"] == ["conv3", "conv4"] and info["fp32_layers"] == ["conv1", "conv2", "salience"]
    assert not info["exact_first_layer"]  # conv1 is fp32: nothing to make exact
    assert info["headroom"] == 2.0


def test_unknown_int8_layer_is_named(random_models, synthetic, tmp_path):
    with pytest.raises(QuantizeError, match="conv9"):
        quantize_int8(random_models["fp32"], tmp_path / "x.onnx", synthetic[0][:4], int8_layers="conv3,conv9")


def test_metadata_is_copied_with_precision_int8(random_models):
    before, after = read_metadata(random_models["fp32"]), read_metadata(random_models["cpu"])
    assert after["lfm.precision"] == "int8"
    for key, value in before.items():
        if key != "lfm.precision":
            assert after[key] == value, key
    cal = json.loads(after["lfm.calibration"])
    assert cal["count"] == 24 and cal["method"] == "minmax" and cal["profile"] == "cpu"
    assert random_models["info"]["count"] == 24


def test_tensorrt_profile_follows_tensorrt_qdq_rules(random_models):
    s = qdq_summary(random_models["trt"])
    assert s["tensorrt_compatible"], s["tensorrt_problems"]
    assert s["dtypes"] == ["int8"] and s["per_channel"] == 5
    m = onnx.load(random_models["trt"])
    inits = _inits(m)
    for n in m.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = inits[n.input[2]]
            assert zp.dtype == np.int8 and not zp.any(), n.name
    # The cpu profile uses uint8 activations (ONNX Runtime's fused Conv+ReLU), which TensorRT rejects.
    assert not qdq_summary(random_models["cpu"])["tensorrt_compatible"]
    assert random_models["info_trt"]["tensorrt_compatible"]


def test_random_model_int8_tracks_fp32(random_models, synthetic):
    _, val = synthetic
    for key in ("cpu", "trt"):
        r = int8_report(random_models["fp32"], random_models[key], val, spec=random_models["spec"])
        assert r["n"] == len(val) and r["skipped"] == 0
        ref, _ = run_logits(random_models["fp32"], val)
        spread = float(np.std(ref))
        assert r["mean_abs_logit_diff"] < 0.1 * spread + 1e-3, (key, r, spread)


@pytest.fixture(scope="module")
def upstream_models(upstream_ckpt, tmp_path_factory, synthetic, reference_dir):
    from lfm.train.checkpoint import load_checkpoint

    ck = load_checkpoint(upstream_ckpt)
    spec = ck.spec.replace(size=96)
    d = tmp_path_factory.mktemp("upstream")
    train, _ = synthetic
    calib = train + sorted(str(p) for p in (reference_dir / "images").glob("*.png"))
    out = {"spec": spec}
    for variant in ("uint8", "float"):
        fp32 = export(ck.model, spec, variant, d / f"fp32_{variant}.onnx")
        int8 = d / f"int8_{variant}.onnx"
        out[variant] = (fp32, int8, quantize_int8(fp32, int8, calib, spec))
    return out


@pytest.mark.parametrize("variant", ["uint8", "float"])
def test_upstream_int8_agrees_with_fp32_on_held_out_images(upstream_models, reference_images, synthetic, variant):
    fp32, int8, info = upstream_models[variant]
    spec = upstream_models["spec"]
    # Held out: cnndetection JPEGs and the synthetic val split, none used for calibration.
    files = [str(p) for p, _, y in reference_images if y is not None] + synthetic[1]
    ref, idx = run_logits(fp32, files)
    test, idx2 = run_logits(int8, files)
    assert idx == idx2 == list(range(len(files)))
    d = np.abs(ref - test)
    # The export's acceptance line: median |dlogit| <= 0.3.
    assert np.median(d) < 0.3 and d.mean() < 0.5, (np.median(d), d.mean(), d.max())
    # Decisions where fp32 is confident (|logit| >= 4, i.e. score outside [0.018, 0.982]).
    confident = np.abs(ref) >= 4.0
    assert confident.sum() >= 0.5 * len(files)
    c = compare_logits(ref[confident], test[confident], spec.threshold)
    assert c["agreement"] >= 0.99, c
    assert not info["exact_first_layer"] and info["int8_layers"] == ["conv3", "conv4"]


def test_int8_report_scores_agreement_and_ap(upstream_models, reference_images):
    fp32, int8, _ = upstream_models["uint8"]
    rows = [(str(p), y) for p, _, y in reference_images if y is not None]
    r = int8_report(fp32, int8, [f for f, _ in rows], labels=[y for _, y in rows], spec=upstream_models["spec"])
    for key in ("agreement", "max_abs_logit_diff", "mean_abs_logit_diff", "ap_fp32", "ap_int8", "ap_diff"):
        assert key in r and np.isfinite(r[key]), key
    assert 0.0 <= r["agreement"] <= 1.0 and r["n"] == len(rows)
    assert abs(r["ap_diff"]) < 0.1


def test_missing_or_empty_calibration_folder_is_named(tmp_path):
    missing = tmp_path / "no-such-dir"
    with pytest.raises(QuantizeError, match="no-such-dir"):
        calibration_images(missing)
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "notes.txt").write_text("not an image")
    with pytest.raises(QuantizeError, match=str(empty)):
        calibration_images(empty)
    a_file = tmp_path / "file.png"
    a_file.write_bytes(b"x")
    with pytest.raises(QuantizeError, match="not a folder"):
        calibration_images(a_file)
    with pytest.raises(QuantizeError):
        calibration_images(None)


def test_calibration_images_recursive_and_sampled(synthetic):
    train, _ = synthetic
    root = Path(train[0]).parents[2]  # .../train
    files = calibration_images(root, n=0)
    assert len(files) == len(set(files))
    assert len(files) == len(train) and all(Path(f).suffix == ".png" for f in files)
    few = calibration_images(root, n=10)
    assert len(few) == 10 and set(few) <= set(files)
    assert len({Path(f).parent for f in few}) >= 3  # spread over the folders, not the first one


def test_synthetic_calibration_images_exist():
    files = calibration_images(synthetic=True, n=6, size=SIZE)
    assert len(files) == 6 and all(Path(f).is_file() for f in files)


def test_bad_inputs_raise_quantize_error(random_models, tmp_path, synthetic):
    with pytest.raises(QuantizeError, match="already int8"):
        quantize_int8(random_models["cpu"], tmp_path / "x.onnx", synthetic[0][:4], random_models["spec"])
    with pytest.raises(QuantizeError, match="no such model"):
        quantize_int8(tmp_path / "missing.onnx", tmp_path / "x.onnx", synthetic[0][:4])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    with warnings.catch_warnings(record=True), pytest.raises(QuantizeError, match="could be read"):
        warnings.simplefilter("always")
        quantize_int8(random_models["fp32"], tmp_path / "x.onnx", [str(bad)], random_models["spec"])
    assert not (tmp_path / "x.onnx").exists()
    with pytest.raises(QuantizeError, match="profile"):
        quantize_int8(random_models["fp32"], tmp_path / "x.onnx", synthetic[0][:4], profile="gpu")


def test_int8_report_names_each_held_out_file_it_skipped_once(random_onnx, tmp_path):
    """Issue 14, item 13: one truthful count and one line per skipped file (not a bare number)."""
    from PIL import Image

    from lfm.export.quantize import int8_report

    good = []
    for i in range(3):
        p = tmp_path / f"g{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (70, 70, 3), dtype=np.uint8)).save(p)
        good.append(str(p))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not a jpeg")
    report = int8_report(random_onnx, random_onnx, good[:2] + [str(bad)] + good[2:])  # the model against itself
    assert report["n"] == 3 and report["skipped"] == 1
    assert len(report["skipped_files"]) == 1 and report["skipped_files"][0].startswith(str(bad))
