"""The paper's multi-scale feature sets of one feature map.

Paper App. A.5: the drifting loss is computed on features of a frozen encoder, at several
scales. From each feature map [C, H, W] the paper takes (a) the per-location vectors,
(b) the global mean and std over locations, (c) the mean and std of every 2x2 patch and
(d) of every 4x4 patch. Each of these is its own feature set with its own loss, and the
losses of all sets are summed (`train/objective.py`).
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

# Added inside the square root of every std feature: keeps d std / d x finite when a patch
# (or a whole map) is constant, where sqrt(var) alone has an infinite derivative.
STD_EPS = 1e-6


def _patch_stats(fmap: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over non-overlapping k x k patches: [N, C, H, W] -> 2 x [N, (H//k)(W//k), C].

    Rows / columns that do not fill a whole patch (H or W not divisible by k) are dropped.
    """
    h, w = fmap.shape[-2:]
    p = fmap[:, :, : (h // k) * k, : (w // k) * k]
    # two passes through avg_pool (a strided reshape + var is ~10x slower on CPU)
    mean = F.avg_pool2d(p, k)  # [N, C, H/k, W/k]
    d = p - F.interpolate(mean, scale_factor=k, mode="nearest")
    std = torch.sqrt(F.avg_pool2d(d * d, k) + STD_EPS)
    return mean.flatten(2).transpose(1, 2), std.flatten(2).transpose(1, 2)


def multiscale_features(fmap: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
    """The paper's multi-scale feature sets (App. A.5) of one feature map.

    fmap: [N, C, H, W]. Returns
      {prefix}.loc                     [N, H*W, C]   (a) every location
      {prefix}.mean, {prefix}.std      [N, 1, C]     (b) over all locations
      {prefix}.p2_mean, {prefix}.p2_std  [N, (H/2)(W/2), C]  (c) 2x2 patches (if H, W >= 2)
      {prefix}.p4_mean, {prefix}.p4_std  [N, (H/4)(W/4), C]  (d) 4x4 patches (if H, W >= 4)
    Statistics are computed in float32 (stable under bf16 autocast); std is
    sqrt(var + STD_EPS), finite with a finite gradient even for a constant map.
    """
    if fmap.dim() != 4:
        raise ValueError(f"multiscale_features expects [N, C, H, W], got {tuple(fmap.shape)}")
    fmap = fmap.float()
    n, c, h, w = fmap.shape
    flat = fmap.flatten(2)  # [N, C, H*W]
    out = {
        f"{prefix}.loc": flat.transpose(1, 2),
        f"{prefix}.mean": flat.mean(dim=2).unsqueeze(1),
        f"{prefix}.std": torch.sqrt(flat.var(dim=2, unbiased=False) + STD_EPS).unsqueeze(1),
    }
    for k in (2, 4):
        if h >= k and w >= k:
            out[f"{prefix}.p{k}_mean"], out[f"{prefix}.p{k}_std"] = _patch_stats(fmap, k)
    return out
