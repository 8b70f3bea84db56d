"""Static INT8 quantisation (QDQ) of an exported LFM model with ONNX Runtime's quantiser.

    files = calibration_images("data/calib")                 # or synthetic=True for a demo
    info = quantize_int8("lfm.onnx", "lfm.int8.onnx", files, spec)
    report = int8_report("lfm.onnx", "lfm.int8.onnx", held_out_files, labels, spec=spec)

What ``quantize_int8`` does to the fp32 graph, in order (steps 1-2 are exact in fp32):

1. Folds the uint8 variant's per-channel ``|NPR| * 1/(255 std)`` into the first convolution's
   weights. The first convolution then reads |NPR| of the raw bytes: integers 0..255, which
   uint8 holds exactly (scale 1, zero point 0) and int8 exactly up to 127.
2. Cross-layer equalisation (data-aware, SmoothQuant-like, alpha 0.5): LFM's activations
   differ by three orders of magnitude between channels (after layer 1 the channel maxima run
   from 0.08 to 120), which one per-tensor scale cannot hold. For each chain
   Conv_a -> Relu -> [MaxPool] -> Conv_b, channel c of Conv_a's output is divided by
   s_c = sqrt(act_max_c / max|W_b[:, c]|) and Conv_b's input weights multiplied by it (Relu and
   MaxPool commute with a positive per-channel scale).
3. Activation ranges (``DEFAULT_METHOD``, per profile). ``cpu``: each activation's maximum
   over the calibration images ("minmax"). LFM's evidence is in rare large activations (Top-K
   pooling keeps the maxima of the salience maps), so clipping at a percentile cut exactly what
   the model reads, and the 99.999th percentile of a value sample moved with the calibration
   sample: cross-domain median |dlogit| 0.09-0.29 over three samples, against 0.10-0.11 for
   the maximum (issue 28, docs/export.md). ``tensorrt``: the 99.999th percentile of each
   activation (from a random sample of values per batch), which measured better there. The
   outputs of conv3 and conv4 (``MAX_RANGE_LAYERS``) are ranged at ``headroom`` (2) x their
   calibration maximum either way: other kinds of images go past one folder's maximum (real
   photos reach twice the conv4 maximum of synthetic scenes). ORT's "entropy" calibrator is
   an option.
4. ``quantize_static``: QDQ format, int8 symmetric per-channel weights, the Convs of
   ``int8_layers`` with their ReLUs and max-pools quantised; the other layers and the fc layer
   (Gemm) stay fp32.

Which layers are int8 by default, and why (``python export/sensitivity.py`` measures it on any
model): conv3 and conv4 (62 % of LFM's multiply-adds). conv2's input, the pooled output of
conv1, spans nearly three orders of magnitude (nonzero values: median 0.3, maximum 135 on
upstream's checkpoint), which 256 uniform levels cannot hold: with conv2-conv4 int8, upstream's
logits moved by a median 0.45 on images of another kind than the calibration set, with conv3
and conv4 alone by 0.08-0.12. The salience conv's output is what Top-K pools, so its int8 form
flipped sure decisions outright. ``int8_layers="all"`` quantises every conv (faster; check it
with the cross-domain report before deploying).

Two profiles, because ONNX Runtime's CPU kernels and TensorRT want different Q/DQ forms:

``cpu`` (default)  activations uint8, zero point 0 after each ReLU (asymmetric elsewhere);
                   weights int8 symmetric per-channel. ONNX Runtime folds each DQ-Conv-Relu-Q
                   into one QLinearConv: ~2.7x its fp32 speed on an AVX512-VNNI CPU. TensorRT
                   rejects uint8 Q/DQ, so this model is for ONNX Runtime and OpenVINO.
``tensorrt``       activations int8, symmetric, zero point 0; weights int8 symmetric per-channel
                   (zero point 0); Q/DQ only on the inputs of the convolutions, float bias, one
                   Q/DQ pair per consumer: TensorRT's explicit-quantisation rules. It runs on
                   ONNX Runtime's CPU provider too, correctly but slower than fp32 there (ORT
                   has no int8 kernel for a Conv whose output is not quantised).
"""
from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from lfm.export.onnx_files import check, cpu_session, load_batches, model_variant, run_logits, save_atomic, set_metadata, spec_of
from lfm.runtime.cli import CommandError
from lfm.runtime.inputs import image_files
from lfm.runtime.spec import ModelSpec, is_fake, logit_boundary

