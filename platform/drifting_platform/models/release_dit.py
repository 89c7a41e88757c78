"""The authors' released generator (a LightningDiT, "DitGen" in their JAX code) in PyTorch.

What it computes, for noise x [B, C, H, W] (Gaussian times a temperature), class labels,
the CFG scale alpha and `noise_coords` style indices in [0, noise_classes):

  cond   = class_embed(label) + sum_i noise_embed_i(style_i) + 0.02 * RMSNorm(cfg_embed(alpha))
  tokens = Linear(patches of x) + pos_embed          # pos_embed learnable, 2-D sin-cos at init
  tokens = [n_cls_tokens x (Linear(cond) + cls_embed), tokens]   # in-context class tokens
  depth x block: pre-norm (RMSNorm or affine-free LayerNorm) attention and MLP, each
         modulated and gated by adaLN-zero of cond (computed in float32); attention with
         optional QK-norm (over each head) and 1-D RoPE over all tokens, MLP either GELU or
         SwiGLU with the hidden size int(2/3 * mlp_ratio * D) rounded up to a multiple of 32
  out    = Linear(modulate(norm(tokens), adaLN(cond))) on the image tokens, unpatchified.

cfg_embed is DiT's timestep embedder (256 cos/sin frequencies, MLP) applied to alpha itself.
Initialisation follows the release: Xavier-uniform linears with zero biases, N(0, 0.02)
embeddings, class tokens and CFG-embedder linears, zero adaLN and final projections.

As a generator of our registry it takes the flat noise z [N, C*H*W + noise_coords]: the
first C*H*W coordinates are the noise image (times `temperature`), each of the last
`noise_coords` picks a style index uniformly through the normal CDF, so the loop, `sample`
and sweeps drive it like every other generator. `release_forward` is the release's own
call with explicit style indices (the golden tests and converted checkpoints use it).
"""

from __future__ import annotations

import contextlib
import math
from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .common import Generator

RMS_EPS = 1e-6  # the release's RMSNorm / LayerNorm epsilon
CFG_FREQ_DIM = 256  # frequencies of the CFG-scale embedder (DiT's timestep embedder)
CFG_COND_SCALE = 0.02  # the normalised CFG embedding enters the condition at this weight


