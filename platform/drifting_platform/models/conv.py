"""Convolutional generator for small images and latents (8x8 ... 32x32, any channel count)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from .common import ConditionEmbedding, Generator


def start_resolution(h: int, w: int, min_side: int = 4) -> tuple[int, int, int]:
    """(h0, w0, n_up): the smallest map reachable by halving both sides while they stay
    even and >= min_side; the generator upsamples n_up times from it (16 -> 4x4, 2 ups;
    28 -> 7x7, 2 ups; 8 -> 4x4, 1 up)."""
    n_up = 0
    while h % 2 == 0 and w % 2 == 0 and h // 2 >= min_side and w // 2 >= min_side:
        h, w, n_up = h // 2, w // 2, n_up + 1
    return h, w, n_up


def _groups(c: int) -> int:
    for g in (8, 4, 2):
        if c % g == 0:
            return g
    return 1


class FiLMBlock(nn.Module):
    """conv3x3 -> GroupNorm (no affine) -> h * (1 + scale(c)) + shift(c) -> SiLU [-> + input].

    The scale / shift come from the conditioning vector (FiLM, Perez et al. 2018; the
    adaptive-norm form of DiT's adaLN). Residual when the channel count is unchanged.
    """

    def __init__(self, c_in: int, c_out: int, cond_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm = nn.GroupNorm(_groups(c_out), c_out, affine=False)
        self.film = nn.Linear(cond_dim, 2 * c_out)
        # small, not zero: conditioning matters from step 0 and gradients reach the embeddings
        nn.init.normal_(self.film.weight, std=0.02)
        nn.init.zeros_(self.film.bias)
        self.residual = c_in == c_out

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(c)[:, :, None, None].chunk(2, dim=1)  # [N, C, 1, 1] each
        out = F.silu(self.norm(self.conv(h)) * (1 + scale) + shift)
        return h + out if self.residual else out


class ConvGenerator(Generator):
    """z [N, noise_dim] -> linear -> [widths[0], h0, w0] -> (upsample 2x + FiLM blocks)* -> conv3x3.

    data_shape: (C, H, W), e.g. (1, 8, 8), (1, 16, 16), (3, 32, 32) or latents (4, 32, 32).
    widths[i]: channels at the i-th resolution (coarse to fine; the last entry repeats when
    the data needs more levels). blocks: FiLM blocks per resolution. Every block is
    conditioned on the class and the CFG scale alpha (`ConditionEmbedding`: a class
    embedding plus an MLP of Fourier features of alpha - 1).

    output: "linear" (default) leaves the output unbounded: images live in [-1, 1] but a
    tanh would need infinite pre-activations to reach the flat -1 backgrounds of digits,
    and the data's `to_output` clamps anyway; "tanh" bounds it to (-1, 1) for images.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 1,
        *,
        noise_dim: int = 64,
        widths: Sequence[int] = (128, 64, 32),
        blocks: int = 1,
        cond_dim: int = 128,
        output: str = "linear",
        alpha_cond: bool = True,
    ):
        super().__init__(data_shape, num_classes, noise_dim)
        if len(self.data_shape) != 3:
            raise ValueError(f"conv generator: data_shape must be (C, H, W), got {self.data_shape}")
        if output not in ("linear", "tanh"):
            raise ValueError(f"conv generator: output must be 'linear' or 'tanh', got {output!r}")
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1 or blocks < 1:
            raise ValueError(f"conv generator: bad widths={widths} / blocks={blocks}")
        c, h, w = self.data_shape
        self.h0, self.w0, self.n_up = start_resolution(h, w)
        level_widths = [widths[min(i, len(widths) - 1)] for i in range(self.n_up + 1)]
        self.output = output
        self.cond = ConditionEmbedding(self.num_classes, cond_dim, alpha_cond=alpha_cond)
        self.cond_act = nn.SiLU()
        self.inp = nn.Linear(self.noise_dim, level_widths[0] * self.h0 * self.w0)
        self.levels = nn.ModuleList()
        c_in = level_widths[0]
        for c_lvl in level_widths:
            self.levels.append(nn.ModuleList(FiLMBlock(c_in if b == 0 else c_lvl, c_lvl, cond_dim) for b in range(blocks)))
            c_in = c_lvl
        self.out = nn.Conv2d(c_in, c, 3, padding=1)

    def forward(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None, alpha: Optional[torch.Tensor] = None) -> torch.Tensor:
        labels, alpha = self.resolve_conditions(z, labels, alpha)
        n = z.shape[0]
        c = self.cond_act(self.cond(labels, alpha))  # [N, cond_dim]
        h = self.inp(z.reshape(n, -1)).reshape(n, -1, self.h0, self.w0)  # [N, widths[0], h0, w0]
        for i, level in enumerate(self.levels):
            if i > 0:
                h = F.interpolate(h, scale_factor=2, mode="nearest")
            for block in level:
                h = block(h, c)
        x = self.out(h)  # [N, C, H, W]
        return torch.tanh(x) if self.output == "tanh" else x
