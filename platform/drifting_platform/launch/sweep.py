"""Ray Tune sweeps over the training loop: `run_sweep`.

    result = run_sweep("experiments/antisymmetry.yaml", preset="smoke")
    for t in result.trials:
        print(t.label, t.status, t.metrics.get("fid"))

The flow, one module per step:
1. `spec.load_sweep` reads and validates the sweep file and every trial config (no Ray);
   `points.py` plans the trials (with `seeds: N` / `--seeds N`, every row / grid point N
   times, seeds base + 0..N-1). A bad file or an unreachable tracking store fails here.
2. `plan.py` places the sweep: its directory, the trials' resources against the cluster,
   Tune's param_space (the values themselves), the Optuna search and its resume, ASHA.
   `encoder_jobs.prepare_encoders` pre-trains the encoders the rows use and pins them;
   `data_jobs.prepare_sweep_data` makes the prepared latent set of a `prepare:` section.
3. The tracker opens (or, with --resume, reopens) the sweep's parent run;
   `callback.TrackingCallback` writes every child run from this (the driver) process.
4. Tune runs `trial.run_trial` once per grid point / row (and seed) / Optuna sample, each in
   its own trial directory (`trial.TrialDir`); every seed is a child run of the one parent,
   tagged with its row (`drifting.row`) and seed (`drifting.seed`). Trial processes are reused (`reuse_actors`): only
   the first trials of a sweep pay for starting a process and importing torch; each trial
   still builds everything from its own config and seed.
5. The results are gathered into a `SweepResult` (with the points an earlier attempt
   finished), written as sweep_result.json, and the parent run is closed.

Interrupts: SIGINT (Ctrl-C) and SIGTERM stop the experiment the way Tune stops it on
SIGINT (running trials are stopped, their checkpoints stay); the unfinished child runs and
the parent run end KILLED, nothing is gathered or reported, and `SweepInterrupted` is raised
(the callers print `resume_command` and exit 128 + the signal). `--resume` of a sweep that
finished returns its sweep_result.json (`already_complete`) without starting Ray.

Trial states, one vocabulary (our summary, the report, the progress lines): FINISHED,
PRUNED (stopped early by ASHA; MLflow KILLED + tag drifting.state=PRUNED), FAILED, and
KILLED (interrupted; resumed by --resume).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Optional

from .. import rundir
from ..home import sweeps_root
from ..rerun import rerun_command
from ..tracking import TAG_TRIAL_DIR, SweepTracker, TrackingUnavailable, check_tracking_store
from ..tracking.outbox import JOURNAL, BufferedTracker, sync_journal
from ..signals import SignalScope
from .points import result_metrics, slug
from .spec import Metric, SweepSpec, check_machine, load_sweep

if TYPE_CHECKING:
    from .callback import SweepTracking, TrackingCallback
    from .trial import SweepContext, TrialDir

__all__ = ["run_sweep", "SweepResult", "TrialResult", "SweepInterrupted", "resume_command"]

log = logging.getLogger(__name__)

# the exit status of a sweep that finished while the tracking store was unreachable (EX_TEMPFAIL:
# try again later; `drifting-platform sync` or `--resume` writes what was kept)
EXIT_TRACKING_PENDING = 75


@dataclass
class TrialResult:
    label: str  # the row name or "path=value, ..." (with seeds: N > 1, plus " (seed S)")
    overrides: dict  # parameter path -> value of this trial
    metrics: dict  # final summary metrics (fid, kid, ... / mmd ...), or the last reported
    status: str  # FINISHED | FAILED | PRUNED (stopped early by the scheduler)
    trial_dir: str
    trial_id: str = ""
    error: Optional[str] = None
    run_id: Optional[str] = None  # the tracker's child run
    row: str = ""  # the row / grid point without the seed (tag drifting.row)
    seed: Optional[int] = None  # the trial config's seed (tag drifting.seed)


@dataclass
class SweepResult:
    experiment: str
    sweep_name: str
    sweep_dir: str
    parent_run_id: Optional[str]
    metric: Metric
    trials: list[TrialResult] = field(default_factory=list)
    already_complete: bool = False  # --resume of a finished sweep: nothing ran
    # runs whose tracking writes are still in the sweep's journal (the store was down at the
    # end): [{"run", "run_id", "writes", "kinds"}]; `sync` / --resume writes them
    incomplete: list = field(default_factory=list)
    synced: int = 0  # writes an earlier attempt left in the journal, written by this call

    @classmethod
    def load(cls, path: str | Path) -> "SweepResult":
        """A sweep_result.json read back."""
        d = json.loads(Path(path).read_text())
        trials = [TrialResult(**t) for t in d.pop("trials", [])]
        d["metric"] = Metric(**d["metric"])
        for key in ("already_complete", "incomplete", "synced"):
            d.pop(key, None)
        return cls(**d, trials=trials)

    def counts(self) -> str:
        """"4 trials finished, 2 pruned" (the states that occur)."""
        n: dict[str, int] = {}
        for t in self.trials:
            n[t.status] = n.get(t.status, 0) + 1
        first = n.pop("FINISHED", 0)
        parts = [f"{first} trial{'s' if first != 1 else ''} finished"] + [f"{k} {s.lower()}" for s, k in n.items()]
        return ", ".join(parts)

    def best(self) -> Optional[TrialResult]:
        name, sign = self.metric.name, (1 if self.metric.mode == "min" else -1)
        done = [t for t in self.trials if isinstance(t.metrics.get(name), (int, float)) and math.isfinite(t.metrics[name])]
        return min(done, key=lambda t: sign * t.metrics[name]) if done else None


class SweepInterrupted(Exception):
    """A sweep stopped by SIGINT / SIGTERM: its runs are KILLED, nothing was reported."""

    def __init__(self, signum: int, experiment: str, sweep_name: str, sweep_dir: str, done: int = 0, killed: int = 0):
        self.signum, self.experiment, self.sweep_name, self.sweep_dir = signum, experiment, sweep_name, sweep_dir
        self.done, self.killed = done, killed
        name = signal.Signals(signum).name
        super().__init__(
            f"sweep {experiment} ({sweep_dir}) interrupted by {name}: {done} trial{'s' if done != 1 else ''} ended in this "
            f"attempt, {killed} stopped and KILLED; no report written"
        )

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def resume_command(argv: list[str], *, script: bool = False) -> str:
    """The command that resumes a sweep: `argv` (as typed) plus --resume. `script`: argv[0]
    is a Python script (`python experiments/ablate_*.py`), run by this interpreter."""
    return rerun_command(argv, add=("--resume",), script=script)


def sweep_dir_for(spec: SweepSpec, out_root: Optional[str | Path], resume: bool, preset_label: str) -> tuple[str, Path]:
    """(sweep name, sweep directory): a new one, or with `resume` the latest of this preset."""
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


def completed(spec: SweepSpec, sweep_dir: Path) -> Optional[SweepResult]:
    """The result of a sweep directory whose sweep ran to its end (sweep_result.json) and
    whose every trial is done (finished or pruned), else None. Reads files only (no Ray)."""
    path = sweep_dir / "sweep_result.json"
    if not path.exists():
        return None

    def done(d: Path) -> bool:
        return (d / rundir.SUMMARY).exists() or (d / rundir.STOPPED).exists()

    if spec.search == "optuna":
        n = sum(done(p.parent) for p in sweep_dir.glob(f"trial_*/{rundir.TRIAL}"))
        if n < spec.num_samples:
            return None
    elif not all(done(sweep_dir / t.dirname) for t in spec.trials):
        return None
    try:
        result = SweepResult.load(path)
    except (ValueError, TypeError, KeyError):
        return None
    result.already_complete = True
    return result


class _Interrupt(BaseException):
    """SIGINT / SIGTERM outside Tune's loop (or a second one inside it)."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class Interrupts(SignalScope):
    """SIGINT and SIGTERM while a sweep runs. Inside `Tuner.fit` the first one stops the
    experiment through Tune's own stop handler (Tune's SIGINT handler is disabled, its
    SIGUSR1 handler is the same function); elsewhere, or a second time, `_Interrupt` is
    raised. `signum` says which signal came (None: none); `arm()` again after `ray.init`,
    which installs its own SIGTERM handler."""

    def __init__(self):
        super().__init__()
        self.in_fit = False  # inside Tuner.fit (set by _tune_signal_handling)

    def _handler(self, signum: int, frame) -> None:
        first = self.signum is None
        if first:
            self.signum = signum
        tune_stop = signal.getsignal(signal.SIGUSR1) if hasattr(signal, "SIGUSR1") else None
        in_tune = self.in_fit and callable(tune_stop) and "signal_interrupt_tune_run" in getattr(tune_stop, "__qualname__", "")
        if first and in_tune:
            print(f"\n{signal.Signals(signum).name}: stopping the running trials (send it again to skip waiting)", file=sys.stderr, flush=True)
            tune_stop(signum, frame)
            return
        raise _Interrupt(self.signum)


