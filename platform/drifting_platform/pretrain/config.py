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
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from .. import config as C
from ..config import ConfigError, DataConfig

OBJECTIVES = ("simclr", "moco", "mae")


@dataclass(frozen=True)
class ObjectiveConfig:
    name: Literal["simclr", "moco", "mae"] = "mae"
    kwargs: dict = field(default_factory=dict)  # passed to the objective (temperature, mask_ratio, ...)


@dataclass(frozen=True)
class BackboneConfig:
    widths: tuple[int, ...] = (32, 64, 128)  # channels per stage (stage 2.. halve the resolution)
    blocks: int = 1  # residual blocks per stage
    stem_stride: int = 1  # 2: the first stage at half resolution (upsampled inputs, cheaper features)


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
    kw = cfg.objective.kwargs
    if "mask_ratio" in kw and not 0.0 < float(kw["mask_ratio"]) < 1.0:
        raise ConfigError(f"objective.kwargs.mask_ratio: must lie in (0, 1), got {kw['mask_ratio']}")
    if "temperature" in kw and not float(kw["temperature"]) > 0:
        raise ConfigError(f"objective.kwargs.temperature: must be > 0, got {kw['temperature']}")
    return cfg


def from_dict(raw: dict) -> PretrainConfig:
    return validate(C._build(PretrainConfig, raw, ""))


def load_pretrain_config(path: str | Path, preset: Optional[str] = None, overrides=()) -> PretrainConfig:
    """Read, merge preset and overrides, check: one encoder pre-training config."""
    raw = C.read_yaml(path)
    presets = raw.get("presets")
    if isinstance(presets, dict):
        for name in presets:  # every preset must give a valid config
            if name != preset:
                try:
                    from_dict(C.resolve_raw(raw, name))
                except ConfigError as exc:
                    raise ConfigError(f"presets.{name}: {exc}") from None
    return from_dict(C.resolve_raw(raw, preset, tuple(overrides)))


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
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def is_pretrain_config(cfg) -> bool:
    return isinstance(cfg, PretrainConfig)


__all__ = [
    "AugmentConfig", "BackboneConfig", "FinetuneConfig", "OBJECTIVES", "ObjectiveConfig",
    "PretrainConfig", "PretrainTrainConfig", "RegisterConfig", "config_hash", "from_dict",
    "is_pretrain_config", "load_pretrain_config", "to_dict", "validate",
]
