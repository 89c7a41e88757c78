"""MLP generator for vector data (the 2-D toys)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from .common import ConditionEmbedding, Generator


class MLPGenerator(Generator):
    """z [N, noise_dim] -> x [N, *data_shape]: `depth` hidden layers of `hidden` units, SiLU.

    The conditioning vector (class + CFG scale, `ConditionEmbedding`) is added to the first
    hidden layer's pre-activation; for unconditional data (num_classes=1, alpha=1) it is a
    learned constant. The output layer is linear (data coordinates are unbounded).
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 1,
        *,
        noise_dim: int = 32,
        hidden: int = 256,
        depth: int = 3,
        alpha_cond: bool = True,
    ):
        super().__init__(data_shape, num_classes, noise_dim)
        if depth < 1 or hidden < 1:
            raise ValueError(f"mlp: depth and hidden must be >= 1, got depth={depth}, hidden={hidden}")
        self.out_dim = math.prod(self.data_shape)
        self.cond = ConditionEmbedding(self.num_classes, hidden, alpha_cond=alpha_cond)
        self.inp = nn.Linear(self.noise_dim, hidden)
        self.hidden = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(depth - 1))
        self.out = nn.Linear(hidden, self.out_dim)
        self.act = nn.SiLU()
        # He init keeps the hidden activations O(1), so samples start spread out, not
        # collapsed near a point (PyTorch's default shrinks them layer by layer)
        for layer in (self.inp, *self.hidden):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None, alpha: Optional[torch.Tensor] = None) -> torch.Tensor:
        labels, alpha = self.resolve_conditions(z, labels, alpha)
        h = self.act(self.inp(z.reshape(z.shape[0], -1)) + self.cond(labels, alpha))  # [N, hidden]
        for layer in self.hidden:
            h = self.act(layer(h))
        return self.out(h).reshape(z.shape[0], *self.data_shape)
