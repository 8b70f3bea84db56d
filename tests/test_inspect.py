"""runtime/inspect_model.py: what it reports about real exported models, a hand-written engine
sidecar and checkpoints, and its one-line errors. The references are what the test itself
exported (spec, metadata, precision) and the files' own bytes (size, SHA-256)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import random_lfm
from lfm.runtime.inspect_model import InspectError, format_text, inspect_file, main
from lfm.runtime.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "runtime" / "inspect_model.py"
SOURCE_SHA = "ab" * 32
# Not the defaults, so the report can only match what was exported.
SPEC = ModelSpec(input="uint8", layout="NHWC", policy="center-crop", size=64, threshold=0.4, top_k=16,
                 mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def run(*args, code=None):
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A random-weight LFM exported as the uint8 fp32 graph, the float fp32 graph, the plugin
    graph, an INT8 QDQ model (8 calibration images) and an fp16 graph whose metadata still says
    fp32; each with the metadata export/to_onnx.py writes."""
    pytest.importorskip("torch", reason="exporting a model needs the [train] extra")
    pytest.importorskip("onnx", reason="exporting needs the [export] extra")
    import onnx
    import onnxslim
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from PIL import Image

    from lfm.export.onnx_export import metadata, simplify, torch_to_onnx
    from lfm.export.onnx_files import check, save_atomic, set_metadata
    from lfm.export.quantize import quantize_int8

    d = tmp_path_factory.mktemp("inspect")
    model = random_lfm()

    def export(input_variant, variant, path):
        spec = SPEC.replace(input=input_variant)
        proto = check(simplify(torch_to_onnx(model, spec, input_variant, variant=variant)))
        set_metadata(proto, metadata(spec, precision="fp32", source="ckpt.pt", source_sha256=SOURCE_SHA, variant=variant))
        save_atomic(proto, path)
        return path

    out = {"fp32": export("uint8", "standard", d / "fp32.onnx"), "float": export("float", "standard", d / "float.onnx"),
           "plugins": export("uint8", "plugins", d / "plugins.onnx")}
    rng = np.random.default_rng(0)
    calib = []
    for i in range(8):
        calib.append(str(d / f"calib{i}.png"))
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(calib[-1])
    out["int8"] = d / "int8.onnx"
    quantize_int8(out["fp32"], out["int8"], calib, SPEC)
    half = onnxslim.slim(convert_float_to_float16(onnx.load(out["fp32"]), keep_io_types=True))
    set_metadata(half, metadata(SPEC, precision="fp32", source="ckpt.pt", source_sha256=SOURCE_SHA))
    out["fp16"] = d / "fp16.onnx"
    onnx.save(half, out["fp16"])
    return out


# ----------------------------------------------------------------------------------------------
# ONNX


@pytest.mark.slow
def test_fp32_model_reports_io_spec_precision_and_provenance(models):
    import torch

    path = models["fp32"]
    r = inspect_file(path)
    assert (r["kind"], r["size_bytes"], r["sha256"]) == ("onnx", path.stat().st_size, sha256(path))
    assert r["onnxruntime_loads"] is True
    assert r["inputs"] == [{"name": "pixels", "dtype": "uint8", "shape": ["batch", "height", "width", 3]}]
    assert r["outputs"] == [{"name": "logit", "dtype": "float32", "shape": ["batch"]},
                            {"name": "score", "dtype": "float32", "shape": ["batch"]}]
    assert r["spec"] == SPEC.to_dict()
    assert (r["precision"], r["precision_from"]) == ("fp32", "graph")
    assert r["graph"]["quantization_ops"] == {} and r["graph"]["opset"] == 17
    assert r["graph"]["custom_domains"] == {} and r["variant"] == "standard" and not r["uses_lfm_custom_ops"]
    assert r["producer"] == "pytorch"
    assert r["provenance"]["source_sha256"] == SOURCE_SHA and r["provenance"]["source"] == "ckpt.pt"
    assert r["provenance"]["torch"] == torch.__version__
    assert r["metadata"]["lfm.threshold"] == "0.4" and "lfm.spec" in r["metadata"]
    assert r["warnings"] == []
    text = format_text(r)
    assert "pixels  uint8  [batch, height, width, 3]" in text
    assert "policy center-crop, size 64, threshold 0.4, top-k K=16" in text


