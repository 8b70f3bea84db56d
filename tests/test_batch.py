"""runtime/batch.py: corpus scoring on Ray Data, against infer.py on the same files.

One local Ray (2 CPUs) serves the module; the command joins it as a notebook would. Real
files, a real ONNX Runtime session in each actor, real Parquet and JSONL shards: the records
equal infer.py's (logits equal, not close), bad files are records, a killed actor costs no record,
an interrupted run resumes with only its missing shards, and the lean runtime never imports Ray.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lfm.runtime import batch_inputs

ROOT = Path(__file__).resolve().parents[1]
SCORER = "MapBatches(Scorer)"  # in the scoring actors' process titles (ray::MapWorker(MapBatches(Scorer)))


# -- fixtures and helpers -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="corpus scoring needs the [cluster] extra (ray[data])")
    pytest.importorskip("ray.data", reason="corpus scoring needs the [cluster] extra (ray[data])")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def noise_image(path: Path, h: int, w: int, seed: int, mode: str = "RGB") -> Path:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img = Image.fromarray(a)
    if mode != "RGB":
        img = img.convert(mode)
    img.save(path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Generated images of several sizes, modes and formats, and the bad files a crawl holds."""
    d = tmp_path_factory.mktemp("corpus")
    (d / "sub").mkdir()
    for i in range(10):
        noise_image(d / f"im{i:02d}.png", 60 + 7 * i, 90 - 3 * i, seed=i)
    noise_image(d / "sub" / "gray.png", 70, 70, seed=20, mode="L")
    noise_image(d / "sub" / "alpha.png", 66, 80, seed=21, mode="RGBA")
    noise_image(d / "sub" / "photo.jpg", 120, 100, seed=22)
    (d / "not_an_image.png").write_bytes(b"this is text, not a PNG")
    good = (d / "im00.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 2])
    (d / "empty.jpg").write_bytes(b"")
    (d / "notes.txt").write_text("left out of a folder listing, and said so")
    return d


@pytest.fixture(scope="module")
def other_onnx(random_onnx, tmp_path_factory) -> Path:
    """Another model of the same kind (same spec, same name): random_onnx with its last bias
    one higher, so every logit differs by 1, as an older model left at the same path would."""
    onnx = pytest.importorskip("onnx", reason="editing a model needs the [export] extra")
    from onnx import numpy_helper

    proto = onnx.load(str(random_onnx))
    bias = next(t for t in proto.graph.initializer if t.name == "model.fc.bias")
    bias.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(bias) + 1.0, bias.name))
    path = tmp_path_factory.mktemp("other_onnx") / random_onnx.name
    onnx.save(proto, str(path))
    return path


def read_shards(out: Path) -> list[dict]:
    """Every record in the output folder, shard by shard, in input order."""
    import pyarrow.parquet as pq

    rows = []
    for shard in sorted(out.glob("shard-*")):
        if shard.suffix == ".parquet":
            rows += pq.read_table(shard).to_pylist()
        else:
            rows += [json.loads(line) for line in shard.read_text().splitlines()]
    return rows


def infer_records(model: Path, args: list[str], out: Path) -> list[dict]:
    from lfm.runtime.infer import main

    main(["--model", str(model), *args, "--output", str(out), "--format", "jsonl"])
    return [json.loads(line) for line in out.read_text().splitlines()]


def batch(model: Path, args: list[str], out: Path, *options: str) -> int:
    from lfm.runtime.batch import main

    return main([str(model), *args, "--output", str(out), *options])


def assert_same_records(got: list[dict], want: list[dict], model: Path) -> None:
    sha = hashlib.sha256(model.read_bytes()).hexdigest()
    assert [r["path"] for r in got] == [r["path"] for r in want]
    for g, w in zip(got, want):
        assert g["error"] == w["error"], g["path"]
        assert g["label"] == w["label"], g["path"]
        if w["error"] is None:  # equal, not close: the same load_tiles pixels reach the same graph; ONNX
            # Runtime's CPU kernels give an image the same logit whatever its batch and thread count
            assert (g["logit"], g["score"]) == (w["logit"], w["score"]), (g["path"], g["logit"] - w["logit"])
        else:
            assert g["logit"] is None and g["score"] is None
        assert g["flags"] == w["flags"], g["path"]  # parquet list<string> or a JSON list: infer.py's list
        assert g["model_sha256"] == sha


