"""``SweepTracker``: the MLflow client wrapper every write and read of runs goes through.

It writes through ``MlflowClient`` only (no ``mlflow.start_run`` global state), so it is safe
in a long-lived driver such as a Ray Tune callback. A sweep is one parent run (tags
``drifting.sweep=true``, ``drifting.sweep_name``); each trial is one child run (tag
``mlflow.parentRunId``). Every write is retried while SQLite says "database is locked"
(``store.with_retry``) and cleaned to MLflow's limits (``store.clean_params`` /
``clean_tags``). Uploading a run's ``summary.json`` also tags the artifacts it used
(``tags.artifact_tags``). ``mlflow`` is imported on first use of the client.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

from ..storage import configure_mlflow_env
from .store import (
    MAX_ERROR_LENGTH, MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH, clean_params, clean_tags, default_artifact_root,
    dir_name, finite_float, mask_url_credentials, metric_key, mlflow_client, root_uri, tracking_uri, with_retry,
)
from .tags import TAG_ERROR, TAG_EXPERIMENT, TAG_PARENT, TAG_ROW, TAG_STATE, TAG_SWEEP, TAG_SWEEP_NAME, TAG_TRIAL, summary_file_tags

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
# our trial states that MLflow has no status for: MLflow status, recorded in tag drifting.state
STATE_STATUS = {"PRUNED": "KILLED"}


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _now_ms() -> int:
    return int(time.time() * 1000)


class SweepTracker:
    """Parent run per sweep, child run per trial, through ``MlflowClient`` only.

    ``experiment`` is the MLflow experiment (created on first use); when None, each
    ``start_sweep(name, ...)`` uses ``name`` as the experiment. ``uri`` defaults to
    ``tracking_uri()``. Every method is a plain synchronous write, retried on SQLite locks.
    """

    def __init__(self, experiment: Optional[str] = None, *, uri: Optional[str] = None):
        self.experiment = experiment
        self.uri = uri or tracking_uri()
        self._client = None
        self._experiment_ids: dict[str, str] = {}

    def __repr__(self) -> str:
        return f"SweepTracker(experiment={self.experiment!r}, uri={self.uri!r})"

    # -- plumbing
    @property
    def client(self):
        """The underlying ``mlflow.MlflowClient`` (created on first use)."""
        if self._client is None:
            configure_mlflow_env()  # s3:// artifacts: MLFLOW_S3_ENDPOINT_URL from AWS_ENDPOINT_URL
            self._client = mlflow_client(self.uri)
        return self._client

    def experiment_id(self, experiment: Optional[str] = None, *, create: bool = True) -> Optional[str]:
        """The id of ``experiment`` (default: this tracker's), created when missing."""
        name = experiment or self.experiment
        if not name:
            raise ValueError("no experiment: pass SweepTracker(experiment) or a name")
        if name in self._experiment_ids:
            return self._experiment_ids[name]
        exp = with_retry(self.client.get_experiment_by_name, name)
        if exp is None:
            if not create:
                return None
            root = default_artifact_root(self.uri)
            location = root_uri(root, dir_name(name)) if root is not None else None
            try:
                exp_id = with_retry(self.client.create_experiment, name, artifact_location=location)
            except Exception:  # noqa: BLE001 - created concurrently by another process?
                exp = with_retry(self.client.get_experiment_by_name, name)
                if exp is None:
                    raise
                exp_id = exp.experiment_id
        else:
            if getattr(exp, "lifecycle_stage", "active") == "deleted":
                with_retry(self.client.restore_experiment, exp.experiment_id)
            exp_id = exp.experiment_id
        self._experiment_ids[name] = exp_id
        return exp_id

    def create_run(self, experiment: str, run_name: str, tags: dict[str, str]) -> str:
        """Create a top-level run named ``run_name`` with ``tags`` (already clean) in
        ``experiment``; returns its id."""
        exp_id = self.experiment_id(experiment)
        run = with_retry(self.client.create_run, exp_id, start_time=_now_ms(), tags=tags, run_name=run_name)
        return run.info.run_id

    # -- runs
    def start_sweep(
        self,
        name: str,
        params: Optional[Mapping[str, Any]] = None,
        tags: Optional[Mapping[str, Any]] = None,
        resume_run_id: Optional[str] = None,
    ) -> str:
        """Create the parent run of a sweep (or reopen ``resume_run_id``); returns its id.

        Tags: ``drifting.sweep=true`` (what ``find_latest_sweep`` looks for),
        ``drifting.sweep_name`` (``tags["drifting.sweep"]`` when the caller passed a sweep
        instance name there, else ``name``) and ``drifting.experiment``."""
        experiment = self.experiment or name
        user = clean_tags(tags)
        sweep_name = user.pop(TAG_SWEEP, None)
        if sweep_name in (None, "", "true", "True"):
            sweep_name = user.get(TAG_SWEEP_NAME) or name
        all_tags = {**user, TAG_SWEEP: "true", TAG_SWEEP_NAME: sweep_name, TAG_EXPERIMENT: experiment}
        if resume_run_id:
            self.reopen_run(resume_run_id)
            self.set_tags(resume_run_id, all_tags)
            run_id = resume_run_id
        else:
            run_id = self.create_run(experiment, sweep_name, all_tags)
        if params:
            self.log_params(run_id, params)
        return run_id

    def start_trial(
        self,
        parent_id: str,
        trial_name: str,
        params: Optional[Mapping[str, Any]] = None,
        tags: Optional[Mapping[str, Any]] = None,
    ) -> str:
        """Create a child run of ``parent_id`` named ``trial_name`` (same experiment); returns its id.

        Tags: ``mlflow.parentRunId``, ``drifting.trial`` and ``drifting.row`` (default
        ``trial_name``) unless given."""
        parent = with_retry(self.client.get_run, parent_id)
        all_tags = {TAG_ROW: trial_name, **clean_tags(tags), TAG_PARENT: parent_id, TAG_TRIAL: trial_name}
        run = with_retry(
            self.client.create_run, parent.info.experiment_id, start_time=_now_ms(), tags=all_tags, run_name=trial_name
        )
        run_id = run.info.run_id
        if params:
            self.log_params(run_id, params)
        return run_id

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int = 0, *, timestamp_ms: Optional[int] = None) -> int:
        """Log the finite numeric values of ``metrics`` at ``step`` (one batch); returns how many."""
        from mlflow.entities import Metric

        ts = timestamp_ms if timestamp_ms is not None else _now_ms()
        entries = []
        for k, v in (metrics or {}).items():
            f = finite_float(v)
            if f is not None:
                entries.append(Metric(metric_key(k), f, ts, int(step)))
        for chunk in _chunks(entries, MAX_METRICS_PER_BATCH):
            with_retry(self.client.log_batch, run_id, metrics=chunk)
        return len(entries)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> dict[str, str]:
        """Log params (flattened, stringified, truncated, credentials dropped); returns what was logged.

        MLflow params are immutable: keys the run already has are skipped (a differing value
        is logged as a warning, not an error), so resuming a run is safe."""
        from mlflow.entities import Param

        clean = clean_params(params)
        if not clean:
            return {}
        existing = with_retry(self.client.get_run, run_id).data.params
        todo = {}
        for k, v in clean.items():
            if k in existing:
                if existing[k] != v:
                    log.warning("tracking: param %s of run %s is already %r; not changed to %r", k, run_id, existing[k], v)
                continue
            todo[k] = v
        items = [Param(k, v) for k, v in todo.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            with_retry(self.client.log_batch, run_id, params=chunk)
        return todo

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        """Set tags (stringified, truncated; credential-looking keys dropped)."""
        from mlflow.entities import RunTag

        items = [RunTag(k, v) for k, v in clean_tags(tags).items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            with_retry(self.client.log_batch, run_id, tags=chunk)

    def log_artifacts(
        self, run_id: str, paths: Union[PathLike, Iterable[PathLike]], artifact_path: Optional[str] = None
    ) -> list[str]:
        """Upload files / directories; returns the artifact paths written.

        A single directory: its contents go under ``artifact_path`` (like
        ``MlflowClient.log_artifacts``). A list: each file goes under ``artifact_path``, each
        directory under ``artifact_path/<dir name>``. Missing paths are skipped (logged)."""
        single_dir = isinstance(paths, (str, os.PathLike)) and Path(paths).is_dir()
        items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
        done: list[str] = []
        # a run's summary.json names the artifacts it used (model.init, encoder source): tag them
        tags = summary_file_tags(Path(p) for p in items)
        if tags:
            self.set_tags(run_id, tags)
        for item in items:
            p = Path(item)
            if not p.exists():
                log.warning("tracking: artifact %s does not exist; skipped", p)
                continue
            if p.is_dir():
                dest = artifact_path if single_dir else "/".join(x for x in (artifact_path, p.name) if x)
                with_retry(self.client.log_artifacts, run_id, str(p), dest or None)
                done.append(dest or ".")
            else:
                with_retry(self.client.log_artifact, run_id, str(p), artifact_path)
                done.append("/".join(x for x in (artifact_path, p.name) if x))
        return done

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        """Write ``text`` as the artifact ``artifact_file`` (e.g. ``table.md``)."""
        with_retry(self.client.log_text, run_id, text, artifact_file)

    def log_dict(self, run_id: str, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        """Write ``dictionary`` as JSON (or YAML for .yaml/.yml) artifact ``artifact_file``."""
        with_retry(self.client.log_dict, run_id, dict(dictionary), artifact_file)

    def end_run(self, run_id: str, status: str = "FINISHED", error: Optional[str] = None) -> None:
        """Terminate a run as FINISHED, FAILED or KILLED, or PRUNED (a trial stopped early by
        the scheduler: KILLED with tag ``drifting.state=PRUNED``); ``error`` goes to tag
        ``drifting.error`` (its last ``MAX_ERROR_LENGTH`` characters: the end of a traceback
        is what matters)."""
        status = str(status).upper()
        if status in STATE_STATUS:
            with_retry(self.client.set_tag, run_id, TAG_STATE, status)
            status = STATE_STATUS[status]
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES + tuple(STATE_STATUS)}, got {status!r}")
        if error:
            text = mask_url_credentials(str(error))
            if len(text) > MAX_ERROR_LENGTH:
                text = "..." + text[-(MAX_ERROR_LENGTH - 3):]
            with_retry(self.client.set_tag, run_id, TAG_ERROR, text)
        with_retry(self.client.set_terminated, run_id, status=status, end_time=_now_ms())

    # -- reading
    def get_run(self, run_id: str):
        return with_retry(self.client.get_run, run_id)

    def find_latest_sweep(self, experiment: Optional[str] = None):
        """The most recently started parent run (tag ``drifting.sweep=true``) of ``experiment``
        (default: this tracker's), or None."""
        return self._latest_parent(experiment)

    def child_runs(self, parent_id: str) -> list:
        """Every child run of ``parent_id``, in start order."""
        parent = with_retry(self.client.get_run, parent_id)
        out, token = [], None
        while True:
            page = with_retry(
                self.client.search_runs,
                [parent.info.experiment_id],
                filter_string=f"tags.`{TAG_PARENT}` = '{parent_id}'",
                order_by=["attributes.start_time ASC"],
                max_results=1000,
                page_token=token,
            )
            out.extend(page)
            token = getattr(page, "token", None)
            if not token:
                break
        out.sort(key=lambda r: (r.info.start_time or 0))
        return out

    def find_child(self, parent_id: str, key: str, value: str) -> Optional[str]:
        """The id of the child run of ``parent_id`` whose tag ``key`` is ``value``, or None."""
        parent = with_retry(self.client.get_run, parent_id)
        runs = with_retry(
            self.client.search_runs, [parent.info.experiment_id],
            filter_string=f"tags.`{TAG_PARENT}` = '{parent_id}' and tags.`{key}` = '{value}'", max_results=1,
        )
        return runs[0].info.run_id if runs else None

    def artifact_paths(self, run_id: str, path: Optional[str] = None) -> list[str]:
        """The artifact paths directly under ``path`` (default: the run's root) of a run."""
        return [a.path for a in with_retry(self.client.list_artifacts, run_id, path)]

    def download_artifact(self, run_id: str, path: str, dst_dir: PathLike) -> Path:
        """Download artifact ``path`` of a run into the local folder ``dst_dir``; returns the file."""
        Path(dst_dir).mkdir(parents=True, exist_ok=True)
        # no "Downloading artifacts" bar: a report downloads one picture per row
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        return Path(with_retry(self.client.download_artifacts, run_id, path, str(dst_dir)))

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """``[(step, value), ...]`` of one metric, sorted by step then time."""
        hist = with_retry(self.client.get_metric_history, run_id, key)
        return [(m.step, m.value) for m in sorted(hist, key=lambda m: (m.step, m.timestamp))]

    def find_sweep_run(self, experiment: str, sweep_name: str):
        """The parent run of sweep instance ``sweep_name`` (tag ``drifting.sweep_name``) in
        ``experiment``, or None: what ``--resume`` reopens."""
        return self._latest_parent(self.experiment or experiment, f" and tags.`{TAG_SWEEP_NAME}` = '{sweep_name}'")

    def _latest_parent(self, experiment: Optional[str], also: str = ""):
        """The most recently started sweep parent run of `experiment` matching the extra
        filter `also` (" and tags.`...` = '...'"), or None."""
        exp_id = self.experiment_id(experiment, create=False)
        if exp_id is None:
            return None
        runs = with_retry(
            self.client.search_runs,
            [exp_id],
            filter_string=f"tags.`{TAG_SWEEP}` = 'true'{also}",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

    def reopen_run(self, run_id: str) -> None:
        """Mark a run RUNNING again (a resumed trial or sweep keeps its run); the error and
        state tags of how it ended before are dropped."""
        with_retry(self.client.update_run, run_id, status="RUNNING")
        self._drop_end_tags(run_id)

    def _drop_end_tags(self, run_id: str) -> None:
        tags = with_retry(self.client.get_run, run_id).data.tags
        for key in (TAG_ERROR, TAG_STATE):
            if key in tags:
                with_retry(self.client.delete_tag, run_id, key)

    def last_steps(self, run_id: str) -> dict[str, int]:
        """``{metric key: largest step logged}`` of a run: where a resumed history continues."""
        run = with_retry(self.client.get_run, run_id)
        out = {}
        for key in run.data.metrics:
            hist = with_retry(self.client.get_metric_history, run_id, key)
            if hist:
                out[key] = max(int(m.step) for m in hist)
        return out


def find_latest_sweep(experiment: str, *, uri: Optional[str] = None):
    """The latest parent run (an ``mlflow.entities.Run``) of ``experiment``, or None."""
    return SweepTracker(experiment, uri=uri).find_latest_sweep()


def child_runs(parent_id: str, *, uri: Optional[str] = None) -> list:
    """Every child run of ``parent_id``, in start order."""
    return SweepTracker(uri=uri).child_runs(parent_id)