class _QuietTuneStop(logging.Filter):
    """Tune's own lines about an interrupt (its `Tuner.restore(...)` hint, "Trials did not
    complete", its stop banner): we print our --resume command instead."""

    DROP = ("Tuner.restore", "Trials did not complete", "Stop signal received", "Experiment has been interrupted",
            "Wrote the latest version of all result files")

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(d in msg for d in self.DROP)


def run_sweep(
    path: str | Path,
    *,
    preset: Optional[str] = None,
    overrides: tuple[str, ...] | list[str] = (),
    out_root: Optional[str | Path] = None,
    tracker: "SweepTracking | None | bool" = None,  # None: a SweepTracker on the default store; False: none
    resume: bool = False,  # continue the latest sweep of this experiment and preset
    verbose: int = 0,  # Tune's own console output (0: none; our progress lines are printed anyway)
    storage_path: Optional[str] = None,  # Tune state / Ray Train checkpoints: a shared dir or s3://bucket/prefix
    seeds: Optional[int] = None,  # --seeds: every grid / rows trial N times (overrides the file's `seeds:`)
) -> SweepResult:
    """Validate the sweep file, then run it on Ray Tune; returns every trial's outcome.
    Raises `SweepInterrupted` on SIGINT / SIGTERM (the runs KILLED, nothing gathered)."""
    spec = load_sweep(path, preset=preset, overrides=overrides, seeds=seeds)  # raises before Ray starts
    check_machine(spec)  # this machine's files and devices, unless a Ray cluster runs it
    preset_label = preset or (spec.preset or "default")
    sweep_name, sweep_dir = sweep_dir_for(spec, out_root, resume, preset_label)
    if resume:
        done = completed(spec, sweep_dir)
        if done is not None:  # nothing to run: no Ray; only what the tracking store lacks is written
            if tracker is not False and pending_writes(sweep_dir):
                check_tracking_store()
                done.synced = sync_sweep(sweep_dir, tracker if isinstance(tracker, SweepTracker) else None)["written"]
            return done
    if tracker is None:
        check_tracking_store()  # an unreachable server fails here, before Ray or any trial
        tracker = SweepTracker()
    # a trial process that downloads a pinned encoder from the registry: no progress bars
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    with Interrupts() as stop:
        state: dict = {}
        try:
            return _run(spec, preset_label, sweep_name, sweep_dir, tracker, resume, verbose, storage_path, stop, state)
        except _Interrupt as exc:
            _kill_runs(state.get("tracker", tracker), state.get("parent_id"), state.get("callback"))
            raise SweepInterrupted(exc.signum, spec.name, sweep_name, str(sweep_dir), *_tally(state.get("callback"))) from None