def scorer_pids() -> set[int]:
    """Scoring actors of this test's Ray (descendants of this process), by their process title."""
    me, found = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            continue
        if SCORER in title and _descends_from(int(entry), me):
            found.add(int(entry))
    return found


def _descends_from(pid: int, ancestor: int) -> bool:
    for _ in range(10):
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            return False
        if pid == ancestor:
            return True
        if pid <= 1:
            return False
    return False


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class Background:
    """batch.main() in a thread, its exit status (or exception) kept, bounded in time."""

    def __init__(self, *args):
        self.status, self.error = None, None
        self.thread = threading.Thread(target=self._run, args=args, daemon=True)
        self.thread.start()

    def _run(self, *args):
        try:
            self.status = batch(*args)
        except BaseException as e:  # noqa: BLE001  (reported by join)
            self.error = e

    def join(self, timeout_s: float) -> int:
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"the batch run did not end within {timeout_s:.0f} s"
        if self.error:
            raise self.error
        return self.status


# -- the same records as infer.py -------------------------------------------------------------------------

@pytest.mark.slow
def test_records_match_infer_with_bad_files_as_records(ray_cluster, random_onnx, corpus, tmp_path, capsys):
    args = [str(corpus), str(corpus / "missing.png"), str(corpus / "nothing*.png"), str(corpus / "im03.png")]
    want = infer_records(random_onnx, args, tmp_path / "infer.jsonl")
    capsys.readouterr()  # infer.py's own notes
    # The sub-folder through a file:// URI (read with pyarrow.fs, as s3:// would be): same images.
    uri = f"file://{corpus / 'sub'}"
    status = batch(random_onnx, args + [uri], tmp_path / "out", "--shard-size", "4", "--batch-size", "3")
    err = capsys.readouterr().err
    got = read_shards(tmp_path / "out")
    from_uri = got[len(want):]
    assert_same_records(got[:len(want)], want, random_onnx)
    assert_same_records([{**r, "path": r["path"].replace("file://", "", 1)} for r in from_uri],
                        [r for r in want if "/sub/" in r["path"]], random_onnx)
    errors = {Path(r["path"]).name: r["error"] for r in got if r["error"]}
    assert set(errors) == {"not_an_image.png", "truncated.png", "empty.jpg", "missing.png", "nothing*.png"}
    flags = {Path(r["path"]).name: r["flags"] for r in got}
    assert flags["photo.jpg"][0] == "low-jpeg-quality:75" and flags["missing.png"] == []  # Pillow's default quality
    assert "no such file" in errors["missing.png"] and "no file matches" in errors["nothing*.png"]
    assert status == 1  # as infer.py: 1 when any input failed
    assert "left out 1 file(s) without an image extension" in err
    summary = err.strip().splitlines()[-1]
    n = len(got)
    assert summary.startswith(f"scored {n - len(errors)} of {n} inputs, {len(errors)} failed") and "images/s" in summary
    success = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    assert success["inputs"] == n and success["failed"] == len(errors) and success["shards"] == (n + 3) // 4


@pytest.mark.slow
def test_records_match_infer_on_the_reference_images(ray_cluster, random_onnx, reference_images, tmp_path):
    folders = sorted({str(path.parent) for path, _, _ in reference_images})
    want = infer_records(random_onnx, folders, tmp_path / "infer.jsonl")
    assert len(want) >= len(reference_images)
    status = batch(random_onnx, folders, tmp_path / "out", "--format", "jsonl", "--shard-size", "32")
    got = read_shards(tmp_path / "out")
    assert all(p.suffix == ".jsonl" for p in (tmp_path / "out").glob("shard-*"))
    assert_same_records(got, want, random_onnx)
    assert status == (1 if any(r["error"] for r in want) else 0)


