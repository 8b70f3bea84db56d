"""The network's stem in one pass: raw uint8 pixels -> |NPR| -> conv 2x2 (3 -> 64, BatchNorm folded)
-> 2x2 max-pool -> ReLU (Triton kernel, wrapper, reference).

Why: on a GPU the first layer is the costly one for its size. Its convolution has 3 input channels
(too few for tensor cores) and writes 255 x 255 x 64 values per 256 px image, which the max-pool
then reads back: far more memory traffic than arithmetic. Here each program computes a run of
pooled outputs for all 64 channels in registers, so only the pooled tensor (a quarter of the
convolution's output) is ever written, and the |NPR| values are never stored at all.

    input   uint8 [B, H, W, 3] (raw RGB, NHWC; odd H / W allowed: NPR drops the last row / column)
    output  [B, Hp, Wp, 64] float16 | float32, NHWC (= a channels-last [B, 64, Hp, Wp] tensor)
            Hp = (H' - 1) // 2, Wp = (W' - 1) // 2 with H' = H - H % 2, W' = W - W % 2

Maths, per pooled output (py, px) and channel o:
    relu(max over (a, b) in {0,1}^2 of  bias[o] + sum_{ky, kx, c} w[o, c, ky, kx] * s[c] * |NPR(x)|[c, 2py + a + ky, 2px + b + kx])
the eval-mode conv + BN + ReLU + max-pool of ``lfm.train.model`` (ReLU after the pool: it is
monotone, so the order does not matter; see ``FusedSNet``). ``s`` is the per-channel scale of the
uint8 fold (1 / (255 std)), folded into the weights by the wrapper. NPR at (even row, even col)
is 0 by definition (a value minus itself), so those taps are skipped at compile time: 9 of the 12
taps remain for each of the 4 pool positions. Accumulation is float32.
"""
from __future__ import annotations

import triton
import triton.language as tl

BLOCK_P = 32  # pooled outputs per program (along a row), all C_OUT channels each
NUM_WARPS = 4


@triton.jit
def npr_stem_kernel(
    x_ptr,  # uint8 [B, H, W, 3]
    w_ptr,  # float32 [12, C_OUT]: row (ky * 2 + kx) * 3 + c holds w[:, c, ky, kx] * scale[c] (BN folded)
    bias_ptr,  # float32 [C_OUT] (BN folded)
    height,  # int32 H of the input
    width,  # int32 W of the input
    out_ptr,  # [B, Hp, Wp, C_OUT], float16 or float32
    C_OUT: tl.constexpr,
    BLOCK_P: tl.constexpr,
):
    pid_p = tl.program_id(0)  # which run of BLOCK_P pooled columns
    py = tl.program_id(1)  # pooled row
    b = tl.program_id(2).to(tl.int64)  # image

    hp = ((height - height % 2) - 1) // 2
    wp = ((width - width % 2) - 1) // 2
    px = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)  # [BLOCK_P]
    mask = px < wp
    co = tl.arange(0, C_OUT)  # [C_OUT]
    bias = tl.load(bias_ptr + co)
    img = x_ptr + b * height * width * 3

    best = tl.full([BLOCK_P, C_OUT], float("-inf"), tl.float32)
    for a in tl.static_range(2):  # position in the 2x2 pool window
        for bb in tl.static_range(2):
            acc = tl.zeros([BLOCK_P, C_OUT], tl.float32) + bias[None, :]
            for ky in tl.static_range(2):  # conv tap
                for kx in tl.static_range(2):
                    # NPR row / column parity is known at compile time: (a + ky) % 2, (bb + kx) % 2
                    if (a + ky) % 2 + (bb + kx) % 2 != 0:  # else NPR is 0 here: skip the tap
                        i = 2 * py + a + ky  # NPR row (< H' always)
                        j = 2 * px + bb + kx  # NPR columns [BLOCK_P]
                        ai = i - (a + ky) % 2  # the 2x2 block's top-left: the anchor
                        aj = j - (bb + kx) % 2
                        for c in tl.static_range(3):
                            v = tl.load(img + (i * width + j) * 3 + c, mask=mask, other=0).to(tl.float32)
                            anchor = tl.load(img + (ai * width + aj) * 3 + c, mask=mask, other=0).to(tl.float32)
                            wrow = tl.load(w_ptr + ((ky * 2 + kx) * 3 + c) * C_OUT + co)
                            acc += tl.abs(v - anchor)[:, None] * wrow[None, :]
            best = tl.maximum(best, acc)
    y = tl.maximum(best, 0.0)
    dst = out_ptr + ((b * hp + py) * wp + px[:, None]) * C_OUT + co[None, :]
    tl.store(dst, y.to(out_ptr.dtype.element_ty), mask=mask[:, None])


