"""What a run leaves at its output when it fails, is stopped, or writes through a symlink (issue 24,
items 2 and 3). Real subprocesses of the commands, real signals, a real file-size limit
(RLIMIT_FSIZE: the kernel refuses writes past it with EFBIG, as a full disk refuses them with
ENOSPC), real symlinks.

- A full disk: the earlier output stays as it was, and no hidden ``.NAME.*.partial`` is left,
  whether the write fails in the middle of the run or at its last flush.
- SIGTERM (what `timeout`, systemd and Kubernetes send) is treated as Ctrl-C: the complete
  records are kept and renamed into place, one line, exit 143, no partial; an export stopped the
  same way leaves no temp folder.
- ``-o link.jsonl`` writes through to the link's target, as ``> link.jsonl`` would.
"""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
INFER = [sys.executable, str(ROOT / "runtime" / "infer.py")]
EXPORT = [sys.executable, str(ROOT / "export" / "to_onnx.py")]
ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}  # no .pyc written under the file-size limit


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("image") / "a.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (80, 96, 3), dtype=np.uint8)).save(path)
    return path


def file_size_limit(limit: int):
    """preexec_fn: writes past ``limit`` bytes fail with EFBIG (SIGXFSZ ignored, so the process
    sees the error instead of being killed by it)."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def wait_for(condition, what: str, deadline_s: float = 120.0):
    end = time.monotonic() + deadline_s
    while not condition():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.02)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("inputs, limit", [(2000, 16384), (30, 1024)], ids=["fails-mid-run", "fails-at-the-last-flush"])
def test_a_full_disk_keeps_the_earlier_output_and_leaves_no_partial(random_onnx, tmp_path, inputs, limit):
    """Each input a missing file (an error record each, ~150 bytes): 2000 of them overflow the
    limit while records are written; 30 fit in the write buffer and overflow when it is flushed."""
    listing = tmp_path / "inputs.txt"
    listing.write_text("".join(f"/nonexistent/{i:05d}.png\n" for i in range(inputs)))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "scores.jsonl"
    out.write_text("the earlier result\n")
    r = subprocess.run(INFER + ["--model", str(random_onnx), f"@{listing}", "-o", str(out)], capture_output=True,
                       text=True, timeout=300, env=ENV, preexec_fn=file_size_limit(limit))
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"error: cannot write {out}: "), r.stderr
    assert "Traceback" not in r.stderr
    assert out.read_text() == "the earlier result\n"
    assert leftovers(out_dir) == []


@pytest.mark.slow
def test_sigterm_keeps_complete_records_says_so_and_exits_143(random_onnx, image, tmp_path):
    listing = tmp_path / "many.txt"
    listing.write_text(f"{image}\n" * 20000)  # long enough to stop in the middle
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "scores.jsonl"
    p = subprocess.Popen(INFER + ["--model", str(random_onnx), f"@{listing}", "--batch-size", "1", "--workers", "1",
                                  "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # records are being written: the hidden temp file beside the output holds some
    wait_for(lambda: any(p.stat().st_size > 0 for p in out_dir.glob(".scores.jsonl.*.partial")), "records")
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("terminated (SIGTERM): ") and "the output holds their complete records" in last, err
    assert "Traceback" not in err
    lines = out.read_text().splitlines()
    assert 0 < len(lines) < 20000
    assert all(json.loads(line)["error"] is None for line in lines)  # complete records only
    assert f"{len(lines)} of 20000 inputs done" in last  # exactly what the file holds
    assert leftovers(out_dir) == []


@pytest.mark.slow
def test_sigterm_stops_an_export_without_leaving_its_temp_folder(tmp_path):
    """The export works in a temp folder beside OUT; SIGTERM used to kill it there (exit -15)."""
    pytest.importorskip("torch", reason="exporting needs the [train] extra")
    pytest.importorskip("onnx", reason="exporting needs the [export] extra")
    from conftest import random_lfm
    from lfm.runtime.spec import ModelSpec
    from lfm.train.checkpoint import make_checkpoint, save_atomic

    ckpt = tmp_path / "ckpt.pt"
    save_atomic(make_checkpoint(random_lfm(), ModelSpec()), ckpt)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    p = subprocess.Popen(EXPORT + [str(ckpt), "-o", str(out_dir / "lfm.onnx")], stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    wait_for(lambda: any(out_dir.iterdir()), "the export's temp folder")
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 143, err
    assert err.strip().splitlines()[-1].endswith("terminated (SIGTERM)"), err
    assert list(out_dir.iterdir()) == []


@pytest.mark.parametrize("dangling", [False, True], ids=["stale-target", "dangling-link"])
def test_an_output_that_is_a_symlink_is_written_through_to_its_target(random_onnx, image, tmp_path, dangling):
    target_dir = tmp_path / "results"
    target_dir.mkdir()
    target = target_dir / "scores.jsonl"
    if not dangling:
        target.write_text("a stale result\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    r = subprocess.run(INFER + ["--model", str(random_onnx), str(image), "-o", str(link)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert [json.loads(line)["path"] for line in target.read_text().splitlines()] == [str(image)]
    assert leftovers(target_dir) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["link.jsonl", "results"]