PROFILES = ("tensorrt", "cpu")
METHODS = ("percentile", "minmax", "entropy")
DEFAULT_PROFILE = "cpu"
# Activation ranges by profile: measured on both cross-domain splits (module docstring, step 3).
DEFAULT_METHOD = {"cpu": "minmax", "tensorrt": "percentile"}
DEFAULT_PERCENTILE = 99.999
DEFAULT_ALPHA = 0.5
CONFIDENT_LOGIT = 1.0
# Layers quantised by default (see the module docstring), and those whose outputs are ranged at
# DEFAULT_HEADROOM x their calibration maximum rather than a percentile.
LAYER_NAMES = ("conv1", "conv2", "conv3", "conv4", "salience")
DEFAULT_INT8_LAYERS = ("conv3", "conv4")
MAX_RANGE_LAYERS = ("conv3", "conv4")
DEFAULT_HEADROOM = 2.0


class QuantizeError(CommandError, ValueError):
    """A calibration set or model that cannot be quantised; the message names it."""


# --------------------------------------------------------------------------------------------
# Calibration images


_SYNTHETIC_DIRS: list[str] = []


def _remove_synthetic_dirs():
    for d in _SYNTHETIC_DIRS:
        shutil.rmtree(d, ignore_errors=True)


def calibration_images(calib_dir: str | os.PathLike | None = None, synthetic: bool = False, n: int = 64,
                       seed: int = 0, size: int = 256) -> list[str]:
    """Image files to calibrate on.

    calib_dir: every image file under the folder, recursively (sorted; hidden files skipped),
    an even sample of ``n`` of them when there are more (n <= 0: all). synthetic=True: a
    synthetic real/fake set (``make_synthetic``, its train split, ``n`` images of ``size``
    pixels) written to a temporary folder removed at exit; for demos, not for a deployed model.
    Raises QuantizeError naming the folder when it is missing, not a folder or holds no image.
    """
    if synthetic:
        from lfm.train.make_synthetic import make_synthetic

        out = tempfile.mkdtemp(prefix="lfm-calib-")
        if not _SYNTHETIC_DIRS:
            atexit.register(_remove_synthetic_dirs)
        _SYNTHETIC_DIRS.append(out)
        n_total = max(2, int(np.ceil(max(n, 2) / 0.8)))  # train split = 80 %
        make_synthetic(out, n=n_total, size=size, seed=seed, jobs=1)
        files = image_files(os.path.join(out, "train"))
        return _even_sample(files, n)
    if calib_dir is None:
        raise QuantizeError("no calibration images: give a folder of images (--calib DIR) or --calib-synthetic")
    folder = os.fspath(calib_dir)
    if not os.path.exists(folder):
        raise QuantizeError(f"{folder}: calibration folder does not exist")
    if not os.path.isdir(folder):
        raise QuantizeError(f"{folder}: calibration path is not a folder")
    files = image_files(folder)
    if not files:
        raise QuantizeError(f"{folder}: calibration folder holds no image files (looked recursively for "
                            f"{', '.join(sorted({'.png', '.jpg', '.jpeg', '.webp', '.bmp'}))}, ...)")
    return _even_sample(files, n)


def _even_sample(files: list[str], n: int) -> list[str]:
    if n <= 0 or len(files) <= n:
        return files
    idx = np.linspace(0, len(files) - 1, n).round().astype(int)
    return [files[i] for i in idx]


# --------------------------------------------------------------------------------------------
# Feeding ORT's own calibrators


class _Reader:
    """ORT CalibrationDataReader over prepared batches."""

    def __init__(self, name: str, batches: Sequence[np.ndarray]):
        self.name, self.batches, self.i = name, list(batches), 0

    def get_next(self):
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {self.name: self.batches[self.i - 1]}

    def __len__(self):
        return len(self.batches)


# --------------------------------------------------------------------------------------------
# Graph transforms (exact in fp32)


class _Graph:
    def __init__(self, model):
        import onnx.numpy_helper as nh

        self.model, self.nh = model, nh
        self.inits = {t.name: t for t in model.graph.initializer}
        self.consumers: dict[str, list] = {}
        self.producer = {}
        for node in model.graph.node:
            for t in node.input:
                self.consumers.setdefault(t, []).append(node)
            for t in node.output:
                self.producer[t] = node
        self.outputs = {o.name for o in model.graph.output}

    def array(self, name):
        return self.nh.to_array(self.inits[name]) if name in self.inits else None

    def set_array(self, name, value):
        t = self.inits[name]
        t.CopyFrom(self.nh.from_array(np.ascontiguousarray(value.astype(np.float32)), name))

    def only_consumer(self, tensor):
        users = self.consumers.get(tensor, [])
        return users[0] if len(users) == 1 and tensor not in self.outputs else None

    def private_init(self, name):
        return name in self.inits and len(self.consumers.get(name, [])) == 1


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            import onnx

            return onnx.helper.get_attribute_value(a)
    return default


