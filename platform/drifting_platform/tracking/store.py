"""The tracking store: where it is, whether it is usable, and what may be written to it.

``tracking_uri()`` is ``$MLFLOW_TRACKING_URI`` when set, else
``sqlite:///<drifting_home()>/mlflow.db`` with artifacts under ``<drifting_home()>/mlartifacts``
(absolute paths, so they survive ``ray job submit``'s temporary working directory).
Experiments this package creates in any ``sqlite:///`` store get their artifact location next
to the database (``<db dir>/mlartifacts/<experiment>``), never MLflow's cwd-relative
``./mlruns``; other stores (an MLflow server) choose for themselves.
``$DRIFTING_ARTIFACT_ROOT`` overrides this for any store: a local directory, or
``s3://bucket/prefix`` for S3-compatible object storage (endpoint and credentials from the
AWS environment, see ``drifting_platform.storage``; the database stays where it is).

Also here: ``check_tracking_store`` (fail before training starts), ``with_retry`` (every write
is retried while SQLite says "database is locked"), and the cleaning of params, tags and
metrics to MLflow's limits. Params and tags never carry credentials: keys that look like
secrets are dropped and ``user:password@`` in URLs is masked.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from ..home import drifting_home
from ..rundir import slug
from ..storage import check_no_credentials

log = logging.getLogger(__name__)

# MLflow's limits (mlflow/utils/validation.py); repeated here so that we truncate instead of failing
MAX_PARAM_VAL_LENGTH = 6000
MAX_TAG_VAL_LENGTH = 8000
MAX_KEY_LENGTH = 250
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
MAX_ERROR_LENGTH = 5000

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


# --------------------------------------------------------------------------- where


def default_tracking_uri() -> str:
    """``sqlite:///<drifting_home>/mlflow.db`` (absolute)."""
    return f"sqlite:///{drifting_home() / 'mlflow.db'}"


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else ``default_tracking_uri()``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri()


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a ``sqlite:///`` URI (None for other stores or in-memory)."""
    if not uri.startswith("sqlite:///"):
        return None
    rest = uri[len("sqlite:///"):].split("?", 1)[0]
    if not rest or rest == ":memory:":
        return None
    return Path(rest if rest.startswith("/") else rest).expanduser().resolve()


def default_artifact_root(uri: Optional[str] = None) -> Optional[Union[Path, str]]:
    """Where artifacts of experiments this package creates in store ``uri`` go.

    ``$DRIFTING_ARTIFACT_ROOT`` when set (a URI such as ``s3://bucket/prefix`` is returned as
    a str, a local directory as an absolute Path); else ``<drifting_home>/mlartifacts`` for the
    default store, ``<db dir>/mlartifacts`` for any other ``sqlite:///`` store, None (the server
    decides) otherwise."""
    env_root = (os.environ.get("DRIFTING_ARTIFACT_ROOT") or "").strip()
    if env_root:
        if "://" in env_root:
            check_no_credentials(env_root, "DRIFTING_ARTIFACT_ROOT")
            return env_root.rstrip("/")
        return Path(env_root).expanduser().resolve()
    uri = uri or tracking_uri()
    if uri == default_tracking_uri():
        return drifting_home() / "mlartifacts"
    db = sqlite_path(uri)
    return db.parent / "mlartifacts" if db is not None else None


def dir_name(name: str) -> str:
    """An experiment or registered model name as a folder name."""
    return slug(name, strip="._", default="experiment")


def root_uri(root: Union[Path, str], *parts: str) -> str:
    """A ``default_artifact_root`` (Path or URI) joined with ``parts``, as a URI."""
    if isinstance(root, Path):
        return root.joinpath(*parts).as_uri()
    return "/".join([root.rstrip("/"), *parts])


class TrackingUnavailable(RuntimeError):
    """The tracking store cannot be reached or written: raised before any training starts."""


def check_tracking_store(uri: Optional[str] = None, *, timeout: float = 5.0) -> str:
    """Make sure the tracking store ``uri`` (default ``tracking_uri()``) is usable; returns it.

    An ``http(s)://`` server must answer its ``/health`` endpoint within ``timeout`` seconds;
    a ``sqlite:///`` store's folder must be creatable and writable. Raises
    ``TrackingUnavailable`` with the (credential-masked) URI and what to do otherwise."""
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
    db = sqlite_path(uri)
    if db is not None:
        try:
            db.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingUnavailable(f"tracking store {shown}: cannot create {db.parent} ({exc.strerror}). Nothing was started.") from None
        if not os.access(db.parent, os.W_OK) or (db.exists() and not os.access(db, os.W_OK)):
            raise TrackingUnavailable(f"tracking store {shown}: {db} is not writable. Nothing was started.")
    return uri


# --------------------------------------------------------------------------- the client


_READY: set[str] = set()  # stores whose tables this process has seen made


def mlflow_client(uri: Optional[str] = None, *, registry: bool = False):
    """An ``MlflowClient`` on store ``uri`` (default ``tracking_uri()``; with ``registry``,
    also its model registry). A ``sqlite:///`` store is opened the first time under an
    exclusive lock on ``<db>.lock``: MLflow makes a new database's tables with alembic
    migrations, and two processes doing that at once (two sweeps started together on a fresh
    store) fail with "table ... already exists"."""
    from mlflow import MlflowClient

    uri = uri or tracking_uri()

    def make():
        return MlflowClient(tracking_uri=uri, registry_uri=uri) if registry else MlflowClient(tracking_uri=uri)

    db = sqlite_path(uri)
    if db is None or uri in _READY:
        return make()
    import fcntl

    db.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{db}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the client makes (or upgrades) the tables as it opens the store
        try:
            client = with_retry(make)
            with_retry(client.search_experiments, max_results=1)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    _READY.add(uri)
    return client


# --------------------------------------------------------------------------- "database is locked"


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


# --------------------------------------------------------------------------- cleaning


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


def clean_tags(tags: Optional[Mapping[str, Any]]) -> dict[str, str]:
    """Drop None values and credential-looking keys, stringify and truncate to MLflow's limits."""
    return {
        str(k)[:MAX_KEY_LENGTH]: _stringify(v)[:MAX_TAG_VAL_LENGTH]
        for k, v in (tags or {}).items()
        if v is not None and not is_secret_key(k)
    }


def finite_float(value: Any) -> Optional[float]:
    """A finite float, or None for non-numeric / non-finite values."""
    if isinstance(value, (str, bytes)) or value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError, RuntimeError):  # RuntimeError: multi-element tensors
        return None
    return f if math.isfinite(f) else None


def metric_key(key: str) -> str:
    """``key`` in the characters MLflow allows (alphanumerics, _ - . space : /; others become _)."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", str(key))[:MAX_KEY_LENGTH]
