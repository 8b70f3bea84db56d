"""Supervision for runtime/serve.py: notice promptly when the server can no longer serve, stop
saying "ready", and leave the restart to a supervisor.

Why serve.py needs this. PyTriton runs each model instance as a Triton Python-backend stub, a
child process of tritonserver that forwards requests over ZeroMQ to serve.py, where the Detector
runs; the first instance's stub also hosts the shared-memory tensor store every instance passes
its tensors through. Triton's health endpoints see none of it: with a stub killed (the OOM
killer's SIGKILL) or stopped, ``/v2/health/ready`` and the model's ready endpoint keep answering
200 while every request fails or hangs, and Triton does not restart the stub (Triton 2.51, the
server nvidia-pytriton 0.7 bundles; measured, see tests/test_serve_faults.py).

What is watched, and how often:

- processes, every 0.25 s (``ProcessWatch``): tritonserver and each instance's stub must exist
  and be running. One that exited, is a zombie, or is stopped (SIGSTOP, a debugger) is a fault;
- PyTriton's request threads in serve.py must be alive (``Triton.is_alive``);
- the real inference path, every ``interval`` s (``InferenceProbe``): one small image through
  Triton's own HTTP endpoint, answered as the local Detector answers it. A probe that fails while
  the model is idle (no instance busy, no batch completed meanwhile) is a fault at once: nothing
  is being served. While batches complete, three failed probes in a row are a fault. A probe the
  queue policy rejects is not a failure (the server is shedding load) unless no instance has
  worked for ``hang_timeout`` s (a queue that never drains);
- an instance busy with one batch for longer than ``hang_timeout`` s is a fault (a wedged backend);
- serve.py itself (``Watchdog``): a separate process gets a heartbeat every 0.5 s. If serve.py
  is stopped or hung for ``--watchdog-timeout`` s, the watchdog kills tritonserver (its ports
  close: not ready, not live) and then serve.py; if serve.py dies (SIGKILL), it kills tritonserver.

A fault is not repaired in place: Triton cannot restart one Python-backend instance, and the
first instance's death takes the tensor store of all instances with it. serve.py stops Triton at
once (SIGINT, so its ports close and every health check fails; SIGKILL after FAULT_DRAIN_S), the
requests in flight fail with a connection error, and the process exits with FAULT_EXIT_STATUS
for its supervisor (systemd ``Restart=on-failure``, Kubernetes, Docker's restart policy) to start
a fresh server.
"""
from __future__ import annotations

import glob
import logging
import math
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

LOG = logging.getLogger("lfm.serve")

FAULT_EXIT_STATUS = 3  # a fault while serving: restart me (2 stays "bad usage", 1 "failed to start")
STUB_EXECUTABLE = "triton_python_backend_stub"
WATCH_PERIOD_S = 0.25
HEARTBEAT_PERIOD_S = 0.5
FAULT_DRAIN_S = 2.0  # after a fault, in-flight requests get this long before tritonserver is killed
FAULT_EXIT_DEADLINE_S = 6.0  # the fault path's clean-up may take this long, then the process exits anyway
FAILED_PROBES_WHILE_SERVING = 3


# --------------------------------------------------------------------------------------------
# The process table (Linux /proc)


def process_state(pid: int) -> str | None:
    """The kernel's one-letter state of ``pid`` (R, S, D, T stopped, t traced, Z zombie, ...);
    None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def process_argv(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def process_problem(pid: int) -> str | None:
    """Why process ``pid`` cannot serve, in words; None while it is running (or sleeping)."""
    state = process_state(pid)
    if state is None:
        return "exited"
    if state in ("Z", "X"):
        return "exited (not yet reaped)"
    if state in ("T", "t"):
        return STOPPED
    return None


STOPPED = "is stopped (SIGSTOP or a debugger), so it cannot answer"
STOPPED_GRACE_S = 1.0  # a tracer (strace) stops a process for moments; SIGSTOP stops it for good


def parent_map() -> dict[int, int]:
    """pid -> parent pid of every process visible in /proc."""
    parents = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                parents[int(stat.split("/")[2])] = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
    return parents


def process_rss_bytes(pids) -> int:
    """Resident memory of the given processes together (VmRSS); gone ones count 0."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:")), 0)
        except (OSError, ValueError):
            continue
    return total


