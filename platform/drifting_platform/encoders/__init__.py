"""Frozen feature encoders behind one interface (see docs/internals.md, `encoders/`).

    enc = build_encoder("random_cnn", (1, 16, 16), widths=(32, 64))
    feats = enc(x)          # {"flat": [N, 1, 256], "s1.loc": [N, 256, 32], ...}

Modules: `base` (the interface and the registry), `multiscale` (the feature sets),
`pixel`, `random_cnn`, `learned` and `release_mae` (the registered encoders), `backbone`
(the ResNet that pre-training trains and `learned` loads), `artifact` (the artifact
format and source resolution; no torch, no MLflow).

The names below load on first use (PEP 562), and the first use loads every encoder module,
so `ENCODERS` is complete whichever name is asked for first. Importing the package alone
does not import torch: the tracking package registers its source resolvers in `artifact`
and stays cheap to import.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .base import ENCODERS, Encoder, build_encoder, register_encoder
    from .learned import LearnedEncoder
    from .multiscale import STD_EPS, multiscale_features
    from .pixel import PixelEncoder
    from .random_cnn import RandomCNNEncoder
    from .release_mae import ReleaseMAE, ReleaseMAEEncoder

#: every module that registers encoders, in registration order
_ENCODER_MODULES = ("pixel", "random_cnn", "learned", "release_mae")

_WHERE = {
    "ENCODERS": "base", "Encoder": "base", "build_encoder": "base", "register_encoder": "base",
    "STD_EPS": "multiscale", "multiscale_features": "multiscale",
    "PixelEncoder": "pixel", "RandomCNNEncoder": "random_cnn", "LearnedEncoder": "learned",
    "ReleaseMAE": "release_mae", "ReleaseMAEEncoder": "release_mae",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    for module in _ENCODER_MODULES:
        importlib.import_module(f"{__name__}.{module}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value
