"""Checkpoint loading: ours and upstream's through one function, clear errors for anything else."""
from __future__ import annotations

import collections

import pytest
import torch

from lfm.runtime.spec import ModelSpec
from lfm.train.checkpoint import CheckpointError, load_checkpoint, make_checkpoint, save_atomic
from lfm.train.model import build_model


class NotAWeight:  # a pickled object that weights_only=True must refuse
    pass


def test_our_checkpoint_round_trips(tmp_path):
    model = build_model(top_k=8, dropout="constant")
    spec = ModelSpec(policy="center-crop", size=224, threshold=0.3, top_k=8)
    path = tmp_path / "ckpt.pt"
    save_atomic(make_checkpoint(model, spec, epoch=3, step=42), path)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind
    loaded = load_checkpoint(path)
    assert loaded.source == "lfm-deploy" and loaded.spec == spec and loaded.raw["step"] == 42
    assert loaded.model.config == model.config and not loaded.model.training
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.model.state_dict()[k]), k


def test_upstream_checkpoint_loads_bare_and_wrapped(upstream_ckpt, tmp_path):
    bare = load_checkpoint(upstream_ckpt)
    assert bare.source == "upstream" and bare.spec == ModelSpec()
    state = torch.load(upstream_ckpt, map_location="cpu", weights_only=True)
    wrapped = tmp_path / "wrapped.pth"
    torch.save({"model": state, "total_steps": 10}, wrapped)  # upstream trainer's save format
    again = load_checkpoint(wrapped)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(bare.model(x), again.model(x))


def test_upstream_with_altered_npr_convolutions_is_refused(upstream_ckpt, tmp_path):
    state = torch.load(upstream_ckpt, map_location="cpu", weights_only=True)
    state["upsample_conv.weight"] = state["upsample_conv.weight"] * 0.5
    path = tmp_path / "odd.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="upsample_conv.weight differs from NPR"):
        load_checkpoint(path)


def test_foreign_architecture_lists_missing_and_unexpected_keys(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(collections.OrderedDict(
        {"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(1000, 512)}), path)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert str(path) in msg and "missing keys" in msg and "snet.layer1.0.weight" in msg
    assert "unexpected keys 1 [conv1.weight]" in msg and "fc.weight has shape" not in msg


def test_wrong_shapes_are_named(tmp_path):
    path = tmp_path / "k8_as_k16.pth"
    torch.save(make_checkpoint(build_model(top_k=8), ModelSpec()) | {"model_args": build_model().config.to_dict()}, path)
    with pytest.raises(CheckpointError, match=r"fc.weight has shape \[1, 512\], the model expects \[1, 1024\]"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "content,match",
    [
        (b"", "empty file"),
        (b"this is not a checkpoint", "not a PyTorch checkpoint"),
    ],
)
def test_corrupt_files(tmp_path, content, match):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_atomic(make_checkpoint(build_model(), ModelSpec()), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint, or truncated/corrupt"):
        load_checkpoint(path)


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": NotAWeight()}, path)
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(tmp_path / "nope.pt")
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


def test_unreadable_checkpoint_is_named_in_words(tmp_path, monkeypatch):
    """Issue 14, item 14: the reason in words, not "[Errno 13] Permission denied: '...'"."""
    import errno

    import torch

    from lfm.train.checkpoint import CheckpointError, read_checkpoint

    path = tmp_path / "ckpt.pt"
    path.write_bytes(b"x" * 16)

    def denied(*args, **kwargs):  # as a non-root user meets a chmod 000 file (root reads anything)
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", denied)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    assert str(e.value) == f"{path}: cannot read the file (permission denied (check the file's owner and mode))"
