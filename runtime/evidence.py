"""Where a decision comes from, in input pixels: the receptive-field geometry of LFM's layers, the
Top-K patch map of any deployed ONNX graph, and the pictures drawn from them (the review page,
runtime/app.py; train/visualize.py draws its figures with the same geometry).

    evidence = TopKEvidence.from_onnx("lfm.onnx", spec)   # None reason: why a graph gives none
    rows, cols, logits = evidence.positions(arrays)       # arrays: the model's uint8 input [N, h, w, 3]
    count = coverage(rows[0], cols[0], h, w)              # selections covering each pixel

The Top-K patch map: Top-K pooling keeps the K largest values of each of the 64 salience maps;
each kept position sees a 23 x 23 box of input pixels (``receptive_box``); the map counts, per
pixel, how many of the 64 x K kept positions see it. For an ONNX model the positions are the
indices of the graph's own TopK node, made an output of an in-memory copy of the graph (the same
weights and operators, run by ONNX Runtime on the same input): no second model, no estimate. A
graph without a standard TopK node (the plugin graph's LfmTopKPool gives values only) has none.

numpy and Pillow, plus onnx and onnxruntime for ``TopKEvidence.from_onnx`` (imported there).
"""
from __future__ import annotations

import base64
import io
import os

import numpy as np
from PIL import Image

from .preprocess import normalize
from .spec import ModelSpec, salience_size

# -- geometry: where a position of a layer comes from in the input ----------------------------------

def layer_geometry(layer: str, num_layers: int = 4) -> tuple[int, int]:
    """(jump, size) of a layer's output grid, in NPR-residual pixels: position i of ``layer``
    sees residual rows (and columns) ``jump * i .. jump * i + size - 1``.

    The path is NPR -> [conv k2 s1, max-pool 2] x (num_layers - 1) -> conv k2 -> 1x1 conv; a
    k2 s1 conv widens the window by one step of the current jump, a 2x2 s2 pool widens it by
    one step and doubles the jump. For LFM (4 blocks): ``salience`` and ``snet.layer4`` are
    (8, 23), ``snet.layer3`` (4, 11), ``snet.layer1`` (1, 2), ``npr`` (1, 1).
    """
    if layer == "npr":
        blocks = 0
    elif layer == "salience":
        blocks = num_layers
    elif layer.startswith("snet.layer") and layer[len("snet.layer"):].isdigit():
        blocks = int(layer[len("snet.layer"):])
        if not 1 <= blocks <= num_layers:
            raise ValueError(f"no layer {layer!r}: SNet has layers 1..{num_layers}")
    else:
        raise ValueError(f"no receptive-field geometry for layer {layer!r}")
    jump, size = 1, 1
    for i in range(1, blocks + 1):
        size += jump  # conv k=2, stride 1, no padding
        if i < blocks:  # the 2x2 stride-2 max-pool between this block and the next
            size += jump
            jump *= 2
    return jump, size


