"""Expanding the command line's paths (files, directories, globs) into inputs, losing none.

Every file named directly is an input, whatever its extension or kind (a non-image, a FIFO or a
device then gets an error record from decoding, which never opens it for a blocking read).
Every mention counts: a file named twice, or named and also inside a directory named, gets a
record per mention (as the Python API does for a list with repeats); within one directory or
glob each file is listed once.

The listing rules, the same for every form of input (a path, a glob, the lines of ``@LIST`` or
``-``, a ``file://`` URI, and for the rules that apply to object stores, any URI pyarrow lists):
a directory contributes its image files (by extension, recursively; a folder's files before its
subfolders', each sorted); the other files it holds are counted in ``Expansion.notes``, never
silently ignored; hidden names are skipped; symlinked folders are followed, each real folder read
once (a symlink loop is noted, not walked). A glob contributes the files it matches and the
image files of the folders it matches, under the same rules, walking only the folders it can
reach. A path or pattern that names nothing becomes an error record of its own, so the output
accounts for every argument.
"""
from __future__ import annotations

import fnmatch
import glob
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .preprocess import is_image_path

Parts = tuple  # a file's path below the folder listed, split into its names


@dataclass
class Expansion:
    inputs: list[str] = field(default_factory=list)  # files to score, in order, once per mention
    errors: dict[str, str] = field(default_factory=dict)  # argument -> problem (also kept in order in inputs)
    notes: list[str] = field(default_factory=list)  # what was left out, for stderr

    def add_error(self, arg: str, problem: str) -> None:
        """``arg`` keeps its place in the inputs as an error record."""
        self.errors.setdefault(arg, problem)
        self.inputs.append(arg)


def expand_paths(args: list[str], errors: dict[str, str] | None = None) -> Expansion:
    """``errors``: arguments already known to be bad (e.g. an unreadable @list), kept in place."""
    exp = Expansion()
    for arg in args:
        if errors and arg in errors:
            exp.add_error(arg, errors[arg])
        else:
            expand_local(arg, exp)
    return exp


def image_files(folder: str, other_files: bool = False) -> list[str]:
    """The image files below ``folder`` by the listing rules (see the module's docstring): a
    folder's files before its subfolders', each sorted, hidden names skipped, symlinked folders
    read once; [] when it holds none. For callers that want the files, not records (calibration
    and stress sets, training data); a subfolder that cannot be read is left out. With
    ``other_files``, the files without an image extension too, in their place, for a caller
    that reports each (training's data check names every file it skips, and why)."""
    files, _ = _walk(folder, None, lambda e: None)
    kinds = ("image", "other") if other_files else ("image",)
    return [os.path.join(folder, *parts) for parts in sorted(files, key=_listing_order) if _kind(None, parts) in kinds]


def expand_local(path: str, exp: Expansion, arg: str | None = None, shown: Callable[[str], str] = str) -> None:
    """One local path, folder or glob, added to ``exp`` (see the module's docstring). ``arg``:
    the argument as given, which its error record and notes name; ``shown``: how a file found
    under it is named (both differ from ``path`` for a ``file://`` URI, which keeps its form)."""
    arg = arg or path
    if os.path.isdir(path):
        _list_local(exp, arg, path, None, shown)
    elif os.path.exists(path) or os.path.islink(path):
        exp.inputs.append(arg)
    elif glob.has_magic(path):
        base, pattern = split_glob(path)
        if base and not os.path.isdir(base):
            exp.add_error(arg, "no file matches this pattern")
        else:
            _list_local(exp, arg, base, pattern, shown)
    else:
        exp.inputs.append(arg)  # decoding reports "no such file" for it, in its place


# -- the listing rules, one place for every form of input: local folders and globs, file:// and remote URIs --

def split_glob(pattern: str) -> tuple[str, Parts]:
    """("folder to list", the pattern's names below it): the leading names without glob
    characters are the folder ("" for the current one)."""
    names = pattern.split("/")
    first = next(i for i, name in enumerate(names) if glob.has_magic(name))
    base = "/".join(names[:first]) or ("/" if pattern.startswith("/") else "")
    return base, glob_parts("/".join(names[first:]))


def glob_parts(pattern: str) -> Parts:
    return tuple(name for name in pattern.split("/") if name not in ("", "."))


