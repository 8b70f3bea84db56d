"""Decoding image files in worker processes, into shared memory: decoding that scales with cores.

    pool = DecodePool(spec, max_pixels, max_tiles, workers=4)
    ticket = pool.submit("a.jpg")        # a path or encoded bytes; waits only while every worker is full
    arrays, error, facts = pool.result(ticket)  # uint8 [N, h, w, 3], or None and the problem
    arrays, error, facts = pool.result(t, lend=True); ...; pool.release(t)  # a view of the ring, no copy
    pool.close()                         # workers stopped, shared memory unlinked

Why processes: Pillow releases the GIL while it decodes and resizes, but the array conversion
and everything around it take it, so decoding threads stop scaling after a core or two.

How: N workers (the "spawn" context: never a fork of a process that may hold onnxruntime or
torch threads) each run ``preprocess.load_tiles`` on one file at a time and write the result
into a slot of one shared-memory ring, answering (ticket, shape, error, facts) on their own
pipe (facts: ``flags.ImageFacts`` as a plain pair of numbers, a few bytes per file). A
slot holds ``size x size x 3`` bytes: every array of policy resize / center-crop, and one tile of
policy tiles / none. Larger results (several tiles, a native-size image) come back pickled
through the pipe instead: correct, just without the shared-memory saving. The parent copies each
result out of its slot as soon as it arrives, so slots are held only by files being decoded;
or, with ``hold`` slots more in the ring, keeps up to ``hold`` results in their slots and lends
them (``result(t, lend=True)``: a view, valid until ``release(t)``), so that the caller's one copy
(the Detector's batch) is the only one: at 256 px the copy out of shared memory is a fifth of the
parent's cost per file.
The ring takes at most SHM_BUDGET bytes and half of the free space of /dev/shm (a container's is
often 64 MB; writing past it would kill the worker with SIGBUS): a file sent while every slot is
taken comes back through the pipe instead.

The parent is the pipeline's one serial part (at 10,000 images/s it has 100 us per file for
everything), so files go to the workers in chunks of ``chunk`` (one message, not one per file),
a worker holds at most ``depth`` chunks, answers are drained from each pipe in one go, and
dead workers are looked for only when the pipes fall silent. A chunk smaller than ``chunk`` is
sent only when the caller waits for one of its files or a worker would otherwise idle.

Failures: a file that cannot be decoded is its own error, as on the thread path. A worker that
dies (a crashing decoder, killed, out of memory) costs exactly one file, the first one it had
not answered (the one it was decoding), which comes back as an error record; the files queued
behind it go to the other workers, and a new worker takes its place. Each pipe is its own, so a
worker killed in the middle of an answer cannot block the others (a shared Queue's lock could).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import secrets
import selectors
import signal
import weakref
from collections import deque
from multiprocessing import shared_memory

import numpy as np

from .flags import ImageFacts
from .preprocess import Decoded, load_tiles_or_problem
from .spec import ModelSpec

SHM_PREFIX = "lfm-decode-"  # /dev/shm names of our rings: lfm-decode-<pid>-<random>
CHUNK = 8  # files per message to a worker
DEPTH = 2  # chunks queued per worker: one decoding, one waiting, so a worker never idles on the pipe
POLL_S = 0.2  # how long a wait listens before it looks for dead workers
STOP_S = 2.0  # how long close() lets a worker finish before it is killed
MAX_REQUEUES = 2  # a file queued behind a dying worker is sent again at most this often
SHM_BUDGET = 64 * 2**20  # bytes of /dev/shm one pool's ring may take, at most
SHM_DIR = "/dev/shm"


class DecodePoolError(RuntimeError):
    """The worker processes cannot run at all (each one exits before decoding anything)."""


class DecodePool:
    """Worker processes decoding paths or encoded bytes with ``load_tiles(source, spec, max_pixels, max_tiles)``;
    a files-only ``decoders.Decoder`` (the Detector puts it behind ``decoders.FilesApart``)."""

    def __init__(self, spec: ModelSpec, max_pixels: int, max_tiles: int, workers: int, depth: int = DEPTH,
                 chunk: int = CHUNK, hold: int = 0):
        if workers < 1 or depth < 1 or chunk < 1:
            raise ValueError(f"workers, depth and chunk must be >= 1, got {workers}, {depth}, {chunk}")
        self.spec, self.max_pixels, self.max_tiles = spec, max_pixels, max_tiles
        self.slot_bytes = spec.size * spec.size * 3
        self.depth, self.chunk = depth, chunk
        in_flight = workers * depth * chunk
        n_slots = ring_slots(in_flight + max(0, hold), self.slot_bytes)
        # Slots beyond the files in flight may hold results (lent views); sends never lack a slot
        # for that, as at most this many are held.
        self._hold = max(0, n_slots - in_flight)
        self._held: dict[int, int] = {}  # ticket -> slot its result still lives in
        self._shm = shared_memory.SharedMemory(create=True, size=max(1, n_slots) * self.slot_bytes,
                                               name=f"{SHM_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
        self._ctx = mp.get_context("spawn")
        self._free_slots = list(range(n_slots))
        self._workers: list[_Worker] = []
        self._selector = selectors.DefaultSelector()
        self._waiting: deque = deque()  # (ticket, source, requeues): submitted, not yet sent to a worker
        self._waiting_tickets: set[int] = set()
        self._sent: dict[int, tuple[int | None, object, int]] = {}  # ticket -> (slot, source, requeues), at a worker
        self._done: dict[int, Decoded] = {}
        self._discarded: set[int] = set()  # in flight, but nobody will collect them
        self._deaths_unanswered = 0  # workers in a row that died without answering once
        self._next_ticket = 0
        self._finalizer = weakref.finalize(self, _shutdown, self._workers, self._shm, self._selector)
        for _ in range(workers):
            self._add_worker(self._start_worker())

    @property
    def name(self) -> str:
        return self._shm.name

    def processes(self) -> list:
        return [w.process for w in self._workers]

    # -- use ----------------------------------------------------------------------------------------
    def submit(self, source) -> int:
        """Queue a path (or encoded bytes); waits (handling answers) while every worker is full."""
        ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
        source = source if isinstance(source, (bytes, bytearray, memoryview)) else os.fspath(source)
        self._waiting.append((ticket, bytes(source) if isinstance(source, memoryview) else source, 0))
        self._waiting_tickets.add(ticket)
        self._dispatch()
        while len(self._waiting) >= self.chunk:  # every worker full: make room before taking more
            self._pump()
        return ticket

    def result(self, ticket: int, lend: bool = False) -> Decoded:
        """The ticket's (arrays, None, facts) or (None, problem, NO_FACTS), once; waits for it. lend: the arrays
        may be a view of the ring, valid until ``release(ticket)`` (which must follow)."""
        while ticket not in self._done:
            if ticket not in self._sent and ticket not in self._waiting_tickets:
                raise KeyError(f"unknown or already collected ticket {ticket}")
            # The caller waits: partial chunks now, to the workers with room (all of them if the
            # ticket itself is still here, else only idle ones, which would otherwise wait too).
            self._dispatch(partial="all" if ticket in self._waiting_tickets else "idle")
            self._pump()
        arrays, error, facts = self._done.pop(ticket)
        if ticket in self._held and not lend:
            arrays = arrays.copy()
            self.release(ticket)
        return Decoded(arrays, error, facts)

    def release(self, ticket: int) -> None:
        """The lent view of this ticket's result is no longer used: its slot is free again (a
        ticket whose result was copied, or failed, needs none; releasing it does nothing)."""
        self._free_slot(self._held.pop(ticket, None))

    def discard(self, ticket: int) -> None:
        """Nobody will collect this ticket: drop its result, now or when it arrives."""
        if self._done.pop(ticket, None) is not None:
            self.release(ticket)
        elif ticket in self._sent or ticket in self._waiting_tickets:
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

    def _add_worker(self, worker: "_Worker") -> None:
        self._workers.append(worker)
        self._selector.register(worker.conn, selectors.EVENT_READ, worker)

    def _dispatch(self, partial: str | None = None) -> None:
        """Send waiting files to workers with room: full chunks; smaller ones as ``partial`` says
        ("all": to any worker with room, "idle": to workers holding nothing)."""
        if len(self._waiting) < self.chunk and partial is None:
            return  # the common case on submit: not a chunk's worth yet
        while self._waiting:
            worker = min((w for w in self._workers if not w.broken), key=lambda w: len(w.chunks), default=None)
            if worker is None:
                return
            if len(worker.chunks) >= self.depth:
                return
            n = self.chunk
            if len(self._waiting) < n:
                if partial is None or (partial == "idle" and worker.chunks):
                    return
                with_room = sum(len(w.chunks) < self.depth and not w.broken for w in self._workers)
                n = -(-len(self._waiting) // with_room)  # spread over the workers with room
            self._send(worker, [self._waiting.popleft() for _ in range(min(n, len(self._waiting)))])

    def _send(self, worker: "_Worker", tasks: list) -> None:
        message = []
        for ticket, source, requeues in tasks:
            self._waiting_tickets.discard(ticket)
            if ticket in self._discarded:  # nobody will read it: not worth decoding
                self._discarded.discard(ticket)
                continue
            slot = self._free_slots.pop() if self._free_slots else None  # None: the answer brings the pixels
            self._sent[ticket] = (slot, source, requeues)
            message.append((ticket, slot, source))
        if not message:
            return
        try:
            worker.conn.send(message)
        except (OSError, ValueError):  # it died before we wrote: these files wait for another worker
            worker.broken = True
            for ticket, slot, source in reversed(message):
                self._free_slot(slot)
                self._waiting.appendleft((ticket, source, self._sent.pop(ticket)[2]))
                self._waiting_tickets.add(ticket)
            return
        worker.order.extend(t for t, _, _ in message)
        worker.chunks.append(len(message))

    def _pump(self) -> None:
        """Handle every answer that arrives within POLL_S, and all that are ready after it (one
        epoll call per round, not one per message); on silence, look for dead workers."""
        events = self._selector.select(timeout=POLL_S)
        silent = not events
        while events:
            for key, _ in events:
                worker = key.data
                if worker.broken:  # marked while sending: its closed pipe stays readable
                    self._stop_listening(worker)
                    continue
                try:
                    self._receive(worker, worker.conn.recv())
                except (EOFError, OSError, ValueError, TypeError, AttributeError, ImportError, IndexError):
                    worker.broken = True  # closed or half-written pipe: the worker is gone
                    self._stop_listening(worker)
            events = self._selector.select(timeout=0)
        for worker in list(self._workers):
            if worker.broken or (silent and not worker.process.is_alive()):
                self._replace(worker)
        self._dispatch()

    def _free_slot(self, slot: int | None) -> None:
        if slot is not None:
            self._free_slots.append(slot)

    def _stop_listening(self, worker: "_Worker") -> None:
        """A broken worker's pipe reads as ready forever (end of file): out of the selector."""
        try:
            self._selector.unregister(worker.conn)
        except (KeyError, ValueError):
            pass

    def _receive(self, worker: "_Worker", message) -> None:
        ticket, shape, arrays, error, facts = message
        facts = ImageFacts(*facts)
        if worker.order[0] != ticket:
            raise ValueError(f"worker answered ticket {ticket}, expected {worker.order[0]}")
        worker.order.popleft()
        worker.chunks[0] -= 1
        if not worker.chunks[0]:
            worker.chunks.popleft()
        slot, _, _ = self._sent.pop(ticket)
        worker.answered = True
        self._deaths_unanswered = 0
        if ticket in self._discarded:
            self._discarded.discard(ticket)
            self._free_slot(slot)
            return
        if shape is not None:  # in the slot: held there if there is room to lend, else copied out at once
            n = shape[0] * shape[1] * shape[2] * shape[3]
            arrays = np.frombuffer(self._shm.buf, np.uint8, n, slot * self.slot_bytes).reshape(shape)
            if len(self._held) < self._hold:
                self._held[ticket] = slot
                self._keep(ticket, Decoded(arrays, error, facts))
                return
            arrays = arrays.copy()
        self._free_slot(slot)
        self._keep(ticket, Decoded(arrays, error, facts))

    def _keep(self, ticket: int, decoded: Decoded) -> None:
        if ticket in self._discarded:
            self._discarded.discard(ticket)
        else:
            self._done[ticket] = decoded

    def _replace(self, worker: "_Worker") -> None:
        """A dead worker's first unanswered file (the one it was decoding) becomes an error; the
        files queued behind it wait for the other workers; a new worker takes its place. A worker
        that exited with an error status before answering once never got to decode (a script
        without the __main__ guard, a broken install): no file is blamed, all of them wait, and
        DecodePoolError ends the pool once that happens to every worker in a row."""
        worker.process.join(timeout=STOP_S)
        if worker.process.is_alive():  # a broken pipe but still running: end it
            worker.process.kill()
            worker.process.join(timeout=STOP_S)
        code = worker.process.exitcode
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        never_started = not worker.answered and code is not None and code > 0  # decoding crashes are signals
        requeue = []
        for k, ticket in enumerate(worker.order):
            slot, source, requeues = self._sent.pop(ticket)
            self._free_slot(slot)
            if never_started:
                requeue.append((ticket, source, requeues))  # bounded: the pool gives up, below
            elif k == 0 or requeues >= MAX_REQUEUES:
                self._keep(ticket, Decoded(None, f"the decoding process died ({how}) while decoding this file; the "
                                                 "other files are unaffected: score it again, or with --decode threads"))
            else:
                requeue.append((ticket, source, requeues + 1))
        for task in reversed(requeue):  # first in line again, in their order
            self._waiting.appendleft(task)
            self._waiting_tickets.add(task[0])
        self._stop_listening(worker)
        worker.conn.close()
        self._deaths_unanswered = 0 if worker.answered else self._deaths_unanswered + 1
        if self._deaths_unanswered > 2 * len(self._workers):  # not a file's fault: do not respawn forever
            self.close()
            raise DecodePoolError(f"the decoding processes exit before decoding anything ({how}); a script using "
                                  "decode='processes' must start its work under `if __name__ == '__main__':`, "
                                  "or use decode='threads'")
        replacement = self._start_worker()
        self._workers[self._workers.index(worker)] = replacement
        self._selector.register(replacement.conn, selectors.EVENT_READ, replacement)


