"""Strict experiment configs: frozen dataclasses loaded from YAML.

A config file is the base definition plus named ``presets`` (``smoke``, ``local``, ``paper``)
that override parts of it. Loading is strict, in the spirit of nanoGPT's configurator but
without ``exec``: an unknown key, a wrong type or an out-of-range value is a ``ConfigError``
whose message starts with the key's dotted path, raised before any data, model or cluster
time is spent.

    cfg = load_config("experiments/configs/digits.yaml", preset="smoke",
                      overrides=["train.steps=50", "drift.temperatures=[0.05]"])

Other configs (encoder pre-training, sweep files) use the same strict builder
(`build_dataclass`) and layered loader (`load_layered`) with their own schema. The module is
over 400 lines because it holds both the experiment schema and that shared loader, whose
names other modules use as `config.NAME`.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import yaml


class ConfigError(ValueError):
    """A config that cannot be used; the message names the offending key path."""


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class DataConfig:
    name: str = "8gaussians"  # a name of drifting_platform.data.DATASETS
    n: Optional[int] = None  # toy sets: how many points to draw
    size: Optional[int] = None  # digits / torchvision sets: side length to resize to
    root: Optional[str] = None  # torchvision sets: local root (never downloaded)
    path: Optional[str] = None  # shards: directory, glob or file of Parquet shards
    limit: Optional[int] = None  # keep the first `limit` samples (quick runs)
    # prepared latent sets (name "prepared", path = a `data prepare` folder): stream them
    # through per-class ring buffers (data/stream.py) or hold them in memory; auto streams
    # when the moments of both flips exceed stream_above_mb
    stream: Union[bool, Literal["auto"]] = "auto"
    stream_above_mb: float = 4096.0
    bank_size: int = 128  # ring buffer per class (the release's 128)
    unc_bank_size: int = 1000  # the global buffer the unconditional samples come from
    push_per_step: int = 64  # rows pushed into the buffers per step, per worker
    reference_size: int = 10000  # streamed sets: rows kept in memory for evaluation


@dataclass(frozen=True)
class ModelConfig:
    name: str = "mlp"  # a key of drifting_platform.models.GENERATORS
    kwargs: dict = field(default_factory=dict)  # passed to the generator factory
    # release-* generators: initialise architecture and weights from a released artifact
    # (a folder with ema_params.msgpack + metadata.json, `hf://NAME`, or a folder written by
    # `drifting-platform release convert`); model.kwargs must then be empty
    init: Optional[str] = None


@dataclass(frozen=True)
class EncoderConfig:
    name: str = "pixel"  # a key of drifting_platform.encoders.ENCODERS
    kwargs: dict = field(default_factory=dict)  # passed to the encoder factory
    # learned encoders (simclr, moco, mae, learned): models:/NAME/VERSION (MLflow registry,
    # also /latest or @alias) or a local directory written by `drifting-platform pretrain`;
    # release_mae: a release artifact folder, `hf://NAME` (e.g. hf://mae_latent_256), a
    # converted folder, or a `pretrain` run of objective release_mae (no source: random weights)
    source: Optional[str] = None


# encoder names that load pre-trained weights from encoder.source (encoders/learned.py)
LEARNED_ENCODERS = ("learned", "simclr", "moco", "mae")
# encoders whose weights may come from encoder.source but need not (random weights without)
OPTIONAL_SOURCE_ENCODERS = ("release_mae",)


# the scales of the multi-scale feature sets (paper App. A.5 (a)-(d); drift.feature_scales)
FeatureScale = Literal["loc", "global", "patch2", "patch4"]
FEATURE_SCALES: tuple[str, ...] = typing.get_args(FeatureScale)


@dataclass(frozen=True)
class DriftConfig:
    # the kernel temperatures tau; the paper's default uses all three
    temperatures: tuple[float, ...] = (0.02, 0.05, 0.2)
    # anti-symmetry ablation (paper Table 1): V = a * V+ - r * V-
    attraction_scale: float = 1.0
    repulsion_scale: float = 1.0
    # kernel normalisation ablation: the affinities are the softmax over targets y and over
    # generated x ("xy", the paper's default), the softmax over y only ("y"), or the raw
    # kernel exp(-d / tau) ("none"); drift.drift_loss
    normalization: Literal["xy", "y", "none"] = "xy"
    # multi-scale feature set ablation: which scales of the encoder's feature sets enter the
    # loss (encoders/multiscale.py): "loc" (a) per location, "global" (b) mean / std over
    # the map, "patch2" (c) / "patch4" (d) mean / std of 2x2 / 4x4 patches; feature sets
    # without a scale (the input "flat", release_mae's sets) are always kept
    feature_scales: tuple[FeatureScale, ...] = ("loc", "global", "patch2", "patch4")


@dataclass(frozen=True)
class SamplingConfig:
    # class-grouped batches (paper Sec. 3.5 / Table 2): per step N_c classes, each with
    # n_gen generated samples, n_pos positives from its class bank, plus n_unc
    # unconditional data samples shared by all groups as CFG negatives
    n_classes: int = 1
    n_gen: int = 256
    n_pos: int = 256
    n_unc: int = 0


@dataclass(frozen=True)
class CFGConfig:
    # classifier-free guidance through negatives (paper Sec. 3.5). The unconditional data
    # make up a fraction gamma = 1 - 1/alpha of the negatives. With `gamma` unset, alpha is
    # drawn per class group from [alpha_min, alpha_max] with density ~ alpha^-alpha_power
    # and the generator is told alpha; with `gamma` set, training uses the fixed
    # alpha = 1 / (1 - gamma) (the CFG-mixing sweep).
    enabled: bool = False
    alpha_min: float = 1.0
    alpha_max: float = 4.0
    alpha_power: float = 3.0
    gamma: Optional[float] = None


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 2000
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.01
    warmup_steps: int = 100
    # after warm-up: constant (the paper) or cosine decay to 0 (sharper small-scale runs:
    # the normalised loss gives steps of constant size, so a decaying lr lets samples settle)
    schedule: Literal["constant", "cosine"] = "constant"
    grad_clip: float = 2.0
    ema_decay: float = 0.999
    log_every: int = 50  # how often metrics go to the reporter (and so to trackers)
    ckpt_every: int = 500  # atomic, resumable checkpoints; 0 = only at the end
    # a quick metric of the EMA generator (fid on digits features / mmd on 2-D data) every
    # N steps, reported with the other metrics (what ASHA and Optuna prune on); 0 = off
    eval_every: int = 0
    eval_samples: int = 500
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16 = autocast for generator + encoder
    threads: Optional[int] = None  # torch intra-op threads; None = torch's default
    # the frozen encoder's features of the data set, computed once and indexed per step
    # (positives, unconditional negatives) instead of re-encoded every step; same results.
    # auto: on when the encoder allows it and the table fits feature_bank_max_mb;
    # true: on, or a ConfigError saying why not; false: off (train/feature_bank.py)
    feature_bank: Union[bool, Literal["auto"]] = "auto"
    feature_bank_max_mb: float = 2048.0
    # the generator's and the encoder's 4-D weights (conv layers) in channels-last layout:
    # the same computation, ~25% faster convolutions (and their backward) on CPU; false = NCHW
    channels_last: bool = True


@dataclass(frozen=True)
class EvalConfig:
    num_samples: int = 2000  # generated samples for the final metrics
    cfg_scale: float = 1.0  # alpha used for the final metrics and sample grid
    # image feature extractor for FID / KID / precision-recall / density-coverage: digits-div
    # (digits-classifier features + within-class 8x8 pixel residuals: sees fidelity and within-class diversity; also
    # logs the classifier FID as fid_classifier), digits (the classifier alone), inception
    extractor: Literal["digits-div", "digits", "inception"] = "digits-div"
    inception_weights: Optional[str] = None  # local Inception weights file (never downloaded)
    batch_size: int = 500
    # CFG scales at which FID and precision / recall are also measured at the end of a run
    # (alpha_<a>/fid, ...; the CFG trade-off curve); empty = only cfg_scale
    cfg_scales: tuple[float, ...] = ()
    # latent data: the SD-VAE that decodes samples for metrics, grids and samples.npz (a
    # folder or a cached HF name); default: the VAE a prepared set records (data prepare)
    vae: Optional[str] = None
    # the ImageNet protocol inside training (train/protocol.py): every `every` steps (0: off),
    # `protocol_samples` samples per scale of cfg_scales (else cfg_scale) against the reference
    # statistics `ref` (.npz: mu, sigma[, features]); FID / IS / precision / recall per scale
    # and the best are logged as eval/alpha_<a>/<metric>, eval/fid_best_alpha
    every: int = 0
    protocol_samples: int = 50000
    ref: Optional[str] = None


@dataclass(frozen=True)
class Config:
    name: str = "experiment"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    drift: DriftConfig = field(default_factory=DriftConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    cfg: CFGConfig = field(default_factory=CFGConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# --------------------------------------------------------------------------- typing


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _describe(tp: Any) -> str:
    """A reader's name for an annotation: `true/false or 'auto'`."""
    if typing.get_origin(tp) is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(tp) if a is not type(None))
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}.get(tp, _type_name(tp))


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Check `value` against annotation `tp` and return it in canonical form."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{path}: expected {_describe(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{path}: {value!r} is not one of {list(args)}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return build_dataclass(tp, value, path)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {type(value).__name__} {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{path}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{path}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{path}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            # PyYAML reads `1e-3` (no dot) as a string; accept what float() accepts
            try:
                return float(value)
            except ValueError:
                raise ConfigError(f"{path}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{path}: unsupported type {_type_name(tp)}")  # pragma: no cover


