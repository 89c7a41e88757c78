"""The authors' Latent-MAE (a ResNet masked autoencoder, "MAEResNetJAX") in PyTorch, and its
feature recipe: the drift's feature space in the paper (Table 3).

Network (constructor arguments are the release's `model_config` keys):
  input  x [B, C, H, W], optionally folded: every p x p pixel patch becomes p*p*C channels
         (`input_patch_size` p; the release's pixel-space MAE uses 8)
  conv1  3x3 conv (no bias) -> GroupNorm -> ReLU                       "conv1"
  stages four stages of GroupNorm basic blocks (`layers` blocks each), widths base * (1, 2,
         4, 8), stride 2 from the second stage on, a 1x1 projection where the shape changes;
         each stage's output goes through its own GroupNorm             "layer1".."layer4"
  decode UNet decoder (bridge, four bilinear-upsample + skip + conv blocks, 1x1 head) back
         to the folded input, and a linear classifier on layer4's global mean; both are
         used by pre-training only.
GroupNorm: the largest group count <= 32 that divides the channels, epsilon 1e-6.

Feature recipe (`release_activations`, the release's `get_activations` with its training
arguments): `norm_x` = sqrt(mean over locations of x^2 + 1e-6) of the folded input; for
conv1, each stage output and every 2nd block's raw output (`layerI_blkJ`): the per-location
vectors NAME [B, H*W, C], NAME_mean and NAME_std over locations [B, 1, C], and NAME_mean_S,
NAME_std_S over S x S patches (S in 2, 4, where S divides the map) [B, (H/S)(W/S), C]; std =
sqrt(two-pass variance + 1e-6). The release's training adds `global`, the flattened input
(channel-last order); `encoders.release_mae.ReleaseMAEEncoder` does too.

The network lives beside the release generator in `models/`: `release.py` builds both from
the authors' artifacts, and the encoder that loads them (`encoders/release_mae.py`) sits above.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F


GN_EPS = 1e-6  # flax GroupNorm's epsilon
STAT_EPS = 1e-6  # inside the square roots of norm_x and every std feature
PATCH_SIZES = (2, 4)  # the release's patch_mean_size / patch_std_size
EVERY_K_BLOCK = 2  # block outputs kept: every 2nd block of each stage


def gn_groups(channels: int, max_groups: int = 32) -> int:
    """The release's group count: the largest g <= max_groups dividing `channels`."""
    g = min(max_groups, channels)
    while g > 1 and channels % g:
        g -= 1
    return max(g, 1)


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(gn_groups(channels), channels, eps=GN_EPS)


class BasicBlock(nn.Module):
    """Two 3x3 convs with GroupNorm and ReLU, residual (1x1 conv + GroupNorm where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.gn1 = _gn(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.gn2 = _gn(c_out)
        if stride != 1 or c_in != c_out:
            self.proj_conv = nn.Conv2d(c_in, c_out, 1, stride, bias=False)
            self.proj_gn = _gn(c_out)
        else:
            self.proj_conv = self.proj_gn = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.gn2(self.conv2(F.relu(self.gn1(self.conv1(x)))))
        res = x if self.proj_conv is None else self.proj_gn(self.proj_conv(x))
        return F.relu(res + y)


class ConvGNReLU(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, 1, 1, bias=False)
        self.gn = _gn(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.gn(self.conv(x)))


class UpBlock(nn.Module):
    """Bilinear upsample to the skip's size, concatenate, GroupNorm(32), two conv blocks."""

    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        self.concat_norm = nn.GroupNorm(32, c_in + c_skip, eps=GN_EPS)
        self.proj = ConvGNReLU(c_in + c_skip, c_out)
        self.refine = ConvGNReLU(c_out, c_out)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.refine(self.proj(self.concat_norm(torch.cat([x, skip], dim=1))))


