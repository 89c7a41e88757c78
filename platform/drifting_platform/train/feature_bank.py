"""A bank of the data set's encoder features, computed once and indexed every step.

The encoder is frozen, so the features of a *data* sample never change during training:
the positives and the unconditional (CFG) negatives of a step are rows of the data set,
and their features are rows of a table that can be computed once before the first step.
Only the generated samples still go through the encoder every step (with gradient).

    use, why = plan_feature_bank(cfg.train.feature_bank, cfg.train.feature_bank_max_mb, encoder, n)
    bank = build_feature_bank(encoder, data_x, autocast=amp) if use else None
    pos_f = lookup(bank, pos_idx)

Banking gives the same features as the per-step computation: the table is computed by the
same encoder, under the same autocast setting, and stored in float32 (the loop casts every
feature set to float32 before the loss anyway). It needs an encoder whose output for a
sample depends on that sample alone and on nothing random: every encoder here qualifies
(pixel; random CNN; learned ResNets with GroupNorm, frozen in eval mode). An encoder that
does not sets the class attribute `bankable = False` (see `encoders/base.py`). Training
data are not augmented per step, so a data sample's input is the same at every step.

Config (`train.feature_bank`): `auto` (default) banks when the encoder allows it and the
table fits `train.feature_bank_max_mb`; `true` banks or raises a ConfigError saying why
not; `false` computes the data features every step. Banking never changes a run's
results, so it is not part of a checkpoint's identity (resuming with another setting is fine).
"""

from __future__ import annotations

import contextlib
import time
from typing import Optional

import torch

from ..config import ConfigError

MB = 1024**2
CHUNK = 256  # samples per encoder call while building the bank


def bank_blockers(encoder: torch.nn.Module) -> list[str]:
    """Reasons why `encoder`'s features of a data sample could change between steps ([] = none)."""
    name = type(encoder).__name__
    out = []
    if not getattr(encoder, "bankable", True):
        out.append(f"encoder {name} declares its features non-deterministic (bankable = False)")
    if encoder.training:
        out.append(f"encoder {name} is in training mode (not frozen)")
    if any(p.requires_grad for p in encoder.parameters()):
        out.append(f"encoder {name} has trainable parameters (not frozen)")
    return out


def bank_megabytes(encoder: torch.nn.Module, n: int) -> float:
    """Size in MiB of the float32 feature table of `n` samples (one dummy forward pass)."""
    shapes = encoder.feature_shapes()
    return n * sum(L * S for L, S in shapes.values()) * 4 / MB


def plan_feature_bank(mode, max_mb: float, encoder: torch.nn.Module, n: int) -> tuple[bool, str]:
    """(use the bank?, a one-line reason). `mode` is train.feature_bank: "auto", True or False.

    With mode True, a bank that cannot be used is a ConfigError naming the reason.
    """
    if mode is False:
        return False, "off (train.feature_bank: false)"
    blockers = bank_blockers(encoder)
    if blockers:
        if mode is True:
            raise ConfigError(f"train.feature_bank: true, but {blockers[0]}; set train.feature_bank to auto or false")
        return False, f"off ({blockers[0]})"
    mb = bank_megabytes(encoder, n)
    if mb > max_mb:
        if mode is True:
            raise ConfigError(
                f"train.feature_bank: true, but the features of the {n} data samples take {mb:.0f} MB, over "
                f"train.feature_bank_max_mb = {max_mb:g}; raise the budget or set train.feature_bank to auto or false"
            )
        return False, f"off ({mb:.0f} MB > train.feature_bank_max_mb = {max_mb:g})"
    return True, f"on ({n} samples, {mb:.0f} MB)"


@torch.no_grad()
def build_feature_bank(encoder: torch.nn.Module, x: torch.Tensor, *, autocast=None, chunk: int = CHUNK) -> dict[str, torch.Tensor]:
    """{feature set: float32 [N, L, S]} of every row of `x`, on x's device.

    `autocast`: the context the training step runs the encoder under (bf16 runs), so the
    bank holds exactly what the step would compute.
    """
    bank: dict[str, torch.Tensor] = {}
    for i in range(0, len(x), chunk):
        with autocast if autocast is not None else contextlib.nullcontext():
            feats = encoder(x[i : i + chunk])
        for k, v in feats.items():
            if k not in bank:
                bank[k] = torch.empty((len(x), *v.shape[1:]), dtype=torch.float32, device=v.device)
            bank[k][i : i + len(v)] = v.float()
    return bank


def lookup(bank: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    """The bank's rows `idx` of every feature set."""
    return {k: v.index_select(0, idx) for k, v in bank.items()}


def prepare_feature_bank(cfg, encoder: torch.nn.Module, data_x: torch.Tensor, *, autocast=None) -> tuple[Optional[dict], dict]:
    """The loop's entry point: (bank or None, info for summary.json)."""
    tc = cfg.train
    use, why = plan_feature_bank(tc.feature_bank, tc.feature_bank_max_mb, encoder, len(data_x))
    info: dict = {"enabled": use, "reason": why}
    if not use:
        return None, info
    t0 = time.time()
    bank = build_feature_bank(encoder, data_x, autocast=autocast)
    info.update(megabytes=round(sum(v.numel() for v in bank.values()) * 4 / MB, 1), build_seconds=round(time.time() - t0, 3))
    return bank, info