def descendants(pid: int, parents: dict[int, int] | None = None) -> set[int]:
    parents = parent_map() if parents is None else parents
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - found
        found |= frontier
    return found


@dataclass
class ServerProcesses:
    """The processes serving one model: tritonserver, each instance's stub (instance name ->
    pid) and PyTriton's workspace folder (removed if serve.py cannot do it itself)."""

    tritonserver: int
    stubs: dict[str, int] = field(default_factory=dict)
    workspace: str | None = None


def find_server_processes(parent: int, model: str) -> ServerProcesses | None:
    """tritonserver started by ``parent`` (serve.py) and the Python-backend stubs of ``model``'s
    instances (named MODEL_<group>_<index> on their command lines); None without one."""
    parents = parent_map()
    servers = [p for p, pp in parents.items() if pp == parent and
               os.path.basename((process_argv(p) or [""])[0]) == "tritonserver"]
    if not servers:
        return None
    server = servers[0]
    argv = process_argv(server)
    instance = re.compile(rf"^{re.escape(model)}_\d+_\d+$")
    stubs = {}
    for pid, ppid in parents.items():
        stub_argv = process_argv(pid) if ppid == server else []
        if stub_argv and stub_argv[0].endswith(STUB_EXECUTABLE):
            name = next((a for a in stub_argv if instance.match(a)), None)
            if name:
                stubs[name] = pid
    return ServerProcesses(server, dict(sorted(stubs.items())), pytriton_workspace(argv))


def pytriton_workspace(tritonserver_argv: list[str]) -> str | None:
    """PyTriton's workspace folder (it holds the model store and a copy of tritonserver), from
    tritonserver's --model-repository WORKSPACE/model-store."""
    for i, arg in enumerate(tritonserver_argv):
        value = None
        if arg == "--model-repository" and i + 1 < len(tritonserver_argv):
            value = tritonserver_argv[i + 1]
        elif arg.startswith("--model-repository="):
            value = arg.split("=", 1)[1]
        if value and os.path.basename(value.rstrip("/")) == "model-store":
            return os.path.dirname(value.rstrip("/"))
    return None


# PyTriton's tensor store (multiprocessing.shared_memory's names) and its Python-backend regions
SHARED_MEMORY_PREFIXES = ("/dev/shm/psm_", "/dev/shm/pytrtion")


def server_shared_memory(tritonserver: int, also: tuple[int, ...] = ()) -> set[str]:
    """/dev/shm files mapped now by tritonserver, the processes under it or in its process group
    (a stub's tensor-store helper outlives a killed stub there), and ``also`` (serve.py): the
    Python backend's regions and PyTriton's tensor store (psm_*), which a killed server leaves."""
    pids = {tritonserver, *also} | descendants(tritonserver)
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as f:
                if int(f.read().rsplit(")", 1)[1].split()[2]) == tritonserver:
                    pids.add(int(stat.split("/")[2]))
        except (OSError, IndexError, ValueError):
            continue
    found = set()
    for pid in pids:
        try:
            with open(f"/proc/{pid}/maps") as f:
                for line in f:
                    fields = line.split(maxsplit=5)
                    if len(fields) == 6 and fields[5].startswith(SHARED_MEMORY_PREFIXES):
                        found.add(fields[5].strip().removesuffix(" (deleted)"))
        except OSError:
            continue
    return found