def fold_input_scale(model) -> list[str]:
    """Mul(x, per-channel constant) -> Conv  ==>  Conv with the constant folded into its input
    channels. Returns the names of the Convs changed (their input is now the Mul's input)."""
    g = _Graph(model)
    changed, remove = [], []
    for mul in list(model.graph.node):
        if mul.op_type != "Mul":
            continue
        const = [t for t in mul.input if t in g.inits]
        if len(const) != 1:
            continue
        conv = g.only_consumer(mul.output[0])
        if conv is None or conv.op_type != "Conv" or conv.input[0] != mul.output[0] or _attr(conv, "group", 1) != 1:
            continue
        w = g.array(conv.input[1])
        s = g.array(const[0])
        if w is None or not g.private_init(conv.input[1]):
            continue
        c_in = w.shape[1]
        if s.size not in (1, c_in) or (s.size == c_in and s.reshape(-1).shape[0] != s.size):
            continue
        if s.size == c_in and (s.ndim < 3 or s.shape[-3] != c_in or any(d != 1 for d in s.shape[-2:])):
            continue
        g.set_array(conv.input[1], w * s.reshape(1, -1, 1, 1))
        x = [t for t in mul.input if t not in g.inits][0]
        conv.input[0] = x
        remove.append(mul)
        changed.append(conv.name)
    for node in remove:
        model.graph.node.remove(node)
    return changed


@dataclass
class _Chain:
    conv_a: object
    conv_b: object
    tensor: str  # Conv_b's input: the activation whose per-channel range is equalised


def equalizable_chains(model) -> list[_Chain]:
    """Conv_a -> Relu -> [MaxPool] -> Conv_b, each tensor used once, private weights, group 1."""
    g = _Graph(model)
    chains = []
    for conv in model.graph.node:
        if conv.op_type != "Conv" or _attr(conv, "group", 1) != 1 or not g.private_init(conv.input[1]):
            continue
        if len(conv.input) > 2 and conv.input[2] and not g.private_init(conv.input[2]):
            continue
        t = conv.output[0]
        nxt = g.only_consumer(t)
        if nxt is None or nxt.op_type != "Relu":
            continue
        t = nxt.output[0]
        nxt = g.only_consumer(t)
        if nxt is not None and nxt.op_type == "MaxPool" and len(nxt.output) == 1:
            t = nxt.output[0]
            nxt = g.only_consumer(t)
        if (nxt is None or nxt.op_type != "Conv" or nxt.input[0] != t or _attr(nxt, "group", 1) != 1
                or not g.private_init(nxt.input[1])):
            continue
        chains.append(_Chain(conv, nxt, t))
    return chains


def equalize(model, chains: list[_Chain], channel_max: dict[str, np.ndarray], alpha: float = DEFAULT_ALPHA) -> dict:
    """Scale channel c of each chain by 1/s_c before and s_c after; s_c = a_c^alpha / w_c^(1-alpha),
    a_c the activation's channel maximum on the calibration data, w_c = max |W_b[:, c]|.
    Dead channels (a_c = 0) keep s_c = 1. Returns {tensor: (min s, max s)}."""
    g = _Graph(model)
    summary = {}
    for ch in chains:
        a = np.asarray(channel_max[ch.tensor], np.float64)
        wb = g.array(ch.conv_b.input[1]).astype(np.float64)
        w = np.abs(wb).max(axis=(0, 2, 3))
        ok = (a > 0) & (w > 0)
        s = np.ones_like(a)
        s[ok] = a[ok] ** alpha / w[ok] ** (1.0 - alpha)
        if ok.any():
            s[ok] /= np.exp(np.median(np.log(s[ok])))  # keep the overall level: only the spread matters
        wa = g.array(ch.conv_a.input[1]).astype(np.float64)
        g.set_array(ch.conv_a.input[1], wa / s.reshape(-1, 1, 1, 1))
        if len(ch.conv_a.input) > 2 and ch.conv_a.input[2]:
            g.set_array(ch.conv_a.input[2], g.array(ch.conv_a.input[2]).astype(np.float64) / s)
        g.set_array(ch.conv_b.input[1], wb * s.reshape(1, -1, 1, 1))
        summary[ch.tensor] = (float(s.min()), float(s.max()))
    return summary


def _with_outputs(model, names: Iterable[str]):
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    return m


def channel_stats(model, input_name: str, batches: Sequence[np.ndarray], tensors: Sequence[str]) -> dict:
    """Per-channel maximum (axis 1 of NCHW) of each tensor over the batches, and whether every
    value was an integer (the exact |NPR| of bytes)."""
    sess = cpu_session(_with_outputs(model, tensors))
    stats = {t: None for t in tensors}
    integer = {t: True for t in tensors}
    for x in batches:
        outs = sess.run(list(tensors), {input_name: x})
        for t, v in zip(tensors, outs):
            m = v.max(axis=(0, 2, 3)) if v.ndim == 4 else v.reshape(v.shape[0], -1).max(axis=0)
            stats[t] = m if stats[t] is None else np.maximum(stats[t], m)
            integer[t] = integer[t] and bool(np.all(v == np.round(v)))
    return {"max": stats, "integer": integer}