@pytest.mark.slow
def test_tiles_policy_matches_infer(ray_cluster, random_onnx, tmp_path):
    # Under tiles the decoders ship whole images and the scorers cut the tiles: another path.
    images = tmp_path / "images"
    images.mkdir()
    for i, (h, w) in enumerate([(200, 150), (130, 260), (64, 64)]):
        noise_image(images / f"t{i}.png", h, w, seed=300 + i)
    options = ["--policy", "tiles", "--tile-reduce", "mean"]
    want = infer_records(random_onnx, [str(images), *options], tmp_path / "infer.jsonl")
    assert batch(random_onnx, [str(images)], tmp_path / "out", *options) == 0
    assert_same_records(read_shards(tmp_path / "out"), want, random_onnx)


# -- exactly once when a worker dies ---------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(600)  # a fault test fails in its own time, never hangs CI
def test_a_killed_actor_costs_no_record(ray_cluster, random_onnx, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(60):
        noise_image(images / f"k{i:02d}.png", 96, 96, seed=100 + i)
    out = tmp_path / "out"
    earlier = scorer_pids()  # actors of an earlier test's run may still be on their way out
    # One actor, small shards and batches, a larger input size: the run lasts seconds after
    # the first shard is written, and the only actor holds queued work when it dies.
    run = Background(random_onnx, [str(images)], out, "--actors", "1", "--shard-size", "6", "--batch-size", "2",
                     "--size", "224")
    wait_for(lambda: list(out.glob("shard-*.parquet")), 180, "the first shard")
    victims = wait_for(lambda: scorer_pids() - earlier, 30, "the scoring actor's process")
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    replaced = wait_for(lambda: scorer_pids() - victims - earlier or not run.thread.is_alive(), 120,
                        "a new scoring actor")
    status = run.join(240)
    assert replaced is not True, "the run ended before Ray replaced the killed actor: nothing was tested"
    got = read_shards(out)
    want = infer_records(random_onnx, [str(images), "--size", "224"], tmp_path / "infer.jsonl")
    assert status == 0
    assert sorted(r["path"] for r in got) == sorted(str(p) for p in images.iterdir())  # each input once
    assert_same_records(got, want, random_onnx)


# -- resume ---------------------------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(600)  # a fault test fails in its own time, never hangs CI
def test_an_interrupted_run_resumes_with_only_its_missing_shards(ray_cluster, random_onnx, corpus, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for i in range(40):
        noise_image(images / f"r{i:02d}.png", 96, 96, seed=200 + i)
    out, args = tmp_path / "out", [str(images), str(corpus / "not_an_image.png")]
    options = ("--actors", "1", "--shard-size", "4", "--batch-size", "2", "--size", "160")

    def interrupt_after_first_shard():
        wait_for(lambda: list(out.glob("shard-*.parquet")), 180, "the first shard")
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the main thread gets KeyboardInterrupt

    helper = threading.Thread(target=interrupt_after_first_shard, daemon=True)
    helper.start()
    try:
        status = batch(random_onnx, args, out, *options)
    except KeyboardInterrupt:  # the signal came after the run's own handler: still an interrupted run
        status = 130
    helper.join(60)
    assert "interrupted:" in capsys.readouterr().err
    first = {p.name: p.stat() for p in out.glob("shard-*.parquet")}
    assert status == 130 and 1 <= len(first) < 11 and not (out / "_SUCCESS").exists()
    (out / ".shard-000010.parquet.0123456789ab.partial").write_bytes(b"a half-written shard of a killed run")

    # A rerun with another listing or model is refused in one line; the same command resumes.
    assert batch(random_onnx, args[:1], out, *options) == 2
    assert "holds the shards of another run" in capsys.readouterr().err
    assert batch(random_onnx, args, out, *options) == 1  # the non-image fails, as with infer.py
    err = capsys.readouterr().err
    assert f"{len(first)} already complete" in err and f"{11 - len(first)} shard(s) written" in err
    for name, before in first.items():  # complete shards were skipped, not rewritten
        after = (out / name).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert not list(out.glob(".*.partial")) and (out / "_SUCCESS").exists()
    want = infer_records(random_onnx, [*args, "--size", "160"], tmp_path / "infer.jsonl")
    assert_same_records(read_shards(out), want, random_onnx)
    # Everything complete: a third run scores nothing and says so.
    assert batch(random_onnx, args, out, *options) == 1
    assert "0 shard(s) written, 11 already complete" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_rerun_scores_incomplete_shards_again_and_refuses_any_other_run(ray_cluster, random_onnx, other_onnx,
                                                                          corpus, tmp_path, capsys):
    """The manifest's rules one by one: a rerun with another model (same name, other bytes), another
    listing of the same length, other settings, shard size or format is refused in one line naming
    what differs. The same command scores again exactly the shards that are not complete: one
    holding another count (what a filesystem without atomic moves can leave) and one that cannot
    be read; a complete one is neither rewritten nor sent to the cluster again."""
    import pyarrow.parquet as pq

    images = tmp_path / "images"
    images.mkdir()
    for i in range(11):
        noise_image(images / f"d{i:02d}.png", 72, 72, seed=500 + i)
    out, args = tmp_path / "out", [str(images), str(corpus / "not_an_image.png")]  # 12 inputs: 3 shards of 4
    options = ("--shard-size", "4", "--batch-size", "2")
    assert batch(random_onnx, args, out, *options) == 1
    want = infer_records(random_onnx, args, tmp_path / "infer.jsonl")
    capsys.readouterr()

    others = [(other_onnx, args, options, "model_sha256"),
              (random_onnx, args[::-1], options, "listing_sha256"),
              (random_onnx, args, (*options, "--threshold", "0.7"), "settings"),
              (random_onnx, args, ("--shard-size", "6", "--batch-size", "2"), "shard_size"),
              (random_onnx, args, (*options, "--format", "jsonl"), "format")]
    for model, inputs, flags, differs in others:
        assert batch(model, inputs, out, *flags) == 2, differs
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "holds the shards of another run" in err and f"({differs}: " in err, err
    assert_same_records(read_shards(out), want, random_onnx)  # untouched by the refused runs

    shard0 = out / "shard-000000.parquet"
    table = pq.read_table(shard0)
    metadata = {**table.schema.metadata, b"lfm.count": b"3"}
    pq.write_table(table.slice(0, 3).replace_schema_metadata(metadata), shard0)  # 3 records of 4, says so
    (out / "shard-000001.parquet").write_bytes(b"PAR1 cut off")
    complete = (out / "shard-000002.parquet").stat()
    assert batch(random_onnx, args, out, *options) == 1
    err = capsys.readouterr().err
    assert "2 shard(s) written, 1 already complete" in err, err
    assert "delivered twice" not in err, err  # the complete shard's inputs were not scored again
    after = (out / "shard-000002.parquet").stat()
    assert (after.st_ino, after.st_mtime_ns) == (complete.st_ino, complete.st_mtime_ns)
    assert_same_records(read_shards(out), want, random_onnx)


# -- the two stages, in this process ----------------------------------------------------------------------------

@pytest.mark.parametrize("policy", ["resize", "tiles"])
def test_the_stages_score_as_the_detector_from_model_bytes(random_onnx, other_onnx, corpus, tmp_path, monkeypatch,
                                                           policy):
    """The decoding stage gives exactly the arrays the Detector's decoders give (load_tiles: the
    policy applied once, tiles cut there), and the scorer scores them as they are: logits equal,
    not close, to the Detector's on the files (the same runner settings and batches)."""
    pa = pytest.importorskip("pyarrow", reason="the stages exchange pyarrow tables (the [cluster] extra)")
    import tempfile

    from lfm.runtime.backends import make_runner
    from lfm.runtime.batch_stages import Scorer, decode_batch
    from lfm.runtime.detector import Detector
    from lfm.runtime.options import PipelineOptions
    from lfm.runtime.preprocess import load_tiles

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the node's model cache goes here
    paths = [str(corpus / "im00.png"), str(corpus / "not_an_image.png"), str(corpus / "sub" / "alpha.png"), "gone.png",
             str(corpus / "sub" / "photo.jpg")]
    options = PipelineOptions(policy=policy, size=48 if policy == "tiles" else None, batch_size=2, workers=1)
    with Detector(make_runner(random_onnx, threads=1), options) as det:
        want, spec = det.predict(paths), det.spec
    inputs = pa.table({"index": pa.array(range(6), pa.int64()),
                       "path": pa.array([os.fsencode(p) for p in paths + ["x*"]], pa.binary()),
                       "error": pa.array([None] * 5 + ["no file matches this pattern"], pa.string())})
    decoded = decode_batch(inputs, spec=spec, max_pixels=10**8, max_tiles=64)
    for i in (0, 2):
        row = decoded.slice(i, 1).to_pylist()[0]
        arrays = np.frombuffer(row["pixels"], np.uint8).reshape(row["count"], row["height"], row["width"], 3)
        np.testing.assert_array_equal(arrays, load_tiles(paths[i], spec, 10**8, 64))
    assert policy != "tiles" or decoded.column("count").to_pylist()[0] > 1
    sha = hashlib.sha256(random_onnx.read_bytes()).hexdigest()
    # No driver file to load (a worker on another node), or another model at the driver's path
    # there (an older file): the model that was checksummed comes as bytes, cached per node.
    for driver_path in (None, str(other_onnx)):
        scorer = Scorer({"m.onnx": random_onnx.read_bytes()}, "m.onnx", sha, driver_path, 1, options)
        try:
            got = scorer(decoded).to_pylist()
        finally:
            scorer.detector.close()
        assert (tmp_path / "lfm-batch-models" / sha / "m.onnx").read_bytes() == random_onnx.read_bytes()
        assert [g["index"] for g in got] == [0, 1, 2, 3, 4, 5]
        assert [(g["error"], g["label"], g["logit"], g["flags"]) for g in got[:5]] == [
            (w.error, w.label, w.logit, w.flags) for w in want]  # the facts crossed from the decoding stage
        assert got[5]["error"] == "no file matches this pattern" and got[5]["logit"] is None and got[5]["flags"] == []
    assert "low-jpeg-quality:75" in want[4].flags


# -- exactly once on the driver, whatever the cluster hands back ----------------------------------------------

def test_the_driver_writes_each_shard_once_and_never_a_short_one(tmp_path, capsys):
    pa = pytest.importorskip("pyarrow", reason="shards are written with pyarrow (the [cluster] extra)")
    import argparse

    from lfm.runtime.batch import Job, Model
    from lfm.runtime.batch_inputs import Listing
    from lfm.runtime.batch_shards import OutputFolder

    def block(*index, again=False):  # the scorers' output: (index, logit, score, label, error, flags)
        logits = [float(i) + (100.0 if again else 0.0) for i in index]  # a retried task's answer may differ
        return pa.table({"index": pa.array(index, pa.int64()), "logit": pa.array(logits),
                         "score": pa.array([0.5] * len(index)), "label": pa.array(["real"] * len(index)),
                         "error": pa.array([None] * len(index), pa.string()),
                         "flags": pa.array([["uncertain"]] * len(index), pa.list_(pa.string()))})

    class Blocks:  # Ray Data's stream: blocks in any order; a retried task's block may come twice
        def __init__(self, *blocks):
            self.blocks = blocks

        def iter_batches(self, **_):
            yield from self.blocks

    def job(folder: str) -> Job:
        args = argparse.Namespace(shard_size=2, progress="off", output=str(tmp_path / folder))
        return Job(args, Listing(inputs=list("abcde")), Model("m.onnx", None, {}, "f00d", {}, "fake"),
                   OutputFolder(str(tmp_path / folder), "parquet"), {0: 2, 1: 2, 2: 1}, {})

    complete = job("complete")
    # Twice: input 3 while its shard waits for input 2 (the first answer stays), 0, 3 and 1 after theirs were written.
    blocks = Blocks(block(3, 0), block(3, again=True), block(1, 0), block(4), block(2, 3), block(1, again=True))
    assert complete.stream(blocks, 5) is None
    assert [r["path"] for r in read_shards(tmp_path / "complete")] == list("abcde")
    assert [r["logit"] for r in read_shards(tmp_path / "complete")] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [r["flags"] for r in read_shards(tmp_path / "complete")] == [["uncertain"]] * 5
    assert complete.duplicates == 4 and set(complete.done) == {0, 1, 2}
    short = job("short")  # input 4 never comes back: its shard is not written, the run says so
    assert short.stream(Blocks(block(0, 1), block(2, 3)), 5) == 1
    assert "1 inputs never came back from the cluster" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "short").glob("shard-*")) == ["shard-000000.parquet",
                                                                           "shard-000001.parquet"]