@pytest.mark.slow
def test_float_input_model_reports_float_nchw_input(models):
    r = inspect_file(models["float"])
    assert r["inputs"] == [{"name": "image", "dtype": "float32", "shape": ["batch", 3, "height", "width"]}]
    assert (r["spec"]["input"], r["spec"]["layout"]) == ("float", "NCHW")


@pytest.mark.slow
def test_int8_model_is_int8_from_its_qdq_nodes_with_its_calibration(models):
    r = inspect_file(models["int8"])
    assert r["precision"] == "int8" and r["metadata"]["lfm.precision"] == "int8"
    assert r["graph"]["quantization_ops"]["QuantizeLinear"] > 0
    assert r["graph"]["quantization_ops"]["DequantizeLinear"] > 0
    assert r["graph"]["weights"]["int8"]["tensors"] > 0
    assert r["calibration"]["count"] == 8 and r["calibration"]["profile"] == "cpu"
    assert r["provenance"]["quantizer"].startswith("onnxruntime")
    assert r["spec"] == SPEC.to_dict()


@pytest.mark.slow
def test_the_report_names_the_backend_auto_runs_it_on_here(models):
    """What `--model X` runs on by default on this machine, and why: the backend make_runner's
    auto activates (issue 28, item 1); the plugin graph on ONNX Runtime whatever the CPU."""
    from lfm.runtime.backends import make_runner

    for which in ("fp32", "float", "int8", "plugins"):
        r = inspect_file(models[which])
        with make_runner(models[which]) as runner:
            assert r["default_backend"] == {"backend": runner.chosen, "why": runner.why}, which
        assert f"  runs on (--backend auto, on this machine): {runner.chosen}: {runner.why}\n" in format_text(r) + "\n"
    assert r["default_backend"]["backend"] == "onnxruntime" and "custom ops" in r["default_backend"]["why"]


@pytest.mark.slow
def test_fp16_graph_is_read_from_its_weights_and_a_wrong_label_is_warned(models):
    r = inspect_file(models["fp16"])
    assert r["precision"] == "fp16" and r["precision_from"] == "graph"
    assert r["graph"]["weights"]["float16"]["values"] > 700_000
    assert any("lfm.precision=fp32" in w and "fp16" in w for w in r["warnings"])


@pytest.mark.slow
def test_plugin_graph_names_its_custom_op_domain(models):
    r = inspect_file(models["plugins"])
    assert r["graph"]["custom_domains"] == {"ai.onnx.contrib": ["LfmNpr", "LfmTopKPool"]}
    assert r["variant"] == "plugins" and r["uses_lfm_custom_ops"] is True
    assert r["onnxruntime_loads"] is True and r["spec"] == SPEC.to_dict()
    # Without onnxruntime-extensions ONNX Runtime cannot load it: the graph is read with onnx instead.
    code = ("import sys, json; sys.modules['onnxruntime_extensions'] = None\n"
            "from lfm.runtime.inspect_model import inspect_file\n"
            "print(json.dumps(inspect_file(sys.argv[1])))\n")
    out = run(str(models["plugins"]), code=code)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["onnxruntime_loads"] is False and any("onnxruntime-extensions" in w for w in r["warnings"])
    assert r["inputs"] == [{"name": "pixels", "dtype": "uint8", "shape": ["batch", "height", "width", 3]}]
    assert r["spec"] == SPEC.to_dict() and r["variant"] == "plugins"


