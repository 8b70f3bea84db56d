"""The review page in a real browser: Playwright drives Debian's Chromium (``apt-get install
chromium``; Playwright's own browser download is not used) against a real ``runtime/app.py``
serving upstream's model. It uploads a generated-looking and a real image and reads label and
score from the page, compared with runtime/infer.py's records for the same files; pastes an image
(its PNG put on Chromium's clipboard, the paste target clicked) and reads the Python API's record
for its pixels and the note that it was scored from pixels; uploads a file that is no image and
reads the error; uploads again and the page still answers. Skips, saying
why, without Playwright, Chromium or ../shared/reference."""
from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UPLOAD = "#lfm-upload input[type=file]"
PASTE = "#lfm-paste [data-testid=image] button.upload-container"  # Gradio's "Paste from Clipboard" area
GENERATED, REAL = "chelsea_upsampled.png", "chelsea_photo.png"  # upstream's logits +24.3 and -41.4

pytestmark = pytest.mark.slow


def chromium() -> str:
    pytest.importorskip("playwright.sync_api", reason="the browser tests need playwright (the [dev] extra)")
    pytest.importorskip("gradio", reason="the page needs the [app] extra")
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        pytest.skip("no Chromium on PATH (Debian: apt-get install chromium)")
    return path


def infer(model: Path, cwd: Path, names: list[str], fmt: str = "jsonl") -> str:
    r = subprocess.run([sys.executable, str(ROOT / "runtime" / "infer.py"), "--model", str(model), *names,
                        "--format", fmt], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert r.returncode in (0, 1), r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def browser_path() -> str:
    return chromium()


@pytest.fixture(scope="module")
def page_server(browser_path, upstream_onnx, tmp_path_factory):
    """runtime/app.py on a free port, its uploads in a folder of its own: (url, upload folder)."""
    uploads = tmp_path_factory.mktemp("gradio_uploads")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = subprocess.Popen([sys.executable, str(ROOT / "runtime" / "app.py"), "--model", str(upstream_onnx),
                            "--port", str(port)], stderr=subprocess.PIPE, text=True,
                           env={**os.environ, "GRADIO_TEMP_DIR": str(uploads)})
    try:
        line = app.stderr.readline()
        assert line.startswith(f"lfm app: reviewing images at http://127.0.0.1:{port};"), line
        yield f"http://127.0.0.1:{port}/", uploads
    finally:
        app.terminate()
        app.wait(60)


def cards(page) -> list[dict]:
    """What the page shows for each file: name, verdict words, label, score (as shown and exact), error."""
    out = []
    for card in page.query_selector_all("#lfm-verdicts .lfm-card"):
        def text(key):
            e = card.query_selector(f"[data-lfm={key}]")
            return e.inner_text().strip() if e else None
        score = card.query_selector("[data-lfm=score]")
        out.append({"name": card.get_attribute("data-lfm-file"), "verdict": text("verdict"), "label": text("label"),
                    "score": text("score"), "exact": float(score.get_attribute("data-value")) if score else None,
                    "error": text("error"), "note": text("note")})
    return out


def upload(page, files: list[Path]) -> list[dict]:
    """Upload ``files`` and wait for their answers (a card per file, in order; the previous upload
    must have had other names)."""
    names = [f.name for f in files]
    page.set_input_files(UPLOAD, [str(f) for f in files])
    page.wait_for_function("(names) => JSON.stringify([...document.querySelectorAll('#lfm-verdicts .lfm-card')]"
                           ".map(c => c.dataset.lfmFile)) === JSON.stringify(names)", arg=names, timeout=120_000)
    return cards(page)


def paste(page, image: Path) -> list[dict]:
    """Put ``image`` on the browser's clipboard as a copy does (an image/png item), click the paste
    target, and wait for its answer."""
    data = base64.b64encode(image.read_bytes()).decode("ascii")
    page.evaluate("""async (data) => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        await navigator.clipboard.write([new ClipboardItem({'image/png': new Blob([bytes], {type: 'image/png'})})]);
    }""", data)
    page.click(PASTE)
    page.wait_for_function("() => [...document.querySelectorAll('#lfm-verdicts .lfm-card')].map(c => c.dataset.lfmFile)"
                           ".join('|') === 'pasted image'", timeout=120_000)
    return cards(page)


def python_api(model: Path, image: Path):
    """The Python API's record for ``image``'s pixels, as an array."""
    import numpy as np
    from PIL import Image

    from lfm.runtime.detector import Detector

    with Detector(model) as det:
        (record,) = det.predict([np.asarray(Image.open(image).convert("RGB"))])
    return record


def test_a_reviewer_uploads_reads_the_verdicts_and_uploads_again(page_server, browser_path, upstream_onnx, reference_dir,
                                                                  tmp_path):
    url, uploads = page_server
    images = reference_dir / "images"
    expected = {r["path"]: r for r in map(json.loads, infer(upstream_onnx, images, [GENERATED, REAL]).splitlines())}
    assert expected[GENERATED]["label"] == "fake" and expected[REAL]["label"] == "real"
    notes = tmp_path / "notes.txt"
    notes.write_text("a note, not an image")
    (notes_record,) = map(json.loads, infer(upstream_onnx, tmp_path, ["notes.txt"]).splitlines())
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900},
                                    permissions=["clipboard-read", "clipboard-write"])
            page.goto(url)
            page.wait_for_selector(UPLOAD, state="attached", timeout=60_000)

            shown = upload(page, [images / GENERATED, images / REAL])
            assert [c["name"] for c in shown] == [GENERATED, REAL]
            for c in shown:
                want = expected[c["name"]]
                assert c["label"] == want["label"] and c["exact"] == want["score"]
                assert c["score"] == f"{want['score']:.4f}" and c["error"] is None
            assert [c["verdict"] for c in shown] == ["likely generated", "likely real"]
            # the evidence and stability of the first image, the table and infer.py's CSV as a download
            page.wait_for_selector("#lfm-evidence [data-lfm=topk] img.lfm-overlay", timeout=60_000)
            assert len(page.query_selector_all("#lfm-stability tr[data-lfm=condition]")) == 4
            href = page.get_attribute("[data-lfm=download-csv]", "href")
            assert base64.b64decode(href.split(",", 1)[1]).decode() == infer(upstream_onnx, images, [GENERATED, REAL], "csv")
            page.fill("#lfm-opacity input[type=number]", "0.2")
            page.keyboard.press("Enter")
            page.wait_for_function("() => document.querySelector('.lfm-overlay').style.opacity === '0.2'")
            # nothing uploaded is kept: no file in the upload folder holds an uploaded file's bytes
            uploaded = {(images / n).read_bytes() for n in (GENERATED, REAL)}
            left = [f for f in uploads.rglob("*") if f.is_file() and f.stat().st_size]
            assert not [f for f in left if f.read_bytes() in uploaded], left

            # a pasted image: the Python API's record for its pixels, said to be scored from pixels
            (pasted,) = paste(page, images / GENERATED)
            want = python_api(upstream_onnx, images / GENERATED)
            assert pasted["label"] == want.label == "fake" and pasted["exact"] == want.score
            assert "scored from its pixels" in pasted["note"] and "not known" in pasted["note"]
            page.wait_for_selector("#lfm-stability tr[data-lfm=condition]", timeout=60_000)  # the paste's own
            assert page.inner_text("#lfm-stability tr[data-lfm=condition] td").strip() == "as pasted"
            assert not [f for f in uploads.rglob("clipboard*") if f.is_file() and f.stat().st_size]

            (failed,) = upload(page, [notes])
            assert failed["name"] == "notes.txt" and failed["label"] is None
            assert failed["error"] == f"Could not score this file: {notes_record['error']}"
            assert notes_record["error"] == "not an image (unrecognised format)"

            (again,) = upload(page, [images / REAL])
            assert again["label"] == "real" and again["exact"] == expected[REAL]["score"]
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "page.png").stat().st_size > 10_000
