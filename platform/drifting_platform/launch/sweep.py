"""Ray Tune sweeps over the training loop: `run_sweep`.

    result = run_sweep("experiments/antisymmetry.yaml", preset="smoke")
    for t in result.trials:
        print(t.label, t.status, t.metrics.get("fid"))

The sweep file is loaded and every trial config validated first (`spec.load_sweep`, no Ray).
Then Tune runs one function trial per grid point / row / Optuna sample:
- `resources.workers: 1` runs `training_loop` inside the trial process (no worker group);
- more workers fit a `TorchTrainer` inside the trial (Train V2 style; `TuneReportCallback`
  passes rank 0's reports to Tune). The trial function itself then takes no CPU (the
  Train V2 worker group places its own workers), and concurrency is capped so that all
  running trials' workers fit the cluster.
Trial processes are reused (`reuse_actors`): the next trial runs in the process of a
finished one, so only the first trials of a sweep pay for starting a process and importing
torch; each trial still builds everything from its own config and seed.
Trials report the loop's metrics every `train.log_every` steps (with `step`, the ASHA time
attribute) and a final result with the summary (fid / kid, or mmd ...).

Tracking happens in this (the driver) process only, through a Tune `Callback` that calls a
`SweepTracker`: one parent run per sweep, one child run per trial, so concurrent trials
never open the tracking store.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .. import config as C
from .. import tracking  # noqa: F401 - registers the models:/ and runs:/ encoder-source resolvers in trial processes
from ..home import drifting_home, sweeps_root
from .spec import SweepError, SweepSpec, Trial, load_sweep, slug

__all__ = ["run_sweep", "load_sweep", "SweepError", "SweepSpec", "SweepResult", "TrialResult", "sweeps_root", "TrackingCallback"]

log = logging.getLogger(__name__)

# keys Tune adds to every result; they are not our metrics
_TUNE_KEYS = {
    "timestamp", "time_this_iter_s", "time_total_s", "training_iteration", "trial_id", "date",
    "pid", "hostname", "node_ip", "config", "time_since_restore", "iterations_since_restore",
    "checkpoint_dir_name", "done", "experiment_tag", "should_checkpoint", "step", "final",
}


@dataclass
class TrialResult:
    label: str  # the row name or "path=value, ..."
    overrides: dict  # parameter path -> value of this trial
    metrics: dict  # final summary metrics (fid, kid, ... / mmd ...), or the last reported
    status: str  # FINISHED | FAILED | STOPPED (early-stopped by the scheduler)
    trial_dir: str
    trial_id: str = ""
    error: Optional[str] = None
    run_id: Optional[str] = None  # the tracker's child run


@dataclass
class SweepResult:
    experiment: str
    sweep_name: str
    sweep_dir: str
    parent_run_id: Optional[str]
    metric: dict
    trials: list[TrialResult] = field(default_factory=list)

    def best(self) -> Optional[TrialResult]:
        name, sign = self.metric["name"], (1 if self.metric["mode"] == "min" else -1)
        done = [t for t in self.trials if isinstance(t.metrics.get(name), (int, float)) and math.isfinite(t.metrics[name])]
        return min(done, key=lambda t: sign * t.metrics[name]) if done else None


# --------------------------------------------------------------------------- trial side


@dataclass
class _Context:
    """What every trial (and the tracking callback) needs; shipped once via with_parameters."""

    spec: SweepSpec
    sweep_dir: str
    resume: bool
    choices: dict  # optuna: path -> list of choice values (Tune samples the index)
    storage_root: Optional[str] = None  # --storage-path: this sweep's Ray storage (dir or s3://)

    def params(self, config: dict) -> tuple[Optional[Trial], dict]:
        if "trial" in config:
            t = self.spec.trials[int(config["trial"])]
            return t, dict(t.params)
        params = {}
        for path, v in (config.get("p") or {}).items():
            params[path] = self.choices[path][int(v)] if path in self.choices else v
        return None, params

    def describe(self, config: dict, trial_id: str) -> tuple[str, dict, Path]:
        """(label, params, trial dir) of the trial with Tune config `config`."""
        t, params = self.params(config)
        if t is not None:
            return t.label, params, Path(self.sweep_dir) / t.dirname
        label = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
        # named by the sampled point, not Tune's trial id: a resumed sweep re-runs an
        # unfinished point under a new trial id and must find its directory (checkpoint)
        return label, params, Path(self.sweep_dir) / f"trial_{_point_key(config.get('p') or {})}"


def _point_key(point: dict) -> str:
    import hashlib

    return hashlib.sha1(json.dumps(point, sort_keys=True, default=str).encode()).hexdigest()[:10]


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return json.dumps(v) if not isinstance(v, str) else v


def _final_metrics(summary: dict) -> dict:
    return {k: float(v) for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _trial_fn(config: dict, ctx: _Context) -> None:
    from ray import tune

    from ..train import training_loop
    from .ray_train import make_trainer, worker_cfg

    trial_id = tune.get_context().get_trial_id()
    label, params, trial_dir = ctx.describe(config, trial_id)
    res = ctx.spec.resources
    cfg = worker_cfg(ctx.spec.trial_config(params), gpu=res["gpu"], cpus_per_worker=max(1, int(res["cpus_per_trial"])))
    trial_dir.mkdir(parents=True, exist_ok=True)
    summary_path = trial_dir / "summary.json"
    fatal = trial_dir / _FATAL
    if fatal.exists() and not ctx.resume:
        # a retry after a deterministic failure (divergence, bad config, bad checkpoint):
        # fail again at once instead of re-training into the same error
        raise RuntimeError(json.loads(fatal.read_text())["error"])
    fatal.unlink(missing_ok=True)
    (trial_dir / "trial.json").write_text(json.dumps({"label": label, "params": params, "config": config}, default=str) + "\n")
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())  # finished in an earlier attempt
    elif res["workers"] == 1:
        if res["gpu"]:
            import torch

            torch.cuda.set_device(0)

        # Optuna and ASHA read the sweep metric from every result: results that lack it
        # (between train.eval_every evaluations) stay in the run directory's metrics.jsonl
        needs_metric = ctx.spec.search == "optuna" or ctx.spec.scheduler.get("name") == "asha"
        metric_name = ctx.spec.metric["name"]

        def reporter(step: int, metrics: dict) -> None:
            if needs_metric and (metric_name not in metrics or step >= cfg.train.steps):
                # ...and the last step's result comes with the final summary below: ASHA
                # would stop a trial at max_t before its final evaluation
                return
            tune.report({**{k: float(v) for k, v in metrics.items()}, "step": int(step)})

        # the trial directory belongs to this trial alone: a checkpoint there is from an
        # earlier attempt of it (a killed trial process, an interrupted sweep) - continue it
        try:
            summary = training_loop(cfg, trial_dir, reporter=reporter, resume=True, progress=False)
        except _deterministic_errors() as exc:
            fatal.write_text(json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n")
            raise
    else:
        from ray.tune.integration.ray_train import TuneReportCallback

        if summary_path.exists():
            summary_path.unlink()
        trainer = make_trainer(
            cfg, trial_dir, workers=res["workers"], gpu=res["gpu"], cpus_per_worker=max(1, int(res["cpus_per_trial"])),
            storage_path=f"{ctx.storage_root}/{trial_dir.name}/ray" if ctx.storage_root else str(trial_dir / "ray"),
            name=f"train_{trial_id}", callbacks=[TuneReportCallback()],
            initial_checkpoint=str(trial_dir / "checkpoint.pt") if (trial_dir / "checkpoint.pt").exists() else None,
        )
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        summary = json.loads(summary_path.read_text())
    tune.report({**_final_metrics(summary), "step": int(cfg.train.steps), "final": 1})


_FATAL = "fatal.json"  # a trial's deterministic failure, so that Tune's retry fails fast
_STOPPED = "stopped.json"  # a trial the scheduler (ASHA) stopped early: done, never resumed


def _previous_points(sweep_dir: Path) -> tuple[list[dict], list[dict]]:
    """Optuna sweeps: (done, unfinished) trial records (trial.json) of an earlier attempt."""
    done, unfinished = [], []
    for tj in sorted(Path(sweep_dir).glob("trial_*/trial.json")):
        rec = json.loads(tj.read_text())
        rec["dir"] = tj.parent
        (done if (tj.parent / "summary.json").exists() or (tj.parent / _STOPPED).exists() else unfinished).append(rec)
    return done, unfinished


def _optuna_search(spec: SweepSpec, sweep_dir: Path, study_name: str, resume: bool):
    """OptunaSearch on a study journaled in the sweep directory; with `resume`, the earlier
    attempt's study is reloaded (finished points stay told), its interrupted points are
    re-suggested first (so they continue in their directories) and only the remaining
    samples are drawn. Returns (searcher, samples still to run, earlier records done)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    from ray.tune.search.optuna import OptunaSearch

    storage = JournalStorage(JournalFileBackend(str(Path(sweep_dir) / "optuna.journal")))
    done, unfinished = _previous_points(sweep_dir) if resume else ([], [])
    seed = 0
    if resume:
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
            # a fresh sampler with the first attempt's seed would draw its points again
            seed = len(study.trials)
            for t in study.trials:
                if t.state == optuna.trial.TrialState.RUNNING:  # the interrupted attempt's
                    study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        except KeyError:  # no study yet
            pass
    points = [{f"p/{k}": v for k, v in (rec.get("config", {}).get("p") or {}).items()} for rec in unfinished]
    search = OptunaSearch(seed=seed, storage=storage, study_name=study_name, points_to_evaluate=points or None)
    return search, max(0, spec.num_samples - len(done)), done


