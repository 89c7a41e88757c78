"""The kernel-normalisation variants of drift_loss / drift_field (paper ablation: softmax over
x and y, over y only, none): every code path computes the same numbers, they equal a
straightforward float64 reference, the field keeps V = 0 when p = q, and under data
parallelism "none" is the one-process loss (its exponent shift is gathered)."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from drifting_platform.drift import NORMALIZATIONS, DriftInputs, drift_field, drift_loss, drift_losses

TEMPS = (0.02, 0.05, 0.2)
# the kernel's paths for _inputs' shapes (one group's kernel is 8 x 24 = 192 elements, the
# batch's 3 x 192 per temperature): all temperatures stacked, row chunks of one row, of
# several rows, chunks of one whole class group
CHUNKS = {"stacked": 1 << 30, "one_row": 1, "rows": 100, "groups": 192}


def _inputs(seed=0, B=3, C_g=8, C_p=12, C_n=4, S=6, shift=0.5):
    g = torch.Generator().manual_seed(seed)
    gen = torch.randn(B, C_g, S, generator=g)
    pos = torch.randn(B, C_p, S, generator=g) + shift
    neg = torch.randn(B, C_n, S, generator=g) - shift
    weight_neg = torch.rand(B, C_n, generator=g) + 0.5
    return gen, pos, neg, weight_neg


def _loss_and_grad(gen, *args, **kwargs):
    gen = gen.detach().clone().requires_grad_(True)
    loss, info = drift_loss(gen, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss.sum(), gen)
    return loss.detach(), grad, info


def reference_loss(gen, pos, neg, weight_neg, *, normalization, temperatures=TEMPS, a=1.0, r=1.0,
                   rescale="mass", rms_floor=1e-8):
    """drift_loss's formula written out in float64, one temperature at a time, with explicit
    differences for the distances and plain softmax / exp for the affinities.
    "y" and "none" forces are then divided by one constant: rescale="mass" the largest row
    mass max_i s+_i s-_i (what drift_loss does), "logit" ("none" only) exp(2 max l) (the
    largest affinity becomes 1), None nothing."""
    x, yn, yp = gen.double(), neg.double(), pos.double()
    B, C_g, S = x.shape
    y = torch.cat([x, yn, yp], dim=1)
    w = torch.cat([torch.ones(B, C_g), weight_neg, torch.ones(B, yp.shape[1])], dim=1).double()
    n_neg = C_g + yn.shape[1]
    d = (x[:, :, None] - y[:, None]).square().sum(-1).clamp(min=1e-8).sqrt()  # [B, C_g, N]
    scale = (d * w[:, None]).mean() / w.mean()
    s = max(scale.item() / math.sqrt(S), 1e-3)
    dn = d / max(scale.item(), 1e-3)
    dn[:, :, :C_g] += 100.0 * torch.eye(C_g, dtype=dn.dtype)
    total, info = torch.zeros_like(x), {"scale": scale}
    for R in temperatures:
        l = -dn / R
        if normalization == "xy":
            A = (torch.softmax(l, dim=-1) * torch.softmax(l, dim=-2)).clamp(min=1e-6).sqrt()
        elif normalization == "y":
            A = torch.softmax(l, dim=-1)
        else:
            A = torch.exp(l)
        A = A * w[:, None]
        a_neg, a_pos = A[..., :n_neg], A[..., n_neg:]
        c = 1.0
        if normalization != "xy" and rescale == "mass":
            c = (a_pos.sum(-1) * a_neg.sum(-1)).max()
        elif normalization == "none" and rescale == "logit":
            c = torch.exp(2 * l.max())
        w_pos = a_pos * a_neg.sum(-1, keepdim=True)
        w_neg = a_neg * a_pos.sum(-1, keepdim=True)
        v_pos = w_pos @ y[:, n_neg:] - w_pos.sum(-1, keepdim=True) * x
        v_neg = w_neg @ y[:, :n_neg] - w_neg.sum(-1, keepdim=True) * x
        force = (a * v_pos - r * v_neg) / s / c
        info[f"loss_R{R}"] = force.square().mean()
        total = total + force / info[f"loss_R{R}"].clamp(min=rms_floor).sqrt()
    return total.square().mean(dim=(1, 2)), info


def test_normalizations_are_named():
    assert NORMALIZATIONS == ("xy", "y", "none")
    gen, pos, neg, _ = _inputs()
    with pytest.raises(ValueError, match="normalization"):
        drift_loss(gen, pos, neg, normalization="x")
    with pytest.raises(ValueError, match="normalization"):
        drift_field(gen[0], pos[0], neg[0], 0.5, normalization="softmax")


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_every_path_computes_the_same(normalization):
    gen, pos, neg, wn = _inputs(seed=1)
    for a, r in ((1.0, 1.0), (1.5, 1.0)):
        ref = None
        for chunk in CHUNKS.values():
            out = _loss_and_grad(gen, pos, neg, weight_neg=wn, attraction_scale=a, repulsion_scale=r,
                                 normalization=normalization, chunk_elems=chunk)
            if ref is None:
                ref = out
                continue
            torch.testing.assert_close(out[0], ref[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(out[1], ref[1], rtol=1e-4, atol=1e-7)
            for key, value in ref[2].items():
                torch.testing.assert_close(out[2][key], value, rtol=1e-5, atol=0, msg=key)


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_matches_the_float64_reference(normalization):
    gen, pos, neg, wn = _inputs(seed=2)
    for a, r in ((1.0, 1.0), (1.0, 0.0)):
        want, want_info = reference_loss(gen, pos, neg, wn, normalization=normalization, a=a, r=r)
        for chunk in CHUNKS.values():
            loss, _, info = _loss_and_grad(gen, pos, neg, weight_neg=wn, attraction_scale=a, repulsion_scale=r,
                                           normalization=normalization, chunk_elems=chunk)
            torch.testing.assert_close(loss.double(), want, rtol=1e-4, atol=1e-6)
            for key, value in want_info.items():
                torch.testing.assert_close(info[key].double(), value, rtol=1e-4, atol=0, msg=key)
    # the variants are different fields
    if normalization != "xy":
        other, _ = reference_loss(gen, pos, neg, wn, normalization="xy")
        assert (other - want).abs().max() > 1e-2 * want.abs().max()


@pytest.mark.parametrize("normalization", ["y", "none"])
def test_rescaling_by_the_largest_row_mass_cancels(normalization):
    """The kernel as defined (in float64, without the RMS floor its tiny forces would hit)
    and drift_loss's force rescaled by the largest row mass give the same normalised loss,
    also when the generated samples are far from the data (every row's nearest targets are
    negatives, so s+ is tiny in every row)."""
    for far in (0.0, 3.0):
        gen, pos, neg, wn = _inputs(seed=3, shift=0.5 + far)
        raw, raw_info = reference_loss(gen, pos, neg, wn, normalization=normalization, rescale=None, rms_floor=0.0)
        rescaled, info = reference_loss(gen, pos, neg, wn, normalization=normalization)
        torch.testing.assert_close(rescaled, raw, rtol=1e-9, atol=0)
        assert info["loss_R0.02"] > 1e-4  # well above the floor
        loss, _, _ = _loss_and_grad(gen, pos, neg, weight_neg=wn, normalization=normalization)
        torch.testing.assert_close(loss.double(), raw, rtol=1e-4, atol=1e-6)
        if far or normalization == "none":
            # without the rescaling, this temperature's force would sit under the 1e-8 floor
            assert raw_info["loss_R0.02"] < 1e-12
    # "none": rescaling so that the largest affinity is 1 would not do either (a row near a
    # positive is far from every negative)
    if normalization == "none":
        gen, pos, neg, wn = _inputs(seed=3)
        _, by_logit = reference_loss(gen, pos, neg, wn, normalization="none", rescale="logit")
        assert by_logit["loss_R0.02"] < 1e-8


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_loss_force_vanishes_when_negatives_match_positives(normalization):
    g = torch.Generator().manual_seed(4)
    gen, pos = torch.randn(2, 8, 6, generator=g), torch.randn(2, 12, 6, generator=g) + 0.5
    weight_gen = torch.zeros(gen.shape[:2])  # the generated samples as negatives would break the balance
    for chunk in CHUNKS.values():
        loss, grad, info = _loss_and_grad(gen, pos, pos.flip(1), weight_gen=weight_gen, normalization=normalization, chunk_elems=chunk)
        _, _, ctrl = _loss_and_grad(gen, pos, pos + 1.0, weight_gen=weight_gen, normalization=normalization, chunk_elems=chunk)
        for R in TEMPS:
            key = f"loss_R{R}"
            assert info[key] < 1e-8 * ctrl[key], key
        assert grad.abs().max() < 1e-3 * _loss_and_grad(gen, pos, pos + 1.0, weight_gen=weight_gen, normalization=normalization)[1].abs().max()


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_field_antisymmetry_and_equilibrium(normalization):
    g = torch.Generator().manual_seed(5)
    x, a, b = torch.randn(9, 3, generator=g), torch.randn(7, 3, generator=g) + 1.0, torch.randn(11, 3, generator=g)
    v = drift_field(x, a, b, 0.5, normalization=normalization)
    assert v.abs().max() > 1e-3  # not trivially zero
    torch.testing.assert_close(drift_field(x, b, a, 0.5, normalization=normalization), -v, atol=1e-6 * v.abs().max().item(), rtol=0)
    same = drift_field(x, a, a[torch.randperm(7, generator=g)], 0.5, normalization=normalization)
    assert same.abs().max() < 1e-5 * v.abs().max()


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
def test_field_is_the_loss_force_at_one_temperature(normalization):
    """drift_loss's raw force is Algorithm 2 on features scaled by scale / sqrt(S), with
    tau = R sqrt(S): for "y" and "none" divided by the largest row mass max_i s+_i s-_i of
    the kernel."""
    g = torch.Generator().manual_seed(6)
    S, R = 3, 0.2
    x, yp = torch.randn(8, S, generator=g).double(), torch.randn(10, S, generator=g).double() + 1.0
    d = torch.cdist(x, torch.cat([x, yp]))
    scale = d.mean()
    s = scale / math.sqrt(S)
    _, info = drift_loss(x[None], yp[None], temperatures=[R], normalization=normalization)
    xs = x / s
    v = drift_field(xs, yp / s, xs, R * math.sqrt(S), normalization=normalization)
    mean_sq = v.square().mean()
    if normalization != "xy":
        kernel = torch.exp(-torch.cdist(xs, torch.cat([yp / s, xs])) / (R * math.sqrt(S)))
        kernel[:, 10:].fill_diagonal_(0.0)  # no sample is its own negative
        if normalization == "y":
            kernel = kernel / kernel.sum(-1, keepdim=True)
        mass = kernel[:, :10].sum(-1) * kernel[:, 10:].sum(-1)
        mean_sq = mean_sq / mass.max() ** 2
    rel = 2e-2 if normalization == "xy" else 1e-4  # "xy": the loss floors the affinity at 1e-3
    assert math.isclose(mean_sq.item(), info[f"loss_R{R}"].item(), rel_tol=rel)


# ----------------------------------------------------------------------------- data parallel


# (normalization, gather the maximum?) of each two-worker computation
DP_CASES = [(n, True) for n in NORMALIZATIONS] + [("none", False)]


def _dp_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from drifting_platform.train import distributed as D

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        gen, pos, neg, wn = _inputs(seed=7, B=4)
        rows = slice(rank * 2, rank * 2 + 2)
        results = {}
        for normalization, gather in DP_CASES:
            loss, grad, info = _loss_and_grad(
                gen[rows], pos[rows], neg[rows], weight_neg=wn[rows], normalization=normalization,
                batch_mean=D.global_mean, batch_max=D.global_max if gather else None,
            )
            results[normalization, gather] = {"loss": loss, "grad": grad, "info": info}
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_two_workers_compute_the_one_process_loss(tmp_path):
    """Two gloo workers with half of the class groups each, the means and the maximum
    reduced over both: the one-process loss, gradient and diagnostics."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "result")
    mp.spawn(_dp_worker, args=(2, f"file://{tmp_path / 'pg'}", out), nprocs=2)
    parts = [torch.load(f"{out}.{rank}") for rank in range(2)]
    gen, pos, neg, wn = _inputs(seed=7, B=4)
    for normalization, gather in DP_CASES:
        loss, grad, info = _loss_and_grad(gen, pos, neg, weight_neg=wn, normalization=normalization)
        loss2 = torch.cat([p[normalization, gather]["loss"] for p in parts])
        if not gather:
            # without the gathered maximum each worker rescales "none"'s force by its own constant
            assert (loss2 - loss).abs().max() > 1e-3 * loss.abs().max()
            continue
        grad2 = torch.cat([p[normalization, gather]["grad"] for p in parts])
        torch.testing.assert_close(loss2, loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad2, grad, rtol=1e-4, atol=1e-7)
        info2 = parts[0][normalization, gather]["info"]
        for key in ["scale", *(f"loss_R{R}" for R in TEMPS)]:  # the global batch's (drift_norm is per worker)
            torch.testing.assert_close(info2[key], info[key], rtol=1e-5, atol=0, msg=f"{normalization}: {key}")


