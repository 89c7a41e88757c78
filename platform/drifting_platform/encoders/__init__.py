"""Frozen feature encoders behind one interface (see docs/internals.md, `encoders/`).

    enc = build_encoder("random_cnn", (1, 16, 16), widths=(32, 64))
    feats = enc(x)          # {"flat": [N, 1, 256], "s1.loc": [N, 256, 32], ...}

Modules: `base` (the interface and the registry), `multiscale` (the feature sets),
`pixel`, `random_cnn`, `learned` and `release_mae` (the registered encoders), `backbone`
(the ResNet that pre-training trains and `learned` loads). The artifact format that
pre-training writes and `learned` / `release_mae` read is `drifting_platform.encoder_artifact`.
"""

from .base import ENCODERS, Encoder, build_encoder, register_encoder
from .multiscale import STD_EPS, feature_scale, multiscale_features, select_feature_sets
from .pixel import PixelEncoder
from .random_cnn import RandomCNNEncoder
from .learned import LearnedEncoder
from .release_mae import ReleaseMAE, ReleaseMAEEncoder

__all__ = [
    "ENCODERS", "STD_EPS", "Encoder", "LearnedEncoder", "PixelEncoder", "RandomCNNEncoder", "ReleaseMAE", "ReleaseMAEEncoder",
    "build_encoder", "feature_scale", "multiscale_features", "register_encoder", "select_feature_sets",
]
