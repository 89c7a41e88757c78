"""MLflow tracking: the one module of the package that imports ``mlflow``.

``mlflow`` is imported lazily (inside functions), so ``import drifting_platform.tracking`` is
cheap and the rest of the package never pays for it.

The store
    ``tracking_uri()`` is ``$MLFLOW_TRACKING_URI`` when set, else
    ``sqlite:///<drifting_home()>/mlflow.db`` with artifacts under
    ``<drifting_home()>/mlartifacts`` (absolute paths, so they survive ``ray job submit``'s
    temporary working directory). ``drifting_home()`` is ``$DRIFTING_HOME`` or
    ``~/.drifting_platform``. Experiments this module creates in any ``sqlite:///`` store get
    their artifact location next to the database (``<db dir>/mlartifacts/<experiment>``), never
    MLflow's cwd-relative ``./mlruns``; other stores (an MLflow server) choose for themselves.
    ``$DRIFTING_ARTIFACT_ROOT`` overrides this for any store: a local directory, or
    ``s3://bucket/prefix`` for S3-compatible object storage (endpoint and credentials from the
    AWS environment, see ``drifting_platform.storage``; the database stays where it is).

Runs
    ``SweepTracker`` writes through ``MlflowClient`` only (no ``mlflow.start_run`` global
    state), so it is safe in a long-lived driver such as a Ray Tune callback. A sweep is one
    parent run (tags ``drifting.sweep=true``, ``drifting.sweep_name``); each trial is one
    child run (tag ``mlflow.parentRunId``). Every write is retried while SQLite says
    "database is locked" (backoff, a few seconds at most). Params never carry credentials:
    keys that look like secrets are dropped and ``user:password@`` in URLs is masked. Uploading
    a run's ``summary.json`` also tags the artifacts it used (``artifact_tags``:
    ``drifting.model_init`` / ``_sha256`` for ``model.init``, ``drifting.encoder_source`` /
    ``drifting.encoder_sha256`` for the encoder).

``track_run`` records a single ``train`` run; ``serve_ui`` / ``ui_command`` run the MLflow UI
bound to 127.0.0.1.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional, Sequence, Union

from .home import drifting_home
from .rundir import slug

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]

# MLflow's limits (mlflow/utils/validation.py); repeated here so that we truncate instead of failing
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_KEY_LENGTH = 250
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_ERROR_LENGTH = 5000

RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")

TAG_SWEEP = "drifting.sweep"
TAG_SWEEP_NAME = "drifting.sweep_name"
TAG_EXPERIMENT = "drifting.experiment"
TAG_ROW = "drifting.row"
TAG_TRIAL = "drifting.trial"
TAG_ERROR = "drifting.error"
TAG_PARENT = "mlflow.parentRunId"

# a key (any dotted component) that looks like a credential; `token` only as a whole word so
# that model keys such as `style_tokens` survive
_SECRET_KEY_RE = re.compile(
    r"secret|passw(or)?d|credential|access_?key|key_?id|api_?key|private_?key|auth_?header"
    r"|(^|[^a-z])token($|[^a-z])",
    re.IGNORECASE,
)
_URL_USERINFO_RE = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@\s:]+:[^/@\s]+@")
_LOCKED_MARKERS = ("database is locked", "database table is locked", "database is busy")

# retry schedule for SQLite lock errors: about 4 s in all
_RETRY_DELAYS = (0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.5)


# --------------------------------------------------------------------------- the store


def default_tracking_uri() -> str:
    """``sqlite:///<drifting_home>/mlflow.db`` (absolute)."""
    return f"sqlite:///{drifting_home() / 'mlflow.db'}"


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else ``default_tracking_uri()``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def _sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` URI (None for other stores or in-memory)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):].split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest if rest.startswith("/") else rest).expanduser().resolve()


def default_artifact_root(uri: Optional[str] = None) -> Optional[Union[Path, str]]:
    """Where artifacts of experiments this module creates in store ``uri`` go.

    ``$DRIFTING_ARTIFACT_ROOT`` when set (a URI such as ``s3://bucket/prefix`` is returned as
    a str, a local directory as an absolute Path); else ``<drifting_home>/mlartifacts`` for the
    default store, ``<db dir>/mlartifacts`` for any other ``sqlite:///`` store, None (the server
    decides) otherwise."""
    env_root = (os.environ.get("DRIFTING_ARTIFACT_ROOT") or "").strip()
    if env_root:
        if "://" in env_root:
            from .storage import check_no_credentials

            check_no_credentials(env_root, "DRIFTING_ARTIFACT_ROOT")
            return env_root.rstrip("/")
        return Path(env_root).expanduser().resolve()
    uri = uri or tracking_uri()
    if uri == default_tracking_uri():
        return drifting_home() / "mlartifacts"
    db = _sqlite_path(uri)
    return db.parent / "mlartifacts" if db is not None else None


def _slug(name: str) -> str:
    return slug(name, strip="._", default="experiment")


def _root_uri(root: Union[Path, str], *parts: str) -> str:
    """A ``default_artifact_root`` (Path or URI) joined with ``parts``, as a URI."""
    if isinstance(root, Path):
        return root.joinpath(*parts).as_uri()
    return "/".join([root.rstrip("/"), *parts])


# --------------------------------------------------------------------------- helpers


def _is_locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(m in text for m in _LOCKED_MARKERS)


def with_retry(fn: Callable[..., Any], *args: Any, delays: Sequence[float] = _RETRY_DELAYS, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, retried with backoff while it fails with SQLite's
    "database is locked"; any other error, or the last lock error, propagates."""
    for attempt in range(len(delays) + 1):
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - MlflowException / sqlalchemy / sqlite3
            if not _is_locked(exc) or attempt == len(delays):
                raise
            log.debug("tracking store locked (%s); retry in %.2fs", exc, delays[attempt])
            time.sleep(delays[attempt])
    raise AssertionError("unreachable")  # pragma: no cover


def is_secret_key(key: str) -> bool:
    """True when any dotted component of ``key`` looks like a credential name."""
    return any(_SECRET_KEY_RE.search(part) for part in re.split(r"[./]", str(key)))


def mask_url_credentials(text: str) -> str:
    """``s3://user:pass@host/x`` -> ``s3://***@host/x``."""
    return _URL_USERINFO_RE.sub(r"\1***@", text)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> ``{"a.b.c": value}`` (lists and other values are kept as leaves)."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            if v:
                out.update(flatten_params(v, key + "."))
            else:
                out[key] = "{}"
        else:
            out[key] = v
    return out


def _stringify(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, (list, tuple)):
        try:
            text = json.dumps(list(value))
        except (TypeError, ValueError):
            text = str(list(value))
    else:
        text = str(value)
    return mask_url_credentials(text)


def clean_params(params: Optional[Mapping[str, Any]]) -> dict[str, str]:
    """Flatten, drop credential-looking keys, stringify and truncate to MLflow's limits."""
    out: dict[str, str] = {}
    for key, value in flatten_params(params or {}).items():
        if is_secret_key(key):
            continue
        out[str(key)[:MAX_KEY_LENGTH]] = _stringify(value)[:MAX_PARAM_VAL_LENGTH]
    return out


def _clean_tags(tags: Optional[Mapping[str, Any]]) -> dict[str, str]:
    return {
        str(k)[:MAX_KEY_LENGTH]: _stringify(v)[:MAX_TAG_VAL_LENGTH]
        for k, v in (tags or {}).items()
        if v is not None and not is_secret_key(k)
    }


def _as_float(value: Any) -> Optional[float]:
    """A finite float, or None for non-numeric / non-finite values."""
    if isinstance(value, (str, bytes)) or value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: multi-element tensors
        return None
    return f if math.isfinite(f) else None


def _metric_key(key: str) -> str:
    # MLflow allows alphanumerics, _ - . space : / ; anything else becomes _
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", str(key))[:MAX_KEY_LENGTH]


def _chunks(items: list, n: int) -> Iterable[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- sweeps


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
            from mlflow import MlflowClient

            from .storage import configure_mlflow_env

            configure_mlflow_env()  # s3:// artifacts: MLFLOW_S3_ENDPOINT_URL from AWS_ENDPOINT_URL
            self._client = MlflowClient(tracking_uri=self.uri)
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
            location = _root_uri(root, _slug(name)) if root is not None else None
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

    def _create_run(self, experiment: str, run_name: str, tags: dict[str, str]) -> str:
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
        user = _clean_tags(tags)
        sweep_name = user.pop(TAG_SWEEP, None)
        if sweep_name in (None, "", "true", "True"):
            sweep_name = user.get(TAG_SWEEP_NAME) or name
        all_tags = {**user, TAG_SWEEP: "true", TAG_SWEEP_NAME: sweep_name, TAG_EXPERIMENT: experiment}
        if resume_run_id:
            with_retry(self.client.update_run, resume_run_id, status="RUNNING")
            self.set_tags(resume_run_id, all_tags)
            run_id = resume_run_id
        else:
            run_id = self._create_run(experiment, sweep_name, all_tags)
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
        all_tags = {TAG_ROW: trial_name, **_clean_tags(tags), TAG_PARENT: parent_id, TAG_TRIAL: trial_name}
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
            f = _as_float(v)
            if f is not None:
                entries.append(Metric(_metric_key(k), f, ts, int(step)))
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

        items = [RunTag(k, v) for k, v in _clean_tags(tags).items()]
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
        tags = _summary_file_tags(Path(p) for p in items)
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
        """Terminate a run as FINISHED, FAILED or KILLED; ``error`` goes to tag ``drifting.error``
        (its last ``MAX_ERROR_LENGTH`` characters: the end of a traceback is what matters)."""
        status = str(status).upper()
        if status not in RUN_STATUSES:
            raise ValueError(f"status must be one of {RUN_STATUSES}, got {status!r}")
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
        exp_id = self.experiment_id(experiment, create=False)
        if exp_id is None:
            return None
        runs = with_retry(
            self.client.search_runs,
            [exp_id],
            filter_string=f"tags.`{TAG_SWEEP}` = 'true'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

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

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """``[(step, value), ...]`` of one metric, sorted by step then time."""
        hist = with_retry(self.client.get_metric_history, run_id, key)
        return [(m.step, m.value) for m in sorted(hist, key=lambda m: (m.step, m.timestamp))]

    def find_sweep_run(self, experiment: str, sweep_name: str):
        """The parent run of sweep instance ``sweep_name`` (tag ``drifting.sweep_name``) in
        ``experiment``, or None: what ``--resume`` reopens."""
        exp_id = self.experiment_id(self.experiment or experiment, create=False)
        if exp_id is None:
            return None
        runs = with_retry(
            self.client.search_runs,
            [exp_id],
            filter_string=f"tags.`{TAG_SWEEP}` = 'true' and tags.`{TAG_SWEEP_NAME}` = '{sweep_name}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

    def reopen_run(self, run_id: str) -> None:
        """Mark a run RUNNING again (a resumed trial or sweep keeps its run)."""
        with_retry(self.client.update_run, run_id, status="RUNNING")

    def last_steps(self, run_id: str) -> dict[str, int]:
        """``{metric key: largest step logged}`` of a run: where a resumed history continues."""
        run = with_retry(self.client.get_run, run_id)
        out = {}
        for key in run.data.metrics:
            hist = with_retry(self.client.get_metric_history, run_id, key)
            if hist:
                out[key] = max(int(m.step) for m in hist)
        return out


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached or written: raised before any training starts."""


def check_tracking_store(uri: Optional[str] = None, *, timeout: float = 5.0) -> str:
    """Make sure the tracking store ``uri`` (default ``tracking_uri()``) is usable; returns it.

    An ``http(s)://`` server must answer its ``/health`` endpoint within ``timeout`` seconds;
    a ``sqlite:///`` store's folder must be creatable and writable. Raises
    ``TrackingUnavailable`` with the (credential-masked) URI and what to do otherwise."""
    import urllib.error

    uri = uri or tracking_uri()
    shown = mask_url_credentials(uri)
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - the user's server
                if resp.status >= 400:
                    raise TrackingUnavailable(f"MLflow tracking server {shown} answered HTTP {resp.status} on /health")
        except TrackingUnavailable:
            raise
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):  # reachable; authentication is MLflow's business
                return uri
            raise TrackingUnavailable(f"MLflow tracking server {shown} answered HTTP {exc.code} on /health") from None
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise TrackingUnavailable(
                f"MLflow tracking server {shown} is unreachable ({reason}). Start it, fix MLFLOW_TRACKING_URI, "
                f"or unset it to use the local store {default_tracking_uri()}. Nothing was started."
            ) from None
        return uri
    db = _sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingUnavailable(f"tracking store {shown}: cannot create {db.parent} ({exc.strerror}). Nothing was started.") from None
        if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingUnavailable(f"tracking store {shown}: {db} is not writable. Nothing was started.")
    return uri


def find_latest_sweep(experiment: str, *, uri: Optional[str] = None):
    """The latest parent run (an ``mlflow.entities.Run``) of ``experiment``, or None."""
    return SweepTracker(experiment, uri=uri).find_latest_sweep()


def child_runs(parent_id: str, *, uri: Optional[str] = None) -> list:
    """Every child run of ``parent_id``, in start order."""
    return SweepTracker(uri=uri).child_runs(parent_id)


# --------------------------------------------------------------------------- single runs

#: files of a run directory that ``track_run``'s ``finish`` uploads (checkpoints are not)
RUN_DIR_ARTIFACTS = ("samples.npz", "samples.png", "summary.json", "metrics.jsonl", "config.yaml", "config.json")


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
    run_id = tracker._create_run(experiment, run_name, {**_clean_tags(tags), TAG_EXPERIMENT: experiment})
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
            step = int(_as_float(summary.get("steps")) or 0)
            tracker.log_metrics(run_id, summary, step)
            if artifact_tags(summary):
                tracker.set_tags(run_id, artifact_tags(summary))
        if run_dir is not None:
            files = [Path(run_dir) / f for f in RUN_DIR_ARTIFACTS if (Path(run_dir) / f).is_file()]
            if files:
                tracker.log_artifacts(run_id, files)
        tracker.end_run(run_id, status, error)

    return TrackedRun(run_id, report, finish)


# --------------------------------------------------------------------------- UI


def ui_command(*, port: int = 5000, host: str = "127.0.0.1", uri: Optional[str] = None, workers: int = 1) -> list[str]:
    """``python -m mlflow ui`` for store ``uri`` (default ``tracking_uri()``), bound to ``host``."""
    uri = uri or tracking_uri()
    cmd = [
        sys.executable, "-m", "mlflow", "ui",
        "--backend-store-uri", uri,
        "--host", host,
        "--port", str(int(port)),
        "--workers", str(int(workers)),
    ]
    root = default_artifact_root(uri)
    if root is not None:
        cmd += ["--default-artifact-root", _root_uri(root)]
    return cmd


class UIProcess(subprocess.Popen):
    """The ``serve_ui`` process. It leads its own process group (the MLflow CLI plus the uvicorn
    server it spawns), and ``terminate()`` / ``kill()`` signal that whole group, so stopping it
    never leaves a server behind."""

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None:
            return
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            super().send_signal(sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def serve_ui(
    *,
    port: int = 5000,
    host: str = "127.0.0.1",
    uri: Optional[str] = None,
    wait: Optional[float] = None,
    log_path: Optional[PathLike] = None,
    jobs: bool = False,
) -> UIProcess:
    """Start the MLflow UI in the background (its own process group); returns the process
    (a ``subprocess.Popen`` whose ``terminate()`` stops the whole group).

    With ``wait`` (seconds), block until ``http://host:port/`` answers 200, else stop it and
    raise ``TimeoutError``. Output goes to ``log_path`` (default: discarded). Stop it with
    ``stop_ui(proc)``, which also ends the server's worker processes. ``jobs=False`` (unless
    ``$MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` is set) turns off MLflow's server-side job executor,
    which browsing runs does not need; it halves the start-up time."""
    uri = uri or tracking_uri()
    root = default_artifact_root(uri)
    if isinstance(root, Path):
        root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if not jobs:
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = UIProcess(
            ui_command(port=port, host=host, uri=uri),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env,
        )
    finally:
        if log_path:
            out.close()
    if wait:
        if not wait_for_ui(f"http://{_url_host(host)}:{port}/", timeout=wait, proc=proc):
            stop_ui(proc)
            raise TimeoutError(f"MLflow UI did not answer on {host}:{port} within {wait:g}s")
    return proc


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def wait_for_ui(url: str, *, timeout: float = 30.0, proc: Optional[subprocess.Popen] = None) -> bool:
    """Poll ``url`` until it answers HTTP 200 (True) or ``timeout`` passes / ``proc`` exits (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - local URL
                if resp.status == 200:
                    return True
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.3)
    return False