def build_dataclass(cls: type, raw: dict, path: str = "") -> Any:
    """`cls(**raw)` for a (frozen) dataclass, strictly: an unknown key or a value of the wrong
    type raises ConfigError naming its path (`path` is the prefix, e.g. "resources").
    Nested dataclass fields are built the same way; missing keys take the field defaults."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"{path}.{unknown[0]}" if path else unknown[0]
        raise ConfigError(f"{where}: unknown key (valid keys here: {', '.join(sorted(names))})")
    kwargs = {}
    for name in names:
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], f"{path}.{name}" if path else name)
    return cls(**kwargs)


# --------------------------------------------------------------------------- validation


def validate(cfg: Config) -> Config:
    """Range checks that types cannot express. Returns `cfg` or raises ConfigError."""
    d, s, t, c, e = cfg.drift, cfg.sampling, cfg.train, cfg.cfg, cfg.eval
    if cfg.encoder.name in LEARNED_ENCODERS and not cfg.encoder.source:
        raise ConfigError(f"encoder.source: encoder {cfg.encoder.name!r} loads pre-trained weights; give models:/NAME/VERSION or a local directory")
    if cfg.encoder.source and cfg.encoder.name not in LEARNED_ENCODERS + OPTIONAL_SOURCE_ENCODERS:
        raise ConfigError(f"encoder.source: encoder {cfg.encoder.name!r} takes no weights (encoders with weights: {', '.join(LEARNED_ENCODERS + OPTIONAL_SOURCE_ENCODERS)})")
    if cfg.model.init is not None:
        if not cfg.model.name.startswith("release"):
            raise ConfigError(f"model.init: only the release generators (release-*) load released weights; model.name is {cfg.model.name!r}")
        if cfg.model.kwargs:
            raise ConfigError(f"model.kwargs: the artifact in model.init fixes the architecture; remove {sorted(cfg.model.kwargs)}")
    dc = cfg.data
    for key in ("bank_size", "unc_bank_size", "reference_size"):
        if getattr(dc, key) < 1:
            raise ConfigError(f"data.{key}: must be >= 1, got {getattr(dc, key)}")
    if dc.push_per_step < 0:
        raise ConfigError(f"data.push_per_step: must be >= 0, got {dc.push_per_step}")
    if not dc.stream_above_mb > 0:
        raise ConfigError(f"data.stream_above_mb: must be > 0, got {dc.stream_above_mb}")
    if not d.temperatures:
        raise ConfigError("drift.temperatures: at least one temperature is needed")
    for i, tau in enumerate(d.temperatures):
        if not tau > 0:
            raise ConfigError(f"drift.temperatures[{i}]: temperature must be > 0, got {tau}")
    for key in ("attraction_scale", "repulsion_scale"):
        if getattr(d, key) < 0:
            raise ConfigError(f"drift.{key}: must be >= 0, got {getattr(d, key)}")
    if not d.feature_scales:
        raise ConfigError(f"drift.feature_scales: at least one scale is needed (of {', '.join(FEATURE_SCALES)})")
    if len(set(d.feature_scales)) != len(d.feature_scales):
        raise ConfigError(f"drift.feature_scales: a scale is listed twice in {list(d.feature_scales)}")
    for key in ("n_classes", "n_gen", "n_pos"):
        if getattr(s, key) < 1:
            raise ConfigError(f"sampling.{key}: must be >= 1, got {getattr(s, key)}")
    if s.n_gen < 2:
        raise ConfigError("sampling.n_gen: at least 2 generated samples per class are needed (they are each other's negatives)")
    if s.n_unc < 0:
        raise ConfigError(f"sampling.n_unc: must be >= 0, got {s.n_unc}")
    if c.gamma is not None and not 0.0 <= c.gamma < 1.0:
        raise ConfigError(f"cfg.gamma: CFG mixing must lie in [0, 1), got {c.gamma}")
    if not 1.0 <= c.alpha_min <= c.alpha_max:
        raise ConfigError(f"cfg.alpha_min: need 1 <= alpha_min <= alpha_max, got {c.alpha_min}, {c.alpha_max}")
    if c.enabled and s.n_unc < 1:
        raise ConfigError("sampling.n_unc: CFG (cfg.enabled) needs unconditional negatives, n_unc >= 1")
    if t.steps < 1:
        raise ConfigError(f"train.steps: must be >= 1, got {t.steps}")
    if t.lr <= 0:
        raise ConfigError(f"train.lr: must be > 0, got {t.lr}")
    for i, b in enumerate(t.betas):
        if not 0.0 <= b < 1.0:
            raise ConfigError(f"train.betas[{i}]: must lie in [0, 1), got {b}")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError(f"train.ema_decay: must lie in [0, 1), got {t.ema_decay}")
    for key in ("warmup_steps", "ckpt_every", "eval_every"):
        if getattr(t, key) < 0:
            raise ConfigError(f"train.{key}: must be >= 0, got {getattr(t, key)}")
    if t.eval_every and t.eval_every % t.log_every:
        raise ConfigError(f"train.eval_every: must be a multiple of train.log_every ({t.log_every}), got {t.eval_every}")
    if t.eval_samples < 2:
        raise ConfigError(f"train.eval_samples: must be >= 2, got {t.eval_samples}")
    if t.log_every < 1:
        raise ConfigError(f"train.log_every: must be >= 1, got {t.log_every}")
    if not t.feature_bank_max_mb > 0:
        raise ConfigError(f"train.feature_bank_max_mb: must be > 0, got {t.feature_bank_max_mb}")
    if t.grad_clip <= 0:
        raise ConfigError(f"train.grad_clip: must be > 0, got {t.grad_clip}")
    if e.num_samples < 1:
        raise ConfigError(f"eval.num_samples: must be >= 1, got {e.num_samples}")
    if e.cfg_scale < 1.0:
        raise ConfigError(f"eval.cfg_scale: CFG scale alpha must be >= 1, got {e.cfg_scale}")
    if e.extractor == "inception" and not e.inception_weights:
        raise ConfigError("eval.inception_weights: the inception extractor needs a local weights file")
    for i, a in enumerate(e.cfg_scales):
        if not a >= 1.0:
            raise ConfigError(f"eval.cfg_scales[{i}]: CFG scale alpha must be >= 1, got {a}")
    if e.every < 0:
        raise ConfigError(f"eval.every: must be >= 0, got {e.every}")
    if e.every and not e.ref:
        raise ConfigError("eval.ref: the in-training protocol (eval.every) needs reference statistics (.npz with mu, sigma)")
    if e.every and e.every % t.log_every:
        raise ConfigError(f"eval.every: must be a multiple of train.log_every ({t.log_every}), got {e.every}")
    if e.protocol_samples < 20:
        raise ConfigError(f"eval.protocol_samples: must be >= 20 (10 Inception-Score splits), got {e.protocol_samples}")
    return cfg


# --------------------------------------------------------------------------- loading


def deep_merge(base: dict, update: dict) -> dict:
    """Return `base` with `update` merged in; non-empty nested mappings merge, the rest replaces."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        # an empty mapping replaces (`--set encoder.kwargs={}` resets an encoder's options)
        if isinstance(value, dict) and value and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_override(item: str) -> dict:
    """`a.b.c=VALUE` -> {"a": {"b": {"c": VALUE}}}; VALUE is read as YAML (numbers, lists...)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.path=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"--set {item!r}: bad key path")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"{key}: cannot read value {raw!r}: {exc}") from None
    return nest(key, value)


def nest(path: str, value: Any) -> dict:
    """`nest("a.b", 1)` -> {"a": {"b": 1}}: a config path's value as a nested mapping."""
    out: Any = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return raw