def _run(spec: SweepSpec, preset_label: str, sweep_name: str, sweep_dir: Path, tracker, resume: bool, verbose: int,
         storage_path: Optional[str], stop: Interrupts, state: dict) -> SweepResult:
    # Ray, Tune, Optuna and torch load only now: a bad sweep file fails without them (~4 s)
    import ray
    from ray import tune

    from . import plan
    from .callback import ProgressCallback, TrackingCallback
    from .cluster import ray_init_for_sweep
    from .encoder_jobs import prepare_encoders
    from .trial import SweepContext, run_trial, tune_trial_names

    if resume and not sweep_dir.exists():
        log.warning("--resume: no earlier %s sweep of %s under %s; starting a new one", preset_label, spec.name, sweep_dir.parent)
    started = not ray.is_initialized()
    r = spec.resources  # GPUs the cluster lacks are refused now, not waited for by Tune
    cluster = ray_init_for_sweep(gpus=r.workers if r.gpu else 0, gpu_key="resources.gpu")
    stop.arm()  # ray.init replaced our SIGTERM handler with its own (sys.exit)
    try:
        trial_res, cap, spec = plan.plan_resources(spec, cluster)  # cpus_per_trial: auto resolved
        print(plan.describe_plan(spec, cluster, trial_res, cap))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        pinned: dict = {}
        if spec.prepare is not None:  # the latent set every trial trains on (made or reused)
            from .data_jobs import prepare_sweep_data

            prepare_sweep_data(spec.prepare, spec.prepare_out, workers=cap)
        if spec.encoders:
            spec, pinned = prepare_encoders(spec, cpus=spec.resources.cpus_per_trial, concurrency=cap)
        root = plan.storage_root(spec, storage_path, sweep_name)
        ctx = SweepContext(spec=spec, sweep_dir=str(sweep_dir), resume=resume, storage_root=root)

        callback = parent_id = None
        if tracker:
            tracker = _buffered(tracker, sweep_dir)
            state["tracker"] = tracker
            parent_id, existing = _open_parent(tracker, spec, sweep_name, sweep_dir, preset_label, pinned, resume)
            state["parent_id"] = parent_id
            callback = TrackingCallback(tracker, parent_id, ctx, existing, interrupt=stop)
            state["callback"] = callback

        search_alg, samples, earlier = None, 1, []
        if spec.search == "optuna":
            search_alg, samples, earlier = plan.optuna_search(spec, sweep_dir, sweep_name, resume)
            if earlier:
                print(f"resuming: {len(earlier)} of {spec.num_samples} Optuna trials are done; {samples} to run")
        total = len(earlier) + samples if spec.search == "optuna" else len(spec.trials)
        progress = ProgressCallback(ctx, total=total, metric=spec.metric.name, done=len(earlier), interrupt=stop)
        storage, filesystem = plan.tune_storage(sweep_dir, root)
        name_trial, dirname_trial = tune_trial_names(ctx)
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
                # trials are named after their row / point (not "run_trial_3c77a_00003")
                trial_name_creator=name_trial, trial_dirname_creator=dirname_trial,
            ),
            run_config=tune.RunConfig(
                # each attempt (a resumed sweep is a new one) keeps its own Tune state
                name=plan.tune_name(resume), storage_path=storage, storage_filesystem=filesystem,
                callbacks=([callback] if callback else []) + [progress], verbose=verbose,
                # a trial whose process dies (a killed worker, a lost node) is restarted and
                # continues from its checkpoint; deterministic errors fail fast (fatal.json)
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            ),
        )
        with _lenient_metric_checking(), _tune_signal_handling(stop, quiet_output=verbose == 0):
            grid = tuner.fit() if samples > 0 else []
        if stop.signum is not None:
            _kill_runs(tracker, parent_id, callback)
            raise SweepInterrupted(stop.signum, spec.name, sweep_name, str(sweep_dir), *_tally(callback, progress))

        result = SweepResult(experiment=spec.name, sweep_name=sweep_name, sweep_dir=str(sweep_dir), parent_run_id=parent_id, metric=spec.metric)
        result.trials = _gather(grid, earlier, ctx, callback)
        _finish(result, sweep_dir, tracker, parent_id)
        return result
    finally:
        buffered = state.get("tracker")
        if isinstance(buffered, BufferedTracker) and buffered._thread is not None:  # an error cut the sweep short
            buffered.flush(_flush_seconds(10.0))
            buffered.close()
        if started:
            ray.shutdown()


