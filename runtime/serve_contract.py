"""The serving contract: what the Triton model ``lfm`` answers per image, whichever server runs it
(runtime/serve.py through PyTriton, or the model repository export/to_triton.py writes), so
runtime/client.py reads both one way.

    output  datatype   per image ([batch, 1])
    logit   FP64       the model's logit; FAILED_LOGIT where the image failed
    score   FP64       sigmoid(logit), as the runtime's records; FAILED_SCORE where it failed
    label   BYTES      b"fake" | b"real" at the model's threshold (``spec.is_fake``: score > threshold);
                       b"" where it failed
    error   BYTES      b"" when it was scored, else the problem, worded as infer.py's records word it
    flags   BYTES      the record's flags joined by ";" (b"upscaled:2.56;uncertain"), b"" for none and
                       where it failed (runtime/flags.py)

A bad image is its own answer (``error``), never a failed request: a request holds several
images, and Triton's dynamic batcher gathers requests of several clients into one batch.
Numpy and the records only: the repository's Python-backend models import it in NVIDIA's container.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .flags import NO_FACTS, ImageFacts, join_flags, record_flags
from .records import Record

OUTPUTS = (("logit", np.float64), ("score", np.float64), ("label", np.bytes_), ("error", np.bytes_),
           ("flags", np.bytes_))
OUTPUT_NAMES = tuple(name for name, _ in OUTPUTS)
# A failed item's logit and score: finite, because Triton's HTTP/JSON answer writes NaN as a bare
# `NaN`, which JSON does not have (JavaScript's JSON.parse, Go and Java refuse the whole answer);
# -1 is no sigmoid's value, so a score read without its `error` still shows it is none.
FAILED_LOGIT, FAILED_SCORE = 0.0, -1.0


def outputs(records: Sequence[Record]) -> dict[str, np.ndarray]:
    """One request's outputs, [n, 1] each, from its n records in order."""
    n = len(records)
    logit = np.full((n, 1), FAILED_LOGIT, dtype=np.float64)
    score = np.full((n, 1), FAILED_SCORE, dtype=np.float64)
    label = np.full((n, 1), b"", dtype=object)
    error = np.full((n, 1), b"", dtype=object)
    flags = np.full((n, 1), b"", dtype=object)
    for i, r in enumerate(records):
        if r.ok:
            logit[i, 0], score[i, 0], label[i, 0] = r.logit, r.score, r.label.encode()
            flags[i, 0] = join_flags(r.flags).encode()
        else:
            error[i, 0] = r.error.encode()
    return {"logit": logit, "score": score, "label": label, "error": error, "flags": flags}


def records_from_logits(logits: np.ndarray, errors: np.ndarray, threshold: float, facts: np.ndarray | None = None,
                        band: float = 0.0) -> list[Record]:
    """Per image, the model's logit (``Record.from_logit``: the score, label and flags of
    infer.py's records) or, where ``errors`` holds one (bytes or str, empty for none), that
    problem. facts: per image the preprocessing's ``facts_row`` ([n, 2]; None: none known);
    band: the ``uncertain`` flag's (``flags.model_band``)."""
    records = []
    rows = np.asarray(facts, dtype=np.float64).reshape(-1, 2) if facts is not None else [None] * len(logits)
    for logit, error, row in zip(np.asarray(logits).reshape(-1), np.asarray(errors, dtype=object).reshape(-1), rows):
        problem = error.decode("utf-8", "replace") if isinstance(error, (bytes, np.bytes_)) else str(error or "")
        if problem:
            records.append(Record.failed("", problem))
        else:
            image_facts = NO_FACTS if row is None else facts_from_row(row)
            flags = record_flags(image_facts, float(logit), threshold, band)
            records.append(Record.from_logit("", float(logit), threshold, flags))
    return records


# An image's facts as a tensor between the repository's preprocessing and postprocessing models:
# FP64 [2] = (upscale, JPEG quality or -1 for none).
FACTS_WIDTH = 2


def facts_row(facts: ImageFacts) -> list[float]:
    return [float(facts.upscale), -1.0 if facts.jpeg_quality is None else float(facts.jpeg_quality)]


def facts_from_row(row) -> ImageFacts:
    upscale, quality = (float(v) for v in row)
    return ImageFacts(upscale, None if quality < 0 else int(quality))
