"""ONNX export and the ONNX Runtime backend, against PyTorch and upstream's own logits."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import infer_without_torch, random_lfm
import torch

from lfm.runtime.spec import ModelSpec
from lfm.train.checkpoint import make_checkpoint, save_atomic

ROOT = Path(__file__).resolve().parents[1]
TO_ONNX = [sys.executable, str(ROOT / "export" / "to_onnx.py")]
INFER = [sys.executable, str(ROOT / "runtime" / "infer.py")]


def run(cmd):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    save_atomic(make_checkpoint(random_lfm(), ModelSpec(size=64, threshold=0.4)), path)
    return path


@pytest.fixture(scope="module")
def exported(upstream_ckpt, tmp_path_factory):
    """Upstream's checkpoint exported once per input variant."""
    out = {}
    d = tmp_path_factory.mktemp("onnx")
    for variant in ("float", "uint8"):
        path = d / f"lfm_{variant}.onnx"
        r = run(TO_ONNX + [str(upstream_ckpt), "-o", str(path), "--input", variant])
        assert r.returncode == 0, r.stdout + r.stderr
        out[variant] = path
    return out


def test_graph_is_checked_dynamic_and_described(exported, upstream_ckpt):
    for variant, path in exported.items():
        m = onnx.load(path)
        onnx.checker.check_model(m, full_check=True)
        assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) >= 17
        (inp,) = m.graph.input
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert dims == (["batch", "height", "width", 3] if variant == "uint8" else ["batch", 3, "height", "width"])
        assert [o.name for o in m.graph.output] == ["logit", "score"]
        meta = {p.key: p.value for p in m.metadata_props}
        spec = ModelSpec.from_dict(json.loads(meta["lfm.spec"]))
        assert spec.input == variant and spec.layout == ("NHWC" if variant == "uint8" else "NCHW")
        assert (spec.policy, spec.size, spec.top_k, spec.threshold) == ("resize", 256, 16, 0.5)
        import hashlib

        assert meta["lfm.source_sha256"] == hashlib.sha256(upstream_ckpt.read_bytes()).hexdigest()
        assert meta["lfm.precision"] == "fp32" and meta["lfm.exporter"].startswith("lfm-deploy-export/")
        report = json.load(open(str(path) + ".report.json"))
        assert report["passed"] and report["fp32_verification"]["max_rel_logit_diff"] <= 1e-4
        shapes = {tuple(f["input_shape"]) for f in report["fp32_verification"]["feeds"]}
        assert ((3, 255, 257, 3) if variant == "uint8" else (3, 3, 255, 257)) in shapes  # odd sizes verified


def test_onnx_runtime_backend_matches_torch_and_upstream(exported, upstream_ckpt, reference_images):
    from lfm.runtime.backends import make_runner
    from lfm.runtime.detector import Detector

    paths = [str(p) for p, _, _ in reference_images]
    upstream = np.array([v for _, v, _ in reference_images])
    with Detector(make_runner(upstream_ckpt, device="cpu")) as det:
        torch_logits = np.array([r.logit for r in det.predict(paths)])
    for variant, path in exported.items():
        with Detector(make_runner(path, providers=["cpu"])) as det:
            assert det.spec.input == variant
            recs = det.predict(paths)
        logits = np.array([r.logit for r in recs])
        np.testing.assert_allclose(logits, torch_logits, rtol=1e-4, atol=1e-4, err_msg=variant)
        np.testing.assert_allclose(logits, upstream, rtol=1e-5, atol=1e-3, err_msg=variant)