def _tally(callback=None, progress=None) -> tuple[int, int]:
    """(trials done in this attempt, child runs KILLED) for the interrupt message."""
    done = progress.count if progress is not None else len(getattr(callback, "ended", ()))
    return done, len(getattr(callback, "killed", ()))


def _kill_runs(tracker, parent_id: Optional[str], callback) -> None:
    """An interrupted sweep: every child run this attempt opened and did not end, and the
    parent run, end KILLED (each finished child stays FINISHED)."""
    if not (tracker and parent_id):
        return
    if callback is not None:
        callback.kill_open_runs()
    try:
        tracker.end_run(parent_id, "KILLED")
    except Exception as exc:  # noqa: BLE001
        log.warning("tracking: could not mark the parent run KILLED: %s", exc)
    if isinstance(tracker, BufferedTracker):
        if not tracker.flush(_flush_seconds(10.0)):
            log.warning("tracking: %d writes could not be made yet; they stay in %s and `--resume` writes them",
                        tracker.pending(), tracker.journal.path)
        tracker.close()


@contextlib.contextmanager
def _tune_signal_handling(stop: Interrupts, quiet_output: bool) -> Iterator[None]:
    """Tune's SIGINT handler off (ours, `Interrupts`, calls Tune's stop handler instead),
    Tune's interrupt lines filtered from its log, and SIGUSR1 (where Tune installs its stop
    handler, never removed) restored after `Tuner.fit`."""
    env = {"TUNE_DISABLE_SIGINT_HANDLER": "1"}
    if quiet_output:  # Tune's new output engine prints its config box and paths even at verbose=0
        env["RAY_AIR_NEW_OUTPUT"] = "0"
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    usr1 = signal.getsignal(signal.SIGUSR1) if stop.installed and hasattr(signal, "SIGUSR1") else None
    stop.in_fit = True
    quiet = _QuietTuneStop()
    loggers = [logging.getLogger(n) for n in ("ray.tune.tune", "ray.tune")]
    for lg in loggers:
        lg.addFilter(quiet)
    try:
        yield
    finally:
        stop.in_fit = False
        if usr1 is not None:
            signal.signal(signal.SIGUSR1, usr1)
        for lg in loggers:
            lg.removeFilter(quiet)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


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
        "scheduler": spec.scheduler.name, "workers": spec.resources.workers, "seeds": spec.seeds,
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
            d = run.data.tags.get(TAG_TRIAL_DIR)
            if d and d not in existing:
                # where an unfinished history continues, read now that the store answers
                last = None if run.info.status == "FINISHED" else tracker.last_steps(run.info.run_id)
                existing[d] = (run.info.run_id, run.info.status, last)
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
            status, metrics, error = "PRUNED", result_metrics(r.metrics or {}), None
        out.append(TrialResult(
            label=t.label, overrides=t.params, metrics=metrics, status=status, trial_dir=str(tdir),
            trial_id=trial_id, error=error, run_id=runs.get(trial_id), row=t.row_label, seed=t.seed,
        ))
    seen = {t.trial_dir for t in out}
    for tdir in earlier:
        if str(tdir) in seen:
            continue
        rec = tdir.record()
        prev = (callback.existing.get(str(tdir)) if callback else None) or (None, None)
        status = "FINISHED" if tdir.finished else "PRUNED"
        out.append(TrialResult(
            label=rec["label"], overrides=rec["params"], metrics=tdir.final_metrics(), status=status,
            trial_dir=str(tdir), run_id=prev[0], row=rec.get("row") or rec["label"], seed=rec.get("seed"),
        ))
    # plan order, the seeds of a row together (the plan itself is seed-major)
    order = {t.label: (t.index, t.seed) for t in ctx.spec.trials}
    return sorted(out, key=lambda t: (order.get(t.label, (10**9, 0)), t.trial_dir))


