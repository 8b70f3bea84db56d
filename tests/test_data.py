"""lfm.train.data: discovery, bad-file handling, transforms, dataset, sampler.

Expected values are computed independently here (PIL / numpy), not with the code under test.
"""
from __future__ import annotations

import io
import os
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from torch.utils.data import DataLoader

from lfm.runtime.preprocess import ImageError, normalize
from lfm.train.data import (
    BadFileLog,
    DatasetError,
    DatasetWarning,
    EvalTransform,
    ImageDataset,
    Sample,
    TrainTransform,
    balanced_sampler,
    collate_skip_bad,
    find_samples,
)


def noise_image(seed: int, w: int = 48, h: int = 40) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def write_image(path, seed=0, w=48, h=40, fmt=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    noise_image(seed, w, h).save(path, format=fmt)
    return str(path)


def make_layout(root, classes=("cat", "dog"), n_real=2, n_fake=3):
    """root/<class>/{0_real,1_fake}/*.png; returns the expected Samples, in any order."""
    expected = []
    for ci, cls in enumerate(classes):
        for label, folder, n in ((0, "0_real", n_real), (1, "1_fake", n_fake)):
            for k in range(n):
                p = write_image(os.path.join(root, cls, folder, f"img{k}.png"), seed=100 * ci + 10 * label + k)
                expected.append(Sample(p, label, cls))
    return expected


def truncate(path, keep=0.5):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: int(len(data) * keep)])


# ------------------------------------------------------------------------------------------
# Discovery
# ------------------------------------------------------------------------------------------


def test_class_layout_found_sorted_with_subsets(tmp_path):
    expected = make_layout(tmp_path / "data", classes=("dog", "cat"))
    samples = find_samples(tmp_path / "data")
    assert set(samples) == set(expected)
    assert len(samples) == len(expected) == 10
    # deterministic order: class, then label, then path
    assert samples == sorted(samples, key=lambda s: (s.subset, s.label, s.path))
    assert Counter((s.subset, s.label) for s in samples) == {("cat", 0): 2, ("cat", 1): 3, ("dog", 0): 2, ("dog", 1): 3}


def test_flat_layout_subset_is_root_name(tmp_path):
    root = tmp_path / "progan"
    write_image(root / "0_real" / "a.png")
    write_image(root / "1_fake" / "b.png", seed=1)
    write_image(root / "1_fake" / "nested" / "c.png", seed=2)  # found recursively
    samples = find_samples(root)
    assert [(os.path.relpath(s.path, root), s.label, s.subset) for s in samples] == [
        ("0_real/a.png", 0, "progan"), ("1_fake/b.png", 1, "progan"), ("1_fake/nested/c.png", 1, "progan")]


def test_class_filter_and_unknown_class(tmp_path):
    make_layout(tmp_path, classes=("cat", "dog", "horse"))
    samples = find_samples(tmp_path, classes=["horse", "cat"])
    assert {s.subset for s in samples} == {"cat", "horse"}
    assert len(samples) == 10
    assert {s.subset for s in find_samples(tmp_path, classes="dog")} == {"dog"}
    with pytest.raises(DatasetError) as e:
        find_samples(tmp_path, classes=["cat", "zebra"])
    msg = str(e.value)
    assert "zebra" in msg and "cat, dog, horse" in msg and str(tmp_path) in msg


def _only_files(root):
    write_image(root / "images" / "x.png")


@pytest.mark.parametrize("case", ["missing", "file", "empty", "wrong-layout", "no-images"])
def test_bad_roots_raise_one_line_naming_the_path(tmp_path, case):
    root = tmp_path / "data"
    if case == "file":
        root.write_text("not a dir")
    elif case == "empty":
        root.mkdir()
    elif case == "wrong-layout":
        _only_files(root)
    elif case == "no-images":
        (root / "cat" / "0_real").mkdir(parents=True)
        (root / "cat" / "1_fake").mkdir(parents=True)
    with pytest.raises(DatasetError) as e:
        find_samples(root)
    msg = str(e.value)
    assert str(root) in msg and "\n" not in msg
    assert isinstance(e.value, ValueError)
    if case != "no-images":
        assert "0_real" in msg  # says what layout was expected
    if case == "wrong-layout":
        assert "images/" in msg  # and what was found


