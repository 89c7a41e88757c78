"""The drifting field and the drifting loss (Deng et al., 2026, "Generative Modeling via Drifting").

Pure tensor code: no I/O, no Ray, no MLflow.

Notation (paper, Sec. 3): a generator f maps noise to samples x = f(eps) ~ q. The drifting
field V_{p,q}(x) moves x towards the data distribution p and away from the current generated
distribution q; training regresses the generator's output onto its own drifted, stop-gradient
copy (paper Eq. 6):

    L = E || f(eps) - stopgrad(f(eps) + V(f(eps))) ||^2,

whose gradient is -2 V (up to normalisation), so the generator follows the field. With a kernel
k(x, y) = exp(-|x - y| / tau) the field splits into attraction towards positives and repulsion
from negatives (paper Eq. 8-11, Algorithm 2):

    V(x) = V+(x) - V-(x),
    V+(x) = sum_j W+_j (y+_j - x),   V-(x) = sum_j W-_j (y-_j - x),

with the kernel doubly normalised (softmax over the targets y and over the generated x) and
the two halves cross-weighted by each other's total mass, so that V = 0 when p = q (the
field is anti-symmetric: swapping p and q negates it). The paper's normalisation ablation
replaces the double softmax by a softmax over y only, or by the raw kernel
(``normalization`` = "xy", "y" or "none"); the cross-weighting, and so V = 0 at p = q, is
the same for all three.

``drift_loss`` is the batched feature-space version used for training (its default "xy"
normalisation matches the authors' JAX release number for number: tests/test_drift.py
checks its golden outputs, shipped in tests/data/golden); ``drift_field`` is the paper's
Algorithm 2 on raw coordinates (one temperature, no feature or force normalisation), for
toy data and tests. ``drift_losses`` computes the loss of several independent problems (an
encoder's feature sets) at once, so that under data parallelism their global batch
statistics cost a few all-reduces per step rather than a few per problem.
``sample_cfg_alpha`` and ``cfg_negative_weight`` implement the classifier-free-guidance
training recipe (unconditional data as extra, weighted negatives).

(Over 400 lines: the notation, the kernel's chunked paths, its normalisation variants and
the loss share their constants and derivation; the docstrings carry the paper's equations.)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = ["NORMALIZATIONS", "DriftInputs", "Reducer", "drift_loss", "drift_losses", "drift_field", "sample_cfg_alpha", "cfg_negative_weight"]

# how the kernel's logits become affinities (paper, kernel normalisation ablation):
# "xy" softmax over the targets and over the generated samples (the paper's default),
# "y" softmax over the targets only, "none" the raw kernel exp(-d / tau)
Normalization = Literal["xy", "y", "none"]
NORMALIZATIONS: tuple[str, ...] = ("xy", "y", "none")

# reduce(op, values): op "mean" or "max", values a 1-d tensor of this worker's statistics ->
# the same statistics over all workers (data parallelism; see drift_loss)
Reducer = Callable[[str, Tensor], Tensor]

# Constants of the release's computation (the golden numbers depend on each of them).
_DIST2_FLOOR = 1e-8  # squared distances are floored before the sqrt (sqrt'(0) = inf)
_SCALE_FLOOR = 1e-3  # the feature scale never goes below this (collapsed / tiny inputs)
_AFFINITY_FLOOR = 1e-6  # softmax_row * softmax_col is floored before the sqrt
_SELF_DISTANCE = 100.0  # added to a generated sample's normalised distance to itself
_RMS_FLOOR = 1e-8  # floor on a temperature's mean squared force before dividing by its root
# the [B, C_g, N] kernel is processed in chunks of about this many elements (4 MB): whole class
# groups when one group's [C_g, N] fits, else rows of generated samples; so the elementwise
# passes of a chunk stay in the CPU's cache and the working memory is the same for any
# number of temperatures
_CHUNK_ELEMS = 1 << 20
# on a GPU the elementwise passes stream from memory whatever the chunk, and each chunk costs
# a dozen kernel launches: at the paper's shapes (16k class groups x tokens of 64 x 144 per
# feature set) CPU-sized chunks would mean ~150 chunks per temperature and set, so a GPU
# takes chunks of 32M elements (128 MB in float32; a few per temperature). Unmeasured until
# benchmarks/gpu_check.py runs on a GPU (its kernel rows time both sizes).
_CHUNK_ELEMS_CUDA = 1 << 25
# problems of drift_losses that wait for their global statistics together hold at most about
# this many elements of distances and forces (1 GiB in float32)
_LOCKSTEP_ELEMS = 1 << 28
_EXP_MIN = -80.0  # exponents are clipped here: exp(-80) ~ 2e-35 is still a normal float32
_LOG_MIN = -1e30  # "y" / "none": stands in for log(0) where a maximum must stay finite


def _check_features(name: str, t: Tensor, batch: int | None = None, dim: int | None = None) -> None:
    if t.dim() != 3:
        raise ValueError(f"{name} must be [B, C, S], got shape {tuple(t.shape)}")
    if batch is not None and t.shape[0] != batch:
        raise ValueError(f"{name} has batch {t.shape[0]}, expected {batch}")
    if dim is not None and t.shape[2] != dim:
        raise ValueError(f"{name} has feature size {t.shape[2]}, expected {dim}")


def _weights(name: str, w: Tensor | None, like: Tensor) -> Tensor:
    """Per-sample weights [B, C] as float32 constants (None = ones)."""
    shape = like.shape[:2]
    if w is None:
        return torch.ones(shape, dtype=torch.float32, device=like.device)
    if tuple(w.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(w.shape)}")
    return w.detach().to(device=like.device, dtype=torch.float32)


def _pairwise_distance(x: Tensor, y: Tensor) -> Tensor:
    """Euclidean distances through one batched matmul.

    x [B, M, S], y [B, N, S] -> dist [B, M, N],
    dist_ij = sqrt(max(|x_i|^2 + |y_j|^2 - 2 x_i . y_j, 1e-8)).

    The expanded form (rather than |x_i - y_j|) is what the release computes; it costs one
    bmm instead of a [B, M, N, S] difference tensor. Its rounding leaves a sample's distance
    to itself at about 1e-4 instead of 0, which the golden ``scale`` includes.
    """
    x2 = torch.einsum("bms,bms->bm", x, x).unsqueeze(-1)  # [B, M, 1], no [B, M, S] temporary
    y2 = torch.einsum("bns,bns->bn", y, y).unsqueeze(-2)  # [B, 1, N]
    # x2 broadcast into the output, y2 added in place: no [B, M, N] temporary to copy
    d2 = torch.baddbmm(x2, x, y.transpose(1, 2), alpha=-2.0).add_(y2)
    return d2.clamp_(min=_DIST2_FLOOR).sqrt_()


@dataclass(frozen=True)
class DriftInputs:
    """One drifting problem of ``drift_losses`` (a feature set): the arguments of ``drift_loss``."""

    gen: Tensor
    pos: Tensor
    neg: Tensor | None = None
    weight_gen: Tensor | None = None
    weight_pos: Tensor | None = None
    weight_neg: Tensor | None = None


def drift_loss(
    gen: Tensor,
    pos: Tensor,
    neg: Tensor | None = None,
    *,
    weight_gen: Tensor | None = None,
    weight_pos: Tensor | None = None,
    weight_neg: Tensor | None = None,
    temperatures: Sequence[float] = (0.02, 0.05, 0.2),
    attraction_scale: float = 1.0,
    repulsion_scale: float = 1.0,
    batch_mean: Callable[[Tensor], Tensor] | None = None,
    chunk_elems: int | None = None,
    normalization: Normalization = "xy",
    batch_max: Callable[[Tensor], Tensor] | None = None,
    reduce: Reducer | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Multi-temperature drifting loss on feature sets, one value per class group.

    Args:
        gen: [B, C_g, S] generated features; the only input that receives a gradient.
        pos: [B, C_p, S] positive (data) features of the same class group.
        neg: [B, C_n, S] extra negatives (e.g. unconditional data for CFG), or None.
        weight_gen, weight_pos, weight_neg: [B, C_*] per-sample weights (None = ones).
            A target's weight multiplies its affinity column and its share of ``scale``.
        temperatures: kernel temperatures R (in units of the normalised distance).
        attraction_scale, repulsion_scale: multiply V+ and V- of every temperature before
            that temperature's RMS normalisation (ablations such as 1.5 V+ - V-; (1, 0) is
            attraction only). (1, 1) is the paper's anti-symmetric field.
        reduce: under data parallelism, where each worker holds an equal shard of the class
            groups, how this worker's batch statistics become the global batch's:
            ``reduce(op, values)`` with op "mean" or "max" and values a 1-d tensor of this
            worker's means (maxima) returns the means (maxima) over workers, so N workers
            compute exactly the one-worker loss (``train.distributed.all_reduce_values``).
            One call for the two means of ``scale``, one for every temperature's RMS, and
            for "y" / "none" one for every temperature's largest row mass. None: one process.
        batch_mean, batch_max: the older form of ``reduce``, one call per statistic: the
            mean (maximum) over the whole batch of a tensor (defaults ``Tensor.mean`` and
            ``Tensor.amax``). Under data parallelism pass both: with ``batch_mean`` alone each
            worker would rescale "y" / "none" by its own constant, which no longer cancels
            between workers, so they would only approximate the one-worker loss.
        chunk_elems: how many elements of the [B, C_g, N] kernel matrix are processed at
            once (whole class groups, or rows of generated samples when one group is
            larger; see ``_goal_steps``). Only speed and memory depend on it, not the result.
            None: 2^20 (cache-sized) on a CPU, 2^25 on a GPU (fewer kernel launches).
        normalization: how the logits l = -dn / R become affinities A (see below): "xy"
            (softmax over targets and generated samples, the paper's default and the
            release's computation), "y" (softmax over the targets only) or "none" (the raw
            kernel exp(l)).

    Returns:
        loss: [B] float32, mean over (C_g, S) of (gen / s - stopgrad(x + V))^2.
        info: scalar float32 tensors (detached): ``scale`` (mean weighted distance),
            ``loss_R{float(R)}`` (mean squared raw force at temperature R, e.g.
            ``loss_R0.05``; for "y" / "none" of the rescaled force, below) and ``drift_norm`` (RMS of the summed, normalised force).

    Computation (all in float32, everything but the last line without gradient). The targets
    are y = [gen (detached), neg, pos] (N = C_g + C_n + C_p columns) with weights w:

        d_ij     = |x_i - y_j|                               # [B, C_g, N]
        scale    = mean_{b,i,j}(d_ij w_j) / mean_{b,j}(w_j)
        s        = max(scale / sqrt(S), 1e-3)                # features are used as x / s
        dn_ij    = d_ij / max(scale, 1e-3)  (+100 where y_j is x_i itself)
        for each R:
            l_ij  = -dn_ij / R
            A_ij  = sqrt(max(softmax_j(l)_ij * softmax_i(l)_ij, 1e-6)) * w_j     ("xy")
                    softmax_j(l)_ij * w_j = exp(l_ij - L_i) * w_j                 ("y")
                    exp(l_ij) * w_j                                              ("none")
            W+_ij = A+_ij * sum_k A-_ik,   W-_ij = A-_ij * sum_k A+_ik
                    (A- = columns of gen and neg, A+ = columns of pos)
            F_R(x_i) = a * sum_j W+_ij (y_j - x_i) - r * sum_j W-_ij (y_j - x_i)
            loss_R   = mean(F_R^2);   F_R <- F_R / sqrt(max(loss_R, 1e-8))
        goal = x / s + sum_R F_R
        loss = mean_{i,s}(gen / s - goal)^2

    Normalising features by their mean distance makes the temperatures scale-free; dividing
    each temperature's force by its RMS gives every temperature an equal say, so the
    (normalised) loss stays near len(temperatures) and its gradient is -2 F / (C_g S s).

    "y" and "none" have no floor on A, and their forces underflow float32 or fall under the
    1e-8 RMS floor at small R: the raw kernel is exp(-dn / 0.02) < 1e-38 for dn > 1.8, and
    with either kernel a row whose nearest targets are all negatives (a generator far from
    the data) has s+_i ~ exp(-(distance to the positives - to the negatives) / R); on
    digits features at initialisation loss_R0.02 of "y" is 1e-25 and less. One constant for the
    whole batch cancels in the RMS normalisation, and F_R is quadratic in A (the
    cross-weighting): with the row masses s+_i = sum_pos A_ij, s-_i = sum_neg A_ij and the
    halves normalised, p_ij = A+_ij / s+_i and n_ij = A-_ij / s-_i,

        F_i = s+_i s-_i G_i,   G_i = a sum_j p_ij (y_j - x_i) - r sum_j n_ij (y_j - x_i).

    p and n are the same for "y" and "none" (the softmax's L_i cancels in them); the masses
    differ by exp(-2 L_i). The force is computed as exp(q_i - max_i q_i) G_i with
    q_i = log(s+_i s-_i): each half's exponentials shifted by their row maximum (of
    l + log w), G from rows that sum to one, and the one constant exp(max q) divided out
    (the batch's largest row mass counts as 1). The loss and gradient are those of the
    unrescaled kernel in exact arithmetic without the RMS floor; ``loss_R`` is that of the
    rescaled force.
    Exponents are clipped at -80 relative to their half's maximum as on the other paths
    (terms ~1e-35 of the largest).
    """
    if reduce is None and (batch_mean is not None or batch_max is not None):
        reduce = _per_statistic(batch_mean, batch_max)
    inputs = DriftInputs(gen, pos, neg, weight_gen, weight_pos, weight_neg)
    return drift_losses(
        [inputs], temperatures=temperatures, attraction_scale=attraction_scale, repulsion_scale=repulsion_scale,
        reduce=reduce, chunk_elems=chunk_elems, normalization=normalization,
    )[0]


