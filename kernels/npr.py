"""Fused NPR: raw pixels -> |NPR(x)| * scale in one pass (Triton kernel, wrapper, reference).

NPR(x) = x - nearest_up(x[..., ::2, ::2]): within every 2x2 block, each value minus the block's
top-left value. Odd sizes drop the last row / column first (the model's rule,
``lfm.train.model.NPR``), so an H x W image gives Ho x Wo = (H - H % 2) x (W - W % 2) values.

    input                       output
    uint8   [B, H, W, 3] NHWC   float32 | float16, [B, 3, Ho, Wo] NCHW or [B, Ho, Wo, 3] NHWC
    float32 [B, 3, H, W] NCHW   (same choices)

``scale`` is one float per channel. For uint8 input the export folds the normalisation into it:
|NPR((x / 255 - mean) / std)| = |NPR(x)| / (255 std) (the mean is constant over each 2x2 block,
see ``lfm.export.onnx_export.Uint8InputLFM``); for normalised float input it is 1.

One program handles one pair of rows (2i, 2i + 1) and BLOCK_W 2x2 blocks of one image: it reads
each input value it needs exactly once (the dropped odd row / column are never read), computes
the four residuals of each block from registers, and writes each output value once. The maths is
the reference's, in the same order (float32 subtract, abs, multiply by the float32 scale, then
one rounding to the output type), so kernel and reference agree bit for bit.

The per-channel scale is a ``tl.constexpr`` (baked into the compiled code), as the TensorRT AOT
path needs: a plugin's attributes are not serialised into an AOT engine (see ``lfm.kernels.aot``).
Kernel parameters follow TensorRT's AOT calling convention: input pointer, int32 scalars,
output pointer.
"""
from __future__ import annotations

import triton
import triton.language as tl

# Defaults shared by the wrapper and the AOT artifacts (lfm.kernels.aot).
BLOCK_W = 128  # 2x2 blocks per program along a row pair: a [4, BLOCK_W, 2] tile per input row
NUM_WARPS = 2  # H200, batch 256, 256 px: 93 % of copy bandwidth (4 warps: 88 %); benchmarks/bench_kernels.py
IN_LAYOUTS = {"uint8": "NHWC", "float32": "NCHW"}
OUT_DTYPES = ("float32", "float16")
OUT_LAYOUTS = ("NCHW", "NHWC")