def remove_leftovers(serve_pid: int, workspace: str | None, shared_memory=()) -> None:
    """What a killed tritonserver leaves behind: shared memory (``shared_memory``, found by
    server_shared_memory before the kill, and the Python backend's regions by PyTriton's prefix
    /dev/shm/pytrtion<serve.py pid>-...) and PyTriton's workspace."""
    for path in {*shared_memory, *glob.glob(f"/dev/shm/pytrtion{serve_pid}-*")}:
        try:
            os.remove(path)
        except OSError:
            pass
    if workspace and os.path.basename(workspace).startswith("workspace_") and \
            os.path.isdir(os.path.join(workspace, "model-store")):
        shutil.rmtree(workspace, ignore_errors=True)


def stop_tritonserver(pid: int, drain_s: float = FAULT_DRAIN_S) -> None:
    """SIGINT to tritonserver (it closes its ports at once, so it is no longer live nor ready,
    and finishes what it can), then SIGKILL to its process group (itself, its stubs and their
    helpers; serve.py starts it in a group of its own) after ``drain_s``."""
    try:
        os.kill(pid, signal.SIGINT)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + drain_s
    while time.monotonic() < deadline and process_state(pid) not in (None, "Z", "X"):
        time.sleep(0.05)
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            kill()
        except (ProcessLookupError, PermissionError):
            pass


# --------------------------------------------------------------------------------------------
# Serve.py's side: what runs in its process


class WatchedModel:
    """A model instance's inference callable, counted: batches completed, and since when the
    current batch runs (PyTriton calls one instance's callable one batch at a time)."""

    def __init__(self, inner: Callable):
        self.inner = inner
        self.batches = 0
        self.busy_since: float | None = None

    def __call__(self, requests):
        self.busy_since = time.monotonic()
        try:
            return self.inner(requests)
        finally:
            self.busy_since = None
            self.batches += 1


class InferenceProbe:
    """One small image through the server's own HTTP endpoint, as a client sends it. Returns
    ("ok" | "overloaded" | "failed", detail). Each probe opens and closes its own connection:
    on SIGTERM, Triton's HTTP server waits for every open connection (up to --exit-timeout),
    so a kept-alive probe connection would hold every shutdown for the whole timeout."""

    def __init__(self, url: str, model: str, blob: bytes, expected, timeout: float):
        self.url, self.model, self.blob, self.expected, self.timeout = url, model, blob, expected, timeout

    def __call__(self) -> tuple[str, str]:
        from lfm.runtime.client import LfmClient, ServerError, ServerOverloaded

        try:
            with LfmClient(self.url, model=self.model, timeout=self.timeout) as client:
                (served,) = client.score_bytes([self.blob])
        except ServerOverloaded as e:
            return "overloaded", str(e)
        except ServerError as e:
            return "failed", str(e)
        return self.judge(served)

    def judge(self, served) -> tuple[str, str]:
        """The probe's answer against the local Detector's: the same error, or a logit within a
        batching tolerance (exact equality is the start-up self-test's job; a GPU backend may
        differ in the last bits with the batch a request rides in)."""
        expected = self.expected
        if not expected.ok:
            return ("ok", "") if served.error == expected.error else ("failed", f"answered {served.to_dict()}")
        if not served.ok:
            return "failed", f"the test image failed: {served.error}"
        if not (math.isfinite(served.logit) and abs(served.logit - expected.logit) <= 1e-2 * (1 + abs(expected.logit))):
            return "failed", f"logit {served.logit} where the local Detector gives {expected.logit}"
        return "ok", ""


