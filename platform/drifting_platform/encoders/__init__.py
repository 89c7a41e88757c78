"""Frozen feature encoders behind one interface (see docs/internals.md, `encoders/`).

    enc = build_encoder("random_cnn", (1, 16, 16), widths=(32, 64))
    feats = enc(x)          # {"flat": [N, 1, 256], "s1.loc": [N, 256, 32], ...}
"""

from .base import ENCODERS, Encoder, build_encoder, register_encoder
from .multiscale import STD_EPS, multiscale_features
from .pixel import PixelEncoder
from .random_cnn import RandomCNNEncoder
from .learned import LEARNED_NAMES, LearnedEncoder
from .release_mae import ReleaseMAE, ReleaseMAEEncoder

__all__ = [
    "ENCODERS", "LEARNED_NAMES", "STD_EPS", "Encoder", "LearnedEncoder", "PixelEncoder", "RandomCNNEncoder", "ReleaseMAE", "ReleaseMAEEncoder",
    "build_encoder", "multiscale_features", "register_encoder",
]
