"""The tag names this package writes, and the tags a run's summary.json implies.

Sweeps: a parent run carries ``drifting.sweep=true`` and ``drifting.sweep_name``; each trial's
child run ``mlflow.parentRunId``, ``drifting.trial``, ``drifting.row`` (its row in the report,
without the seed: the seeds of a row share it) and ``drifting.seed`` (its config's seed). Every run has ``drifting.experiment``; a failed one ``drifting.error``; a trial
stopped early by the scheduler ends KILLED with ``drifting.state=PRUNED``.

Artifacts a run used (``artifact_tags``, from its summary.json): ``drifting.model_init`` /
``drifting.model_init_sha256`` for ``model.init``, ``drifting.encoder_source`` /
``drifting.encoder_sha256`` for the encoder (a registry source as its pinned version),
``drifting.fid_extractor`` for the identity of the network that computed the FID
(summary.json's ``fid_extractor``, e.g. ``digits-div-v1-1a2b3c4d``: a report never mixes
extractors silently).

The encoder registry: ``drifting.config_hash`` (how sweeps find a reusable version) and
``drifting.registered_model`` (the version a pre-training run registered); a pre-training run
also has ``drifting.run_dir`` and, once finished, ``drifting.weights_sha256`` (also on its
model version: the same weights are never registered twice).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

from ..rundir import SUMMARY

TAG_SWEEP = "drifting.sweep"
TAG_SWEEP_NAME = "drifting.sweep_name"
TAG_EXPERIMENT = "drifting.experiment"
TAG_ROW = "drifting.row"  # a trial's row / grid point label, without its seed
TAG_SEED = "drifting.seed"  # a trial's config seed (a row's seeds share drifting.row)
TAG_TRIAL_DIR = "drifting.trial_dir"  # a trial's directory (grid / rows: named <plan index>_<row>...)
TAG_TRIAL = "drifting.trial"
TAG_ERROR = "drifting.error"
TAG_STATE = "drifting.state"  # a trial's state where MLflow's status has no word for it: PRUNED
TAG_PARENT = "mlflow.parentRunId"

TAG_MODEL_INIT = "drifting.model_init"
TAG_MODEL_INIT_SHA = "drifting.model_init_sha256"
TAG_ENCODER_SOURCE = "drifting.encoder_source"
TAG_ENCODER_SHA = "drifting.encoder_sha256"
TAG_ENCODER_MODEL = "drifting.encoder_model"
TAG_ENCODER_VERSION = "drifting.encoder_version"
TAG_FID_EXTRACTOR = "drifting.fid_extractor"  # the identity of the FID feature extractor (summary.json "fid_extractor")

TAG_CONFIG_HASH = "drifting.config_hash"
TAG_REGISTERED = "drifting.registered_model"
TAG_RUN_DIR = "drifting.run_dir"  # a pre-training run's directory: a rerun continues its MLflow run
TAG_WEIGHTS_SHA = "drifting.weights_sha256"  # the sha256 of encoder/weights.pt (run and model version)


def artifact_tags(summary: Optional[Mapping[str, Any]]) -> dict[str, str]:
    """Tags naming the released / learned artifacts a run used, from its summary.json:
    ``model_init`` (the generator's initial weights: name, sha256), ``encoder`` (the
    encoder's provenance: source, sha256) and ``fid_extractor`` (the FID network's identity,
    a string)."""
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
    extractor = summary.get("fid_extractor")
    if isinstance(extractor, str) and extractor.strip():
        tags[TAG_FID_EXTRACTOR] = extractor.strip()
    return tags


def summary_file_tags(paths: Iterable[Path]) -> dict[str, str]:
    """``artifact_tags`` of the first summary.json among ``paths`` ({} when there is none or
    it cannot be read)."""
    for p in paths:
        if p.name == SUMMARY and p.is_file():
            try:
                return artifact_tags(json.loads(p.read_text()))
            except (OSError, ValueError):
                return {}
    return {}
