"""uint8 to the device (runtime/gpu_input.py) and GPU JPEG decoding with its CPU fallback
(runtime/gpu_decode.py, Detector(decode="gpu")).

Without a GPU: the staging ring's logic on torch CPU tensors, and the decoder's routing with an
injected "nvJPEG" (Pillow decoding into CPU tensors, refusing marked files), the resize kernel in
Triton's interpreter; the fallback is the real CPU decoder. The nvJPEG-vs-libjpeg comparison
needs CUDA and torchvision and is skipped here with the reason.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from interpreter import use_interpreter_without_gpu  # noqa: E402

use_interpreter_without_gpu()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

torch = pytest.importorskip("torch", reason="the GPU input paths run on PyTorch")
pytest.importorskip("triton", reason="the GPU resize kernel needs triton")

from lfm.runtime import detector as detector_module  # noqa: E402
from lfm.runtime.detector import Detector  # noqa: E402
from lfm.runtime.gpu_decode import GpuDecoder, gpu_jpeg_size  # noqa: E402
from lfm.runtime.gpu_input import StagingRing  # noqa: E402
from lfm.runtime.flags import NO_FACTS, ImageFacts  # noqa: E402
from lfm.runtime.preprocess import ImageError, load_prepared  # noqa: E402
from lfm.runtime.spec import ModelSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_JPEGS = ROOT.parent / "shared" / "reference" / "cnndetection"
CUDA = torch.cuda.is_available()
try:
    import torchvision  # noqa: F401
    TORCHVISION = True
except ImportError:
    TORCHVISION = False
REFUSE = b"nvjpeg-refuses-this"  # a JPEG comment the fake decoder refuses


# -- the staging ring ------------------------------------------------------------------------------
def test_ring_gives_each_batch_back_in_order_and_never_a_slot_view():
    ring = StagingRing("cpu", slots=2, pin_memory=False)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, 256, shape, dtype=np.uint8)
               for shape in [(4, 8, 8, 3), (2, 16, 8, 3), (4, 8, 8, 3), (1, 5, 7, 3), (3, 8, 8, 3)]]
    staged = [ring.stage(b) for b in batches]  # slots are reused 2 times over: earlier results must survive
    for b, x in zip(batches, staged):
        assert x.dtype == torch.uint8 and tuple(x.shape) == b.shape
        assert np.array_equal(x.numpy(), b)
    assert ring.staged == 5 and ring.slots == 2
    ring.close()


def test_ring_refuses_float_pixels_and_zero_slots():
    with pytest.raises(TypeError, match="uint8"):
        StagingRing("cpu", pin_memory=False).stage(np.zeros((1, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="slots must be >= 1"):
        StagingRing("cpu", slots=0, pin_memory=False)


def test_ring_pins_only_where_cuda_is():
    assert StagingRing("cpu").pin_memory is CUDA


@pytest.mark.skipif(not CUDA, reason="pinned memory and the copy stream need a CUDA GPU")
def test_ring_on_the_gpu_copies_asynchronously_from_pinned_slots():
    ring = StagingRing("cuda", slots=2)
    batches = [np.full((8, 32, 32, 3), i, np.uint8) for i in range(6)]
    staged = [ring.stage(b) for b in batches]
    assert all(buf.is_pinned() for buf in ring._host)
    assert [int(x.float().mean().item()) for x in staged] == list(range(6))
    ring.close()


# -- GPU decoding: routing and fallback ------------------------------------------------------------
def pillow_decoder(datas):
    """Stands in for nvJPEG: Pillow's pixels (so the records must equal the CPU path's bit for bit),
    refusing a whole batch when one file is marked, as nvJPEG's batched call does."""
    if any(REFUSE in bytes(t.numpy()) for t in datas):
        raise RuntimeError("nvjpegDecode failed")
    device = "cuda" if CUDA else "cpu"  # where the resize kernel runs (natively, or interpreted)
    return [torch.from_numpy(np.asarray(Image.open(io.BytesIO(bytes(t.numpy()))).convert("RGB")).copy())
            .permute(2, 0, 1).to(device) for t in datas]


