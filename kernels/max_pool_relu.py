"""2x2 max-pool then ReLU in one pass over a channels-last tensor (Triton kernel, wrapper, reference).

    input   [B, C, H, W] in channels-last memory (NHWC), float16 | float32, C a power of two
    output  [B, C, H // 2, W // 2], channels-last, same dtype (odd H / W: the last row / column
            is dropped, as ``F.max_pool2d(x, 2, 2)``)

Why: after each of LFM's convolutions 2-3 PyTorch runs max-pool and ReLU as two kernels, and its
channels-last max-pool reached about 950 GB/s on an H200 (benchmarks/profile_gpu.py), a quarter
of the copy bandwidth: together they took a third of the forward pass. Here each program reads
a [BLOCK_W, C] tile from each of the two input rows of one pooled row (contiguous along C:
wide loads), takes the max of the four values of every window, clamps at 0, and writes once.
NaN propagates like PyTorch's (max and ReLU of NaN are NaN).
"""
from __future__ import annotations

import triton
import triton.language as tl

TILE = 2048  # elements per program: BLOCK_W pooled columns x C channels
NUM_WARPS = 4


@triton.jit
def max_pool_relu_kernel(
    x_ptr,  # [B, H, W, C] (NHWC memory)
    height,  # int32 H
    width,  # int32 W
    out_ptr,  # [B, H // 2, W // 2, C]
    C: tl.constexpr,
    BLOCK_W: tl.constexpr,
):
    pid_w = tl.program_id(0)  # run of BLOCK_W pooled columns
    py = tl.program_id(1)  # pooled row
    b = tl.program_id(2).to(tl.int64)  # image
    hp = height // 2
    wp = width // 2
    px = pid_w * BLOCK_W + tl.arange(0, BLOCK_W)[:, None]  # [BLOCK_W, 1]
    c = tl.arange(0, C)[None, :]  # [1, C]
    mask = (px < wp) & (c < C)
    row = width * C  # elements per input row
    src = x_ptr + (b * height + 2 * py) * row + (2 * px) * C + c
    a = tl.load(src, mask=mask, other=0.0)
    m = tl.maximum(a, tl.load(src + C, mask=mask, other=0.0), propagate_nan=tl.PropagateNan.ALL)
    m = tl.maximum(m, tl.load(src + row, mask=mask, other=0.0), propagate_nan=tl.PropagateNan.ALL)
    m = tl.maximum(m, tl.load(src + row + C, mask=mask, other=0.0), propagate_nan=tl.PropagateNan.ALL)
    y = tl.maximum(m, 0.0, propagate_nan=tl.PropagateNan.ALL)
    dst = out_ptr + ((b * hp + py) * wp + px) * C + c
    tl.store(dst, y.to(out_ptr.dtype.element_ty), mask=mask)


def max_pool_relu_grid(batch, height, width, block_w):
    """(ceil((W // 2) / block_w), H // 2, B): one program per run of pooled columns of a pooled row."""
    return ((width // 2 + block_w - 1) // block_w, height // 2, batch)


def max_pool_relu(x, *, num_warps: int = NUM_WARPS):
    """relu(max_pool2d(x, 2, 2)) for a channels-last [B, C, H, W] tensor; returns channels-last."""
    import torch

    from . import check_device

    if x.dim() != 4 or x.dtype not in (torch.float16, torch.float32):
        raise ValueError(f"max_pool_relu takes a float16/float32 [B, C, H, W] tensor, got {x.dtype} {tuple(x.shape)}")
    b, c, h, w = x.shape
    if c & (c - 1):
        raise ValueError(f"max_pool_relu needs a power-of-two channel count, got {c}")
    check_device(max_pool_relu_kernel, x)
    x = x.contiguous(memory_format=torch.channels_last)
    out = torch.empty((b, c, h // 2, w // 2), dtype=x.dtype, device=x.device, memory_format=torch.channels_last)
    if out.numel() == 0:
        return out
    block_w = max(1, TILE // c)
    # grid: one program per (run of block_w pooled columns, pooled row, image)
    max_pool_relu_kernel[max_pool_relu_grid(b, h, w, block_w)](x, h, w, out, C=c, BLOCK_W=block_w, num_warps=num_warps)
    return out


def max_pool_relu_reference(x):
    """Plain PyTorch: F.relu(F.max_pool2d(x, 2, 2)), channels-last out."""
    import torch
    import torch.nn.functional as F

    return F.relu(F.max_pool2d(x, 2, 2)).contiguous(memory_format=torch.channels_last)