# -- the command line and the lean runtime ---------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_run_on_its_own_ray_prints_no_error_level_line_and_no_auth_warning(random_onnx, tmp_path):
    """The command as a user runs it, starting its own Ray: Ray's false alarm about the actors'
    constructor arguments (an E line) and its token-authentication warning are not shown."""
    pytest.importorskip("ray.data", reason="corpus scoring needs the [cluster] extra (ray[data])")
    images = tmp_path / "images"
    images.mkdir()
    for i in range(4):
        noise_image(images / f"q{i}.png", 80, 80, seed=400 + i)
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}
    env["HOME"] = str(tmp_path)  # Ray keeps its token in ~/.ray: this test's own
    r = subprocess.run([sys.executable, str(ROOT / "runtime" / "batch.py"), str(random_onnx), str(images),
                        "--output", str(tmp_path / "out"), "--shard-size", "2"],
                       capture_output=True, text=True, timeout=280, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1].startswith("scored 4 of 4 inputs, 0 failed"), r.stderr
    error_level = [line for line in lines if re.match(r"\[[^\]]* [EF] \d+ \d+\]", line) or " ERROR " in line]
    assert not error_level, r.stderr
    assert not [line for line in lines if "oken authentication" in line], r.stderr
    assert len(read_shards(tmp_path / "out")) == 4

