"""Bad input never crashes the runtime and never loses a record.

A corpus of broken, unusual and awkwardly named inputs goes through `runtime/infer.py --model`;
every input appears exactly once, with a score or with an error naming its problem. Then the
decode-and-preprocess path is fuzzed with mutated image bytes (hypothesis)."""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lfm.runtime.flags import NO_FACTS
from lfm.runtime.preprocess import ImageError, load_tiles
from lfm.runtime.spec import ModelSpec

ROOT = Path(__file__).resolve().parents[1]
INFER = [sys.executable, str(ROOT / "runtime" / "infer.py")]
RNG = np.random.default_rng(0)


def noise(h, w, c=3):
    return RNG.integers(0, 256, (h, w, c) if c else (h, w), dtype=np.uint8)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (8-bit RGB) with no pixel data: a decompression
    bomb as far as any decoder that trusts the header is concerned."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def encoded(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """name -> (path, expected: "ok" or a substring of the error), plus reference twins."""
    d = tmp_path_factory.mktemp("corpus")
    ok_rgb = Image.fromarray(noise(80, 96))
    files: dict[str, tuple[Path, str]] = {}

    def put(name, data: bytes, expect):
        p = d / name
        p.write_bytes(data)
        files[name] = (p, expect)
        return p

    png, jpg = encoded(ok_rgb, "PNG"), encoded(ok_rgb, "JPEG", quality=90)
    put("ok.png", png, "ok")
    put("empty.jpg", b"", "empty file")
    put("truncated.png", png[: len(png) // 2], "truncated or corrupt")
    put("truncated.jpg", jpg[: len(jpg) * 3 // 5], "truncated or corrupt")
    put("corrupt.png", png[:33] + RNG.integers(0, 256, 400, dtype=np.uint8).tobytes(), "corrupt")
    put("notes.jpg", b"these are my notes, not a picture\n" * 20, "not an image")
    put("bomb.png", png_header_only(100_000, 100_000), "exceeds the limit")
    put("tiny.png", encoded(Image.fromarray(noise(20, 20)), "PNG"), "too small")
    put("gray.png", encoded(Image.fromarray(noise(70, 70, 0)), "PNG"), "ok")
    put("palette.png", encoded(Image.fromarray(noise(70, 70)).convert("P"), "PNG"), "ok")
    put("cmyk.jpg", encoded(Image.fromarray(noise(70, 70)).convert("CMYK"), "JPEG"), "ok")
    put("gray16.png", encoded(Image.fromarray((noise(70, 70, 0).astype(np.uint16) * 257)), "PNG"), "ok")
    put("rgba.png", encoded(Image.fromarray(noise(70, 70, 4), "RGBA"), "PNG"), "ok")
    frames = [Image.fromarray(noise(64, 64)).convert("P") for _ in range(3)]
    put("animated.gif", encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0), "ok")
    put("animated_frame0.png", encoded(frames[0].convert("RGB"), "PNG"), "ok")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    rot = put("exif_rotated.jpg", encoded(Image.fromarray(noise(60, 90)), "JPEG", quality=95, exif=exif), "ok")
    upright = np.rot90(np.asarray(Image.open(rot).convert("RGB")), k=-1)  # decoded, turned by hand
    put("exif_upright.png", encoded(Image.fromarray(np.ascontiguousarray(upright)), "PNG"), "ok")
    put("name with spaces.png", png, "ok")
    put("ünïcødé 图像.png", png, "ok")
    (d / "dangling.png").symlink_to(d / "nowhere.png")
    files["dangling.png"] = (d / "dangling.png", "no such file")
    sub = d / "nested"
    sub.mkdir()
    (sub / "deep.png").write_bytes(png)
    files["nested/deep.png"] = (sub / "deep.png", "ok")
    (sub / "loop").symlink_to(d, target_is_directory=True)  # a symlink loop back to the top
    (d / "readme.txt").write_text("not an image, left out and counted")
    return d, files


def run_infer(model, args, tmp_path):
    out = tmp_path / "out.jsonl"
    r = subprocess.run(INFER + ["--model", str(model), "--batch-size", "4", "--policy", "none", *map(str, args),
                                "-o", str(out)], capture_output=True, text=True, timeout=600)
    return r, [json.loads(line) for line in out.read_text().splitlines()]


def test_corpus_every_input_once_with_its_problem(random_onnx, corpus, tmp_path):
    d, files = corpus
    empty_dir = tmp_path / "no_images"
    empty_dir.mkdir()
    missing = tmp_path / "missing.png"
    r, recs = run_infer(random_onnx, [d, empty_dir, missing], tmp_path)
    assert r.returncode == 1, r.stderr  # documented: 1 = some inputs failed
    assert "Traceback" not in r.stderr
    by_path = {}
    for rec in recs:
        assert rec["path"] not in by_path, f"{rec['path']} reported twice"
        by_path[rec["path"]] = rec
    for name, (p, expect) in files.items():
        rec = by_path.pop(str(p), None)
        assert rec is not None, f"{name}: no record"
        if expect == "ok":
            assert rec["error"] is None and rec["logit"] is not None and rec["label"] in ("real", "fake"), (name, rec)
        else:
            assert rec["logit"] is None and expect in rec["error"], (name, rec)
    assert by_path.pop(str(empty_dir))["error"] == "directory holds no image files"
    assert "no such file" in by_path.pop(str(missing))["error"]
    assert not by_path, f"records for inputs nobody gave: {sorted(by_path)}"
    assert "left out 1 file(s) without an image extension" in r.stderr
    assert "symlinked folder(s) lead back" in r.stderr
    # The unusual-but-valid ones were decoded right: first GIF frame, EXIF orientation applied.
    recs_by_name = {os.path.relpath(rec["path"], d): rec for rec in recs if rec["path"].startswith(str(d))}
    assert recs_by_name["animated.gif"]["logit"] == pytest.approx(recs_by_name["animated_frame0.png"]["logit"], rel=1e-6)
    assert recs_by_name["exif_rotated.jpg"]["logit"] == pytest.approx(recs_by_name["exif_upright.png"]["logit"], rel=1e-6)
    assert recs_by_name["name with spaces.png"]["logit"] == pytest.approx(recs_by_name["ok.png"]["logit"], rel=1e-6)


def test_unreadable_subdirectory_becomes_an_error_record(monkeypatch, tmp_path):
    from lfm.runtime import inputs

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"")
    (tmp_path / "locked").mkdir()
    real_scandir = os.scandir

    def scandir(path="."):  # as a non-root user would see a chmod 000 folder (root reads anything)
        if os.path.basename(os.fspath(path)) == "locked":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    exp = inputs.expand_paths([str(tmp_path)])
    assert exp.inputs == [str(tmp_path / "locked"), str(tmp_path / "a" / "x.png")] or \
        sorted(exp.inputs) == sorted([str(tmp_path / "locked"), str(tmp_path / "a" / "x.png")])
    assert exp.errors[str(tmp_path / "locked")] == "cannot read directory (Permission denied)"



# -- files that are not regular files: refused unread, in every decoding path (issue 24, item 4) -------

FIFO_PROBLEM = "not a regular file (a FIFO); left unread"


@pytest.fixture
def special_files():
    """A folder holding an image, a FIFO and a UNIX socket, all named *.png (a short path: a
    socket's name must fit in 108 bytes)."""
    import shutil
    import socket
    import tempfile

    d = Path(tempfile.mkdtemp(prefix="lfm-special-"))
    Image.fromarray(noise(70, 70)).save(d / "ok.png")
    os.mkfifo(d / "fifo.png")  # no writer ever comes: open() for a blocking read waits forever
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(d / "sock.png"))
    try:
        yield d
    finally:
        sock.close()
        shutil.rmtree(d)


