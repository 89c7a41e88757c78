"""A small ResNet-style conv encoder for small images and latents (8x8 .. 32x32): what
`pretrain/` trains and the learned encoders (`encoders/learned.py`) load.

GroupNorm instead of BatchNorm: the pre-trained encoder is later frozen and run on small
per-class batches (the drifting loss), where batch statistics would be noisy and would
couple the samples of a batch; GroupNorm normalises each sample on its own.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn
from torch.nn import functional as F


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= 8 that divides `channels`."""
    groups = min(8, channels)
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels)


class BasicBlock(nn.Module):
    """conv3x3-GN-ReLU-conv3x3-GN plus skip, then ReLU (He et al. 2016, "basic block").

    x [N, c_in, H, W] -> [N, c_out, ceil(H/stride), ceil(W/stride)]. The skip is a 1x1
    strided conv + GN when the shape changes, the identity otherwise.
    """

    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = group_norm(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = group_norm(c_out)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), group_norm(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return F.relu(h + self.skip(x))


class ResNetBackbone(nn.Module):
    """Stem conv3x3 (stride `stem_stride`) + GN + ReLU, then `len(widths)` stages of `blocks`
    basic blocks.

    The first block of every stage after the first has stride 2, so stage i (0-based) of an
    [N, in_channels, H, W] input is [N, widths[i], ceil(H / (s 2^i)), ceil(W / (s 2^i))] with
    s = stem_stride (1, or 2 for upsampled inputs such as 32x32 digits, where the first
    stage's per-location features would cost 4x for no extra information).
    `spec` holds the constructor arguments as plain JSON types: `ResNetBackbone(**spec)`
    rebuilds the architecture (then load the state_dict).
    """

    def __init__(self, in_channels: int, widths: Sequence[int] = (32, 64, 128), blocks: int = 1, stem_stride: int = 1):
        super().__init__()
        widths = [int(w) for w in widths]
        if int(in_channels) < 1:
            raise ValueError(f"ResNetBackbone: in_channels must be >= 1, got {in_channels}")
        if not widths or min(widths) < 1:
            raise ValueError(f"ResNetBackbone: widths must be positive channel counts, got {widths}")
        if int(blocks) < 1:
            raise ValueError(f"ResNetBackbone: blocks must be >= 1, got {blocks}")
        if int(stem_stride) not in (1, 2):
            raise ValueError(f"ResNetBackbone: stem_stride must be 1 or 2, got {stem_stride}")
        self.spec: dict[str, Any] = {"in_channels": int(in_channels), "widths": widths, "blocks": int(blocks), "stem_stride": int(stem_stride)}
        self.stem_stride = int(stem_stride)
        self.in_channels, self.widths, self.blocks = int(in_channels), tuple(widths), int(blocks)
        self.stem = nn.Sequential(nn.Conv2d(self.in_channels, widths[0], 3, stride=self.stem_stride, padding=1, bias=False), group_norm(widths[0]))
        self.stages = nn.ModuleList()
        c_in = widths[0]
        for i, c_out in enumerate(widths):
            stage = [BasicBlock(c_in if b == 0 else c_out, c_out, stride=2 if (i > 0 and b == 0) else 1)
                     for b in range(self.blocks)]
            self.stages.append(nn.Sequential(*stage))
            c_in = c_out
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        # GN affine stays (1, 0): zero-initialising each block's last GN (Goyal et al. 2017)
        # made the contrastive losses start near collapse and fall ~2x slower on digits

    @property
    def out_channels(self) -> int:
        """Channels of the last stage (the size of `forward_pooled`)."""
        return self.widths[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x [N, in_channels, H, W] -> [stage_i [N, widths[i], H_i, W_i] for each stage]."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"ResNetBackbone expects [N, {self.in_channels}, H, W], got {tuple(x.shape)}")
        h = F.relu(self.stem(x))
        feats = []
        for stage in self.stages:
            h = stage(h)
            feats.append(h)
        return feats

    def forward_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, in_channels, H, W] -> global average pool of the last stage [N, widths[-1]]."""
        return self.forward(x)[-1].mean(dim=(2, 3))
