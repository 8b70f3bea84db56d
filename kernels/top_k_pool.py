"""Top-K pooling: salience maps [B, C, H, W] -> [B, C * K] (Triton kernel, wrapper, reference).

The K largest values of each map, sorted descending, channel-major: the same as
``torch.topk(maps.flatten(2), K, dim=-1).values.flatten(1)`` (``lfm.train.model.TopKPool``).

Ordering rule (documented, and what the tests check against ``torch.topk``):
  * NaN counts as larger than every number, +inf included (as ``torch.topk``); every NaN is
    returned as the canonical NaN 0x7fffffff (values only, so which NaN is not observable by
    value comparison).
  * -inf is an ordinary value, smaller than every finite one.
  * Ties: only values are returned, so the order among equal values does not matter. -0.0 and
    +0.0 are equal numbers but ordered -0.0 < +0.0 here (torch may return either sign where they tie).
  * H * W < K is an error (``ValueError`` naming the sizes): a map must hold K values.

How: each float is mapped to an int32 key whose integer order is that total order (the IEEE-754
bits, with the magnitude bits flipped for negative numbers and NaN mapped to INT32_MAX), so all
comparisons are exact integer ones, free of NaN's unordered compares. One program handles one
map; it walks the map in chunks of BLOCK values. Each chunk's top KP (KP = the power of two >= K)
comes from a bitonic top-k (sort runs of KP, then repeatedly keep the larger half of each
pair of runs and re-sort it), then merges with the running top KP (an elementwise max of the
running top, descending, and the chunk's, ascending, is a bitonic sequence holding the KP
largest of both; one bitonic merge sorts it). Maps of any size, from K values up, take the
same path; no shared memory, no atomics.

K is a ``tl.constexpr`` (baked into the compiled code, as the TensorRT AOT path needs).
Kernel parameters follow TensorRT's AOT calling convention: input pointer, int32 scalar, output pointer.
"""
from __future__ import annotations

import triton
import triton.language as tl

K_DEFAULT = 16
BLOCK = 1024  # values per chunk for the AOT kernel (the wrapper sizes it to the map)
NUM_WARPS = 1  # H200, [256, 64, 30, 30]: 6.2x torch.topk (2 warps: 3.6x); benchmarks/bench_kernels.py
PAD_KEY = -2147483647  # below the key of -inf (-2139095041); no float maps to it (NaN -> INT32_MAX)