@pytest.mark.parametrize("decode", ["threads", "processes"])
def test_a_fifo_socket_or_device_is_an_error_record_not_a_hang(random_onnx, special_files, decode):
    """A FIFO among the inputs (in a folder or named) hung infer.py forever, deaf to Ctrl-C: now
    every non-regular file is an error record and the run ends (the timeout fails the old code)."""
    d = special_files
    r = subprocess.run(INFER + ["--model", str(random_onnx), "--decode", decode, "--workers", "2", str(d),
                                str(d / "fifo.png"), "/dev/zero"], capture_output=True, text=True, timeout=180)
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    got = [(rec["path"], rec["error"]) for rec in map(json.loads, r.stdout.splitlines())]
    assert got == [(str(d / "fifo.png"), FIFO_PROBLEM), (str(d / "ok.png"), None),
                   (str(d / "sock.png"), "not a regular file (a socket); left unread"),
                   (str(d / "fifo.png"), FIFO_PROBLEM), ("/dev/zero", "not a regular file (a character device); left unread")]


def finishes(call, seconds: float = 120):
    """call()'s result, run in a daemon thread so that a blocking read fails the test, not hangs it."""
    import threading

    out = {}

    def target():
        try:
            out["result"] = call()
        except BaseException as e:
            out["error"] = e
    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "blocked reading a file that is not a regular file"
    if "error" in out:
        raise out["error"]
    return out["result"]


