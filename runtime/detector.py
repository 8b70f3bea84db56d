"""The Detector: files (or bytes, arrays, PIL images) in, one record per input out, in input order.

    from lfm.runtime.detector import Detector
    with Detector("lfm.onnx") as det:      # or "lfm.plan" (TensorRT), "ckpt.pt" (PyTorch)
        for record in det.predict(["a.png", "b.jpg"]):
            print(record.path, record.score, record.label, record.error, record.flags)
        det.predict_one("c.png")           # one item -> one Record

    from lfm.runtime.backends import make_runner   # backend options: which runner, and how it runs
    Detector(make_runner("lfm.onnx", backend="openvino", threads=4), batch_size=32)

    from lfm.runtime.options import PipelineOptions   # how the pipeline runs, one frozen object
    Detector("lfm.onnx", PipelineOptions(policy="tiles", size=256, decode="processes"))

``predict`` takes a list (any iterable) of items: paths (str or PathLike), encoded bytes,
uint8 HxWx3 RGB arrays, PIL images, or ``preprocess.Prepared`` arrays (already prepared by the
model's policy: scored as they are); an NxHxWx3 uint8 array counts as N images. A single
path, bytes object, image or HxWx3 array passed to ``predict`` is refused with a TypeError
(iterating it would score its characters or rows): use ``predict([item])`` or ``predict_one``.
Every item mentioned gets its own record, duplicates included; an item of an unknown type
gets an error record in its place, never an exception that loses the others' records.

Decoding and preprocessing run in a ``decoders.Decoder``, a bounded window ahead of the backend,
so the backend does not wait on image decoding: worker threads (Pillow releases the GIL), or
with ``decode="processes"`` files (paths or bytes) are decoded in worker processes into shared
memory (``decode_pool``; scales with cores). Images that cannot be decoded, or that the model
refuses, become error records in their place; none is dropped.
"""
from __future__ import annotations

import os
from collections import deque
from contextlib import closing
from typing import Iterable, Iterator, Union

import numpy as np

from PIL import Image

from .backends.base import OPTIONS, Runner, backend_for, make_runner
from .decoders import Decoder, make_decoder
from .files import first_line
from .flags import ImageFacts, model_band, record_flags
from .options import PipelineOptions
from .gpu_decode import GpuDecodeUnavailable, nvjpeg_decoder
from .preprocess import Prepared, normalize
from .records import Record
from .spec import check_input_size, min_input_size

Item = Union[str, os.PathLike, bytes, np.ndarray, Image.Image, Prepared]


class DetectorClosed(RuntimeError):
    """A Detector used after close() (or after its ``with`` block)."""


