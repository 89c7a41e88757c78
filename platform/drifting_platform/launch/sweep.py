"""Ray Tune sweeps over the training loop: `run_sweep`.

    result = run_sweep("experiments/antisymmetry.yaml", preset="smoke")
    for t in result.trials:
        print(t.label, t.status, t.metrics.get("fid"))

The flow, one module per step:
1. `spec.load_sweep` reads and validates the sweep file and every trial config (no Ray);
   `points.py` plans the trials. A bad file or an unreachable tracking store fails here.
2. `plan.py` places the sweep: its directory, the trials' resources against the cluster,
   Tune's param_space (the values themselves), the Optuna search and its resume, ASHA.
   `encoder_jobs.prepare_encoders` pre-trains the encoders the rows use and pins them.
3. The tracker opens (or, with --resume, reopens) the sweep's parent run;
   `callback.TrackingCallback` writes every child run from this (the driver) process.
4. Tune runs `trial.run_trial` once per grid point / row / Optuna sample, each in its own
   trial directory (`trial.TrialDir`). Trial processes are reused (`reuse_actors`): only
   the first trials of a sweep pay for starting a process and importing torch; each trial
   still builds everything from its own config and seed.
5. The results are gathered into a `SweepResult` (with the points an earlier attempt
   finished), written as sweep_result.json, and the parent run is closed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

from .. import rundir
from ..tracking import SweepTracker, check_tracking_store
from .points import result_metrics
from .spec import Metric, SweepSpec, load_sweep

if TYPE_CHECKING:
    from .callback import SweepTracking, TrackingCallback
    from .trial import SweepContext, TrialDir

__all__ = ["run_sweep", "SweepResult", "TrialResult"]

log = logging.getLogger(__name__)


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
    metric: Metric
    trials: list[TrialResult] = field(default_factory=list)

    def best(self) -> Optional[TrialResult]:
        name, sign = self.metric.name, (1 if self.metric.mode == "min" else -1)
        done = [t for t in self.trials if isinstance(t.metrics.get(name), (int, float)) and math.isfinite(t.metrics[name])]
        return min(done, key=lambda t: sign * t.metrics[name]) if done else None


def run_sweep(
    path: str | Path,
    *,
    preset: Optional[str] = None,
    overrides: tuple[str, ...] | list[str] = (),
    out_root: Optional[str | Path] = None,
    tracker: "SweepTracking | None | bool" = None,  # None: a SweepTracker on the default store; False: none
    resume: bool = False,  # continue the latest sweep of this experiment and preset
    verbose: int = 1,
    storage_path: Optional[str] = None,  # Tune state / Ray Train checkpoints: a shared dir or s3://bucket/prefix
) -> SweepResult:
    """Validate the sweep file, then run it on Ray Tune; returns every trial's outcome."""
    spec = load_sweep(path, preset=preset, overrides=overrides)  # raises before Ray starts
    preset_label = preset or (spec.preset or "default")
    if tracker is None:
        check_tracking_store()  # an unreachable server fails here, before Ray or any trial
        tracker = SweepTracker()

    # Ray, Tune, Optuna and torch load only now: a bad sweep file fails without them (~4 s)
    import ray
    from ray import tune

    from . import plan
    from .callback import TrackingCallback
    from .cluster import ray_init_for_sweep
    from .encoder_jobs import prepare_encoders
    from .trial import SweepContext, run_trial

    sweep_name, sweep_dir = plan.sweep_dir(spec, out_root, resume, preset_label)
    if resume and not sweep_dir.exists():
        log.warning("--resume: no earlier %s sweep of %s under %s; starting a new one", preset_label, spec.name, sweep_dir.parent)
    started = not ray.is_initialized()
    r = spec.resources  # GPUs the cluster lacks are refused now, not waited for by Tune
    cluster = ray_init_for_sweep(gpus=r.workers if r.gpu else 0, gpu_key="resources.gpu")
    try:
        trial_res, cap = plan.plan_resources(spec, cluster)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        pinned: dict = {}
        if spec.encoders:
            spec, pinned = prepare_encoders(spec, cpus=spec.resources.cpus_per_trial, concurrency=cap)
        root = plan.storage_root(spec, storage_path, sweep_name)
        ctx = SweepContext(spec=spec, sweep_dir=str(sweep_dir), resume=resume, storage_root=root)

        callback = parent_id = None
        if tracker:
            parent_id, existing = _open_parent(tracker, spec, sweep_name, sweep_dir, preset_label, pinned, resume)
            callback = TrackingCallback(tracker, parent_id, ctx, existing)

        search_alg, samples, earlier = None, 1, []
        if spec.search == "optuna":
            search_alg, samples, earlier = plan.optuna_search(spec, sweep_dir, sweep_name, resume)
            if earlier:
                print(f"resuming: {len(earlier)} of {spec.num_samples} Optuna trials are done; {samples} to run")
        storage, filesystem = plan.tune_storage(sweep_dir, root)
        tuner = tune.Tuner(
            tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), trial_res),
            param_space=plan.param_space(spec),
            tune_config=tune.TuneConfig(
                metric=spec.metric.name, mode=spec.metric.mode, search_alg=search_alg, scheduler=plan.scheduler(spec),
                num_samples=samples, max_concurrent_trials=cap,
                # a finished trial's process runs the next trial (all trials of a sweep ask
                # for the same resources): no new process, imports or Ray Train setup per
                # trial (~3 s each on 2 CPUs). A trial that fails leaves with its process.
                reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                # each attempt (a resumed sweep is a new one) keeps its own Tune state
                name=plan.tune_name(resume), storage_path=storage, storage_filesystem=filesystem,
                callbacks=[callback] if callback else [], verbose=verbose,
                # a trial whose process dies (a killed worker, a lost node) is restarted and
                # continues from its checkpoint; deterministic errors fail fast (fatal.json)
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            ),
        )
        with _lenient_metric_checking():
            grid = tuner.fit() if samples > 0 else []

        result = SweepResult(experiment=spec.name, sweep_name=sweep_name, sweep_dir=str(sweep_dir), parent_run_id=parent_id, metric=spec.metric)
        result.trials = _gather(grid, earlier, ctx, callback)
        _finish(result, sweep_dir, tracker, parent_id)
        return result
    finally:
        if started:
            ray.shutdown()


