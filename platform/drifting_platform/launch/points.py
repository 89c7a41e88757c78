"""The trials of a sweep, without Ray: grid / rows plans, Optuna points, trial configs.

A trial is a `Trial(index, label, params, dirname, row, seed)`: `params` maps config paths to
values (`{"drift.repulsion_scale": 0.0}`), `dirname` names its directory in the sweep
directory, `row` is the row / grid point it belongs to and `seed` its config's `seed`.
Grid and rows sweeps plan every trial up front (`plan_trials`); with `seeds: N` each row /
grid point is planned N times, with `seed` = its config's seed + k (k = 0..N-1) in `params`
and the seed in its label and directory (`V+ - V- (seed 1)`, `00_V+_-_V-_seed_1`); with
N = 1 a trial is its row alone (no seed in `params`, label or directory). Tune
grid-searches over their records (`Trial.record()`). An Optuna point is sampled by Tune as `{path: value}`;
`describe` turns either kind of Tune config back into its `Trial`, and is the only reader
of Tune configs. Optuna categoricals must be scalars, so the choices of a path that has a
non-scalar one (a list of temperatures) travel as JSON strings (`tune_choices`), decoded
in `describe` alone (`result_metrics` reads Tune's results back). An Optuna point's directory is named by a hash of its values, so a
resumed sweep finds the directory (and checkpoint) of a point it re-runs.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional

import yaml

from .. import config as C
from .. import rundir
from ..preflight import preflight

if TYPE_CHECKING:
    from .spec import SweepSpec

_SCALARS = (str, int, float, bool, type(None))

# keys Tune adds to every result, and ours (`run_trial`'s) that are not metrics
TUNE_KEYS = {
    "timestamp", "time_this_iter_s", "time_total_s", "training_iteration", "trial_id", "date",
    "pid", "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore",
    "checkpoint_dir_name", "done", "experiment_tag", "should_checkpoint", "step", "final",
}


@dataclass(frozen=True)
class Trial:
    """One trial of a sweep: a planned grid point / row, or a sampled Optuna point."""

    index: int  # the row's / grid point's position in the sweep file (grid / rows); -1 for an Optuna point
    label: str  # the row name, or "path=value, ..."; with seeds: N > 1, plus " (seed S)"
    params: dict  # parameter path -> value (with seeds: N > 1, also "seed")
    dirname: str  # the trial directory's name inside the sweep directory
    row: str = ""  # the row / grid point's label without the seed (tag drifting.row); "" = label
    seed: int = 0  # the trial config's seed (tag drifting.seed)

    @property
    def row_label(self) -> str:
        """The label of the row this trial repeats (the label itself for one seed)."""
        return self.row or self.label

    def record(self) -> dict:
        """What Tune's param_space carries for a planned trial (`describe` reads it back)."""
        return dataclasses.asdict(self)


def slug(text: str) -> str:
    """A trial directory's / experiment folder's name for `text` (a row label, a grid point)."""
    return rundir.slug(text, keep=".=+-", strip="_", limit=60, default="trial")


