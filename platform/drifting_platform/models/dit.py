"""A DiT-style transformer generator (Peebles & Xie 2023), as the paper's Table 8 uses it.

Noise shaped like the data (latents [4, 32, 32] for the paper) is patchified into tokens;
transformer blocks with adaLN-zero modulation are conditioned on class + CFG scale
(+ optional style embeddings); learnable register tokens join the sequence; the output
tokens are unpatchified back to the data's shape in one network evaluation.

Differences from DiT: there is no timestep (one-step generator) but a CFG-scale embedding
in its place; the final projection is not zero-initialised, so the generator starts with
outputs that differ across noise draws (a collapsed start would give every sample the same
drift); optional style tokens (paper Table 8: 32 style tokens): each of `style_tokens`
extra noise coordinates picks one of `style_codebook` learned embeddings through the
normal CDF (a uniform index), and their sum joins the conditioning vector.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .common import ConditionEmbedding, Generator


def sincos_pos_embed_2d(dim: int, gh: int, gw: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding [gh * gw, dim] (MAE / DiT), dim % 4 == 0."""
    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gy, gx = np.meshgrid(np.arange(gh, dtype=np.float64), np.arange(gw, dtype=np.float64), indexing="ij")
    emb = np.concatenate([one_d(dim // 2, gy), one_d(dim // 2, gx)], axis=1)
    return torch.from_numpy(emb).float()


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # [N, h, T, d_h]
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, t, d))


class DiTBlock(nn.Module):
    """Pre-norm attention + MLP, each gated and modulated by adaLN-zero from the condition."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, dim))
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(dim, 6 * dim))
        nn.init.zeros_(self.ada[1].weight)  # adaLN-zero: every block starts as the identity
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c).chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * self.attn(modulate(self.norm1(x), sh1, sc1))
        return x + g2.unsqueeze(1) * self.mlp(modulate(self.norm2(x), sh2, sc2))


class DiTGenerator(Generator):
    """noise [N, noise_dim] -> x [N, C, H, W] with a DiT (patch `patch_size`).

    noise_dim = C*H*W + style_tokens: the first C*H*W coordinates are the noise image,
    the rest pick style embeddings. Without style tokens, z may also be given as
    [N, C, H, W]. register_tokens: learnable tokens appended to the patch tokens and
    dropped at the output (extra working memory for attention).
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 1,
        *,
        patch_size: int = 2,
        hidden: int = 384,
        depth: int = 6,
        heads: int = 6,
        mlp_ratio: float = 4.0,
        register_tokens: int = 0,
        style_tokens: int = 0,
        style_codebook: int = 64,
        alpha_cond: bool = True,
    ):
        if len(tuple(data_shape)) != 3:
            raise ValueError(f"dit: data_shape must be (C, H, W), got {tuple(data_shape)}")
        c, h, w = (int(s) for s in data_shape)
        if h % patch_size or w % patch_size:
            raise ValueError(f"dit: patch size {patch_size} does not divide {h}x{w}")
        if hidden % heads or hidden % 4:
            raise ValueError(f"dit: hidden={hidden} must be divisible by heads={heads} and by 4")
        super().__init__(data_shape, num_classes, c * h * w + int(style_tokens))
        self.patch_size, self.hidden = int(patch_size), int(hidden)
        self.gh, self.gw = h // patch_size, w // patch_size
        self.n_registers, self.n_style = int(register_tokens), int(style_tokens)
        self.patch_embed = nn.Conv2d(c, hidden, patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(hidden, self.gh, self.gw).unsqueeze(0), persistent=False)
        self.registers = nn.Parameter(torch.randn(1, self.n_registers, hidden) * 0.02) if self.n_registers else None
        self.cond = ConditionEmbedding(self.num_classes, hidden, alpha_cond=alpha_cond, freq_dim=256)
        self.style = nn.Embedding(style_codebook, hidden) if self.n_style else None
        self.blocks = nn.ModuleList(DiTBlock(hidden, heads, mlp_ratio) for _ in range(depth))
        self.final_norm = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.final_ada = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 2 * hidden))
        self.final = nn.Linear(hidden, patch_size * patch_size * c)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear) and m is not self.final_ada[1]:
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for block in self.blocks:  # xavier above overwrote adaLN-zero
            nn.init.zeros_(block.ada[1].weight)
            nn.init.zeros_(block.ada[1].bias)
        nn.init.zeros_(self.final_ada[1].weight)
        nn.init.zeros_(self.final_ada[1].bias)
        # output std ~0.5 at init, on the scale of the data (images in [-1, 1])
        nn.init.normal_(self.final.weight, std=0.5 / math.sqrt(self.hidden))
        w = self.patch_embed.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.bias)
        nn.init.normal_(self.cond.class_emb.weight, std=0.02)
        if self.style is not None:
            nn.init.normal_(self.style.weight, std=0.02)

    def unpatchify(self, tokens: torch.Tensor) -> torch.Tensor:
        """[N, gh*gw, p*p*C] -> [N, C, H, W]."""
        n, p, c = tokens.shape[0], self.patch_size, self.data_shape[0]
        x = tokens.reshape(n, self.gh, self.gw, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(n, c, self.gh * p, self.gw * p)

    def forward(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None, alpha: Optional[torch.Tensor] = None) -> torch.Tensor:
        labels, alpha = self.resolve_conditions(z, labels, alpha)
        n = z.shape[0]
        z = z.reshape(n, -1)
        if z.shape[1] != self.noise_dim:
            raise ValueError(f"dit: noise has {z.shape[1]} coordinates per sample, expected {self.noise_dim}")
        img = z[:, : self.noise_dim - self.n_style].reshape(n, *self.data_shape)
        c = self.cond(labels, alpha)  # [N, D]
        if self.style is not None:
            u = torch.special.ndtr(z[:, -self.n_style :].float())  # N(0,1) -> U(0,1)
            idx = (u * self.style.num_embeddings).long().clamp_(0, self.style.num_embeddings - 1)
            c = c + self.style(idx).sum(dim=1)
        x = self.patch_embed(img).flatten(2).transpose(1, 2) + self.pos_embed  # [N, T, D]
        if self.registers is not None:
            x = torch.cat([x, self.registers.expand(n, -1, -1).to(x.dtype)], dim=1)
        for block in self.blocks:
            x = block(x, c)
        shift, scale = self.final_ada(c).chunk(2, dim=1)
        x = self.final(modulate(self.final_norm(x[:, : self.gh * self.gw]), shift, scale))  # [N, T, p*p*C]
        return self.unpatchify(x)
