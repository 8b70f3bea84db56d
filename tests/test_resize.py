"""Pillow's resize on the GPU (lfm.kernels.resize): the numpy reference against Pillow itself on
many sizes, filters, boxes and the reference images, then the Triton kernel against Pillow.

The kernel runs as ``tests/test_kernels.py`` runs the others: without a GPU, in Triton's
interpreter on CPU tensors (TRITON_INTERPRET=1, set here before triton is first imported; if
triton was already imported in compiled mode, the kernel tests run in a child pytest:
``test_interpreter_tests_in_a_child_process``). With CUDA, natively, plus the real sizes.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


from interpreter import KernelPlaces, run_under_interpreter, use_interpreter_without_gpu  # noqa: E402

use_interpreter_without_gpu()

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

pytest.importorskip("triton", reason="the kernels need triton: pip install -e '.[kernels]'")

from lfm.kernels.resize import (  # noqa: E402
    PRECISION_BITS, center_crop, installed_pillow_version, normalize_coeffs_8bpc, pillow_resize_reference,
    precompute_coeffs, FILTERS, resample_pass_kernel, resize, resize_bilinear, resize_plan, tiles, vertical_first,
)

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT.parent / "shared" / "reference"
PLACES = KernelPlaces(resample_pass_kernel)  # where these tests run: the interpreter on CPU, or natively on the GPU
CUDA, INTERPRET, DEVICE = PLACES.cuda, PLACES.interpret, PLACES.device
needs_kernel_device, needs_cuda = PLACES.needs_kernel_device, PLACES.needs_cuda
PIL_FILTERS = {"bilinear": Image.BILINEAR, "box": Image.BOX, "hamming": Image.HAMMING,
               "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS}
BIG_TILES = {"block_out": 128, "block_across": 128}  # far fewer programs for the interpreter


def pillow(pixels: np.ndarray, out_w: int, out_h: int, filter: str = "bilinear", box=None) -> np.ndarray:
    """What the runtime's resize policy computes: Pillow itself, on an RGB (or L) image."""
    img = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    out = np.asarray(img.resize((out_w, out_h), PIL_FILTERS[filter], box=box))
    return out[..., None] if out.ndim == 2 else out


def random_pixels(rng, h, w, c=3) -> np.ndarray:
    return rng.integers(0, 256, (h, w, c), dtype=np.uint8)


def assert_same_bytes(got: np.ndarray, expected: np.ndarray, what: str):
    assert got.shape == expected.shape and got.dtype == expected.dtype, (what, got.shape, expected.shape)
    differ = got != expected
    assert not differ.any(), f"{what}: {int(differ.sum())} bytes differ, first at {np.argwhere(differ)[0]}"


def photo(name: str = "0_cyclegan_real.jpg") -> np.ndarray:
    path = REFERENCE / "cnndetection" / name
    if not path.exists():
        pytest.skip(f"reference image {path} is absent (../shared/reference)")
    return np.asarray(Image.open(path).convert("RGB"))


# Sizes that catch the edge cases: one-pixel edges, up and down, odd, extreme ratios, one pass only,
# tall and wide (the pass order), same size (a copy). (in_h, in_w, out_h, out_w)
EDGE_SIZES = [
    (1, 1, 1, 1), (1, 1, 256, 256), (1, 1, 3, 1), (1, 9, 1, 4), (9, 1, 4, 1), (1, 300, 1, 7), (300, 1, 7, 5),
    (7, 7, 256, 256), (7, 5, 256, 256), (2, 2, 3, 3), (3, 3, 2, 2), (256, 256, 1, 1), (256, 256, 1, 256),
    (255, 257, 256, 256), (356, 356, 256, 256), (357, 355, 255, 257), (256, 256, 256, 256),
    (256, 300, 256, 256), (300, 256, 256, 256), (145, 145, 15, 112), (332, 120, 251, 281),
    (3000, 40, 256, 256), (40, 3000, 256, 256), (3000, 7, 256, 256), (7, 3000, 256, 256),
    (505, 4, 37, 3), (2000, 3, 50, 2), (5, 640, 256, 256),
]


