"""Self-supervised pre-training objectives for a `ResNetBackbone` (and a supervised fine-tune).

Each objective is an nn.Module that holds everything it trains (backbone, heads, queues);
`loss(x, generator) -> (loss, info)` returns a scalar loss to back-propagate and a dict of
floats to report, and `encoder()` returns the backbone whose weights are kept. The training
loop alone steps the optimiser:

    obj = build_objective("simclr", 1, widths=(32, 64))
    opt = torch.optim.Adam(obj.trainable_parameters(), lr=1e-3)
    loss, info = obj.loss(x, generator); opt.zero_grad(); loss.backward(); opt.step()

(Over 400 lines: one small class per objective - SimCLR, MoCo-v2, MAE, the release's
Latent-MAE, the fine-tune head - behind one interface; each is short.)
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ..encoders.backbone import ResNetBackbone, group_norm
from ..models.release_mae import ReleaseMAE, fold_patches
from .augment import augment, two_views

#: augmentation of the fine-tune objective: the full family at half strength
LIGHT_AUGMENT: dict[str, Any] = {"strength": 0.5}


def projection_head(in_dim: int, proj_dim: int, hidden: Optional[int] = None) -> nn.Sequential:
    """The projection MLP: Linear-BatchNorm-ReLU-Linear, [N, in_dim] -> [N, proj_dim].

    The BatchNorm (as in SimCLR's and MoCo v3's heads) centres the batch: pooled features of
    a fresh GroupNorm backbone share one dominant direction, and without centring MoCo's
    keys all collapse onto it (queue mean cosine 0.999, loss stuck at log(K + 1)). The head
    is discarded after pre-training, so the kept encoder has no batch statistics.
    """
    hidden = int(hidden or in_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                         nn.Linear(hidden, proj_dim))


class Objective(nn.Module):
    """Base class: a module holding a `backbone` (the kept encoder) and what trains with it."""

    backbone: ResNetBackbone

    def encoder(self) -> ResNetBackbone:
        """The backbone whose weights are kept after pre-training."""
        return self.backbone

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters the optimiser should step (excludes EMA copies and other frozen state)."""
        return (p for p in self.parameters() if p.requires_grad)

    #: True: `loss` takes the batch's labels too (`loss(x, generator, labels=y)`)
    uses_labels: bool = False

    def loss(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError  # pragma: no cover - interface

    def set_step(self, step: int, total: int) -> None:
        """Called by the loop before each pre-training step (0-based) of `total`; objectives
        whose loss follows a schedule (the release MAE's classifier ramp) override it."""

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C, H, W] -> [N, D] pooled features of the kept encoder (the linear probe's input)."""
        return self.encoder().forward_pooled(x)

    def artifact_meta(self) -> dict[str, Any]:
        """What `encoder.json` records about the kept network's architecture."""
        return {"backbone": dict(self.encoder().spec)}


# --------------------------------------------------------------------------------------
# contrastive objectives


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent (SimCLR, Chen et al. 2020, eq. 1) over the 2N projections of N positive pairs.

    z1, z2: [N, D] (row i of z1 and row i of z2 are views of one sample). Cosine
    similarities / temperature, each sample's self-similarity masked, cross-entropy toward
    its partner. Returns (mean loss over 2N anchors, [2N] bool: partner is the top-1).
    """
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # [2N, D]
    logits = z @ z.t() / temperature  # [2N, 2N]
    self_mask = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)  # partner index
    loss = F.cross_entropy(logits, target)
    return loss, logits.argmax(dim=1) == target


class SimCLR(Objective):
    """SimCLR: two augmented views, projection MLP, NT-Xent over 2N samples.

    augment_kwargs: passed to `augment` (default: its digit-friendly defaults; add
    hflip=True for natural images). info: loss, acc (fraction of the 2N anchors whose most
    similar other sample is their partner view).
    """

    def __init__(self, backbone: ResNetBackbone, proj_dim: int = 64, temperature: float = 0.2,
                 augment_kwargs: Optional[dict[str, Any]] = None):
        super().__init__()
        self.backbone = backbone
        self.head = projection_head(backbone.out_channels, proj_dim)
        self.temperature = float(temperature)
        self.augment_kwargs = dict(augment_kwargs or {})

    def loss(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """x [N, C, H, W] -> (scalar NT-Xent loss, {"loss", "acc"})."""
        v1, v2 = two_views(x, generator, **self.augment_kwargs)
        z = self.head(self.backbone.forward_pooled(torch.cat([v1, v2])))  # one pass: [2N, proj_dim]
        loss, hit = nt_xent(z[: x.shape[0]], z[x.shape[0]:], self.temperature)
        return loss, {"loss": float(loss.detach()), "acc": float(hit.float().mean())}


class MoCo(Objective):
    """MoCo v2 (He et al. 2020; Chen et al. 2020): a query encoder + projection MLP trained by
    InfoNCE against a momentum (EMA) key encoder and a queue of past keys.

    State besides the trainable query encoder / head (all in `state_dict`, so checkpoint the
    whole module to resume): `key_backbone` / `key_head` (EMA copies, requires_grad False),
    `queue` [queue_size, proj_dim] of L2-normalised keys (random unit vectors at start) and
    `queue_ptr` [1] long, the next slot to write. No shuffle-BN is needed: GroupNorm does
    not mix samples. info: loss, acc (fraction of queries whose positive key is the top-1).
    """

    def __init__(self, backbone: ResNetBackbone, proj_dim: int = 64, temperature: float = 0.2,
                 queue_size: int = 4096, momentum: float = 0.99,
                 augment_kwargs: Optional[dict[str, Any]] = None):
        super().__init__()
        if queue_size < 1:
            raise ValueError(f"MoCo: queue_size must be >= 1, got {queue_size}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"MoCo: momentum must be in [0, 1], got {momentum}")
        self.backbone = backbone
        self.head = projection_head(backbone.out_channels, proj_dim)
        self.key_backbone = copy.deepcopy(backbone)
        self.key_head = copy.deepcopy(self.head)
        for p in self._key_params():
            p.requires_grad_(False)
        self.temperature, self.momentum = float(temperature), float(momentum)
        self.augment_kwargs = dict(augment_kwargs or {})
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, proj_dim), dim=1))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    def _key_params(self) -> list[nn.Parameter]:
        return list(self.key_backbone.parameters()) + list(self.key_head.parameters())

    def _query_params(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters()) + list(self.head.parameters())

    @torch.no_grad()
    def momentum_update(self) -> None:
        """key <- m * key + (1 - m) * query, for every parameter of backbone and head."""
        for k, q in zip(self._key_params(), self._query_params()):
            k.mul_(self.momentum).add_(q.detach(), alpha=1.0 - self.momentum)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write keys [B, proj_dim] into the queue ring buffer at `queue_ptr`, wrapping around
        (oldest keys are overwritten); with B > queue_size only the last queue_size are kept."""
        size = self.queue.shape[0]
        keys = keys.detach().to(self.queue.dtype)[-size:]
        idx = (self.queue_ptr + torch.arange(keys.shape[0], device=self.queue.device)) % size
        self.queue[idx] = keys
        self.queue_ptr.copy_((self.queue_ptr + keys.shape[0]) % size)

    def loss(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """x [N, C, H, W] -> (scalar InfoNCE loss, {"loss", "acc"}).

        Side effects, in order: momentum update of the key encoder, then (after the loss is
        formed against the current queue) the batch's keys are enqueued.
        """
        v_q, v_k = two_views(x, generator, **self.augment_kwargs)
        self.momentum_update()
        q = F.normalize(self.head(self.backbone.forward_pooled(v_q)).float(), dim=1)  # [N, D]
        with torch.no_grad():
            k = F.normalize(self.key_head(self.key_backbone.forward_pooled(v_k)).float(), dim=1)  # [N, D]
        l_pos = (q * k).sum(dim=1, keepdim=True)  # [N, 1]
        l_neg = q @ self.queue.clone().float().t()  # [N, K]; clone: the queue is written below
        logits = torch.cat([l_pos, l_neg], dim=1) / self.temperature  # positive at index 0
        target = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        loss = F.cross_entropy(logits, target)
        acc = float((logits.argmax(dim=1) == 0).float().mean())
        self.enqueue(k)
        return loss, {"loss": float(loss.detach()), "acc": acc}


# --------------------------------------------------------------------------------------
# masked autoencoder


def append_mask_channel(x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
    """x [N, C, H, W] -> [N, C + 1, H, W]: the mask indicator (1 = masked) as an extra channel.

    mask: [N, 1, H, W] or None (all zeros: nothing masked, the input at feature time).
    """
    if mask is None:
        mask = torch.zeros_like(x[:, :1])
    return torch.cat([x, mask.to(x.dtype)], dim=1)


class MAE(Objective):
    """A convolutional masked autoencoder (after He et al. 2022, "MAE", adapted to a CNN).

    The image is cut into patch x patch patches; exactly round(mask_ratio * L) of the L
    patches of each sample are masked: their pixels are replaced by a learned per-channel
    mask value, and a mask-indicator channel is appended, so the backbone takes C + 1
    channels. A light decoder upsamples the LAST stage only (earlier stages would pass the
    visible pixels straight through) back to H x W and predicts all pixels; the loss is the
    MSE over masked patches only. With norm_pix=True the target of every patch is normalised
    by its own mean and std (MAE's "normalised pixels").

    At feature time the frozen backbone must see `MAE.features_input(x)`: the image with an
    all-zero mask channel appended.
    """

    def __init__(self, backbone: ResNetBackbone, patch: int = 4, mask_ratio: float = 0.6,
                 norm_pix: bool = False, augment_kwargs: Optional[dict[str, Any]] = None):
        super().__init__()
        if backbone.in_channels < 2:
            raise ValueError("MAE: the backbone needs in_channels = C + 1 (image channels + mask channel)")
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"MAE: mask_ratio must be in (0, 1), got {mask_ratio}")
        self.backbone = backbone
        self.patch, self.mask_ratio, self.norm_pix = int(patch), float(mask_ratio), bool(norm_pix)
        self.channels = backbone.in_channels - 1
        self.augment_kwargs = augment_kwargs  # None: no augmentation (masking is the task)
        self.mask_value = nn.Parameter(torch.zeros(self.channels))
        # decoder: per upsampling step, interpolate to the previous stage's size + conv-GN-ReLU
        widths = list(backbone.widths)
        self.up = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), group_norm(c_out), nn.ReLU(inplace=True))
            for c_in, c_out in zip(widths[::-1], widths[::-1][1:])
        )
        self.out = nn.Conv2d(widths[0], self.channels, 3, padding=1)

    features_input = staticmethod(append_mask_channel)

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_pooled(append_mask_channel(x))

    def num_patches(self, h: int, w: int) -> int:
        """L = (H / patch) * (W / patch); H and W must be multiples of patch."""
        if h % self.patch or w % self.patch:
            raise ValueError(f"MAE: image size {h}x{w} is not a multiple of patch={self.patch}")
        return (h // self.patch) * (w // self.patch)

    def num_masked(self, h: int, w: int) -> int:
        """round(mask_ratio * L), at least 1 and at most L - 1."""
        num = self.num_patches(h, w)
        return min(max(int(round(self.mask_ratio * num)), 1), num - 1)

    def random_mask(self, n: int, h: int, w: int, generator: torch.Generator,
                    device: torch.device | str = "cpu") -> torch.Tensor:
        """[N, L] float mask, 1 = masked, 0 = visible; exactly `num_masked` ones per row."""
        num = self.num_patches(h, w)
        noise = torch.rand(n, num, generator=generator, device=generator.device)
        ranks = noise.argsort(dim=1).argsort(dim=1)  # a uniform random permutation per row
        return (ranks < self.num_masked(h, w)).float().to(device)

    def mask_pixels(self, mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Patch mask [N, L] -> pixel mask [N, 1, H, W] (row-major patches)."""
        p = self.patch
        m = mask.view(mask.shape[0], 1, h // p, w // p)
        return m.repeat_interleave(p, dim=2).repeat_interleave(p, dim=3)

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, L, patch * patch * C], patches in row-major order."""
        n, c, h, w = x.shape
        p = self.patch
        x = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(n, (h // p) * (w // p), p * p * c)

    def masked_input(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x [N, C, H, W], mask [N, L] -> backbone input [N, C + 1, H, W]: masked pixels set to
        the learned per-channel mask value, plus the pixel mask channel."""
        m = self.mask_pixels(mask, x.shape[2], x.shape[3]).to(x.dtype)  # [N, 1, H, W]
        filled = x * (1 - m) + self.mask_value.view(1, -1, 1, 1).to(x.dtype) * m
        return append_mask_channel(filled, m)

    def predict(self, inp: torch.Tensor) -> torch.Tensor:
        """Backbone input [N, C + 1, H, W] -> predicted pixels [N, C, H, W] (last stage only)."""
        feats = self.backbone(inp)
        h = feats[-1]
        # walk back through the stage sizes (shapes only: no skip values are used)
        for up, f in zip(self.up, feats[::-1][1:]):
            h = up(F.interpolate(h, size=f.shape[-2:], mode="nearest"))
        if h.shape[-2:] != inp.shape[-2:]:  # stage 1 has stride 1, so only reached if widths has one stage
            h = F.interpolate(h, size=inp.shape[-2:], mode="nearest")
        return self.out(h)

    def forward_loss(self, target: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean over masked patches of the per-patch MSE (MAE's `forward_loss`).

        target, pred: [N, C, H, W]; mask: [N, L], 1 = masked (counted), 0 = visible (ignored).
        """
        t, y = self.patchify(target.float()), self.patchify(pred.float())  # [N, L, p*p*C]
        if self.norm_pix:
            mean, var = t.mean(dim=-1, keepdim=True), t.var(dim=-1, keepdim=True)
            t = (t - mean) / (var + 1e-6).sqrt()
        per_patch = ((y - t) ** 2).mean(dim=-1)  # [N, L]
        return (per_patch * mask).sum() / mask.sum()

    def loss(self, x: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """x [N, C, H, W] -> (scalar masked-patch MSE, {"loss"})."""
        if self.augment_kwargs is not None:
            x = augment(x, generator, **self.augment_kwargs)
        n, _, h, w = x.shape
        mask = self.random_mask(n, h, w, generator, device=x.device)
        pred = self.predict(self.masked_input(x, mask))
        loss = self.forward_loss(x, pred, mask)
        return loss, {"loss": float(loss.detach())}


# --------------------------------------------------------------------------------------
# the release's Latent-MAE objective


def release_lambda_cls(step: int, total: int, *, lambda_cls: float = 0.0, finetune_last_steps: int = 0,
                       warmup_finetune: int = 1000, finetune_cls: float = 0.1) -> float:
    """The classification weight at 0-based `step` of `total` (the release's `train_mae`):
    `lambda_cls` until the last `finetune_last_steps` steps, then finetune_cls * min(1, k /
    max(1, warmup_finetune)) at the k-th (0-based) of them."""
    start = total - int(finetune_last_steps)
    if finetune_last_steps <= 0 or step < start:
        return float(lambda_cls)
    return float(finetune_cls) * min(1.0, (step - start) / max(1, int(warmup_finetune)))


class ReleaseMAEObjective(Objective):
    """The release's MAE objective (`MAEResNetJAX.__call__`) on a `ReleaseMAE`.

    The input is folded by the network's input_patch_size; each sample draws a mask ratio
    uniform in [mask_ratio_min, mask_ratio_max] and masks each patch_size x patch_size patch
    of the folded input whose uniform noise is below it (so the masked fraction is the ratio
    only on average); the encoder sees x * (1 - mask), the UNet decoder reconstructs the
    folded input, and per sample

        recon = sum over masked locations and channels of (recon - x)^2 / (masked locations + 1e-8)
        cls   = cross-entropy of the classifier (layer4's global mean) on the label
        loss  = lambda * cls + (1 - lambda) * recon,   averaged over the batch.

    lambda follows `release_lambda_cls` (set by the loop through `set_step`). The kept
    network is the whole `ReleaseMAE` (encoder, decoder and classifier, like the release's
    artifacts). info: loss, recon_loss, cls_loss, accuracy, mask_ratio (masked fraction of
    locations), lambda_cls.
    """

    uses_labels = True

    def __init__(self, net, *, mask_ratio_min: float = 0.5, mask_ratio_max: float = 0.5, lambda_cls: float = 0.0,
                 finetune_last_steps: int = 0, warmup_finetune: int = 1000, finetune_cls: float = 0.1):
        super().__init__()
        if not 0.0 <= mask_ratio_min <= mask_ratio_max <= 1.0:
            raise ValueError(f"release MAE: need 0 <= mask_ratio_min <= mask_ratio_max <= 1, got {mask_ratio_min}, {mask_ratio_max}")
        self.net = net
        self.mask_ratio_min, self.mask_ratio_max = float(mask_ratio_min), float(mask_ratio_max)
        self.schedule = {"lambda_cls": float(lambda_cls), "finetune_last_steps": int(finetune_last_steps),
                         "warmup_finetune": int(warmup_finetune), "finetune_cls": float(finetune_cls)}
        self.lambda_cls = float(lambda_cls)

    def encoder(self):
        return self.net

    def set_step(self, step: int, total: int) -> None:
        self.lambda_cls = release_lambda_cls(step, total, **self.schedule)

    def fold(self, x: torch.Tensor) -> torch.Tensor:
        return fold_patches(x, self.net.ips)

    def random_mask(self, n: int, h: int, w: int, generator: torch.Generator,
                    device: torch.device | str = "cpu") -> torch.Tensor:
        """[N, 1, H, W] float mask of the folded input (1 = masked), the release's `make_patch_mask`."""
        p = int(self.net.config["patch_size"])
        if h % p or w % p:
            raise ValueError(f"release MAE: the folded input {h}x{w} is not a multiple of patch_size={p}")
        ratio = torch.rand(n, generator=generator, device=generator.device) * (self.mask_ratio_max - self.mask_ratio_min) + self.mask_ratio_min
        noise = torch.rand(n, h // p, w // p, generator=generator, device=generator.device)
        mask = (noise < ratio[:, None, None]).float()
        mask = mask.repeat_interleave(p, dim=1).repeat_interleave(p, dim=2)
        return mask.unsqueeze(1).to(device)

    def losses(self, x_folded: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-sample terms for a given mask: {"loss", "recon_loss", "cls_loss", "logits"}."""
        mask = mask.to(x_folded.dtype)
        feats = self.net.encode(x_folded * (1.0 - mask))
        logits = self.net.classify(feats)
        recon = self.net.decode(feats)
        mse = (recon.float() - x_folded.float()) ** 2  # [N, C', H, W]; the mask [N, 1, H, W] counts locations
        recon_loss = (mse * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) + 1e-8)
        cls_loss = F.cross_entropy(logits.float(), labels, reduction="none")
        loss = self.lambda_cls * cls_loss + (1.0 - self.lambda_cls) * recon_loss
        return {"loss": loss, "recon_loss": recon_loss, "cls_loss": cls_loss, "logits": logits}

    def loss(self, x: torch.Tensor, generator: torch.Generator, labels: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, dict[str, float]]:  # type: ignore[override]
        """x [N, C, H, W], labels [N] long (zeros when None) -> (batch-mean loss, info)."""
        if labels is None:
            labels = torch.zeros(x.shape[0], dtype=torch.long, device=x.device)
        xf = self.fold(x)
        mask = self.random_mask(xf.shape[0], xf.shape[2], xf.shape[3], generator, device=x.device)
        out = self.losses(xf, labels, mask)
        loss = out["loss"].mean()
        info = {
            "loss": float(loss.detach()), "recon_loss": float(out["recon_loss"].detach().mean()),
            "cls_loss": float(out["cls_loss"].detach().mean()),
            "accuracy": float((out["logits"].argmax(dim=1) == labels).float().mean()),
            "mask_ratio": float(mask.mean()), "lambda_cls": self.lambda_cls,
        }
        return loss, info

    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """layer4's global mean of the unmasked input (what the classifier reads)."""
        return self.net.encode(self.fold(x))["layer4"].mean(dim=(2, 3))

    def artifact_meta(self) -> dict[str, Any]:
        return {"model_config": dict(self.net.config), "widths": list(self.net.widths)}


def build_release_mae_objective(in_channels: int, num_classes: int, *, base_channels: int = 32,
                                layers: Sequence[int] = (2, 2, 2, 2), input_patch_size: int = 1,
                                patch_size: int = 2, **loss_kwargs: Any) -> ReleaseMAEObjective:
    """A fresh `ReleaseMAE` for C = in_channels and num_classes, with the release's objective
    (loss_kwargs: mask_ratio_min / max, lambda_cls, finetune_last_steps, warmup_finetune,
    finetune_cls)."""
    net = ReleaseMAE(in_channels=int(in_channels), base_channels=int(base_channels), layers=tuple(layers),
                     num_classes=max(int(num_classes), 1), patch_size=int(patch_size), input_patch_size=int(input_patch_size))
    return ReleaseMAEObjective(net, **loss_kwargs)


# --------------------------------------------------------------------------------------
# supervised fine-tune


class FineTune(Objective):
    """A linear classifier on the pooled backbone features, trained end to end.

    input_transform: applied to the (augmented) images before the backbone, e.g.
    `MAE.features_input` for an MAE-pre-trained backbone. info: loss, acc.
    """

    def __init__(self, backbone: ResNetBackbone, num_classes: int,
                 augment_kwargs: Optional[dict[str, Any]] = None,
                 input_transform: Optional[Callable[[torch.Tensor], torch.Tensor]] = None):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(backbone.out_channels, int(num_classes))
        self.augment_kwargs = dict(LIGHT_AUGMENT if augment_kwargs is None else augment_kwargs)
        self.input_transform = input_transform

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """x [N, C, H, W] (no augmentation) -> [N, num_classes]."""
        if self.input_transform is not None:
            x = self.input_transform(x)
        return self.head(self.backbone.forward_pooled(x))

    def loss(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:  # type: ignore[override]
        """x [N, C, H, W], y [N] long labels -> (scalar cross-entropy, {"loss", "acc"})."""
        logits = self.logits(augment(x, generator, **self.augment_kwargs))
        loss = F.cross_entropy(logits.float(), y)
        acc = float((logits.argmax(dim=1) == y).float().mean())
        return loss, {"loss": float(loss.detach()), "acc": acc}


# --------------------------------------------------------------------------------------
# factory

#: name -> objective class built by `build_objective` (the release MAE: `build_release_mae_objective`)
OBJECTIVES: dict[str, type[Objective]] = {"simclr": SimCLR, "moco": MoCo, "mae": MAE}


def build_objective(name: str, in_channels: int, *, widths: Sequence[int] = (32, 64, 128),
                    blocks: int = 1, stem_stride: int = 1, **kwargs: Any) -> Objective:
    """A fresh backbone and objective `name` ("simclr", "moco", "mae") for C = in_channels.

    "mae" builds the backbone with in_channels + 1 (the mask channel). kwargs go to the
    objective's constructor (e.g. proj_dim, temperature, queue_size, patch, mask_ratio).
    Unknown names raise ValueError.
    """
    if name not in OBJECTIVES:
        raise ValueError(f"unknown pre-training objective {name!r}; known: {sorted(OBJECTIVES)}")
    extra = 1 if name == "mae" else 0
    backbone = ResNetBackbone(int(in_channels) + extra, widths=widths, blocks=blocks, stem_stride=stem_stride)
    return OBJECTIVES[name](backbone, **kwargs)
