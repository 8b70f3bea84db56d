"""The command line as a new (or careless) user meets it: outputs that never destroy inputs,
every record written whatever a name's bytes, a clean stop on Ctrl-C and on a closed pipe,
path lists, duplicates, option ranges, the memory bound, --version, help defaults, the `lfm`
command and the lean install's one-line messages. Real files, a real ONNX Runtime session."""
from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lfm.runtime import cli
from lfm.runtime.records import Record, RecordWriter, format_for, printable

ROOT = Path(__file__).resolve().parents[1]
INFER = [sys.executable, str(ROOT / "runtime" / "infer.py")]
RNG = np.random.default_rng(7)


def noise_png(path: Path, h: int = 80, w: int = 96) -> Path:
    Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    return path


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    d = tmp_path_factory.mktemp("images")
    return [noise_png(d / f"im{i}.png") for i in range(4)]


def infer(model, *args, **kw):
    return subprocess.run(INFER + ["--model", str(model), *map(str, args)], capture_output=True, text=True,
                          timeout=300, **kw)


def records(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


# -- 1. outputs never destroy inputs or models; format from the extension -------------------------

def test_output_that_is_an_input_or_the_model_is_refused_before_anything_is_written(random_onnx, tmp_path):
    victim = noise_png(tmp_path / "victim.png")
    before, model_before = victim.read_bytes(), random_onnx.read_bytes()
    for output in (victim, random_onnx, tmp_path / "link.png"):
        if output.name == "link.png":
            output.symlink_to(victim)  # another name for the same file counts too
        r = infer(random_onnx, victim, "-o", output)
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "would destroy it" in r.stderr and "Traceback" not in r.stderr
    assert victim.read_bytes() == before and random_onnx.read_bytes() == model_before


def test_output_format_follows_the_extension_unless_given(random_onnx, images, tmp_path):
    r = infer(random_onnx, images[0], "-o", tmp_path / "res.csv")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "res.csv").read_text().splitlines()[0] == "path,logit,score,label,error,flags"
    r = infer(random_onnx, images[0], "-o", tmp_path / "res.txt", "--format", "jsonl")
    assert json.loads((tmp_path / "res.txt").read_text())["path"] == str(images[0])
    assert format_for("a.CSV", None) == "csv" and format_for("a.txt", None) == "table"
    assert format_for("a.bin", None) == "jsonl" and format_for(None, None) == "jsonl"


def test_a_failed_run_leaves_the_previous_output_as_it_was(random_onnx, images, tmp_path, monkeypatch, capsys):
    from lfm.runtime import detector, infer as infer_module

    out = tmp_path / "res.jsonl"
    out.write_text("the previous result\n")

    def crash(self, items):
        yield Record.failed("x", "fine")
        raise RuntimeError("backend died")

    monkeypatch.setattr(detector.Detector, "predict_iter", crash)
    with pytest.raises(RuntimeError, match="backend died"):
        infer_module.main(["--model", str(random_onnx), str(images[0]), str(images[1]), "-o", str(out)])
    assert out.read_text() == "the previous result\n"
    assert [p.name for p in tmp_path.iterdir()] == ["res.jsonl"]  # no .partial left behind
    monkeypatch.undo()
    assert infer_module.main(["--model", str(random_onnx), str(images[0]), "-o", str(out)]) == 0
    assert records(out.read_text())[0]["path"] == str(images[0])
    assert oct(out.stat().st_mode & 0o777) == oct(0o666 & ~cli_umask())  # readable as open() would make it


def cli_umask() -> int:
    from lfm.runtime.files import current_umask

    return current_umask()


# -- 2. names that are not UTF-8 -------------------------------------------------------------------

