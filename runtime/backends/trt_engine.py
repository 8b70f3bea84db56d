"""TensorRT engines as a runner: ``runtime/infer.py --engine lfm.plan``.

    runner = TrtRunner("lfm.plan")                 # + its sidecar lfm.plan.json (export/to_trt.py writes both)
    with runner:
        out = runner.infer({"pixels": uint8 [B, H, W, 3]})     # or {"image": float32 [B, 3, H, W]}
        h1 = runner.submit(feed1); h2 = runner.submit(feed2)   # two batches in flight
        runner.result(h1)["logit"], runner.result(h2)["logit"]

The TensorRT 10 / 11 calls (``Runtime.deserialize_cuda_engine``, tensor names,
``set_input_shape`` / ``set_tensor_address`` / ``execute_async_v3``) over two layers tested
without a GPU: the engine's files and profile (``trt_plan``) and the CUDA plumbing
(``cuda_support``: buffers, stream, checks, the slot ring).

Pipelining: the runner owns ``in_flight`` slots (default 2), each with its own pinned input,
device input/outputs, pinned output and completion event. ``submit`` stages a batch into a free
slot's pinned buffer and enqueues copy-in, inference and copy-out on the stream without waiting;
``result`` waits for that slot's event only. While the GPU runs batch k the caller decodes and
stages batch k+1. All slots share one execution context and one stream (TensorRT runs work on a
stream in order, and a context with dynamic shapes may not be used concurrently from several
streams unless the engine has one optimisation profile per context), so the GPU itself runs the
batches one after another; what overlaps is the host's decoding, staging and Python work with
the GPU's copies and kernels. ``cuda_graphs=True`` captures copy-in + inference + copy-out once
per (slot, input shape) and replays it with one launch. A graph fixes the input shape, the tensor
addresses and the execution context it was captured from, so each graph gets its own context;
those contexts share one user-managed scratch block (they never run at the same time: one
stream). As TensorRT asks, each (slot, shape) is enqueued once on its context before capture.

Nothing here imports torch, ``lfm.train`` or ``lfm.export``; tensorrt and cuda-python are
imported in ``activate`` only (``pip install -e '.[tensorrt]'``).
"""
from __future__ import annotations

import os
import warnings
from collections import OrderedDict

import numpy as np

from ..files import first_line
from ..spec import ModelSpec
from .base import BackendError, Runner
from .cuda_support import (INSTALL_HINT, DeviceBuffer, PinnedBuffer, SlotRing, cuda_check, device_info, import_cudart,
                           new_stream)
from .trt_plan import (EngineError, batch_parts, check_compatible, check_plan_bytes, check_shape, describe_profile,
                       profile_axes, read_sidecar, rebuild_command)


class _Slot:
    """One batch in flight: pinned input, device input and outputs, pinned logit, an event, and
    the CUDA graphs captured for it (input shape -> (its context, graph exec), None where capture
    failed)."""

    def __init__(self, cudart, in_bytes: int, out_bytes: dict[str, int], logit_name: str):
        self.host_in = PinnedBuffer(cudart, in_bytes)
        self.dev_in = DeviceBuffer(cudart, in_bytes)
        self.dev_out = {name: DeviceBuffer(cudart, n) for name, n in out_bytes.items()}
        self.host_logit = PinnedBuffer(cudart, out_bytes[logit_name])
        self.done = cuda_check(cudart.cudaEventCreateWithFlags(cudart.cudaEventDisableTiming), "cudaEventCreateWithFlags")
        self.graphs: OrderedDict = OrderedDict()  # shape -> (context, graph exec), or None: not capturable

    def free(self, cudart):
        for entry in self.graphs.values():
            if entry is not None:
                cuda_check(cudart.cudaGraphExecDestroy(entry[1]), "cudaGraphExecDestroy")
        self.graphs.clear()
        cuda_check(cudart.cudaEventDestroy(self.done), "cudaEventDestroy")
        for buf in (self.host_in, self.dev_in, self.host_logit, *self.dev_out.values()):
            buf.free()


class _Part:
    """One engine run of a submitted batch (a batch may need several: see batch_parts)."""

    __slots__ = ("slot", "n", "value")

    def __init__(self, slot: int, n: int):
        self.slot, self.n, self.value = slot, n, None


class _Handle:
    __slots__ = ("parts",)

    def __init__(self):
        self.parts: list[_Part] = []


