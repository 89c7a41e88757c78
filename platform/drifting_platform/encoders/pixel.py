"""The identity encoder: the drift acts on the samples themselves."""

from __future__ import annotations

from typing import Sequence

import torch

from .base import Encoder, register_encoder
from .multiscale import multiscale_features


@register_encoder("pixel")
class PixelEncoder(Encoder):
    """Raw samples as feature sets (no parameters).

    Vector data (input_shape (D,), e.g. 2-D toys): {"x": [N, 1, D]}.
    Images / latents (input_shape (C, H, W)): {"flat": [N, 1, C*H*W]} and, with
    `multiscale=True`, the multi-scale sets of the image itself ("pix.loc", "pix.mean", ...,
    see `multiscale_features`).
    """

    def __init__(self, input_shape: Sequence[int], *, multiscale: bool = True):
        super().__init__(input_shape)
        if len(self.input_shape) not in (1, 3):
            raise ValueError(f"pixel encoder: input_shape must be (D,) or (C, H, W), got {self.input_shape}")
        self.multiscale = bool(multiscale)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        n = x.shape[0]
        if len(self.input_shape) == 1:
            return {"x": x.reshape(n, 1, -1)}
        out = {"flat": x.reshape(n, 1, -1)}
        if self.multiscale:
            out.update(multiscale_features(x, "pix"))
        return out