# --------------------------------------------------------------------------------------------
# Quantisation


@dataclass(frozen=True)
class QuantLayer:
    """One quantisable layer: a Conv and the ReLU / MaxPool nodes that follow it to the next Conv."""

    name: str  # conv1..conv4, salience
    nodes: tuple[str, ...]  # ONNX node names, the Conv first

    def relu_output(self, model) -> str | None:
        for node in model.graph.node:
            if node.name in self.nodes and node.op_type == "Relu":
                return node.output[0]
        return None


def quant_layers(model) -> list[QuantLayer]:
    """LFM's quantisable layers in graph order: conv1..conv4 of SNet and the salience conv, each
    with its trailing Relu / MaxPool nodes."""
    groups: list[list[str]] = []
    for node in model.graph.node:
        if node.op_type == "Conv":
            groups.append([node.name])
        elif node.op_type in ("Relu", "MaxPool") and groups:
            groups[-1].append(node.name)
    if len(groups) != len(LAYER_NAMES):
        raise QuantizeError(f"expected LFM's {len(LAYER_NAMES)} convolutions, found {len(groups)}")
    return [QuantLayer(n, tuple(g)) for n, g in zip(LAYER_NAMES, groups)]


def parse_int8_layers(value) -> tuple[str, ...]:
    """"all", "conv3,conv4" or a sequence of layer names -> a tuple of names, checked."""
    if isinstance(value, str):
        value = LAYER_NAMES if value.strip() == "all" else [v.strip() for v in value.split(",") if v.strip()]
    names = tuple(value)
    unknown = [n for n in names if n not in LAYER_NAMES]
    if unknown or not names:
        raise QuantizeError(f"int8 layers {', '.join(unknown) or '(none)'}: expected 'all' or some of "
                            f"{', '.join(LAYER_NAMES)}")
    return tuple(n for n in LAYER_NAMES if n in names)


def _quantized_activations(model, op_types: Sequence[str], excluded: set[str]) -> list[str]:
    """Float activation tensors the QDQ quantiser will want ranges for: inputs and outputs of
    the nodes of ``op_types`` (not initializers), as ORT's calibrators select them."""
    inits = {t.name for t in model.graph.initializer}
    names = []
    for node in model.graph.node:
        if node.op_type in op_types and node.name not in excluded:
            for t in list(node.input[:1]) + list(node.output[:1]):
                if t and t not in inits and t not in names:
                    names.append(t)
    return names


def _range_targets(model, op_types: Sequence[str], excluded: set[str], profile: str) -> list[str]:
    """The activations whose ranges decide accuracy, in graph order: each quantised Conv's
    data input (traced back through MaxPool, which shares its input's scale, to the Relu output)
    and, where Conv outputs are quantised, the output of a Conv not followed by Relu."""
    g = _Graph(model)
    targets = []
    for node in model.graph.node:
        if node.op_type != "Conv" or node.name in excluded:
            continue
        t = node.input[0]
        p = g.producer.get(t)
        if p is not None and p.op_type == "MaxPool":
            t = p.input[0]
        targets.append(t)
        nxt = g.only_consumer(node.output[0])
        if profile == "cpu" and (nxt is None or nxt.op_type != "Relu"):
            targets.append(node.output[0])
    return list(dict.fromkeys(targets))


class _Stats:
    """Per-tensor min, max and a random sample of values over the calibration batches."""

    def __init__(self, sample_per_batch: int = 200_000, seed: int = 0):
        self.lo, self.hi, self.samples = {}, {}, {}
        self.k, self.rng = sample_per_batch, np.random.default_rng(seed)

    def add(self, name, v):
        v = v.reshape(-1)
        lo, hi = float(v.min()), float(v.max())
        self.lo[name] = min(lo, self.lo.get(name, lo))
        self.hi[name] = max(hi, self.hi.get(name, hi))
        pick = v if v.size <= self.k else v[self.rng.integers(0, v.size, self.k)]
        self.samples.setdefault(name, []).append(pick.astype(np.float32))

    def sample(self, name):
        return np.concatenate(self.samples[name])


def _collect(model, input_name, batches, tensors) -> _Stats:
    sess = cpu_session(_with_outputs(model, tensors))
    st = _Stats()
    for x in batches:
        for t, v in zip(tensors, sess.run(list(tensors), {input_name: x})):
            st.add(t, v)
    return st