def receptive_box(row: int, col: int, jump: int = 8, size: int = 23) -> tuple[int, int, int, int]:
    """Input-pixel box (top, left, bottom, right), half-open, of position (row, col) of a layer
    with geometry (jump, size) (``layer_geometry``; the default is a salience-map position).

    Residual pixel r is x[r] - x[2 * (r // 2)], so residual rows a..b come from input rows
    2 * (a // 2) .. b. For the salience maps (jump 8, size 23): rows 8 * row .. 8 * row + 22
    and likewise for columns, a 23 x 23 box. No pixel outside the box can change the value. For
    an even jump (every layer from ``snet.layer2`` on) every pixel inside can, except the
    bottom-right one (row and column even: inside the box it only feeds the residual x - x = 0);
    for jump 1 (``npr``, ``snet.layer1``) the box is the bounding box of a sparser set.
    """
    top, left = jump * row, jump * col
    return 2 * (top // 2), 2 * (left // 2), top + size, left + size


def upsample_map(m: np.ndarray, jump: int, size: int, height: int, width: int) -> np.ndarray:
    """Layer-grid map [h, w] -> input pixels [height, width]: bilinear interpolation between the
    centres of the positions' receptive fields (``jump * i + (size - 1) / 2``), held constant
    beyond the outermost centres."""

    def weights(n_out: int, n_in: int) -> np.ndarray:  # [n_out, n_in] linear-interpolation matrix
        centres = jump * np.arange(n_in) + (size - 1) / 2.0
        return np.stack([np.interp(np.arange(n_out), centres, e) for e in np.eye(n_in)], axis=1)

    m = np.asarray(m, dtype=np.float64)
    return (weights(height, m.shape[0]) @ m @ weights(width, m.shape[1]).T).astype(np.float32)


def coverage(rows: np.ndarray, cols: np.ndarray, height: int, width: int, jump: int = 8, size: int = 23) -> np.ndarray:
    """How many of the selections (rows, cols: any shape) have each input pixel in their receptive
    box -> int32 [height, width]."""
    count = np.zeros((height, width), np.int32)
    for r, c in zip(np.ravel(rows), np.ravel(cols)):
        t, l, b, rr = receptive_box(int(r), int(c), jump, size)
        count[t:b, l:rr] += 1
    return count


# -- the Top-K positions of a deployed ONNX graph ---------------------------------------------------

class EvidenceUnavailable(Exception):
    """Why a model gives no Top-K patch map (one line, for the page)."""


class TopKEvidence:
    """The Top-K positions of a deployed ONNX graph: its TopK node's indices as an extra output of
    an in-memory copy, run by ONNX Runtime on the CPU. ``positions`` gives, per image, the rows and
    columns [C, K] of the kept positions in the salience maps, and the graph's logit (the check
    that the copy scores as the deployed graph does)."""

    def __init__(self, model_bytes: bytes, spec: ModelSpec, index_output: str, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        self.spec, self.index_output = spec, index_output
        self.input_name = self.session.get_inputs()[0].name

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, spec: ModelSpec, threads: int | None = None) -> "TopKEvidence":
        """EvidenceUnavailable (one line) for a graph with no standard TopK node, or without onnx."""
        try:
            import onnx
        except ImportError:
            raise EvidenceUnavailable("the Top-K map of an ONNX model needs the Python package 'onnx' "
                                      "(pip install 'lfm-deploy[app]')") from None
        model = onnx.load(os.fspath(path))
        topk = [n for n in model.graph.node if n.op_type == "TopK" and n.domain in ("", "ai.onnx")]
        if len(topk) != 1:
            custom = any(n.op_type == "LfmTopKPool" for n in model.graph.node)
            raise EvidenceUnavailable(
                "this graph pools with LFM's custom Top-K node, which gives the kept values but not their positions"
                if custom else f"this graph has {len(topk)} TopK nodes, not the one of Top-K pooling")
        indices = topk[0].output[1]  # [N, C, K]: flat positions in each salience map
        model.graph.output.append(onnx.helper.make_tensor_value_info(indices, onnx.TensorProto.INT64, None))
        return cls(model.SerializeToString(), spec, indices, threads)

    def positions(self, arrays: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """uint8 [N, h, w, 3] (the model's input, as the Detector prepares it) -> rows, cols [N, C, K]
        in the salience maps, logits [N]."""
        feed = arrays if self.spec.input == "uint8" else normalize(arrays, self.spec.mean, self.spec.std)
        logit, index = self.session.run(["logit", self.index_output], {self.input_name: np.ascontiguousarray(feed)})
        _, width = salience_size(arrays.shape[1], arrays.shape[2])
        index = np.asarray(index, dtype=np.int64)
        return index // width, index % width, np.asarray(logit, dtype=np.float64).reshape(-1)


# -- pictures ---------------------------------------------------------------------------------------

# viridis at five stops (matplotlib's values), interpolated: no plotting library on the page's path
_VIRIDIS = np.array([(68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37)], np.float64)


def heat_rgba(values: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """A map [h, w] -> RGBA uint8 [h, w, 4]: viridis from 0 to ``vmax`` (default: its maximum),
    transparent where the value is 0 (no evidence there), opaque elsewhere."""
    values = np.asarray(values, dtype=np.float64)
    top = float(vmax if vmax is not None else values.max(initial=0.0))
    t = np.clip(values / top, 0.0, 1.0) if top > 0 else np.zeros_like(values)
    position = t * (len(_VIRIDIS) - 1)
    low = np.minimum(position.astype(int), len(_VIRIDIS) - 2)
    frac = (position - low)[..., None]
    rgb = _VIRIDIS[low] * (1 - frac) + _VIRIDIS[low + 1] * frac
    alpha = np.where(values > 0, 255, 0)[..., None]
    return np.concatenate([np.rint(rgb), alpha], axis=-1).astype(np.uint8)


def png_data_uri(pixels: np.ndarray, max_side: int | None = None) -> str:
    """An RGB or RGBA uint8 array as a ``data:image/png;base64,...`` URI (nothing written to disk);
    ``max_side``: shrunk to fit first (nearest neighbour: a map's cells stay sharp)."""
    img = Image.fromarray(np.ascontiguousarray(pixels))
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


__all__ = ["EvidenceUnavailable", "TopKEvidence", "coverage", "heat_rgba", "layer_geometry",
           "png_data_uri", "receptive_box", "upsample_map"]
