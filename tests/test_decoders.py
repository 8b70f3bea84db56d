"""The decoders behind one interface (runtime/decoders.py; issue 25, item 4): threads, processes
and the GPU decoder each give, ticket by ticket, what ``preprocess.load_tiles`` gives (arrays or
the problem), lend and release, discard and close alike; the routers put arrays and images on the
threads; ``Prepared`` arrays reach the model as they are, the policy not applied a second time."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from lfm.runtime.decode_pool import DecodePool
from lfm.runtime.decoders import FilesApart, ThreadDecoder, make_decoder, prepare_item
from lfm.runtime.detector import Detector
from lfm.runtime.gpu_decode import GpuDecoder
from lfm.runtime.flags import NO_FACTS
from lfm.runtime.preprocess import Prepared, load_tiles_or_problem
from lfm.runtime.spec import ModelSpec

SPEC = ModelSpec(input="uint8", layout="NHWC", size=64)
LIMITS = (10**8, 64)  # max_pixels, max_tiles


def pillow_jpegs(tensors):
    """Stands in for nvJPEG (no GPU here): Pillow's pixels as uint8 [3, H, W] tensors on the CPU."""
    import torch

    return [torch.from_numpy(np.asarray(Image.open(io.BytesIO(bytes(t.numpy()))).convert("RGB")).copy())
            .permute(2, 0, 1) for t in tensors]


def start(kind: str, spec: ModelSpec = SPEC):
    if kind == "threads":
        return ThreadDecoder(spec, *LIMITS, workers=2)
    if kind == "processes":
        return DecodePool(spec, *LIMITS, workers=2, hold=4)
    if kind == "gpu":
        pytest.importorskip("torch", reason="the GPU decoder's tensors need torch")
        return GpuDecoder(spec, *LIMITS, device="cpu", batch=3, decode_jpegs=pillow_jpegs)
    decode = kind.split("+")[0]
    return make_decoder(decode, spec, *LIMITS, workers=2, hold=4, gpu_jpegs=pillow_jpegs)


DECODERS = ["threads", "processes", "gpu", "processes+threads", "gpu+threads"]


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> list:
    """Paths and encoded bytes: JPEGs (the GPU decoder's own), a PNG, and bad files."""
    d = tmp_path_factory.mktemp("decoders")
    rng = np.random.default_rng(7)
    out = []
    for i, (h, w) in enumerate([(70, 90), (64, 64), (120, 80), (99, 131)]):
        p = d / f"im{i}.{'png' if i == 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        out.append(str(p))
    (d / "text.jpg").write_text("not an image")
    out += [str(d / "text.jpg"), str(d / "missing.png"), (d / "im0.jpg").read_bytes()[:300], (d / "im3.jpg").read_bytes()]
    return out


def same(got, want) -> bool:
    """The same arrays (or none), the same problem and the same facts (the records' flags)."""
    (a, e, facts), (b, f, want_facts) = got, want
    return e == f and facts == want_facts and (
        a is None and b is None or a is not None and b is not None and np.array_equal(a, b))


@pytest.mark.slow
@pytest.mark.parametrize("kind", DECODERS)
@pytest.mark.parametrize("policy", ["resize", "tiles"])
def test_every_decoder_gives_what_load_tiles_gives_ticket_by_ticket(kind, policy, files):
    spec = SPEC.replace(policy=policy, size=48 if policy == "tiles" else 64)
    want = [load_tiles_or_problem(f, spec, *LIMITS) for f in files]
    assert sum(e is None for _, e, _ in want) == 5 and sum(e is not None for _, e, _ in want) == 3
    decoder = start(kind, spec)
    try:
        tickets = [decoder.submit(f) for f in files]
        got = {t: decoder.result(t) for t in reversed(tickets)}  # any order of collection
        assert all(same(got[t], w) for t, w in zip(tickets, want))
        with pytest.raises(KeyError):
            decoder.result(tickets[0])  # collected once
        # lent: maybe a view of the decoder's memory, equal until released; releasing again is harmless
        lent = [decoder.submit(f) for f in files[:4]]
        for t, w in zip(lent, want):
            assert same(decoder.result(t, lend=True), w)
        for t in lent + lent:
            decoder.release(t)
        # discarded: never collected, and the decoder goes on
        dropped, kept = decoder.submit(files[0]), decoder.submit(files[1])
        decoder.discard(dropped)
        assert same(decoder.result(kept), want[1])
        with pytest.raises(KeyError):
            decoder.result(dropped)
    finally:
        decoder.close()
    decoder.close()  # twice: nothing happens


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["processes+threads", "gpu+threads"])
def test_the_routers_keep_files_apart_and_the_rest_on_threads(kind, files):
    decoder = start(kind)
    arrays = np.random.default_rng(2).integers(0, 256, (80, 72, 3), dtype=np.uint8)
    others = [arrays, Image.fromarray(arrays), Prepared(arrays[None]), np.zeros((4, 4), np.uint8), 42]
    try:
        assert isinstance(decoder, FilesApart) and decoder.files is None  # started on the first file only
        got = [decoder.result(decoder.submit(item)) for item in others]
        assert decoder.files is None and all(decoder.decoder_for(item) is decoder.others for item in others)
        assert all(same(g, prepare_item(item, SPEC, *LIMITS)) for g, item in zip(got, others))
        assert same(got[2], (arrays[None], None, NO_FACTS))  # prepared: as it is, not resized to 64
        assert got[3][1] == "expected a uint8 HxWx3 RGB array, got uint8 [4, 4]"
        assert got[4][1].startswith("cannot score a int")
        square = files[1]  # a 64 x 64 JPEG: on the GPU path without a resize kernel (none runs here)
        assert same(decoder.result(decoder.submit(square)), load_tiles_or_problem(square, SPEC, *LIMITS))
        assert isinstance(decoder.files, DecodePool if kind.startswith("processes") else GpuDecoder)
        if kind.startswith("gpu"):
            assert decoder.files.gpu_decoded == 1
    finally:
        decoder.close()


def test_prepared_arrays_reach_the_model_as_they_are(random_onnx):
    """Prepared arrays are scored as given: the logits equal ONNX Runtime's on those very arrays
    (the same batch, one thread each), where a plain array of that size gets the policy (resized
    to the model's 64 x 64) and a different logit. A malformed one is its own error record."""
    import onnxruntime as ort

    from lfm.runtime.backends import make_runner

    odd = np.random.default_rng(4).integers(0, 256, (2, 80, 72, 3), dtype=np.uint8)  # not the policy's size
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(random_onnx), options, providers=["CPUExecutionProvider"])
    want = session.run(["logit"], {"pixels": odd})[0].reshape(-1).astype(np.float64)
    with Detector(make_runner(random_onnx, backend="onnxruntime", threads=1), batch_size=4) as det:  # as `session`
        assert det.spec.policy == "resize" and det.spec.size == 64
        got = det.predict([Prepared(odd[:1], "first"), Prepared(odd[1:]), Prepared(odd[0])])
        resized = det.predict_one(odd[0])
    assert [r.logit for r in got[:2]] == want.tolist()
    assert [r.path for r in got] == ["first", "<prepared 1x80x72x3>", "<prepared 80x72x3>"]
    assert got[2].error == "expected prepared uint8 [N, h, w, 3] arrays, got uint8 [80, 72, 3]"
    assert resized.error is None and resized.logit != got[0].logit