@triton.jit
def top_k_pool_kernel(
    maps_ptr,  # input: float32 | float16 [B, C, H, W], contiguous: rows of n values
    n,  # int32: H * W, values per map
    out_ptr,  # output: [B, C * K], same dtype as the input
    K: tl.constexpr,  # values kept per map
    LOG_K: tl.constexpr,  # log2(KP), KP = the power of two >= K
    LOG_BLOCK: tl.constexpr,  # log2(BLOCK), values per chunk; BLOCK >= KP
):
    KP: tl.constexpr = 1 << LOG_K
    BLOCK: tl.constexpr = 1 << LOG_BLOCK
    row = tl.program_id(0).to(tl.int64)  # map index b * C + c
    src = maps_ptr + row * n

    top = tl.full([KP], -2147483647, tl.int32)  # running top KP keys, descending
    for start in range(0, n, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        inside = offs < n
        x = tl.load(src + offs, mask=inside, other=0.0).to(tl.float32)
        # float -> int32 key in the documented total order (NaN largest)
        bits = x.to(tl.int32, bitcast=True)
        key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
        key = tl.where(x != x, 0x7FFFFFFF, key)
        key = tl.where(inside, key, -2147483647)

        if LOG_K == 0:
            top = tl.maximum(top, tl.max(key, axis=0))
        else:
            # --- bitonic top-k of the chunk, on the hypercube [2] * LOG_BLOCK; the bit b of an
            # element's index is axis (ndims - 1 - b). Compare-and-swap on bit b: the partner is
            # h ^ xor_sum over that axis; the lower index keeps the smaller value unless flipped.
            h = tl.reshape(key, [2] * LOG_BLOCK)
            # 1) sort runs of KP, alternately ascending / descending (by bit `stage` of the index);
            #    a run as long as the whole chunk is sorted ascending
            for stage in tl.static_range(1, LOG_K + 1):
                if stage < LOG_BLOCK:
                    flip = tl.arange(0, 2)
                    for d in tl.static_range(LOG_BLOCK):
                        if d != LOG_BLOCK - 1 - stage:
                            flip = tl.expand_dims(flip, d)
                else:
                    flip = 0
                for sub in tl.static_range(stage):  # compare bit stage - 1 - sub
                    right = tl.arange(0, 2)
                    for d in tl.static_range(LOG_BLOCK):
                        if d != LOG_BLOCK - stage + sub:
                            right = tl.expand_dims(right, d)
                    partner = h ^ tl.xor_sum(h, axis=LOG_BLOCK - stage + sub, keep_dims=True)
                    h = tl.where((h > partner) != ((flip ^ right) == 1), partner, h)
            # 2) halve: the elementwise max of an ascending run and the descending run beside it
            #    holds the KP largest of the two (bitonic); re-sort it, alternating again, and
            #    ascending in the last round. After the max, h has LOG_BLOCK - level + LOG_K dims.
            for level in tl.static_range(LOG_K + 1, LOG_BLOCK + 1):
                h = tl.max(h, axis=LOG_BLOCK - level)
                if level < LOG_BLOCK:
                    flip2 = tl.arange(0, 2)
                    for d in tl.static_range(LOG_BLOCK - level + LOG_K):
                        if d != LOG_BLOCK - level - 1:
                            flip2 = tl.expand_dims(flip2, d)
                else:
                    flip2 = 0
                for sub in tl.static_range(LOG_K):  # compare bit LOG_K - 1 - sub
                    right2 = tl.arange(0, 2)
                    for d in tl.static_range(LOG_BLOCK - level + LOG_K):
                        if d != LOG_BLOCK - level + sub:
                            right2 = tl.expand_dims(right2, d)
                    partner2 = h ^ tl.xor_sum(h, axis=LOG_BLOCK - level + sub, keep_dims=True)
                    h = tl.where((h > partner2) != ((flip2 ^ right2) == 1), partner2, h)
            chunk = tl.reshape(h, [KP])  # the chunk's top KP, ascending
            # --- merge with the running top (descending): max is bitonic, sort it descending
            m = tl.reshape(tl.maximum(top, chunk), [2] * LOG_K)
            for sub in tl.static_range(LOG_K):  # compare bit LOG_K - 1 - sub, at axis sub
                right3 = tl.arange(0, 2)
                for d in tl.static_range(LOG_K):
                    if d != sub:
                        right3 = tl.expand_dims(right3, d)
                partner3 = m ^ tl.xor_sum(m, axis=sub, keep_dims=True)
                m = tl.where((m > partner3) != ((1 ^ right3) == 1), partner3, m)
            top = tl.reshape(m, [KP])

    # int32 key -> float (the map is its own inverse)
    bits = top ^ ((top >> 31) & 0x7FFFFFFF)
    vals = bits.to(tl.float32, bitcast=True)
    k = tl.arange(0, KP)
    tl.store(out_ptr + row * K + k, vals.to(out_ptr.dtype.element_ty), mask=k < K)


@triton.jit
def top_k_pool_select_kernel(
    maps_ptr,  # input: float32 | float16 [B, C, H, W], contiguous: rows of n values
    n,  # int32: H * W, values per map (n <= BLOCK: the whole map in registers)
    out_ptr,  # output: [B, C * K], same dtype as the input
    K: tl.constexpr,
    LOG_K: tl.constexpr,
    LOG_BLOCK: tl.constexpr,
):
    """The alternative to the bitonic kernel for maps that fit one chunk: K rounds of "take the
    largest, knock it out". Each value's int32 key (the same total order) goes into the high half
    of an int64 and its index into the low half, so every composite is unique: one max-reduction
    per round finds the value and exactly one occurrence to remove (ties keep their multiplicity)."""
    KP: tl.constexpr = 1 << LOG_K
    BLOCK: tl.constexpr = 1 << LOG_BLOCK
    row = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK)
    inside = offs < n
    x = tl.load(maps_ptr + row * n + offs, mask=inside, other=0.0).to(tl.float32)
    bits = x.to(tl.int32, bitcast=True)
    key = bits ^ ((bits >> 31) & 0x7FFFFFFF)
    key = tl.where(x != x, 0x7FFFFFFF, key)
    key = tl.where(inside, key, -2147483647)
    comp = (key.to(tl.int64) << 32) | (BLOCK - 1 - offs).to(tl.int64)
    slot = tl.arange(0, KP)
    top = tl.full([KP], -2147483647, tl.int32)
    for t in tl.static_range(K):
        best = tl.max(comp, axis=0)
        top = tl.where(slot == t, (best >> 32).to(tl.int32), top)
        comp = tl.where(comp == best, -9223372036854775807 - 1, comp)
    bits = top ^ ((top >> 31) & 0x7FFFFFFF)
    vals = bits.to(tl.float32, bitcast=True)
    tl.store(out_ptr + row * K + slot, vals.to(out_ptr.dtype.element_ty), mask=slot < K)


