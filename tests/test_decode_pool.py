"""Decoding in worker processes (issue 17, item 2): the same records in the same order as the
thread path, a killed worker costs only the files it held, and nothing is left behind (shared
memory segments, child processes), also after Ctrl-C through infer.py."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lfm.runtime.decode_pool import SHM_PREFIX, DecodePool
from lfm.runtime.detector import Detector
from lfm.runtime.flags import NO_FACTS
from lfm.runtime.preprocess import load_prepared, load_tiles
from lfm.runtime.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
INFER = [sys.executable, str(ROOT / "runtime" / "infer.py")]
SPEC = ModelSpec(input="uint8", layout="NHWC", size=64)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list[Path]:
    """Good images of several sizes and formats, with bad files among them."""
    d = tmp_path_factory.mktemp("decode")
    rng = np.random.default_rng(3)
    out = []
    for i in range(10):
        h, w = 50 + 13 * i, 120 - 5 * i
        p = d / f"im{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        out.append(p)
    (d / "text.jpg").write_text("not an image")
    (d / "empty.png").write_bytes(b"")
    truncated = d / "truncated.png"
    truncated.write_bytes(out[1].read_bytes()[:200])
    out[3:3] = [d / "text.jpg", d / "missing.png", d / "empty.png", truncated]
    return out


def our_segments(pid: int) -> list[str]:
    return [n for n in os.listdir("/dev/shm") if n.startswith(f"{SHM_PREFIX}{pid}-")]


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except (OSError, ValueError):
            continue
        if entry.isdigit() and int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_processes_give_the_thread_path_records_in_order(random_onnx, files):
    items = [*map(str, files), files[0].read_bytes(), np.zeros((70, 70, 3), np.uint8), 42, str(files[5]),
             *(p.read_bytes() for p in files if p.is_file())]  # encoded bytes (serve.py's input) too
    with Detector(random_onnx, batch_size=3, workers=2) as det:
        by_threads = det.predict(items)
    with Detector(random_onnx, batch_size=3, workers=2, decode="processes") as det:
        by_processes = det.predict(items)
        went_to_processes = [det.decoder.decoder_for(i) is det.decoder.files for i in items]
        assert isinstance(det.decoder.files, DecodePool)
    assert went_to_processes == [isinstance(i, (str, bytes)) for i in items]  # paths and bytes; arrays stay
    assert [r.path for r in by_processes] == [r.path for r in by_threads]
    assert [r.logit for r in by_processes] == [r.logit for r in by_threads]  # equal, not close
    assert [r.error for r in by_processes] == [r.error for r in by_threads]
    assert [r.flags for r in by_processes] == [r.flags for r in by_threads]  # the facts crossed the process boundary
    assert sum(r.error is not None for r in by_threads) == 9  # 4 bad files (one twice), 3 as bytes, the 42


@pytest.mark.slow
def test_pool_copies_out_exactly_what_load_tiles_gives(files, tmp_path):
    big = tmp_path / "big.png"  # policy tiles: several tiles, larger than a slot: through the pipe
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)).save(big)
    for spec, path in ((SPEC, files[0]), (SPEC.replace(policy="tiles"), big), (SPEC.replace(policy="tiles"), files[0])):
        pool = DecodePool(spec, 10**8, 64, workers=1)
        try:
            arrays, error, facts = pool.result(pool.submit(path))
        finally:
            pool.close()
        assert error is None and np.array_equal(arrays, load_tiles(path, spec, 10**8, 64))
        assert facts == load_prepared(path, spec, 10**8, 64)[1]


@pytest.mark.slow
@pytest.mark.timeout(120)  # a fault test fails in its own time, never hangs CI
def test_a_worker_dead_before_its_files_arrive_costs_no_file(files):
    good = [p for p in files if p.suffix in (".png", ".jpg") and p.exists() and p.stat().st_size > 300]
    pool = DecodePool(SPEC, 10**8, 64, workers=2, depth=2, chunk=2)
    try:
        victim = pool.processes()[0]
        os.kill(victim.pid, signal.SIGKILL)
        victim.join(timeout=10)
        tickets = [pool.submit(p) for p in good]  # the dead worker's chunks cannot be written: sent elsewhere
        results = [pool.result(t) for t in tickets]
        for path, (arrays, error, _) in zip(good, results):
            assert error is None and np.array_equal(arrays, load_tiles(path, SPEC))
        assert victim not in pool.processes() and len(pool.processes()) == 2  # replaced: as many workers as asked
        assert all(p.is_alive() for p in pool.processes())
    finally:
        pool.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("chunk", [1, 4])
def test_a_worker_killed_while_decoding_costs_exactly_that_file(files, chunk):
    """A worker that dies holding files costs exactly the first one it had not answered (the one
    it was decoding); the files queued behind it go to the other workers. The worker is held with
    SIGSTOP (it answers nothing; a FIFO used to hold it, but FIFOs are no longer opened) until it
    is killed."""
    good = [p for p in files if p.suffix in (".png", ".jpg") and p.exists() and p.stat().st_size > 300]
    order = good * 2
    pool = DecodePool(SPEC, 10**8, 64, workers=2, depth=2, chunk=chunk)
    try:
        holder = pool._workers[0]  # the first chunk goes to the first worker
        os.kill(holder.process.pid, signal.SIGSTOP)
        tickets = [pool.submit(p) for p in order]  # the other worker decodes while this one is held
        assert holder.order[0] == tickets[0] and len(holder.order) > 1  # files are queued behind the first
        os.kill(holder.process.pid, signal.SIGKILL)
        arrays, error, _ = pool.result(tickets[0])
        assert arrays is None and "decoding process died (killed by signal 9)" in error
        for path, t in zip(order[1:], tickets[1:]):
            arrays, error, _ = pool.result(t)
            assert error is None and np.array_equal(arrays, load_tiles(path, SPEC))
        assert holder.process not in pool.processes() and len(pool.processes()) == 2  # it was replaced
        assert [pool.result(pool.submit(p))[1] for p in good] == [None] * len(good)  # a replacement works
    finally:
        pool.close()


def test_encoded_bytes_decode_as_their_file_does(files):
    good = [p for p in files if p.suffix in (".png", ".jpg") and p.exists() and p.stat().st_size > 300]
    pool = DecodePool(SPEC, 10**8, 64, workers=1)
    try:
        tickets = [pool.submit(p.read_bytes()) for p in good] + [pool.submit(b"not an image")]
        results = [pool.result(t) for t in tickets]
        for path, (arrays, error, _) in zip(good, results):
            assert error is None and np.array_equal(arrays, load_tiles(path, SPEC))
        assert results[-1] == (None, "not an image (unrecognised format)", NO_FACTS)
    finally:
        pool.close()


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_close_leaves_no_shared_memory_and_no_processes(random_onnx, files):
    det = Detector(random_onnx, workers=2, decode="processes")
    det.predict(list(map(str, files)))
    processes = det.decoder.files.processes()
    assert our_segments(os.getpid()) and all(p.is_alive() for p in processes)
    det.close()
    assert our_segments(os.getpid()) == []
    assert not any(p.is_alive() for p in processes)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_workers_that_cannot_start_end_the_pool_with_one_clear_error(files, tmp_path):
    """A script without the `if __name__ == "__main__":` guard: every spawned worker re-runs it
    and exits before decoding anything. That is no file's fault: none gets a "died while decoding"
    record; the pool gives up after a few such deaths (no endless respawning), says why, and
    leaves no shared memory behind."""
    script = tmp_path / "no_guard.py"
    script.write_text(
        "import os\n"
        "from lfm.runtime.decode_pool import SHM_PREFIX, DecodePool, DecodePoolError\n"
        "from lfm.runtime.spec import ModelSpec\n"
        "pool = DecodePool(ModelSpec(input='uint8', layout='NHWC', size=64), 10**8, 64, workers=2)\n"
        "try:\n"
        f"    pool.result(pool.submit({str(files[0])!r}))\n"
        "except DecodePoolError as e:\n"
        "    print('refused:', e)\n"
        "print('segments left:', [n for n in os.listdir('/dev/shm') if n.startswith(f'{SHM_PREFIX}{os.getpid()}-')])\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "refused: the decoding processes exit before decoding anything" in r.stdout, r.stdout
    assert "if __name__ == '__main__':" in r.stdout and "segments left: []" in r.stdout, r.stdout


def test_unknown_decode_mode_is_refused(random_onnx):
    with pytest.raises(ValueError, match="decode: must be one of threads, processes, gpu, got 'fpga'"):
        Detector(random_onnx, decode="fpga")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_ctrl_c_with_processes_keeps_records_and_leaves_nothing(random_onnx, files, tmp_path):
    good = [str(p) for p in files if p.exists() and p.stat().st_size > 300]
    listing = tmp_path / "many.txt"
    listing.write_text("\n".join(good[i % len(good)] for i in range(20000)))
    p = subprocess.Popen(INFER + ["--model", str(random_onnx), f"@{listing}", "--batch-size", "1", "--workers", "2",
                                  "--decode", "processes"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = p.stdout.readline()
    workers = children(p.pid)
    assert our_segments(p.pid) and workers
    p.send_signal(signal.SIGINT)
    rest, err = p.stdout.read(), p.stderr.read()
    p.wait(timeout=120)
    assert p.returncode == 130, err
    lines = [first] + rest.splitlines()
    assert all(json.loads(line)["error"] is None for line in lines) and len(lines) < 20000
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"interrupted: {len(lines)} of 20000")
    deadline = time.monotonic() + 10
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(w) for w in workers)
    assert our_segments(p.pid) == []


@pytest.mark.parametrize("slots", [0, 1])
def test_a_ring_smaller_than_the_work_brings_the_rest_through_the_pipe(files, monkeypatch, slots):
    """A container's small /dev/shm: the ring is cut to its budget, the other answers carry their pixels."""
    import lfm.runtime.decode_pool as decode_pool

    monkeypatch.setattr(decode_pool, "SHM_BUDGET", slots * 64 * 64 * 3)
    good = [p for p in files if p.suffix in (".png", ".jpg") and p.exists() and p.stat().st_size > 300]
    pool = DecodePool(SPEC, 10**8, 64, workers=2, chunk=4)
    try:
        assert len(pool._free_slots) == slots
        results = [pool.result(t) for t in [pool.submit(p) for p in good * 2]]
        for path, (arrays, error, _) in zip(good * 2, results):
            assert error is None and np.array_equal(arrays, load_tiles(path, SPEC))
        assert len(pool._free_slots) == slots  # every slot came back
    finally:
        pool.close()