def test_every_decoding_path_reads_files_through_the_one_reader(special_files):
    """The GPU decoder's reads, the client's (bytes for the server) and batch.py's Ray decode stage
    (a path and a file:// URI) refuse the FIFO unread, with the thread path's words."""
    from lfm.runtime.gpu_decode import GpuDecoder
    from lfm.runtime.preprocess import read_image_bytes

    fifo = str(special_files / "fifo.png")
    with pytest.raises(ImageError, match="a FIFO"):
        finishes(lambda: read_image_bytes(fifo))
    spec = ModelSpec(input="uint8", layout="NHWC", size=64)

    def gpu_decode():
        dec = GpuDecoder(spec, 10**8, 64, device="cpu", decode_jpegs=lambda tensors: [])
        return dec.result(dec.submit(fifo))
    assert finishes(gpu_decode) == (None, FIFO_PROBLEM, NO_FACTS)
    pytest.importorskip("tritonclient", reason="the client needs the [serve] extra")
    from lfm.runtime.client import LfmClient

    records = finishes(lambda: LfmClient("localhost:1").score([fifo, "/dev/zero"]))  # no request is sent
    assert [r.error for r in records] == [FIFO_PROBLEM, "not a regular file (a character device); left unread"]
    pytest.importorskip("pyarrow", reason="batch.py's stages need the [cluster] extra")
    from lfm.runtime.batch_stages import decode_one

    for source in (fifo, f"file://{fifo}"):
        assert finishes(lambda: decode_one(source, spec, 10**8, 64)) == (None, FIFO_PROBLEM, NO_FACTS)


def test_synthetic_data_skips_a_fifo_among_its_real_photos(special_files):
    """make_synthetic's --real-dir read every image's header with Image.open(path): a FIFO hung it."""
    from lfm.train.make_synthetic import PhotoSource

    with pytest.warns(UserWarning, match=r"skipped 2 images: .*fifo\.png \(not a regular file \(a FIFO\)"):
        source = finishes(lambda: PhotoSource(str(special_files), 64))
    assert source.files == [str(special_files / "ok.png")]

# -- messages: one line, for the reader who gets them, never Python's "[Errno N] ..." --------------


def assert_one_line(text: str, *must: str):
    """An error as the house rules want it: one line, no traceback, no raw errno text."""
    assert text.startswith("error: ") and text.strip().count("\n") == 0, text
    assert "Errno" not in text and "Traceback" not in text, text
    for word in must:
        assert word in text, (word, text)


def test_centre_crop_message_names_the_policy_not_a_cli_flag():
    """The same message reaches infer.py, Detector and Triton-client users: no flag only one has."""
    spec = ModelSpec(policy="center-crop", size=64)
    with pytest.raises(ImageError) as e:
        load_tiles(encoded(Image.fromarray(noise(40, 50)), "PNG"), spec)
    assert "50x40 pixels is too small for LFM" in e.value.problem  # below the model's minimum: no advice at all
    with pytest.raises(ImageError) as e:
        load_tiles(encoded(Image.fromarray(noise(50, 60)), "PNG"), spec)
    assert "60x50 is smaller than the 64x64 centre crop" in e.value.problem
    # the advice keeps the image's own pixels: enlarging it (policy resize) adds what NPR reads as generated
    assert "policy 'none' or 'tiles'" in e.value.problem and "resize" not in e.value.problem
    assert "--" not in e.value.problem and "\n" not in str(e.value)