def drift_losses(
    problems: Sequence[DriftInputs],
    *,
    temperatures: Sequence[float] = (0.02, 0.05, 0.2),
    attraction_scale: float = 1.0,
    repulsion_scale: float = 1.0,
    reduce: Reducer | None = None,
    chunk_elems: int | None = None,
    normalization: Normalization = "xy",
    lockstep_elems: int = _LOCKSTEP_ELEMS,
) -> list[tuple[Tensor, dict[str, Tensor]]]:
    """``drift_loss`` of several independent problems (an encoder's feature sets), with the
    cross-worker statistics of all of them gathered into few ``reduce`` calls.

    Each problem's computation stops where it needs a global statistic (the two means of
    ``scale``; every temperature's mean squared force; for "y" / "none" every temperature's
    largest row mass) and the problems advance together, so one ``reduce`` call serves the
    statistic of every problem: 2 all-reduces per step for "xy" and 3 for "y" / "none",
    whatever the number of feature sets, instead of 2 + T (2 + 2T) per set. Problems that
    wait together hold their distance matrices and forces at once; they are advanced in
    groups of at most ``lockstep_elems`` such elements (B C_g (N + T S) per problem; a
    larger problem alone), each group its own calls. Without ``reduce`` (one process)
    each problem runs to its end before the next starts. The results are those of
    ``drift_loss`` on each problem, in order.
    """
    temperatures = tuple(float(r) for r in temperatures)
    if not temperatures or min(temperatures) <= 0:
        raise ValueError(f"temperatures must be positive and non-empty, got {temperatures}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, got {normalization!r}")
    a, r, T = float(attraction_scale), float(repulsion_scale), len(temperatures)
    for p in problems:
        _check_features("gen", p.gen)
        B, _, S = p.gen.shape
        _check_features("pos", p.pos, B, S)
        if p.neg is not None:
            _check_features("neg", p.neg, B, S)
    # Autocast would run the matmuls in bf16/fp16; the field is a small difference of large
    # terms, so the whole computation is pinned to float32 whatever the caller's context
    # (one context around all problems: their steps interleave).
    with contextlib.ExitStack() as stack:
        for device_type in sorted({p.gen.device.type for p in problems}):
            stack.enter_context(torch.autocast(device_type=device_type, enabled=False))
        out: list = [None] * len(problems)
        for group in _lockstep_groups(problems, T, lockstep_elems if reduce is not None else 0):
            with torch.no_grad():
                prepared = {i: _targets(problems[i]) for i in group}
                steps = [_goal_steps(*prepared[i], temperatures, a, r, chunk_elems or _default_chunk(problems[i].gen.device), normalization)
                         for i in group]
                goals = _lockstep(steps, reduce)
            for i, (total, s_in, info) in zip(group, goals):
                # The only differentiable expression (s and the drift are constants):
                # gen / s - goal with goal = x / s + total, x = gen's value, so gen / s - x / s
                # is an exact 0 in the forward pass and the gradient is the release's.
                x = prepared[i][0]
                loss = (problems[i].gen.float() - x).div_(s_in).sub_(total).square().mean(dim=(1, 2))
                out[i] = (loss, info)
            del prepared, steps, goals
    return out