def _finish(result: SweepResult, sweep_dir: Path, tracker: Any, parent_id: Optional[str]) -> None:
    """Write sweep_result.json; with a tracker, attach it to the parent run and close that
    (FAILED when every trial failed). A buffered tracker is given `DRIFTING_TRACKING_WAIT`
    seconds (default 30) to write what it holds; what it could not write is named in
    `result.incomplete` and stays in the journal."""
    buffered = tracker if isinstance(tracker, BufferedTracker) else None
    deadline = time.monotonic() + _flush_seconds()
    if buffered is not None:
        buffered.flush(deadline - time.monotonic())
        _resolve_ids(result, buffered.journal.ids)
    path = _write_result(result, sweep_dir)
    if not (tracker and parent_id):
        return
    try:
        tracker.log_artifacts(parent_id, [str(path)])
    except Exception as exc:  # noqa: BLE001 - a tracking hiccup must not lose the result
        log.warning("tracking: sweep result artifact failed: %s", exc)
    failed = [t for t in result.trials if t.status == "FAILED"]
    status = "FAILED" if result.trials and len(failed) == len(result.trials) else "FINISHED"
    tracker.end_run(parent_id, status, None if status == "FINISHED" else "every trial failed")
    if buffered is not None:
        buffered.flush(max(5.0, deadline - time.monotonic()))
        result.incomplete = buffered.incomplete()
        buffered.close()


