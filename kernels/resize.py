"""Pillow's resize on the GPU, bit for bit (Triton kernel, wrapper, references).

``Image.resize((w, h), Image.BILINEAR)`` (the runtime's ``resize`` policy) is not a float
bilinear interpolation: Pillow's libImaging/Resample.c convolves with the filter widened by the
scale factor when shrinking (an antialiasing filter), in 22-bit fixed point, in two passes with
a rounding to uint8 in between. A float resize (``F.interpolate(..., antialias=True)``,
torchvision, CV-CUDA) lands within 1 of it, not on it; the model was trained on Pillow's bytes,
so this module runs Pillow's own integer algorithm:

1. Host, float64, per axis (``precompute_coeffs``, Resample.c): ``scale = (in1 - in0) / out``
   (``in1 - in0`` in float32: Pillow's box is ``float[4]``), ``filterscale = max(scale, 1)``,
   ``support = filter.support * filterscale``, ``ksize = ceil(support) * 2 + 1``; for output
   index ``xx``: ``center = in0 + (xx + 0.5) * scale``, ``xmin = max(0, (int)(center - support
   + 0.5))``, ``xmax = min(in_size, (int)(center + support + 0.5)) - xmin`` (a count), weights
   ``filter((x + xmin - center + 0.5) * (1 / filterscale))`` summed left to right into ``ww``
   and divided by it (when ``ww != 0``).
2. Host (``normalize_coeffs_8bpc``): each weight to int32 ``(int)(w * 2**22 + 0.5)``, or
   ``(int)(w * 2**22 - 0.5)`` when negative (C casts truncate toward zero). PRECISION_BITS = 22.
3. Device, horizontal pass (``ImagingResampleHorizontal_8bpc``): ``ss = 2**21 + sum k * pixel``
   in int32, ``clip8(ss) = clamp(ss >> 22, 0, 255)`` into a uint8 intermediate that holds only
   the rows the vertical pass reads (``ybox_first`` .. ``ybox_last`` of ImagingResampleInner).
4. Device, vertical pass on that intermediate, likewise.

Pillow 13 runs the vertical pass first (on the whole width, no trimming) when the height shrinks
over twice as much as the width, Pillow 12.2-12.x for images over 100 times taller than wide;
the intermediate rounding makes the order visible in the bytes, so the plan follows the
installed Pillow's rule (``vertical_first``; a ``pillow_version`` argument overrides it).
Passes are skipped as ImagingResampleInner does (``need_horizontal`` / ``need_vertical``), and
an integral box of the output's size is a plain crop (``_resize`` in _imaging.c), so a same-size
"resize" is a copy, as ``Image.resize`` returns.

One kernel, ``resample_pass_kernel``, runs either pass: it resamples along one axis of a uint8
NHWC batch given per-output ``start`` (xmin), ``count`` (xmax) and int32 ``weights`` rows, with
the strides saying which axis. Filters other than bilinear (box, hamming, bicubic, lanczos) are
only different host weights (``FILTERS``); the kernel is the same, and the int32 sum and clip
cover their negative lobes as Pillow's do.

    input   uint8 [H, W, C] or [B, H, W, C] (C channels resampled independently: Pillow's "L" and
            "RGB"; its "RGBA" / "LA" premultiply alpha first, which this does not)
    output  uint8 [B, out_h, out_w, C]

``pillow_resize_reference`` is the same algorithm in numpy int64 (independent of Triton; the
tests check it against Pillow first, then the kernel against Pillow). Center-crop and tiles
involve no resampling: ``center_crop`` and ``tiles`` below are slices of the device tensor.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import triton
import triton.language as tl

PRECISION_BITS = 32 - 8 - 2  # Resample.c: 8 bits of result, 2 for overflow and the sign
BLOCK_OUT = 32  # outputs along the resampled axis per program
BLOCK_ACROSS = 32  # positions along the other axis per program
NUM_WARPS = 4  # not tuned: no GPU was lent to the task that wrote this


# ---------------------------------------------------------------------------------------------
# Pillow's filters (Resample.c), vectorised in float64 with Pillow's operation order


def _bilinear(x):
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _box(x):
    return np.where((x > -0.5) & (x <= 0.5), 1.0, 0.0)


def _hamming(x):
    x = np.abs(x)
    px = x * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        # 0.54f and 0.46f are float constants in Resample.c, widened to double
        v = np.sin(px) / px * (float(np.float32(0.54)) + float(np.float32(0.46)) * np.cos(px))
    return np.where(x == 0.0, 1.0, np.where(x >= 1.0, 0.0, v))


def _bicubic(x):
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _sinc(x):
    px = x * math.pi
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(x == 0.0, 1.0, np.sin(px) / px)


def _lanczos(x):
    return np.where((-3.0 <= x) & (x < 3.0), _sinc(x) * _sinc(x / 3), 0.0)


@dataclass(frozen=True)
class Filter:
    function: Callable[[np.ndarray], np.ndarray]
    support: float


FILTERS = {
    "box": Filter(_box, 0.5),
    "bilinear": Filter(_bilinear, 1.0),
    "hamming": Filter(_hamming, 1.0),
    "bicubic": Filter(_bicubic, 2.0),
    "lanczos": Filter(_lanczos, 3.0),
}


# ---------------------------------------------------------------------------------------------
# Host: coefficients and the plan of passes (shared by the kernel wrapper and the numpy reference)


@dataclass(frozen=True, eq=False)  # compared and hashed by identity (cached device copies)
class AxisCoeffs:
    """One axis' resampling: output i reads inputs start[i] .. start[i] + count[i] - 1 with
    weights[i, :count[i]] (int32 fixed point; columns past count are 0)."""

    start: np.ndarray  # int32 [n_out]  (Pillow's bounds[2i], xmin)
    count: np.ndarray  # int32 [n_out]  (Pillow's bounds[2i + 1], xmax after `xmax -= xmin`)
    weights: np.ndarray  # int32 [n_out, taps], taps = max(count) (Pillow's ksize, trimmed)


def precompute_coeffs(in_size: int, in0: float, in1: float, out_size: int, filter: Filter):
    """Resample.c ``precompute_coeffs``: (xmin [n], count [n], float64 weights [n, ksize])."""
    in0, in1 = np.float32(in0), np.float32(in1)
    scale = float(in1 - in0) / out_size  # (double)(in1 - in0) / outSize, the subtraction in float
    filterscale = max(scale, 1.0)
    support = filter.support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = float(in0) + (np.arange(out_size, dtype=np.float64) + 0.5) * scale
    xmin = np.maximum(np.trunc(center - support + 0.5), 0).astype(np.int64)  # (int) truncates
    xmax = np.minimum(np.trunc(center + support + 0.5), in_size).astype(np.int64)
    count = xmax - xmin
    taps = np.arange(ksize)
    x = (xmin[:, None] + taps[None, :]).astype(np.float64)
    w = filter.function((x - center[:, None] + 0.5) * (1.0 / filterscale))
    w = np.where(taps[None, :] < count[:, None], w, 0.0)
    ww = np.zeros(out_size, dtype=np.float64)
    for t in range(ksize):  # left to right, as the C loop (numpy's sum is pairwise)
        ww += w[:, t]
    nonzero = ww != 0.0
    w[nonzero] /= ww[nonzero, None]
    return xmin, count, w


def normalize_coeffs_8bpc(weights: np.ndarray) -> np.ndarray:
    """Resample.c ``normalize_coeffs_8bpc``: float64 -> int32 with 22 fractional bits, rounded
    half away from zero ((int) truncates toward zero after adding +-0.5)."""
    one = float(1 << PRECISION_BITS)
    return np.trunc(np.where(weights < 0, -0.5 + weights * one, 0.5 + weights * one)).astype(np.int32)


def axis_coeffs(in_size, in0, in1, out_size, filter: Filter) -> AxisCoeffs:
    start, count, w = precompute_coeffs(in_size, in0, in1, out_size, filter)
    taps = max(1, int(count.max()))  # columns past every count are 0: not worth a loop turn
    return AxisCoeffs(start.astype(np.int32), count.astype(np.int32), normalize_coeffs_8bpc(w[:, :taps]))


@dataclass(frozen=True, eq=False)
class ResizePlan:
    """What Pillow does for one (input size, output size, box, filter, Pillow version). Either
    ``crop`` (left, top) is set (an integral box of the output's size: a slice), or the
    ``horizontal`` and/or ``vertical`` passes run, ``vertical_first`` or not. Horizontal first,
    that pass produces only input rows ``rows`` (ybox_first, ybox_last) and the vertical pass's
    ``start`` is relative to ``rows[0]``; vertical first, each pass reads its whole input."""

    out_h: int
    out_w: int
    crop: Optional[tuple[int, int]] = None
    horizontal: Optional[AxisCoeffs] = None
    vertical: Optional[AxisCoeffs] = None
    rows: tuple[int, int] = (0, 0)
    vertical_first: bool = False


def check_box(box, width: int, height: int) -> tuple[float, float, float, float]:
    """Pillow's ``box`` (left, top, right, bottom) as float32, its default the whole image, and
    _imaging.c's checks (ValueError)."""
    if box is None:
        box = (0, 0, width, height)
    if len(box) != 4:
        raise ValueError(f"box must be (left, top, right, bottom), got {box!r}")
    b0, b1, b2, b3 = (np.float32(v) for v in box)
    if b0 < 0 or b1 < 0:
        raise ValueError(f"box {tuple(box)}: offset can't be negative")
    if b2 > width or b3 > height:
        raise ValueError(f"box {tuple(box)}: can't exceed the {width}x{height} image")
    if b2 - b0 < 0 or b3 - b1 < 0:
        raise ValueError(f"box {tuple(box)}: can't be empty")
    return b0, b1, b2, b3


def installed_pillow_version() -> tuple[int, int]:
    """(major, minor) of the Pillow this process decodes with: the pass order depends on it."""
    import PIL

    major, minor = (int(v) for v in PIL.__version__.split(".")[:2])
    return major, minor


def vertical_first(in_h: int, in_w: int, out_h: int, out_w: int, pillow_version: tuple[int, int]) -> bool:
    """Whether that Pillow runs the vertical pass first (rounding to uint8 between the passes
    makes the order visible in the bytes):
    - >= 13.0, Resample.c ImagingResampleInner: ``horizontal_first = !((imIn->ysize - ysize) > 0
      && (imIn->ysize - ysize) > (imIn->xsize - xsize) * 2)`` (sizes, not the box);
    - 12.2 - 12.x, Image.resize: images over 100 times taller than wide whose height shrinks
      get two ``im.resize`` calls, vertical (whole width) then horizontal;
    - before 12.2: always horizontal first."""
    if pillow_version >= (13, 0):
        return in_h - out_h > 0 and in_h - out_h > (in_w - out_w) * 2
    if pillow_version >= (12, 2):
        return in_h > in_w * 100 and out_h < in_h
    return False


def resize_plan(in_h: int, in_w: int, out_h: int, out_w: int, filter: str = "bilinear",
                box: Optional[tuple] = None, pillow_version: Optional[tuple[int, int]] = None) -> ResizePlan:
    """The passes and coefficients of ``Image.resize((out_w, out_h), filter, box)`` on an
    in_w x in_h image, as the given Pillow version (default: the installed one) computes it.
    Cached: a datacenter stream has few distinct sizes."""
    version = installed_pillow_version() if pillow_version is None else tuple(pillow_version)[:2]
    return _resize_plan(int(in_h), int(in_w), int(out_h), int(out_w), filter,
                        None if box is None else tuple(box), version)


@functools.lru_cache(maxsize=256)
def _resize_plan(in_h, in_w, out_h, out_w, filter, box, pillow_version) -> ResizePlan:
    if filter not in FILTERS:
        raise ValueError(f"unknown filter {filter!r}; expected one of {sorted(FILTERS)}")
    if out_h < 1 or out_w < 1:
        raise ValueError(f"output size must be at least 1x1, got {out_w}x{out_h}")
    b0, b1, b2, b3 = check_box(box, in_w, in_h)
    # _imaging.c _resize: an integral box of exactly the output size is ImagingCrop
    if b0 == np.trunc(b0) and b2 - b0 == out_w and b1 == np.trunc(b1) and b3 - b1 == out_h:
        return ResizePlan(out_h, out_w, crop=(int(b0), int(b1)))
    f = FILTERS[filter]
    # ImagingResampleInner (it compares box[2], not the box's width, with xsize)
    need_horizontal = out_w != in_w or b0 != 0 or b2 != out_w
    need_vertical = out_h != in_h or b1 != 0 or b3 != out_h
    horizontal = axis_coeffs(in_w, b0, b2, out_w, f) if need_horizontal else None
    vertical = axis_coeffs(in_h, b1, b3, out_h, f)
    if vertical_first(in_h, in_w, out_h, out_w, pillow_version):
        # (12.2 - 12.x: the second im.resize may be a crop instead of the horizontal pass; with
        # an integral offset and scale 1 every filter's weights are exactly (0.., 1, ..0): the same)
        return ResizePlan(out_h, out_w, horizontal=horizontal, vertical=vertical if need_vertical else None,
                          rows=(0, in_h), vertical_first=True)
    first = int(vertical.start[0])  # ybox_first: the first input row the vertical pass reads
    last = int(vertical.start[-1]) + int(vertical.count[-1])  # ybox_last
    if horizontal is None:
        first, last = 0, in_h
    else:  # the intermediate holds rows first .. last - 1 only
        vertical = AxisCoeffs(vertical.start - np.int32(first), vertical.count, vertical.weights)
    return ResizePlan(out_h, out_w, horizontal=horizontal, vertical=vertical if need_vertical else None,
                      rows=(first, last))


# ---------------------------------------------------------------------------------------------
# Reference: the same algorithm in numpy int64, no Triton


def _clip8(ss: np.ndarray) -> np.ndarray:
    """Resample.c clip8: the lookup table maps ss >> 22 (arithmetic shift) to 0..255."""
    return np.clip(ss >> PRECISION_BITS, 0, 255).astype(np.uint8)


def _resample_axis(pixels: np.ndarray, coeffs: AxisCoeffs, axis: int) -> np.ndarray:
    """One pass along ``axis`` (0: rows, vertical; 1: columns, horizontal) of a [H, W, C] array."""
    x = np.moveaxis(pixels, axis, 0)  # a view, resampled axis first
    acc = np.full((len(coeffs.start),) + x.shape[1:], 1 << (PRECISION_BITS - 1), dtype=np.int64)
    last = x.shape[0] - 1
    for t in range(coeffs.weights.shape[1]):
        # taps past count have weight 0: any valid index will do for them
        idx = np.minimum(coeffs.start.astype(np.int64) + t, last)
        acc += x[idx].astype(np.int64) * coeffs.weights[:, t].astype(np.int64)[:, None, None]
    return np.moveaxis(_clip8(acc), 0, axis)


def pillow_resize_reference(pixels_uint8_hwc: np.ndarray, out_w: int, out_h: int, *,
                            filter: str = "bilinear", box=None, pillow_version=None) -> np.ndarray:
    """``np.asarray(Image.fromarray(pixels).resize((out_w, out_h), filter, box))``, bit for bit,
    in numpy int64 (note Pillow's argument order: width, then height). pixels: uint8 [H, W, C];
    ``pillow_version`` (major, minor), default the installed Pillow (see ``vertical_first``)."""
    a = np.asarray(pixels_uint8_hwc)
    if a.dtype != np.uint8 or a.ndim != 3:
        raise ValueError(f"pillow_resize_reference takes uint8 [H, W, C] pixels, got {a.dtype} {a.shape}")
    plan = resize_plan(a.shape[0], a.shape[1], out_h, out_w, filter, box, pillow_version)
    if plan.crop is not None:
        left, top = plan.crop
        return a[top:top + out_h, left:left + out_w].copy()
    if plan.vertical_first:
        if plan.vertical is not None:
            a = _resample_axis(a, plan.vertical, axis=0)
        if plan.horizontal is not None:
            a = _resample_axis(a, plan.horizontal, axis=1)
    else:
        if plan.horizontal is not None:
            a = _resample_axis(a[plan.rows[0]:plan.rows[1]], plan.horizontal, axis=1)
        if plan.vertical is not None:
            a = _resample_axis(a, plan.vertical, axis=0)
    return np.ascontiguousarray(a)


# ---------------------------------------------------------------------------------------------
# Kernel


@triton.jit
def resample_pass_kernel(
    src_ptr,  # uint8 input, NHWC (the pass's first row already folded into src_offset)
    start_ptr,  # int32 [n_out]: first input index of each output (xmin / ymin)
    count_ptr,  # int32 [n_out]: taps used by each output
    weight_ptr,  # int32 [n_out, taps]: 22-bit fixed-point weights, 0 past count
    n_out,  # int32 outputs along the resampled axis
    n_across,  # int32 length of the other axis
    taps,  # int32 weight columns
    src_offset,  # elements before the first input row used (ybox_first * W * C)
    src_img,  # strides in elements: image, resampled axis, other axis (channels: 1)
    src_along,
    src_across,
    dst_ptr,  # uint8 output, NHWC
    dst_img,
    dst_along,
    dst_across,
    C: tl.constexpr,  # channels
    CP: tl.constexpr,  # channel lanes: the power of two >= C
    PRECISION_BITS: tl.constexpr,
    BLOCK_OUT: tl.constexpr,
    BLOCK_ACROSS: tl.constexpr,
):
    pid_o = tl.program_id(0)  # which run of BLOCK_OUT outputs along the resampled axis
    pid_a = tl.program_id(1)  # which run of BLOCK_ACROSS positions along the other axis
    b = tl.program_id(2).to(tl.int64)  # image (int64: B * H * W * C may pass 2**31)

    o = pid_o * BLOCK_OUT + tl.arange(0, BLOCK_OUT)  # [BLOCK_OUT]
    a = pid_a * BLOCK_ACROSS + tl.arange(0, BLOCK_ACROSS)
    c = tl.arange(0, CP)
    o_in = o < n_out
    start = tl.load(start_ptr + o, mask=o_in, other=0)
    count = tl.load(count_ptr + o, mask=o_in, other=0)
    o3 = o[:, None, None]
    a3 = a[None, :, None]
    c3 = c[None, None, :]
    inside = (o3 < n_out) & (a3 < n_across) & (c3 < C)
    src = src_ptr + b * src_img + src_offset + a3 * src_across + c3

    # Pillow's int32 accumulator, starting at the rounding bias 1 << (PRECISION_BITS - 1)
    acc = tl.full([BLOCK_OUT, BLOCK_ACROSS, CP], 1 << (PRECISION_BITS - 1), tl.int32)
    for t in range(0, taps):
        used = o_in & (t < count)  # [BLOCK_OUT]
        k = tl.load(weight_ptr + o * taps + t, mask=used, other=0)
        pixel = tl.load(src + (start + t)[:, None, None] * src_along,
                        mask=inside & used[:, None, None], other=0)
        acc += pixel.to(tl.int32) * k[:, None, None]
    # clip8: arithmetic shift, then Pillow's lookup table is a clamp to 0..255
    y = tl.minimum(tl.maximum(acc >> PRECISION_BITS, 0), 255)
    dst = dst_ptr + b * dst_img + o3 * dst_along + a3 * dst_across + c3
    tl.store(dst, y.to(tl.uint8), mask=inside)


def resample_pass_grid(batch, n_out, n_across, block_out=BLOCK_OUT, block_across=BLOCK_ACROSS):
    """Launch grid (x, y, z) of ``resample_pass_kernel``: (ceil(n_out / block_out),
    ceil(n_across / block_across), B): one program per output tile of block_out x block_across
    pixels (all channels) of one image. n_out runs along the resampled axis (columns for the
    horizontal pass, rows for the vertical), n_across along the other. Limits: the y and z
    sizes at most 65535 (CUDA), i.e. n_across <= 65535 * block_across and B <= 65535."""
    return (triton.cdiv(n_out, block_out), triton.cdiv(n_across, block_across), batch)


def _block(n: int, default: int) -> int:
    return min(default, max(16, triton.next_power_of_2(n)))  # no wider than the axis needs


@functools.lru_cache(maxsize=512)
def _coeff_tensors(coeffs: AxisCoeffs, device):
    """The coefficients on ``device``, uploaded once per plan (plans are cached by size)."""
    import torch

    return tuple(torch.from_numpy(v).to(device) for v in (coeffs.start, coeffs.count, coeffs.weights))


def _run_pass(src, dst, coeffs: AxisCoeffs, axis: int, first_row: int, launch: dict):
    """Resample NHWC ``src`` along ``axis`` (1: rows, vertical; 2: columns, horizontal) into ``dst``,
    reading input rows from ``first_row`` on."""
    batch, _, width, channels = src.shape
    start, count, weights = _coeff_tensors(coeffs, str(src.device))
    n_out = dst.shape[axis]
    n_across = dst.shape[3 - axis]  # the other of axes 1 and 2
    block_out = _block(n_out, launch["block_out"] or BLOCK_OUT)
    block_across = _block(n_across, launch["block_across"] or BLOCK_ACROSS)
    # grid: one program per (block_out outputs along the axis, block_across across it, image)
    grid = resample_pass_grid(batch, n_out, n_across, block_out, block_across)
    resample_pass_kernel[grid](
        src, start, count, weights, n_out, n_across, weights.shape[1],
        first_row * width * channels, src.stride(0), src.stride(axis), src.stride(3 - axis),
        dst, dst.stride(0), dst.stride(axis), dst.stride(3 - axis),
        C=channels, CP=triton.next_power_of_2(channels), PRECISION_BITS=PRECISION_BITS,
        BLOCK_OUT=block_out, BLOCK_ACROSS=block_across, num_warps=launch["num_warps"],
    )


def resize(pixels, out_h: int, out_w: int, *, filter: str = "bilinear", box=None, pillow_version=None,
           block_out: Optional[int] = None, block_across: Optional[int] = None, num_warps: int = NUM_WARPS):
    """Pillow's ``resize((out_w, out_h), filter, box)`` with the Triton kernel, bit for bit.

    pixels: uint8 [H, W, C] or [B, H, W, C] (NHWC), on the GPU (or on the CPU under
    TRITON_INTERPRET=1, in Triton's interpreter); every image of a batch has the same size.
    ``pillow_version`` (major, minor): the Pillow to match, default the installed one (the pass
    order differs between versions: ``vertical_first``). ``block_out`` / ``block_across``: the
    tile (powers of two; larger tiles mean far fewer programs for the interpreter). Returns a new
    uint8 [B, out_h, out_w, C] tensor (also for a same-size "resize", as Pillow returns a copy)."""
    import torch

    from . import check_device

    if not isinstance(pixels, torch.Tensor) or pixels.dtype != torch.uint8 or pixels.dim() not in (3, 4):
        got = f"{pixels.dtype} {tuple(pixels.shape)}" if isinstance(pixels, torch.Tensor) else type(pixels).__name__
        raise ValueError(f"resize takes a uint8 [H, W, C] or [B, H, W, C] tensor, got {got}")
    x = pixels[None] if pixels.dim() == 3 else pixels
    batch, in_h, in_w, channels = x.shape
    if not 1 <= channels <= 4 or in_h < 1 or in_w < 1:
        raise ValueError(f"resize takes 1 to 4 channels (NHWC) of at least 1x1 pixels, got shape {tuple(pixels.shape)}")
    out_h, out_w = int(out_h), int(out_w)
    plan = resize_plan(in_h, in_w, out_h, out_w, filter, box, pillow_version)
    check_device(resample_pass_kernel, x)
    if plan.crop is not None:
        left, top = plan.crop
        return x[:, top:top + out_h, left:left + out_w].clone(memory_format=torch.contiguous_format)
    if batch == 0:
        return torch.empty((0, out_h, out_w, channels), dtype=torch.uint8, device=x.device)
    x = x.contiguous()
    steps = [_vertical_pass, _horizontal_pass] if plan.vertical_first else [_horizontal_pass, _vertical_pass]
    launch = {"block_out": block_out, "block_across": block_across, "num_warps": num_warps}
    y = x
    for step in steps:
        y = step(y, plan, launch)
    return x.clone() if y is x else y  # neither pass ran: a copy (ImagingCopy)


def _horizontal_pass(x, plan: ResizePlan, launch: dict):
    if plan.horizontal is None:
        return x
    # horizontal first: only the rows the vertical pass reads (ybox_first .. ybox_last)
    first, last = (0, x.shape[1]) if plan.vertical_first else plan.rows
    out = x.new_empty((x.shape[0], last - first, plan.out_w, x.shape[3]))
    _run_pass(x, out, plan.horizontal, axis=2, first_row=first, launch=launch)
    return out


def _vertical_pass(x, plan: ResizePlan, launch: dict):
    if plan.vertical is None:
        return x
    out = x.new_empty((x.shape[0], plan.out_h, x.shape[2], x.shape[3]))
    _run_pass(x, out, plan.vertical, axis=1, first_row=0, launch=launch)
    return out


def resize_bilinear(pixels, out_h: int, out_w: int, **kwargs):
    """``Image.resize((out_w, out_h), Image.BILINEAR)`` on uint8 HWC / NHWC pixels: see ``resize``."""
    return resize(pixels, out_h, out_w, filter="bilinear", **kwargs)


# ---------------------------------------------------------------------------------------------
# No resampling: center-crop and tiles are slices of the device tensor (no kernel needed)


def center_crop(pixels, size: int):
    """The central size x size of uint8 [..., H, W, C] pixels, as policy ``center-crop``
    (runtime/preprocess.py: left = (W - size) // 2, top = (H - size) // 2); a view."""
    h, w = pixels.shape[-3], pixels.shape[-2]
    if h < size or w < size:
        raise ValueError(f"{w}x{h} is smaller than the {size}x{size} centre crop; score it at its native size with policy "
                         "'none' or 'tiles'")  # as preprocess.apply_policy: never advise enlarging
    left, top = (w - size) // 2, (h - size) // 2
    return pixels[..., top:top + size, left:left + size, :]


def tiles(pixels, size: int, max_tiles: Optional[int] = None):
    """Policy ``tiles`` of one uint8 [H, W, C] image as [N, h, w, C]: the boxes of
    ``lfm.runtime.preprocess.tile_boxes``, stacked slices (a copy on the tensor's device)."""
    import torch

    from lfm.runtime.preprocess import DEFAULT_MAX_TILES, tile_boxes

    h, w = pixels.shape[0], pixels.shape[1]
    boxes = tile_boxes(w, h, size, DEFAULT_MAX_TILES if max_tiles is None else max_tiles)
    return torch.stack([pixels[t:b, l:r] for l, t, r, b in boxes])