class TrtRunner(Runner):
    """A TensorRT engine (PLAN + PLAN.json sidecar from export/to_trt.py) on one GPU.

    in_flight: slots, i.e. batches that may be submitted before the first result is taken (>= 1).
    cuda_graphs: capture each (slot, input shape) once and replay it; at most ``max_graphs`` shapes
    per slot (least recently used dropped first). A detector sees few shapes: the batch size and
    the last, short batch (or one static batch: build the engine with --batch N to pad every batch
    to N)."""

    name = "tensorrt"

    def __init__(self, plan: str | os.PathLike, device: int = 0, in_flight: int = 2, cuda_graphs: bool = False,
                 max_graphs: int = 4):
        super().__init__()
        if in_flight < 1:
            raise ValueError(f"in_flight must be >= 1, got {in_flight}")
        self.plan, self.device, self.in_flight = os.fspath(plan), int(device), int(in_flight)
        self.cuda_graphs, self.max_graphs = bool(cuda_graphs), int(max_graphs)

    @property
    def max_in_flight(self) -> int:
        return self.in_flight

    # -- loading ---------------------------------------------------------------------------------
    def load_checked(self) -> tuple[dict, bytes]:
        """The sidecar and plan bytes, checked against each other (no TensorRT needed)."""
        if not os.path.exists(self.plan):
            raise EngineError(f"{self.plan}: no such file")
        if not os.path.isfile(self.plan):
            raise EngineError(f"{self.plan}: not a file")
        sidecar = read_sidecar(self.plan)
        with open(self.plan, "rb") as f:
            data = f.read()
        check_plan_bytes(self.plan, data, sidecar)
        return sidecar, data

    def activate_impl(self):
        sidecar, data = self.load_checked()
        try:
            import tensorrt as trt
        except ImportError as e:
            raise BackendError(f"--engine needs TensorRT ({e}); {INSTALL_HINT}") from None
        cudart = import_cudart()
        name, cc = device_info(cudart, self.device)
        warning = check_compatible(sidecar, trt.__version__, name, cc, plan=self.plan)
        if warning:
            warnings.warn(warning, RuntimeWarning, stacklevel=2)
        cuda_check(cudart.cudaSetDevice(self.device), "cudaSetDevice")
        self._trt, self._cudart, self.sidecar = trt, cudart, sidecar
        self.spec = ModelSpec.from_dict(sidecar["spec"])
        self.metadata = sidecar
        self.device_name, self.compute_capability = name, cc

        logger = _error_logger(trt)
        trt.init_libnvinfer_plugins(logger, "")  # TensorRT's own plugins, as its samples do
        self._runtime = trt.Runtime(logger)
        self.engine = self._runtime.deserialize_cuda_engine(data)
        if self.engine is None:
            why = first_line(logger.errors[-1] if logger.errors else "", empty="TensorRT gave no reason")
            raise EngineError(f"{self.plan}: TensorRT could not load the engine ({why}); rebuild it: "
                              f"{rebuild_command(sidecar)}")
        self._bind_io(sidecar)
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineError(f"{self.plan}: TensorRT could not create an execution context (out of GPU memory?)")
        self.stream = new_stream(cudart)
        max_shape = self.profile["max"]
        in_bytes = int(np.prod(max_shape)) * self.input_dtype.itemsize
        out_bytes = {n: int(np.prod([max_shape[0] if d < 0 else d for d in shape])) * dt.itemsize
                     for n, (shape, dt) in self.outputs.items()}
        self.slots = []
        try:
            for _ in range(self.in_flight):
                self.slots.append(_Slot(cudart, in_bytes, out_bytes, "logit"))
        except BaseException:
            for slot in self.slots:
                slot.free(cudart)
            cudart.cudaStreamDestroy(self.stream)
            raise
        self.ring = SlotRing(self.in_flight)
        self._context_shapes = {}  # id(context) -> the input shape last set on it
        self._scratch, self._graph_warned = None, False  # CUDA graphs' shared context memory

    def _bind_io(self, sidecar):
        trt, engine = self._trt, self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or "logit" not in outputs:
            raise EngineError(f"{self.plan}: not an LFM engine (inputs {inputs}, outputs {outputs}; expected one input "
                              "and a 'logit' output)")
        (self.input_name,) = inputs
        if self.input_name != sidecar["input"]["name"]:
            raise EngineError(f"{self.plan}: engine input {self.input_name!r} differs from its sidecar's "
                              f"{sidecar['input']['name']!r}; rebuild it: {rebuild_command(sidecar)}")
        self.input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input_name)))
        self.outputs = {n: (tuple(engine.get_tensor_shape(n)), np.dtype(trt.nptype(engine.get_tensor_dtype(n))))
                        for n in outputs}
        lo, opt, hi = engine.get_tensor_profile_shape(self.input_name, 0)
        self.profile = {"input": self.input_name, "layout": sidecar["input"]["layout"],
                        "min": [int(d) for d in lo], "opt": [int(d) for d in opt], "max": [int(d) for d in hi]}

    def deactivate_impl(self):
        cudart = self._cudart
        try:
            cuda_check(cudart.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")
        finally:
            for slot in self.slots:
                slot.free(cudart)
            if self._scratch is not None:
                self._scratch.free()
            cuda_check(cudart.cudaStreamDestroy(self.stream), "cudaStreamDestroy")
            del self.slots, self.context, self.engine, self._runtime

    # -- inference -------------------------------------------------------------------------------
    def infer_impl(self, feed):
        return self.result(self.submit(feed))

    def submit(self, feed: dict[str, np.ndarray]) -> _Handle:
        """Enqueue a batch without waiting; ``result(handle)`` returns its {"logit": [B]}."""
        if not self.is_active:
            raise BackendError(f"{self.name}: submit() before activate()")
        (x,) = feed.values()
        x = np.asarray(x)
        if x.dtype != self.input_dtype:
            raise BackendError(f"{self.plan}: input {self.input_name!r} takes {self.input_dtype}, got {x.dtype}")
        check_shape(x.shape, self.profile, os.path.basename(self.plan))
        b = profile_axes(self.profile["layout"])[0]
        handle = _Handle()
        for start, stop, run in batch_parts(x.shape[b], self.profile["min"][b], self.profile["max"][b]):
            part = _Part(-1, stop - start)
            slot, previous = self.ring.acquire(part)
            if previous is not None:  # the ring came round to a batch nobody has collected yet
                self._fetch(previous)
            part.slot = slot
            self._launch(self.slots[slot], x[start:stop], run)
            handle.parts.append(part)
        return handle

    def result(self, handle: _Handle) -> dict[str, np.ndarray]:
        for part in handle.parts:
            if part.value is None:
                self._fetch(part)
        return {"logit": np.concatenate([p.value for p in handle.parts])}

    def _fetch(self, part: _Part) -> None:
        slot = self.slots[part.slot]
        cuda_check(self._cudart.cudaEventSynchronize(slot.done), "cudaEventSynchronize")
        part.value = slot.host_logit.view((part.n,), self.outputs["logit"][1]).astype(np.float32, copy=True)
        self.ring.release(part.slot, part)

    def _launch(self, slot: _Slot, x: np.ndarray, run: int) -> None:
        cudart = self._cudart
        shape = (run,) + tuple(x.shape[1:])
        staged = slot.host_in.view(shape, self.input_dtype)
        staged[:len(x)] = x  # the one host-side copy: into pinned memory
        if run > len(x):
            staged[len(x):] = 0  # padding up to the profile's minimum batch
        entry = slot.graphs.get(shape, False) if self.cuda_graphs else None
        if entry:  # a captured graph: one launch does copy-in, inference and copy-out
            slot.graphs.move_to_end(shape)
            cuda_check(cudart.cudaGraphLaunch(entry[1], self.stream), "cudaGraphLaunch")
        elif entry is False:  # first time for this (slot, shape): run it, then capture it
            context = self._graph_context()
            if context is not None:
                try:
                    self._enqueue(context, slot, shape)
                except BackendError as e:  # TensorRT would not run a second context here: no graphs
                    self._graphs_off(e)
                    context = None
            if context is None:
                self._enqueue(self.context, slot, shape)
            self._capture(context, slot, shape)
        else:  # no graphs, or capture failed for this shape
            self._enqueue(self.context, slot, shape)
        cuda_check(cudart.cudaEventRecord(slot.done, self.stream), "cudaEventRecord")

    def _enqueue(self, context, slot: _Slot, shape) -> None:
        """Copy in, run, copy the logits out: all asynchronous on the stream."""
        cudart = self._cudart
        if self._context_shapes.get(id(context)) != shape:
            if not context.set_input_shape(self.input_name, shape):
                raise BackendError(f"{self.plan}: TensorRT refused input shape {list(shape)} "
                                   f"(profile: {describe_profile(self.profile)})")
            self._context_shapes[id(context)] = shape
        context.set_tensor_address(self.input_name, slot.dev_in.ptr)
        for name, buf in slot.dev_out.items():
            context.set_tensor_address(name, buf.ptr)
        nbytes = int(np.prod(shape)) * self.input_dtype.itemsize
        h2d, d2h = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_check(cudart.cudaMemcpyAsync(slot.dev_in.ptr, slot.host_in.ptr, nbytes, h2d, self.stream), "cudaMemcpyAsync")
        if not context.execute_async_v3(int(self.stream)):  # TensorRT takes the stream handle as an int
            raise BackendError(f"{self.plan}: TensorRT failed to enqueue a batch of shape {list(shape)}")
        out_bytes = shape[0] * self.outputs["logit"][1].itemsize
        cuda_check(cudart.cudaMemcpyAsync(slot.host_logit.ptr, slot.dev_out["logit"].ptr, out_bytes, d2h, self.stream),
                   "cudaMemcpyAsync")

    def _graph_context(self):
        """A fresh execution context for one CUDA graph (a graph fixes its context's shapes and
        addresses, so each graph gets its own). All of them share one scratch block of
        ``device_memory_size_v2`` bytes: their work runs one at a time, in order, on the one stream.
        None (graphs off, with a warning) where this TensorRT cannot make such a context."""
        trt, engine = self._trt, self.engine
        try:
            if self._scratch is None:
                # _v2 exists in 10.x and 11.x (11 removed device_memory_size); 0 is a valid size
                self._scratch = DeviceBuffer(self._cudart, max(int(engine.device_memory_size_v2), 1))
            strategy = trt.ExecutionContextAllocationStrategy.USER_MANAGED
            try:
                context = engine.create_execution_context(strategy)
            except TypeError:  # TensorRT versions that take an IRuntimeConfig instead
                config = engine.create_runtime_config()
                config.set_execution_context_allocation_strategy(strategy)
                context = engine.create_execution_context(config)
            if context is None:
                raise RuntimeError("create_execution_context returned None")
            if hasattr(context, "set_device_memory"):
                context.set_device_memory(self._scratch.ptr, self._scratch.nbytes)
            else:
                context.device_memory = self._scratch.ptr
            return context
        except Exception as e:  # noqa: BLE001 (any failure here only costs the graphs)
            self._graphs_off(e)
            return None

    def _graphs_off(self, why: Exception) -> None:
        if not self._graph_warned:
            warnings.warn(f"{self.plan}: cannot run CUDA graphs' execution contexts here ({type(why).__name__}: {why}); "
                          "running without graphs", RuntimeWarning, stacklevel=5)
            self._graph_warned = True
        self.cuda_graphs = False

    def _capture(self, context, slot: _Slot, shape) -> None:
        """Record copy-in + inference + copy-out for (slot, shape) as a CUDA graph. The enqueue just
        made on ``context`` for this shape is the one TensorRT asks for after a shape change and
        before capturing. If capture fails (an engine that cannot be captured), this shape keeps the
        plain enqueue."""
        cudart = self._cudart
        if context is None:
            slot.graphs[shape] = None
            return
        if len(slot.graphs) >= self.max_graphs:
            old = slot.graphs.popitem(last=False)[1]
            if old is not None:
                cuda_check(cudart.cudaGraphExecDestroy(old[1]), "cudaGraphExecDestroy")
                self._context_shapes.pop(id(old[0]), None)
        mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal
        cuda_check(cudart.cudaStreamBeginCapture(self.stream, mode), "cudaStreamBeginCapture")
        try:
            self._enqueue(context, slot, shape)
        finally:
            err, graph = cudart.cudaStreamEndCapture(self.stream)
        if int(err) != 0 or graph is None:
            warnings.warn(f"{self.plan}: CUDA graph capture failed for input {list(shape)} ({getattr(err, 'name', err)}); "
                          "this shape runs without a graph", RuntimeWarning, stacklevel=4)
            slot.graphs[shape] = None
            return
        try:
            slot.graphs[shape] = (context, cuda_check(cudart.cudaGraphInstantiate(graph, 0), "cudaGraphInstantiate"))
        finally:
            cuda_check(cudart.cudaGraphDestroy(graph), "cudaGraphDestroy")


def _error_logger(trt):
    """A TensorRT logger that keeps errors (for one-line messages) and prints nothing."""

    class ErrorLogger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity, msg):
            if severity in (trt.ILogger.Severity.INTERNAL_ERROR, trt.ILogger.Severity.ERROR):
                self.errors.append(str(msg))

    return ErrorLogger()
