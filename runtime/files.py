"""Output files: where they may be written, and with which permissions; an error's text in one line (no heavy imports).

``tempfile.mkstemp`` creates files with mode 600 whatever the umask, so a model, engine or
checkpoint written to a temp file and renamed would be readable by its owner alone: a Triton
container or a service running as another user could not load it. ``default_mode`` is the mode
a plain ``open(path, "w")`` gives (0o666 less the umask); ``give_default_mode`` applies it.
"""
from __future__ import annotations

import hashlib
import os
import stat


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
    before the work, and no folder is ever created for it. A symlink is judged by its target,
    where the file will be written (``write_target``)."""
    directory = os.path.dirname(write_target(path)) or "."
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


def first_line(error: BaseException | str, empty: str | None = None) -> str:
    """The first line of an error's text, for a one-line message (the rest is often a traceback or
    a library's dump). With no text: ``empty`` where given, else the exception's type name."""
    text = str(error).strip()
    if text:
        return text.splitlines()[0]
    if empty is not None:
        return empty
    return type(error).__name__ if isinstance(error, BaseException) else ""


def same_file(a: str, b: str) -> bool:
    """Whether two paths name one file (hard links and symlinks included); False if either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def overwrite_refusal(outputs, inputs, option: str = "--output") -> str | None:
    """Why writing ``outputs`` would destroy one of the command's inputs, in one line; None if
    it would not. The one guard every command that writes files calls, before it opens
    anything for writing.

    ``outputs``: every file the command may write or replace (None and missing files are
    skipped: they cannot clash; so is what is not a regular file, such as /dev/stdout).
    ``inputs``: (what, path) pairs such as ("the checkpoint", "ckpt.pt"); a bare path is "one of
    the inputs". The same file by any name counts, as for ``os.path.samefile``: a symlink, a hard
    link. Each input is stat'ed once, and only when some output exists."""
    written = {}
    for output in outputs:
        identity = _regular_file_identity(output)
        if identity is not None:
            written.setdefault(identity, output)
    if not written:
        return None
    for item in inputs:
        what, path = ("one of the inputs", item) if isinstance(item, (str, os.PathLike)) else item
        output = written.get(_regular_file_identity(path))
        if output is not None:
            alias = "" if os.path.abspath(output) == os.path.abspath(path) else f" ({path})"
            return f"{output}: is {what}{alias}; writing there would destroy it. Choose another {option}"
    return None


def _regular_file_identity(path) -> tuple[int, int] | None:
    """(device, inode) of the regular file ``path`` names (symlinks followed), else None."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # missing, unreadable, or a name with a NUL byte
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISREG(st.st_mode) else None


def files_under(folder) -> list[str]:
    """Every file below ``folder`` (links not followed into folders); [] if it does not exist.
    For the guard: the files a command that replaces or fills a folder may overwrite."""
    return [os.path.join(top, name) for top, _, names in os.walk(folder) for name in names]


def write_target(path: str) -> str:
    """The file a write to ``path`` lands on, as a shell's ``> path`` would: a symlink (a chain of
    them, a dangling one too) is written through to its target, never replaced by a file. The
    result is absolute."""
    return os.path.realpath(path)


def in_place(path: str) -> bool:
    """Whether ``path`` is written where it is rather than through a temp file and a rename: what
    is not a regular file (a FIFO, a terminal) and anything under /dev or /proc (/dev/stdout
    redirected to a file must stay the shell's file, not be renamed over)."""
    absolute = os.path.abspath(path)
    if absolute.startswith(("/dev/", "/proc/")):
        return True
    return os.path.exists(path) and not os.path.isfile(path)


class ReplacedAtEnd:
    """A text output written beside its destination and renamed onto it when the run ends.

    Until ``commit`` the previous file at ``path`` is untouched, so a run that fails (a full
    disk), is stopped (SIGTERM raises ``cli.Terminated`` where ``cli.run`` runs the command) or
    crashes never destroys an earlier result, and its hidden ``.NAME.*.partial`` file is removed
    on every path where Python still runs (only SIGKILL or a power cut can leave one). A Ctrl-C'd
    or SIGTERM'd run commits: the file then holds the complete records written so far.
    A symlink is written through to its target, as a shell's ``> path`` would (``write_target``);
    a destination that is not a regular file (/dev/stdout, a FIFO) is written in place
    (``in_place``). The file gets the mode a plain ``open()`` gives (not mkstemp's 0600).
    As a context manager: committed when the block ends normally, discarded on an exception."""

    def __init__(self, path: str):
        import tempfile

        self.path = path
        self._temp = None
        if in_place(path):
            self.stream = open(path, "w", encoding="utf-8", newline="")
            return
        self._target = write_target(path)
        fd, self._temp = tempfile.mkstemp(dir=os.path.dirname(self._target),
                                          prefix=f".{os.path.basename(self._target)}.", suffix=".partial")
        try:
            give_default_mode(fd)
            self.stream = os.fdopen(fd, "w", encoding="utf-8", newline="")
        except BaseException:
            os.close(fd)
            self._remove_temp()
            raise

    def commit(self) -> None:
        """Close and rename onto the destination; if that fails (the last buffer does not fit on
        the disk), the temp file goes and the error propagates: the earlier file stays."""
        try:
            self.stream.close()
            if self._temp:
                os.replace(self._temp, self._target)
                self._temp = None
        finally:
            self._remove_temp()

    def discard(self) -> None:
        """Drop what was written; the destination stays as it was. Never raises for the
        close (its flush may fail again on the full disk that brought us here)."""
        try:
            self.stream.close()
        except OSError:
            pass
        finally:
            self._remove_temp()

    def _remove_temp(self) -> None:
        if self._temp:
            try:
                os.unlink(self._temp)
            except OSError:
                pass
            self._temp = None

    def __enter__(self):
        return self.stream

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()
