"""Strict configs of encoder pre-training jobs (`drifting-platform pretrain CONFIG`).

Same rules as the experiment configs (`drifting_platform.config`): frozen dataclasses, an
unknown key or a bad value is a `ConfigError` naming the key path, presets and `--set`
overrides merge the same way.

    name: mae-digits32-w32        # also the registered model name (register.name overrides)
    data: {name: digits, size: 32}
    objective: {name: mae, kwargs: {patch: 4, mask_ratio: 0.6}}
    backbone: {widths: [32, 64, 128], blocks: 1}
    train: {steps: 1500, batch_size: 256, lr: 1e-3}
    finetune: {steps: 0}          # > 0: classifier fine-tuning after pre-training

The release's Latent-MAE (objective `release_mae`) takes its network and loss from a
section of its own instead of `backbone` / `objective.kwargs` / `finetune`:

    objective: {name: release_mae}
    release_mae: {base_channels: 32, layers: [1, 1, 1, 1], input_patch_size: 4, patch_size: 2,
                  mask_ratio_min: 0.5, mask_ratio_max: 0.5, finetune_last_steps: 0}
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from .. import config as C
from ..config import ConfigError, DataConfig

OBJECTIVES = ("simclr", "moco", "mae", "release_mae")


@dataclass(frozen=True)
class ObjectiveConfig:
    name: Literal["simclr", "moco", "mae", "release_mae"] = "mae"
    kwargs: dict = field(default_factory=dict)  # passed to the objective (temperature, mask_ratio, ...)


@dataclass(frozen=True)
class BackboneConfig:
    widths: tuple[int, ...] = (32, 64, 128)  # channels per stage (stage 2.. halve the resolution)
    blocks: int = 1  # residual blocks per stage
    stem_stride: int = 1  # 2: the first stage at half resolution (upsampled inputs, cheaper features)


@dataclass(frozen=True)
class ReleaseMAEConfig:
    """The release's Latent-MAE and its pre-training objective (`train_mae.py`, `configs/mae/`).

    Network: `ReleaseMAE(base_channels, layers, input_patch_size, patch_size)`, stage widths
    base * (1, 2, 4, 8); in_channels and num_classes come from the data. Loss per sample:
    the input folded by input_patch_size, a mask ratio uniform in [mask_ratio_min,
    mask_ratio_max], each patch_size x patch_size patch (folded pixels) masked when its
    uniform noise < ratio, the encoder sees x * (1 - mask); lambda * cross-entropy of the
    classifier + (1 - lambda) * squared error summed over masked locations and channels /
    number of masked locations. lambda is `lambda_cls`, except during the last
    `finetune_last_steps` of train.steps, where it ramps linearly from 0 to `finetune_cls`
    over `warmup_finetune` steps (the release's classifier fine-tuning: 0.1 over 1000).
    """

    base_channels: int = 32  # a multiple of 32 (the decoder's GroupNorm(32)); the release: 256 / 640
    layers: tuple[int, int, int, int] = (2, 2, 2, 2)  # basic blocks per stage
    input_patch_size: int = 1  # p x p pixels folded into channels before conv1 (release: 1 latent, 8 pixel)
    patch_size: int = 2  # mask patch size, in folded-input pixels
    mask_ratio_min: float = 0.5
    mask_ratio_max: float = 0.5
    lambda_cls: float = 0.0  # classification weight before fine-tuning
    finetune_last_steps: int = 0  # classifier fine-tuning during the last N of train.steps (0 = none)
    warmup_finetune: int = 1000  # steps of the linear ramp of lambda from 0 to finetune_cls
    finetune_cls: float = 0.1  # lambda at the end of the ramp


@dataclass(frozen=True)
class AugmentConfig:
    strength: float = 1.0  # scales crop, rotation, jitter and noise together; 0 = none
    hflip: bool = False  # horizontal flips (natural images yes, digits no)


@dataclass(frozen=True)
class PretrainTrainConfig:
    steps: int = 1000
    batch_size: int = 256  # global batch (split over workers)
    lr: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    schedule: Literal["constant", "cosine"] = "cosine"
    grad_clip: float = 5.0
    log_every: int = 50
    ckpt_every: int = 500
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: Optional[int] = None


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 0  # classifier fine-tuning steps after pre-training (0 = none)
    lr: float = 3e-4
    batch_size: int = 256


@dataclass(frozen=True)
class RegisterConfig:
    enabled: bool = True  # register the weights in the MLflow model registry
    name: Optional[str] = None  # registered model name (default: the config's name)


@dataclass(frozen=True)
class PretrainConfig:
    name: str = "encoder"
    seed: int = 0
    data: DataConfig = field(default_factory=lambda: DataConfig(name="digits", size=32))
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: PretrainTrainConfig = field(default_factory=PretrainTrainConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    register: RegisterConfig = field(default_factory=RegisterConfig)
    release_mae: Optional[ReleaseMAEConfig] = None  # objective release_mae only (defaults when omitted)

    @property
    def registered_name(self) -> str:
        return self.register.name or self.name

    @property
    def total_steps(self) -> int:
        return self.train.steps + self.finetune.steps


def validate(cfg: PretrainConfig) -> PretrainConfig:
    t, f, b = cfg.train, cfg.finetune, cfg.backbone
    if not cfg.name or any(ch in cfg.name for ch in "/:@ "):
        raise ConfigError(f"name: {cfg.name!r} cannot name a registered model (no '/', ':', '@' or spaces)")
    if cfg.register.name is not None and any(ch in cfg.register.name for ch in "/:@ "):
        raise ConfigError(f"register.name: {cfg.register.name!r} cannot name a registered model")
    if not b.widths or min(b.widths) < 1:
        raise ConfigError(f"backbone.widths: need positive channel counts, got {list(b.widths)}")
    if b.blocks < 1:
        raise ConfigError(f"backbone.blocks: must be >= 1, got {b.blocks}")
    if b.stem_stride not in (1, 2):
        raise ConfigError(f"backbone.stem_stride: must be 1 or 2, got {b.stem_stride}")
    for key in ("steps", "batch_size", "log_every"):
        if getattr(t, key) < 1:
            raise ConfigError(f"train.{key}: must be >= 1, got {getattr(t, key)}")
    if t.batch_size < 2:
        raise ConfigError("train.batch_size: contrastive objectives need at least 2 samples")
    for key in ("warmup_steps", "ckpt_every"):
        if getattr(t, key) < 0:
            raise ConfigError(f"train.{key}: must be >= 0, got {getattr(t, key)}")
    if t.lr <= 0:
        raise ConfigError(f"train.lr: must be > 0, got {t.lr}")
    if t.grad_clip <= 0:
        raise ConfigError(f"train.grad_clip: must be > 0, got {t.grad_clip}")
    if f.steps < 0:
        raise ConfigError(f"finetune.steps: must be >= 0, got {f.steps}")
    if f.lr <= 0 or f.batch_size < 1:
        raise ConfigError("finetune.lr / finetune.batch_size: must be positive")
    if cfg.augment.strength < 0:
        raise ConfigError(f"augment.strength: must be >= 0, got {cfg.augment.strength}")
    if cfg.objective.name == "release_mae":
        cfg = _validate_release_mae(cfg)
    elif cfg.release_mae is not None:
        raise ConfigError(f"release_mae: only objective release_mae uses this section (objective.name is {cfg.objective.name!r})")
    kw = cfg.objective.kwargs
    if "mask_ratio" in kw and not 0.0 < float(kw["mask_ratio"]) < 1.0:
        raise ConfigError(f"objective.kwargs.mask_ratio: must lie in (0, 1), got {kw['mask_ratio']}")
    if "temperature" in kw and not float(kw["temperature"]) > 0:
        raise ConfigError(f"objective.kwargs.temperature: must be > 0, got {kw['temperature']}")
    return cfg


def _validate_release_mae(cfg: PretrainConfig) -> PretrainConfig:
    """Checks of objective release_mae; an omitted `release_mae` section becomes the defaults."""
    r = cfg.release_mae or ReleaseMAEConfig()
    if cfg.objective.kwargs:
        raise ConfigError(f"objective.kwargs: objective release_mae takes its settings from the release_mae section, not {sorted(cfg.objective.kwargs)}")
    if cfg.backbone != BackboneConfig():
        raise ConfigError("backbone: objective release_mae builds the release's network from release_mae.base_channels / layers / input_patch_size; remove backbone")
    if cfg.augment != AugmentConfig():
        raise ConfigError("augment: objective release_mae does not augment (masking is the task); remove augment")
    if cfg.finetune.steps:
        raise ConfigError("finetune.steps: objective release_mae fine-tunes its classifier inside train.steps, as the release does; set release_mae.finetune_last_steps instead")
    if r.base_channels < 32 or r.base_channels % 32:
        raise ConfigError(f"release_mae.base_channels: must be a positive multiple of 32 (the decoder's GroupNorm(32)), got {r.base_channels}")
    for i, n in enumerate(r.layers):
        if n < 1:
            raise ConfigError(f"release_mae.layers[{i}]: every stage needs >= 1 block, got {n}")
    for key in ("input_patch_size", "patch_size"):
        if getattr(r, key) < 1:
            raise ConfigError(f"release_mae.{key}: must be >= 1, got {getattr(r, key)}")
    size = cfg.data.size
    if size is not None:
        if size % r.input_patch_size:
            raise ConfigError(f"release_mae.input_patch_size: {r.input_patch_size} does not divide data.size {size}")
        if (size // r.input_patch_size) % r.patch_size:
            raise ConfigError(f"release_mae.patch_size: {r.patch_size} does not divide the folded input's size {size // r.input_patch_size} (data.size / input_patch_size)")
    if not 0.0 <= r.mask_ratio_min <= r.mask_ratio_max <= 1.0:
        raise ConfigError(f"release_mae.mask_ratio_min: need 0 <= mask_ratio_min <= mask_ratio_max <= 1, got {r.mask_ratio_min}, {r.mask_ratio_max}")
    for key in ("lambda_cls", "finetune_cls"):
        if not 0.0 <= getattr(r, key) <= 1.0:
            raise ConfigError(f"release_mae.{key}: must lie in [0, 1], got {getattr(r, key)}")
    if not 0 <= r.finetune_last_steps <= cfg.train.steps:
        raise ConfigError(f"release_mae.finetune_last_steps: must lie in [0, train.steps={cfg.train.steps}], got {r.finetune_last_steps}")
    if r.warmup_finetune < 0:
        raise ConfigError(f"release_mae.warmup_finetune: must be >= 0, got {r.warmup_finetune}")
    return dataclasses.replace(cfg, release_mae=r)


def from_dict(raw: dict) -> PretrainConfig:
    return validate(C.build_dataclass(PretrainConfig, raw, ""))


def load_pretrain_config(path: str | Path, preset: Optional[str] = None, overrides=()) -> PretrainConfig:
    """Read, merge preset and overrides, check: one encoder pre-training config."""
    return C.load_layered(path, preset, overrides, schema=PretrainConfig, validate=validate)


def to_dict(cfg: PretrainConfig) -> dict:
    return C.to_dict(cfg)  # type: ignore[arg-type]


def config_hash(cfg: PretrainConfig) -> str:
    """A short hash of everything that defines the trained weights (not logging / devices).

    A registered version carries it as a tag: a sweep reuses a version only when its hash
    matches the config it would train.
    """
    d = to_dict(cfg)
    for key in ("log_every", "ckpt_every", "device", "threads"):
        d["train"].pop(key, None)
    d.pop("register", None)
    if d.get("release_mae") is None:  # configs of the other objectives hash as before the section existed
        d.pop("release_mae", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def is_pretrain_config(cfg) -> bool:
    return isinstance(cfg, PretrainConfig)


__all__ = [
    "AugmentConfig", "BackboneConfig", "FinetuneConfig", "OBJECTIVES", "ObjectiveConfig",
    "PretrainConfig", "PretrainTrainConfig", "RegisterConfig", "ReleaseMAEConfig", "config_hash", "from_dict",
    "is_pretrain_config", "load_pretrain_config", "to_dict", "validate",
]
