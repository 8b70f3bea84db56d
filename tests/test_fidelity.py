"""The cross-domain check of reduced-precision exports (export/fidelity.py).

Independent references: the stress variants are checked against numpy's own 2x2 box average and
pixel repetition, and JPEG files against Pillow's decoder; the counts of the report against
hand-worked logits; the acceptance line against reports built to sit on either side of it; and
a model broken on purpose (its logits shifted by +5 after quantisation) must be rejected by the
export exactly as a failed fp32 verification is.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lfm.export.fidelity import (ACCEPTANCE, STRESS_GROUPS, AcceptanceLine, FidelityReport, GroupFidelity,
                                 make_stress_set)
from lfm.runtime.spec import ModelSpec


def _box_half(a: np.ndarray) -> np.ndarray:
    """2x2 box average of uint8 HWC, rounded half up as integer arithmetic: (sum + 2) // 4."""
    h, w = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    s = a[:h, :w].astype(np.int64).reshape(h // 2, 2, w // 2, 2, 3).sum(axis=(1, 3))
    return ((s + 2) // 4).astype(np.uint8)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (49, 67, 3), dtype=np.uint8)  # odd sizes: the variants use the even part
    path = tmp_path_factory.mktemp("photo") / "photo.png"
    Image.fromarray(a).save(path)
    return path, a


def test_stress_variants_are_what_they_say(photo, tmp_path):
    path, a = photo
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really")
    groups = make_stress_set([str(path), str(bad)], tmp_path / "stress", ModelSpec(size=64), synthetic=6)
    assert list(groups) == list(STRESS_GROUPS)
    assert groups["held-out"] == [str(path), str(bad)]  # as given; the bad one is skipped where scored
    for g in STRESS_GROUPS[1:-1]:
        assert len(groups[g]) == 1, g  # the undecodable file has no variants
    read = {g: np.asarray(Image.open(groups[g][0]).convert("RGB")) for g in STRESS_GROUPS[1:-1]}
    half = _box_half(a)
    assert np.array_equal(read["half-png"], half)
    assert np.array_equal(read["nearest-2x"], half.repeat(2, 0).repeat(2, 1))
    for g in ("bilinear-2x", "bicubic-2x"):  # interpolated, the even part's size, not pixel repeats
        assert read[g].shape == (48, 66, 3) and not np.array_equal(read[g], read["nearest-2x"])
    for q in ("jpeg-q75", "jpeg-q95"):
        assert Image.open(groups[q][0]).format == "JPEG" and read[q].shape == a.shape
    err = {q: np.abs(read[q].astype(int) - a).mean() for q in ("jpeg-q75", "jpeg-q95")}
    assert 0 < err["jpeg-q95"] < err["jpeg-q75"]  # quality 95 is closer to the pixels than 75
    syn = groups["synthetic"]
    assert len(syn) == 6 and {p.split("/")[-2] for p in syn} == {"0_real", "1_fake"}
    assert all(Image.open(p).size == (64, 64) for p in syn)  # at the model's size


def test_unknown_group_is_refused(photo, tmp_path):
    with pytest.raises(ValueError, match="jpeg-q10"):
        make_stress_set([str(photo[0])], tmp_path, groups=["jpeg-q10"])


def test_group_fidelity_counts_known_answer():
    ref = np.array([5.0, -5.0, 0.5, -3.0, 10.0])
    test = np.array([4.9, 1.0, -0.5, -3.2, 10.0])
    r = GroupFidelity.of(ref, test)
    # flipped: -5 -> 1 (sure: |-5| >= 2) and 0.5 -> -0.5 (not sure); |d| = .1, 6, 1, .2, 0
    assert (r.n, r.flips, r.sure, r.sure_flips) == (5, 2, 4, 1)
    assert r.median_abs_dlogit == pytest.approx(0.2) and r.max_abs_dlogit == pytest.approx(6.0)
    assert r.agreement == pytest.approx(0.6)
    # threshold 0.8: the boundary is logit ln 4 = 1.386, which neither -5 -> 1 nor 0.5 -> -0.5 crosses
    rep = FidelityReport.compare(ref, test, ["a", "a", "b", "b", "b"], threshold=0.8)
    assert rep.groups["a"].flips == 0 and rep.groups["b"].flips == 0 and rep.overall.flips == 0
    assert rep.groups["a"].sure == 2 and rep.groups["b"].sure == 2  # |0.5 - 1.386| < 2; the rest >= 2
    test[0] = 1.0  # 5 -> 1 crosses ln 4: a sure flip
    rep = FidelityReport.compare(ref, test, ["a", "a", "b", "b", "b"], threshold=0.8)
    assert (rep.groups["a"].flips, rep.groups["a"].sure_flips, rep.overall.flips) == (1, 1, 1)


def _report(groups: dict[str, tuple[np.ndarray, np.ndarray]]) -> FidelityReport:
    ref = np.concatenate([r for r, _ in groups.values()])
    test = np.concatenate([t for _, t in groups.values()])
    names = [g for g, (r, _) in groups.items() for _ in r]
    return FidelityReport.compare(ref, test, names)


def test_acceptance_line_on_either_side():
    ref = np.concatenate([np.linspace(-20, -1, 100), np.linspace(1, 20, 100)])
    good = _report({"a": (ref, ref + 0.1), "b": (ref, ref - 0.2)})
    ok, line = ACCEPTANCE.judge(good)
    assert ok and "0 flips" in line
    # One sure decision flipped in group b: rejected, b named.
    test = ref.copy()
    test[10] = -test[10]
    ok, line = ACCEPTANCE.judge(_report({"a": (ref, ref), "b": (ref, test)}))
    assert not ok and "'b'" in line and "sure" in line
    # Overall median over the line.
    ok, line = ACCEPTANCE.judge(_report({"a": (ref, ref + 0.35), "b": (ref, ref + 0.35)}))
    assert not ok and "median |dlogit| 0.350 over all images" in line
    # The overall median over the line names the group furthest off.
    ok, line = ACCEPTANCE.judge(_report({"a": (ref, ref + 0.31), "b": (ref, ref + 0.4), "c": (ref, ref)}))
    assert not ok and "'b'" in line and "(this group: 0.400)" in line
    # One group far off (one input many times over) while the overall median holds: reported, not judged.
    ok, line = ACCEPTANCE.judge(_report({"a": (ref, ref), "b": (ref, ref), "c": (ref, ref + 1.2)}))
    assert ok
    # Near-boundary flips (not sure) over 1 %: rejected.
    near = np.full(100, 0.5)
    near_test = near.copy()
    near_test[:2] = -0.5
    assert not ACCEPTANCE.judge(_report({"a": (near, near_test)}))[0]
    assert AcceptanceLine(max_flip_rate=0.05).judge(_report({"a": (near, near_test)}))[0]


@pytest.fixture(scope="module")
def small_ckpt_and_images(tmp_path_factory):
    pytest.importorskip("torch", reason="exporting needs the [train] extra")
    pytest.importorskip("onnx", reason="exporting needs the [export] extra")
    from conftest import random_lfm
    from lfm.train.checkpoint import make_checkpoint, save_atomic
    from lfm.train.make_synthetic import make_synthetic

    d = tmp_path_factory.mktemp("fidelity")
    save_atomic(make_checkpoint(random_lfm(), ModelSpec(size=64)), d / "random.pt")
    # 96 px: their 2x-down-sampled stress variants (48 px) are still large enough to score (K=16)
    make_synthetic(d / "images", n=24, size=96, seed=2, val_fraction=0.0, jobs=1)
    return d / "random.pt", d / "images"


def _shift_logits(real_quantize, shift: float):
    """quantize_int8, then the fc bias moved by ``shift``: a model broken on purpose."""
    def broken(fp32_path, out_path, *a, **kw):
        import onnx
        import onnx.numpy_helper as nh

        info = real_quantize(fp32_path, out_path, *a, **kw)
        m = onnx.load(out_path)
        gemm = next(n for n in m.graph.node if n.op_type == "Gemm")
        bias = next(t for t in m.graph.initializer if t.name == gemm.input[2])
        bias.CopyFrom(nh.from_array(nh.to_array(bias) + np.float32(shift), bias.name))
        onnx.save(m, out_path)
        return info
    return broken


def test_export_rejects_a_broken_int8_model_and_force_keeps_it(small_ckpt_and_images, tmp_path, monkeypatch, capsys):
    from lfm.export import quantize, to_onnx

    ckpt, images = small_ckpt_and_images
    monkeypatch.setattr(quantize, "quantize_int8", _shift_logits(quantize.quantize_int8, 5.0))
    out = tmp_path / "m.onnx"
    args = [str(ckpt), "-o", str(out), "--int8", "--calib", str(images), "--calib-count", "16", "--stress-count", "4"]
    rc = to_onnx.main(args)
    err = capsys.readouterr().err
    assert rc == 1 and not out.exists() and (tmp_path / "m.rejected.onnx").exists()
    assert "verification FAILED (worst group" in err and "decisions flipped over all images" in err, err
    report = json.load(open(str(out) + ".report.json"))
    assert not report["passed"] and not report["fidelity"]["passed"] and not report["fidelity"]["forced"]
    assert report["fidelity"]["overall"]["median_abs_dlogit"] == pytest.approx(5.0, abs=1e-3)
    # Counted truthfully: 16 calibrated, the other 8 held out, 4 per stress group.
    assert report["quantization"]["count"] == 16 and report["verification"]["n"] == 8
    assert {c["scored"] for c in report["fidelity"]["images"].values()} == {4}

    rc = to_onnx.main(args + ["--force"])
    assert rc == 0 and out.exists()
    report = json.load(open(str(out) + ".report.json"))
    assert report["passed"] and report["fidelity"]["forced"] and not report["fidelity"]["passed"]
    assert "kept anyway (--force)" in capsys.readouterr().err


def test_export_refuses_too_few_calibration_images_before_exporting(small_ckpt_and_images, tmp_path, capsys):
    from lfm.export import to_onnx
    from lfm.runtime.cli import run

    ckpt, images = small_ckpt_and_images
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted(images.rglob("*.png"))[:6]:
        (few / p.name).write_bytes(p.read_bytes())
    rc = run(to_onnx.main, [str(ckpt), "-o", str(tmp_path / "m.onnx"), "--int8", "--calib", str(few)])
    err = capsys.readouterr()
    assert rc == 2 and "at least 8 calibration images" in err.err
    assert "verification" not in err.out  # refused before the fp32 export ran
    rc = run(to_onnx.main, [str(ckpt), "-o", str(tmp_path / "m.onnx"), "--int8", "--calib", str(tmp_path / "nope")])
    err = capsys.readouterr()
    assert rc == 2 and "does not exist" in err.err and "verification" not in err.out
    rc = run(to_onnx.main, [str(ckpt), "-o", str(tmp_path / "m.onnx"), "--int8", "--calib", str(images),
                            "--int8-layers", "conv5"])
    err = capsys.readouterr()
    assert rc == 2 and "int8 layers conv5" in err.err and "verification" not in err.out


def test_sensitivity_command_quantises_each_layer_alone_and_all_but_each(small_ckpt_and_images, tmp_path, capsys):
    """export/sensitivity.py on a small model: 11 configurations, each really quantising the layers
    it names (counted from the written rows), and a summary naming the layers."""
    from lfm.export import sensitivity, to_onnx

    ckpt, images = small_ckpt_and_images
    model = tmp_path / "m.onnx"
    assert to_onnx.main([str(ckpt), "-o", str(model)]) == 0
    out = tmp_path / "s.json"
    rc = sensitivity.main([str(model), "--calib", str(images), "--calib-count", "12", "--stress-count", "4",
                           "-o", str(out)])
    assert rc == 0
    rows = json.loads(out.read_text())
    layers = ["conv1", "conv2", "conv3", "conv4", "salience"]
    assert [r["config"] for r in rows] == (["all"] + [f"only {n}" for n in layers]
                                           + [f"all but {n}" for n in layers])
    assert rows[0]["int8_layers"] == layers
    assert rows[1]["int8_layers"] == ["conv1"] and rows[6]["int8_layers"] == layers[1:]
    assert all(r["report"]["overall"]["n"] == 8 * 4 for r in rows)  # 12 images left: 4 per group
    printed = capsys.readouterr().out
    assert "layers whose fp32 fallback helps most" in printed and printed.count("all but") >= 10
    assert "layers that alone move the logits most" in printed and printed.count("only") >= 10


def test_sensitivity_bad_arguments_are_one_line_and_never_overwrite_the_model(small_ckpt_and_images, tmp_path, capsys):
    from lfm.export import sensitivity

    _, images = small_ckpt_and_images
    assert sensitivity.main([str(tmp_path / "none.onnx"), "--calib", str(images)]) == 2
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'none.onnx'}: no such model file"
    model = tmp_path / "m.onnx"
    model.write_bytes(b"precious")
    assert sensitivity.main([str(model), "--calib", str(images), "-o", str(model)]) == 2
    assert capsys.readouterr().err.strip() == (f"error: {model}: is the model; writing there would destroy it. "
                                               "Choose another --output")
    assert model.read_bytes() == b"precious"
