"""Tracking of a sweep: the tracker protocol and the Tune callback that calls it.

Every tracker write happens in the driver process, in `TrackingCallback` (a Tune
`Callback`): one child run per trial (each seed of a row is a trial) under the sweep's
parent run, tagged `drifting.row` (the row, without the seed) and `drifting.seed`, with its
params, metric history, final metrics and artifacts, so concurrent trials never open the tracking store.
`ProgressCallback` prints one line per trial as it ends (its row, state and metric).
`drifting_platform.tracking.SweepTracker` implements `SweepTracking` on MLflow; tests use
a fake that records the calls.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Protocol

from ray.tune import Callback

from .. import config as C
from .. import rundir
from ..tracking import TAG_ROW, TAG_SEED, TAG_TRIAL_DIR, pinned_encoder_tags
from .points import result_metrics
from .trial import SweepContext, TrialDir

log = logging.getLogger(__name__)

class SweepTracking(Protocol):
    """What a sweep calls on its tracker (all in the driver process)."""

    def start_sweep(self, name: str, params: Optional[Mapping[str, Any]], tags: Optional[Mapping[str, Any]], resume_run_id: Optional[str] = None) -> str: ...

    def start_trial(self, parent_id: str, trial_name: str, params: Optional[Mapping[str, Any]], tags: Optional[Mapping[str, Any]]) -> str: ...

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int) -> Any: ...

    def log_artifacts(self, run_id: str, paths: Iterable[str]) -> Any: ...

    def end_run(self, run_id: str, status: str, error: Optional[str] = None) -> None: ...

    def find_sweep_run(self, experiment: str, sweep_name: str) -> Any:
        """The parent run (`.info.run_id`) of sweep instance `sweep_name`, or None."""

    def child_runs(self, parent_id: str) -> list:
        """The child runs (`.info.run_id`, `.info.status`, `.data.tags`) of a parent run."""

    def reopen_run(self, run_id: str) -> None: ...

    def last_steps(self, run_id: str) -> dict[str, int]: ...


class TrackingCallback(Callback):
    """Tune callback: every tracker write of a sweep happens here, in the driver process."""

    def __init__(self, tracker: SweepTracking, parent_id: str, ctx: SweepContext, existing: Optional[dict] = None, interrupt: Any = None):
        self.tracker, self.parent_id, self.ctx = tracker, parent_id, ctx
        self.interrupt = interrupt  # `.signum` set once SIGINT / SIGTERM came (sweep.Interrupts)
        self.runs: dict[str, str] = {}  # trial_id -> child run id
        self.ended: set[str] = set()  # run ids this attempt ended (FINISHED / PRUNED / FAILED)
        self.killed: set[str] = set()  # run ids ended KILLED by an interrupt
        self.errors: dict[str, str] = {}
        # resumed sweeps: trial dir -> (child run id, status, {metric: last step} or None)
        # of the interrupted attempt
        self.existing: dict[str, tuple] = dict(existing or {})
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

    def _backfill(self, run_id: str, tdir: TrialDir) -> None:
        """Log the steps of the trial's metrics.jsonl that no result carried (Optuna / ASHA
        trials only report results that hold the sweep metric), in step order."""
        for step, metrics in tdir.history():
            self._log(run_id, metrics, step)

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
        t, tdir = self.ctx.describe(trial.config)
        prev = self.existing.get(str(tdir))
        if prev is not None:  # --resume: the interrupted sweep's child run continues
            run_id, status, last = (tuple(prev) + (None,))[:3]
            self.runs[trial.trial_id] = run_id
            if status == "FINISHED" and tdir.finished:
                self.kept.add(trial.trial_id)
                return
            self._safe("reopen_run", self.tracker.reopen_run, run_id)
            # where its history continues: read when the sweep (re)started, while the store answered
            if last is None:
                last = self._safe("last_steps", self.tracker.last_steps, run_id)
            self.last[run_id] = dict(last or {})
            return
        try:
            flat = C.flatten(C.to_dict(self.ctx.spec.trial_config(t.params)))
        except C.ConfigError:
            flat = dict(t.params)
        # drifting.row: the row without the seed (a report's row is the mean of its seeds)
        tags = {TAG_ROW: t.row_label, TAG_SEED: t.seed, TAG_TRIAL_DIR: str(tdir), "drifting.trial_id": trial.trial_id}
        tags.update(pinned_encoder_tags(t.params.get("encoder.source")))
        run_id = self._safe("start_trial", self.tracker.start_trial, self.parent_id, t.label, flat, tags)
        if run_id is not None:
            self.runs[trial.trial_id] = run_id

    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or result.get("final") or trial.trial_id in self.kept:
            return
        metrics = result_metrics(result)
        if metrics:
            self._log(run_id, metrics, int(result.get("step", 0)))

    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or trial.trial_id in self.kept:
            return
        _, tdir = self.ctx.describe(trial.config)
        self._backfill(run_id, tdir)
        summary = tdir.summary()
        if summary is not None:
            self._log(run_id, rundir.numeric(summary), int(summary.get("steps", 0)))
            paths = tdir.artifacts()
            if paths:
                self._safe("log_artifacts", self.tracker.log_artifacts, run_id, paths)
            self._end(run_id, "FINISHED")
        elif interrupted(self.interrupt):  # stopped by Ctrl-C / SIGTERM: resumed later
            self._end(run_id, "KILLED")
        else:  # stopped early by the scheduler: done, and not to be resumed
            tdir.mark_stopped(int((trial.last_result or {}).get("step", 0)))
            self._end(run_id, "PRUNED", "stopped early by the scheduler (ASHA)")

    def _end(self, run_id: str, status: str, error: Optional[str] = None) -> None:
        self._safe("end_run", self.tracker.end_run, run_id, status, error)
        (self.killed if status == "KILLED" else self.ended).add(run_id)

    def kill_open_runs(self) -> None:
        """An interrupted sweep: every child run this attempt opened or reopened and did not
        end (its trial was running or restarting) ends KILLED; the finished ones stay."""
        for trial_id, run_id in self.runs.items():
            if trial_id in self.kept or run_id in self.ended or run_id in self.killed:
                continue
            self._end(run_id, "KILLED")

    def on_trial_error(self, iteration, trials, trial, **info):
        text = trial_error(trial)
        self.errors[trial.trial_id] = text
        run_id = self.runs.get(trial.trial_id)
        if run_id is not None:
            self._backfill(run_id, self.ctx.describe(trial.config)[1])
            self._end(run_id, "FAILED", text)


def interrupted(interrupt: Any) -> bool:
    return getattr(interrupt, "signum", None) is not None


class ProgressCallback(Callback):
    """One console line per trial as it ends: `[3/6] FINISHED  V+ - 1.5 V-  fid=182.6  (6 steps, 12 s)`.

    States: FINISHED, PRUNED (stopped early by the scheduler), FAILED, KILLED (interrupted).
    """

    def __init__(self, ctx: SweepContext, *, total: int, metric: str, done: int = 0, interrupt: Any = None, stream=None):
        self.ctx, self.total, self.metric, self.interrupt = ctx, total, metric, interrupt
        self.count = 0  # trials ended in this attempt (not counting KILLED)
        self.base = done  # done in an earlier attempt (Optuna resume)
        self.stream = stream
        self.started: dict[str, float] = {}

    def on_trial_start(self, iteration, trials, trial, **info):
        self.started.setdefault(trial.trial_id, time.monotonic())

    def _line(self, trial, state: str, detail: str = "", seconds: Optional[float] = None) -> None:
        if state != "KILLED":
            self.count += 1
        try:
            label = self.ctx.describe(trial.config)[0].label
        except Exception:  # noqa: BLE001 - a line must not stop the sweep
            label = str(trial)
        if seconds is None:
            seconds = max(0.0, time.monotonic() - self.started.get(trial.trial_id, time.monotonic()))
        n = f"[{self.base + self.count}/{self.total}]" if state != "KILLED" else "[-/-]"
        parts = [f"{n} {state:<8s}  {label}", detail, f"{seconds:.0f} s"]
        print("  ".join(p for p in parts if p), file=self.stream or sys.stdout, flush=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        _, tdir = self.ctx.describe(trial.config)
        summary = tdir.summary()
        last = trial.last_result or {}
        if summary is not None:
            value = summary.get(self.metric)
            detail = [f"{self.metric}={value:.4g}"] if isinstance(value, (int, float)) else []
            detail += [f"{int(summary['steps'])} steps"] if isinstance(summary.get("steps"), (int, float)) else []
            secs = summary.get("seconds")
            self._line(trial, "FINISHED", "  ".join(detail), secs if isinstance(secs, (int, float)) else None)
        elif interrupted(self.interrupt):
            self._line(trial, "KILLED", f"at step {int(last.get('step', 0))}; resumed by --resume")
        else:
            value = last.get(self.metric)
            detail = f"{self.metric}={value:.4g} " if isinstance(value, (int, float)) else ""
            self._line(trial, "PRUNED", f"{detail}at step {int(last.get('step', 0))}")

    def on_trial_error(self, iteration, trials, trial, **info):
        text = trial_error(trial).strip().splitlines()
        self._line(trial, "FAILED", (text[-1] if text else "")[:200])


def trial_error(trial) -> str:
    """The error text of a failed Tune trial (its last 4000 characters)."""
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
