"""Serve LFM behind NVIDIA Triton Inference Server, started through PyTriton.

    python runtime/serve.py --model lfm.onnx [--host 127.0.0.1] [--http-port 8000]
                            [--grpc-port 8001] [--metrics-port 8002] [--instances 2]
                            [--max-batch-size 32] [--preferred-batch-sizes 8,16]
                            [--max-queue-delay-us 2000] [--max-request-bytes 67108864]
                            [--max-queue-size 40] [--queue-timeout-ms 5000]
                            [--model-name lfm] [--decode threads|processes|gpu] ...
    python runtime/serve.py --checkpoint ckpt.pt ...     (PyTorch, the reference backend)
    python runtime/serve.py --engine lfm.plan ...        (TensorRT, where the runtime has it)

A real Triton Inference Server (the binary bundled in the `nvidia-pytriton` wheel; it runs on
the CPU too) serves one model, ``lfm`` (--model-name), backed by the runtime's Detector: the
same decoding, preprocessing and backends as runtime/infer.py, so a file scores the same
through either. --decode processes decodes the ``image`` input in worker processes (--workers
per instance, into shared memory; scales with cores), --decode gpu decodes its JPEGs by nvJPEG,
as infer.py --decode does.

Model ``lfm`` (max_batch_size > 0: every tensor below has a leading batch dimension)

    inputs   image   BYTES [1]         encoded image files (PNG, JPEG, ...), decoded server-side
             pixels  UINT8 [-1, -1, 3] decoded RGB arrays (H, W >= the model's minimum, 48 for K=16);
                                       the model's policy is applied as the runtime does for arrays
                                       (a no-op for arrays already at the model's size)
             (a request sends one of the two)
    outputs  logit   FP64 [1]          0 where the item failed
             score   FP64 [1]          sigmoid(logit); -1 (never a score) where the item failed
             label   BYTES [1]         b"fake" | b"real" | b"" (failed)
             error   BYTES [1]         b"" on success, else what was wrong with this item
             (no NaN: JSON has none, and Triton's HTTP answer would carry a bare NaN that strict
             JSON parsers refuse for the whole response; read ``error`` first)

Errors. Triton itself rejects what breaks the model's signature (a wrong datatype, a wrong
rank or channel count) with an error response before the model runs. What only decoding can
tell (garbage bytes, an empty file, a decompression bomb, an image too small, a request over
--max-request-bytes) is answered per item in ``error``, the runtime's record contract (one
record per input, the error in its place): Triton's dynamic batcher hands the model requests
from different clients together, and PyTriton can only fail such a group as a whole, so one
client's bad image must not be raised as an exception. Triton's HTTP and gRPC front ends of
this build have no body-size option: a request over the limit is still received, then
refused unread; for a hard cap at the transport, put a proxy with one in front.

Operations: dynamic batching (--max-batch-size, --preferred-batch-sizes,
--max-queue-delay-us), --instances model instances (each with its own Detector and backend
session), Triton's health endpoints (/v2/health/live, /v2/health/ready, gRPC ServerLive /
ServerReady / ModelReady) and Prometheus metrics on --metrics-port (/metrics). SIGTERM or SIGINT
stops gracefully: Triton stops taking requests, finishes those in flight (up to
--exit-timeout seconds), then the process exits 0.

Load shedding: the dynamic batcher's queue is bounded (--max-queue-size requests, and
--queue-timeout-ms for a request to leave the queue); beyond that Triton refuses a request at
once (HTTP 503 / gRPC UNAVAILABLE, "Exceeds maximum queue size" or "Request timeout expired"),
which runtime/client.py raises as ServerOverloaded: retry it later. 0 turns a bound off.

Supervision (runtime/serve_health.py): once serving, serve.py watches tritonserver and each
instance's Python-backend stub, sends a small image through its own endpoint every
--health-interval seconds, flags an instance stuck in one batch for --hang-timeout seconds, and
a watchdog process kills a stopped or hung serve.py after --watchdog-timeout seconds. Triton's
readiness does not see a dead or stopped stub, and Triton does not restart one; so on any of
these faults serve.py stops Triton at once (its ports close: not live, not ready) and exits with
status 3, for a supervisor (systemd Restart=on-failure, Kubernetes, Docker) to start it afresh.

The Python backend fix (why PyTriton's shared-memory path failed here with "'_thread.RLock'
object has no attribute '_recursion_count'"): see ``fix_python_backend_libpython``.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import io
import logging
import os
import re
import signal
import socket
import sys
import sysconfig
import threading
import time

if __package__ in (None, "") and sys.path and os.path.realpath(sys.path[0] or ".") == os.path.dirname(
        os.path.realpath(__file__)):  # run as a script: runtime/ is sys.path[0]; import the installed package
    # (only then: a decoding process spawned by --decode processes runs this module again as
    # __mp_main__, with serve.py's sys.path, whose first entry it must keep)
    sys.path.pop(0)

import numpy as np  # noqa: E402

from lfm.runtime.backends import BackendError, backends_for, make_runner, source_from_flags  # noqa: E402
from lfm.runtime.backends.openvino_rt import OPENVINO_PRECISIONS  # noqa: E402
from lfm.runtime.cli import ArgumentParser, run  # noqa: E402
from lfm.runtime.detector import DECODE_MODES, Detector, default_workers, usable_cpus  # noqa: E402
from lfm.runtime.preprocess import DEFAULT_MAX_PIXELS  # noqa: E402
from lfm.runtime import serve_defaults as defaults  # noqa: E402
from lfm.runtime.records import Record  # noqa: E402
from lfm.runtime.spec import POLICIES, check_input_size, min_input_size  # noqa: E402
from lfm.runtime.serve_health import (FAULT_EXIT_STATUS, InferenceProbe, Supervision,  # noqa: E402
                                     WatchedModel)

LOG = logging.getLogger("lfm.serve")

MODEL_NAME = "lfm"
IMAGE_INPUT, PIXELS_INPUT = "image", "pixels"
OUTPUT_NAMES = ("logit", "score", "label", "error")
# A failed item's logit and score: finite, because Triton's HTTP/JSON answer writes NaN as a bare
# `NaN`, which JSON does not have (JavaScript's JSON.parse, Go and Java refuse the whole answer);
# -1 is no sigmoid's value, so a score read without its `error` still shows it is none.
FAILED_LOGIT, FAILED_SCORE = 0.0, -1.0
# Newer Triton servers cap HTTP bodies with --http-max-input-size (default 64 MiB); the server
# PyTriton bundles has no such option, so the model applies the same limit per request.
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
# The health probe waits as long as an accepted request may: the queue's timeout (past it the
# probe is refused as overloaded, which is no failure), then this for its own batch.
PROBE_BATCH_S = 5.0
# PyTriton waits 30 s for tritonserver to exit after SIGINT, then kills it: stay below.
MAX_EXIT_TIMEOUT_S = 25


# --------------------------------------------------------------------------------------------
# The Python backend's interpreter


def fix_python_backend_libpython() -> str:
    """Make Triton's Python-backend stub run this interpreter's own libpython.

    Root cause of "'_thread.RLock' object has no attribute '_recursion_count'": PyTriton runs
    each model instance in Triton's Python-backend stub, a separate executable linked against
    ``libpython3.X.so.1.0`` and found by the dynamic loader. Its RPATH holds no libpython, so
    the loader takes the first one on LD_LIBRARY_PATH, else the system's (ld.so.cache), while
    the stub's sys.path is *this* interpreter's standard library (PyTriton puts its bin folder
    first on PATH). Where the two differ (here: Debian's libpython3.11 3.11.2 in /usr/lib, found
    through ld.so.cache, and pyenv's 3.11.7; seen in /proc/<stub>/maps), the stub runs a 3.11.2
    core under 3.11.7's pure-Python modules. 3.11.7's
    ``multiprocessing.resource_tracker`` calls ``RLock._recursion_count()``, which the 3.11.2
    C RLock lacks (added with the resource-tracker reentrancy fix, CPython gh-109593 / PR 109629,
    in 3.11.6 and 3.12.1; PyTriton issue #51 reports the same error "since 3.11.7, fine on
    3.11.5"): PyTriton's default serializer, TensorStore,
    keeps tensors in shared memory through multiprocessing and so fails as soon as a model
    instance starts. ``PYTRITON_NO_TENSORSTORE=1`` switches to base64 over ZeroMQ, which avoids
    that one call but keeps the mismatched interpreter (any other difference between the two
    builds would still bite) and copies every tensor through base64.

    The fix: put the directory holding this interpreter's libpython first on LD_LIBRARY_PATH
    before Triton starts (PyTriton passes its environment on to tritonserver and the stubs), so
    the stub links the same build as its standard library; TensorStore then works. Where this
    interpreter has no shared libpython (a static build), fall back to the switch, with a
    warning. Returns what was done: "libpython", "no-tensorstore" or "already" (set by the user).
    """
    if os.environ.get("PYTRITON_NO_TENSORSTORE"):
        return "already"
    soname = f"libpython{sys.version_info[0]}.{sys.version_info[1]}.so.1.0"
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    if libdir and os.path.isfile(os.path.join(libdir, soname)):
        paths = [p for p in os.environ.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
        if not paths or os.path.realpath(paths[0]) != os.path.realpath(libdir):
            os.environ["LD_LIBRARY_PATH"] = os.pathsep.join([libdir] + [p for p in paths if p != libdir])
        return "libpython"
    LOG.warning("this Python (%s) has no shared %s: Triton's Python backend may load another build of "
                "Python %d.%d; using PyTriton's base64 serializer (PYTRITON_NO_TENSORSTORE=1)",
                sys.executable, soname, *sys.version_info[:2])
    os.environ["PYTRITON_NO_TENSORSTORE"] = "1"
    return "no-tensorstore"


@contextlib.contextmanager
def own_process_group():
    """Start tritonserver in a process group of its own (its Python-backend stubs and their
    TensorStore processes follow it). A signal sent to serve.py's whole group (Ctrl-C in a
    terminal, ``timeout``, ``kill -- -PGID``) then reaches serve.py alone, which stops Triton in
    order; otherwise the same SIGTERM kills the stubs' TensorStore process at once and the
    requests in flight fail (seen here). PyTriton starts tritonserver through ``sh``, whose
    default for ``_new_group`` is set for the duration."""
    try:
        import sh

        defaults = sh.Command._call_args
        previous = defaults["new_group"]
    except (ImportError, AttributeError, KeyError):  # another sh: leave it be
        yield False
        return
    defaults["new_group"] = True
    try:
        yield True
    finally:
        defaults["new_group"] = previous


# What tritonserver (2.51, as bundled) prints at every start on a machine without a CUDA driver,
# and what it prints for every model PyTriton loads: expected, not faults. No option removes
# them: the GPU build creates its CUDA block manager unconditionally and logs the failure at
# error level, then serves on (core server.cc); PyTriton loads its model with the config in the
# load request, which 2.51 logs at error level (PyTriton lists it under "benign issues").
EXPECTED_TRITON_LINES = {
    '"CudaDriverHelper has not been initialized."': "no CUDA driver",
    '"Unable to allocate pinned system memory, pinned memory pool will not be available: '
    'CUDA driver version is insufficient for CUDA runtime version"': "no CUDA driver",
    '"Failed to set config modification time: model_config_content_name_ is empty"':
        "a model loaded with its config in the request",
}
TRITON_LOG_LINE = re.compile(r"^[EWI]\d{4} \S+ +\d+ \S+:\d+\] (.*)$")


def expected_triton_line(line: str) -> str | None:
    """Why ``line`` (one line of tritonserver's log) is expected here, or None for any other line."""
    m = TRITON_LOG_LINE.match(line.rstrip("\r\n"))
    return EXPECTED_TRITON_LINES.get(m.group(1)) if m else None


@contextlib.contextmanager
def expected_triton_lines_left_out():
    """Leave EXPECTED_TRITON_LINES out of the tritonserver output PyTriton prints, for a server
    started within; yields the list of the reasons of those left out (serve.py says once what
    was left out). PyTriton hands its log callback to ``sh`` when tritonserver starts, so the
    callback is swapped for the duration; it gets unbuffered chunks, put together into lines."""
    left_out: list[str] = []
    try:
        from pytriton.server.triton_server import TritonServer

        record = TritonServer._record_logs
    except (ImportError, AttributeError):  # another PyTriton: its output as it is
        yield left_out
        return
    pending = [""]

    def record_lines(server, chunk):
        text = chunk.decode("utf-8", errors="replace") if isinstance(chunk, bytes) else chunk
        *lines, pending[0] = (pending[0] + text).split("\n")
        for line in lines:
            why = expected_triton_line(line)
            if why:
                left_out.append(why)
            else:
                record(server, line + "\n")

    TritonServer._record_logs = record_lines
    try:
        yield left_out
    finally:
        TritonServer._record_logs = record


def stub_libpythons() -> dict[int, list[str]]:
    """pid -> libpython files mapped by each running Python-backend stub (Linux /proc);
    a diagnostic for the fix above (tests check the stub maps this interpreter's)."""
    found = {}
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            with open(cmdline, "rb") as f:
                argv0 = f.read().split(b"\0")[0]
            if not argv0.endswith(b"triton_python_backend_stub"):
                continue
            with open(cmdline[:-len("cmdline")] + "maps") as f:
                libs = sorted({line.split()[-1] for line in f if "libpython" in line})
        except OSError:
            continue
        found[int(cmdline.split("/")[2])] = libs
    return found


# --------------------------------------------------------------------------------------------
# The model: Triton requests -> Detector -> per-item outputs


class LfmModel:
    """One model instance's inference callable (PyTriton, unbatched signature: a list of
    requests in, one output dict per request out). Each instance owns a Detector."""

    def __init__(self, detector: Detector, max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES):
        self.detector = detector
        self.max_request_bytes = max_request_bytes

    def __call__(self, requests) -> list[dict[str, np.ndarray]]:
        items: list = []
        plans: list[list] = []  # per request: per item, an index into items or an error string
        for request in requests:
            plans.append(self._plan(dict(request.items()), items))
        records = self.detector.predict(items) if items else []
        return [self._outputs(plan, records) for plan in plans]

    def _plan(self, inputs: dict[str, np.ndarray], items: list) -> list:
        image, pixels = inputs.get(IMAGE_INPUT), inputs.get(PIXELS_INPUT)
        n = len(image) if image is not None else len(pixels) if pixels is not None else 0
        if image is not None and pixels is not None:
            return [f"send either '{IMAGE_INPUT}' or '{PIXELS_INPUT}' in one request, not both"] * max(
                len(image), len(pixels))
        if image is None and pixels is None:
            return []
        size = (sum(len(b) for b in image.reshape(-1) if isinstance(b, (bytes, bytearray)))
                if image is not None else pixels.nbytes)
        if size > self.max_request_bytes:
            return [f"request of {size} bytes exceeds the limit of {self.max_request_bytes} bytes"] * n
        plan = []
        if image is not None:
            if image.ndim != 2 or image.shape[1] != 1:
                return [f"'{IMAGE_INPUT}' must be [batch, 1], got {list(image.shape)}"] * n
            for blob in image[:, 0]:
                if not isinstance(blob, (bytes, bytearray)):
                    plan.append(f"expected encoded image bytes, got {type(blob).__name__}")
                elif not blob:
                    plan.append("empty file (0 bytes)")
                else:
                    plan.append(len(items))
                    items.append(bytes(blob))
            return plan
        # pixels: Triton has already checked the datatype (UINT8) and [batch, H, W, 3]
        if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[3] != 3:
            return [f"'{PIXELS_INPUT}' must be uint8 [batch, H, W, 3], got {pixels.dtype} {list(pixels.shape)}"] * n
        h, w = pixels.shape[1:3]
        try:
            check_input_size(h, w, self.detector.spec.top_k)
        except ValueError as e:
            return [str(e)] * n
        if h * w > self.detector.max_pixels:
            return [f"{w}x{h} = {w * h} pixels exceeds the limit of {self.detector.max_pixels}"] * n
        for a in pixels:
            plan.append(len(items))
            items.append(np.ascontiguousarray(a))
        return plan

    @staticmethod
    def _outputs(plan: list, records: list[Record]) -> dict[str, np.ndarray]:
        n = len(plan)
        logit = np.full((n, 1), FAILED_LOGIT, dtype=np.float64)
        score = np.full((n, 1), FAILED_SCORE, dtype=np.float64)
        label = np.full((n, 1), b"", dtype=object)
        error = np.full((n, 1), b"", dtype=object)
        for i, slot in enumerate(plan):
            if isinstance(slot, str):
                error[i, 0] = slot.encode()
                continue
            r = records[slot]
            if r.ok:
                logit[i, 0], score[i, 0], label[i, 0] = r.logit, r.score, r.label.encode()
            else:
                error[i, 0] = r.error.encode()
        return {"logit": logit, "score": score, "label": label, "error": error}


# --------------------------------------------------------------------------------------------
# Command line

# PyTriton's own rule for model names (Triton.bind refuses others, after Triton has started).
MODEL_NAME_PATTERN = re.compile(r"^[a-zA-Z0-9._-]+$")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The docstring's layout kept, and every option's default in its help: appended as
    "(default: X)" unless the help already says what the default is (options whose default
    None stands for something, e.g. "the model's")."""

    def _get_help_string(self, action):
        text = action.help or ""
        if not action.option_strings or "(default" in text or action.default is argparse.SUPPRESS:
            return text
        if action.nargs == 0 and action.default is False:  # a store_true flag
            return f"{text} (default: off)".strip()
        if action.default is None:
            return text
        return f"{text} (default: %(default)s)".strip()


def int_in(low: int, high: int | None = None, problem: str = "out of range"):
    """An argparse type: an integer in [low, high] (no upper bound for None), refused in one
    line naming the accepted range."""
    expected = f"{low}..{high}" if high is not None else f">= {low}"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is {problem} (expected {expected})")
        return value

    return parse


port = int_in(1, 65535, "not a TCP port")
at_least_1 = int_in(1)
at_least_0 = int_in(0)


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is out of range (expected a number in [0, 1])")
    return value


def seconds(text: str) -> float:
    """An argparse type: a finite number of seconds >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not 0.0 <= value < float("inf"):  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text} is out of range (expected seconds >= 0)")
    return value


def model_name(text: str) -> str:
    if not MODEL_NAME_PATTERN.match(text) or set(text) == {"."}:
        raise argparse.ArgumentTypeError(f"{text!r} is not a valid Triton model name: use letters, digits, "
                                         "'.', '_' and '-' only")
    return text


def parse_args(argv=None):
    doc = __doc__.split("\n\n")
    p = ArgumentParser(description=doc[0], epilog="\n\n".join(doc[1:3]), formatter_class=HelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="ONNX", help="exported ONNX model (ONNX Runtime, or --backend openvino)")
    src.add_argument("--engine", metavar="PLAN", help="TensorRT engine (needs an NVIDIA GPU and the [tensorrt] extra)")
    src.add_argument("--checkpoint", metavar="CKPT", help="PyTorch checkpoint (needs the [train] extra)")
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1",
                     help="address for HTTP, gRPC and metrics; 0.0.0.0 for every interface")
    net.add_argument("--http-port", type=port, metavar="PORT", default=8000, help="Triton's HTTP/REST endpoint")
    net.add_argument("--grpc-port", type=port, metavar="PORT", default=8001, help="Triton's gRPC endpoint")
    net.add_argument("--metrics-port", type=port, metavar="PORT", default=8002, help="Prometheus metrics, at /metrics")
    tr = p.add_argument_group("Triton")
    tr.add_argument("--model-name", type=model_name, default=MODEL_NAME, metavar="NAME",
                    help="Triton model name to serve under; clients name it too: runtime/client.py --model NAME")
    tr.add_argument("--instances", metavar="N", type=at_least_1, default=defaults.INSTANCES,
                    help="model instances, each with its own Detector and backend session")
    tr.add_argument("--max-batch-size", metavar="N", type=at_least_1, default=defaults.MAX_BATCH_SIZE,
                    help="largest batch the dynamic batcher forms, counted in images")
    tr.add_argument("--preferred-batch-sizes", metavar="N,N",
                    default=",".join(map(str, defaults.PREFERRED_BATCH_SIZES)),
                    help="dynamic batcher's preferred batch sizes, comma-separated ('' for none)")
    tr.add_argument("--max-queue-delay-us", metavar="US", type=at_least_0,
                    default=defaults.MAX_QUEUE_DELAY_US,
                    help="how long a request may wait for others to batch with, microseconds")
    tr.add_argument("--max-queue-size", metavar="N", type=at_least_0, default=defaults.MAX_QUEUE_SIZE,
                    help="requests the dynamic batcher's queue holds; more are refused at once (HTTP 503 / gRPC "
                         "UNAVAILABLE, 'Exceeds maximum queue size'); the default holds "
                         f"{defaults.CLOSED_LOOP_CLIENTS} clients with a request each; 0: unbounded")
    tr.add_argument("--queue-timeout-ms", metavar="MS", type=at_least_0, default=defaults.QUEUE_TIMEOUT_MS,
                    help="a request still queued after this long is refused ('Request timeout expired'): a backstop "
                         "for a backend that slows down; 0: never")
    tr.add_argument("--allow-timeout-override", action="store_true",
                    help="let a request set its own queue timeout (Triton's 'timeout' request parameter)")
    tr.add_argument("--max-request-bytes", metavar="BYTES", type=at_least_1, default=DEFAULT_MAX_REQUEST_BYTES,
                    help="larger requests get an error per item, not decoded (default: %(default)s = 64 MiB)")
    tr.add_argument("--exit-timeout", type=int_in(0, MAX_EXIT_TIMEOUT_S), default=20,
                    metavar="S", help=f"on SIGTERM, wait this long for in-flight requests, seconds, at most {MAX_EXIT_TIMEOUT_S}")
    tr.add_argument("--log-verbose", metavar="N", type=at_least_0, default=0, help="Triton's verbose log level")
    tr.add_argument("--no-self-test", action="store_true",
                    help="skip the start-up request that checks the server answers as the local Detector does")
    sv = p.add_argument_group("supervision (a fault stops Triton and exits with status 3; see runtime/serve_health.py)")
    sv.add_argument("--health-interval", metavar="S", type=seconds, default=1.0,
                    help="seconds between health probes, one small image through the server's own endpoint; 0: none")
    sv.add_argument("--hang-timeout", metavar="S", type=seconds, default=60.0,
                    help="an instance busy with one batch for longer is wedged: a fault")
    sv.add_argument("--watchdog-timeout", metavar="S", type=seconds, default=5.0,
                    help="a watchdog process kills tritonserver and serve.py when serve.py is stopped or hung this "
                         "long; 0: no watchdog")
    rt = p.add_argument_group("runtime (as runtime/infer.py)")
    rt.add_argument("--threshold", metavar="T", type=fraction, default=None,
                    help="score above which an image is 'fake', in [0, 1] (default: the model's)")
    rt.add_argument("--policy", choices=POLICIES, default=None,
                    help="preprocessing: resize, center-crop, none (native size) or tiles (default: the model's)")
    rt.add_argument("--size", metavar="PX", type=int, default=None, help="side for resize / center-crop / tiles (default: the model's)")
    rt.add_argument("--tile-reduce", choices=("max", "mean"), default="max",
                    help="--policy tiles: image logit = max or mean of its tiles' logits")
    rt.add_argument("--max-tiles", metavar="N", type=at_least_1, default=64, help="--policy tiles: at most this many tiles per image")
    rt.add_argument("--max-pixels", metavar="N", type=at_least_1, default=DEFAULT_MAX_PIXELS,
                    help="refuse larger images (decompression bombs)")
    rt.add_argument("--workers", metavar="N", type=at_least_1, default=None,
                    help="decoding threads per instance, or processes with --decode processes "
                         "(default: usable cores / instances; threads at most 8)")
    rt.add_argument("--decode", choices=DECODE_MODES, default="threads",
                    help="how the 'image' input (encoded bytes) is decoded: in threads; processes = in worker "
                         "processes into shared memory, --workers per instance, scales with cores: for a GPU host "
                         "with many cores; gpu = JPEGs by nvJPEG, other files on the CPU (needs CUDA + torchvision; "
                         "scores differ slightly from CPU decoding)")
    rt.add_argument("--threads", metavar="N", type=at_least_1, default=None,
                    help="backend intra-op threads per instance (default: cores / instances)")
    rt.add_argument("--providers", default=None,
                    help="--model: comma-separated onnxruntime providers (default: TensorRT, CUDA, CPU as available)")
    rt.add_argument("--backend", choices=backends_for("model"), default=None,
                    help="--model: onnxruntime or openvino (default: onnxruntime)")
    rt.add_argument("--precision", choices=OPENVINO_PRECISIONS, default="auto",
                    help="--backend openvino: inference precision (auto: the one that keeps the fp32 model's decisions)")
    rt.add_argument("--device", default="auto", help="--checkpoint: torch device")
    rt.add_argument("--cuda-graphs", action="store_true",
                    help="--engine, --checkpoint on a GPU: replay each batch shape as a CUDA graph")
    rt.add_argument("--kernels", action="store_true",
                    help="--checkpoint: run through our Triton kernels (TritonLFM, float16; needs a CUDA GPU)")
    args = p.parse_args(argv)
    try:
        args.preferred = [int(s) for s in args.preferred_batch_sizes.split(",") if s.strip()]
    except ValueError:
        p.error(f"--preferred-batch-sizes: expected comma-separated integers, got {args.preferred_batch_sizes!r}")
    if any(b < 1 or b > args.max_batch_size for b in args.preferred):
        p.error(f"--preferred-batch-sizes must lie in [1, --max-batch-size={args.max_batch_size}]")
    if args.cuda_graphs and not (args.engine or args.checkpoint):
        p.error("--cuda-graphs is for --engine or --checkpoint")
    if args.kernels and not args.checkpoint:
        p.error("--kernels runs a PyTorch checkpoint through the Triton kernels: give --checkpoint")
    ports = {"--http-port": args.http_port, "--grpc-port": args.grpc_port, "--metrics-port": args.metrics_port}
    for a, b in [("--http-port", "--grpc-port"), ("--http-port", "--metrics-port"), ("--grpc-port", "--metrics-port")]:
        if ports[a] == ports[b]:
            p.error(f"{a} and {b} are both {ports[a]}: each endpoint needs a port of its own")
    return args


