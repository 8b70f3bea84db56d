"""Backends as Polygraphy-style runners: one small interface, one runner per backend.

    runner = make_runner("ckpt.pt")      # chosen by file type
    with runner:                          # activate() ... deactivate()
        out = runner.infer({"image": x})  # x: float32 [B, 3, H, W] normalised RGB
        out["logit"]                      # float32 [B]

Heavy libraries are imported in ``activate``, never at module import: the lean runtime does not
pull in torch unless the torch backend is asked for.
"""
from __future__ import annotations

import os

import numpy as np

from .spec import ModelSpec


class BackendError(RuntimeError):
    """A model that cannot be loaded or run; the message names the file and the problem."""


class Runner:
    """activate() loads; infer(feed) -> {"logit": [B]}; deactivate() frees. ``spec`` is the
    model's preprocessing spec, valid once active."""

    name = "runner"
    spec: ModelSpec

    def __init__(self):
        self.is_active = False

    def activate(self) -> "Runner":
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if not self.is_active:
            raise BackendError(f"{self.name}: infer() before activate()")
        return self.infer_impl(feed)

    def __enter__(self):
        return self.activate()

    def __exit__(self, *exc):
        self.deactivate()

    # subclasses
    def activate_impl(self): ...

    def deactivate_impl(self): ...

    def infer_impl(self, feed): raise NotImplementedError


class TorchRunner(Runner):
    """PyTorch eager on a checkpoint (ours or upstream's): the reference backend."""

    name = "torch"

    def __init__(self, checkpoint: str | os.PathLike, device: str = "auto"):
        super().__init__()
        self.checkpoint = os.fspath(checkpoint)
        self.device_name = device

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
        self.device = torch.device(dev)
        if self.device.type == "cuda":
            use_exact_fp32()  # the reference backend: true fp32, no TF32
        self.model = loaded.model.to(self.device).eval()
        self.spec = loaded.spec

    def deactivate_impl(self):
        del self.model

    def infer_impl(self, feed):
        torch = self._torch
        x = torch.from_numpy(np.ascontiguousarray(feed["image"], dtype=np.float32)).to(self.device)
        with torch.inference_mode():
            logit = self.model(x)
        return {"logit": logit.float().cpu().numpy()}


def make_runner(checkpoint: str | None = None, device: str = "auto") -> Runner:
    """The runner for a model source. Only PyTorch checkpoints exist at this stage."""
    if checkpoint is None:
        raise BackendError("no model given: pass a checkpoint")
    return TorchRunner(checkpoint, device=device)
