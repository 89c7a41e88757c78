"""A frozen, randomly initialised conv net: a cheap multi-scale feature encoder.

Random convolutional features are a known stand-in for learned ones (a random net's
features already separate textures and shapes); the paper's learned encoders (latent-MAE
ResNets, Table 3) plug in behind the same interface.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .base import Encoder, register_encoder
from .multiscale import multiscale_features

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}


@register_encoder("random_cnn")
class RandomCNNEncoder(Encoder):
    """Stages of conv3x3 (stride 1 in the first stage, 2 after) + activation, frozen.

    input_shape: (C, H, W). widths: channels per stage (a list from YAML is fine).
    first_stride: 2 puts the first stage at half resolution (upsampled inputs: 4x cheaper).
    seed: the weights depend on it alone (a local torch.Generator draws them, so the global
    RNG state neither changes them nor is changed). Init: zero-mean normal with std
    gain / sqrt(fan_in) (He et al.), so the activations keep roughly unit scale with depth.
    Returns the multi-scale sets of every stage's output ("s1.loc", "s1.mean", ...,
    "s2.p2_std", ...) and, with include_input=True, the pixel "flat" set [N, 1, C*H*W].
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        *,
        widths: Sequence[int] = (32, 64, 128),
        seed: int = 0,
        activation: str = "gelu",
        include_input: bool = True,
        first_stride: int = 1,
    ):
        super().__init__(input_shape)
        if len(self.input_shape) != 3:
            raise ValueError(f"random_cnn: input_shape must be (C, H, W), got {self.input_shape}")
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ValueError(f"random_cnn: widths must be positive channel counts, got {widths}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"random_cnn: unknown activation {activation!r}; known: {sorted(_ACTIVATIONS)}")
        if int(first_stride) not in (1, 2):
            raise ValueError(f"random_cnn: first_stride must be 1 or 2, got {first_stride}")
        self.widths, self.seed, self.include_input = widths, int(seed), bool(include_input)
        self.act = _ACTIVATIONS[activation]()
        gain = math.sqrt(2.0) if activation in ("relu", "gelu", "silu") else 1.0
        rng = torch.Generator().manual_seed(self.seed)
        self.convs = nn.ModuleList()
        c_in = self.input_shape[0]
        for i, c_out in enumerate(widths):
            # skip_init: no default init, so building does not consume the global RNG
            conv = torch.nn.utils.skip_init(nn.Conv2d, c_in, c_out, 3, stride=int(first_stride) if i == 0 else 2, padding=1)
            with torch.no_grad():
                fan_in = c_in * 9
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=rng) * (gain / math.sqrt(fan_in)))
                conv.bias.zero_()
            self.convs.append(conv)
            c_in = c_out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {"flat": x.reshape(x.shape[0], 1, -1)} if self.include_input else {}
        h = x
        for i, conv in enumerate(self.convs):
            h = self.act(conv(h))
            out.update(multiscale_features(h, f"s{i + 1}"))
        return out