def test_bad_usage_is_one_line_before_any_work(random_onnx, corpus, tmp_path, capsys):
    pytest.importorskip("ray", reason="needs the [cluster] extra")
    from lfm.runtime.batch import main

    def status_of(argv) -> int:
        try:
            return main(argv)
        except SystemExit as e:  # argparse's own refusals
            return e.code

    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [([str(random_onnx), str(corpus), "-o", str(a_file)], "is a file; --output names a folder"),
             ([str(tmp_path / "missing.onnx"), str(corpus), "-o", str(tmp_path / "o1")], "missing.onnx: no such file"),
             ([str(random_onnx), str(corpus), "-o", str(corpus)], "no _manifest.json of a batch run"),
             ([str(random_onnx), str(corpus), "-o", str(tmp_path / "o2"), "--decode-cpus", "-1"], "must be a number >= 0")]
    for argv, says in cases:
        status = status_of(argv)
        err = capsys.readouterr().err
        assert status == 2 and says in err and "Traceback" not in err, (argv, err)
        assert len([line for line in err.splitlines() if not line.startswith("note:")]) == 1 or "usage:" in err, err
    assert not (tmp_path / "o1").exists() and not (tmp_path / "o2").exists() and list(corpus.glob("shard-*")) == []


def test_the_lean_runtime_never_imports_ray(random_onnx, corpus, tmp_path):
    code = (
        "import sys\n"
        "import lfm.runtime.batch, lfm.runtime.batch_inputs, lfm.runtime.batch_shards, lfm.runtime.batch_stages\n"
        "import lfm.runtime.infer, lfm.runtime.detector, lfm.runtime.cli\n"
        "assert 'ray' not in sys.modules and 'pyarrow' not in sys.modules, 'imported at import time'\n"
        "sys.modules['ray'] = None  # as on an install without the [cluster] extra\n"
        "sys.argv = ['lfm-batch']\n"
        "from lfm.runtime.batch import main\n"
        f"sys.exit(main([{str(random_onnx)!r}, {str(corpus)!r}, '-o', {str(tmp_path / 'out')!r}]))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "needs the Python package 'ray' (the [cluster] extra)" in r.stderr
    assert "pip install 'lfm-deploy[cluster]'" in r.stderr
    assert not (tmp_path / "out").exists()
    for argv in (["--version"], ["--help"]):
        r = subprocess.run([sys.executable, str(ROOT / "runtime" / "batch.py"), *argv], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0 and ("lfm-deploy" in r.stdout if argv == ["--version"] else "--shard-size" in r.stdout)
    r = subprocess.run([sys.executable, "-m", "lfm.runtime.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert "batch" in r.stdout and "Ray Data" in r.stdout


# -- listing and shards (no Ray) --------------------------------------------------------------------------------

def test_listing_takes_uris_lists_and_globs_and_shards_deterministically(corpus, tmp_path):
    pytest.importorskip("pyarrow", reason="URIs are listed with pyarrow.fs (the [cluster] extra)")
    uri = f"file://{corpus}"
    listing_file = tmp_path / "list.txt"
    listing_file.write_text(f"# a comment\n{corpus / 'im01.png'}\n{uri}/sub\n")
    got = batch_inputs.list_inputs([f"{uri}/im0[0-2].png", f"@{listing_file}", f"{uri}/**/*.jpg",
                                    f"{uri}/none*", f"{uri}/absent.png", "s3x://bucket/key"])
    assert got.inputs == [f"{uri}/im00.png", f"{uri}/im01.png", f"{uri}/im02.png", str(corpus / "im01.png"),
                          f"{uri}/sub/alpha.png", f"{uri}/sub/gray.png", f"{uri}/sub/photo.jpg",
                          f"{uri}/empty.jpg", f"{uri}/sub/photo.jpg", f"{uri}/none*", f"{uri}/absent.png",
                          "s3x://bucket/key"]
    assert got.errors[f"{uri}/none*"] == "no file matches this pattern"
    assert "Unrecognized filesystem" in got.errors["s3x://bucket/key"]
    assert f"{uri}/absent.png" not in got.errors  # missing: decoding says "no such file" in its place
    folder = batch_inputs.list_inputs([uri])
    assert folder.inputs[0] == f"{uri}/empty.jpg" and any("without an image extension" in n for n in folder.notes)
    assert batch_inputs.read_uri_bytes(f"{uri}/im00.png") == (corpus / "im00.png").read_bytes()
    # Shards: position i -> shard i // size; the fingerprint follows the listing and its order.
    assert [list(batch_inputs.shard_range(s, 10, 4)) for s in range(batch_inputs.shard_count(10, 4))] == \
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    a = batch_inputs.listing_sha256(got.inputs)
    assert a == batch_inputs.listing_sha256(list(got.inputs)) != batch_inputs.listing_sha256(got.inputs[::-1])



def loop_tree(root: Path) -> Path:
    """A folder whose subfolder links back to it (a symlink loop), with a non-image, hidden
    names, and a top-level file that sorts after the subfolder's name."""
    d = root / "data"
    for name in ("top.png", "sub/inner.png", ".git/x.png", ".hidden.png"):
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(b"png")
    (d / "notes.txt").write_text("not an image")
    return d


def test_every_form_of_input_is_listed_by_the_same_rules(tmp_path):
    """A file:// URI of a folder with a symlink loop listed each file 41 times (pyarrow followed
    the loop 40 levels deep), and so did a glob, while the plain path read it once (issue 24,
    item 5). Path, glob, @LIST, -, file:// URI and glob URI now give the same inputs, each file
    once, the loop noted; an object store's listing follows the same rules and order."""
    import io

    pafs = pytest.importorskip("pyarrow.fs", reason="URIs are listed with pyarrow.fs (the [cluster] extra)")
    d = loop_tree(tmp_path)
    (d / "sub" / "up").symlink_to(d, target_is_directory=True)
    want = [str(d / "top.png"), str(d / "sub" / "inner.png")]  # a folder's files before its subfolders'
    (tmp_path / "list.txt").write_text(f"{d}\n")
    forms = {"path": [str(d)], "glob": [f"{d}/**/*.png"], "@LIST": [f"@{tmp_path / 'list.txt'}"], "-": ["-"],
             "URI": [f"file://{d}"], "glob URI": [f"file://{d}/**/*.png"]}
    for form, args in forms.items():
        got = batch_inputs.list_inputs(args, stdin=io.StringIO(f"{d}\n"))
        expected = [f"file://{p}" for p in want] if "URI" in form else want
        assert got.inputs == expected and not got.errors, form
        assert any("symlinked folder(s) lead back to folders already read" in n for n in got.notes), form
    # An object store (pyarrow's mock filesystem as s3://bucket): no symlinks, the same rules
    store = pafs._MockFileSystem()
    for path in ["bucket/data/top.png", "bucket/data/sub/inner.png", "bucket/data/.git/x.png",
                 "bucket/data/.hidden.png", "bucket/data/notes.txt"]:
        store.create_dir(path.rsplit("/", 1)[0])
        with store.open_output_stream(path) as f:
            f.write(b"png")
    batch_inputs._FILESYSTEMS["s3://bucket"] = store
    try:
        for args in (["s3://bucket/data"], ["s3://bucket/data/**/*.png"]):
            got = batch_inputs.list_inputs(args)
            assert got.inputs == ["s3://bucket/data/top.png", "s3://bucket/data/sub/inner.png"], args
        assert batch_inputs.list_inputs(["s3://bucket/data"]).notes == \
            ["s3://bucket/data: left out 1 file(s) without an image extension"]
    finally:
        del batch_inputs._FILESYSTEMS["s3://bucket"]

@pytest.mark.parametrize("fmt", ["parquet", "jsonl"])
def test_a_shard_whose_writing_fails_leaves_no_file(tmp_path, fmt):
    """Atomic shards: a write that fails midway (here the file-size limit, as a full disk would)
    leaves neither a shard file, which a rerun would take for complete, nor its temp file."""
    pytest.importorskip("pyarrow", reason="shards are written with pyarrow (the [cluster] extra)")
    out = tmp_path / "out"
    code = (
        "import resource, signal\n"
        "from lfm.runtime.batch_shards import OutputFolder\n"
        f"out = OutputFolder({str(out)!r}, {fmt!r})\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit write() fails (EFBIG) instead\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))\n"
        "records = [(f'/photos/{i:06d}.jpg', i / 7, 0.5, 'real', None, []) for i in range(5000)]\n"
        "try:\n"
        "    out.write_shard(0, records, 'f00d')\n"
        "except OSError as e:\n"
        "    print('failed', type(e).__name__)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("failed"), (r.stdout, r.stderr)
    assert sorted(os.listdir(out)) == []


def test_a_rerun_removes_what_an_earlier_run_left_unfinished(tmp_path):
    """Temp files of a run killed mid-write and its _SUCCESS go (a rerun's _SUCCESS appears only
    when every shard is complete again); shards, the manifest and other dot files stay."""
    pytest.importorskip("pyarrow", reason="the output folder is written with pyarrow.fs (the [cluster] extra)")
    from lfm.runtime.batch_shards import OutputFolder

    out = tmp_path / "out"
    out.mkdir()
    stale = [".shard-000003.parquet.0123456789ab.partial", "_SUCCESS"]
    kept = [".DS_Store", "_manifest.json", "shard-000000.parquet"]
    for name in stale + kept:
        (out / name).write_text("x")
    assert OutputFolder(str(out), "parquet").remove_stale() == 2
    assert sorted(os.listdir(out)) == sorted(kept)


def test_on_its_own_ray_a_plan_that_leaves_no_cpu_to_decode_is_refused(capsys):
    import argparse

    from lfm.runtime.batch import size_pools

    args = argparse.Namespace(actors=2, gpus_per_actor=None, cpus_per_actor=1.0, decode_cpus=1.0, threads=None)
    refused = size_pools(args, {"CPU": 2.0}, local=True)
    assert isinstance(refused, str) and "need 3 CPUs; the cluster has 2" in refused
    # On a cluster that may grow (an autoscaler adds nodes) the plan stands, with a note.
    assert size_pools(args, {"CPU": 2.0}, local=False) == {"actors": 2, "gpus_per_actor": 0.0, "cpus_per_actor": 1.0,
                                                            "threads": 1}
    assert "Ray waits for the autoscaler" in capsys.readouterr().err
    args.actors = None  # the default: half the CPUs, which leaves the rest to decode
    assert size_pools(args, {"CPU": 8.0}, local=True)["actors"] == 4
