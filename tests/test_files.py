"""What the project writes is readable as a plain open() would make it (issue 14, item 4): models
and checkpoints go through mkstemp + rename, and mkstemp alone gives mode 600, which a Triton
container or service running as another user cannot read. Reference: the mode of a file that
plain open() creates under the same umask."""
from __future__ import annotations

import os
import stat

import pytest


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_default_mode_is_what_open_gives(tmp_path, umask_022):
    from lfm.runtime.files import current_umask, default_mode

    plain = tmp_path / "plain"
    plain.write_text("x")
    assert current_umask() == 0o022 and default_mode() == _mode(plain) == 0o644


def test_onnx_model_and_checkpoint_are_world_readable(tmp_path, umask_022):
    pytest.importorskip("torch", reason="building a model needs the [train] extra")
    pytest.importorskip("onnx", reason="exporting needs the [export] extra")
    from conftest import random_lfm
    from lfm.export.onnx_export import torch_to_onnx
    from lfm.export.onnx_files import save_atomic as save_onnx
    from lfm.runtime.spec import ModelSpec
    from lfm.train.checkpoint import make_checkpoint, save_atomic as save_ckpt

    model = random_lfm()
    save_ckpt(make_checkpoint(model, ModelSpec()), tmp_path / "ckpt.pt")
    save_onnx(torch_to_onnx(model, ModelSpec(input="uint8"), "uint8"), tmp_path / "lfm.onnx")
    plain = tmp_path / "plain"
    plain.write_text("x")
    assert _mode(tmp_path / "ckpt.pt") == _mode(tmp_path / "lfm.onnx") == _mode(plain) == 0o644


def test_engine_plan_is_world_readable(tmp_path, umask_022):
    """save_build writes the plan the same way (no TensorRT needed: the bytes are given)."""
    from lfm.export.trt_build import save_build

    plan = str(tmp_path / "lfm.plan")
    assert save_build(plan, b"engine bytes", {"lfm.spec": "{}"}, {"passed": True}) is None
    rejected = save_build(str(tmp_path / "other.plan"), b"bad", {}, {"passed": False})
    assert _mode(plan) == _mode(rejected) == 0o644


def test_evaluate_checks_its_output_first_and_creates_no_folder(tmp_path):
    """evaluate.py -o /nonexistent/e.json used to create /nonexistent (issue 14, item 5)."""
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("torch", reason="evaluate.py needs the [train] extra")
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "no" / "such" / "e.json"
    r = subprocess.run([sys.executable, str(root / "train" / "evaluate.py"), str(tmp_path / "missing.pt"),
                        "--data", str(tmp_path), "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {out}: folder {out.parent} does not exist", r.stderr
    assert not (tmp_path / "no").exists()


# ----------------------------------------------------------------------------------------------
# first_line: the one helper every one-line error message takes its text from (issue 25, item 3)


def _chained() -> Exception:
    try:
        try:
            raise KeyError("the cause")
        except KeyError as cause:
            raise RuntimeError("the failure\nwith details") from cause
    except RuntimeError as e:
        return e


@pytest.mark.parametrize("error, empty, expected", [
    (ValueError("bad size\n  File x.py, line 3\nmore"), None, "bad size"),  # a multi-line message: its first line
    (OSError("\n  leading blank lines\nrest"), None, "leading blank lines"),  # blank lines before the text are skipped
    (ValueError(""), None, "ValueError"),  # no text: the type's name
    (RuntimeError(), None, "RuntimeError"),  # no arguments at all
    (ValueError("  \n "), "", ""),  # only whitespace, with the caller's own fallback
    (_chained(), None, "the failure"),  # its own message, not the cause's
    ("E1: parser error\nE2", "no reason given", "E1: parser error"),  # a library's error text
    ("", "no reason given", "no reason given"),
    ("", None, ""),
])
def test_first_line_of_an_error(error, empty, expected):
    from lfm.runtime.files import first_line

    assert first_line(error, empty=empty) == expected


def test_an_oserror_keeps_its_errno_text():
    from lfm.runtime.files import first_line

    assert first_line(FileNotFoundError(2, "No such file or directory", "x.jpg")) == "[Errno 2] No such file or directory: 'x.jpg'"
