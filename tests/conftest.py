"""Shared fixtures. The reference files live in ../shared/reference beside the checkout (never
committed); tests that need them skip, with the reason, where that folder is absent."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("LFM_REFERENCE", ROOT.parent / "shared" / "reference"))


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"reference data not found at {path} (set LFM_REFERENCE or check out ../shared)")
    return path


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    return _need(REFERENCE)


@pytest.fixture(scope="session")
def upstream_ckpt(reference_dir) -> Path:
    return _need(reference_dir / "lfm_upstream.pth")


@pytest.fixture(scope="session")
def upstream_tensors(reference_dir):
    return np.load(_need(reference_dir / "upstream_tensors.npz"))


def read_tsv(path: Path) -> list[list[str]]:
    return [line.rstrip("\n").split("\t") for line in open(path) if line.strip() and not line.startswith("#")]


@pytest.fixture(scope="session")
def reference_images(reference_dir) -> list[tuple[Path, float, int | None]]:
    """(path, upstream logit, label or None) for images/ and cnndetection/."""
    rows = [(reference_dir / "images" / f, float(v), None) for f, v in read_tsv(_need(reference_dir / "upstream_image_logits.tsv"))]
    cnn = reference_dir / "cnndetection"
    rows += [(cnn / f, float(v), int(y)) for f, y, v in read_tsv(_need(cnn / "labels_and_upstream_logits.tsv"))]
    return rows


def random_lfm(var_high: float = 1.5):
    """A randomly initialised LFM (seed 0) with BatchNorm statistics moved off identity, so its
    logits vary from image to image: a real model for tests that need no reference data."""
    import torch

    from lfm.train.model import build_model

    torch.manual_seed(0)
    model = build_model()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, var_high)
    return model.eval()


@pytest.fixture(scope="session")
def random_onnx(tmp_path_factory) -> Path:
    """A random-weight LFM (BN statistics moved off identity, so logits vary) exported as the
    uint8 fp32 ONNX graph: a real model for runtime tests that need no reference data."""
    pytest.importorskip("torch", reason="building a model to export needs the [train] extra")
    pytest.importorskip("onnx", reason="exporting needs the [export] extra")
    from lfm.runtime.spec import ModelSpec

    return export_uint8_onnx(random_lfm(var_high=2.0), ModelSpec(size=64),
                             tmp_path_factory.mktemp("random_onnx") / "random_uint8.onnx")


def export_uint8_onnx(model, spec, path: Path, source: str | None = None) -> Path:
    """``model`` as the uint8 fp32 graph export/to_onnx.py writes, with its metadata; unverified
    (the export's own tests verify the export)."""
    from lfm.export.onnx_export import metadata, simplify, torch_to_onnx
    from lfm.export.onnx_files import check, save_atomic, set_metadata

    spec = spec.replace(input="uint8", layout="NHWC")
    proto = check(simplify(torch_to_onnx(model, spec, "uint8")))
    set_metadata(proto, metadata(spec, precision="fp32", source=source, source_sha256=None))
    save_atomic(proto, path)
    return path


@pytest.fixture(scope="session")
def upstream_onnx(upstream_ckpt, tmp_path_factory) -> Path:
    """Upstream's checkpoint as the uint8 fp32 graph export/to_onnx.py writes (unverified: the
    export's own tests verify it)."""
    pytest.importorskip("torch", reason="exporting needs the [train] extra")
    pytest.importorskip("onnx", reason="exporting needs the [export] extra")
    from lfm.train.checkpoint import load_checkpoint

    loaded = load_checkpoint(upstream_ckpt)
    return export_uint8_onnx(loaded.model, loaded.spec, tmp_path_factory.mktemp("upstream_onnx") / "lfm_upstream.onnx",
                             source=str(upstream_ckpt))


def infer_without_torch(model: Path, images: Path) -> list[dict]:
    """`runtime/infer.py --model MODEL IMAGES` in a fresh interpreter where torch cannot be
    imported; asserts it succeeded and loaded no training code, returns its records."""
    import json
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from lfm.runtime.infer import main\n"
        f"rc = main(['--model', {str(model)!r}, {str(images)!r}])\n"
        "assert not any(m == 'lfm.train' or m.startswith('lfm.train.') for m in sys.modules)\n"
        "sys.exit(rc)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]
