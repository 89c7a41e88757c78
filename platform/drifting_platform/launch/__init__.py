"""Launchers: Ray Train (`fit_ray`) and Ray Tune sweeps (`run_sweep`).

The only package that imports Ray. Importing `drifting_platform.launch` itself does not
import Ray: the names below load their modules on first use, so the CLI can list commands
and a sweep file can be validated on a machine without a cluster.
"""

from __future__ import annotations

__all__ = [
    "fit_ray",
    "ray_init_for_sweep",
    "run_sweep",
    "load_sweep",
    "SweepError",
    "SweepSpec",
    "SweepResult",
    "TrialResult",
]

_WHERE = {
    "fit_ray": "ray_train",
    "ray_init_for_sweep": "cluster",
    "run_sweep": "sweep",
    "load_sweep": "sweep",
    "SweepError": "sweep",
    "SweepSpec": "sweep",
    "SweepResult": "sweep",
    "TrialResult": "sweep",
}


def __getattr__(name: str):
    if name in _WHERE:
        import importlib

        module = importlib.import_module(f"{__name__}.{_WHERE[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