def resolve_raw(raw: dict, preset: Optional[str] = None, overrides: tuple[str, ...] | list[str] = ()) -> dict:
    """Apply a preset and `--set` overrides to a raw config mapping (not yet validated)."""
    raw = copy.deepcopy(raw)
    presets = raw.pop("presets", {}) or {}
    if not isinstance(presets, dict):
        raise ConfigError("presets: expected a mapping of preset name -> overrides")
    if preset not in (None, "", "default"):
        if preset not in presets:
            raise ConfigError(f"presets.{preset}: no such preset (available: {', '.join(sorted(presets)) or 'none'})")
        if not isinstance(presets[preset], dict):
            raise ConfigError(f"presets.{preset}: expected a mapping of overrides")
        raw = deep_merge(raw, presets[preset])
    for item in overrides:
        raw = deep_merge(raw, parse_override(item))
    return raw


def from_dict(raw: dict) -> Config:
    return validate(build_dataclass(Config, raw, ""))


def load_layered(
    path: str | Path,
    preset: Optional[str] = None,
    overrides: tuple[str, ...] | list[str] = (),
    *,
    schema: type = Config,
    validate: Callable[[Any], Any] = validate,
) -> Any:
    """The one strict loader of layered YAML configs (experiments, pre-training, sweeps):
    read `path`, merge `preset` (from the file's `presets` section) and the `--set`
    `overrides`, build the frozen dataclass `schema` strictly and return `validate(cfg)`.

    Every other preset of the file must give a valid config too, so a broken `paper` preset
    is caught on a laptop, not on the cluster (its error is prefixed "presets.NAME: ")."""

    def build(raw: dict) -> Any:
        return validate(build_dataclass(schema, raw, ""))

    raw = read_yaml(path)
    presets = raw.get("presets")
    if isinstance(presets, dict):
        for name in presets:
            if name != preset:
                try:
                    build(resolve_raw(raw, name))
                except ConfigError as exc:
                    raise ConfigError(f"presets.{name}: {exc}") from None
    return build(resolve_raw(raw, preset, tuple(overrides)))


def load_config(path: str | Path, preset: Optional[str] = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Read, merge preset and overrides, type-check and range-check one experiment config."""
    return load_layered(path, preset, overrides)


def expand_path(value: Optional[str], key: str) -> Optional[str]:
    """Expand ~ and $VARS in a path from a config; an unset variable is a ConfigError."""
    if value is None:
        return None
    out = os.path.expanduser(os.path.expandvars(value))
    left = re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", out)
    if left:
        raise ConfigError(f"{key}: environment variable {left[0]} is not set (in {value!r})")
    return out


def preset_names(path: str | Path) -> list[str]:
    return sorted((read_yaml(path).get("presets") or {}).keys())


def to_dict(cfg: Config) -> dict:
    """Plain nested dict (tuples as lists), YAML- and JSON-friendly."""

    def conv(v: Any) -> Any:
        if isinstance(v, tuple):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(dataclasses.asdict(cfg))


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}: for params in trackers."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out
