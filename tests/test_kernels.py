"""Triton kernels (lfm.kernels): NPR and Top-K pooling against their PyTorch references, and the
AOT PTX artifacts for TensorRT (PTX ISA pin, ptxas, calling convention, launch geometry).

Without a GPU the kernels run in Triton's interpreter on CPU tensors (small shapes: it is slow).
Triton reads TRITON_INTERPRET when it is first imported, so this module sets it before importing
triton, where no CUDA device is visible. If triton was already imported in compiled mode by an
earlier module (and there is no GPU), the interpreter tests run in a child pytest instead
(``test_interpreter_tests_in_a_child_process``). TRITON_INTERPRET then stays set for the rest
of the session; ``lfm.kernels.aot`` compiles in a child process in that mode.

With CUDA (no TRITON_INTERPRET) the same comparisons run natively on the GPU, plus GPU-only
checks at the real sizes and the AOT artifacts launched through cuda-python as TensorRT would.
"""
from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path


from interpreter import KernelPlaces, run_under_interpreter, use_interpreter_without_gpu  # noqa: E402

use_interpreter_without_gpu()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

pytest.importorskip("triton", reason="the kernels need triton: pip install -e '.[kernels]'")

from lfm.kernels import aot  # noqa: E402
from lfm.kernels.npr import npr, npr_kernel, npr_reference  # noqa: E402
from lfm.kernels.max_pool_relu import max_pool_relu, max_pool_relu_reference  # noqa: E402
from lfm.kernels.npr_stem import npr_stem, npr_stem_reference, stem_weights  # noqa: E402
from lfm.kernels.top_k_pool import top_k_pool, top_k_pool_reference  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PLACES = KernelPlaces(npr_kernel)  # where these tests run: the interpreter on CPU, or natively on the GPU
CUDA, INTERPRET, DEVICE = PLACES.cuda, PLACES.interpret, PLACES.device
needs_kernel_device, needs_cuda = PLACES.needs_kernel_device, PLACES.needs_cuda
UINT8_SCALE = tuple(1.0 / (255.0 * s) for s in (0.229, 0.224, 0.225))  # 1 / (255 std), the export's fold


@pytest.fixture(autouse=True)
def _quiet_numpy():
    with warnings.catch_warnings():  # the interpreter computes inf - inf in numpy, as intended
        warnings.filterwarnings("ignore", "invalid value encountered", RuntimeWarning)
        yield


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def same(actual, expected):
    """Bit-for-bit equal values (NaN == NaN, -0.0 == +0.0), same shape and dtype."""
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, (actual.shape, expected.shape)
    torch.testing.assert_close(actual.cpu(), expected.cpu(), rtol=0, atol=0, equal_nan=True)


# ---------------------------------------------------------------------------------------------
# NPR


NPR_SHAPES = [(1, 2, 2), (2, 5, 7), (1, 8, 34), (3, 17, 40), (1, 9, 75)]  # B, H, W: odd sizes, batch 1


@needs_kernel_device
@pytest.mark.parametrize("b,h,w", NPR_SHAPES)
def test_npr_uint8_every_output_variant(b, h, w):
    x = torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, generator=gen(h * w)).to(DEVICE)
    x[0, 0, 0] = torch.tensor([0, 255, 7], dtype=torch.uint8)  # extremes in a block's anchor
    for out_dtype in ("float32", "float16"):
        for layout in ("NCHW", "NHWC"):
            got = npr(x, UINT8_SCALE, out_dtype=out_dtype, out_layout=layout)
            same(got, npr_reference(x.cpu(), UINT8_SCALE, out_dtype=out_dtype, out_layout=layout))


