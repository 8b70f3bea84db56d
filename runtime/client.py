"""Score images through a Triton Inference Server serving LFM (runtime/serve.py, or the model
repository export/to_triton.py writes): one record per input, as runtime/infer.py writes them.

    python runtime/client.py PATHS... [--url http://127.0.0.1:8000 | grpc://127.0.0.1:8001]
                             [--model-name lfm] [--batch-size 8] [--format jsonl|csv|table] [-o FILE]

Files are read here and sent as encoded bytes (input ``image``, BYTES); the server decodes and
preprocesses them. PATHS are files, directories and globs, as for infer.py. Both servers answer
with one contract (``serve_contract``: logit, score, label at the model's own threshold, error,
flags per image), which the records carry as they come; --threshold T relabels each record from
its score instead ("fake" when score > T, as ``spec.is_fake``) and decides its ``uncertain`` flag
again around T (--uncertain-band, default the measured band of runtime/flags.py; the server's
other flags are kept). Exit status: 0 every input scored,
1 some failed, 2 the server could not be reached or has no such model.

Python API (tritonclient only: no torch, no model file needed here):

    from lfm.runtime.client import LfmClient
    with LfmClient("http://127.0.0.1:8000") as c:          # or "grpc://127.0.0.1:8001"
        records = c.score(["a.jpg", "b.png"])               # paths, bytes or uint8 HxWx3 arrays
        c.score_bytes([blob]); c.score_pixels(batch_nhwc)   # one request each
        c.ready(), c.live()

A request the server rejects as a whole (e.g. a wrong datatype) raises ``ServerError`` from
``score_bytes`` / ``score_pixels``; ``score`` turns it into error records for that request's
inputs, so a long list is never cut short.

Overload is not a failure of the input: a request the server sheds (its queue full, the request
past the queue's timeout, or the server shutting down; HTTP 503 / gRPC UNAVAILABLE, nothing
computed) raises ``ServerOverloaded``, a ``ServerError`` with ``retryable = True``: send it again
after a short backoff, ideally to another replica. ``score`` gives its inputs records whose
error starts with "rejected: " (``is_rejected(record)``); the command counts them apart.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from typing import Iterable, Sequence, Union

if __package__ in (None, ""):  # run as a script: runtime/ is sys.path[0]; import the installed package
    sys.path.pop(0)

import numpy as np  # noqa: E402

from lfm.runtime.flags import DEFAULT_UNCERTAIN_BAND, is_uncertain, parse_flags  # noqa: E402
from lfm.runtime.preprocess import ImageError, read_image_bytes  # noqa: E402  (Pillow + numpy, no model code)
from lfm.runtime.records import FORMATS, Record, in_input_order  # noqa: E402
from lfm.runtime.serve_contract import OUTPUT_NAMES  # noqa: E402  (numpy only)
from lfm.runtime.serve_defaults import MODEL_NAME  # noqa: E402
from lfm.runtime.spec import is_fake  # noqa: E402

IMAGE_INPUT, PIXELS_INPUT = "image", "pixels"
DEFAULT_URL = "http://127.0.0.1:8000"

Item = Union[str, os.PathLike, bytes, np.ndarray]


class ServerError(RuntimeError):
    """The server refused a request, or could not be reached."""

    retryable = False


class ServerOverloaded(ServerError):
    """The server shed the request without computing it: its queue was full, the request waited
    past the queue's timeout, or the server is shutting down. Retry after a short backoff."""

    retryable = True


# What Triton says when it sheds a request (its dynamic batcher's queue policy, or a stopping
# server); HTTP 503 / gRPC UNAVAILABLE. A gRPC UNAVAILABLE without one of these is a connection
# failure, which stays a ServerError.
SHED_MESSAGES = ("Exceeds maximum queue size", "Request timeout expired", "Server is stopping")
REJECTED = "rejected: "  # the start of a record's error when the server shed its request


def is_rejected(record: Record) -> bool:
    """Whether a record failed only because the server shed its request (worth a retry)."""
    return bool(record.error) and record.error.startswith(REJECTED)


