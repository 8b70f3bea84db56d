"""Output records and their writers. One record per input; the format is a stable contract.

    {"path": str, "logit": float | null, "score": float | null, "label": "real" | "fake" | null,
     "error": str | null}

``score`` is sigmoid(logit); ``label`` is "fake" when the score is above the threshold.
A failed input keeps its path and carries its error, with the other fields null.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from typing import IO, Callable, Iterable, Iterator, Optional

FIELDS = ("path", "logit", "score", "label", "error")
FORMATS = ("jsonl", "csv", "table")


@dataclass
class Record:
    path: str
    logit: Optional[float] = None
    score: Optional[float] = None
    label: Optional[str] = None
    error: Optional[str] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def from_logit(cls, path: str, logit: float, threshold: float) -> "Record":
        logit = float(logit)
        score = sigmoid(logit)
        return cls(path=path, logit=logit, score=score, label="fake" if score > threshold else "real")

    @classmethod
    def failed(cls, path: str, error: str) -> "Record":
        return cls(path=path, error=error)

    def to_dict(self) -> dict:
        return asdict(self)


def in_input_order(inputs: list[str], errors: dict[str, str],
                   score: Callable[[list[str]], Iterable[Record]]) -> Iterator[Record]:
    """One record per input, in the order given: an argument that named nothing (``errors[path]``)
    keeps its place as an error record; the rest come from ``score(scorable)``, which yields one
    record per path, in order (infer.py's Detector and client.py's server alike)."""
    records = iter(score([p for p in inputs if p not in errors]))
    for path in inputs:
        yield Record.failed(path, errors[path]) if path in errors else next(records)


def sigmoid(x: float) -> float:
    # Written in the two stable forms: no overflow for logits of either sign.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


class RecordWriter:
    """Streams records to a text file in one of FORMATS, flushing each one (nothing is lost if
    a long run is interrupted)."""

    def __init__(self, stream: IO[str], fmt: str = "jsonl"):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; expected one of {FORMATS}")
        self.stream, self.fmt = stream, fmt
        self._csv = csv.DictWriter(stream, fieldnames=FIELDS, lineterminator="\n") if fmt == "csv" else None
        if self._csv:
            self._csv.writeheader()
        elif fmt == "table":
            stream.write(f"{'label':<6} {'score':>8} {'logit':>10}  path\n")

    def write(self, r: Record) -> None:
        if self.fmt == "jsonl":
            self.stream.write(json.dumps(r.to_dict()) + "\n")
        elif self._csv:
            self._csv.writerow({k: ("" if v is None else v) for k, v in r.to_dict().items()})
        elif r.ok:
            self.stream.write(f"{r.label:<6} {r.score:>8.4f} {r.logit:>10.4f}  {r.path}\n")
        else:
            self.stream.write(f"{'ERROR':<6} {'-':>8} {'-':>10}  {r.path}  ({r.error})\n")
        self.stream.flush()
