"""Generator size presets: tiny factories gathered in a dict (facebookresearch/DiT style).

Every factory takes (data_shape, num_classes, **overrides); the overrides (a config's
`model.kwargs`) replace the preset's defaults, so `model.kwargs.hidden=64` shrinks `mlp`.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .common import Generator
from .conv import ConvGenerator
from .dit import DiTGenerator
from .mlp import MLPGenerator
from .release_dit import ReleaseDiTGenerator


def _preset(cls, **defaults) -> Callable[..., Generator]:
    def factory(data_shape: Sequence[int], num_classes: int = 1, **kwargs) -> Generator:
        return cls(tuple(data_shape), num_classes, **{**defaults, **kwargs})

    factory.defaults = dict(defaults)  # type: ignore[attr-defined]
    factory.__doc__ = f"{cls.__name__} with defaults {defaults}"
    return factory


mlp = _preset(MLPGenerator, hidden=256, depth=3, noise_dim=32)
# conv-s: ~0.2M params at 16x16; thin on purpose so a 2-core CPU trains it quickly
conv_s = _preset(ConvGenerator, noise_dim=64, widths=(64, 32, 16), blocks=1, cond_dim=128)
conv_m = _preset(ConvGenerator, noise_dim=128, widths=(256, 128, 64, 64), blocks=2, cond_dim=256)
# dit-s/2 is a small DiT for CPU runs and smoke tests, smaller than the DiT paper's DiT-S
dit_s_2 = _preset(DiTGenerator, patch_size=2, hidden=256, depth=6, heads=4, register_tokens=4)
# dit-b/2: the paper's Table 8 (DiT-B/2, hidden 768, depth 12, 16 register tokens, 32 style tokens)
dit_b_2 = _preset(DiTGenerator, patch_size=2, hidden=768, depth=12, heads=12, register_tokens=16, style_tokens=32, style_codebook=64)

# the authors' released generator (models/release_dit.py) at the release's sizes
# (configs/gen/*.yaml of lambertae/drifting): all switches on, 16 class tokens, 32 style
# coordinates over 64 embeddings; /2 for SD-VAE latents, /16 for 256x256 pixels
_RELEASE = dict(mlp_ratio=4.0, n_cls_tokens=16, noise_classes=64, noise_coords=32, use_qknorm=True, use_swiglu=True, use_rope=True, use_rmsnorm=True)
release_b_2 = _preset(ReleaseDiTGenerator, **_RELEASE, patch_size=2, hidden_size=768, cond_dim=768, depth=12, num_heads=12)
release_l_2 = _preset(ReleaseDiTGenerator, **_RELEASE, patch_size=2, hidden_size=1024, cond_dim=1024, depth=24, num_heads=16)
release_b_16 = _preset(ReleaseDiTGenerator, **_RELEASE, patch_size=16, hidden_size=768, cond_dim=768, depth=12, num_heads=12)
release_l_16 = _preset(ReleaseDiTGenerator, **_RELEASE, patch_size=16, hidden_size=1024, cond_dim=1024, depth=24, num_heads=16)
# release-s/2: the same architecture small enough for 2 CPU cores (digits at 8x8: 16 image tokens)
release_s_2 = _preset(ReleaseDiTGenerator, **{**_RELEASE, "n_cls_tokens": 2, "noise_coords": 8, "noise_classes": 16}, patch_size=2, hidden_size=96, cond_dim=96, depth=3, num_heads=4)

GENERATORS: dict[str, Callable[..., Generator]] = {
    "mlp": mlp,
    "conv-s": conv_s,
    "conv-m": conv_m,
    "dit-s/2": dit_s_2,
    "dit-b/2": dit_b_2,
    "release-s/2": release_s_2,
    "release-b/2": release_b_2,
    "release-l/2": release_l_2,
    "release-b/16": release_b_16,
    "release-l/16": release_l_16,
}


def build_generator(name: str, *, data_shape: Sequence[int], num_classes: int = 1, **kwargs) -> Generator:
    """The preset `name` for samples of shape `data_shape` and `num_classes` classes.

    kwargs override the preset's defaults; unknown names raise ValueError (listing the
    presets), unknown kwargs TypeError, shapes a preset cannot make ValueError.
    """
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; known: {list(GENERATORS)}")
    return GENERATORS[name](tuple(data_shape), num_classes, **kwargs)
