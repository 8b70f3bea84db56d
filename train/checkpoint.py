"""Checkpoints: ours and upstream's load through one function, always with ``weights_only=True``.

Our checkpoint is a plain dict (as nanoGPT's)::

    {"format": "lfm-deploy/1", "model_args": LFMConfig.to_dict(), "model": state_dict,
     "spec": ModelSpec.to_dict(), "optimizer": ..., "epoch": int, "step": int,
     "best": {...}, "train_args": {...}}

Upstream's (``lmlpy/LFM``) is a bare state dict, or ``{"model": state_dict, ...}`` as its
trainer saves it, with the keys ``downsample_conv``, ``upsample_conv``, ``cnn.layerN.{0,1}``,
``covn1_1`` and ``fc1``. Its two frozen convolutions implement NPR; they are checked to hold
exactly NPR's weights and then dropped, since our ``NPR`` module computes the same exactly.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass, field

import torch

from lfm.runtime.files import first_line, give_default_mode, write_target
from lfm.runtime.spec import ModelSpec

from .model import LFM, LFMConfig, build_model

FORMAT = "lfm-deploy/1"

# upstream prefix -> ours
UPSTREAM_PREFIXES = {"cnn.": "snet.", "covn1_1.": "salience.", "fc1.": "fc."}
UPSTREAM_NPR_KEYS = ("downsample_conv.weight", "upsample_conv.weight")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


@dataclass
class LoadedCheckpoint:
    model: LFM
    spec: ModelSpec
    source: str  # "lfm-deploy" | "upstream"
    path: str
    raw: dict = field(repr=False, default_factory=dict)  # the whole dict (training state), ours only


def _npr_weights() -> tuple[torch.Tensor, torch.Tensor]:
    """The weights upstream's frozen down/up convolutions hold: pick top-left, copy to 2x2."""
    down = torch.zeros(3, 3, 2, 2)
    up = torch.zeros(3, 3, 2, 2)
    for c in range(3):
        down[c, c, 0, 0] = 1.0
        up[c, c] = 1.0
    return down, up


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """torch.load with weights_only=True, with one clear error line per failure mode."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if os.path.getsize(path) == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes)")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as e:  # permission denied, I/O error: the file, not its contents
        from lfm.runtime.cli import describe_os_error

        raise CheckpointError(f"{path}: cannot read the file ({describe_os_error(e)})") from None
    except pickle.UnpicklingError as e:
        # torch wraps the real reason in advice about weights_only=False, which we never take.
        text = str(e)
        reason = first_line(text.split("WeightsUnpickler error:", 1)[-1], empty="")
        if "Unsupported global" in text:
            raise CheckpointError(
                f"{path}: refused to load: it holds Python objects other than tensors and plain "
                f"containers, and only weights_only=True loading is allowed ({reason})"
            ) from None
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or truncated/corrupt ({reason})") from None
    except Exception as e:  # the unpickler raises anything from IndexError to RuntimeError on garbage
        raise CheckpointError(f"{path}: not a PyTorch checkpoint, or truncated/corrupt ({first_line(e)})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of weights, found {type(obj).__name__}")
    return obj


def _summarise(keys, limit: int = 8) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} [{shown}{', ...' if len(keys) > limit else ''}]"


def _load_state(model: LFM, state: dict, path: str) -> None:
    expected = model.state_dict()
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: not an LFM checkpoint of this architecture: "
            f"missing keys {_summarise(missing)}; unexpected keys {_summarise(unexpected)}"
        )
    for k, v in state.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(f"{path}: entry {k!r} is a {type(v).__name__}, not a tensor")
        if tuple(v.shape) != tuple(expected[k].shape):
            raise CheckpointError(
                f"{path}: {k} has shape {list(v.shape)}, the model expects {list(expected[k].shape)}"
            )
    model.load_state_dict(state, strict=True)


def upstream_to_ours(state: dict, path: str = "<state dict>") -> dict:
    """Rename upstream's keys to ours after checking its NPR convolutions are the fixed ones."""
    out = {}
    down, up = _npr_weights()
    for key, ref in zip(UPSTREAM_NPR_KEYS, (down, up)):
        if key in state:
            w = state[key]
            if not isinstance(w, torch.Tensor) or w.shape != ref.shape or not torch.equal(w.float().cpu(), ref):
                raise CheckpointError(
                    f"{path}: {key} differs from NPR's fixed down/up-sampling weights; "
                    "this is not an LFM model with the NPR residual"
                )
    for k, v in state.items():
        if k in UPSTREAM_NPR_KEYS:
            continue
        for old, new in UPSTREAM_PREFIXES.items():
            if k.startswith(old):
                k = new + k[len(old):]
                break
        out[k] = v
    return out


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> LoadedCheckpoint:
    """Our checkpoint or upstream's -> a model in eval mode, its preprocessing spec, and the raw dict."""
    path = os.fspath(path)
    obj = read_checkpoint(path, map_location)
    if obj.get("format", "").startswith("lfm-deploy"):
        try:
            config = LFMConfig.from_dict(obj["model_args"])
            spec = ModelSpec.from_dict(obj.get("spec", {}))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path}: malformed lfm-deploy checkpoint ({e})") from None
        model = build_model(config)
        _load_state(model, obj["model"], path)
        source, raw = "lfm-deploy", obj
    else:
        # Upstream's layout (or a foreign file: the key check then lists what it lacks).
        state = obj["model"] if isinstance(obj.get("model"), dict) else obj
        top_k = 16
        # Upstream's released code drops at a constant rate; matters only if this model is trained on.
        model = build_model(LFMConfig(top_k=top_k, dropout="constant"))
        _load_state(model, upstream_to_ours(state, path), path)
        spec, source, raw = ModelSpec(top_k=top_k), "upstream", {}
    model.eval()
    return LoadedCheckpoint(model=model, spec=spec, source=source, path=path, raw=raw)


def save_atomic(obj, path: str | os.PathLike) -> None:
    """torch.save to a temporary file beside ``path``, fsync, then rename: a crash never leaves
    a half-written checkpoint at ``path``."""
    path = write_target(os.fspath(path))  # through a symlink, as a shell's `> path` would
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=directory)
    give_default_mode(fd)  # readable as a plain open() would make it, not mkstemp's 600
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def make_checkpoint(model: LFM, spec: ModelSpec, **state) -> dict:
    """Our checkpoint dict: plain values and tensors only, so it loads with weights_only=True."""
    net = model.module if hasattr(model, "module") else model
    return {
        "format": FORMAT,
        "model_args": net.config.to_dict(),
        "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
        "spec": spec.to_dict(),
        **state,
    }
