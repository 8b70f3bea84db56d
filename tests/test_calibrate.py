"""Calibration to one's own images (issue 26, item 1): export/calibrate.py, `lfm calibrate`.

Real files, real ONNX Runtime (and PyTorch for checkpoints), the real command in subprocesses.
The statistics are checked against scipy where it is installed; the command itself runs here
with scipy and torch blocked (an ONNX model needs neither).

How the confidence bound is tested (``test_the_bound_holds_on_held_out_real_images``): 1000
real-like images (make_synthetic's procedural scenes with sensor noise, independent seeds, so
exchangeable) are scored once through the runtime by a model whose logits spread over several
units; 2000 times they are split at random into 100 for calibration and 900 held out, the
threshold is chosen on the 100 as the command chooses it, and the held-out share called fake is
measured with the runtime's rule. At a 95 % bound the held-out FPR may exceed the 5 % target in
at most 5 % of the splits (plus 3 standard errors of the 2000-split estimate; measured: 3.9 %);
the same splits with the rate taken on the 100 images alone (--bound none) exceed it in 60 %,
which shows the test can fail. On the reference set (46 real JPEGs, too few for 5 % at 95 %:
the command refuses, naming 59) the command runs at 10 %, and the 46 images' scores are the
population from which calibration sets are drawn with replacement, so the true FPR of each
threshold is known exactly (exceeded in 3.9 % of 4000 draws).
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import export_uint8_onnx, read_tsv, random_lfm

from lfm.export.threshold_choice import (allowed_false_positives, binomial_cdf, choose_threshold, fpr_upper_bound,
                                         reals_needed, scores_of)
from lfm.runtime.spec import ModelSpec, is_fake

ROOT = Path(__file__).resolve().parents[1]
BLOCK_SCIPY_AND_TORCH = "import sys; sys.modules['scipy'] = None; sys.modules['torch'] = None\n"


def lfm(*argv, block: str = "") -> subprocess.CompletedProcess:
    """`lfm ARGV` in a fresh interpreter (after ``block``'s code)."""
    code = block + "import sys\nfrom lfm.runtime.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def records(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


# -- the statistics ------------------------------------------------------------------------------------

def test_clopper_pearson_equals_scipys_beta_quantile():
    stats = pytest.importorskip("scipy.stats", reason="scipy (through scikit-learn, the [viz] extra)")
    for n in (1, 2, 5, 29, 46, 59, 100, 1000, 5000):
        for k in sorted({0, 1, n // 10, n // 2, n - 1} - {n}):
            for confidence in (0.9, 0.95, 0.99):
                expected = stats.beta.ppf(confidence, k + 1, n - k)
                assert fpr_upper_bound(k, n, confidence) == pytest.approx(expected, rel=1e-12, abs=1e-300)
            assert binomial_cdf(k, n, 0.07) == pytest.approx(stats.binom.cdf(k, n, 0.07), rel=1e-11, abs=1e-300)
    assert fpr_upper_bound(5, 5, 0.95) == 1.0


def test_reals_needed_is_the_smallest_set_that_can_meet_the_target():
    assert reals_needed(0.05, 0.95) == 59 and reals_needed(0.10, 0.95) == 29 and reals_needed(0.01, 0.95) == 299
    for target, confidence in ((0.05, 0.95), (0.1, 0.9), (0.02, 0.99), (0.3, 0.5)):
        n = reals_needed(target, confidence)
        assert fpr_upper_bound(0, n, confidence) <= target < fpr_upper_bound(0, n - 1, confidence)
        assert allowed_false_positives(n, target, confidence) == 0
        assert allowed_false_positives(n - 1, target, confidence) is None


def test_allowed_false_positives_is_the_most_the_bound_or_the_rate_allows():
    for n in (59, 100, 200, 1000):
        k = allowed_false_positives(n, 0.05, 0.95)
        assert fpr_upper_bound(k, n, 0.95) <= 0.05 < fpr_upper_bound(k + 1, n, 0.95)
    assert [allowed_false_positives(n, 0.05, None) for n in (10, 19, 20, 100, 101)] == [0, 0, 1, 5, 5]


def test_the_threshold_keeps_the_lowest_thresholds_counts_with_room_on_both_sides():
    rng = np.random.default_rng(0)
    for trial in range(50):
        real = rng.normal(-2, 2, 120)
        fake = rng.normal(1, 2, 40)
        if trial % 2:
            real = np.round(real, 1)  # ties
        choice = choose_threshold(real, 0.05, 0.95, fake)
        lowest = np.sort(scores_of(real))[120 - 1 - choice.allowed]
        real_scores, fake_scores = scores_of(real), scores_of(fake)
        assert choice.false_positives == np.count_nonzero(is_fake(real_scores, lowest)) <= choice.allowed
        assert np.count_nonzero(is_fake(fake_scores, choice.threshold)) == np.count_nonzero(is_fake(fake_scores, lowest))
        seen = np.r_[real_scores, fake_scores]
        assert not np.any(seen == choice.threshold)  # no image sits on it: rounding in a re-run flips none
    assert choose_threshold(np.zeros(58), 0.05, 0.95) is None
    saturated = choose_threshold([40.0, 41.0] + [-1.0] * 70, 0.05, 0.95)  # their scores are all 1.0
    assert saturated.threshold == 1.0 and saturated.false_positives == 0


# -- images and models -------------------------------------------------------------------------------------

N_POOL = 1000


def png(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)
    return path


@pytest.fixture(scope="module")
def real_like(tmp_path_factory) -> Path:
    """N_POOL real-like PNGs (procedural scenes with sensor noise, 64 px) and 30 generated ones
    (half resolution, up-sampled 2x) in real/ and fake/."""
    from lfm.train.make_synthetic import make_fake, make_real

    root = tmp_path_factory.mktemp("calibration_images")
    for i in range(N_POOL):
        png(root / "real" / f"{i:04d}.png", make_real(np.random.default_rng(i), 64))
    for i in range(30):
        png(root / "fake" / f"{i:04d}.png", make_fake(np.random.default_rng(10_000 + i), 64, "bilinear"))
    return root


@pytest.fixture(scope="module")
def small_sets(real_like, tmp_path_factory) -> Path:
    """80 of the real images (59 are needed for 5 % at 95 %) and the 30 generated ones."""
    root = tmp_path_factory.mktemp("small_sets")
    (root / "real").mkdir()
    for i in range(80):
        (root / "real" / f"{i:04d}.png").symlink_to(real_like / "real" / f"{i:04d}.png")
    (root / "fake").symlink_to(real_like / "fake")
    return root


def graph_bytes(path: Path) -> bytes:
    import onnx

    proto = onnx.load(str(path))
    return proto.graph.SerializeToString() + b"".join(o.SerializeToString() for o in proto.opset_import)


def logits(model: Path, files: list[Path]) -> np.ndarray:
    from lfm.runtime.detector import Detector

    with Detector(model) as det:
        return np.array([r.logit for r in det.predict([str(f) for f in files])])


def fingerprint(sets: dict[str, list[Path]]) -> str:
    lines = sorted(f"{which} {hashlib.sha256(p.read_bytes()).hexdigest()}\n" for which, files in sets.items()
                   for p in files)
    return hashlib.sha256("".join(lines).encode()).hexdigest()


# -- the command on an ONNX model --------------------------------------------------------------------------

def test_calibrated_onnx_is_the_same_graph_with_the_threshold_every_command_reads(random_onnx, small_sets, tmp_path):
    out, report, plot = tmp_path / "calibrated.onnx", tmp_path / "report.json", tmp_path / "roc.png"
    r = lfm("calibrate", random_onnx, "--real", small_sets / "real", "--fake", small_sets / "fake",
            "--target-fpr", "0.05", "-o", out, "--report", report, "--plot", plot, block=BLOCK_SCIPY_AND_TORCH)
    assert r.returncode == 0, r.stderr
    calibration = json.loads(report.read_text())["calibration"]
    reals, fakes = sorted((small_sets / "real").iterdir()), sorted((small_sets / "fake").iterdir())

    # the same graph, identical logits, only lfm.spec and lfm.threshold changed
    assert graph_bytes(out) == graph_bytes(random_onnx)
    np.testing.assert_array_equal(logits(out, reals + fakes), logits(random_onnx, reals + fakes))
    from lfm.export.onnx_files import read_metadata, spec_of

    before, after = read_metadata(random_onnx), read_metadata(out)
    assert {k for k in before if before[k] != after[k]} == {"lfm.spec", "lfm.threshold"}
    spec = spec_of(after)
    assert spec.threshold == calibration["threshold"] == float(after["lfm.threshold"])
    assert spec.extra["calibration"] == calibration
    assert spec.replace(threshold=0.5, extra={}) == spec_of(before)

    # the record
    assert calibration["method"] == "clopper-pearson" and calibration["confidence"] == 0.95
    assert (calibration["n_real"], calibration["n_fake"], calibration["skipped"]) == (80, 30, 0)
    assert calibration["allowed_false_positives"] == allowed_false_positives(80, 0.05, 0.95) == 0
    assert calibration["fpr_upper_bound"] == pytest.approx(1 - 0.05 ** (1 / 80), rel=1e-12)  # 3.7 %: 0 of 80
    assert calibration["data_sha256"] == fingerprint({"real": reals, "fake": fakes})
    assert calibration["model_sha256"] == hashlib.sha256(random_onnx.read_bytes()).hexdigest()
    assert Image.open(plot).size[0] > 100

    # infer labels at the new threshold, at most 5 % of the real images fake, and says where it came from
    r = subprocess.run([sys.executable, "runtime/infer.py", "--model", str(out), str(small_sets / "real"),
                        str(small_sets / "fake")], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    got = records(r.stdout)
    assert all(g["label"] == ("fake" if is_fake(g["score"], spec.threshold) else "real") for g in got)
    real_called_fake = sum(g["label"] == "fake" for g in got[:80])
    assert real_called_fake == calibration["false_positives"] <= 0.05 * 80
    assert sum(g["label"] == "fake" for g in got[80:]) == round(calibration["tpr"] * 30)
    summary = r.stderr.strip().splitlines()[-1]
    assert f"threshold {spec.threshold:.4g} (calibrated on 80 real images: FPR <= " in summary, summary
    assert f"{calibration['fpr_upper_bound']:.1%} at 95% confidence)" in summary

    # a threshold given on the command line wins, and the summary says so
    r = subprocess.run([sys.executable, "runtime/infer.py", "--model", str(out), str(reals[0]), "--threshold", "0.5"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert "threshold 0.5 (given; the model's calibrated threshold" in r.stderr.splitlines()[-1]

    # the Python API and inspect
    from lfm.runtime.detector import Detector

    with Detector(out) as det:
        assert det.spec.threshold == spec.threshold and det.predict_one(str(reals[0])).label in ("real", "fake")
    r = lfm("inspect", out)
    assert r.returncode == 0 and f"threshold {spec.threshold:.4g} (calibrated on 80 real images" in r.stdout
    assert f"calibration data sha256 {calibration['data_sha256']}" in r.stdout
    r = lfm("inspect", out, "--json")
    assert json.loads(r.stdout)["spec"]["extra"]["calibration"] == calibration


def test_the_reports_figures_equal_independent_computations(random_onnx, small_sets, tmp_path):
    metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn (the [viz] extra)")
    report = tmp_path / "report.json"
    r = lfm("calibrate", random_onnx, "--real", small_sets / "real", "--fake", small_sets / "fake",
            "--target-fpr", "0.1", "--bound", "none", "-o", tmp_path / "c.onnx", "--report", report)
    assert r.returncode == 0, r.stderr
    data = json.loads(report.read_text())
    c, images = data["calibration"], data["images"]
    y = np.array([im["set"] == "fake" for im in images])
    logit = np.array([im["logit"] for im in images])
    score = np.array([im["score"] for im in images])
    reference = logits(random_onnx, [Path(im["path"]) for im in images])  # the report's logits are the runtime's
    np.testing.assert_array_equal(logit, reference)
    assert c["method"] == "empirical" and c["fpr_upper_bound"] is None and c["confidence"] is None
    assert c["false_positives"] == np.count_nonzero(score[~y] > c["threshold"]) <= 0.1 * 80
    assert c["achieved_fpr"] == c["false_positives"] / 80
    assert c["tpr"] == np.count_nonzero(score[y] > c["threshold"]) / 30
    assert c["ap"] == pytest.approx(metrics.average_precision_score(y, logit), abs=1e-12)
    assert c["auc"] == pytest.approx(metrics.roc_auc_score(y, logit), abs=1e-12)
    fpr, tpr, _ = metrics.roc_curve(y, logit, drop_intermediate=False)
    assert c["eer"] == pytest.approx(np.min(np.maximum(fpr, 1 - tpr)), abs=1e-12)  # distinct logits: a staircase
    for line in ("real called fake (FPR)", "generated called fake (TPR)", "AP ", "AUC ", "EER "):
        assert line in r.stdout


# -- the confidence bound on held-out images -----------------------------------------------------------------

@pytest.fixture(scope="module")
def spread_onnx(tmp_path_factory) -> Path:
    """conftest's random model with its last layer scaled 1000x: logits spread over several units,
    as a trained model's are (the random model's lie within 0.01 of each other, closer than the
    threshold's rounding margin, which would make the test below easier to pass)."""
    torch = pytest.importorskip("torch", reason="building a model to export needs the [train] extra")
    pytest.importorskip("onnx", reason="exporting needs the [export] extra")
    model = random_lfm(var_high=2.0)
    with torch.no_grad():
        model.fc.weight.mul_(1000)
        model.fc.bias.mul_(1000)
    return export_uint8_onnx(model, ModelSpec(size=64), tmp_path_factory.mktemp("spread_onnx") / "spread.onnx")


def test_the_bound_holds_on_held_out_real_images(spread_onnx, real_like):
    """See the module's docstring."""
    from lfm.runtime.detector import Detector

    with Detector(spread_onnx) as det:
        pool = det.predict([str(p) for p in sorted((real_like / "real").iterdir())])
    assert all(r.ok for r in pool)
    pool_logits = np.array([r.logit for r in pool])
    pool_scores = np.array([r.score for r in pool])
    assert len(set(pool_logits)) > 0.9 * N_POOL and np.ptp(pool_logits) > 1  # spread, not a few tied values
    rng = np.random.default_rng(0)
    splits, n, target = 2000, 100, 0.05
    exceeded = {0.95: 0, None: 0}
    for _ in range(splits):
        order = rng.permutation(N_POOL)
        calibration, held_out = order[:n], order[n:]
        for confidence in exceeded:
            threshold = choose_threshold(pool_logits[calibration], target, confidence).threshold
            exceeded[confidence] += np.mean(is_fake(pool_scores[held_out], threshold)) > target
    tolerance = 3 * np.sqrt(0.05 * 0.95 / splits)
    assert exceeded[0.95] / splits <= 0.05 + tolerance, exceeded
    assert exceeded[None] / splits > 0.4, exceeded  # the rate on 100 images alone over-promises: the test can fail


# -- the uncertain band (issue 26, item 3) --------------------------------------------------------------------

def pillow_resized(path: Path, factor: float) -> Image.Image:
    """The file decoded and resized by ``factor`` with Pillow's bicubic filter, each side rounded."""
    with Image.open(path) as img:
        rgb = img.convert("RGB")
    return rgb.resize((round(rgb.width * factor), round(rgb.height * factor)), Image.BICUBIC)


def test_the_band_is_measured_on_the_images_and_flags_exactly_the_records_within_it(spread_onnx, small_sets, tmp_path):
    from lfm.export.onnx_files import model_spec
    from lfm.runtime.detector import Detector
    from lfm.runtime.spec import logit_boundary

    out, report = tmp_path / "calibrated.onnx", tmp_path / "report.json"
    r = lfm("calibrate", spread_onnx, "--real", small_sets / "real", "--fake", small_sets / "fake", "--target-fpr",
            "0.05", "-o", out, "--report", report, block=BLOCK_SCIPY_AND_TORCH)
    assert r.returncode == 0, r.stderr
    printed = r.stdout
    note = json.loads(report.read_text())["calibration"]["uncertain_band"]
    spec = model_spec(out)
    assert spec.extra["uncertain_band"] == note["logits"] and spec.extra["calibration"]["uncertain_band"] == note
    assert (note["how"], note["images"], note["copies"], note["left_out"]) == ("measured", 110, 440, 0)

    # independently: Pillow's resized copies scored through the runtime, numpy's 95th percentile
    files = sorted((small_sets / "real").iterdir()) + sorted((small_sets / "fake").iterdir())
    clean = logits(spread_onnx, files)
    with Detector(spread_onnx) as det:
        resized = np.array([[r.logit for r in det.predict([pillow_resized(f, s) for f in files])]
                            for s in (0.9, 0.95, 1.05, 1.1)])
    assert note["logits"] == pytest.approx(np.percentile(np.abs(resized - clean), 95), rel=1e-9, abs=1e-9)

    # infer on OUT flags 'uncertain' exactly for the records within the band of the threshold's logit
    r = subprocess.run([sys.executable, "runtime/infer.py", "--model", str(out), *map(str, files)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    got = records(r.stdout)
    within = [abs(g["logit"] - logit_boundary(spec.threshold)) < note["logits"] for g in got]
    assert [("uncertain" in g["flags"]) for g in got] == within and 0 < sum(within) < len(within)
    text = f"uncertain band {note['logits']:.3g} logits (measured on 110 calibration images resized by 0.9 to 1.1)"
    assert f"{text}: {sum(within)} of these 110 images lie within it of the threshold" in printed
    assert text in lfm("inspect", out).stdout
    assert json.loads(lfm("inspect", out, "--json").stdout)["uncertain_band"] == note["logits"]


def test_a_given_band_is_written_as_given_and_kept_when_asked(random_onnx, small_sets, tmp_path):
    from lfm.export.onnx_files import model_spec
    from lfm.runtime.flags import DEFAULT_UNCERTAIN_BAND

    real, given = small_sets / "real", tmp_path / "given.onnx"
    r = lfm("calibrate", random_onnx, "--real", real, "--target-fpr", "0.05", "-o", given, "--uncertain-band", "2.5")
    assert r.returncode == 0, r.stderr
    spec = model_spec(given)
    assert spec.extra["uncertain_band"] == 2.5
    assert spec.extra["calibration"]["uncertain_band"] == {"logits": 2.5, "how": "given"}
    assert "uncertain band 2.5 logits (given to lfm calibrate)" in r.stdout
    assert "uncertain band 2.5 logits (given to lfm calibrate)" in lfm("inspect", given).stdout

    # --keep-band: the model's own stays (and says so); a model without one keeps the runtime's default
    kept = tmp_path / "kept.onnx"
    assert lfm("calibrate", given, "--real", real, "--target-fpr", "0.1", "-o", kept, "--keep-band").returncode == 0
    spec = model_spec(kept)
    assert spec.extra["uncertain_band"] == 2.5 and spec.extra["calibration"]["uncertain_band"]["how"] == "kept"
    assert "uncertain band 2.5 logits (the model's own, kept by lfm calibrate)" in lfm("inspect", kept).stdout
    default = tmp_path / "default.onnx"
    assert lfm("calibrate", random_onnx, "--real", real, "--target-fpr", "0.1", "-o", default,
               "--keep-band").returncode == 0
    spec = model_spec(default)
    assert "uncertain_band" not in spec.extra
    assert spec.extra["calibration"]["uncertain_band"] == {"logits": DEFAULT_UNCERTAIN_BAND, "how": "default"}
    assert (f"uncertain band {DEFAULT_UNCERTAIN_BAND:.3g} logits (the default, measured on the reference images)"
            in lfm("inspect", default).stdout)

    r = lfm("calibrate", random_onnx, "--real", real, "--target-fpr", "0.1", "-o", tmp_path / "x.onnx", "--keep-band",
            "--uncertain-band", "1")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "choose one" in r.stderr, r.stderr
    assert not (tmp_path / "x.onnx").exists()


# -- serving ----------------------------------------------------------------------------------------------------

def test_serve_labels_at_the_calibrated_threshold_and_says_so(random_onnx, small_sets, tmp_path):
    from test_serve import Server, need_pytriton

    need_pytriton()
    out, report = tmp_path / "calibrated.onnx", tmp_path / "report.json"
    r = lfm("calibrate", random_onnx, "--real", small_sets / "real", "--target-fpr", "0.1", "--bound", "none", "-o", out,
            "--report", report)
    assert r.returncode == 0, r.stderr
    calibration = json.loads(report.read_text())["calibration"]
    from lfm.export.onnx_files import model_spec
    from lfm.runtime.spec import threshold_text

    server = Server(out, tmp_path / "serve.log", "--instances", "1")
    try:
        server.wait_ready()
        assert threshold_text(model_spec(out)) in server.log()  # the start-up line
        r = subprocess.run([sys.executable, "runtime/client.py", str(small_sets / "real"), "--url", server.http_url],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)
    finally:
        server.stop()
    assert r.returncode == 0, r.stderr
    got = records(r.stdout)
    assert len(got) == 80 and all(g["label"] == ("fake" if is_fake(g["score"], calibration["threshold"]) else "real")
                                  for g in got)
    assert sum(g["label"] == "fake" for g in got) == calibration["false_positives"] == 8


# -- refusals -------------------------------------------------------------------------------------------------

def test_a_set_too_small_for_the_target_is_refused_naming_the_number_needed(random_onnx, small_sets, tmp_path):
    few = tmp_path / "few"
    few.mkdir()
    for p in sorted((small_sets / "real").iterdir())[:40]:
        (few / p.name).symlink_to(p)
    out = tmp_path / "out.onnx"
    r = lfm("calibrate", random_onnx, "--real", few, "--target-fpr", "0.05", "-o", out)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert "40 real images cannot show FPR <= 0.05 at 0.95 confidence" in r.stderr
    assert "needs at least 59 real images" in r.stderr
    assert not out.exists() and sorted(tmp_path.iterdir()) == [few]
    r = lfm("calibrate", random_onnx, "--real", few, "--target-fpr", "0.1", "--confidence", "0.99", "-o", out)
    assert r.returncode == 2 and "needs at least 44 real images" in r.stderr  # 0.9^44 <= 0.01 < 0.9^43
    assert lfm("calibrate", random_onnx, "--real", few, "--target-fpr", "0.05", "--bound", "none", "-o",
               out).returncode == 0


def test_images_that_cannot_be_scored_are_warned_about_and_counted(random_onnx, small_sets, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    for p in sorted((small_sets / "real").iterdir())[:59]:
        (real / p.name).symlink_to(p)
    (real / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "out.onnx"
    r = lfm("calibrate", random_onnx, "--real", real, "--target-fpr", "0.05", "-o", out)  # 59 left: enough
    assert r.returncode == 0, r.stderr
    warnings = [line for line in r.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(real / "broken.png") in warnings[0] and warnings[0].endswith("left out")
    assert "(1 left out)" in r.stdout
    (real / sorted(os.listdir(real))[0]).unlink()  # 58 + the broken one: the files are enough, the images not
    r = lfm("calibrate", random_onnx, "--real", real, "--target-fpr", "0.05", "-o", tmp_path / "other.onnx")
    assert r.returncode == 2 and r.stderr.splitlines()[-1].startswith("error: 58 real images that could be scored")
    assert not (tmp_path / "other.onnx").exists()


@pytest.mark.parametrize("name", ["same", "symlink", "hard-link"])
def test_out_that_is_the_model_is_refused_and_nothing_written(random_onnx, small_sets, tmp_path, name):
    model = tmp_path / "m.onnx"
    model.write_bytes(random_onnx.read_bytes())
    out = {"same": model, "symlink": tmp_path / "link.onnx", "hard-link": tmp_path / "hard.onnx"}[name]
    if name == "symlink":
        out.symlink_to(model)
    elif name == "hard-link":
        os.link(model, out)
    before = sorted(tmp_path.iterdir()), model.stat().st_mtime_ns
    r = lfm("calibrate", model, "--real", small_sets / "real", "--target-fpr", "0.05", "-o", out)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "is the model" in r.stderr, r.stderr
    assert (sorted(tmp_path.iterdir()), model.stat().st_mtime_ns) == before


def test_other_refusals_are_one_line_before_any_work(random_onnx, small_sets, tmp_path):
    real, fake = small_sets / "real", small_sets / "fake"
    cases = {
        "-o x.pt: OUT is written as MODEL is": ["--real", real, "--target-fpr", "0.05", "-o", tmp_path / "x.pt"],
        "is in both --real and --fake": ["--real", real, "--fake", real / "0000.png", "--target-fpr", "0.05",
                                         "-o", tmp_path / "x.onnx"],
        "--real nothing/: no such file": ["--real", tmp_path / "nothing/", "--target-fpr", "0.05", "-o",
                                          tmp_path / "x.onnx"],
        "--plot draws the ROC curve, which needs generated images": ["--real", real, "--target-fpr", "0.05", "-o",
                                                                     tmp_path / "x.onnx", "--plot", tmp_path / "p.png"],
        "argument --target-fpr: must be a rate strictly between 0 and 1, got 0": ["--real", real, "--target-fpr", "0",
                                                                                 "-o", tmp_path / "x.onnx"],
        "is also the --output file": ["--real", real, "--target-fpr", "0.05", "-o", tmp_path / "x.onnx", "--report",
                                      tmp_path / "x.onnx"],
    }
    for expected, argv in cases.items():
        r = lfm("calibrate", random_onnx, *argv)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, (expected, r.stderr)
        assert expected.split(": ", 1)[-1] in r.stderr or expected in r.stderr, (expected, r.stderr)
    assert os.listdir(tmp_path) == []


# -- checkpoints and plans ------------------------------------------------------------------------------------

def test_calibrated_checkpoint_is_the_same_dict_with_the_new_spec(small_sets, tmp_path):
    torch = pytest.importorskip("torch", reason="the [train] extra")
    from lfm.train.checkpoint import make_checkpoint, read_checkpoint, save_atomic

    model = tmp_path / "ckpt.pt"
    save_atomic(make_checkpoint(random_lfm(), ModelSpec(size=64), epoch=3, best={"ap": 0.5}), model)
    out = tmp_path / "calibrated.pt"
    r = lfm("calibrate", model, "--real", small_sets / "real", "--fake", small_sets / "fake", "--target-fpr", "0.05",
            "-o", out)
    assert r.returncode == 0, r.stderr
    before, after = read_checkpoint(model), read_checkpoint(out)
    assert set(before) == set(after) and before["epoch"] == after["epoch"] == 3
    assert all(torch.equal(before["model"][k], after["model"][k]) for k in before["model"])
    spec = ModelSpec.from_dict(after["spec"])
    assert spec.replace(threshold=0.5, extra={}) == ModelSpec.from_dict(before["spec"])
    files = sorted((small_sets / "real").iterdir())[:8]
    np.testing.assert_array_equal(logits(out, files), logits(model, files))
    assert f"threshold {spec.threshold:.4g} (calibrated on 80 real images" in lfm("inspect", out).stdout


def test_upstreams_checkpoint_becomes_ours_with_the_same_logits(upstream_ckpt, reference_dir, tmp_path):
    pytest.importorskip("torch", reason="the [train] extra")
    real = sorted((reference_dir / "images").glob("*_photo.png"))
    out = tmp_path / "upstream_calibrated.pt"
    r = lfm("calibrate", upstream_ckpt, "--real", *real, "--target-fpr", "0.25", "--bound", "none", "-o", out)
    assert r.returncode == 0, r.stderr
    np.testing.assert_array_equal(logits(out, real), logits(upstream_ckpt, real))
    from lfm.train.checkpoint import read_checkpoint

    saved = read_checkpoint(out)
    assert saved["format"].startswith("lfm-deploy") and saved["converted_from"]["source"] == "upstream"
    assert saved["spec"]["extra"]["calibration"]["n_real"] == 4


def fake_plan(folder: Path, spec: ModelSpec) -> Path:
    """Bytes that start as a serialized engine does, with the sidecar export/to_trt.py would write."""
    from lfm.export.trt_build import make_sidecar
    from lfm.runtime.backends.trt_plan import sidecar_path, write_json_atomic

    plan = folder / "lfm.plan"
    data = b"ptrt" + bytes(20) + bytes([10, 14, 1]) + os.urandom(1000)
    plan.write_bytes(data)
    profile = {"layout": "NHWC", "min": [1, 64, 64, 3], "opt": [8, 256, 256, 3], "max": [32, 512, 512, 3]}
    write_json_atomic(sidecar_path(plan), make_sidecar(
        spec=spec, inp={"name": "pixels", "dtype": "uint8", "layout": "NHWC"}, profile=profile, precision="fp16",
        mode={"strongly_typed": True}, trt_version="10.14.1", device_name="NVIDIA H200", compute_capability="9.0",
        onnx_path="lfm.onnx", onnx_sha256="0" * 64, onnx_props={}, plan_sha256=hashlib.sha256(data).hexdigest(),
        plugins=[], command=["python", "export/to_trt.py", "lfm.onnx", "-o", str(plan)], build={}))
    return plan


def test_a_plans_calibration_is_its_copy_and_a_sidecar_with_the_new_spec(tmp_path):
    """TensorRT cannot run here: the scoring is not tested on a plan, only what is written (and that
    the command, without TensorRT, refuses in one line before writing)."""
    from lfm.export.calibrate import write_plan
    from lfm.runtime.backends.trt_plan import read_sidecar, recognise_plan, sidecar_path
    from lfm.runtime.inspect_model import format_text, inspect_file

    plan = fake_plan(tmp_path, ModelSpec(input="uint8", layout="NHWC", policy="resize", size=256))
    calibration = {"threshold": 0.87, "n_real": 120, "fpr_upper_bound": 0.049, "confidence": 0.95,
                   "method": "clopper-pearson", "false_positives": 0, "achieved_fpr": 0.0}
    out = tmp_path / "calibrated.plan"
    spec = write_plan(str(plan), str(out), calibration)
    assert out.read_bytes() == plan.read_bytes()
    sidecar, original = read_sidecar(out), read_sidecar(plan)
    assert recognise_plan(str(out), out.read_bytes()[:32], sidecar["plan_sha256"], sidecar) == "sidecar"
    assert {k for k in original if original[k] != sidecar[k]} == {"spec"}
    assert ModelSpec.from_dict(sidecar["spec"]) == spec and spec.threshold == 0.87
    assert spec.extra["calibration"] == calibration
    text = format_text(inspect_file(out))
    assert "threshold 0.87 (calibrated on 120 real images: FPR <= 4.9% at 95% confidence)" in text
    image = png(tmp_path / "real.png", np.zeros((64, 64, 3), np.uint8))
    r = lfm("calibrate", plan, "--real", image, "--target-fpr", "0.5", "--bound", "none", "-o", tmp_path / "x.plan")
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert not (tmp_path / "x.plan").exists() and not os.path.exists(sidecar_path(tmp_path / "x.plan"))


# -- the reference set: upstream's model, 46 real and 56 generated JPEGs ---------------------------------------

@pytest.fixture(scope="module")
def reference_sets(reference_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reference_sets")
    cnn = reference_dir / "cnndetection"
    for name, label, _ in read_tsv(cnn / "labels_and_upstream_logits.tsv"):
        folder = root / ("fake" if label == "1" else "real")
        folder.mkdir(exist_ok=True)
        (folder / name).symlink_to(cnn / name)
    return root


def test_calibration_on_the_reference_set(upstream_onnx, reference_sets, tmp_path):
    real, fake = reference_sets / "real", reference_sets / "fake"
    assert len(os.listdir(real)) == 46 and len(os.listdir(fake)) == 56
    # 46 real images cannot show 5 % at 95 %
    r = lfm("calibrate", upstream_onnx, "--real", real, "--target-fpr", "0.05", "-o", tmp_path / "x.onnx")
    assert r.returncode == 2 and "needs at least 59 real images" in r.stderr
    # 5 % on these images only: infer then calls at most 5 % of them fake
    out = tmp_path / "empirical.onnx"
    r = lfm("calibrate", upstream_onnx, "--real", real, "--target-fpr", "0.05", "--bound", "none", "-o", out)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "runtime/infer.py", "--model", str(out), str(real)], capture_output=True,
                       text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0 and 0 < sum(g["label"] == "fake" for g in records(r.stdout)) <= 0.05 * 46
    # 10 % at 95 %: one of the 46 may be called fake
    report = tmp_path / "report.json"
    r = lfm("calibrate", upstream_onnx, "--real", real, "--fake", fake, "--target-fpr", "0.1", "-o",
            tmp_path / "bound.onnx", "--report", report)
    assert r.returncode == 0, r.stderr
    data = json.loads(report.read_text())
    c = data["calibration"]
    assert (c["n_real"], c["n_fake"], c["allowed_false_positives"], c["false_positives"]) == (46, 56, 1, 1)
    assert c["fpr_upper_bound"] <= 0.1
    # the 46 images' scores as the population: calibration sets of 46 drawn from it, the true FPR known exactly
    population = np.array([im["logit"] for im in data["images"] if im["set"] == "real"])
    scores = scores_of(population)
    rng = np.random.default_rng(1)
    draws, exceeded = 4000, 0
    for _ in range(draws):
        threshold = choose_threshold(rng.choice(population, 46), 0.1, 0.95).threshold
        exceeded += np.mean(is_fake(scores, threshold)) > 0.1
    assert exceeded / draws <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / draws), exceeded
