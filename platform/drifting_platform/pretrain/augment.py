"""Batched, torch-only augmentations for small images and latents.

Every random number comes from the `torch.Generator` passed in (drawn on the generator's
device, then moved to the data's device), so a view depends on the generator's state alone
and the global RNG is neither used nor changed. Images are [N, C, H, W] floats with values
roughly in [-1, 1]; every transform is one batched op (no per-sample Python loop).

The geometric part (random resized crop + rotation + translation + optional horizontal
flip) is a single per-sample affine warp (`F.affine_grid` / `F.grid_sample`), as in
SimCLR's augmentation family (Chen et al. 2020) minus colour ops that make no sense for
one-channel digits or latents.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F


def _uniform(generator: torch.Generator, n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    """[n] float32 uniform in [low, high), drawn from `generator`, returned on `device`."""
    u = torch.rand(n, generator=generator, device=generator.device)
    return (low + (high - low) * u).to(device)


def random_affine_theta(
    n: int,
    generator: torch.Generator,
    *,
    scale: tuple[float, float] = (0.6, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    max_rotate_deg: float = 10.0,
    max_translate: float = 0.1,
    hflip: bool = False,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """[n, 2, 3] affine matrices (output -> input normalised coords) for `F.affine_grid`.

    Random resized crop: the crop covers an area fraction ~ U(scale) of the image with
    aspect ratio log-uniform in `ratio` (sides clamped to the image), centred anywhere the
    crop fits; then a rotation ~ U(+-max_rotate_deg) and an extra shift ~ U(+-max_translate)
    (in units of half the image side); with `hflip`, half the samples are mirrored.
    """
    device = torch.device(device)
    area = _uniform(generator, n, scale[0], scale[1], device)
    log_r = _uniform(generator, n, math.log(ratio[0]), math.log(ratio[1]), device)
    sx = torch.sqrt(area * torch.exp(log_r)).clamp(max=1.0)  # crop width / image width
    sy = torch.sqrt(area / torch.exp(log_r)).clamp(max=1.0)
    # crop centre: anywhere the crop stays inside the image, then the extra shift
    cx = (1 - sx) * _uniform(generator, n, -1.0, 1.0, device) + _uniform(generator, n, -max_translate, max_translate, device)
    cy = (1 - sy) * _uniform(generator, n, -1.0, 1.0, device) + _uniform(generator, n, -max_translate, max_translate, device)
    angle = _uniform(generator, n, -max_rotate_deg, max_rotate_deg, device) * (math.pi / 180)
    flip = torch.ones(n, device=device)
    if hflip:
        flip = torch.where(_uniform(generator, n, 0.0, 1.0, device) < 0.5, -flip, flip)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # theta = R(angle) @ diag(sx * flip, sy), translation (cx, cy)
    row0 = torch.stack([cos * sx * flip, -sin * sy, cx], dim=1)
    row1 = torch.stack([sin * sx * flip, cos * sy, cy], dim=1)
    return torch.stack([row0, row1], dim=1)  # [n, 2, 3]


def affine_warp(x: torch.Tensor, theta: torch.Tensor, padding_mode: str = "border") -> torch.Tensor:
    """Warp x [N, C, H, W] by theta [N, 2, 3] (bilinear); same shape and dtype."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)


def jitter(x: torch.Tensor, generator: torch.Generator, *, brightness: float, contrast: float) -> torch.Tensor:
    """Per-sample contrast (scale about the sample mean by U(1 +- contrast)) then brightness
    (add U(+-brightness)). x [N, C, H, W] -> same shape."""
    n = x.shape[0]
    c = _uniform(generator, n, 1 - contrast, 1 + contrast, x.device).to(x.dtype).view(n, 1, 1, 1)
    b = _uniform(generator, n, -brightness, brightness, x.device).to(x.dtype).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * c + mean + b


def gaussian_noise(x: torch.Tensor, generator: torch.Generator, std: float) -> torch.Tensor:
    """x + N(0, std^2) i.i.d. per element. x [N, C, H, W] -> same shape."""
    noise = torch.randn(x.shape, generator=generator, device=generator.device).to(device=x.device, dtype=x.dtype)
    return x + std * noise