def test_deeper_layout_points_at_the_right_root(tmp_path):
    make_layout(tmp_path / "syn" / "train")
    with pytest.raises(DatasetError, match="did you mean .*train"):
        find_samples(tmp_path / "syn")


def test_mixed_layout_is_an_error(tmp_path):
    make_layout(tmp_path, classes=("cat",))
    write_image(tmp_path / "0_real" / "x.png")
    with pytest.raises(DatasetError, match="mixed layout"):
        find_samples(tmp_path)


def test_class_with_one_label_is_kept_with_a_warning(tmp_path):
    make_layout(tmp_path, classes=("cat",))
    write_image(tmp_path / "dog" / "0_real" / "only.png")
    with pytest.warns(DatasetWarning, match=r"dog.*no 1_fake"):
        samples = find_samples(tmp_path)
    assert Sample(str(tmp_path / "dog" / "0_real" / "only.png"), 0, "dog") in samples


def test_header_level_bad_files_skipped_and_named(tmp_path):
    expected = make_layout(tmp_path)
    bad = {
        tmp_path / "cat" / "0_real" / "notes.txt": "extension",
        tmp_path / "cat" / "1_fake" / "garbage.png": "not an image",
        tmp_path / "dog" / "1_fake" / "empty.jpg": "empty",
    }
    for path in bad:
        path.write_bytes(b"" if path.suffix == ".jpg" else b"definitely not pixels" * 10)
    (tmp_path / "cat" / "0_real" / ".DS_Store").write_bytes(b"\0\1")  # hidden: ignored silently
    with pytest.warns(DatasetWarning) as record:
        samples = find_samples(tmp_path)
    assert set(samples) == set(expected)  # no good sample lost
    messages = [str(w.message) for w in record]
    assert len(messages) == 1
    assert "skipped 3 of 13 files" in messages[0]
    for path, reason in bad.items():
        line = next(line for line in messages[0].splitlines() if str(path) in line)
        assert reason in line
    assert ".DS_Store" not in messages[0]


def test_samples_are_listed_by_the_runtime_listing_rules(tmp_path):
    """find_samples lists each label folder with the runtime's one walker (issue 25, item 3):
    symlinked folders followed (as ImageFolder does), each real folder read once, hidden names
    skipped, a folder's files before its subfolders'."""
    for k in range(2):
        write_image(tmp_path / "elsewhere" / f"s{k}.png", seed=k)
    real = [write_image(tmp_path / "data" / "0_real" / name, seed=10 + k) for k, name in enumerate(("b.png", "a.png"))]
    fake = write_image(tmp_path / "data" / "1_fake" / "deep" / "f.png", seed=20)
    write_image(tmp_path / "data" / "1_fake" / ".thumbs" / "t.png", seed=21)
    os.symlink(tmp_path / "elsewhere", tmp_path / "data" / "0_real" / "linked")
    os.symlink(tmp_path / "data" / "0_real", tmp_path / "data" / "0_real" / "linked" / "back")  # a loop: read once
    samples = find_samples(tmp_path / "data")
    assert [(s.path, s.label) for s in samples] == [
        (real[1], 0), (real[0], 0),
        (str(tmp_path / "data" / "0_real" / "linked" / "s0.png"), 0),
        (str(tmp_path / "data" / "0_real" / "linked" / "s1.png"), 0),
        (fake, 1)]


def make_dataset_with_truncated(root):
    expected = make_layout(root)
    png = write_image(os.path.join(root, "cat", "1_fake", "trunc.png"), seed=7, w=64, h=64)
    jpg = write_image(os.path.join(root, "dog", "0_real", "trunc.jpg"), seed=8, w=64, h=64, fmt="JPEG")
    truncate(png)
    truncate(jpg)
    return expected, {png, jpg}


