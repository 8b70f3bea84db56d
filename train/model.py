"""LFM, the Local Focus Mechanism deepfake detector, as small composable modules.

    image [B, 3, H, W] (normalised RGB)
      -> NPR          |x - nearest_up(x[..., ::2, ::2])|        [B, 3, H', W']   (H', W' = H, W rounded down to even)
      -> SNet         4 x (Conv k2 + BN + ReLU), max-pool after 3  [B, 512, h, w]
      -> salience     1x1 conv 512 -> 64, no bias                  [B, 64, h, w]    ("salience maps")
      -> TopKPool     K largest per map, sorted descending          [B, 64 * K]      (channel-major features)
      -> fc           Linear(64 * K, 1)                              [B]              (logit)

Training adds RankLinearDropout on the pooled values and, optionally, Random-K sampling: an
auxiliary logit from K randomly chosen positions of each map through the same ``fc``.
With ``pooling="gap"`` the maps are averaged instead (the paper's ablation): features [B, 64].
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from lfm.runtime.spec import check_input_size, min_input_size, salience_size  # noqa: F401  (re-exported: the geometry lives with the spec)

__all__ = [
    "LFM",
    "LFMConfig",
    "NPR",
    "SNet",
    "TopKPool",
    "GlobalAvgPool",
    "RankLinearDropout",
    "RandomKSample",
    "build_model",
    "FusedSNet",
    "fuse_for_inference",
    "use_exact_fp32",
    "salience_size",
    "min_input_size",
    "check_input_size",
]


# ----------------------------------------------------------------------------------------------
# Geometry: which input sizes the network accepts


# ----------------------------------------------------------------------------------------------
# Modules


class NPR(nn.Module):
    """Neighbouring Pixel Relationships: the residual of a 2x nearest down-up sample.

    [B, C, H, W] -> [B, C, H - H % 2, W - W % 2]. Odd sizes: the last row / column is dropped
    first (upstream crashes there). Upstream computes the same with two frozen convolutions
    (a strided 'pick top-left' conv and an all-ones transposed conv); this is exact, as both
    only copy values.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2], x.shape[-1]
        x = x[..., : h - h % 2, : w - w % 2]
        return x - F.interpolate(x[..., ::2, ::2], scale_factor=2.0, mode="nearest")


def conv_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    # Indices 0/1 keep upstream's state-dict names: snet.layerN.{0,1}.
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, kernel_size=2, padding=0), nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class SNet(nn.Module):
    """Salience network backbone: [B, 3, H, W] -> [B, widths[-1], h, w] (see ``salience_size``)."""

    def __init__(self, in_chans: int = 3, widths: tuple[int, ...] = (64, 128, 256, 512)):
        super().__init__()
        chans = (in_chans, *widths)
        for i in range(len(widths)):
            self.add_module(f"layer{i + 1}", conv_bn_relu(chans[i], chans[i + 1]))
        self.num_layers = len(widths)
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(1, self.num_layers + 1):
            x = getattr(self, f"layer{i}")(x)
            if i < self.num_layers:
                x = self.pool(x)
        return x


class TopKPool(nn.Module):
    """[B, C, h, w] -> [B, C * K]: the K largest values of each map, sorted descending, channel-major.

    Ties, -inf and NaN follow ``torch.topk`` (NaN counts as the largest value).
    """

    def __init__(self, k: int = 16):
        super().__init__()
        self.k = k

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return self.values(maps).flatten(1)

    def values(self, maps: torch.Tensor) -> torch.Tensor:
        """[B, C, h, w] -> [B, C, K], before flattening (where dropout acts)."""
        return torch.topk(maps.flatten(2), self.k, dim=-1, largest=True, sorted=True).values


class GlobalAvgPool(nn.Module):
    """[B, C, h, w] -> [B, C]: the global average pooling LFM replaces (for the ablation)."""

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        return maps.mean(dim=(2, 3))


