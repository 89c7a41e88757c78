"""The straightforward PyTorch drifting loss: the yardstick of `bench_drift.py`.

The same formula as `drifting_platform.drift.drift_loss` (and as the authors' JAX release),
written the way the release writes it: one batched matmul for the distances, then for every
temperature the logits, both softmaxes, the affinity, the cross-weighting and one batched
matmul for the force, every intermediate a fresh tensor. The goal is computed without
gradient (the release's stop_gradient), so the backward pass is only the final square.
It is a benchmark baseline, not product code; `tests/test_benchmarks.py` checks that it
agrees with the golden numbers too, so the comparison is between equal results.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor


def reference_drift_loss(
    gen: Tensor,
    pos: Tensor,
    neg: Optional[Tensor] = None,
    *,
    weight_gen: Optional[Tensor] = None,
    weight_pos: Optional[Tensor] = None,
    weight_neg: Optional[Tensor] = None,
    temperatures: Sequence[float] = (0.02, 0.05, 0.2),
) -> tuple[Tensor, dict]:
    B, C_g, S = gen.shape
    ones = lambda t: torch.ones(t.shape[:2], dtype=torch.float32, device=gen.device)  # noqa: E731
    with torch.no_grad():
        x = gen.detach().float()
        targets = [x] + ([neg.float()] if neg is not None else []) + [pos.float()]
        weights = [weight_gen if weight_gen is not None else ones(gen)]
        if neg is not None:
            weights.append(weight_neg if weight_neg is not None else ones(neg))
        weights.append(weight_pos if weight_pos is not None else ones(pos))
        y = torch.cat(targets, dim=1)
        w = torch.cat(weights, dim=1).float()
        n_neg = y.shape[1] - pos.shape[1]

        xx = (x * x).sum(-1, keepdim=True)
        yy = (y * y).sum(-1).unsqueeze(1)
        dist = torch.sqrt(torch.clamp(xx + yy - 2.0 * torch.bmm(x, y.transpose(1, 2)), min=1e-8))
        scale = (dist * w[:, None, :]).mean() / w.mean()
        s = torch.clamp(scale / math.sqrt(S), min=1e-3)
        x_s, y_s = x / s, y / s
        dist_n = dist / torch.clamp(scale, min=1e-3)
        self_mask = torch.zeros_like(dist_n)
        self_mask[:, :, :C_g] = torch.eye(C_g, device=gen.device).expand(B, C_g, C_g) * 100.0
        dist_n = dist_n + self_mask

        info = {"scale": scale}
        total = torch.zeros_like(x_s)
        for r in temperatures:
            logits = -dist_n / r
            a_row = torch.softmax(logits, dim=-1)
            a_col = torch.softmax(logits, dim=-2)
            affinity = torch.sqrt(torch.clamp(a_row * a_col, min=1e-6)) * w[:, None, :]
            a_neg, a_pos = affinity[..., :n_neg], affinity[..., n_neg:]
            w_pos = a_pos * a_neg.sum(-1, keepdim=True)
            w_neg = a_neg * a_pos.sum(-1, keepdim=True)
            coeff = torch.cat([-w_neg, w_pos], dim=-1)
            force = torch.bmm(coeff, y_s) - coeff.sum(-1, keepdim=True) * x_s
            mean_sq = (force * force).mean()
            info[f"loss_R{r}"] = mean_sq
            total = total + force / torch.sqrt(torch.clamp(mean_sq, min=1e-8))
        goal = x_s + total
    loss = ((gen.float() / s - goal) ** 2).mean(dim=(1, 2))
    return loss, info
