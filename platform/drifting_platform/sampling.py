"""One-step sampling from a trained generator, and the sample files it writes.

`generate` is pure torch; `write_samples` and `write_grid` are the only places that write
sample files, so the CLI, the training loop and the trackers all produce the same formats:
`samples.npz` with `samples` (float32, output space) and `labels` (int64, balanced).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch


def balanced_labels(num: int, num_classes: int) -> torch.Tensor:
    """[num] int64: 0, 1, ..., C-1, 0, 1, ... so every class gets num // C or one more."""
    return torch.arange(num, dtype=torch.int64) % max(num_classes, 1)


@torch.no_grad()
def generate(
    generator: torch.nn.Module,
    labels: torch.Tensor,
    *,
    cfg_scale: float = 1.0,
    seed: int = 0,
    batch_size: int = 1000,
    device: str | torch.device = "cpu",
) -> torch.Tensor:
    """x = f(eps, c, alpha) for each label: one network evaluation per sample (1-NFE).

    Returns model-space samples [N, *data_shape] on the CPU. Noise comes from a generator
    seeded with `seed`, so the same (seed, labels) give the same samples.
    """
    was_training = generator.training
    generator.eval()
    rng = torch.Generator().manual_seed(int(seed))
    out = []
    for start in range(0, len(labels), batch_size):
        lab = labels[start : start + batch_size]
        z = torch.randn(len(lab), generator.noise_dim, generator=rng)
        alpha = torch.full((len(lab),), float(cfg_scale))
        x = generator(z.to(device), lab.to(device), alpha.to(device))
        out.append(x.float().cpu())
    generator.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def write_samples(path: str | Path, samples: np.ndarray, labels: np.ndarray, **extra: np.ndarray) -> Path:
    """Atomically write the samples file (`drifting-platform sample`, samples.npz of a run):
    `samples` float32 in output space, `labels` int64, and any `extra` arrays (a latent
    run's `latents`, when `samples` are their decoded images)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp.npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, samples=np.asarray(samples, dtype=np.float32), labels=np.asarray(labels, dtype=np.int64),
                 **{k: np.asarray(v, dtype=np.float32) for k, v in extra.items()})
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_grid(path: str | Path, samples: np.ndarray, labels: np.ndarray, *, reference: np.ndarray | None = None, per_class: int = 10) -> Path:
    """A picture of the samples: an image grid (one row per class) or a 2-D scatter plot."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = np.asarray(samples)
    labels = np.asarray(labels)
    if samples.ndim == 2:  # 2-D points
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
        if reference is not None:
            ax.scatter(reference[:, 0], reference[:, 1], s=2, c="0.75", label="data")
        ax.scatter(samples[:, 0], samples[:, 1], s=2, c="tab:blue", label="generated")
        ax.set_aspect("equal")
        ax.legend(loc="upper right", markerscale=4)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path
    from torchvision.utils import save_image  # torchvision takes seconds to import; grids only

    rows = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)[:per_class]
        rows.append(torch.from_numpy(samples[idx]))
    n = min(len(r) for r in rows)
    grid = torch.cat([r[:n] for r in rows])
    if grid.shape[-1] < 32:  # 8x8 digits are unreadable at 1:1; enlarge without smoothing
        grid = torch.nn.functional.interpolate(grid, scale_factor=32 // grid.shape[-1], mode="nearest")
    save_image(grid.clamp(0, 1), path, nrow=n, padding=1, pad_value=1.0)
    return path
