"""Connecting to Ray: an existing cluster inside a Ray job, else a local one; and whether the
GPUs asked for are there, before anything waits for them."""

from __future__ import annotations

import os
from typing import Optional

import ray

from ..preflight import ResourceError, in_ray_cluster_context, require_local_gpus

__all__ = ["check_cluster_gpus", "in_ray_cluster_context", "ray_init_for_sweep"]


def ray_init_for_sweep(num_cpus: Optional[int] = None, *, address: Optional[str] = None, gpus: int = 0, gpu_key: str = "--gpu", **kwargs) -> dict:
    """Make sure Ray is initialised; returns `ray.cluster_resources()`.

    - already initialised: nothing is started;
    - `address` given, or RAY_ADDRESS / a Ray job context present: connect to that cluster
      (`address="auto"` unless RAY_ADDRESS names one);
    - otherwise start a local Ray with `num_cpus` (default: this machine's CPUs), never
      attaching to some other cluster that happens to run on the machine.

    `gpus` > 0: one worker group needs that many GPUs. A local Ray is not started on a
    machine with fewer CUDA GPUs, and a cluster with fewer in total is refused right after
    connecting (`ResourceError` naming `gpu_key`), instead of Ray waiting forever for them.
    """
    started = False
    if not ray.is_initialized():
        kwargs.setdefault("include_dashboard", False)
        kwargs.setdefault("log_to_driver", True)
        if address is None and in_ray_cluster_context():
            address = os.environ.get("RAY_ADDRESS") or "auto"
        if address not in (None, "local"):
            ray.init(address=address, **kwargs)
        else:
            require_local_gpus(gpus, gpu_key)
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
        started = True
    resources = ray.cluster_resources()
    try:
        check_cluster_gpus(resources, gpus, gpu_key)
    except ResourceError:
        if started:
            ray.shutdown()
        raise
    return resources


def check_cluster_gpus(resources: dict, gpus: int, key: str = "--gpu") -> None:
    """ResourceError when the cluster (`ray.cluster_resources()`) has fewer than `gpus` GPUs."""
    have = float(resources.get("GPU", 0))
    if gpus > 0 and have < gpus:
        raise ResourceError(f"{key}: a worker group needs {gpus} GPU(s) but the Ray cluster has {have:g}; drop the GPU request or add GPU nodes")
