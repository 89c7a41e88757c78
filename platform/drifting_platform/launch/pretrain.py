"""Encoder pre-training jobs: run (in this process or on Ray Train workers), track, register.

    run_pretrain(cfg, out_dir, workers=2)   # -> {"summary": ..., "registered": {"uri": "models:/NAME/3", ...}}
    ensure_encoder(cfg)                     # reuse the registered version with the same config hash, else train

`drifting-platform pretrain CONFIG` and the `encoders:` section of sweep files call these.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from ..config import flatten
from ..encoder_artifact import model_uri
from ..home import drifting_home
from ..pretrain.config import PretrainConfig, config_hash, load_pretrain_config, to_dict
from ..pretrain.loop import pretrain_loop
from ..train.kit import TrainingInterrupted
from ..tracking import find_encoder_version, record_pretrain


def default_out_dir(cfg: PretrainConfig) -> Path:
    """<drifting_home>/pretrain/<name>-<hash>: absolute (survives a Ray job's temporary cwd)
    and keyed by the config hash, so a re-run of the same config resumes its checkpoint."""
    return drifting_home() / "pretrain" / f"{cfg.name}-{config_hash(cfg)}"


def run_pretrain(
    cfg: PretrainConfig,
    out_dir: Optional[str | Path] = None,
    *,
    workers: int = 0,
    gpu: bool = False,
    register: Optional[bool] = None,
    progress: bool = True,
    resume: bool = True,
    tags: Optional[dict] = None,
) -> dict:
    """Pre-train `cfg`'s encoder, then record it in MLflow (experiment "encoders") and
    register its weights (unless `register` is False or `cfg.register.enabled` is off).
    A rerun of a finished run returns its summary and registered version (nothing new is
    registered); SIGINT / SIGTERM end the MLflow run KILLED and raise `TrainingInterrupted`
    (a rerun continues the checkpoint and the MLflow run).

    workers = 0 runs the loop in this process; N >= 1 runs it on N Ray Train workers (DDP).
    """
    out = Path(out_dir).expanduser().resolve() if out_dir else default_out_dir(cfg)
    t0 = time.time()
    record = dict(
        name=cfg.registered_name, config_hash=config_hash(cfg), run_name=cfg.name, tags={"drifting.workers": workers, **(tags or {})},
        continue_run=resume,
    )
    try:
        if workers:
            from .ray_train import fit_ray  # imports Ray: `pretrain` without workers runs without it

            summary = fit_ray(cfg, out, workers=workers, gpu=gpu, resume=resume, progress=progress)
        else:
            summary = pretrain_loop(cfg, out, resume=resume, progress=progress)
    except TrainingInterrupted as exc:  # SIGINT / SIGTERM: the run so far, KILLED; the rerun continues it
        record_pretrain(flatten(to_dict(cfg)), out, None, register=False, interrupted=str(exc), **record)
        raise
    do_register = cfg.register.enabled if register is None else register
    registered = record_pretrain(flatten(to_dict(cfg)), out, summary, register=do_register, **record)
    return {"summary": summary, "registered": registered, "out_dir": str(out), "seconds": round(time.time() - t0, 2)}


def ensure_encoder(cfg: PretrainConfig, *, workers: int = 0, progress: bool = True, retrain: bool = False) -> dict:
    """The registered version of `cfg`'s encoder: reused when one with the same config hash
    exists (`reused: True`), else pre-trained now. Returns run_pretrain's "registered" dict
    plus "reused" and "seconds"."""
    name, h = cfg.registered_name, config_hash(cfg)
    if not retrain:
        version = find_encoder_version(name, h)
        if version is not None:
            return {"name": name, "version": version, "uri": model_uri(name, version), "reused": True, "seconds": 0.0}
    res = run_pretrain(cfg, workers=workers, register=True, progress=progress)
    return {**res["registered"], "reused": False, "seconds": res["seconds"], "summary": res["summary"]}


__all__ = ["default_out_dir", "ensure_encoder", "load_pretrain_config", "run_pretrain"]
