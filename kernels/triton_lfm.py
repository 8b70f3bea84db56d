"""LFM on a GPU with the fused Triton kernels: uint8 pixels in, logits out.

    uint8 [B, H, W, 3]
      -> npr_stem     |NPR| * scale -> conv1 (BN folded) -> max-pool -> ReLU, one kernel   [B, 64, Hp, Wp]
      -> layers 2-4   cuDNN convolutions (BN folded, FusedSNet's weights), each followed
                      by max_pool_relu (Triton: 2x2 max-pool + ReLU in one pass)          [B, 512, h, w]
      -> salience     1x1 conv 512 -> 64                                                  [B, 64, h, w]
      -> top_k_pool   Triton kernel                                                       [B, 64 * K]
      -> fc                                                                               [B]

Activations are float16 and channels-last (what cuDNN's tensor-core kernels want; the stem writes
NHWC, which is that layout already). The normalisation needs no pass of its own: the mean cancels
inside NPR and 1 / (255 std) is folded into the stem's weights (see ``lfm.kernels.npr``).
Same function as ``lfm.train.model.LFM`` on the normalised image, up to float16 rounding.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from lfm.train.model import LFM, FusedSNet

from .max_pool_relu import max_pool_relu
from .npr_stem import npr_stem, stem_weights
from .top_k_pool import top_k_pool


class TritonLFM(nn.Module):
    """Built from a trained ``LFM`` (eval mode) and the input spec's std; forward(uint8 NHWC) -> logit [B]."""

    def __init__(self, model: LFM, std=(0.229, 0.224, 0.225), dtype=torch.float16):
        super().__init__()
        if model.config.pooling != "topk":
            raise ValueError("TritonLFM needs Top-K pooling (config.pooling == 'topk')")
        scale = tuple(1.0 / (255.0 * s) for s in std)
        w, b = stem_weights(model.snet.layer1[0], model.snet.layer1[1], scale)
        self.register_buffer("stem_weight", w)
        self.register_buffer("stem_bias", b)
        self.snet = FusedSNet.from_snet(model.snet)
        self.salience = nn.Conv2d(model.salience.in_channels, model.salience.out_channels, 1, bias=False)
        self.salience.load_state_dict(model.salience.state_dict())
        self.fc = nn.Linear(model.fc.in_features, 1)
        self.fc.load_state_dict(model.fc.state_dict())
        self.k = model.config.top_k
        self.act_dtype = dtype
        for m in (self.snet, self.salience, self.fc):
            m.to(dtype=dtype, memory_format=torch.channels_last) if isinstance(m, FusedSNet) else m.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = npr_stem(x, self.stem_weight, self.stem_bias, out_dtype=self.act_dtype).permute(0, 3, 1, 2)
        last = len(self.snet.convs) - 1
        for i in range(1, last + 1):  # layer 1 is the stem
            h = self.snet.convs[i](h)
            h = max_pool_relu(h) if i < last else F.relu(h)
        maps = self.salience(h)
        return self.fc(top_k_pool(maps, self.k)).squeeze(-1)