@needs_kernel_device
@pytest.mark.parametrize("b,h,w", NPR_SHAPES)
def test_npr_float_input_with_nan_and_inf(b, h, w):
    x = torch.randn(b, 3, h, w, generator=gen(h + w)) * 100
    x[0, 0, 0, 0], x[0, 1, -1, -1], x[-1, 2, h // 2, 0] = float("nan"), float("inf"), float("-inf")
    x = x.to(DEVICE)
    same(npr(x), npr_reference(x.cpu()))
    same(npr(x, (0.5, 2.0, -1.0), out_dtype="float16", out_layout="NHWC"),
         npr_reference(x.cpu(), (0.5, 2.0, -1.0), out_dtype="float16", out_layout="NHWC"))


@needs_kernel_device
def test_npr_matches_the_models_npr_and_the_export_fold():
    from lfm.train.model import NPR

    pixels = torch.randint(0, 256, (2, 11, 14, 3), dtype=torch.uint8, generator=gen(1))
    scale = torch.tensor(UINT8_SCALE).view(1, 3, 1, 1)
    # what the uint8 ONNX graph computes (Uint8InputLFM): NPR of the bytes, abs, times 1 / (255 std)
    expected = NPR()(pixels.permute(0, 3, 1, 2).to(torch.float32)).abs() * scale
    same(npr(pixels.to(DEVICE), UINT8_SCALE), expected)
    # ... and, up to float rounding, |NPR| of the normalised image
    mean, std = torch.tensor((0.485, 0.456, 0.406)).view(1, 3, 1, 1), torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    normalised = (pixels.permute(0, 3, 1, 2).float() / 255 - mean) / std
    torch.testing.assert_close(npr(pixels.to(DEVICE), UINT8_SCALE).cpu(), NPR()(normalised).abs(), rtol=1e-5, atol=1e-5)


@needs_kernel_device
def test_npr_several_programs_along_a_row():
    x = torch.randint(0, 256, (1, 4, 70, 3), dtype=torch.uint8, generator=gen(2)).to(DEVICE)
    same(npr(x, UINT8_SCALE, block_w=16), npr_reference(x.cpu(), UINT8_SCALE))  # 35 blocks: 3 programs


@needs_kernel_device
def test_npr_below_one_block_is_empty():
    x = torch.zeros(2, 1, 9, 3, dtype=torch.uint8, device=DEVICE)
    assert npr(x, UINT8_SCALE).shape == (2, 3, 0, 8)
    assert npr(torch.zeros(1, 3, 4, 1, device=DEVICE), out_layout="NHWC").shape == (1, 4, 0, 3)


def test_npr_rejects_bad_inputs():
    with pytest.raises(ValueError, match="scale"):
        npr(torch.zeros(1, 4, 4, 3, dtype=torch.uint8))
    with pytest.raises(TypeError, match="uint8 NHWC or float32 NCHW"):
        npr(torch.zeros(1, 3, 4, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[B, H, W, 3\]"):
        npr(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), UINT8_SCALE)
    with pytest.raises(ValueError, match="out_layout"):
        npr(torch.zeros(1, 3, 4, 4), out_layout="CHW")
    with pytest.raises(ValueError, match="one value per channel"):
        npr(torch.zeros(1, 4, 4, 3, dtype=torch.uint8), (1.0, 2.0))


# ---------------------------------------------------------------------------------------------
# The fused stem: NPR -> conv1 (BN folded) -> max-pool -> ReLU


def stem_layers(seed: int = 0):
    """conv1 + BN of an LFM with BN statistics and affine terms far from identity."""
    from lfm.train.model import build_model

    torch.manual_seed(seed)
    model = build_model().eval()
    conv, bn = model.snet.layer1[0], model.snet.layer1[1]
    g = gen(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(64, generator=g))
        bn.running_var.copy_(torch.rand(64, generator=g) * 2 + 0.1)
        bn.weight.copy_(torch.randn(64, generator=g))
        bn.bias.copy_(torch.randn(64, generator=g))
    return model, conv, bn


STEM_SHAPES = [(1, 4, 4), (2, 16, 16), (1, 21, 35), (1, 9, 70), (2, 12, 81)]  # B, H, W: odd, batch 1, > one block


@needs_kernel_device
@pytest.mark.parametrize("b,h,w", STEM_SHAPES)
def test_npr_stem_matches_the_float64_layers(b, h, w):
    _, conv, bn = stem_layers(b + h + w)
    weight, bias = stem_weights(conv, bn, UINT8_SCALE)
    x = torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, generator=gen(h * w))
    ref = npr_stem_reference(x, conv, bn, UINT8_SCALE, out_dtype="float64")
    assert ref.shape == (b, (h - h % 2 - 1) // 2, (w - w % 2 - 1) // 2, 64)
    assert (ref > 0).any() and (ref == 0).any()  # ReLU both clips and passes: the test can see either going wrong
    got = npr_stem(x.to(DEVICE), weight.to(DEVICE), bias.to(DEVICE), out_dtype="float32").cpu().double()
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    got16 = npr_stem(x.to(DEVICE), weight.to(DEVICE), bias.to(DEVICE)).cpu()
    assert got16.dtype == torch.float16
    torch.testing.assert_close(got16.double(), ref, rtol=2e-3, atol=2e-3)


def test_npr_stem_rejects_bad_inputs():
    _, conv, bn = stem_layers()
    weight, bias = stem_weights(conv, bn, UINT8_SCALE)
    with pytest.raises(ValueError, match=r"uint8 \[B, H, W, 3\]"):
        npr_stem(torch.zeros(1, 3, 8, 8), weight, bias)
    with pytest.raises(ValueError, match="no pooled output"):
        npr_stem(torch.zeros(1, 3, 9, 3, dtype=torch.uint8), weight, bias)
    with pytest.raises(ValueError, match="weight"):
        npr_stem(torch.zeros(1, 8, 8, 3, dtype=torch.uint8), weight[:, :60], bias[:60])


@needs_kernel_device
@pytest.mark.parametrize("shape", [(2, 64, 9, 13), (1, 128, 8, 8), (1, 256, 7, 5), (2, 4, 3, 3), (1, 8, 2, 70)])
def test_max_pool_relu_matches_pytorch(shape):
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(*shape, generator=gen(shape[1])).to(dtype)
        x.view(-1)[::7] = float("nan")  # NaN propagates as in PyTorch
        x.view(-1)[3::11] = float("-inf")
        x = x.contiguous(memory_format=torch.channels_last)
        got = max_pool_relu(x.to(DEVICE))
        assert got.is_contiguous(memory_format=torch.channels_last)
        same(got, max_pool_relu_reference(x))


def test_max_pool_relu_rejects_bad_inputs():
    with pytest.raises(ValueError, match="power-of-two channel count"):
        max_pool_relu(torch.zeros(1, 3, 4, 4))
    with pytest.raises(ValueError, match="float16/float32"):
        max_pool_relu(torch.zeros(1, 4, 4, 4, dtype=torch.uint8))


def _normalised(x_uint8, spec):
    mean = torch.tensor(spec.mean, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=torch.float64).view(1, 3, 1, 1)
    return (x_uint8.permute(0, 3, 1, 2).double() / 255.0 - mean) / std


@needs_kernel_device
def test_triton_lfm_equals_the_model_in_float64(upstream_ckpt):
    """The whole kernel pipeline (stem, cuDNN layers 2-4 with max_pool_relu, Top-K), float32, with
    upstream's weights on small uint8 images (odd sizes too), against the faithful model in float64."""
    from lfm.kernels.triton_lfm import TritonLFM
    from lfm.runtime.spec import ModelSpec
    from lfm.train.checkpoint import load_checkpoint

    from lfm.train.model import use_exact_fp32

    use_exact_fp32()  # on a GPU, float32 means float32: no TF32 in cuDNN's convolutions
    model = load_checkpoint(upstream_ckpt).model.eval()
    spec = ModelSpec()
    net = TritonLFM(model, spec.std, dtype=torch.float32).to(DEVICE)
    for b, h, w in ((2, 48, 64), (1, 51, 67)):
        x = torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, generator=gen(h))
        with torch.no_grad():
            got = net(x.to(DEVICE)).cpu().double()
            ref = model.double()(_normalised(x, spec))
            model.float()
        assert ref.abs().max() > 0.5  # real logits, not a collapsed model
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


@needs_cuda
def test_triton_lfm_on_the_gpu_scores_upstream_images_like_upstream(upstream_ckpt, reference_images):
    """At the real size: all reference images through the kernel pipeline, float32 and float16,
    against upstream's logits."""
    from lfm.kernels.triton_lfm import TritonLFM
    from lfm.runtime.preprocess import load_array
    from lfm.runtime.spec import ModelSpec
    from lfm.train.checkpoint import load_checkpoint

    from lfm.train.model import use_exact_fp32

    use_exact_fp32()  # float32 means float32 here: no TF32 in cuDNN's convolutions
    model = load_checkpoint(upstream_ckpt).model.eval()
    spec = ModelSpec()
    x = torch.from_numpy(np.stack([load_array(p, spec) for p, _, _ in reference_images])).cuda()
    ref = np.array([v for _, v, _ in reference_images])
    with torch.no_grad():
        got32 = TritonLFM(model, spec.std, dtype=torch.float32).cuda()(x).double().cpu().numpy()
        got16 = TritonLFM(model, spec.std).cuda()(x).double().cpu().numpy()
    np.testing.assert_allclose(got32, ref, rtol=1e-4, atol=2e-3)
    np.testing.assert_allclose(got16, ref, rtol=0, atol=0.2)
    sure = np.abs(ref) > 0.2
    assert ((got16 > 0) == (ref > 0))[sure].all()


# ---------------------------------------------------------------------------------------------
# Top-K pooling


def specials(shape, seed):
    """Small integers (many ties) with NaN, +-inf and -0.0 sprinkled in."""
    g = gen(seed)
    x = torch.randint(-3, 4, shape, generator=g).to(torch.float32)
    flat = x.view(-1)
    idx = torch.randperm(flat.numel(), generator=g)
    n = max(1, flat.numel() // 12)
    flat[idx[:n]] = float("nan")
    flat[idx[n:2 * n]] = float("-inf")
    flat[idx[2 * n:3 * n]] = float("inf")
    flat[idx[3 * n:4 * n]] = -0.0
    return x


TOPK_CASES = [  # shape, k, block (None: the wrapper's choice)
    ((2, 3, 4, 4), 16, None),  # H * W == K
    ((1, 2, 5, 7), 16, None),  # odd map, batch 1
    ((2, 2, 10, 10), 16, 16),  # 7 chunks of one block each: maps far larger than a block
    ((1, 2, 13, 17), 16, 64),  # 4 chunks, the last one partial
    ((1, 3, 9, 9), 5, 8),  # K not a power of two
    ((2, 2, 1, 1), 1, None),  # 1 x 1 maps, K = 1
    ((1, 2, 3, 5), 1, 4),
    ((1, 1, 30, 30), 16, None),  # the salience map of a 256 px input, one 1024-value chunk
]


@needs_kernel_device
@pytest.mark.parametrize("shape,k,block", TOPK_CASES)
def test_top_k_pool_matches_torch_topk(shape, k, block):
    for x in (torch.randn(*shape, generator=gen(sum(shape))), specials(shape, k)):
        same(top_k_pool(x.to(DEVICE), k, block=block), top_k_pool_reference(x, k))


SELECT_CASES = [c for c in TOPK_CASES if c[2] is None or c[2] >= c[0][2] * c[0][3]]


@needs_kernel_device
@pytest.mark.parametrize("shape,k,block", SELECT_CASES)
def test_top_k_pool_select_method_matches_torch_topk(shape, k, block):
    for x in (torch.randn(*shape, generator=gen(sum(shape) + 1)), specials(shape, k + 1)):
        same(top_k_pool(x.to(DEVICE), k, block=block, method="select"), top_k_pool_reference(x, k))
    x = specials((2, 2, 6, 6), 3).to(torch.float16)
    same(top_k_pool(x.to(DEVICE), 16, method="select"), top_k_pool_reference(x, 16))


def test_top_k_pool_select_needs_the_map_in_one_block():
    with pytest.raises(ValueError, match="whole map in one block"):
        top_k_pool(torch.zeros(1, 1, 80, 80), 16, method="select")  # 6400 values > 4096
    with pytest.raises(ValueError, match="method must be"):
        top_k_pool(torch.zeros(1, 1, 8, 8), 16, method="heap")


@needs_kernel_device
def test_top_k_pool_float16_and_all_nan_or_inf_maps():
    x = specials((2, 2, 6, 6), 3).to(torch.float16)
    same(top_k_pool(x.to(DEVICE), 16), top_k_pool_reference(x, 16))
    x = torch.full((1, 3, 4, 5), float("-inf"))
    x[0, 1] = float("nan")
    x[0, 2, 0, :3] = float("inf")
    same(top_k_pool(x.to(DEVICE), 16, block=16), top_k_pool_reference(x, 16))


@needs_kernel_device
def test_top_k_pool_matches_the_models_pooling():
    from lfm.train.model import TopKPool

    maps = torch.randn(2, 8, 7, 9, generator=gen(5))
    same(top_k_pool(maps.to(DEVICE), 16), TopKPool(16)(maps))


def test_top_k_pool_needs_k_values_per_map():
    with pytest.raises(ValueError, match=r"H \* W = 3 \* 5 = 15 values, fewer than k = 16"):
        top_k_pool(torch.zeros(1, 2, 3, 5), 16)
    with pytest.raises(ValueError, match="block must be a power of two"):
        top_k_pool(torch.zeros(1, 2, 8, 8, device=DEVICE or "cpu"), 16, block=8)
    with pytest.raises(TypeError, match="float32 or float16"):
        top_k_pool(torch.zeros(1, 2, 8, 8, dtype=torch.float64), 16)


# ---------------------------------------------------------------------------------------------
# AOT artifacts (compiled on the CPU; no GPU needed)

EXPECTED_TARGET = {80: "sm_80", 86: "sm_86", 89: "sm_89", 90: "sm_90a"}
DISTINCT_SCALE = (0.1, 0.2, 0.3)  # 0.1f = 0x3DCCCCCD, 0.2f = 0x3E4CCCCD, 0.3f = 0x3E99999A


@pytest.fixture(scope="module")
def artifacts():
    """Per arch: NPR (uint8 -> float32 NCHW) and Top-K (k = 16), as deployed; two variants on sm_90."""
    requests = []
    for arch in aot.ARCHS:
        requests.append(("npr", arch, dict(input_dtype="uint8", scale=DISTINCT_SCALE)))
        requests.append(("top_k_pool", arch, dict(k=16)))
    requests.append(("npr", "sm_90", dict(input_dtype="float32", out_dtype="float16", out_layout="NHWC")))
    requests.append(("top_k_pool", 90, dict(k=5, dtype="float16", block=64)))
    return aot.compile_many(requests)


def test_aot_artifacts_pin_the_ptx_isa_and_target(artifacts):
    assert aot.PTX_VERSION == 80
    for art in artifacts:
        version, target = aot.ptx_header(art.ptx)
        assert (version, art.ptx_version) == ("8.0", "8.0"), art.name
        assert target == art.target == EXPECTED_TARGET[art.arch], art.name
        assert len([line for line in art.ptx.splitlines() if line.strip().startswith(".version")]) == 1
        assert ".file" not in art.ptx and ".debug_" not in art.ptx  # no line info: no local paths, no DWARF


def test_aot_artifacts_follow_the_calling_convention(artifacts):
    for art in artifacts:
        if art.kind == "npr":
            assert art.params == ("x_ptr", "height", "width", "out_ptr")
            assert art.param_kinds == ("input", "scalar", "scalar", "output")
            types = [".u64", ".u32", ".u32", ".u64"]
        else:
            assert art.params == ("maps_ptr", "n", "out_ptr")
            assert art.param_kinds == ("input", "scalar", "output")
            types = [".u64", ".u32", ".u64"]
        ptx_params = aot.parse_ptx_params(art.ptx)
        assert [t for _, t in ptx_params] == types + [".u64"] * len(art.hidden_params), art.name
        assert art.hidden_params == aot.HIDDEN_PARAMS[: len(art.hidden_params)]
        assert art.name in art.ptx and f".reqntid {art.num_warps * 32}" in art.ptx
        assert art.block == (art.num_warps * 32, 1, 1) and art.shared_mem >= 0
        assert (art.inputs, art.outputs) == (art.params[:1], art.params[-1:])


def test_aot_bakes_scale_and_k_into_the_ptx(artifacts):
    npr80 = artifacts[0]
    assert npr80.constexprs["SCALE0"] == 0.1 and npr80.constexprs["IN_NHWC"] is True
    for bits in ("3DCCCCCD", "3E4CCCCD", "3E99999A"):  # PTX float immediates: 0f + IEEE bits
        assert f"0F{bits}" in npr80.ptx.upper()
    assert artifacts[1].constexprs == {"K": 16, "LOG_K": 4, "LOG_BLOCK": 10}
    assert artifacts[-1].constexprs["K"] == 5 and artifacts[-1].signature["maps_ptr"] == "*fp16"
    assert aot.artifact_stem(artifacts[0]) == "npr_u8nhwc_f32nchw_sm80"
    assert aot.artifact_stem(artifacts[-2]) == "npr_f32nchw_f16nhwc_sm90"


def test_ptxas_assembles_every_artifact(artifacts):
    from concurrent.futures import ThreadPoolExecutor

    tools = [(path, version) for path, version in aot.find_ptxas() if aot.ptx_isa_of_cuda(version) >= aot.PTX_VERSION]
    if not tools:
        pytest.skip("no ptxas here (neither Triton's bundled ones, $PATH nor $CUDA_HOME)")
    jobs = [(art, path, version) for art in artifacts for path, version in tools]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda job: aot.assemble(job[0], job[1]), jobs))
    for (art, path, version), (ok, log) in zip(jobs, results):
        assert ok, f"ptxas {version} ({path}) rejected {art.name} for {art.target}:\n{log}"