class RankLinearDropout(nn.Module):
    """Rank-Based Linear Dropout on top-k values [B, C, K] sorted descending.

    The drop probability is linear in the value's rank: ``p_max`` for the largest value down
    to ``p_min`` for the K-th (the order upstream's code assigns: an ascending sort mapped onto
    ``linspace(p_min, p_max)``). Survivors are scaled by 1 / (1 - p_rank), so every element
    keeps its expectation. ``mode="constant"`` reproduces upstream's released code, whose
    ``linspace(pmin, pmin)`` slip drops every value with probability ``p_min``.
    Identity in eval mode.
    """

    def __init__(self, p_min: float = 0.1, p_max: float = 0.3, mode: str = "linear"):
        super().__init__()
        if mode not in ("linear", "constant"):
            raise ValueError(f"dropout mode must be 'linear' or 'constant', got {mode!r}")
        if not 0.0 <= p_min <= p_max < 1.0:
            raise ValueError(f"need 0 <= p_min <= p_max < 1, got p_min={p_min}, p_max={p_max}")
        self.p_min, self.p_max, self.mode = p_min, p_max, mode

    def probabilities(self, k: int, device=None) -> torch.Tensor:
        """[K] drop probability of each rank position (0 = largest value)."""
        if self.mode == "constant":
            return torch.full((k,), self.p_min, device=device)
        return torch.linspace(self.p_max, self.p_min, k, device=device)

    def forward(self, values: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return values
        p = self.probabilities(values.shape[-1], values.device).to(values.dtype)
        keep = (torch.rand_like(values) >= p).to(values.dtype)
        return values * keep / (1.0 - p)

    def extra_repr(self) -> str:
        return f"p_min={self.p_min}, p_max={self.p_max}, mode={self.mode}"


class RandomKSample(nn.Module):
    """[B, C, h, w] -> [B, C * K]: K positions per map drawn uniformly without replacement,
    their values sorted descending (the layout of TopKPool, so one ``fc`` reads both)."""

    def __init__(self, k: int = 16):
        super().__init__()
        self.k = k

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        flat = maps.flatten(2)
        idx = torch.rand(flat.shape, device=flat.device).topk(self.k, dim=-1).indices
        picked = flat.gather(-1, idx)
        return picked.sort(dim=-1, descending=True).values.flatten(1)


# ----------------------------------------------------------------------------------------------
# The model


@dataclass
class LFMConfig:
    """Everything needed to rebuild the architecture; stored in every checkpoint."""

    top_k: int = 16
    pooling: str = "topk"  # "topk" (LFM) | "gap" (ablation)
    dropout: str = "linear"  # "linear" (paper) | "constant" (upstream's code) | "none"
    drop_min: float = 0.1
    drop_max: float = 0.3
    random_k: bool = True  # auxiliary Random-K logit during training
    widths: tuple[int, ...] = (64, 128, 256, 512)
    salience_channels: int = 64

    def __post_init__(self):
        self.widths = tuple(self.widths)
        if self.pooling not in ("topk", "gap"):
            raise ValueError(f"pooling must be 'topk' or 'gap', got {self.pooling!r}")
        if self.dropout not in ("linear", "constant", "none"):
            raise ValueError(f"dropout must be 'linear', 'constant' or 'none', got {self.dropout!r}")
        if self.top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {self.top_k}")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "LFMConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown LFM config keys: {unknown}")
        return cls(**d)


class LFM(nn.Module):
    """The LFM detector. ``forward(x)`` -> logit [B]; ``forward(x, aux=True)`` -> (logit, aux_logit | None)."""

    def __init__(self, config: LFMConfig | None = None):
        super().__init__()
        self.config = cfg = config or LFMConfig()
        self.npr = NPR()
        self.snet = SNet(3, cfg.widths)
        self.salience = nn.Conv2d(cfg.widths[-1], cfg.salience_channels, kernel_size=1, bias=False)
        if cfg.pooling == "topk":
            self.pool = TopKPool(cfg.top_k)
            num_features = cfg.salience_channels * cfg.top_k
        else:
            self.pool = GlobalAvgPool()
            num_features = cfg.salience_channels
        use_dropout = cfg.pooling == "topk" and cfg.dropout != "none"
        self.dropout = RankLinearDropout(cfg.drop_min, cfg.drop_max, cfg.dropout) if use_dropout else nn.Identity()
        self.random_k = RandomKSample(cfg.top_k) if cfg.random_k and cfg.pooling == "topk" else None
        self.fc = nn.Linear(num_features, 1)
        self.num_features = num_features

    def salience_maps(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, salience_channels, h, w]."""
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling() or torch.onnx.is_in_onnx_export()):
            if x.ndim != 4 or x.shape[1] != 3:
                raise ValueError(f"expected input [B, 3, H, W], got {list(x.shape)}")
            check_input_size(x.shape[-2], x.shape[-1], self.config.top_k if self.config.pooling == "topk" else 1)
        return self.salience(self.snet(self.npr(x).abs()))

    def logit_from_residual(self, residual_abs: torch.Tensor) -> torch.Tensor:
        """|NPR| [B, 3, H', W'] -> logit [B] in eval mode: what follows NPR. Lets the uint8
        export compute |NPR| on raw bytes (the mean cancels, only 1/std remains) and reuse the rest."""
        return self.fc(self.features(self.salience(self.snet(residual_abs)))).squeeze(-1)

    def features(self, maps: torch.Tensor) -> torch.Tensor:
        """Salience maps -> pooled features [B, num_features] (dropout applies in training)."""
        if isinstance(self.pool, TopKPool):
            return self.dropout(self.pool.values(maps)).flatten(1)
        return self.pool(maps)

    def forward(self, x: torch.Tensor, aux: bool = False):
        maps = self.salience_maps(x)
        logit = self.fc(self.features(maps)).squeeze(-1)
        if not aux:
            return logit
        aux_logit = None
        if self.training and self.random_k is not None:
            aux_logit = self.fc(self.random_k(maps)).squeeze(-1)
        return logit, aux_logit


class FusedSNet(nn.Module):
    """SNet for inference: each BatchNorm folded into its convolution, and max-pooling before ReLU.

    Both rewrites are exact in real arithmetic: eval-mode BN is an affine map per channel
    (w' = w * g / sqrt(v + eps), b' = (b - m) * g / sqrt(v + eps) + beta), and ReLU is monotone,
    so relu(maxpool(x)) == maxpool(relu(x)) bit for bit. Why: on a GPU the early layers are
    memory-bound (layer 1's output is 255 x 255 x 64 per 256 px image); dropping the BN pass and
    running ReLU on the 4x smaller pooled tensor removes about half of their memory traffic.
    Rounding differs from ``SNet`` only through the folded weights (~1e-6 relative in fp32).
    """

    def __init__(self, convs: list[nn.Conv2d]):
        super().__init__()
        self.convs = nn.ModuleList(convs)

    @classmethod
    def from_snet(cls, snet: SNet) -> "FusedSNet":
        convs = []
        for i in range(1, snet.num_layers + 1):
            conv, bn = getattr(snet, f"layer{i}")[0], getattr(snet, f"layer{i}")[1]
            with torch.no_grad():
                g = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
                bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(g)
                fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                                  bias=True).to(conv.weight.device)
                fused.weight.copy_((conv.weight.double() * g.view(-1, 1, 1, 1)).to(conv.weight.dtype))
                fused.bias.copy_(((bias - bn.running_mean.double()) * g + bn.bias.double()).to(conv.weight.dtype))
            convs.append(fused)
        return cls(convs)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """``start`` > 0: x is already the output of layer ``start`` (pooled and ReLU'd), as a fused
        stem kernel gives it (``lfm.kernels.npr_stem``); the remaining layers run."""
        last = len(self.convs) - 1
        for i, conv in enumerate(self.convs):
            if i < start:
                continue
            x = conv(x)
            if i < last:
                x = F.max_pool2d(x, 2, 2)
            x = F.relu(x, inplace=True)
        return x


def fuse_for_inference(model: LFM) -> LFM:
    """A copy of ``model`` in eval mode with ``snet`` replaced by its ``FusedSNet`` (same logits up
    to rounding). For inference backends that run the PyTorch graph directly (the GPU paths); the
    ONNX export needs none of it (ONNX Runtime and TensorRT fold BN themselves)."""
    import copy

    fused = copy.deepcopy(model).eval()
    fused.snet = FusedSNet.from_snet(model.snet)
    return fused


def use_exact_fp32() -> None:
    """Turn TF32 off for CUDA convolutions and matmuls. PyTorch enables it for cuDNN convolutions
    by default, which moved upstream-parity logits by ~5e-3 on an H200; reference scoring and
    evaluation want true fp32. (Process-wide: training keeps its own AMP/TF32 choices.)"""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def build_model(config: LFMConfig | dict | None = None, **overrides) -> LFM:
    """The one way to build an LFM: from a config (object or dict) plus keyword overrides."""
    if isinstance(config, dict):
        config = LFMConfig.from_dict(config)
    config = dataclasses.replace(config or LFMConfig(), **overrides)
    return LFM(config)
