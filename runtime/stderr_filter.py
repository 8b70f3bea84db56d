"""Drop known lines that libraries write straight to file descriptor 2 (their C++ loggers), and
nothing else.

    with drop_stderr_lines(rb"\\[.* E .*\\] core_worker\\.cc:\\d+: Actor with class name: ", prefix=b"["):
        ...  # Ray's C++ logger writes to fd 2: those lines go, every other byte passes

While the block runs, fd 2 is a pipe read by a small filter process that forwards every line
except those matching ``pattern`` to the real stderr. A process, not a thread: if the driver
dies (a C++ abort), what it wrote last is still in the pipe, and the filter forwards it. It
ignores SIGINT and SIGTERM (they reach the whole process group) and ends when the pipe closes.
Python's own ``sys.stderr`` writes straight to the real stderr meanwhile, so a terminal is still
a terminal for progress lines and nothing Python prints waits on the filter.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys

# The filter process: forwards complete lines not matching PATTERN, and a partial line at once
# unless it starts with PREFIX (it may become a line to drop: a library writes its line whole).
_FILTER = r"""
import os, re, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
drop = re.compile(sys.argv[1].encode("latin-1"))
prefix = sys.argv[2].encode("latin-1")
held = b""

def forward(data):
    while data:
        data = data[os.write(1, data):]

try:
    while True:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        *lines, held = (held + chunk).split(b"\n")
        out = b"".join(line + b"\n" for line in lines if not drop.match(line))
        if held and held[:len(prefix)] != prefix[:len(held)]:
            out, held = out + held, b""
        forward(out)
    forward(held)
except OSError:  # the real stderr closed (| head): nothing left to show
    pass
"""


@contextlib.contextmanager
def drop_stderr_lines(pattern: bytes, prefix: bytes):
    """fd 2 through a filter that drops whole lines matching ``pattern`` (a bytes regex, matched
    at the line's start), which all start with ``prefix``. Does nothing where fd 2 cannot be
    redirected."""
    try:
        real = os.dup(2)
    except OSError:  # no stderr at all
        yield
        return
    read_end, write_end = os.pipe()
    try:
        child = subprocess.Popen([sys.executable, "-I", "-S", "-c", _FILTER, pattern.decode("latin-1"),
                                  prefix.decode("latin-1")], stdin=read_end, stdout=real, stderr=real)
    except OSError:  # cannot start the filter: leave stderr as it is
        for fd in (read_end, write_end, real):
            os.close(fd)
        yield
        return
    os.close(read_end)
    python_stderr = sys.stderr
    python_stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    swapped = _writes_to_fd2(python_stderr)
    if swapped:  # Python's own messages keep the real stderr: a terminal stays a terminal
        sys.stderr = open(real, "w", buffering=1, encoding=python_stderr.encoding, errors=python_stderr.errors,
                          closefd=False)
    try:
        yield
    finally:
        if swapped:
            sys.stderr.flush()
            sys.stderr = python_stderr
        with contextlib.suppress(Exception):
            python_stderr.flush()
        os.dup2(real, 2)  # the pipe loses its last writer: the filter forwards the rest and ends
        if not swapped:  # else ``real`` stays open: a handler made meanwhile (logging's) may write to it
            os.close(real)
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a process started meanwhile holds the pipe: the filter ends with it
            pass


def _writes_to_fd2(stream) -> bool:
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):  # pytest's capture, a StringIO: not fd 2
        return False