# ---------------------------------------------------------------------------------------------
# Host maths, checked by hand


def test_coefficients_of_a_halving_by_hand():
    # 4 -> 2 bilinear: scale 2, support 2; output 0: center 1.0, xmin = (int)(1 - 2 + 0.5) = 0,
    # xmax = (int)(1 + 2 + 0.5) = 3; weights filter((x - 1 + 0.5) / 2) = .75, .75, .25 -> / 1.75
    start, count, w = precompute_coeffs(4, 0.0, 4.0, 2, FILTERS["bilinear"])
    assert start.tolist() == [0, 1] and count.tolist() == [3, 3]
    np.testing.assert_array_equal(w[0, :3], np.array([0.75, 0.75, 0.25]) / 1.75)
    assert w.shape == (2, 5) and not w[:, 3:].any()  # ksize = ceil(2) * 2 + 1, the rest 0


def test_fixed_point_rounds_half_away_from_zero():
    one = 1 << PRECISION_BITS
    assert PRECISION_BITS == 22
    w = np.array([0.25, -0.25, 1.4 / one, 1.5 / one, -1.5 / one, -1.4 / one, 0.0, 1.0])
    assert normalize_coeffs_8bpc(w).tolist() == [one // 4, -one // 4, 1, 2, -2, -1, 0, one]


def test_pass_order_follows_the_pillow_version():
    # 145x145 -> 112x15: height shrinks over twice as much as width: Pillow >= 13 goes vertical first
    assert vertical_first(145, 145, 15, 112, (13, 0)) and not vertical_first(145, 145, 15, 112, (12, 3))
    # over 100 times taller than wide, height shrinking: Pillow 12.2 - 12.x goes vertical first
    assert vertical_first(505, 4, 37, 3, (12, 2)) and not vertical_first(505, 4, 37, 3, (12, 1))
    assert not vertical_first(356, 356, 256, 256, (13, 0))  # the reference JPEGs: horizontal first
    # the rule decides bytes: another version's order differs from the installed Pillow
    rng = np.random.default_rng(3)
    mine = installed_pillow_version()
    for sizes in ((145, 145, 15, 112), (505, 4, 37, 3)):  # (in_h, in_w, out_h, out_w)
        order = vertical_first(*sizes, mine)
        other = next(v for v in ((11, 3), (12, 3), (13, 0)) if vertical_first(*sizes, v) != order)
        in_h, in_w, out_h, out_w = sizes
        a = random_pixels(rng, in_h, in_w)
        expected = pillow(a, out_w, out_h)
        assert_same_bytes(pillow_resize_reference(a, out_w, out_h), expected, "installed version's order")
        assert (pillow_resize_reference(a, out_w, out_h, pillow_version=other) != expected).any()


def test_plan_trims_the_intermediate_to_the_rows_read():
    plan = resize_plan(100, 100, 10, 20, pillow_version=(12, 3))  # horizontal first
    first, last = plan.rows
    assert 0 <= first and last <= 100 and plan.vertical.start.min() == 0
    assert plan.vertical.start[-1] + plan.vertical.count[-1] == last - first
    # a box: only rows 40.5 .. 60 +- the support are resampled horizontally
    plan = resize_plan(100, 100, 5, 20, box=(0, 40.5, 100, 60), pillow_version=(12, 3))
    assert plan.rows == (39, 62)
    assert resize_plan(50, 60, 50, 60).crop == (0, 0)  # same size: a copy
    one_pass = resize_plan(50, 60, 50, 30)
    assert one_pass.vertical is None and one_pass.horizontal is not None


# ---------------------------------------------------------------------------------------------
# The numpy reference against Pillow


@pytest.mark.parametrize("in_h,in_w,out_h,out_w", EDGE_SIZES)
def test_reference_matches_pillow_at_edge_sizes(in_h, in_w, out_h, out_w):
    a = random_pixels(np.random.default_rng(in_h * 7 + in_w), in_h, in_w)
    assert_same_bytes(pillow_resize_reference(a, out_w, out_h), pillow(a, out_w, out_h),
                      f"{in_w}x{in_h}->{out_w}x{out_h}")


@pytest.mark.slow
def test_reference_matches_pillow_on_random_sizes():
    rng = np.random.default_rng(2024)
    for _ in range(300):
        in_h, in_w, out_h, out_w = (int(v) for v in rng.integers(1, 420, 4))
        a = random_pixels(rng, in_h, in_w, c=int(rng.choice([1, 3])))
        assert_same_bytes(pillow_resize_reference(a, out_w, out_h), pillow(a, out_w, out_h),
                          f"{in_w}x{in_h}x{a.shape[2]}->{out_w}x{out_h}")


@pytest.mark.slow
def test_reference_matches_pillow_from_3000_pixels():
    a = random_pixels(np.random.default_rng(0), 3000, 3000)
    assert_same_bytes(pillow_resize_reference(a, 256, 256), pillow(a, 256, 256), "3000x3000->256x256")


@pytest.mark.slow
@pytest.mark.parametrize("filter", ["box", "hamming", "bicubic", "lanczos"])
def test_reference_other_filters_match_pillow(filter):
    # same host recipe, other filter functions: negative lobes (bicubic, lanczos) exercise the
    # rounding of negative weights and the clip at 0 and 255
    rng = np.random.default_rng(len(filter))
    for _ in range(60):
        in_h, in_w, out_h, out_w = (int(v) for v in rng.integers(1, 300, 4))
        a = random_pixels(rng, in_h, in_w)
        assert_same_bytes(pillow_resize_reference(a, out_w, out_h, filter=filter), pillow(a, out_w, out_h, filter),
                          f"{filter} {in_w}x{in_h}->{out_w}x{out_h}")


@pytest.mark.parametrize("box,size", [
    ((10.5, 3.25, 100.0, 90.0), (40, 33)),  # fractional box, both passes
    ((7, 9, 57, 69), (50, 60)),  # integral box of the output's size: Pillow crops
    ((0, 1.5, 120, 99.5), (120, 30)),  # vertical pass only, fractional rows
    ((2, 0, 80, 100), (30, 100)),  # horizontal pass only, offset
    ((0.0, 0.0, 120.0, 100.0), (120, 300)),  # the default box spelled out, upsampling
    ((33.3, 20.7, 33.9, 21.2), (5, 4)),  # a box under one pixel
    # float32 boxes (Pillow's float box[4]): in double these three come out 1, 2 and 10 bytes off
    ((30.85, 13.01, 44.6, 45.03), (192, 9)), ((63.09, 1.89, 64.55, 99.1), (280, 57)),
])
def test_reference_box_matches_pillow(box, size):
    a = random_pixels(np.random.default_rng(1), 100, 343)
    assert_same_bytes(pillow_resize_reference(a, *size, box=box), pillow(a, *size, box=box), f"box {box} -> {size}")


@pytest.mark.slow
def test_reference_matches_pillow_on_the_reference_images():
    jpegs = sorted((REFERENCE / "cnndetection").glob("*.jpg")) + sorted((REFERENCE / "images").glob("*.png"))
    if not jpegs:
        pytest.skip(f"no reference images under {REFERENCE} (../shared/reference)")
    for path in jpegs:
        a = np.asarray(Image.open(path).convert("RGB"))
        for out_h, out_w in ((256, 256), (224, 224), (301, 199)):
            assert_same_bytes(pillow_resize_reference(a, out_w, out_h), pillow(a, out_w, out_h),
                              f"{path.name} -> {out_w}x{out_h}")


def test_float_bilinear_is_not_pillow():
    """Why bit-exactness is a claim at all: a float antialiased bilinear (what GPU libraries do)
    differs from Pillow on the reference JPEGs' own 356 -> 256 resize, the reference does not."""
    import torch.nn.functional as F

    a = photo()
    expected = pillow(a, 256, 256)
    x = torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float()
    y = F.interpolate(x, size=(256, 256), mode="bilinear", antialias=True, align_corners=False)
    float_bilinear = y.round().clamp(0, 255).to(torch.uint8)[0].permute(1, 2, 0).numpy()
    differ = (float_bilinear != expected).sum()
    assert differ > 1000 and np.abs(float_bilinear.astype(int) - expected).max() == 1, differ
    assert_same_bytes(pillow_resize_reference(a, 256, 256), expected, "reference")


# ---------------------------------------------------------------------------------------------
# The Triton kernel against Pillow (interpreter on the CPU, or the GPU)


KERNEL_SIZES = [  # (in_h, in_w, out_h, out_w): small, as the interpreter is slow
    (1, 1, 5, 3), (9, 1, 2, 4), (1, 40, 1, 17), (7, 7, 33, 40), (20, 30, 7, 45), (64, 48, 64, 20),
    (48, 64, 20, 64), (37, 41, 37, 41), (145, 145, 15, 112), (505, 4, 37, 3), (90, 70, 41, 33),
]


@pytest.mark.slow
@needs_kernel_device
@pytest.mark.parametrize("in_h,in_w,out_h,out_w", KERNEL_SIZES)
def test_kernel_matches_pillow(in_h, in_w, out_h, out_w):
    rng = np.random.default_rng(in_h * 31 + in_w)
    batch = np.stack([random_pixels(rng, in_h, in_w) for _ in range(2)])  # two different images
    got = resize_bilinear(torch.from_numpy(batch).to(DEVICE), out_h, out_w).cpu().numpy()
    expected = np.stack([pillow(a, out_w, out_h) for a in batch])
    assert_same_bytes(got, expected, f"{in_w}x{in_h}->{out_w}x{out_h}")


@pytest.mark.slow
@needs_kernel_device
def test_kernel_matches_pillow_on_random_sizes():
    rng = np.random.default_rng(11)
    for _ in range(20):
        in_h, in_w, out_h, out_w = (int(v) for v in rng.integers(1, 100, 4))
        a = random_pixels(rng, in_h, in_w, c=int(rng.choice([1, 3, 4])))
        got = resize_bilinear(torch.from_numpy(a).to(DEVICE), out_h, out_w)[0].cpu().numpy()
        assert_same_bytes(got, pillow_resize_reference(a, out_w, out_h), f"{in_w}x{in_h}x{a.shape[2]}->{out_w}x{out_h}")
        if a.shape[2] != 4:  # Pillow's RGBA premultiplies alpha: compare 4 channels with the reference only
            assert_same_bytes(got, pillow(a, out_w, out_h), f"{in_w}x{in_h}x{a.shape[2]}->{out_w}x{out_h}")


@pytest.mark.slow
@needs_kernel_device
@pytest.mark.parametrize("in_h,in_w", [(3000, 40), (40, 3000), (7, 5)])
def test_kernel_extreme_ratios_to_256(in_h, in_w):
    a = random_pixels(np.random.default_rng(in_h), in_h, in_w)
    got = resize_bilinear(torch.from_numpy(a).to(DEVICE), 256, 256, **BIG_TILES)[0].cpu().numpy()
    assert_same_bytes(got, pillow(a, 256, 256), f"{in_w}x{in_h}->256x256")


@pytest.mark.slow
@needs_kernel_device
def test_kernel_tiles_many_programs():
    # 8 x 8 tiles: many programs along both axes, partial tiles at the edges, both passes
    a = random_pixels(np.random.default_rng(5), 45, 39)
    got = resize(torch.from_numpy(a).to(DEVICE), 21, 27, block_out=8, block_across=8)
    assert_same_bytes(got[0].cpu().numpy(), pillow(a, 27, 21), "8x8 tiles")


@pytest.mark.slow
@needs_kernel_device
def test_kernel_matches_pillow_on_the_reference_jpegs():
    names = ["0_cyclegan_real.jpg", "100_cyclegan_fake.jpg", "103_deepfake_fake.jpg", "108_san_fake.jpg"]
    batch = np.stack([photo(n) for n in names])  # [4, 356, 356, 3]: the policy's real resize
    got = resize_bilinear(torch.from_numpy(batch).to(DEVICE), 256, 256, **BIG_TILES).cpu().numpy()
    for name, image, out in zip(names, batch, got):
        assert_same_bytes(out, pillow(image, 256, 256), name)


@pytest.mark.slow
@needs_kernel_device
@pytest.mark.parametrize("filter", ["bicubic", "lanczos"])
def test_kernel_negative_weights_and_a_box(filter):
    a = random_pixels(np.random.default_rng(9), 60, 50)
    a[10:20] = 255  # hard edges: the negative lobes overshoot, the clip to 0..255 matters
    a[30:40] = 0
    box = (3.5, 12.25, 47.0, 58.0)  # the horizontal pass makes input rows 11 .. 59 only (ybox)
    got = resize(torch.from_numpy(a).to(DEVICE), 41, 23, filter=filter, box=box)[0].cpu().numpy()
    assert_same_bytes(got, pillow(a, 23, 41, filter, box), f"{filter} box")


@needs_kernel_device
def test_kernel_shapes_channels_and_copies():
    a = random_pixels(np.random.default_rng(4), 12, 10, c=1)
    x = torch.from_numpy(a).to(DEVICE)
    got = resize(x, 5, 7)  # HWC in, NHWC out; one channel (Pillow's "L")
    assert got.shape == (1, 5, 7, 1) and got.dtype == torch.uint8
    assert_same_bytes(got[0].cpu().numpy(), pillow(a, 7, 5), "L")
    same = resize(x, 12, 10)  # same size: a copy, as Image.resize returns
    assert torch.equal(same[0], x) and same.data_ptr() != x.data_ptr()
    assert resize(torch.zeros(0, 4, 4, 3, dtype=torch.uint8, device=DEVICE), 2, 2).shape == (0, 2, 2, 3)
    # a non-contiguous view (a crop of a larger batch) resizes like its copy
    big = torch.from_numpy(random_pixels(np.random.default_rng(6), 30, 30)).to(DEVICE)
    view = big[3:20, 5:27]
    assert_same_bytes(resize(view, 8, 9)[0].cpu().numpy(), pillow(view.cpu().numpy().copy(), 9, 8), "view")


def test_resize_rejects_bad_inputs():
    u8 = torch.zeros(4, 4, 3, dtype=torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        resize(torch.zeros(4, 4, 3), 2, 2)
    with pytest.raises(ValueError, match=r"\[H, W, C\] or \[B, H, W, C\]"):
        resize(torch.zeros(4, 4, dtype=torch.uint8), 2, 2)
    with pytest.raises(ValueError, match="1 to 4 channels"):
        resize(torch.zeros(4, 4, 5, dtype=torch.uint8), 2, 2)
    with pytest.raises(ValueError, match="at least 1x1"):
        resize(u8, 0, 2)
    with pytest.raises(ValueError, match="unknown filter 'nearest'"):
        resize(u8, 2, 2, filter="nearest")
    with pytest.raises(ValueError, match="can't exceed"):
        resize(u8, 2, 2, box=(0, 0, 5, 4))
    with pytest.raises(ValueError, match="negative"):
        pillow_resize_reference(u8.numpy(), 2, 2, box=(-1, 0, 4, 4))
    with pytest.raises(ValueError, match="uint8 \\[H, W, C\\]"):
        pillow_resize_reference(np.zeros((4, 4, 3), np.float32), 2, 2)


# ---------------------------------------------------------------------------------------------
# No resampling: center-crop and tiles as slices, the same pixels as the CPU policies


def test_center_crop_and_tiles_are_the_policies_slices():
    from lfm.runtime.preprocess import apply_policy, to_tiles

    img = Image.fromarray(random_pixels(np.random.default_rng(8), 301, 517))
    x = torch.from_numpy(np.asarray(img).copy())
    assert_same_bytes(center_crop(x, 256).numpy(), np.asarray(apply_policy(img, "center-crop", 256)), "center-crop")
    assert_same_bytes(center_crop(x[None], 256)[0].numpy(), np.asarray(apply_policy(img, "center-crop", 256)), "NHWC")
    assert_same_bytes(tiles(x, 256).numpy(), to_tiles(img, 256), "tiles")
    assert_same_bytes(tiles(x, 128, max_tiles=3).numpy(), to_tiles(img, 128, max_tiles=3), "thinned tiles")
    with pytest.raises(ValueError, match="smaller than the 400x400 centre crop"):
        center_crop(x, 400)


# ---------------------------------------------------------------------------------------------
# Where triton was imported in compiled mode first and there is no GPU: the above in a child


@pytest.mark.skipif(DEVICE is not None, reason="the kernel tests run in this process")
def test_interpreter_tests_in_a_child_process():
    run_under_interpreter(Path(__file__), "kernel and not child_process", cwd=ROOT)


# ---------------------------------------------------------------------------------------------
# GPU code without a GPU: Triton compiles the kernel to PTX and, with its bundled ptxas, to cubin


COMPILE_CHECK = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from lfm.kernels.resize import resample_pass_kernel as fn
sig = {"src_ptr": "*u8", "start_ptr": "*i32", "count_ptr": "*i32", "weight_ptr": "*i32", "n_out": "i32",
       "n_across": "i32", "taps": "i32", "src_offset": "i64", "src_img": "i64", "src_along": "i32",
       "src_across": "i32", "dst_ptr": "*u8", "dst_img": "i64", "dst_along": "i32", "dst_across": "i32"}
const = {"C": 3, "CP": 4, "PRECISION_BITS": 22, "BLOCK_OUT": 32, "BLOCK_ACROSS": 32}
assert list(fn.arg_names) == [*sig, *const], fn.arg_names
src = ASTSource(fn, {**sig, **{k: "constexpr" for k in const}}, constexprs=const)
for arch in (80, 90):
    c = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4, "enable_fp_fusion": False})
    assert ".entry resample_pass_kernel" in c.asm["ptx"] and len(c.asm["cubin"]) > 1000