def release_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """The release's 2-D sin-cos table [grid*grid, dim]: first half encodes the column,
    second half the row (MAE's convention), tokens in row-major order."""
    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.outer(pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    rows, cols = np.meshgrid(np.arange(grid, dtype=np.float64), np.arange(grid, dtype=np.float64), indexing="ij")
    return torch.from_numpy(np.concatenate([one_d(dim // 2, cols), one_d(dim // 2, rows)], axis=1)).float()


def swiglu_hidden(hidden: int, mlp_ratio: float) -> int:
    """The release's SwiGLU width: 2/3 of the MLP width, rounded up to a multiple of 32."""
    h = int(2 / 3 * int(hidden * mlp_ratio))
    return (h + 31) // 32 * 32


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * weight, statistics in float32, output in x's dtype."""

    def __init__(self, dim: int, eps: float = RMS_EPS, affine: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        if self.weight is not None:
            out = out * self.weight.float()
        return out.to(x.dtype)


def _norm(dim: int, rms: bool) -> nn.Module:
    return RMSNorm(dim) if rms else nn.LayerNorm(dim, eps=RMS_EPS, elementwise_affine=False)


def _fp32(device: torch.device):
    """A region computed in float32 even under autocast (adaLN, attention with attn_fp32)."""
    if torch.is_autocast_enabled(device.type):
        return torch.autocast(device_type=device.type, enabled=False)
    return contextlib.nullcontext()


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls produce here: autocast's when it is on, else x's."""
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype


def rope(q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1-D rotary embedding over the token axis of q, k [B, heads, N, d] (halves rotated)."""
    n, d = q.shape[-2], q.shape[-1]
    half = d // 2
    freqs = 1.0 / (10000 ** (torch.arange(half, device=q.device, dtype=torch.float32) / half))
    ang = torch.outer(torch.arange(n, device=q.device, dtype=torch.float32), freqs)  # [N, d/2]
    ang = torch.cat([ang, ang], dim=-1)
    cos, sin = ang.cos().to(q.dtype), ang.sin().to(q.dtype)

    def rot(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-x[..., half:], x[..., :half]], dim=-1)

    return q * cos + rot(q) * sin, k * cos + rot(k) * sin


class ReleaseAttention(nn.Module):
    def __init__(self, dim: int, heads: int, *, qk_norm: bool, rms: bool, use_rope: bool, attn_fp32: bool):
        super().__init__()
        if dim % heads:
            raise ValueError(f"release generator: hidden_size {dim} is not divisible by num_heads {heads}")
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        if qk_norm:
            self.q_norm = RMSNorm(self.head_dim) if rms else nn.LayerNorm(self.head_dim, eps=RMS_EPS)
            self.k_norm = RMSNorm(self.head_dim) if rms else nn.LayerNorm(self.head_dim, eps=RMS_EPS)
        else:
            self.q_norm = self.k_norm = None
        self.use_rope, self.attn_fp32 = use_rope, attn_fp32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).unbind(2)  # [B, N, h, d_h]
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, h, N, d_h]
        ctx = _fp32(x.device) if self.attn_fp32 else contextlib.nullcontext()
        with ctx:
            if self.attn_fp32:
                q, k, v = q.float(), k.float(), v.float()
            if self.use_rope:
                q, k = rope(q, k)
            out = F.scaled_dot_product_attention(q, k, v)
        out = out.transpose(1, 2).reshape(b, n, d)
        return self.proj(out.to(x.dtype))


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1, self.w3, self.w2 = nn.Linear(dim, hidden), nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class GeluMLP(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))  # exact GELU, as the release


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def _ada(linear: nn.Linear, c: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """adaLN parameters silu(c) @ W + b in float32 (the release's precision choice)."""
    with _fp32(c.device):
        return F.linear(F.silu(c.float()), linear.weight.float(), linear.bias.float()).to(dtype)


class ReleaseBlock(nn.Module):
    def __init__(self, dim: int, heads: int, cond_dim: int, mlp_ratio: float, *, qk_norm: bool, swiglu: bool, rms: bool, use_rope: bool, attn_fp32: bool):
        super().__init__()
        self.norm1, self.norm2 = _norm(dim, rms), _norm(dim, rms)
        self.attn = ReleaseAttention(dim, heads, qk_norm=qk_norm, rms=rms, use_rope=use_rope, attn_fp32=attn_fp32)
        self.mlp = SwiGLU(dim, swiglu_hidden(dim, mlp_ratio)) if swiglu else GeluMLP(dim, int(dim * mlp_ratio))
        self.ada = nn.Linear(cond_dim, 6 * dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        dt = _compute_dtype(x)
        sh1, sc1, g1, sh2, sc2, g2 = _ada(self.ada, c, dt).chunk(6, dim=1)
        x = x + g1.unsqueeze(1) * self.attn(_modulate(self.norm1(x), sh1, sc1))
        return x + g2.unsqueeze(1) * self.mlp(_modulate(self.norm2(x), sh2, sc2))


class ReleaseDiTGenerator(Generator):
    """The release's DitGen. Constructor arguments are the release's `model_config` keys
    (see `configs/gen/*.yaml` of the release) plus `temperature` (noise scale when sampling
    through the flat-noise interface). `data_shape` must be (in_channels, input_size,
    input_size) and `num_classes` at most the release's `num_classes` (ImageNet models keep
    1001 embeddings: 1000 classes and the unconditional one)."""

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int = 1,
        *,
        cond_dim: Optional[int] = None,
        hidden_size: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        patch_size: int = 2,
        n_cls_tokens: int = 16,
        noise_classes: int = 64,
        noise_coords: int = 32,
        use_qknorm: bool = True,
        use_swiglu: bool = True,
        use_rope: bool = True,
        use_rmsnorm: bool = True,
        attn_fp32: bool = True,
        embed_classes: Optional[int] = None,
        out_channels: Optional[int] = None,
        temperature: float = 1.0,
        use_bf16: bool = False,  # accepted for release configs; precision is the run's autocast
        use_remat: bool = False,  # accepted for release configs (JAX activation checkpointing)
    ):
        shape = tuple(int(s) for s in data_shape)
        if len(shape) != 3 or shape[1] != shape[2]:
            raise ValueError(f"release generator: data_shape must be (C, S, S), got {shape}")
        c, s, _ = shape
        if s % patch_size:
            raise ValueError(f"release generator: patch_size {patch_size} does not divide the input size {s}")
        if hidden_size % 4:
            raise ValueError(f"release generator: hidden_size {hidden_size} must be divisible by 4 (2-D sin-cos)")
        noise_coords = int(noise_coords)
        noise_classes = int(noise_classes)
        n_style = noise_coords if noise_classes > 0 else 0
        super().__init__(shape, num_classes, c * s * s + n_style)
        cond_dim = int(cond_dim or hidden_size)
        self.config = dict(
            cond_dim=cond_dim, num_classes=int(embed_classes or num_classes), noise_classes=noise_classes,
            noise_coords=noise_coords, input_size=s, in_channels=c, out_channels=int(out_channels or c),
            n_cls_tokens=int(n_cls_tokens), patch_size=int(patch_size), hidden_size=int(hidden_size), depth=int(depth),
            num_heads=int(num_heads), mlp_ratio=float(mlp_ratio), use_qknorm=bool(use_qknorm), use_swiglu=bool(use_swiglu),
            use_rope=bool(use_rope), use_rmsnorm=bool(use_rmsnorm), use_bf16=bool(use_bf16), attn_fp32=bool(attn_fp32),
        )
        if self.config["num_classes"] < self.num_classes:
            raise ValueError(f"release generator: embed_classes {self.config['num_classes']} < the data's {self.num_classes} classes")
        self.out_c = self.config["out_channels"]  # equal to in_channels in every release config
        self.temperature = float(temperature)
        self.n_style = n_style
        self.p, self.grid, self.hidden = int(patch_size), s // int(patch_size), int(hidden_size)
        self.n_cls = int(n_cls_tokens)
        self.class_embed = nn.Embedding(self.config["num_classes"], cond_dim)
        self.noise_embeds = nn.ModuleList(nn.Embedding(noise_classes, cond_dim) for _ in range(n_style))
        self.cfg_fc1, self.cfg_fc2 = nn.Linear(CFG_FREQ_DIM, cond_dim), nn.Linear(cond_dim, cond_dim)
        self.cfg_norm = RMSNorm(cond_dim)
        self.patch_embed = nn.Linear(self.p * self.p * c, self.hidden)
        self.pos_embed = nn.Parameter(release_pos_embed(self.hidden, self.grid).unsqueeze(0))
        if self.n_cls:
            self.cls_proj = nn.Linear(cond_dim, self.hidden)
            self.cls_embed = nn.Parameter(torch.zeros(1, self.n_cls, self.hidden))
        else:
            self.cls_proj, self.cls_embed = None, None
        self.blocks = nn.ModuleList(
            ReleaseBlock(self.hidden, int(num_heads), cond_dim, float(mlp_ratio), qk_norm=bool(use_qknorm), swiglu=bool(use_swiglu),
                         rms=bool(use_rmsnorm), use_rope=bool(use_rope), attn_fp32=bool(attn_fp32))
            for _ in range(int(depth))
        )
        self.final_norm = _norm(self.hidden, bool(use_rmsnorm))
        self.final_ada = nn.Linear(cond_dim, 2 * self.hidden)
        self.final = nn.Linear(self.hidden, self.p * self.p * self.out_c)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The release's initialisation (see the module docstring)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        for m in [self.cfg_fc1, self.cfg_fc2]:
            nn.init.normal_(m.weight, std=0.02)
        for m in [*(b.ada for b in self.blocks), self.final_ada, self.final]:
            nn.init.zeros_(m.weight)
        for e in [self.class_embed, *self.noise_embeds]:
            nn.init.normal_(e.weight, std=0.02)
        if self.cls_embed is not None:
            nn.init.normal_(self.cls_embed, std=0.02)
        with torch.no_grad():
            self.pos_embed.copy_(release_pos_embed(self.hidden, self.grid).unsqueeze(0))

    # ------------------------------------------------------------------ the release's API

    def condition(self, labels: torch.Tensor, cfg_scale: torch.Tensor, noise_labels: Optional[torch.Tensor]) -> torch.Tensor:
        """[B] labels, [B] CFG scale, [B, noise_coords] style indices -> cond [B, cond_dim]."""
        c = self.class_embed(labels)
        for i, emb in enumerate(self.noise_embeds):
            c = c + emb(noise_labels[:, i])
        half = CFG_FREQ_DIM // 2
        with _fp32(c.device):
            freqs = torch.exp(-math.log(10000) * torch.arange(half, device=c.device, dtype=torch.float32) / half)
            args = cfg_scale.float()[:, None] * freqs[None]
            t = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
        t = self.cfg_fc2(F.silu(self.cfg_fc1(t)))
        return c + CFG_COND_SCALE * self.cfg_norm(t)

    def generate_image(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x [B, C, S, S] noise, cond [B, cond_dim] -> samples [B, out_channels, S, S]."""
        b, ch, s, _ = x.shape
        g, p = self.grid, self.p
        if s != g * p:
            raise ValueError(f"release generator: input is {s}x{s}, the model was built for {g * p}x{g * p}")
        tok = x.permute(0, 2, 3, 1).reshape(b, g, p, g, p, ch).permute(0, 1, 3, 2, 4, 5).reshape(b, g * g, p * p * ch)
        h = self.patch_embed(tok) + self.pos_embed
        if self.n_cls:
            ct = self.cls_proj(cond).unsqueeze(1) + self.cls_embed  # [B, n_cls, D]
            h = torch.cat([ct.to(h.dtype), h], dim=1)
        for block in self.blocks:
            h = block(h, cond)
        h = h[:, self.n_cls :]
        dt = _compute_dtype(h)
        shift, scale = _ada(self.final_ada, cond, dt).chunk(2, dim=1)
        out = self.final(_modulate(self.final_norm(h), shift, scale))  # [B, T, p*p*C]
        out = out.reshape(b, g, g, p, p, self.out_c).permute(0, 1, 3, 2, 4, 5).reshape(b, s, s, self.out_c)
        return out.permute(0, 3, 1, 2)

    def release_forward(self, x: torch.Tensor, labels: torch.Tensor, cfg_scale: torch.Tensor, noise_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The release's generator call: x [B, C, H, W] float32 noise (already times the
        temperature), labels [B] int64, cfg_scale [B] float32, noise_labels [B, noise_coords]
        int64 -> samples [B, C, H, W]."""
        if self.n_style and noise_labels is None:
            raise ValueError("release generator: noise_labels [B, noise_coords] are required (noise_classes > 0)")
        cfg_scale = torch.as_tensor(cfg_scale, device=x.device, dtype=torch.float32).expand(x.shape[0])
        return self.generate_image(x, self.condition(labels.long(), cfg_scale, None if noise_labels is None else noise_labels.long()))

    # ------------------------------------------------------------------ our generator API

    def split_noise(self, z: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Flat Gaussian noise [N, noise_dim] -> (image noise x temperature, style indices)."""
        n = z.shape[0]
        z = z.reshape(n, -1)
        if z.shape[1] != self.noise_dim:
            raise ValueError(f"release generator: noise has {z.shape[1]} coordinates per sample, expected {self.noise_dim}")
        x = z[:, : self.noise_dim - self.n_style].reshape(n, *self.data_shape) * self.temperature
        if not self.n_style:
            return x, None
        k = self.config["noise_classes"]
        u = torch.special.ndtr(z[:, -self.n_style :].float())  # N(0, 1) -> U(0, 1)
        return x, (u * k).long().clamp_(0, k - 1)

    def forward(self, z: torch.Tensor, labels: Optional[torch.Tensor] = None, alpha: Optional[torch.Tensor] = None) -> torch.Tensor:
        labels, alpha = self.resolve_conditions(z, labels, alpha)
        x, styles = self.split_noise(z)
        return self.generate_image(x, self.condition(labels, alpha, styles))