def add_listed(exp: Expansion, arg: str, files: Iterable[Parts], pattern: Parts | None,
               path_of: Callable[[Parts], str], loops: list[str] = ()) -> None:
    """The files a folder (``pattern`` None) or a glob lists, from every file below the folder
    (names relative to it), into ``exp`` in one order: a folder's files before its subfolders',
    each sorted. A folder gives its image files and counts the others in a note; a glob gives
    every file it matches and the image files inside the folders it matches. Hidden names are
    skipped unless the pattern names them (glob's rule). ``loops``: symlinked folders that led
    back to folders already read, for the note."""
    found, other = [], 0
    for parts in sorted(files, key=_listing_order):
        kind = _kind(pattern, parts)
        if kind == "other":
            other += 1
        elif kind is not None:
            found.append(path_of(parts))
    if other:
        exp.notes.append(f"{arg}: left out {other} file(s) without an image extension")
    if loops:
        exp.notes.append(f"{arg}: {len(loops)} symlinked folder(s) lead back to folders already read "
                         f"(first: {loops[0]}); read once")
    if not found:
        exp.add_error(arg, "directory holds no image files" if pattern is None else "no file matches this pattern")
    exp.inputs += found


def _list_local(exp: Expansion, arg: str, base: str, pattern: Parts | None, shown: Callable[[str], str]) -> None:
    def path_of(parts: Parts) -> str:
        return shown(os.path.join(base, *parts))

    files, loops = _walk(base, pattern, lambda e: exp.add_error(shown(e.filename or base),
                                                                  f"cannot read directory ({e.strerror or e})"))
    add_listed(exp, arg, files, pattern, path_of, [shown(loop) for loop in loops])


def _walk(base: str, pattern: Parts | None, on_error: Callable[[OSError], None]) -> tuple[list[Parts], list[str]]:
    """Every file below folder ``base`` ("" for the current one) that the pattern may list, and
    the symlinked folders that lead back to a folder already read. Symlinked folders are
    followed, each real folder read once, so a symlink loop is noted, not walked forever;
    folders the pattern cannot reach are not entered."""
    files, loops, visited = [], [], set()
    top = base or "."
    for root, dirs, names in os.walk(top, onerror=on_error, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:  # reached again through a symlink: a loop or a second path to it
            loops.append(root)
            dirs[:] = []
            continue
        visited.add(real)
        rel = () if root == top else tuple(os.path.relpath(root, top).split(os.sep))
        dirs[:] = sorted(d for d in dirs if _may_hold(pattern, rel + (d,)))
        files += [rel + (name,) for name in names]
    return files, loops


def _listing_order(parts: Parts) -> tuple:
    """A folder's files before its subfolders, each sorted by name (os.walk's order, sorted)."""
    return tuple((1, name) for name in parts[:-1]) + ((0, parts[-1]),)


def _kind(pattern: Parts | None, parts: Parts) -> str | None:
    """What the file at ``parts`` is to a folder or glob argument: "match" (a file the pattern
    names, listed whatever it is), "image" or "other" (below the folder, or below a folder the
    pattern names), or None (not listed: hidden, or outside the pattern)."""
    if pattern is not None and _glob_match(pattern, parts):
        return "match"
    below = 0 if pattern is None else next((i for i in range(1, len(parts)) if _glob_match(pattern, parts[:i])), None)
    if below is None or any(_hidden(name) for name in parts[below:]):
        return None
    return "image" if is_image_path(parts[-1]) else "other"


def _may_hold(pattern: Parts | None, folder: Parts) -> bool:
    """Whether a file the argument lists can lie below ``folder``."""
    if pattern is None or any(_glob_match(pattern, folder[:i]) for i in range(1, len(folder))):
        return not _hidden(folder[-1])  # below a listed folder: hidden folders are skipped
    return _glob_match(pattern, folder, partial=True)


def _glob_match(pattern: Parts, parts: Parts, partial: bool = False) -> bool:
    """Whether the names ``parts`` match the pattern's (glob's rules: fnmatch per name, ``**``
    any number of folders, a hidden name only by a pattern that starts with a dot), or with
    ``partial`` whether they can be the start of a match."""
    if not parts:
        return partial or all(p == "**" for p in pattern)
    if not pattern:
        return False
    if pattern[0] == "**":
        return (_glob_match(pattern[1:], parts, partial)
                or not _hidden(parts[0]) and _glob_match(pattern, parts[1:], partial))
    return ((not _hidden(parts[0]) or pattern[0].startswith(".")) and fnmatch.fnmatchcase(parts[0], pattern[0])
            and _glob_match(pattern[1:], parts[1:], partial))


def _hidden(name: str) -> bool:
    return name.startswith(".")