def _deterministic_errors() -> tuple:
    from ..train.checkpoint import CheckpointError
    from ..train.loop import TrainingDiverged

    return (TrainingDiverged, C.ConfigError, CheckpointError)


# --------------------------------------------------------------------------- driver side


def _tracker_default():
    try:
        from ..tracking import SweepTracker
    except ImportError as exc:  # pragma: no cover - tracking.py is part of the package
        log.warning("tracking unavailable (%s); the sweep runs without MLflow", exc)
        return None
    return SweepTracker()


def _make_callback_class():
    from ray.tune import Callback

    class TrackingCallback(Callback):
        """Tune callback: every tracker write happens here, in the driver process."""

        def __init__(self, tracker, parent_id: str, ctx: _Context, existing: Optional[dict] = None):
            self.tracker, self.parent_id, self.ctx = tracker, parent_id, ctx
            self.runs: dict[str, str] = {}  # trial_id -> child run id
            self.errors: dict[str, str] = {}
            # resumed sweeps: trial dir -> (child run id, status) of the interrupted attempt
            self.existing: dict[str, tuple[str, str]] = dict(existing or {})
            self.kept: set[str] = set()  # trial ids whose FINISHED run is kept untouched
            # run id -> metric key -> last step logged: a history never gets a step twice,
            # whether a worker group restarts from a checkpoint or a sweep resumes
            self.last: dict[str, dict[str, int]] = {}

        def _log(self, run_id: str, metrics: dict, step: int) -> None:
            last = self.last.setdefault(run_id, {})
            todo = {k: v for k, v in metrics.items() if step > last.get(k, -1)}
            if todo and self._safe("log_metrics", self.tracker.log_metrics, run_id, todo, step) is not None:
                for k in todo:
                    last[k] = step

        def _backfill(self, run_id: str, trial_dir: Path) -> None:
            """Log the steps of the trial's metrics.jsonl that no result carried (Optuna / ASHA
            trials only report results that hold the sweep metric), in step order."""
            path = trial_dir / "metrics.jsonl"
            if not path.exists():
                return
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue
                step = int(rec.pop("step", 0))
                self._log(run_id, {k: v for k, v in rec.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}, step)

        def _safe(self, what: str, fn, *args, **kwargs):
            # a tracking hiccup must not stop the sweep
            try:
                return fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001
                log.warning("tracking: %s failed: %s", what, exc)
                return None

        def on_trial_start(self, iteration, trials, trial, **info):
            if trial.trial_id in self.runs:
                return  # a restarted trial keeps its run
            label, params, trial_dir = self.ctx.describe(trial.config, trial.trial_id)
            prev = self.existing.get(str(trial_dir))
            if prev is not None:  # --resume: the interrupted sweep's child run continues
                run_id, status = prev
                self.runs[trial.trial_id] = run_id
                if status == "FINISHED" and (trial_dir / "summary.json").exists():
                    self.kept.add(trial.trial_id)
                    return
                self._safe("reopen_run", self.tracker.reopen_run, run_id)
                self.last[run_id] = self._safe("last_steps", self.tracker.last_steps, run_id) or {}
                return
            try:
                cfg = self.ctx.spec.trial_config(params)
                flat = C.flatten(C.to_dict(cfg))
            except C.ConfigError:
                flat = dict(params)
            tags = {"drifting.row": label, "drifting.trial_dir": str(trial_dir), "drifting.trial_id": trial.trial_id}
            src = params.get("encoder.source")
            if src:  # which registered encoder version this trial drifts in (pinned by run_sweep)
                tags["drifting.encoder_source"] = src
                m = re.match(r"^models:/([^/@]+)/(\d+)$", str(src))
                if m:
                    tags.update({"drifting.encoder_model": m.group(1), "drifting.encoder_version": m.group(2)})
            run_id = self._safe("start_trial", self.tracker.start_trial, self.parent_id, label, flat, tags)
            if run_id is not None:
                self.runs[trial.trial_id] = run_id

        def on_trial_result(self, iteration, trials, trial, result, **info):
            run_id = self.runs.get(trial.trial_id)
            if run_id is None or result.get("final") or trial.trial_id in self.kept:
                return
            metrics = {k: float(v) for k, v in result.items() if k not in _TUNE_KEYS and isinstance(v, (int, float)) and not isinstance(v, bool)}
            if metrics:
                self._log(run_id, metrics, int(result.get("step", 0)))

        def on_trial_complete(self, iteration, trials, trial, **info):
            run_id = self.runs.get(trial.trial_id)
            if run_id is None or trial.trial_id in self.kept:
                return
            label, params, trial_dir = self.ctx.describe(trial.config, trial.trial_id)
            summary_path = trial_dir / "summary.json"
            self._backfill(run_id, trial_dir)
            if summary_path.exists():
                summary = json.loads(summary_path.read_text())
                self._log(run_id, _final_metrics(summary), int(summary.get("steps", 0)))
                paths = [str(p) for p in (trial_dir / "samples.npz", trial_dir / "samples.png", summary_path) if p.exists()]
                if paths:
                    self._safe("log_artifacts", self.tracker.log_artifacts, run_id, paths)
                self._safe("end_run", self.tracker.end_run, run_id, "FINISHED")
            else:  # stopped early by the scheduler: done, and not to be resumed
                (trial_dir / _STOPPED).write_text(json.dumps({"step": int((trial.last_result or {}).get("step", 0))}) + "\n")
                self._safe("end_run", self.tracker.end_run, run_id, "KILLED", "stopped early by the scheduler")

        def on_trial_error(self, iteration, trials, trial, **info):
            text = _trial_error(trial)
            self.errors[trial.trial_id] = text
            run_id = self.runs.get(trial.trial_id)
            if run_id is not None:
                self._backfill(run_id, self.ctx.describe(trial.config, trial.trial_id)[2])
                self._safe("end_run", self.tracker.end_run, run_id, "FAILED", text)

    return TrackingCallback