def _flush_seconds(default: float = 30.0) -> float:
    """How long a sweep's end waits for an unreachable tracking store ($DRIFTING_TRACKING_WAIT)."""
    try:
        return max(0.0, float(os.environ.get("DRIFTING_TRACKING_WAIT", default)))
    except ValueError:
        return default


def _write_result(result: SweepResult, sweep_dir: Path) -> Path:
    d = dataclasses.asdict(result)
    for key in ("incomplete", "synced"):  # this call's state, not the sweep's
        d.pop(key, None)
    return rundir.write_json(sweep_dir / "sweep_result.json", d)


def _resolve_ids(result: SweepResult, ids: dict) -> bool:
    """Local ids (runs created while the store was down) -> their run ids; True if any changed."""
    changed = False
    for t in result.trials:
        if t.run_id in ids:
            t.run_id, changed = ids[t.run_id], True
    return changed


def _buffered(tracker: Any, sweep_dir: Path) -> Any:
    """A `SweepTracker` journaled in the sweep directory (`BufferedTracker`), with what an
    earlier attempt left in the journal written first; other trackers as they are."""
    if not isinstance(tracker, SweepTracker):
        return tracker
    buffered = BufferedTracker(tracker, sweep_dir / JOURNAL, start=False)
    left = buffered.pending()
    if left:
        if not buffered.drain(_flush_seconds()):
            raise TrackingUnavailable(
                f"the tracking store {tracker.uri} took only part of the {left} writes an earlier attempt left in "
                f"{buffered.journal.path}; {buffered.pending()} remain. Nothing was started.")
        print(f"tracking: wrote the {left} writes an earlier attempt left in {buffered.journal.path}")
    buffered.start()
    return buffered


def pending_writes(sweep_dir: Path) -> int:
    """How many tracking writes the sweep's journal still holds (0 without a journal)."""
    journal = Path(sweep_dir) / JOURNAL
    if not journal.exists():
        return 0
    from ..tracking.outbox import Journal

    return len(Journal(journal).pending)


def sync_sweep(sweep_dir: Path, tracker: Optional[SweepTracker] = None) -> dict:
    """Write what the sweep's journal still holds to the tracking store (the store was down
    when the sweep ended, or its driver died) and put the runs' ids into sweep_result.json
    (attached again to the parent run). Returns `sync_journal`'s counts."""
    sweep_dir = Path(sweep_dir)
    tracker = tracker or SweepTracker()
    out = sync_journal(sweep_dir / JOURNAL, tracker)
    path = sweep_dir / "sweep_result.json"
    if out["written"] and path.exists():
        result = SweepResult.load(path)
        if _resolve_ids(result, out["ids"]):
            _write_result(result, sweep_dir)
            if result.parent_run_id and not out["pending"]:
                tracker.log_artifacts(result.parent_run_id, [str(path)])
    return out


def incomplete_message(result: SweepResult, resume: str) -> str:
    """What a user reads when the sweep ended with the tracking store unreachable."""
    lines = [f"the sweep finished, but the tracking store {_uri()} is unreachable: "
             f"{len(result.incomplete)} run{'s are' if len(result.incomplete) != 1 else ' is'} incomplete in MLflow "
             f"(their writes are kept in {Path(result.sweep_dir) / JOURNAL}):"]
    for row in result.incomplete:
        rid = row["run_id"] or "not created yet"
        lines.append(f"  {row['run']}  (run {rid}): {row['writes']} writes ({', '.join(row['kinds'])})")
    lines.append(f"once the store is back, write them with: drifting-platform sync {result.sweep_dir}")
    lines.append(f"  (or: {resume}); the report is written then")
    return "\n".join(lines)


def _uri() -> str:
    from ..tracking.store import mask_url_credentials, tracking_uri

    return mask_url_credentials(tracking_uri())