def fmt(v: Any) -> str:
    """`v` as it would be written in YAML flow style (labels, `--set` items)."""
    return yaml.safe_dump(v, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if not isinstance(v, str) else v


def build_trial_config(spec: "SweepSpec", params: dict) -> C.Config:
    """The validated config of a trial: `params` merged into the sweep's resolved base."""
    raw = copy.deepcopy(spec.base_raw)
    for path, value in params.items():
        raw = C.deep_merge(raw, C.nest(path, value))
    return C.from_dict(raw)


def seed_label(row: str, seed: int) -> str:
    """The label of one seed of a row: "V+ - V- (seed 1)"."""
    return f"{row} (seed {seed})"


def plan_trials(space: Optional[dict], rows: Optional[tuple], *, seeds: int = 1, base_seed: int = 0) -> tuple[Trial, ...]:
    """Every trial of a rows sweep (one per row) or a grid sweep (the product of the grids),
    each `seeds` times with seed = `base_seed` (the base config's) + k, k = 0..seeds-1.
    Seed-major order: every row's first seed, then every row's second, ... (an interrupted
    sweep has whole tables of its first seeds). `load_sweep` refuses seeds > 1 in a sweep
    that varies `seed` itself."""
    if rows is not None:
        points = [(i, row.name, dict(row.set), slug(row.name)) for i, row in enumerate(rows)]
    else:
        paths = list(space)
        points = []
        for i, combo in enumerate(itertools.product(*(space[p]["grid"] for p in paths))):
            params = dict(zip(paths, combo))
            label = ", ".join(f"{p}={fmt(v)}" for p, v in params.items())
            points.append((i, label, params, slug(label)))
    if seeds == 1:  # as without seeds: no seed in params, label or directory
        return tuple(Trial(i, label, params, f"{i:02d}_{name}", row=label, seed=_seed_of(params, base_seed))
                     for i, label, params, name in points)
    return tuple(
        Trial(i, seed_label(label, base_seed + k), {**params, "seed": base_seed + k}, f"{i:02d}_{name}_seed_{base_seed + k}",
              row=label, seed=base_seed + k)
        for k in range(seeds) for i, label, params, name in points
    )


def _seed_of(params: dict, base_seed: int) -> int:
    """The seed of a trial with `params`: its own `seed` parameter (an integer), else the base's."""
    v = params.get("seed", base_seed)
    return v if isinstance(v, int) and not isinstance(v, bool) else base_seed


def first_point(space: Optional[dict]) -> dict:
    """The point of `space` with every parameter at its first value (choice) / low end."""
    return {path: next(iter(s.values()))[0] for path, s in (space or {}).items()}


def encoded(values: list) -> bool:
    """Whether a choice's values travel through Tune / Optuna as JSON strings."""
    return not all(isinstance(v, _SCALARS) for v in values)


def tune_choices(values: list) -> list:
    """The categories Optuna samples for a choice of `values` (decoded by `describe`)."""
    return [json.dumps(v) for v in values] if encoded(values) else list(values)


def point_trial(params: dict, base_seed: int = 0) -> Trial:
    """The trial of an Optuna point; its directory is a stable function of the values."""
    key = hashlib.sha1(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:10]
    label = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
    return Trial(-1, label, dict(params), f"trial_{key}", row=label, seed=_seed_of(params, base_seed))


def describe(spec: "SweepSpec", config: dict) -> Trial:
    """The trial that Tune runs with `config` (a grid / rows record, or an Optuna point)."""
    if spec.search != "optuna":
        return Trial(**config["trial"])
    params = {}
    for path, s in spec.space.items():
        kind, values = next(iter(s.items()))
        v = config[path]
        params[path] = json.loads(v) if kind == "choice" and encoded(values) else v
    return point_trial(params, spec.base_seed)


def result_metrics(result: dict) -> dict[str, float]:
    """The loop's metrics in a Tune result (Tune's own keys and ours left out)."""
    return rundir.numeric({k: v for k, v in result.items() if k not in TUNE_KEYS})


def first_bad_trial(spec: "SweepSpec", *, machine: bool = False) -> Optional[tuple[str, str]]:
    """(key path, message) of the first trial whose config does not validate, or None.

    Grid / rows: every planned row / grid point (one seed of each: the seeds of a row
    differ in `seed` alone). Optuna: every choice and both ends of every range,
    each with the rest of the point at its first value. Each passes `preflight` too: its
    registry names always; with `machine`, this machine's files and devices as well (what a
    sweep that runs here needs; a Ray cluster's nodes have data and devices of their own)."""
    probes = []  # (where, where of a worker-split error, message prefix, params)
    probed = set()  # rows / grid points: the seeds of one differ in `seed` alone
    for t in spec.trials:
        if t.index in probed:
            continue
        probed.add(t.index)
        where = f"rows[{t.index}]" if spec.rows is not None else "space"
        probes.append((f"{where}.set" if spec.rows is not None else where, where, f"trial {t.row_label!r}", t.params))
    if spec.search == "optuna":
        first = first_point(spec.space)
        for path, s in spec.space.items():
            kind, values = next(iter(s.items()))
            ends = values if kind == "choice" else ([values[0], values[1] - 1] if kind == "randint" else values)
            probes += [(f"space.{path}.{kind}", f"space.{path}", f"value {v!r}", {**first, path: v}) for v in ends]
    workers = spec.resources.workers
    for where, split_where, what, params in probes:
        try:
            cfg = preflight(build_trial_config(spec, params), paths=machine, device=machine)
        except C.ConfigError as exc:
            return where, f"{what}: {exc}"
        if cfg.sampling.n_classes % workers:
            return split_where, f"sampling.n_classes {cfg.sampling.n_classes} is not divisible by resources.workers {workers}"
    return None