def TrackingCallback(tracker, parent_id: str, ctx: _Context, existing: Optional[dict] = None):  # noqa: N802 - a class factory
    """The Tune callback class is built on first use so that importing this module does not import Ray."""
    return _make_callback_class()(tracker, parent_id, ctx, existing)


def _trial_error(trial) -> str:
    try:
        exc = trial.get_pickled_error()
        if exc is not None:
            return f"{type(exc).__name__}: {exc}"[-4000:]
    except Exception:  # noqa: BLE001
        pass
    path = getattr(trial, "error_file", None)
    if path and Path(path).exists():
        return Path(path).read_text()[-4000:]
    return "trial failed (no error text)"


def _tune_name(resume: bool) -> str:
    """Tune's experiment name: each attempt (a resumed sweep is a new one) keeps its own state."""
    return f"tune-resumed-{time.strftime('%Y%m%d-%H%M%S')}" if resume else "tune"


def _sweep_dir(spec: SweepSpec, out_root: Optional[str | Path], resume: bool, preset_label: str) -> tuple[str, Path]:
    root = Path(out_root).expanduser().resolve() if out_root else sweeps_root()
    exp_dir = root / slug(spec.name)
    if resume and exp_dir.is_dir():
        previous = sorted(p for p in exp_dir.iterdir() if p.is_dir() and p.name.startswith(f"{preset_label}-"))
        if previous:
            return previous[-1].name, previous[-1]
    name = f"{preset_label}-{time.strftime('%Y%m%d-%H%M%S')}"
    path = exp_dir / name
    i = 1
    while path.exists():
        i += 1
        path = exp_dir / f"{name}-{i}"
    return path.name, path


