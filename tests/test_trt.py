"""TensorRT engines: export/to_trt.py, export/trt_build.py and runtime/backends/ (trt_engine, trt_plan, cuda_support).

TensorRT cannot be installed on this project's machines, so the tests split in two:

* the plain parts, tested here in full: the sidecar (round trip, validation, compatibility
  errors with the rebuild command), the optimisation profile (parsing, validation, the
  shape-outside-profile message, batch splitting/padding), precision choice, ONNX helpers,
  comparison feeds and verdict, cuda-python's error tuples, the in-flight slot ring, and the
  CLIs' one-line errors (no tensorrt, no plan, no sidecar) with torch blocked;
* the TensorRT/CUDA parts, which skip with the reason where ``import tensorrt`` (or a GPU) is
  missing. Nothing here stands in for TensorRT.
"""
from __future__ import annotations

import enum
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lfm.runtime.backends import cuda_support as cu, trt_plan as tp
from lfm.runtime.backends.base import BackendError
from lfm.runtime.backends.trt_engine import TrtRunner
from lfm.runtime.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
TO_TRT = [sys.executable, str(ROOT / "export" / "to_trt.py")]
NO_TORCH = "import sys; sys.modules['torch'] = None; import runpy; sys.argv = {argv!r}; runpy.run_path({path!r}, run_name='__main__')"


def _has(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


HAS_TRT = _has("tensorrt")


def run_no_torch(script: Path, *args, cwd=None):
    """Run a script with torch made unimportable (the lean runtime's promise)."""
    code = NO_TORCH.format(argv=[str(script), *map(str, args)], path=str(script))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=cwd)


