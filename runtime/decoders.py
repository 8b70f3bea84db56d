"""How the Detector turns its items into model inputs: one small interface, three ways to run it.

    decoder = make_decoder("threads" | "processes" | "gpu", spec, max_pixels, max_tiles, workers)
    t = decoder.submit(item)                  # a ticket; waits only while the decoder is full
    arrays, error, facts = decoder.result(t)  # uint8 [N, h, w, 3] (N = 1, or the tiles), or None and the problem
    arrays, error, facts = decoder.result(t, lend=True); ...; decoder.release(t)   # may be a view, valid until release
    decoder.discard(t)                        # nobody will collect t
    decoder.close()

Every decoder gives what ``preprocess.load_tiles_or_problem`` gives for a file (the same arrays,
the same problems, the same ``flags.ImageFacts``), in the order asked for, so the Detector's
records (their flags included) do not depend on which one ran:

- ``ThreadDecoder``: worker threads (Pillow releases the GIL while it decodes); every kind of
  item: paths, encoded bytes, uint8 HxWx3 arrays and PIL images (only the policy applies) and
  ``Prepared`` arrays (nothing applies).
- ``decode_pool.DecodePool``: worker processes writing into shared memory; files only.
- ``gpu_decode.GpuDecoder``: JPEGs by nvJPEG in batches, other files on the CPU; files only.

``FilesApart`` puts a files-only decoder behind the interface for every item: files (paths and
encoded bytes) go to it, started on the first one, the rest to a ThreadDecoder.
"""
from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Protocol

import numpy as np
from PIL import Image

from .decode_pool import DecodePool
from .gpu_decode import GpuDecoder
from .flags import image_jpeg_quality
from .preprocess import Decoded, ImageError, Prepared, load_tiles_or_problem, prepare_image, to_rgb
from .spec import ModelSpec

FILE_TYPES = (str, os.PathLike, bytes, bytearray, memoryview)  # an image file: its path or its encoded bytes


class Decoder(Protocol):
    """What the Detector asks of a decoder. Tickets are the decoder's own; each is collected
    (``result``) or ``discard``-ed once. A result taken with ``lend=True`` may be a view of the
    decoder's memory, valid until ``release(ticket)``; releasing any other ticket does nothing."""

    def submit(self, item) -> int: ...

    def result(self, ticket: int, lend: bool = False) -> Decoded: ...

    def release(self, ticket: int) -> None: ...

    def discard(self, ticket: int) -> None: ...

    def close(self) -> None: ...


def prepare_item(item, spec: ModelSpec, max_pixels: int, max_tiles: int) -> Decoded:
    """One item of any kind the Detector takes -> ``Decoded``: (arrays, None, facts) or (None, the problem)."""
    if isinstance(item, FILE_TYPES):
        return load_tiles_or_problem(item, spec, max_pixels, max_tiles)
    try:
        if isinstance(item, Prepared):  # prepared by the policy already: scored as it is
            return Decoded(item.checked(), None, item.facts)
        if isinstance(item, (np.ndarray, Image.Image)):  # decoded: only the policy applies
            img = Image.fromarray(_rgb_array(item)) if isinstance(item, np.ndarray) else to_rgb(item)
            quality = image_jpeg_quality(item) if isinstance(item, Image.Image) else None  # opened from a JPEG
            arrays, facts = prepare_image(img, spec, max_tiles, quality)
            return Decoded(arrays, None, facts)
    except ImageError as e:
        return Decoded(None, e.problem)
    except Exception as e:  # a decoder bug must cost one record, not the run
        return Decoded(None, f"{type(e).__name__}: {e}")
    return Decoded(None, (f"cannot score a {type(item).__name__}: expected a path, encoded bytes, "
                          "a uint8 HxWx3 array or a PIL image"))


