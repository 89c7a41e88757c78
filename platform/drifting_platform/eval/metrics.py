"""Distribution metrics on features and on 2-D samples: FID, KID, RBF MMD, toy mode coverage.

Chains of small `x_to_y` functions (as torch-fidelity's `metric_fid.py`): features ->
statistics -> metric. Everything takes NumPy arrays or torch tensors `[N, D]` and returns
plain Python floats / ints; the math runs in float64.

- FID (Heusel et al. 2017): ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^1/2).
- KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / D + 1)^3, averaged over random subsets (torch-fidelity's estimator and
  subset sampling, so the numbers agree with `torch_fidelity.calculate_metrics(kid=True)`).
- `mmd_rbf`: MMD^2 with a sum of Gaussian kernels at several bandwidths (2-D toy data).
- `modes_covered` / `high_quality_fraction`: the usual mode-collapse counts for mixtures of
  Gaussians (e.g. `8gaussians`: 8 modes on a circle of radius 2).
"""

from __future__ import annotations

import math

import numpy as np
import torch

KEY_FID = "fid"
KEY_KID = "kid"
KEY_KID_STD = "kid_std"
KEY_MMD = "mmd"
KEY_MODES_COVERED = "modes_covered"
KEY_HIGH_QUALITY = "high_quality_fraction"

# toy-mode defaults (see modes_covered)
MODE_RADIUS_FRACTION = 0.1  # default radius: this fraction of the smallest distance between centres
MODE_MIN_FRACTION = 0.1  # a mode counts when it holds >= this fraction of its expected share


def _as_numpy64(x) -> np.ndarray:
    if torch.is_tensor(x):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    return x