def fold_patches(x: torch.Tensor, p: int) -> torch.Tensor:
    """[B, C, H, W] -> [B, p*p*C, H/p, W/p], channels ordered (row in patch, column, C)."""
    if p == 1:
        return x
    b, c, h, w = x.shape
    return x.reshape(b, c, h // p, p, w // p, p).permute(0, 3, 5, 1, 2, 4).reshape(b, p * p * c, h // p, w // p)


def unfold_patches(x: torch.Tensor, p: int, c: int) -> torch.Tensor:
    """The inverse of `fold_patches`."""
    if p == 1:
        return x
    b, _, h, w = x.shape
    return x.reshape(b, p, p, c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(b, c, h * p, w * p)


def safe_std(x: torch.Tensor, dims) -> torch.Tensor:
    mean = x.mean(dim=dims, keepdim=True)
    return torch.sqrt(((x - mean) ** 2).mean(dim=dims) + STAT_EPS)


def map_features(name: str, fmap: torch.Tensor, out: dict) -> None:
    """The release's feature sets of one map [B, C, H, W] into `out` (float32)."""
    f = fmap.float()
    b, c, h, w = f.shape
    flat = f.flatten(2)  # [B, C, HW]
    out[name] = flat.transpose(1, 2)
    out[f"{name}_mean"] = flat.mean(dim=2).unsqueeze(1)
    out[f"{name}_std"] = safe_std(flat, 2).unsqueeze(1)
    grids = {}
    for s in PATCH_SIZES:
        if h % s == 0 and w % s == 0:  # [B, C, H/s, s, W/s, s] -> [B, (H/s)(W/s), C, s*s]
            grids[s] = f.reshape(b, c, h // s, s, w // s, s).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // s) * (w // s), c, s * s)
    for s, g in grids.items():
        out[f"{name}_mean_{s}"] = g.mean(dim=3)
    for s, g in grids.items():
        out[f"{name}_std_{s}"] = safe_std(g, 3)


class ReleaseMAE(nn.Module):
    """The release's MAE-ResNet: encoder, UNet decoder and classifier (see module docstring)."""

    def __init__(
        self,
        *,
        in_channels: int = 4,
        base_channels: int = 64,
        layers: Sequence[int] = (2, 2, 2, 2),
        num_classes: int = 1000,
        patch_size: int = 2,  # the mask's patch size in pre-training (folded-input pixels)
        input_patch_size: int = 1,
        dropout_prob: float = 0.0,  # accepted for release configs; the release trains without
        use_bf16: bool = False,  # accepted for release configs; precision is the run's autocast
    ):
        super().__init__()
        layers = tuple(int(n) for n in layers)
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"release MAE: layers must be 4 block counts >= 1, got {list(layers)}")
        base = int(base_channels)
        if base % 32:
            raise ValueError(f"release MAE: base_channels {base} must be a multiple of 32 (the decoder's GroupNorm(32))")
        self.config = dict(
            num_classes=int(num_classes), in_channels=int(in_channels), base_channels=base, patch_size=int(patch_size),
            layers=list(layers), use_bf16=bool(use_bf16), input_patch_size=int(input_patch_size),
        )
        self.ips = int(input_patch_size)
        self.in_channels = int(in_channels)
        c0 = self.in_channels * self.ips * self.ips
        self.conv1 = nn.Conv2d(c0, base, 3, 1, 1, bias=False)
        self.gn1 = _gn(base)
        widths = [base * 2**i for i in range(4)]
        self.widths = widths
        self.stages = nn.ModuleList()
        self.stage_norms = nn.ModuleList()
        c = base
        for i, n in enumerate(layers):
            blocks = [BasicBlock(c, widths[i], 1 if i == 0 else 2)] + [BasicBlock(widths[i], widths[i], 1) for _ in range(n - 1)]
            self.stages.append(nn.ModuleList(blocks))
            self.stage_norms.append(_gn(widths[i]))
            c = widths[i]
        self.bridge = ConvGNReLU(widths[3], widths[3])
        self.up43 = UpBlock(widths[3], widths[2], widths[2])
        self.up32 = UpBlock(widths[2], widths[1], widths[1])
        self.up21 = UpBlock(widths[1], widths[0], base)
        self.up10 = UpBlock(base, base, base)
        self.head = nn.Conv2d(base, c0, 1)
        self.fc = nn.Linear(widths[3], int(num_classes))

    def encode(self, x: torch.Tensor, *, blocks: bool = False):
        """Folded input [B, C', H, W] -> ({conv1, layer1..layer4}, {layerI: [block outputs]})."""
        h = F.relu(self.gn1(self.conv1(x)))
        feats, block_out = {"conv1": h}, {}
        for i, (stage, norm) in enumerate(zip(self.stages, self.stage_norms), start=1):
            outs = []
            for block in stage:
                h = block(h)
                outs.append(h)
            block_out[f"layer{i}"] = outs
            h = norm(h)
            feats[f"layer{i}"] = h
        return (feats, block_out) if blocks else feats

    def decode(self, feats: dict) -> torch.Tensor:
        x = self.bridge(feats["layer4"])
        x = self.up43(x, feats["layer3"])
        x = self.up32(x, feats["layer2"])
        x = self.up21(x, feats["layer1"])
        return self.head(self.up10(x, feats["conv1"]))

    def classify(self, feats: dict) -> torch.Tensor:
        return self.fc(feats["layer4"].mean(dim=(2, 3)))

    def release_activations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """x [B, C, H, W] -> {release key: [B, T, D]} (the release's get_activations)."""
        xf = fold_patches(x, self.ips)
        out = {"norm_x": torch.sqrt(xf.float().pow(2).mean(dim=(2, 3)) + STAT_EPS).unsqueeze(1)}
        feats, block_out = self.encode(xf, blocks=True)
        for name, fmap in feats.items():
            map_features(name, fmap, out)
        for lname, outs in block_out.items():
            for j, fmap in enumerate(outs, start=1):
                if j % EVERY_K_BLOCK == 0:
                    map_features(f"{lname}_blk{j}", fmap, out)
        return out
