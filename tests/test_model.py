"""The model's parts against independent references: float64 numpy math, upstream's fixtures."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from lfm.train.model import (
    LFM,
    NPR,
    LFMConfig,
    RandomKSample,
    RankLinearDropout,
    TopKPool,
    build_model,
    check_input_size,
    min_input_size,
    salience_size,
)


def npr_reference(x: np.ndarray) -> np.ndarray:
    """float64 NPR: drop a trailing odd row/column, subtract the 2x nearest down-up sample."""
    h, w = x.shape[-2] - x.shape[-2] % 2, x.shape[-1] - x.shape[-1] % 2
    x = x[..., :h, :w].astype(np.float64)
    up = np.repeat(np.repeat(x[..., ::2, ::2], 2, axis=-2), 2, axis=-1)
    return x - up


@pytest.mark.parametrize("shape", [(1, 3, 8, 8), (2, 3, 9, 7), (1, 3, 3, 5), (3, 3, 64, 33)])
def test_npr_matches_float64_reference(shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    got = NPR()(x).double().numpy()
    np.testing.assert_allclose(got, npr_reference(x.numpy()), rtol=0, atol=1e-6)


def test_npr_is_zero_on_nearest_upsampled_content():
    small = torch.rand(1, 3, 16, 16)
    up = small.repeat_interleave(2, -2).repeat_interleave(2, -1)
    assert NPR()(up).abs().max() == 0
    assert NPR()(torch.rand(1, 3, 32, 32)).abs().max() > 0


@pytest.mark.parametrize("h,w", [(256, 256), (224, 224), (192, 320), (255, 257), (48, 48), (49, 101), (300, 64)])
def test_salience_size_matches_the_network(h, w):
    model = build_model().eval()
    with torch.no_grad():
        maps = model.salience_maps(torch.zeros(1, 3, h, w))
    assert tuple(maps.shape) == (1, 64, *salience_size(h, w))


def test_odd_sizes_drop_the_last_row_and_column():
    model = build_model().eval()
    x = torch.randn(2, 3, 65, 67, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(x), model(x[..., :64, :66]))


def test_too_small_inputs_get_a_clear_error():
    assert min_input_size(16) == 48
    check_input_size(48, 48)  # exactly enough: 4x4 = 16 values per map
    model = build_model().eval()
    with pytest.raises(ValueError, match=r"too small.*minimum square input is 48x48"):
        model(torch.zeros(1, 3, 47, 47))
    with pytest.raises(ValueError, match=r"expected input \[B, 3, H, W\]"):
        model(torch.zeros(1, 4, 64, 64))


def test_top_k_pool_matches_numpy_sort():
    maps = torch.randn(3, 5, 7, 6, generator=torch.Generator().manual_seed(2))
    got = TopKPool(k=4)(maps).numpy()
    flat = maps.numpy().reshape(3, 5, -1)
    ref = -np.sort(-flat, axis=-1)[..., :4].reshape(3, 20)  # channel-major, descending
    np.testing.assert_array_equal(got, ref)


def test_top_k_pool_handles_ties_inf_and_nan_like_torch_topk():
    maps = torch.tensor([[[[1.0, float("-inf"), 1.0], [float("nan"), 0.5, 2.0]]]])
    got = TopKPool(k=3)(maps)[0]
    assert torch.isnan(got[0]) and got[1:].tolist() == [2.0, 1.0]


def test_rank_linear_dropout_rates_fall_with_rank_and_keep_expectation():
    torch.manual_seed(0)
    drop = RankLinearDropout(0.1, 0.3, "linear").train()
    values = torch.ones(20000, 8, 16)
    out = drop(values)
    rate = (out == 0).float().mean(dim=(0, 1))
    expected = np.linspace(0.3, 0.1, 16)  # largest value (position 0) dropped most
    np.testing.assert_allclose(rate.numpy(), expected, atol=0.005)
    np.testing.assert_allclose(out.mean(dim=(0, 1)).numpy(), np.ones(16), atol=0.01)
    assert torch.equal(drop.eval()(values), values)


def test_constant_dropout_reproduces_upstream_rate():
    torch.manual_seed(0)
    out = RankLinearDropout(0.1, 0.3, "constant").train()(torch.ones(20000, 4, 16))
    rate = (out == 0).float().mean(dim=(0, 1)).numpy()
    np.testing.assert_allclose(rate, np.full(16, 0.1), atol=0.005)
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / 0.9))  # upstream scales by 1 / (1 - pmin)


def test_random_k_sample_picks_k_distinct_values_sorted_and_routes_gradient():
    maps = torch.arange(2 * 3 * 5 * 5, dtype=torch.float32).reshape(2, 3, 5, 5).requires_grad_()
    out = RandomKSample(k=6)(maps)
    v = out.detach().reshape(2, 3, 6)
    assert torch.all(v[..., :-1] > v[..., 1:])  # distinct (all values differ) and descending
    for b in range(2):
        for c in range(3):
            assert set(v[b, c].tolist()) <= set(maps[b, c].flatten().tolist())
    out.sum().backward()
    assert torch.equal((maps.grad != 0).sum(dim=(2, 3)), torch.full((2, 3), 6))


def test_aux_logit_only_in_training():
    model = build_model()
    x = torch.randn(2, 3, 64, 64)
    logit, aux = model.train()(x, aux=True)
    assert logit.shape == (2,) and aux.shape == (2,)
    _, aux = model.eval()(x, aux=True)
    assert aux is None
    assert build_model(random_k=False).train()(x, aux=True)[1] is None


def test_gap_pooling_is_global_average_of_the_same_maps():
    model = build_model(pooling="gap").eval()
    assert model.fc.in_features == 64
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = model.salience_maps(x)
        np.testing.assert_allclose(model.features(maps).numpy(), maps.double().mean(dim=(2, 3)).numpy(), rtol=1e-6)


def test_config_round_trip_and_validation():
    cfg = LFMConfig(top_k=8, pooling="topk", dropout="constant")
    assert LFMConfig.from_dict(cfg.to_dict()) == cfg
    assert build_model(cfg.to_dict()).fc.in_features == 64 * 8
    with pytest.raises(ValueError, match="pooling"):
        LFMConfig(pooling="max")
    with pytest.raises(ValueError, match="unknown LFM config keys"):
        LFMConfig.from_dict({"top_k": 16, "depth": 3})
    assert isinstance(build_model(), LFM)


# ---------------------------------------------------------------------------------------------
# Upstream parity


@pytest.fixture(scope="module")
def upstream_model(upstream_ckpt):
    from lfm.train.checkpoint import load_checkpoint

    return load_checkpoint(upstream_ckpt).model


@pytest.mark.parametrize("name", ["rand_b1_256", "rand_b1_224", "rand_b1_192x320"])
def test_upstream_parity_on_tensors(upstream_model, upstream_tensors, name):
    x = torch.from_numpy(upstream_tensors[name].astype(np.float32))
    with torch.no_grad():
        maps = upstream_model.salience_maps(x)
        features = upstream_model.features(maps)
        logit = upstream_model(x)
    for got, key in ((maps, "salience"), (features, "feature"), (logit, "logit")):
        ref = upstream_tensors[f"{name}__{key}"]
        np.testing.assert_allclose(got.numpy(), ref, rtol=1e-4, atol=1e-4, err_msg=key)


def test_upstream_parity_on_images(upstream_model, reference_images):
    from lfm.runtime.preprocess import load_array, normalize
    from lfm.runtime.spec import ModelSpec

    spec = ModelSpec()  # upstream eval: bilinear resize to 256, ImageNet mean/std
    x = np.stack([load_array(p, spec) for p, _, _ in reference_images])
    with torch.no_grad():
        logits = upstream_model(torch.from_numpy(normalize(x, spec.mean, spec.std))).numpy()
    ref = np.array([v for _, v, _ in reference_images])
    assert len(ref) == 110
    np.testing.assert_allclose(logits, ref, rtol=1e-5, atol=1e-3)


def _random_bn_stats(model: LFM, seed: int = 0) -> LFM:
    """Non-trivial BatchNorm statistics and affine terms, so folding them is really exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 3 + 0.05)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return model.eval()


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 75, 67)])
def test_fused_snet_equals_the_float64_model(shape):
    from lfm.train.model import FusedSNet, fuse_for_inference

    torch.manual_seed(0)
    model = _random_bn_stats(build_model())
    fused = fuse_for_inference(model)
    assert isinstance(fused.snet, FusedSNet) and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert model.snet.layer1[1].training is False  # the original is left as it was
    x = torch.randn(*shape)
    with torch.no_grad():
        ref = model.double()(x.double())  # the unfused graph in float64: the reference
        got = fused(x)
    model.float()
    assert ref.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)
    # and the BN really mattered: dropping it moves the logits by far more than the tolerance
    plain = build_model()
    plain.load_state_dict(model.state_dict())
    for m in plain.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.reset_parameters()
    with torch.no_grad():
        assert np.max(np.abs(plain.eval()(x).numpy() - ref.numpy())) > 1e-2


def test_fused_snet_keeps_upstream_parity(upstream_model, upstream_tensors):
    from lfm.train.model import fuse_for_inference

    fused = fuse_for_inference(upstream_model)
    x = torch.from_numpy(upstream_tensors["rand_b1_256"].astype(np.float32))
    with torch.no_grad():
        maps = fused.salience_maps(x)
        logit = fused(x)
    np.testing.assert_allclose(maps.numpy(), upstream_tensors["rand_b1_256__salience"], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(logit.numpy(), upstream_tensors["rand_b1_256__logit"], rtol=1e-4, atol=1e-4)
