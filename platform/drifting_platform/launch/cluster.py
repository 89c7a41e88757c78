"""Connecting to Ray: an existing cluster inside a Ray job, else a local one."""

from __future__ import annotations

import os
from typing import Optional

import ray

# environment variables that say "this process runs inside a Ray job / on a cluster node"
_CLUSTER_ENV = ("RAY_ADDRESS", "RAY_JOB_ID", "RAY_JOB_SUBMISSION_ID")


def in_ray_cluster_context() -> bool:
    """True when RAY_ADDRESS is set or this process was started by `ray job submit`."""
    return any(os.environ.get(k) for k in _CLUSTER_ENV)


def ray_init_for_sweep(num_cpus: Optional[int] = None, *, address: Optional[str] = None, **kwargs) -> dict:
    """Make sure Ray is initialised; returns `ray.cluster_resources()`.

    - already initialised: nothing is started;
    - `address` given, or RAY_ADDRESS / a Ray job context present: connect to that cluster
      (`address="auto"` unless RAY_ADDRESS names one);
    - otherwise start a local Ray with `num_cpus` (default: this machine's CPUs), never
      attaching to some other cluster that happens to run on the machine.
    """
    if not ray.is_initialized():
        kwargs.setdefault("include_dashboard", False)
        kwargs.setdefault("log_to_driver", True)
        if address is None and in_ray_cluster_context():
            address = os.environ.get("RAY_ADDRESS") or "auto"
        if address not in (None, "local"):
            ray.init(address=address, **kwargs)
        else:
            ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 1, **kwargs)
    return ray.cluster_resources()
