"""Faults and overload as an orchestrator sees them (issue 18): runtime/serve.py under load while
one of its processes is killed or stopped, beyond its queue bound, and under SIGTERM with
requests in flight. Loopback only; every test bounds its own time.

Stated expectations (each test below checks one; each failed on the code before supervision):

- a model instance's stub killed (SIGKILL, as the OOM killer does) under load: readiness stops
  answering 200 within 2 s, serve.py exits with status 3 within 10 s, no client call hangs (each
  returns an answer or an error within its timeout), nothing of the server is left running and
  no shared memory of it is left in /dev/shm. Before: ready 200 throughout, every request
  failing or hanging, the process running on;
- tritonserver killed: the same (status 3; before: 1, from PyTriton's own exit callback);
- a stub stopped (SIGSTOP): the same within 10 s; the stopped stub is killed, not left behind.
  Before: Triton failed each request ("Stub process ... is not healthy") and stayed ready;
- serve.py itself stopped (SIGSTOP; it runs every instance's Detector): its watchdog closes
  Triton's ports and kills serve.py within 10 s. Before: ready 200 while every request hung;
- more requests than the queue holds: the excess is refused at once with a retryable
  ServerOverloaded (client.py), the rest answered exactly as offline; then SIGTERM with requests
  in flight and queued: every accepted request completes, none fails otherwise, exit 0. Before:
  no queue bound: all 14 requests were queued, the last answered seconds later.

Time bounds in the assertions are the issue's targets (10 s), or generous margins (stated) over
what was measured on a loaded 2-core machine: these tests check behaviour, not speed.
"""
from __future__ import annotations

import glob
import io
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("tritonclient.http", reason="serving tests need the [serve] extra: pip install -e '.[serve]'")
pytest.importorskip("pytriton", reason="serving tests need the [serve] extra: pip install -e '.[serve]'")

from test_serve import Server, encode  # noqa: E402

from lfm.runtime.client import LfmClient, ServerError, ServerOverloaded  # noqa: E402
from lfm.runtime.detector import Detector  # noqa: E402
from lfm.runtime.serve_health import (STOPPED, HealthMonitor, ServerProcesses, WatchedModel,  # noqa: E402
                                      find_server_processes, process_problem, process_state,
                                      server_shared_memory)

FAULT_DEADLINE_S = 10.0  # the target: serving again, or not ready and exited, within 10 s
READY_GRACE_S = 2.0  # readiness may lag a fault by this much (measured: under 0.5 s)
# Each server test's own limit (pytest-timeout): a start (up to START_TIMEOUT_S), seconds of load,
# the fault deadline and a stop (under 60 s) stay under 200 s on a loaded machine (measured: 15-30 s);
# past this the test has hung, and fails instead of holding CI
SERVER_TEST_TIMEOUT_S = 300


