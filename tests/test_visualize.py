"""train/visualize.py: Grad-CAM, Top-K receptive fields and t-SNE on a random-weight model and tiny
synthetic data (no ../shared needed): files, sizes, non-constant maps, determinism, the
receptive-field geometry against brute force, and scores equal to the runtime's."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch", reason="the visualisations need the [train] extra")
pytest.importorskip("matplotlib", reason="the visualisations need the [viz] extra")
pytest.importorskip("sklearn", reason="the visualisations need the [viz] extra")

from lfm.runtime.detector import Detector
from lfm.runtime.spec import ModelSpec, salience_size
from lfm.train import visualize as viz
from lfm.train.checkpoint import make_checkpoint, save_atomic
from lfm.train.make_synthetic import make_synthetic
from lfm.train.model import build_model

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64  # salience maps 6 x 6 = 36 positions per map, K = 16 of them kept


def random_model(seed: int = 0, **config):
    """Random weights, BN statistics moved off identity so maps and logits vary. The salience and
    fc weights are made positive, so more activation means more "generated" and Grad-CAM has
    positive evidence to show (with all-random signs, ReLU(sum_c w_c A_c) is often zero
    everywhere, and the test would rightly fail: see test_constant_maps_are_caught)."""
    torch.manual_seed(seed)
    model = build_model(**config).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 2.0)
        model.salience.weight.abs_()
        model.fc.weight.abs_()
    return model


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("viz")


@pytest.fixture(scope="module")
def data(tmp):
    root = tmp / "data"
    make_synthetic(root, n=24, size=SIZE, val_fraction=0.0, seed=0, jobs=1)  # 4 per (subset, label)
    return root / "train"


@pytest.fixture(scope="module")
def ckpt(tmp):
    path = tmp / "topk" / "random.pt"
    save_atomic(make_checkpoint(random_model(0), ModelSpec(size=SIZE)), path)
    return path


@pytest.fixture(scope="module")
def gap_ckpt(tmp):
    path = tmp / "gap" / "random.pt"
    save_atomic(make_checkpoint(random_model(1, pooling="gap"), ModelSpec(size=SIZE)), path)
    return path


@pytest.fixture(scope="module")
def images(data):
    # one real and one generated image from two subsets
    return [str(data / s / lab / "000000.png") for s in ("bilinear", "transposed") for lab in ("0_real", "1_fake")]


def not_constant(a: np.ndarray) -> bool:
    return bool(np.ptp(np.asarray(a, np.float64)) > 0)


def png_size(path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


# ----------------------------------------------------------------------------------------------
# geometry


def test_layer_geometry_follows_the_layers():
    assert viz.layer_geometry("npr") == (1, 1)
    assert viz.layer_geometry("snet.layer1") == (1, 2)
    assert viz.layer_geometry("snet.layer2") == (2, 5)
    assert viz.layer_geometry("snet.layer3") == (4, 11)
    assert viz.layer_geometry("snet.layer4") == viz.layer_geometry("salience") == (8, 23)
    assert viz.receptive_box(2, 3) == (16, 24, 39, 47)
    with pytest.raises(ValueError):
        viz.layer_geometry("snet.layer5")


@pytest.mark.parametrize("layer", ["npr", "snet.layer1", "snet.layer2", "snet.layer3", "salience"])
def test_receptive_box_matches_gradients(layer):
    """Brute force: the input pixels with a non-zero gradient of one position's value, united over
    64 random inputs and every channel, are exactly the box (less its bottom-right pixel) for the
    even-jump layers, and never leave the box for any layer."""
    torch.manual_seed(0)
    model = build_model(widths=(8, 8, 8, 8), salience_channels=2, top_k=1).eval()
    acts = {}
    dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: acts.__setitem__("a", o))
    x = torch.randn(64, 3, 48, 50, requires_grad=True)  # non-square: rows and columns checked apart
    model.salience_maps(x)
    a = acts["a"]
    jump, size = viz.layer_geometry(layer)
    h, w = a.shape[-2:]
    for r, c in {(0, 0), (1, 2), (h - 1, w - 1), (h // 2, w - 1)}:
        (g,) = torch.autograd.grad(a[:, :, r, c].sum(), x, retain_graph=True)
        seen = (g.abs().sum((0, 1)) > 0).numpy()
        t, l, b, rr = viz.receptive_box(r, c, jump, size)
        box = np.zeros_like(seen)
        box[t:b, l:rr] = True
        assert not (seen & ~box).any(), f"{layer} ({r},{c}): gradient outside {t, l, b, rr}"
        if jump % 2 == 0:
            box[b - 1, rr - 1] = False
            assert (seen == box).all(), f"{layer} ({r},{c}): {int((box & ~seen).sum())} box pixels never reached"


def test_upsample_map_puts_values_at_receptive_field_centres():
    m = np.zeros((6, 6), np.float32)
    m[2, 3] = 1.0
    up = viz.upsample_map(m, 8, 23, SIZE, SIZE)
    assert up.shape == (SIZE, SIZE)
    assert np.unravel_index(up.argmax(), up.shape) == (8 * 2 + 11, 8 * 3 + 11)
    assert np.allclose(viz.upsample_map(np.full((6, 6), 3.0), 8, 23, SIZE, SIZE), 3.0)


# ----------------------------------------------------------------------------------------------
# gradcam


def run_cli(args, capsys):
    rc = viz.main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def gradcam_runs(ckpt, images, tmp):
    """The same gradcam command twice, into two folders."""
    outs = [tmp / "gc1", tmp / "gc2"]
    for out in outs:
        assert viz.main(["gradcam", str(ckpt), *images, "-o", str(out)]) == 0
    return outs


def test_gradcam_files_sizes_maps_and_determinism(gradcam_runs):
    outs = gradcam_runs
    out = outs[0]
    pngs = sorted(out.glob("*.gradcam.png"))
    assert [p.name[:4] for p in pngs] == ["000_", "001_", "002_", "003_"]
    assert all(png_size(p) == (900, 440) for p in pngs)
    assert png_size(out / "gradcam.png") == viz.sheet_size(4)
    z = np.load(out / "gradcam.npz")
    assert str(z["layer"]) == "snet.layer4"
    for i in range(4):
        assert z[f"cam_{i:03d}"].shape == salience_size(SIZE, SIZE)  # snet.layer4 has the salience grid
        assert z[f"map_{i:03d}"].shape == (SIZE, SIZE)
        assert not_constant(z[f"cam_{i:03d}"]) and not_constant(z[f"map_{i:03d}"])
    # two runs: the same bytes and arrays
    for p in [*pngs, out / "gradcam.png", out / "scores.jsonl"]:
        assert p.read_bytes() == (outs[1] / p.name).read_bytes(), p.name
    z2 = np.load(outs[1] / "gradcam.npz")
    assert all(np.array_equal(z[k], z2[k]) for k in z.files)


def test_scores_equal_the_runtimes(ckpt, images, gradcam_runs):
    """The score on each picture is what runtime/infer.py --checkpoint gives: exactly at batch 1
    (the same computation), within float noise in the runtime's default batches."""
    ours = [json.loads(line) for line in (gradcam_runs[0] / "scores.jsonl").read_text().splitlines()]
    run = subprocess.run([sys.executable, str(ROOT / "runtime" / "infer.py"), "--checkpoint", str(ckpt), *images,
                          "--batch-size", "1"], capture_output=True, text=True, timeout=120, check=False)
    assert run.returncode == 0, run.stderr
    theirs = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["path"] for r in ours] == [r["path"] for r in theirs] == images
    fields = [(r["logit"], r["score"], r["label"]) for r in ours]
    assert fields == [(r["logit"], r["score"], r["label"]) for r in theirs]
    with Detector(ckpt) as det:  # default batching
        batched = det.predict(images)
    np.testing.assert_allclose([r.logit for r in batched], [r["logit"] for r in ours], rtol=0, atol=1e-4)


