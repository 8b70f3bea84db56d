"""Decoding image files in worker processes, into shared memory: decoding that scales with cores.

    pool = DecodePool(spec, max_pixels, max_tiles, workers=4)
    ticket = pool.submit("a.jpg")        # waits only while every worker is busy
    arrays, error = pool.result(ticket)  # uint8 [N, h, w, 3], or None and the problem
    pool.close()                         # workers stopped, shared memory unlinked

Why processes: Pillow releases the GIL while it decodes and resizes, but the array conversion
and everything around it take it, so decoding threads stop scaling after a core or two.

How: N workers (the "spawn" context: never a fork of a process that may hold onnxruntime or
torch threads) each run ``preprocess.load_tiles`` on one path at a time and write the result
into their own slot of one shared-memory ring, answering (ticket, shape, error) on their own
pipe. A slot holds ``size x size x 3`` bytes: every array of policy resize / center-crop, and
one tile of policy tiles / none. Larger results (several tiles, a native-size image) come back
pickled through the pipe instead: correct, just without the shared-memory saving.
The parent copies each result out of its slot as soon as it arrives, so slots are held only by
files being decoded (``depth`` per worker) and the ring stays small whatever the read-ahead.

Failures: a file that cannot be decoded is its own error, as on the thread path. A worker that
dies (killed, out of memory, a crashing decoder) costs the files it held, which come back as
error records; a new worker takes its place. Each pipe is its own, so a worker killed in the
middle of an answer cannot block the others (a shared multiprocessing.Queue's lock could).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import signal
import weakref
from multiprocessing import connection, shared_memory

import numpy as np

from .preprocess import ImageError, load_tiles
from .spec import ModelSpec

SHM_PREFIX = "lfm-decode-"  # /dev/shm names of our rings: lfm-decode-<pid>-<random>
DEPTH = 2  # files queued per worker: one decoding, one waiting, so a worker never idles on the pipe
POLL_S = 0.2  # how often a wait looks for dead workers
STOP_S = 2.0  # how long close() lets a worker finish before it is killed


class DecodePoolError(RuntimeError):
    """The worker processes cannot run at all (each one exits before decoding anything)."""


class DecodePool:
    """Worker processes decoding paths with ``load_tiles(path, spec, max_pixels, max_tiles)``."""

    def __init__(self, spec: ModelSpec, max_pixels: int, max_tiles: int, workers: int, depth: int = DEPTH):
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.spec, self.max_pixels, self.max_tiles = spec, max_pixels, max_tiles
        self.slot_bytes = spec.size * spec.size * 3
        self.depth = depth
        n_slots = workers * depth
        self._shm = shared_memory.SharedMemory(create=True, size=n_slots * self.slot_bytes,
                                               name=f"{SHM_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
        self._ctx = mp.get_context("spawn")
        self._free_slots = list(range(n_slots))
        self._workers: list[_Worker] = []
        self._tasks: dict[int, tuple[_Worker, int, str]] = {}  # ticket -> (worker, slot, path), in flight
        self._done: dict[int, tuple[np.ndarray | None, str | None]] = {}
        self._discarded: set[int] = set()  # in flight, but nobody will collect them
        self._deaths_unanswered = 0  # workers in a row that died without answering once
        self._next_ticket = 0
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._shm)
        for _ in range(workers):
            self._workers.append(self._start_worker())

    @property
    def name(self) -> str:
        return self._shm.name

    def processes(self) -> list:
        return [w.process for w in self._workers]

    # -- use ----------------------------------------------------------------------------------------
    def submit(self, path) -> int:
        """Queue a path on the least busy worker; waits (handling answers) while all are busy."""
        while True:
            worker = min(self._workers, key=lambda w: len(w.tickets))
            if len(worker.tickets) < self.depth:
                break
            self._pump()
        ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
        slot = self._free_slots.pop()
        self._tasks[ticket] = (worker, slot, os.fspath(path))
        worker.tickets.add(ticket)
        try:
            worker.conn.send((ticket, slot, os.fspath(path)))
        except (OSError, ValueError):  # it died before we wrote: its death is handled by the next wait
            pass
        return ticket

    def result(self, ticket: int) -> tuple[np.ndarray | None, str | None]:
        """The ticket's (arrays, None) or (None, problem), once; waits for it."""
        while ticket not in self._done:
            if ticket not in self._tasks:
                raise KeyError(f"unknown or already collected ticket {ticket}")
            self._pump()
        return self._done.pop(ticket)

    def discard(self, ticket: int) -> None:
        """Nobody will collect this ticket: drop its result, now or when it arrives."""
        if self._done.pop(ticket, None) is None and ticket in self._tasks:
            self._discarded.add(ticket)

    def close(self) -> None:
        """Stop the workers (killed after STOP_S) and unlink the shared memory; idempotent."""
        self._finalizer()

    # -- internals ----------------------------------------------------------------------------------
    def _start_worker(self) -> "_Worker":
        parent, child = self._ctx.Pipe(duplex=True)
        process = self._ctx.Process(target=_worker_main, name="lfm-decode", daemon=True,
                                    args=(child, self._shm.name, self.slot_bytes, self.spec, self.max_pixels,
                                          self.max_tiles))
        process.start()
        child.close()
        return _Worker(process, parent)

    def _pump(self) -> None:
        """Handle the answers that arrive within POLL_S, then any worker that has died."""
        by_conn = {w.conn: w for w in self._workers}
        for conn in connection.wait(list(by_conn), timeout=POLL_S):
            worker = by_conn[conn]
            try:
                self._receive(worker, conn.recv())
            except (EOFError, OSError, ValueError, TypeError, AttributeError, ImportError, IndexError):
                worker.broken = True  # closed or half-written pipe: the worker is gone
        for worker in list(self._workers):
            if worker.broken or not worker.process.is_alive():
                self._replace(worker)

    def _receive(self, worker: "_Worker", message) -> None:
        ticket, shape, arrays, error = message
        _, slot, _ = self._tasks.pop(ticket)
        worker.tickets.discard(ticket)
        worker.answered = True
        self._deaths_unanswered = 0
        if shape is not None:  # in the slot: copy it out at once, so the slot is free again
            n = int(np.prod(shape))
            arrays = np.frombuffer(self._shm.buf, np.uint8, n, slot * self.slot_bytes).reshape(shape).copy()
        self._free_slots.append(slot)
        self._keep(ticket, arrays, error)

    def _keep(self, ticket: int, arrays, error) -> None:
        if ticket in self._discarded:
            self._discarded.discard(ticket)
        else:
            self._done[ticket] = (arrays, error)

    def _replace(self, worker: "_Worker") -> None:
        """A dead worker's files become errors; a new worker takes its place."""
        worker.process.join(timeout=STOP_S)
        if worker.process.is_alive():  # a broken pipe but still running: end it
            worker.process.kill()
            worker.process.join(timeout=STOP_S)
        code = worker.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        for ticket in sorted(worker.tickets):
            _, slot, _ = self._tasks.pop(ticket)
            self._free_slots.append(slot)
            self._keep(ticket, None, f"the decoding process died ({how}) while decoding this file; the other "
                                     "files are unaffected: score it again, or with --decode threads")
        worker.conn.close()
        self._deaths_unanswered = 0 if worker.answered else self._deaths_unanswered + 1
        if self._deaths_unanswered > 2 * len(self._workers):  # not a file's fault: do not respawn forever
            self.close()
            raise DecodePoolError(f"the decoding processes exit before decoding anything ({how}); a script using "
                                  "decode='processes' must start its work under `if __name__ == '__main__':`, "
                                  "or use decode='threads'")
        self._workers[self._workers.index(worker)] = self._start_worker()