class HealthMonitor:
    """Two threads: one watches the processes and the instances (every WATCH_PERIOD_S; it never
    blocks), one probes the inference path (every ``interval`` s, each probe bounded by its
    client timeout). The first fault found is reported once, through ``on_fault(reason)``;
    after ``stop()`` (a normal shutdown begins) nothing more is reported."""

    def __init__(self, processes: ServerProcesses | None, models: list[WatchedModel],
                 probe: Callable[[], tuple[str, str]] | None, *, interval: float, hang_timeout: float,
                 alive: Callable[[], bool], on_fault: Callable[[str], None]):
        self.processes, self.models, self.probe = processes, models, probe
        self.interval, self.hang_timeout = interval, hang_timeout
        self.alive, self.on_fault = alive, on_fault
        self.fault: str | None = None
        self._stopped_since: dict[int, float] = {}
        self._batches, self._last_progress = 0, time.monotonic()  # when an instance last worked
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._watch, name="lfm-health-watch", daemon=True)]
        if probe is not None and interval > 0:
            self._threads.append(threading.Thread(target=self._probe_loop, name="lfm-health-probe", daemon=True))

    def start(self) -> "HealthMonitor":
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        """No more checks nor reports (a probe in flight ends by its own timeout, unheard)."""
        with self._lock:
            self._stop.set()

    def _report(self, reason: str) -> None:
        with self._lock:
            if self.fault is not None or self._stop.is_set():
                return
            self.fault = reason
            self._stop.set()
        self.on_fault(reason)

    # -- processes and instances ---------------------------------------------------------------
    def _process_problem(self, pid: int, now: float) -> str | None:
        problem = process_problem(pid)
        if problem != STOPPED:
            self._stopped_since.pop(pid, None)
            return problem
        since = self._stopped_since.setdefault(pid, now)
        return problem if now - since >= STOPPED_GRACE_S else None

    def check_once(self) -> str | None:
        """The first problem found now, in words; None when all is well."""
        now = time.monotonic()
        if self.processes is not None:
            problem = self._process_problem(self.processes.tritonserver, now)
            if problem:
                return f"tritonserver (pid {self.processes.tritonserver}) {problem}"
            for name, pid in self.processes.stubs.items():
                problem = self._process_problem(pid, now)
                if problem:
                    return f"the Python-backend stub of instance {name} (pid {pid}) {problem}"
        if not self.alive():
            return "Triton Inference Server or PyTriton's request threads in serve.py stopped"
        for i, m in enumerate(self.models):
            since = m.busy_since
            if since is not None and now - since > self.hang_timeout:
                return (f"instance {i} has been busy with one batch for {now - since:.0f} s "
                        f"(--hang-timeout {self.hang_timeout:g}): its backend is wedged")
        return None

    def _note_progress(self) -> tuple[int, bool]:
        batches, busy = self._progress()
        if batches != self._batches or busy:
            self._batches, self._last_progress = batches, time.monotonic()
        return batches, busy

    def _watch(self):
        while not self._stop.is_set():
            self._note_progress()
            problem = self.check_once()
            if problem:
                self._report(problem)
                return
            self._stop.wait(WATCH_PERIOD_S)

    # -- the inference path --------------------------------------------------------------------
    def _progress(self) -> tuple[int, bool]:
        return sum(m.batches for m in self.models), any(m.busy_since is not None for m in self.models)

    def probe_once(self, failed_in_a_row: int = 0) -> tuple[int, str | None]:
        """One probe; returns (failed probes in a row, a fault or None)."""
        before, _ = self._note_progress()
        outcome, detail = self.probe()
        after, busy = self._note_progress()
        if outcome == "ok" or self._stop.is_set():
            return 0, None
        served_meanwhile = after > before
        if outcome == "overloaded":
            # Triton's queue is full, so requests are pending; the batch ahead may still be on its
            # way to an instance (not busy yet). Only a queue full with nothing done for
            # hang_timeout is a fault (a stub wedged without being stopped).
            stalled = time.monotonic() - self._last_progress
            if stalled > self.hang_timeout:
                return failed_in_a_row + 1, (f"requests are refused as overloaded, yet no instance has worked for "
                                             f"{stalled:.0f} s: {detail}")
            return 0, None
        if not served_meanwhile and not busy:
            return failed_in_a_row + 1, f"the inference path fails while the model is idle: {detail}"
        failed_in_a_row += 1
        if failed_in_a_row >= FAILED_PROBES_WHILE_SERVING:
            return failed_in_a_row, f"{failed_in_a_row} health probes in a row failed: {detail}"
        return failed_in_a_row, None

    def _probe_loop(self):
        failed = 0
        while not self._stop.wait(self.interval):
            failed, fault = self.probe_once(failed)
            if fault:
                self._report(fault)
                return