def parse_url(url: str, protocol: str | None = None) -> tuple[str, str]:
    """'http://host:port' | 'grpc://host:port' | 'host:port' (+ protocol, default http) ->
    (protocol, 'host:port')."""
    if "://" in url:
        scheme, rest = url.split("://", 1)
        if scheme not in ("http", "grpc"):
            raise ValueError(f"unsupported URL scheme {scheme!r} in {url!r}: use http:// or grpc://")
        if protocol and protocol != scheme:
            raise ValueError(f"--protocol {protocol} contradicts the URL {url!r}")
        return scheme, rest.rstrip("/")
    return protocol or "http", url.rstrip("/")


class LfmClient:
    """A tritonclient HTTP or gRPC client for the ``lfm`` model. Not thread-safe: use one per
    thread (tritonclient's own advice for its HTTP client)."""

    def __init__(self, url: str = DEFAULT_URL, *, protocol: str | None = None, model: str = MODEL_NAME,
                 timeout: float = 60.0, threshold: float | None = None, uncertain_band: float | None = None):
        self.protocol, self.address = parse_url(url, protocol)
        self.model, self.timeout = model, timeout
        self.threshold = threshold  # None: the server's labels; else each record relabelled from its score
        # with a threshold: the band of the "uncertain" flag decided again around it
        self.uncertain_band = DEFAULT_UNCERTAIN_BAND if uncertain_band is None else uncertain_band
        try:
            if self.protocol == "grpc":
                import tritonclient.grpc as tc
            else:
                import tritonclient.http as tc
            from tritonclient.utils import InferenceServerException
        except ImportError as e:
            raise ImportError(f"the client needs tritonclient ({e}); install with: pip install -e '.[serve]'") from None

        self._tc, self._exc = tc, InferenceServerException
        if self.protocol == "grpc":
            self._client = tc.InferenceServerClient(self.address)
        else:
            self._client = tc.InferenceServerClient(self.address, connection_timeout=timeout, network_timeout=timeout)
        self._outputs: list[str] | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def close(self):
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- health ------------------------------------------------------------------------------
    def live(self) -> bool:
        try:
            return bool(self._client.is_server_live())
        except Exception:
            return False

    def ready(self) -> bool:
        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready(self.model))
        except Exception:
            return False

    def wait_ready(self, timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ready():
                return True
            time.sleep(0.2)
        return False

    def output_names(self) -> list[str]:
        """The serving contract's outputs (serve_contract: logit, score, label, error, flags), which
        serve.py and export/to_triton.py's repository both answer with; ServerError for a model
        without them."""
        if self._outputs is None:
            try:
                meta = self._client.get_model_metadata(self.model)
            except self._exc as e:
                raise ServerError(f"model {self.model!r} at {self.address}: {_message(e)}") from None
            except Exception as e:  # connection refused, unknown host, timeout
                raise ServerError(f"cannot reach {self.protocol}://{self.address} ({_reason(e)}); is the server "
                                  "running there?") from None
            names = [o.name for o in meta.outputs] if self.protocol == "grpc" else [o["name"] for o in meta["outputs"]]
            missing = [n for n in OUTPUT_NAMES if n not in names]
            if missing:
                raise ServerError(f"model {self.model!r} lacks the output(s) {', '.join(missing)} (it has "
                                  f"{', '.join(names)}): not LFM's serving contract; a repository written by an "
                                  "older export/to_triton.py: write it again")
            self._outputs = list(OUTPUT_NAMES)
        return self._outputs

    # -- inference ---------------------------------------------------------------------------
    def infer(self, name: str, data: np.ndarray, datatype: str) -> dict[str, np.ndarray]:
        """One request: input ``name`` = data (with its batch dimension) -> raw outputs."""
        tc = self._tc
        inp = tc.InferInput(name, list(data.shape), datatype)
        inp.set_data_from_numpy(data)
        outputs = [tc.InferRequestedOutput(n) for n in self.output_names()]
        try:
            kw = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
            result = self._client.infer(self.model, [inp], outputs=outputs, **kw)
        except self._exc as e:
            message = _message(e)
            if any(m in message for m in SHED_MESSAGES):
                why = "stopping" if "Server is stopping" in message else "overloaded"
                raise ServerOverloaded(f"server {why}, request shed ({message}); retry later") from None
            raise ServerError(message) from None
        except Exception as e:  # connection refused / reset, timeouts
            raise ServerError(f"connection to {self.protocol}://{self.address} failed ({_reason(e)})") from None
        out = {n: result.as_numpy(n) for n in self.output_names()}
        n = len(data)
        for k, v in out.items():
            if v is None or v.size != n:
                raise ServerError(f"output {k!r}: expected {n} values, got {None if v is None else v.shape}")
        return out

    def score_bytes(self, blobs: Sequence[bytes], names: Sequence[str] | None = None) -> list[Record]:
        """Encoded image files -> one request (input ``image``) -> one record each."""
        data = np.empty((len(blobs), 1), dtype=object)
        for i, b in enumerate(blobs):
            data[i, 0] = bytes(b)
        out = self.infer(IMAGE_INPUT, data, "BYTES")
        names = names or [f"<{len(b)} bytes>" for b in blobs]
        return self._records(out, names)

    def score_pixels(self, pixels: np.ndarray, names: Sequence[str] | None = None) -> list[Record]:
        """uint8 [N, H, W, 3] decoded RGB -> one request (input ``pixels``) -> one record each."""
        pixels = np.ascontiguousarray(pixels)
        out = self.infer(PIXELS_INPUT, pixels, "UINT8")
        names = names or [f"<array {'x'.join(map(str, pixels.shape[1:]))}>"] * len(pixels)
        return self._records(out, names)

    def score(self, items: Iterable[Item], batch_size: int = 8) -> list[Record]:
        """Paths, encoded bytes or uint8 HxWx3 arrays -> one record per item, in order. Paths are
        read here and sent as bytes, ``batch_size`` per request; arrays of one shape go together."""
        items = list(items)
        records: list[Record | None] = [None] * len(items)
        blobs: list[tuple[int, str, bytes]] = []
        arrays: dict[tuple, list[tuple[int, np.ndarray]]] = {}
        for i, item in enumerate(items):
            if isinstance(item, np.ndarray):
                arrays.setdefault(item.shape, []).append((i, item))
            elif isinstance(item, (bytes, bytearray, memoryview)):
                blobs.append((i, f"<{len(item)} bytes>", bytes(item)))
            else:
                path = os.fspath(item)
                try:  # the runtime's reader: the same messages, and a FIFO or device refused unread
                    blobs.append((i, path, read_image_bytes(path)))
                except ImageError as e:
                    records[i] = Record.failed(path, e.problem)
        for start in range(0, len(blobs), batch_size):
            chunk = blobs[start:start + batch_size]
            self._fill(records, [i for i, _, _ in chunk], [n for _, n, _ in chunk],
                       lambda: self.score_bytes([b for _, _, b in chunk], [n for _, n, _ in chunk]))
        for group in arrays.values():
            for start in range(0, len(group), batch_size):
                chunk = group[start:start + batch_size]
                names = [f"<array {'x'.join(map(str, a.shape))}>" for _, a in chunk]
                self._fill(records, [i for i, _ in chunk], names,
                           lambda: self.score_pixels(np.stack([a for _, a in chunk]), names))
        return records  # type: ignore[return-value]

    @staticmethod
    def _fill(records, indices, names, call):
        try:
            got = call()
        except ServerOverloaded as e:
            got = [Record.failed(n, f"{REJECTED}{e}") for n in names]
        except ServerError as e:
            got = [Record.failed(n, f"server: {e}") for n in names]
        for i, r in zip(indices, got):
            records[i] = r

    def _records(self, out: dict[str, np.ndarray], names: Sequence[str]) -> list[Record]:
        """The server's answer per image (serve_contract), as records; with ``threshold`` set,
        each label is decided again from the score (``spec.is_fake``: score > threshold), and the
        ``uncertain`` flag around it."""
        logit, score = (out[n].reshape(-1).astype(np.float64) for n in ("logit", "score"))
        label, error, flags = (out[n].reshape(-1) for n in ("label", "error", "flags"))
        records = []
        for i, name in enumerate(names):
            if _text(error[i]):
                records.append(Record.failed(name, _text(error[i])))
            elif not (math.isfinite(logit[i]) and 0.0 <= score[i] <= 1.0):
                records.append(Record.failed(name, "server returned no score"))
            elif self.threshold is None:
                records.append(Record(path=name, logit=float(logit[i]), score=float(score[i]), label=_text(label[i]),
                                      flags=parse_flags(flags[i])))
            else:
                kept = [f for f in parse_flags(flags[i]) if f != "uncertain"]
                uncertain = ["uncertain"] if is_uncertain(float(logit[i]), self.threshold, self.uncertain_band) else []
                records.append(Record(path=name, logit=float(logit[i]), score=float(score[i]),
                                      label="fake" if is_fake(score[i], self.threshold) else "real",
                                      flags=kept + uncertain))
        return records


def _text(v) -> str:
    return v.decode("utf-8", "replace") if isinstance(v, (bytes, np.bytes_)) else str(v)


def _reason(e: Exception) -> str:
    """Why a connection failed, in words: an OSError's reason without Python's "[Errno N]"."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def _message(e) -> str:
    msg = e.message() if callable(getattr(e, "message", None)) else str(e)
    status = e.status() if callable(getattr(e, "status", None)) else None
    return f"[{status}] {msg}" if status and not str(msg).startswith("[") else str(msg)


def parse_args(argv=None):
    from lfm.runtime.cli import ArgumentParser, add_path_arguments, seconds
    from lfm.runtime.options import OutputArgs, PipelineArgs, Renamed, ServerArgs, parse_and_check
    from lfm.runtime.records import format_for

    server = ServerArgs(only=("model_name",), help={"model_name": "Triton model name (serve.py --model-name)"})
    pipeline = PipelineArgs(only=("threshold", "batch_size", "uncertain_band"), defaults={"batch_size": 8}, help={
        "batch_size": "images per request",
        "threshold": "relabel every record from its score at this threshold (default: the server's labels, at the "
                     "model's own threshold)",
        "uncertain_band": "with --threshold: flag 'uncertain' the records whose logit lies within this many logits "
                          f"of that threshold's (default: {DEFAULT_UNCERTAIN_BAND:g}); without it the server's flags "
                          "are kept as they come"})
    output = OutputArgs(FORMATS, help={"output": "write records here instead of standard output (replaced when the "
                                                 "run ends; never an input)"})
    p = ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1])
    add_path_arguments(p)
    p.add_argument("--url", default=DEFAULT_URL, help="server, http://HOST:PORT or grpc://HOST:PORT")
    p.add_argument("--protocol", choices=("http", "grpc"), default=None, help="for a URL without a scheme (default: http)")
    p.add_argument("--timeout", type=seconds, default=60.0, help="seconds per request")
    p.add_argument("--model", action=Renamed, replacement="--model-name", help=argparse.SUPPRESS)
    for group in (server, pipeline, output):
        group.add_to(p)
    args = parse_and_check(p, argv, server, pipeline, output)
    if args.uncertain_band is not None and args.threshold is None:  # the server's threshold is not known here
        p.error("--uncertain-band applies with --threshold (the server flags 'uncertain' around its own threshold)")
    args.format = format_for(args.output, args.format)
    return args


def main(argv=None) -> int:
    from lfm.runtime.cli import read_path_arguments, summary_exit, write_records
    from lfm.runtime.files import output_problem, overwrite_refusal
    from lfm.runtime.inputs import expand_paths

    args = parse_args(argv)
    paths, list_errors = read_path_arguments(args.paths, null=args.null)
    expansion = expand_paths(paths, list_errors)
    for note in expansion.notes:
        print(f"note: {note}", file=sys.stderr)
    if args.output:
        problem = output_problem(args.output, "records.jsonl") or overwrite_refusal([args.output], expansion.inputs)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    try:
        client = LfmClient(args.url, protocol=args.protocol, model=args.model_name, timeout=args.timeout,
                           threshold=args.threshold, uncertain_band=args.uncertain_band)
        client.output_names()
    except (ValueError, ServerError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    rejected = []

    def score(items):
        records = client.score(items, batch_size=args.batch_size)
        rejected.extend(r for r in records if is_rejected(r))
        return records

    with client:
        records = in_input_order(expansion.inputs, expansion.errors, score)
        try:
            result = write_records(records, len(expansion.inputs), args.output, args.format, args.progress)
        except OSError as e:
            print(f"error: cannot write {args.output or 'the output'}: {e.strerror or e}", file=sys.stderr)
            return 2
    if rejected:  # not the inputs' fault: the same files may well score on a retry
        print(f"note: {len(rejected)} of the failed inputs were rejected by an overloaded server (errors "
              f"starting '{REJECTED.strip()}'); send them again later", file=sys.stderr)
    return summary_exit(result, len(expansion.inputs), args.output, f"via {client.protocol}://{client.address}")


if __name__ == "__main__":
    from lfm.runtime.cli import run

    sys.exit(run(main))
