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
