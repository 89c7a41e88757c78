"""2-D toy distributions (numpy, seeded): float32 [n, 2] in data coordinates.

All sets live roughly in [-2.5, 2.5]^2 (the swiss roll's arms reach 3), so one set of drift temperatures (0.02 / 0.05 / 0.2)
means the same thing on each:

- `8gaussians`: 8 modes evenly spaced on the circle of radius 2 (neighbours 1.53 apart),
  isotropic std 0.05: tight enough that a mode is unambiguous (30 std between neighbours),
  wide enough that the smallest temperature still sees a spread of points.
- `25gaussians`: a 5x5 grid of modes at {-2, -1, 0, 1, 2}^2 (spacing 1), std 0.05.
- `checkerboard`: uniform on the 8 black cells of a 4x4 board of unit cells covering [-2, 2]^2.
- `swissroll`: the 2-D swiss roll t (cos t, sin t), t in [1.5 pi, 4.5 pi], scaled by 1/5,
  plus Gaussian noise of std 0.1.
- `moons`: scikit-learn's two moons (noise 0.05), centred and scaled by 1.5.
- `rings`: 4 concentric circles of radius 0.5, 1, 1.5, 2 with points in proportion to the
  circumference (uniform along the arcs), radial noise std 0.03.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch

from .base import Dataset, check_positive_int

DEFAULT_N = 10000
MODE_STD = 0.05  # std of each mode of the Gaussian-mixture sets


def _centers_8() -> np.ndarray:
    angles = np.arange(8) * (2 * np.pi / 8)
    return (2.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)).astype(np.float32)  # [8, 2]


def _centers_25() -> np.ndarray:
    g = np.arange(-2, 3, dtype=np.float32)
    xx, yy = np.meshgrid(g, g, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=1)  # [25, 2]


_CENTERS: dict[str, Callable[[], np.ndarray]] = {"8gaussians": _centers_8, "25gaussians": _centers_25}


def toy_mode_centers(name: str) -> Optional[np.ndarray]:
    """Mode centres [K, 2] (float32) of a Gaussian-mixture toy set; None for any other name."""
    f = _CENTERS.get(name)
    return None if f is None else f()


def _mixture(centers: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    k = rng.integers(0, len(centers), size=n)
    return centers[k] + MODE_STD * rng.standard_normal((n, 2))


def _gaussians8(n, rng):
    return _mixture(_centers_8(), n, rng)


def _gaussians25(n, rng):
    return _mixture(_centers_25(), n, rng)


def _checkerboard(n, rng):
    # column c in {0..3} uniform; in column c the filled rows are those with (row + col) even
    x1 = rng.uniform(-2.0, 2.0, n)
    col = np.floor(x1 + 2.0)
    row = 2 * rng.integers(0, 2, n) + (col % 2)  # rows {0, 2} for even columns, {1, 3} for odd ones
    x2 = row + rng.uniform(0.0, 1.0, n) - 2.0
    return np.stack([x1, x2], axis=1)


def _swissroll(n, rng):
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.uniform(0.0, 1.0, n))
    x = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 5.0
    return x + 0.1 * rng.standard_normal((n, 2))


def _moons(n, rng):
    from sklearn.datasets import make_moons

    x, _ = make_moons(n_samples=n, noise=0.05, random_state=int(rng.integers(0, 2**31 - 1)))
    return (x - np.array([0.5, 0.25])) * 1.5


def _rings(n, rng):
    radii = np.array([0.5, 1.0, 1.5, 2.0])
    counts = np.floor(n * radii / radii.sum()).astype(int)
    counts[-1] += n - counts.sum()  # exactly n points
    r = np.repeat(radii, counts) + 0.03 * rng.standard_normal(n)
    theta = rng.uniform(0.0, 2 * np.pi, n)
    x = np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)
    return x[rng.permutation(n)]  # interleave the rings so a prefix (`limit`) covers all


TOY_SETS: dict[str, Callable[[int, np.random.Generator], np.ndarray]] = {
    "8gaussians": _gaussians8,
    "25gaussians": _gaussians25,
    "checkerboard": _checkerboard,
    "swissroll": _swissroll,
    "moons": _moons,
    "rings": _rings,
}


def sample_toy(name: str, n: int = DEFAULT_N, *, seed: int = 0) -> np.ndarray:
    """n points of toy set `name` as float32 [n, 2]; the same seed gives the same points."""
    if name not in TOY_SETS:
        raise ValueError(f"unknown toy set {name!r}; valid: {', '.join(TOY_SETS)}")
    rng = np.random.default_rng(seed)
    return np.ascontiguousarray(TOY_SETS[name](int(n), rng), dtype=np.float32)


def load_toy(name: str, n: Optional[int] = None, *, seed: int = 0):
    """Toy set `name` as an unconditional `Dataset` (num_classes 1, labels zero)."""
    n = DEFAULT_N if n is None else check_positive_int(n, "n")
    x = torch.from_numpy(sample_toy(name, n, seed=seed))
    return Dataset(x, torch.zeros(n, dtype=torch.int64), 1, "toy", name, (2,))