def test_the_ring_takes_at_most_half_of_the_free_shared_memory(monkeypatch):
    import lfm.runtime.decode_pool as decode_pool

    slot = 256 * 256 * 3
    free = {"f_bavail": 64 * 2**20 // 4096, "f_frsize": 4096}  # a container's default 64 MB, all free
    monkeypatch.setattr(decode_pool.os, "statvfs", lambda path: type("st", (), free))
    assert decode_pool.ring_slots(10**6, slot) == 32 * 2**20 // slot  # half of it: 170 slots of 192 kB
    assert decode_pool.ring_slots(7, slot) == 7
    free["f_bavail"] = 0  # full: no ring, every answer through the pipe
    assert decode_pool.ring_slots(10**6, slot) == 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_workers_leave_sigint_and_sigterm_to_the_parent(files):
    """A group-wide SIGTERM (a server draining its requests) must not cost the files being decoded."""
    good = [p for p in files if p.suffix in (".png", ".jpg") and p.exists() and p.stat().st_size > 300]
    pool = DecodePool(SPEC, 10**8, 64, workers=1)
    try:
        assert pool.result(pool.submit(good[0]))[1] is None  # the worker has set up its handlers
        worker = pool.processes()[0]
        for sig in (signal.SIGINT, signal.SIGTERM):
            os.kill(worker.pid, sig)
        results = [pool.result(t) for t in [pool.submit(p) for p in good]]
        assert pool.processes() == [worker] and worker.is_alive()
        assert [e for _, e, _ in results] == [None] * len(good)
    finally:
        pool.close()
    assert not worker.is_alive()  # close() still stops it


def test_default_workers_follow_the_cores_this_process_may_use(monkeypatch, random_onnx):
    """A 16-core GPU host decodes with 16 processes (threads stop at 8); a container's cpuset counts, not the machine."""
    import lfm.runtime.options as options_module  # default_workers lives in the options layer

    monkeypatch.setattr(options_module.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert options_module.default_workers("processes") == 16
    assert options_module.default_workers("threads") == options_module.default_workers() == 8
    with Detector(random_onnx, decode="processes") as det:
        assert det.workers == 16  # started lazily: no process is spawned here
    monkeypatch.setattr(options_module.os, "sched_getaffinity", lambda pid: {3}, raising=False)
    assert options_module.default_workers("processes") == options_module.default_workers("threads") == 1


def test_lent_results_are_views_until_released_and_then_their_slots_serve_again(files):
    good = [p for p in files if p.suffix in (".png", ".jpg") and p.exists() and p.stat().st_size > 300]
    pool = DecodePool(SPEC, 10**8, 64, workers=1, depth=1, chunk=1, hold=2)
    try:
        assert len(pool._free_slots) == 3  # 1 in flight + 2 to hold
        t0, t1, t2 = (pool.submit(p) for p in good[:3])
        a0, _, _ = pool.result(t0, lend=True)
        a1, _, _ = pool.result(t1, lend=True)
        a2, _, _ = pool.result(t2, lend=True)  # the hold is full: this one was copied out
        assert not a0.flags.owndata and not a1.flags.owndata and a2.flags.owndata
        assert np.array_equal(a0, load_tiles(good[0], SPEC)) and np.array_equal(a1, load_tiles(good[1], SPEC))
        pool.release(t0)
        pool.release(t2)  # copied out: nothing to release, no slot counted twice
        assert len(pool._free_slots) == 2
        for p in good[3:] * 3:  # the released slot is written again; the held one is not
            arrays, error, _ = pool.result(pool.submit(p))
            assert error is None and arrays.flags.owndata and np.array_equal(arrays, load_tiles(p, SPEC))
        assert np.array_equal(a1, load_tiles(good[1], SPEC))  # a held slot is never written over
        pool.release(t1)
    finally:
        pool.close()


@pytest.mark.slow
def test_detector_with_lent_slots_gives_the_thread_records_over_many_batches(random_onnx, tmp_path):
    """Batches formed from views of the ring, slots reused hundreds of times, a small hold that
    runs out (copies), tiles through the pipe: every logit equal to the thread path's."""
    rng = np.random.default_rng(5)
    paths = []
    for i in range(40):
        p = tmp_path / f"f{i}.{'jpg' if i % 3 else 'png'}"
        Image.fromarray(rng.integers(0, 256, (60 + i, 90 - i, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    items = paths * 6 + [str(tmp_path / "missing.png")]
    with Detector(random_onnx, batch_size=5, workers=2) as det:
        want = det.predict(items)
    with Detector(random_onnx, batch_size=5, workers=2, decode="processes") as det:
        got = det.predict(items)
        pool = det.decoder.files
        assert pool._hold > 0 and not pool._held and not det.decoder._routes  # it lent, and all came back
        stopped = det.predict_iter(items)
        next(stopped)
        stopped.close()  # an abandoned iterator gives its slots back too
        assert not pool._held and not det.decoder._routes
        assert [r.logit for r in det.predict(items[:30])] == [r.logit for r in want[:30]]
    assert [(r.path, r.logit, r.error) for r in got] == [(r.path, r.logit, r.error) for r in want]


@pytest.mark.slow
def test_closing_while_a_lent_view_lives_is_silent_and_the_view_stays_readable(files):
    """Ctrl-C in the middle of a batch leaves views of the ring in the traceback's frames: close()
    unlinks the segment, the memory lives as long as the view, and nothing is printed at exit."""
    good = next(str(p) for p in files if p.suffix == ".png" and p.exists() and p.stat().st_size > 300)
    code = f"""
import os, numpy as np
from lfm.runtime.decode_pool import DecodePool, SHM_PREFIX
from lfm.runtime.preprocess import load_tiles
from lfm.runtime.spec import ModelSpec
if __name__ == "__main__":
    spec = ModelSpec(input="uint8", layout="NHWC", size=64)
    pool = DecodePool(spec, 10**8, 64, workers=1, hold=4)
    t = pool.submit({good!r})
    view, _, _ = pool.result(t, lend=True)
    assert not view.flags.owndata
    pool.close()
    assert np.array_equal(view, load_tiles({good!r}, spec))
    assert not [n for n in os.listdir("/dev/shm") if n.startswith(f"{{SHM_PREFIX}}{{os.getpid()}}-")]
    print("ok")
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0 and p.stdout == "ok\n" and p.stderr == "", p.stderr
