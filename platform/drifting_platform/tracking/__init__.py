"""MLflow tracking: the one package of the platform that imports ``mlflow``.

``mlflow`` is imported lazily (inside functions), so ``import drifting_platform.tracking`` is
cheap and the rest of the platform never pays for it. Importing it also registers the
resolvers of ``models:/`` and ``runs:/`` encoder sources (``registry``), so a process that
builds an encoder from a registry URI imports this package first.

Modules, each owning one thing:

    store     where the store is (``tracking_uri``, ``default_artifact_root``), whether it is
              usable (``check_tracking_store``), the client (``mlflow_client``: a fresh
              SQLite store's tables made under a file lock), the "database is locked" retry, and the
              cleaning of params / tags / metrics (no credentials, MLflow's limits)
    tags      the tag names written, and the tags a run's summary.json implies
    client    ``SweepTracker``: the MlflowClient wrapper (sweep parent runs, trial child runs)
    outbox    ``BufferedTracker``: a sweep's writes journaled on disk and written by a thread,
              kept while the store is unreachable; ``sync_journal`` writes a journal later
    runs      ``track_run``: one ``train`` run
    registry  the encoder registry: ``record_pretrain``, ``find_encoder_version``,
              ``resolve_model_uri``, ``download_encoder``
    ui        the MLflow UI process: ``serve_ui``, ``stop_ui``, and the links it opens on
              (``ui_links``: runs view, the latest sweep compared by ``fid``)

The names below are the package's API; callers import them from here.
"""
from __future__ import annotations

from .client import SweepTracker, child_runs, find_latest_sweep
from .registry import (
    ENCODER_EXPERIMENT, download_encoder, pinned_encoder_tags, find_encoder_version, record_pretrain, resolve_model_uri,
)
from .runs import TrackedRun, track_run
from .store import (
    MAX_ERROR_LENGTH, MAX_PARAM_VAL_LENGTH, TrackingUnavailable, check_tracking_store, default_artifact_root, tracking_uri,
    with_retry,
)
from .tags import (
    TAG_CONFIG_HASH, TAG_ENCODER_MODEL, TAG_ENCODER_SHA, TAG_ENCODER_SOURCE, TAG_ENCODER_VERSION, TAG_ERROR, TAG_EXPERIMENT,
    TAG_FID_EXTRACTOR, TAG_MODEL_INIT, TAG_MODEL_INIT_SHA, TAG_PARENT, TAG_REGISTERED, TAG_ROW, TAG_SEED, TAG_STATE, TAG_SWEEP,
    TAG_SWEEP_NAME, TAG_TRIAL, TAG_TRIAL_DIR, artifact_tags,
)
from .ui import UIProcess, latest_sweep, port_in_use, serve_ui, stop_ui, ui_command, ui_links, wait_for_ui

__all__ = [
    "ENCODER_EXPERIMENT", "MAX_ERROR_LENGTH", "MAX_PARAM_VAL_LENGTH", "TAG_CONFIG_HASH", "TAG_ENCODER_MODEL",
    "TAG_ENCODER_SHA", "TAG_ENCODER_SOURCE", "TAG_ENCODER_VERSION", "TAG_ERROR", "TAG_EXPERIMENT", "TAG_FID_EXTRACTOR",
    "TAG_MODEL_INIT", "TAG_MODEL_INIT_SHA", "TAG_PARENT", "TAG_REGISTERED", "TAG_ROW", "TAG_SEED", "TAG_STATE", "TAG_SWEEP",
    "TAG_SWEEP_NAME", "TAG_TRIAL", "TAG_TRIAL_DIR",
    "SweepTracker", "TrackedRun", "TrackingUnavailable", "UIProcess", "artifact_tags", "check_tracking_store",
    "child_runs", "default_artifact_root", "download_encoder", "pinned_encoder_tags", "find_encoder_version",
    "find_latest_sweep", "latest_sweep", "port_in_use", "record_pretrain", "resolve_model_uri", "serve_ui", "stop_ui", "track_run", "tracking_uri",
    "ui_command", "ui_links", "wait_for_ui", "with_retry",
]
