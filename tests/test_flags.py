"""Flags on every record (runtime/flags.py; issue 26, item 3): the JPEG quality read from a file's
quantization tables, the policy's enlargement, the ``uncertain`` band around the threshold, and
that a flag never changes a label. The server's and batch.py's flags are checked in test_serve.py
and test_batch.py, the decoders' facts in test_decoders.py, test_decode_pool.py, test_gpu_input.py."""
from __future__ import annotations

import csv
import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lfm.runtime.backends.base import Runner
from lfm.runtime.detector import Detector
from lfm.runtime.flags import (DEFAULT_UNCERTAIN_BAND, NO_FACTS, ImageFacts, fact_flags, jpeg_quality, model_band,
                               record_flags)
from lfm.runtime.preprocess import decode_image, load_prepared
from lfm.runtime.records import FIELDS, Record
from lfm.runtime.spec import ModelSpec, logit_boundary

ROOT = Path(__file__).resolve().parents[1]
INFER = [sys.executable, str(ROOT / "runtime" / "infer.py")]


def photo(w: int = 96, h: int = 80, seed: int = 0) -> Image.Image:
    """Smooth content with detail, as a photograph has (JPEG tables do not depend on it)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BILINEAR)


def encoded(img: Image.Image, fmt: str = "JPEG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


# -- the JPEG quality estimate ----------------------------------------------------------------------

@pytest.mark.parametrize("subsampling, mode", [(-1, "RGB"), (0, "RGB"), (-1, "L")])
def test_the_quality_pillow_wrote_is_read_back_exactly(subsampling, mode):
    img = photo().convert(mode)
    for quality in range(1, 101):
        data = encoded(img, quality=quality, subsampling=subsampling) if mode == "RGB" else encoded(img, quality=quality)
        assert decode_image(data)[1] == quality, (quality, subsampling, mode)


def test_tables_of_other_encoders_give_the_nearest_quality():
    """An encoder that scales the IJG tables with its own rounding (ceil instead of round) is
    within 2 of the quality it scaled for."""
    from lfm.runtime.flags import _CHROMINANCE, _LUMINANCE

    for quality in range(10, 100, 7):
        scale = 5000 / quality if quality < 50 else 200 - 2 * quality
        tables = [[max(1, min(255, math.ceil(v * scale / 100))) for v in base] for base in (_LUMINANCE, _CHROMINANCE)]
        estimate = decode_image(encoded(photo(), qtables=tables))[1]
        assert abs(estimate - quality) <= 2, (quality, estimate)


def test_only_jpeg_files_have_a_quality(tmp_path):
    img = photo()
    assert decode_image(encoded(img, "PNG"))[1] is None
    assert decode_image(encoded(img, "WEBP", quality=50))[1] is None
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: the tables are read before the rotation's copy
    rotated, quality = decode_image(encoded(img, quality=37, exif=exif))
    assert quality == 37 and rotated.size == (80, 96)
    path = tmp_path / "q55.jpg"
    path.write_bytes(encoded(img, quality=55))
    assert decode_image(str(path))[1] == 55
    assert jpeg_quality(None) is None and jpeg_quality({}) is None and jpeg_quality({0: [1] * 10}) is None


# -- the facts and their flags ----------------------------------------------------------------------

def test_the_enlargement_is_the_policys_largest_side_factor():
    img = encoded(photo(100, 100), "PNG")
    for policy, upscale in (("resize", 2.56), ("center-crop", 1.0), ("none", 1.0), ("tiles", 1.0)):
        spec = ModelSpec(policy=policy, size=256 if policy != "center-crop" else 64)
        assert load_prepared(img, spec)[1] == ImageFacts(pytest.approx(upscale), None), policy
    assert load_prepared(encoded(photo(400, 100), quality=80), ModelSpec())[1] == ImageFacts(2.56, 80)
    assert fact_flags(ImageFacts(256 / 100)) == ["upscaled:2.56"]
    assert fact_flags(ImageFacts(256 / 255)) == ["upscaled:1.01"]  # an enlargement never reads 1.00
    assert fact_flags(ImageFacts(256 / 356)) == [] and fact_flags(ImageFacts(1.0)) == []
    assert fact_flags(ImageFacts(1.0, 100)) == ["low-jpeg-quality:100"]  # every quality lost detections (measured)
    assert fact_flags(NO_FACTS) == []


class LogitOfTheMean(Runner):
    """A runner whose logit is the mean pixel value minus 128: a grey image of value v scores v - 128.
    It stands for any model: what is checked is how the Detector flags a logit."""

    name = "mean"

    def __init__(self, extra: dict | None = None):
        super().__init__()
        self.extra = extra or {}

    def activate_impl(self):
        self.spec = ModelSpec(input="uint8", layout="NHWC", size=64, extra=self.extra)

    def infer_impl(self, feed):
        (x,) = feed.values()
        return {"logit": x.reshape(len(x), -1).mean(axis=1).astype(np.float64) - 128.0}


def grey(value: int) -> np.ndarray:
    return np.full((64, 64, 3), value, np.uint8)


@pytest.mark.parametrize("threshold", [0.5, 0.9])
def test_uncertain_exactly_inside_the_band(threshold):
    band = 7.0
    boundary = logit_boundary(threshold)  # 0, and 2.197
    values = list(range(110, 150))
    with Detector(LogitOfTheMean(), threshold=threshold, uncertain_band=band) as det:
        records = det.predict([grey(v) for v in values])
    for v, r in zip(values, records):
        assert r.logit == v - 128
        assert ("uncertain" in r.flags) == (abs(r.logit - boundary) < band), (v, r)
        assert r.flags in ([], ["uncertain"])  # arrays: no file, no enlargement (64 x 64 at size 64)
    assert sum("uncertain" in r.flags for r in records) == {0.5: 13, 0.9: 14}[threshold]


def test_the_band_is_the_options_else_the_models_else_the_measured_default():
    with Detector(LogitOfTheMean()) as det:
        assert det.uncertain_band == DEFAULT_UNCERTAIN_BAND
    with Detector(LogitOfTheMean({"uncertain_band": 3})) as det:
        assert det.uncertain_band == 3.0
        assert [r.flags for r in det.predict([grey(126), grey(131)])] == [["uncertain"], []]  # 2 and 3 from it
    with Detector(LogitOfTheMean({"uncertain_band": 3}), uncertain_band=0) as det:  # given: over the model's; 0: never
        assert det.uncertain_band == 0.0 and det.predict_one(grey(128)).flags == []
    with pytest.raises(ValueError, match=r"extra\['uncertain_band'\] must be a number of logits >= 0, got 'wide'"):
        Detector(LogitOfTheMean({"uncertain_band": "wide"}))
    with pytest.raises(ValueError, match="uncertain_band: must be a logit half-width >= 0, got -1"):
        Detector(LogitOfTheMean(), uncertain_band=-1)
    assert model_band({"uncertain_band": 2.5}) == 2.5 and model_band({}, 1) == 1.0


def test_flags_never_change_a_label(random_onnx, tmp_path):
    """The same images with every flag raised (a huge band, enlarged inputs) and with none: the
    same logits, scores and labels."""
    items = [encoded(photo(60 + 9 * i, 70, seed=i), quality=30 + 10 * i) for i in range(6)]
    items += [np.asarray(photo(200, 150, seed=9)), grey(90)]
    with Detector(random_onnx, size=256, uncertain_band=1e6) as flagged, Detector(random_onnx, size=256,
                                                                                  uncertain_band=0) as plain:
        a, b = flagged.predict(items), plain.predict(items)
    assert all("uncertain" in r.flags for r in a) and not any("uncertain" in r.flags for r in b)
    assert all(f.startswith("upscaled:") for r in a for f in r.flags[:1])  # every item is smaller than 256
    assert sum(f.startswith("low-jpeg-quality:") for r in a for f in r.flags) == 6  # the JPEG files
    assert [(r.logit, r.score, r.label) for r in a] == [(r.logit, r.score, r.label) for r in b]
    assert record_flags(NO_FACTS, 0.0, 0.5, 1.0) == ["uncertain"] and Record.failed("x", "bad").flags == []


# -- every output format of infer.py ------------------------------------------------------------------

def test_infer_writes_the_flags_in_every_format(random_onnx, tmp_path):
    """A 100 x 100 PNG under resize 256 is enlarged 2.56x; a q40 JPEG of it is also flagged for
    its quality; a missing file has no flags. CSV keeps the old columns where they were."""
    small = tmp_path / "small.png"
    photo(100, 100).save(small)
    jpeg = tmp_path / "small_q40.jpg"
    photo(100, 100).save(jpeg, quality=40)
    inputs = [str(small), str(jpeg), str(tmp_path / "missing.png")]
    out = {}
    for fmt in ("jsonl", "csv", "table"):
        r = subprocess.run(INFER + ["--model", str(random_onnx), "--size", "256", "--uncertain-band", "0",
                                    *inputs, "--format", fmt], capture_output=True, text=True, timeout=300)
        assert r.returncode == 1, r.stderr  # the missing file
        out[fmt] = r.stdout
    want = [["upscaled:2.56"], ["upscaled:2.56", "low-jpeg-quality:40"], []]
    assert [json.loads(line)["flags"] for line in out["jsonl"].splitlines()] == want
    rows = list(csv.DictReader(io.StringIO(out["csv"])))
    assert tuple(rows[0]) == FIELDS and FIELDS[:5] == ("path", "logit", "score", "label", "error")
    assert [row["flags"] for row in rows] == ["upscaled:2.56", "upscaled:2.56;low-jpeg-quality:40", ""]
    table = out["table"].splitlines()
    assert table[0].split() == ["label", "score", "logit", "flags", "path"]
    assert table[1].split()[3:] == ["upscaled:2.56", str(small)]
    assert table[2].split()[3:] == ["upscaled:2.56;low-jpeg-quality:40", str(jpeg)]
    assert table[3].startswith("ERROR") and table[3].split()[3] == "-"
    assert os.path.basename(str(small)) in out["table"]


def test_the_client_takes_a_band_only_with_a_threshold(capsys):
    """Without --threshold the server's flags come as they are: a band there would mean nothing."""
    pytest.importorskip("tritonclient", reason="the client needs the [serve] extra")
    from lfm.runtime import cli

    with pytest.raises(SystemExit) as stop:
        cli.main(["client", "x.png", "--uncertain-band", "3"])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and err.count("\n") == 1
    assert "--uncertain-band applies with --threshold" in err