@pytest.mark.slow
def test_script_and_module_runs_give_text_and_json(models):
    r = run(str(SCRIPT), str(models["int8"]))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"{models['int8']}: ONNX model") and "precision: int8" in r.stdout
    r = run("-m", "lfm.runtime.inspect_model", str(models["int8"]), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == json.loads(json.dumps(inspect_file(models["int8"])))


@pytest.mark.slow
def test_without_onnx_or_torch_it_reads_the_session_and_says_what_it_could_not(models):
    code = ("import sys; sys.modules['onnx'] = None; sys.modules['torch'] = None\n"
            "from lfm.runtime.inspect_model import main\n"
            "rc = main([sys.argv[1], '--json'])\n"
            "assert not any(m == 'lfm.train' or m.startswith('lfm.train.') for m in sys.modules)\n"
            "sys.exit(rc)\n")
    r = run(str(models["int8"]), code=code)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["graph"] is None and "[export]" in report["graph_not_read"]
    assert (report["precision"], report["precision_from"]) == ("int8", "metadata")
    assert report["inputs"][0]["shape"] == ["batch", "height", "width", 3]
    assert report["spec"] == SPEC.to_dict()
    r = run(str(models["plugins"]), code=code.replace(", '--json'", ""))
    assert r.returncode == 0, r.stderr
    assert "custom-op domains: ai.onnx.contrib" in r.stdout and "graph not read" in r.stdout


def test_model_without_lfm_metadata_is_inspected_with_a_warning(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 4])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    path = tmp_path / "foreign.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    r = inspect_file(path)
    assert r["spec"] is None and r["metadata"] == {}
    assert r["inputs"] == [{"name": "x", "dtype": "float32", "shape": [None, 4]}]
    assert any("no lfm.spec metadata" in w for w in r["warnings"])
    assert "x  float32  [?, 4]" in format_text(r)


# ----------------------------------------------------------------------------------------------
# TensorRT plan: a sidecar written by hand, with the keys export/trt_build.py writes


def write_engine(tmp_path, plan_bytes=b"serialized engine bytes"):
    plan = tmp_path / "lfm.plan"
    plan.write_bytes(plan_bytes)
    profile = {"input": "pixels", "layout": "NHWC", "min": [1, 48, 48, 3], "opt": [16, 64, 64, 3],
               "max": [32, 128, 128, 3]}
    sidecar = {
        "format": "lfm-trt-engine/1", "spec": SPEC.to_dict(),
        "input": {"name": "pixels", "dtype": "uint8", "layout": "NHWC"}, "profiles": [profile],
        "precision": "fp16", "strongly_typed": True, "tensorrt": "10.8.0.43",
        "device": {"name": "NVIDIA H200", "compute_capability": "9.0"},
        "onnx": {"path": "lfm.fp16.onnx", "sha256": "cd" * 32, "precision": "fp16", "variant": "standard",
                 "source_sha256": SOURCE_SHA},
        "plugins": [], "plan_sha256": hashlib.sha256(plan_bytes).hexdigest(),
        "command": ["python", "export/to_trt.py", "lfm.fp16.onnx", "-o", "lfm.plan", "--precision", "fp16"],
        "build": {"seconds": 12.5, "workspace_mib": 2048, "opt_level": 3},
    }
    (tmp_path / "lfm.plan.json").write_text(json.dumps(sidecar))
    return plan


def test_plan_is_reported_from_its_sidecar_never_deserialised(tmp_path, capsys):
    plan = write_engine(tmp_path)
    r = inspect_file(plan)
    assert (r["kind"], r["deserialised"], r["sha256"]) == ("plan", False, sha256(plan))
    assert (r["tensorrt"], r["device"]["name"], r["precision"]) == ("10.8.0.43", "NVIDIA H200", "fp16")
    assert r["profiles"][0]["ranges"] == "batch 1..32, height 48..128, width 48..128"
    assert r["spec"] == SPEC.to_dict()
    assert r["source_model"]["sha256"] == "cd" * 32 and r["source_model"]["source_sha256"] == SOURCE_SHA
    assert r["plan_sha256_matches_sidecar"] is True and r["warnings"] == []
    assert main([str(plan)]) == 0
    text = capsys.readouterr().out
    assert "TensorRT plan" in text and "not deserialised" in text and "TensorRT 10.8.0.43, built on NVIDIA H200" in text
    other = tmp_path / "engine.v1"  # another name: found as a plan by its sidecar
    other.write_bytes(plan.read_bytes())
    (tmp_path / "engine.v1.json").write_text((tmp_path / "lfm.plan.json").read_text())
    assert inspect_file(other)["kind"] == "plan"