def ring_slots(wanted: int, slot_bytes: int, shm_dir: str = SHM_DIR) -> int:
    """Slots for the ring: ``wanted``, within SHM_BUDGET and half of the free space of /dev/shm."""
    budget = SHM_BUDGET
    try:
        st = os.statvfs(shm_dir)
        budget = min(budget, st.f_bavail * st.f_frsize // 2)
    except OSError:
        pass
    return max(0, min(wanted, budget // slot_bytes))


class _Worker:
    def __init__(self, process, conn):
        self.process, self.conn = process, conn
        self.order: deque[int] = deque()  # tickets sent, in the order the worker answers them
        self.chunks: deque[int] = deque()  # unanswered files of each chunk sent
        self.broken = False
        self.answered = False


def _shutdown(workers: list, shm: shared_memory.SharedMemory, selector) -> None:
    selector.close()
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
    try:
        shm.close()
    except BufferError:  # a caller still holds a lent view (e.g. in an interrupted batch): the
        # mapping lives as long as that view does; SharedMemory.__del__ must not try again (it
        # would print the same BufferError at exit), so it forgets the mmap, the view keeps it
        shm._mmap = None
        shm.close()  # the file descriptor
    try:
        shm.unlink()
    except FileNotFoundError:
        pass


def _worker_main(conn, shm_name: str, slot_bytes: int, spec: ModelSpec, max_pixels: int, max_tiles: int) -> None:
    # Ctrl-C and a group-wide SIGTERM (systemd, `kill -- -PGID`) reach the whole process group: the
    # parent decides when workers stop (close(), or its end of the pipe closing), so a server
    # draining its in-flight requests on SIGTERM still gets their files decoded.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    shm = _attach(shm_name)
    ring = np.frombuffer(shm.buf, np.uint8)
    try:
        while True:
            try:
                tasks = conn.recv()
            except EOFError:  # the parent is gone
                return
            if tasks is None:
                return
            for ticket, slot, source in tasks:  # one answer per file, as soon as it is decoded
                conn.send(_decode_into(ring, None if slot is None else slot * slot_bytes, slot_bytes, source, spec, max_pixels, max_tiles,
                                       ticket))
    finally:
        del ring
        shm.close()


def _decode_into(ring, offset, slot_bytes, source, spec, max_pixels, max_tiles, ticket):
    """(ticket, shape, None, None, facts) with the pixels in the slot, (ticket, None, arrays, None,
    facts) for arrays larger than a slot or sent without one (offset None), or (ticket, None, None,
    problem, facts): the thread path's results; facts as a plain tuple (the cheapest pickle)."""
    arrays, problem, facts = load_tiles_or_problem(source, spec, max_pixels, max_tiles)
    facts = tuple(facts)
    if problem is not None:
        return ticket, None, None, problem, facts
    if offset is None or arrays.nbytes > slot_bytes:
        return ticket, None, arrays, None, facts
    ring[offset:offset + arrays.nbytes] = arrays.reshape(-1)
    return ticket, arrays.shape, None, None, facts


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
