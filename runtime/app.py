"""A web page for people who review images: upload, read the verdict, see the evidence.

    python runtime/app.py --model lfm.onnx           # then open http://127.0.0.1:7860
    lfm app --checkpoint ckpt.pt --port 8080         # a checkpoint adds Grad-CAM
    lfm app --model lfm.onnx --host 0.0.0.0          # every interface: trusted networks only

Drop one image or many on the page, or paste one. Each file gets the record infer.py gives for the
same file (the same Detector, options and decoding limits); a pasted image has no file (the
clipboard holds pixels), so it is scored from its pixels as an array, the record the Python API's
Detector.predict([pixels]) gives, and the page says so next to its answer. Each said in words: "likely generated", "likely real",
or "uncertain: ..." when a flag undermines that answer (an image the preprocessing enlarged, for
"generated"; a JPEG, for "real"; a score near the threshold, for both), with the score, the
threshold in force (calibrated or not) and each flag's reason. For one image at a time:
Evidence, the Top-K patch map (the pixels the 64 x 16 positions Top-K pooling kept come from,
read from the ONNX graph's own TopK node, or from the checkpoint) and, with a checkpoint, Grad-CAM,
over the image the model saw, with an opacity slider; Stability, the image saved again as JPEG
quality 75, halved and doubled (train/evaluate.py --perturb's degradations) and scored again,
side by side. All images: a table of the records, and the CSV and JSONL infer.py writes for them.

Safe by default: it listens on 127.0.0.1 (--host to change; a public share link only with
--share); an uploaded file (or the browser's PNG of a pasted image) is read into memory and deleted from Gradio's upload folder before it
is scored, and nothing of it is written anywhere (pictures and downloads are data: URIs); one
Detector serves every visitor, one request at a time (a lock; the page queues the rest).
Ctrl-C (or SIGTERM) stops it: exit 130 (143). Needs the [app] extra (Gradio).
"""
from __future__ import annotations

import base64
import html
import io
import os
import sys
import threading
import time
from dataclasses import dataclass, replace

if __package__ in (None, ""):  # run as a script: runtime/ is sys.path[0]; import the installed package
    sys.path.pop(0)

import numpy as np  # noqa: E402

from lfm.runtime.backends import BackendError, make_runner  # noqa: E402
from lfm.runtime.cli import ArgumentParser, CommandError, positive_int, run  # noqa: E402
from lfm.runtime.detector import Detector  # noqa: E402
from lfm.runtime.evidence import EvidenceUnavailable, TopKEvidence, coverage, heat_rgba, png_data_uri  # noqa: E402
from lfm.runtime.options import ModelArgs, PipelineArgs, ServerArgs, parse_and_check  # noqa: E402
from lfm.runtime.perturb import Perturbation, jpeg_bytes, parse_perturbations  # noqa: E402
from lfm.runtime.preprocess import (ImageError, decode_image, normalize, open_image, prepare_image,  # noqa: E402
                                    read_image_bytes, tile_boxes)
from lfm.runtime.records import Record, RecordWriter  # noqa: E402
from lfm.runtime.spec import calibration_of, threshold_text  # noqa: E402

DEFAULT_PORT = 7860  # Gradio's
MAX_FILE_SIZE = "100mb"  # per uploaded file, refused by Gradio before it is stored (pixel bombs: --max-pixels)
DETAILED = 20  # images per upload whose evidence and stability can be shown (their bytes stay in memory)
KEPT_S = 1800  # ... for at most this long after the upload
# What platforms do to images, as train/evaluate.py --perturb names it: re-encoded, halved, doubled.
STABILITY = (*parse_perturbations("jpeg:75"), *parse_perturbations("resize:0.5,2"))
GRADCAM_LAYER = "snet.layer4"  # train/visualize.py gradcam's default for LFM's four SNet blocks
PASTED = "pasted image"  # the name a pasted image's record goes by: it has no file name
PASTED_NOTE = ("Pasted, so scored from its pixels: the clipboard holds no file, so file facts such as a "
               "JPEG's quality are not known, and no flag can warn of them. If the image came from a file, "
               "drop the file instead.")