def runner_kwargs(args, instances: int) -> dict:
    """make_runner's arguments for one instance: which model, which backend, its options (threads:
    the cores shared among the instances unless given; only the CPU backends use it)."""
    source, backend = source_from_flags(args.checkpoint, args.model, args.engine, args.backend)
    return dict(source=source, backend=backend, device=args.device, precision=args.precision,
                threads=args.threads or max(1, (os.cpu_count() or 1) // instances),
                providers=args.providers, kernels=args.kernels,
                cuda_graphs=args.cuda_graphs)


def detector_kwargs(args, instances: int) -> dict:
    """Keyword arguments for one instance's Detector: how its pipeline runs."""
    return dict(threshold=args.threshold, policy=args.policy, size=args.size, batch_size=args.max_batch_size,
                workers=args.workers or max(1, min(default_workers(args.decode), usable_cpus() // instances)),
                max_pixels=args.max_pixels, tile_reduce=args.tile_reduce, max_tiles=args.max_tiles,
                decode=args.decode)


def check_ports_free(host: str, ports: list[int]) -> None:
    for port in ports:
        with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, port))
            except OSError as e:
                raise OSError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None


SELF_TEST_SIZE = (96, 80)  # width, height of the start-up image where the model's spec allows


def self_test_image(spec) -> bytes:
    """A deterministic noise PNG for the start-up check that the model's spec accepts: 96 x 80,
    grown to the spec's minimum input (top-k) on each side, and to its size for center-crop and
    tiles (which refuse smaller images / need one whole tile)."""
    from PIL import Image

    side = min_input_size(spec.top_k)
    if spec.policy in ("center-crop", "tiles"):
        side = max(side, spec.size)
    w, h = (max(n, side) for n in SELF_TEST_SIZE)
    a = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def records_agree(served: Record, local: Record) -> bool:
    """The server answers as the local Detector does: the same logit and score, or the same
    error (e.g. an image over --max-pixels: both refuse it, which is agreement, not a fault)."""
    if served.ok and local.ok:
        return served.logit == local.logit and served.score == local.score
    return not served.ok and not local.ok and served.error == local.error


def local_reference(detectors: list[Detector]) -> tuple[bytes, Record]:
    """The self-test image and the first instance's record for it: what the self-test and the
    health probe expect from the server. Every instance scores it once, here, before Triton
    starts: nothing else uses the Detectors yet (a Detector is one instance's, and a
    decode="processes" pool serves one thread at a time), and with --decode processes each
    instance's decoding processes start now, not on the first request (or fail the start)."""
    blob = self_test_image(detectors[0].spec)
    records = [d.predict([blob])[0] for d in detectors]
    return blob, records[0]


def self_test(url: str, detector: Detector, model: str = MODEL_NAME,
              reference: tuple[bytes, Record] | None = None) -> str:
    """Score one image through the running server and locally; raise unless they agree exactly.
    Catches a server that answers but returns nothing (e.g. PyTriton <= 0.5.7 under numpy 2:
    every output arrives empty). ``reference``: local_reference's (image, record), computed
    before the server started; without it ``detector`` scores the image now."""
    from lfm.runtime.client import LfmClient, ServerError

    blob, local = reference or local_reference([detector])
    with LfmClient(url, model=model, timeout=60.0) as client:
        try:
            (served,) = client.score_bytes([blob])
        except ServerError as e:
            hint = ("; PyTriton's Python backend returns empty outputs under numpy 2: install nvidia-pytriton>=0.5.8, "
                    "which pins numpy<2 (pip install -e '.[serve]')") if int(np.__version__.split(".")[0]) >= 2 else ""
            raise RuntimeError(f"start-up self-test failed: {e}{hint}") from None
    if not records_agree(served, local):
        raise RuntimeError(f"start-up self-test failed: server answered {served.to_dict()}, "
                           f"the local Detector {local.to_dict()}")
    if not served.ok:
        return f"self-test: server and local Detector agree (both refuse the test image: {served.error})"
    return f"self-test: server and local Detector agree (logit {served.logit:.6f})"


def dynamic_batcher(args):
    """PyTriton's DynamicBatcher from the options: batching, and the queue policy that bounds
    the queue (--max-queue-size, --queue-timeout-ms: over either, a request is refused at once)."""
    from pytriton.model_config import DynamicBatcher, QueuePolicy, TimeoutAction

    policy = None
    if args.max_queue_size or args.queue_timeout_ms or args.allow_timeout_override:
        policy = QueuePolicy(timeout_action=TimeoutAction.REJECT, max_queue_size=args.max_queue_size,
                             default_timeout_microseconds=args.queue_timeout_ms * 1000,
                             allow_timeout_override=args.allow_timeout_override)
    return DynamicBatcher(preferred_batch_size=args.preferred or None,
                          max_queue_delay_microseconds=args.max_queue_delay_us, default_queue_policy=policy)


def probe_timeout(args) -> float:
    """How long the health probe waits for its answer: as long as an accepted request may take,
    the queue's timeout (--hang-timeout without one) plus its own batch. Shorter, a server that
    is only slow looks broken: probes timed out behind a deep queue, three in a row were a fault
    and a healthy server exited 3 (reproduced in tests/test_serve_faults.py)."""
    queued_s = args.queue_timeout_ms / 1000 if args.queue_timeout_ms else args.hang_timeout
    return queued_s + PROBE_BATCH_S


def start_supervision(args, url: str, triton, models: list, detector: Detector, on_fault,
                      reference: tuple[bytes, Record] | None = None):
    """The watch on tritonserver, its stubs and serve.py itself (runtime/serve_health.py), with
    a probe that sends the self-test image through ``url`` and expects the local answer
    (``reference``, as for self_test: the Detector serves requests by now, so it is not asked)."""
    probe = None
    if args.health_interval > 0:
        blob, expected = reference or local_reference([detector])
        probe = InferenceProbe(url, args.model_name, blob, expected, timeout=probe_timeout(args))
    return Supervision(model_name=args.model_name, models=models, alive=triton.is_alive, probe=probe,
                       interval=args.health_interval, hang_timeout=args.hang_timeout,
                       watchdog_timeout=args.watchdog_timeout, on_fault=on_fault)


def serve(args) -> int:
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    how = fix_python_backend_libpython()
    LOG.info("Python backend: %s", {"libpython": "stub linked to this interpreter's libpython (LD_LIBRARY_PATH)",
                                     "already": "PYTRITON_NO_TENSORSTORE set by the user",
                                     "no-tensorstore": "base64 serializer (no shared libpython)"}[how])
    check_ports_free(args.host, [args.http_port, args.grpc_port, args.metrics_port])

    runner_kw, detector_kw = runner_kwargs(args, args.instances), detector_kwargs(args, args.instances)
    detectors = []
    try:
        for _ in range(args.instances):
            detectors.append(Detector(make_runner(**runner_kw), **detector_kw))
        reference = local_reference(detectors)
    except Exception:
        for d in detectors:
            d.close()
        raise
    spec = detectors[0].spec
    LOG.info("model: %s (%s), spec: input %s, policy %s, size %d, threshold %g; %d instance(s), decoding in %s",
             args.model or args.engine or args.checkpoint, detectors[0].runner.name, spec.input, spec.policy,
             spec.size, spec.threshold, args.instances,
             {"threads": f"{detectors[0].workers} thread(s)", "processes": f"{detectors[0].workers} process(es)",
              "gpu": "nvJPEG (JPEGs; other files on the CPU)"}[args.decode] + " per instance")

    config = TritonConfig(
        http_address=args.host, http_port=args.http_port, grpc_address=args.host, grpc_port=args.grpc_port,
        metrics_address=args.host, metrics_port=args.metrics_port, allow_metrics=True, allow_gpu_metrics=False,
        allow_cpu_metrics=True, strict_readiness=True, exit_timeout_secs=args.exit_timeout,
        log_verbose=args.log_verbose or None)
    stop = threading.Event()
    signals = {}

    def on_signal(signum, _frame):
        LOG.info("%s received: finishing in-flight requests, then stopping", signal.Signals(signum).name)
        stop.set()

    rc = 0
    models = [WatchedModel(LfmModel(d, args.max_request_bytes)) for d in detectors]
    supervision = None
    triton = Triton(config=config)
    try:
        for s in (signal.SIGTERM, signal.SIGINT):
            signals[s] = signal.signal(s, on_signal)
        triton.bind(
            model_name=args.model_name,
            infer_func=models,
            inputs=[Tensor(name=IMAGE_INPUT, dtype=np.bytes_, shape=(1,), optional=True),
                    Tensor(name=PIXELS_INPUT, dtype=np.uint8, shape=(-1, -1, 3), optional=True)],
            outputs=[Tensor(name="logit", dtype=np.float64, shape=(1,)),
                     Tensor(name="score", dtype=np.float64, shape=(1,)),
                     Tensor(name="label", dtype=np.bytes_, shape=(1,)),
                     Tensor(name="error", dtype=np.bytes_, shape=(1,))],
            config=ModelConfig(max_batch_size=args.max_batch_size, batcher=dynamic_batcher(args)),
            strict=True,
        )
        with own_process_group(), expected_triton_lines_left_out() as left_out:
            triton.run()
        if left_out:
            LOG.info("Triton's start-up: %d expected error/warning line(s) left out (%s): not faults, see "
                     "docs/serving.md", len(left_out), "; ".join(sorted(set(left_out))))
        url = f"http://{args.host if args.host not in ('0.0.0.0', '::') else '127.0.0.1'}:{args.http_port}"
        if not args.no_self_test:
            LOG.info(self_test(url, detectors[0], args.model_name, reference))
        print(f"serving model '{args.model_name}': HTTP {args.host}:{args.http_port}, gRPC {args.host}:{args.grpc_port}, "
              f"metrics http://{args.host}:{args.metrics_port}/metrics; {detectors[0].runner.describe()} "
              f"(pid {os.getpid()}; SIGTERM or Ctrl-C to stop)",
              file=sys.stderr, flush=True)
        supervision = start_supervision(args, url, triton, models, detectors[0], on_fault=stop.set,
                                        reference=reference)
        stop.wait()
        rc = FAULT_EXIT_STATUS if supervision.fault else 0
    finally:
        t0 = time.perf_counter()
        if supervision:
            supervision.stop()  # a normal stop from here on is not a fault
        faulted = supervision is not None and supervision.fault
        triton.stop()  # SIGINT to tritonserver: no new requests, in-flight ones finish, models unload
        if not faulted:  # after a fault an instance may still be inside a batch: the process exits instead
            for d in detectors:
                d.close()
        if supervision:
            supervision.close()
        for s, previous in signals.items():
            signal.signal(s, previous)
        LOG.info("stopped in %.1f s", time.perf_counter() - t0)
    return rc


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    for noisy in ("pytriton", "tritonclient"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        import pytriton  # noqa: F401  (the [serve] extra)
        import tritonclient  # noqa: F401
    except ImportError as e:
        print(f"error: serving needs PyTriton and tritonclient ({e}); install with: pip install 'lfm-deploy[serve]'",
              file=sys.stderr)
        return 2
    try:
        return serve(args)
    except (BackendError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(run(main))
