"""runtime/evidence.py: the Top-K positions read from a deployed ONNX graph are the positions the
PyTorch model keeps (train/visualize.py's topk_selection, an independent path), and the pictures
drawn from them."""
from __future__ import annotations

import numpy as np
import pytest

from lfm.runtime.evidence import EvidenceUnavailable, TopKEvidence, coverage, heat_rgba, png_data_uri
from lfm.runtime.spec import ModelSpec


def test_the_onnx_graphs_topk_positions_are_the_checkpoints(random_onnx):
    """Same weights (conftest's random_lfm, var_high=2.0, exported as random_onnx), same pixels:
    the graph's TopK indices are torch.topk's positions in the salience maps, and its logit the model's."""
    torch = pytest.importorskip("torch", reason="the reference is the PyTorch model ([train])")
    from conftest import random_lfm
    from lfm.runtime.preprocess import normalize
    from lfm.train.visualize import topk_selection

    spec = ModelSpec(input="uint8", layout="NHWC", size=64)
    evidence = TopKEvidence.from_onnx(random_onnx, spec)
    pixels = np.random.default_rng(3).integers(0, 256, (2, 96, 80, 3), dtype=np.uint8)
    rows, cols, logits = evidence.positions(pixels)
    assert rows.shape == cols.shape == (2, 64, 16)
    model = random_lfm(var_high=2.0)
    for i in range(2):
        ref = topk_selection(model, torch.from_numpy(normalize(pixels[i], spec.mean, spec.std))[None])
        untied = ~ref["ties"]
        assert untied.sum() >= 60  # the comparison covers nearly every map
        for c in np.flatnonzero(untied):
            assert set(zip(rows[i, c], cols[i, c])) == set(zip(ref["rows"][c], ref["cols"][c])), c
        assert logits[i] == pytest.approx(ref["logit"], abs=1e-3)


def test_a_graph_without_a_topk_node_says_why(tmp_path):
    onnx = pytest.importorskip("onnx", reason="the [app] extra")
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["pixels"], ["logit"])], "g",
                              [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("logit", TensorProto.FLOAT, [1])])
    path = tmp_path / "no_topk.onnx"
    onnx.save(helper.make_model(graph), path)
    with pytest.raises(EvidenceUnavailable, match="has 0 TopK nodes"):
        TopKEvidence.from_onnx(path, ModelSpec())


def test_coverage_counts_each_selection_over_its_23_pixel_box():
    count = coverage(np.array([0, 1]), np.array([0, 0]), 40, 40)
    assert count[0, 0] == 1 and count[8, 0] == 2 and count[22, 22] == 2 and count[30, 0] == 1 and count[31, 0] == 0
    assert count.sum() == 2 * 23 * 23


def test_heat_is_transparent_where_nothing_was_kept_and_png_stays_in_memory():
    rgba = heat_rgba(np.array([[0, 1], [2, 4]]))
    assert rgba[0, 0, 3] == 0 and (rgba[1:, :, 3] == 255).all() and rgba[0, 1, 3] == 255
    assert tuple(rgba[1, 1, :3]) == (253, 231, 37)  # the maximum: viridis' last colour
    uri = png_data_uri(np.zeros((600, 300, 3), np.uint8), max_side=200)
    import base64
    import io

    from PIL import Image
    img = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert uri.startswith("data:image/png;base64,") and img.size == (100, 200)
