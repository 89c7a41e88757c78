"""From a class-grouped batch of features to the drifting loss (paper Sec. 3.4-3.5).

Pure tensor code, shared by the training loop and the tests. Each feature set of the
encoder is an independent drifting problem: its L tokens are folded into the loss's batch
dimension, so a feature set of shape [N, L, S] becomes N_c * L class groups of S-dim points.
The per-set losses are averaged over groups and summed over sets (paper App. A.5: "the
losses of all feature sets are summed").
"""

from __future__ import annotations

from typing import Optional

import torch

from ..drift import DriftInputs, Reducer, drift_losses


def fold_groups(feat: torch.Tensor, n_groups: int) -> torch.Tensor:
    """[n_groups * n, L, S] -> [n_groups * L, n, S]: one row of the loss per (group, token)."""
    total, L, S = feat.shape
    n = total // n_groups
    return feat.reshape(n_groups, n, L, S).permute(0, 2, 1, 3).reshape(n_groups * L, n, S)


def shared_negatives(feat: torch.Tensor, n_groups: int) -> torch.Tensor:
    """[N_unc, L, S] unconditional features -> [n_groups * L, N_unc, S], the same for every group."""
    n_unc, L, S = feat.shape
    return feat.permute(1, 0, 2).unsqueeze(0).expand(n_groups, L, n_unc, S).reshape(n_groups * L, n_unc, S)


def group_drift_loss(
    gen_feats: dict[str, torch.Tensor],
    pos_feats: dict[str, torch.Tensor],
    unc_feats: Optional[dict[str, torch.Tensor]],
    *,
    n_groups: int,
    unc_weight: Optional[torch.Tensor] = None,
    temperatures: tuple[float, ...] = (0.02, 0.05, 0.2),
    attraction_scale: float = 1.0,
    repulsion_scale: float = 1.0,
    normalization: str = "xy",
    reduce: Optional[Reducer] = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over feature sets of the mean drifting loss of every class group.

    gen_feats[k]: [N_c * n_gen, L, S] (carries gradient); pos_feats[k]: [N_c * n_pos, L, S];
    unc_feats[k]: [N_unc, L, S] or None; unc_weight: [N_c], the weight of each unconditional
    negative in each group (zero at CFG scale 1). Returns (scalar loss, diagnostics), where
    the diagnostics hold each temperature's raw force, averaged over feature sets: it keeps
    moving when the normalised loss sits near its constant value, and `feature_sets`, how
    many sets entered the loss. `normalization` (the kernel's: "xy", "y" or "none") and
    `reduce` (under data parallelism the statistics over workers,
    `train.distributed.all_reduce_values`) go to `drift_losses`: every feature set's
    statistics share its few all-reduces.
    """
    problems = []
    for name, g in gen_feats.items():
        L = g.shape[1]
        neg = weight_neg = None
        if unc_feats is not None and unc_feats[name].shape[0] > 0:
            neg = shared_negatives(unc_feats[name], n_groups)
            w = unc_weight if unc_weight is not None else torch.ones(n_groups, device=g.device)
            weight_neg = w.to(torch.float32).reshape(n_groups, 1, 1).expand(n_groups, L, neg.shape[1]).reshape(n_groups * L, neg.shape[1])
        problems.append(DriftInputs(fold_groups(g, n_groups), fold_groups(pos_feats[name], n_groups), neg, weight_neg=weight_neg))
    assert problems, "the encoder returned no feature sets"
    results = drift_losses(
        problems, temperatures=temperatures, attraction_scale=attraction_scale, repulsion_scale=repulsion_scale,
        normalization=normalization, reduce=reduce,
    )
    total = sum(loss.mean() for loss, _ in results)
    # the diagnostics leave the device once, as one tensor (no synchronisation per set)
    keys = [f"loss_R{float(t)}" for t in temperatures]
    raw = torch.stack([torch.stack([info[k] for k in keys]) for _, info in results]).mean(dim=0).tolist()
    metrics = {f"drift_raw/tau_{k[len('loss_R'):]}": v for k, v in zip(keys, raw)}
    metrics["feature_sets"] = float(len(results))
    return total, metrics


def class_spread(x: torch.Tensor, y: torch.Tensor, num_classes: int, chunk: int = 65536) -> torch.Tensor:
    """Each class's spread in the data: the std over the class's samples (ddof 1), averaged
    over dimensions -> [num_classes] float32 (0 for a class with fewer than 2 samples). Two
    passes over row chunks (the class means, then the squared deviations): any data size."""
    flat = x.reshape(len(x), -1)
    d = flat.shape[1]
    count = torch.bincount(y, minlength=num_classes).to(torch.float64)
    sums = torch.zeros(num_classes, d, dtype=torch.float64)
    for i in range(0, len(flat), chunk):
        sums.index_add_(0, y[i : i + chunk].cpu(), flat[i : i + chunk].cpu().double())
    mean = sums / count.clamp(min=1).unsqueeze(1)
    sq = torch.zeros(num_classes, d, dtype=torch.float64)
    for i in range(0, len(flat), chunk):
        yc = y[i : i + chunk].cpu()
        sq.index_add_(0, yc, (flat[i : i + chunk].cpu().double() - mean[yc]).square())
    var = sq / (count - 1).clamp(min=1).unsqueeze(1)
    return var.sqrt().mean(dim=1).float()


def spread_ratio(x_gen: torch.Tensor, data_spread: torch.Tensor, n_groups: int) -> float:
    """Collapse indicator: mean per-class std of generated samples / that of the data.

    data_spread: [n_groups], the spread of each group's class in the whole data set
    (`class_spread`; whole classes, so any number of positives per step, even one).
    ~1 when the generator covers its classes as widely as the data; -> 0 when it collapses.
    """
    g = x_gen.detach().reshape(n_groups, -1, x_gen[0].numel()).float()
    gs = g.std(dim=1).mean()  # n_gen >= 2 (config)
    ps = data_spread.to(gs.device).float().mean().clamp_min(1e-12)
    return float(gs / ps)
