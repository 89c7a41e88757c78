"""Single-run tracking: ``track_run`` records one ``drifting-platform train`` run.

The run is a top-level run of its experiment with the config as params; the training loop's
reporter hook logs the metric history, and ``finish`` logs the summary's numbers, tags the
artifacts the run used (``tags.artifact_tags``) and uploads the run directory's files.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Optional, Union

from ..rundir import GRID, METRICS, SAMPLES, SUMMARY
from .client import SweepTracker
from .store import clean_tags, finite_float
from .tags import TAG_EXPERIMENT, artifact_tags

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

#: files of a run directory that ``track_run``'s ``finish`` uploads (checkpoints are not)
RUN_DIR_ARTIFACTS = (SAMPLES, GRID, SUMMARY, METRICS, "config.yaml", "config.json")


class TrackedRun(NamedTuple):
    """What ``track_run`` returns; unpacks as ``run_id, report, finish``."""

    run_id: str
    report: Callable[[int, Mapping[str, Any]], None]
    finish: Callable[..., None]


def track_run(
    experiment: str,
    run_name: str,
    params: Optional[Mapping[str, Any]] = None,
    *,
    uri: Optional[str] = None,
    tags: Optional[Mapping[str, Any]] = None,
) -> TrackedRun:
    """Track one ``train`` run: returns ``(run_id, report, finish)``.

    ``report(step, metrics)`` is the training loop's reporter hook (a failing write is logged,
    never raised). ``finish(summary=None, run_dir=None, *, status="FINISHED", error=None)``
    logs the summary's numbers as metrics at step ``summary["steps"]``, uploads
    ``RUN_DIR_ARTIFACTS`` found in ``run_dir`` and ends the run."""
    tracker = SweepTracker(experiment, uri=uri)
    run_id = tracker.create_run(experiment, run_name, {**clean_tags(tags), TAG_EXPERIMENT: experiment})
    if params:
        tracker.log_params(run_id, params)

    def report(step: int, metrics: Mapping[str, Any]) -> None:
        try:
            tracker.log_metrics(run_id, metrics, int(step))
        except Exception as exc:  # noqa: BLE001 - tracking must not stop training
            log.warning("tracking: log_metrics failed: %s", exc)

    def finish(
        summary: Optional[Mapping[str, Any]] = None,
        run_dir: Optional[PathLike] = None,
        *,
        status: str = "FINISHED",
        error: Optional[str] = None,
    ) -> None:
        if summary:
            step = int(finite_float(summary.get("steps")) or 0)
            tracker.log_metrics(run_id, summary, step)
            if artifact_tags(summary):
                tracker.set_tags(run_id, artifact_tags(summary))
        if run_dir is not None:
            files = [Path(run_dir) / f for f in RUN_DIR_ARTIFACTS if (Path(run_dir) / f).is_file()]
            if files:
                tracker.log_artifacts(run_id, files)
        tracker.end_run(run_id, status, error)

    return TrackedRun(run_id, report, finish)
