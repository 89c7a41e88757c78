"""The encoder registry: pre-trained encoders as MLflow registered-model versions.

``record_pretrain`` tracks a pre-training job (experiment ``encoders``): a finished one's
``encoder/`` artifact becomes a new version, tagged with the config hash and the weights'
sha256 (a rerun returns the version it registered), an interrupted one ends KILLED and is
continued by the rerun;
``find_encoder_version`` finds a reusable version by that hash; ``resolve_model_uri`` pins a
``models:/`` URI to a version number; ``download_encoder`` fetches a version (or a
``runs:/`` artifact) into ``<drifting_home>/encoders/`` once. The artifact format and the
``models:/`` syntax are those of ``encoder_artifact.py``.

Importing this module registers ``download_encoder`` as the resolver of ``models:/`` and
``runs:/`` encoder sources (``encoder_artifact.register_source_resolver``): a process
builds an encoder from a registry URI only after ``import drifting_platform.tracking``.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping, Optional, Union

from ..encoder_artifact import (
    ENCODER_DIR, META_FILE, REGISTRY_PREFIXES, WEIGHTS_FILE, artifact_folder, model_uri, parse_model_uri, read_meta, register_source_resolver,
    write_registry_record,
)
from ..home import drifting_home
from ..rundir import METRICS, SUMMARY, read_metrics
from .client import SweepTracker
from .store import clean_tags, dir_name, mask_url_credentials, mlflow_client, tracking_uri, with_retry
from .tags import (
    TAG_CONFIG_HASH, TAG_ENCODER_MODEL, TAG_ENCODER_SOURCE, TAG_ENCODER_VERSION, TAG_EXPERIMENT, TAG_REGISTERED, TAG_RUN_DIR,
    TAG_WEIGHTS_SHA,
)

PathLike = Union[str, "os.PathLike[str]"]

ENCODER_EXPERIMENT = "encoders"


def _registry_client(uri: Optional[str] = None):
    return mlflow_client(uri or tracking_uri(), registry=True)


def record_pretrain(
    config: Mapping[str, Any],
    run_dir: PathLike,
    summary: Optional[Mapping[str, Any]],
    *,
    name: str,
    config_hash: str,
    register: bool = True,
    experiment: str = ENCODER_EXPERIMENT,
    run_name: Optional[str] = None,
    uri: Optional[str] = None,
    tags: Optional[Mapping[str, Any]] = None,
    interrupted: Optional[str] = None,
    continue_run: bool = True,
) -> dict:
    """Track one encoder pre-training job and register its weights.

    One run in ``experiment`` (tagged with the run directory) with the config as params,
    the metric history of ``run_dir/metrics.jsonl``, the summary's numbers, and the
    artifacts ``encoder/``, ``summary.json`` and ``metrics.jsonl``. With ``register``, a new
    version of registered model ``name`` whose source is ``runs:/<run id>/encoder``, tagged
    with the config hash (how sweeps find a reusable version), the weights' sha256, the
    objective and the probe accuracy. Returns {"run_id", "name", "version", "uri"} (uri:
    ``models:/name/version``, or the run's artifact URI when not registered), plus
    "reused": True when nothing was written.

    - ``interrupted`` (the message of a ``TrainingInterrupted``): the history so far is
      recorded, the run ends KILLED with the message in ``drifting.error``, nothing is
      registered (``summary`` is ignored).
    - With ``continue_run``, an unfinished (KILLED, FAILED, RUNNING) run of the same run
      directory is continued: reopened, its history extended past the steps it has.
    - Weights already recorded (a rerun of a finished run): a model version with the same
      weights sha256 is returned as it is, and so is a finished run of this directory with
      them (registered now when ``register`` asks and it was not); no second version.
    """
    run_dir = Path(run_dir).resolve()
    tracker = SweepTracker(experiment, uri=uri)
    client = _registry_client(tracker.uri)
    sha = None if interrupted else _weights_sha(run_dir)
    previous = _runs_of(tracker, experiment, run_dir)
    if sha is not None:
        done = _already_recorded(tracker, client, name, sha, previous, register=register)
        if done is not None:
            return done
    unfinished = [r for r in previous if r.info.status != "FINISHED"] if continue_run else []
    if unfinished:
        run_id = unfinished[0].info.run_id
        tracker.reopen_run(run_id)  # RUNNING again, the interrupt's drifting.error dropped
        logged = max(tracker.last_steps(run_id).values(), default=-1)
    else:
        meta = read_meta(run_dir / ENCODER_DIR) if interrupted is None else {}
        run_tags = {
            **clean_tags(tags), TAG_EXPERIMENT: experiment, TAG_CONFIG_HASH: config_hash, TAG_RUN_DIR: str(run_dir),
            "drifting.objective": str(meta.get("objective", config.get("objective.name", ""))),
        }
        run_id = tracker.create_run(experiment, run_name or name, run_tags)
        logged = -1
    try:
        if logged < 0:
            tracker.log_params(run_id, config)
        metrics_file = run_dir / METRICS
        for step, row in read_metrics(metrics_file):
            if step > logged:
                tracker.log_metrics(run_id, row, step)
        artifact = f"runs:/{run_id}/{ENCODER_DIR}"
        if interrupted is not None:
            tracker.log_artifacts(run_id, [p for p in (metrics_file,) if p.is_file()])
            tracker.end_run(run_id, "KILLED", interrupted)
            return {"run_id": run_id, "name": name, "version": None, "uri": None}
        meta = read_meta(run_dir / ENCODER_DIR)
        tracker.log_metrics(run_id, {k: v for k, v in (summary or {}).items() if k != "steps"}, int((summary or {}).get("steps", 0)))
        tracker.log_artifacts(run_id, run_dir / ENCODER_DIR, ENCODER_DIR)
        tracker.log_artifacts(run_id, [p for p in (run_dir / SUMMARY, metrics_file) if p.is_file()])
        tracker.set_tags(run_id, {TAG_WEIGHTS_SHA: sha, "drifting.objective": str(meta.get("objective", ""))})
        out = {"run_id": run_id, "name": name, "version": None, "uri": artifact}
        if register:
            out.update(_register(tracker, client, name, run_id, meta, summary or {}, config_hash=config_hash, sha=sha))
        tracker.end_run(run_id, "FINISHED")
        return out
    except BaseException as exc:
        tracker.end_run(run_id, "FAILED", repr(exc))
        raise


def _weights_sha(run_dir: Path) -> Optional[str]:
    """The sha256 of the run's encoder/weights.pt (None when there is none)."""
    path = run_dir / ENCODER_DIR / WEIGHTS_FILE
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _runs_of(tracker: SweepTracker, experiment: str, run_dir: Path) -> list:
    """The runs of ``experiment`` that recorded ``run_dir``, newest first."""
    exp_id = tracker.experiment_id(experiment, create=False)
    if exp_id is None or "'" in str(run_dir):  # a quote cannot be searched for: a new run
        return []
    return list(with_retry(
        tracker.client.search_runs, [exp_id], filter_string=f"tags.`{TAG_RUN_DIR}` = '{run_dir}'",
        order_by=["attributes.start_time DESC"], max_results=100,
    ))


def _already_recorded(tracker: SweepTracker, client, name: str, sha: str, previous: list, *, register: bool) -> Optional[dict]:
    """What a rerun of a finished job returns without writing (None: record it now)."""
    try:
        versions = with_retry(client.search_model_versions, f"name='{name}'")
    except Exception:  # noqa: BLE001 - no such model yet
        versions = []
    same = [v for v in versions if (v.tags or {}).get(TAG_WEIGHTS_SHA) == sha]
    if same:
        v = max(same, key=lambda v: int(v.version))
        return {"run_id": v.run_id, "name": name, "version": int(v.version), "uri": model_uri(name, v.version), "reused": True}
    finished = [r for r in previous if r.info.status == "FINISHED" and r.data.tags.get(TAG_WEIGHTS_SHA) == sha]
    if not finished:
        return None
    run = finished[0]
    out = {"run_id": run.info.run_id, "name": name, "version": None, "uri": f"runs:/{run.info.run_id}/{ENCODER_DIR}", "reused": True}
    if register:  # recorded with --no-register before: register that run's weights now
        meta = {"objective": run.data.tags.get("drifting.objective")}
        out.update(_register(tracker, client, name, run.info.run_id, meta, dict(run.data.metrics), config_hash=run.data.tags.get(TAG_CONFIG_HASH, ""), sha=sha))
        out["reused"] = False
    return out


def _register(tracker: SweepTracker, client, name: str, run_id: str, meta: Mapping[str, Any], summary: Mapping[str, Any], *, config_hash: str, sha: str) -> dict:
    """A new version of ``name`` from run ``run_id``'s encoder artifact: {"version", "uri"}."""
    try:
        with_retry(client.create_registered_model, name, tags={"drifting.kind": "encoder"}, description="a frozen feature encoder for drifting models (drifting-platform pretrain)")
    except Exception as exc:  # noqa: BLE001 - exists already (or created concurrently)
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    mv_tags = {TAG_CONFIG_HASH: config_hash, TAG_WEIGHTS_SHA: sha, "objective": str(meta.get("objective")), "widths": str(meta.get("backbone", {}).get("widths", meta.get("widths")))}
    if "probe_accuracy" in summary:
        mv_tags["probe_accuracy"] = f"{float(summary['probe_accuracy']):.4f}"
    mv = with_retry(client.create_model_version, name, f"runs:/{run_id}/{ENCODER_DIR}", run_id=run_id, tags=mv_tags)
    uri_ = model_uri(name, mv.version)
    tracker.set_tags(run_id, {TAG_REGISTERED: uri_})
    return {"version": int(mv.version), "uri": uri_}


def find_encoder_version(name: str, config_hash: str, *, uri: Optional[str] = None) -> Optional[int]:
    """The newest version of registered model ``name`` trained from ``config_hash`` (or None)."""
    client = _registry_client(uri)
    try:
        versions = with_retry(client.search_model_versions, f"name='{name}'")
    except Exception:  # noqa: BLE001 - no such model
        return None
    good = [int(v.version) for v in versions if (v.tags or {}).get(TAG_CONFIG_HASH) == config_hash and str(getattr(v, "status", "READY")) == "READY"]
    return max(good) if good else None


def resolve_model_uri(source: str, *, uri: Optional[str] = None) -> tuple[str, int]:
    """``models:/NAME/VERSION``, ``models:/NAME/latest`` or ``models:/NAME@ALIAS`` -> (NAME,
    version number) in the registry of store ``uri``; raises when there is no such version."""
    parsed = parse_model_uri(source)
    name = parsed.name
    client = _registry_client(uri)
    if parsed.alias:
        return name, int(with_retry(client.get_model_version_by_alias, name, parsed.alias).version)
    if parsed.latest:
        versions = with_retry(client.search_model_versions, f"name='{name}'")
        if not versions:
            raise ValueError(f"{source}: registered model {name!r} has no versions in {mask_url_credentials(client.tracking_uri)}")
        return name, max(int(v.version) for v in versions)
    with_retry(client.get_model_version, name, str(parsed.version))  # raises when it does not exist
    return name, parsed.version


def download_encoder(source: str, *, uri: Optional[str] = None) -> Path:
    """A local directory with the encoder artifact of ``source`` (``models:/...`` or ``runs:/...``).

    Registry versions are immutable, so each is downloaded once into
    ``<drifting_home>/encoders/<name>/<version>`` (atomically: concurrent trials may ask at once).
    """
    from mlflow.artifacts import download_artifacts

    uri = uri or tracking_uri()
    if source.startswith("models:/"):
        name, version = resolve_model_uri(source, uri=uri)
        client = _registry_client(uri)
        artifact = with_retry(client.get_model_version, name, str(version)).source
        pinned = model_uri(name, version)
        dest = drifting_home() / "encoders" / dir_name(name) / str(version)
    else:
        artifact = pinned = source
        dest = drifting_home() / "encoders" / "runs" / dir_name(source[len("runs:/"):])
    if (dest / META_FILE).is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".dl-", dir=dest.parent))
    try:
        # no "Downloading artifacts" bar: a sweep's every trial may come here (once per version)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        with_retry(download_artifacts, artifact_uri=artifact, dst_path=str(tmp), tracking_uri=uri)
        got = artifact_folder(tmp)
        if got is None:
            raise FileNotFoundError(f"{source}: the artifact has no {META_FILE}")
        write_registry_record(got, source=pinned, artifact=artifact)
        try:
            os.replace(got, dest)
        except OSError:
            if not (dest / META_FILE).is_file():  # lost a race only if the winner finished
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def pinned_encoder_tags(source: Optional[str]) -> dict[str, str]:
    """Tags naming the encoder a sweep trial drifts in: its source, and for a pinned registry
    version (`models:/NAME/N`, as run_sweep pins them) the model name and version."""
    if not source:
        return {}
    tags = {TAG_ENCODER_SOURCE: str(source)}
    if str(source).startswith("models:/"):
        parsed = parse_model_uri(str(source))
        if parsed.version is not None:
            tags.update({TAG_ENCODER_MODEL: parsed.name, TAG_ENCODER_VERSION: str(parsed.version)})
    return tags


for _prefix in REGISTRY_PREFIXES:
    register_source_resolver(_prefix, download_encoder)