def engine_header(major=10, minor=14, patch=1, magic=b"ptrt") -> bytes:
    """The first bytes a serialized engine is observed to start with (runtime/backends/trt_plan.py)."""
    head = bytearray(magic + bytes(28))
    head[24:27] = bytes([major, minor, patch])
    return bytes(head)


def test_modified_plan_or_missing_sidecar_is_warned(tmp_path):
    plan = write_engine(tmp_path)
    plan.write_bytes(engine_header() + b"another engine")  # an engine, not the one its sidecar records
    r = inspect_file(plan)
    assert r["plan_sha256_matches_sidecar"] is False and r["recognised_by"] == "header"
    assert any("SHA-256 differs" in w for w in r["warnings"])
    (tmp_path / "lfm.plan.json").unlink()
    r = inspect_file(plan)
    assert r["sidecar_read"] is False and any("sidecar lfm.plan.json is missing" in w for w in r["warnings"])


def test_a_plan_is_recognised_by_its_sidecar_or_its_header_else_refused(tmp_path, capsys):
    """100 kB of random bytes named lfm.plan was reported as a TensorRT plan, exit 0 (issue 24,
    item 10). An engine is what its sidecar's SHA-256 vouches for, or what starts as serialized
    engines are observed to; anything else is the one-line error, exit 2."""
    noise = np.random.default_rng(0).integers(0, 256, 100_000, dtype=np.uint8).tobytes()
    refused = {"random bytes": (tmp_path / "random" / "lfm.plan", noise, "no sidecar lfm.plan.json"),
               "empty": (tmp_path / "empty" / "lfm.plan", b"", "empty file (0 bytes)"),
               "short header": (tmp_path / "short" / "lfm.plan", b"ptrt" + bytes(8), "not a TensorRT engine")}
    for what, (path, data, says) in refused.items():
        path.parent.mkdir()
        path.write_bytes(data)
        assert main([str(path)]) == 2, what
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith(f"error: {path}: ") and says in err, (what, err)
    random_with_sidecar = write_engine(tmp_path / "random", plan_bytes=b"the engine it was")
    random_with_sidecar.write_bytes(noise)  # a sidecar beside it vouches for other bytes
    assert main([str(random_with_sidecar)]) == 2
    assert "does not match its sidecar lfm.plan.json (SHA-256 differs); rebuild it: python export/to_trt.py" in \
        capsys.readouterr().err
    # a plausible header and no sidecar: reported as an engine, the sidecar's absence warned
    headed = tmp_path / "headed" / "model.bin"  # found by its content, whatever its name
    headed.parent.mkdir()
    headed.write_bytes(engine_header(10, 14, 1) + noise)
    r = inspect_file(headed)
    assert (r["kind"], r["recognised_by"], r["header"]) == ("plan", "header", {"magic": "ptrt", "tensorrt": "10.14.1"})
    assert r["sidecar_read"] is False and any("is missing" in w for w in r["warnings"])
    assert "its header only (magic 'ptrt'; bytes 24-26 say TensorRT 10.14.1" in format_text(r)
    # random bytes whose sidecar records them: the engine export/to_trt.py wrote, header or not
    (tmp_path / "vouched").mkdir()
    vouched = write_engine(tmp_path / "vouched", plan_bytes=noise)
    r = inspect_file(vouched)
    assert (r["recognised_by"], r["plan_sha256_matches_sidecar"], r["warnings"]) == ("sidecar", True, [])
    assert "by: its SHA-256, the one its sidecar records" in format_text(r)
    cli = run("-m", "lfm.runtime.cli", "inspect", str(refused["random bytes"][0]))
    assert cli.returncode == 2 and cli.stdout == "" and cli.stderr.count("\n") == 1, cli.stderr


