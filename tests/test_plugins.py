"""The plugin graph (issue 4): LfmNpr and LfmTopKPool as custom nodes, their numpy ops in ONNX
Runtime, agreement with the standard graph and PyTorch, and the TensorRT plugin glue."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import infer_without_torch, random_lfm
import torch

from lfm.runtime import custom_ops as ops
from lfm.runtime.spec import IMAGENET_STD, ModelSpec
from lfm.train.checkpoint import make_checkpoint, save_atomic
from lfm.train.model import NPR, TopKPool, build_model

ROOT = Path(__file__).resolve().parents[1]
TO_ONNX = [sys.executable, str(ROOT / "export" / "to_onnx.py")]


def needs_extensions():
    pytest.importorskip("onnxruntime_extensions",
                        reason="ONNX Runtime runs the plugin graph through onnxruntime-extensions: pip install -e '.[plugins]'")


def uint8_scale(std=IMAGENET_STD):
    return tuple((1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).tolist())


# ---------------------------------------------------------------------------------------------
# The numpy ops against the model's torch modules


@pytest.mark.parametrize("h,w", [(64, 64), (63, 65), (2, 3), (97, 130)])
def test_numpy_npr_equals_the_models_npr(h, w):
    rng = np.random.default_rng(h * w)
    pixels = rng.integers(0, 256, (2, h, w, 3), dtype=np.uint8)
    scale = uint8_scale()
    ref = NPR()(torch.from_numpy(pixels).permute(0, 3, 1, 2).float()).abs() * torch.tensor(scale).view(1, 3, 1, 1)
    np.testing.assert_array_equal(ops.npr(pixels, scale), ref.numpy())
    np.testing.assert_array_equal(ops.npr(pixels, ops.format_scale(scale)), ref.numpy())  # the attribute form
    image = rng.standard_normal((3, 3, h, w), dtype=np.float32)
    out = ops.npr(image, (1.0, 1.0, 1.0))
    assert out.dtype == np.float32 and out.shape == (3, 3, h - h % 2, w - w % 2)
    np.testing.assert_array_equal(out, NPR()(torch.from_numpy(image)).abs().numpy())


def test_numpy_npr_refuses_what_the_node_does_not_take():
    for x, match in [(np.zeros((1, 8, 8, 4), np.uint8), "NHWC"), (np.zeros((1, 4, 8, 8), np.float32), "NCHW"),
                     (np.zeros((1, 3, 8, 8), np.float64), "uint8 NHWC or float32"), (np.zeros((8, 8, 3), np.uint8), "4-D"),
                     (np.zeros((1, 1, 9, 3), np.uint8), "too small")]:
        with pytest.raises(ValueError, match=match):
            ops.npr(x, (1, 1, 1))


@pytest.mark.parametrize("case", ["random", "nan_inf_ties", "exactly_k", "many_nan"])
def test_numpy_top_k_pool_equals_torch_topk(case):
    rng = np.random.default_rng(1)
    maps = rng.standard_normal((2, 5, 7, 9)).astype(np.float32)
    if case == "nan_inf_ties":
        maps[0, 0, 0, :4] = np.nan
        maps[0, 1, 2, :] = np.inf
        maps[1, 2] = -np.inf
        maps[1, 3] = np.round(maps[1, 3])  # many ties
        maps[1, 4, :3] = 0.0
        maps[1, 4, 3:5] = -0.0
    elif case == "exactly_k":
        maps = maps[:, :, :4, :4]  # H * W == k
    elif case == "many_nan":
        maps[0, 0] = np.nan  # more NaNs than k
    ref = TopKPool(16)(torch.from_numpy(maps)).numpy()
    out = ops.top_k_pool(maps, 16)
    assert out.shape == (2, 5 * 16) and out.dtype == np.float32
    np.testing.assert_array_equal(out, ref)  # NaN == NaN here; -0.0 == 0.0


def test_numpy_top_k_pool_needs_k_values_per_map():
    with pytest.raises(ValueError, match=r"3x5 = 15 values cannot give the top k=16"):
        ops.top_k_pool(np.zeros((1, 2, 3, 5), np.float32), 16)


def test_scale_attribute_round_trips_the_float32_values():
    scale = uint8_scale()
    text = ops.format_scale(scale)
    assert len(text.split(",")) == 3 and all(len(p) < 16 for p in text.split(","))
    assert np.array_equal(np.float32(ops.parse_scale(text)), np.float32(scale))  # bit-exact
    # TensorRT's parser hands a STRING attribute over as a NUL-terminated char field
    assert ops.parse_scale(text.encode() + b"\x00") == ops.parse_scale(text)
    for bad in ["1,2", "a,b,c", "1,2,inf", ""]:
        with pytest.raises(ValueError, match="scale"):
            ops.parse_scale(bad)


# ---------------------------------------------------------------------------------------------
# The exported graph


@pytest.fixture(scope="module")
def random_model():
    return random_lfm()


@pytest.fixture(scope="module")
def random_graphs(random_model, tmp_path_factory):
    """Both variants of a random-weight model, both inputs: {(input, variant): path}."""
    from lfm.export import onnx_export as ox
    from lfm.export.onnx_files import check, set_metadata

    d = tmp_path_factory.mktemp("graphs")
    out = {}
    for input_variant in ("uint8", "float"):
        spec = ModelSpec(input=input_variant, size=64)
        for variant in ("standard", "plugins"):
            proto = check(ox.simplify(ox.torch_to_onnx(random_model, spec, input_variant, variant=variant)))
            set_metadata(proto, ox.metadata(spec, precision="fp32", source=None, source_sha256=None, variant=variant))
            out[input_variant, variant] = d / f"{input_variant}_{variant}.onnx"
            onnx.save(proto, out[input_variant, variant])
    return out


def test_plugin_graph_nodes_are_exactly_the_contract(random_graphs):
    for input_variant in ("uint8", "float"):
        m = onnx.load(random_graphs[input_variant, "plugins"])
        onnx.checker.check_model(m, full_check=True)
        custom = [n for n in m.graph.node if n.domain]
        assert [(n.op_type, n.domain) for n in custom] == [("LfmNpr", "ai.onnx.contrib"), ("LfmTopKPool", "ai.onnx.contrib")]
        assert not any(n.op_type in ("Resize", "TopK", "Abs") for n in m.graph.node)  # replaced, not duplicated
        attrs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in custom]
        scale = uint8_scale() if input_variant == "uint8" else (1.0, 1.0, 1.0)
        assert attrs[0] == {"scale": ops.format_scale(scale).encode(), "plugin_namespace": b"lfm", "plugin_version": b"1"}
        assert attrs[1] == {"k": 16, "plugin_namespace": b"lfm", "plugin_version": b"1"}
        assert [a.type for a in custom[0].attribute] == [onnx.AttributeProto.STRING] * 3
        assert {(o.domain, o.version) for o in m.opset_import} == {("", 17), ("ai.onnx.contrib", 1)}
        (inp,) = m.graph.input
        dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
        assert dims == (["batch", "height", "width", 3] if input_variant == "uint8" else ["batch", 3, "height", "width"])
        meta = {p.key: p.value for p in m.metadata_props}
        assert meta["lfm.variant"] == "plugins"
        assert ops.uses_custom_ops(m) and ops.uses_custom_ops(random_graphs[input_variant, "plugins"])
        assert ops.uses_custom_ops(m.SerializeToString())
        assert not ops.uses_custom_ops(random_graphs[input_variant, "standard"])


def test_uses_custom_ops_says_no_to_what_it_cannot_read(tmp_path):
    (tmp_path / "bad.onnx").write_bytes(b"\xff\xff\xff not protobuf")
    assert not ops.uses_custom_ops(tmp_path / "bad.onnx")
    assert not ops.uses_custom_ops(tmp_path / "missing.onnx")


def _run(path, x):
    from lfm.runtime.backends.onnxrt import OnnxRunner

    with OnnxRunner(path, providers=["cpu"]) as r:
        return r.infer({"x": x})["logit"]


def test_plugin_graph_matches_the_standard_graph_in_onnx_runtime(random_graphs, random_model):
    needs_extensions()
    rng = np.random.default_rng(5)
    mean, std = np.float32([0.485, 0.456, 0.406]), np.float32(IMAGENET_STD)
    for b, h, w in [(2, 64, 64), (3, 63, 65), (1, 48, 48), (2, 97, 130)]:
        pixels = rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)
        image = np.ascontiguousarray(((pixels / 255.0 - mean) / std).transpose(0, 3, 1, 2), dtype=np.float32)
        for input_variant, x in (("uint8", pixels), ("float", image)):
            plug = _run(random_graphs[input_variant, "plugins"], x)
            std_logit = _run(random_graphs[input_variant, "standard"], x)
            np.testing.assert_allclose(plug, std_logit, rtol=1e-4, atol=1e-4, err_msg=f"{input_variant} {h}x{w}")
        with torch.no_grad():
            ref = random_model(torch.from_numpy(image)).numpy()
        np.testing.assert_allclose(_run(random_graphs["uint8", "plugins"], pixels), ref, rtol=1e-4, atol=1e-4)


def test_the_session_factory_honours_its_options_and_loads_a_plugin_graph(random_graphs):
    """runtime/backends/onnxrt.inference_session, the one place the project builds an ONNX Runtime
    session: its options reach the session, the plugin graph loads from a path, bytes or a
    ModelProto, and scores as the standard graph in a session built here directly (the reference)."""
    needs_extensions()
    import onnxruntime as ort

    from lfm.runtime.backends.base import BackendError
    from lfm.runtime.backends.onnxrt import inference_session

    path = random_graphs["uint8", "plugins"]
    session = inference_session(path, providers="cpu", threads=2, inter_op_threads=1, optimization="disable",
                                log_severity=3)
    options = session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads, options.log_severity_level) == (2, 1, 3)
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert session.get_providers() == ["CPUExecutionProvider"]
    x = np.random.default_rng(3).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    reference = ort.InferenceSession(str(random_graphs["uint8", "standard"]), providers=["CPUExecutionProvider"])
    want = reference.run(["logit"], {"pixels": x})[0]
    for model in (path, path.read_bytes(), onnx.load(path)):
        got = inference_session(model, providers=["CPUExecutionProvider"]).run(["logit"], {"pixels": x})[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    assert inference_session(path).get_session_options().intra_op_num_threads == 0  # ONNX Runtime's default
    with pytest.raises(BackendError, match="NoSuchExecutionProvider"):
        inference_session(path, providers="NoSuchExecutionProvider")


def test_uint8_graphs_cast_first_and_the_plugin_graph_stays_exact(random_graphs):
    """TensorRT takes a uint8 network input only into a Cast, and its plugins take no uint8: both
    uint8 graphs begin Cast -> Transpose (NCHW), the plugin graph's LfmNpr then takes float32 NCHW
    with the same 1 / (255 std) scale, and the logits in ONNX Runtime equal the standard graph's
    exactly (bytes are exact in float32)."""
    for variant in ("standard", "plugins"):
        nodes = onnx.load(random_graphs["uint8", variant]).graph.node
        cast, transpose = nodes[0], nodes[1]
        assert (cast.op_type, list(cast.input)) == ("Cast", ["pixels"])
        assert onnx.helper.get_attribute_value(cast.attribute[0]) == onnx.TensorProto.FLOAT
        assert (transpose.op_type, list(transpose.input)) == ("Transpose", list(cast.output))
        assert list(onnx.helper.get_attribute_value(transpose.attribute[0])) == [0, 3, 1, 2]
        assert not any("pixels" in n.input for n in nodes[1:])  # the Cast is the input's only consumer
    npr_node = onnx.load(random_graphs["uint8", "plugins"]).graph.node[2]
    assert npr_node.op_type == "LfmNpr" and list(npr_node.input) == list(transpose.output)

    needs_extensions()
    rng = np.random.default_rng(11)
    for b, h, w in [(2, 64, 64), (3, 63, 65), (1, 48, 48), (2, 97, 130)]:
        pixels = rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)
        as_float = np.ascontiguousarray(pixels.astype(np.float32).transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(ops.npr(as_float, uint8_scale()), ops.npr(pixels, uint8_scale()))
        np.testing.assert_array_equal(_run(random_graphs["uint8", "plugins"], pixels),
                                      _run(random_graphs["uint8", "standard"], pixels), err_msg=f"{h}x{w}")


def test_a_refused_input_is_a_catchable_error_not_an_abort(random_graphs):
    """A Python exception inside an onnxruntime-extensions op would abort the process; the op
    warns with the reason instead and the next node fails as an ordinary ONNX Runtime error."""
    needs_extensions()
    from lfm.runtime.backends.onnxrt import OnnxRunner

    with OnnxRunner(random_graphs["uint8", "plugins"], providers=["cpu"]) as r:
        with pytest.warns(RuntimeWarning, match="cannot give the top k=16"), pytest.raises(Exception, match="Gemm"):
            r.infer({"x": np.zeros((1, 40, 40, 3), np.uint8)})
        with pytest.warns(RuntimeWarning, match="too small"), pytest.raises(Exception, match="Conv"):
            r.infer({"x": np.zeros((1, 1, 1, 3), np.uint8)})
        assert np.isfinite(r.infer({"x": np.zeros((1, 48, 48, 3), np.uint8)})["logit"]).all()  # still alive


def test_missing_onnxruntime_extensions_is_one_line(random_graphs, monkeypatch):
    from lfm.runtime.backends.onnxrt import BackendError, OnnxRunner

    monkeypatch.setitem(sys.modules, "onnxruntime_extensions", None)  # as if not installed
    with pytest.raises(BackendError, match=r"pip install -e '\.\[plugins\]'") as e:
        OnnxRunner(random_graphs["uint8", "plugins"]).activate()
    assert "\n" not in str(e.value)
    OnnxRunner(random_graphs["uint8", "standard"]).activate().deactivate()  # standard graphs don't need it


def test_openvino_refuses_a_plugin_graph_in_one_line(random_graphs):
    pytest.importorskip("openvino", reason="OpenVINO is an optional extra: pip install -e '.[openvino]'")
    from lfm.runtime.backends.openvino_rt import BackendError, OpenVinoRunner

    with pytest.raises(BackendError, match="plugin graph.*which OpenVINO cannot run") as e:
        OpenVinoRunner(random_graphs["uint8", "plugins"]).activate()
    assert "\n" not in str(e.value)


def test_auto_runs_a_plugin_graph_on_onnx_runtime(random_graphs):
    """The default backend (auto) never sends the plugin graph to OpenVINO, whatever the CPU; it
    scores as ONNX Runtime named explicitly. --openvino-precision asks for OpenVINO: its refusal."""
    needs_extensions()
    from lfm.runtime.backends import BackendError, make_runner

    path = random_graphs["uint8", "plugins"]
    pixels = np.random.default_rng(5).integers(0, 256, (2, 64, 64, 3), dtype=np.uint8)
    with make_runner(path) as auto, make_runner(path, backend="onnxruntime") as explicit:
        assert auto.chosen == "onnxruntime" and auto.why.startswith("OpenVINO cannot run LFM's custom ops")
        np.testing.assert_array_equal(auto.infer({"x": pixels})["logit"], explicit.infer({"x": pixels})["logit"])
    if importlib.util.find_spec("openvino"):
        with pytest.raises(BackendError, match="plugin graph.*which OpenVINO cannot run"):
            make_runner(path, precision="f32").activate()


@pytest.mark.parametrize("flag", [["--fp16"], ["--int8", "--calib-synthetic"]])
def test_plugin_variant_refuses_fp16_and_int8(flag, tmp_path, capsys):
    from lfm.export import to_onnx
    from lfm.runtime.cli import run

    rc = run(to_onnx.main, [str(tmp_path / "unused.pt"), "-o", str(tmp_path / "m.onnx"), "--variant", "plugins", *flag])
    err = capsys.readouterr().err
    assert rc == 2 and "fp32 only" in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())


def test_plugin_variant_refuses_a_gap_model(tmp_path, capsys):
    from lfm.export import to_onnx
    from lfm.runtime.cli import run

    save_atomic(make_checkpoint(build_model(pooling="gap"), ModelSpec()), tmp_path / "gap.pt")
    rc = run(to_onnx.main, [str(tmp_path / "gap.pt"), "-o", str(tmp_path / "m.onnx"), "--variant", "plugins"])
    err = capsys.readouterr().err
    assert rc == 2 and "needs a Top-K pooling model" in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------------------------------------
# Upstream's checkpoint through the CLI


@pytest.fixture(scope="module")
def upstream_plugins(upstream_ckpt, tmp_path_factory):
    needs_extensions()
    path = tmp_path_factory.mktemp("upstream") / "plugins.onnx"
    r = subprocess.run(TO_ONNX + [str(upstream_ckpt), "-o", str(path), "--input", "uint8", "--variant", "plugins"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return path


def test_upstream_plugin_export_is_verified_against_torch_and_the_standard_graph(upstream_plugins):
    report = json.load(open(str(upstream_plugins) + ".report.json"))
    assert report["passed"] and report["variant"] == "plugins"
    fp32, agree = report["fp32_verification"], report["standard_agreement"]
    assert fp32["passed"] and fp32["max_rel_logit_diff"] <= 1e-4 and fp32["decision_flips"] == 0
    assert agree["passed"] and agree["max_rel_logit_diff"] <= 1e-4 and agree["decision_flips"] == 0
    shapes = {tuple(f["input_shape"]) for f in agree["feeds"]}
    assert (3, 255, 257, 3) in shapes and (1, 48, 48, 3) in shapes  # odd sizes and the minimum
    meta = {p.key: p.value for p in onnx.load(upstream_plugins).metadata_props}
    assert meta["lfm.variant"] == "plugins" and meta["lfm.precision"] == "fp32"


def test_upstream_plugin_graph_scores_reference_images_as_pytorch(upstream_plugins, upstream_ckpt, reference_images):
    from lfm.runtime.backends import make_runner
    from lfm.runtime.detector import Detector

    paths = [str(p) for p, _, _ in reference_images[:32]]
    upstream = np.array([v for _, v, _ in reference_images[:32]])
    with Detector(make_runner(upstream_ckpt, device="cpu")) as det:
        torch_logits = np.array([r.logit for r in det.predict(paths)])
    with Detector(make_runner(upstream_plugins, providers=["cpu"])) as det:
        assert det.spec.input == "uint8"
        logits = np.array([r.logit for r in det.predict(paths)])
    np.testing.assert_allclose(logits, torch_logits, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logits, upstream, rtol=1e-5, atol=1e-3)


def test_infer_runs_the_plugin_graph_without_torch(upstream_plugins, reference_dir):
    recs = infer_without_torch(upstream_plugins, reference_dir / "images")
    assert len(recs) == 8 and all(rec["error"] is None for rec in recs)


# ---------------------------------------------------------------------------------------------
# TensorRT glue: the plain functions here, the registration where TensorRT is installed


@pytest.fixture(scope="module")
def trt_plugins():
    from lfm.kernels import trt_plugins

    return trt_plugins


class LeftOnlyExpr:
    """Stands in for tensorrt.plugin.ShapeExpr: + - * // on the left only, no reflected operators."""

    def __init__(self, text):
        self.text = text

    def _op(self, sym, other):
        other = other.text if isinstance(other, LeftOnlyExpr) else str(other)
        return LeftOnlyExpr(f"({self.text} {sym} {other})")

    def __add__(self, o): return self._op("+", o)
    def __sub__(self, o): return self._op("-", o)
    def __mul__(self, o): return self._op("*", o)
    def __floordiv__(self, o): return self._op("//", o)