# --------------------------------------------------------------------------- several problems at once


def _problems(seed=11, B=4):
    """Three feature sets of different sizes (one with extra negatives), B class groups each."""
    gen, pos, neg, wn = _inputs(seed=seed, B=B)
    g2, p2, _, _ = _inputs(seed=seed + 1, B=B, C_g=5, C_p=7, S=9)
    g3, p3, n3, w3 = _inputs(seed=seed + 2, B=B, C_g=3, C_p=4, C_n=2, S=2)
    return [DriftInputs(gen, pos, neg, weight_neg=wn), DriftInputs(g2, p2), DriftInputs(g3, p3, n3, weight_neg=w3)]


def _losses_and_grads(problems, **kwargs):
    gens = [p.gen.detach().clone().requires_grad_(True) for p in problems]
    results = drift_losses([dataclasses.replace(p, gen=g) for p, g in zip(problems, gens)], **kwargs)
    grads = torch.autograd.grad(sum(loss.sum() for loss, _ in results), gens)
    return [(loss.detach(), grad, info) for (loss, info), grad in zip(results, grads)]


@pytest.mark.parametrize("normalization", NORMALIZATIONS)
@pytest.mark.parametrize("chunk", ["stacked", "rows", "groups"])
def test_several_problems_share_their_reductions_and_give_each_problems_loss(normalization, chunk):
    """drift_losses advances the problems together: one reduce call per statistic round for
    all of them (2 for "xy", 3 with the largest row mass of "y" / "none"), and each result
    is drift_loss's on that problem; a held-memory budget splits them into groups."""
    problems = _problems()
    calls = []

    def reduce(op, values):  # one process: the values are the global ones; count the calls
        calls.append((op, len(values)))
        return values

    got = _losses_and_grads(problems, normalization=normalization, chunk_elems=CHUNKS[chunk], reduce=reduce, temperatures=TEMPS)
    T = len(TEMPS)
    rounds = [("mean", 2 * 3)] + ([("max", T * 3)] if normalization != "xy" else []) + [("mean", T * 3)]
    assert calls == rounds
    for p, (loss, grad, info) in zip(problems, got):
        ref_loss, ref_grad, ref_info = _loss_and_grad(p.gen, p.pos, p.neg, weight_neg=p.weight_neg, normalization=normalization,
                                                      chunk_elems=CHUNKS[chunk], temperatures=TEMPS)
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-5, atol=1e-9)
        assert info.keys() == ref_info.keys()
        for k in info:
            torch.testing.assert_close(info[k], ref_info[k], rtol=1e-6, atol=0, msg=k)
    # a budget smaller than any problem: one group (and its rounds) per problem, same results
    calls.clear()
    alone = _losses_and_grads(problems, normalization=normalization, chunk_elems=CHUNKS[chunk], reduce=reduce, temperatures=TEMPS,
                              lockstep_elems=1)
    assert len(calls) == 3 * len(rounds)
    for (a, b, _), (c, d, _) in zip(got, alone):
        torch.testing.assert_close(a, c, rtol=0, atol=0)
        torch.testing.assert_close(b, d, rtol=0, atol=0)


