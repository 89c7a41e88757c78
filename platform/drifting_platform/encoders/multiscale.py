"""The paper's multi-scale feature sets of one feature map.

Paper App. A.5: the drifting loss is computed on features of a frozen encoder, at several
scales. From each feature map [C, H, W] the paper takes (a) the per-location vectors,
(b) the global mean and std over locations, (c) the mean and std of every 2x2 patch and
(d) of every 4x4 patch. Each of these is its own feature set with its own loss, and the
losses of all sets are summed (`train/objective.py`). `feature_scale` and
`select_feature_sets` name and pick these scales (config `drift.feature_scales`, the paper's
multi-scale ablation).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Optional, TypeVar

import torch
from torch.nn import functional as F

from ..config import FEATURE_SCALES, ConfigError

# the name suffix of each feature set `multiscale_features` writes -> its scale
SCALE_OF_SUFFIX = {
    "loc": "loc",  # (a)
    "mean": "global", "std": "global",  # (b)
    "p2_mean": "patch2", "p2_std": "patch2",  # (c)
    "p4_mean": "patch4", "p4_std": "patch4",  # (d)
}

V = TypeVar("V")

# Added inside the square root of every std feature: keeps d std / d x finite when a patch
# (or a whole map) is constant, where sqrt(var) alone has an infinite derivative.
STD_EPS = 1e-6


def _patch_stats(fmap: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std over non-overlapping k x k patches: [N, C, H, W] -> 2 x [N, (H//k)(W//k), C].

    Rows / columns that do not fill a whole patch (H or W not divisible by k) are dropped.
    """
    h, w = fmap.shape[-2:]
    p = fmap[:, :, : (h // k) * k, : (w // k) * k]
    # two passes through avg_pool (a strided reshape + var is ~10x slower on CPU); the mean
    # subtracted is detached (the variance does not change with it: that gradient is zero)
    mean = F.avg_pool2d(p, k)  # [N, C, H/k, W/k]
    d = p - F.interpolate(mean.detach(), scale_factor=k, mode="nearest")
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
    flat = fmap.flatten(2)  # [N, C, H*W] (a view, for NCHW and channels-last maps alike)
    mean = flat.mean(dim=2, keepdim=True)  # [N, C, 1]
    # two-pass variance about the mean (Tensor.var is ~4x slower on CPU); the mean is
    # detached: the variance does not change with it, so its gradient path is exactly zero
    d = flat - mean.detach()
    out = {
        f"{prefix}.loc": flat.transpose(1, 2),
        f"{prefix}.mean": mean.transpose(1, 2),
        f"{prefix}.std": torch.sqrt((d * d).mean(dim=2, keepdim=True) + STD_EPS).transpose(1, 2),
    }
    for k in (2, 4):
        if h >= k and w >= k:
            out[f"{prefix}.p{k}_mean"], out[f"{prefix}.p{k}_std"] = _patch_stats(fmap, k)
    return out


def feature_scale(name: str) -> Optional[str]:
    """The scale of feature set `name` ("loc", "global", "patch2" or "patch4"), or None.

    Only the names `multiscale_features` writes have a scale: `<prefix>.loc` (a),
    `<prefix>.mean` / `.std` (b), `<prefix>.p2_mean` / `.p2_std` (c), `<prefix>.p4_mean` /
    `.p4_std` (d). Others (the input "flat", release_mae's "global" and `<layer>_mean_2`
    sets) have none."""
    prefix, dot, suffix = name.rpartition(".")
    return SCALE_OF_SUFFIX.get(suffix) if dot and prefix else None


def select_feature_sets(feats: Mapping[str, V], scales: Iterable[str]) -> dict[str, V]:
    """The feature sets of `feats` whose scale is in `scales`, and every set without a scale,
    in their order. A selection that keeps nothing is a ConfigError naming
    drift.feature_scales (an unknown scale is one too)."""
    scales = tuple(scales)
    unknown = [s for s in scales if s not in FEATURE_SCALES]
    if unknown:
        raise ConfigError(f"drift.feature_scales: {unknown[0]!r} is not one of {list(FEATURE_SCALES)}")
    out = {k: v for k, v in feats.items() if feature_scale(k) in (None, *scales)}
    if feats and not out:
        have = sorted({feature_scale(k) for k in feats} - {None})
        raise ConfigError(
            f"drift.feature_scales: {list(scales)} selects none of the encoder's {len(feats)} feature sets "
            f"(their scales: {', '.join(have) or 'none'})"
        )
    return out