MODEL, PIPELINE = ModelArgs(), PipelineArgs()
NETWORK = ServerArgs(only=("host",), help={"host": "address the page listens on; 0.0.0.0 for every interface "
                                                   "(anyone who can reach this machine can use the page)"})


# -- words a reviewer reads ------------------------------------------------------------------------

def flag_reason(flag: str, size: int) -> str:
    """One flag (runtime/flags.py) as a sentence."""
    kind, _, value = flag.partition(":")
    if kind == "upscaled":
        return (f"the image was enlarged {value}x to the {size} px the model reads; enlarging adds the "
                "up-sampling traces the model takes for generated, so real photos can look generated")
    if kind == "low-jpeg-quality":
        return (f"the file is a JPEG (quality about {value}); compression erases the traces the model reads, "
                "so it calls most JPEGs real, generated or not")
    if kind == "uncertain":
        return "the score is close to the threshold: a small re-encoding or resize can flip the answer"
    return f"flag {flag}"


def _doubt(flag: str, label: str) -> str | None:
    """The short reason a flag undermines this label, or None where it does not."""
    kind, _, value = flag.partition(":")
    if kind == "upscaled":
        return f"enlarged {value}x before scoring" if label == "fake" else None
    if kind == "low-jpeg-quality":
        return f"JPEG compression (quality {value}) hides the traces" if label == "real" else None
    if kind == "uncertain":
        return "score close to the threshold"
    return flag  # a flag this page does not know: it undermines either answer


def verdict_words(record: Record) -> str:
    """'likely generated', 'likely real', 'uncertain: <why> (leans generated)', or 'could not be scored'."""
    if not record.ok:
        return "could not be scored"
    leaning = "generated" if record.label == "fake" else "real"
    doubts = [d for d in (_doubt(f, record.label) for f in record.flags) if d]
    return f"uncertain: {'; '.join(doubts)} (leans {leaning})" if doubts else f"likely {leaning}"


def threshold_words(spec) -> str:
    """The threshold in force and where it came from (spec.threshold_text), or that it was not calibrated."""
    text = threshold_text(spec)
    return text if calibration_of(spec) else f"{text} (the model's own, not calibrated on images like yours)"


def condition_words(p: Perturbation) -> str:
    if p.kind == "jpeg":
        return f"saved again as JPEG, quality {p.value:g}"
    if p.kind == "resize":
        return {0.5: "half size", 2.0: "double size"}.get(p.value, f"resized {p.value:g}x")
    return p.describe()


def records_text(records: list[Record], fmt: str) -> str:
    """The records as infer.py writes them (RecordWriter), in memory."""
    out = io.StringIO()
    writer = RecordWriter(out, fmt)
    for r in records:
        writer.write(r)
    return out.getvalue()


# -- what the page does, without the page ----------------------------------------------------------

@dataclass
class Scored:
    """One uploaded file: its name, its record, its bytes while the session may still ask about it."""

    name: str
    record: Record
    data: bytes | None = None
    pasted: bool = False  # scored from its pixels (PASTED_NOTE); ``data``: the browser's PNG of them


def take_upload(path: str, root: str | None = None) -> tuple[str, bytes | None, str | None]:
    """(name, bytes or None, the problem reading them): the file read into memory, then deleted, with
    the folders above it up to ``root`` that it leaves empty (Gradio stores each upload in a folder
    of its own)."""
    name = os.path.basename(path)
    try:
        return name, read_image_bytes(path), None
    except ImageError as e:
        return name, None, e.problem
    finally:
        forget_upload(path, root)


def forget_upload(path: str, root: str | None = None) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as e:  # not ours to force (a folder, no permission): said, never silent
        print(f"warning: lfm app: could not delete the upload {path}: {e.strerror or e}", file=sys.stderr)
    folder, stop = os.path.dirname(os.path.abspath(path)), os.path.abspath(root) if root else None
    while stop and folder.startswith(stop + os.sep):
        try:
            os.rmdir(folder)  # only if empty
        except OSError:
            return
        folder = os.path.dirname(folder)


