"""uint8 batches from host to device through a ring of pinned staging slots (issue 17, item 1).

    ring = StagingRing(device="cuda", slots=2)      # pin_memory defaults to "CUDA is there"
    x = ring.stage(pixels_uint8_nhwc)               # a device tensor; its copy runs on a side stream
    logits = model(x)                               # the current stream waits for that copy only

Why: the decoded bytes go to the GPU as uint8 (a quarter of float32's bytes) and are normalised
there (TritonLFM folds it into its stem; a uint8 TensorRT engine does it in the graph). A copy
from pageable memory is synchronous and bounced through a driver buffer; from pinned memory it
is a DMA that runs beside the kernels. With ``slots`` >= 2 the next batch is staged while the
current one runs: a slot is overwritten only after the copy that last read it has finished
(its event), so the host never writes bytes the GPU is still reading.

TensorRT: ``backends/trt_engine.py`` already stages uint8 engines this way (PinnedBuffer slots in
a SlotRing, ``cudaMemcpyAsync`` on its stream, one completion event per slot); this ring is the
torch runner's counterpart (``--checkpoint ... --kernels``). torch is imported only here, and
only when a ring is made.
"""
from __future__ import annotations


class StagingRing:
    """``slots`` pinned host buffers (grown to the largest batch seen) and their device twins.

    device: where batches go ("cuda", "cuda:1"; "cpu" runs the same logic without streams, for
    tests). pin_memory: page-locked host slots; default True exactly where CUDA is available
    (torch refuses pinned memory without it)."""

    def __init__(self, device="cuda", slots: int = 2, pin_memory: bool | None = None):
        import torch  # lazy: only the torch paths make a ring

        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        self._torch = torch
        self.device = torch.device(device)
        self.on_gpu = self.device.type == "cuda"
        self.pin_memory = torch.cuda.is_available() if pin_memory is None else pin_memory
        self._host = [None] * slots  # flat uint8 host buffers, one per slot
        self._done = [None] * slots  # CUDA event of the copy that last read each slot
        self._next = 0
        self.stream = torch.cuda.Stream(device=self.device) if self.on_gpu else None
        self.staged = 0  # batches staged so far (for tests and reports)

    @property
    def slots(self) -> int:
        return len(self._host)

    def stage(self, pixels):
        """uint8 array (numpy or a CPU tensor) -> a new device tensor of its shape. On a GPU the
        copy is asynchronous on the ring's stream and the caller's current stream is made to wait
        for it; the returned tensor is the caller's (never a view of a slot)."""
        torch = self._torch
        src = torch.as_tensor(pixels)
        if src.dtype != torch.uint8:
            raise TypeError(f"the staging ring takes uint8 pixels, got {src.dtype}")
        k = self._next
        self._next = (k + 1) % self.slots
        if self._done[k] is not None:  # the GPU may still be reading this slot: wait for that copy only
            self._done[k].synchronize()
        host = self._slot(k, src.numel())[:src.numel()].view(src.shape)
        host.copy_(src)
        if not self.on_gpu:
            out = host.to(self.device, copy=True)
        else:
            current = torch.cuda.current_stream(self.device)
            with torch.cuda.stream(self.stream):
                out = torch.empty(src.shape, dtype=torch.uint8, device=self.device)
                out.copy_(host, non_blocking=True)
                done = torch.cuda.Event()
                done.record(self.stream)
            self._done[k] = done
            current.wait_event(done)
            out.record_stream(current)  # allocated on the side stream, used on the current one
        self.staged += 1
        return out

    def _slot(self, k: int, nbytes: int):
        buf = self._host[k]
        if buf is None or buf.numel() < nbytes:
            buf = self._torch.empty(nbytes, dtype=self._torch.uint8, pin_memory=self.pin_memory)
            self._host[k] = buf
        return buf

    def close(self) -> None:
        """Wait for copies in flight, then free the slots."""
        for done in self._done:
            if done is not None:
                done.synchronize()
        self._host = [None] * self.slots
        self._done = [None] * self.slots
