"""Sweep files: strict loading and validation, without Ray.

A sweep file names a base config and what varies:

    name: antisymmetry            # experiment name (default: the file name)
    base: configs/digits.yaml     # relative to this file
    preset: local                 # the base config's preset (CLI --preset overrides)
    set: [train.steps=2000]       # overrides applied to every trial
    rows:                         # named variants ...
      - {name: "V+ - V-", set: {drift.attraction_scale: 1.0}}
    space:                        # ... or a parameter space
      train.lr: {loguniform: [1e-4, 1e-2]}
    search: grid                  # grid | optuna
    seeds: 1                      # grid / rows: run every trial with seeds base seed + 0..N-1
    num_samples: 1
    scheduler: {name: none}       # none | asha (grace_period, reduction_factor)
    resources: {cpus_per_trial: 1, workers: 1, gpu: false}
    max_concurrent: 2
    max_failures: 2               # restarts of a trial whose process dies (from its checkpoint)
    metric: {name: fid, mode: min}
    presets:                      # sweep-level changes per preset name
      smoke: {set: [train.steps=6], max_concurrent: 2}
    encoders:                     # learned encoders the rows use (pre-trained or reused)
      mae-w32: {config: encoders/mae_digits32.yaml, preset: local, set: [backbone.widths=[32,64,128]]}
    rows: [{name: "MAE w32", encoder: mae-w32}]   # sets encoder.name / encoder.source
    prepare:                      # latent data made before any trial (launch/data_jobs.py)
      {images: digits, resolution: 32, vae: random}  # every trial: data.name=prepared, data.path=<it>

Every error is a `SweepError` (a `ConfigError`) whose message starts with the key path.
The small sections (`resources`, `scheduler`, `metric`, a row, an encoder) are frozen
dataclasses built by the configs' strict builder (`config.build_dataclass`). The base config
is read and resolved once (`SweepSpec.base_raw`); grid and rows trials are each built from
it and validated before anything starts (`points.py`); for ranges the endpoints are validated.
(Over 400 lines: the sweep file's whole schema and every error message it gives, in one place.)
"""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

from .. import config as C
from ..config import ConfigError
from .points import Trial, build_trial_config, first_bad_trial, first_point, fmt, plan_trials

SEARCHES = ("grid", "optuna")
SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
TOP_KEYS = (
    "name", "base", "preset", "set", "space", "rows", "search", "seeds", "num_samples", "scheduler",
    "resources", "max_concurrent", "max_failures", "metric", "presets", "encoders", "prepare",
)
PRESET_KEYS = tuple(k for k in TOP_KEYS if k not in ("name", "base", "presets"))

__all__ = ["SweepError", "SweepSpec", "Resources", "Scheduler", "Metric", "Row", "load_sweep"]


class SweepError(ConfigError):
    """A sweep file that cannot be run; the message starts with the offending key path."""


@dataclass(frozen=True)
class Resources:
    # CPUs (= torch threads) of each trial (each worker, with workers > 1); "auto": the
    # cluster's CPUs shared evenly by the trials that run at once (launch.plan)
    cpus_per_trial: Union[float, Literal["auto"]] = 1.0
    workers: int = 1  # 1: the loop runs in the trial process; N: a TorchTrainer of N workers
    # true: one GPU per worker; a fraction in (0, 1), e.g. 0.25: that share of one GPU per
    # trial (workers: 1), so that several small trials are packed onto each GPU
    gpu: Union[bool, float] = False

    @property
    def gpus_per_worker(self) -> float:
        return 1.0 if self.gpu is True else float(self.gpu or 0.0)


@dataclass(frozen=True)
class Scheduler:
    name: Literal["none", "asha"] = "none"
    grace_period: int = 1  # ASHA: steps before a trial can be stopped
    reduction_factor: float = 2.0  # ASHA: 1 / the fraction of trials kept at each rung


@dataclass(frozen=True)
class Metric:
    name: str = "fid"
    mode: Literal["min", "max"] = "min"


@dataclass(frozen=True)
class Row:
    """A named variant: `set` maps parameter paths to values; `encoder` names an entry of
    the `encoders:` section (which then sets encoder.name / encoder.source)."""

    name: str = ""
    set: dict = field(default_factory=dict)
    encoder: Optional[str] = None


@dataclass(frozen=True)
class _EncoderEntry:
    config: str = ""  # a pre-training config, relative to the sweep file
    preset: Optional[str] = None
    set: Any = None  # overrides: a list of "path=value" or a mapping