class _Worker:
    def __init__(self, process, conn):
        self.process, self.conn = process, conn
        self.tickets: set[int] = set()
        self.broken = False
        self.answered = False


def _shutdown(workers: list, shm: shared_memory.SharedMemory) -> None:
    for w in workers:
        try:
            w.conn.send(None)
        except (OSError, ValueError):
            pass
    for w in workers:
        w.process.join(timeout=STOP_S)
        if w.process.is_alive():
            w.process.kill()
            w.process.join(timeout=STOP_S)
        w.conn.close()
    shm.close()
    try:
        shm.unlink()
    except FileNotFoundError:
        pass


def _worker_main(conn, shm_name: str, slot_bytes: int, spec: ModelSpec, max_pixels: int, max_tiles: int) -> None:
    # Ctrl-C reaches the whole process group: the parent decides when workers stop (close()).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    shm = _attach(shm_name)
    ring = np.frombuffer(shm.buf, np.uint8)
    try:
        while True:
            try:
                task = conn.recv()
            except EOFError:  # the parent is gone
                return
            if task is None:
                return
            ticket, slot, path = task
            conn.send(_decode_into(ring, slot * slot_bytes, slot_bytes, path, spec, max_pixels, max_tiles, ticket))
    finally:
        del ring
        shm.close()


def _decode_into(ring, offset, slot_bytes, path, spec, max_pixels, max_tiles, ticket):
    """(ticket, shape, None, None) with the pixels in the slot, (ticket, None, arrays, None) for
    arrays larger than a slot, or (ticket, None, None, problem): the thread path's messages."""
    try:
        arrays = load_tiles(path, spec, max_pixels, max_tiles)
    except ImageError as e:
        return ticket, None, None, e.problem
    except Exception as e:  # a decoder bug must cost one record, not the run
        return ticket, None, None, f"{type(e).__name__}: {e}"
    if arrays.nbytes > slot_bytes:
        return ticket, None, arrays, None
    ring[offset:offset + arrays.nbytes] = arrays.reshape(-1)
    return ticket, arrays.shape, None, None


def _attach(name: str) -> shared_memory.SharedMemory:
    """Attach without registering the segment with the resource tracker (Python < 3.13 registers
    every attach): the parent created it and alone unlinks it."""
    from multiprocessing import resource_tracker

    register = resource_tracker.register
    resource_tracker.register = lambda *args: None
    try:
        return shared_memory.SharedMemory(name=name)
    finally:
        resource_tracker.register = register