def _rgb_array(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ImageError("<array>", f"expected a uint8 HxWx3 RGB array, got {a.dtype} {list(a.shape)}")
    return a


class ThreadDecoder:
    """``workers`` threads running ``prepare_item``: every kind of item. Results are the
    threads' own arrays, never lent (``release`` does nothing)."""

    def __init__(self, spec: ModelSpec, max_pixels: int, max_tiles: int, workers: int):
        self.spec, self.max_pixels, self.max_tiles = spec, max_pixels, max_tiles
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="lfm-decode")
        self._futures: dict[int, Future] = {}
        self._next_ticket = 0

    def submit(self, item) -> int:
        ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
        self._futures[ticket] = self._pool.submit(prepare_item, item, self.spec, self.max_pixels, self.max_tiles)
        return ticket

    def result(self, ticket: int, lend: bool = False) -> Decoded:
        try:
            future = self._futures.pop(ticket)
        except KeyError:
            raise KeyError(f"unknown or already collected ticket {ticket}") from None
        return future.result()

    def release(self, ticket: int) -> None:
        pass

    def discard(self, ticket: int) -> None:
        future = self._futures.pop(ticket, None)
        if future is not None:
            future.cancel()

    def close(self) -> None:
        self._futures.clear()
        self._pool.shutdown(wait=True, cancel_futures=True)


class FilesApart:
    """A files-only decoder (processes, GPU) behind the interface for every item: files go to
    ``start_files()``'s decoder, started on the first file (a run of arrays never starts it),
    everything else to ``others``. Tickets are this router's own."""

    def __init__(self, start_files: Callable[[], Decoder], others: Decoder):
        self._start_files, self.files, self.others = start_files, None, others
        self._routes: dict[int, tuple[Decoder, int]] = {}
        self._next_ticket = 0

    def decoder_for(self, item) -> Decoder:
        """The decoder that takes ``item``: the files' decoder (started now if need be) or ``others``."""
        if not isinstance(item, FILE_TYPES):
            return self.others
        if self.files is None:
            self.files = self._start_files()
        return self.files

    def submit(self, item) -> int:
        decoder = self.decoder_for(item)
        ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
        self._routes[ticket] = (decoder, decoder.submit(item))
        return ticket

    def result(self, ticket: int, lend: bool = False) -> Decoded:
        try:  # a lent ticket keeps its route until release
            decoder, inner = self._routes[ticket] if lend else self._routes.pop(ticket)
        except KeyError:
            raise KeyError(f"unknown or already collected ticket {ticket}") from None
        return decoder.result(inner, lend=lend)

    def release(self, ticket: int) -> None:
        route = self._routes.pop(ticket, None)
        if route is not None:
            route[0].release(route[1])

    def discard(self, ticket: int) -> None:
        route = self._routes.pop(ticket, None)
        if route is not None:
            route[0].discard(route[1])

    def close(self) -> None:
        self._routes.clear()
        self.others.close()
        if self.files is not None:
            self.files.close()


def make_decoder(decode: str, spec: ModelSpec, max_pixels: int, max_tiles: int, workers: int, *, hold: int = 0,
                 gpu_jpegs: Callable | None = None) -> Decoder:
    """The decoder for ``decode`` ("threads", "processes", "gpu"). hold: results the processes
    may lend (the caller's read-ahead); gpu_jpegs: the batched JPEG decoder for "gpu"
    (``gpu_decode.nvjpeg_decoder``, looked up before the model is loaded)."""
    threads = ThreadDecoder(spec, max_pixels, max_tiles, workers)
    if decode == "threads":
        return threads
    if decode == "processes":
        return FilesApart(lambda: DecodePool(spec, max_pixels, max_tiles, workers, hold=hold), threads)
    if decode == "gpu":
        return FilesApart(lambda: GpuDecoder(spec, max_pixels, max_tiles, decode_jpegs=gpu_jpegs), threads)
    threads.close()
    raise ValueError(f"decode must be one of threads, processes, gpu; got {decode!r}")