def test_uint8_graph_folds_normalisation_exactly_enough(exported, upstream_ckpt):
    """ORT on raw bytes vs the torch float model on bytes normalised in float64 by numpy."""
    import onnxruntime as ort

    from lfm.train.checkpoint import load_checkpoint

    model = load_checkpoint(upstream_ckpt).model
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (3, 97, 131, 3), dtype=np.uint8)  # odd sizes
    x = (pixels / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    with torch.no_grad():
        ref = model(torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float32))).numpy()
    sess = ort.InferenceSession(str(exported["uint8"]), providers=["CPUExecutionProvider"])
    logit, score = sess.run(None, {"pixels": pixels})
    np.testing.assert_allclose(logit, ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(score, 1 / (1 + np.exp(-logit.astype(np.float64))), rtol=1e-6, atol=1e-7)


def test_infer_model_path_imports_no_torch(exported, reference_dir):
    recs = infer_without_torch(exported["uint8"], reference_dir / "images")
    assert len(recs) == 8 and all(rec["error"] is None for rec in recs)


def test_fp16_export_keeps_float32_io(random_ckpt, tmp_path):
    out = tmp_path / "half.onnx"
    r = run(TO_ONNX + [str(random_ckpt), "-o", str(out), "--fp16", "--input", "float", "--stress-count", "8"])
    assert r.returncode == 0, r.stdout + r.stderr
    m = onnx.load(out)
    float32 = onnx.TensorProto.FLOAT
    assert [i.type.tensor_type.elem_type for i in list(m.graph.input) + list(m.graph.output)] == [float32] * 3
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer)
    meta = {p.key: p.value for p in m.metadata_props}
    assert meta["lfm.precision"] == "fp16" and json.loads(meta["lfm.spec"])["threshold"] == 0.4
    report = json.load(open(str(out) + ".report.json"))
    assert report["passed"] and report["verification"]["decision_flips"] == 0
    # Every reduced-precision export carries the cross-domain check: 8 groups of 8 images; here the
    # half-png variants of the 64 px images are 32 px, below the 48 px the model scores (K=16), so
    # they are skipped and counted, never enlarged into an answer.
    fidelity = report["fidelity"]
    assert fidelity["passed"] and not fidelity["forced"] and len(fidelity["groups"]) == 7
    assert all(g["n"] == 8 for g in fidelity["groups"].values()), fidelity["groups"]
    assert fidelity["skipped"] == {"half-png": 8}
    assert "cross-domain check against fp32" in r.stdout and "PASSED" in r.stdout


def test_failed_verification_leaves_nothing_at_the_output(random_ckpt, tmp_path, monkeypatch, capsys):
    from lfm.export import to_onnx, verify

    monkeypatch.setitem(verify.TOLERANCES, "fp32", (0.0, 0.0))  # no float graph is bit-exact
    monkeypatch.setattr(verify, "SHAPES", ((1, 64, 64),))
    out = tmp_path / "m.onnx"
    rc = to_onnx.main([str(random_ckpt), "-o", str(out)])
    assert rc == 1 and not out.exists() and (tmp_path / "m.rejected.onnx").exists()
    assert "verification FAILED" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx.report.json", "m.rejected.onnx"]


@pytest.mark.parametrize("case", ["missing", "corrupt", "foreign", "opset", "unwritable", "directory"])
def test_export_errors_are_one_line(case, random_ckpt, tmp_path):
    ckpt, out, extra = str(random_ckpt), str(tmp_path / "m.onnx"), []
    if case == "missing":
        ckpt = str(tmp_path / "nope.pt")
    elif case == "corrupt":
        (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
        ckpt = str(tmp_path / "bad.pt")
    elif case == "foreign":
        torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "resnet.pt")
        ckpt = str(tmp_path / "resnet.pt")
    elif case == "opset":
        extra = ["--opset", "13"]
    elif case == "unwritable":
        out = str(tmp_path / "no" / "such" / "m.onnx")
    elif case == "directory":
        out = str(tmp_path)
    r = run(TO_ONNX + [ckpt, "-o", out, *extra])
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith("error: ") and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not list(tmp_path.glob("*.onnx"))


def test_export_leaves_the_model_in_eval_mode(random_ckpt):
    from lfm.export.onnx_export import torch_to_onnx
    from lfm.train.checkpoint import load_checkpoint

    model = load_checkpoint(random_ckpt).model
    for variant in ("float", "uint8"):
        torch_to_onnx(model, ModelSpec(input=variant), variant)
        assert not any(m.training for m in model.modules())  # BN must keep its running statistics


def test_onnx_runner_errors(tmp_path, exported):
    from lfm.runtime.backends.onnxrt import BackendError, OnnxRunner

    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(BackendError, match="not a loadable ONNX model"):
        OnnxRunner(tmp_path / "bad.onnx").activate()
    with pytest.raises(BackendError, match="no such file"):
        OnnxRunner(tmp_path / "none.onnx").activate()
    with pytest.raises(BackendError, match=r"provider\(s\) \['NoSuchExecutionProvider'\] not available"):
        OnnxRunner(exported["float"], providers=["NoSuchExecutionProvider"]).activate()
    plain = onnx.load(exported["float"])
    del plain.metadata_props[:]
    onnx.save(plain, tmp_path / "plain.onnx")
    with pytest.raises(BackendError, match="no lfm.spec metadata"):
        OnnxRunner(tmp_path / "plain.onnx").activate()


