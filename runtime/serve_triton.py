"""Triton the process, as serve.py starts it through PyTriton: the Python backend's interpreter
(``fix_python_backend_libpython``), a process group of its own, and its expected start-up lines
left out of the log. Standard library only; PyTriton's pieces are imported where they are used."""
from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import sys
import sysconfig

LOG = logging.getLogger("lfm.serve")

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


# PyTriton's start-up race between model instances (PyTriton 0.5, proxy/model.py and
# communication.py, copied into the model repository and run by each instance's stub): instance 0
# serves its configuration on a Unix socket made by ``asyncio.start_unix_server``, which creates the
# socket file at bind() and accepts only after listen(); every other instance waits (1 s at most)
# for the file to exist and connects at once, so on a loaded machine it can connect between the two
# (ConnectionRefusedError) or not see the file in time. The model then fails to load; nothing of
# ours is wrong and a second start succeeds. Seen in 2 of 4 fresh-clone CI runs (2 instances).
HANDSHAKE_RACE_SIGNS = ("get_config_from_handshake_server",)
HANDSHAKE_RACE_ERRORS = ("ConnectionRefusedError", "Timeout occurred while waiting for config file")
TRITON_START_ATTEMPTS = 2


def is_instance_handshake_race(error: BaseException) -> bool:
    """Whether a failed Triton start is PyTriton's instance handshake race (above), by the model
    load error Triton reports (its stub's traceback travels in the message)."""
    text = str(error)
    return any(s in text for s in HANDSHAKE_RACE_SIGNS) and any(e in text for e in HANDSHAKE_RACE_ERRORS)


def start_triton(make_triton, attempts: int = TRITON_START_ATTEMPTS):
    """``make_triton()`` -> a bound, not yet running PyTriton ``Triton``; runs it in a process
    group of its own with its expected start-up lines left out, and starts it again (a new one)
    when the start failed on PyTriton's instance handshake race, up to ``attempts`` starts in all.
    Returns (the running Triton, the lines left out). Any other failure stops it and is raised."""
    for attempt in range(1, attempts + 1):
        triton = make_triton()
        try:
            with own_process_group(), expected_triton_lines_left_out() as left_out:
                triton.run()
            return triton, left_out
        except Exception as e:
            triton.stop()
            if attempt == attempts or not is_instance_handshake_race(e):
                raise
            LOG.warning("Triton did not load the model: PyTriton's start-up race between instances (an instance "
                        "asked instance 0 for its configuration before its socket listened); starting again "
                        "(attempt %d of %d)", attempt + 1, attempts)
    raise AssertionError("unreachable")