@pytest.mark.parametrize("layer", ["salience", "snet.layer3"])
def test_gradcam_other_layers(ckpt, images, tmp, capsys, layer):
    rc, _, err = run_cli(["gradcam", ckpt, images[1], "-o", tmp / f"gc_{layer}", "--layer", layer], capsys)
    assert rc == 0, err
    z = np.load(tmp / f"gc_{layer}" / "gradcam.npz")
    grid = salience_size(SIZE, SIZE) if layer == "salience" else (14, 14)  # 64 -> 63 -> 31 -> 30 -> 15 -> 14
    assert z["cam_000"].shape == grid and not_constant(z["cam_000"]) and not_constant(z["map_000"])


def test_constant_maps_are_caught(images):
    """The check has teeth: with evidence of the wrong sign only (fc weights negated) the map is
    ReLU(negative) = 0 everywhere, and not_constant says so."""
    model = random_model(0)
    with torch.no_grad():
        model.fc.weight.neg_()
    _, x = viz.prepare(images[0], ModelSpec(size=SIZE))
    cam, _ = viz.grad_cam(model, x, "snet.layer4")
    assert not not_constant(cam) and not not_constant(viz.upsample_map(cam, 8, 23, SIZE, SIZE))


# ----------------------------------------------------------------------------------------------
# topk


