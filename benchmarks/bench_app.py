"""How fast the review page (runtime/app.py) answers, in a real browser (issue 27).

    python benchmarks/bench_app.py --model lfm.onnx [--rounds 5] [--output-dir DIR] [--screenshot PNG]

Times, with Playwright driving Debian's Chromium (launched first, not counted):
- start to page ready: from starting ``runtime/app.py --model MODEL`` to the page loaded in the
  browser with its upload box in place (the process's own start-up line comes on the way: the
  Detector built, the ONNX graph's evidence copy made, Gradio listening);
- upload to verdict: one 1024 x 1024 JPEG (quality 90, the reference photos tiled 4 x 4, or noise
  without ../shared) set on the upload box until its verdict card is shown; then to the evidence
  and stability check shown (the same upload's second step). ``--rounds`` uploads, each a copy
  under a new name; the median and the spread are reported.
``--screenshot PNG``: the page after uploading a generated-looking and a real reference image,
the top of it, in 256 colours (docs/figures/app.png). Reports: OUT_DIR/bench_app.{json,md}.
Needs the [app] and [dev] extras and Chromium (apt-get install chromium).
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from lfm.benchmarks.reference_sets import reference_pngs  # noqa: E402
from common import DEFAULT_OUTPUT_DIR, OUTPUT_DIR_HELP, cpu_text, log, machine, run_main, write_report  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("LFM_REFERENCE", ROOT.parent / "shared" / "reference"))
UPLOAD = "#lfm-upload input[type=file]"
SIDE = 1024
SCREENSHOT_FILES = ("chelsea_upsampled.png", "chelsea_photo.png")
SCREENSHOT_CLIP = (1100, 1700)  # width, height of the page's top shown in docs/figures/app.png


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="the ONNX model the page serves")
    p.add_argument("--rounds", type=int, default=5, help="uploads of the 1024 px image")
    p.add_argument("--output-dir", default=DEFAULT_OUTPUT_DIR, help=OUTPUT_DIR_HELP)
    p.add_argument("--screenshot", help="also write a screenshot of the page here (PNG)")
    return p.parse_args(argv)


def test_image(path: Path) -> str:
    """A 1024 x 1024 JPEG: the reference photos tiled, or noise; returns what it is."""
    photos = [p for p in reference_pngs(REFERENCE) if p.stem.endswith("_photo")]
    if photos:
        tiles = [np.asarray(Image.open(p).convert("RGB").resize((SIDE // 4, SIDE // 4))) for p in photos]
        rows = [np.concatenate([tiles[(r * 4 + c) % len(tiles)] for c in range(4)], 1) for r in range(4)]
        Image.fromarray(np.concatenate(rows, 0)).save(path, quality=90)
        return f"the {len(photos)} reference photos tiled 4 x 4, JPEG q90"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)).save(path, quality=90)
    return "uniform noise, JPEG q90 (no ../shared/reference)"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_card(page, name: str) -> None:
    page.wait_for_function("(n) => [...document.querySelectorAll('#lfm-verdicts .lfm-card')].some(c => "
                           "c.dataset.lfmFile === n)", arg=name, timeout=300_000)


def wait_for_details(page) -> None:
    page.wait_for_selector("#lfm-stability tr[data-lfm=condition]", timeout=300_000)


def time_uploads(page, image: Path, rounds: int, work: Path) -> tuple[list[float], list[float]]:
    verdict, details = [], []
    for i in range(rounds):
        copy = work / f"upload_{i}.jpg"
        shutil.copy(image, copy)
        t0 = time.perf_counter()
        page.set_input_files(UPLOAD, str(copy))
        wait_for_card(page, copy.name)
        verdict.append(time.perf_counter() - t0)
        wait_for_details(page)
        details.append(time.perf_counter() - t0)
        log(f"upload {i + 1}/{rounds}: verdict {verdict[-1]:.2f} s, evidence and stability {details[-1]:.2f} s")
    return verdict, details


def screenshot(page, path: str) -> None:
    files = [REFERENCE / "images" / n for n in SCREENSHOT_FILES]
    page.set_input_files(UPLOAD, [str(f) for f in files])
    wait_for_card(page, SCREENSHOT_FILES[-1])
    page.wait_for_selector("#lfm-evidence [data-lfm=topk]", timeout=300_000)
    wait_for_details(page)
    shot = Path(tempfile.mkdtemp()) / "page.png"
    page.screenshot(path=str(shot), full_page=True,
                    clip={"x": 0, "y": 0, "width": SCREENSHOT_CLIP[0], "height": SCREENSHOT_CLIP[1]})
    Image.open(shot).convert("RGB").quantize(256).save(path, optimize=True)
    shutil.rmtree(shot.parent)
    log(f"screenshot: {path} ({os.path.getsize(path) // 1024} KiB)")


def summary(times: list[float]) -> dict:
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "max_s": round(max(times), 3), "runs_s": [round(t, 3) for t in times]}


def main(argv=None) -> int:
    args = parse_args(argv)
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        print("error: no Chromium on PATH (Debian: apt-get install chromium)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="bench_app_") as tmp, sync_playwright() as p:
        work = Path(tmp)
        image = work / "image_1024.jpg"
        what = test_image(image)
        browser = p.chromium.launch(executable_path=chromium)
        page = browser.new_page(viewport={"width": SCREENSHOT_CLIP[0], "height": 900})
        port = free_port()
        t0 = time.perf_counter()
        app = subprocess.Popen([sys.executable, str(ROOT / "runtime" / "app.py"), "--model", args.model, "--port",
                                str(port)], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "GRADIO_TEMP_DIR": str(work / "uploads")})
        try:
            line = app.stderr.readline()
            listening = time.perf_counter() - t0
            if not line.startswith("lfm app: reviewing images"):
                print(f"error: the page did not start: {line.strip()}", file=sys.stderr)
                return 2
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_selector(UPLOAD, state="attached", timeout=120_000)
            ready = time.perf_counter() - t0
            log(f"start-up line after {listening:.2f} s, page ready after {ready:.2f} s")
            verdict, details = time_uploads(page, image, args.rounds, work)
            if args.screenshot:
                screenshot(page, args.screenshot)
            browser_version = browser.version
        finally:
            app.terminate()
            app.wait(60)
            browser.close()
    doc = {"date": time.strftime("%Y-%m-%d"), "machine": machine(0, ("numpy", "onnxruntime", "gradio")),
           "load_average_1min": round(os.getloadavg()[0], 2), "model": os.path.basename(args.model),
           "browser": f"Chromium {browser_version} (Debian), Playwright", "image": f"{SIDE} x {SIDE}: {what}",
           "start_to_startup_line_s": round(listening, 3), "start_to_page_ready_s": round(ready, 3),
           "upload_to_verdict": summary(verdict), "upload_to_evidence_and_stability": summary(details)}
    m = doc["machine"]
    md = (f"# The review page's response times\n\n{doc['date']}, {cpu_text(m)}, "
          f"{m['usable_cpus']} usable cores (load average {doc['load_average_1min']} at the end); model {doc['model']}; "
          f"{doc['browser']}; image {doc['image']}.\n\n"
          "| what | seconds |\n| --- | --- |\n"
          f"| start to the start-up line (Detector, evidence graph, Gradio listening) | {listening:.2f} |\n"
          f"| start to page ready in the browser | {ready:.2f} |\n"
          f"| upload to verdict, median of {args.rounds} (min-max) | {doc['upload_to_verdict']['median_s']:.2f} "
          f"({min(verdict):.2f}-{max(verdict):.2f}) |\n"
          f"| upload to evidence and stability shown, median | {doc['upload_to_evidence_and_stability']['median_s']:.2f} "
          f"({min(details):.2f}-{max(details):.2f}) |\n")
    write_report(args.output_dir, "bench_app", doc, md)
    return 0


if __name__ == "__main__":
    run_main(main)