@dataclass(frozen=True)
class PrepareData:
    """`prepare:` the prepared latent set every trial trains on, made (or reused) before any
    trial by `data_jobs.prepare_sweep_data`: an ImageFolder (the built-in `digits` written as
    RGB images at `resolution`, or a folder, relative to the sweep file) through an SD-VAE
    (`random`: a randomly initialised AutoencoderKL of `vae_widths`; else a VAE folder or a
    cached Hugging Face name) into posterior-moment shards on Ray Data actors, plus the
    reference statistics of the decoded data on the digits extractor (`reference.npz`, for
    `eval.ref`). Written under `out` (default $DRIFTING_HOME/data/<sweep name>-<hash>; on a
    cluster of several nodes, a folder every node sees, as the trials read it)."""

    images: str = "digits"
    resolution: int = 32
    vae: str = "random"
    vae_widths: tuple[int, ...] = (16, 32, 32)  # random VAE: spatial factor 2 ** (len - 1)
    latent_channels: int = 4
    shard_size: int = 256
    limit: Optional[int] = None  # the first `limit` images of the built-in set
    workers: Optional[int] = None  # Ray Data actors (default: the sweep's concurrent trials)
    out: Optional[str] = None

    def fingerprint(self) -> str:
        """What decides the prepared set's content (not where it goes or how many actors)."""
        import hashlib
        import json

        body = {k: v for k, v in dataclasses.asdict(self).items() if k not in ("workers", "out")}
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=list).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class SweepSpec:
    path: Path
    name: str
    base: Path
    preset: Optional[str]  # the base config's preset
    set: tuple[str, ...]
    overrides: tuple[str, ...]  # from the command line (win over `set`)
    space: Optional[dict]  # path -> {kind: values}
    rows: Optional[tuple[Row, ...]]
    search: str
    num_samples: int
    scheduler: Scheduler
    resources: Resources
    max_concurrent: Optional[int]
    metric: Metric
    base_raw: dict  # the base config with its preset, `set` and --set applied (not validated)
    trials: tuple[Trial, ...] = ()  # grid / rows: the full plan
    max_failures: int = 2  # Tune restarts of a trial whose process died
    # `encoders:` key -> the validated PretrainConfig of an encoder some row uses; the
    # sweep pre-trains (or reuses) them before any trial and pins each row's source
    encoders: dict = field(default_factory=dict)
    # grid / rows: every row / grid point runs `seeds` times, config seed = base seed + k
    seeds: int = 1
    # `prepare:` the latent set made before any trial, and the folder it goes to (its
    # `latents/` is every trial's data.path, its `reference.npz` the decoded data's statistics)
    prepare: Optional[PrepareData] = None
    prepare_out: Optional[str] = None

    @property
    def base_seed(self) -> int:
        """The base config's seed (with the sweep's set / --set): the first seed of a row."""
        v = self.base_raw.get("seed", C.Config.seed)
        return v if isinstance(v, int) and not isinstance(v, bool) else C.Config.seed

    def trial_config(self, params: dict) -> C.Config:
        """The validated config of a trial with `params` (parameter path -> value)."""
        return build_trial_config(self, params)

    @property
    def max_steps(self) -> int:
        points = [t.params for t in self.trials] or [first_point(self.space)]
        return max(self.trial_config(p).train.steps for p in points)


# --------------------------------------------------------------------------- sections


def _err(path: str, msg: str, file: Path) -> SweepError:
    return SweepError(f"{path}: {msg} (sweep file {file})")


