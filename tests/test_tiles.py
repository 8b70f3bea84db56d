"""Policy ``tiles``: the tile grid (known answers) and the Detector's per-image reduction,
checked against the ONNX session run by hand on hand-cut tiles."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from lfm.runtime.preprocess import TILE_ALIGN, tile_boxes, tile_origins, to_tiles



def test_tile_grid_known_answers():
    # 600 x 400 with 256 tiles: ceil(600/256) = 3 columns at 0, 172 -> 168 (aligned), 344; 2 rows at 0, 144.
    assert tile_boxes(600, 400, 256) == [(0, 0, 256, 256), (168, 0, 424, 256), (344, 0, 600, 256),
                                         (0, 144, 256, 400), (168, 144, 424, 400), (344, 144, 600, 400)]
    assert tile_boxes(256, 256, 256) == [(0, 0, 256, 256)]
    assert tile_boxes(100, 60, 256) == [(0, 0, 100, 60)]  # smaller than a tile: one tile, its own size
    assert tile_boxes(1000, 200, 256) == [(0, 0, 256, 200), (248, 0, 504, 200), (496, 0, 752, 200), (744, 0, 1000, 200)]
    # Thinned: 8 x 2 tiles wanted, 4 allowed -> 2 x 2, spread to the far edges.
    assert tile_boxes(2048, 512, 256, max_tiles=4) == [(0, 0, 256, 256), (1792, 0, 2048, 256),
                                                       (0, 256, 256, 512), (1792, 256, 2048, 512)]
    with pytest.raises(ValueError):
        tile_boxes(10, 10, 4, max_tiles=0)


@pytest.mark.parametrize("width,height", [(256, 256), (257, 300), (600, 400), (1001, 517), (4096, 3000)])
def test_tiles_cover_the_image_with_aligned_origins(width, height):
    boxes = tile_boxes(width, height, 256)
    covered = np.zeros((height, width), bool)
    for l, t, r, b in boxes:
        assert l % TILE_ALIGN == 0 and t % TILE_ALIGN == 0
        assert r - l == min(256, width) and b - t == min(256, height) and r <= width and b <= height
        covered[t:b, l:r] = True
    full = -(-width // 256) * -(-height // 256)
    if full <= 64:
        assert len(boxes) == full
        # Everything but at most TILE_ALIGN - 1 pixels at the right and bottom edges.
        assert covered[: height - TILE_ALIGN + 1, : width - TILE_ALIGN + 1].all()
    else:  # thinned to the cap, still reaching both far edges
        assert 48 <= len(boxes) <= 64
        assert max(r for _, _, r, _ in boxes) > width - TILE_ALIGN and max(b for *_, b in boxes) > height - TILE_ALIGN
    assert tile_origins(1000, 256, 1) == [0]


@pytest.mark.parametrize("reduce", ["max", "mean"])
def test_detector_reduces_tile_logits(random_onnx, tmp_path, reduce):
    import onnxruntime as ort

    from lfm.runtime.backends import make_runner
    from lfm.runtime.detector import Detector

    rng = np.random.default_rng(1)
    sizes = [(600, 400), (100, 90), (256, 256), (300, 520)]
    paths = []
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    sess = ort.InferenceSession(str(random_onnx), providers=["CPUExecutionProvider"])
    expected = []
    for p, (w, h) in zip(paths, sizes):
        a = np.asarray(Image.open(p).convert("RGB"))
        boxes = tile_boxes(w, h, 128)
        tiles = [a[t:b, l:r] for l, t, r, b in boxes]
        logits = np.concatenate([sess.run(["logit"], {"pixels": t[None]})[0] for t in tiles])
        assert len(set(np.round(logits, 4))) > 1 or len(tiles) == 1  # the reduction matters
        expected.append(logits.max() if reduce == "max" else logits.mean())
    # Batch 3 < the 10 tiles of the 600 x 400 image: an image's tiles span several batches.
    with Detector(make_runner(random_onnx, backend="onnxruntime"), policy="tiles", size=128, tile_reduce=reduce,
                  batch_size=3) as det:  # ONNX Runtime, as `sess`
        records = det.predict(paths + [str(tmp_path / "missing.png")])
    assert [r.path for r in records] == paths + [str(tmp_path / "missing.png")]
    assert records[-1].error and records[-1].logit is None
    np.testing.assert_allclose([r.logit for r in records[:-1]], expected, rtol=1e-5, atol=1e-5)


def test_tiles_from_arrays_match_files(random_onnx, tmp_path):
    from lfm.runtime.detector import Detector

    a = np.random.default_rng(2).integers(0, 256, (333, 444, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "a.png")
    assert to_tiles(Image.fromarray(a), 128).shape == (12, 128, 128, 3)
    with Detector(random_onnx, policy="tiles", size=128) as det:
        from_file, from_array = det.predict([str(tmp_path / "a.png"), a])
    assert from_file.logit == pytest.approx(from_array.logit, rel=1e-6)


def test_detector_takes_the_model_positionally(random_onnx, tmp_path):
    from lfm.runtime.backends import make_runner
    from lfm.runtime.detector import Detector, source_kind

    assert [source_kind(p) for p in ("a.onnx", "b.PLAN", "c.engine", "d.pt", "e.pth")] == \
        ["model", "engine", "engine", "checkpoint", "checkpoint"]
    with pytest.raises(ValueError, match="cannot tell the model kind"):
        source_kind("model.bin.gz")
    a = np.random.default_rng(3).integers(0, 256, (70, 90, 3), dtype=np.uint8)
    with Detector(random_onnx) as det, Detector(make_runner(random_onnx)) as ref:
        assert det.predict([a])[0].logit == ref.predict([a])[0].logit
    with pytest.raises(TypeError, match=r"^Detector\(model=\.\.\.\) was removed: use Detector\(path\)$"):
        Detector(random_onnx, model=str(random_onnx))