def test_aot_artifact_round_trips_through_json(artifacts, tmp_path):
    art = artifacts[1]
    path = art.save(tmp_path)
    assert aot.AotKernel.load(path) == art
    assert (tmp_path / "top_k_pool_k16_fp32_sm80.ptx").read_text() == art.ptx


def test_aot_refuses_what_would_abort_llvm_or_not_run():
    with pytest.raises(ValueError, match="too old for sm_90"):
        aot.compile_npr(90, scale=UINT8_SCALE, ptx_version=78)
    with pytest.raises(ValueError, match="unsupported arch"):
        aot.compile_top_k_pool("sm_75")
    with pytest.raises(ValueError, match="scale"):
        aot.compile_npr(80, input_dtype="uint8")
    with pytest.raises(ValueError, match="block must be a power of two"):
        aot.compile_top_k_pool(80, k=32, block=16)


class Sym:
    """Stands in for TensorRT's symbolic shape expressions: + - * // with the symbol on the left."""

    def __init__(self, text):
        self.text = text

    def _op(self, op, other):
        return Sym(f"({self.text} {op} {other.text if isinstance(other, Sym) else other})")

    def __add__(self, o): return self._op("+", o)
    def __sub__(self, o): return self._op("-", o)
    def __mul__(self, o): return self._op("*", o)
    def __floordiv__(self, o): return self._op("//", o)


