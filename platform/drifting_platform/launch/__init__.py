"""Launchers: Ray Train (`fit_ray`) and Ray Tune sweeps (`run_sweep`).

The only package that imports Ray, and only once something runs: importing
`drifting_platform.launch`, `launch.spec` or `launch.sweep` does not import Ray, so the CLI
can list commands and a sweep file is validated (its errors reported) without Ray.
`fit_ray` and `ray_init_for_sweep` live in modules that import Ray; they load on first use.

    spec.py          sweep files: strict loading, the sections as frozen dataclasses
    points.py        the trials: grid / rows plans, Optuna points, trial configs
    sweep.py         run_sweep: validate, plan, track, tune, gather
    plan.py          sweep directory, resources, Tune param_space, Optuna, ASHA
    trial.py         the Tune trial function and the trial directory's state
    callback.py      the tracker protocol and the Tune callback that calls it
    encoder_jobs.py  the encoders a sweep's rows use, pre-trained as Ray tasks
    ray_train.py     data-parallel training on Ray Train (fit_ray, make_trainer)
    pretrain.py      encoder pre-training jobs (run_pretrain, ensure_encoder)
    cluster.py       connecting to Ray (a job's cluster, else a local one)
    ablation.py      the `python experiments/ablate_*.py` entry point
"""

from __future__ import annotations

import importlib

from .spec import SweepError, SweepSpec, load_sweep
from .sweep import SweepResult, TrialResult, run_sweep

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

_RAY_MODULES = {"fit_ray": "ray_train", "ray_init_for_sweep": "cluster"}


def __getattr__(name: str):
    if name in _RAY_MODULES:  # these modules import Ray at the top
        return getattr(importlib.import_module(f"{__name__}.{_RAY_MODULES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
