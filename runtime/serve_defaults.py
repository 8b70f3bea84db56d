"""The serving defaults, in one place: batching and the queue policy that runtime/serve.py and
export/to_triton.py (and benchmarks/bench_serve.py) share. Standard library only: to_triton.py
reads them without PyTriton.

How the queue policy was chosen (figures and commands: docs/serving.md, *Load shedding*):

- MAX_QUEUE_SIZE: ordinary concurrency must never be refused. A closed-loop client (one request
  outstanding at a time) holds at most one request in the queue, and Triton counts a request there
  until its batch is dispatched (a batch being formed included), so CLOSED_LOOP_CLIENTS clients
  plus serve.py's own health probe need that many places; the rest is room for a client that
  resends after its own timeout. Beyond it is real overload, refused at once (HTTP 503 / gRPC
  UNAVAILABLE), which is what keeps an accepted request's wait bounded.
- QUEUE_TIMEOUT_MS: a backstop for a backend that slows down, not the usual way to shed. A full
  queue drains in MAX_QUEUE_SIZE / throughput: 1.2 s at the 32 req/s measured on 2 shared CPU
  cores, 4 s at the ~10 req/s seen there under heavy other load; the timeout lies above that, so
  a request admitted is served, not refused after waiting. What a client sees: an accepted
  request waits at most this long in the queue, then rides one batch (at most MAX_BATCH_SIZE).
"""
from __future__ import annotations

INSTANCES = 2  # model instances (Python-backend stubs / Detectors)
MAX_BATCH_SIZE = 32  # images per batch the dynamic batcher forms
PREFERRED_BATCH_SIZES = (8, 16)
MAX_QUEUE_DELAY_US = 2000  # how long a request may wait for others to batch with

CLOSED_LOOP_CLIENTS = 32  # what the queue absorbs without refusing a request (tested)
MAX_QUEUE_SIZE = 40  # CLOSED_LOOP_CLIENTS + the health probe, with room
QUEUE_TIMEOUT_MS = 5000

MODEL_NAME = "lfm"  # the Triton model name served (serve.py --model-name) and asked for (client.py --model-name)
# Newer Triton servers cap HTTP bodies with --http-max-input-size (default 64 MiB); the server
# PyTriton bundles has no such option, so the model applies the same limit per request.
MAX_REQUEST_BYTES = 64 * 1024 * 1024
# PyTriton waits 30 s for tritonserver to exit after SIGINT, then kills it: stay below.
MAX_EXIT_TIMEOUT_S = 25