def _eval(v, env):
    return eval(v.text, {}, env) if isinstance(v, Sym) else v


def test_launch_geometry_on_ints_and_symbols(artifacts):
    npr_art, top_art = artifacts[0], artifacts[1]
    grid, block, shared, extra = aot.npr_launch(npr_art, 256, 256, 256)
    assert (grid, block, shared, extra) == ((1, 128, 256), (npr_art.num_warps * 32, 1, 1), npr_art.shared_mem, (256, 256))
    assert aot.npr_launch(npr_art, 3, 255, 513)[0] == (2, 127, 3)  # 256 2x2 blocks a row: 2 programs of 128
    grid, block, shared, extra = aot.top_k_pool_launch(top_art, 256, 64, 30, 30)
    assert (grid, block, extra) == ((16384, 1, 1), (top_art.num_warps * 32, 1, 1), (900,))
    for launch, art, names, values in ((aot.npr_launch, npr_art, "bhw", (3, 255, 513)),
                                       (aot.top_k_pool_launch, top_art, "bchw", (2, 64, 62, 61))):
        env = dict(zip(names, values))
        symbolic = launch(art, *(Sym(n) for n in names))
        numeric = launch(art, *values)
        assert [tuple(_eval(v, env) for v in part) if isinstance(part, tuple) else part
                for part in symbolic] == list(numeric)
    with pytest.raises(ValueError, match="expected a npr artifact"):
        aot.npr_launch(top_art, 1, 2, 2)


