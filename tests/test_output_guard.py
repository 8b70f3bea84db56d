"""No command overwrites one of its own inputs (issue 24, item 1).

Every subcommand of `lfm` that writes files is run here with an output that is one of its inputs:
by the same name, through a symlink and through a hard link (os.path.samefile's identity). Each
must exit 2 with one line saying so, before it opens anything for writing: the input keeps its
bytes and mtime, and no file appears or changes anywhere under the test's folder. The commands
run in this process through ``cli.run_module``, the path `lfm SUBCOMMAND` takes; the inputs are
small real files (a real checkpoint for export and evaluate, which used to overwrite it and exit
0; PNGs where a command reads image headers before the guard; bytes elsewhere: the guard must
refuse before the file is read as a model).

A new subcommand must be added to CASES (it writes) or to NOT_WRITING (it does not):
``test_every_subcommand_is_covered`` fails until it is.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from lfm.runtime import cli

NOT_WRITING = {
    "serve": "serves requests; writes no file the user names",
    "inspect": "prints what a model is; writes nothing",
    "app": "serves a page; writes no file (uploads are deleted once read; downloads are made in the browser)",
}


def png(path: Path, side: int = 32, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)).save(path, format="PNG")
    return path


def blob(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@dataclass
class Built:
    argv: list[str]
    victim: Path  # the input the output points at


@dataclass
class Case:
    subcommand: str
    name: str
    build: Callable[[Path, Callable[[Path], Path]], Built]  # (folder, other_name) -> argv and victim

    @property
    def id(self) -> str:
        return f"{self.subcommand}-{self.name}"


def real_checkpoint(path: Path) -> Path:
    """A real checkpoint (random weights): the file `export CKPT -o CKPT` used to overwrite, exit 0."""
    from conftest import random_lfm
    from lfm.runtime.spec import ModelSpec
    from lfm.train.checkpoint import make_checkpoint, save_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(make_checkpoint(random_lfm(), ModelSpec()), path)
    return path


def images_folder(root: Path, n: int) -> Path:
    for i in range(n):
        png(root / ("0_real" if i % 2 else "1_fake") / f"{i}.png", seed=i)
    return root


def export_checkpoint(d, alias):
    ckpt = real_checkpoint(d / "ckpt.pt")
    return Built([str(ckpt), "-o", str(alias(ckpt))], ckpt)


def export_int8_calibration_image(d, alias):
    calib = images_folder(d / "calib", 12)
    victim = calib / "1_fake" / "0.png"
    return Built([str(blob(d / "ckpt.pt", "checkpoint")), "--int8", "--calib", str(calib), "-o", str(alias(victim))],
                 victim)


def build_onnx(d, alias):
    model = blob(d / "lfm.onnx", "onnx bytes")
    return Built([str(model), "-o", str(alias(model))], model)


def triton_repo_model_inside(d, alias):
    model = blob(d / "repo" / "lfm_model" / "1" / "model.onnx", "onnx bytes")
    return Built([str(alias(model)), "--repository", str(d / "repo"), "--force"], model)


def sensitivity_model(d, alias):
    model = blob(d / "lfm.onnx", "onnx bytes")
    return Built([str(model), "--calib", str(images_folder(d / "calib", 8)), "--calib-count", "4",
                  "-o", str(alias(model))], model)


def evaluate_checkpoint(d, alias):
    ckpt = real_checkpoint(d / "ckpt.pt")
    return Built([str(ckpt), "--data", str(images_folder(d / "data", 4)), "-o", str(alias(ckpt))], ckpt)


def evaluate_data_image(d, alias):
    data = images_folder(d / "data", 4)
    victim = data / "0_real" / "1.png"
    return Built([str(blob(d / "ckpt.pt", "checkpoint")), "--data", str(data), "-o", str(alias(victim))], victim)


def evaluate_onnx_model_is_plot(d, alias):
    model = blob(d / "lfm.onnx", "onnx bytes")
    return Built([str(model), "--data", str(images_folder(d / "data", 4)), "--perturb", "jpeg:75",
                  "--plot", str(alias(model))], model)


def infer_model(d, alias):
    model = blob(d / "lfm.onnx", "onnx bytes")
    return Built(["--model", str(model), str(png(d / "a.png")), "-o", str(alias(model))], model)


def infer_input(d, alias):
    image = png(d / "a.png")
    return Built(["--model", str(blob(d / "lfm.onnx", "onnx")), str(image), "-o", str(alias(image))], image)


def client_input(d, alias):
    image = png(d / "a.png")
    return Built([str(image), "--url", "http://127.0.0.1:9", "-o", str(alias(image))], image)


def batch_model_is_the_manifest(d, alias):
    model = blob(d / "out" / "_manifest.json", "onnx bytes")  # a file of the output folder a run rewrites
    return Built([str(alias(model)), str(png(d / "a.png")), "--output", str(d / "out")], model)


def visualize_gradcam_input_in_output(d, alias):
    earlier = png(d / "out" / "gradcam.png")  # an earlier run's contact sheet, given as an input
    return Built(["gradcam", str(blob(d / "ckpt.pt", "checkpoint")), str(alias(earlier)), "-o", str(d / "out")],
                 earlier)


def visualize_tsne_checkpoint(d, alias):
    ckpt = blob(d / "ckpt.pt", "checkpoint")
    return Built(["tsne", str(ckpt), "--data", str(images_folder(d / "data", 4)), "-o", str(alias(ckpt))], ckpt)


def synthetic_real_dir_in_output(d, alias):
    photo = png(d / "out" / "train" / "nearest" / "0_real" / "000000.png", side=16)
    real_dir = d / "photos"
    real_dir.mkdir()
    if alias(photo) == photo:
        real_dir = photo.parent  # --force would delete the folder it reads its photos from
    else:
        os.replace(alias(photo), real_dir / "photo.png")
    return Built([str(d / "out"), "--n", "2", "--size", "8", "--force", "--real-dir", str(real_dir), "--jobs", "1"],
                 photo)


def train_init_is_best(d, alias):
    best = blob(d / "runs" / "best.pt", "an earlier run's best checkpoint")
    return Built(["--data", str(images_folder(d / "data", 4)), "--init", str(alias(best)), "--out", str(d / "runs"),
                  "--workers", "0"], best)


def train_resume_is_best(d, alias):
    best = blob(d / "runs" / "best.pt", "an earlier run's best checkpoint")
    return Built(["--data", str(images_folder(d / "data", 4)), "--resume", str(alias(best)), "--out", str(d / "runs"),
                  "--workers", "0"], best)


def bench_checkpoint_is_report(d, alias):
    report = blob(d / "results" / "bench.json", '{"an": "earlier report"}')
    return Built(["--checkpoint", str(alias(report)), "--output-dir", str(d / "results"), "--quick"], report)


def bench_model_in_work_dir(d, alias):
    model = blob(d / "work" / "lfm_fp32.onnx", "onnx bytes")
    return Built(["--model", str(alias(model)), "--work-dir", str(d / "work"), "--output-dir", str(d / "results")],
                 model)


def bench_batch_model_is_report(d, alias):
    report = blob(d / "results" / "batch.json", "{}")
    return Built(["--mode", "batch", "--model", str(alias(report)), "--data", str(images_folder(d / "data", 2) / "0_real"),
                  "--output-dir", str(d / "results")], report)


def calibrate_model(d, alias):
    model = blob(d / "lfm.onnx", "onnx bytes")
    return Built([str(model), "--real", str(images_folder(d / "real", 2)), "--target-fpr", "0.5", "--bound", "none",
                  "-o", str(alias(model))], model)


def calibrate_real_image_is_report(d, alias):
    real = images_folder(d / "real", 2)
    victim = real / "0_real" / "1.png"
    return Built([str(blob(d / "lfm.onnx", "onnx")), "--real", str(real), "--target-fpr", "0.5", "--bound", "none",
                  "-o", str(d / "out.onnx"), "--report", str(alias(victim))], victim)


def bench_serve_image_is_report(d, alias):
    report = png(d / "results" / "bench_serve.md")
    images = d / "images"
    images.mkdir()
    target = alias(report)
    if target != report:
        os.replace(target, images / "a.png")
    else:
        images = d / "results"
    return Built(["--mode", "serve", "--images", str(images), "--model", str(blob(d / "m.onnx", "onnx")),
                  "--output-dir", str(d / "results")], report)


CASES = [
    Case("export", "checkpoint", export_checkpoint),
    Case("export", "int8-calibration-image", export_int8_calibration_image),
    Case("build", "onnx", build_onnx),
    Case("triton-repo", "model-inside-repository", triton_repo_model_inside),
    Case("sensitivity", "model", sensitivity_model),
    Case("evaluate", "checkpoint", evaluate_checkpoint),
    Case("evaluate", "data-image", evaluate_data_image),
    Case("evaluate", "onnx-model-is-plot", evaluate_onnx_model_is_plot),
    Case("infer", "model", infer_model),
    Case("infer", "input", infer_input),
    Case("client", "input", client_input),
    Case("batch", "model-is-the-manifest", batch_model_is_the_manifest),
    Case("visualize", "gradcam-input-in-output-folder", visualize_gradcam_input_in_output),
    Case("visualize", "tsne-checkpoint", visualize_tsne_checkpoint),
    Case("synthetic", "real-dir-in-output", synthetic_real_dir_in_output),
    Case("train", "init-is-best", train_init_is_best),
    Case("train", "resume-is-best", train_resume_is_best),
    Case("bench", "checkpoint-is-report", bench_checkpoint_is_report),
    Case("bench", "model-in-work-dir", bench_model_in_work_dir),
    Case("bench", "batch-mode-model-is-report", bench_batch_model_is_report),
    Case("bench", "serve-mode-image-is-report", bench_serve_image_is_report),
    Case("calibrate", "model", calibrate_model),
    Case("calibrate", "real-image-is-report", calibrate_real_image_is_report),
]
NAMES = ("same-name", "symlink", "hard-link")


def test_every_subcommand_is_covered():
    """A subcommand that writes files has a case here; one that does not says why."""
    writing = {case.subcommand for case in CASES}
    assert not writing & set(NOT_WRITING)
    assert writing | set(NOT_WRITING) == set(cli.SUBCOMMANDS), (
        f"add the new subcommand(s) {set(cli.SUBCOMMANDS) - writing - set(NOT_WRITING)} to CASES or NOT_WRITING")


def other_name(kind: str, folder: Path) -> Callable[[Path], Path]:
    """The victim as given (same-name), or another name for it in a folder of its own."""
    def alias(victim: Path) -> Path:
        if kind == "same-name":
            return victim
        link = folder / "aliases" / f"{victim.name}.{kind}"
        if not os.path.lexists(link):
            link.parent.mkdir(exist_ok=True)
            (link.symlink_to if kind == "symlink" else link.hardlink_to)(victim)
        return link
    return alias


def tree(folder: Path) -> dict[str, tuple]:
    """Every entry under ``folder``: its kind, and a file's size and mtime."""
    state = {}
    for path in sorted(folder.rglob("*")):
        st = path.lstat()
        state[str(path.relative_to(folder))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return state


@pytest.mark.parametrize("kind", NAMES)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_an_output_that_is_an_input_is_refused_before_anything_is_written(case, kind, tmp_path, capfd, monkeypatch):
    if case.subcommand in ("export", "evaluate", "train", "visualize", "synthetic", "sensitivity"):
        pytest.importorskip("torch", reason=f"lfm {case.subcommand} needs the [train] extra")
    if case.id == "bench-batch-mode-model-is-report":
        pytest.importorskip("ray", reason="bench --mode batch needs the [cluster] extra")
    built = case.build(tmp_path, other_name(kind, tmp_path))
    content, before = built.victim.read_bytes(), tree(tmp_path)
    monkeypatch.setattr(sys, "argv", ["lfm"])  # run_module sets argv[0] to the command's name
    status = cli.run_module(cli.SUBCOMMANDS[case.subcommand][0], built.argv, f"lfm {case.subcommand}")
    err = capfd.readouterr().err
    assert status == 2, err
    assert err.count("\n") == 1 and "would destroy it" in err and "Traceback" not in err, err
    assert built.victim.read_bytes() == content
    assert tree(tmp_path) == before, "the command wrote something before refusing"