@contextlib.contextmanager
def _lenient_metric_checking() -> Iterator[None]:
    """Intermediate results carry loss & co.; the sweep metric (fid) arrives with the final
    one: Tune must not insist on it in every result."""
    key = "TUNE_DISABLE_STRICT_METRIC_CHECKING"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def _open_parent(tracker: "SweepTracking", spec: SweepSpec, sweep_name: str, sweep_dir: Path, preset_label: str, pinned: dict, resume: bool) -> tuple[str, dict]:
    """Start the sweep's parent run, or with `resume` reopen the interrupted sweep's.
    Returns (parent run id, {trial dir: (child run id, status)} of the earlier attempt)."""
    params = {
        "sweep_file": str(spec.path), "base": str(spec.base), "preset": preset_label, "search": spec.search,
        "num_samples": spec.num_samples, "metric": spec.metric.name, "mode": spec.metric.mode,
        "scheduler": spec.scheduler.name, "workers": spec.resources.workers,
        "set": " ".join(spec.set + spec.overrides),
    }
    if spec.rows:
        params["rows"] = " | ".join(r.name for r in spec.rows)
    if spec.space:
        params["space"] = json.dumps(spec.space)
    for key, info in pinned.items():
        params[f"encoder.{key}"] = info["uri"]
    previous = tracker.find_sweep_run(spec.name, sweep_name) if resume else None
    existing: dict = {}
    if previous is not None:
        for run in tracker.child_runs(previous.info.run_id):
            d = run.data.tags.get("drifting.trial_dir")
            if d and d not in existing:
                existing[d] = (run.info.run_id, run.info.status)
        print(f"resuming sweep {sweep_name}: MLflow parent run {previous.info.run_id} ({len(existing)} trial runs)")
    tags = {"drifting.sweep": sweep_name, "drifting.sweep_dir": str(sweep_dir), "drifting.preset": preset_label}
    parent_id = tracker.start_sweep(spec.name, params, tags, resume_run_id=previous.info.run_id if previous is not None else None)
    return parent_id, existing


def _gather(grid, earlier: "list[TrialDir]", ctx: "SweepContext", callback: "Optional[TrackingCallback]") -> list[TrialResult]:
    """One TrialResult per Tune result, plus the points an earlier attempt finished / stopped;
    in plan order (Optuna points by directory)."""
    runs = callback.runs if callback else {}
    out = []
    for r in grid:
        trial_id = str((r.metrics or {}).get("trial_id") or "")
        t, tdir = ctx.describe(r.config)
        if r.error is not None:
            status, metrics, error = "FAILED", {}, f"{type(r.error).__name__}: {r.error}"[-4000:]
        elif tdir.finished:
            status, metrics, error = "FINISHED", tdir.final_metrics(), None
        else:
            status, metrics, error = "STOPPED", result_metrics(r.metrics or {}), None
        out.append(TrialResult(
            label=t.label, overrides=t.params, metrics=metrics, status=status, trial_dir=str(tdir),
            trial_id=trial_id, error=error, run_id=runs.get(trial_id),
        ))
    seen = {t.trial_dir for t in out}
    for tdir in earlier:
        if str(tdir) in seen:
            continue
        rec = tdir.record()
        prev = (callback.existing.get(str(tdir)) if callback else None) or (None, None)
        status = "FINISHED" if tdir.finished else "STOPPED"
        out.append(TrialResult(
            label=rec["label"], overrides=rec["params"], metrics=tdir.final_metrics(), status=status,
            trial_dir=str(tdir), run_id=prev[0],
        ))
    order = {t.label: t.index for t in ctx.spec.trials}
    return sorted(out, key=lambda t: (order.get(t.label, 10**9), t.trial_dir))


def _finish(result: SweepResult, sweep_dir: Path, tracker: Any, parent_id: Optional[str]) -> None:
    """Write sweep_result.json; with a tracker, attach it to the parent run and close that
    (FAILED when every trial failed)."""
    path = rundir.write_json(sweep_dir / "sweep_result.json", dataclasses.asdict(result))
    if not (tracker and parent_id):
        return
    try:
        tracker.log_artifacts(parent_id, [str(path)])
    except Exception as exc:  # noqa: BLE001 - a tracking hiccup must not lose the result
        log.warning("tracking: sweep result artifact failed: %s", exc)
    failed = [t for t in result.trials if t.status == "FAILED"]
    status = "FAILED" if result.trials and len(failed) == len(result.trials) else "FINISHED"
    tracker.end_run(parent_id, status, None if status == "FINISHED" else "every trial failed")