class Supervision:
    """What serve.py starts once it serves (after the start-up self-test): the process watch,
    the inference probe, the hang check and the watchdog. On a fault: one log line, Triton
    stopped (``stop_tritonserver``), then ``on_fault()`` (serve.py ends its serving loop and
    exits with FAULT_EXIT_STATUS); if that clean-up has not finished within
    FAULT_EXIT_DEADLINE_S (a wedged instance never returns), the process exits anyway."""

    def __init__(self, *, model_name: str, models: list[WatchedModel], alive: Callable[[], bool],
                 probe: InferenceProbe | None, interval: float, hang_timeout: float, watchdog_timeout: float,
                 on_fault: Callable[[], None]):
        self._on_fault_done = on_fault
        self._shared_memory: set[str] = set()
        self.processes = find_server_processes(os.getpid(), model_name)
        if self.processes is None:
            LOG.warning("cannot find tritonserver among this process's children (/proc): instances are watched "
                        "through the inference path only")
        elif len(self.processes.stubs) != len(models):
            LOG.warning("found %d Python-backend stub(s) for %d instance(s): %s", len(self.processes.stubs),
                        len(models), self.processes.stubs)
        self.watchdog = Watchdog(watchdog_timeout) if watchdog_timeout > 0 else None
        if self.watchdog and self.processes:
            self.watchdog.watch(self.processes)
        self.monitor = HealthMonitor(self.processes, models, probe, interval=interval, hang_timeout=hang_timeout,
                                     alive=alive, on_fault=self._on_fault).start()
        watched = ", ".join([f"tritonserver {self.processes.tritonserver}"] +
                            [f"{n} {p}" for n, p in self.processes.stubs.items()]) if self.processes else "no processes"
        LOG.info("supervision: watching %s; inference probe every %s; hang timeout %g s; watchdog %s", watched,
                 f"{interval:g} s" if probe and interval > 0 else "(off)", hang_timeout,
                 f"{watchdog_timeout:g} s" if self.watchdog else "off")

    @property
    def fault(self) -> str | None:
        return self.monitor.fault

    def _on_fault(self, reason: str) -> None:
        LOG.error("fault: %s. Stopping Triton now (not live, not ready from here on) and exiting with status %d "
                  "for a supervisor to start a fresh server", reason, FAULT_EXIT_STATUS)
        timer = threading.Timer(FAULT_EXIT_DEADLINE_S, self._give_up)
        timer.daemon = True
        timer.start()
        if self.processes:
            self._shared_memory = server_shared_memory(self.processes.tritonserver, also=(os.getpid(),))
            stop_tritonserver(self.processes.tritonserver)
        self._on_fault_done()

    def _give_up(self) -> None:
        LOG.error("clean-up after the fault took over %g s (an instance never returned); exiting now",
                  FAULT_EXIT_DEADLINE_S)
        self.close()
        logging.shutdown()
        os._exit(FAULT_EXIT_STATUS)

    def stop(self) -> None:
        """A normal shutdown begins: no more checks nor fault reports (the watchdog stays, the
        drain may take --exit-timeout)."""
        self.monitor.stop()

    def close(self) -> None:
        """After Triton has stopped: the watchdog ends; after a fault, leftovers are removed."""
        if self.fault:
            remove_leftovers(os.getpid(), self.processes.workspace if self.processes else None, self._shared_memory)
        if self.watchdog:
            self.watchdog.close()


# --------------------------------------------------------------------------------------------
# The watchdog: a separate process that outlives a stopped, hung or killed serve.py