def png(seed: int = 0) -> bytes:
    a = np.random.default_rng(seed).integers(0, 256, (80, 96, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def gone(pid: int) -> bool:
    return process_state(pid) in (None, "Z", "X")


def wait_until(condition, timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return condition()


class Load:
    """Closed-loop clients (one small PNG per request) recording every call's outcome with its
    times, and a readiness sampler (GET /v2/health/ready every 0.1 s)."""

    def __init__(self, server: Server, clients: int = 4, timeout: float = 15.0):
        self.server, self.timeout = server, timeout
        self.calls: list[tuple[float, float, str]] = []  # (start, end, "ok" | "rejected" | error text)
        self.readiness: list[tuple[float, object]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(k,), daemon=True) for k in range(clients)]
        self._threads.append(threading.Thread(target=self._ready, daemon=True))

    def start(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)
        assert not any(t.is_alive() for t in self._threads), "a client call outlived its timeout"

    def _client(self, k: int) -> None:
        blob = png(k)
        url = self.server.grpc_url if k % 2 else self.server.http_url
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                with LfmClient(url, timeout=self.timeout) as c:
                    (r,) = c.score_bytes([blob])
                outcome = "ok" if r.ok else r.error
            except ServerOverloaded:
                outcome = "rejected"
            except ServerError as e:
                outcome = str(e) or "error"
                time.sleep(0.05)
            self.calls.append((t, time.monotonic(), outcome))

    def _ready(self) -> None:
        url = f"{self.server.http_url}/v2/health/ready"
        while not self._stop.is_set():
            try:
                with urllib.request.urlopen(url, timeout=1) as r:
                    status = r.status
            except urllib.error.HTTPError as e:
                status = e.code
            except OSError as e:
                status = type(e).__name__
            self.readiness.append((time.monotonic(), status))
            time.sleep(0.1)

    def ready_200_after(self, t: float) -> list[float]:
        return [round(when - t, 2) for when, status in self.readiness if when > t and status == 200]

    def ok_before(self, t: float) -> int:
        return sum(1 for _, end, outcome in self.calls if end < t and outcome == "ok")


def start_server(random_onnx, tmp_path, *extra) -> tuple[Server, ServerProcesses]:
    s = Server(random_onnx, tmp_path / "serve.log", "--instances", "2", *extra).wait_ready()
    processes = find_server_processes(s.proc.pid, "lfm")
    assert processes is not None and sorted(processes.stubs) == ["lfm_0_0", "lfm_0_1"], processes
    return s, processes


def wait_exit(proc: subprocess.Popen, timeout: float) -> int | None:
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def shared_memory_of(s: Server, processes: ServerProcesses) -> set[str]:
    """The /dev/shm files the server maps now (its tensor store, its Python-backend regions)."""
    found = server_shared_memory(processes.tritonserver, also=(s.proc.pid,))
    assert found, "the server maps no shared memory: the leak check below would check nothing"
    return found


def assert_no_leftovers(s: Server, processes: ServerProcesses, shared_memory: set[str]):
    for pid in [processes.tritonserver, *processes.stubs.values()]:
        assert wait_until(lambda: gone(pid), 5), f"process {pid} of the server is still running"
    assert not [p for p in shared_memory if os.path.exists(p)], "shared memory left in /dev/shm"
    assert not glob.glob(f"/dev/shm/pytrtion{s.proc.pid}-*")


def fault_under_load(s, processes, inject, what: str) -> None:
    """1.5 s of client load, then the fault (``inject()``); serve.py must handle it as
    assert_fault_handled says, naming ``what``."""
    load = Load(s).start()
    time.sleep(1.5)
    shared_memory = shared_memory_of(s, processes)
    t_fault = time.monotonic()
    inject()
    rc = wait_exit(s.proc, FAULT_DEADLINE_S)
    assert_fault_handled(s, processes, load, t_fault, rc, what, shared_memory)


def assert_fault_handled(s: Server, processes: ServerProcesses, load: Load, t_fault: float, rc, reason: str,
                         shared_memory: set[str]):
    """The common expectation after a fault inside the server."""
    t_exit = time.monotonic()
    load.stop()
    log = s.log()
    assert rc == 3, f"serve.py did not exit with status 3 within {FAULT_DEADLINE_S} s (rc {rc}):\n{log[-3000:]}"
    assert t_exit - t_fault < FAULT_DEADLINE_S
    assert load.ok_before(t_fault) > 0, "no request succeeded before the fault: it was not under load"
    late_ready = load.ready_200_after(t_fault + READY_GRACE_S)
    assert not late_ready, f"ready said 200 {late_ready} s after the fault"
    assert f"fault: {reason}" in log, log[-3000:]
    assert_no_leftovers(s, processes, shared_memory)


# --------------------------------------------------------------------------------------------
# Faults inside a running server


@pytest.mark.slow
@pytest.mark.timeout(SERVER_TEST_TIMEOUT_S)
def test_killed_stub_under_load_stops_readiness_and_exits_3(random_onnx, tmp_path):
    s, processes = start_server(random_onnx, tmp_path)
    try:
        pid = processes.stubs["lfm_0_1"]
        fault_under_load(s, processes, lambda: os.kill(pid, signal.SIGKILL),
                         f"the Python-backend stub of instance lfm_0_1 (pid {pid}) exited")
    finally:
        s.stop()


@pytest.mark.slow
@pytest.mark.timeout(SERVER_TEST_TIMEOUT_S)
def test_killed_tritonserver_exits_3_and_leaves_nothing(random_onnx, tmp_path):
    s, processes = start_server(random_onnx, tmp_path)
    try:
        fault_under_load(s, processes, lambda: os.kill(processes.tritonserver, signal.SIGKILL),
                         f"tritonserver (pid {processes.tritonserver}) exited")
    finally:
        s.stop()


@pytest.mark.slow
@pytest.mark.timeout(SERVER_TEST_TIMEOUT_S)
def test_stopped_stub_is_a_fault_not_a_ready_server(random_onnx, tmp_path):
    s, processes = start_server(random_onnx, tmp_path)
    pid = processes.stubs["lfm_0_0"]  # the instance that also hosts PyTriton's tensor store
    try:
        fault_under_load(s, processes, lambda: os.kill(pid, signal.SIGSTOP),
                         f"the Python-backend stub of instance lfm_0_0 (pid {pid}) {STOPPED}")
    finally:
        if not gone(pid):
            os.kill(pid, signal.SIGKILL)
        s.stop()


@pytest.mark.slow
@pytest.mark.timeout(SERVER_TEST_TIMEOUT_S)
def test_stopped_serve_py_is_killed_by_its_watchdog(random_onnx, tmp_path):
    """serve.py runs every instance's Detector: stopped, nothing is served, and nothing inside
    it can notice. Its watchdog (--watchdog-timeout 5) closes Triton's ports and kills it."""
    s, processes = start_server(random_onnx, tmp_path)
    try:
        load = Load(s, timeout=12).start()
        time.sleep(1.5)
        shared_memory = shared_memory_of(s, processes)
        t_fault = time.monotonic()
        os.kill(s.proc.pid, signal.SIGSTOP)
        rc = wait_exit(s.proc, FAULT_DEADLINE_S)
        t_exit = time.monotonic()
        load.stop()
        log = s.log()
        assert rc == -signal.SIGKILL, f"serve.py not killed within {FAULT_DEADLINE_S} s (rc {rc}):\n{log[-3000:]}"
        assert t_exit - t_fault < FAULT_DEADLINE_S
        assert load.ok_before(t_fault) > 0
        # the watchdog waits --watchdog-timeout (5 s) for a heartbeat; then readiness is gone at once
        late_ready = load.ready_200_after(t_fault + 5 + READY_GRACE_S)
        assert not late_ready, f"ready said 200 {late_ready} s after serve.py stopped"
        assert f"watchdog: serve.py (pid {s.proc.pid}) is stopped" in log, log[-3000:]
        assert wait_until(lambda: not [p for p in shared_memory if os.path.exists(p)], 5)  # the watchdog exits last
        assert_no_leftovers(s, processes, shared_memory)
    finally:
        if s.proc.poll() is None:
            os.kill(s.proc.pid, signal.SIGCONT)
        s.stop()


# --------------------------------------------------------------------------------------------
# Ordinary concurrency, overload, then SIGTERM with requests in flight


@pytest.mark.slow
@pytest.mark.timeout(SERVER_TEST_TIMEOUT_S)
def test_defaults_refuse_none_of_32_closed_loop_clients(random_onnx, tmp_path):
    """Ordinary concurrency is not overload (issue 24): with serve.py's defaults, 32 clients with
    one request outstanding each (half HTTP, half gRPC, starting together) get every request
    answered as the offline Detector answers it, none refused. Before: a queue of 6 refused
    requests of 8 such clients."""
    from lfm.runtime import serve_defaults as defaults

    clients, rounds = defaults.CLOSED_LOOP_CLIENTS, 6
    blobs = [png(k) for k in range(8)]
    with Detector(random_onnx) as det:
        expected = det.predict(blobs)
    s = Server(random_onnx, tmp_path / "serve.log").wait_ready()  # every option at its default
    outcomes, start = [], threading.Barrier(clients)

    def client(k):
        with LfmClient(s.grpc_url if k % 2 else s.http_url, timeout=120) as c:
            c.output_names()
            start.wait()
            for i in range(rounds):
                j = (k + i) % len(blobs)
                try:
                    (r,) = c.score_bytes([blobs[j]])
                    ref = expected[j]
                    outcomes.append("ok" if (r.logit, r.score, r.label) == (ref.logit, ref.score, ref.label)
                                    else f"differs: {r}")
                except ServerError as e:  # ServerOverloaded included: a refusal
                    outcomes.append(f"{type(e).__name__}: {e}")

    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        assert len(outcomes) == clients * rounds, "a client did not finish"
        assert [o for o in outcomes if o != "ok"] == []
    finally:
        s.stop()


def _big_jpeg() -> bytes:
    """~0.2-0.4 s of decoding on one core: requests slow enough to fill a queue."""
    y, x = np.mgrid[0:2000, 0:2000]
    a = np.stack([x * 255 // 2000, y * 255 // 2000, (x + y) % 256], -1).astype(np.uint8)
    a += np.random.default_rng(1).integers(0, 8, a.shape, dtype=np.uint8)
    return encode(a, "JPEG", quality=85)


@pytest.mark.slow
@pytest.mark.timeout(SERVER_TEST_TIMEOUT_S)
def test_a_slow_server_is_not_a_fault(random_onnx, tmp_path):
    """A queue deep enough for many clients makes an accepted request wait long on a slow CPU,
    the health probe's too. That is load, not a broken inference path: the probe must wait as
    long as the queue lets a request wait. Here one instance takes one request of 16 large JPEGs
    at a time (~1 s) and 12 closed-loop clients keep ~11 queued ahead of each (~10 s, under the
    60 s queue timeout) for 25 s: the server keeps serving, no fault. Before: the probe gave up
    after 5 s, three in a row were a fault, and a healthy server exited 3 (reproduced)."""
    blobs = [_big_jpeg()] * 16
    s = Server(random_onnx, tmp_path / "serve.log", "--instances", "1", "--max-batch-size", "16",
               "--preferred-batch-sizes", "", "--max-queue-delay-us", "0", "--max-queue-size", "100",
               "--queue-timeout-ms", "60000", "--max-request-bytes", "30000000").wait_ready()
    stop, outcomes = time.monotonic() + 25, []

    def client(k):
        with LfmClient(s.grpc_url if k % 2 else s.http_url, timeout=120) as c:
            while time.monotonic() < stop:
                try:
                    outcomes.extend("ok" if r.ok else r.error for r in c.score_bytes(blobs))
                except ServerError as e:
                    outcomes.append(f"{type(e).__name__}: {e}")

    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(150)
        log = s.log()
        assert s.proc.poll() is None and "fault:" not in log, log[-3000:]
        assert outcomes and set(outcomes) == {"ok"}, sorted(set(outcomes))
    finally:
        s.stop()


def _burst(server: Server, blob: bytes, n: int, after_send=None) -> list[tuple[str, float, object]]:
    """n clients, each sending one request of 2 images at the same moment; returns
    (outcome, seconds, records or error) per client."""
    results, barrier = [], threading.Barrier(n + 1)

    def client(k):
        with LfmClient(server.grpc_url if k % 2 else server.http_url, timeout=60) as c:
            c.output_names()
            barrier.wait()
            t = time.monotonic()
            try:
                recs = c.score_bytes([blob, blob])
                results.append(("ok", time.monotonic() - t, recs))
            except ServerOverloaded as e:
                results.append(("rejected", time.monotonic() - t, str(e)))
            except ServerError as e:
                results.append(("error", time.monotonic() - t, str(e)))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    if after_send:
        after_send()
    for t in threads:
        t.join(90)
    assert len(results) == n, "a client call did not return"
    return results


@pytest.mark.slow
@pytest.mark.timeout(SERVER_TEST_TIMEOUT_S)
def test_queue_bound_sheds_fast_and_sigterm_finishes_what_was_accepted(random_onnx, tmp_path):
    """One instance, batches of 2 requests, at most 2 queued: of 14 simultaneous requests the
    excess is refused at once, the rest answered exactly as offline. Then the same burst with
    SIGTERM 0.3 s later: every accepted request completes (the bounded queue drains well within
    --exit-timeout 10), the rest were refused, none failed otherwise, exit 0."""
    blob = _big_jpeg()
    with Detector(random_onnx) as det:
        (ref,) = det.predict([blob])
    s = Server(random_onnx, tmp_path / "serve.log", "--instances", "1", "--max-batch-size", "2",
               "--preferred-batch-sizes", "", "--max-queue-delay-us", "0", "--max-queue-size", "2",
               "--queue-timeout-ms", "0", "--exit-timeout", "10", "--max-request-bytes", "30000000").wait_ready()
    try:
        results = _burst(s, blob, 14)
        kinds = [k for k, _, _ in results]
        assert kinds.count("error") == 0, [r for r in results if r[0] == "error"]
        assert 0 < kinds.count("ok") <= 6 and kinds.count("rejected") >= 8, kinds
        for _, _, recs in (r for r in results if r[0] == "ok"):
            assert all(r.ok and (r.logit, r.score) == (ref.logit, ref.score) for r in recs)
        rejected_s = sorted(t for k, t, _ in results if k == "rejected")
        accepted_s = sorted(t for k, t, _ in results if k == "ok")
        # refused at once: well under the first answer (measured: ~5 ms against ~1 s; a margin of 20x)
        assert rejected_s[-1] < min(1.0, accepted_s[0]), (rejected_s, accepted_s)
        assert all("Exceeds maximum queue size" in e for k, _, e in results if k == "rejected")

        results = _burst(s, blob, 14, after_send=lambda: (time.sleep(0.3), s.proc.send_signal(signal.SIGTERM)))
        kinds = [k for k, _, _ in results]
        assert kinds.count("error") == 0, [r for r in results if r[0] == "error"]
        assert kinds.count("ok") >= 1 and kinds.count("rejected") >= 8, kinds
        for _, _, recs in (r for r in results if r[0] == "ok"):
            assert all(r.ok and (r.logit, r.score) == (ref.logit, ref.score) for r in recs)
        assert wait_exit(s.proc, 30) == 0, s.log()[-3000:]
    finally:
        s.stop()


# --------------------------------------------------------------------------------------------
# The pieces, without a server


def test_process_problem_sees_exit_stop_and_zombie():
    p = subprocess.Popen(["sleep", "30"])
    try:
        assert process_problem(p.pid) is None
        os.kill(p.pid, signal.SIGSTOP)
        assert wait_until(lambda: process_state(p.pid) == "T", 5)
        assert process_problem(p.pid) == STOPPED
        os.kill(p.pid, signal.SIGKILL)
        assert wait_until(lambda: process_state(p.pid) == "Z", 5)
        assert process_problem(p.pid) == "exited (not yet reaped)"
    finally:
        p.kill()
        p.wait()
    assert process_problem(p.pid) == "exited"


def _monitor(processes=None, models=(), probe=None, alive=lambda: True, hang_timeout=60.0):
    faults = []
    monitor = HealthMonitor(processes, list(models), probe, interval=0.1, hang_timeout=hang_timeout, alive=alive,
                            on_fault=faults.append)
    return monitor, faults


def test_monitor_reports_a_process_stopped_past_the_grace_and_a_hang():
    triton, stub = subprocess.Popen(["sleep", "30"]), subprocess.Popen(["sleep", "30"])
    try:
        monitor, faults = _monitor(ServerProcesses(triton.pid, {"lfm_0_0": stub.pid}))
        assert monitor.check_once() is None
        os.kill(stub.pid, signal.SIGSTOP)
        assert wait_until(lambda: process_state(stub.pid) == "T", 5)
        assert monitor.check_once() is None  # a tracer stops a process for moments: not yet a fault
        assert wait_until(lambda: monitor.check_once() is not None, 3)
        assert monitor.check_once() == f"the Python-backend stub of instance lfm_0_0 (pid {stub.pid}) {STOPPED}"
        os.kill(stub.pid, signal.SIGCONT)
        assert wait_until(lambda: monitor.check_once() is None, 3)
        triton.kill()
        assert wait_until(lambda: (monitor.check_once() or "").startswith(f"tritonserver (pid {triton.pid}) exited"), 3)
    finally:
        for p in (triton, stub):
            p.kill()
            p.wait()
    busy = WatchedModel(lambda requests: requests)
    busy.busy_since = time.monotonic() - 5
    monitor, _ = _monitor(models=[busy], hang_timeout=2)
    assert "instance 0 has been busy with one batch for 5 s" in monitor.check_once()
    monitor, _ = _monitor(alive=lambda: False)
    assert "request threads in serve.py stopped" in monitor.check_once()


def test_probe_rules_idle_failure_is_a_fault_overload_is_not_unless_nothing_works():
    model = WatchedModel(lambda requests: requests)
    outcome = ["failed", "Stub process 'lfm_0_0' is not healthy."]
    serving = [False]

    def probe():
        if serving[0]:
            model([])  # a batch completes while the probe waits
        return tuple(outcome)

    monitor, _ = _monitor(models=[model], probe=probe, hang_timeout=30)
    _, fault = monitor.probe_once()
    assert fault == "the inference path fails while the model is idle: Stub process 'lfm_0_0' is not healthy."
    # refused for load while nothing is busy yet (the batch ahead still on its way to an instance,
    # seen in a test run): not a fault; nor while batches complete
    outcome[:] = ["overloaded", "queue full"]
    assert monitor.probe_once() == (0, None)
    serving[0] = True
    assert monitor.probe_once() == (0, None)
    # ... but a queue that stays full while no instance works for hang_timeout is one
    serving[0] = False
    monitor._last_progress -= 31
    _, fault = monitor.probe_once()
    assert fault.startswith("requests are refused as overloaded, yet no instance has worked for 31 s")
    serving[0] = True
    outcome[:] = ["failed", "timeout"]
    failed = 0
    for _ in range(2):  # the documented rule (docs/serving.md), not the constant: a changed one fails here
        failed, fault = monitor.probe_once(failed)
        assert fault is None
    failed, fault = monitor.probe_once(failed)
    assert fault == "3 health probes in a row failed: timeout"
    outcome[:] = ["ok", ""]
    assert monitor.probe_once(failed) == (0, None)


_FAKE_SERVE = textwrap.dedent("""
    import subprocess, sys, time
    from lfm.runtime.serve_health import ServerProcesses, Watchdog
    fake = subprocess.Popen(["sleep", "60"], start_new_session=True)  # stands in for tritonserver
    watchdog = Watchdog(1.0)
    watchdog.watch(ServerProcesses(fake.pid, {}, None))
    print(fake.pid, flush=True)
    time.sleep(60)
""")


@pytest.mark.parametrize("fault", ["SIGSTOP", "SIGKILL"])
def test_watchdog_stops_the_server_of_a_stopped_or_killed_parent(fault):
    """A stopped "serve.py" is killed with its "tritonserver" after the watchdog's timeout (1 s
    here); a killed one leaves no "tritonserver" behind."""
    parent = subprocess.Popen([sys.executable, "-c", _FAKE_SERVE], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        fake = int(parent.stdout.readline())
        time.sleep(1.5)  # heartbeats flow: nothing happens
        assert not gone(fake) and parent.poll() is None
        os.kill(parent.pid, getattr(signal, fault))
        assert wait_exit(parent, 8) == -signal.SIGKILL
        assert wait_until(lambda: gone(fake), 5)
        if fault == "SIGSTOP":
            assert f"serve.py (pid {parent.pid}) is stopped (SIGSTOP): no heartbeat" in parent.stderr.read()
    finally:
        if parent.poll() is None:
            os.kill(parent.pid, signal.SIGCONT)
            parent.kill()
        parent.wait()


def test_dynamic_batcher_carries_the_queue_policy():
    from pytriton.model_config import TimeoutAction

    from lfm.runtime import serve
    from lfm.runtime import serve_defaults as defaults

    batcher = serve.dynamic_batcher(serve.parse_args(["--model", "m.onnx"]))
    policy = batcher.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (defaults.MAX_QUEUE_SIZE,
                                                                            defaults.QUEUE_TIMEOUT_MS * 1000)
    assert policy.timeout_action == TimeoutAction.REJECT and not policy.allow_timeout_override
    args = serve.parse_args(["--model", "m.onnx", "--max-queue-size", "0", "--queue-timeout-ms", "0"])
    assert serve.dynamic_batcher(args).default_queue_policy is None  # both bounds off: Triton's unbounded queue
    args = serve.parse_args(["--model", "m.onnx", "--max-queue-size", "3", "--allow-timeout-override"])
    policy = serve.dynamic_batcher(args).default_queue_policy
    assert policy.max_queue_size == 3 and policy.allow_timeout_override


@pytest.mark.parametrize("options", [[], ["--queue-timeout-ms", "20000"], ["--queue-timeout-ms", "0"]])
def test_health_probe_outwaits_the_queue(options):
    """A probe accepted into a full queue may wait there up to --queue-timeout-ms (past it, it is
    refused as overloaded: not a failure) and then rides a batch: its own timeout must be longer,
    or a server that is only slow fails three probes and exits 3 (seen with the deeper default
    queue under overload on a loaded machine). Without a queue timeout: --hang-timeout."""
    from lfm.runtime import serve

    args = serve.parse_args(["--model", "m.onnx", *options])
    queued_s = args.queue_timeout_ms / 1000 if args.queue_timeout_ms else args.hang_timeout
    assert serve.probe_timeout(args) >= queued_s + 5


@pytest.mark.parametrize("args, problem", [
    (["--max-queue-size", "-1"], "argument --max-queue-size: must be at least 0, got -1"),
    (["--queue-timeout-ms", "x"], "argument --queue-timeout-ms: expected a whole number, got 'x'"),
    (["--health-interval", "nan"], "argument --health-interval: must be a number of seconds >= 0, got nan"),
    (["--watchdog-timeout", "-2"], "argument --watchdog-timeout: must be a number of seconds >= 0, got -2"),
])
def test_supervision_options_refused_in_one_line(args, problem, capsys):
    from lfm.runtime import serve

    with pytest.raises(SystemExit) as e:
        serve.parse_args(["--model", "m.onnx", *args])
    assert e.value.code == 2
    assert problem in capsys.readouterr().err.strip().splitlines()[-1]


def test_probe_judges_answers_with_a_batching_tolerance():
    from lfm.runtime.records import Record
    from lfm.runtime.serve_health import InferenceProbe

    probe = InferenceProbe("http://127.0.0.1:1", "lfm", b"", Record.from_logit("x", 0.25, 0.5), timeout=1)
    assert probe.judge(Record.from_logit("y", 0.25 + 1e-6, 0.5)) == ("ok", "")
    assert probe.judge(Record.from_logit("y", 1.5, 0.5))[0] == "failed"
    assert probe.judge(Record.failed("y", "boom")) == ("failed", "the test image failed: boom")
    refused = InferenceProbe("http://127.0.0.1:1", "lfm", b"", Record.failed("x", "too big"), timeout=1)
    assert refused.judge(Record.failed("y", "too big")) == ("ok", "")
    # nothing listens on port 1: a connection failure is a failed probe, never an exception
    assert probe()[0] == "failed"
