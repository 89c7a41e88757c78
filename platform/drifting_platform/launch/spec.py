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

Every error is a `SweepError` (a `ConfigError`) whose message starts with the key path.
Grid and rows trials are each built with the base config's loader and validated before
anything starts; for ranges the endpoints are validated.
"""

from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from .. import config as C
from ..config import ConfigError
from .. import rundir

SEARCHES = ("grid", "optuna")
SCHEDULERS = ("none", "asha")
SPACE_KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
RANGE_KINDS = ("uniform", "loguniform", "randint")
TOP_KEYS = (
    "name", "base", "preset", "set", "space", "rows", "search", "num_samples", "scheduler",
    "resources", "max_concurrent", "max_failures", "metric", "presets", "encoders",
)
PRESET_KEYS = tuple(k for k in TOP_KEYS if k not in ("name", "base", "presets"))


class SweepError(ConfigError):
    """A sweep file that cannot be run; the message starts with the offending key path."""


@dataclass(frozen=True)
class Trial:
    """One planned trial of a grid / rows sweep."""

    index: int
    label: str  # the row name, or "path=value, ..." for grid points
    params: dict  # parameter path -> value
    dirname: str  # the trial directory's name inside the sweep directory


@dataclass(frozen=True)
class SweepSpec:
    path: Path
    name: str
    base: Path
    preset: Optional[str]
    set: tuple[str, ...]
    overrides: tuple[str, ...]  # from the command line (win over `set`)
    space: Optional[dict]  # path -> {kind: values}
    rows: Optional[tuple[dict, ...]]  # ({"name": str, "set": {path: value}}, ...)
    search: str
    num_samples: int
    scheduler: dict
    resources: dict  # cpus_per_trial, workers, gpu
    max_concurrent: Optional[int]
    metric: dict  # name, mode
    trials: tuple[Trial, ...] = field(default=())
    max_failures: int = 2  # Tune restarts of a trial whose process died  # grid / rows: the full plan
    # `encoders:` key -> the validated PretrainConfig of an encoder some row uses; the
    # sweep pre-trains (or reuses) them before any trial and pins each row's source
    encoders: dict = field(default_factory=dict)

    def trial_config(self, params: dict) -> C.Config:
        """The validated config of a trial with `params` (parameter path -> value)."""
        return build_trial_config(self, params)

    @property
    def max_steps(self) -> int:
        steps = [self.trial_config(t.params).train.steps for t in self.trials] if self.trials else [self.trial_config(_first_point(self.space)).train.steps]
        return max(steps)


# --------------------------------------------------------------------------- helpers


def _err(path: str, msg: str, file: Path) -> SweepError:
    return SweepError(f"{path}: {msg} (sweep file {file})")


def slug(text: str) -> str:
    """A trial directory's / experiment folder's name for `text` (a row label, a grid point)."""
    return rundir.slug(text, keep=".=+-", strip="_", limit=60, default="trial")


def nest(path: str, value: Any) -> dict:
    out: Any = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


def _fmt(v: Any) -> str:
    return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _override_list(raw: Any, where: str, file: Path) -> tuple[str, ...]:
    if raw is None:
        return ()
    if isinstance(raw, dict):  # also accept {path: value}
        return tuple(f"{k}={_fmt(v)}" for k, v in raw.items())
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
        C.build_dataclass(C.Config, nest(path, None), "")
    except ConfigError as exc:
        if "unknown key" in str(exc):
            raise _err(where, f"{path!r} is not a config key ({exc})", file) from None


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
            if not isinstance(values, list) or len(values) != 2:
                raise _err(f"{where}.{kind}", "expected [low, high]", file)
            try:
                lo, hi = (float(v) if not isinstance(v, bool) else None for v in values)
            except (TypeError, ValueError):
                lo = hi = None
            if lo is None or hi is None:
                raise _err(f"{where}.{kind}", f"bounds must be numbers, got {values!r}", file)
            if not lo < hi:
                raise _err(f"{where}.{kind}", f"need low < high, got {values!r}", file)
            if kind == "loguniform" and lo <= 0:
                raise _err(f"{where}.{kind}", f"loguniform needs low > 0, got {values!r}", file)
            if kind == "randint":
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
                    raise _err(f"{where}.{kind}", f"randint bounds must be integers, got {values!r}", file)
                values = [int(v) for v in values]
            else:
                values = [lo, hi]
        out[path] = {kind: list(values)}
    return out


def _rows(raw: Any, file: Path, encoders: Optional[dict] = None) -> tuple[dict, ...]:
    if not isinstance(raw, list) or not raw:
        raise _err("rows", "expected a non-empty list of {name, set}", file)
    out, names = [], set()
    for i, row in enumerate(raw):
        where = f"rows[{i}]"
        if not isinstance(row, dict):
            raise _err(where, "expected a mapping {name: ..., set: {path: value}}", file)
        unknown = sorted(set(row) - {"name", "set", "encoder"})
        if unknown:
            raise _err(f"{where}.{unknown[0]}", "unknown key (valid keys here: name, set, encoder)", file)
        name = row.get("name")
        if not isinstance(name, str) or not name.strip():
            raise _err(f"{where}.name", "every row needs a non-empty name", file)
        if name in names:
            raise _err(f"{where}.name", f"duplicate row name {name!r}", file)
        names.add(name)
        sets = row.get("set") or {}
        if not isinstance(sets, dict):
            raise _err(f"{where}.set", "expected a mapping of parameter path -> value", file)
        for path in sets:
            _check_path(path, f"{where}.set.{path}", file)
        sets = dict(sets)
        if "encoder" in row:
            key = row["encoder"]
            if not isinstance(key, str) or key not in (encoders or {}):
                raise _err(f"{where}.encoder", f"{key!r} is not a key of the sweep's `encoders:` section (have: {', '.join(encoders or {}) or 'none'})", file)
            clash = sorted(p for p in sets if p.startswith("encoder."))
            if clash:
                raise _err(f"{where}.set.{clash[0]}", "a row with `encoder:` gets its encoder from the encoders section", file)
            enc = encoders[key]
            # validated with the registry's newest version; pinned to a concrete one at run time
            sets.update({"encoder.name": enc.objective.name, "encoder.kwargs": {}, "encoder.source": f"models:/{enc.registered_name}/latest"})
        out.append({"name": name, "set": sets, **({"encoder": row["encoder"]} if "encoder" in row else {})})
    return tuple(out)


def _encoders(raw: Any, file: Path, sweep_preset: Optional[str] = None) -> dict:
    """`encoders: {key: {config: PATH, preset: NAME, set: [...]}}` -> {key: PretrainConfig}.

    Without `preset`, an encoder config uses the sweep's preset when it has one of that name
    (`sweep encoder.yaml --preset smoke` pre-trains smoke encoders)."""
    from ..pretrain.config import load_pretrain_config

    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise _err("encoders", "expected a mapping of key -> {config, preset, set}", file)
    out, names = {}, {}
    for key, body in raw.items():
        where = f"encoders.{key}"
        if isinstance(body, str):
            body = {"config": body}
        if not isinstance(body, dict):
            raise _err(where, "expected {config: PATH, preset: NAME, set: [...]}", file)
        unknown = sorted(set(body) - {"config", "preset", "set"})
        if unknown:
            raise _err(f"{where}.{unknown[0]}", "unknown key (valid keys here: config, preset, set)", file)
        if not isinstance(body.get("config"), str):
            raise _err(f"{where}.config", "a pre-training config path (relative to the sweep file) is required", file)
        cpath = (file.parent / body["config"]).resolve()
        if not cpath.is_file():
            raise _err(f"{where}.config", f"config file not found: {cpath}", file)
        preset = body.get("preset")
        if preset is None and sweep_preset and sweep_preset in C.preset_names(cpath):
            preset = sweep_preset
        if preset is not None and not isinstance(preset, str):
            raise _err(f"{where}.preset", f"expected a preset name, got {preset!r}", file)
        sets = _override_list(body.get("set"), f"{where}.set", file)
        try:
            cfg = load_pretrain_config(cpath, preset, sets)
        except ConfigError as exc:
            raise _err(where, f"{exc} (pre-training config {cpath})", file) from None
        if cfg.registered_name in names:
            raise _err(f"{where}", f"registers {cfg.registered_name!r} like encoders.{names[cfg.registered_name]}: give each its own name", file)
        names[cfg.registered_name] = key
        out[key] = cfg
    return out


def _mapping(raw: Any, where: str, keys: dict, file: Path) -> dict:
    """Check a small mapping against {key: (types, default)}."""
    if raw is None:
        raw = {}
    if isinstance(raw, str) and where == "scheduler":
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise _err(where, f"expected a mapping with keys {', '.join(keys)}", file)
    unknown = sorted(set(raw) - set(keys))
    if unknown:
        raise _err(f"{where}.{unknown[0]}", f"unknown key (valid keys here: {', '.join(sorted(keys))})", file)
    out = {}
    for key, (types, default) in keys.items():
        v = raw.get(key, default)
        if v is not None and (not isinstance(v, types) or (isinstance(v, bool) and bool not in types)):
            raise _err(f"{where}.{key}", f"expected {' or '.join(t.__name__ for t in types)}, got {v!r}", file)
        out[key] = v
    return out


def _first_point(space: Optional[dict]) -> dict:
    out = {}
    for path, spec in (space or {}).items():
        kind, values = next(iter(spec.items()))
        out[path] = values[0]
    return out


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


def build_trial_config(spec: SweepSpec, params: dict) -> C.Config:
    raw = C.read_yaml(spec.base)
    raw = C.resolve_raw(raw, spec.preset, list(spec.set) + list(spec.overrides))
    for path, value in params.items():
        raw = C.deep_merge(raw, nest(path, value))
    return C.from_dict(raw)


def load_sweep(path: str | Path, *, preset: Optional[str] = None, overrides: tuple[str, ...] | list[str] = ()) -> SweepSpec:
    """Read and fully validate a sweep file (no Ray). Raises SweepError naming the key path."""
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
    num_samples = raw.get("num_samples", 1)
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise _err("num_samples", f"expected an integer >= 1, got {num_samples!r}", file)
    scheduler = _mapping(raw.get("scheduler"), "scheduler", {"name": ((str,), "none"), "grace_period": ((int,), 1), "reduction_factor": ((int, float), 2)}, file)
    if scheduler["name"] not in SCHEDULERS:
        raise _err("scheduler.name", f"{scheduler['name']!r} is not one of {list(SCHEDULERS)}", file)
    if scheduler["grace_period"] < 1:
        raise _err("scheduler.grace_period", "must be >= 1", file)
    if scheduler["reduction_factor"] <= 1:
        raise _err("scheduler.reduction_factor", "must be > 1", file)
    resources = _mapping(raw.get("resources"), "resources", {"cpus_per_trial": ((int, float), 1), "workers": ((int,), 1), "gpu": ((bool,), False)}, file)
    if resources["cpus_per_trial"] <= 0:
        raise _err("resources.cpus_per_trial", f"must be > 0, got {resources['cpus_per_trial']}", file)
    if resources["workers"] < 1:
        raise _err("resources.workers", f"must be >= 1, got {resources['workers']}", file)
    max_concurrent = raw.get("max_concurrent")
    if max_concurrent is not None and (isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1):
        raise _err("max_concurrent", f"expected an integer >= 1, got {max_concurrent!r}", file)
    max_failures = raw.get("max_failures", 2)
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0:
        raise _err("max_failures", f"expected an integer >= 0, got {max_failures!r}", file)
    metric = _mapping(raw.get("metric"), "metric", {"name": ((str,), "fid"), "mode": ((str,), "min")}, file)
    if metric["mode"] not in ("min", "max"):
        raise _err("metric.mode", f"{metric['mode']!r} is not one of ['min', 'max']", file)
    sets = _override_list(raw.get("set"), "set", file)
    overrides = tuple(overrides)
    for i, item in enumerate(overrides):
        try:
            C.parse_override(item)
        except ConfigError as exc:
            raise SweepError(str(exc)) from None

    has_space, has_rows = "space" in raw, "rows" in raw
    if has_space == has_rows:
        raise _err("space" if has_space else "rows", "give exactly one of `space` (a parameter space) or `rows` (named variants)", file)
    space = _space(raw["space"], file) if has_space else None
    encoders = _encoders(raw.get("encoders"), file, preset)
    rows = _rows(raw["rows"], file, encoders) if has_rows else None
    swept = set(space or {}) | {p for r in rows or () for p in r["set"]}
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in swept:
            raise SweepError(f"--set {item!r}: {key} is what this sweep varies (sweep file {file})")

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

    spec = SweepSpec(
        path=file.resolve(), name=name, base=base, preset=base_preset, set=sets, overrides=overrides,
        space=space, rows=rows, search=search, num_samples=num_samples, scheduler=scheduler,
        resources=resources, max_concurrent=max_concurrent, metric=metric, max_failures=max_failures,
        encoders={k: v for k, v in encoders.items() if any(r.get("encoder") == k for r in rows or ())},
    )
    # the base config itself (all its presets are checked by load_config)
    try:
        C.load_config(base, base_preset, list(sets) + list(overrides))
    except ConfigError as exc:
        raise SweepError(f"{exc} (base config {base} with the sweep's set / --set; sweep file {file})") from None

    trials: list[Trial] = []
    if rows is not None:
        for i, row in enumerate(rows):
            trials.append(Trial(i, row["name"], dict(row["set"]), f"{i:02d}_{slug(row['name'])}"))
    elif search == "grid":
        paths = list(space)
        for i, combo in enumerate(itertools.product(*(space[p]["grid"] for p in paths))):
            params = dict(zip(paths, combo))
            label = ", ".join(f"{p}={_fmt(v)}" for p, v in params.items())
            trials.append(Trial(i, label, params, f"{i:02d}_{slug(label)}"))
    for t in trials:
        where = f"rows[{t.index}]" if rows is not None else "space"
        try:
            cfg = build_trial_config(spec, t.params)
        except ConfigError as exc:
            raise _err(f"{where}.set" if rows is not None else where, f"trial {t.label!r}: {exc}", file) from None
        _check_workers(cfg, resources["workers"], where, file)
    if search == "optuna":
        # every choice and both ends of every range, each with the rest at its first value
        first = _first_point(space)
        for path, specv in space.items():
            kind, values = next(iter(specv.items()))
            probe = values if kind in ("choice",) else ([values[0], values[1] - 1] if kind == "randint" else values)
            for v in probe:
                try:
                    cfg = build_trial_config(spec, {**first, path: v})
                except ConfigError as exc:
                    raise _err(f"space.{path}.{kind}", f"value {v!r}: {exc}", file) from None
                _check_workers(cfg, resources["workers"], f"space.{path}", file)
    return _replace(spec, trials=tuple(trials))


def _check_workers(cfg: C.Config, workers: int, where: str, file: Path) -> None:
    if cfg.sampling.n_classes % workers:
        raise _err(where, f"sampling.n_classes {cfg.sampling.n_classes} is not divisible by resources.workers {workers}", file)


def _replace(spec: SweepSpec, **kw) -> SweepSpec:
    import dataclasses

    return dataclasses.replace(spec, **kw)
