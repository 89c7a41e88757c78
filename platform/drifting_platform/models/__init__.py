"""One-step generators x = f(z, class, CFG scale) and their size presets.

    g = build_generator("conv-s", data_shape=(1, 16, 16), num_classes=10)
    x = g(torch.randn(8, g.noise_dim), labels, alpha)   # [8, 1, 16, 16], model space
"""

from .common import ConditionEmbedding, Generator, fourier_features
from .conv import ConvGenerator, FiLMBlock, start_resolution
from .dit import DiTBlock, DiTGenerator
from .mlp import MLPGenerator
from .registry import GENERATORS, build_generator
from .release_dit import ReleaseDiTGenerator

__all__ = [
    "ConditionEmbedding", "ConvGenerator", "DiTBlock", "DiTGenerator", "FiLMBlock", "GENERATORS",
    "Generator", "MLPGenerator", "ReleaseDiTGenerator", "build_generator", "fourier_features", "start_resolution",
]