# ----------------------------------------------------------------------------------------------
# Checkpoints


def test_our_checkpoint_reports_architecture_spec_and_training_state(tmp_path):
    pytest.importorskip("torch", reason="checkpoints need the [train] extra")
    from lfm.train.checkpoint import make_checkpoint, save_atomic

    spec = ModelSpec(size=64, threshold=0.4)
    path = tmp_path / "best.pt"
    save_atomic(make_checkpoint(random_lfm(), spec, epoch=3, step=42, best={"epoch": 2, "score": [0.9, 0.95]},
                                val={"mean": {"acc": 0.9, "ap": 0.95}}, train_args={"lr": 1e-4}), path)
    r = inspect_file(path)
    assert (r["kind"], r["source"], r["ours"], r["format"]) == ("checkpoint", "lfm-deploy", True, "lfm-deploy/1")
    assert r["architecture"]["top_k"] == 16 and r["architecture"]["pooling"] == "topk"
    assert r["spec_stored"] is True and r["spec"] == spec.to_dict()
    assert r["training"] == {"epoch": 3, "step": 42, "best": {"epoch": 2, "score": [0.9, 0.95]}}
    assert r["metrics"] == {"acc": 0.9, "ap": 0.95} and r["train_args"] == {"lr": 1e-4}
    assert r["parameters"] > 700_000


def test_upstream_checkpoint_is_named_upstream_with_no_stored_spec(upstream_ckpt):
    pytest.importorskip("torch", reason="checkpoints need the [train] extra")
    r = inspect_file(upstream_ckpt)
    assert (r["source"], r["ours"], r["spec_stored"]) == ("upstream", False, False)
    assert r["spec"] == ModelSpec().to_dict() and r["training"] == {}
    assert "upstream's" in format_text(r)


def test_checkpoint_without_torch_names_the_train_extra(tmp_path):
    path = tmp_path / "renamed.onnx"  # told apart by its content, whatever its name
    with zipfile.ZipFile(path, "w") as z:  # torch.save's layout, made without torch
        z.writestr("ckpt/data.pkl", b"\x80\x02}q\x00.")
    code = ("import sys; sys.modules['torch'] = None\n"
            "from lfm.runtime.inspect_model import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    r = run(str(path), code=code)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and r.stderr.startswith(f"error: {path}: ")
    assert "pip install -e '.[train]'" in r.stderr


# ----------------------------------------------------------------------------------------------
# Bad input: one line, exit 2


def bad_files(tmp_path, real_onnx=None) -> dict:
    files = {"missing": tmp_path / "nothing.onnx", "directory": tmp_path,
             "empty": tmp_path / "empty.onnx", "text": tmp_path / "notes.onnx", "no extension": tmp_path / "README",
             "not a checkpoint": tmp_path / "weights.pt"}
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not a model\n")
    files["no extension"].write_text("# hello\n")
    files["not a checkpoint"].write_bytes(b"\x00\x01garbage" * 10)
    if real_onnx is not None:
        files["truncated"] = tmp_path / "truncated.onnx"
        files["truncated"].write_bytes(real_onnx.read_bytes()[:20_000])
    return files


def test_bad_inputs_give_one_line_and_exit_2(tmp_path, capsys):
    for what, path in bad_files(tmp_path).items():
        with pytest.raises(InspectError):
            inspect_file(path)
        assert main([str(path)]) == 2, what
        out, err = capsys.readouterr()
        assert out == "" and err.count("\n") == 1 and err.startswith(f"error: {path}: "), (what, err)


@pytest.mark.slow
def test_truncated_onnx_through_the_script_is_one_line(models, tmp_path):
    path = bad_files(tmp_path, models["fp32"])["truncated"]
    r = run(str(SCRIPT), str(path), "--json")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == f"error: {path}: not a loadable ONNX model, or truncated/corrupt (Protobuf parsing failed.)\n"