def one_line_error(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


# ----------------------------------------------------------------------------------------------
# Fixtures: a sidecar, a profile, tiny ONNX graphs


SPEC = ModelSpec(input="uint8", layout="NHWC", size=256)
INPUT = {"name": "pixels", "dtype": "uint8", "layout": "NHWC"}


def make_sidecar(plan_bytes=b"engine bytes", **overrides):
    from lfm.export import trt_build as tb

    profile = tb.make_profile(INPUT, "1,16,32", None, SPEC)
    command = tb.build_command("lfm.onnx", "lfm.plan", "fp16", profile, 2048, 3)
    args = dict(spec=SPEC, inp=INPUT, profile=profile, precision="fp16",
                mode={"strongly_typed": True, "convert_fp16": False}, trt_version="10.8.0.43",
                device_name="NVIDIA H100 80GB HBM3", compute_capability="9.0", onnx_path="lfm.onnx",
                onnx_sha256="ab" * 32, onnx_props={"lfm.precision": "fp16", "lfm.variant": "standard"},
                plan_sha256=tp.sha256_bytes(plan_bytes), plugins=[], command=command, build={"seconds": 1.0})
    args.update(overrides)
    return tb.make_sidecar(**args)


def write_plan(tmp_path, data=b"engine bytes", sidecar=None):
    plan = tmp_path / "lfm.plan"
    plan.write_bytes(data)
    tp.write_json_atomic(tp.sidecar_path(plan), sidecar or make_sidecar(data))
    return plan


def tiny_onnx(input_type="uint8", nodes=(), props=None, domains=()):
    """A one-node ONNX graph with an LFM-like input and metadata (not LFM itself)."""
    from onnx import TensorProto, helper

    elem = {"uint8": TensorProto.UINT8, "float": TensorProto.FLOAT}[input_type]
    name, shape = ("pixels", ["batch", "height", "width", 3]) if input_type == "uint8" else ("image", ["batch", 3, "height", "width"])
    # a Cast first, as TensorRT wants for a uint8 input (export/to_onnx.py's graphs do the same)
    graph_nodes = list(nodes) or [helper.make_node("Cast", [name], ["logit"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(graph_nodes, "g", [helper.make_tensor_value_info(name, elem, shape)],
                              [helper.make_tensor_value_info("logit", TensorProto.FLOAT, None)])
    opsets = [helper.make_opsetid("", 17)] + [helper.make_opsetid(d, 1) for d in domains]
    model = helper.make_model(graph, opset_imports=opsets)
    spec = ModelSpec(input=input_type, layout="NHWC" if input_type == "uint8" else "NCHW")
    meta = {"lfm.spec": spec.to_json(), "lfm.layout": spec.layout, "lfm.precision": "fp32"}
    meta.update(props or {})
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    return model


def save(model, path):
    import onnx

    onnx.save(model, str(path))
    return path


# ----------------------------------------------------------------------------------------------
# Sidecar


def test_sidecar_round_trip(tmp_path):
    sidecar = make_sidecar()
    plan = write_plan(tmp_path, sidecar=sidecar)
    back = tp.read_sidecar(plan)
    assert back == json.loads(json.dumps(sidecar))
    assert ModelSpec.from_dict(back["spec"]) == SPEC
    assert back["profiles"][0]["min"] == [1, 48, 48, 3] and back["profiles"][0]["max"] == [32, 512, 512, 3]
    assert back["device"] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    assert tp.rebuild_command(back) == ("python export/to_trt.py lfm.onnx -o lfm.plan --precision fp16 --batch 1,16,32 "
                                        "--size 48,256,512 --workspace 2048 --opt-level 3")
    assert "fp16 engine, input pixels uint8 NHWC, batch 1..32, height 48..512, width 48..512" in tp.engine_summary(back)
    tp.check_plan_bytes(str(plan), plan.read_bytes(), back)  # matches


def test_sidecar_errors_say_what_is_wrong(tmp_path):
    plan = tmp_path / "lfm.plan"
    plan.write_bytes(b"x")
    with pytest.raises(tp.EngineError, match=r"sidecar lfm\.plan\.json is missing.*export/to_trt\.py"):
        tp.read_sidecar(plan)
    Path(tp.sidecar_path(plan)).write_text("{not json")
    with pytest.raises(tp.EngineError, match="not a readable engine sidecar"):
        tp.read_sidecar(plan)
    Path(tp.sidecar_path(plan)).write_text(json.dumps({"format": "something/9"}))
    with pytest.raises(tp.EngineError, match="unknown sidecar format"):
        tp.read_sidecar(plan)
    partial = {k: v for k, v in make_sidecar().items() if k not in ("device", "plan_sha256")}
    Path(tp.sidecar_path(plan)).write_text(json.dumps(partial))
    with pytest.raises(tp.EngineError, match="lacks device, plan_sha256"):
        tp.read_sidecar(plan)
    sidecar = make_sidecar(b"the original")
    with pytest.raises(tp.EngineError, match=r"does not match its sidecar.*rebuild it: python export/to_trt\.py"):
        tp.check_plan_bytes("lfm.plan", b"the original, truncat", sidecar)
    with pytest.raises(tp.EngineError, match="empty file"):
        tp.check_plan_bytes("lfm.plan", b"", sidecar)


def test_a_plan_is_what_its_sidecar_vouches_for_or_what_starts_as_an_engine():
    """One function (recognise_plan) tells inspect and the runner what is an engine (issue 24, item 10)."""
    head = bytearray(b"ftrt" + bytes(60))
    head[24:27] = bytes([10, 8, 0])
    assert tp.plan_header(bytes(head)) == {"magic": "ftrt", "tensorrt": "10.8.0"}
    head[24] = 200  # not a TensorRT major: the magic alone decides, no version is claimed
    assert tp.plan_header(bytes(head)) == {"magic": "ftrt", "tensorrt": None}
    assert tp.plan_header(b"ptrt" + bytes(10)) is None and tp.plan_header(b"PTRT" + bytes(60)) is None
    noise = np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    sidecar = make_sidecar(noise)
    assert tp.recognise_plan("lfm.plan", noise[:32], tp.sha256_bytes(noise), sidecar) == "sidecar"
    assert tp.recognise_plan("lfm.plan", bytes(head), "0" * 64, None) == "header"
    with pytest.raises(tp.EngineError, match=r"lfm\.plan: not a TensorRT engine: .*magic 'ptrt' or 'ftrt'\) and has "
                                             r"no sidecar lfm\.plan\.json; build one with export/to_trt\.py"):
        tp.recognise_plan("lfm.plan", noise[:32], tp.sha256_bytes(noise), None)
    # the runner's check: only the engine its sidecar records reaches TensorRT, whatever its header
    tp.check_plan_bytes("lfm.plan", noise, sidecar)
    with pytest.raises(tp.EngineError, match=r"does not match its sidecar lfm\.plan\.json \(SHA-256 differs: the plan"):
        tp.check_plan_bytes("lfm.plan", bytes(head) + noise, sidecar)
    with pytest.raises(tp.EngineError, match=r"not a TensorRT engine: .*does not match its sidecar .*rebuild it: python"):
        tp.check_plan_bytes("lfm.plan", noise[1:], sidecar)


def test_compatibility_errors_name_both_sides_and_the_rebuild_command():
    sidecar = make_sidecar()
    command = tp.rebuild_command(sidecar)
    assert tp.check_compatible(sidecar, "10.8.0.43", "NVIDIA H100 80GB HBM3", "9.0") is None
    assert tp.check_compatible(sidecar, "10.8.0.40", "NVIDIA H100 80GB HBM3", "9.0") is None  # same release

    with pytest.raises(tp.EngineError) as e:
        tp.check_compatible(sidecar, "10.9.0.34", "NVIDIA H100 80GB HBM3", "9.0", plan="lfm.plan")
    msg = str(e.value)
    assert "TensorRT 10.8.0 built it, this machine has TensorRT 10.9.0" in msg
    assert msg.endswith(f"rebuild it on this machine: {command}") and "\n" not in msg

    with pytest.raises(tp.EngineError) as e:
        tp.check_compatible(sidecar, "10.8.0.43", "NVIDIA A100-SXM4-80GB", "8.0", plan="lfm.plan")
    msg = str(e.value)
    assert "built for NVIDIA H100 80GB HBM3 (compute capability 9.0), this GPU is NVIDIA A100-SXM4-80GB (compute capability 8.0)" in msg
    assert command in msg

    with pytest.raises(tp.EngineError, match="TensorRT 10.8.0 built it.*; it was built for"):
        tp.check_compatible(sidecar, "11.0.0.1", "NVIDIA A100-SXM4-80GB", "8.0")

    warning = tp.check_compatible(sidecar, "10.8.0.43", "NVIDIA H100 PCIe", "9.0", plan="lfm.plan")
    assert "built on NVIDIA H100 80GB HBM3 and runs here on NVIDIA H100 PCIe" in warning and command in warning


# ----------------------------------------------------------------------------------------------
# Profiles and shapes


def test_profile_parsing_and_validation():
    from lfm.export.trt_build import BuildError, default_size, make_profile, parse_triple

    assert parse_triple("16", "--batch") == (16, 16, 16)
    assert parse_triple(" 1, 8 ,32", "--batch") == (1, 8, 32)
    for bad, why in [("1,2", "got 2 numbers"), ("a,b,c", "integers"), ("0,1,2", ">= 1"), ("4,2,8", "MIN <= OPT <= MAX"),
                     ("1,2,3,4", "got 4 numbers")]:
        with pytest.raises(BuildError, match=why):
            parse_triple(bad, "--batch")
    assert default_size(SPEC) == "48,256,512"
    nhwc = make_profile(INPUT, None, None, SPEC)
    assert nhwc == {"input": "pixels", "layout": "NHWC", "min": [1, 48, 48, 3], "opt": [16, 256, 256, 3],
                    "max": [32, 512, 512, 3]}
    nchw = make_profile({"name": "image", "dtype": "float32", "layout": "NCHW"}, "8", "224", SPEC)
    assert nchw["min"] == nchw["opt"] == nchw["max"] == [8, 3, 224, 224]
    with pytest.raises(BuildError, match=r"minimum 32 is below LFM's smallest input, 48x48 for K=16"):
        make_profile(INPUT, None, "32,64,128", SPEC)
    with pytest.raises(BuildError, match="--size 256,128,512: need MIN <= OPT <= MAX"):
        make_profile(INPUT, None, "256,128,512", SPEC)


def test_shape_outside_profile_is_one_clear_line():
    profile = {"input": "pixels", "layout": "NHWC", "min": [1, 48, 48, 3], "opt": [16, 256, 256, 3], "max": [32, 512, 512, 3]}
    tp.check_shape((16, 256, 256, 3), profile)
    tp.check_shape((64, 48, 512, 3), profile)  # batch is split by the runner, not refused
    with pytest.raises(tp.ShapeError) as e:
        tp.check_shape((4, 600, 256, 3), profile, "lfm.plan")
    msg = str(e.value)
    assert msg.startswith("input 600x256 (batch 4) is outside lfm.plan's optimisation profile (batch 1..32, "
                          "height 48..512, width 48..512): height 600 not in 48..512")
    assert "--size" in msg and "\n" not in msg
    with pytest.raises(tp.ShapeError, match="height 40 not in 48..512, width 30 not in 48..512"):
        tp.check_shape((1, 40, 30, 3), profile)
    with pytest.raises(tp.ShapeError, match="batch 64 not in 1..32"):
        tp.check_shape((64, 256, 256, 3), profile, batch_ok=False)
    with pytest.raises(tp.ShapeError, match="axis 3 must be 3"):
        tp.check_shape((1, 256, 256, 4), profile)
    with pytest.raises(tp.ShapeError, match="has 3 axes"):
        tp.check_shape((256, 256, 3), profile)
    nchw = {"input": "image", "layout": "NCHW", "min": [1, 3, 48, 48], "opt": [8, 3, 224, 224], "max": [8, 3, 224, 224]}
    with pytest.raises(tp.ShapeError, match=r"input 225x224 \(batch 2\).*height 48..224"):
        tp.check_shape((2, 3, 225, 224), nchw)


def test_batch_parts_split_and_pad():
    assert tp.batch_parts(40, 1, 16) == [(0, 16, 16), (16, 32, 16), (32, 40, 8)]
    assert tp.batch_parts(40, 16, 16) == [(0, 16, 16), (16, 32, 16), (32, 40, 16)]  # static profile: last one padded
    assert tp.batch_parts(3, 8, 32) == [(0, 3, 8)]
    assert tp.batch_parts(32, 1, 32) == [(0, 32, 32)]
    with pytest.raises(ValueError):
        tp.batch_parts(0, 1, 8)
    with pytest.raises(ValueError):
        tp.batch_parts(4, 9, 8)


# ----------------------------------------------------------------------------------------------
# Precision, the ONNX model, comparison


def test_precision_follows_the_onnx_model():
    """Every build is strongly typed (TensorRT 11 has no other kind, and 10.x builds the same way):
    fp16 from an fp32 model means building its fp16 conversion, never a weakly typed FP16 flag."""
    from lfm.export.trt_build import BuildError, choose_mode

    strong = {"strongly_typed": True, "convert_fp16": False}
    assert choose_mode("m.onnx", "fp32", None, None) == {"precision": "fp32", **strong}
    assert choose_mode("m.onnx", "fp16", "fp16", None) == {"precision": "fp16", **strong}
    assert choose_mode("m.onnx", "int8", None, "tensorrt") == {"precision": "int8", **strong}
    assert choose_mode("m.onnx", "fp32", "fp16", None) == {"precision": "fp16", "strongly_typed": True, "convert_fp16": True}
    with pytest.raises(BuildError, match=r"--precision int8 needs the INT8 QDQ model.*--int8 --int8-profile tensorrt.*m\.onnx is fp32"):
        choose_mode("m.onnx", "fp32", "int8", None)
    with pytest.raises(BuildError, match="is an INT8 QDQ model.*--precision int8"):
        choose_mode("m.onnx", "int8", "fp16", "tensorrt")
    with pytest.raises(BuildError, match="cpu-profile INT8 model.*--int8-profile tensorrt"):
        choose_mode("m.onnx", "int8", "int8", "cpu")
    with pytest.raises(BuildError, match="is an fp16 model"):
        choose_mode("m.onnx", "fp16", "fp32", None)


def test_onnx_helpers(tmp_path):
    pytest.importorskip("onnx", reason="the builder reads ONNX models: the [export] extra")
    from onnx import helper

    from lfm.export import trt_build as tb
    from lfm.runtime import custom_ops

    model = tiny_onnx("uint8")
    props = {p.key: p.value for p in model.metadata_props}
    assert tb.input_info(model, props) == {"name": "pixels", "dtype": "uint8", "layout": "NHWC"}
    assert tb.plugin_ops(model) == [] and tb.onnx_precision(model, props) == "fp32"
    flt = tiny_onnx("float")
    assert tb.input_info(flt, {}) == {"name": "image", "dtype": "float32", "layout": "NCHW"}

    plugin = tiny_onnx("uint8", domains=[custom_ops.DOMAIN], nodes=[
        helper.make_node("LfmNpr", ["pixels"], ["r"], domain=custom_ops.DOMAIN),
        helper.make_node("LfmTopKPool", ["r"], ["logit"], domain=custom_ops.DOMAIN),
        helper.make_node("Other", ["pixels"], ["o"], domain=custom_ops.DOMAIN)])
    assert tb.plugin_ops(plugin) == ["LfmNpr", "LfmTopKPool"]

    qdq = tiny_onnx("uint8", props={"lfm.precision": "int8", "lfm.calibration": json.dumps({"profile": "tensorrt"})},
                    nodes=[helper.make_node("QuantizeLinear", ["pixels", "s"], ["q"]),
                           helper.make_node("DequantizeLinear", ["q", "s"], ["logit"])])
    qprops = {p.key: p.value for p in qdq.metadata_props}
    assert tb.onnx_precision(qdq, qprops) == "int8" and tb.int8_profile(qprops) == "tensorrt"
    assert tb.onnx_precision(model, {"lfm.precision": "fp16"}) == "fp16"

    path = save(model, tmp_path / "m.onnx")
    proto, read_props = tb.read_onnx(str(path))
    assert tb.model_spec(read_props).input == "uint8"
    del model.metadata_props[:]
    with pytest.raises(tb.BuildError, match="no lfm.spec metadata; export the model with export/to_onnx.py"):
        tb.read_onnx(str(save(model, tmp_path / "bare.onnx")))
    (tmp_path / "junk.onnx").write_bytes(b"\x00\xffnot a protobuf" * 7)
    with pytest.raises(tb.BuildError, match="not a readable ONNX model"):
        tb.read_onnx(str(tmp_path / "junk.onnx"))
    with pytest.raises(tb.BuildError, match="no such file"):
        tb.read_onnx(str(tmp_path / "missing.onnx"))


def test_paths_and_commands(tmp_path):
    from lfm.export import trt_build as tb

    assert tb.default_output("models/lfm.int8.onnx") == "models/lfm.int8.plan"
    assert tb.rejected_path("out/lfm.plan") == "out/lfm.rejected.plan"
    cache = tb.default_timing_cache(str(tmp_path / "lfm.plan"), "10.8.0.43", "9.0")
    assert cache == str(tmp_path / "trt-10.8.0-sm90.timing.cache")
    with pytest.raises(tb.BuildError, match="is a directory"):
        tb.check_output(str(tmp_path))
    with pytest.raises(tb.BuildError, match="does not exist"):
        tb.check_output(str(tmp_path / "nope" / "lfm.plan"))


def test_comparison_feeds_stay_inside_the_profile():
    from lfm.export import trt_build as tb

    profile = tb.make_profile(INPUT, "1,8,16", "48,64,96", SPEC)
    shapes = tb.comparison_shapes(profile)
    assert shapes[:3] == [(1, 48, 48), (8, 64, 64), (16, 96, 96)]
    assert any(h % 2 and w % 2 and h != w for _, h, w in shapes)  # NPR's odd, non-square path
    feeds = tb.synthetic_feeds(INPUT, SPEC, profile)
    assert len(feeds) == 1 + len(shapes)
    for feed in feeds:
        (name, x), = feed.items()
        assert name == "pixels" and x.dtype == np.uint8
        tp.check_shape(x.shape, profile, batch_ok=False)
    again = tb.synthetic_feeds(INPUT, SPEC, profile)
    assert all(np.array_equal(a["pixels"], b["pixels"]) for a, b in zip(feeds, again))  # seeded

    static = tb.make_profile(INPUT, "4", "64", SPEC)
    assert tb.comparison_shapes(static) == [(4, 64, 64)]
    for feed in tb.synthetic_feeds(INPUT, SPEC, static):
        tp.check_shape(feed["pixels"].shape, static, batch_ok=False)

    float_in = {"name": "image", "dtype": "float32", "layout": "NCHW"}
    fspec = ModelSpec()
    fprofile = tb.make_profile(float_in, "1,2,4", "48,64,64", fspec)
    x = tb.synthetic_feeds(float_in, fspec, fprofile)[0]["image"]
    assert x.dtype == np.float32 and x.shape[1] == 3
    from lfm.runtime.preprocess import normalize

    pixels = np.stack([tb._pattern("gradient", 64, 64), tb._pattern("upsampled", 64, 64)])
    np.testing.assert_allclose(x, normalize(pixels, fspec.mean, fspec.std), rtol=0, atol=1e-6)


def test_compare_images_are_prepared_by_the_spec_and_fit_the_profile(tmp_path):
    from PIL import Image

    from lfm.export import trt_build as tb

    spec = ModelSpec(input="uint8", layout="NHWC", policy="none", size=64)
    rng = np.random.default_rng(0)
    files = []
    for i, (h, w) in enumerate([(64, 64), (64, 64), (64, 64), (80, 72), (600, 64)]):
        path = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        files.append(str(path))
    (tmp_path / "bad.png").write_bytes(b"not an image")
    files.append(str(tmp_path / "bad.png"))
    profile = tb.make_profile(INPUT, "2,2,8", "48,64,96", spec)
    feeds, notes = tb.image_feeds(files, INPUT, spec, profile)
    shapes = sorted(f["pixels"].shape for f in feeds)
    assert shapes == [(2, 64, 64, 3), (2, 64, 64, 3), (2, 80, 72, 3)]  # opt batch 2; the lone 80x72 padded to min 2
    assert len(notes) == 2 and any("600x64 is outside the profile" in n for n in notes)
    assert any("bad.png" in n for n in notes)
    np.testing.assert_array_equal(feeds[0]["pixels"][0], np.asarray(Image.open(files[0]).convert("RGB")))


def test_save_build_writes_a_passing_engine_and_keeps_a_failing_one_aside(tmp_path):
    from lfm.export.trt_build import save_build

    plan = str(tmp_path / "lfm.plan")
    data = b"a good engine"
    assert save_build(plan, data, make_sidecar(data), {"passed": True}) is None
    sidecar, read = TrtRunner(plan).load_checked()  # the runtime accepts what the builder wrote
    assert read == data and json.loads(Path(plan + ".report.json").read_text()) == {"passed": True}

    rejected = save_build(plan, b"a bad engine", make_sidecar(b"a bad engine"), {"passed": False})
    assert rejected == str(tmp_path / "lfm.rejected.plan") and Path(rejected).read_bytes() == b"a bad engine"
    assert Path(plan).read_bytes() == data and tp.read_sidecar(plan) == sidecar  # the earlier engine untouched
    assert json.loads(Path(plan + ".report.json").read_text()) == {"passed": False}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lfm.plan", "lfm.plan.json", "lfm.plan.report.json",
                                                          "lfm.rejected.plan"]


def test_verdict_by_precision():
    from lfm.export.trt_build import format_report, judge, logit_threshold

    assert logit_threshold(0.5) == 0.0 and abs(logit_threshold(0.9) - np.log(9)) < 1e-12
    ref = [np.array([5.0, -3.0, 0.0005, 12.0]), np.array([-8.0, 2.5])]
    close = [r + 1e-4 for r in ref]
    v = judge("fp32", ref, close)
    assert v["passed"] and v["images"] == 6 and v["decision_flips"] == 0 and v["max_abs_logit_diff"] < 2e-4

    flip_near = [np.array([5.0, -3.0, -0.0002, 12.0]), ref[1]]  # flips within 1e-3 of the threshold: allowed
    v = judge("fp32", ref, flip_near)
    assert v["passed"] and v["decision_flips"] == 1 and v["flips_beyond_margin"] == 0

    off = [np.array([5.0, -3.0, 0.0005, 12.1]), ref[1]]  # 0.1 off: rel 8e-3, abs 0.1
    assert not judge("fp32", ref, off)["passed"]
    assert judge("fp16", ref, off)["passed"]
    assert not judge("fp32", ref, close, tolerance_passed=[True, False])["passed"]  # Polygraphy's verdict rules

    int8_ref = [np.array([3.0, -2.5, 0.4, -0.7, 9.0])]
    int8_ok = [np.array([2.1, -1.9, -0.3, 0.2, 7.5])]  # big logit moves, flips only within 1.0 of the threshold
    v = judge("int8", int8_ref, int8_ok)
    assert v["passed"] and v["decision_flips"] == 2 and abs(v["decision_agreement"] - 0.6) < 1e-12
    assert "within_tolerance" not in v["feeds"][0]
    v = judge("int8", int8_ref, [np.array([2.1, 0.3, 0.4, -0.7, 9.0])])  # -2.5 -> 0.3: a real flip
    assert not v["passed"] and v["flips_beyond_margin"] == 1
    assert not judge("fp16", ref, [np.array([5.0, -3.0, np.nan, 12.0]), ref[1]])["passed"]
    assert not judge("fp32", [], [])["passed"]
    text = format_report(judge("int8", int8_ref, int8_ok), [[5, 64, 64, 3]])
    assert "decisions only" in text and "agreement 60.00 %" in text and "PASSED" in text


# ----------------------------------------------------------------------------------------------
# cuda-python's error tuples and the in-flight slots


class FakeCudaError(enum.IntEnum):
    """cuda-python's error enums are IntEnums with cudaSuccess = 0; this one has the same shape."""

    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorNoDevice = 100


def test_cuda_check_unpacks_and_raises():
    ok = FakeCudaError.cudaSuccess
    assert cu.cuda_check((ok,)) is None
    assert cu.cuda_check((ok, 1234)) == 1234
    assert cu.cuda_check((ok, 1, 2)) == (1, 2)
    assert cu.cuda_check(ok) is None
    with pytest.raises(cu.CudaError, match=r"cudaMemcpyAsync failed: cudaErrorInvalidValue \(1\)"):
        cu.cuda_check((FakeCudaError.cudaErrorInvalidValue, None), "cudaMemcpyAsync")
    with pytest.raises(cu.CudaError, match="no usable NVIDIA GPU .*cudaErrorNoDevice.*--model lfm.onnx"):
        cu.cuda_check((FakeCudaError.cudaErrorNoDevice, None), "cudaGetDeviceCount")


def test_slot_ring_hands_back_uncollected_jobs_in_order():
    ring = cu.SlotRing(2)
    assert ring.acquire("a") == (0, None)
    assert ring.acquire("b") == (1, None)
    assert ring.busy() == [0, 1]
    ring.release(0, "a")
    assert ring.acquire("c") == (0, None)
    assert ring.acquire("d") == (1, "b")  # b was never collected: the caller fetches it first
    ring.release(1, "b")  # a stale release does not free d's slot
    assert ring.busy() == [0, 1]
    with pytest.raises(ValueError):
        cu.SlotRing(0)


# ----------------------------------------------------------------------------------------------
# The CLIs without TensorRT: one line, exit 2, no torch


def test_to_trt_help_and_argument_errors(tmp_path):
    out = subprocess.run(TO_TRT + ["--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for option in ("--precision", "--batch", "--size", "--workspace", "--opt-level", "--timing-cache", "--compare-images"):
        assert option in out.stdout
    assert "PLAN.json" in out.stdout and "rejected" in out.stdout

    pytest.importorskip("onnx", reason="the builder reads ONNX models: the [export] extra")
    onnx_path = save(tiny_onnx("uint8"), tmp_path / "m.onnx")
    for args, expect in [(["--batch", "4,2,8"], "--batch 4,2,8: need MIN <= OPT <= MAX"),
                         (["--size", "16,64,128"], "below LFM's smallest input"),
                         (["--precision", "int8"], "needs the INT8 QDQ model"),
                         (["-o", str(tmp_path / "no" / "x.plan")], "does not exist")]:
        proc = subprocess.run(TO_TRT + [str(onnx_path), *args], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2 and expect in one_line_error(proc)
    proc = subprocess.run(TO_TRT + [str(tmp_path / "missing.onnx")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "missing.onnx: no such file" in one_line_error(proc)


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here: the missing-TensorRT message cannot be shown")
def test_to_trt_without_tensorrt_says_what_to_install(tmp_path):
    pytest.importorskip("onnx", reason="the builder reads ONNX models: the [export] extra")
    onnx_path = save(tiny_onnx("uint8"), tmp_path / "m.onnx")
    proc = subprocess.run(TO_TRT + [str(onnx_path)], capture_output=True, text=True, timeout=60)
    line = one_line_error(proc)
    assert proc.returncode == 2 and "needs TensorRT" in line and "pip install -e '.[tensorrt]'" in line
    assert not list(tmp_path.glob("*.plan*"))


def test_runner_refuses_bad_plans_before_touching_tensorrt(tmp_path):
    with pytest.raises(tp.EngineError, match="x.plan: no such file"):
        TrtRunner(tmp_path / "x.plan").activate()
    with pytest.raises(tp.EngineError, match="not a file"):
        TrtRunner(tmp_path).activate()
    plan = tmp_path / "lfm.plan"
    plan.write_bytes(b"engine")
    with pytest.raises(tp.EngineError, match="sidecar lfm.plan.json is missing"):
        TrtRunner(plan).activate()
    tp.write_json_atomic(tp.sidecar_path(plan), make_sidecar(b"another engine"))
    with pytest.raises(tp.EngineError, match="does not match its sidecar"):
        TrtRunner(plan).activate()
    with pytest.raises(ValueError):
        TrtRunner(plan, in_flight=0)


@pytest.mark.skipif(HAS_TRT, reason="tensorrt is installed here: the missing-TensorRT message cannot be shown")
def test_runner_without_tensorrt_says_what_to_install(tmp_path):
    runner = TrtRunner(write_plan(tmp_path))
    sidecar, data = runner.load_checked()
    assert data == b"engine bytes" and sidecar["precision"] == "fp16"
    with pytest.raises(BackendError) as e:
        runner.activate()
    msg = str(e.value)
    assert "--engine needs TensorRT" in msg and "pip install -e '.[tensorrt]'" in msg and "--model" in msg
    assert not runner.is_active


def _infer_has_engine() -> bool:
    return "--engine" in (ROOT / "runtime" / "infer.py").read_text()


@pytest.mark.skipif(not _infer_has_engine(), reason="runtime/infer.py has no --engine yet (hook-up pending)")
def test_infer_engine_fails_in_one_line_without_torch(tmp_path):
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(image)
    infer = ROOT / "runtime" / "infer.py"
    proc = run_no_torch(infer, "--engine", tmp_path / "x.plan", image)
    assert proc.returncode == 2 and "x.plan: no such file" in one_line_error(proc)
    plan = tmp_path / "lfm.plan"
    plan.write_bytes(b"engine")
    proc = run_no_torch(infer, "--engine", plan, image)
    assert proc.returncode == 2 and "sidecar lfm.plan.json is missing" in one_line_error(proc)
    if not HAS_TRT:
        plan = write_plan(tmp_path)
        proc = run_no_torch(infer, "--engine", plan, image)
        line = one_line_error(proc)
        assert proc.returncode == 2 and "needs TensorRT" in line and "--model" in line


def test_the_tensorrt_backend_modules_are_torch_free():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import lfm.runtime.backends.trt_engine, lfm.runtime.backends.trt_plan\n"
            "assert not any(m.startswith(('lfm.train', 'lfm.export', 'tensorrt', 'polygraphy')) for m in sys.modules)\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ----------------------------------------------------------------------------------------------
# The Detector keeping batches in flight (needs the Runner submit/result hook-up)


class ThreadedRunner:
    """A plain-numpy runner whose batches really run on a worker thread: submit returns a future.
    logit = mean pixel value - 100, or an error for a marked image."""

    name = "threaded"
    max_in_flight = 3

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(1)
        self.spec = ModelSpec(input="uint8", layout="NHWC", policy="none", size=64)
        self.in_flight = self.peak = 0
        self.is_active = False

    def activate(self):
        self.is_active = True
        return self

    def deactivate(self):
        self.pool.shutdown()

    def _run(self, x):
        if (x == 7).all(axis=(1, 2, 3)).any():
            raise ValueError("refused")
        return {"logit": x.reshape(len(x), -1).mean(axis=1).astype(np.float32) - 100}

    def infer(self, feed):
        return self._run(feed["pixels"])

    def submit(self, feed):
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        return self.pool.submit(self._run, feed["pixels"].copy())

    def result(self, handle):
        self.in_flight -= 1
        return handle.result()


def test_detector_keeps_batches_in_flight_in_order():
    from lfm.runtime.detector import Detector

    runner = ThreadedRunner()
    images = [np.full((64, 64, 3), v, np.uint8) for v in (10, 20, 7, 40, 50, 60, 70, 80, 90)]
    with Detector(runner, batch_size=2, workers=2) as det:
        records = det.predict(images)
    assert [r.error for r in records].count(None) == 8
    assert "refused" in records[2].error  # isolated to its image; its batch-mate still scored
    assert [round(r.logit) for i, r in enumerate(records) if i != 2] == [-90, -80, -60, -50, -40, -30, -20, -10]
    assert runner.peak >= 2  # more than one batch was submitted before the first result was taken


# ----------------------------------------------------------------------------------------------
# Issue 15: the supported versions, extras, uint8 inputs, fp16 from fp32, TensorRT 11's removals


def test_version_strings_parse_as_release_numbers():
    assert tp.version_tuple("10.14.1.48.post1") == (10, 14, 1, 48)
    assert tp.version_tuple("2.4.0rc1") == (2, 4, 0) and tp.version_tuple("1.26.4") == (1, 26, 4)
    assert tp.at_least("11.2.1.2", "11.2") and not tp.at_least("11.1.0.106", "11.2")
    assert tp.at_least("2.4.0rc1", "2.4") and not tp.at_least("2.3.5", "2.4")


def test_tensorrt_releases_outside_the_matrix_are_named():
    assert tp.tensorrt_problem("10.8.0.43") is None and tp.tensorrt_problem("11.4.0.106") is None
    msg = tp.tensorrt_problem("10.7.0.23")
    assert "TensorRT 10.7.0.23 is older than 10.8" in msg and "'.[tensorrt-cu12]'" in msg and "\n" not in msg
    assert tp.tensorrt_untested("11.4.0.106") is None
    assert "TensorRT 12.0.0 is newer than" in tp.tensorrt_untested("12.0.0")


@pytest.mark.parametrize("trt_version,numpy_version,has_module,expect", [
    ("10.8.0.43", "1.26.4", True, "needs TensorRT 10.9 or newer"),        # no aot_impl, KernelLaunchParams, SymInt32
    ("10.13.3.9", "1.26.4", False, "has no tensorrt.plugin module"),      # pip wheels before 10.14
    ("10.16.1.11", "2.4.0", True, "needs numpy < 2.4"),                   # int(f.data) in the plugin creator
    ("11.0.0.114", "2.4.6", True, "needs numpy < 2.4"),
    ("11.1.0.106", "2.4.0rc1", True, "needs numpy < 2.4"),
    ("10.9.0.34", "2.3.5", True, None),
    ("10.16.1.11", "1.26.4", True, None),
    ("11.2.1.2", "2.4.0", True, None),                                    # f.data[0] from 11.2 on
    ("11.4.0.106", "2.4.6", True, None),
])
def test_plugin_graph_version_matrix(trt_version, numpy_version, has_module, expect):
    from lfm.export.trt_build import plugin_graph_problem

    problem = plugin_graph_problem(trt_version, numpy_version, has_module)
    if expect is None:
        assert problem is None
    else:
        assert expect in problem and trt_version in problem and "\n" not in problem
        assert "--variant standard" in problem  # the way out that needs no other TensorRT


def test_polygraphy_older_than_the_comparison_needs_is_refused_before_the_build(monkeypatch):
    from lfm.export.trt_build import BuildError, check_polygraphy, polygraphy_problem

    assert polygraphy_problem("0.53.4") is None and polygraphy_problem("0.53.6") is None
    for old in ("0.49.26", "0.50.3"):  # no SimpleCompareFunc; compare_accuracy returns a dict there
        assert f"Polygraphy {old} is too old" in polygraphy_problem(old) and "polygraphy>=0.53" in polygraphy_problem(old)
    assert "needs Polygraphy 0.53+" in polygraphy_problem(None)
    if _has("polygraphy"):
        check_polygraphy()  # the installed one is new enough (the [tensorrt] extras ask for 0.53+)
    monkeypatch.setitem(sys.modules, "polygraphy", None)  # as if not installed
    with pytest.raises(BuildError, match=r"needs Polygraphy 0\.53\+.*'\.\[tensorrt-cu12\]'"):
        check_polygraphy()


def test_polygraphy_verdicts_from_a_real_comparison(tmp_path):
    """iteration_verdicts against what the installed Polygraphy's compare_accuracy returns, with
    two ONNX Runtime runners (the shape to_trt.py reads after a build, minus TensorRT)."""
    pytest.importorskip("polygraphy", reason="the builder compares through Polygraphy: the [tensorrt] extra")
    from onnx import TensorProto, helper
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.comparator import Comparator, SimpleCompareFunc

    from lfm.export.trt_build import iteration_verdicts

    def graph(path, bias):
        nodes = [helper.make_node("Add", ["x", "b"], ["logit"])]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("logit", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor("b", TensorProto.FLOAT, [], [bias])])
        return str(save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), path))

    same, off = graph(tmp_path / "a.onnx", 0.0), graph(tmp_path / "b.onnx", 0.5)
    feeds = [{"x": np.array([1.0, -2.0], np.float32)}, {"x": np.array([200.0, 300.0], np.float32)}]
    for other, expect in ((same, [True, True]), (off, [False, True])):  # 0.5 on 200 is within rtol 1e-2
        runners = [OnnxrtRunner(SessionFromOnnx(same), name="onnxruntime"), OnnxrtRunner(SessionFromOnnx(other), name="other")]
        results = Comparator.run(runners, data_loader=feeds)
        accuracy = Comparator.compare_accuracy(results, compare_func=SimpleCompareFunc(rtol=1e-2, atol=1e-1,
                                                                                       check_error_stat="max"))
        assert iteration_verdicts(accuracy, "logit") == expect


def _extras():
    import tomllib

    from packaging.requirements import Requirement

    with open(ROOT / "pyproject.toml", "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    return {name: {Requirement(r).name: Requirement(r) for r in reqs} for name, reqs in extras.items()}


def test_tensorrt_extras_pin_cuda_python_to_the_wheels_cuda_major():
    pytest.importorskip("packaging", reason="reading requirement strings needs packaging")
    extras = _extras()
    support = tp.TENSORRT_SUPPORT
    for cuda, other in (("cu12", "cu13"), ("cu13", "cu12")):
        reqs = extras[f"tensorrt-{cuda}"]
        trt = reqs[f"tensorrt-{cuda}"].specifier
        assert trt.contains(support["pip_plugin_module"] + ".0") and trt.contains("11.4.0.106")
        assert not trt.contains("10.13.3.9") and not trt.contains("12.0.0")  # no tensorrt.plugin / untested major
        lo, hi = support["cuda_python"][cuda]
        cuda_python = reqs["cuda-python"].specifier
        assert cuda_python.contains(lo) and not cuda_python.contains(hi + ".0")
        assert not cuda_python.contains({"cu12": "13.0.3", "cu13": "12.9.10"}[cuda])  # the other CUDA major
        assert {"onnx", "polygraphy"} <= set(reqs)  # what the build imports
        assert reqs["polygraphy"].specifier.contains("0.53.6") and not reqs["polygraphy"].specifier.contains("0.50.3")
        assert f"tensorrt-{other}" not in reqs
    (alias,) = extras["tensorrt"].values()  # [tensorrt] is one of the two, not a third mix
    assert alias.name == "lfm-deploy" and alias.extras == {"tensorrt-cu13"}


def test_a_driver_older_than_cuda_python_names_the_cu12_extra(monkeypatch):
    class DriverError(enum.IntEnum):
        cudaSuccess = 0
        cudaErrorInsufficientDriver = 35

    monkeypatch.setattr(cu, "cuda_python_version", lambda: "13.0.3")
    with pytest.raises(cu.CudaError) as e:
        cu.cuda_check((DriverError.cudaErrorInsufficientDriver, 0), "cudaGetDeviceCount")
    msg = str(e.value)
    assert "the CUDA driver is older than cuda-python 13.0.3 needs" in msg and "pip install -e '.[tensorrt-cu12]'" in msg
    assert "no usable NVIDIA GPU" not in msg and "\n" not in msg
    assert "update the NVIDIA driver" in cu.driver_too_old_message("cudaGetDeviceCount", "cudaErrorInsufficientDriver",
                                                                   "12.9.4")


def test_a_uint8_input_must_meet_a_cast_first(tmp_path):
    """TensorRT takes a uint8 network input only into a Cast; graphs exported before the Cast (a
    Transpose or LfmNpr on the bytes) are refused in one line, before TensorRT is needed."""
    pytest.importorskip("onnx", reason="the builder reads ONNX models: the [export] extra")
    from onnx import helper

    from lfm.export.trt_build import uint8_input_problem
    from lfm.runtime import custom_ops

    assert uint8_input_problem(tiny_onnx("uint8")) is None and uint8_input_problem(tiny_onnx("float")) is None
    old_standard = tiny_onnx("uint8", nodes=[helper.make_node("Transpose", ["pixels"], ["logit"], perm=[0, 3, 1, 2])])
    assert "'pixels' feeds Transpose directly" in uint8_input_problem(old_standard)
    old_plugins = tiny_onnx("uint8", domains=[custom_ops.DOMAIN], nodes=[
        helper.make_node("LfmNpr", ["pixels"], ["logit"], domain=custom_ops.DOMAIN)])
    assert "feeds LfmNpr directly" in uint8_input_problem(old_plugins)
    proc = subprocess.run(TO_TRT + [str(save(old_standard, tmp_path / "old.onnx"))], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "TensorRT takes a uint8 input only into a Cast" in one_line_error(proc)


def test_sort_nodes_puts_producers_first_and_refuses_dangling_inputs():
    pytest.importorskip("onnx", reason="the builder reads ONNX models: the [export] extra")
    from onnx import TensorProto, helper

    from lfm.export.trt_build import BuildError, sort_nodes

    nodes = [helper.make_node("Relu", ["b"], ["c"], name="late"), helper.make_node("Neg", ["x"], ["a"], name="first"),
             helper.make_node("Abs", ["a"], ["b"], name="middle"), helper.make_node("Exp", ["x"], ["e"], name="free")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    graph = helper.make_graph(nodes, "g", [x], [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])])
    sort_nodes(graph)
    assert [n.name for n in graph.node] == ["first", "middle", "free", "late"]  # one sweep, then the rest
    helper.make_model(graph)  # still a graph
    dangling = helper.make_graph([helper.make_node("Relu", ["nowhere"], ["c"])], "g", [x], [])
    with pytest.raises(BuildError, match="no node produces nowhere"):
        sort_nodes(dangling)


@pytest.mark.slow
@pytest.mark.parametrize("input_variant,variant", [("uint8", "standard"), ("float", "standard"), ("uint8", "plugins")])
def test_fp16_conversion_for_tensorrt_runs_in_onnx_runtime_within_the_fp16_tolerance(input_variant, variant, tmp_path):
    """--precision fp16 on an fp32 model builds the graph fp16_model makes. On the ONNX side: a
    valid, ordered fp16 graph, inputs and outputs unchanged, LFM's custom ops still fed float32,
    and ONNX Runtime on it agrees with the fp32 model as an fp16 engine must (TOLERANCES['fp16'])."""
    import onnx

    from conftest import random_lfm
    from lfm.export import onnx_export as ox
    from lfm.export import trt_build as tb
    from lfm.export.onnx_files import check, set_metadata
    from lfm.runtime import custom_ops
    from lfm.runtime.backends.onnxrt import OnnxRunner

    if variant == "plugins":
        pytest.importorskip("onnxruntime_extensions", reason="ONNX Runtime runs the plugin graph through it")
    spec = ModelSpec(input=input_variant, size=64)
    proto = check(ox.simplify(ox.torch_to_onnx(random_lfm(), spec, input_variant, variant=variant)))
    set_metadata(proto, ox.metadata(spec, precision="fp32", source=None, source_sha256=None, variant=variant))
    fp32_path = save(proto, tmp_path / "fp32.onnx")
    half = tb.fp16_model(onnx.load(fp32_path))
    fp16_path = save(half, tmp_path / "fp16.onnx")

    onnx.checker.check_model(half, full_check=True)
    half = onnx.shape_inference.infer_shapes(half)
    known = {i.name for i in half.graph.input} | {i.name for i in half.graph.initializer} | {""}
    for node in half.graph.node:  # topological order: every input made before it is used
        assert set(node.input) <= known, node.name
        known.update(node.output)
    assert [(i.name, i.type.tensor_type.elem_type) for i in half.graph.input] == \
           [(i.name, i.type.tensor_type.elem_type) for i in proto.graph.input]
    assert {o.name: o.type.tensor_type.elem_type for o in half.graph.output} == \
           {o.name: onnx.TensorProto.FLOAT for o in proto.graph.output}
    weights = {i.name: i.data_type for i in half.graph.initializer}
    convs = [n for n in half.graph.node if n.op_type == "Conv"]
    assert convs and all(weights[n.input[1]] == onnx.TensorProto.FLOAT16 for n in convs)
    types = {v.name: v.type.tensor_type.elem_type for v in list(half.graph.value_info) + list(half.graph.input)}
    for node in half.graph.node:
        if node.op_type in custom_ops.OP_TYPES:
            assert types[node.input[0]] == onnx.TensorProto.FLOAT, node.op_type
    props = {p.key: p.value for p in half.metadata_props}
    assert props["lfm.precision"] == "fp16" and props["lfm.spec"] == spec.replace(
        layout="NHWC" if input_variant == "uint8" else "NCHW").to_json()
    assert tb.onnx_precision(half, props) == "fp16" and tb.uint8_input_problem(half) is None

    inp = tb.input_info(proto, props)
    profile = tb.make_profile(inp, "1,2,3", "48,64,80", spec)
    feeds = tb.synthetic_feeds(inp, spec, profile)
    with OnnxRunner(fp32_path, providers=["cpu"]) as r32, OnnxRunner(fp16_path, providers=["cpu"]) as r16:
        ref = [r32.infer(dict(f))["logit"] for f in feeds]
        out = [r16.infer(dict(f))["logit"] for f in feeds]
    verdict = tb.judge("fp16", ref, out, spec.threshold)
    assert verdict["passed"], verdict
    assert 0 < verdict["max_abs_logit_diff"] and verdict["max_rel_logit_diff"] < 1e-2  # it really ran in fp16


def test_the_glue_uses_no_name_tensorrt_11_removed():
    """TensorRT 11 removed ICudaEngine.device_memory_size and weak typing (BuilderFlag.FP16 / INT8,
    Polygraphy's CreateConfig(fp16=...)); the 11.4 bindings have only device_memory_size_v2."""
    import ast

    glue = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "runtime" / "backends").glob("*.py"))]
    assert "runtime/backends/trt_engine.py" in glue
    for rel in (*glue, "export/to_trt.py", "kernels/trt_plugins.py"):
        tree = ast.parse((ROOT / rel).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute):
                assert node.attr != "device_memory_size", f"{rel}:{node.lineno}"
                if isinstance(node.value, ast.Attribute) and node.value.attr == "BuilderFlag":
                    assert node.attr not in ("FP16", "INT8"), f"{rel}:{node.lineno}"
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "CreateConfig":
                assert not {k.arg for k in node.keywords} & {"fp16", "int8"}, f"{rel}:{node.lineno}"


def test_triton_repository_for_a_plugin_engine_needs_no_plugin_library(tmp_path):
    from lfm.export.to_triton import write_repository

    plan = tmp_path / "lfm.plan"
    plan.write_bytes(b"not really an engine")
    spec = ModelSpec(input="uint8", layout="NHWC", size=64)
    (tmp_path / "lfm.plan.json").write_text(json.dumps({
        "spec": spec.to_dict(), "input": {"name": "pixels", "dtype": "uint8", "layout": "NHWC"},
        "profiles": [{"min": [1, 48, 48, 3], "opt": [8, 64, 64, 3], "max": [16, 128, 128, 3]}],
        "plugins": ["LfmNpr", "LfmTopKPool"]}))
    notes = write_repository(str(plan), str(tmp_path / "repo"))["notes"]
    (note,) = [n for n in notes if "LfmNpr" in n]
    assert "needs no plugin library" in note and "load the plugin" not in note


# ----------------------------------------------------------------------------------------------
# On a machine with TensorRT, cuda-python and a GPU


def _gpu_or_skip():
    pytest.importorskip("tensorrt", reason="TensorRT is not installed (it cannot be on this project's machines)")
    try:
        cudart = cu.import_cudart()
        cu.device_info(cudart)
    except BackendError as e:
        pytest.skip(f"no usable GPU / cuda-python: {e}")
    return cudart


def test_no_gpu_is_one_line_with_real_cuda_python():
    pytest.importorskip("cuda", reason="cuda-python is not installed")
    cudart = cu.import_cudart()
    try:
        cu.device_info(cudart)
    except cu.CudaError as e:
        assert "no usable NVIDIA GPU" in str(e) and "--model" in str(e) and "\n" not in str(e)
    else:
        pytest.skip("a GPU is present: the no-GPU message cannot be shown")


def test_pinned_and_device_buffers_round_trip():
    pytest.importorskip("cuda", reason="cuda-python is not installed")
    try:
        cudart = cu.import_cudart()
        cu.device_info(cudart)
    except BackendError as e:
        pytest.skip(f"no usable GPU: {e}")
    host, back, dev = cu.PinnedBuffer(cudart, 4096), cu.PinnedBuffer(cudart, 4096), cu.DeviceBuffer(cudart, 4096)
    stream = cu.cuda_check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
    try:
        x = host.view((16, 64), np.float32)
        x[:] = np.arange(1024, dtype=np.float32).reshape(16, 64)
        kind = cudart.cudaMemcpyKind
        cu.cuda_check(cudart.cudaMemcpyAsync(dev.ptr, host.ptr, 4096, kind.cudaMemcpyHostToDevice, stream))
        cu.cuda_check(cudart.cudaMemcpyAsync(back.ptr, dev.ptr, 4096, kind.cudaMemcpyDeviceToHost, stream))
        cu.cuda_check(cudart.cudaStreamSynchronize(stream))
        np.testing.assert_array_equal(back.view((16, 64), np.float32), x)
    finally:
        for b in (host, back, dev):
            b.free()
        cu.cuda_check(cudart.cudaStreamDestroy(stream))


@pytest.fixture(scope="module")
def built(request, tmp_path_factory):
    """(plan, onnx): the conftest's random-weight uint8 model built as an fp32 engine."""
    _gpu_or_skip()
    random_onnx = request.getfixturevalue("random_onnx")  # only once a GPU is known: exporting takes seconds
    out = tmp_path_factory.mktemp("trt") / "lfm.plan"
    proc = subprocess.run(TO_TRT + [str(random_onnx), "-o", str(out), "--batch", "1,4,8", "--size", "48,64,96"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, random_onnx


def test_engine_matches_onnxruntime_in_flight_and_with_graphs(built):
    import onnxruntime as ort

    built_plan, random_onnx = built
    report = json.loads(Path(str(built_plan) + ".report.json").read_text())
    assert report["passed"] and report["comparison"]["max_abs_logit_diff"] < 1e-3
    session = ort.InferenceSession(str(random_onnx), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    batches = [rng.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8) for n in (1, 3, 8, 13)]  # 13: split in two
    expected = [session.run(["logit"], {"pixels": b})[0] for b in batches]
    for graphs in (False, True):
        with TrtRunner(built_plan, cuda_graphs=graphs) as runner:
            assert runner.spec.input == "uint8"
            handles = [runner.submit({"pixels": b}) for b in batches]  # all in flight, two slots
            for h, e in zip(handles, expected):
                np.testing.assert_allclose(runner.result(h)["logit"], e, rtol=1e-3, atol=1e-3)
            again = runner.infer({"pixels": batches[2]})["logit"]  # a replayed graph, if graphs
            np.testing.assert_allclose(again, expected[2], rtol=1e-3, atol=1e-3)
            with pytest.raises(tp.ShapeError, match="outside lfm.plan's optimisation profile"):
                runner.infer({"pixels": np.zeros((1, 128, 64, 3), np.uint8)})


def test_engine_from_another_trt_release_is_refused(built, tmp_path):
    built_plan = built[0]
    sidecar = tp.read_sidecar(built_plan)
    sidecar["tensorrt"] = "9.0.0.1"
    plan = tmp_path / "old.plan"
    plan.write_bytes(Path(built_plan).read_bytes())
    tp.write_json_atomic(tp.sidecar_path(plan), sidecar)
    with pytest.raises(tp.EngineError, match="TensorRT 9.0.0 built it.*rebuild it on this machine: python export/to_trt.py"):
        TrtRunner(plan).activate()


def test_profile_helpers():
    assert tp.trt_release("10.8.0.43") == "10.8.0" and cu.capability_str(9, 0) == "9.0"
    assert tp.profile_ranges({"layout": "NCHW", "min": [1, 3, 48, 40], "max": [8, 3, 96, 90]}) == {
        "batch": (1, 8), "height": (48, 96), "width": (40, 90)}
    with pytest.raises(ValueError):
        tp.profile_axes("CHW")
