"""runtime/app.py, the review page, without a browser: its records, downloads and stability rows
equal what runtime/infer.py writes for the same files (real subprocess runs), uploads leave
nothing on disk, one Detector serves concurrent visitors one at a time, the evidence is the
model's own, and the command starts, refuses and stops as every command does. The page in a
real browser: tests/test_app_browser.py."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lfm.runtime.app import (PASTED, PASTED_NOTE, STABILITY, Review, records_text, take_upload, threshold_words,
                             verdict_card, verdict_words)
from lfm.runtime.backends import make_runner
from lfm.runtime.detector import Detector
from lfm.runtime.records import Record
from lfm.runtime.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
INFER = ROOT / "runtime" / "infer.py"
APP = ROOT / "runtime" / "app.py"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Images of several kinds, a file too small to score and a file that is no image."""
    d = tmp_path_factory.mktemp("page_images")
    rng = np.random.default_rng(7)
    Image.fromarray(rng.integers(0, 256, (96, 80, 3), dtype=np.uint8)).save(d / "noise.png")
    y, x = np.mgrid[0:100, 0:120]
    smooth = np.stack([x * 2, y * 2, (x + y)], -1).astype(np.uint8)
    Image.fromarray(smooth).save(d / "gradient q60.jpg", quality=60)
    Image.fromarray(rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)).save(d / "wide.png")
    Image.fromarray(rng.integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(d / "tiny.png")
    (d / "notes.txt").write_text("not an image")
    return d


NAMES = ["noise.png", "gradient q60.jpg", "notes.txt", "wide.png", "tiny.png", "noise.png"]


def infer(model: Path, cwd: Path, names: list[str], fmt: str = "jsonl", *extra: str) -> str:
    r = subprocess.run([sys.executable, str(INFER), "--model", str(model), *names, "--format", fmt, *extra],
                       capture_output=True, text=True, cwd=cwd, timeout=300)
    assert r.returncode in (0, 1), r.stderr
    return r.stdout


def uploads(folder: Path, root: Path, names: list[str]) -> list[str]:
    """Copies laid out as Gradio stores uploads: ROOT/<a folder per file>/<the file's name>."""
    paths = []
    for i, name in enumerate(names):
        (root / f"{i:064x}").mkdir(parents=True)
        paths.append(str(shutil.copy(folder / name, root / f"{i:064x}" / name)))
    return paths


def test_the_pages_records_and_downloads_are_infers(random_onnx, folder, tmp_path):
    root = tmp_path / "gradio"
    with Detector(random_onnx) as det:
        scored = Review(det, upload_root=str(root)).score_files(uploads(folder, root, NAMES))
    records = [s.record for s in scored]
    expected = [json.loads(line) for line in infer(random_onnx, folder, NAMES).splitlines()]
    assert [r.to_dict() for r in records] == expected
    assert [r["error"] is None for r in expected] == [True, True, False, True, False, True]
    assert "not an image" in records[2].error and "too small" in records[4].error
    assert records_text(records, "csv") == infer(random_onnx, folder, NAMES, "csv")
    assert records_text(records, "jsonl") == infer(random_onnx, folder, NAMES, "jsonl")
    # read into memory, then gone: the files and Gradio's folder of each; the upload folder stays
    assert root.is_dir() and not any(root.iterdir())
    assert [s.data for s in scored] == [(folder / n).read_bytes() if r.ok else None for n, r in zip(NAMES, records)]


def test_the_pages_decoding_limits_are_infers(random_onnx, folder, tmp_path):
    """The same pixel limit, the same refusal: wide.png (300 x 200) over --max-pixels 50000."""
    with Detector(random_onnx, max_pixels=50_000) as det:
        scored = Review(det, upload_root=str(tmp_path)).score_files(uploads(folder, tmp_path, ["wide.png", "noise.png"]))
    expected = [json.loads(line) for line in infer(random_onnx, folder, ["wide.png", "noise.png"], "jsonl",
                                                     "--max-pixels", "50000").splitlines()]
    assert [s.record.to_dict() for s in scored] == expected
    assert "exceeds the limit of 50000" in expected[0]["error"] and expected[1]["error"] is None


def pasted(image: Path, root: Path) -> str:
    """``image``'s pixels as a paste reaches the page: the PNG the browser makes of the clipboard,
    stored by Gradio as ROOT/<a folder>/clipboard.png."""
    (root / "paste").mkdir(parents=True)
    Image.open(image).convert("RGB").save(root / "paste" / "clipboard.png")
    return str(root / "paste" / "clipboard.png")


def test_a_pasted_image_is_scored_from_its_pixels_as_the_python_api_scores_them(random_onnx, folder, tmp_path):
    """A paste's record is Detector.predict([pixels])'s for the same pixels (Pillow's, decoded here),
    under the name 'pasted image', and its card says it was scored from pixels. The JPEG's own file
    is flagged low-jpeg-quality; its pixels pasted are not (no file, no file facts), and the page
    says so rather than claiming the flag."""
    root = tmp_path / "gradio"
    with Detector(random_onnx) as det:
        review = Review(det, upload_root=str(root))
        got = [review.score_pasted(pasted(folder / n, root)) for n in ("gradient q60.jpg", "noise.png")]
        api = [det.predict([np.asarray(Image.open(folder / n).convert("RGB"))])[0]
               for n in ("gradient q60.jpg", "noise.png")]
        (jpeg_file,) = det.predict([str(folder / "gradient q60.jpg")])
        # read into memory, then gone, as an upload is
        assert root.is_dir() and not any(root.iterdir())
    for s, want in zip(got, api):
        assert s.pasted and s.name == PASTED and want.ok
        assert s.record == replace(want, path=PASTED) and want.path.startswith("<array ")
        assert s.data is not None  # kept for the evidence and stability, as an upload's bytes are
    assert "low-jpeg-quality:60" in jpeg_file.flags and not any(f.startswith("low-jpeg") for f in got[0].record.flags)
    card = verdict_card(got[0].record, ModelSpec(), PASTED_NOTE)
    assert 'data-lfm="note"' in card and "scored from its pixels" in card and "quality are not known" in card
    assert "data-lfm=\"note\"" not in verdict_card(api[0], ModelSpec())


def test_a_pasted_image_meets_the_uploads_pixel_limit(random_onnx, folder, tmp_path):
    """Over --max-pixels, a paste is refused with infer.py's words for the file, before decoding."""
    with Detector(random_onnx, max_pixels=50_000) as det:
        s = Review(det, upload_root=str(tmp_path)).score_pasted(pasted(folder / "wide.png", tmp_path))
    (want,) = map(json.loads, infer(random_onnx, folder, ["wide.png"], "jsonl", "--max-pixels", "50000").splitlines())
    assert s.record.path == PASTED and s.record.error == want["error"] and s.data is None
    assert "exceeds the limit of 50000" in s.record.error


def test_an_upload_that_cannot_be_read_is_its_own_record(tmp_path, capsys):
    root = tmp_path / "up"
    (root / "x" / "folder.png").mkdir(parents=True)  # not a file: refused, and left with a warning
    assert take_upload(str(root / "x" / "folder.png"), str(root)) == (
        "folder.png", None, "is a directory, not an image file")
    assert "could not delete the upload" in capsys.readouterr().err
    (root / "y").mkdir()
    assert take_upload(str(root / "y" / "gone.png"), str(root)) == ("gone.png", None, "no such file")
    assert not (root / "y").exists() and root.is_dir()  # its empty folder removed, up to the upload folder


def test_stability_is_infer_on_the_degraded_files_pillow_writes(random_onnx, folder, tmp_path):
    """Each row equals infer.py's record for the file an independent Pillow call writes: JPEG q75,
    and the halved and doubled image (bicubic) saved losslessly."""
    image = Image.open(folder / "wide.png").convert("RGB")
    image.save(tmp_path / "q75.jpg", quality=75)
    image.resize((150, 100), Image.BICUBIC).save(tmp_path / "half.png")
    image.resize((600, 400), Image.BICUBIC).save(tmp_path / "double.png")
    assert [p.name for p in STABILITY] == ["jpeg:75", "resize:0.5", "resize:2"]
    root = tmp_path / "gradio"
    with Detector(random_onnx) as det:
        review = Review(det, upload_root=str(root))
        (wide,) = review.score_files(uploads(folder, root, ["wide.png"]))
        rows = review.stability(wide)
    expected = [json.loads(line) for line in infer(random_onnx, tmp_path, ["q75.jpg", "half.png", "double.png"]).splitlines()]
    for (_, got), want in zip(rows, expected):
        assert {**got.to_dict(), "path": want["path"]} == want
    assert rows[0][1].flags[0] == "low-jpeg-quality:75"


@pytest.mark.parametrize("label, flags, words", [
    ("fake", [], "likely generated"),
    ("real", [], "likely real"),
    ("fake", ["upscaled:2.56"], "uncertain: enlarged 2.56x before scoring (leans generated)"),
    ("real", ["upscaled:2.56"], "likely real"),  # enlarging pushes towards 'generated': a 'real' stands
    ("real", ["low-jpeg-quality:40"], "uncertain: JPEG compression (quality 40) hides the traces (leans real)"),
    ("fake", ["low-jpeg-quality:40"], "likely generated"),
    ("real", ["low-jpeg-quality:75", "uncertain"],
     "uncertain: JPEG compression (quality 75) hides the traces; score close to the threshold (leans real)"),
    ("fake", ["uncertain"], "uncertain: score close to the threshold (leans generated)"),
])
def test_verdicts_in_words(label, flags, words):
    record = Record.from_logit("a.png", 3.0 if label == "fake" else -3.0, 0.5, flags)
    assert verdict_words(record) == words
    card = verdict_card(record, ModelSpec())
    assert f'data-lfm="label">{label}<' in card and f'data-value="{record.score!r}"' in card
    assert card.count("<li>") == len(flags)
    assert verdict_words(Record.failed("x.txt", "not an image")) == "could not be scored"


def test_the_threshold_says_whether_it_was_calibrated():
    assert threshold_words(ModelSpec()) == "threshold 0.5 (the model's own, not calibrated on images like yours)"
    calibrated = ModelSpec(threshold=0.9, extra={"calibration": {"threshold": 0.9, "n_real": 120,
                                                                 "fpr_upper_bound": 0.049, "confidence": 0.95}})
    assert threshold_words(calibrated) == "threshold 0.9 (calibrated on 120 real images: FPR <= 4.9% at 95% confidence)"


def test_one_detector_serves_concurrent_visitors_one_at_a_time(random_onnx, folder, tmp_path):
    """Two visitors upload at once, four times each: the runner never runs two batches at once
    (it is slowed down to make overlaps likely), and each gets infer.py's records."""
    expected = {n: json.loads(infer(random_onnx, folder, [n])) for n in ("noise.png", "wide.png")}
    state = {"active": 0, "most": 0}
    guard = threading.Lock()
    with Detector(random_onnx) as det:
        infer_impl = det.runner.infer_impl

        def watched(feed):
            with guard:
                state["active"] += 1
                state["most"] = max(state["most"], state["active"])
            time.sleep(0.05)
            try:
                return infer_impl(feed)
            finally:
                with guard:
                    state["active"] -= 1

        det.runner.infer_impl = watched
        review = Review(det, upload_root=str(tmp_path))
        results = {}

        def visitor(name, k):
            results[k] = [review.score_files(uploads(folder, tmp_path / f"{k}-{i}", [name]))[0].record.to_dict()
                          for i in range(4)]

        threads = [threading.Thread(target=visitor, args=(n, n)) for n in expected]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    assert state["most"] == 1
    assert all(results[n] == [expected[n]] * 4 for n in expected)


def test_the_evidence_is_the_graphs_own(random_onnx, folder, tmp_path):
    pytest.importorskip("onnx", reason="the [app] extra")
    from lfm.runtime.app import evidence_for, evidence_html
    from lfm.runtime.evidence import TopKEvidence

    root = tmp_path / "gradio"
    for policy, tiles in (("resize", 1), ("tiles", 6)):  # 300 x 200 in 64 px tiles: 5 x 4, thinned to 6 by --max-tiles
        # ONNX Runtime, as the evidence: where auto picks OpenVINO the caption says the logits differ
        with Detector(make_runner(random_onnx, backend="onnxruntime"), policy=policy, max_tiles=6) as det:
            args = type("Args", (), {"checkpoint": None, "model": str(random_onnx)})
            evidence, note = evidence_for(args, det.spec)
            assert isinstance(evidence, TopKEvidence) and note == "read from the ONNX graph's own Top-K node"
            review = Review(det, evidence, note, upload_root=str(root))
            (wide,) = review.score_files(uploads(folder, root / policy, ["wide.png"]))
            view = review.explain(wide)
        # the 64 x 16 kept positions of each tile, each seeing a 23 x 23 box inside the 64 px input
        assert view.topk.sum() == tiles * 64 * 16 * 23 * 23
        assert view.canvas.shape == ((64, 64, 3) if policy == "resize" else (200, 300, 3))
        assert f"is the verdict's ({wide.record.logit:.4f})" in view.topk_note
        assert view.gradcam is None and "--checkpoint" in view.gradcam_note
        page = evidence_html(view, 0.4)
        assert page.count("data:image/png;base64,") == 2 and 'style="opacity:0.40"' in page


def test_a_checkpoint_adds_gradcam(tmp_path, folder):
    torch = pytest.importorskip("torch", reason="the [train] extra")
    from conftest import random_lfm
    from lfm.runtime.app import CheckpointEvidence
    from lfm.train.checkpoint import make_checkpoint, save_atomic

    ckpt = tmp_path / "random.pt"
    save_atomic(make_checkpoint(random_lfm(), ModelSpec(size=64)), ckpt)
    with Detector(str(ckpt)) as det:
        review = Review(det, CheckpointEvidence(str(ckpt), det.spec), "from the checkpoint (PyTorch)", str(tmp_path / "g"))
        (noise,) = review.score_files(uploads(folder, tmp_path / "g", ["noise.png"]))
        view = review.explain(noise)
    assert view.topk.sum() == 64 * 16 * 23 * 23 and view.gradcam.shape == (64, 64)
    assert view.gradcam.max() in (0.0, 1.0) and "Grad-CAM at snet.layer4" in view.gradcam_note
    assert f"is the verdict's ({noise.record.logit:.4f})" in view.topk_note
    del torch


# -- the command -------------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(model: Path, port: int, *extra: str, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(APP), "--model", str(model), "--port", str(port), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@pytest.mark.slow
@pytest.mark.parametrize("stop, status, word", [(signal.SIGINT, 130, "interrupted"),
                                                (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_the_page_starts_on_loopback_and_stops_on_ctrl_c(random_onnx, stop, status, word):
    pytest.importorskip("gradio", reason="the [app] extra")
    import urllib.request

    port = free_port()
    app = start(random_onnx, port)
    try:
        line = app.stderr.readline()
        assert line.startswith(f"lfm app: reviewing images at http://127.0.0.1:{port};"), line
        assert "threshold 0.5 (the model's own, not calibrated" in line and "Ctrl-C stops it" in line
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=30) as page:
            assert page.status == 200 and b"LFM: is this image generated?" in page.read()
        app.send_signal(stop)
        out, err = app.communicate(timeout=60)
    finally:
        app.kill()
    assert app.returncode == status, err
    assert err.strip().splitlines()[-1] == f"app.py: {word}" and "Traceback" not in err


@pytest.mark.slow
def test_a_port_in_use_is_one_line(random_onnx):
    pytest.importorskip("gradio", reason="the [app] extra")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        app = start(random_onnx, port)
        out, err = app.communicate(timeout=120)
    assert app.returncode == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: cannot listen on 127.0.0.1:{port}") and "choose another --port" in err


def test_without_gradio_the_command_names_the_extra_and_still_helps(random_onnx):
    run = ("import sys; sys.modules['gradio'] = None\nfrom lfm.runtime.cli import main\n"
           "sys.exit(main(['app', *sys.argv[1:]]))\n")
    r = subprocess.run([sys.executable, "-c", run, "--model", str(random_onnx)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "needs the Python package 'gradio' (the [app] extra)" in r.stderr and "lfm-deploy[app]" in r.stderr
    r = subprocess.run([sys.executable, "-c", run, "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--host HOST           address the page listens on" in r.stdout, r.stdout
