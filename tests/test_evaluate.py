"""train/evaluate.py on any deployed model, clean and degraded (issue 26, item 2). Every figure
of its report equals an independent computation: the degraded images are made here by Pillow,
written to files and scored by infer.py in its own process; the metrics are scikit-learn's on
those logits."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

pytest.importorskip("torch", reason="evaluate.py needs the [train] extra")
metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn (the [viz] extra) is the reference")

ROOT = Path(__file__).resolve().parents[1]
EVALUATE = [sys.executable, str(ROOT / "train" / "evaluate.py")]
INFER = [sys.executable, str(ROOT / "runtime" / "infer.py")]
PERTURB = ["--perturb", "jpeg:90,40", "--perturb", "resize:0.5,1.5", "--perturb", "blur:1.5", "--perturb", "crop:64"]
SIZES = [(96, 80), (130, 110), (100, 100), (72, 90)]  # halved, 96 x 80 and 72 x 90 are too small for K=16 (48 px)


def run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)


def picture(rng, w: int, h: int, generated: bool) -> np.ndarray:
    """Smooth gradients with noise; 'generated' ones up-sampled 2x by nearest neighbour (NPR's trace)."""
    if generated:
        small = rng.integers(0, 256, ((h + 1) // 2, (w + 1) // 2, 3), dtype=np.uint8)
        return np.repeat(np.repeat(small, 2, 0), 2, 1)[:h, :w]
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) * 127 / (w + h)], -1)
    return np.clip(base + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def labelled(tmp_path_factory) -> Path:
    """Two subsets of real and generated-looking PNGs of several sizes."""
    root = tmp_path_factory.mktemp("labelled") / "data"
    rng = np.random.default_rng(0)
    for subset in ("a", "b"):
        for label in ("0_real", "1_fake"):
            folder = root / subset / label
            folder.mkdir(parents=True)
            for k, (w, h) in enumerate(SIZES):
                Image.fromarray(picture(rng, w, h, label == "1_fake")).save(folder / f"{k}.png")
    return root


def degrade(img: Image.Image, condition: str) -> tuple[Image.Image, str, dict]:
    """The image as each condition means it, written the way a user's pipeline would: (image, suffix, save options)."""
    kind, _, value = condition.partition(":")
    if kind == "jpeg":
        return img, ".jpg", {"quality": int(value)}
    if kind == "resize":
        s = float(value)
        return img.resize((round(img.width * s), round(img.height * s)), Image.BICUBIC), ".png", {}
    if kind == "blur":
        return img.filter(ImageFilter.GaussianBlur(float(value))), ".png", {}
    side = int(value)
    left, top = (img.width - min(side, img.width)) // 2, (img.height - min(side, img.height)) // 2
    return img.crop((left, top, left + min(side, img.width), top + min(side, img.height))), ".png", {}


def independent_records(model: Path, images: list[dict], conditions: list[str], folder: Path,
                        extra=()) -> dict[tuple[str, str], dict]:
    """{(image path, condition): infer.py's record} for the images degraded here by Pillow."""
    files = {}
    for n, image in enumerate(images):
        original = Image.open(image["path"]).convert("RGB")
        for condition in conditions:
            if condition == "clean":
                files[(image["path"], condition)] = image["path"]
                continue
            degraded, suffix, options = degrade(original, condition)
            path = folder / f"{n}_{condition.replace(':', '_')}{suffix}"
            degraded.save(path, **options)
            files[(image["path"], condition)] = str(path)
    out = folder / "records.jsonl"
    r = run(INFER + [*model, *files.values(), "-o", out, *extra])
    assert r.returncode in (0, 1), r.stderr  # 1: some degraded image could not be scored
    by_file = {}
    for line in out.read_text().splitlines():
        record = json.loads(line)
        by_file[record["path"]] = record
    return {key: by_file[path] for key, path in files.items()}


def expected_figures(images, records, condition, members, threshold_logit: float = 0.0) -> dict:
    """scikit-learn's figures over ``members`` (indices of images) from infer.py's logits."""
    done = [i for i in members if records[(images[i]["path"], condition)]["error"] is None]
    y = np.array([images[i]["label"] for i in done])
    logit = np.array([records[(images[i]["path"], condition)]["logit"] for i in done])
    fake = np.array([records[(images[i]["path"], condition)]["label"] == "fake" for i in done])
    clean_fake = [records[(images[i]["path"], "clean")]["label"] == "fake" for i in done]
    both_classes = len(set(y.tolist())) == 2
    return {
        "n": len(done), "failed": len(members) - len(done),
        "acc": metrics.accuracy_score(y, fake),
        "real_acc": metrics.accuracy_score(y[y == 0], fake[y == 0]) if (y == 0).any() else math.nan,
        "fake_acc": metrics.accuracy_score(y[y == 1], fake[y == 1]) if (y == 1).any() else math.nan,
        "ap": metrics.average_precision_score(y, logit) if (y == 1).any() else math.nan,
        "auc": metrics.roc_auc_score(y, logit) if both_classes else math.nan,
        "changed": int(np.sum(fake != np.array(clean_fake))),
    }


def assert_figures(got: dict, want: dict, where: str) -> None:
    for key, value in want.items():
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(got[key]), (where, key, got[key])
        else:
            assert got[key] == pytest.approx(value, abs=1e-9), (where, key, got[key], value)
    assert got["changed_share"] == pytest.approx(got["changed"] / got["n"]), where


def check_report(report: dict, model_args: list, folder: Path, extra=()) -> None:
    """Every logit, decision and figure of evaluate's report against infer.py and scikit-learn."""
    images = report["images"]
    conditions = list(report["conditions"])
    records = independent_records(model_args, images, conditions, folder, extra)
    for image in images:
        for condition in conditions:
            record = records[(image["path"], condition)]
            got = image["logit"][condition]
            if record["error"] is not None:  # infer.py could not score the degraded file: nor could evaluate
                assert got is None and record["error"] in image["error"][condition], (image["path"], condition)
            else:
                assert got == pytest.approx(record["logit"], rel=1e-5, abs=1e-5), (image["path"], condition)
    subsets = sorted({image["subset"] for image in images})
    for condition in conditions:
        c = report["conditions"][condition]
        everyone = list(range(len(images)))
        assert_figures(c["overall"], expected_figures(images, records, condition, everyone), condition)
        for subset in subsets:
            members = [i for i, image in enumerate(images) if image["subset"] == subset]
            assert_figures(c["subsets"][subset], expected_figures(images, records, condition, members),
                           f"{condition} {subset}")
        for key in ("acc", "ap", "auc", "real_acc", "fake_acc"):
            assert c["mean"][key] == pytest.approx(np.nanmean([c["subsets"][s][key] for s in subsets]), abs=1e-12)


def median_threshold(model: Path, data: Path, tmp_path: Path) -> str:
    """The score at the median clean logit: a threshold that calls some images fake and some
    real, so that decisions can change (a random model's logits lie close together)."""
    r = run(EVALUATE + [model, "--data", data, "-o", tmp_path / "clean.json"])
    assert r.returncode == 0, r.stderr
    logits = [image["logit"]["clean"] for image in json.loads((tmp_path / "clean.json").read_text())["images"]]
    return repr(float(1 / (1 + np.exp(-np.median(logits)))))


def test_every_figure_equals_infer_py_and_scikit_learn_on_an_onnx_model(random_onnx, labelled, tmp_path):
    report_path, plot = tmp_path / "eval.json", tmp_path / "accuracy.png"
    threshold = ["--threshold", median_threshold(random_onnx, labelled, tmp_path)]
    r = run(EVALUATE + [random_onnx, "--data", labelled, *PERTURB, "--workers", "1", "--batch-size", "3",
                        "-o", report_path, "--plot", plot, *threshold])
    assert r.returncode == 0, r.stderr
    report = json.loads(report_path.read_text())
    clean = report["conditions"]["clean"]["overall"]
    assert clean["real_acc"] > 0 and clean["fake_acc"] > 0  # both decisions occur, and some change:
    assert sum(c["overall"]["changed"] for c in report["conditions"].values()) > 0
    assert list(report["conditions"]) == ["clean", "jpeg:90", "jpeg:40", "resize:0.5", "resize:1.5", "blur:1.5",
                                          "crop:64"]
    from lfm.runtime.backends.auto import choose_backend  # the default backend, auto, and the one it picks here

    assert report["backend"].startswith(f"auto -> {choose_backend(random_onnx)[0]} ")
    halved = report["conditions"]["resize:0.5"]["overall"]
    assert halved["failed"] == 8 and halved["n"] == 8  # the 96 x 80 and 72 x 90 images of each subset and label
    check_report(report, ["--model", random_onnx], tmp_path, threshold)
    for condition in report["conditions"]:  # the console table has a line per condition
        assert any(line.startswith(condition + " ") for line in r.stdout.splitlines()), condition
    with Image.open(plot) as img:
        assert img.format == "PNG" and img.width > img.height


def test_a_checkpoint_goes_through_the_torch_backend_with_upstream_logits(upstream_ckpt, reference_dir, tmp_path):
    """Upstream's checkpoint on two reference subsets: clean logits are upstream's own (the TSV),
    JPEG q75's are infer.py --checkpoint's on files Pillow wrote at q75."""
    from lfm.benchmarks.reference_sets import cnndetection_labels, lay_out_cnndetection

    data = lay_out_cnndetection(tmp_path / "cnn", reference_dir)
    report_path = tmp_path / "eval.json"
    r = run(EVALUATE + [upstream_ckpt, "--data", data, "--classes", "biggan,crn", "--perturb", "jpeg:75",
                        "--workers", "1", "-o", report_path])
    assert r.returncode == 0, r.stderr
    report = json.loads(report_path.read_text())
    assert report["backend"] == "torch" and len(report["images"]) == 20
    upstream = {}
    for line in open(reference_dir / "cnndetection" / "labels_and_upstream_logits.tsv"):
        if not line.startswith("#") and line.strip():
            name, _, logit = line.rstrip("\n").split("\t")[:3]
            upstream[name] = float(logit)
    for image in report["images"]:
        assert image["logit"]["clean"] == pytest.approx(upstream[Path(image["path"]).name], abs=3.5e-5)
    assert len(cnndetection_labels(reference_dir)) == 102
    check_report(report, ["--checkpoint", upstream_ckpt], tmp_path)


def test_the_figures_of_a_checkpoint_are_those_of_its_training_pipeline(tmp_path, labelled):
    """The Detector's torch backend gives the figures the training pipeline's loader gives
    (evaluate.py before it scored through the runtime): the same logits, image by image."""
    import torch
    from torch.utils.data import DataLoader

    from conftest import random_lfm
    from lfm.runtime.spec import ModelSpec
    from lfm.train.checkpoint import make_checkpoint, save_atomic
    from lfm.train.data import EvalTransform, ImageDataset, collate_skip_bad, find_samples
    from lfm.train.evaluate import predict

    ckpt = tmp_path / "random.pt"
    save_atomic(make_checkpoint(random_lfm(), ModelSpec(size=64)), ckpt)
    report_path = tmp_path / "eval.json"
    r = run(EVALUATE + [ckpt, "--data", labelled, "--workers", "1", "-o", report_path])
    assert r.returncode == 0, r.stderr
    report = json.loads(report_path.read_text())
    samples = find_samples(labelled)
    loader = DataLoader(ImageDataset(samples, EvalTransform("resize", 64)), batch_size=5, collate_fn=collate_skip_bad)
    index, _, logits = predict(random_lfm(), loader, torch.device("cpu"))
    assert [image["path"] for image in report["images"]] == [s.path for s in samples]
    got = np.array([report["images"][i]["logit"]["clean"] for i in index])
    np.testing.assert_allclose(got, logits, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("argv, refusal", [
    (["--perturb", "jpeg:0"], "argument --perturb: 'jpeg:0': jpeg takes a JPEG quality, 1-100: must be from 1 to 100"),
    (["--perturb", "sharpen:2"], "argument --perturb: 'sharpen:2': expected KIND:VALUE[,VALUE...] with KIND one of"),
    (["--perturb", "resize:0"], "argument --perturb: 'resize:0': resize takes a scale factor"),
    (["--plot", "a.png"], "--plot draws accuracy against --perturb's values: give at least one --perturb"),
])
def test_bad_perturbations_are_one_line_before_any_work(argv, refusal, random_onnx, labelled):
    r = run(EVALUATE + [random_onnx, "--data", labelled, *argv])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and refusal in r.stderr, r.stderr


def test_a_model_the_runtime_cannot_run_is_one_line(tmp_path, labelled, random_onnx):
    odd = tmp_path / "model.weights"
    odd.write_bytes(b"?")
    r = run(EVALUATE + [odd, "--data", labelled])
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "cannot tell the model kind" in r.stderr, r.stderr
    r = run(EVALUATE + [random_onnx, "--data", labelled, "--amp"])  # autocast is a checkpoint's
    assert r.returncode == 2 and r.stderr.strip().startswith("error: amp (--amp) applies to a PyTorch checkpoint"), \
        r.stderr
    r = run(EVALUATE + [random_onnx, "--data", labelled, "--device", "cuda"])
    assert r.returncode == 2 and "--device" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_the_small_reference_images_are_made_as_documented(reference_dir, tmp_path):
    """reference_sets.py small: each labelled image shrunk whole (longer side S, LANCZOS) and cut
    to its central S x S, in <way>-S/{0_real,1_fake} by the TSV's label."""
    from lfm.benchmarks.reference_sets import cnndetection_labels, make_small_set

    out = make_small_set(tmp_path / "small", sides=(112,), reference=reference_dir)
    labelled = cnndetection_labels(reference_dir)
    for path, label, _ in labelled[:6] + labelled[-2:]:
        original = Image.open(path).convert("RGB")
        folder = ("0_real", "1_fake")[label]
        with Image.open(out / "down-112" / folder / f"{path.stem}.png") as down:
            scale = 112 / max(original.size)
            want = original.resize((round(original.width * scale), round(original.height * scale)), Image.LANCZOS)
            assert np.array_equal(np.asarray(down), np.asarray(want))
        with Image.open(out / "crop-112" / folder / f"{path.stem}.png") as crop:
            left, top = (original.width - 112) // 2, (original.height - 112) // 2
            assert np.array_equal(np.asarray(crop), np.asarray(original.crop((left, top, left + 112, top + 112))))
    assert sum(1 for _ in out.rglob("*.png")) == 2 * len(labelled)


def test_fpr_at_a_matched_tpr_is_its_definition():
    """small_images.py: the highest threshold calling at least the target share of generated
    images fake, and the share of real images at or above it."""
    from lfm.benchmarks.small_images import at_matched_tpr

    rng = np.random.default_rng(3)
    for _ in range(30):
        y = rng.integers(0, 2, 40)
        y[:2] = (0, 1)
        logit = np.round(rng.normal(size=40), 1)  # ties
        for target in (0.1, 0.25, 0.5, 1.0):
            best = max(t for t in logit if (logit[y == 1] >= t).mean() >= target)
            got = at_matched_tpr(y, logit, target)
            assert got["threshold_logit"] == best
            assert got["tpr"] == pytest.approx((logit[y == 1] >= best).mean())
            assert got["fpr"] == pytest.approx((logit[y == 0] >= best).mean())
