"""A tiny class-structured synthetic latent set (kind "latent") for exercising the latent path
(Parquet shards -> DiT -> CFG) without the ImageNet SD-VAE latents."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .base import Dataset, as_shape, check_positive_int

LATENT_SHAPE = (4, 8, 8)


def make_synthetic_latents(n: int, shape: Sequence[int] = LATENT_SHAPE, num_classes: int = 10, seed: int = 0) -> Dataset:
    """n latents of `shape`: class c is N(mu_c, 0.5^2 I) with mu_c ~ N(0, I) drawn once per seed.

    Labels are balanced (n // num_classes or one more per class) and shuffled; values are of
    unit scale like scaled SD-VAE latents. Deterministic given the seed.
    """
    n = check_positive_int(n, "n")
    num_classes = check_positive_int(num_classes, "num_classes")
    shape = as_shape(shape)
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((num_classes, *shape)).astype(np.float32)  # [K, *shape]
    y = rng.permutation(np.arange(n) % num_classes).astype(np.int64)  # [n]
    x = means[y] + 0.5 * rng.standard_normal((n, *shape)).astype(np.float32)
    return Dataset(torch.from_numpy(x), torch.from_numpy(y), num_classes, "latent", "synthetic_latents", shape)
