"""What ``runtime/batch.py`` scores: the input listing, made on the driver, and its shards.

Inputs are listed as infer.py lists them (files, directories, globs, ``@LIST``, ``-``; every
mention counts, a name that matches nothing keeps its place as an error record) plus URIs of
any filesystem pyarrow reads (``s3://``, ``gs://``, ``hdfs://``, ``file://``...), listed through
``pyarrow.fs`` with no client of ours and by infer.py's listing rules (``inputs.add_listed``): a
URI naming a folder contributes its image files (recursively, sorted, hidden names skipped,
the others counted in a note), a URI with glob characters its matches, any other URI itself. A
``file://`` URI is listed and read as the local path it names (a symlink loop read once, a
FIFO refused unread); the records keep the URI.

Shards: input ``i`` (its position in the listing) belongs to shard ``i // shard_size``. The
listing is deterministic (sorted folders and globs, arguments in order), so a rerun with the
same arguments makes the same shards, and ``listing_sha256`` tells a changed listing apart.
Nothing here imports Ray; pyarrow is imported only for URIs.
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field

from .cli import path_list_entries, read_path_arguments
from .files import first_line
from .inputs import Expansion, add_listed, expand_local, expand_paths, glob_parts


def is_uri(path: str) -> bool:
    """``scheme://...`` (s3, gs, hdfs, file, ...): read through pyarrow.fs, not open()."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path) is not None


@dataclass
class Listing:
    inputs: list[str] = field(default_factory=list)  # one per mention, in order
    errors: dict[str, str] = field(default_factory=dict)  # input -> problem known before decoding
    notes: list[str] = field(default_factory=list)

    def extend(self, exp: Expansion) -> None:
        self.inputs += exp.inputs
        for k, v in exp.errors.items():
            self.errors.setdefault(k, v)
        self.notes += exp.notes


def list_inputs(args: list[str], stdin=None, null: bool = False) -> Listing:
    """The command line's inputs, expanded, in order (see the module's docstring); ``null``:
    path lists are NUL-separated (``--null``)."""
    args, list_errors = _read_uri_lists(args, null)
    paths, more_errors = read_path_arguments(args, stdin, null)
    list_errors = {**more_errors, **list_errors}  # a remote list's own problem, not "no such local file"
    listing, local = Listing(), []
    for path in paths:
        if is_uri(path) and path not in list_errors:
            if local:  # consecutive local paths go through infer.py's expansion in one call
                listing.extend(expand_paths(local, list_errors))
                local = []
            listing.extend(expand_uri(path))
        else:
            local.append(path)
    if local:
        listing.extend(expand_paths(local, list_errors))
    return listing


def _read_uri_lists(args: list[str], null: bool) -> tuple[list[str], dict[str, str]]:
    """``@s3://bucket/list.txt``: a path list stored on a remote filesystem, read in place."""
    out, errors = [], {}
    for arg in args:
        if arg.startswith("@") and is_uri(arg[1:]):
            try:
                text = read_uri_bytes(arg[1:]).decode("utf-8", "surrogateescape")
            except OSError as e:
                problem = "no such file or folder" if isinstance(e, FileNotFoundError) else first_line(e)
                errors[arg] = f"cannot read the path list {arg[1:]}: {problem}"
                out.append(arg)
                continue
            out += path_list_entries(text, null)
        else:
            out.append(arg)
    return out, errors


# -- URIs ------------------------------------------------------------------------------------------

_FILESYSTEMS: dict[str, object] = {}  # "scheme://netloc" -> pyarrow FileSystem, one per process


