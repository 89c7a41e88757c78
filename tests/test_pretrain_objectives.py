"""Encoder pre-training core: backbone shapes, augmentation contracts, and that SimCLR, MoCo,
MAE and the fine-tune objective actually learn on scikit-learn's digits (1 CPU thread)."""

import json
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from drifting_platform.pretrain import (
    MAE, FineTune, MoCo, ResNetBackbone, SimCLR, append_mask_channel, augment, build_objective,
    random_affine_theta, random_erase, two_views,
)

WIDTHS = (16, 32)  # small enough that ~60 steps of batch 64 at 16x16 take ~2 s on one thread


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 1797 digits as [N, 1, 16, 16] in [-1, 1] and labels [N]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0  # 0..16 -> [-1, 1]
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    return x, torch.tensor(d.target, dtype=torch.long)


def train_losses(obj, x, *, steps, batch=64, lr=3e-3, seed=0):
    """Adam steps of obj.loss on random batches of x; returns the per-step info dicts."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(obj.trainable_parameters(), lr=lr)
    infos = []
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        loss, info = obj.loss(x[idx], g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        infos.append(info)
    return infos


def mean_loss(infos):
    return sum(i["loss"] for i in infos) / len(infos)


# --------------------------------------------------------------------------------------
# backbone


@pytest.mark.parametrize("shape", [(1, 32, 32), (1, 8, 8), (3, 32, 32), (4, 32, 32), (1, 28, 28)])
def test_backbone_stage_shapes(shape):
    torch.manual_seed(0)
    widths = (8, 16, 24)
    net = ResNetBackbone(shape[0], widths=widths, blocks=2)
    x = torch.randn(3, *shape)
    feats = net(x)
    c, h, w = shape
    assert [tuple(f.shape) for f in feats] == [
        (3, widths[i], math.ceil(h / 2**i), math.ceil(w / 2**i)) for i in range(len(widths))
    ]
    pooled = net.forward_pooled(x)
    assert pooled.shape == (3, widths[-1])
    torch.testing.assert_close(pooled, feats[-1].mean(dim=(2, 3)))


def test_backbone_groupnorm_and_spec_round_trip():
    torch.manual_seed(0)
    net = ResNetBackbone(3, widths=(12, 24, 40), blocks=2)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_channels % m.num_groups == 0 and m.num_groups <= 8 for m in norms)
    assert {m.num_groups for m in norms if m.num_channels == 12} == {6}  # largest divisor <= 8
    assert sum(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in net.modules()) == 4  # 2 stages x (conv + skip)
    spec = json.loads(json.dumps(net.spec))
    assert spec == {"in_channels": 3, "widths": [12, 24, 40], "blocks": 2, "stem_stride": 1}
    rebuilt = ResNetBackbone(**spec)
    rebuilt.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(rebuilt.forward_pooled(x), net.forward_pooled(x))


def test_backbone_samples_are_independent():
    # GroupNorm: a sample's features do not depend on the rest of the batch (BatchNorm would)
    torch.manual_seed(0)
    net = ResNetBackbone(1, widths=(8, 16)).train()
    x = torch.randn(5, 1, 16, 16)
    alone = net.forward_pooled(x[:1])
    together = net.forward_pooled(torch.cat([x[:1], 3 * x[1:]]))[:1]
    torch.testing.assert_close(alone, together)


def test_backbone_rejects_wrong_channels():
    with pytest.raises(ValueError):
        ResNetBackbone(1, widths=(8,))(torch.randn(2, 3, 8, 8))


# --------------------------------------------------------------------------------------
# augmentation


def test_augment_reproducible_and_leaves_global_rng_alone():
    x = torch.rand(6, 1, 16, 16, dtype=torch.float64) * 2 - 1
    state = torch.get_rng_state()
    a = augment(x, torch.Generator().manual_seed(3), erase_prob=0.5)
    b = augment(x, torch.Generator().manual_seed(3), erase_prob=0.5)
    c = augment(x, torch.Generator().manual_seed(4), erase_prob=0.5)
    assert torch.equal(torch.get_rng_state(), state)
    assert a.shape == x.shape and a.dtype == x.dtype and a.device == x.device
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    assert (a - x).abs().mean() > 0.05  # the image changed
    assert not torch.equal(a[0], a[1] - x[1] + x[0])  # per-sample randomness, not one shared shift
    # the two views of two_views differ from each other and advance the generator
    v1, v2 = two_views(x, torch.Generator().manual_seed(3))
    assert not torch.allclose(v1, v2)


def test_augment_strength_zero_is_identity_and_input_untouched():
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    x0 = x.clone()
    out = augment(x, torch.Generator().manual_seed(0), strength=0.0)
    assert torch.equal(out, x) and out is not x
    augment(x, torch.Generator().manual_seed(0), erase_prob=1.0)
    assert torch.equal(x, x0)


def test_affine_without_crop_or_rotation_is_identity_and_flip_mirrors():
    x = torch.rand(8, 2, 12, 12) * 2 - 1
    plain = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), max_rotate_deg=0.0, max_translate=0.0,
                 brightness=0.0, contrast=0.0, noise_std=0.0)
    torch.testing.assert_close(augment(x, torch.Generator().manual_seed(0), **plain), x, atol=1e-5, rtol=0)
    out = augment(x, torch.Generator().manual_seed(0), hflip=True, **plain)
    flipped = [torch.allclose(o, xi.flip(-1), atol=1e-5) for o, xi in zip(out, x)]
    kept = [torch.allclose(o, xi, atol=1e-5) for o, xi in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


def test_random_resized_crop_zooms_in():
    # a crop of area fraction s, warped back to full size, magnifies: a centred dot grows
    theta = random_affine_theta(4, torch.Generator().manual_seed(0), scale=(0.25, 0.25), ratio=(1, 1),
                                max_rotate_deg=0.0, max_translate=0.0)
    torch.testing.assert_close(theta[:, 0, 0], torch.full((4,), 0.5))
    torch.testing.assert_close(theta[:, 1, 1], torch.full((4,), 0.5))
    assert (theta[:, :, 2].abs() <= 0.5 + 1e-6).all()  # the crop stays inside the image


def test_random_erase_sets_a_rectangle():
    x = torch.ones(16, 1, 16, 16)
    out = random_erase(x, torch.Generator().manual_seed(0), prob=1.0, area=(0.1, 0.2), value=-1.0)
    erased = (out == -1.0).float().mean(dim=(1, 2, 3))
    assert (erased > 0.03).all() and (erased < 0.35).all()
    assert torch.equal(random_erase(x, torch.Generator().manual_seed(0), prob=0.0), x)


# --------------------------------------------------------------------------------------
# objectives learn on digits (criteria checked with margin over seeds 0-3)


@pytest.mark.parametrize("name,steps,kwargs", [
    ("simclr", 50, {}),
    ("mae", 40, {}),
])
def test_objective_loss_falls_on_digits(digits, name, steps, kwargs):
    torch.manual_seed(0)
    obj = build_objective(name, 1, widths=WIDTHS, **kwargs)
    infos = train_losses(obj, digits[0], steps=steps)
    assert mean_loss(infos[-5:]) < 0.8 * mean_loss(infos[:5])


def test_simclr_partner_accuracy_beats_chance(digits):
    torch.manual_seed(1)
    obj = build_objective("simclr", 1, widths=WIDTHS)
    infos = train_losses(obj, digits[0], steps=50, seed=1)
    acc = sum(i["acc"] for i in infos[-5:]) / 5
    assert acc > 0.3  # chance: 1 of the 2N - 1 = 127 others; 0.56-0.61 over seeds 0-3


def test_moco_loss_falls_on_digits(digits):
    torch.manual_seed(0)
    queue, batch = 256, 64
    obj = build_objective("moco", 1, widths=WIDTHS, queue_size=queue)
    infos = train_losses(obj, digits[0], steps=90, batch=batch)
    full = queue // batch  # before this step the queue still holds its random initial keys
    assert mean_loss(infos[-5:]) < 0.8 * mean_loss(infos[full:full + 5])
    assert mean_loss(infos[-5:]) < 0.8 * math.log(queue + 1)  # well below chance (uniform logits)


def test_moco_queue_wraps_around():
    torch.manual_seed(0)
    obj = MoCo(ResNetBackbone(1, widths=(8,)), proj_dim=4, queue_size=10)
    a, b, c = (F.normalize(torch.randn(4, 4), dim=1) for _ in range(3))
    obj.enqueue(a)
    obj.enqueue(b)
    assert int(obj.queue_ptr) == 8
    obj.enqueue(c)  # slots 8, 9, 0, 1
    assert int(obj.queue_ptr) == 2
    torch.testing.assert_close(obj.queue[8:10], c[:2])
    torch.testing.assert_close(obj.queue[0:2], c[2:])
    torch.testing.assert_close(obj.queue[2:4], a[2:])
    torch.testing.assert_close(obj.queue[4:8], b)
    big = F.normalize(torch.randn(13, 4), dim=1)  # larger than the queue: the last 10 stay
    obj.enqueue(big)
    assert int(obj.queue_ptr) == 2
    torch.testing.assert_close(torch.roll(obj.queue, -2, dims=0), big[3:])


def test_moco_loss_enqueues_normalised_keys():
    torch.manual_seed(0)
    obj = MoCo(ResNetBackbone(1, widths=(8, 16)), proj_dim=8, queue_size=12)
    before = obj.queue.clone()
    g = torch.Generator().manual_seed(0)
    for _ in range(2):
        obj.loss(torch.rand(8, 1, 8, 8) * 2 - 1, g)
    assert int(obj.queue_ptr) == 16 % 12
    assert not torch.allclose(obj.queue[:4], before[:4])  # overwritten on wrap
    torch.testing.assert_close(obj.queue.norm(dim=1), torch.ones(12))


def test_moco_key_encoder_is_an_ema_of_the_query(digits):
    torch.manual_seed(0)
    m = 0.9
    obj = MoCo(ResNetBackbone(1, widths=WIDTHS), proj_dim=16, queue_size=64, momentum=m)
    qk = list(zip(obj._query_params(), obj._key_params()))
    assert all(torch.equal(q, k) for q, k in qk)  # a copy at the start
    assert not any(k.requires_grad for _, k in qk)
    infos = train_losses(obj, digits[0], steps=3, batch=16)
    assert all(k.grad is None for _, k in qk)
    differ = [not torch.allclose(q, k) for q, k in qk]
    assert sum(differ) > len(qk) // 2  # the key encoder lags behind the trained query encoder
    q0 = [q.detach().clone() for q, _ in qk]
    k0 = [k.detach().clone() for _, k in qk]
    obj.momentum_update()
    for (q, k), qb, kb in zip(qk, q0, k0):
        torch.testing.assert_close(k, m * kb + (1 - m) * qb)
        torch.testing.assert_close(q, qb)  # the query is not touched
    # the whole state (key encoder, queue, pointer) is in the state_dict for checkpoints
    keys = obj.state_dict().keys()
    assert {"queue", "queue_ptr"} <= set(keys) and any(k.startswith("key_backbone.") for k in keys)
    assert obj.encoder() is obj.backbone


def test_mae_masks_exact_patch_count_per_sample():
    torch.manual_seed(0)
    obj = build_objective("mae", 1, widths=(8, 16), patch=4, mask_ratio=0.6)
    assert obj.encoder().in_channels == 2
    g = torch.Generator().manual_seed(0)
    mask = obj.random_mask(32, 16, 16, g)  # L = 16 patches
    assert mask.shape == (32, 16)
    assert torch.equal(mask.sum(dim=1), torch.full((32,), float(round(0.6 * 16))))
    assert len({tuple(r.tolist()) for r in mask}) > 20  # a different mask per sample
    x = torch.rand(32, 1, 16, 16) * 2 - 1
    with torch.no_grad():
        obj.mask_value.fill_(0.37)
    inp = obj.masked_input(x, mask)
    pix = obj.mask_pixels(mask, 16, 16)  # [N, 1, H, W]
    assert inp.shape == (32, 2, 16, 16)
    assert torch.equal(inp[:, 1:], pix)
    assert torch.equal(inp[:, :1][pix == 0], x[pix == 0])
    assert (inp[:, :1][pix == 1] == 0.37).all()
    assert torch.equal(pix[:, :, :4, :4].flatten(1).mean(1), mask[:, 0])  # patch 0 is top-left


@pytest.mark.parametrize("norm_pix", [False, True])
def test_mae_loss_ignores_visible_pixels(norm_pix):
    torch.manual_seed(0)
    obj = build_objective("mae", 3, widths=(8, 16), patch=4, mask_ratio=0.5, norm_pix=norm_pix)
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    mask = obj.random_mask(4, 16, 16, torch.Generator().manual_seed(1))
    pred = obj.predict(obj.masked_input(x, mask))
    assert pred.shape == x.shape
    pix = obj.mask_pixels(mask, 16, 16)
    noise = torch.randn_like(x)
    base = obj.forward_loss(x, pred, mask)
    torch.testing.assert_close(obj.forward_loss(x + noise * (1 - pix), pred, mask), base)
    torch.testing.assert_close(obj.forward_loss(x, pred + noise * (1 - pix), mask), base)
    assert not torch.allclose(obj.forward_loss(x + noise * pix, pred, mask), base)


def test_mae_prediction_does_not_see_masked_pixels():
    # the masked pixels' values never reach the prediction (they are replaced by mask_value)
    torch.manual_seed(0)
    obj = build_objective("mae", 1, widths=(8, 16), patch=4)
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    mask = obj.random_mask(2, 16, 16, torch.Generator().manual_seed(0))
    pix = obj.mask_pixels(mask, 16, 16)
    a = obj.predict(obj.masked_input(x, mask))
    b = obj.predict(obj.masked_input(x + 5 * torch.randn_like(x) * pix, mask))
    torch.testing.assert_close(a, b)


def test_mae_features_input_appends_empty_mask():
    x = torch.randn(3, 4, 8, 8)
    inp = MAE.features_input(x)
    assert inp.shape == (3, 5, 8, 8)
    assert torch.equal(inp[:, :4], x) and not inp[:, 4].any()
    assert torch.equal(append_mask_channel(x), inp)
    net = ResNetBackbone(5, widths=(8, 16))
    assert net.forward_pooled(inp).shape == (3, 16)


def test_finetune_beats_chance_on_held_out_digits(digits):
    torch.manual_seed(0)
    x, y = digits
    perm = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    train, test = perm[:1400], perm[1400:]
    obj = FineTune(ResNetBackbone(1, widths=WIDTHS), num_classes=10)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(obj.trainable_parameters(), lr=3e-3)
    for _ in range(80):
        idx = train[torch.randint(0, train.numel(), (64,), generator=g)]
        loss, info = obj.loss(x[idx], y[idx], g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    obj.eval()
    with torch.no_grad():
        acc = (obj.logits(x[test]).argmax(dim=1) == y[test]).float().mean().item()
    assert acc > 0.3  # chance is 0.1; 0.45-0.74 over seeds 0-3
    assert set(info) == {"loss", "acc"}


def test_build_objective_names():
    assert isinstance(build_objective("simclr", 3, widths=(8,)), SimCLR)
    assert isinstance(build_objective("moco", 4, widths=(8,), queue_size=16), MoCo)
    assert build_objective("mae", 4, widths=(8,)).encoder().spec["in_channels"] == 5
    with pytest.raises(ValueError, match="unknown"):
        build_objective("byol", 1)


def test_stem_stride_two_halves_every_stage():
    from drifting_platform.encoders.backbone import ResNetBackbone

    net = ResNetBackbone(2, widths=(8, 16), stem_stride=2)
    maps = net(torch.zeros(3, 2, 32, 32))
    assert [tuple(m.shape) for m in maps] == [(3, 8, 16, 16), (3, 16, 8, 8)]
    assert ResNetBackbone(**net.spec).spec == net.spec
    with pytest.raises(ValueError, match="stem_stride"):
        ResNetBackbone(1, stem_stride=3)