# ---------------------------------------------------------------------------------------------
# Where triton was imported in compiled mode first and there is no GPU: the above in a child


@pytest.mark.skipif(DEVICE is not None, reason="the kernel tests run in this process")
def test_interpreter_tests_in_a_child_process():
    run_under_interpreter(Path(__file__), "not child_process and not aot and not ptxas and not launch_geometry", cwd=ROOT)


# ---------------------------------------------------------------------------------------------
# GPU only: the real sizes natively, and the AOT artifacts launched as TensorRT would


@needs_cuda
def test_native_kernels_at_the_real_sizes():
    g = torch.Generator(device="cuda").manual_seed(0)
    for b, h, w in ((4, 256, 256), (2, 255, 257), (1, 512, 384)):
        x = torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, device="cuda", generator=g)
        for out_dtype, layout in (("float32", "NCHW"), ("float16", "NHWC")):
            same(npr(x, UINT8_SCALE, out_dtype=out_dtype, out_layout=layout),
                 npr_reference(x, UINT8_SCALE, out_dtype=out_dtype, out_layout=layout))
    for shape in ((8, 64, 30, 30), (2, 64, 62, 62), (3, 64, 6, 5), (2, 64, 128, 128)):
        maps = torch.randn(*shape, device="cuda", generator=g)
        same(top_k_pool(maps, 16), top_k_pool_reference(maps, 16))
        same(top_k_pool(maps.half(), 16), top_k_pool_reference(maps.half(), 16))
        sp = specials(shape, 7).cuda()
        same(top_k_pool(sp, 16), top_k_pool_reference(sp, 16))
        if shape[2] * shape[3] <= 4096:
            for m in (maps, maps.half(), sp):
                same(top_k_pool(m, 16, method="select"), top_k_pool_reference(m, 16))