def filesystem(uri: str):
    """(pyarrow FileSystem, path inside it, the URI's prefix before that path) for a URI. The
    filesystem is made once per process and location: an S3 or GCS client is not free."""
    from pyarrow import fs as pafs

    uri = uri.rstrip("/") if not uri.endswith(":///") else uri
    scheme, rest = uri.split("://", 1)
    key = f"{scheme}://{rest.split('/', 1)[0]}"
    fs = _FILESYSTEMS.get(key)
    if fs is None or scheme == "file":  # file: let pyarrow decode the path (%20 and friends)
        fs, path = pafs.FileSystem.from_uri(uri)
        _FILESYSTEMS[key] = fs
    elif scheme in ("s3", "gs", "gcs", "abfs", "abfss", "az"):
        path = rest  # object stores: "bucket/key", pyarrow's convention
    else:
        path = "/" + rest.split("/", 1)[1] if "/" in rest else "/"
    prefix = uri[:len(uri) - len(path)] if path and uri.endswith(path) else f"{scheme}://"
    return fs, path, prefix


def read_uri_bytes(uri: str) -> bytes:
    """The bytes of a file named by a URI; FileNotFoundError or another OSError (one line)
    when it cannot be read, as open() raises them."""
    try:
        fs, path, _ = filesystem(uri)
        with fs.open_input_stream(path) as f:
            return f.read()
    except OSError:
        raise
    except Exception as e:  # pyarrow's ArrowInvalid (a malformed URI, an unknown scheme)
        raise OSError(first_line(e)) from None


def local_path(uri: str) -> str | None:
    """The local path a ``file://`` URI (or any URI of pyarrow's local filesystem) names, else
    None (also for a URI pyarrow cannot parse: reading it then says why)."""
    from pyarrow import fs as pafs

    try:
        fs, path, _ = filesystem(uri)
    except Exception:
        return None
    return path if isinstance(fs, pafs.LocalFileSystem) else None


def expand_uri(uri: str) -> Expansion:
    """One URI argument as infer.py expands a local path, by the same listing rules
    (``inputs.add_listed``): a folder's image files, a glob's matches, a file itself; a folder
    without images or a glob without matches is an error record in its place. A local URI
    (``file://``) is listed by infer.py's own walker, which reads a symlinked folder once; the
    records keep the URI form."""
    from pyarrow import fs as pafs

    exp = Expansion()
    try:
        magic = re.search(r"[*?\[]", uri)
        # URI parsers refuse glob characters: open the folder above them, match below it
        base_uri = uri[:magic.start()].rsplit("/", 1)[0] if magic else uri
        fs, base, prefix = filesystem(base_uri)
        tail = uri[len(base_uri):] if magic else ""
        if isinstance(fs, pafs.LocalFileSystem):
            expand_local(base + tail, exp, arg=uri, shown=lambda path: prefix + path)
        elif magic:
            add_listed(exp, uri, _files_under(fs, base), glob_parts(tail), _uri_of(prefix, base))
        elif fs.get_file_info(base).type == pafs.FileType.Directory:
            add_listed(exp, uri, _files_under(fs, base), None, _uri_of(prefix, base))
        else:
            exp.inputs.append(uri)  # a file, or missing: decoding reports "no such file" in its place
    except Exception as e:  # no credentials, unknown scheme, unreachable store: this argument's record
        exp.add_error(uri, f"cannot list {uri}: {first_line(e)}")
    return exp


def _files_under(fs, path: str) -> list[tuple[str, ...]]:
    """Every file below a remote folder, as names relative to it (object stores have no symlinks)."""
    from pyarrow import fs as pafs

    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    root = path.rstrip("/") + "/"
    return [tuple(i.path[len(root):].split("/")) for i in infos if i.type == pafs.FileType.File]


def _uri_of(prefix: str, base: str):
    return lambda parts: prefix + base.rstrip("/") + "/" + "/".join(parts)


# -- shards ----------------------------------------------------------------------------------------

def shard_count(n_inputs: int, shard_size: int) -> int:
    return (n_inputs + shard_size - 1) // shard_size


def shard_range(shard: int, n_inputs: int, shard_size: int) -> range:
    """The input positions of a shard."""
    return range(shard * shard_size, min(n_inputs, (shard + 1) * shard_size))


def listing_sha256(inputs: list[str]) -> str:
    """A fingerprint of the listing, order included: a rerun resumes only the same listing."""
    h = hashlib.sha256()
    for path in inputs:
        h.update(os.fsencode(path))
        h.update(b"\0")
    return h.hexdigest()
