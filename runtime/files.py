"""Output files: where they may be written, and with which permissions (no heavy imports).

``tempfile.mkstemp`` creates files with mode 600 whatever the umask, so a model, engine or
checkpoint written to a temp file and renamed would be readable by its owner alone: a Triton
container or a service running as another user could not load it. ``default_mode`` is the mode
a plain ``open(path, "w")`` gives (0o666 less the umask); ``give_default_mode`` applies it.
"""
from __future__ import annotations

import hashlib
import os


def current_umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc), else by the
    set-and-restore dance (not thread-safe, hence the second choice)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode() -> int:
    return 0o666 & ~current_umask()


def give_default_mode(fd_or_path) -> None:
    """chmod a file (an open descriptor or a path) to the mode ``open()`` would have given it."""
    if isinstance(fd_or_path, int):
        os.fchmod(fd_or_path, default_mode())
    else:
        os.chmod(fd_or_path, default_mode())


def output_problem(path: str, example_name: str) -> str | None:
    """Why ``path`` cannot be written as an output file, in one line; None if it can. Checked
    before the work, and no folder is ever created for it."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        return f"{path}: is a directory; give a file name such as {os.path.join(path, example_name)}"
    if not os.path.isdir(directory):
        return f"{path}: folder {directory} does not exist"
    if not os.access(directory, os.W_OK):
        return f"{path}: folder {directory} is not writable"
    return None


def file_sha256(path: str | os.PathLike) -> str:
    """The file's SHA-256, read in 1 MiB chunks (models and engines can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (hard links and symlinks included); False if either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


class ReplacedAtEnd:
    """A text output written beside its destination and renamed onto it when the run ends.

    Until ``commit`` the previous file at ``path`` is untouched, so a run that crashes or is
    killed never destroys an earlier result (its ``.partial`` file is removed where Python still
    runs). A Ctrl-C'd run commits: the file then holds the complete records written so far.
    A destination that exists and is not a regular file (/dev/stdout, a FIFO) is written in place.
    The file gets the mode a plain ``open()`` gives (not mkstemp's 0600)."""

    def __init__(self, path: str):
        import tempfile

        self.path = path
        self._temp = None
        if os.path.exists(path) and not os.path.isfile(path):
            self.stream = open(path, "w", encoding="utf-8", newline="")
            return
        folder = os.path.dirname(os.path.abspath(path))
        fd, self._temp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".partial")
        give_default_mode(fd)
        self.stream = os.fdopen(fd, "w", encoding="utf-8", newline="")

    def commit(self) -> None:
        self.stream.close()
        if self._temp:
            os.replace(self._temp, self.path)
            self._temp = None

    def discard(self) -> None:
        self.stream.close()
        if self._temp:
            try:
                os.unlink(self._temp)
            except OSError:
                pass
            self._temp = None