def _build(cls: type, raw: Any, where: str, file: Path) -> Any:
    """`config.build_dataclass` for one section, its errors as SweepErrors of this file."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        keys = ", ".join(f.name for f in dataclasses.fields(cls))
        raise _err(where, f"expected a mapping with keys {keys}", file)
    try:
        return C.build_dataclass(cls, raw, where)
    except ConfigError as exc:
        raise SweepError(f"{exc} (sweep file {file})") from None


def _override_list(raw: Any, where: str, file: Path) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, dict):  # also accept {path: value}
        return tuple(f"{k}={fmt(v)}" for k, v in raw.items())
    if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
        raise _err(where, "expected a list of 'key.path=value' strings (or a mapping path -> value)", file)
    for i, item in enumerate(raw):
        try:
            C.parse_override(item)
        except ConfigError as exc:
            raise _err(f"{where}[{i}]", str(exc), file) from None
    return tuple(raw)


def _check_path(path: str, where: str, file: Path) -> None:
    """A parameter path must name a config field (checked against the schema, not the value)."""
    try:
        C.build_dataclass(C.Config, C.nest(path, None), "")
    except ConfigError as exc:
        if "unknown key" in str(exc):
            raise _err(where, f"{path!r} is not a config key ({exc})", file) from None


def _range(values: Any, kind: str, where: str, file: Path) -> list:
    if not isinstance(values, list) or len(values) != 2:
        raise _err(where, "expected [low, high]", file)
    try:
        lo, hi = (float(v) if not isinstance(v, bool) else None for v in values)
    except (TypeError, ValueError):
        lo = hi = None
    if lo is None or hi is None:
        raise _err(where, f"bounds must be numbers, got {values!r}", file)
    if not lo < hi:
        raise _err(where, f"need low < high, got {values!r}", file)
    if kind == "loguniform" and lo <= 0:
        raise _err(where, f"loguniform needs low > 0, got {values!r}", file)
    if kind == "randint":
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise _err(where, f"randint bounds must be integers, got {values!r}", file)
        return [int(v) for v in values]
    return [lo, hi]


def _space(raw: Any, file: Path) -> dict:
    if not isinstance(raw, dict) or not raw:
        raise _err("space", "expected a mapping of parameter path -> {grid|choice|uniform|loguniform|randint: ...}", file)
    out = {}
    for path, spec in raw.items():
        where = f"space.{path}"
        if not isinstance(path, str) or not path:
            raise _err("space", f"bad parameter path {path!r}", file)
        _check_path(path, where, file)
        if not isinstance(spec, dict) or len(spec) != 1:
            raise _err(where, f"expected one of {{{' | '.join(SPACE_KINDS)}: ...}}, got {spec!r}", file)
        kind, values = next(iter(spec.items()))
        if kind not in SPACE_KINDS:
            raise _err(f"{where}.{kind}", f"unknown kind (valid: {', '.join(SPACE_KINDS)})", file)
        if kind in ("grid", "choice"):
            if not isinstance(values, list) or not values:
                raise _err(f"{where}.{kind}", "expected a non-empty list of values", file)
        else:
            values = _range(values, kind, f"{where}.{kind}", file)
        out[path] = {kind: list(values)}
    return out


def _rows(raw: Any, file: Path, encoders: dict) -> tuple[Row, ...]:
    if not isinstance(raw, list) or not raw:
        raise _err("rows", "expected a non-empty list of {name, set}", file)
    out, names = [], set()
    for i, body in enumerate(raw):
        where = f"rows[{i}]"
        if not isinstance(body, dict):
            raise _err(where, "expected a mapping {name: ..., set: {path: value}}", file)
        row = _build(Row, {k: v for k, v in body.items() if not (k == "set" and v is None)}, where, file)
        if not row.name.strip():
            raise _err(f"{where}.name", "every row needs a non-empty name", file)
        if row.name in names:
            raise _err(f"{where}.name", f"duplicate row name {row.name!r}", file)
        names.add(row.name)
        for path in row.set:
            _check_path(path, f"{where}.set.{path}", file)
        sets = dict(row.set)
        if row.encoder is not None:
            if row.encoder not in encoders:
                raise _err(f"{where}.encoder", f"{row.encoder!r} is not a key of the sweep's `encoders:` section (have: {', '.join(encoders) or 'none'})", file)
            clash = sorted(p for p in sets if p.startswith("encoder."))
            if clash:
                raise _err(f"{where}.set.{clash[0]}", "a row with `encoder:` gets its encoder from the encoders section", file)
            enc = encoders[row.encoder]
            # validated with the registry's newest version; pinned to a concrete one at run time
            sets.update({"encoder.name": enc.objective.name, "encoder.kwargs": {}, "encoder.source": f"models:/{enc.registered_name}/latest"})
        out.append(dataclasses.replace(row, set=sets))
    return tuple(out)


def _encoders(raw: Any, file: Path, sweep_preset: Optional[str] = None) -> dict:
    """`encoders: {key: {config: PATH, preset: NAME, set: [...]}}` -> {key: PretrainConfig}.

    Without `preset`, an encoder config uses the sweep's preset when it has one of that name
    (`sweep encoder.yaml --preset smoke` pre-trains smoke encoders)."""
    if raw is None:
        return {}
    # the pretrain package imports torch (its __init__): sweeps without encoders skip it
    from ..preflight import in_ray_cluster_context, preflight_pretrain
    from ..pretrain.config import load_pretrain_config

    if not isinstance(raw, dict):
        raise _err("encoders", "expected a mapping of key -> {config, preset, set}", file)
    out, names = {}, {}
    for key, body in raw.items():
        where = f"encoders.{key}"
        if isinstance(body, str):
            body = {"config": body}
        if not isinstance(body, dict):
            raise _err(where, "expected {config: PATH, preset: NAME, set: [...]}", file)
        entry = _build(_EncoderEntry, body, where, file)
        if not entry.config:
            raise _err(f"{where}.config", "a pre-training config path (relative to the sweep file) is required", file)
        cpath = (file.parent / entry.config).resolve()
        if not cpath.is_file():
            raise _err(f"{where}.config", f"config file not found: {cpath}", file)
        preset = entry.preset
        if preset is None and sweep_preset and sweep_preset in C.preset_names(cpath):
            preset = sweep_preset
        sets = _override_list(entry.set, f"{where}.set", file)
        try:
            cfg = preflight_pretrain(load_pretrain_config(cpath, preset, sets), device=not in_ray_cluster_context())
        except ConfigError as exc:
            raise _err(where, f"{exc} (pre-training config {cpath})", file) from None
        if cfg.registered_name in names:
            raise _err(f"{where}", f"registers {cfg.registered_name!r} like encoders.{names[cfg.registered_name]}: give each its own name", file)
        names[cfg.registered_name] = key
        out[key] = cfg
    return out


def _count(raw: dict, key: str, default: Optional[int], low: int, file: Path) -> Optional[int]:
    v = raw.get(key, default)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < low):
        raise _err(key, f"expected an integer >= {low}, got {v!r}", file)
    return v


# --------------------------------------------------------------------------- loading


def _raw_with_preset(raw: dict, preset: Optional[str], base_presets: list[str], file: Path) -> dict:
    presets = raw.get("presets") or {}
    if not isinstance(presets, dict):
        raise _err("presets", "expected a mapping of preset name -> sweep keys", file)
    for pname, body in presets.items():
        if not isinstance(body, dict):
            raise _err(f"presets.{pname}", "expected a mapping of sweep keys", file)
        unknown = sorted(set(body) - set(PRESET_KEYS))
        if unknown:
            raise _err(f"presets.{pname}.{unknown[0]}", f"unknown key (valid keys here: {', '.join(PRESET_KEYS)})", file)
    if preset in (None, "", "default"):
        return raw
    if preset not in presets and preset not in base_presets:
        raise _err(f"presets.{preset}", f"no such preset in the sweep file or its base config (available: {', '.join(sorted(set(presets) | set(base_presets))) or 'none'})", file)
    out = copy.deepcopy(raw)
    body = copy.deepcopy(presets.get(preset) or {})
    if "set" in body:  # a preset's overrides come after the file's, they do not replace them
        out["set"] = list(_override_list(raw.get("set"), "set", file)) + list(_override_list(body.pop("set"), f"presets.{preset}.set", file))
    for key, value in body.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("space",):
            out[key] = C.deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _check_seeds(seeds: int, search: str, space: Optional[dict], rows: Optional[tuple], file: Path) -> None:
    """`seeds: N > 1` repeats grid / rows trials with seeds base + k: not for Optuna (whose
    samples are the repeats), nor for a sweep that varies `seed` itself."""
    if seeds == 1:
        return
    if search == "optuna":
        raise _err("seeds", f"{seeds} repeats the trials of grid and rows sweeps; search: optuna samples its own points (num_samples)", file)
    if "seed" in (space or {}):
        raise _err("seeds", f"{seeds} runs every trial with seeds base + 0..{seeds - 1}, but space.seed varies the seed itself", file)
    for i, row in enumerate(rows or ()):
        if "seed" in row.set:
            raise _err("seeds", f"{seeds} runs every trial with seeds base + 0..{seeds - 1}, but rows[{i}].set.seed sets it (set the base seed with `set: [seed=N]`)", file)


def _check_search(search: str, num_samples: int, space: Optional[dict], rows: Optional[tuple], file: Path) -> None:
    if search == "grid":
        if num_samples != 1:
            raise _err("num_samples", "grid and rows sweeps run each trial once; num_samples applies to search: optuna", file)
        for path, specv in (space or {}).items():
            kind = next(iter(specv))
            if kind != "grid":
                raise _err(f"space.{path}.{kind}", f"search: grid takes only {{grid: [...]}}; {kind} needs search: optuna", file)
    else:
        if rows is not None:
            raise _err("rows", "search: optuna needs a `space` of choices / ranges, not rows", file)
        for path, specv in space.items():
            kind = next(iter(specv))
            if kind == "grid":
                raise _err(f"space.{path}.grid", "search: optuna takes choice / uniform / loguniform / randint, not grid", file)


BUILTIN_IMAGES = ("digits",)  # image sets `prepare.images` can write as an ImageFolder


def _prepare(raw: Any, name: str, file: Path) -> tuple[Optional[PrepareData], Optional[str]]:
    """`prepare:` -> (PrepareData with `images` resolved, its output folder), or (None, None)."""
    if raw is None:
        return None, None
    p = _build(PrepareData, raw, "prepare", file)
    for key in ("latent_channels", "shard_size"):
        if getattr(p, key) < 1:
            raise _err(f"prepare.{key}", f"must be >= 1, got {getattr(p, key)}", file)
    if p.resolution < 8:
        raise _err("prepare.resolution", f"must be >= 8 pixels, got {p.resolution}", file)
    if p.limit is not None and p.limit < 1:
        raise _err("prepare.limit", f"must be >= 1, got {p.limit}", file)
    if p.workers is not None and p.workers < 0:
        raise _err("prepare.workers", f"must be >= 0 (0: in the driver, no Ray Data), got {p.workers}", file)
    if p.vae == "random":
        if not p.vae_widths or min(p.vae_widths) < 1:
            raise _err("prepare.vae_widths", f"expected a non-empty list of positive widths, got {list(p.vae_widths)}", file)
        factor = 2 ** (len(p.vae_widths) - 1)
        if p.resolution % factor:
            raise _err("prepare.vae_widths", f"{len(p.vae_widths)} widths downsample by {factor}, which does not divide prepare.resolution {p.resolution}", file)
    if p.images not in BUILTIN_IMAGES:
        folder = (file.parent / os.path.expanduser(p.images)).resolve()
        if not folder.is_dir():
            raise _err("prepare.images", f"{p.images!r} is neither a built-in image set ({', '.join(BUILTIN_IMAGES)}) nor an ImageFolder folder ({folder} does not exist)", file)
        p = dataclasses.replace(p, images=str(folder))
    from ..home import drifting_home

    out = os.path.expanduser(p.out) if p.out else str(drifting_home(create=False) / "data" / f"{name}-{p.fingerprint()}")
    return p, str(Path(out).absolute())


def load_sweep(path: str | Path, *, preset: Optional[str] = None, overrides: tuple[str, ...] | list[str] = (), seeds: Optional[int] = None) -> SweepSpec:
    """Read and fully validate a sweep file (no Ray). Raises SweepError naming the key path.
    `seeds` (the command line's --seeds) overrides the file's `seeds:`."""
    file = Path(path)
    if not file.is_file() and not file.suffix and (file.with_suffix(".yaml")).is_file():
        file = file.with_suffix(".yaml")
    try:
        raw = C.read_yaml(file)
    except ConfigError as exc:
        raise SweepError(str(exc)) from None
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise _err(unknown[0], f"unknown key (valid keys here: {', '.join(TOP_KEYS)})", file)
    if "base" not in raw or not isinstance(raw["base"], str):
        raise _err("base", "a base config path (relative to the sweep file) is required", file)
    base = (file.parent / raw["base"]).resolve()
    if not base.is_file():
        raise _err("base", f"config file not found: {base}", file)
    file_preset = raw.get("preset")
    if file_preset is not None and not isinstance(file_preset, str):
        raise _err("preset", f"expected a preset name, got {file_preset!r}", file)
    preset = preset or file_preset
    base_presets = C.preset_names(base)
    raw = _raw_with_preset(raw, preset, base_presets, file)
    base_preset = preset if preset in base_presets else None

    name = raw.get("name", file.stem)
    if not isinstance(name, str) or not name.strip():
        raise _err("name", f"expected a non-empty string, got {name!r}", file)
    search = raw.get("search", "grid")
    if search not in SEARCHES:
        raise _err("search", f"{search!r} is not one of {list(SEARCHES)}", file)
    num_samples = _count(raw, "num_samples", 1, 1, file)
    if seeds is not None:
        if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
            raise SweepError(f"seeds: --seeds expects an integer >= 1, got {seeds!r} (sweep file {file})")
        raw = {**raw, "seeds": seeds}
    n_seeds = _count(raw, "seeds", 1, 1, file)
    scheduler_raw = raw.get("scheduler")
    scheduler = _build(Scheduler, {"name": scheduler_raw} if isinstance(scheduler_raw, str) else scheduler_raw, "scheduler", file)
    if scheduler.grace_period < 1:
        raise _err("scheduler.grace_period", "must be >= 1", file)
    if scheduler.reduction_factor <= 1:
        raise _err("scheduler.reduction_factor", "must be > 1", file)
    resources = _build(Resources, raw.get("resources"), "resources", file)
    if resources.cpus_per_trial != "auto" and resources.cpus_per_trial <= 0:
        raise _err("resources.cpus_per_trial", f"must be > 0 or auto, got {resources.cpus_per_trial:g}", file)
    if resources.workers < 1:
        raise _err("resources.workers", f"must be >= 1, got {resources.workers}", file)
    g = resources.gpus_per_worker
    if not 0 <= g <= 1:
        raise _err("resources.gpu", f"true / false, or a fraction of one GPU per trial in (0, 1); got {resources.gpu!r}", file)
    if 0 < g < 1 and resources.workers > 1:
        raise _err("resources.gpu", f"a fraction of a GPU ({g:g}) is for trials of workers: 1; each of the {resources.workers} "
                   "workers of a DDP trial needs a whole GPU (gpu: true)", file)
    max_concurrent = _count(raw, "max_concurrent", None, 1, file)
    max_failures = _count(raw, "max_failures", 2, 0, file)
    metric = _build(Metric, raw.get("metric"), "metric", file)
    sets = _override_list(raw.get("set"), "set", file)
    overrides = tuple(overrides)
    for item in overrides:
        try:
            C.parse_override(item)
        except ConfigError as exc:
            raise SweepError(str(exc)) from None

    has_space, has_rows = "space" in raw, "rows" in raw
    if has_space == has_rows:
        raise _err("space" if has_space else "rows", "give exactly one of `space` (a parameter space) or `rows` (named variants)", file)
    space = _space(raw["space"], file) if has_space else None
    encoders = _encoders(raw.get("encoders"), file, preset)
    prepare, prepare_out = _prepare(raw.get("prepare"), name, file)
    if prepare is not None:  # every trial trains on the prepared set (made at run time)
        sets = tuple(sets) + ("data.name=prepared", f"data.path={prepare_out}/latents", "data.size=null", "data.limit=null",
                                f"eval.ref={prepare_out}/reference.npz")
    rows = _rows(raw["rows"], file, encoders) if has_rows else None
    swept = set(space or {}) | {p for r in rows or () for p in r.set}
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in swept:
            raise SweepError(f"--set {item!r}: {key} is what this sweep varies (sweep file {file})")
    _check_search(search, num_samples, space, rows, file)
    _check_seeds(n_seeds, search, space, rows, file)

    # the base config itself (all its presets are checked by load_config)
    try:
        C.load_config(base, base_preset, list(sets) + list(overrides))
    except ConfigError as exc:
        raise SweepError(f"{exc} (base config {base} with the sweep's set / --set; sweep file {file})") from None
    spec = SweepSpec(
        path=file.resolve(), name=name, base=base, preset=base_preset, set=sets, overrides=overrides,
        space=space, rows=rows, search=search, num_samples=num_samples, scheduler=scheduler,
        resources=resources, max_concurrent=max_concurrent, metric=metric, max_failures=max_failures,
        base_raw=C.resolve_raw(C.read_yaml(base), base_preset, list(sets) + list(overrides)),
        encoders={k: v for k, v in encoders.items() if any(r.encoder == k for r in rows or ())},
        seeds=n_seeds, prepare=prepare, prepare_out=prepare_out,
    )
    if search == "grid":
        spec = dataclasses.replace(spec, trials=plan_trials(space, rows, seeds=n_seeds, base_seed=spec.base_seed))
    bad = first_bad_trial(spec)  # registry names and ranges of every trial
    if bad is not None:
        raise _err(*bad, file)
    return spec


def check_machine(spec: SweepSpec) -> None:
    """SweepError unless every trial can run on this machine: its local files (shards,
    weights, data roots) and devices (CUDA). A sweep that runs on a Ray cluster (a Ray job,
    RAY_ADDRESS) skips this: the nodes have data and devices of their own."""
    from ..preflight import in_ray_cluster_context

    if in_ray_cluster_context():
        return
    bad = first_bad_trial(spec, machine=True)
    if bad is not None:
        raise _err(*bad, spec.path)