def _evaluate(expr, env):
    return eval(expr.text, {}, env) if isinstance(expr, LeftOnlyExpr) else expr


def test_arch_for_capability(trt_plugins):
    pick = trt_plugins.arch_for_capability
    assert [pick(8, 0), pick(8, 6), pick(8, 7), pick(8, 9), pick(9, 0), pick(10, 0), pick(12, 0)] == [80, 86, 86, 89, 90, 89, 89]
    with pytest.raises(ValueError, match="below 8.0"):
        pick(7, 5)


def test_symbolic_dims_work_from_either_side(trt_plugins):
    h = trt_plugins.SymDim(LeftOnlyExpr("h"), lift=lambda v: LeftOnlyExpr(str(v)))
    expr = (3 * h + 1 - h // 2) * 2 + (10 - h) // 4
    assert _evaluate(expr.value, {"h": 255}) == (3 * 255 + 1 - 255 // 2) * 2 + (10 - 255) // 4
    assert (trt_plugins.SymDim(7) * 3 + 1).value == 22
    with pytest.raises(TypeError, match="lift"):
        2 * trt_plugins.SymDim(LeftOnlyExpr("h"))


def test_output_dims_on_ints_and_symbols(trt_plugins):
    assert trt_plugins.npr_output_dims((2, 255, 257, 3), nhwc=True) == (2, 3, 254, 256)
    assert trt_plugins.npr_output_dims((2, 3, 255, 257), nhwc=False) == (2, 3, 254, 256)
    assert trt_plugins.top_k_pool_output_dims((2, 64, 5, 7), 16) == (2, 1024)
    b, h, w = LeftOnlyExpr("b"), LeftOnlyExpr("h"), LeftOnlyExpr("w")
    dims = trt_plugins.npr_output_dims((b, h, w, 3), nhwc=True)
    assert [_evaluate(d, {"h": 255, "w": 257, "b": 2}) for d in dims] == [2, 3, 254, 256]


def test_launch_config_normalises_a_launch_function(trt_plugins):
    def launch(kernel, batch, height, width):  # written for ints, int on the left
        return ((1 + (width // 2 - 1) // 128, height // 2, batch), (128, 1, 1), 0, (height, width))

    cfg = trt_plugins.launch_config(launch, None, 2, 255, 257)
    assert cfg == {"grid_x": 1, "grid_y": 127, "grid_z": 2, "block_x": 128, "block_y": 1, "block_z": 1,
                   "shared_mem": 0, "extra_args": (255, 257)}
    sym = trt_plugins.launch_config(launch, None, LeftOnlyExpr("b"), LeftOnlyExpr("h"), LeftOnlyExpr("w"),
                                    lift=lambda v: LeftOnlyExpr(str(v)))
    env = {"b": 2, "h": 255, "w": 257}
    assert {k: (tuple(_evaluate(e, env) for e in v) if k == "extra_args" else _evaluate(v, env))
            for k, v in sym.items()} == cfg


def test_aot_launch_functions_work_on_symbolic_shapes(trt_plugins):
    aot = pytest.importorskip("lfm.kernels.aot", reason="the AOT kernels (lfm.kernels.aot) need triton")
    assert trt_plugins.AOT_ARCHS == aot.ARCHS
    kernel_npr = aot.compile_npr(90, input_dtype="uint8", scale=uint8_scale())
    # what the TensorRT plugin compiles now: float32 NCHW input (the graph casts the bytes) with the uint8 scale
    kernel_npr_f32 = aot.compile_npr(90, input_dtype="float32", scale=uint8_scale(), out_dtype="float32",
                                     out_layout="NCHW")
    assert kernel_npr_f32.signature["x_ptr"] == "*fp32" and kernel_npr_f32.name
    kernel_top = aot.compile_top_k_pool(90, k=16)
    lift = lambda v: LeftOnlyExpr(str(v))
    for launch, kernel, names, values in [(aot.npr_launch, kernel_npr, "bhw", (3, 255, 257)),
                                          (aot.npr_launch, kernel_npr_f32, "bhw", (3, 255, 257)),
                                          (aot.top_k_pool_launch, kernel_top, "bchw", (3, 64, 5, 7))]:
        ints = trt_plugins.launch_config(launch, kernel, *values)
        sym = trt_plugins.launch_config(launch, kernel, *(LeftOnlyExpr(n) for n in names), lift=lift)
        env = dict(zip(names, values))
        assert {k: (tuple(_evaluate(e, env) for e in v) if k == "extra_args" else _evaluate(v, env))
                for k, v in sym.items()} == ints


def test_plugin_attributes_from_the_exported_nodes(trt_plugins, random_graphs):
    m = onnx.load(random_graphs["uint8", "plugins"])
    npr_node, top_node = [n for n in m.graph.node if n.domain == ops.DOMAIN]
    attrs = trt_plugins.plugin_attributes(npr_node)
    assert attrs == {"scale": ops.format_scale(uint8_scale())}
    assert trt_plugins.plugin_attributes(top_node) == {"k": 16}
    assert {trt_plugins.NPR_ID, trt_plugins.TOP_K_POOL_ID} == {"lfm::LfmNpr", "lfm::LfmTopKPool"}
    npr_node.attribute[1].s = b"other"
    with pytest.raises(ValueError, match="plugin_namespace"):
        trt_plugins.plugin_attributes(npr_node)


def test_tensorrt_registers_both_plugins(trt_plugins):
    trt = pytest.importorskip("tensorrt", reason="TensorRT is not installed here (it needs an NVIDIA GPU machine)")
    trt_plugins.register_plugins()
    trt_plugins.register_plugins()  # idempotent
    registry = trt.get_plugin_registry()
    for op in ops.OP_TYPES:
        creator = registry.get_creator(op, ops.PLUGIN_VERSION, ops.PLUGIN_NAMESPACE)
        assert creator is not None, op
        fields = {f.name for f in creator.field_names}
        assert fields == ({"scale"} if op == ops.NPR_OP else {"k"})
    assert trt_plugins.network_flags() > 0