def _default_chunk(device: torch.device) -> int:
    """``chunk_elems`` when none is given: cache-sized on a CPU, launch-bound sizes on a GPU."""
    return _CHUNK_ELEMS_CUDA if device.type == "cuda" else _CHUNK_ELEMS


def _per_statistic(batch_mean: Callable[[Tensor], Tensor] | None, batch_max: Callable[[Tensor], Tensor] | None) -> Reducer:
    """A ``Reducer`` from ``drift_loss``'s per-statistic callables: each value on its own.
    A worker's mean (maximum) is a tensor's; the mean (maximum) of it over workers is the
    global one, as shards are equal."""
    fns = {"mean": batch_mean or torch.mean, "max": batch_max or torch.amax}
    return lambda op, values: torch.stack([fns[op](v) for v in values])


def _targets(p: DriftInputs) -> tuple[Tensor, Tensor, Tensor, int]:
    """(x, y, w, n_neg): the detached float32 generated features x [B, C_g, S], the targets
    y = [x, neg, pos] [B, N, S], their weights w [B, N] and how many of them are negatives."""
    x = p.gen.detach().float()
    parts, weights = [x], [_weights("weight_gen", p.weight_gen, p.gen)]
    if p.neg is not None:
        parts.append(p.neg.detach().float())
        weights.append(_weights("weight_neg", p.weight_neg, p.neg))
    parts.append(p.pos.detach().float())
    weights.append(_weights("weight_pos", p.weight_pos, p.pos))
    y = torch.cat(parts, dim=1)
    return x, y, torch.cat(weights, dim=1), y.shape[1] - p.pos.shape[1]