@pytest.mark.parametrize("fmt", ["csv", "table", "jsonl"])
def test_every_record_is_written_whatever_bytes_a_name_holds(random_onnx, images, tmp_path, fmt):
    odd = tmp_path / os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes: not valid UTF-8
    odd.write_bytes(images[0].read_bytes())
    r = subprocess.run(INFER + ["--model", str(random_onnx), str(odd), str(images[1]), "--format", fmt],
                       capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr
    text = r.stdout.decode("utf-8")  # strict: the output is valid UTF-8
    assert str(images[1]) in text and "Traceback" not in r.stderr.decode("utf-8", "replace")
    if fmt == "jsonl":
        first = json.loads(text.splitlines()[0])
        assert os.fsencode(first["path"]) == os.fsencode(str(odd))  # the exact bytes come back
    else:
        assert "caf\\xe9.png" in text


def test_printable_escapes_only_what_utf8_cannot_hold():
    assert printable("ünïcødé 图像.png") == "ünïcødé 图像.png"
    assert printable(os.fsdecode(b"caf\xe9.png")) == "caf\\xe9.png"
    assert printable("x\ud800y") == "x\\ud800y"


# -- 3. Ctrl-C and a closed pipe ---------------------------------------------------------------------

@pytest.mark.slow
def test_ctrl_c_keeps_complete_records_and_exits_130(random_onnx, images, tmp_path):
    listing = tmp_path / "many.txt"
    listing.write_text("\n".join(str(images[i % 4]) for i in range(20000)))  # long enough to interrupt
    p = subprocess.Popen(INFER + ["--model", str(random_onnx), f"@{listing}", "--batch-size", "1", "--workers", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = p.stdout.readline()
    p.send_signal(signal.SIGINT)
    # read through the same buffered reader: readline may already hold further records, which
    # communicate() (reading the raw pipe) would drop
    rest, err = p.stdout.read(), p.stderr.read()
    p.wait(timeout=120)
    assert p.returncode == 130, err
    lines = [first] + rest.splitlines()
    assert all(json.loads(line)["error"] is None for line in lines)  # complete records only
    assert len(lines) < 20000
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith(f"interrupted: {len(lines)} of 20000")


def test_ctrl_c_while_reading_a_path_list_exits_130_in_one_line(random_onnx, tmp_path):
    """Ctrl-C while the listing waits on its input (a list in a FIFO, as `@<(find ...)` gives)."""
    fifo = tmp_path / "list.fifo"
    os.mkfifo(fifo)
    p = subprocess.Popen(INFER + ["--model", str(random_onnx), f"@{fifo}"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    with open(fifo, "w"):  # returns once infer.py has opened the list; it now waits for lines
        p.send_signal(signal.SIGINT)
        out, err = p.communicate(timeout=120)
    assert p.returncode == 130 and out == "", err
    assert err.splitlines() == ["infer.py: interrupted"], err


@pytest.mark.slow
@pytest.mark.parametrize("decode", ["threads", "processes"])
def test_ctrl_c_right_after_the_listing_exits_130_in_one_line(random_onnx, images, tmp_path, decode):
    """Ctrl-C as the model loads (the listing's note is the last thing printed before it) or
    as scoring starts: exit 130 and one line, whichever it meets."""
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "readme.txt").write_text("not an image: a note on stderr, printed before the model loads")
    (folder / "a.png").write_bytes(images[0].read_bytes())
    listing = tmp_path / "many.txt"
    listing.write_text("\n".join(str(images[i % 4]) for i in range(20000)))
    with open(tmp_path / "out.jsonl", "w") as out:
        p = subprocess.Popen(INFER + ["--model", str(random_onnx), str(folder), f"@{listing}", "--decode", decode,
                                      "--batch-size", "1"], stdout=out, stderr=subprocess.PIPE, text=True)
        note = p.stderr.readline()
        p.send_signal(signal.SIGINT)
        rest = p.stderr.read()
        p.wait(timeout=120)
    assert note.startswith("note: ") and p.returncode == 130, note + rest
    assert len(rest.splitlines()) == 1 and "interrupted" in rest and "Traceback" not in rest, rest


@pytest.mark.slow
def test_closed_pipe_ends_quietly(random_onnx, images, tmp_path):
    listing = tmp_path / "many.txt"
    listing.write_text("\n".join(str(images[i % 4]) for i in range(5000)))
    p = subprocess.Popen(INFER + ["--model", str(random_onnx), f"@{listing}", "--batch-size", "1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.readline()
    p.stdout.close()  # `| head -1`
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == cli.BROKEN_PIPE
    assert err == "", err


def test_run_turns_interrupts_and_missing_extras_into_one_line(capsys):
    def interrupted(argv):
        raise KeyboardInterrupt

    def needs_torch(argv):
        raise ModuleNotFoundError("No module named 'torch'", name="torch")

    def needs_other(argv):
        raise ModuleNotFoundError("No module named 'left_pad'", name="left_pad")

    assert cli.run(interrupted, [], prog="lfm-x") == 130
    assert cli.run(needs_torch, [], prog="lfm-x") == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "lfm-x: interrupted"
    assert "lfm-deploy[train]" in err[1] and len(err) == 2
    with pytest.raises(ModuleNotFoundError):  # not one of our extras: a real bug, shown as one
        cli.run(needs_other, [], prog="lfm-x")


def test_a_ctrl_c_a_library_wraps_in_its_own_error_is_still_one_line_and_130(capsys):
    """Ctrl-C while onnxruntime is imported (as the model loads) came out as a traceback ending
    in ImportError("initialization failed"), raised from the KeyboardInterrupt, and exit 1."""
    def ort_import_interrupted(argv):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise ImportError("initialization failed") from e

    def terminated_in_a_context(argv):
        try:
            raise cli.Terminated
        except KeyboardInterrupt:
            raise RuntimeError("cleanup failed")  # the stop is its __context__

    assert cli.run(ort_import_interrupted, [], prog="lfm-x") == 130
    assert cli.run(terminated_in_a_context, [], prog="lfm-x") == 143
    assert capsys.readouterr().err.splitlines() == ["lfm-x: interrupted", "lfm-x: terminated (SIGTERM)"]
    def broken_import(argv):
        raise ImportError("initialization failed")

    with pytest.raises(ImportError):  # an import that fails on its own is not a stop: shown as the bug it is
        cli.run(broken_import, [], prog="lfm-x")


# -- 8. the lean install's console scripts -----------------------------------------------------------

@pytest.mark.parametrize("entry, blocked, extra", [("train", "torch", "train"), ("evaluate", "torch", "train"),
                                                    ("visualize", "torch", "train"), ("export", "onnx", "export")])
def test_console_scripts_name_the_missing_extra(entry, blocked, extra, random_onnx, tmp_path):
    code = (f"import sys; sys.modules[{blocked!r}] = None\n"
            f"sys.argv = ['lfm-{entry}', {str(random_onnx)!r}, '-o', {str(tmp_path / 'x.onnx')!r}] "
            f"if {entry!r} == 'export' else ['lfm-{entry}', '--help']\n"
            f"from lfm.runtime.cli import {entry}\nsys.exit({entry}())\n")
    if entry == "export":  # to_onnx needs torch first; block torch's absence out of the way: a real checkpoint path
        code = code.replace(str(random_onnx), str(tmp_path / "ckpt.pt"))
        (tmp_path / "ckpt.pt").write_bytes(b"")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr
    if entry == "export":  # lean: no onnx; the checkpoint check may speak first, but never a traceback
        assert r.returncode == 2
        return
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"pip install" in r.stderr and f"lfm-deploy[{extra}]" in r.stderr


def test_console_scripts_point_at_the_cli_wrappers():
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lfm"] == "lfm.runtime.cli:main"
    for name, target in scripts.items():
        module, func = target.split(":")
        assert module == "lfm.runtime.cli" and callable(getattr(cli, func)), name
    for needed in ("lfm-infer", "lfm-client", "lfm-triton-repo", "lfm-synthetic", "lfm-bench", "lfm-inspect"):
        assert needed in scripts


# -- 9. the Detector API ------------------------------------------------------------------------------

def test_detector_refuses_a_single_item_and_keeps_every_record(random_onnx, images):
    from lfm.runtime.detector import Detector

    with Detector(random_onnx) as det:
        for single in (str(images[0]), images[0], images[0].read_bytes(), Image.open(images[0]),
                       np.zeros((64, 64, 3), np.uint8)):
            with pytest.raises(TypeError, match=r"predict\(\[item\]\)"):
                det.predict(single)
        ref = det.predict([str(images[0])])[0]
        pil = Image.open(images[0])
        recs = det.predict([pil, object(), None, str(images[0]), np.asarray(pil), np.zeros((2, 2), np.uint8)])
        assert len(recs) == 6
        assert recs[0].logit == pytest.approx(ref.logit, abs=1e-6) and recs[3].logit == ref.logit
        assert recs[4].logit == pytest.approx(ref.logit, abs=1e-6)
        assert "cannot score a object" in recs[1].error and "cannot score a NoneType" in recs[2].error
        assert "expected a uint8 HxWx3" in recs[5].error
        batch = np.stack([np.asarray(pil)] * 3)  # N x H x W x 3: N images
        assert [r.logit for r in det.predict(batch)] == pytest.approx([recs[4].logit] * 3, abs=1e-6)
        assert det.predict_one(str(images[0])).logit == ref.logit
    assert Detector.__doc__.startswith("LFM deepfake detector") and Detector.predict.__doc__


# -- 10. duplicates: one record per mention, CLI and API alike ---------------------------------------

def test_duplicate_paths_get_a_record_per_mention(random_onnx, images):
    d = images[0].parent
    r = infer(random_onnx, images[0], images[0], d, images[1])
    recs = records(r.stdout)
    assert [rec["path"] for rec in recs] == [str(images[0])] * 2 + [str(p) for p in images] + [str(images[1])]
    assert "scored 7 of 7 inputs" in r.stderr


# -- 11. option ranges ---------------------------------------------------------------------------------

@pytest.mark.parametrize("args, says", [(["--size", "10"], "at least 48"), (["--size", "0"], "at least 48"),
                                        (["--max-pixels", "0"], "at least 2304"),
                                        (["--max-model-pixels", "100"], "at least 2304"),
                                        (["--threshold", "5"], "[0, 1]"), (["--batch-size", "0"], "at least 1"),
                                        (["--device", "cuda"], "applies to a PyTorch checkpoint only"),
                                        (["--cuda-graphs"], "applies to a TensorRT engine or a PyTorch checkpoint")])
def test_useless_options_are_refused_in_one_line(random_onnx, images, args, says):
    r = infer(random_onnx, images[0], *args)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("args, says", [(["--size", "10"], "at least 48"), (["--threshold", "5"], "[0, 1]"),
                                        (["--opset", "99"], "opsets 17 to"), (["--opset", "16"], "opsets 17 to"),
                                        (["--int8", "--calib", "/nonexistent"], "does not exist")])
def test_export_refuses_useless_options_before_exporting(args, says, tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from conftest import random_lfm
    from lfm.runtime.spec import ModelSpec
    from lfm.train.checkpoint import make_checkpoint, save_atomic

    ckpt = tmp_path / "ckpt.pt"
    save_atomic(make_checkpoint(random_lfm(), ModelSpec()), ckpt)
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, str(ROOT / "export" / "to_onnx.py"), str(ckpt), "-o", str(tmp_path / "m.onnx"),
                        *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().count("\n") == 0  # one line
    assert not (tmp_path / "m.onnx").exists()
    assert time.perf_counter() - t0 < 120  # refused up front: no export, no verification (a wide bound)


# -- 12. the memory bound under --policy none -----------------------------------------------------------

def test_native_size_images_above_the_model_pixel_bound_get_a_record(random_onnx, tmp_path):
    from lfm.runtime.detector import Detector

    small = [noise_png(tmp_path / f"s{i}.png", 64, 64) for i in range(3)]
    big = noise_png(tmp_path / "big.png", 120, 100)
    with Detector(random_onnx, policy="none") as det:
        ref = [r.logit for r in det.predict(small)]
    with Detector(random_onnx, policy="none", max_model_pixels=64 * 64 + 1, batch_size=8) as det:
        recs = det.predict([small[0], big, small[1], small[2]])
    assert "100x120 = 12000 pixels" in recs[1].error and "max_model_pixels" in recs[1].error
    # one image per call where a batch would pass the bound: same logits as scored alone
    assert [recs[0].logit, recs[2].logit, recs[3].logit] == pytest.approx(ref, abs=1e-5)


# -- 15. --version, path lists, progress, help defaults ------------------------------------------------

SCRIPTS = ["runtime/infer.py", "runtime/client.py", "runtime/serve.py", "runtime/inspect_model.py",
           "export/to_onnx.py", "export/to_trt.py", "export/to_triton.py", "export/sensitivity.py",
           "train/train.py", "train/evaluate.py", "train/visualize.py", "train/make_synthetic.py",
           "benchmarks/bench.py"]


@pytest.mark.slow
@pytest.mark.parametrize("script", SCRIPTS)
def test_every_command_has_version_and_help_with_defaults(script):
    r = subprocess.run([sys.executable, str(ROOT / script), "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "lfm-deploy" in r.stdout, (script, r.stdout, r.stderr)
    r = subprocess.run([sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "--version" in r.stdout, (script, r.stderr)


def test_help_formatter_states_defaults():
    p = cli.ArgumentParser(prog="x")
    p.add_argument("--batch-size", type=int, default=16, help="images per call")
    p.add_argument("--mode", default="a", help="the mode (default: a, the fast one)")
    p.add_argument("--flag", action="store_true", help="a flag")
    text = p.format_help()
    assert "images per call (default: 16)" in text
    assert text.count("default: a") == 1 and "a flag (default: off)" in text


def test_path_lists_from_a_file_and_stdin(random_onnx, images, tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my images\n{images[0]}\n\n{images[1]}\n")
    r = infer(random_onnx, f"@{listing}", "-", f"@{tmp_path / 'nope.txt'}", input=f"{images[2]}\n")
    recs = records(r.stdout)
    assert [rec["path"] for rec in recs[:3]] == [str(images[0]), str(images[1]), str(images[2])]
    assert recs[3]["path"] == f"@{tmp_path / 'nope.txt'}" and "cannot read the path list" in recs[3]["error"]
    assert "Errno" not in recs[3]["error"]
    at_name = tmp_path / "@literal.png"  # an existing file whose name starts with @ is a file
    at_name.write_bytes(images[0].read_bytes())
    assert records(infer(random_onnx, at_name).stdout)[0]["error"] is None


class FakeTerminal:
    def __init__(self, tty: bool):
        self.tty, self.text = tty, ""

    def isatty(self):
        return self.tty

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_progress_is_drawn_on_a_terminal_only():
    for tty in (True, False):
        stream = FakeTerminal(tty)
        bar = cli.Progress(3, stream=stream, interval_s=0.0)
        for ok in (True, False, True):
            bar.update(ok)
        bar.close()
        if tty:
            assert "\rscored 3/3, 1 failed" in stream.text and stream.text.endswith("\r")
        else:
            assert stream.text == ""


def test_infer_progress_on_writes_to_stderr(random_onnx, images):
    r = infer(random_onnx, *images, "--progress", "on")
    assert "scored 4/4, 0 failed" in r.stderr and len(records(r.stdout)) == 4


# -- 17. one `lfm` command --------------------------------------------------------------------------------

def test_lfm_command_dispatches_and_names_itself(random_onnx, images, capsys):
    assert cli.main(["--help"]) == 0
    listing = capsys.readouterr().out
    assert all(name in listing for name in cli.SUBCOMMANDS)
    assert cli.main(["nonsense"]) == 2 and "unknown subcommand 'nonsense'" in capsys.readouterr().err
    r = subprocess.run([sys.executable, "-m", "lfm.runtime.cli", "infer", "--model", str(random_onnx), str(images[0])],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and records(r.stdout)[0]["path"] == str(images[0])
    r = subprocess.run([sys.executable, "-m", "lfm.runtime.cli", "infer"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("lfm infer: error: the following arguments are required: PATH")
    assert r.stderr.count("\n") == 1  # one line, naming where the usage is: (see lfm infer --help)


def test_writer_table_and_csv_survive_odd_names():
    import io

    for fmt in ("csv", "table"):
        buf = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # strict, as a file opened for UTF-8
        w = RecordWriter(buf, fmt)
        w.write(Record.failed(os.fsdecode(b"\xff.png"), "not an image"))
        w.write(Record.from_logit("b.png", 1.0, 0.5))
        buf.flush()
        assert buf.buffer.getvalue().decode("utf-8").count("\n") == 3



def test_a_name_with_a_newline_comes_through_a_nul_separated_list_exactly(random_onnx, images, tmp_path):
    """`find -print0 | infer.py --null -`: a name holding a newline is one input, its record
    carries the exact name, the table writes it escaped on one row, CSV and JSONL read back
    exactly (issue 24, item 11). Without --null the list splits it in two."""
    import csv

    d = tmp_path / "odd"
    d.mkdir()
    name = d / "a\nb.png"
    name.write_bytes(images[0].read_bytes())
    found = subprocess.run(["find", str(d), "-type", "f", "-print0"], capture_output=True, check=True).stdout
    r = infer(random_onnx, "--null", "-", input=found.decode())
    assert r.returncode == 0, r.stderr
    assert [rec["path"] for rec in records(r.stdout)] == [str(name)]
    table = infer(random_onnx, "-0", "-", "--format", "table", input=found.decode()).stdout
    assert table.splitlines()[1:] == [table.splitlines()[1]] and table.splitlines()[1].endswith("/odd/a\\nb.png")
    rows = list(csv.DictReader(io.StringIO(infer(random_onnx, "-0", "-", "--format", "csv", input=found.decode(),
                                                 ).stdout, newline="")))
    assert [row["path"] for row in rows] == [str(name)]
    (tmp_path / "list0").write_bytes(found + found)  # @LIST too, every mention counted
    assert [rec["path"] for rec in records(infer(random_onnx, "--null", f"@{tmp_path / 'list0'}").stdout)] == \
        [str(name)] * 2
    split = records(infer(random_onnx, "-", input=found.decode().replace("\0", "\n")).stdout)
    assert len(split) == 2 and all(rec["error"] for rec in split)  # why the flag exists


@pytest.mark.parametrize("script", ["infer.py", "client.py", "batch.py"])
def test_every_command_that_takes_path_lists_takes_null(script):
    r = subprocess.run([sys.executable, str(ROOT / "runtime" / script), "--help"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and "-0, --null" in r.stdout, r.stderr
    if script == "infer.py":  # "-0" must not turn every negative value into an option of its own
        r = subprocess.run(INFER + ["--model", "m.onnx", "--threshold", "-1", "a.png"], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2 and "--threshold: must be a score in [0, 1]" in r.stderr, r.stderr


def test_table_rows_stay_one_line_whatever_a_name_holds():
    buf = io.StringIO()
    w = RecordWriter(buf, "table")
    w.write(Record.from_logit("a\nb\tc\rd\x1b\u2028.png", 1.0, 0.5))
    w.write(Record.failed("x\ny.png", "not an image"))
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3 and lines[1].endswith("a\\nb\\tc\\rd\\x1b\\u2028.png") and "x\\ny.png" in lines[2]

def test_argparse_types_name_the_minimum():
    with pytest.raises(argparse.ArgumentTypeError, match="at least 48"):
        cli.positive_int(48)("10")
    with pytest.raises(argparse.ArgumentTypeError, match=r"\[0, 1\]"):
        cli.unit_interval("5")


def test_python_m_lfm_runtime_cli_handles_a_commands_error_as_lfm_does(tmp_path):
    """`python -m lfm.runtime.cli` runs cli.py as __main__, a second copy of the module: a command's
    CommandError (raised from the package's cli) must still be its one line and exit 2, not an
    unexpected failure (exit 1)."""
    r = subprocess.run([sys.executable, "-m", "lfm.runtime.cli", "export", str(tmp_path / "none.pt"), "-o",
                        str(tmp_path / "x.onnx")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr == f"error: {tmp_path / 'none.pt'}: no such file\n", r.stderr