print("compiled")
"""


@pytest.mark.slow
def test_gpu_code_compiles_to_ptx_and_cubin():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", COMPILE_CHECK], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=600)
    assert r.returncode == 0 and "compiled" in r.stdout, r.stdout[-2000:] + r.stderr[-4000:]


# ---------------------------------------------------------------------------------------------
# GPU only: native, at the real sizes


@needs_cuda
def test_native_resize_at_the_real_sizes():
    g = torch.Generator(device="cuda").manual_seed(0)
    for b, in_h, in_w in ((64, 356, 356), (8, 768, 1024), (8, 1024, 768), (2, 3000, 2000), (4, 7, 7), (2, 4000, 30)):
        x = torch.randint(0, 256, (b, in_h, in_w, 3), dtype=torch.uint8, device="cuda", generator=g)
        got = resize_bilinear(x, 256, 256).cpu().numpy()
        for i in range(min(b, 4)):
            image = x[i].cpu().numpy()
            assert_same_bytes(got[i], pillow(image, 256, 256), f"{in_w}x{in_h} image {i}")
    jpegs = sorted((REFERENCE / "cnndetection").glob("*.jpg"))
    if jpegs:
        batch = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in jpegs])
        got = resize_bilinear(torch.from_numpy(batch).cuda(), 256, 256).cpu().numpy()
        for path, image, out in zip(jpegs, batch, got):
            assert_same_bytes(out, pillow(image, 256, 256), path.name)
