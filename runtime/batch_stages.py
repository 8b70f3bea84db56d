"""The two stages ``runtime/batch.py`` runs on Ray Data's workers (no Ray import here).

decode_batch (Ray tasks, CPU): a block of inputs (index, path, error) -> the model's inputs,
read from a local path or a URI and prepared by the function the Detector's own decoders run
(``preprocess.load_tiles``: Pillow decode, EXIF orientation, RGB, the pixel limit, then the
model's policy, tiles included): uint8 [N, h, w, 3] per input, and its facts (the policy's
enlargement, the file's JPEG quality: ``flags.ImageFacts``). A file that cannot be read or
decoded gets its error, in its place.

Scorer (an actor per model replica): holds one Detector and hands it those arrays as
``preprocess.Prepared`` items (with their facts), which it scores as they are (no second decode,
no PIL image, no second pass of the policy); every row comes back as (index, logit, score,
label, error, flags), failures included, so no input is dropped.
The model travels as bytes (through Ray's object store): a worker that sees the driver's file
itself (same machine, shared filesystem) with the same SHA-256 loads that, any other writes it
once per node to a cache folder named by the checksum; no shared filesystem or copy step needed.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from .batch_inputs import is_uri, local_path, read_uri_bytes
from .files import file_sha256, first_line
from .flags import ImageFacts
from .preprocess import Decoded, Prepared, load_tiles_or_problem
from .spec import ModelSpec

DECODED = ("index", "error", "pixels", "count", "height", "width", "upscale", "jpeg_quality")
SCORED = ("index", "logit", "score", "label", "error", "flags")


def decode_batch(batch, *, spec: ModelSpec, max_pixels: int, max_tiles: int):
    """pyarrow Table (index, path as bytes, error) -> Table DECODED: each input's arrays
    [count, height, width, 3] as bytes, or its error."""
    import pyarrow as pa

    pixels, counts, heights, widths, errors, upscales, qualities = [], [], [], [], [], [], []
    for raw_path, error in zip(batch.column("path").to_pylist(), batch.column("error").to_pylist()):
        arrays, facts = None, ImageFacts()
        if error is None:
            arrays, error, facts = decode_one(os.fsdecode(raw_path), spec, max_pixels, max_tiles)
        n, h, w = arrays.shape[:3] if arrays is not None else (0, 0, 0)
        pixels.append(b"" if arrays is None else arrays.tobytes())
        counts.append(n)
        heights.append(h)
        widths.append(w)
        errors.append(error)
        upscales.append(facts.upscale)
        qualities.append(facts.jpeg_quality)
    return pa.table({"index": batch.column("index"), "error": pa.array(errors, pa.string()),
                     "pixels": pa.array(pixels, pa.large_binary()), "count": pa.array(counts, pa.int32()),
                     "height": pa.array(heights, pa.int32()), "width": pa.array(widths, pa.int32()),
                     "upscale": pa.array(upscales, pa.float64()), "jpeg_quality": pa.array(qualities, pa.int32())})


def decode_one(path: str, spec: ModelSpec, max_pixels: int, max_tiles: int) -> Decoded:
    """``Decoded``: (uint8 [N, h, w, 3], None, facts) or (None, the problem), worded as infer.py words it."""
    try:  # a local URI is read as its path: the runtime's reader refuses a FIFO or device unread
        source = path if not is_uri(path) else local_path(path) or read_uri_bytes(path)
    except FileNotFoundError:
        return Decoded(None, "no such file")
    except OSError as e:
        return Decoded(None, f"cannot read file ({first_line(e)})")
    return load_tiles_or_problem(source, spec, max_pixels, max_tiles)


class Scorer:
    """One model replica: ``Scorer(model_files, model_name, sha256, driver_path, threads, options)(table)``."""

    def __init__(self, model_files: dict[str, bytes], model_name: str, model_sha256: str, driver_path: str | None,
                 threads: int, options):
        from .backends import make_runner
        from .detector import Detector

        if driver_path and same_model(driver_path, model_sha256):
            path = driver_path
        else:
            path = materialize(model_files, model_sha256)[model_name]
        # threads: a backend option (make_runner); workers, batching and the spec: the pipeline's (Detector)
        self.detector = Detector(make_runner(path, threads=threads), options)

    def __call__(self, batch):
        import pyarrow as pa

        n = batch.num_rows
        logits, scores, labels, flags = [None] * n, [None] * n, [None] * n, [[] for _ in range(n)]
        errors = batch.column("error").to_pylist()
        todo = [i for i in range(n) if errors[i] is None]
        if todo:
            pixels = batch.column("pixels").combine_chunks()
            shapes = zip(*(batch.column(c).to_pylist() for c in ("count", "height", "width")))
            shapes = [(n, h, w, 3) for n, h, w in shapes]
            facts = [ImageFacts(*f) for f in zip(*(batch.column(c).to_pylist() for c in ("upscale", "jpeg_quality")))]
            prepared = [Prepared(np.frombuffer(pixels[i].as_buffer(), np.uint8).reshape(shapes[i]), facts=facts[i])
                        for i in todo]
            for i, r in zip(todo, self.detector.predict(prepared)):
                logits[i], scores[i], labels[i], errors[i], flags[i] = r.logit, r.score, r.label, r.error, r.flags
        return pa.table({"index": batch.column("index"), "logit": pa.array(logits, pa.float64()),
                         "score": pa.array(scores, pa.float64()), "label": pa.array(labels, pa.string()),
                         "error": pa.array(errors, pa.string()), "flags": pa.array(flags, pa.list_(pa.string()))})


def same_model(path: str, sha256: str) -> bool:
    """Whether ``path`` holds the model with this checksum (the driver's file, seen from here)."""
    try:
        return file_sha256(path) == sha256
    except OSError:
        return False


def materialize(model_files: dict[str, bytes], model_sha256: str) -> dict[str, str]:
    """Write the model (and its sidecars) to TMP/lfm-batch-models/SHA256/ once per node; their
    local paths. Written to temp names and renamed: actors starting together never read a
    half-written model."""
    folder = os.path.join(tempfile.gettempdir(), "lfm-batch-models", model_sha256)
    os.makedirs(folder, exist_ok=True)
    paths = {}
    for name, data in model_files.items():
        path = os.path.join(folder, name)
        if not (os.path.isfile(path) and os.path.getsize(path) == len(data)):
            fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".partial")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                os.replace(temp, path)
            except BaseException:  # a full disk, a stop: no partial model is left behind
                if os.path.exists(temp):
                    os.unlink(temp)
                raise
        paths[name] = path
    return paths
