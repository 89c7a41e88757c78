"""Tests for drifting_platform.drift: golden agreement with the authors' JAX release and the
field's mathematical contracts (anti-symmetry, equilibrium, equivariance, stop-gradient)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import golden_path, in_ci

from drifting_platform.drift import cfg_negative_weight, drift_field, drift_loss, sample_cfg_alpha

GOLDEN_NAME = "drift_loss_official.npz"


def _golden_path() -> Path:
    return golden_path(GOLDEN_NAME)


def _golden_cases() -> list[str]:
    path = _golden_path()
    if not path.is_file():
        return []
    with np.load(path) as data:
        names = {key.split("/")[0] for key in data.files}
    return sorted(names, key=lambda name: (len(name), name))


def _case_tensor(data, case: str, name: str) -> torch.Tensor | None:
    key = f"{case}/{name}"
    return torch.from_numpy(np.array(data[key])) if key in data.files else None


def _rel_err(value: torch.Tensor, ref: torch.Tensor) -> float:
    return ((value - ref).abs().max() / ref.abs().max()).item()


# the kernel's paths: all temperatures stacked (small problems), row chunks of one row,
# row chunks of several rows, chunks of one whole class group (None: the size of one
# group's kernel, see _chunk); the result must not depend on which one runs
CHUNKS = {"stacked": 1 << 30, "one_row": 1, "rows": 100, "groups": None}


def _chunk(name: str, gen, pos, neg) -> int:
    """chunk_elems for path `name`: "groups" gets one class group's [C_g, N] kernel per chunk."""
    if CHUNKS[name] is not None:
        return CHUNKS[name]
    return gen.shape[1] * (gen.shape[1] + pos.shape[1] + (neg.shape[1] if neg is not None else 0))


@pytest.mark.parametrize("chunk", sorted(CHUNKS))
@pytest.mark.parametrize("case", _golden_cases() or [None])
def test_matches_official_release(case, chunk):
    path = _golden_path()
    if case is None:
        message = f"golden file {path} is missing (set DRIFTING_GOLDEN_DIR)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    with np.load(path) as data:
        get = lambda name: _case_tensor(data, case, name)  # noqa: E731
        gen = get("gen").clone().requires_grad_(True)
        temperatures = [float(r) for r in data[f"{case}/R"]]
        loss, info = drift_loss(
            gen,
            get("pos"),
            get("neg"),
            weight_gen=get("weight_gen"),
            weight_pos=get("weight_pos"),
            weight_neg=get("weight_neg"),
            temperatures=temperatures,
            chunk_elems=_chunk(chunk, gen, get("pos"), get("neg")),
        )
        (grad,) = torch.autograd.grad(loss.sum(), gen)

        assert loss.dtype == torch.float32 and loss.shape == get("loss").shape
        assert _rel_err(loss.detach(), get("loss")) <= 1e-4
        assert _rel_err(grad, get("grad")) <= 1e-2
        assert _rel_err(info["scale"], get("scale")) <= 1e-4
        for r in temperatures:
            key = f"loss_R{float(r)}"
            assert f"{case}/{key}" in data.files and key in info, key
            assert _rel_err(info[key], get(key)) <= 1e-4, key


# ----------------------------------------------------------------------------- helpers


def _inputs(seed=0, B=2, C_g=8, C_p=12, C_n=4, S=6, shift=0.5):
    g = torch.Generator().manual_seed(seed)
    gen = torch.randn(B, C_g, S, generator=g)
    pos = torch.randn(B, C_p, S, generator=g) + shift
    neg = torch.randn(B, C_n, S, generator=g) - shift if C_n else None
    return gen, pos, neg


def _loss_and_grad(gen, *args, **kwargs):
    gen = gen.detach().clone().requires_grad_(True)
    loss, info = drift_loss(gen, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss.sum(), gen)
    return loss.detach(), grad, info


# ----------------------------------------------------------------------------- drift_field


def test_field_swapping_positives_and_negatives_negates_it():
    g = torch.Generator().manual_seed(1)
    x, a, b = (torch.randn(n, 3, generator=g) for n in (9, 7, 11))
    for scales in ({}, {"attraction_scale": 1.5, "repulsion_scale": 0.5}):
        v = drift_field(x, a, b, 0.5, **scales)
        swapped = {
            "attraction_scale": scales.get("repulsion_scale", 1.0),
            "repulsion_scale": scales.get("attraction_scale", 1.0),
        }
        v_swapped = drift_field(x, b, a, 0.5, **swapped)
        assert v.abs().max() > 0.1  # not trivially zero
        torch.testing.assert_close(v_swapped, -v, atol=1e-6, rtol=0)


