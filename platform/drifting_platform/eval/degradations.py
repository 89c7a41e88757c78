"""Controlled degradations of real images: what a sample-quality metric must see.

Each function takes real images `x` [N, C, H, W] in [0, 1] (with labels `y` [N] where the
degradation is per class) and a strength, and returns a degraded set of the same size and
shape; strength 0 returns the images unchanged. They stand for a generator's failures:

- `shrink`: every class pulled toward its mean by `amount` (0.25 / 0.5 / 0.75): within-class
  collapse, what excess attraction does.
- `drop_classes`: the images of `k` classes replaced by images of the other classes (mode
  dropping; the set keeps its size).
- `pixel_noise`: Gaussian noise of std `sigma`, clipped to [0, 1] (poor fidelity).
- `blur`: a Gaussian blur of std `sigma` pixels (lost detail).
- `duplicates`: a fraction `frac` of the images replaced by copies of 5 of them
  (memorisation / repeated samples).

`DEGRADATIONS` maps a name to (function, strengths) for the validation suite
(`tests/test_metric_validation.py`, `scripts/metric_validation.py`). All randomness comes
from `seed`, so every call is reproducible.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if torch.is_tensor(x) else np.asarray(x)


def shrink(x, y, amount: float, *, seed: int = 0) -> np.ndarray:
    """x_i -> m_c + (1 - amount) (x_i - m_c), with m_c the mean of x_i's class."""
    x, y = _np(x).astype(np.float32), _np(y)
    out = x.copy()
    for c in np.unique(y):
        m = x[y == c].mean(axis=0, keepdims=True)
        out[y == c] = m + (1.0 - amount) * (x[y == c] - m)
    return out


def drop_classes(x, y, k: int, *, seed: int = 0) -> np.ndarray:
    """The images of the first `k` classes (in a seeded order) replaced by random images of
    the remaining classes."""
    x, y = _np(x).astype(np.float32), _np(y)
    if k == 0:
        return x.copy()
    rng = np.random.RandomState(seed)
    classes = rng.permutation(np.unique(y))
    gone = np.isin(y, classes[:k])
    keep = np.flatnonzero(~gone)
    if len(keep) == 0:
        raise ValueError(f"dropping {k} classes leaves no images")
    out = x.copy()
    out[gone] = x[rng.choice(keep, int(gone.sum()), replace=True)]
    return out


def pixel_noise(x, y=None, sigma: float = 0.0, *, seed: int = 0) -> np.ndarray:
    x = _np(x).astype(np.float32)
    rng = np.random.RandomState(seed)
    return np.clip(x + sigma * rng.randn(*x.shape).astype(np.float32), 0.0, 1.0)


def gaussian_kernel1d(sigma: float) -> torch.Tensor:
    r = max(1, int(np.ceil(3 * sigma)))
    t = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def blur(x, y=None, sigma: float = 0.0, *, seed: int = 0) -> np.ndarray:
    """Separable Gaussian blur of std `sigma` pixels (edge padding)."""
    x = torch.from_numpy(_np(x).astype(np.float32))
    if sigma <= 0:
        return x.numpy().copy()
    k = gaussian_kernel1d(sigma)
    r = (len(k) - 1) // 2
    n, c, h, w = x.shape
    z = x.reshape(n * c, 1, h, w)
    z = F.conv2d(F.pad(z, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    z = F.conv2d(F.pad(z, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))
    return z.reshape(n, c, h, w).numpy()


def duplicates(x, y=None, frac: float = 0.0, *, seed: int = 0, sources: int = 5) -> np.ndarray:
    """A fraction `frac` of the images (chosen at random) replaced by copies of `sources` images."""
    x = _np(x).astype(np.float32)
    rng = np.random.RandomState(seed)
    n = len(x)
    m = int(round(frac * n))
    out = x.copy()
    if m == 0:
        return out
    src = rng.choice(n, sources, replace=False)
    dst = rng.choice(n, m, replace=False)
    out[dst] = x[src[np.arange(m) % sources]]
    return out


#: name -> (degrade(x, y, strength, seed=...), strengths, what the strength is)
DEGRADATIONS = {
    "shrink": (shrink, (0.25, 0.5, 0.75), "fraction of the way to the class mean"),
    "drop_classes": (drop_classes, (1, 2, 4), "classes dropped"),
    "pixel_noise": (pixel_noise, (0.05, 0.1, 0.2), "noise std"),
    "blur": (blur, (0.5, 0.8, 1.2), "blur std (px)"),
    "duplicates": (duplicates, (0.1, 0.25, 0.5), "fraction replaced by copies of 5 images"),
}


def degrade(name: str, x, y, strength, *, seed: int = 0) -> np.ndarray:
    if name not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {name!r}; known: {', '.join(DEGRADATIONS)}")
    fn = DEGRADATIONS[name][0]
    return fn(x, y, strength, seed=seed)