def _as_2d(x, name: str = "features") -> np.ndarray:
    x = _as_numpy64(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be [N, D], got shape {x.shape}")
    return x


# ----------------------------------------------------------------------------- FID


def features_to_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """[N, D] -> (mu [D], sigma [D, D]): mean and unbiased (N - 1) covariance, float64."""
    f = _as_2d(features)
    if len(f) < 2:
        raise ValueError(f"need at least 2 samples for a covariance, got {len(f)}")
    return f.mean(axis=0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sqrt_psd(s: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric PSD matrix (negative eigenvalues from round-off -> 0)."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr((S1 S2)^1/2) = tr((S1^1/2 S2 S1^1/2)^1/2): the symmetric form has real, non-negative
    eigenvalues, so no complex round-off (the failure mode of sqrtm(S1 @ S2) on singular S)."""
    r = _sqrt_psd(sigma1)
    m = r @ sigma2 @ r
    w = np.linalg.eigvalsh((m + m.T) / 2)
    return float(np.sqrt(np.clip(w, 0, None)).sum())


def statistics_to_fid(mu1, sigma1, mu2, sigma2) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2, sigma1, sigma2 = map(_as_numpy64, (mu1, mu2, sigma1, sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(f"mismatched statistics: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / {sigma2.shape}")
    diff = mu1 - mu2
    fid = diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt_product(sigma1, sigma2)
    return float(max(fid, 0.0))  # tiny negatives are round-off


def fid_from_features(a, b) -> float:
    """FID between two feature sets [N1, D] and [N2, D]."""
    return statistics_to_fid(*features_to_statistics(a), *features_to_statistics(b))


# ----------------------------------------------------------------------------- KID


def polynomial_kernel(x: np.ndarray, y: np.ndarray, *, degree: int = 3, gamma: float | None = None, coef0: float = 1.0) -> np.ndarray:
    """k(x, y) = (gamma x.y + coef0)^degree, gamma = 1 / D by default (KID's kernel)."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (x @ y.T * gamma + coef0) ** degree


def kernels_to_mmd2_unbiased(k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray) -> float:
    """Unbiased MMD^2 for equal-size sets (diagonals of k_xx / k_yy excluded), as KID uses it."""
    m = k_xx.shape[0]
    xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
    yy = (k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(xx + yy - 2 * k_xy.mean())


def kid_from_features(a, b, *, subsets: int = 100, subset_size: int = 1000, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0, seed: int = 0) -> tuple[float, float]:
    """KID: unbiased polynomial-kernel MMD^2 over `subsets` random subsets. Returns (mean, std).

    `subset_size` is clipped to the smaller set (it needs >= 2). Subsets are drawn like
    torch-fidelity's (`np.random.RandomState(seed).choice(n, size, replace=False)`, set 1 then
    set 2), so `seed` = torch-fidelity's `rng_seed` gives the same number. Slightly negative
    values are valid and mean "indistinguishable".
    """
    a, b = _as_2d(a), _as_2d(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dims differ: {a.shape[1]} vs {b.shape[1]}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 samples per set, got {len(a)} and {len(b)}")
    rng = np.random.RandomState(seed)
    kern = lambda x, y: polynomial_kernel(x, y, degree=degree, gamma=gamma, coef0=coef0)  # noqa: E731
    mmds = np.zeros(subsets)
    for i in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        mmds[i] = kernels_to_mmd2_unbiased(kern(x, x), kern(x, y), kern(y, y))
    return float(mmds.mean()), float(mmds.std())


# ----------------------------------------------------------------------------- RBF MMD


def median_distance(y: torch.Tensor, *, max_points: int = 1000) -> float:
    """Median pairwise distance within `y` (evenly spaced subsample of at most max_points rows)."""
    if len(y) > max_points:
        y = y[torch.linspace(0, len(y) - 1, max_points).round().long()]
    d = torch.cdist(y, y)
    d = d[~torch.eye(len(y), dtype=torch.bool)]
    med = float(d.median()) if d.numel() else 1.0
    return med if med > 0 else 1.0


def default_bandwidths(y: torch.Tensor) -> tuple[float, ...]:
    """Bandwidths at (1/4, 1/2, 1, 2, 4) x the median pairwise distance of the reference set:
    fixed for a given reference, so runs scored against the same reference are comparable."""
    med = median_distance(y)
    return tuple(med * f for f in (0.25, 0.5, 1.0, 2.0, 4.0))


def _rbf_kernel_sum(x: torch.Tensor, y: torch.Tensor, bandwidths, *, exclude_diagonal: bool, block: int = 2048) -> float:
    """sum_{i,j} sum_h exp(-|x_i - y_j|^2 / (2 h^2)), optionally without i == j (x is y); row blocks."""
    total = 0.0
    inv = torch.tensor([1.0 / (2 * h * h) for h in bandwidths], dtype=x.dtype)
    for i in range(0, len(x), block):
        d2 = torch.cdist(x[i : i + block], y).square()  # [b, M]
        k = torch.exp(-d2[None] * inv[:, None, None]).sum(0)  # [b, M]
        if exclude_diagonal:
            r = torch.arange(k.shape[0])
            k[r, r + i] = 0.0
        total += float(k.sum())
    return total


def mmd_rbf(x, y, *, bandwidths=None, unbiased: bool = True) -> float:
    """MMD^2 between samples x [N, D] and y [M, D] with k = sum_h exp(-|a - b|^2 / (2 h^2)).

    `bandwidths`: the h values; default `default_bandwidths(y)` (multiples of the median
    distance in the reference y). `unbiased=True` (default) is the U-statistic: the i == j
    terms are left out of the within-set sums, so its expectation is exactly 0 when x and y
    come from one distribution (single values may be slightly negative). `unbiased=False` is
    the V-statistic (>= 0, biased upward by O(1/N)). Summed kernels (not averaged), so the
    value scales with the number of bandwidths.
    """
    x = torch.as_tensor(_as_2d(x, "x"))
    y = torch.as_tensor(_as_2d(y, "y"))
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"dims differ: {x.shape[1]} vs {y.shape[1]}")
    bw = default_bandwidths(y) if bandwidths is None else tuple(float(h) for h in bandwidths)
    n, m = len(x), len(y)
    if unbiased:
        if n < 2 or m < 2:
            raise ValueError("the unbiased MMD needs at least 2 samples per set")
        xx = _rbf_kernel_sum(x, x, bw, exclude_diagonal=True) / (n * (n - 1))
        yy = _rbf_kernel_sum(y, y, bw, exclude_diagonal=True) / (m * (m - 1))
    else:
        xx = _rbf_kernel_sum(x, x, bw, exclude_diagonal=False) / (n * n)
        yy = _rbf_kernel_sum(y, y, bw, exclude_diagonal=False) / (m * m)
    xy = _rbf_kernel_sum(x, y, bw, exclude_diagonal=False) / (n * m)
    return float(xx + yy - 2 * xy)


# ----------------------------------------------------------------------------- toy modes


def default_mode_radius(centers) -> float:
    """MODE_RADIUS_FRACTION x the smallest distance between two centres.

    For `8gaussians` (8 centres on a circle of radius 2, spacing 1.53, std ~0.05) that is
    0.153 ~ 3 std: a real sample lies within it with probability 1 - exp(-4.5) ~ 0.99, and
    the discs of neighbouring modes are far apart.
    """
    c = _as_2d(centers, "centers")
    if len(c) < 2:
        raise ValueError("pass radius= explicitly when there is a single centre")
    d = np.sqrt(((c[:, None] - c[None]) ** 2).sum(-1))
    return MODE_RADIUS_FRACTION * float(d[~np.eye(len(c), dtype=bool)].min())


def samples_to_nearest_center(samples, centers) -> tuple[np.ndarray, np.ndarray]:
    """(index [N] of the nearest centre, distance [N] to it)."""
    s, c = _as_2d(samples, "samples"), _as_2d(centers, "centers")
    d = np.sqrt(((s[:, None] - c[None]) ** 2).sum(-1))  # [N, K]
    idx = d.argmin(1)
    return idx, d[np.arange(len(s)), idx]


def samples_to_mode_counts(samples, centers, *, radius: float | None = None) -> np.ndarray:
    """[K] number of samples within `radius` of each centre (each sample goes to its nearest)."""
    radius = default_mode_radius(centers) if radius is None else radius
    idx, dist = samples_to_nearest_center(samples, centers)
    return np.bincount(idx[dist <= radius], minlength=len(_as_2d(centers, "centers")))


def modes_covered(samples, centers, *, radius: float | None = None, min_count: int | None = None,
                  min_fraction: float = MODE_MIN_FRACTION) -> int:
    """Number of modes holding at least `min_count` samples within `radius` of the centre.

    Defaults: `radius = default_mode_radius(centers)` (~3 std for 8gaussians); `min_count =
    ceil(min_fraction * N / K)`, i.e. 10 % of a mode's share under equal weights (at least 1),
    so stray samples do not count as covering a mode.
    """
    counts = samples_to_mode_counts(samples, centers, radius=radius)
    if min_count is None:
        min_count = max(1, math.ceil(min_fraction * len(_as_2d(samples, "samples")) / len(counts)))
    return int((counts >= min_count).sum())


def high_quality_fraction(samples, centers, *, radius: float | None = None) -> float:
    """Fraction of samples within `radius` (default as in modes_covered) of some centre."""
    radius = default_mode_radius(centers) if radius is None else radius
    _, dist = samples_to_nearest_center(samples, centers)
    return float((dist <= radius).mean()) if len(dist) else 0.0


# ----------------------------------------------------------------------------- k-NN manifolds


KEY_PRECISION = "precision"
KEY_RECALL = "recall"
KEY_DENSITY = "density"
KEY_COVERAGE = "coverage"
PRC_NEIGHBORHOOD = 3  # Kynkaanniemi et al. 2019 (and torch-fidelity's default)
DC_NEIGHBORHOOD = 5  # Naeem et al. 2020


def _pairwise(a: torch.Tensor, b: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """[N, M] Euclidean distances, float64, in row blocks."""
    return torch.cat([torch.cdist(a[i : i + block], b) for i in range(0, len(a), block)]) if len(a) else a.new_zeros(0, len(b))


def knn_radii(features, k: int) -> np.ndarray:
    """[N] distance of each row to its k-th nearest other row (the row itself excluded)."""
    f = torch.from_numpy(_as_2d(features))
    if len(f) <= k:
        raise ValueError(f"need more than k={k} samples for k-NN radii, got {len(f)}")
    return _pairwise(f, f).kthvalue(k + 1, dim=1).values.numpy()


def precision_recall(gen, real, *, k: int = PRC_NEIGHBORHOOD) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) of generated features against real ones.

    Each set's manifold is the union of balls around its points with radius = the distance to
    the k-th nearest neighbour in the same set. precision = fraction of generated points inside
    the real manifold (fidelity); recall = fraction of real points inside the generated manifold
    (diversity: a collapsed generator covers few real points). The same computation as
    torch-fidelity's `prc` (inclusive <=).
    """
    g, r = torch.from_numpy(_as_2d(gen, "gen")), torch.from_numpy(_as_2d(real, "real"))
    if g.shape[1] != r.shape[1]:
        raise ValueError(f"feature dims differ: {g.shape[1]} vs {r.shape[1]}")
    rg, rr = torch.from_numpy(knn_radii(g, k)), torch.from_numpy(knn_radii(r, k))
    d = _pairwise(g, r)  # [N_gen, N_real]
    precision = float((d <= rr[None, :]).any(dim=1).double().mean())
    recall = float((d.T <= rg[None, :]).any(dim=1).double().mean())
    return precision, recall


def density_coverage(gen, real, *, k: int = DC_NEIGHBORHOOD) -> tuple[float, float]:
    """Density and coverage (Naeem et al. 2020) of generated features against real ones.

    With r_i the distance of real point i to its k-th nearest real neighbour:
    density = (1 / (k N_gen)) sum_j sum_i [ |g_j - x_i| <= r_i ]  (how many real balls hold a
    generated point, ~1 for matching distributions, unbounded above, robust to real outliers);
    coverage = fraction of real points whose ball holds at least one generated point (in [0, 1],
    falls with mode collapse).
    """
    g, r = torch.from_numpy(_as_2d(gen, "gen")), torch.from_numpy(_as_2d(real, "real"))
    if g.shape[1] != r.shape[1]:
        raise ValueError(f"feature dims differ: {g.shape[1]} vs {r.shape[1]}")
    rr = torch.from_numpy(knn_radii(r, k))
    inside = _pairwise(g, r) <= rr[None, :]  # [N_gen, N_real]
    density = float(inside.double().sum() / (k * len(g)))
    coverage = float(inside.any(dim=0).double().mean())
    return density, coverage
