"""PyTorch as a runner, on a checkpoint (ours or upstream's): the reference backend, or our Triton kernels.

torch and the training package (``lfm.train``) are imported in ``activate`` only: importing this
module costs nothing, and the lean runtime loads torch only when this backend is asked for.
"""
from __future__ import annotations

import os

import numpy as np

from .base import BackendError, Runner


STAGING_SLOTS = 2  # pinned slots of the --kernels path: one batch running, the next one staging


class TorchRunner(Runner):
    """PyTorch on a checkpoint (ours or upstream's). By default the model as trained, eager, in
    true fp32: the reference backend. ``kernels=True``: ``lfm.kernels.triton_lfm.TritonLFM``, our
    fastest GPU path (uint8 pixels in, the fused Triton stem and Top-K kernels, float16 cuDNN
    convolutions); it needs a CUDA GPU (on a CPU the kernels run only in Triton's interpreter,
    TRITON_INTERPRET=1, slowly, in float32: for checks). ``cuda_graphs=True`` on a GPU captures each
    batch shape once as a CUDA graph and replays it (fewer launches; most useful at small batches).
    ``amp=True`` runs the eager model under float16 autocast on CUDA (train/evaluate.py --amp; on a
    CPU it changes nothing).
    """

    name = "torch"

    def __init__(self, checkpoint: str | os.PathLike, device: str = "auto", kernels: bool = False,
                 cuda_graphs: bool = False, amp: bool = False):
        super().__init__()
        self.checkpoint = os.fspath(checkpoint)
        self.device_name = device
        self.kernels = kernels
        self.cuda_graphs = cuda_graphs
        self.amp = amp
        if kernels:
            self.name = "torch-kernels"

    def activate_impl(self):
        try:
            import torch  # noqa: F401  (lazy: only this backend needs torch)
            from lfm.train.checkpoint import CheckpointError, load_checkpoint
            from lfm.train.model import use_exact_fp32
        except ImportError as e:
            raise BackendError(
                f"--checkpoint needs PyTorch and the training package ({e}); install with: pip install -e '.[train]'"
            ) from None
        self._torch = torch
        try:
            loaded = load_checkpoint(self.checkpoint)
        except CheckpointError as e:
            raise BackendError(str(e)) from None
        dev = self.device_name
        if dev == "auto":
            dev = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self.device = torch.device(dev)
        except RuntimeError as e:
            raise BackendError(f"--device {dev}: {e}") from None
        on_gpu = self.device.type == "cuda"
        if on_gpu and not torch.cuda.is_available():
            raise BackendError(f"--device {dev}: no CUDA GPU visible to PyTorch")
        self.spec = loaded.spec
        if self.kernels:
            self.model = self._kernel_model(loaded, on_gpu)
            # TritonLFM takes the decoded bytes as they are: the normalisation is folded into its stem
            self.spec = loaded.spec.replace(input="uint8", layout="NHWC")
            # uint8 batches reach the device through pinned slots, copied on a side stream, the next
            # batch staged while the current one runs (max_in_flight); pinned only where CUDA is
            from lfm.runtime.gpu_input import StagingRing
            self._ring = StagingRing(self.device, slots=STAGING_SLOTS, pin_memory=on_gpu)
        else:
            if on_gpu:
                use_exact_fp32()  # the reference backend: true fp32, no TF32
            self.model = loaded.model.to(self.device).eval()
        self._graphs = {}  # input shape -> (static input, graph, static output)

    def _kernel_model(self, loaded, on_gpu: bool):
        torch = self._torch
        try:
            from lfm.kernels.triton_lfm import TritonLFM
        except ImportError as e:
            raise BackendError(f"--kernels needs Triton ({e}); install with: pip install -e '.[train,kernels]'") from None
        if not on_gpu and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            raise BackendError(f"--kernels runs Triton kernels on a CUDA GPU (device here: {self.device}); on a CPU "
                               "they run only in Triton's interpreter (TRITON_INTERPRET=1: slow, for checks)")
        try:
            net = TritonLFM(loaded.model.eval(), loaded.spec.std, dtype=torch.float16 if on_gpu else torch.float32)
        except ValueError as e:
            raise BackendError(f"{self.checkpoint}: {e}") from None
        return net.to(self.device).eval()

    @property
    def max_in_flight(self) -> int:
        """Batches the Detector may submit before collecting: the staging slots on a GPU (the
        next batch is copied while the current one runs), else one."""
        ring = getattr(self, "_ring", None)
        return ring.slots if ring is not None and ring.on_gpu else 1

    def deactivate_impl(self):
        if getattr(self, "_ring", None) is not None:
            self._ring.close()
            self._ring = None
        del self.model
        self._graphs.clear()

    def infer_impl(self, feed):
        return self.result(self._launch(feed))

    def submit(self, feed):
        """Stage the batch and launch the model without waiting; ``result`` fetches its logits."""
        return self._launch(feed)

    def result(self, handle):
        return {"logit": handle.float().cpu().numpy()}

    def _launch(self, feed):
        torch = self._torch
        if self.kernels:
            x = self._ring.stage(np.ascontiguousarray(feed["pixels"], dtype=np.uint8))
        else:
            x = torch.from_numpy(np.ascontiguousarray(feed["image"], dtype=np.float32)).to(self.device)
        autocast = self.amp and not self.kernels and self.device.type == "cuda"
        with torch.inference_mode(), torch.autocast(device_type=self.device.type, dtype=torch.float16, enabled=autocast):
            if self.cuda_graphs and self.device.type == "cuda":
                return self._replay(x)
            return self.model(x)

    def _replay(self, x):
        """The model as a CUDA graph for x's shape, captured on first sight (after a warm-up on a
        side stream, as PyTorch asks), then replayed with x copied into its static input."""
        torch = self._torch
        key = tuple(x.shape)
        if key not in self._graphs:
            static = x.clone()
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self.model(static)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self.model(static)
            self._graphs[key] = (static, graph, out)
        static, graph, out = self._graphs[key]
        static.copy_(x)
        graph.replay()
        return out.clone()
