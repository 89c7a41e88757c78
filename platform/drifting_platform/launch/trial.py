"""One Tune trial: its directory's state (`TrialDir`) and the trial function (`run_trial`).

A trial directory (`<sweep dir>/<trial dirname>`) is a run directory of the training loop
plus the sweep's markers (file names in `rundir`):

    trial.json     which trial this is: {"label", "params", "config" (Tune's), "row", "seed"}
    summary.json   finished (the loop's final metrics)
    stopped.json   stopped early by the scheduler: done, never resumed
    fatal.json     a deterministic failure, so that Tune's retry fails at once
    checkpoint.pt  an earlier attempt's state: the trial continues from it

`run_trial` runs in the Tune trial process:
- `resources.workers: 1` runs `training_loop` in that process (no worker group);
- more workers fit a `TorchTrainer` inside the trial (Train V2 style; `TuneReportCallback`
  passes rank 0's reports to Tune).
It reports the loop's metrics every `train.log_every` steps (with `step`, the ASHA time
attribute) and a final result with the summary (fid / kid, or mmd ...) and `final: 1`.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

import torch
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from .. import config as C
from .. import rundir
from ..train import training_loop
from ..train.checkpoint import CheckpointError
from ..train.loop import TrainingDiverged
from .points import Trial, describe
from .ray_train import make_trainer, worker_cfg
from .spec import SweepSpec

# failures that a retry would only repeat (divergence, a bad config, a bad checkpoint)
DETERMINISTIC_ERRORS = (TrainingDiverged, C.ConfigError, CheckpointError)


class TrialDir:
    """The directory of one trial and every marker in it."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def finished(self) -> bool:
        return (self.path / rundir.SUMMARY).exists()

    @property
    def stopped(self) -> bool:
        return (self.path / rundir.STOPPED).exists()

    @property
    def done(self) -> bool:
        """Finished or stopped early: a resumed sweep does not run it again."""
        return self.finished or self.stopped

    @property
    def checkpoint(self) -> Optional[Path]:
        path = self.path / rundir.CHECKPOINT
        return path if path.exists() else None

    @property
    def fatal_error(self) -> Optional[str]:
        return (rundir.read_json(self.path / rundir.FATAL) or {}).get("error")

    def mark_fatal(self, exc: BaseException) -> None:
        rundir.write_json(self.path / rundir.FATAL, {"error": f"{type(exc).__name__}: {exc}"})

    def clear_fatal(self) -> None:
        (self.path / rundir.FATAL).unlink(missing_ok=True)

    def mark_stopped(self, step: int) -> None:
        rundir.write_json(self.path / rundir.STOPPED, {"step": int(step)})

    def write_record(self, trial: Trial, config: dict) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        rundir.write_json(self.path / rundir.TRIAL, {"label": trial.label, "params": trial.params, "config": config, "row": trial.row_label, "seed": trial.seed})

    def record(self) -> Optional[dict]:
        return rundir.read_json(self.path / rundir.TRIAL)

    def summary(self) -> Optional[dict]:
        return rundir.read_json(self.path / rundir.SUMMARY)

    def final_metrics(self) -> dict:
        """The numeric entries of summary.json ({} when the trial did not finish)."""
        return rundir.numeric(self.summary() or {})

    def clear_summary(self) -> None:
        (self.path / rundir.SUMMARY).unlink(missing_ok=True)

    def history(self) -> Iterator[tuple[int, dict]]:
        """(step, numeric metrics) of every readable line of metrics.jsonl, in file order."""
        for step, rec in rundir.read_metrics(self.path / rundir.METRICS):
            yield step, rundir.numeric(rec)

    def artifacts(self) -> list[str]:
        """The files a finished trial's run carries: samples, their grid, the summary."""
        return [str(self.path / n) for n in (rundir.SAMPLES, rundir.GRID, rundir.SUMMARY) if (self.path / n).exists()]


def trial_dirs(sweep_dir: str | Path) -> list[TrialDir]:
    """The directories of an Optuna sweep's points that an earlier attempt started."""
    return [TrialDir(p.parent) for p in sorted(Path(sweep_dir).glob(f"trial_*/{rundir.TRIAL}"))]