def npr_stem_grid(batch, height, width, block_p=BLOCK_P):
    """Launch grid (x, y, z): (ceil(Wp / block_p), Hp, B), one program per run of pooled columns."""
    hp = ((height - height % 2) - 1) // 2
    wp = ((width - width % 2) - 1) // 2
    return ((wp + block_p - 1) // block_p, hp, batch)


def stem_weights(conv, bn, scale):
    """(w [12, C_OUT] float32, bias [C_OUT] float32): conv1 with its BatchNorm folded (eval mode) and
    the per-channel input scale folded into the weights, in the kernel's tap-major layout."""
    import torch

    with torch.no_grad():
        g = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        w = conv.weight.double() * g.view(-1, 1, 1, 1)  # [C_OUT, 3, 2, 2]
        w = w * torch.tensor(scale, dtype=torch.float64, device=w.device).view(1, 3, 1, 1)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(g)
        bias = (bias - bn.running_mean.double()) * g + bn.bias.double()
        w = w.permute(2, 3, 1, 0).reshape(12, -1)  # [ky, kx, c, o] -> rows (ky * 2 + kx) * 3 + c
    return w.float().contiguous(), bias.float().contiguous()


def npr_stem(x, weight, bias, *, out_dtype="float16", block_p: int = BLOCK_P, num_warps: int = NUM_WARPS):
    """uint8 [B, H, W, 3] -> [B, Hp, Wp, C_OUT] (NHWC) with the Triton kernel; weight / bias from
    ``stem_weights``. Returns the NHWC tensor; ``.permute(0, 3, 1, 2)`` is the channels-last NCHW view."""
    import torch

    from . import check_device

    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[3] != 3:
        raise ValueError(f"npr_stem takes uint8 [B, H, W, 3], got {x.dtype} {tuple(x.shape)}")
    c_out = weight.shape[1]
    if weight.shape != (12, c_out) or bias.shape != (c_out,) or c_out & (c_out - 1):
        raise ValueError(f"npr_stem takes weight [12, C] and bias [C] (C a power of two), got "
                         f"{tuple(weight.shape)} and {tuple(bias.shape)}")
    b, h, w = x.shape[0], x.shape[1], x.shape[2]
    hp, wp = (h - h % 2 - 1) // 2, (w - w % 2 - 1) // 2
    if hp < 1 or wp < 1:
        raise ValueError(f"npr_stem: a {h} x {w} input gives no pooled output (at least 4 x 4 needed)")
    check_device(npr_stem_kernel, x)
    dtype = getattr(torch, str(out_dtype).replace("torch.", ""))
    out = torch.empty((b, hp, wp, c_out), dtype=dtype, device=x.device)
    # grid: one program per (run of block_p pooled columns, pooled row, image)
    npr_stem_kernel[npr_stem_grid(b, h, w, block_p)](
        x.contiguous(), weight.contiguous().float(), bias.contiguous().float(), h, w, out,
        C_OUT=c_out, BLOCK_P=block_p, num_warps=num_warps)
    return out


def npr_stem_reference(x, conv, bn, scale, *, out_dtype="float32"):
    """Plain PyTorch, the model's own modules in float64: |NPR| * scale -> conv -> BN -> ReLU ->
    max-pool, returned NHWC."""
    import torch
    import torch.nn.functional as F

    x = x.permute(0, 3, 1, 2).double()
    h, w = x.shape[-2], x.shape[-1]
    x = x[..., : h - h % 2, : w - w % 2]
    r = (x - F.interpolate(x[..., ::2, ::2], scale_factor=2.0, mode="nearest")).abs()
    r = r * torch.tensor(scale, dtype=torch.float64, device=x.device).view(1, 3, 1, 1)
    y = F.conv2d(r, conv.weight.double(), None if conv.bias is None else conv.bias.double())
    y = F.batch_norm(y, bn.running_mean.double(), bn.running_var.double(), bn.weight.double(), bn.bias.double(),
                     False, 0.0, bn.eps)
    y = F.max_pool2d(F.relu(y), 2, 2)
    return y.permute(0, 2, 3, 1).to(getattr(torch, str(out_dtype).replace("torch.", ""))).contiguous()