@needs_cuda
def test_aot_artifacts_launched_through_the_driver_as_tensorrt_would():
    pytest.importorskip("cuda.bindings.driver" if _has("cuda.bindings") else "cuda.cuda",
                        reason="cuda-python is not installed")
    from lfm.kernels import cuda_launch

    major, minor = torch.cuda.get_device_capability()
    arch = 10 * major + minor
    if arch not in aot.ARCHS:
        pytest.skip(f"this GPU is sm_{arch}; artifacts are built for {aot.ARCHS}")
    g = torch.Generator(device="cuda").manual_seed(1)
    for kw in (dict(input_dtype="uint8", scale=UINT8_SCALE),
               dict(input_dtype="uint8", scale=UINT8_SCALE, out_dtype="float16", out_layout="NHWC"),
               dict(input_dtype="float32", out_dtype="float32")):
        art = aot.compile_npr(arch, **kw)
        assert art.ptx_version == "8.0"
        for b, h, w in ((2, 256, 256), (3, 255, 257), (1, 48, 48)):
            if kw["input_dtype"] == "uint8":
                x = torch.randint(0, 256, (b, h, w, 3), dtype=torch.uint8, device="cuda", generator=g)
            else:
                x = torch.randn(b, 3, h, w, device="cuda", generator=g)
            got = cuda_launch.run_npr(art, x)
            torch.cuda.synchronize()
            same(got, npr_reference(x, kw.get("scale"), out_dtype=kw.get("out_dtype", "float32"),
                                    out_layout=kw.get("out_layout", "NCHW")))
    for k in (16, 5):
        art = aot.compile_top_k_pool(arch, k=k)
        for shape in ((256, 64, 30, 30), (2, 64, 62, 62), (1, 64, 4, 4), (2, 3, 1, k)):
            maps = torch.randn(*shape, device="cuda", generator=g)
            got = cuda_launch.run_top_k_pool(art, maps)
            torch.cuda.synchronize()
            same(got, top_k_pool_reference(maps, k))