def test_decode_level_bad_files_become_bad_indices(tmp_path):
    expected, truncated = make_dataset_with_truncated(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # headers are fine: find_samples must not complain
        samples = find_samples(tmp_path)
    assert {s.path for s in samples} == {s.path for s in expected} | truncated

    ds = ImageDataset(samples, EvalTransform("resize", 32))
    loader = DataLoader(ds, batch_size=4, shuffle=False, collate_fn=collate_skip_bad)
    good, bad, log = [], [], BadFileLog()
    for images, labels, indices, bad_indices in loader:
        assert images.shape == (len(indices), 3, 32, 32) and images.dtype == torch.float32
        assert labels.dtype == torch.float32 and indices.dtype == torch.int64
        assert labels.tolist() == [samples[i].label for i in indices.tolist()]
        good += indices.tolist()
        bad += bad_indices
        with pytest.warns(DatasetWarning) if bad_indices else warnings.catch_warnings():
            log.add_indices(ds, bad_indices)
    assert {samples[i].path for i in bad} == truncated
    assert sorted(good + bad) == list(range(len(samples)))  # every good sample delivered once
    assert log.count == 2
    summary = log.summary()
    assert all(p in summary for p in truncated) and "truncated" in summary


def test_all_bad_batch_is_empty(tmp_path):
    _, truncated = make_dataset_with_truncated(tmp_path)
    ds = ImageDataset([Sample(p, 0, "x") for p in sorted(truncated)], EvalTransform("resize", 32))
    images, labels, indices, bad = collate_skip_bad([ds[0], ds[1]])
    assert images.shape[0] == labels.shape[0] == indices.shape[0] == 0 and bad == [0, 1]


def test_loader_results_do_not_depend_on_num_workers(tmp_path):
    samples = make_layout(tmp_path, n_real=3, n_fake=3)
    ds = ImageDataset(samples, TrainTransform(load_size=None, crop_size=24), seed=5)

    def run(workers):
        ds.set_epoch(1)
        loader = DataLoader(ds, batch_size=3, num_workers=workers, collate_fn=collate_skip_bad)
        out = {}
        for images, _, indices, _ in loader:
            out.update({int(i): x for i, x in zip(indices, images)})
        return out

    a, b = run(0), run(2)
    assert a.keys() == b.keys() == set(range(len(samples)))
    assert all(torch.equal(a[i], b[i]) for i in a)


# ------------------------------------------------------------------------------------------
# Transforms
# ------------------------------------------------------------------------------------------


def test_train_transform_shape_dtype_determinism():
    img = noise_image(0, w=300, h=200)
    t = TrainTransform(blur_prob=0.5, jpeg_prob=0.5)
    out = t(img, np.random.default_rng(3))
    assert out.shape == (3, 224, 224) and out.dtype == np.float32
    assert np.array_equal(out, t(img, np.random.default_rng(3)))
    assert np.array_equal(out, t(img, 3))  # int seed == Generator of that seed
    assert not np.array_equal(out, t(img, np.random.default_rng(4)))


def test_flip_actually_flips():
    img = noise_image(1)
    ref = normalize(np.asarray(img))
    t = TrainTransform(load_size=None, crop_size=None, flip=True)
    flipped = [np.array_equal(out, np.flip(ref, axis=2)) for out in (t(img, s) for s in range(40))]
    same = [np.array_equal(t(img, s), ref) for s in range(40)]
    assert all(f != s for f, s in zip(flipped, same))  # each output is one or the other
    assert 8 <= sum(flipped) <= 32  # and both happen (p = 0.5)
    no_flip = TrainTransform(load_size=None, crop_size=None, flip=False)
    assert all(np.array_equal(no_flip(img, s), ref) for s in range(10))


def test_random_crop_is_a_window_of_the_image():
    img = noise_image(2, w=40, h=36)
    ref = normalize(np.asarray(img))
    t = TrainTransform(load_size=None, crop_size=16, flip=False)
    offsets = set()
    for seed in range(10):
        out = t(img, seed)
        hits = [(y, x) for y in range(36 - 16 + 1) for x in range(40 - 16 + 1)
                if np.array_equal(out, ref[:, y:y + 16, x:x + 16])]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 5


def test_resize_blur_jpeg_match_independent_pil():
    img = noise_image(3, w=70, h=50)
    resized = img.resize((64, 64), Image.BILINEAR)
    plain = TrainTransform(load_size=64, crop_size=None, flip=False)
    assert np.array_equal(plain(img, 0), normalize(np.asarray(resized)))

    blur = TrainTransform(load_size=64, crop_size=None, flip=False, blur_prob=1.0, blur_sigma=(1.5, 1.5))
    expected = normalize(np.asarray(resized.filter(ImageFilter.GaussianBlur(radius=1.5))))
    assert np.array_equal(blur(img, 0), expected)

    jpeg = TrainTransform(load_size=64, crop_size=None, flip=False, jpeg_prob=1.0, jpeg_quality=(40, 40))
    buf = io.BytesIO()
    resized.save(buf, format="JPEG", quality=40)
    with Image.open(io.BytesIO(buf.getvalue())) as decoded:
        expected = normalize(np.asarray(decoded.convert("RGB")))
    assert np.array_equal(jpeg(img, 0), expected)


def test_augmentation_probabilities():
    img = noise_image(4, w=32, h=32)
    ref = normalize(np.asarray(img))
    t = TrainTransform(load_size=None, crop_size=None, flip=False, blur_prob=0.3, blur_sigma=(1.0, 2.0))
    changed = sum(not np.array_equal(t(img, s), ref) for s in range(200))
    assert 35 <= changed <= 85  # ~60 of 200


def test_crop_larger_than_image_is_an_image_error_naming_the_file(tmp_path):
    path = write_image(tmp_path / "small.png", w=20, h=30)
    t = TrainTransform(load_size=None, crop_size=24)
    with pytest.raises(ImageError, match="small.png.*20x30"):
        with Image.open(path) as img:
            t(img.convert("RGB"), 0, path)
    ds = ImageDataset([Sample(path, 1, "x")], t)
    assert ds[0] == (None, None, 0)
    assert "20x30" in ds.error(0)
    with pytest.raises(ValueError):
        TrainTransform(load_size=128, crop_size=224)


def test_eval_transform_policies_match_independent_computation():
    img = noise_image(5, w=300, h=280)
    expected = normalize(np.asarray(img.resize((256, 256), Image.BILINEAR)))
    assert np.array_equal(EvalTransform("resize")(img), expected)
    a = np.asarray(img)
    assert np.array_equal(EvalTransform("center-crop", 256)(img), normalize(a[12:268, 22:278]))
    assert np.array_equal(EvalTransform("none")(img), normalize(a))
    with pytest.raises(ImageError, match="where.png"):
        EvalTransform("center-crop", 512)(img, None, "where.png")
    with pytest.raises(ValueError):
        EvalTransform("stretch")


# ------------------------------------------------------------------------------------------
# Dataset, sampler, log
# ------------------------------------------------------------------------------------------


def test_dataset_items_and_epoch_seeding(tmp_path):
    samples = make_layout(tmp_path, classes=("cat",), n_real=1, n_fake=1)
    ds = ImageDataset(samples, TrainTransform(load_size=None, crop_size=16), seed=0)
    x, y, i = ds[1]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 16, 16) and x.dtype == torch.float32
    assert y.dtype == torch.float32 and y.item() == samples[1].label and i == 1
    assert torch.equal(ds[1][0], x)  # same (seed, epoch, index) -> same augmentation
    ds.set_epoch(1)
    assert not torch.equal(ds[1][0], x)
    ds.set_epoch(0)
    assert torch.equal(ds[1][0], x)
    other = ImageDataset(samples, ds.transform, seed=1)
    assert not torch.equal(other[1][0], x)


def test_balanced_sampler_draws_labels_equally():
    samples = [Sample(f"r{i}.png", 0, "x") for i in range(90)] + [Sample(f"f{i}.png", 1, "x") for i in range(10)]
    sampler = balanced_sampler(samples, num_samples=20000, generator=torch.Generator().manual_seed(0))
    drawn = list(sampler)
    assert len(drawn) == 20000
    fake_share = np.mean([samples[i].label for i in drawn])
    assert abs(fake_share - 0.5) < 0.02
    # within a label, draws are uniform: every fake is drawn about 1000 times
    per_fake = Counter(i for i in drawn if i >= 90)
    assert min(per_fake.values()) > 800 and max(per_fake.values()) < 1200
    assert len(balanced_sampler(samples)) == 100


def test_bad_file_log_warns_once_per_file():
    log = BadFileLog()
    assert log.summary() == "no bad files"
    with pytest.warns(DatasetWarning, match="a.png: truncated"):
        assert log.add("a.png", "truncated")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not log.add("a.png", "truncated")
    with pytest.warns(DatasetWarning, match="b.png"):
        log.add("b.png", "corrupt")
    assert log.count == 2
    assert "skipped 2 bad files" in log.summary() and "b.png: corrupt" in log.summary()