def _lockstep_groups(problems: Sequence[DriftInputs], T: int, budget: int) -> list[list[int]]:
    """Consecutive problems in groups whose held elements B C_g (N + T S) stay within
    ``budget`` (0: one problem per group)."""
    groups: list[list[int]] = []
    held = 0
    for i, p in enumerate(problems):
        B, C_g, S = p.gen.shape
        N = C_g + p.pos.shape[1] + (p.neg.shape[1] if p.neg is not None else 0)
        need = B * C_g * (N + T * S)
        if groups and budget and held + need <= budget:
            groups[-1].append(i)
            held += need
        else:
            groups.append([i])
            held = need
    return groups


def _lockstep(steps: list[Generator], reduce: Reducer | None) -> list:
    """Run the generators of ``_goal_steps`` together: each yields (op, this worker's values)
    and is sent the global values; the requests of one round are one ``reduce`` call per op.
    Returns each generator's return value."""
    results: list = [None] * len(steps)
    waiting = {i: next(g) for i, g in enumerate(steps)}
    while waiting:
        replies: dict[int, Tensor] = {}
        for op in ("mean", "max"):
            ids = [i for i, (o, _) in waiting.items() if o == op]
            if not ids:
                continue
            values = [waiting[i][1] for i in ids]
            if reduce is None:
                replies.update(zip(ids, values))
                continue
            reduced = reduce(op, torch.cat(values))
            replies.update(zip(ids, reduced.split([len(v) for v in values])))
        nxt = {}
        for i in waiting:
            try:
                nxt[i] = steps[i].send(replies[i])
            except StopIteration as done:
                results[i] = done.value
        waiting = nxt
    return results


