"""Decoding JPEGs on the GPU (nvJPEG through torchvision), the CPU decoder for everything else
(issue 17, item 4). ``Detector(..., decode="gpu")``, ``infer.py --decode gpu``.

    dec = GpuDecoder(spec, max_pixels, max_tiles)   # refuses in one line without torch+CUDA+torchvision
    t = dec.submit("a.jpg")                          # queued; decoded in batches
    arrays, error, facts = dec.result(t)             # uint8 [N, h, w, 3] (host), or None and the problem

Which files go to the GPU: baseline (sequential) 3-channel JPEGs whose header Pillow reads,
that end in an EOI marker (a truncated file is left to the CPU decoder, which names it), carry
no EXIF rotation (the CPU path applies it) and are within ``max_pixels`` (and, for policy
center-crop, large enough to crop; never too small to score). PNG, progressive, greyscale or CMYK JPEGs, anything nvJPEG
refuses (a batch that fails is retried file by file) and anything that fails on the device go
through ``preprocess.load_tiles``, the CPU path itself, per file: the same records, the same
error messages, the same order. A file decoded on the device gets its ``flags.ImageFacts`` from
its header (size, quantization tables) by ``preprocess.image_facts``, the CPU path's own rule.

On the device: ``torchvision.io.decode_jpeg(list_of_uint8_tensors, device="cuda")`` decodes a
batch; policy resize runs ``lfm.kernels.resize.resize_bilinear`` (Pillow's BILINEAR bit for bit),
center-crop and tiles are slices. The batch's arrays come back to the host with one
synchronisation (a 256 px image is 192 kB), so every runner takes them as from the CPU path.

Fidelity: nvJPEG's IDCT and chroma up-sampling are not libjpeg-turbo's, so its pixels differ by a
few levels and scores move slightly (benchmarks/gpu_checks.sh measures flips and max |dlogit| on
the reference JPEGs). CPU decoding stays the default.
"""
from __future__ import annotations

import io
import warnings
from typing import Callable

import numpy as np
from PIL import Image

from .flags import image_jpeg_quality
from .preprocess import Decoded, ImageError, image_facts, load_tiles_or_problem, read_image_bytes
from .spec import ModelSpec, too_small_to_score

DECODE_BATCH = 64  # files per nvJPEG call
EXIF_ORIENTATION = 0x0112


class GpuDecodeUnavailable(ValueError):
    """decode="gpu" cannot run here (no torch, no CUDA GPU, or no torchvision)."""


def nvjpeg_decoder(device) -> Callable:
    """torchvision's batched GPU decoder for ``device``; GpuDecodeUnavailable (one line) where
    torch with CUDA or torchvision is missing."""
    hint = "use decode 'threads' or 'processes' (CPU decoding)"
    try:
        import torch
    except ImportError:
        raise GpuDecodeUnavailable(f"decode 'gpu' needs PyTorch with a CUDA GPU (torch is not installed); {hint}") from None
    if not torch.cuda.is_available():
        raise GpuDecodeUnavailable(f"decode 'gpu' needs a CUDA GPU (none visible to PyTorch); {hint}")
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError as e:
        raise GpuDecodeUnavailable(f"decode 'gpu' needs torchvision with nvJPEG ({e}); {hint}") from None

    def decode(datas):
        return decode_jpeg(datas, mode=ImageReadMode.RGB, device=device)
    return decode


def gpu_jpeg_size(data: bytes, max_pixels: int) -> tuple[int, int] | None:
    """(width, height) if nvJPEG should decode these bytes (see the module's note), else None."""
    header = gpu_jpeg_header(data, max_pixels)
    return None if header is None else header[:2]


def gpu_jpeg_header(data: bytes, max_pixels: int) -> tuple[int, int, int | None] | None:
    """(width, height, JPEG quality from its tables) if nvJPEG should decode these bytes, else None."""
    if data[:3] != b"\xff\xd8\xff" or data.rstrip(b"\0")[-2:] != b"\xff\xd9":
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data))  # the header only
            progressive = img.info.get("progressive") or img.info.get("progression")
            rotated = img.getexif().get(EXIF_ORIENTATION, 1) != 1
    except Exception:
        return None
    w, h = img.size
    if img.format != "JPEG" or img.mode != "RGB" or progressive or rotated or w * h > max_pixels:
        return None
    return w, h, image_jpeg_quality(img)