def _plan_resources(spec: SweepSpec, cluster: dict) -> tuple[dict, Optional[int]]:
    """(Tune resources of one trial function, max concurrent trials); SweepError if it cannot fit."""
    r = spec.resources
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    c, w = float(r["cpus_per_trial"]), int(r["workers"])
    where = f"(sweep file {spec.path})"
    if w == 1:
        if c > cpus:
            raise SweepError(f"resources.cpus_per_trial: a trial needs {c:g} CPUs but the Ray cluster has {cpus:g} {where}")
        if r["gpu"] and gpus < 1:
            raise SweepError(f"resources.gpu: trials need a GPU but the Ray cluster has none {where}")
        res = {"cpu": c, "gpu": 1 if r["gpu"] else 0}
        cap = spec.max_concurrent
    else:
        if w * c > cpus:
            raise SweepError(f"resources.workers: {w} workers x {c:g} CPUs (cpus_per_trial) = {w * c:g} CPUs per trial, but the Ray cluster has {cpus:g} {where}")
        if r["gpu"] and w > gpus:
            raise SweepError(f"resources.workers: {w} GPU workers per trial but the Ray cluster has {gpus:g} GPUs {where}")
        fit = int(cpus // (w * c))
        if r["gpu"]:
            fit = min(fit, int(gpus // w))
        # the trial function only waits for its TorchTrainer, whose workers Train V2 places
        # itself; it holds no CPU, and the cap keeps all running trials' workers in the cluster
        res = {"cpu": 0, "memory": 64 * 1024**2}  # Tune needs a non-empty bundle
        cap = min(spec.max_concurrent or fit, fit)
    return res, cap


def _ensure_one(cfg, progress: bool, env: dict) -> dict:
    # the driver's store and home: a Ray worker need not share the driver's environment
    os.environ.update(env)
    from .pretrain import ensure_encoder

    return ensure_encoder(cfg, progress=progress)


def prepare_encoders(spec: SweepSpec, *, cpus: float = 1.0, concurrency: int = 1) -> tuple[SweepSpec, dict]:
    """Pre-train (or reuse) every encoder the sweep's rows use, then pin each row's
    `encoder.source` to the concrete registered version (`models:/NAME/N`).

    Encoders with a registered version of the same config hash are reused; the others are
    pre-trained as Ray tasks of `cpus` CPUs each, `concurrency` at a time, each tracked in
    MLflow experiment "encoders". Returns (pinned spec, {key: ensure_encoder's dict}).
    """
    import dataclasses

    import ray

    from ..tracking import find_encoder_version, tracking_uri

    infos: dict = {}
    todo = []
    for key, cfg in spec.encoders.items():
        from ..pretrain.config import config_hash

        v = find_encoder_version(cfg.registered_name, config_hash(cfg))
        if v is not None:
            infos[key] = {"name": cfg.registered_name, "version": v, "uri": f"models:/{cfg.registered_name}/{v}", "reused": True}
            print(f"encoder {key}: reusing {infos[key]['uri']} (same config hash)")
        else:
            todo.append(key)
    if todo:
        print(f"pre-training {len(todo)} encoder(s): {', '.join(todo)}")
        task = ray.remote(num_cpus=cpus)(_ensure_one)
        pending = {}
        keys = list(todo)
        while keys or pending:
            while keys and len(pending) < max(1, concurrency):
                k = keys.pop(0)
                env = {"MLFLOW_TRACKING_URI": tracking_uri(), "DRIFTING_HOME": str(drifting_home())}
                pending[task.remote(spec.encoders[k], False, env)] = k
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                k = pending.pop(ref)
                infos[k] = ray.get(ref)
                s = infos[k].get("summary") or {}
                print(f"encoder {k}: registered {infos[k]['uri']} in {infos[k].get('seconds', 0):.0f} s (probe accuracy {s.get('probe_accuracy', float('nan')):.3f})")
    trials = []
    for t in spec.trials:
        row = spec.rows[t.index] if spec.rows else None
        if row is not None and row.get("encoder") in infos:
            params = {**t.params, "encoder.source": infos[row["encoder"]]["uri"]}
            t = dataclasses.replace(t, params=params)
        trials.append(t)
    return dataclasses.replace(spec, trials=tuple(trials)), infos


def run_sweep(
    path: str | Path,
    *,
    preset: Optional[str] = None,
    overrides: tuple[str, ...] | list[str] = (),
    out_root: Optional[str | Path] = None,
    tracker: Any = None,  # a SweepTracker; None = the default store (tracking.py); False = none
    resume: bool = False,  # continue the latest sweep of this experiment and preset
    verbose: int = 1,
    storage_path: Optional[str] = None,  # Tune state / Ray Train checkpoints: a shared dir or s3://bucket/prefix
) -> SweepResult:
    """Validate the sweep file, then run it on Ray Tune; returns every trial's outcome."""
    spec = load_sweep(path, preset=preset, overrides=overrides)  # raises before Ray starts
    preset_label = preset or (spec.preset or "default")
    if tracker is None:
        from ..tracking import check_tracking_store

        check_tracking_store()  # an unreachable server fails here, before Ray or any trial
    sweep_name, sweep_dir = _sweep_dir(spec, out_root, resume, preset_label)
    if resume and not sweep_dir.exists():
        log.warning("--resume: no earlier %s sweep of %s under %s; starting a new one", preset_label, spec.name, sweep_dir.parent)

    import ray
    from ray import tune

    from .cluster import ray_init_for_sweep

    started = not ray.is_initialized()
    cluster = ray_init_for_sweep()
    try:
        trial_res, cap = _plan_resources(spec, cluster)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        pinned: dict = {}
        if spec.encoders:
            spec, pinned = prepare_encoders(spec, cpus=float(spec.resources["cpus_per_trial"]), concurrency=cap)
        if tracker is None:
            tracker = _tracker_default()
        choices: dict = {}
        if spec.search == "optuna":
            space = {}
            for p, s in spec.space.items():
                kind, values = next(iter(s.items()))
                if kind == "choice":
                    choices[p] = values  # Optuna categoricals must be scalars: sample the index
                    space[p] = tune.choice(list(range(len(values))))
                elif kind == "uniform":
                    space[p] = tune.uniform(*values)
                elif kind == "loguniform":
                    space[p] = tune.loguniform(*values)
                else:
                    space[p] = tune.randint(*values)
            param_space = {"p": space}
        else:
            param_space = {"trial": tune.grid_search(list(range(len(spec.trials))))}
        storage_root = None
        if storage_path:
            from .. import storage as storage_lib

            base = storage_path if storage_lib.is_s3(storage_path) else str(Path(storage_path).expanduser().resolve())
            storage_root = f"{base.rstrip('/')}/{slug(spec.name)}/{sweep_name}"
        ctx = _Context(spec=spec, sweep_dir=str(sweep_dir), resume=resume, choices=choices, storage_root=storage_root)

        parent_id = None
        callbacks = []
        if tracker:
            parent_params = {
                "sweep_file": str(spec.path), "base": str(spec.base), "preset": preset_label, "search": spec.search,
                "num_samples": spec.num_samples, "metric": spec.metric["name"], "mode": spec.metric["mode"],
                "scheduler": spec.scheduler["name"], "workers": spec.resources["workers"],
                "set": " ".join(spec.set + spec.overrides),
            }
            if spec.rows:
                parent_params["rows"] = " | ".join(r["name"] for r in spec.rows)
            if spec.space:
                parent_params["space"] = json.dumps(spec.space)
            for key, info in pinned.items():
                parent_params[f"encoder.{key}"] = info["uri"]
            previous, existing = None, {}
            if resume and hasattr(tracker, "find_sweep_run"):
                previous = tracker.find_sweep_run(spec.name, sweep_name)
                if previous is not None:
                    for run in tracker.child_runs(previous.info.run_id):
                        d = run.data.tags.get("drifting.trial_dir")
                        if d and d not in existing:
                            existing[d] = (run.info.run_id, run.info.status)
                    print(f"resuming sweep {sweep_name}: MLflow parent run {previous.info.run_id} ({len(existing)} trial runs)")
            parent_id = tracker.start_sweep(
                spec.name, parent_params, {"drifting.sweep": sweep_name, "drifting.sweep_dir": str(sweep_dir), "drifting.preset": preset_label},
                **({"resume_run_id": previous.info.run_id} if previous is not None else {}),
            )
            callbacks.append(TrackingCallback(tracker, parent_id, ctx, existing))

        search_alg = scheduler = None
        samples, earlier = spec.num_samples, []
        if spec.search == "optuna":
            search_alg, samples, earlier = _optuna_search(spec, sweep_dir, sweep_name, resume)
            if earlier:
                print(f"resuming: {len(earlier)} of {spec.num_samples} Optuna trials are done; {samples} to run")
        if spec.scheduler["name"] == "asha":
            from ray.tune.schedulers import ASHAScheduler

            scheduler = ASHAScheduler(
                time_attr="step", max_t=spec.max_steps, grace_period=spec.scheduler["grace_period"],
                reduction_factor=spec.scheduler["reduction_factor"],
            )
        tune_storage, tune_fs = str(sweep_dir / "_tune"), None
        if storage_root:
            from .. import storage as storage_lib

            tune_storage, tune_fs = storage_lib.ray_storage(f"{storage_root}/_tune")
        trainable = tune.with_resources(tune.with_parameters(_trial_fn, ctx=ctx), trial_res)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=spec.metric["name"], mode=spec.metric["mode"], search_alg=search_alg, scheduler=scheduler,
                num_samples=samples if spec.search == "optuna" else 1, max_concurrent_trials=cap,
                # a finished trial's process runs the next trial (all trials of a sweep ask
                # for the same resources): no new process, imports or Ray Train setup per
                # trial (~3 s each on 2 CPUs). A trial that fails leaves with its process.
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                # each attempt (a resumed sweep is a new one) keeps its own Tune state
                name=_tune_name(resume), storage_path=tune_storage, storage_filesystem=tune_fs, callbacks=callbacks, verbose=verbose,
                # a trial whose process dies (a killed worker, a lost node) is restarted and
                # continues from its checkpoint; deterministic errors fail fast (fatal.json)
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            ),
        )
        # intermediate results carry loss & co.; the metric (fid) arrives with the final one
        old = os.environ.get("TUNE_DISABLE_STRICT_METRIC_CHECKING")
        os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
        try:
            grid = tuner.fit() if samples > 0 else []
        finally:
            if old is None:
                os.environ.pop("TUNE_DISABLE_STRICT_METRIC_CHECKING", None)
            else:
                os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = old

        out = SweepResult(experiment=spec.name, sweep_name=sweep_name, sweep_dir=str(sweep_dir), parent_run_id=parent_id, metric=dict(spec.metric))
        cb = callbacks[0] if callbacks else None
        for r in grid:
            trial_id = str((r.metrics or {}).get("trial_id") or "")
            label, params, trial_dir = ctx.describe(r.config, trial_id)
            summary_path = trial_dir / "summary.json"
            if r.error is not None:
                status, metrics, error = "FAILED", {}, f"{type(r.error).__name__}: {r.error}"[-4000:]
            elif summary_path.exists():
                status, metrics, error = "FINISHED", _final_metrics(json.loads(summary_path.read_text())), None
            else:
                status, error = "STOPPED", None
                metrics = {k: v for k, v in (r.metrics or {}).items() if k not in _TUNE_KEYS and isinstance(v, (int, float))}
            out.trials.append(TrialResult(
                label=label, overrides=params, metrics=metrics, status=status, trial_dir=str(trial_dir),
                trial_id=trial_id, error=error, run_id=cb.runs.get(trial_id) if cb else None,
            ))
        seen = {t.trial_dir for t in out.trials}
        for rec in earlier:  # Optuna trials finished (or stopped) by an earlier attempt
            d = rec["dir"]
            if str(d) in seen:
                continue
            summary_path = d / "summary.json"
            status = "FINISHED" if summary_path.exists() else "STOPPED"
            metrics = _final_metrics(json.loads(summary_path.read_text())) if summary_path.exists() else {}
            prev = (cb.existing.get(str(d)) if cb else None) or (None, None)
            out.trials.append(TrialResult(label=rec["label"], overrides=rec["params"], metrics=metrics, status=status, trial_dir=str(d), trial_id="", error=None, run_id=prev[0]))
        order = {t.label: t.index for t in spec.trials}
        out.trials.sort(key=lambda t: (order.get(t.label, 10**9), t.trial_dir))
        if tracker and parent_id:
            failed = [t for t in out.trials if t.status == "FAILED"]
            status = "FAILED" if out.trials and len(failed) == len(out.trials) else "FINISHED"
            try:
                (sweep_dir / "sweep_result.json").write_text(json.dumps(_as_dict(out), indent=2) + "\n")
                tracker.log_artifacts(parent_id, [str(sweep_dir / "sweep_result.json")])
            except Exception as exc:  # noqa: BLE001
                log.warning("tracking: sweep result artifact failed: %s", exc)
            tracker.end_run(parent_id, status, None if status == "FINISHED" else "every trial failed")
        else:
            (sweep_dir / "sweep_result.json").write_text(json.dumps(_as_dict(out), indent=2) + "\n")
        return out
    finally:
        if started:
            ray.shutdown()


def _as_dict(res: SweepResult) -> dict:
    import dataclasses

    return dataclasses.asdict(res)
