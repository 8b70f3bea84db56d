"""Output-path checks shared by the export commands (no heavy imports)."""
from __future__ import annotations

import os


def output_problem(path: str, example_name: str) -> str | None:
    """Why `path` cannot be written as an output file, in one line; None if it can."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if os.path.isdir(path):
        return f"{path}: is a directory; give a file name such as {os.path.join(path, example_name)}"
    if not os.path.isdir(directory):
        return f"{path}: folder {directory} does not exist"
    if not os.access(directory, os.W_OK):
        return f"{path}: folder {directory} is not writable"
    return None