class Watchdog:
    """Serve.py's end of the watchdog process: a thread sends it a heartbeat every
    HEARTBEAT_PERIOD_S (it stops when the whole process is stopped, or wedged holding the GIL),
    ``watch(ServerProcesses)`` names what to kill, ``close()`` ends it after a normal stop.
    Protocol on the watchdog's stdin, one line each: ``watch PID WORKSPACE``, ``beat``, ``stop``.
    Start it once serving begins: loading a model may hold the GIL for seconds."""

    def __init__(self, timeout: float):
        self.timeout = timeout
        self._lock = threading.Lock()
        self._closed = threading.Event()
        # a session of its own: a signal to serve.py's process group (Ctrl-C, `timeout`) must not
        # end the watchdog while serve.py drains
        self.proc = subprocess.Popen([sys.executable, "-m", "lfm.runtime.serve_health", "watchdog",
                                      str(os.getpid()), str(timeout)],
                                     stdin=subprocess.PIPE, start_new_session=True)
        threading.Thread(target=self._beat, name="lfm-watchdog-heartbeat", daemon=True).start()

    def _beat(self):
        while not self._closed.wait(HEARTBEAT_PERIOD_S):
            self._send("beat")

    def _send(self, line: str) -> None:
        with self._lock:
            try:
                self.proc.stdin.write(line.encode() + b"\n")
                self.proc.stdin.flush()
            except (BrokenPipeError, ValueError, OSError):
                pass

    def watch(self, processes: ServerProcesses) -> None:
        self._send(f"watch {processes.tritonserver} {processes.workspace or '-'}")

    def close(self) -> None:
        self._closed.set()
        self._send("stop")
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def watchdog_main(serve_pid: int, timeout: float) -> int:
    """The watchdog process: reads serve.py's lines until ``stop``. Silence for ``timeout``
    seconds (serve.py stopped or hung) or the end of its input without ``stop`` (serve.py died)
    is a fault: tritonserver is killed first (its ports close), then serve.py, then what they
    leave behind is removed."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # serve.py decides when it ends: `stop`, or its death
    triton_pid, workspace = None, None
    last = time.monotonic()
    fd = sys.stdin.fileno()
    pending = b""
    while True:
        ready, _, _ = select.select([fd], [], [], HEARTBEAT_PERIOD_S)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                cause = f"serve.py (pid {serve_pid}) ended without stopping Triton"
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                words = line.decode(errors="replace").split()
                if words[:1] == ["stop"]:
                    return 0
                if words[:1] == ["watch"] and len(words) == 3:
                    triton_pid, workspace = int(words[1]), (None if words[2] == "-" else words[2])
            last = time.monotonic()
        if time.monotonic() - last > timeout:
            state = process_state(serve_pid)
            if state is None:
                cause = f"serve.py (pid {serve_pid}) died"
            else:
                why = "is stopped (SIGSTOP)" if state in ("T", "t") else "has hung"
                cause = f"serve.py (pid {serve_pid}) {why}: no heartbeat for {time.monotonic() - last:.1f} s"
            break
    print(f"lfm.serve watchdog: {cause}; stopping tritonserver"
          + (f" (pid {triton_pid})" if triton_pid else "") + " and serve.py: not ready from now on",
          file=sys.stderr, flush=True)
    shared_memory = server_shared_memory(triton_pid, also=(serve_pid,)) if triton_pid else set()
    if triton_pid and process_state(triton_pid) is not None:
        stop_tritonserver(triton_pid, drain_s=0.0)  # serve.py cannot answer: nothing in flight can finish
    if process_state(serve_pid) is not None:
        try:
            os.kill(serve_pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    remove_leftovers(serve_pid, workspace, shared_memory)
    return 1


if __name__ == "__main__":
    if sys.argv[1:2] == ["watchdog"] and len(sys.argv) == 4:
        sys.exit(watchdog_main(int(sys.argv[2]), float(sys.argv[3])))
    print("usage: python -m lfm.runtime.serve_health watchdog SERVE_PID TIMEOUT_S (started by serve.py)",
          file=sys.stderr)
    sys.exit(2)