@pytest.mark.parametrize("side", [1, 10, 47, 48])
def test_an_image_below_the_models_minimum_is_refused_under_every_policy(random_onnx, tmp_path, side):
    """A 1x1 PNG was told "score images this small with policy 'resize'", which scored it "fake,
    0.9957", and resize scored a 20x20 image without a word: enlarging manufactures the
    up-sampling traces NPR reads as generated. Below 48x48 (K=16) an image gets an error record
    naming the minimum and why, under every policy and on every decoding path; never advice to
    enlarge it (issue 24, item 12)."""
    from lfm.runtime.detector import Detector

    png = tmp_path / f"{side}.png"
    png.write_bytes(encoded(Image.fromarray(noise(side, side)), "PNG"))
    items = {"path": str(png), "bytes": png.read_bytes(), "array": noise(side, side), "image": Image.open(png)}
    for policy in ("resize", "center-crop", "none", "tiles"):
        with Detector(random_onnx, policy=policy, size=48, workers=1) as det:
            records = dict(zip(items, det.predict(list(items.values()))))
        for kind, record in records.items():
            if side >= 48:
                assert record.ok, (policy, kind, record)
                continue
            assert record.logit is None and record.score is None, (policy, kind, record)
            assert record.error.startswith(f"{side}x{side} pixels is too small for LFM: the smallest square image "
                                           "it scores is 48x48"), (policy, kind, record.error)
            assert "16 values in each salience map" in record.error and "not enlarged" in record.error
            assert "'resize'" not in record.error
    if side < 48:  # the command says the same, under its default policy (resize)
        r = subprocess.run(INFER + ["--model", str(random_onnx), str(png)], capture_output=True, text=True, timeout=600)
        assert r.returncode == 1 and "48x48" in json.loads(r.stdout)["error"], r.stderr


def tiff_with_bad_tag_offset() -> bytes:
    """A readable TIFF whose XResolution tag points past the end of the file: Pillow warns
    "Truncated File Read" (a UserWarning naming no file) while reading the header."""
    buf = io.BytesIO()
    Image.fromarray(noise(64, 64)).save(buf, "TIFF", dpi=(72, 72))
    data = bytearray(buf.getvalue())
    ifd = struct.unpack("<I", data[4:8])[0]
    for i in range(struct.unpack("<H", data[ifd:ifd + 2])[0]):
        entry = ifd + 2 + 12 * i
        if struct.unpack("<H", data[entry:entry + 2])[0] == 282:  # XResolution
            data[entry + 8:entry + 12] = struct.pack("<I", len(data) + 1000)
    return bytes(data)


def test_header_check_names_the_reason_and_warns_nothing(tmp_path, monkeypatch):
    pytest.importorskip("torch", reason="lfm.train needs the [train] extra")
    import warnings

    from lfm.train.data import check_image_header

    odd = tmp_path / "odd.tif"
    odd.write_bytes(tiff_with_bad_tag_offset())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check_image_header(odd) is None  # usable: the decode decides
    assert [str(w.message) for w in caught] == []

    def refuse(path):  # as a non-root user sees a chmod 000 file (root reads anything)
        raise PermissionError(13, "Permission denied", os.fspath(path))

    monkeypatch.setattr(os.path, "getsize", refuse)
    assert check_image_header(tmp_path / "locked.png") == "cannot read file (Permission denied)"