@needs_cuda
def test_prebuilt_artifacts_from_the_cpu_build_machine():
    """LFM_AOT_DIR=DIR (from ``python -m lfm.kernels.aot --out DIR`` on any machine): launch those."""
    directory = os.environ.get("LFM_AOT_DIR")
    if not directory:
        pytest.skip("LFM_AOT_DIR not set (artifacts built elsewhere, e.g. on the CPU machine)")
    pytest.importorskip("cuda.bindings.driver" if _has("cuda.bindings") else "cuda.cuda",
                        reason="cuda-python is not installed")
    from lfm.kernels import cuda_launch

    major, minor = torch.cuda.get_device_capability()
    paths = sorted(Path(directory).glob(f"*_sm{10 * major + minor}.json"))
    assert paths, f"no artifacts for sm_{10 * major + minor} in {directory}"
    g = torch.Generator(device="cuda").manual_seed(2)
    for path in paths:
        art = aot.AotKernel.load(path)
        if art.kind == "npr":
            x = torch.randint(0, 256, (2, 255, 257, 3), dtype=torch.uint8, device="cuda", generator=g)
            scale = tuple(art.constexprs[f"SCALE{i}"] for i in range(3))
            same(cuda_launch.run_npr(art, x), npr_reference(x, scale))
        else:
            maps = torch.randn(8, 64, 30, 30, device="cuda", generator=g)
            same(cuda_launch.run_top_k_pool(art, maps), top_k_pool_reference(maps, art.constexprs["K"]))


