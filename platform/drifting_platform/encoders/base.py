"""The frozen feature encoder interface and its registry.

A feature set is a tensor [N, L, S]: L tokens of S channels per sample; the loss folds L
into its batch dimension, so every token is an independent drifting problem.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

#: name -> Encoder subclass, filled by @register_encoder (like torch-fidelity's registry).
ENCODERS: dict[str, type["Encoder"]] = {}


class Encoder(nn.Module):
    """A frozen feature encoder: x [N, *input_shape] -> {name: Tensor [N, L, S]}.

    Frozen means eval mode and no parameter gradients; the encoder stays differentiable in
    its input, so the drifting loss's gradient reaches the generator through it.
    Subclasses take `input_shape` (per-sample shape, e.g. (2,) or (C, H, W)) as their first
    argument and implement `forward`.

    `bankable`: the features of a sample depend on that sample alone and on nothing random
    (no batch statistics, no sampling), so the training loop may compute the data set's
    features once and reuse them (`train/feature_bank.py`). An encoder for which that is
    false sets it to False.
    """

    bankable: bool = True

    def __init__(self, input_shape: Sequence[int]):
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self._frozen = False

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def freeze(self) -> "Encoder":
        """Eval mode, no parameter gradients, and later `.train()` calls are ignored."""
        super().train(False)
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen = True
        return self

    def train(self, mode: bool = True) -> "Encoder":
        # a frozen encoder stays in eval mode even when a parent module is put in training
        return super().train(False if self._frozen else mode)

    @torch.no_grad()
    def feature_shapes(self) -> dict[str, tuple[int, int]]:
        """{name: (L, S)} for this encoder's input shape (one dummy forward pass)."""
        p = next(self.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        feats = self(torch.zeros(1, *self.input_shape, device=device))
        return {k: (int(v.shape[1]), int(v.shape[2])) for k, v in feats.items()}

    def feature_names(self) -> list[str]:
        """The names of the feature sets `forward` returns, in order."""
        return list(self.feature_shapes())


def register_encoder(name: str) -> Callable[[type[Encoder]], type[Encoder]]:
    """Class decorator: `@register_encoder("pixel") class PixelEncoder(Encoder): ...`.

    Rejects a name already taken (ValueError) and a class that is not an Encoder (TypeError).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"encoder name must be a non-empty string, got {name!r}")

    def deco(cls):
        if name in ENCODERS:
            raise ValueError(f"encoder {name!r} is already registered (by {ENCODERS[name].__name__})")
        if not (isinstance(cls, type) and issubclass(cls, Encoder)):
            raise TypeError(f"encoder {name!r}: {cls!r} is not a subclass of Encoder")
        ENCODERS[name] = cls
        return cls

    return deco


def build_encoder(name: str, input_shape: Sequence[int], **kwargs) -> Encoder:
    """The registered encoder `name` for samples of shape `input_shape`, frozen.

    Unknown names raise ValueError (listing the known ones); unknown kwargs raise TypeError.
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known: {sorted(ENCODERS)}")
    return ENCODERS[name](tuple(input_shape), **kwargs).freeze()