def test_field_vanishes_when_positives_equal_negatives():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(10, 2, generator=g), torch.randn(7, 2, generator=g) + 1.0
    for tau in (0.05, 0.5, 5.0):
        v = drift_field(x, y, y[torch.randperm(7, generator=g)], tau)
        assert v.abs().max() < 1e-6
    # ... but not when the sets differ, nor for a lopsided a V+ - r V-.
    assert drift_field(x, y, y + 0.5, 0.5).abs().max() > 1e-2
    assert drift_field(x, y, y.clone(), 0.5, attraction_scale=1.5).abs().max() > 1e-2


def test_field_is_linear_in_attraction_and_repulsion():
    g = torch.Generator().manual_seed(3)
    x, yp = torch.randn(8, 2, generator=g), torch.randn(6, 2, generator=g) + 2.0
    v_plus = drift_field(x, yp, x, 0.3, repulsion_scale=0.0)
    v_minus = drift_field(x, yp, x, 0.3, attraction_scale=0.0)
    torch.testing.assert_close(drift_field(x, yp, x, 0.3), v_plus + v_minus, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(
        drift_field(x, yp, x, 0.3, attraction_scale=1.5), 1.5 * v_plus + v_minus, atol=1e-6, rtol=1e-5
    )


def test_field_attracts_towards_data_and_masks_self_only_for_the_same_object():
    g = torch.Generator().manual_seed(4)
    x = 0.3 * torch.randn(6, 2, generator=g)
    y_pos = 0.3 * torch.randn(20, 2, generator=g) + torch.tensor([5.0, 0.0])
    v = drift_field(x, y_pos, x, 1.0)
    assert (v[:, 0] > 0).all()  # every sample moves towards the data
    assert torch.isfinite(v).all()
    # A copy of x is a genuine set of negatives: the zero self-distance then dominates.
    assert (drift_field(x, y_pos, x.clone(), 1.0) - v).abs().max() > 1e-3
    # A single sample with itself as the only negative has no repulsion mass, so no field.
    x1 = x[:1]
    assert drift_field(x1, y_pos, x1, 1.0).abs().max() == 0


def test_field_agrees_with_loss_force_at_one_temperature():
    """drift_loss's raw force is Algorithm 2 on features scaled by scale / sqrt(S), with
    tau = R sqrt(S); the two differ only by the release's 1e-6 floor on the affinity."""
    g = torch.Generator().manual_seed(5)
    S, R = 3, 0.2
    x, yp = torch.randn(8, S, generator=g), torch.randn(10, S, generator=g) + 1.0
    d = torch.cdist(x, torch.cat([x, yp]))
    s = d.mean() / math.sqrt(S)
    for a, r in ((1.0, 1.0), (1.5, 1.0), (1.0, 0.0)):
        _, info = drift_loss(x[None], yp[None], temperatures=[R], attraction_scale=a, repulsion_scale=r)
        xs = x / s
        v = drift_field(xs, yp / s, xs, R * math.sqrt(S), attraction_scale=a, repulsion_scale=r)
        assert math.isclose(v.square().mean().item(), info[f"loss_R{R}"].item(), rel_tol=2e-2)


# ----------------------------------------------------------------------------- drift_loss


def test_loss_force_vanishes_when_negatives_match_positives():
    # The generated samples, as negatives, would break the balance: weight them out.
    gen, pos, _ = _inputs(seed=6, C_n=0)
    weight_gen = torch.zeros(gen.shape[:2])
    loss, info = drift_loss(gen, pos, pos.flip(1), weight_gen=weight_gen)
    for key in ("loss_R0.02", "loss_R0.05", "loss_R0.2"):
        assert info[key] < 1e-10
    assert loss.max() < 1e-4  # normalised by the 1e-8 floor, not blown up to O(1)
    # Control: with an unrelated negative set the force is O(1e-2).
    _, info_ctrl = drift_loss(gen, pos, pos + 1.0, weight_gen=weight_gen)
    assert info_ctrl["loss_R0.2"] > 1e-4


def test_loss_is_equivariant_to_permutations():
    gen, pos, neg = _inputs(seed=7)
    loss, grad, _ = _loss_and_grad(gen, pos, neg)
    perm = torch.randperm(gen.shape[1], generator=torch.Generator().manual_seed(0))
    loss_p, grad_p, _ = _loss_and_grad(gen[:, perm], pos, neg)
    torch.testing.assert_close(loss_p, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_p, grad[:, perm], rtol=1e-4, atol=1e-6)
    loss_q, grad_q, _ = _loss_and_grad(gen, pos[:, torch.randperm(pos.shape[1])], neg.flip(1))
    torch.testing.assert_close(loss_q, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_q, grad, rtol=1e-4, atol=1e-6)


def test_gradient_flows_only_into_gen():
    gen, pos, neg = _inputs(seed=8)
    gen, pos, neg = (t.requires_grad_(True) for t in (gen, pos, neg))
    weight_neg = torch.full(neg.shape[:2], 0.5, requires_grad=True)
    loss, info = drift_loss(gen, pos, neg, weight_neg=weight_neg)
    grads = torch.autograd.grad(loss.sum(), [gen, pos, neg, weight_neg], allow_unused=True)
    assert grads[0] is not None and grads[0].abs().max() > 0
    assert all(g is None for g in grads[1:])
    assert all(not v.requires_grad for v in info.values())


def test_gradient_is_the_normalised_force():
    """d loss / d gen = -2 F / (C_g S s): the generator descends along the drift."""
    gen, pos, neg = _inputs(seed=9)
    B, C_g, S = gen.shape
    loss, grad, info = _loss_and_grad(gen, pos, neg)
    s = max(info["scale"].item() / math.sqrt(S), 1e-3)
    force = -grad * (C_g * S * s) / 2  # per-group mean of F^2 is the loss
    torch.testing.assert_close(force.square().mean(dim=(1, 2)), loss, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(force.square().mean().sqrt(), info["drift_norm"], rtol=1e-4, atol=1e-6)


def test_attraction_and_repulsion_scales():
    gen, pos, neg = _inputs(seed=10)
    loss, grad, info = _loss_and_grad(gen, pos, neg)
    loss_11, grad_11, info_11 = _loss_and_grad(gen, pos, neg, attraction_scale=1.0, repulsion_scale=1.0)
    assert torch.equal(loss_11, loss) and torch.equal(grad_11, grad)
    _, grad_att, _ = _loss_and_grad(gen, pos, neg, repulsion_scale=0.0)
    _, grad_asym, _ = _loss_and_grad(gen, pos, neg, attraction_scale=1.5)
    assert (grad_att - grad).abs().max() > 0.1 * grad.abs().max()
    assert (grad_asym - grad).abs().max() > 0.05 * grad.abs().max()
    # A common factor cancels in each temperature's RMS normalisation; only the raw
    # per-temperature mean squares see it (times factor^2).
    loss_22, grad_22, info_22 = _loss_and_grad(gen, pos, neg, attraction_scale=2.0, repulsion_scale=2.0)
    torch.testing.assert_close(loss_22, loss, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(grad_22, grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(info_22["loss_R0.05"], 4 * info["loss_R0.05"], rtol=1e-5, atol=0)


def test_unit_weights_equal_no_weights_and_weights_matter():
    gen, pos, neg = _inputs(seed=11)
    ones = lambda t: torch.ones(t.shape[:2])  # noqa: E731
    loss, _, _ = _loss_and_grad(gen, pos, neg)
    loss_w, _, _ = _loss_and_grad(
        gen, pos, neg, weight_gen=ones(gen), weight_pos=ones(pos), weight_neg=ones(neg)
    )
    torch.testing.assert_close(loss_w, loss, rtol=0, atol=0)
    _, _, info = _loss_and_grad(gen, pos, neg, weight_neg=3 * ones(neg))
    _, _, info_1 = _loss_and_grad(gen, pos, neg)
    assert abs(info["loss_R0.2"] - info_1["loss_R0.2"]) > 1e-3 * info_1["loss_R0.2"]


@pytest.mark.parametrize(
    "name",
    ["collapsed", "duplicated", "scaled_1e6", "scaled_1e-6", "single_positive", "float64"],
)
def test_degenerate_inputs_stay_finite(name):
    gen, pos, neg = _inputs(seed=12)
    if name == "collapsed":
        gen = gen[:, :1].expand_as(gen).clone()
    elif name == "duplicated":
        gen = torch.cat([gen[:, :4], gen[:, :4]], dim=1)
        pos = torch.cat([pos[:, :6], pos[:, :6]], dim=1)
    elif name.startswith("scaled"):
        factor = float(name.split("_")[1])
        gen, pos, neg = gen * factor, pos * factor, neg * factor
    elif name == "single_positive":
        pos = pos[:, :1]
    elif name == "float64":
        gen, pos, neg = gen.double(), pos.double(), neg.double()
    loss, grad, info = _loss_and_grad(gen, pos, neg)
    assert loss.dtype == torch.float32 and loss.shape == (gen.shape[0],)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert all(torch.isfinite(v) for v in info.values())
    if name in ("collapsed", "duplicated", "single_positive", "scaled_1e6"):
        # The normalised loss is one per temperature, up to how the RMS spreads over B.
        assert 0.5 < loss.mean().item() < 3 * 3


def test_bf16_autocast_runs_in_float32():
    gen, pos, neg = _inputs(seed=13, C_g=16, C_p=24, S=16)
    loss_ref, grad_ref, _ = _loss_and_grad(gen, pos, neg)
    gen16 = gen.bfloat16().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss16, info16 = drift_loss(gen16, pos.bfloat16(), neg.bfloat16())
        (grad16,) = torch.autograd.grad(loss16.sum(), gen16)
    assert loss16.dtype == torch.float32 and info16["scale"].dtype == torch.float32
    assert grad16.dtype == torch.bfloat16
    assert torch.isfinite(loss16).all() and torch.isfinite(grad16).all()
    # Only the inputs' bf16 rounding remains: the loss itself is computed in float32.
    loss_up, _, _ = _loss_and_grad(gen16.detach().float(), pos.bfloat16().float(), neg.bfloat16().float())
    torch.testing.assert_close(loss16.detach(), loss_up, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss16.detach(), loss_ref, rtol=0.1, atol=0)
    cos = torch.nn.functional.cosine_similarity(grad16.float().flatten(), grad_ref.flatten(), dim=0)
    assert cos > 0.9


def test_input_validation():
    gen, pos, neg = _inputs(seed=14)
    with pytest.raises(ValueError):
        drift_loss(gen[0], pos, neg)
    with pytest.raises(ValueError):
        drift_loss(gen, pos[:, :, :3], neg)
    with pytest.raises(ValueError):
        drift_loss(gen, pos, neg, weight_pos=torch.ones(2, 3))
    with pytest.raises(ValueError):
        drift_loss(gen, pos, neg, temperatures=())


# ----------------------------------------------------------------------------- CFG helpers


def _analytic_mean(low, high, power):
    # E[alpha] = int a^(1-p) / int a^(-p), by quadrature (independent of the sampler's formula).
    a = np.linspace(low, high, 200_001)
    return np.trapezoid(a ** (1 - power), a) / np.trapezoid(a ** (-power), a)


@pytest.mark.parametrize("power", [3.0, 1.0, 0.0])
def test_sample_cfg_alpha_range_and_mean(power):
    g = torch.Generator().manual_seed(0)
    alpha = sample_cfg_alpha(200_000, low=1.0, high=4.0, power=power, generator=g)
    assert alpha.shape == (200_000,) and alpha.dtype == torch.float32
    assert alpha.min() >= 1.0 and alpha.max() <= 4.0
    expected = _analytic_mean(1.0, 4.0, power)
    std_err = alpha.double().std().item() / math.sqrt(alpha.numel())
    assert abs(alpha.double().mean().item() - expected) < 5 * std_err
    if power == 3.0:
        assert abs(expected - 1.6) < 1e-6  # (1 - 1/4) / ((1 - 1/16) / 2)
        # P(alpha <= 2) = (1 - 2^-2) / (1 - 4^-2) = 0.8
        assert abs((alpha <= 2).double().mean().item() - 0.8) < 0.005


def test_sample_cfg_alpha_reproducible_and_degenerate():
    a = sample_cfg_alpha(5, generator=torch.Generator().manual_seed(3))
    b = sample_cfg_alpha(5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    assert torch.equal(sample_cfg_alpha(4, low=2.0, high=2.0), torch.full((4,), 2.0))
    with pytest.raises(ValueError):
        sample_cfg_alpha(4, low=0.0, high=1.0, power=3.0)


def test_cfg_negative_weight():
    w = cfg_negative_weight(torch.tensor([1.0, 2.0, 4.0]), n_gen=9, n_unc=2)
    torch.testing.assert_close(w, torch.tensor([0.0, 4.0, 12.0]))
    assert cfg_negative_weight(1.0, 5, 4).item() == 0.0
    assert cfg_negative_weight(2.5, 5, 4).item() == pytest.approx(1.5)
    with pytest.raises(ValueError):
        cfg_negative_weight(2.0, 5, 0)


def test_vendored_golden_files_equal_the_shared_ones():
    """tests/data/golden is a copy of the shared golden folder (where that folder is present):
    the copies that make the golden tests run on a fresh clone are the reference itself."""
    import hashlib

    from helpers import VENDORED_GOLDEN, shared_golden_dir

    shared = shared_golden_dir()
    if not shared.is_dir():
        pytest.skip(f"no shared golden folder at {shared} to compare with")
    vendored = sorted(p for p in VENDORED_GOLDEN.rglob("*") if p.is_file() and p.name != "README.md")  # our own notes
    assert len(vendored) >= 7
    for p in vendored:
        ref = shared / p.relative_to(VENDORED_GOLDEN)
        assert ref.is_file(), ref
        assert hashlib.sha256(p.read_bytes()).digest() == hashlib.sha256(ref.read_bytes()).digest(), p