def _has(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:
        return False


# ---------------------------------------------------------------------------------------------
# The runtime's kernel path: infer.py --checkpoint CKPT --kernels


def test_kernels_runtime_path_refuses_what_it_cannot_run(upstream_ckpt, monkeypatch, tmp_path):
    from lfm.runtime.backends import BackendError, make_runner
    from lfm.runtime.backends.pyt import TorchRunner

    with pytest.raises(BackendError, match="give --checkpoint"):
        make_runner(tmp_path / "x.onnx", kernels=True)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(BackendError, match="on a CUDA GPU"):
        TorchRunner(upstream_ckpt, device="cpu", kernels=True).activate()


def test_infer_with_kernels_scores_like_the_reference_backend(upstream_ckpt, reference_images, tmp_path):
    """infer.py --checkpoint CKPT --kernels (Triton's interpreter on the CPU, float32) against the
    plain PyTorch backend on the same files: the same records, logits within 1e-3."""
    import json

    files = [str(p) for p, _, _ in reference_images[:3]]
    runs = {}
    for name, extra, env in (("plain", [], {}), ("kernels", ["--kernels"], {"TRITON_INTERPRET": "1"})):
        r = subprocess.run([sys.executable, str(ROOT / "runtime" / "infer.py"), "--checkpoint", str(upstream_ckpt),
                            "--device", "cpu", "--size", "64", *extra, *files],
                           capture_output=True, text=True, env={**os.environ, **env}, timeout=600)
        assert r.returncode == 0, r.stderr
        runs[name] = [json.loads(line) for line in r.stdout.splitlines()]
    assert [r["path"] for r in runs["kernels"]] == [r["path"] for r in runs["plain"]] == files
    assert all(r["error"] is None for r in runs["kernels"])
    np.testing.assert_allclose([r["logit"] for r in runs["kernels"]], [r["logit"] for r in runs["plain"]],
                               rtol=1e-4, atol=1e-3)
    assert [r["label"] for r in runs["kernels"]] == [r["label"] for r in runs["plain"]]


@needs_cuda
def test_infer_with_kernels_on_the_gpu_scores_upstream_images_like_upstream(upstream_ckpt, reference_images):
    """infer.py --checkpoint CKPT --kernels --cuda-graphs on a GPU (float16), all reference images
    at upstream's preprocessing, against upstream's logits."""
    import json

    files = [str(p) for p, _, _ in reference_images]
    r = subprocess.run([sys.executable, str(ROOT / "runtime" / "infer.py"), "--checkpoint", str(upstream_ckpt),
                        "--kernels", "--cuda-graphs", "--batch-size", "32", *files],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["path"] for x in records] == files and all(x["error"] is None for x in records)
    got = np.array([x["logit"] for x in records])
    ref = np.array([v for _, v, _ in reference_images])
    np.testing.assert_allclose(got, ref, rtol=0, atol=0.2)
    sure = np.abs(ref) > 0.2
    assert ((got > 0) == (ref > 0))[sure].all()