def test_topk_files_selections_and_coverage(ckpt, images, tmp, capsys):
    out = tmp / "tk"
    rc, _, err = run_cli(["topk", ckpt, *images, "-o", out, "--channels", "0,5,63"], capsys)
    assert rc == 0, err
    assert all(png_size(p) == (900, 440) for p in out.glob("*.topk.png")) and len(list(out.glob("*.topk.png"))) == 4
    assert png_size(out / "topk.png") == viz.sheet_size(4)
    z = np.load(out / "topk.npz")
    model = random_model(0)
    for i, path in enumerate(images):
        _, x = viz.prepare(path, ModelSpec(size=SIZE))
        with torch.no_grad():
            maps = model.salience_maps(x)[0]
        idx = torch.topk(maps.flatten(1), 16, dim=-1).indices.numpy()
        assert np.array_equal(z[f"rows_{i:03d}"] * maps.shape[-1] + z[f"cols_{i:03d}"], idx)
        count = z[f"count_{i:03d}"]
        assert count.shape == (SIZE, SIZE) and not_constant(count)
        assert count.sum() == 64 * 16 * 23 * 23  # every box lies inside the image
        with torch.no_grad():
            assert z["logits"][i] == float(model(x)[0])  # the score shown is the model's, to the bit
    # the contribution of each channel adds up to the logit
    np.testing.assert_allclose(z["contrib_000"].sum() + model.fc.bias.item(), z["logits"][0], rtol=1e-5, atol=1e-4)


def test_topk_refuses_a_gap_checkpoint_and_bad_channels(ckpt, gap_ckpt, images, tmp, capsys):
    rc, _, err = run_cli(["topk", gap_ckpt, images[0], "-o", tmp / "tk_gap"], capsys)
    assert rc == 2 and err.strip().count("\n") == 0 and "gap" in err
    rc, _, err = run_cli(["topk", ckpt, images[0], "-o", tmp / "tk_bad", "--channels", "3,64"], capsys)
    assert rc == 2 and "64" in err and err.strip().count("\n") == 0


# ----------------------------------------------------------------------------------------------
# t-SNE