@dataclass
class SweepContext:
    """What every trial (and the tracking callback) needs; shipped once via with_parameters."""

    spec: SweepSpec
    sweep_dir: str
    resume: bool
    storage_root: Optional[str] = None  # --storage-path: this sweep's Ray storage (dir or s3://)

    def describe(self, config: dict) -> tuple[Trial, TrialDir]:
        """The trial that Tune runs with `config`, and its directory."""
        trial = describe(self.spec, config)
        return trial, TrialDir(Path(self.sweep_dir) / trial.dirname)


def tune_trial_names(ctx: SweepContext):
    """Tune's (trial_name_creator, trial_dirname_creator): a trial is named after its row /
    point as its directory is (`00_V+_-_V-`); Tune's own directory of it adds the trial id,
    so that it stays unique when Optuna suggests a point twice."""

    def name(trial) -> str:
        try:
            return ctx.describe(trial.config)[0].dirname
        except (KeyError, TypeError, ValueError):  # not one of our configs
            return f"trial_{trial.trial_id}"

    def dirname(trial) -> str:
        return f"{name(trial)}_{trial.trial_id}"

    return name, dirname


def quiet_exit_in_gc() -> None:
    """Ray ends a trial process at shutdown with SIGTERM, whose handler raises SystemExit; when
    that lands in a garbage-collector callback, Python prints it as an "Exception ignored"
    traceback that Ray forwards to the driver's console. Such an exit is not an error:
    drop it (every other unraisable exception is printed as before)."""
    previous = sys.unraisablehook
    if getattr(previous, "_drifting_quiet", False):
        return

    def hook(args) -> None:
        if not isinstance(args.exc_value, SystemExit):
            previous(args)

    hook._drifting_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def run_trial(config: dict, ctx: SweepContext) -> None:
    """The Tune trainable: train one trial's config in its directory, report to Tune."""
    quiet_exit_in_gc()
    # a pinned encoder downloaded from the registry in this process: no progress bars
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    trial, tdir = ctx.describe(config)
    res = ctx.spec.resources
    cpus = max(1, int(res.cpus_per_trial))
    cfg = worker_cfg(ctx.spec.trial_config(trial.params), gpu=bool(res.gpu), cpus_per_worker=cpus)
    tdir.path.mkdir(parents=True, exist_ok=True)
    fatal = tdir.fatal_error
    if fatal is not None and not ctx.resume:
        # a retry after a deterministic failure: fail again at once instead of re-training
        # into the same error
        raise RuntimeError(fatal)
    tdir.clear_fatal()
    tdir.write_record(trial, config)
    if tdir.finished:
        summary = tdir.summary()  # finished in an earlier attempt
    elif res.workers == 1:
        summary = _train_here(cfg, tdir, ctx.spec)
    else:
        tdir.clear_summary()
        trainer = make_trainer(
            cfg, tdir.path, workers=res.workers, gpu=bool(res.gpu), cpus_per_worker=cpus,
            storage_path=f"{ctx.storage_root}/{tdir.name}/ray" if ctx.storage_root else str(tdir.path / "ray"),
            name=f"train_{tune.get_context().get_trial_id()}", callbacks=[TuneReportCallback()],
            initial_checkpoint=str(tdir.checkpoint) if tdir.checkpoint else None,
        )
        result = trainer.fit()
        if result.error is not None:
            raise result.error
        summary = tdir.summary()
    tune.report({**rundir.numeric(summary), "step": int(cfg.train.steps), "final": 1})


def _train_here(cfg: C.Config, tdir: TrialDir, spec: SweepSpec) -> dict:
    """`training_loop` in the trial process, reporting to Tune; returns its summary."""
    if spec.resources.gpu:
        torch.cuda.set_device(0)
    # Optuna and ASHA read the sweep metric from every result: results that lack it
    # (between train.eval_every evaluations) stay in the run directory's metrics.jsonl
    needs_metric = spec.search == "optuna" or spec.scheduler.name == "asha"

    def reporter(step: int, metrics: dict) -> None:
        if needs_metric and (spec.metric.name not in metrics or step >= cfg.train.steps):
            # ...and the last step's result comes with the final summary: ASHA would stop
            # a trial at max_t before its final evaluation
            return
        tune.report({**{k: float(v) for k, v in metrics.items()}, "step": int(step)})

    # the trial directory belongs to this trial alone: a checkpoint there is from an
    # earlier attempt of it (a killed trial process, an interrupted sweep) - continue it
    try:
        return training_loop(cfg, tdir.path, reporter=reporter, resume=True, progress=False)
    except DETERMINISTIC_ERRORS as exc:
        tdir.mark_fatal(exc)
        raise
