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
             flags   BYTES [1]         the record's flags, ";"-joined (b"upscaled:2.56;uncertain"), b"" for
                                       none (runtime/flags.py; --uncertain-band)
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

import io
import logging
import os
import signal
import socket
import sys
import threading
import time

if __package__ in (None, "") and sys.path and os.path.realpath(sys.path[0] or ".") == os.path.dirname(
        os.path.realpath(__file__)):  # run as a script: runtime/ is sys.path[0]; import the installed package
    # (only then: a decoding process spawned by --decode processes runs this module again as
    # __mp_main__, with serve.py's sys.path, whose first entry it must keep)
    sys.path.pop(0)

import numpy as np  # noqa: E402

from lfm.runtime.backends import BackendError, make_runner  # noqa: E402
from lfm.runtime.cli import ArgumentParser, run  # noqa: E402
from lfm.runtime.detector import Detector  # noqa: E402
from lfm.runtime.options import (ModelArgs, PipelineArgs, PipelineOptions, ServerArgs, default_workers,  # noqa: E402
                                 parse_and_check, usable_cpus)
from lfm.runtime.records import Record  # noqa: E402
from lfm.runtime.serve_contract import OUTPUTS, outputs  # noqa: E402
from lfm.runtime.serve_defaults import MAX_REQUEST_BYTES, MODEL_NAME  # noqa: E402
from lfm.runtime.serve_health import (FAULT_EXIT_STATUS, InferenceProbe, Supervision,  # noqa: E402
                                     WatchedModel)
from lfm.runtime.serve_triton import fix_python_backend_libpython, start_triton  # noqa: E402
from lfm.runtime.spec import check_input_size, min_input_size, threshold_text  # noqa: E402

LOG = logging.getLogger("lfm.serve")

IMAGE_INPUT, PIXELS_INPUT = "image", "pixels"
# The health probe waits as long as an accepted request may: the queue's timeout (past it the
# probe is refused as overloaded, which is no failure), then this for its own batch.
PROBE_BATCH_S = 5.0


# --------------------------------------------------------------------------------------------
# The model: Triton requests -> Detector -> per-item outputs


class LfmModel:
    """One model instance's inference callable (PyTriton, unbatched signature: a list of
    requests in, one output dict per request out). Each instance owns a Detector."""

    def __init__(self, detector: Detector, max_request_bytes: int = MAX_REQUEST_BYTES):
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
        """The serving contract's outputs (serve_contract): a record per item, refused ones included."""
        return outputs([Record.failed("", slot) if isinstance(slot, str) else records[slot] for slot in plan])


# --------------------------------------------------------------------------------------------
# Command line

MODEL = ModelArgs(help={"threads": "backend intra-op threads per instance (default: usable cores / instances)"})
PIPELINE = PipelineArgs(only=tuple(n for n in PipelineArgs.names if n != "batch_size"),  # the batcher's: --max-batch-size
                        help={"workers": "decoding threads per instance, or processes with --decode processes "
                                         "(default: usable cores / instances; threads at most 8)"})
SERVER = ServerArgs()


def parse_args(argv=None):
    doc = __doc__.split("\n\n")
    p = ArgumentParser(description=doc[0], epilog="\n\n".join(doc[1:3]))
    for group in (MODEL, SERVER, PIPELINE):
        group.add_to(p)
    return parse_and_check(p, argv, MODEL, SERVER, PIPELINE)


def runner_kwargs(args, instances: int) -> dict:
    """make_runner's arguments for one instance (threads: the cores shared among the instances
    unless given; only the CPU backends use it)."""
    return MODEL.runner_arguments(args, threads=args.threads or max(1, usable_cpus() // instances))


def pipeline_options(args, instances: int) -> PipelineOptions:
    """One instance's pipeline: a batch is what the dynamic batcher forms; the decoding workers
    are shared among the instances unless given."""
    return PIPELINE.options(args, batch_size=args.max_batch_size, workers=args.workers or max(
        1, min(default_workers(args.decode), usable_cpus() // instances)))


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
    """The server answers as the local Detector does: the same logit, score and flags, or the same
    error (e.g. an image over --max-pixels: both refuse it, which is agreement, not a fault)."""
    if served.ok and local.ok:
        return served.logit == local.logit and served.score == local.score and served.flags == local.flags
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
    return DynamicBatcher(preferred_batch_size=args.preferred_batch_sizes or None,
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

    runner_kw, options = runner_kwargs(args, args.instances), pipeline_options(args, args.instances)
    detectors = []
    try:
        for _ in range(args.instances):
            detectors.append(Detector(make_runner(**runner_kw), options))
        reference = local_reference(detectors)
    except Exception:
        for d in detectors:
            d.close()
        raise
    spec = detectors[0].spec
    LOG.info("model: %s (%s), spec: input %s, policy %s, size %d, %s; %d instance(s), decoding in %s",
             args.model or args.engine or args.checkpoint, detectors[0].runner.name, spec.input, spec.policy,
             spec.size, threshold_text(spec), args.instances,
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
    supervision = triton = None

    def bound_triton():
        made = Triton(config=config)
        made.bind(
            model_name=args.model_name,
            infer_func=models,
            inputs=[Tensor(name=IMAGE_INPUT, dtype=np.bytes_, shape=(1,), optional=True),
                    Tensor(name=PIXELS_INPUT, dtype=np.uint8, shape=(-1, -1, 3), optional=True)],
            outputs=[Tensor(name=name, dtype=dtype, shape=(1,)) for name, dtype in OUTPUTS],  # serve_contract
            config=ModelConfig(max_batch_size=args.max_batch_size, batcher=dynamic_batcher(args)),
            strict=True,
        )
        return made

    try:
        for s in (signal.SIGTERM, signal.SIGINT):
            signals[s] = signal.signal(s, on_signal)
        triton, left_out = start_triton(bound_triton)
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
        if triton is not None:  # None: its start failed, and start_triton stopped it
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