@dataclass
class EvidenceView:
    """Pictures of one image over what the model saw: the Top-K map, Grad-CAM (or why not)."""

    canvas: np.ndarray  # uint8 [H, W, 3]: the model's input (policy resize / center-crop / none) or the image (tiles)
    note: str  # what the canvas is
    topk: np.ndarray | None = None  # selections covering each pixel [H, W]
    topk_note: str = ""
    gradcam: np.ndarray | None = None  # Grad-CAM / its maximum [H, W]
    gradcam_note: str = ""


class CheckpointEvidence:
    """The Top-K positions and Grad-CAM of a PyTorch checkpoint (train/visualize.py's), on the CPU."""

    def __init__(self, path: str, spec):
        from lfm.train.checkpoint import load_checkpoint

        self.model, self.spec = load_checkpoint(path).model.eval(), spec

    def _input(self, pixels: np.ndarray):
        import torch

        return torch.from_numpy(normalize(pixels, self.spec.mean, self.spec.std))[None]

    def positions(self, arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from lfm.train.visualize import topk_selection

        picks = [topk_selection(self.model, self._input(a)) for a in arrays]
        return (np.stack([p["rows"] for p in picks]), np.stack([p["cols"] for p in picks]),
                np.array([p["logit"] for p in picks]))

    def gradcam(self, arrays: np.ndarray) -> list[np.ndarray]:
        from lfm.train.visualize import gradcam_on_pixels

        return [gradcam_on_pixels(self.model, self._input(a), GRADCAM_LAYER)[1] for a in arrays]


class Review:
    """The page's work on one Detector, shared by every visitor: one request at a time (``lock``).
    ``evidence``: a TopKEvidence or CheckpointEvidence, or None with ``evidence_note`` saying why."""

    def __init__(self, detector: Detector, evidence=None, evidence_note: str = "", upload_root: str | None = None):
        self.detector, self.evidence, self.evidence_note = detector, evidence, evidence_note
        self.upload_root = upload_root
        self.lock = threading.Lock()

    @property
    def spec(self):
        return self.detector.spec

    def predict(self, items: list) -> list[Record]:
        with self.lock:
            return self.detector.predict(items)

    def score_files(self, paths: list[str]) -> list[Scored]:
        """Each uploaded file read, deleted, scored: infer.py's record, under the file's name."""
        taken = [take_upload(p, self.upload_root) for p in paths]
        records = iter(self.predict([data for _, data, _ in taken if data is not None]))
        out = []
        for name, data, problem in taken:
            record = Record.failed(name, problem) if data is None else replace(next(records), path=name)
            out.append(Scored(name, record, data if record.ok else None))
        return out

    def score_pasted(self, path: str) -> Scored:
        """A pasted image: the PNG the browser made of the clipboard's pixels, read and deleted as an
        upload is, decoded under the same limits, and scored as the array of its pixels
        (Detector.predict([pixels]), the Python API's record): a paste has no file, hence no file facts."""
        _, data, problem = take_upload(path, self.upload_root)
        try:
            pixels = None if data is None else np.asarray(open_image(data, self.detector.options.max_pixels))
        except ImageError as e:
            problem = e.problem
            pixels = None
        if pixels is None:
            return Scored(PASTED, Record.failed(PASTED, problem), pasted=True)
        (record,) = self.predict([pixels])
        return Scored(PASTED, replace(record, path=PASTED), data if record.ok else None, pasted=True)

    def stability(self, scored: Scored) -> list[tuple[Perturbation, Record]]:
        """The image degraded as train/evaluate.py --perturb degrades it (the decoded image, then each
        of STABILITY), scored again; a JPEG re-encoding is scored as the file a platform would
        deliver (the same pixels as ``p.apply``'s, and a JPEG file's flags)."""
        limit = self.detector.options.max_pixels
        image = open_image(scored.data, limit)
        items, problems = [], {}
        for p in STABILITY:
            try:
                items.append(jpeg_bytes(image, p.value) if p.kind == "jpeg" else p.apply(image, limit))
            except ImageError as e:
                problems[p] = e.problem
        records = iter(self.predict(items))
        return [(p, Record.failed(scored.name, problems[p]) if p in problems else replace(next(records), path=scored.name))
                for p in STABILITY]

    def explain(self, scored: Scored) -> EvidenceView:
        """The evidence of one image over what the model saw; under policy tiles, over the image
        with each tile's map in its place."""
        options, spec = self.detector.options, self.spec
        image, quality = decode_image(scored.data, options.max_pixels)
        arrays, _ = prepare_image(image, spec, options.max_tiles, quality)
        if spec.policy == "tiles":
            canvas = np.asarray(image, dtype=np.uint8)
            boxes = tile_boxes(image.width, image.height, spec.size, options.max_tiles)
            note = f"the image, {image.width} x {image.height}, with the maps of its {len(boxes)} tiles in place"
        else:
            canvas, boxes = arrays[0], [(0, 0, arrays.shape[2], arrays.shape[1])]
            note = f"what the model saw: {canvas.shape[1]} x {canvas.shape[0]} ({spec.policy} of {image.width} x {image.height})"
        view = EvidenceView(canvas, note, topk_note=self.evidence_note, gradcam_note="Grad-CAM needs the model as a "
                            "PyTorch checkpoint: start the page with --checkpoint")
        if self.evidence is None:
            return view
        with self.lock:
            rows, cols, logits = self.evidence.positions(arrays)
            cams = self.evidence.gradcam(arrays) if isinstance(self.evidence, CheckpointEvidence) else None
        view.topk = _placed([coverage(r, c, arrays.shape[1], arrays.shape[2]) for r, c in zip(rows, cols)], boxes,
                            canvas.shape[:2], np.add)
        logit = float(np.max(logits) if self.detector.tile_reduce == "max" else np.mean(logits))
        same = abs(logit - scored.record.logit) <= 1e-4 * max(1.0, abs(logit))
        view.topk_note = (f"{self.evidence_note}; {'its' if same else 'but its'} logit {logit:.4f} "
                          f"{'is' if same else 'differs from'} the verdict's ({scored.record.logit:.4f})")
        if cams is not None:
            heat = _placed(cams, boxes, canvas.shape[:2], np.maximum)
            peak = float(heat.max())
            view.gradcam = heat / peak if peak > 0 else heat
            view.gradcam_note = (f"Grad-CAM at {GRADCAM_LAYER}: where the evidence for 'generated' is strongest "
                                 "(relative to this image's maximum)" + ("" if peak > 0 else "; zero everywhere"))
        return view


def _placed(maps: list[np.ndarray], boxes, shape, combine) -> np.ndarray:
    """Per-tile maps put at their (left, top, right, bottom) boxes on a canvas of ``shape``."""
    out = np.zeros(shape, np.float64)
    for m, (left, top, right, bottom) in zip(maps, boxes):
        out[top:bottom, left:right] = combine(out[top:bottom, left:right], m)
    return out


# -- HTML ------------------------------------------------------------------------------------------

def _e(text) -> str:
    return html.escape(str(text))


def verdict_card(record: Record, spec, note: str = "") -> str:
    """One image's answer: the verdict in words, score, the record's label, each flag's reason;
    ``note``: what the reviewer must know about how it was scored (PASTED_NOTE)."""
    note_html = f'<div class="lfm-note" data-lfm="note">{_e(note)}</div>' if note else ""
    if not record.ok:
        return (f'<div class="lfm-card lfm-failed" data-lfm-file="{_e(record.path)}"><div class="lfm-name">{_e(record.path)}'
                f'</div><div class="lfm-headline" data-lfm="error">Could not score this file: {_e(record.error)}</div>'
                f"{note_html}</div>")
    words = verdict_words(record)
    tone = "uncertain" if words.startswith("uncertain") else record.label
    side = "above" if record.label == "fake" else "not above"
    reasons = "".join(f"<li>{_e(flag_reason(f, spec.size))}</li>" for f in record.flags)
    return (f'<div class="lfm-card lfm-{tone}" data-lfm-file="{_e(record.path)}"><div class="lfm-name">{_e(record.path)}</div>'
            f'<div class="lfm-headline" data-lfm="verdict">{_e(words)}</div>'
            f'<div>score <b data-lfm="score" data-value="{record.score!r}">{record.score:.4f}</b>, {side} the '
            f'threshold {spec.threshold:.4g}: the model\'s label is <b data-lfm="label">{_e(record.label)}</b>'
            f' (logit {record.logit:.3f})</div>' + (f'<ul class="lfm-reasons">{reasons}</ul>' if reasons else "")
            + note_html + "</div>")


def records_table(records: list[Record]) -> str:
    rows = "".join(
        f"<tr><td>{i}</td><td>{_e(r.path)}</td><td>{_e(verdict_words(r))}</td>"
        f"<td>{'' if r.score is None else f'{r.score:.4f}'}</td><td>{_e(r.label or '')}</td>"
        f"<td>{_e(', '.join(r.flags))}</td><td>{_e(r.error or '')}</td></tr>" for i, r in enumerate(records, 1))
    return ('<table class="lfm-table" data-lfm="records"><thead><tr><th>#</th><th>file</th><th>verdict</th><th>score</th>'
            f"<th>label</th><th>flags</th><th>error</th></tr></thead><tbody>{rows}</tbody></table>")


def download_links(records: list[Record]) -> str:
    """The records as infer.py's CSV and JSONL, as links whose data travel in the page itself."""
    links = []
    for fmt, mime in (("csv", "text/csv"), ("jsonl", "application/x-ndjson")):
        data = base64.b64encode(records_text(records, fmt).encode("utf-8")).decode("ascii")
        links.append(f'<a class="lfm-download" data-lfm="download-{fmt}" download="lfm-records.{fmt}" '
                     f'href="data:{mime};charset=utf-8;base64,{data}">records as {fmt.upper()}</a>')
    return '<p class="lfm-downloads">Download ' + " · ".join(links) + " (what runtime/infer.py writes for these files)</p>"


def _overlay(canvas: np.ndarray, heat: np.ndarray, opacity: float, what: str, note: str) -> str:
    base, top = png_data_uri(canvas, max_side=1024), png_data_uri(heat_rgba(heat), max_side=1024)
    return (f'<figure class="lfm-figure" data-lfm="{what}"><div class="lfm-stack"><img class="lfm-base" src="{base}" alt="image">'
            f'<img class="lfm-overlay" src="{top}" alt="{what}" style="opacity:{opacity:.2f}"></div>'
            f"<figcaption>{_e(note)}</figcaption></figure>")


def evidence_html(view: EvidenceView, opacity: float) -> str:
    parts = [f"<p>{_e(view.note.capitalize())}. Bright: where the decision comes from; this shows where the model "
             "looked, not proof of editing.</p>"]
    if view.topk is not None:
        parts.append(_overlay(view.canvas, view.topk, opacity, "topk", "Top-K patch map: how many of the 64 x 16 "
                              f"positions the model keeps see each pixel ({view.topk_note})"))
    else:
        parts.append(f'<p data-lfm="topk-unavailable">No Top-K patch map: {_e(view.topk_note)}.</p>')
    if view.gradcam is not None:
        parts.append(_overlay(view.canvas, view.gradcam, opacity, "gradcam", view.gradcam_note))
    else:
        parts.append(f'<p data-lfm="gradcam-unavailable">No Grad-CAM: {_e(view.gradcam_note)}.</p>')
    return '<div class="lfm-evidence">' + "".join(parts) + "</div>"


def stability_html(original: Record, rows: list[tuple[Perturbation, Record]], given: str = "as uploaded") -> str:
    cells = []
    for words, r in [(given, original), *((condition_words(p), r) for p, r in rows)]:
        same = "" if r is original else ("same answer" if r.ok and verdict_words(r) == verdict_words(original)
                                         else "changed" if r.ok else "")
        score = f"{r.score:.4f}" if r.ok else _e(r.error)
        cells.append(f'<tr data-lfm="condition"><td>{_e(words)}</td><td>{_e(verdict_words(r))}</td><td>{score}</td>'
                     f"<td>{_e(', '.join(r.flags))}</td><td>{same}</td></tr>")
    kept = sum(1 for _, r in rows if r.ok and verdict_words(r) == verdict_words(original))
    return (f"<p>The answer stays the same under {kept} of {len(rows)} changes platforms commonly make.</p>"
            '<table class="lfm-table" data-lfm="stability"><thead><tr><th>the image</th><th>verdict</th><th>score</th>'
            f"<th>flags</th><th></th></tr></thead><tbody>{''.join(cells)}</tbody></table>")


CSS = """
.lfm-card {border: 1px solid #ccc; border-left: 8px solid #999; border-radius: 6px; padding: 8px 12px; margin: 6px 0}
.lfm-fake {border-left-color: #c0392b} .lfm-real {border-left-color: #27ae60}
.lfm-uncertain {border-left-color: #e0a800} .lfm-failed {border-left-color: #555}
.lfm-headline {font-size: 1.4em; font-weight: 600; margin: 2px 0}
.lfm-name {color: #666; font-size: 0.9em}
.lfm-note {color: #555; font-style: italic; margin-top: 4px}
.lfm-stack {position: relative; display: inline-block; max-width: 512px; width: 100%}
.lfm-stack img {display: block; width: 100%; image-rendering: pixelated}
.lfm-stack .lfm-overlay {position: absolute; left: 0; top: 0; height: 100%}
.lfm-figure {display: inline-block; margin: 6px; max-width: 512px; vertical-align: top}
.lfm-table td, .lfm-table th {padding: 2px 8px; text-align: left}
"""
# The opacity slider acts in the browser on the pictures already shown: no request, no new picture.
OPACITY_JS = "(v) => { document.querySelectorAll('.lfm-overlay').forEach(e => e.style.opacity = v); return v; }"


# -- the page --------------------------------------------------------------------------------------

def intro(review: Review) -> str:
    return (f"## Is this image generated?\nDrop one image or many below, or paste one. Each is scored by LFM "
            f"({review.detector.runner.describe()}; {threshold_words(review.spec)}); the file is deleted from this "
            "machine as soon as it is read. A score is a model's reading of up-sampling traces, not proof: read the "
            "reasons under each answer, the evidence and the stability check before you act on it.")


def build_page(review: Review):
    """The Gradio page over ``review``."""
    import gradio as gr

    with gr.Blocks(title="LFM: is this image generated?", delete_cache=(60, 300)) as page:
        gr.Markdown(intro(review))
        with gr.Row():
            files = gr.File(label="Images: drop them here, or click to choose", file_count="multiple",
                            type="filepath", elem_id="lfm-upload", height=150, scale=3)
            # Gradio uploads the browser's PNG of the clipboard; image_mode=None: the file itself, not a re-save
            paste = gr.Image(label="Or paste an image: copy it, then click here", sources=["clipboard"],
                             type="filepath", image_mode=None, elem_id="lfm-paste", height=150, scale=1, buttons=[])
        verdicts = gr.HTML(elem_id="lfm-verdicts")
        gr.Markdown("### Evidence and stability\nWhere the model's answer comes from, and whether it survives what "
                    "platforms do to images.")
        choice = gr.Dropdown(label="Evidence and stability of", choices=[], elem_id="lfm-choice", interactive=True)
        opacity = gr.Slider(0.0, 1.0, value=0.6, step=0.05, label="Map opacity", elem_id="lfm-opacity")
        evidence = gr.HTML(elem_id="lfm-evidence")
        stability = gr.HTML(elem_id="lfm-stability")
        gr.Markdown("### All images")
        table = gr.HTML(elem_id="lfm-table")
        # this visitor's detailed images (name -> Scored), in memory only: Gradio drops them when the page is
        # closed or reloaded, or KEPT_S after the last upload
        kept = gr.State({}, time_to_live=KEPT_S)

        def answers(scored: list[Scored]):
            """The outputs for these images, the upload or paste target cleared (its file is gone)."""
            records = [s.record for s in scored]
            details = {f"{i}. {s.name}": s for i, s in enumerate(scored, 1) if s.data is not None}
            details = dict(list(details.items())[:DETAILED])
            waiting = "<p>Working out the evidence and the stability check...</p>" if details else ""
            return (None, "".join(verdict_card(s.record, review.spec, PASTED_NOTE if s.pasted else "") for s in scored),
                    gr.Dropdown(choices=list(details), value=next(iter(details), None)), waiting, waiting,
                    records_table(records) + download_links(records), details)

        def on_upload(paths):
            return answers(review.score_files(list(paths or [])))

        def on_paste(path):
            return answers([review.score_pasted(path)] if path else [])

        def details_of(key, details, level):
            if key is None or key not in (details or {}):
                return "", ""
            s = details[key]
            return evidence_html(review.explain(s), level), stability_html(s.record, review.stability(s),
                                                                         "as pasted" if s.pasted else "as uploaded")

        # The verdicts first; then the evidence and stability of the first image (or the one chosen).
        scoring = dict(concurrency_limit=1, concurrency_id="model")
        for target, score in ((files, on_upload), (paste, on_paste)):
            target.upload(score, target, [target, verdicts, choice, evidence, stability, table, kept], **scoring).then(
                details_of, [choice, kept, opacity], [evidence, stability], **scoring)
        choice.input(details_of, [choice, kept, opacity], [evidence, stability], **scoring)
        opacity.change(None, opacity, None, js=OPACITY_JS, queue=False)
    return page


# -- the command -----------------------------------------------------------------------------------

class AppError(CommandError):
    """The page cannot start (a port in use, no Gradio)."""


def parse_args(argv=None):
    p = ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    for group in (MODEL, PIPELINE, NETWORK):
        group.add_to(p)
    page = p.add_argument_group("page")
    page.add_argument("--port", type=positive_int(1, 65535), default=DEFAULT_PORT, metavar="PORT",
                      help="port the page listens on")
    page.add_argument("--share", action="store_true",
                      help="also publish the page through a public gradio.live link (anyone with the link can use it)")
    return parse_and_check(p, argv, MODEL, PIPELINE, NETWORK)


def evidence_for(args, spec) -> tuple[object | None, str]:
    """The model's evidence and what it is, or None and why there is none."""
    if args.checkpoint:
        return CheckpointEvidence(args.checkpoint, spec), "from the checkpoint (PyTorch)"
    if args.model:
        try:
            return TopKEvidence.from_onnx(args.model, spec), "read from the ONNX graph's own Top-K node"
        except EvidenceUnavailable as e:
            return None, str(e)
    return None, ("a TensorRT engine does not give the positions: start the page with the ONNX model or the "
                  "checkpoint it was built from to see them")


def upload_folder() -> str:
    """Where Gradio stores uploads (GRADIO_TEMP_DIR, else the system's temp folder + /gradio)."""
    import tempfile

    return os.environ.get("GRADIO_TEMP_DIR") or os.path.join(tempfile.gettempdir(), "gradio")


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from a reviewer's machine
    import gradio  # noqa: F401  (missing: cli.run names the [app] extra in one line, before a model loads)
    try:
        detector = Detector(make_runner(**MODEL.runner_arguments(args)), PIPELINE.options(args))
    except (BackendError, ValueError) as e:
        raise AppError(str(e)) from None
    with detector:
        evidence, note = evidence_for(args, detector.spec)
        review = Review(detector, evidence, note, upload_folder())
        serve_page(build_page(review), args, review)
    return 0


def serve_page(page, args, review: Review) -> None:
    """Launch, say where, and wait for Ctrl-C or SIGTERM (cli.run turns either into exit 130 / 143)."""
    page.queue(default_concurrency_limit=1)
    try:
        _, url, share_url = page.launch(server_name=args.host, server_port=args.port, share=args.share,
                                        prevent_thread_lock=True, quiet=True, max_file_size=MAX_FILE_SIZE,
                                        ssr_mode=False, show_error=False, css=CSS, footer_links=[])
    except OSError as e:
        raise AppError(f"cannot listen on {args.host}:{args.port} ({str(e).splitlines()[0]}): choose another --port "
                       "or stop what uses it") from None
    where = f"http://{args.host}:{args.port}" + (f" and {share_url} (public)" if share_url else "")
    print(f"lfm app: reviewing images at {where}; {review.detector.runner.describe()}; {threshold_words(review.spec)}; "
          f"Top-K map: {review.evidence_note if review.evidence else 'none (' + review.evidence_note + ')'}; "
          "Ctrl-C stops it", file=sys.stderr, flush=True)
    try:
        while True:
            time.sleep(0.5)
    finally:
        page.close()


if __name__ == "__main__":
    sys.exit(run(main))
