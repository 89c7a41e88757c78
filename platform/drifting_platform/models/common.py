"""What every generator shares: the call convention and the (class, CFG scale) conditioning.

A generator is a one-step map x = f(eps, c, alpha) (paper Sec. 3): noise z [N, noise_dim],
class labels [N] (int64) and the CFG scale alpha [N] (float, paper Sec. 3.5: the generator
is told the scale it should sample at) -> x [N, *data_shape] in model space.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn


class Generator(nn.Module):
    """Base class: holds `data_shape`, `num_classes`, `noise_dim` and resolves conditions.

    labels=None is allowed only for unconditional generators (num_classes == 1; it means
    class 0). alpha=None means alpha = 1, i.e. no guidance: the CFG-scale embedding is a
    function of alpha - 1, so alpha = 1 is an ordinary, well-defined input (the one every
    unguided training step uses), not a special case.
    """

    def __init__(self, data_shape: Sequence[int], num_classes: int, noise_dim: int):
        super().__init__()
        self.data_shape = tuple(int(s) for s in data_shape)
        self.num_classes = int(num_classes)
        self.noise_dim = int(noise_dim)
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if self.noise_dim < 1:
            raise ValueError(f"noise_dim must be >= 1, got {noise_dim}")

    def resolve_conditions(
        self, z: torch.Tensor, labels: Optional[torch.Tensor], alpha: Optional[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels int64 [N], alpha float [N]) on z's device, with the defaults filled in."""
        n = z.shape[0]
        if labels is None:
            if self.num_classes != 1:
                raise ValueError(f"labels are required: this generator is conditional on {self.num_classes} classes")
            labels = torch.zeros(n, dtype=torch.long, device=z.device)
        if alpha is None:
            alpha = torch.ones(n, device=z.device)
        alpha = torch.as_tensor(alpha, device=z.device, dtype=torch.float32)
        if alpha.dim() == 0:
            alpha = alpha.expand(n)
        return labels.to(z.device, torch.long).reshape(n), alpha.reshape(n)


def fourier_features(v: torch.Tensor, dim: int, *, min_freq: float = 1 / 16, max_freq: float = 4.0) -> torch.Tensor:
    """[N] -> [N, dim]: sin / cos of v at `dim // 2` log-spaced frequencies (cycles per unit).

    The frequencies span periods from 1 / max_freq to 1 / min_freq, which for CFG scales
    alpha - 1 in [0, 3] gives both a coarse (near-linear) and a fine code. Float32 always.
    """
    half = dim // 2
    freqs = torch.exp(torch.linspace(math.log(min_freq), math.log(max_freq), half, device=v.device))
    args = 2 * math.pi * v.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, v.float()[:, None]], dim=1)
    return emb


class ConditionEmbedding(nn.Module):
    """c = class embedding(label) + MLP(Fourier(alpha - 1)): [N] x [N] -> [N, dim].

    alpha_cond=False drops the alpha branch (a generator trained without CFG).
    """

    def __init__(self, num_classes: int, dim: int, *, alpha_cond: bool = True, freq_dim: int = 64):
        super().__init__()
        self.freq_dim = int(freq_dim)
        self.class_emb = nn.Embedding(num_classes, dim)
        nn.init.normal_(self.class_emb.weight, std=1.0)
        self.alpha_mlp = (
            nn.Sequential(nn.Linear(self.freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim)) if alpha_cond else None
        )

    def forward(self, labels: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        c = self.class_emb(labels)
        if self.alpha_mlp is not None:
            c = c + self.alpha_mlp(fourier_features(alpha - 1.0, self.freq_dim).to(c.dtype))
        return c
