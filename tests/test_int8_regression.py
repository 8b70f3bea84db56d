"""The INT8 recipe's fidelity, guarded in CI: upstream's checkpoint quantised the way
`export/to_onnx.py --int8 --calib DIR` quantises it, on one kind of image, judged on another.

The two splits are the fidelity table's (benchmarks/fidelity_table.py), in the reduced form the CI
can afford:

    A  calibrated on the 102 cnndetection JPEGs; tested on the 8 reference PNGs and their stress
       variants (up-sampled 2x three ways, re-encoded, shrunk): 56 images
    B  calibrated on 96 synthetic PNGs; tested on the 102 cnndetection JPEGs

Each must pass the export's acceptance line (export/fidelity.py: no sure flip, <= 1 % flips,
median |dlogit| <= 0.3) and stay near the figures the recipe gives today (REGRESSION_BOUND), so a
recipe change that worsens fidelity fails here even while it still passes the acceptance line.
The test is shown able to fail: the same check on weakened recipes (conv3/conv4 ranged at their
calibration maximum without the 2x headroom; percentile ranges, the recipe before issue 28) must
fail it, and does (test_a_weakened_recipe_fails_the_check).
"""
from __future__ import annotations

import sys

import pytest

from conftest import ROOT

pytest.importorskip("onnxruntime", reason="quantising needs the [export] extra")

# What the recipe gives today on each reduced split (2-core AMD EPYC, AVX2 only; ONNX Runtime
# 1.32; issue 28): overall median |dlogit| A 0.13, B 0.10; max |dlogit| A 0.95, B 0.60; no flip.
# Weakened recipes measured on the same sets (median A / B, max A / B): percentile ranges (the
# recipe before issue 28) 0.11 / 0.28; conv3/conv4 ranged at 1x their maximum 0.12 / 0.16, max
# B 3.48; no equalisation 0.32 / 0.55; per-tensor weights 0.59 / 0.73. The bounds sit about 1.5x
# above today's figures: a library update's noise passes, each of those recipes fails.
MEDIAN_BOUND = {"A": 0.2, "B": 0.15}
MAX_BOUND = 2.0


@pytest.fixture(scope="module")
def splits(reference_dir, tmp_path_factory):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from fidelity_table import test_sets

    return test_sets(reference_dir, tmp_path_factory.mktemp("int8_splits"), synthetic_test=0, b_groups=("held-out",))


@pytest.fixture(scope="module")
def fp32_logits(upstream_onnx, splits):
    from lfm.export.onnx_files import run_logits

    out = {}
    for name, split in splits.items():
        files, group_of = _flat(split["test"])
        logits, idx = run_logits(upstream_onnx, files)
        assert len(idx) == len(files), "every test image must be scorable"
        out[name] = logits, group_of
    return out


def _flat(groups: dict) -> tuple[list[str], list[str]]:
    files, group_of = [], []
    for g, fs in groups.items():
        files += fs
        group_of += [g] * len(fs)
    return files, group_of


def cross_domain(upstream_onnx, upstream_ckpt, splits, fp32_logits, tmp_path, **weakened) -> dict:
    """{split: (FidelityReport, passed, verdict)} of the INT8 model each split's calibration folder
    gives through the export's own recipe (``weakened``: quantize_int8 keywords replacing it)."""
    sys.path.insert(0, str(ROOT / "export"))
    from to_onnx import parse_args

    from lfm.export.fidelity import ACCEPTANCE, FidelityReport
    from lfm.export.onnx_files import run_logits
    from lfm.export.pipeline import int8_recipe, split_calibration
    from lfm.export.quantize import quantize_int8

    out = {}
    for name, split in splits.items():
        args = parse_args([str(upstream_ckpt), "--int8", "--calib", split["calib"]])
        calib_files, _ = split_calibration(args)
        int8 = tmp_path / f"int8_{name}.onnx"
        quantize_int8(upstream_onnx, int8, calib_files, **{**int8_recipe(args), **weakened})
        ref, group_of = fp32_logits[name]
        test, idx = run_logits(int8, _flat(split["test"])[0])
        assert len(idx) == len(ref)
        report = FidelityReport.compare(ref, test, group_of)
        out[name] = (report, *ACCEPTANCE.judge(report))
    return out


def problems(results: dict) -> list[str]:
    """Every way the results fall short: the acceptance line, or the bounds above."""
    found = []
    for name, (report, passed, verdict) in results.items():
        o = report.overall
        if not passed:
            found.append(f"split {name}: {verdict}")
        if o.median_abs_dlogit > MEDIAN_BOUND[name]:
            found.append(f"split {name}: median |dlogit| {o.median_abs_dlogit:.3f} > {MEDIAN_BOUND[name]}")
        if o.max_abs_dlogit > MAX_BOUND:
            found.append(f"split {name}: max |dlogit| {o.max_abs_dlogit:.2f} > {MAX_BOUND}")
    return found


def test_default_recipe_keeps_fp32_decisions_across_domains(upstream_onnx, upstream_ckpt, splits, fp32_logits,
                                                            tmp_path):
    results = cross_domain(upstream_onnx, upstream_ckpt, splits, fp32_logits, tmp_path)
    for report, _, _ in results.values():
        assert report.overall.n >= 56 and report.overall.sure >= 40, "the check needs sure decisions to lose"
    found = problems(results)
    assert not found, "; ".join(found) + "\n" + "\n".join(r.table() for r, _, _ in results.values())


@pytest.mark.parametrize("weakened", [{"headroom": 1.0}, {"method": "percentile"}],
                         ids=["conv3-conv4-ranged-at-their-maximum", "percentile-ranges"])
def test_a_weakened_recipe_fails_the_check(upstream_onnx, upstream_ckpt, splits, fp32_logits, tmp_path, weakened):
    """The check can fail: the issue's example (no 2x headroom on conv3/conv4) and the recipe
    before issue 28 (percentile ranges) both fail it on the same images."""
    results = cross_domain(upstream_onnx, upstream_ckpt, splits, fp32_logits, tmp_path, **weakened)
    assert problems(results), {name: report.overall.to_dict() for name, (report, _, _) in results.items()}
