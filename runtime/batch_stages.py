"""The two stages ``runtime/batch.py`` runs on Ray Data's workers (no Ray import here).

decode_batch (Ray tasks, CPU): a block of inputs (index, path, error) -> their pixels, read
from a local path or a URI and prepared exactly as the Detector prepares a path (Pillow decode,
EXIF orientation, RGB, the pixel limit, then the model's policy; for ``tiles`` the whole image,
tiled by the scorer). A file that cannot be read or decoded gets its error, in its place.

Scorer (an actor per model replica): holds one Detector and scores decoded pixels; every row
comes back as (index, logit, score, label, error), failures included, so no input is dropped.
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
from .preprocess import ImageError, apply_policy, open_image

DECODED = ("index", "error", "pixels", "height", "width")
SCORED = ("index", "logit", "score", "label", "error")


def decode_batch(batch, *, policy: str, size: int, max_pixels: int):
    """pyarrow Table (index, path as bytes, error) -> Table DECODED."""
    import pyarrow as pa

    pixels, heights, widths, errors = [], [], [], []
    for raw_path, error in zip(batch.column("path").to_pylist(), batch.column("error").to_pylist()):
        array = None
        if error is None:
            array, error = decode_one(os.fsdecode(raw_path), policy, size, max_pixels)
        pixels.append(b"" if array is None else array.tobytes())
        heights.append(0 if array is None else array.shape[0])
        widths.append(0 if array is None else array.shape[1])
        errors.append(error)
    return pa.table({"index": batch.column("index"), "error": pa.array(errors, pa.string()),
                     "pixels": pa.array(pixels, pa.large_binary()), "height": pa.array(heights, pa.int32()),
                     "width": pa.array(widths, pa.int32())})


def decode_one(path: str, policy: str, size: int, max_pixels: int) -> tuple[np.ndarray | None, str | None]:
    """(uint8 HxWx3 pixels, None) or (None, the problem), worded as infer.py words it."""
    try:  # a local URI is read as its path: the runtime's reader refuses a FIFO or device unread
        source = path if not is_uri(path) else local_path(path) or read_uri_bytes(path)
    except FileNotFoundError:
        return None, "no such file"
    except OSError as e:
        return None, f"cannot read file ({first_line(e)})"
    try:
        img = open_image(source, max_pixels)
        if policy != "tiles":  # tiles: the scorer's Detector cuts them from the whole image
            img = apply_policy(img, policy, size)
        return np.asarray(img, dtype=np.uint8), None
    except ImageError as e:
        return None, e.problem
    except Exception as e:  # a decoder bug costs one record, not the run (as in the Detector)
        return None, f"{type(e).__name__}: {e}"


class Scorer:
    """One model replica: ``Scorer(model_files, model_name, sha256, driver_path, threads, **detector_options)(table)``."""

    def __init__(self, model_files: dict[str, bytes], model_name: str, model_sha256: str, driver_path: str | None,
                 threads: int, **detector_options):
        from .backends import make_runner
        from .detector import Detector

        if driver_path and same_model(driver_path, model_sha256):
            path = driver_path
        else:
            path = materialize(model_files, model_sha256)[model_name]
        # threads: a backend option (make_runner); workers, batching and the spec: the pipeline's (Detector)
        self.detector = Detector(make_runner(path, threads=threads), workers=1, **detector_options)

    def __call__(self, batch):
        import pyarrow as pa

        n = batch.num_rows
        logits, scores, labels = [None] * n, [None] * n, [None] * n
        errors = batch.column("error").to_pylist()
        todo = [i for i in range(n) if errors[i] is None]
        if todo:
            pixels = batch.column("pixels").combine_chunks()
            heights, widths = batch.column("height").to_pylist(), batch.column("width").to_pylist()
            arrays = [np.frombuffer(pixels[i].as_buffer(), np.uint8).reshape(heights[i], widths[i], 3) for i in todo]
            for i, record in zip(todo, self.detector.predict(arrays)):
                logits[i], scores[i], labels[i], errors[i] = record.logit, record.score, record.label, record.error
        return pa.table({"index": batch.column("index"), "logit": pa.array(logits, pa.float64()),
                         "score": pa.array(scores, pa.float64()), "label": pa.array(labels, pa.string()),
                         "error": pa.array(errors, pa.string())})


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