def random_erase(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    prob: float,
    area: tuple[float, float] = (0.05, 0.2),
    value: float = 0.0,
) -> torch.Tensor:
    """Cutout (Zhong et al. 2020): with probability `prob` per sample, one axis-aligned
    rectangle of area fraction ~ U(area) (square-ish) is set to `value`.
    x [N, C, H, W] -> same shape."""
    n, _, h, w = x.shape
    dev = x.device
    apply = _uniform(generator, n, 0.0, 1.0, dev) < prob
    frac = _uniform(generator, n, area[0], area[1], dev)
    log_r = _uniform(generator, n, math.log(0.5), math.log(2.0), dev)
    eh = (torch.sqrt(frac / torch.exp(log_r)) * h).clamp(1, h)  # rectangle size in pixels
    ew = (torch.sqrt(frac * torch.exp(log_r)) * w).clamp(1, w)
    y0 = _uniform(generator, n, 0.0, 1.0, dev) * (h - eh)
    x0 = _uniform(generator, n, 0.0, 1.0, dev) * (w - ew)
    ys = torch.arange(h, device=dev, dtype=torch.float32).view(1, h, 1) + 0.5
    xs = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, w) + 0.5
    inside = ((ys >= y0.view(n, 1, 1)) & (ys < (y0 + eh).view(n, 1, 1))
              & (xs >= x0.view(n, 1, 1)) & (xs < (x0 + ew).view(n, 1, 1)))  # [N, H, W]
    erase = (inside & apply.view(n, 1, 1)).unsqueeze(1)  # [N, 1, H, W]
    return torch.where(erase, torch.full_like(x, value), x)


def augment(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    strength: float = 1.0,
    hflip: bool = False,
    scale: tuple[float, float] = (0.6, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    max_rotate_deg: float = 10.0,
    max_translate: float = 0.1,
    brightness: float = 0.2,
    contrast: float = 0.2,
    noise_std: float = 0.05,
    erase_prob: float = 0.0,
    erase_area: tuple[float, float] = (0.05, 0.2),
    padding_mode: str = "border",
) -> torch.Tensor:
    """One random view of every sample: x [N, C, H, W] float -> new tensor, same shape,
    dtype and device.

    Order: affine (crop/rotate/translate/flip), contrast + brightness jitter, gaussian noise,
    random erasing. `scale` / `ratio`: crop area fraction and aspect ratio ranges (see
    `random_affine_theta`). `strength` in [0, 1+] scales every magnitude (crop scale range,
    angle, shift, jitter, noise, erase probability; not the aspect ratio range); strength=0
    returns a copy of x. Defaults suit digits (no flip; pass hflip=True for natural images
    such as CIFAR). `padding_mode` ("border", "zeros", "reflection") fills pixels warped in
    from outside the image; "border" repeats the edge, i.e. the background of a digit.
    """
    if not x.is_floating_point() or x.dim() != 4:
        raise ValueError(f"augment expects a float [N, C, H, W] tensor, got {x.dtype} {tuple(x.shape)}")
    s = float(strength)
    if s <= 0:
        return x.clone()
    # scale range shrinks toward (1, 1) as strength -> 0
    lo, hi = 1 - s * (1 - scale[0]), 1 - s * (1 - scale[1])
    theta = random_affine_theta(
        x.shape[0], generator, scale=(max(lo, 1e-3), max(hi, 1e-3)), ratio=ratio, max_rotate_deg=s * max_rotate_deg,
        max_translate=s * max_translate, hflip=hflip, device=x.device,
    )
    out = affine_warp(x, theta, padding_mode=padding_mode)
    if brightness > 0 or contrast > 0:
        out = jitter(out, generator, brightness=s * brightness, contrast=s * contrast)
    if noise_std > 0:
        out = gaussian_noise(out, generator, s * noise_std)
    if erase_prob > 0:
        out = random_erase(out, generator, prob=min(1.0, s * erase_prob), area=erase_area)
    return out


def two_views(x: torch.Tensor, generator: torch.Generator, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent views `augment(x, generator, **kw)` of x [N, C, H, W] (same shape)."""
    return augment(x, generator, **kw), augment(x, generator, **kw)