def _goal_steps(
    x: Tensor, y: Tensor, w: Tensor, n_neg: int, temperatures: tuple[float, ...], a: float, r: float,
    chunk_elems: int, normalization: str = "xy",
) -> Generator[tuple[str, Tensor], Tensor, tuple[Tensor, Tensor, dict[str, Tensor]]]:
    """The drift of ``drift_loss``'s regression target (no gradient), as a generator that
    yields ("mean" | "max", this worker's statistics) where the global batch's are needed
    and is sent them; returns (total, s, info), where the goal is x / s + total.

    x [B, C_g, S] generated, y [B, N, S] targets (generated, extra negatives, positives),
    w [B, N] target weights; the first ``n_neg`` targets are negatives.

    Every temperature's force is computed before any is normalised, so the temperatures'
    statistics are one request: memory holds dn, T forces and one chunk. The forces come
    from one of three paths by size: all temperatures at once (``_forces_stacked``), chunks
    of whole class groups (``_forces_by_group``), or chunks of rows of generated samples for
    groups larger than a chunk (``_forces_by_rows``).
    """
    B, C_g, S = x.shape
    N = y.shape[1]
    dist = _pairwise_distance(x, y)  # [B, C_g, N], once for all R
    # mean_{b,i,j}(d_ij w_j) as a mean of per-row sums (no [B, C_g, N] temporary)
    num, den = yield "mean", torch.stack([(torch.bmm(dist, w.unsqueeze(-1)).squeeze(-1) / N).mean(), w.mean()])
    scale = num / den
    s_in = (scale / math.sqrt(S)).clamp(min=_SCALE_FLOOR)
    # Forces are computed on the unscaled features: F(y / s) = F(y) / s, and each
    # temperature's force is divided by its RMS, so only the RMS floor and loss_R see s.
    dn = dist.div_(scale.clamp(min=_SCALE_FLOOR))
    del dist
    # a sample must not repel itself: its self-distance is pushed out of the kernel's reach
    dn[:, :, :C_g].diagonal(dim1=1, dim2=2).add_(_SELF_DISTANCE)
    T = len(temperatures)
    if T * B * C_g * N <= chunk_elems:
        # small problems (op overhead dominates): every temperature at once
        forces, q = _forces_stacked(dn, w, y, x, n_neg, temperatures, a, r, normalization)
    elif C_g * N <= chunk_elems:
        # whole class groups per chunk: the column softmax stays inside a chunk
        forces, q = _forces_by_group(dn, w, y, x, n_neg, temperatures, a, r, normalization, groups=max(1, chunk_elems // (C_g * N)))
    else:
        forces, q = _forces_by_rows(dn, w, y, x, n_neg, temperatures, a, r, normalization, chunk_elems)
    del dn
    if q is not None:
        # "y" / "none": the rows' raw masses s+ s- relative to the batch's largest, exp(q - max q)
        q_max = yield "max", q.reshape(T, -1).amax(dim=1)
        forces.mul_(q.sub_(q_max.clamp(min=_LOG_MIN).view(T, 1, 1, 1)).exp_())
    flat = forces.reshape(T, -1)
    # each temperature's normalisation 1 / (s * RMS of force / s) (RMS floored in scaled units)
    mean_sq = (yield "mean", torch.stack([torch.dot(f, f) for f in flat]) / flat.shape[1]) / s_in.square()
    info: dict[str, Tensor] = {"scale": scale}
    info.update({f"loss_R{R}": mean_sq[i] for i, R in enumerate(temperatures)})
    norm = (s_in * mean_sq.clamp(min=_RMS_FLOOR).sqrt()).reciprocal()  # tensors: no device sync
    total = forces[0].mul_(norm[0])
    for i in range(1, T):
        total.add_(forces[i].mul_(norm[i]))
    info["drift_norm"] = torch.linalg.vector_norm(total) / math.sqrt(total.numel())
    return total, s_in, info


def _forces_by_rows(
    dn: Tensor, w: Tensor, y: Tensor, x: Tensor, n_neg: int, temperatures: tuple[float, ...], a: float, r: float,
    normalization: str, chunk_elems: int,
) -> tuple[Tensor, Tensor | None]:
    """``_goal_steps``'s forces [T, B, C_g, S] (and "y" / "none"'s log row masses q
    [T, B, C_g, 1]) in chunks of rows of generated samples, for class groups larger than a
    chunk.

    The release computes, per temperature R, two softmaxes of l = -dn / R and
    A = sqrt(max(softmax_row * softmax_col, 1e-6)) * w. With the log-sum-exps
    L_i = logsumexp_j l_ij and K_j = logsumexp_i l_ij, the same matrix is

        A_ij = max(exp(l_ij - (L_i + K_j) / 2), 1e-3) * w_j,

    one exponential per entry instead of two softmaxes, a product and a square root. K
    needs every row, so each temperature makes two passes over row chunks of dn: column
    sums (shifted by the column minima, so nothing overflows), then, per chunk, row sums,
    A, and the force. With A = [A- | A+], s-_i = sum_j A-_ij, s+_i = sum_j A+_ij,

        F_i = a s-_i (A+ y+)_i - r s+_i (A- y-)_i - (a - r) s-_i s+_i x_i,

    the release's cross-weighted field: A's halves are scaled in place by a s- and -r s+
    (per row), one matmul gives the first two terms.

    "y" and "none" need no column pass: they compute each row's normalised force G_i and
    log mass q_i in one pass over the chunks (``_halves``; "y" subtracts 2 L_i from q); the
    rows are rescaled by exp(q_i - max q) once every row is done.
    """
    B, C_g, N = dn.shape
    T = len(temperatures)
    w_col = w.unsqueeze(1)  # [B, 1, N]
    q = None
    if normalization == "xy":
        row_min = dn.amin(dim=-1)  # [B, C_g]
        col_min = dn.amin(dim=-2)  # [B, N]
    else:
        log_w, mask = w_col.log(), (w_col > 0).to(w.dtype)  # log w is -inf where w = 0
        q = torch.empty(T, B, C_g, 1, dtype=x.dtype, device=x.device)  # each row's log mass
    log_floor = 0.5 * math.log(_AFFINITY_FLOOR)  # A's floor, applied to the exponent
    rows = max(1, min(C_g, chunk_elems // max(1, B * N)))
    chunks = [(i, min(C_g, i + rows)) for i in range(0, C_g, rows)]
    buf = torch.empty(B, rows, N, dtype=x.dtype, device=x.device)
    forces = torch.empty(T, *x.shape, dtype=x.dtype, device=x.device)
    for t, R in enumerate(temperatures):
        k = -1.0 / R
        force = forces[t]
        if q is not None:
            for i0, i1 in chunks:  # normalised halves, each row's log mass aside
                e = buf[:, : i1 - i0]
                torch.mul(dn[:, i0:i1], k, out=e)
                softmax_lse = torch.logsumexp(e, dim=-1, keepdim=True) if normalization == "y" else None
                q[t, :, i0:i1] = _halves(e, log_w, mask, n_neg, softmax_lse)
                _chunk_force(e, y, x[:, i0:i1], force[:, i0:i1], n_neg, a, r)
            continue
        # pass 1: K_j = -col_min_j / R + log sum_i exp((dn_ij - col_min_j) * k). Exponents
        # below _EXP_MIN are clipped: their terms (< 1e-30) cannot change a sum that holds a
        # 1 (the minimum's), and clipping keeps denormals, slow on CPUs, out of the pass.
        col_sum = torch.zeros_like(col_min)
        for i0, i1 in chunks:
            e = buf[:, : i1 - i0]
            torch.sub(dn[:, i0:i1], col_min.unsqueeze(1), out=e)
            e.mul_(k).clamp_(min=_EXP_MIN).exp_()
            col_sum.add_(e.sum(dim=1))
        half_k_col = col_min.mul(k).add_(col_sum.log_()).mul_(-0.5).unsqueeze(1)  # -K_j / 2, [B, 1, N]
        # pass 2: per chunk, L_i, A and the force
        for i0, i1 in chunks:
            d = dn[:, i0:i1]
            e = buf[:, : i1 - i0]
            rmin = row_min[:, i0:i1].unsqueeze(-1)
            torch.sub(d, rmin, out=e)
            e.mul_(k).clamp_(min=_EXP_MIN).exp_()
            half_l_row = rmin.mul(k).add_(e.sum(dim=-1, keepdim=True).log_()).mul_(-0.5)  # -L_i / 2
            # A = max(exp(l - (L + K) / 2), floor) * w; the floor clamps the exponent
            torch.mul(d, k, out=e)
            e.add_(half_k_col).add_(half_l_row).clamp_(min=log_floor).exp_().mul_(w_col)
            _chunk_force(e, y, x[:, i0:i1], force[:, i0:i1], n_neg, a, r)
    return forces, q


def _xy_affinity(logits: Tensor, w_col: Tensor) -> Tensor:
    """"xy" affinities of whole class groups: logits [..., C_g, N] (every generated row of
    each group) -> A = exp(max((l - L) + (l - K), log 1e-6) / 2) * w, through the fused
    log-softmaxes over the targets (L) and over the generated samples (K)."""
    e = torch.log_softmax(logits, dim=-1).add_(torch.log_softmax(logits, dim=-2))
    return e.clamp_(min=math.log(_AFFINITY_FLOOR)).mul_(0.5).exp_().mul_(w_col)


def _forces_by_group(
    dn: Tensor, w: Tensor, y: Tensor, x: Tensor, n_neg: int, temperatures: tuple[float, ...], a: float, r: float,
    normalization: str, *, groups: int,
) -> tuple[Tensor, Tensor | None]:
    """``_goal_steps``'s forces [T, B, C_g, S] (and "y" / "none"'s log row masses) in chunks
    of ``groups`` whole class groups (rows of the batch dimension): a group's kernel
    [C_g, N] is complete inside its chunk, so both softmaxes of "xy" are the fused
    log-softmaxes of ``_forces_stacked`` on the chunk (one pass over the chunk per
    temperature instead of the row path's two) and the chunk stays in cache."""
    B, C_g, N = dn.shape
    T = len(temperatures)
    w_col = w.unsqueeze(1)  # [B, 1, N]
    q = None
    if normalization != "xy":
        log_w, mask = w_col.log(), (w_col > 0).to(w.dtype)
        q = torch.empty(T, B, C_g, 1, dtype=x.dtype, device=x.device)
    spans = [(b, min(B, b + groups)) for b in range(0, B, groups)]
    forces = torch.empty(T, *x.shape, dtype=x.dtype, device=x.device)
    for t, R in enumerate(temperatures):
        k = -1.0 / R
        for b0, b1 in spans:
            e = dn[b0:b1] * k  # the logits of the chunk's groups
            if q is None:
                e = _xy_affinity(e, w_col[b0:b1])
            else:
                softmax_lse = torch.logsumexp(e, dim=-1, keepdim=True) if normalization == "y" else None
                q[t, b0:b1] = _halves(e, log_w[b0:b1], mask[b0:b1], n_neg, softmax_lse)
            _chunk_force(e, y[b0:b1], x[b0:b1], forces[t, b0:b1], n_neg, a, r)
    return forces, q


def _chunk_force(e: Tensor, y: Tensor, x: Tensor, f: Tensor, n_neg: int, a: float, r: float) -> None:
    """The cross-weighted force of a chunk of affinity rows e = [A- | A+] ([B, rows, N],
    overwritten) into ``f`` [B, rows, S]: F = a s- (A+ y+) - r s+ (A- y-) - (a - r) s- s+ x."""
    a_neg, a_pos = e[..., :n_neg], e[..., n_neg:]
    s_neg = a_neg.sum(dim=-1, keepdim=True)  # [B, rows, 1]
    s_pos = a_pos.sum(dim=-1, keepdim=True)
    # cross-weighting in place (the chunk is in cache), then one matmul on all of it
    a_pos.mul_(s_neg * a)
    a_neg.mul_(s_pos * -r)
    if f.is_contiguous():
        torch.bmm(e, y, out=f)
    else:
        f.copy_(torch.bmm(e, y))
    if a != r:  # rowsum of the coefficients, (a - r) s- s+ (0 for the paper's field)
        f.sub_(x * (s_neg * s_pos * (a - r)))


def _halves(e: Tensor, log_w: Tensor, mask: Tensor, n_neg: int, lse: Tensor | None = None) -> Tensor:
    """"y" / "none" affinities in place (any leading dimensions): the logits l = k dn
    [..., N] in, the kernel A = exp(l) w out with each half (negatives, positives) divided
    by its row sum, so that a row's halves sum to 1 (0 for a half without weight). Returns
    q = log(s-_i s+_i) [..., 1], the log of the row's two masses: of the raw kernel, or of
    the softmax exp(l - L) w when ``lse`` = L (the rows' logsumexp) is given. log_w, mask:
    log w (-inf where w = 0) and w > 0, broadcastable to e."""
    e.add_(log_w)
    halves = (e[..., :n_neg], e[..., n_neg:])
    # each half's largest l + log w (finite even for a half without weight)
    maxima = [h.amax(dim=-1, keepdim=True).clamp_(min=_LOG_MIN) for h in halves]
    for h, m in zip(halves, maxima):
        h.sub_(m)
    e.clamp_(min=_EXP_MIN).exp_().mul_(mask)
    q = maxima[0] + maxima[1]
    if lse is not None:
        q.sub_(lse, alpha=2.0)
    for h in halves:
        s = h.sum(dim=-1, keepdim=True)  # >= 1 (the maximum's exp(0)) or 0 (no weight)
        h.div_(s.clamp(min=1.0))
        q.add_(s.log_())
    return q



def _forces_stacked(
    dn: Tensor, w: Tensor, y: Tensor, x: Tensor, n_neg: int, temperatures: tuple[float, ...], a: float, r: float,
    normalization: str = "xy",
) -> tuple[Tensor, Tensor | None]:
    """``_goal_steps``'s forces [T, B, C_g, S] for a kernel matrix small enough to hold once
    per temperature: the temperatures are a leading batch dimension, so each step is one
    operation (the fused log-softmaxes give l - L and l - K; A = exp((l - L + l - K) / 2),
    floored; "y" and "none": ``_halves``, whose log row masses q [T, B, C_g, 1] come back)."""
    T = len(temperatures)
    k = torch.tensor([-1.0 / t for t in temperatures], dtype=dn.dtype, device=dn.device).view(T, 1, 1, 1)
    q = None
    if normalization == "xy":
        e = _xy_affinity(dn.unsqueeze(0) * k, w.unsqueeze(1))  # [T, B, C_g, N]
    else:
        e = dn.unsqueeze(0) * k
        w_col = w.unsqueeze(1)
        softmax_lse = torch.logsumexp(e, dim=-1, keepdim=True) if normalization == "y" else None
        q = _halves(e, w_col.log(), (w_col > 0).to(w.dtype), n_neg, softmax_lse)  # [T, B, C_g, 1]
    a_neg, a_pos = e[..., :n_neg], e[..., n_neg:]
    s_neg = a_neg.sum(dim=-1, keepdim=True)
    s_pos = a_pos.sum(dim=-1, keepdim=True)
    a_pos.mul_(s_neg * a)
    a_neg.mul_(s_pos * -r)
    forces = torch.matmul(e, y.unsqueeze(0))  # [T, B, C_g, S]
    if a != r:
        forces.sub_(x.unsqueeze(0) * (s_neg * s_pos * (a - r)))
    return forces, q


def drift_field(
    x: Tensor,
    y_pos: Tensor,
    y_neg: Tensor,
    temperature: float,
    *,
    attraction_scale: float = 1.0,
    repulsion_scale: float = 1.0,
    normalization: Normalization = "xy",
) -> Tensor:
    """The paper's Algorithm 2: the drifting field at one temperature, on raw coordinates.

    Args:
        x: [N, D] generated samples (where the field is evaluated).
        y_pos: [N_pos, D] positives (samples of p).
        y_neg: [N_neg, D] negatives (samples of q). Pass ``x`` itself (the same object) to use
            the generated batch as negatives: each sample's pair with itself is then masked.
        temperature: tau of the kernel k(x, y) = exp(-|x - y| / tau), in data units.
        attraction_scale, repulsion_scale: a and r in V = a V+ - r V-.
        normalization: "xy" (the paper's Algorithm 2, below), "y" (A = softmax_y(l)) or
            "none" (A = exp(l), the raw kernel; no shift here, so V has the kernel's own
            scale and underflows where every distance is many tau).

    Returns:
        V: [N, D] (float32, or float64 for float64 inputs), computed without gradient (the
        field is a stop-gradient regression target).

    With logits l = -[|x - y_pos|, |x - y_neg|] / tau over the concatenated targets,

        A  = sqrt(softmax_y(l) * softmax_x(l)),   A = [A+ | A-]
        W+ = A+ * rowsum(A-),   W- = A- * rowsum(A+)
        V  = a (W+ y_pos - rowsum(W+) x) - r (W- y_neg - rowsum(W-) x).

    rowsum(W+) = rowsum(W-), so with a = r the x terms cancel (V = W+ y_pos - W- y_neg, as
    written in the paper). Contracts: swapping y_pos and y_neg negates V; V = 0 when y_pos
    and y_neg hold the same points.
    """
    if x.dim() != 2 or y_pos.dim() != 2 or y_neg.dim() != 2:
        raise ValueError("x, y_pos and y_neg must be [N, D] matrices")
    if not (x.shape[1] == y_pos.shape[1] == y_neg.shape[1]):
        raise ValueError("x, y_pos and y_neg must have the same feature size D")
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, got {normalization!r}")
    mask_self = y_neg is x  # identity, not equality: equal copies are genuine negatives
    dtype = torch.float64 if torch.float64 in (x.dtype, y_pos.dtype, y_neg.dtype) else torch.float32
    n_pos = y_pos.shape[0]

    with torch.no_grad(), torch.autocast(device_type=x.device.type, enabled=False):
        x, y_pos, y_neg = x.to(dtype), y_pos.to(dtype), y_neg.to(dtype)
        logits = torch.cdist(x, torch.cat([y_pos, y_neg], dim=0)).div_(-temperature)  # [N, N_pos + N_neg]
        if mask_self:
            # Infinite distance to itself (the most negative finite logit, so that a column
            # that is all masked, N = 1, still softmaxes without NaN).
            logits[:, n_pos:].diagonal().fill_(torch.finfo(dtype).min)
        if normalization == "xy":
            affinity = (torch.softmax(logits, dim=-1) * torch.softmax(logits, dim=-2)).sqrt_()
        elif normalization == "y":
            affinity = torch.softmax(logits, dim=-1)
        else:
            affinity = logits.exp_()
        a_pos, a_neg = affinity[:, :n_pos], affinity[:, n_pos:]
        w_pos = a_pos * a_neg.sum(-1, keepdim=True)
        w_neg = a_neg * a_pos.sum(-1, keepdim=True)
        v_pos = w_pos @ y_pos - w_pos.sum(-1, keepdim=True) * x
        v_neg = w_neg @ y_neg - w_neg.sum(-1, keepdim=True) * x
        return attraction_scale * v_pos - repulsion_scale * v_neg


def sample_cfg_alpha(
    n: int,
    *,
    low: float = 1.0,
    high: float = 4.0,
    power: float = 3.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """Sample CFG scales alpha [n] (float32) with density proportional to alpha^(-power) on [low, high].

    Inverse-CDF sampling from u ~ U(0, 1), with e = 1 - power:

        alpha = (low^e + u (high^e - low^e))^(1 / e)     (power != 1)
        alpha = low (high / low)^u                       (power == 1: log-uniform)

    power = 0 is uniform. The paper trains with a range of alpha so that one model serves
    every guidance scale at inference; power > 0 favours small alpha.
    """
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if not (0 <= low <= high):
        raise ValueError(f"need 0 <= low <= high, got low={low}, high={high}")
    if power >= 1 and low <= 0:
        raise ValueError(f"power={power} needs low > 0 (alpha^-power is not integrable at 0)")
    u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
    if low == high:
        alpha = torch.full_like(u, low)
    elif power == 1:
        alpha = low * (high / low) ** u
    else:
        e = 1.0 - power
        alpha = (low**e + u * (high**e - low**e)) ** (1.0 / e)
    # Rounding must not step outside the support.
    return alpha.clamp_(low, high).float()


def cfg_negative_weight(alpha: Tensor | float, n_gen: int, n_unc: int) -> Tensor:
    """Weight of each unconditional negative in a class group with CFG scale alpha.

    w = (alpha - 1)(n_gen - 1) / n_unc: the n_gen - 1 other generated samples of the group
    act as negatives with unit weight each, so the n_unc unconditional samples together
    weigh alpha - 1 times as much. The negative distribution becomes a mixture of q and the
    unconditional p, and at equilibrium the generator samples the CFG distribution of scale
    alpha. Zero at alpha = 1 (no guidance). Returns a float32 tensor shaped like alpha.
    """
    if n_unc <= 0:
        raise ValueError(f"n_unc must be positive, got {n_unc}")
    if n_gen < 1:
        raise ValueError(f"n_gen must be at least 1, got {n_gen}")
    alpha = torch.as_tensor(alpha, dtype=torch.float32)
    return (alpha - 1.0) * ((n_gen - 1) / n_unc)