def _image(rng, w, h):
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BILINEAR)


@pytest.fixture(scope="module")
def mixed_files(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("gpu_decode")
    rng = np.random.default_rng(1)
    paths = {}
    for i, (w, h) in enumerate([(97, 83), (64, 64), (120, 71)]):
        _image(rng, w, h).save(d / f"base{i}.jpg", quality=90)
        paths[f"base{i}"] = d / f"base{i}.jpg"
    _image(rng, 90, 77).save(d / "prog.jpg", quality=90, progressive=True)
    _image(rng, 90, 77).convert("L").save(d / "grey.jpg")
    _image(rng, 90, 77).save(d / "img.png")
    _image(rng, 90, 77).save(d / "refused.jpg", quality=90, comment=REFUSE)
    exif = Image.Exif()
    exif[0x0112] = 6
    _image(rng, 90, 70).save(d / "rotated.jpg", exif=exif)
    (d / "trunc.jpg").write_bytes((d / "base0.jpg").read_bytes()[:600])
    (d / "small.jpg").write_bytes(b"")  # empty: the CPU path names it
    names = ["base0", "prog", "base1", "img", "refused", "grey", "rotated", "trunc", "missing", "small", "base2"]
    files = {"prog": "prog.jpg", "img": "img.png", "refused": "refused.jpg", "grey": "grey.jpg",
             "rotated": "rotated.jpg", "trunc": "trunc.jpg", "missing": "missing.jpg", "small": "small.jpg"}
    return [str(paths[n]) if n in paths else str(d / files[n]) for n in names]


def cpu_records(files, spec):
    out = []
    for f in files:
        try:
            arrays, facts = load_prepared(f, spec, 10**8, 64)
            out.append((arrays, None, facts))
        except ImageError as e:
            out.append((None, e.problem, NO_FACTS))
    return out


def test_only_baseline_colour_jpegs_go_to_the_gpu(mixed_files):
    routed = [Path(f).stem for f in mixed_files
              if os.path.exists(f) and gpu_jpeg_size(Path(f).read_bytes(), 10**8) is not None]
    assert routed == ["base0", "base1", "refused", "base2"]  # refused is a baseline JPEG: nvJPEG gets it first


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["resize", "center-crop", "tiles", "none"])
def test_gpu_decoder_gives_the_cpu_path_records_in_order(mixed_files, policy):
    spec = ModelSpec(input="uint8", layout="NHWC", size=64, policy=policy)
    dec = GpuDecoder(spec, 10**8, 64, device="cpu", batch=4, decode_jpegs=pillow_decoder)
    tickets = [dec.submit(f) for f in mixed_files]
    got = [dec.result(t) for t in tickets]
    for f, (arrays, error, facts), (want, want_error, want_facts) in zip(mixed_files, got, cpu_records(mixed_files, spec)):
        assert error == want_error, f
        assert (arrays is None and want is None) or np.array_equal(arrays, want), f
        assert facts == want_facts, f  # the flags' facts: the device path states them as the CPU path does
    assert dec.gpu_decoded == 3  # base0..2; "refused" fell back after its batch was retried file by file
    assert dec.cpu_decoded == len(mixed_files) - 3
    assert sum(e is not None for _, e, _ in got) == 3  # truncated, missing, empty