class GpuDecoder:
    """Paths (or encoded bytes) to uint8 arrays, nvJPEG in batches with a per-file CPU fallback;
    a files-only ``decoders.Decoder`` (the Detector puts it behind ``decoders.FilesApart``).

    decode_jpegs: list of uint8 1-D tensors -> list of uint8 [3, H, W] tensors (default: nvJPEG
    on ``device``); injectable, so the routing is testable without a GPU."""

    def __init__(self, spec: ModelSpec, max_pixels: int, max_tiles: int, device="cuda", batch: int = DECODE_BATCH,
                 decode_jpegs: Callable | None = None):
        self.spec, self.max_pixels, self.max_tiles = spec, max_pixels, max_tiles
        self.device, self.batch = device, max(1, batch)
        self._decode = decode_jpegs or nvjpeg_decoder(device)
        self._pending: list[tuple[int, object]] = []  # (ticket, source), submitted, not decoded
        self._done: dict[int, Decoded] = {}
        self._discarded: set[int] = set()
        self._next_ticket = 0
        self.gpu_decoded = 0  # files decoded by decode_jpegs
        self.cpu_decoded = 0  # files that went through the CPU path (fallbacks and non-JPEGs)

    def submit(self, source) -> int:
        ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
        self._pending.append((ticket, source))
        if len(self._pending) >= self.batch:
            self._flush()
        return ticket

    def result(self, ticket: int, lend: bool = False) -> Decoded:
        """The ticket's (arrays, None, facts) or (None, problem), once; host arrays of its own (never
        lent: ``release`` does nothing)."""
        if ticket not in self._done:
            if all(t != ticket for t, _ in self._pending):
                raise KeyError(f"unknown or already collected ticket {ticket}")
            self._flush()
        return self._done.pop(ticket)

    def release(self, ticket: int) -> None:
        pass

    def discard(self, ticket: int) -> None:
        if self._done.pop(ticket, None) is None:
            self._discarded.add(ticket)

    def close(self) -> None:
        self._pending.clear()
        self._done.clear()

    # -- internals ----------------------------------------------------------------------------------
    def _flush(self) -> None:
        pending, self._pending = self._pending, []
        on_gpu = []  # (ticket, source, data, (w, h, quality))
        for ticket, source in pending:
            if ticket in self._discarded:
                self._discarded.discard(ticket)
                continue
            data = _read(source)
            header = gpu_jpeg_header(data, self.max_pixels) if data is not None else None
            if header is not None and self._preparable(header[:2]):
                on_gpu.append((ticket, source, data, header))
            else:
                self._done[ticket] = self._on_cpu(source)
        decoded = self._decode_all([d for _, _, d, _ in on_gpu])
        prepared = [self._prepare(chw, w, h) if chw is not None else None
                    for (_, _, _, (w, h, _)), chw in zip(on_gpu, decoded)]
        for (ticket, source, _, (w, h, quality)), arrays in zip(on_gpu, self._to_host(prepared)):
            if arrays is None:
                self._done[ticket] = self._on_cpu(source)
            else:
                self.gpu_decoded += 1
                self._done[ticket] = Decoded(arrays, None, image_facts(w, h, self.spec, quality))

    def _preparable(self, size) -> bool:
        """Whether the device can prepare an image of this size: one the CPU path refuses (too
        small to score, or to crop) goes there, which names the problem."""
        w, h = size
        if too_small_to_score(w, h, self.spec.top_k):
            return False
        return self.spec.policy != "center-crop" or (w >= self.spec.size and h >= self.spec.size)

    def _decode_all(self, datas: list[bytes]) -> list:
        """One decoded tensor per file, or None where the decoder refuses it: a batch that fails
        is retried file by file, so one bad file costs only itself."""
        if not datas:
            return []
        import torch

        tensors = [torch.frombuffer(bytearray(d), dtype=torch.uint8) for d in datas]
        try:
            return list(self._decode(tensors))
        except Exception:
            out = []
            for t in tensors:
                try:
                    out.append(self._decode([t])[0])
                except Exception:
                    out.append(None)
            return out

    def _prepare(self, chw, w: int, h: int):
        """The spec's policy on the device: uint8 [N, h, w, 3] there; None (CPU fallback) on any surprise."""
        try:
            if tuple(chw.shape) != (3, h, w):
                return None
            hwc = chw.permute(1, 2, 0)
            size, policy = self.spec.size, self.spec.policy
            from lfm.kernels import resize as kernels

            if policy == "resize":
                out = hwc[None] if (h, w) == (size, size) else kernels.resize_bilinear(hwc.contiguous()[None], size, size)
            elif policy == "center-crop":
                out = kernels.center_crop(hwc, size)[None]
            elif policy == "tiles":
                out = kernels.tiles(hwc, size, self.max_tiles)
            else:  # none: native size
                out = hwc[None]
            return out
        except Exception:
            return None

    @staticmethod
    def _to_host(prepared: list) -> list[np.ndarray | None]:
        """The batch's device arrays as host arrays: every copy queued without waiting (into
        pinned memory: torch's non-blocking device-to-host copy), one synchronisation for all,
        not one per file; None where the copy fails (CPU fallback)."""
        host = []
        for out in prepared:
            try:
                host.append(None if out is None else out.to("cpu", non_blocking=True))
            except Exception:
                host.append(None)
        if any(out is not None and out.is_cuda for out in prepared):
            import torch

            torch.cuda.current_stream().synchronize()  # the copies above have landed
        return [None if h is None else np.ascontiguousarray(h.numpy()) for h in host]

    def _on_cpu(self, source) -> Decoded:
        self.cpu_decoded += 1
        return load_tiles_or_problem(source, self.spec, self.max_pixels, self.max_tiles)


def _read(source) -> bytes | None:
    """The file's bytes, or None (the CPU path then names the problem; a FIFO or device is
    refused unread there as here)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        return read_image_bytes(source)
    except ImageError:
        return None
