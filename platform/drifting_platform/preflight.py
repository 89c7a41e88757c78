"""One validation pass before any folder is made or Ray is started: `preflight(cfg)`.

The config language (`config.py`) checks keys, types and ranges; this pass checks what the
config means here: every registry name (generators, encoders, data sets), every local path
(shards, torchvision roots, `model.init`, `encoder.source`, Inception weights) and the devices
asked for (CUDA for `train.device: cuda`, GPUs for `--gpu`). Each problem is one
`ConfigError` naming the key, the value and what is allowed:

    preflight(cfg)                    # the config a command is about to run, on this machine
    preflight(cfg, device=False)      # a trial that runs on a Ray cluster's nodes
    require_local_gpus(2, "--gpu")    # before a local Ray is started for 2 GPU workers

Registry URIs (`models:/`, `runs:/`, `hf://`) and `s3://` paths are not paths here: their
resolvers check them when they are read. The Ray side of the resources (the GPUs of a
cluster) is `launch/cluster.py`'s, the only place that knows Ray.
"""

from __future__ import annotations

import difflib
import os
import re
from typing import Any, Iterable, Optional

from . import storage
from .config import ConfigError, expand_path


class ResourceError(ConfigError):
    """The machine or the Ray cluster lacks what a config or command asks for (CUDA, GPUs)."""


# environment variables that say "this process runs inside a Ray job / talks to a cluster"
RAY_CLUSTER_ENV = ("RAY_ADDRESS", "RAY_JOB_ID", "RAY_JOB_SUBMISSION_ID")

# `models:/NAME/1`, `runs:/ID/encoder`, `hf://NAME`, `s3://...`: resolved elsewhere, not paths
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/")


def in_ray_cluster_context() -> bool:
    """True when RAY_ADDRESS is set or this process was started by `ray job submit`."""
    return any(os.environ.get(k) for k in RAY_CLUSTER_ENV)


def allowed(key: str, value: Any, names: Iterable[str], what: str) -> None:
    """ConfigError unless `value` is one of `names`: `key: 'x' is not a WHAT; allowed: ...`."""
    names = list(names)
    if value in names:
        return
    close = difflib.get_close_matches(str(value), names, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"{key}: {value!r} is not {what}; allowed: {', '.join(names)}{hint}")


def is_uri(value: str) -> bool:
    return bool(_URI.match(value))


def _existing_path(key: str, value: Optional[str], what: str) -> None:
    """A local path that must exist (URIs are left to their resolvers)."""
    if not value or is_uri(value):
        return
    if not os.path.exists(value):
        raise ConfigError(f"{key}: {value!r}: no such file or directory (expected {what})")


def check_data(d, *, paths: bool = True, prefix: str = "data.") -> None:
    """`data.*` of an experiment or pre-training config: the name, and its files when `paths`.
    `prefix` starts each key in messages (`--set ` for `data export`'s options)."""
    from .data import DATASETS, expected_files
    from .data.images import TORCHVISION_SETS
    from .data.shards import resolve_shard_paths

    allowed(f"{prefix}name", d.name, DATASETS, "a data set")
    if d.name == "shards":
        if not d.path:
            raise ConfigError(f"{prefix}path: data set 'shards' needs {prefix}path (a directory, glob or file of Parquet shards)")
        path = expand_path(d.path, f"{prefix}path") if paths else None
        if path and not storage.is_s3(path):
            try:
                resolve_shard_paths(path)
            except FileNotFoundError as exc:
                raise ConfigError(f"{prefix}path: {d.path!r}: {exc}") from None
    elif d.name in TORCHVISION_SETS:
        if not d.root:
            first = expected_files(d.name, "ROOT")[0]
            raise ConfigError(f"{prefix}root: data set {d.name!r} reads a local torchvision root (nothing is downloaded); give {prefix}root, the folder that holds {first}")
        if paths:
            root = expand_path(d.root, f"{prefix}root")
            missing = [f for f in expected_files(d.name, root) if not os.path.isfile(f)]
            if missing:
                shown = ", ".join(os.path.relpath(f, root) for f in missing[:2]) + (", ..." if len(missing) > 2 else "")
                raise ConfigError(f"{prefix}root: {d.root!r} lacks {len(missing)} file(s) torchvision reads for {d.name}: {shown} (nothing is downloaded)")


def check_device(key: str, device: str) -> None:
    """`train.device: cuda` needs CUDA on this machine."""
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ResourceError(f"{key}: 'cuda' but torch finds no CUDA device on this machine; allowed here: auto, cpu")


def require_local_gpus(n: int, key: str) -> None:
    """`n` GPUs on this machine (before a local Ray is started for `n` GPU workers)."""
    if n < 1:
        return
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have < n:
        raise ResourceError(
            f"{key}: {n} GPU(s) asked for (one per worker), but this machine has {have} CUDA GPU(s) and RAY_ADDRESS "
            f"names no cluster; drop {key}, or run where the GPUs are"
        )


def preflight(cfg, *, paths: bool = True, device: bool = True, gpus: int = 0, gpu_key: str = "--gpu"):
    """Check an experiment `Config` against the registries, this machine's files (`paths`)
    and devices (`device`: `train.device`; `gpus`: GPUs for a local Ray). Returns `cfg`."""
    from .encoders import ENCODERS
    from .models import GENERATORS

    allowed("model.name", cfg.model.name, GENERATORS, "a generator")
    allowed("encoder.name", cfg.encoder.name, ENCODERS, "an encoder")
    check_data(cfg.data, paths=paths)
    if paths:
        _existing_path("model.init", cfg.model.init, "a release artifact folder, a `release convert` folder or hf://NAME")
        _existing_path("encoder.source", cfg.encoder.source, "a pretrain run or encoder folder, models:/NAME/VERSION, runs:/... or hf://NAME")
        if cfg.eval.extractor == "inception":
            weights = expand_path(cfg.eval.inception_weights, "eval.inception_weights")
            if not os.path.isfile(weights):
                raise ConfigError(f"eval.inception_weights: {cfg.eval.inception_weights!r}: no such file (a local Inception weights .pth; never downloaded)")
    if device:
        check_device("train.device", cfg.train.device)
        if gpus and not in_ray_cluster_context():
            require_local_gpus(gpus, gpu_key)
    return cfg


def preflight_pretrain(cfg, *, paths: bool = True, device: bool = True, gpus: int = 0, gpu_key: str = "--gpu"):
    """`preflight` for a pre-training config (`pretrain/config.py`): data and devices (its
    objective is a closed choice the config language checks). Returns `cfg`."""
    check_data(cfg.data, paths=paths)
    if device:
        check_device("train.device", cfg.train.device)
        if gpus and not in_ray_cluster_context():
            require_local_gpus(gpus, gpu_key)
    return cfg


__all__ = [
    "RAY_CLUSTER_ENV", "ResourceError", "allowed", "check_data", "check_device", "in_ray_cluster_context",
    "is_uri", "preflight", "preflight_pretrain", "require_local_gpus",
]
