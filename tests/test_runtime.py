"""The lean runtime: decoding, input expansion, records, the Detector and the infer CLI."""
from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lfm.runtime.inputs import expand_paths, image_files
from lfm.runtime.preprocess import ImageError, apply_policy, load_array, normalize, open_image
from lfm.runtime.records import Record, RecordWriter
from lfm.runtime.spec import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

ROOT = Path(__file__).resolve().parents[1]
INFER = [sys.executable, str(ROOT / "runtime" / "infer.py")]


def noise_png(path, w=64, h=64, seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


# ---------------------------------------------------------------------------------------------
# The lean import graph


def test_runtime_imports_no_torch_and_no_training_code():
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any 'import torch' now raises ImportError
        "import lfm.runtime.detector, lfm.runtime.infer, lfm.runtime.backends, lfm.runtime.inputs\n"
        "import lfm.runtime.backends.onnxrt, lfm.runtime.backends.openvino_rt, lfm.runtime.backends.pyt\n"
        "import lfm.runtime.backends.trt_engine, lfm.runtime.serve, lfm.runtime.inspect_model\n"
        "assert not any(m == 'lfm.train' or m.startswith('lfm.train.') for m in sys.modules), sorted(sys.modules)\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


# ---------------------------------------------------------------------------------------------
# Decoding


def test_open_image_errors_name_the_file(tmp_path):
    cases = {
        tmp_path / "missing.png": "no such file",
        tmp_path: "is a directory",
    }
    (tmp_path / "empty.png").write_bytes(b"")
    cases[tmp_path / "empty.png"] = "empty file"
    (tmp_path / "text.png").write_text("not an image at all")
    cases[tmp_path / "text.png"] = "not an image"
    good = noise_png(tmp_path / "good.png", 128, 128)
    (tmp_path / "cut.png").write_bytes(good.read_bytes()[:2000])
    cases[tmp_path / "cut.png"] = "truncated or corrupt"
    for path, problem in cases.items():
        with pytest.raises(ImageError) as e:
            open_image(path)
        assert str(path) in str(e.value) and problem in str(e.value), str(e.value)
    with pytest.raises(ImageError, match="exceeds the limit of 1000"):
        open_image(good, max_pixels=1000)


def test_exif_orientation_is_applied(tmp_path):
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = 255  # left half white
    img = Image.fromarray(a)
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    img.save(tmp_path / "rot.png", exif=exif)
    got = np.asarray(open_image(tmp_path / "rot.png"))
    assert got.shape == (40, 20, 3)
    np.testing.assert_array_equal(got, np.rot90(a, k=-1))  # independent: numpy's rotation


@pytest.mark.parametrize("mode", ["L", "LA", "RGBA", "P", "CMYK", "I;16", "1"])
def test_any_mode_becomes_rgb(tmp_path, mode):
    base = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    img = base.convert(mode) if mode not in ("I;16",) else Image.fromarray(np.full((32, 32), 65535, np.uint16))
    buf = io.BytesIO()
    img.save(buf, format="TIFF" if mode in ("CMYK", "I;16") else "PNG")
    rgb = open_image(buf.getvalue())
    assert rgb.mode == "RGB" and rgb.size == (32, 32)
    if mode == "I;16":
        assert np.asarray(rgb).min() == 255  # full-scale 16-bit is white, not clipped garbage


def test_normalize_matches_float64_formula():
    x = np.random.default_rng(0).integers(0, 256, (2, 5, 6, 3), dtype=np.uint8)
    ref = (x.astype(np.float64) / 255 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(normalize(x), ref.transpose(0, 3, 1, 2), rtol=1e-6, atol=1e-6)


def test_policies(tmp_path):
    img = Image.fromarray(np.arange(300 * 200 * 3, dtype=np.uint32).reshape(200, 300, 3).astype(np.uint8))
    assert apply_policy(img, "resize", 256).size == (256, 256)
    crop = np.asarray(apply_policy(img, "center-crop", 100))
    np.testing.assert_array_equal(crop, np.asarray(img)[50:150, 100:200])
    assert apply_policy(img, "none", 256).size == (300, 200)
    with pytest.raises(ImageError, match="smaller than the 256x256 centre crop"):
        load_array(noise_png(tmp_path / "s.png", 100, 300), ModelSpec(policy="center-crop", size=256))


# ---------------------------------------------------------------------------------------------
# Inputs and records


def test_expand_paths_keeps_every_argument(tmp_path):
    d = tmp_path / "dir"
    (d / "sub").mkdir(parents=True)
    noise_png(d / "b.png")
    noise_png(d / "sub" / "a.jpg.png")
    (d / "notes.txt").write_text("x")
    (tmp_path / "emptydir").mkdir()
    direct = noise_png(tmp_path / "direct.png")
    exp = expand_paths([str(d), str(direct), str(d / "b.png"), str(tmp_path / "missing.png"),
                        str(tmp_path / "*.nothing"), str(tmp_path / "emptydir"), str(tmp_path / "dir" / "**" / "*.png")])
    # One record per mention (issue 14, item 10): b.png is in the folder, named, and matched by the glob.
    assert exp.inputs == [str(d / "b.png"), str(d / "sub" / "a.jpg.png"), str(direct), str(d / "b.png"),
                          str(tmp_path / "missing.png"), str(tmp_path / "*.nothing"), str(tmp_path / "emptydir"),
                          str(d / "b.png"), str(d / "sub" / "a.jpg.png")]
    assert exp.errors == {str(tmp_path / "*.nothing"): "no file matches this pattern",
                          str(tmp_path / "emptydir"): "directory holds no image files"}
    assert any("left out 1 file" in n for n in exp.notes)


def test_image_files_lists_a_folder_by_the_listing_rules_and_other_files_in_their_place(tmp_path):
    """The one folder walker (issue 25, item 3): calibration, stress sets and training data all list
    folders with image_files; training also wants the files without an image extension, to name
    each one it skips."""
    for rel in ("b.png", "a.JPG", "notes.txt", ".hidden.png", "sub/c.png", "sub/z.txt", "sub/.cache/d.png",
                "shared/e.webp"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"x")
    (tmp_path / "sub" / "link").symlink_to(tmp_path / "shared")  # shared/ is read once, first by its own name
    (tmp_path / "sub" / "loop").symlink_to(tmp_path)
    names = lambda paths: [Path(p).relative_to(tmp_path).as_posix() for p in paths]  # noqa: E731
    assert names(image_files(str(tmp_path))) == ["a.JPG", "b.png", "shared/e.webp", "sub/c.png"]
    assert names(image_files(str(tmp_path), other_files=True)) == ["a.JPG", "b.png", "notes.txt", "shared/e.webp",
                                                                     "sub/c.png", "sub/z.txt"]
    assert image_files(str(tmp_path / "missing")) == [] == image_files(str(tmp_path / "b.png"))


def test_one_decision_rule_score_strictly_above_the_threshold_everywhere():
    """spec.py said a score "at or above" the threshold is fake while every decision was
    score > threshold (issue 24, item 14): one rule, stated once (spec.is_fake), used by every
    decision, and no text in the tree says otherwise."""
    import re

    from lfm.runtime.spec import is_fake, logit_boundary
    from lfm.train.metrics import binary_metrics

    assert Record.from_logit("a", 0.0, 0.5).label == "real"  # score exactly 0.5: not above
    assert Record.from_logit("a", 1e-9, 0.5).label == "fake"
    assert not is_fake(0.5, 0.5) and is_fake(0.5000001, 0.5)
    logits = np.array([-30.0, -1.0, 0.0, 1e-9, 2.0, 30.0])
    scores = 1 / (1 + np.exp(-logits))
    for t in (0.0, 0.2, 0.5, 0.9, 1.0):
        np.testing.assert_array_equal(logits > logit_boundary(t), is_fake(scores, t), err_msg=str(t))
    assert binary_metrics([0, 1], [0.5, 0.7], 0.5)["acc"] == 1.0  # the 0.5 is predicted real
    said = re.compile(r"at or above (which|the threshold)|>= *(self\.)?(spec\.)?threshold|threshold *<= *score",
                      re.IGNORECASE)
    here = Path(__file__).resolve()
    texts = [ROOT / "README.md", ROOT / "demo.sh"] + [
        p for folder in ("runtime", "export", "train", "kernels", "benchmarks", "docs", "tests", ".ci")
        for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md", ".sh", ".txt") and p != here]
    found = [f"{p.relative_to(ROOT)}:{n}" for p in texts
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if said.search(line)]
    assert not found, found


def test_record_writers_round_trip():
    records = [Record.from_logit("a.png", 2.0, 0.5), Record.failed("b, \"odd\".png", "no such file"),
               Record.from_logit("c.png", -1000.0, 0.5)]
    assert records[2].score == 0.0 and records[2].label == "real"  # no overflow
    assert records[0].score == pytest.approx(1 / (1 + np.exp(-2.0))) and records[0].label == "fake"
    out = {}
    for fmt in ("jsonl", "csv", "table"):
        buf = io.StringIO()
        w = RecordWriter(buf, fmt)
        for r in records:
            w.write(r)
        out[fmt] = buf.getvalue()
    assert [json.loads(line) for line in out["jsonl"].splitlines()] == [r.to_dict() for r in records]
    rows = list(csv.DictReader(io.StringIO(out["csv"])))
    assert [r["path"] for r in rows] == [r.path for r in records] and rows[1]["error"] == "no such file"
    assert "ERROR" in out["table"].splitlines()[2] and len(out["table"].splitlines()) == 4


# ---------------------------------------------------------------------------------------------
# Detector and CLI


@pytest.fixture(scope="module")
def random_ckpt(tmp_path_factory):
    """A randomly initialised checkpoint: the runtime's plumbing needs no reference data."""
    torch = pytest.importorskip("torch", reason="the --checkpoint backend needs torch")
    from lfm.train.checkpoint import make_checkpoint, save_atomic
    from lfm.train.model import build_model

    torch.manual_seed(0)
    model = build_model().eval()
    for m in model.modules():  # non-trivial BN statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("ckpt") / "random.pt"
    save_atomic(make_checkpoint(model, ModelSpec(size=64)), path)
    return path, model


def test_detector_matches_direct_model_and_keeps_order(random_ckpt, tmp_path):
    import torch
    from lfm.runtime.backends import make_runner
    from lfm.runtime.detector import Detector

    path, model = random_ckpt
    files = [noise_png(tmp_path / f"{i}.png", 80 + 8 * i, 64, seed=i) for i in range(5)]
    items = [str(files[0]), str(tmp_path / "missing.png"), str(files[1]), files[2].read_bytes(),
             np.asarray(Image.open(files[3])), str(files[4])]
    spec = ModelSpec(size=64)
    expected = []
    for f in files:
        x = normalize(load_array(f, spec)[None])
        with torch.no_grad():
            expected.append(float(model(torch.from_numpy(x))[0]))
    for batch_size in (1, 2, 16):
        with Detector(make_runner(path, device="cpu"), batch_size=batch_size) as det:
            recs = det.predict(items)
        assert len(recs) == len(items)
        assert recs[1].error == "no such file" and recs[1].logit is None
        got = [r.logit for i, r in enumerate(recs) if i != 1]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
        assert recs[3].path.startswith("<") and recs[4].path == "<array 64x104x3>"


def test_detector_isolates_an_image_the_model_refuses(random_ckpt, tmp_path):
    from lfm.runtime.backends import make_runner
    from lfm.runtime.detector import Detector

    path, _ = random_ckpt
    big, small = noise_png(tmp_path / "big.png", 64, 64), noise_png(tmp_path / "small.png", 40, 40)
    with Detector(make_runner(path, device="cpu"), policy="none") as det:
        recs = det.predict([str(big), str(small), str(big)])
    assert recs[0].ok and recs[2].ok and recs[0].logit == pytest.approx(recs[2].logit, rel=1e-5)
    assert "too small" in recs[1].error and "48x48" in recs[1].error


def test_infer_cli(random_ckpt, tmp_path):
    path, _ = random_ckpt
    good = [noise_png(tmp_path / f"g{i}.png", seed=i) for i in range(3)]
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8garbage")
    args = ["--checkpoint", str(path), str(tmp_path / "*.png"), str(tmp_path / "bad.jpg"), str(tmp_path / "nope.png")]
    run = subprocess.run(INFER + args, capture_output=True, text=True)
    assert run.returncode == 1, run.stderr
    recs = [json.loads(line) for line in run.stdout.splitlines()]
    assert [Path(r["path"]).name for r in recs] == ["g0.png", "g1.png", "g2.png", "bad.jpg", "nope.png"]
    assert all(r["error"] is None for r in recs[:3]) and "not an image" in recs[3]["error"]
    assert "scored 3 of 5 inputs" in run.stderr

    out = tmp_path / "out.csv"
    run = subprocess.run(INFER + ["--checkpoint", str(path), *map(str, good), "--format", "csv", "-o", str(out),
                                  "--threshold", "0"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    rows = list(csv.DictReader(open(out)))
    assert [r["label"] for r in rows] == ["fake"] * 3  # threshold 0: every positive score is fake


def test_infer_cli_bad_checkpoint_is_one_line(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    img = noise_png(tmp_path / "img.png")
    run = subprocess.run(INFER + ["--checkpoint", str(bad), str(img)], capture_output=True, text=True)
    assert run.returncode == 2
    assert run.stderr.startswith("error: ") and len(run.stderr.strip().splitlines()) == 1, run.stderr
    assert str(bad) in run.stderr and "not a PyTorch checkpoint" in run.stderr


def test_infer_reproduces_upstream_logits(upstream_ckpt, reference_images):
    paths = [str(p) for p, _, _ in reference_images]
    run = subprocess.run(INFER + ["--checkpoint", str(upstream_ckpt), *paths, "--batch-size", "8"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    recs = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["path"] for r in recs] == paths
    np.testing.assert_allclose([r["logit"] for r in recs], [v for _, v, _ in reference_images], rtol=1e-5, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Which runner (make_runner) apart from how the pipeline runs (Detector)


def test_make_runner_picks_the_backend_by_extension_or_by_name(tmp_path):
    from lfm.runtime.backends import BackendError, make_runner
    from lfm.runtime.backends.auto import AutoRunner
    from lfm.runtime.backends.onnxrt import OnnxRunner
    from lfm.runtime.backends.openvino_rt import OpenVinoRunner
    from lfm.runtime.backends.pyt import TorchRunner
    from lfm.runtime.backends.trt_engine import TrtRunner

    kinds = {"m.onnx": AutoRunner, "m.plan": TrtRunner, "m.ENGINE": TrtRunner, "c.pt": TorchRunner, "c.pth": TorchRunner}
    for name, cls in kinds.items():
        assert type(make_runner(tmp_path / name)) is cls  # not activated: nothing is read yet
    assert type(make_runner(tmp_path / "m.onnx", backend="openvino")) is OpenVinoRunner
    assert type(make_runner(tmp_path / "m.onnx", backend="onnxruntime")) is OnnxRunner
    assert type(make_runner(tmp_path / "weights", backend="torch")) is TorchRunner  # a name decides over no extension
    with pytest.raises(ValueError, match=r"m\.gz: cannot tell the model kind .*\.onnx: auto, onnxruntime, openvino") as e:
        make_runner(tmp_path / "m.gz")
    assert isinstance(e.value, BackendError) and "\n" not in str(e.value)
    with pytest.raises(BackendError, match=r"unknown backend 'tflite'; expected one of \('auto', 'onnxruntime', "):
        make_runner(tmp_path / "m.onnx", backend="tflite")


@pytest.mark.parametrize("source, options, says", [
    ("m.onnx", {"device": "cuda"}, "device 'cuda' (--device) applies to a PyTorch checkpoint only; an ONNX model picks"),
    ("m.onnx", {"cuda_graphs": True}, "cuda_graphs (--cuda-graphs) applies to a TensorRT engine or a PyTorch checkpoint"),
    ("m.onnx", {"kernels": True}, "kernels (--kernels) applies to a PyTorch checkpoint only; it runs a PyTorch "
                                  "checkpoint through the Triton kernels: give --checkpoint"),
    ("m.onnx", {"backend": "onnxruntime", "precision": "bf16"},
     "precision 'bf16' (--openvino-precision) applies to an ONNX model (auto: the fastest faithful path) or --backend "
     "openvino only"),
    ("m.plan", {"providers": ["cpu"]}, "providers ['cpu'] (--providers) applies to an ONNX model (auto: the fastest "
                                       "faithful path) or an ONNX model on ONNX Runtime only"),
    ("c.pt", {"precision": "f32"}, "or --backend openvino only"),
    # under auto each forces its backend, so both together are refused
    ("m.onnx", {"providers": "cpu", "precision": "f32"}, "providers ['cpu'] (--providers) run ONNX Runtime and precision "
                                                          "'f32' (--openvino-precision) OpenVINO: give one, or name the "
                                                          "backend"),
])
def test_make_runner_refuses_an_option_its_backend_would_ignore(tmp_path, source, options, says):
    from lfm.runtime.backends import BackendError, make_runner

    with pytest.raises(BackendError) as e:
        make_runner(tmp_path / source, **options)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_make_runner_refuses_providers_for_openvino_and_lets_threads_pass(tmp_path):
    """OpenVINO used to ignore providers silently; threads is a hint the GPU backends ignore
    (benchmarks pass one value to every backend)."""
    from lfm.runtime.backends import BackendError, make_runner

    with pytest.raises(BackendError, match=r"providers \['cpu'\] \(--providers\) applies to an ONNX model \(auto: the "
                                           r"fastest faithful path\) or an ONNX model on ONNX"):
        make_runner(tmp_path / "m.onnx", backend="openvino", providers=["cpu"])
    assert make_runner(tmp_path / "m.onnx", backend="openvino", threads=2).threads == 2
    make_runner(tmp_path / "m.plan", threads=2)
    make_runner(tmp_path / "c.pt", threads=2)
    with pytest.raises(BackendError, match="unknown precision 'fp8'"):
        make_runner(tmp_path / "m.onnx", backend="openvino", precision="fp8")


def test_providers_as_a_string_are_the_clis_comma_separated_form(tmp_path, random_onnx):
    """A string was split into its letters ("cpu" -> ['c', 'p', 'u']); it is the CLI's form, one
    provider or several separated by commas, parsed by the one function both use (issue 24, item 8)."""
    from lfm.runtime.backends import BackendError, make_runner
    from lfm.runtime.backends.base import provider_list
    from lfm.runtime.detector import Detector

    assert provider_list("cpu") == ["cpu"] and provider_list(" cuda, cpu") == ["cuda", "cpu"]
    assert provider_list(["cuda", "cpu"]) == ["cuda", "cpu"] and provider_list(None) is None
    for bad in ("", "cuda,,cpu", [], [3]):
        with pytest.raises(BackendError, match="--providers"):
            provider_list(bad)
    assert make_runner(tmp_path / "m.onnx", providers="cpu").requested_providers == ["cpu"]
    with pytest.raises(BackendError, match=r"providers \['cuda', 'cpu'\] \(--providers\) applies to an ONNX model"):
        make_runner(tmp_path / "m.plan", providers="cuda,cpu")
    with make_runner(random_onnx, providers="cpu") as runner:  # auto: providers run ONNX Runtime
        assert runner.chosen == "onnxruntime" and runner.runner.providers == ["CPUExecutionProvider"]
    img = noise_png(tmp_path / "img.png")
    run = subprocess.run(INFER + ["--model", str(random_onnx), "--providers", "cpu", str(img)], capture_output=True,
                         text=True)
    assert run.returncode == 0 and json.loads(run.stdout)["error"] is None, run.stderr
    run = subprocess.run(INFER + ["--model", str(random_onnx), "--providers", "nosuch", str(img)],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "provider(s) ['nosuch'] not available" in run.stderr, run.stderr


def test_a_closed_detector_says_so_in_every_public_method(random_onnx, tmp_path):
    """After close() the decoding threads are gone: every use used to fail with concurrent.futures'
    "cannot schedule new futures after shutdown" (issue 24, item 9)."""
    from lfm.runtime.detector import Detector, DetectorClosed

    img = noise_png(tmp_path / "img.png")
    det = Detector(random_onnx)
    det.close()
    det.close()  # a second close is harmless
    uses = {"predict": lambda: det.predict([str(img)]), "predict (empty)": lambda: det.predict([]),
            "predict_one": lambda: det.predict_one(str(img)), "predict_iter": lambda: det.predict_iter([str(img)]),
            "with": lambda: det.__enter__()}
    for what, use in uses.items():
        with pytest.raises(DetectorClosed, match="^this Detector is closed") as e:
            use()
        assert isinstance(e.value, RuntimeError), what
    with Detector(random_onnx) as det:  # closed while an iterator is still being read
        records = det.predict_iter([str(img)] * 200)
        assert next(records).ok
        det.close()
        with pytest.raises(DetectorClosed, match="this Detector is closed"):
            list(records)


def test_source_from_flags_is_the_clis_model_choice():
    from lfm.runtime.backends import BackendError, source_from_flags

    assert source_from_flags(model="m.bin") == ("m.bin", "auto")  # the flag, not the extension, decides
    assert source_from_flags(model="m.onnx", backend="openvino") == ("m.onnx", "openvino")
    assert source_from_flags(engine="e.plan") == ("e.plan", "tensorrt")
    assert source_from_flags(checkpoint="c.pt") == ("c.pt", "torch")
    with pytest.raises(BackendError, match="give exactly one model"):
        source_from_flags(model="m.onnx", engine="e.plan")
    with pytest.raises(BackendError, match=r"backend 'openvino' \(--backend\) runs --model files, not --engine"):
        source_from_flags(engine="e.plan", backend="openvino")


def test_detector_takes_a_path_or_a_runner_without_warnings(random_onnx):
    import warnings

    from lfm.runtime.backends import make_runner
    from lfm.runtime.detector import Detector

    a = np.random.default_rng(4).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with Detector(random_onnx) as det, Detector(make_runner(random_onnx, threads=1), batch_size=2,
                                                     workers=1) as custom:  # the same backend (auto's choice)
            assert det.predict([a])[0].logit == pytest.approx(custom.predict([a])[0].logit, abs=1e-5)
            assert custom.runner.runner.threads == 1 and custom.batch_size == 2
        runner = make_runner(random_onnx)
        with Detector(runner, policy="none"):
            assert runner.is_active
        assert not runner.is_active  # close() deactivates the runner it was given
    with pytest.raises(TypeError, match="needs a model"):
        Detector()
    with pytest.raises(TypeError, match="a model path or a runner, got a int"):
        Detector(42)
    with pytest.raises(TypeError, match="unexpected keyword argument 'treshold'"):
        Detector(random_onnx, treshold=0.5)


def test_the_removed_detector_keywords_are_refused_naming_the_new_form(random_onnx):
    """The keywords that built the runner inside the Detector (and runtime/runners.py,
    runtime/trt_runner.py, the old module names) were removed in 0.x: each old form is one
    TypeError line naming its replacement, never a runner built behind a warning."""
    import importlib.util

    from lfm.runtime.backends import make_runner
    from lfm.runtime.detector import Detector

    runner = make_runner(random_onnx)
    make_runner_form = "(from lfm.runtime.backends import make_runner)"
    cases = [
        (dict(model=str(random_onnx), providers=["cpu"], threads=1), "Detector(model=..., providers=..., threads=...) "
         f"was removed: use Detector(make_runner(path, providers=..., threads=...)) {make_runner_form}"),
        (dict(model=str(random_onnx)), "Detector(model=...) was removed: use Detector(path)"),
        (dict(checkpoint="c.pt"), "Detector(checkpoint=...) was removed: use Detector(path)"),
        (dict(engine="e.plan", cuda_graphs=True), "Detector(engine=..., cuda_graphs=...) was removed: "
         f"use Detector(make_runner(path, cuda_graphs=...)) {make_runner_form}"),
        (dict(runner=runner), "Detector(runner=...) was removed: use Detector(runner)"),
        (dict(source=random_onnx, backend="openvino", device="auto"), "Detector(backend=..., device=...) was removed: "
         f"use Detector(make_runner(path, backend=..., device=...)) {make_runner_form}"),
        (dict(source=random_onnx, threads=1), "Detector(threads=...) was removed: "
         f"use Detector(make_runner(path, threads=...)) {make_runner_form}"),
    ]
    for keywords, message in cases:
        with pytest.raises(TypeError) as refused:
            Detector(**keywords, batch_size=1)
        assert str(refused.value) == message
    assert not runner.is_active  # refused before anything starts
    for module in ("lfm.runtime.runners", "lfm.runtime.trt_runner"):
        assert importlib.util.find_spec(module) is None, module


def test_infer_refuses_a_backend_for_an_engine_in_one_line(tmp_path):
    img = noise_png(tmp_path / "img.png")
    run = subprocess.run(INFER + ["--engine", str(tmp_path / "x.plan"), "--backend", "openvino", str(img)],
                         capture_output=True, text=True)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr == ("infer.py: error: backend 'openvino' (--backend) runs --model files, not --engine; --engine "
                          "runs on tensorrt (see infer.py --help)\n")


def test_serve_builds_the_runner_apart_from_the_pipeline():
    from lfm.runtime import serve
    from lfm.runtime.backends import BackendError, make_runner

    args = serve.parse_args(["--model", "m.onnx", "--instances", "2", "--threads", "3", "--max-batch-size", "64"])
    assert serve.runner_kwargs(args, 2) == dict(source="m.onnx", backend="auto", device="auto", precision="auto",
                                                threads=3, providers=None, kernels=False, cuda_graphs=False)
    assert serve.pipeline_options(args, 2).batch_size == 64
    # an option the backend would ignore is refused, as by infer.py (serve.py dropped it silently before):
    # while parsing, by the options layer, and by make_runner for a caller in code
    with pytest.raises(SystemExit):
        serve.parse_args(["--engine", "e.plan", "--device", "cuda"])
    with pytest.raises(BackendError, match="device 'cuda' .--device. applies to a PyTorch checkpoint only"):
        make_runner("e.plan", backend="tensorrt", device="cuda")
