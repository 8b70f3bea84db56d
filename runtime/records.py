"""Output records and their writers. One record per input; the format is a stable contract.

    {"path": str, "logit": float | null, "score": float | null, "label": "real" | "fake" | null,
     "error": str | null, "flags": [str, ...]}

``score`` is sigmoid(logit); ``label`` is "fake" when the score is strictly above the threshold
(``spec.is_fake``).
A failed input keeps its path and carries its error, with the other fields null and no flags.
``flags``: what is known to make this answer less trustworthy (``upscaled:2.56``,
``low-jpeg-quality:40``, ``uncertain``; see runtime/flags.py), empty when nothing is; a flag
never changes the label. JSONL writes a list, CSV one field joined by ";" (empty for none), the
table a column before the path ("-" for none).

File names need not be valid UTF-8 (a Latin-1 ``caf\xe9.png``); Python holds their odd bytes as
lone surrogates. JSONL writes them as JSON escapes (``"caf\udce9.png"``; ``os.fsencode`` of the
decoded string gives the name's bytes back); CSV and table write them as ``caf\xe9.png``, so the
output stays valid UTF-8 for the programs that read it and every record is written. A name may
also hold a newline: JSONL escapes it and CSV quotes it (both read back exactly); the table,
for eyes, writes control characters as ``ls -b`` does (``a\nb.png``), one row per record.
"""
from __future__ import annotations

import csv
import json
import math
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import IO, Callable, Iterable, Iterator, Optional

from .flags import join_flags
from .spec import is_fake

FIELDS = ("path", "logit", "score", "label", "error", "flags")  # flags last: the older columns keep their places
FORMATS = ("jsonl", "csv", "table")
FLAGS_WIDTH = 14  # the table's flags column, before the path (which may hold spaces): "upscaled:2.56" fits
# Output file extensions that choose a format when --format is not given.
FORMAT_BY_EXTENSION = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl", ".csv": "csv", ".txt": "table"}


def format_for(path: str | None, given: str | None) -> str:
    """The output format: the one given, else the output file's extension's, else jsonl."""
    if given:
        return given
    import os
    return FORMAT_BY_EXTENSION.get(os.path.splitext(path or "")[1].lower(), "jsonl")


def printable(text: str) -> str:
    """``text`` as valid UTF-8: a name's undecodable bytes (lone surrogates) become \\xNN."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape" if _only_escapes(text) else "backslashreplace").decode(
            "utf-8", "backslashreplace")


# Control characters in a table cell, as ``ls -b`` shows them; the others become \xNN or \uNNNN.
_CONTROL_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v", "\f": "\\f", "\b": "\\b", "\a": "\\a"}


def one_line(text: str) -> str:
    """``printable(text)`` that also keeps to one line: a name's control characters (newline,
    tab, ...) and line separators are written as escapes, as ``ls -b`` shows them."""
    return "".join(_escape(c) if unicodedata.category(c) in ("Cc", "Zl", "Zp") else c for c in printable(text))


def _escape(c: str) -> str:
    return _CONTROL_ESCAPES.get(c) or (f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}")


def _only_escapes(text: str) -> bool:
    """Every surrogate in text is one of surrogateescape's (U+DC80..U+DCFF, an undecodable byte)."""
    return all(not 0xD800 <= ord(c) <= 0xDFFF or 0xDC80 <= ord(c) <= 0xDCFF for c in text)


@dataclass
class Record:
    path: str
    logit: Optional[float] = None
    score: Optional[float] = None
    label: Optional[str] = None
    error: Optional[str] = None
    flags: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def from_logit(cls, path: str, logit: float, threshold: float, flags: Iterable[str] = ()) -> "Record":
        """The record of a scored image; ``flags`` are carried as given, the label is the threshold's alone."""
        logit = float(logit)
        score = sigmoid(logit)
        return cls(path=path, logit=logit, score=score, label="fake" if is_fake(score, threshold) else "real",
                   flags=list(flags))

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
            stream.write(f"{'label':<6} {'score':>8} {'logit':>10}  {'flags':<{FLAGS_WIDTH}}  path\n")

    def write(self, r: Record) -> None:
        if self.fmt == "jsonl":  # json escapes every non-ASCII character, surrogates included
            self.stream.write(json.dumps(r.to_dict()) + "\n")
        elif self._csv:
            row = {**r.to_dict(), "flags": join_flags(r.flags)}
            self._csv.writerow({k: ("" if v is None else printable(v) if isinstance(v, str) else v)
                                for k, v in row.items()})
        elif r.ok:
            flags = join_flags(r.flags) or "-"
            self.stream.write(f"{r.label:<6} {r.score:>8.4f} {r.logit:>10.4f}  {flags:<{FLAGS_WIDTH}}  "
                              f"{one_line(r.path)}\n")
        else:
            self.stream.write(f"{'ERROR':<6} {'-':>8} {'-':>10}  {'-':<{FLAGS_WIDTH}}  {one_line(r.path)}  "
                              f"({one_line(r.error)})\n")
        self.stream.flush()