def test_gpu_decoder_sends_an_image_too_small_to_score_to_the_cpu_paths_refusal(tmp_path):
    """A plain JPEG below the model's minimum would be enlarged on the device (policy resize)
    into a confident answer: it goes to the CPU path, which refuses it (issue 24, item 12)."""
    spec = ModelSpec(input="uint8", layout="NHWC", size=64, policy="resize")
    rng = np.random.default_rng(3)
    files = []
    for side in (20, 47, 48):
        _image(rng, side, side).save(tmp_path / f"{side}.jpg", quality=90)
        files.append(str(tmp_path / f"{side}.jpg"))
    dec = GpuDecoder(spec, 10**8, 64, device="cpu", batch=4, decode_jpegs=pillow_decoder)
    got = [dec.result(t) for t in [dec.submit(f) for f in files]]
    assert [e is not None and "the smallest square image it scores is 48x48" in e for _, e, _ in got] == [True, True, False]
    assert got[2][0].shape == (1, 64, 64, 3) and dec.gpu_decoded == 1 and dec.cpu_decoded == 2
    assert got[2].facts == ImageFacts(64 / 48, 90)  # enlarged on the device: its record is flagged upscaled


@pytest.mark.slow
def test_detector_decode_gpu_gives_the_thread_path_records(random_onnx, mixed_files, monkeypatch):
    monkeypatch.setattr(detector_module, "nvjpeg_decoder", lambda device: pillow_decoder)
    items = [*mixed_files, Path(mixed_files[0]).read_bytes(), np.zeros((70, 70, 3), np.uint8)]
    with Detector(random_onnx, batch_size=3, workers=2) as det:
        by_threads = det.predict(items)
    with Detector(random_onnx, batch_size=3, workers=2, decode="gpu") as det:
        by_gpu = det.predict(items)
        assert det.decoder.files.gpu_decoded == 4  # the 3 plain JPEG files and the JPEG's bytes (serve.py's input)
    assert [r.path for r in by_gpu] == [r.path for r in by_threads]
    assert [r.logit for r in by_gpu] == [r.logit for r in by_threads]
    assert [r.error for r in by_gpu] == [r.error for r in by_threads]


@pytest.mark.skipif(CUDA and TORCHVISION, reason="this machine has CUDA and torchvision: decode='gpu' runs")
def test_decode_gpu_is_refused_in_one_line_without_cuda(random_onnx):
    with pytest.raises(ValueError) as e:
        Detector(random_onnx, decode="gpu")
    assert "decode 'gpu' needs" in str(e.value) and "\n" not in str(e.value)
    assert "'threads' or 'processes'" in str(e.value)


@pytest.mark.skipif(CUDA and TORCHVISION, reason="this machine has CUDA and torchvision: decode='gpu' runs")
def test_infer_decode_gpu_exits_2_in_one_line_without_cuda(random_onnx, mixed_files):
    p = subprocess.run([sys.executable, str(ROOT / "runtime" / "infer.py"), "--model", str(random_onnx),
                        mixed_files[0], "--decode", "gpu"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    assert "decode 'gpu' needs" in p.stderr and "Traceback" not in p.stderr


# -- GPU only: nvJPEG against libjpeg-turbo on the reference JPEGs ---------------------------------
@pytest.mark.skipif(not (CUDA and TORCHVISION), reason="nvJPEG needs a CUDA GPU and torchvision (GPU machine only)")
def test_nvjpeg_scores_stay_close_to_cpu_decoded_scores(random_onnx):
    files = sorted(map(str, REFERENCE_JPEGS.glob("*.jpg")))
    if not files:
        pytest.skip(f"no reference JPEGs in {REFERENCE_JPEGS}")
    with Detector(random_onnx, batch_size=32) as det:
        cpu = det.predict(files)
    with Detector(random_onnx, batch_size=32, decode="gpu") as det:
        gpu = det.predict(files)
        assert det.decoder.files.gpu_decoded > 0
    assert [r.error for r in gpu] == [r.error for r in cpu]
    dlogit = max(abs(a.logit - b.logit) for a, b in zip(cpu, gpu) if a.error is None)
    flips = sum(a.label != b.label for a, b in zip(cpu, gpu) if a.error is None)
    print(f"nvJPEG vs libjpeg-turbo on {len(files)} reference JPEGs: {flips} flips, max |dlogit| {dlogit:.4g}")
    assert dlogit < 1.0  # pixels within a few levels: a large move would be a routing or colour bug