class Detector:
    """LFM deepfake detector: scores images through one runner (ONNX Runtime, OpenVINO, PyTorch
    or TensorRT), one ``Record`` per input (path, logit, score, label, error, flags).

    source: which runner. A model file, its backend by extension (.onnx: auto, ONNX Runtime or
    OpenVINO by backends.auto's rules; .plan/.engine: TensorRT, .pt/.pth: PyTorch), or a runner: ``make_runner(path, backend=...,
    providers=..., threads=..., device=..., precision=..., kernels=..., cuda_graphs=...)`` (from
    ``lfm.runtime.backends``) for backend options, or any Runner. The Detector activates it and
    deactivates it on ``close()``.

    options: how the pipeline runs, a ``PipelineOptions`` (lfm.runtime.options; checked when it
    is made, as the command line checks its flags), or its fields as keywords, which replace
    those of ``options``:
    threshold, policy, size: override the model's own spec (defaults: the model's).
    batch_size: images per runner call; workers: decoding threads or processes (default: one
    process per usable core, or up to 8 threads: ``default_workers``).
    decode: "threads" (default) or "processes": files (paths or encoded bytes) decoded by
    ``workers`` processes into shared memory (decoding then scales with cores; arrays and images
    stay on threads); "gpu": JPEGs decoded by nvJPEG (needs torch + CUDA + torchvision; not bit-identical to
    libjpeg-turbo), other files on the CPU path (``gpu_decode``);
    the same records in the same order either way. A process that dies costs only the file it
    was decoding (an error record); ``close()`` stops the processes and frees the shared memory.
    max_pixels: larger files are refused before decoding (decompression bombs).
    max_model_pixels: pixels the model sees in one call; under policy "none" a larger image
    gets an error record instead of taking gigabytes of memory (default 2048 x 2048).
    tile_reduce: how policy ``tiles`` turns an image's tile logits into its logit: "max"
    (default: an image is generated if any part of it looks generated) or "mean"; max_tiles:
    at most this many tiles per image.
    uncertain_band: records whose logit lies within this many logits of the threshold's are
    flagged "uncertain" (default: the model's spec.extra["uncertain_band"], else the measured
    ``flags.DEFAULT_UNCERTAIN_BAND``); the other flags (``upscaled``, ``low-jpeg-quality``) come
    from what the decoder learned preparing each image (runtime/flags.py). No flag changes a label.

    The old keywords, which mixed the two (checkpoint=, model=, engine=, runner=, device=,
    providers=, threads=, backend=, precision=, kernels=, cuda_graphs=), were removed: each is
    refused with a TypeError naming its replacement."""

    def __init__(self, source: str | os.PathLike | Runner | None = None, options: PipelineOptions | None = None,
                 **fields):
        options = _pipeline_options(options, fields)  # every value checked there, as on the command line
        if source is None:
            raise TypeError("Detector() needs a model: Detector('lfm.onnx'), or Detector(make_runner(path, ...))")
        threshold, policy, size, decode = options.threshold, options.policy, options.size, options.decode
        max_pixels, max_tiles = options.max_pixels, options.max_tiles
        gpu_decoder = self._gpu_decoder_check() if decode == "gpu" else None  # refused before the runner starts
        self.runner = (make_runner(source) if isinstance(source, (str, os.PathLike)) else _as_runner(source)).activate()
        # The model's own spec, with the caller's overrides on top.
        self.spec = self.runner.spec.replace(threshold=threshold, policy=policy, size=size)
        if self.spec.policy != "none" and self.spec.size < min_input_size(self.spec.top_k):
            self.runner.deactivate()
            raise ValueError(f"size {self.spec.size} is too small: the model (top-k K={self.spec.top_k}) needs inputs "
                             f"of at least {min_input_size(self.spec.top_k)} x {min_input_size(self.spec.top_k)} pixels")
        self.options = options
        # half-width around the threshold's logit of the records' "uncertain" flag (flags.model_band)
        self.uncertain_band = self._band(options.uncertain_band)
        self.batch_size = options.batch_size
        self.max_pixels, self.max_model_pixels = max_pixels, options.max_model_pixels
        self.tile_reduce, self.max_tiles = options.tile_reduce, max_tiles
        self.decode, self.workers = decode, options.decode_workers
        self.closed = False
        # hold: room to lend what predict_iter holds (the read-ahead window and the batch forming)
        self.decoder: Decoder = make_decoder(decode, self.spec, max_pixels, max_tiles, self.workers,
                                             hold=5 * self.batch_size, gpu_jpegs=gpu_decoder)

    def _band(self, given: float | None) -> float:
        try:
            return model_band(self.spec.extra, given)
        except ValueError:
            self.runner.deactivate()
            raise

    @staticmethod
    def _gpu_decoder_check():
        try:
            return nvjpeg_decoder("cuda")
        except GpuDecodeUnavailable as e:
            raise ValueError(str(e)) from None

    # -- lifecycle --------------------------------------------------------------------------------
    def close(self):
        """Stop the decoding workers and free the runner; a second close() does nothing, and every
        later use raises DetectorClosed."""
        if self.closed:
            return
        self.closed = True
        self.decoder.close()
        self.runner.deactivate()

    def __enter__(self):
        self._check_open()
        return self

    def __exit__(self, *exc):
        self.close()

    def _check_open(self) -> None:
        if self.closed:
            raise DetectorClosed("this Detector is closed (its workers and runner are released); "
                                 "create a new Detector to score more")

    # -- prediction -------------------------------------------------------------------------------
    def predict(self, items: Iterable[Item]) -> list[Record]:
        """Score a list of items (paths, bytes, HxWx3 uint8 arrays, PIL images; an NxHxWx3
        array is N images): one Record per item, in order, failures included as records. It
        holds every record: for long or endless inputs use ``predict_iter``."""
        return list(self.predict_iter(items))

    def predict_one(self, item: Item) -> Record:
        """Score one item: its Record (check ``record.error``)."""
        return self.predict([item])[0]

    def predict_iter(self, items: Iterable[Item]) -> Iterator[Record]:
        """Yield one record per item, in order, as soon as its batch is scored. ``items`` is read
        lazily (a bounded window ahead of the model), so memory stays flat on any length of input.

        Each decoded item is a stack of arrays [N, h, w, 3] (N = 1, or its tiles); consecutive
        items of one array shape are batched together up to ``batch_size`` arrays. A runner with
        ``max_in_flight`` > 1 (TensorRT) gets that many batches submitted before the oldest one's
        records are yielded, so the GPU works while the next batch is decoded and staged."""
        self._check_open()  # refused at the call, not at the first next()
        _refuse_single_item(items)
        return self._while_open(self._records(items))

    def _while_open(self, records: Iterator[Record]) -> Iterator[Record]:
        """The records, each step refused once the Detector is closed (closed while an iterator
        is still read: its workers and runner are gone, so it would fail deep inside, or worse,
        turn the stopped runner's refusals into error records)."""
        with closing(records):  # refused or abandoned: the stages' slots and futures go back now
            while True:
                self._check_open()
                try:
                    record = next(records)
                except StopIteration:
                    return
                yield record

    def _records(self, items: Iterable[Item]) -> Iterator[Record]:
        pending: list[tuple[str, np.ndarray | None, str | None, ImageFacts]] = []  # (name, arrays, error, facts)
        lent: list[int] = []  # tickets of the decoding processes whose ring slots pending's arrays view
        ticket = None  # the item in hand, not yet in pending while an earlier batch is collected
        shape, n_ready = None, 0
        in_flight: deque = deque()
        depth = max(1, int(getattr(self.runner, "max_in_flight", 1)))
        try:
            for name, arrays, error, facts, ticket in self._decoded(items, lend=True):
                if arrays is not None:
                    if n_ready and (arrays.shape[1:] != shape or n_ready + len(arrays) > self._chunk(shape)):
                        in_flight.append(self._submit(pending))
                        self._release(lent)  # the batch has its own copy now
                        while len(in_flight) >= depth:
                            yield from self._collect(*in_flight.popleft())
                        pending, n_ready = [], 0
                    shape = arrays.shape[1:]
                    n_ready += len(arrays)
                pending.append((name, arrays, error, facts))
                if ticket is not None:
                    lent.append(ticket)
            in_flight.append(self._submit(pending))
            self._release(lent)
            while in_flight:
                yield from self._collect(*in_flight.popleft())
        finally:  # also when stopped early: the slots go back to the pool (releasing twice is harmless)
            self._release(lent + ([ticket] if ticket is not None else []))

    def _release(self, lent: list[int]) -> None:
        for t in lent:
            self.decoder.release(t)
        lent.clear()

    def _decoded(self, items: Iterable[Item], lend: bool = False
                 ) -> Iterator[tuple[str, np.ndarray | None, str | None, ImageFacts, int | None]]:
        """(name, arrays, error, facts, lent ticket) per item, in order. lend: the arrays may be views of
        the decoder's memory (the processes' shared ring), valid until ``decoder.release(ticket)``
        (the ticket is given with lend, else None)."""
        window = deque()
        ahead = 4 * self.batch_size  # bounded read-ahead: memory stays flat on long lists
        try:
            for item in items:
                window.append((_name(item), self.decoder.submit(item)))
                if len(window) >= ahead:
                    yield self._finish_decode(*window.popleft(), lend)
            while window:
                yield self._finish_decode(*window.popleft(), lend)
        finally:  # stopped early (Ctrl-C, an abandoned iterator): results nobody will read are dropped
            for _, ticket in window:
                self.decoder.discard(ticket)

    def _finish_decode(self, name: str, ticket: int, lend: bool = False):
        arrays, error, facts = self.decoder.result(ticket, lend=lend)
        checked = (name, None, error) if error is not None else self._checked(name, arrays)
        return (*checked, facts, ticket if lend else None)

    def _checked(self, name: str, arrays: np.ndarray) -> tuple[str, np.ndarray | None, str | None]:
        """Decoded arrays, or the problem the model would have with them, named here rather than
        left for the backend to fail on."""
        try:
            check_input_size(arrays.shape[1], arrays.shape[2], self.spec.top_k)
        except ValueError as e:
            return name, None, str(e)
        h, w = arrays.shape[1:3]
        if h * w > self.max_model_pixels:
            return name, None, (f"{w}x{h} = {w * h} pixels at the model's input exceeds the limit of "
                                f"{self.max_model_pixels} per image (policy {self.spec.policy}: about "
                                f"{h * w * 500 / 1e9:.1f} GB of activations); score it with policy tiles "
                                "or resize, or raise max_model_pixels (--max-model-pixels)")
        return name, arrays, None

    def _submit(self, pending):
        """Start the batch's chunks on the runner; handles None if the runner refused one."""
        ready = [i for i, (_, a, _, _) in enumerate(pending) if a is not None]
        handles = []
        if ready:
            pixels = np.concatenate([pending[i][1] for i in ready])
            bounds = np.cumsum([0] + [len(pending[i][1]) for i in ready])
            for j, i in enumerate(ready):  # the batch's own copy: lent views may be released now
                pending[i] = (pending[i][0], pixels[bounds[j]:bounds[j + 1]], *pending[i][2:])
            step = self._chunk(pixels.shape[1:])
            try:
                for j in range(0, len(pixels), step):
                    chunk = pixels[j:j + step]
                    handles.append((self.runner.submit(self._feed(chunk)), len(chunk)))
            except Exception:
                self._drain(handles)
                handles = None  # _collect isolates the input the backend refused
        return pending, ready, handles

    def _drain(self, handles) -> None:
        for handle, _ in handles or ():
            try:
                self.runner.result(handle)
            except Exception:
                pass

    def _collect(self, pending, ready, handles) -> Iterator[Record]:
        logits: dict[int, np.ndarray] = {}
        errors: dict[int, str] = {}
        if ready:
            try:
                if handles is None:
                    raise RuntimeError("the runner refused the batch")
                outs = []
                for k, (handle, n) in enumerate(handles):
                    try:
                        outs.append(self._logits(self.runner.result(handle), n))
                    except Exception:
                        self._drain(handles[k + 1:])
                        raise
                out = np.concatenate(outs)
                bounds = np.cumsum([0] + [len(pending[i][1]) for i in ready])
                logits = {i: out[bounds[j]:bounds[j + 1]] for j, i in enumerate(ready)}
            except Exception:
                # Isolate the input the backend refused (e.g. too small for top-k pooling).
                for i in ready:
                    try:
                        logits[i] = self._infer_chunked(pending[i][1])
                    except Exception as e:
                        errors[i] = first_line(e)
        reduce = np.max if self.tile_reduce == "max" else np.mean
        for i, (name, _, error, facts) in enumerate(pending):
            if error is None and i in errors:
                error = errors[i]
            if error is not None:
                yield Record.failed(name, error)
            else:
                logit = float(reduce(logits[i]))
                yield Record.from_logit(name, logit, self.spec.threshold,
                                        record_flags(facts, logit, self.spec.threshold, self.uncertain_band))

    def _chunk(self, shape) -> int:
        """Images per model call for arrays of this shape: batch_size, fewer where that many
        would exceed max_model_pixels (large native-size images), at least one."""
        return max(1, min(self.batch_size, self.max_model_pixels // max(1, shape[0] * shape[1])))

    def _infer_chunked(self, pixels: np.ndarray) -> np.ndarray:
        step = self._chunk(pixels.shape[1:])
        return np.concatenate([self._infer(pixels[i:i + step]) for i in range(0, len(pixels), step)])

    def _infer(self, pixels: np.ndarray) -> np.ndarray:
        return self._logits(self.runner.infer(self._feed(pixels)), len(pixels))

    def _feed(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        if self.spec.input == "uint8":  # the graph normalises: hand over the decoded bytes as they are
            return {"pixels": np.ascontiguousarray(pixels)}
        return {"image": normalize(pixels, self.spec.mean, self.spec.std)}

    @staticmethod
    def _logits(out: dict[str, np.ndarray], n: int) -> np.ndarray:
        logit = np.asarray(out["logit"], dtype=np.float64).reshape(-1)
        if logit.shape[0] != n:
            raise RuntimeError(f"backend returned {logit.shape[0]} logits for {n} images")
        return logit


def source_kind(path: str | os.PathLike) -> str:
    """What a model file is, by its extension: "model" (.onnx), "engine" (.plan, .engine, .trt)
    or "checkpoint" (.pt, .pth, .ckpt, .bin): the kind of the registry's default backend for it."""
    return backend_for(path).kind


def _as_runner(source) -> Runner:
    if not (hasattr(source, "activate") and hasattr(source, "infer")):
        raise TypeError(f"Detector() takes a model path or a runner, got a {type(source).__name__}")
    return source


REMOVED_SOURCES = ("checkpoint", "model", "engine", "runner")  # the model, now positional


def _pipeline_options(options: PipelineOptions | None, fields: dict) -> PipelineOptions:
    """The options the Detector runs with: ``options`` (default: PipelineOptions()) with the
    keyword fields on top, so Detector(path, batch_size=32) and Detector(path, options) both work."""
    removed = {k: v for k, v in fields.items() if k not in PipelineOptions.__dataclass_fields__}
    if removed:
        _refuse_removed_keywords(removed)
    if options is not None and not isinstance(options, PipelineOptions):
        raise TypeError(f"Detector(source, options): options must be a PipelineOptions, got {type(options).__name__}")
    return (options or PipelineOptions()).replace(**fields) if fields else (options or PipelineOptions())


def _refuse_removed_keywords(keywords: dict) -> None:
    """The keywords that used to build the runner inside the Detector were removed (0.x): one
    TypeError line naming the form that replaces them."""
    unknown = sorted(set(keywords) - {"backend", *REMOVED_SOURCES, *OPTIONS})
    if unknown:
        raise TypeError(f"Detector() got an unexpected keyword argument {unknown[0]!r}")
    backend_options = [k for k in keywords if k not in REMOVED_SOURCES]
    if backend_options:
        new = (f"Detector(make_runner(path, {', '.join(f'{k}=...' for k in backend_options)})) "
               "(from lfm.runtime.backends import make_runner)")
    else:
        new = "Detector(runner)" if "runner" in keywords else "Detector(path)"
    raise TypeError(f"Detector({', '.join(f'{k}=...' for k in keywords)}) was removed: use {new}")


def _name(item) -> str:
    if isinstance(item, np.ndarray):
        return f"<array {'x'.join(map(str, item.shape))}>"
    if isinstance(item, (bytes, bytearray, memoryview)):
        return f"<{len(item)} bytes>"
    if isinstance(item, Image.Image):
        return getattr(item, "filename", "") or f"<image {item.width}x{item.height} {item.mode}>"
    if isinstance(item, (str, os.PathLike)):
        return os.fspath(item)
    if isinstance(item, Prepared):
        shape = getattr(item.arrays, "shape", ())
        return item.name or f"<prepared {'x'.join(map(str, shape))}>"
    return f"<{type(item).__name__}>"


def _refuse_single_item(items) -> None:
    """predict("a.png") would score the characters "a", ".", ...: refuse one item passed alone."""
    single = (isinstance(items, (str, os.PathLike, bytes, bytearray, memoryview, Image.Image, Prepared))
              or isinstance(items, np.ndarray) and items.ndim != 4)
    if single:
        raise TypeError(f"predict() takes a list of items, got a single {type(items).__name__}; "
                        "use predict([item]) or predict_one(item)")

