"""The output folder of ``runtime/batch.py``: shards of records, each written once, atomically.

    OUT/_manifest.json          what the run scores: model checksum, listing fingerprint, settings
    OUT/shard-000000.parquet    the records of inputs 0 .. shard_size-1, in input order
    OUT/shard-000001.parquet    ...
    OUT/_SUCCESS                written last, once every shard is complete: the totals

A shard is written to a hidden temp name beside its final name and moved there when complete
(a rename on a local disk; on an object store the object appears whole or not at all), so a
shard file that exists is complete: its footer's ``lfm.count`` says how many records it holds
and a rerun skips it. Readers (pandas, pyarrow, Ray Data, Spark) skip the ``_`` and ``.``
files, so ``pd.read_parquet("OUT")`` reads the records. Records: path, logit, score, label,
error, flags and model_sha256 (infer.py's record plus the model's checksum; flags a parquet
list<string>, empty for none). JSONL shards hold the same fields, one JSON object per line, as
infer.py writes them.
"""
from __future__ import annotations

import json
import os
import re
import uuid

from .batch_inputs import filesystem, is_uri
from .records import printable

MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
FIELDS = ("path", "logit", "score", "label", "error", "flags", "model_sha256")
EXTENSIONS = {"parquet": "parquet", "jsonl": "jsonl"}
_SHARD_NAME = re.compile(r"^shard-(\d+)\.(parquet|jsonl)$")


def written_by_a_run(name: str) -> bool:
    """Whether a run writes, replaces or removes a file of this name in its output folder: the
    manifest, _SUCCESS, a shard or a shard's temp file (what the output guard protects inputs from)."""
    return name in (MANIFEST, SUCCESS) or bool(_SHARD_NAME.match(name)) or (
        name.startswith(".shard-") and name.endswith(".partial"))


class OutputFolder:
    """OUT, on a local disk or any filesystem pyarrow writes (``s3://bucket/scores``)."""

    def __init__(self, where: str, fmt: str):
        from pyarrow import fs as pafs

        if is_uri(where):
            self.fs, self.root, _ = filesystem(where)
        else:
            self.fs, self.root = pafs.LocalFileSystem(), os.path.abspath(where)
        self.where, self.fmt = where, fmt
        self.fs.create_dir(self.root, recursive=True)

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def shard_name(self, shard: int) -> str:
        return f"shard-{shard:06d}.{EXTENSIONS[self.fmt]}"

    def names(self) -> list[str]:
        from pyarrow import fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=False))
        return sorted(i.base_name for i in infos)

    # -- the run's identity -----------------------------------------------------------------------
    def read_manifest(self) -> dict | None:
        try:
            with self.fs.open_input_stream(self._path(MANIFEST)) as f:
                return json.loads(f.read().decode("utf-8"))
        except FileNotFoundError:
            return None

    def write_manifest(self, manifest: dict) -> None:
        self._write_atomic(MANIFEST, lambda f: f.write((json.dumps(manifest, indent=1) + "\n").encode()))

    def write_success(self, totals: dict) -> None:
        self._write_atomic(SUCCESS, lambda f: f.write((json.dumps(totals, indent=1) + "\n").encode()))

    def remove_stale(self) -> int:
        """Temp files of an earlier run that died mid-write, and its _SUCCESS; how many went."""
        stale = [n for n in self.names() if n.startswith(".shard-") and n.endswith(".partial")] + \
                [n for n in self.names() if n == SUCCESS]
        for name in stale:
            self.fs.delete_file(self._path(name))
        return len(stale)

    # -- shards -----------------------------------------------------------------------------------
    def complete_shards(self, expected: dict[int, int]) -> dict[int, tuple[int, int]]:
        """shard -> (records, failed) for the shards on disk that hold their expected count
        (``expected``: shard -> inputs). A shard file with another count (written by a
        filesystem without atomic moves, or by hand) is not complete and is scored again."""
        done = {}
        for name in self.names():
            m = _SHARD_NAME.match(name)
            if not m or m.group(2) != EXTENSIONS[self.fmt] or int(m.group(1)) not in expected:
                continue
            shard = int(m.group(1))
            try:
                count, failed = self._counts(name)
            except Exception:  # unreadable: score it again
                continue
            if count == expected[shard]:
                done[shard] = (count, failed)
        return done

    def _counts(self, name: str) -> tuple[int, int]:
        if self.fmt == "parquet":
            import pyarrow.parquet as pq

            with self.fs.open_input_file(self._path(name)) as f:
                meta = pq.read_metadata(f).metadata or {}
            return int(meta[b"lfm.count"]), int(meta[b"lfm.failed"])
        with self.fs.open_input_stream(self._path(name)) as f:
            lines = f.read().decode("utf-8").splitlines()
        return len(lines), sum(json.loads(line)["error"] is not None for line in lines)

    def write_shard(self, shard: int, records: list[tuple], model_sha256: str) -> tuple[int, int]:
        """Write a shard's records ((path, logit, score, label, error, flags) in input order) once,
        atomically; (records, failed)."""
        failed = sum(r[4] is not None for r in records)
        if self.fmt == "parquet":
            table = _table(records, model_sha256, {"lfm.shard": shard, "lfm.count": len(records), "lfm.failed": failed})

            def write(f):
                import pyarrow.parquet as pq
                pq.write_table(table, f)
        else:
            text = "".join(json.dumps(dict(zip(FIELDS, (*r, model_sha256)))) + "\n" for r in records)

            def write(f):
                f.write(text.encode("utf-8"))
        self._write_atomic(self.shard_name(shard), write)
        return len(records), failed

    def _write_atomic(self, name: str, write) -> None:
        temp = self._path(f".{name}.{uuid.uuid4().hex[:12]}.partial")
        try:
            with self.fs.open_output_stream(temp) as f:
                write(f)
            self.fs.move(temp, self._path(name))
        except BaseException:
            try:
                self.fs.delete_file(temp)
            except Exception:
                pass
            raise


def _table(records: list[tuple], model_sha256: str, metadata: dict):
    import pyarrow as pa

    # Parquet strings are UTF-8: a name's undecodable bytes are written as \xNN (as infer.py's CSV does).
    columns = {
        "path": pa.array([printable(r[0]) for r in records], pa.string()),
        "logit": pa.array([r[1] for r in records], pa.float64()),
        "score": pa.array([r[2] for r in records], pa.float64()),
        "label": pa.array([r[3] for r in records], pa.string()),
        "error": pa.array([None if r[4] is None else printable(r[4]) for r in records], pa.string()),
        "flags": pa.array([list(r[5] or ()) for r in records], pa.list_(pa.string())),
        "model_sha256": pa.array([model_sha256] * len(records), pa.string()),
    }
    return pa.table(columns).replace_schema_metadata({k: str(v) for k, v in metadata.items()})
