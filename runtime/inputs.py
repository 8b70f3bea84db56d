"""Expanding the command line's paths (files, directories, globs) into inputs, losing none.

Every file named directly is an input, whatever its extension (a non-image then gets an error
record). Every mention counts: a file named twice, or named and also inside a directory named,
gets a record per mention (as the Python API does for a list with repeats); within one
directory or glob each file is listed once.
A directory contributes its image files (by extension, recursively, sorted); the
other files it holds are counted in ``Expansion.notes``, never silently ignored. A glob
contributes its matches, expanded the same way. A path or pattern that names nothing becomes
an error record of its own, so the output accounts for every argument.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

from .preprocess import is_image_path


@dataclass
class Expansion:
    inputs: list[str] = field(default_factory=list)  # files to score, in order, once per mention
    errors: dict[str, str] = field(default_factory=dict)  # argument -> problem (also kept in order in inputs)
    notes: list[str] = field(default_factory=list)  # what was left out, for stderr


def _walk_images(directory: str, exp: Expansion, add_error) -> list[str]:
    """Image files under directory, recursively and sorted, following symlinked directories
    once each (a symlink loop is noted, not walked forever). A subdirectory that cannot be
    listed becomes an error record of its own."""
    found, other, loops = [], 0, []
    visited = set()

    def unreadable(e: OSError):
        add_error(e.filename or directory, f"cannot read directory ({e.strerror or e})")

    for root, dirs, files in os.walk(directory, onerror=unreadable, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:  # reached again through a symlink: a loop or a second path to it
            loops.append(root)
            dirs[:] = []
            continue
        visited.add(real)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            if is_image_path(name):
                found.append(os.path.join(root, name))
            else:
                other += 1
    if other:
        exp.notes.append(f"{directory}: left out {other} file(s) without an image extension")
    if loops:
        exp.notes.append(f"{directory}: {len(loops)} symlinked folder(s) lead back to folders already read "
                         f"(first: {loops[0]}); read once")
    return found


def expand_paths(args: list[str], errors: dict[str, str] | None = None) -> Expansion:
    """``errors``: arguments already known to be bad (e.g. an unreadable @list), kept in place."""
    exp = Expansion()

    def add(path: str):
        exp.inputs.append(path)

    def add_error(arg: str, problem: str):
        exp.errors.setdefault(arg, problem)
        exp.inputs.append(arg)

    for arg in args:
        if errors and arg in errors:
            add_error(arg, errors[arg])
        elif os.path.isdir(arg):
            images = _walk_images(arg, exp, add_error)
            if not images:
                add_error(arg, "directory holds no image files")
            for p in images:
                add(p)
        elif os.path.exists(arg) or os.path.islink(arg):
            add(arg)
        elif glob.has_magic(arg):
            matches = sorted(glob.glob(arg, recursive=True))
            if not matches:
                add_error(arg, "no file matches this pattern")
            for m in matches:
                if os.path.isdir(m):
                    for p in _walk_images(m, exp, add_error):
                        add(p)
                else:
                    add(m)
        else:
            add(arg)  # decoding reports "no such file" for it, in its place
    return exp