@pytest.mark.slow
def test_evaluate_counts_every_skipped_file_once(tmp_path):
    """Files skipped at discovery (empty, not an image) and at decode (truncated) are one count,
    one line each; a header Pillow grumbles about is no stray UserWarning."""
    pytest.importorskip("torch", reason="evaluate.py needs the [train] extra")
    from lfm.train.checkpoint import make_checkpoint, save_atomic
    from lfm.train.model import build_model

    ckpt = tmp_path / "ckpt.pt"
    save_atomic(make_checkpoint(build_model(), ModelSpec(policy="resize", size=64)), ckpt)
    data = tmp_path / "data"
    for label in ("0_real", "1_fake"):
        (data / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(noise(64, 64)).save(data / label / f"ok{i}.png")
    png = encoded(Image.fromarray(noise(64, 64)), "PNG")
    bad = {data / "0_real" / "empty.png": b"", data / "0_real" / "notes.jpg": b"my notes\n" * 20,
           data / "1_fake" / "trunc.png": png[: len(png) // 2], data / "1_fake" / "trunc2.png": png[: len(png) // 3]}
    for path, content in bad.items():
        path.write_bytes(content)
    (data / "1_fake" / "odd.tif").write_bytes(tiff_with_bad_tag_offset())
    report = tmp_path / "eval.json"
    r = subprocess.run([sys.executable, str(ROOT / "train" / "evaluate.py"), str(ckpt), "--data", str(data),
                        "--workers", "1", "-o", str(report)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "4 files skipped" in r.stdout and "7 images" in r.stdout, r.stdout
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 4 and all(line.startswith("warning: ") for line in lines), r.stderr
    for path in bad:
        assert sum(str(path) in line for line in lines) == 1, (path, r.stderr)
    assert sorted(json.loads(report.read_text())["skipped"]) == sorted(map(str, bad))


def fake_plan(tmp_path) -> Path:
    """An engine file with its export/to_trt.py sidecar: enough for to_triton.py to write a repository."""
    plan = tmp_path / "lfm.plan"
    plan.write_bytes(b"not really an engine")
    (tmp_path / "lfm.plan.json").write_text(json.dumps({
        "spec": ModelSpec(input="float", layout="NCHW", size=224).to_dict(),
        "input": {"name": "image", "dtype": "float32", "layout": "NCHW"},
        "profiles": [{"min": [1, 3, 48, 48], "opt": [8, 3, 224, 224], "max": [16, 3, 448, 448]}], "plugins": []}))
    return plan


def test_to_triton_repository_problems_are_one_line(tmp_path, capsys, monkeypatch):
    import errno
    import shutil

    from lfm.export.to_triton import main

    plan = fake_plan(tmp_path)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    for repo in (a_file, a_file / "repo", Path("/proc/lfm-repository")):
        if repo.parent == Path("/proc") and not Path("/proc/self").exists():
            continue  # no Linux /proc here: nothing refuses a folder there
        assert main([str(plan), "--repository", str(repo)]) == 2
        assert_one_line(capsys.readouterr().err, str(repo), "--repository")

    def disk_full(src, dst, **kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), dst)

    monkeypatch.setattr(shutil, "copyfile", disk_full)
    repo = tmp_path / "repo"
    assert main([str(plan), "--repository", str(repo)]) == 2
    assert_one_line(capsys.readouterr().err, str(repo), "no space left", "--force")
    assert list(repo.iterdir()) == []  # nothing half-written, no staging folder left


def test_to_triton_existing_models_and_names(tmp_path, capsys):
    from lfm.export.to_triton import main

    plan = fake_plan(tmp_path)
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "lfm").write_text("a file where the ensemble's folder goes")
    assert main([str(plan), "--repository", str(repo)]) == 2
    assert_one_line(capsys.readouterr().err, "lfm already exists", "--force")
    assert main([str(plan), "--repository", str(repo), "--force"]) == 0
    assert (repo / "lfm" / "config.pbtxt").is_file()
    # '..' would name the repository's parent: --force once deleted it
    (tmp_path / "keep.txt").write_text("still here")
    with pytest.raises(SystemExit) as exit_:
        main([str(plan), "--repository", str(repo), "--name", "..", "--force"])
    assert exit_.value.code == 2 and "--name '..'" in capsys.readouterr().err
    assert (tmp_path / "keep.txt").read_text() == "still here"


def test_to_triton_help_gives_every_default(capsys):
    from lfm.export.to_triton import build_parser

    parser = build_parser()
    options = [a for a in parser._actions if a.option_strings and a.dest not in ("help", "version") and not a.required]
    without = [a.dest for a in options if "(default: " not in a.help]
    assert options and not without, without
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 32)" in text and "(default: 8,16)" in text and "(default: 2000)" in text


def test_visualize_output_problems_are_one_line(tmp_path, capsys):
    pytest.importorskip("torch", reason="visualize.py needs the [train] extra")
    pytest.importorskip("matplotlib", reason="visualize.py needs the [viz] extra")
    from lfm.train import visualize
    from lfm.train.checkpoint import make_checkpoint, save_atomic
    from lfm.train.model import build_model

    ckpt = tmp_path / "ckpt.pt"
    save_atomic(make_checkpoint(build_model(), ModelSpec(policy="resize", size=64)), ckpt)
    image = tmp_path / "x.png"
    Image.fromarray(noise(64, 64)).save(image)
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    runs = [["gradcam", ckpt, image, "-o", a_file], ["tsne", ckpt, "--data", tmp_path / "none", "-o", a_file / "t.png"]]
    if Path("/proc/self").exists():  # Linux: no folder can be made there, whoever asks
        runs.append(["topk", ckpt, image, "-o", "/proc/lfm-visualize"])
    for argv in runs:
        assert visualize.main([str(a) for a in argv]) == 2
        assert_one_line(capsys.readouterr().err, str(argv[-1]), "-o")


def test_client_says_the_server_cannot_be_reached_in_words():
    pytest.importorskip("tritonclient.http", reason="the client needs the [serve] extra")
    import socket

    from lfm.runtime.client import LfmClient, ServerError

    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with LfmClient(f"http://127.0.0.1:{port}", timeout=5) as client, pytest.raises(ServerError) as e:
        client.output_names()
    assert_one_line(f"error: {e.value}", f"127.0.0.1:{port}", "Connection refused", "is the server running")


# -- fuzzing ------------------------------------------------------------------------------------

hypothesis = pytest.importorskip("hypothesis", reason="fuzzing needs hypothesis (the [dev] extra)")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

SEEDS = [encoded(Image.fromarray(noise(56, 72)), fmt, **kw) for fmt, kw in
         (("PNG", {}), ("JPEG", {"quality": 80}), ("GIF", {}), ("BMP", {}), ("WEBP", {"quality": 80}),
          ("TIFF", {}), ("PPM", {}))]
SPECS = [ModelSpec(policy="resize", size=64), ModelSpec(policy="none"), ModelSpec(policy="tiles", size=32),
         ModelSpec(policy="center-crop", size=48)]


@st.composite
def mutated(draw):
    data = bytearray(SEEDS[draw(st.integers(0, len(SEEDS) - 1))])
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "header"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if kind == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "truncate":
            del data[i:]
        elif kind == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[i:i + draw(st.integers(1, 16))]
        else:  # overwrite within the first 64 bytes, where sizes and modes live
            j = i % min(64, len(data))
            data[j] = draw(st.integers(0, 255))
    return bytes(data), draw(st.integers(0, len(SPECS) - 1))


def check_decoded(data: bytes, spec: ModelSpec):
    try:
        arrays = load_tiles(data, spec, max_pixels=4_000_000)
    except ImageError as e:
        assert e.problem and e.source.startswith("<")  # named, one line
        assert "\n" not in str(e)
        return
    assert arrays.dtype == np.uint8 and arrays.ndim == 4 and arrays.shape[3] == 3 and len(arrays) >= 1


@settings(max_examples=2500, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(mutated())
def test_fuzz_mutated_images_decode_or_fail_cleanly(case):
    data, s = case
    check_decoded(data, SPECS[s])


@settings(max_examples=500, deadline=None, derandomize=True)
@given(st.binary(max_size=512), st.integers(0, len(SPECS) - 1))
def test_fuzz_random_bytes_fail_cleanly(data, s):
    check_decoded(data, SPECS[s])