SELECT_MAX_BLOCK = 4096  # the select kernel holds the whole map in registers


def log2_ceil(v: int) -> int:
    return max(0, (int(v) - 1).bit_length())


def top_k_pool_grid(batch, channels):
    """Launch grid (x, y, z) of ``top_k_pool_kernel``: one program per map, (B * C, 1, 1).

    Only + - * // on the arguments (ints or TensorRT's symbolic shape expressions).
    """
    return (batch * channels, 1, 1)


def kernel_constexprs(k: int, block: int) -> dict:
    """The constexpr values of ``top_k_pool_kernel`` for K = k and chunks of ``block`` values."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    log_k, log_block = log2_ceil(k), log2_ceil(block)
    if 1 << log_block != block or log_block < log_k:
        raise ValueError(f"block must be a power of two >= {1 << log_k} (k = {k}), got {block}")
    return {"K": k, "LOG_K": log_k, "LOG_BLOCK": log_block}


def _check(maps, k: int):
    if maps.dim() != 4:
        raise ValueError(f"top_k_pool takes salience maps [B, C, H, W], got shape {tuple(maps.shape)}")
    h, w = maps.shape[2], maps.shape[3]
    if h * w < k:
        raise ValueError(f"top_k_pool: each map has H * W = {h} * {w} = {h * w} values, fewer than k = {k}")


def top_k_pool(maps, k: int = K_DEFAULT, *, block: int | None = None, num_warps: int | None = None,
               method: str = "bitonic"):
    """[B, C, H, W] float32 | float16 -> [B, C * k], the k largest of each map, descending.

    On CUDA tensors the kernel runs natively; on CPU tensors under TRITON_INTERPRET=1 in Triton's
    interpreter. ``block`` (values per chunk, a power of two >= k) and ``num_warps`` default to a
    size that fits the map. ``method``: "bitonic" (``top_k_pool_kernel``, any map size) or
    "select" (``top_k_pool_select_kernel``, maps of at most SELECT_MAX_BLOCK values, one chunk).
    """
    import torch

    from . import check_device

    _check(maps, k)
    if maps.dtype not in (torch.float32, torch.float16):
        raise TypeError(f"top_k_pool takes float32 or float16 maps, got {maps.dtype}")
    b, c, h, w = maps.shape
    if method not in ("bitonic", "select"):
        raise ValueError(f"method must be 'bitonic' or 'select', got {method!r}")
    if method == "select":
        block = max(1 << log2_ceil(k), triton.next_power_of_2(h * w)) if block is None else block
        if block < h * w or block > SELECT_MAX_BLOCK:
            raise ValueError(f"top_k_pool method='select' needs the whole map in one block of at most "
                             f"{SELECT_MAX_BLOCK} values; the map has {h * w}, block {block}")
    if block is None:  # the whole map in one chunk up to BLOCK values, then chunks of BLOCK
        block = max(1 << log2_ceil(k), min(BLOCK, triton.next_power_of_2(h * w)))
    constexprs = kernel_constexprs(k, block)
    if num_warps is None:
        num_warps = NUM_WARPS
    check_device(top_k_pool_kernel, maps)
    maps = maps.contiguous()
    out = torch.empty((b, c * k), dtype=maps.dtype, device=maps.device)
    if out.numel() == 0:
        return out
    # grid: one program per map (b, c)
    grid = top_k_pool_grid(b, c)
    kernel = top_k_pool_select_kernel if method == "select" else top_k_pool_kernel
    kernel[grid](maps, h * w, out, **constexprs, num_warps=num_warps, enable_fp_fusion=False)
    return out


def top_k_pool_reference(maps, k: int = K_DEFAULT):
    """Plain PyTorch: torch.topk over each flattened map, values only, flattened channel-major."""
    import torch

    _check(maps, k)
    return torch.topk(maps.flatten(2), k, dim=-1, largest=True, sorted=True).values.flatten(1)