def test_tsne_two_panels_one_panel_and_determinism(ckpt, gap_ckpt, data, tmp, capsys):
    out = tmp / "tsne" / "tsne.png"
    rc, _, err = run_cli(["tsne", ckpt, "--data", data, "--gap-checkpoint", gap_ckpt, "-o", out], capsys)
    assert rc == 0, err
    assert png_size(out) == (round(2 * viz.TSNE_PANEL[0] * viz.DPI), round(viz.TSNE_PANEL[1] * viz.DPI))
    z = np.load(out.with_suffix(".npz"))
    for j, dim in ((0, 1024), (1, 64)):
        assert z[f"embedding_{j}"].shape == (24, 2) and not_constant(z[f"embedding_{j}"])
        sep = json.loads(str(z[f"separability_{j}"]))
        assert -1 <= sep["silhouette"] <= 1 and 0 <= sep["probe_accuracy"] <= 1 and sep["probe_folds"] == 5
    assert sorted(set(z["subsets_0"])) == ["bilinear", "nearest", "transposed"]

    again = tmp / "tsne2" / "tsne.png"
    assert run_cli(["tsne", ckpt, "--data", data, "--gap-checkpoint", gap_ckpt, "-o", again], capsys)[0] == 0
    assert out.read_bytes() == again.read_bytes()
    z2 = np.load(again.with_suffix(".npz"))
    assert np.array_equal(z["embedding_0"], z2["embedding_0"]) and np.array_equal(z["embedding_1"], z2["embedding_1"])

    single = tmp / "tsne1" / "tsne.png"
    assert run_cli(["tsne", ckpt, "--data", data, "-o", single, "--max-per-group", "2"], capsys)[0] == 0
    assert png_size(single) == (round(viz.TSNE_PANEL[0] * viz.DPI), round(viz.TSNE_PANEL[1] * viz.DPI))
    assert np.load(single.with_suffix(".npz"))["labels_0"].shape == (12,)


def test_tsne_wants_a_gap_checkpoint_beside(ckpt, data, tmp, capsys):
    rc, _, err = run_cli(["tsne", ckpt, "--data", data, "--gap-checkpoint", ckpt, "-o", tmp / "t.png"], capsys)
    assert rc == 2 and "pools with topk" in err


# ----------------------------------------------------------------------------------------------
# errors: one line each, bad images skipped and named


def test_errors_are_one_line_and_bad_images_are_skipped(ckpt, images, tmp, capsys):
    rc, _, err = run_cli(["gradcam", tmp / "missing.pt", images[0], "-o", tmp / "e1"], capsys)
    assert rc == 2 and err.startswith("error: ") and "no such file" in err and err.strip().count("\n") == 0

    garbage = tmp / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    tiny = tmp / "tiny.png"
    Image.new("RGB", (20, 20)).save(tiny)
    small_spec = tmp / "none" / "ckpt.pt"  # policy none: a 20 px image reaches the model's size check
    save_atomic(make_checkpoint(random_model(0), ModelSpec(policy="none")), small_spec)
    odd = tmp / "odd.png"  # odd sizes: NPR drops the last row and column; the map still covers the image
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (65, 67, 3), dtype=np.uint8)).save(odd)
    rc, _, err = run_cli(["gradcam", small_spec, garbage, tmp / "nope.png", tiny, images[0], odd,
                               "-o", tmp / "e2"], capsys)
    assert rc == 0
    lines = err.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("warning: skipped ") for line in lines)
    assert str(garbage) in lines[0] and "nope.png" in lines[1] and "too small" in lines[2]
    assert len(list((tmp / "e2").glob("*.gradcam.png"))) == 2
    records = [json.loads(line) for line in (tmp / "e2" / "scores.jsonl").read_text().splitlines()]
    assert [r["error"] is None for r in records] == [False, False, False, True, True]
    assert np.load(tmp / "e2" / "gradcam.npz")["map_001"].shape == (65, 67)

    rc, _, err = run_cli(["topk", ckpt, garbage, "-o", tmp / "e3"], capsys)
    assert rc == 1 and "no image could be drawn" in err

    rc, _, err = run_cli(["tsne", ckpt, "--data", tmp / "no-such-dir", "-o", tmp / "e4.png"], capsys)
    assert rc == 2 and "no such directory" in err and err.strip().count("\n") == 0
