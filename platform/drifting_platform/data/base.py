"""The in-memory `Dataset` every data source produces, and helpers shared by the sources.

Spaces (docs/internals.md, "Spaces and shapes"):

- model space: what generators, encoders and the drift loss see. Images in [-1, 1]
  (`x_model = 2 * x01 - 1`), latents as stored, 2-D toy data in data coordinates.
- output space: that of the sample files (`drifting-platform sample`, a run's samples.npz).
  Images in [0, 1] `[N, C, H, W]`, 2-D data `[N, 2]`, latents as stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F

KINDS = ("toy", "image", "latent")


class DataNotFoundError(FileNotFoundError):
    """A data set's files are not where they were said to be (nothing is ever downloaded)."""


@dataclass
class Dataset:
    """A whole data set held in memory, in model space.

    x: float32 [N, *shape] in model space; y: int64 [N] class labels (zeros when unconditional);
    num_classes: 1 when unconditional; kind: "toy" | "image" | "latent"; name: where it came
    from (e.g. "digits"); shape: the per-sample shape, a tuple.
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    kind: str
    name: str
    shape: tuple

    def __post_init__(self) -> None:
        self.x = torch.as_tensor(self.x).to(torch.float32).contiguous()
        self.y = torch.as_tensor(self.y).to(torch.int64).reshape(-1).contiguous()
        self.shape = tuple(int(s) for s in self.shape)
        self.num_classes = int(self.num_classes)
        if self.kind not in KINDS:
            raise ValueError(f"Dataset {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if tuple(self.x.shape[1:]) != self.shape:
            raise ValueError(f"Dataset {self.name!r}: x has per-sample shape {tuple(self.x.shape[1:])}, expected {self.shape}")
        if len(self.y) != len(self.x):
            raise ValueError(f"Dataset {self.name!r}: {len(self.x)} samples but {len(self.y)} labels")
        if self.num_classes < 1:
            raise ValueError(f"Dataset {self.name!r}: num_classes must be >= 1, got {self.num_classes}")
        if len(self.y) and (int(self.y.min()) < 0 or int(self.y.max()) >= self.num_classes):
            raise ValueError(
                f"Dataset {self.name!r}: labels must lie in [0, {self.num_classes}), got [{int(self.y.min())}, {int(self.y.max())}]"
            )

    def __len__(self) -> int:
        return len(self.x)

    def to_output(self, x: Union[torch.Tensor, np.ndarray]) -> np.ndarray:
        """Model space -> output space, float32 numpy (images clamped to [0, 1])."""
        x = torch.as_tensor(x).detach().to("cpu", torch.float32)
        if self.kind == "image":
            x = ((x + 1.0) * 0.5).clamp_(0.0, 1.0)
        return np.ascontiguousarray(x.numpy(), dtype=np.float32)

    def from_output(self, a: Union[np.ndarray, torch.Tensor]) -> torch.Tensor:
        """Output space -> model space, float32 tensor (the inverse of `to_output` on [0, 1])."""
        x = torch.as_tensor(np.asarray(a, dtype=np.float32)).clone()
        if self.kind == "image":
            x = x * 2.0 - 1.0
        return x


def take_first(ds: Dataset, limit: Optional[int]) -> Dataset:
    """The first `limit` samples of `ds` (all of them when limit is None)."""
    if limit is None:
        return ds
    limit = check_positive_int(limit, "limit")
    if limit >= len(ds):
        return ds
    return Dataset(ds.x[:limit].clone(), ds.y[:limit].clone(), ds.num_classes, ds.kind, ds.name, ds.shape)


def resize_images(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of [N, C, H, W] to [N, C, size, size] (antialiased when shrinking)."""
    size = check_positive_int(size, "size")
    if tuple(x.shape[-2:]) == (size, size):
        return x
    shrink = size < min(x.shape[-2:])
    out = []
    for chunk in torch.split(x, 4096):  # bounded peak memory for the large sets
        out.append(F.interpolate(chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink))
    return torch.cat(out)


def check_positive_int(v, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < 1:
        raise ValueError(f"{what} must be a positive integer, got {v!r}")
    return int(v)


def reject_options(name: str, **options) -> None:
    """Raise when an option that `name` does not use was given (a likely config mistake)."""
    given = sorted(k for k, v in options.items() if v is not None)
    if given:
        raise ValueError(f"data set {name!r} does not take {', '.join(given)} (got {', '.join(f'{k}={options[k]!r}' for k in given)})")


def as_shape(shape: Sequence[int]) -> tuple:
    return tuple(int(s) for s in shape)
