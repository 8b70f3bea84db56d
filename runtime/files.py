"""Output files: where they may be written, and with which permissions (no heavy imports).

``tempfile.mkstemp`` creates files with mode 600 whatever the umask, so a model, engine or
checkpoint written to a temp file and renamed would be readable by its owner alone: a Triton
container or a service running as another user could not load it. ``default_mode`` is the mode
a plain ``open(path, "w")`` gives (0o666 less the umask); ``give_default_mode`` applies it.
"""
from __future__ import annotations

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