def _ort_calibrate(model, input_name, batches, method, tensors, op_types, chunk: int = 4):
    """ORT's own calibrator (Entropy: histogram KL; slow on LFM's large early activations)."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    cm = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
          "entropy": CalibrationMethod.Entropy}[method]
    with tempfile.TemporaryDirectory(prefix="lfm-quant-") as tmp:
        path = os.path.join(tmp, "model.onnx")
        import onnx

        onnx.save(model, path)
        cal = create_calibrator(path, list(op_types), augmented_model_path=os.path.join(tmp, "aug.onnx"),
                                calibrate_method=cm)
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
            for i in range(0, len(batches), chunk):
                cal.collect_data(_Reader(input_name, batches[i:i + chunk]))
            data = cal.compute_data().data
        del cal
    return {t: (float(np.asarray(data[t].range_value[0])), float(np.asarray(data[t].range_value[1])))
            for t in tensors if t in data}


def _ranges(stats: _Stats, tensors, method: str, percentile: float) -> dict[str, tuple[float, float]]:
    out = {}
    for t in tensors:
        lo, hi = stats.lo[t], stats.hi[t]
        if method == "percentile":
            s = stats.sample(t)
            q = percentile
            lo = min(0.0, float(np.percentile(s, 100.0 - q))) if lo < 0 else lo
            hi = max(0.0, float(np.percentile(s, q))) if hi > 0 else hi
        out[t] = (min(lo, 0.0), max(hi, 0.0))
    return out


def _build(prepared_path, out_path, ranges, *, profile, act_qtype, op_types, excluded, per_channel,
           reduce_range, extra_options, tmp):
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

    cache = os.path.join(tmp, "ranges.json")
    data = {t: TensorData(lowest=np.float32(lo), highest=np.float32(hi)) for t, (lo, hi) in ranges.items()}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), cache)
    opts = {"WeightSymmetric": True}
    if profile == "tensorrt":
        # TensorRT: int8 zero point 0, Q/DQ on the inputs of weighted layers (Conv+ReLU fuse
        # there), float bias, one Q/DQ pair per consumer.
        opts.update({"ActivationSymmetric": True, "OpTypesToExcludeOutputQuantization": ["Conv"],
                     "QuantizeBias": False, "DedicatedQDQPair": True})
    opts.update(extra_options or {})
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(prepared_path, out_path, None, quant_format=QuantFormat.QDQ,
                            op_types_to_quantize=list(op_types), per_channel=per_channel,
                            reduce_range=reduce_range, activation_type=act_qtype, weight_type=QuantType.QInt8,
                            nodes_to_exclude=list(excluded), calibrate_method=CalibrationMethod.MinMax,
                            extra_options=opts, calibration_cache_path=cache)
    finally:
        root.setLevel(level)
    os.unlink(cache)


def quantize_int8(fp32_path: str | os.PathLike, out_path: str | os.PathLike, calib_files: Sequence[str],
                  spec: ModelSpec | None = None, batch_size: int = 8, *, profile: str = DEFAULT_PROFILE,
                  method: str | None = None, percentile: float = DEFAULT_PERCENTILE,
                  equalization: bool = True, alpha: float = DEFAULT_ALPHA, fold_scale: bool = True,
                  exact_first_layer: bool = True, op_types: Sequence[str] | None = None,
                  int8_layers: Sequence[str] | str = DEFAULT_INT8_LAYERS, headroom: float = DEFAULT_HEADROOM,
                  nodes_to_exclude: Sequence[str] = (), quantize_fc: bool = False,
                  per_channel: bool = True, reduce_range: bool = False, activation_type: str | None = None,
                  extra_options: dict | None = None, progress=None) -> dict:
    """Quantise the fp32 model at ``fp32_path`` to a QDQ INT8 model at ``out_path`` (written
    atomically). Calibration images are prepared as the model expects them (its ``lfm.input``:
    uint8 NHWC bytes or normalised float NCHW; ``spec`` gives policy/size/mean/std, default:
    the model's own ``lfm.spec``). Returns a summary dict (counts, method, ranges, seconds).

    method: "minmax" | "percentile" (the ``percentile``-th percentile of each activation, from a
    random sample of its values per batch) | "entropy" (ORT's histogram KL calibrator; minutes
    on LFM's large early activations); None: the profile's DEFAULT_METHOD.
    int8_layers: the layers quantised ("all", or names from LAYER_NAMES); the others stay fp32.
    headroom: the outputs of MAX_RANGE_LAYERS are ranged at headroom x their calibration maximum.
    """
    say = progress or (lambda msg: None)
    t0 = time.perf_counter()
    if profile not in PROFILES:
        raise QuantizeError(f"unknown profile {profile!r}; expected one of {PROFILES}")
    method = method or DEFAULT_METHOD.get(profile)
    if method not in METHODS:
        raise QuantizeError(f"unknown calibration method {method!r}; expected one of {METHODS}")
    model, props, spec = _open_fp32(fp32_path, spec)
    act, op_types = _activation_type(profile, activation_type), _op_types(profile, op_types, quantize_fc)
    layers, int8_layers = quant_layers(model), parse_int8_layers(int8_layers)
    calib = _calibration_batches(calib_files, spec, batch_size)
    say(f"calibration: {calib.count} images ({len(calib.skipped)} skipped), {spec.policy} {spec.size}, {spec.input} input")

    # 1-2: exact fp32 rewrites.
    folded, eq_summary, exact = _exact_rewrites(model, calib.batches, fold_scale, equalization, alpha,
                                                exact_first_layer and "conv1" in int8_layers)
    if eq_summary:
        say(f"equalised {len(eq_summary)} layer pairs (alpha {alpha})")
    excluded = set(nodes_to_exclude) | {n for layer in layers if layer.name not in int8_layers for n in layer.nodes}
    if not quantize_fc:
        excluded |= {n.name for n in model.graph.node if n.op_type in ("Gemm", "MatMul")}
    # 3: activation ranges.
    t_cal = time.perf_counter()
    tensors = _quantized_activations(model, op_types, excluded)
    ranges, headroom_tensors = _activation_ranges(model, calib.batches, tensors, op_types, method, percentile,
                                                  [layer for layer in layers if layer.name in int8_layers], headroom)
    if exact is not None:
        ranges[exact] = (0.0, 127.0 if act == "int8" else 255.0)  # |NPR| of bytes: integers 0..255
    t_cal = time.perf_counter() - t_cal
    # 4: the QDQ model.
    t_q = time.perf_counter()
    qmodel = _quantize_static(model, ranges, profile=profile, act=act, op_types=op_types, excluded=excluded,
                              per_channel=per_channel, reduce_range=reduce_range, extra_options=extra_options)
    t_q = time.perf_counter() - t_q

    calibration = {"count": calib.count, "skipped": len(calib.skipped), "method": method,
                   "percentile": percentile if method == "percentile" else None,
                   "size": spec.size, "policy": spec.policy, "profile": profile, "activations": act,
                   "weights": "int8 symmetric per-channel" if per_channel else "int8 symmetric per-tensor",
                   "equalization": bool(eq_summary), "alpha": alpha if eq_summary else None,
                   "folded_input_scale": bool(folded), "exact_first_layer": exact is not None,
                   "int8_layers": list(int8_layers), "fp32_layers": [n for n in LAYER_NAMES if n not in int8_layers],
                   "headroom": headroom if headroom_tensors else None,
                   "excluded": sorted(excluded), "op_types": list(op_types)}
    summary = _save_int8(qmodel, props, calibration, out_path)
    targets = [t for t in _range_targets(model, op_types, excluded, profile) if t in tensors]
    return {**calibration, "skipped_files": calib.skipped, "qdq": summary,
            "tensorrt_compatible": summary["tensorrt_compatible"],
            "equalized": {k: [round(a, 4), round(b, 4)] for k, (a, b) in eq_summary.items()},
            "ranges": {t: [round(lo, 5), round(hi, 5)] for t, (lo, hi) in ranges.items() if t in targets or t == exact},
            "seconds": {"load": round(calib.seconds, 2), "calibrate": round(t_cal, 2),
                        "quantize": round(t_q, 2), "total": round(time.perf_counter() - t0, 2)},
            "path": os.fspath(out_path)}


def _open_fp32(fp32_path, spec: ModelSpec | None):
    """(model, its metadata, the spec its calibration images are prepared by: ``spec`` or the
    model's own, with the model's input variant)."""
    import onnx

    fp32_path = os.fspath(fp32_path)
    if not os.path.isfile(fp32_path):
        raise QuantizeError(f"{fp32_path}: no such model file")
    model = onnx.load(fp32_path)
    props = {p.key: p.value for p in model.metadata_props}
    if props.get("lfm.precision", "fp32") != "fp32":
        raise QuantizeError(f"{fp32_path}: is already {props['lfm.precision']}, expected an fp32 model")
    return model, props, (spec or spec_of(props)).replace(input=model_variant(model))


def _activation_type(profile: str, requested: str | None) -> str:
    act = requested or ("int8" if profile == "tensorrt" else "uint8")
    if profile == "tensorrt" and act != "int8":
        raise QuantizeError("the tensorrt profile needs int8 activations (TensorRT accepts only int8 Q/DQ)")
    return act


def _op_types(profile: str, op_types: Sequence[str] | None, quantize_fc: bool) -> tuple[str, ...]:
    if op_types is None:
        # cpu: Relu is quantised so that ORT drops it into QLinearConv (zero point 0 = ReLU's clamp).
        op_types = ("Conv", "MaxPool", "Relu") if profile == "cpu" else ("Conv", "MaxPool")
    if quantize_fc:
        op_types = tuple(op_types) + tuple(t for t in ("Gemm", "MatMul") if t not in op_types)
    return tuple(op_types)


@dataclass
class _Calibration:
    batches: list  # prepared input batches
    count: int  # images read
    skipped: list  # "path: problem" for each image left out
    seconds: float


def _calibration_batches(calib_files: Sequence[str], spec: ModelSpec, batch_size: int) -> _Calibration:
    calib_files = list(calib_files)
    if not calib_files:
        raise QuantizeError("no calibration images given")
    t0, skipped = time.perf_counter(), []
    loaded = load_batches(calib_files, spec, spec.input, batch_size, skipped)
    count = sum(len(i) for i, _ in loaded)
    if count == 0:
        raise QuantizeError(f"none of the {len(calib_files)} calibration images could be read (first: {skipped[0]})")
    return _Calibration([x for _, x in loaded], count, skipped, time.perf_counter() - t0)


def _exact_rewrites(model, batches, fold_scale: bool, equalization: bool, alpha: float, exact_first_layer: bool):
    """Steps 1-2 (exact in fp32), in place: (Convs the input scale was folded into, the
    equalisation's {tensor: (min s, max s)}, the first Conv's input when it holds the integers
    0..255 and may be quantised exactly, else None)."""
    input_name = model.graph.input[0].name
    folded = fold_input_scale(model) if fold_scale else []
    chains = equalizable_chains(model) if equalization else []
    first_conv = next((n for n in model.graph.node if n.op_type == "Conv"), None)
    watch = [c.tensor for c in chains] + ([first_conv.input[0]] if first_conv is not None else [])
    cstats = channel_stats(model, input_name, batches, watch) if watch else {"max": {}, "integer": {}}
    eq_summary = equalize(model, chains, cstats["max"], alpha) if chains else {}
    exact = None
    if (first_conv is not None and exact_first_layer and cstats["integer"].get(first_conv.input[0])
            and cstats["max"][first_conv.input[0]].min() >= 0):
        exact = first_conv.input[0]  # |NPR| of bytes: integers 0..255 -> scale 1, zero point 0
    return folded, eq_summary, exact


def _activation_ranges(model, batches, tensors, op_types, method: str, percentile: float,
                       int8_layers: Sequence[QuantLayer], headroom: float):
    """Step 3: {tensor: (lo, hi)} by ``method``, the outputs of the int8 MAX_RANGE_LAYERS at
    ``headroom`` x their calibration maximum; and the tensors given that headroom."""
    input_name = model.graph.input[0].name
    if method == "entropy":
        ranges = _ort_calibrate(model, input_name, batches, method, tensors, op_types)
        stats = None
    else:
        stats = _collect(model, input_name, batches, tensors)
        ranges = _ranges(stats, tensors, method, percentile)
    headroom_tensors = []
    for layer in int8_layers:
        t = layer.relu_output(model)
        if layer.name in MAX_RANGE_LAYERS and t in ranges and headroom > 0:
            lo, hi = ranges[t]
            ranges[t] = (lo, headroom * (stats.hi[t] if stats is not None else hi))
            headroom_tensors.append(t)
    return ranges, headroom_tensors


def _quantize_static(model, ranges, *, profile, act, op_types, excluded, per_channel, reduce_range, extra_options):
    """Step 4: ORT's quantize_static on the rewritten model with the ranges given; the QDQ proto."""
    import onnx
    from onnxruntime.quantization import QuantType

    act_qtype = {"int8": QuantType.QInt8, "uint8": QuantType.QUInt8}[act]
    with tempfile.TemporaryDirectory(prefix="lfm-quant-") as tmp:
        prepared = os.path.join(tmp, "prepared.onnx")
        onnx.save(model, prepared)
        quantized = os.path.join(tmp, "int8.onnx")
        _build(prepared, quantized, ranges, tmp=tmp, profile=profile, act_qtype=act_qtype, op_types=op_types,
               excluded=excluded, per_channel=per_channel, reduce_range=reduce_range, extra_options=extra_options)
        return onnx.load(quantized)


def _save_int8(qmodel, props: dict, calibration: dict, out_path) -> dict:
    """Check the QDQ model, describe it in its metadata (precision, calibration, quantiser) and
    write it atomically; returns its Q/DQ summary."""
    import onnxruntime

    summary = qdq_summary(qmodel)
    qmodel = check(qmodel)
    set_metadata(qmodel, {**props, "lfm.precision": "int8", "lfm.calibration": json.dumps(calibration, sort_keys=True),
                          "lfm.quantizer": f"onnxruntime {onnxruntime.__version__} quantize_static QDQ"})
    save_atomic(qmodel, out_path)
    return summary


def qdq_summary(path_or_proto) -> dict:
    """Counts of Q/DQ nodes and quantised ops, and whether every Q/DQ follows TensorRT's rules
    (int8, zero point 0; per-channel scales 1-D)."""
    import onnx
    import onnx.numpy_helper as nh

    m = path_or_proto if hasattr(path_or_proto, "graph") else onnx.load(os.fspath(path_or_proto))
    inits = {t.name: t for t in m.graph.initializer}
    consts = {}
    for n in m.graph.node:
        if n.op_type == "Constant":
            consts[n.output[0]] = nh.to_array(n.attribute[0].t)
    val = lambda name: nh.to_array(inits[name]) if name in inits else consts.get(name)  # noqa: E731
    q = [n for n in m.graph.node if n.op_type == "QuantizeLinear"]
    dq = [n for n in m.graph.node if n.op_type == "DequantizeLinear"]
    dtypes, problems, per_channel = set(), [], 0
    for n in q + dq:
        zp = val(n.input[2]) if len(n.input) > 2 and n.input[2] else None
        scale = val(n.input[1])
        dtypes.add(str(zp.dtype) if zp is not None else "uint8")
        if zp is None or zp.dtype != np.int8:
            problems.append(f"{n.name}: {'no zero point (uint8)' if zp is None else zp.dtype}")
        elif np.any(zp != 0):
            problems.append(f"{n.name}: zero point not 0")
        if scale is not None and scale.size > 1:
            per_channel += 1
    quantized_ops = sorted({c.op_type for n in dq for c in m.graph.node if n.output[0] in c.input})
    return {"quantize_linear": len(q), "dequantize_linear": len(dq), "per_channel": per_channel,
            "dtypes": sorted(dtypes), "quantized_ops": quantized_ops,
            "tensorrt_compatible": not problems, "tensorrt_problems": problems[:5]}


# --------------------------------------------------------------------------------------------
# Accuracy against the fp32 model


def _sigmoid(x):
    x = np.asarray(x, np.float64)
    return np.where(x >= 0, 1.0 / (1.0 + np.exp(-np.abs(x))), np.exp(-np.abs(x)) / (1.0 + np.exp(-np.abs(x))))


def compare_logits(ref: np.ndarray, test: np.ndarray, threshold: float = 0.5, labels=None) -> dict:
    """Decision agreement (score > threshold, as the runtime decides), logit differences, AP."""
    from lfm.train.metrics import average_precision

    ref, test = np.asarray(ref, np.float64), np.asarray(test, np.float64)
    d = np.abs(ref - test)
    a, b = is_fake(_sigmoid(ref), threshold), is_fake(_sigmoid(test), threshold)
    out = {"n": int(ref.size), "agreement": float(np.mean(a == b)) if ref.size else float("nan"),
           "disagreements": int(np.sum(a != b)),
           "max_abs_logit_diff": float(d.max()) if ref.size else float("nan"),
           "mean_abs_logit_diff": float(d.mean()) if ref.size else float("nan"),
           "fake_rate_ref": float(a.mean()) if ref.size else float("nan"),
           "fake_rate_test": float(b.mean()) if ref.size else float("nan")}
    # Where the reference is not on the fence: |logit| >= CONFIDENT_LOGIT (score outside [0.27, 0.73]).
    conf = np.abs(ref - logit_boundary(threshold)) >= CONFIDENT_LOGIT
    out["n_confident"] = int(conf.sum())
    out["agreement_confident"] = float(np.mean(a[conf] == b[conf])) if conf.any() else float("nan")
    if labels is not None:
        y = np.asarray(labels)
        out["ap_ref"] = average_precision(y, ref)
        out["ap_test"] = average_precision(y, test)
        out["ap_diff"] = out["ap_test"] - out["ap_ref"]
    return out


def int8_report(fp32_path, int8_path, files: Sequence[str], labels: Sequence[int] | None = None,
                spec: ModelSpec | None = None, batch_size: int = 8) -> dict:
    """Agreement of the INT8 model with its fp32 model on ``files`` (use images disjoint from
    the calibration set): decision agreement at the model threshold, max/mean |logit diff|,
    and with ``labels`` (1 = generated) the AP of both and its change."""
    files = list(files)
    skipped: list[str] = []
    ref, idx_r = run_logits(fp32_path, files, spec, batch_size, skipped=skipped)
    test, idx_t = run_logits(int8_path, files, spec, batch_size)
    if idx_r != idx_t:
        raise QuantizeError("the fp32 and int8 models read different images")
    threshold = spec.threshold if spec is not None else 0.5
    y = [labels[i] for i in idx_r] if labels is not None else None
    c = compare_logits(ref, test, threshold, y)
    names = {"fake_rate_ref": "fake_rate_fp32", "fake_rate_test": "fake_rate_int8", "ap_ref": "ap_fp32",
             "ap_test": "ap_int8", "ap_diff": "ap_diff"}
    out = {names.get(k, k): v for k, v in c.items()}
    out["threshold"] = threshold
    out["skipped"] = len(files) - len(idx_r)
    out["skipped_files"] = skipped  # "path: problem", one per file left out
    return out
