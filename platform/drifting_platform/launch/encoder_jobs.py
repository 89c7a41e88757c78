"""The `encoders:` section of a sweep: pre-train (or reuse) each encoder as a Ray task, then
pin the rows that use it to the concrete registered version: `prepare_encoders`."""

from __future__ import annotations

import dataclasses
import os

import ray

from ..encoder_artifact import model_uri
from ..home import drifting_home
from ..pretrain.config import PretrainConfig, config_hash
from ..tracking import find_encoder_version, tracking_uri
from .pretrain import ensure_encoder
from .spec import SweepSpec


def _ensure_one(cfg: PretrainConfig, progress: bool, env: dict) -> dict:
    # the driver's store and home: a Ray worker need not share the driver's environment
    os.environ.update(env)
    return ensure_encoder(cfg, progress=progress)


def prepare_encoders(spec: SweepSpec, *, cpus: float = 1.0, concurrency: int = 1) -> tuple[SweepSpec, dict]:
    """Pre-train (or reuse) every encoder the sweep's rows use, then pin each row's
    `encoder.source` to the concrete registered version (`models:/NAME/N`).

    Encoders with a registered version of the same config hash are reused; the others are
    pre-trained as Ray tasks of `cpus` CPUs each, `concurrency` at a time, each tracked in
    MLflow experiment "encoders". Returns (pinned spec, {key: ensure_encoder's dict}).
    """
    infos: dict = {}
    todo = []
    for key, cfg in spec.encoders.items():
        v = find_encoder_version(cfg.registered_name, config_hash(cfg))
        if v is not None:
            infos[key] = {"name": cfg.registered_name, "version": v, "uri": model_uri(cfg.registered_name, v), "reused": True}
            print(f"encoder {key}: reusing {infos[key]['uri']} (same config hash)")
        else:
            todo.append(key)
    if todo:
        print(f"pre-training {len(todo)} encoder(s): {', '.join(todo)}")
        task = ray.remote(num_cpus=cpus)(_ensure_one)
        env = {"MLFLOW_TRACKING_URI": tracking_uri(), "DRIFTING_HOME": str(drifting_home())}
        pending: dict = {}
        while todo or pending:
            while todo and len(pending) < max(1, concurrency):
                k = todo.pop(0)
                pending[task.remote(spec.encoders[k], False, env)] = k
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                k = pending.pop(ref)
                infos[k] = ray.get(ref)
                s = infos[k].get("summary") or {}
                print(f"encoder {k}: registered {infos[k]['uri']} in {infos[k].get('seconds', 0):.0f} s (probe accuracy {s.get('probe_accuracy', float('nan')):.3f})")
    trials = []
    for t in spec.trials:
        row = spec.rows[t.index] if spec.rows else None
        if row is not None and row.encoder in infos:
            t = dataclasses.replace(t, params={**t.params, "encoder.source": infos[row.encoder]["uri"]})
        trials.append(t)
    return dataclasses.replace(spec, trials=tuple(trials)), infos