def _dp_many_worker(rank: int, world: int, init: str, out: str) -> None:
    import torch.distributed as dist

    from drifting_platform.train import distributed as D

    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    counted = {"n": 0}
    all_reduce = dist.all_reduce

    def counting(*args, **kwargs):
        counted["n"] += 1
        return all_reduce(*args, **kwargs)

    dist.all_reduce = counting
    try:
        rows = slice(rank * 2, rank * 2 + 2)
        shard = [DriftInputs(p.gen[rows], p.pos[rows], None if p.neg is None else p.neg[rows],
                             weight_neg=None if p.weight_neg is None else p.weight_neg[rows]) for p in _problems()]
        results = {}
        for normalization in NORMALIZATIONS:
            counted["n"] = 0
            got = _losses_and_grads(shard, normalization=normalization, reduce=D.all_reduce_values, temperatures=TEMPS)
            results[normalization] = {"all_reduces": counted["n"], "results": got}
        torch.save(results, f"{out}.{rank}")
    finally:
        dist.all_reduce = all_reduce
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes import torch
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built")
def test_two_workers_compute_several_problems_in_two_or_three_all_reduces(tmp_path):
    """Two gloo workers, three feature sets of half the class groups each: every set's loss,
    gradient and global diagnostics are the one-process ones, and the whole computation
    costs 2 all-reduces ("xy") or 3 ("y", "none"), not 5 (8) per set."""
    import torch.multiprocessing as mp

    out = str(tmp_path / "result")
    mp.spawn(_dp_many_worker, args=(2, f"file://{tmp_path / 'pg'}", out), nprocs=2)
    parts = [torch.load(f"{out}.{rank}") for rank in range(2)]
    problems = _problems()
    for normalization in NORMALIZATIONS:
        assert [p[normalization]["all_reduces"] for p in parts] == [2 if normalization == "xy" else 3] * 2
        ref = _losses_and_grads(problems, normalization=normalization, temperatures=TEMPS)
        for i, (loss, grad, info) in enumerate(ref):
            loss2 = torch.cat([p[normalization]["results"][i][0] for p in parts])
            grad2 = torch.cat([p[normalization]["results"][i][1] for p in parts])
            torch.testing.assert_close(loss2, loss, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(grad2, grad, rtol=1e-4, atol=1e-7)
            info2 = parts[0][normalization]["results"][i][2]
            for key in ["scale", *(f"loss_R{R}" for R in TEMPS)]:
                torch.testing.assert_close(info2[key], info[key], rtol=1e-5, atol=0, msg=f"{normalization} set {i}: {key}")