@triton.jit
def npr_kernel(
    x_ptr,  # input: uint8 [B, H, W, 3] (IN_NHWC) or float32 [B, 3, H, W]
    height,  # int32 H of the input (odd allowed)
    width,  # int32 W of the input (odd allowed)
    out_ptr,  # output: [B, 3, Ho, Wo] or [B, Ho, Wo, 3] (OUT_NHWC), float32 or float16
    SCALE0: tl.constexpr,
    SCALE1: tl.constexpr,
    SCALE2: tl.constexpr,
    IN_NHWC: tl.constexpr,
    OUT_NHWC: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    pid_w = tl.program_id(0)  # which BLOCK_W run of 2x2 blocks along the row pair
    i = tl.program_id(1)  # row pair: input / output rows 2i and 2i + 1
    b = tl.program_id(2).to(tl.int64)  # image (int64: B * H * W * 3 may pass 2**31)

    w2 = width // 2  # 2x2 blocks per row pair
    ho = 2 * (height // 2)  # output height / width: the odd last row / column dropped
    wo = 2 * w2

    c = tl.arange(0, 4)[:, None, None]  # channel (3 of 4 lanes used)
    jb = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)[None, :, None]  # 2x2 block column
    s = tl.arange(0, 2)[None, None, :]  # column within the block
    j = 2 * jb + s  # column [4, BLOCK_W, 2]
    mask = (c < 3) & (jb < w2)
    r0 = 2 * i

    if IN_NHWC:
        row = 3 * width  # elements per input row
        top = x_ptr + (b * height + r0) * row + j * 3 + c
    else:
        row = width
        top = x_ptr + ((b * 3 + c) * height + r0) * row + j
    x0 = tl.load(top, mask=mask, other=0).to(tl.float32)  # row 2i
    x1 = tl.load(top + row, mask=mask, other=0).to(tl.float32)  # row 2i + 1
    anchor, _ = tl.split(x0)  # the top-left value of each block, [4, BLOCK_W]
    anchor = anchor[:, :, None]

    scale = tl.where(c == 0, SCALE0, tl.where(c == 1, SCALE1, SCALE2))
    y0 = tl.abs(x0 - anchor) * scale  # x0 - anchor at s = 0 is anchor - anchor, as the reference
    y1 = tl.abs(x1 - anchor) * scale

    if OUT_NHWC:
        orow = 3 * wo
        dst = out_ptr + (b * ho + r0) * orow + j * 3 + c
    else:
        orow = wo
        dst = out_ptr + ((b * 3 + c) * ho + r0) * orow + j
    tl.store(dst, y0.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + orow, y1.to(out_ptr.dtype.element_ty), mask=mask)


def npr_grid(batch, height, width, block_w=BLOCK_W):
    """Launch grid (x, y, z) of ``npr_kernel``: (ceil(W//2 / block_w), H // 2, B).

    Only + - * // on the arguments, so the same function works on ints and on TensorRT's
    symbolic shape expressions. Limits: H // 2 and B at most 65535 (CUDA's y / z grid limits).
    """
    return ((width // 2 + block_w - 1) // block_w, height // 2, batch)


def npr_out_shape(batch, height, width, out_layout="NCHW"):
    ho, wo = height - height % 2, width - width % 2
    return (batch, 3, ho, wo) if out_layout == "NCHW" else (batch, ho, wo, 3)


def _check_scale(scale, input_dtype: str) -> tuple[float, float, float]:
    if scale is None:
        if input_dtype == "float32":
            return (1.0, 1.0, 1.0)
        raise ValueError("uint8 input needs the per-channel scale 1 / (255 std); pass scale=(s0, s1, s2)")
    scale = tuple(float(v) for v in scale)
    if len(scale) != 3:
        raise ValueError(f"scale must hold one value per channel (3), got {len(scale)}")
    return scale


def npr(x, scale=None, *, out_dtype="float32", out_layout="NCHW", block_w: int | None = None,
        num_warps: int = NUM_WARPS):
    """|NPR(x)| * scale with the Triton kernel.

    x: uint8 [B, H, W, 3] (raw RGB, NHWC) or float32 [B, 3, H, W] (NCHW), on the GPU (or on the
    CPU under TRITON_INTERPRET=1, in Triton's interpreter). scale: 3 floats (default 1 for float
    input; required for uint8). Returns [B, 3, Ho, Wo] (NCHW) or [B, Ho, Wo, 3] (NHWC).
    """
    import torch

    from . import check_device

    input_dtype = {torch.uint8: "uint8", torch.float32: "float32"}.get(x.dtype)
    if input_dtype is None:
        raise TypeError(f"npr takes uint8 NHWC or float32 NCHW input, got {x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"npr takes a 4-d batch, got shape {tuple(x.shape)}")
    if input_dtype == "uint8" and x.shape[3] != 3:
        raise ValueError(f"uint8 input is [B, H, W, 3] (NHWC), got shape {tuple(x.shape)}")
    if input_dtype == "float32" and x.shape[1] != 3:
        raise ValueError(f"float32 input is [B, 3, H, W] (NCHW), got shape {tuple(x.shape)}")
    if out_layout not in OUT_LAYOUTS:
        raise ValueError(f"out_layout must be one of {OUT_LAYOUTS}, got {out_layout!r}")
    if str(out_dtype).replace("torch.", "") not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {OUT_DTYPES}, got {out_dtype!r}")
    s0, s1, s2 = _check_scale(scale, input_dtype)
    check_device(npr_kernel, x)
    x = x.contiguous()
    if input_dtype == "uint8":
        batch, height, width = x.shape[0], x.shape[1], x.shape[2]
    else:
        batch, height, width = x.shape[0], x.shape[2], x.shape[3]
    dtype = getattr(torch, str(out_dtype).replace("torch.", ""))
    out = torch.empty(npr_out_shape(batch, height, width, out_layout), dtype=dtype, device=x.device)
    if out.numel() == 0:
        return out
    if block_w is None:  # no wider than the row needs (powers of two from 16)
        block_w = min(BLOCK_W, max(16, triton.next_power_of_2(width // 2)))
    # grid: one program per (run of block_w 2x2 blocks, row pair, image)
    grid = npr_grid(batch, height, width, block_w)
    npr_kernel[grid](
        x, height, width, out,
        SCALE0=s0, SCALE1=s1, SCALE2=s2,
        IN_NHWC=input_dtype == "uint8", OUT_NHWC=out_layout == "NHWC", BLOCK_W=block_w,
        num_warps=num_warps, enable_fp_fusion=False,
    )
    return out


def npr_reference(x, scale=None, *, out_dtype="float32", out_layout="NCHW"):
    """Plain PyTorch: the model's NPR (lfm.train.model.NPR) on float32 NCHW, abs, times scale."""
    import torch
    import torch.nn.functional as F

    input_dtype = "uint8" if x.dtype == torch.uint8 else "float32"
    s = torch.tensor(_check_scale(scale, input_dtype), dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    x = x.permute(0, 3, 1, 2).to(torch.float32) if input_dtype == "uint8" else x.to(torch.float32)
    h, w = x.shape[-2], x.shape[-1]
    x = x[..., : h - h % 2, : w - w % 2]
    y = (x - F.interpolate(x[..., ::2, ::2], scale_factor=2.0, mode="nearest")).abs() * s
    if out_layout == "NHWC":
        y = y.permute(0, 2, 3, 1)
    return y.to(getattr(torch, str(out_dtype).replace("torch.", ""))).contiguous()
