"""train/make_synthetic.py: layout, counts, determinism, and that the fakes really are 2x up-sampled.

The checks on the images use only PIL and numpy, not the generator's own functions.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import pytest
from PIL import Image

from lfm.train.data import find_samples
from lfm.train.make_synthetic import SUBSETS, PhotoSource, SyntheticError, main, make_synthetic


def load(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img, dtype=np.float64)


def read(path) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def size_mode(path):
    with Image.open(path) as img:
        return img.size, img.mode


def images(root, split, subset="*", label="*"):
    return sorted(glob.glob(os.path.join(root, split, subset, label, "*.png")))


def npr(a: np.ndarray) -> np.ndarray:
    """x - nearest_up(x[::2, ::2]) for an [H, W, C] array."""
    return a - np.repeat(np.repeat(a[::2, ::2], 2, axis=0), 2, axis=1)


def low_rank_tail(paths) -> float:
    """Mean of the 11 smallest eigenvalues of the covariance of 6x6 single-channel patches.

    A 2x up-sampling with a kernel of at most 4 taps makes every 6x6 output patch a linear
    function of at most 5x5 = 25 input pixels: 11 of the 36 patch dimensions then carry only
    rounding noise (variance ~1/12). Real images have per-pixel noise of sigma >= 2 in every
    dimension.
    """
    patches = []
    for p in paths:
        a = load(p)
        for c in range(3):
            ch = a[..., c]
            patches += [ch[i:i + 6, j:j + 6].ravel()
                        for i in range(0, ch.shape[0] - 5, 2) for j in range(0, ch.shape[1] - 5, 2)]
    eig = np.linalg.eigvalsh(np.cov(np.array(patches).T))
    return float(eig[:11].mean())


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "out"
    counts = make_synthetic(out, n=60, size=64, seed=0, val_fraction=0.2)
    return str(out), counts


def test_counts_and_layout(dataset):
    out, counts = dataset
    # N = 60 over both splits: val 12 (6 real, 6 fake), train 48 (24 + 24), 1/3 per subset
    expected = {"train": 8, "val": 2}
    for split, per_subset in expected.items():
        assert sorted(os.listdir(os.path.join(out, split))) == sorted(SUBSETS)
        for subset in SUBSETS:
            assert sorted(os.listdir(os.path.join(out, split, subset))) == ["0_real", "1_fake"]
            for label in ("0_real", "1_fake"):
                files = images(out, split, subset, label)
                assert len(files) == per_subset == counts[split][subset][label]
                assert all(size_mode(f) == ((64, 64), "RGB") for f in files)
    assert len(images(out, "*")) == 60
    samples = find_samples(os.path.join(out, "train"))
    assert len(samples) == 48 and {s.subset for s in samples} == set(SUBSETS)
    assert sum(s.label for s in samples) == 24


def test_uneven_counts_spread():
    from lfm.train.make_synthetic import plan_counts
    counts = plan_counts(25, 0.2)  # val 5 (2 real, 3 fake), train 20 (10 + 10)
    assert [counts["val"][s]["0_real"] for s in SUBSETS] == [1, 1, 0]
    assert [counts["val"][s]["1_fake"] for s in SUBSETS] == [1, 1, 1]
    assert [counts["train"][s]["0_real"] for s in SUBSETS] == [4, 3, 3]
    assert sum(c for sp in counts.values() for su in sp.values() for c in su.values()) == 25


def test_same_seed_same_bytes_any_jobs(tmp_path, dataset):
    out, _ = dataset
    again = tmp_path / "again"
    make_synthetic(again, n=60, size=64, seed=0, val_fraction=0.2, jobs=1)
    for a in images(out, "*"):
        b = os.path.join(again, os.path.relpath(a, out))
        assert read(a) == read(b), a
    other = tmp_path / "other"
    make_synthetic(other, n=60, size=64, seed=1, val_fraction=0.2)
    first = images(out, "train")[0]
    assert read(first) != read(os.path.join(other, os.path.relpath(first, out)))
    # worker processes change nothing (128+ images needed before a pool is used)
    p1, p2 = tmp_path / "p1", tmp_path / "p2"
    make_synthetic(p1, n=130, size=16, jobs=1)
    make_synthetic(p2, n=130, size=16, jobs=2)
    for a in images(p1, "*"):
        assert read(a) == read(os.path.join(p2, os.path.relpath(a, p1)))


def test_nearest_fakes_have_zero_npr_and_reals_do_not(dataset):
    out, _ = dataset
    fakes = images(out, "train", "nearest", "1_fake")
    reals = images(out, "train", "*", "0_real")
    assert fakes and reals
    assert all(np.abs(npr(load(p))).max() == 0 for p in fakes)
    for p in reals:
        residual = np.abs(npr(load(p)))
        assert residual.mean() > 1.0, p  # sensor noise of sigma >= 2 leaves a residual everywhere


def test_bilinear_fakes_satisfy_the_bilinear_relation(dataset):
    # 2x linear up-sampling with half-pixel centres: 3*y[2i] - y[2i-1] == 3*y[2i+1] - y[2i+2]
    # (both are 2 * x[i]); after rounding to uint8 the two sides differ by at most 8 * 0.5.
    out, _ = dataset

    def mismatch(a):
        lhs = 3 * a[:, 2:-2:2] - a[:, 1:-3:2]
        rhs = 3 * a[:, 3:-1:2] - a[:, 4::2]
        return np.abs(lhs - rhs)

    for p in images(out, "*", "bilinear", "1_fake"):
        assert mismatch(load(p)).max() <= 4.0 + 1e-9, p
    for p in images(out, "*", "bilinear", "0_real"):
        assert mismatch(load(p)).mean() > 4.0, p


@pytest.mark.parametrize("subset", SUBSETS)
def test_fakes_are_2x_upsampled_low_rank(dataset, subset):
    out, _ = dataset
    assert low_rank_tail(images(out, "train", subset, "1_fake")) < 1.5
    assert low_rank_tail(images(out, "train", subset, "0_real")) > 3.5


def test_real_and_fake_global_statistics_are_similar(tmp_path):
    out = tmp_path / "stats"
    make_synthetic(out, n=120, size=32, seed=3, val_fraction=0.0)
    reals = np.stack([load(p).reshape(-1, 3) for p in images(out, "train", "*", "0_real")])
    fakes = np.stack([load(p).reshape(-1, 3) for p in images(out, "train", "*", "1_fake")])
    assert np.abs(reals.mean(axis=(0, 1)) - fakes.mean(axis=(0, 1))).max() < 10  # per-channel brightness
    assert abs(reals.std() - fakes.std()) < 6  # contrast
    hr = np.histogram(reals, bins=8, range=(0, 256))[0] / reals.size
    hf = np.histogram(fakes, bins=8, range=(0, 256))[0] / fakes.size
    assert np.abs(hr - hf).sum() < 0.15  # intensity distributions overlap almost entirely


def test_real_dir_crops_user_images(tmp_path):
    src = tmp_path / "photos"
    src.mkdir()
    rng = np.random.default_rng(0)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (50 + 10 * k, 70, 3), dtype=np.uint8)).save(src / f"p{k}.png")
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(src / "tiny.png")  # too small: skipped
    (src / "readme.txt").write_text("not an image")
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="tiny.png"):
        counts = make_synthetic(out, n=12, size=32, real_dir=str(src), val_fraction=0.0)
    assert sum(counts["train"][s]["0_real"] for s in SUBSETS) == 6
    for p in images(out, "train"):
        assert size_mode(p)[0] == (32, 32)
    for p in images(out, "train", "nearest", "1_fake"):
        assert np.abs(npr(load(p))).max() == 0


def test_real_dir_is_listed_by_the_runtime_listing_rules(tmp_path):
    """--real-dir is read with the runtime's one walker (issue 25, item 3): hidden names skipped
    (a thumbnail cache is not a photo), symlinked folders followed, each real folder read once."""
    rng = np.random.default_rng(0)
    src = tmp_path / "photos"
    for rel in ("b.png", "sub/a.png", ".thumbs/t.png", "../elsewhere/e.png"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(src / rel)
    (src / "linked").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "back").symlink_to(src)  # a loop: read once
    photos = PhotoSource(str(src), 32)
    assert photos.files == photos.read == [str(src / "b.png"), str(src / "linked" / "e.png"), str(src / "sub" / "a.png")]


def test_cli_prints_counts_and_errors(tmp_path, capsys):
    out = tmp_path / "cli"
    assert main([str(out), "--n", "12", "--size", "16", "--seed", "2"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "wrote 12 images" in printed and "nearest" in printed

    assert main([str(out), "--n", "12", "--size", "16"]) == 2  # non-empty OUT
    err = capsys.readouterr().err
    assert str(out) in err and "--force" in err
    (out / "keep.txt").write_text("left alone")
    assert main([str(out), "--n", "6", "--size", "16", "--force", "--val-fraction", "0"]) == 0
    assert (out / "keep.txt").exists() and not (out / "val").exists()
    assert len(images(out, "train")) == 6

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(tmp_path / "x"), "--n", "6", "--real-dir", str(empty)]) == 2
    assert str(empty) in capsys.readouterr().err
    assert main([str(tmp_path / "y"), "--n", "6", "--size", "15"]) == 2
    with pytest.raises(SyntheticError):
        make_synthetic(tmp_path / "z", n=0)