def stop_ui(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a ``serve_ui`` process and its process group (SIGTERM, then SIGKILL)."""
    if proc.poll() is not None:
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    own = pgid == proc.pid  # serve_ui starts a new session, so the group is ours alone
    try:
        os.killpg(pgid, signal.SIGTERM) if own else proc.terminate()
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL) if own else proc.kill()
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass
    if own:  # workers that outlived the CLI process
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# --------------------------------------------------------------------------- encoder registry

ENCODER_EXPERIMENT = "encoders"
TAG_CONFIG_HASH = "drifting.config_hash"
TAG_REGISTERED = "drifting.registered_model"
_MODEL_URI_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:/(?P<version>[^/]+)|@(?P<alias>[^/]+))$")


def _registry_client(uri: Optional[str] = None):
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def record_pretrain(
    config: Mapping[str, Any],
    run_dir: PathLike,
    summary: Mapping[str, Any],
    *,
    name: str,
    config_hash: str,
    register: bool = True,
    experiment: str = ENCODER_EXPERIMENT,
    run_name: Optional[str] = None,
    uri: Optional[str] = None,
    tags: Optional[Mapping[str, Any]] = None,
) -> dict:
    """Track one finished encoder pre-training job and register its weights.

    One run in ``experiment`` with the config as params, the metric history of
    ``run_dir/metrics.jsonl``, the summary's numbers, and the artifacts ``encoder/``,
    ``summary.json`` and ``metrics.jsonl``. With ``register``, a new version of registered
    model ``name`` whose source is ``runs:/<run id>/encoder``, tagged with the config hash
    (how sweeps find a reusable version), the objective and the probe accuracy. Returns
    {"run_id", "name", "version", "uri"} (uri: ``models:/name/version``, or the run's
    artifact URI when not registered).
    """
    run_dir = Path(run_dir)
    tracker = SweepTracker(experiment, uri=uri)
    meta = json.loads((run_dir / "encoder" / "encoder.json").read_text())
    run_tags = {**_clean_tags(tags), TAG_EXPERIMENT: experiment, TAG_CONFIG_HASH: config_hash, "drifting.objective": meta.get("objective", "")}
    run_id = tracker._create_run(experiment, run_name or name, run_tags)
    try:
        tracker.log_params(run_id, config)
        metrics_file = run_dir / "metrics.jsonl"
        if metrics_file.is_file():
            for line in metrics_file.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                tracker.log_metrics(run_id, {k: v for k, v in row.items() if k != "step"}, int(row.get("step", 0)))
        tracker.log_metrics(run_id, {k: v for k, v in summary.items() if k != "steps"}, int(summary.get("steps", 0)))
        tracker.log_artifacts(run_id, run_dir / "encoder", "encoder")
        tracker.log_artifacts(run_id, [p for p in (run_dir / "summary.json", metrics_file) if p.is_file()])
        out = {"run_id": run_id, "name": name, "version": None, "uri": f"runs:/{run_id}/encoder"}
        if register:
            client = _registry_client(tracker.uri)
            try:
                with_retry(client.create_registered_model, name, tags={"drifting.kind": "encoder"}, description="a frozen feature encoder for drifting models (drifting-platform pretrain)")
            except Exception as exc:  # noqa: BLE001 - exists already (or created concurrently)
                if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
                    raise
            mv_tags = {TAG_CONFIG_HASH: config_hash, "objective": str(meta.get("objective")), "widths": str(meta.get("backbone", {}).get("widths", meta.get("widths")))}
            if "probe_accuracy" in summary:
                mv_tags["probe_accuracy"] = f"{float(summary['probe_accuracy']):.4f}"
            mv = with_retry(client.create_model_version, name, f"runs:/{run_id}/encoder", run_id=run_id, tags=mv_tags)
            out.update(version=int(mv.version), uri=f"models:/{name}/{mv.version}")
            tracker.set_tags(run_id, {TAG_REGISTERED: out["uri"]})
        tracker.end_run(run_id, "FINISHED")
        return out
    except BaseException as exc:
        tracker.end_run(run_id, "FAILED", repr(exc))
        raise


def find_encoder_version(name: str, config_hash: str, *, uri: Optional[str] = None) -> Optional[int]:
    """The newest version of registered model ``name`` trained from ``config_hash`` (or None)."""
    client = _registry_client(uri)
    try:
        versions = with_retry(client.search_model_versions, f"name='{name}'")
    except Exception:  # noqa: BLE001 - no such model
        return None
    good = [int(v.version) for v in versions if (v.tags or {}).get(TAG_CONFIG_HASH) == config_hash and str(getattr(v, "status", "READY")) == "READY"]
    return max(good) if good else None


def resolve_model_uri(model_uri: str, *, uri: Optional[str] = None) -> tuple[str, int]:
    """``models:/NAME/VERSION``, ``models:/NAME/latest`` or ``models:/NAME@ALIAS`` -> (NAME, version)."""
    m = _MODEL_URI_RE.match(model_uri)
    if not m:
        raise ValueError(f"{model_uri}: expected models:/NAME/VERSION, models:/NAME/latest or models:/NAME@ALIAS")
    name, version, alias = m.group("name"), m.group("version"), m.group("alias")
    client = _registry_client(uri)
    if alias:
        return name, int(with_retry(client.get_model_version_by_alias, name, alias).version)
    if version == "latest":
        versions = with_retry(client.search_model_versions, f"name='{name}'")
        if not versions:
            raise ValueError(f"{model_uri}: registered model {name!r} has no versions in {mask_url_credentials(client.tracking_uri)}")
        return name, max(int(v.version) for v in versions)
    if not version.isdigit():
        raise ValueError(f"{model_uri}: version must be a number, 'latest' or @alias")
    with_retry(client.get_model_version, name, version)  # raises when it does not exist
    return name, int(version)


def download_encoder(source: str, *, uri: Optional[str] = None) -> Path:
    """A local directory with the encoder artifact of ``source`` (``models:/...`` or ``runs:/...``).

    Registry versions are immutable, so each is downloaded once into
    ``<drifting_home>/encoders/<name>/<version>`` (atomically: concurrent trials may ask at once).
    """
    import shutil
    import tempfile

    from mlflow.artifacts import download_artifacts

    uri = uri or tracking_uri()
    if source.startswith("models:/"):
        name, version = resolve_model_uri(source, uri=uri)
        client = _registry_client(uri)
        mv = with_retry(client.get_model_version, name, str(version))
        artifact = mv.source
        dest = drifting_home() / "encoders" / _slug(name) / str(version)
    else:
        artifact = source
        dest = drifting_home() / "encoders" / "runs" / _slug(source[len("runs:/"):])
    if (dest / "encoder.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=dest.parent))
    try:
        with_retry(download_artifacts, artifact_uri=artifact, dst_path=str(tmp), tracking_uri=uri)
        got = tmp / "encoder" if (tmp / "encoder" / "encoder.json").is_file() else tmp
        if not (got / "encoder.json").is_file():
            raise FileNotFoundError(f"{source}: the artifact has no encoder.json")
        pinned = f"models:/{name}/{version}" if source.startswith("models:/") else source
        (got / "registry.json").write_text(json.dumps({"source": pinned, "artifact": artifact}) + "\n")
        try:
            os.replace(got, dest)
        except OSError:
            if not (dest / "encoder.json").is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


TAG_MODEL_INIT = "drifting.model_init"
TAG_MODEL_INIT_SHA = "drifting.model_init_sha256"
TAG_ENCODER_SOURCE = "drifting.encoder_source"
TAG_ENCODER_SHA = "drifting.encoder_sha256"


def artifact_tags(summary: Optional[Mapping[str, Any]]) -> dict[str, str]:
    """Tags naming the released / learned artifacts a run used, from its summary.json:
    ``model_init`` (the generator's initial weights: name, sha256) and ``encoder`` (the
    encoder's provenance: source, sha256)."""
    tags: dict[str, str] = {}
    if not isinstance(summary, Mapping):
        return tags
    init = summary.get("model_init")
    if isinstance(init, Mapping) and init.get("name"):
        tags[TAG_MODEL_INIT] = str(init["name"])
        if init.get("sha256"):
            tags[TAG_MODEL_INIT_SHA] = str(init["sha256"])
    enc = summary.get("encoder")
    if isinstance(enc, Mapping) and (enc.get("pinned") or enc.get("source")):
        tags[TAG_ENCODER_SOURCE] = str(enc.get("pinned") or enc["source"])  # registry: the pinned version
        if enc.get("sha256"):
            tags[TAG_ENCODER_SHA] = str(enc["sha256"])
    return tags


def _summary_file_tags(paths: Iterable[Path]) -> dict[str, str]:
    for p in paths:
        if p.name == "summary.json" and p.is_file():
            try:
                return artifact_tags(json.loads(p.read_text()))
            except (OSError, ValueError):
                return {}
    return {}


def encoder_version_tags(source: Optional[str], *, uri: Optional[str] = None) -> dict[str, str]:
    """Tags a drifting run records about its encoder: the concrete registry version."""
    if not source or not source.startswith("models:/"):
        return {"drifting.encoder_source": source} if source else {}
    name, version = resolve_model_uri(source, uri=uri)
    return {"drifting.encoder_source": f"models:/{name}/{version}", "drifting.encoder_model": name, "drifting.encoder_version": str(version)}