def test_openvino_backend_on_the_same_graph(exported, reference_images):
    pytest.importorskip("openvino", reason="OpenVINO is an optional extra: pip install -e '.[openvino]'")
    from lfm.runtime.detector import Detector
    from lfm.runtime.backends import make_runner
    from lfm.runtime.backends.openvino_rt import OpenVinoRunner

    paths = [str(p) for p, _, _ in reference_images[:24]]
    with Detector(make_runner(exported["uint8"], providers=["cpu"])) as det:
        ort_logits = np.array([r.logit for r in det.predict(paths)])
    with Detector(OpenVinoRunner(exported["uint8"], precision="f32")) as det:
        assert det.spec.input == "uint8"  # the spec travelled through OpenVINO's rt_info
        f32 = np.array([r.logit for r in det.predict(paths)])
    np.testing.assert_allclose(f32, ort_logits, rtol=1e-4, atol=1e-3)
    # Static-shape models for the first shapes, the dynamic one beyond: batches of 5, 5, 5, 5, 4
    # with one static slot run both paths.
    runner = OpenVinoRunner(exported["uint8"], precision="f32", static_shapes=1)
    with Detector(runner, batch_size=5) as det:
        mixed = np.array([r.logit for r in det.predict(paths)])
        assert list(runner.by_shape) == [(5, 256, 256, 3)]
    np.testing.assert_allclose(mixed, ort_logits, rtol=1e-4, atol=1e-3)
    with Detector(make_runner(exported["uint8"], backend="openvino")) as det:  # auto: bf16 where the CPU has it
        default = det.predict(paths)
        assert det.runner.precision_hint == "bf16" and det.runner.inference_precision in ("bf16", "f32")
    assert [r.label for r in default] == [("fake" if v > 0 else "real") for v in ort_logits]


def test_openvino_never_lowers_a_float_input_graph_silently(exported, reference_images):
    """At its defaults the OpenVINO runner computes a float-input graph in f32 (bf16 flipped
    decisions there), so its logits are the fp32 graph's in ONNX Runtime, on any CPU."""
    pytest.importorskip("openvino", reason="OpenVINO is an optional extra: pip install -e '.[openvino]'")
    from lfm.runtime.backends import make_runner
    from lfm.runtime.detector import Detector

    paths = [str(p) for p, _, _ in reference_images]
    with Detector(make_runner(exported["float"], providers=["cpu"])) as det:
        ort_logits = np.array([r.logit for r in det.predict(paths)])
    with Detector(make_runner(exported["float"], backend="openvino")) as det:
        assert det.runner.precision_hint == "f32" and det.runner.inference_precision == "f32"
        assert "inference precision f32 (hint f32: auto: float-input graph)" in det.runner.describe()
        ov_logits = np.array([r.logit for r in det.predict(paths)])
    np.testing.assert_allclose(ov_logits, ort_logits, rtol=1e-4, atol=1e-3)


def test_infer_says_what_precision_the_backend_ran(exported, reference_dir, capsys):
    pytest.importorskip("openvino", reason="OpenVINO is an optional extra: pip install -e '.[openvino]'")
    from lfm.runtime.infer import main

    assert main(["--model", str(exported["float"]), "--backend", "openvino", str(reference_dir / "images")]) == 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("scored 8 of 8 inputs") and last.endswith(
        "openvino CPU, inference precision f32 (hint f32: auto: float-input graph); threshold 0.5"), last
    with pytest.raises(SystemExit) as e:  # refused while parsing, before the model loads
        main(["--model", str(exported["uint8"]), "--backend", "onnxruntime", "--openvino-precision", "bf16",
              str(reference_dir / "images")])
    assert e.value.code == 2 and "or --backend openvino only" in capsys.readouterr().err


def test_openvino_precision_choice():
    from lfm.runtime.backends import BackendError, make_runner
    from lfm.runtime.backends.openvino_rt import openvino_precision
    from lfm.runtime.spec import ModelSpec

    assert openvino_precision(ModelSpec(input="float"), "fp32")[0] == "f32"
    assert openvino_precision(ModelSpec(input="float"), "fp16")[0] == "f32"
    assert openvino_precision(ModelSpec(input="uint8"), "int8")[0] == "f32"
    assert openvino_precision(ModelSpec(input="uint8"), "fp32")[0] == "bf16"
    assert openvino_precision(ModelSpec(input="float"), "fp32", "bf16") == ("bf16", "asked for")
    with pytest.raises(BackendError, match="fp8"):
        openvino_precision(ModelSpec(), "fp32", "fp8")
    with pytest.raises(BackendError, match="or --backend openvino only"):
        make_runner("m.onnx", backend="onnxruntime", precision="bf16")
    assert make_runner("m.onnx", precision="bf16").name == "auto"  # which runs OpenVINO (tests/test_auto_backend.py)
