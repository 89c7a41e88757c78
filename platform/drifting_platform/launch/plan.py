"""How a sweep runs on Tune: where, with which resources, over which space, searched how.

- `storage_root` / `tune_storage`: where Tune keeps its state (the sweep directory, or
  `--storage-path`, a shared directory or s3://).
- `plan_resources`: a `workers: 1` trial holds `cpus_per_trial` CPUs (and a GPU, or a share
  of one: `gpu: 0.25` packs four trials onto each GPU); a trial of more workers fits a
  `TorchTrainer` whose workers Train V2 places itself, so the trial function holds no CPU
  and concurrency is capped so that all running trials' workers fit the cluster.
  `cpus_per_trial: auto` shares the cluster's CPUs (as torch threads) among the trials that
  run at once.
- `param_space`: what Tune varies, as the values themselves: grid / rows sweeps
  grid-search over the planned trials' records, Optuna samples `{path: value}`
  (`points.describe` reads either back).
- `optuna_search`: an Optuna study journaled in the sweep directory, resumable;
  `scheduler`: ASHA on `step`, or none.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Optional

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend
from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from .. import storage as storage_lib
from .points import slug, tune_choices
from .spec import SweepError, SweepSpec
from .trial import TrialDir, trial_dirs


def storage_root(spec: SweepSpec, storage_path: Optional[str], sweep_name: str) -> Optional[str]:
    """This sweep's folder under --storage-path (a directory or s3://), or None."""
    if not storage_path:
        return None
    base = storage_path if storage_lib.is_s3(storage_path) else str(Path(storage_path).expanduser().resolve())
    return f"{base.rstrip('/')}/{slug(spec.name)}/{sweep_name}"


def tune_storage(sweep_dir: Path, root: Optional[str]) -> tuple[str, object]:
    """(storage path, filesystem or None) of Tune's state."""
    if root:
        return storage_lib.ray_storage(f"{root}/_tune")
    return str(sweep_dir / "_tune"), None


def tune_name(resume: bool) -> str:
    """Tune's experiment name: each attempt (a resumed sweep is a new one) keeps its own state."""
    return f"tune-resumed-{time.strftime('%Y%m%d-%H%M%S')}" if resume else "tune"


def plan_resources(spec: SweepSpec, cluster: dict) -> tuple[dict, Optional[int], SweepSpec]:
    """(Tune resources of one trial function, max concurrent trials, the spec with its
    `resources` resolved); SweepError if a trial cannot fit.

    `cpus_per_trial: auto` fills the cluster: the trials that can run at once (one per GPU
    share with `gpu`, else one per CPU per worker; at most `max_concurrent` and the number
    of trials) share its CPUs evenly, each worker getting that many CPUs and torch
    threads. A fractional `gpu` packs trials onto GPUs: Ray places 1 / gpu of them on each.
    """
    r = spec.resources
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    w, g = r.workers, r.gpus_per_worker
    where = f"(sweep file {spec.path})"
    if g and gpus < (g if w == 1 else w):
        need = f"{w} GPU workers per trial" if w > 1 else ("a GPU" if g == 1 else f"{g:g} of a GPU")
        raise SweepError(f"resources.{'workers' if w > 1 else 'gpu'}: trials need {need} but the Ray cluster has {gpus:g} GPUs {where}")
    if r.cpus_per_trial == "auto":
        trials = spec.num_samples if spec.search == "optuna" else len(spec.trials)
        slots = int(gpus // (g * w) + 1e-9) if g else int(cpus // w)
        slots = max(1, min(slots, spec.max_concurrent or slots, trials or 1))
        r = dataclasses.replace(r, cpus_per_trial=float(max(1, int(cpus // (slots * w)))))
        spec = dataclasses.replace(spec, resources=r)
    c = float(r.cpus_per_trial)
    if w == 1:
        if c > cpus:
            raise SweepError(f"resources.cpus_per_trial: a trial needs {c:g} CPUs but the Ray cluster has {cpus:g} {where}")
        return {"cpu": c, "gpu": g}, spec.max_concurrent, spec
    if w * c > cpus:
        raise SweepError(f"resources.workers: {w} workers x {c:g} CPUs (cpus_per_trial) = {w * c:g} CPUs per trial, but the Ray cluster has {cpus:g} {where}")
    fit = int(cpus // (w * c))
    if g:
        fit = min(fit, int(gpus // w))
    # the trial function only waits for its TorchTrainer, whose workers Train V2 places
    # itself; it holds no CPU, and the cap keeps all running trials' workers in the cluster
    return {"cpu": 0, "memory": 64 * 1024**2}, min(spec.max_concurrent or fit, fit), spec  # Tune needs a non-empty bundle


def describe_plan(spec: SweepSpec, cluster: dict, trial_res: dict, cap: Optional[int]) -> str:
    """One line for the sweep's start: what each trial holds and how many run at once."""
    r = spec.resources
    cpus, gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    g = r.gpus_per_worker
    each = f"{r.cpus_per_trial:g} CPU(s) / torch thread(s)" + (f" and {g:g} GPU" if g else "")
    if r.workers > 1:
        each = f"{r.workers} workers of {each}"
    by_res = int(cpus // (r.cpus_per_trial * r.workers))
    if g:
        by_res = min(by_res, int(gpus // (g * r.workers) + 1e-9))
    at_once = min(by_res, cap) if cap else by_res
    return f"resources: each trial {each}; up to {max(1, at_once)} at once on the cluster's {cpus:g} CPUs" + (f" and {gpus:g} GPUs" if gpus else "")


def param_space(spec: SweepSpec) -> dict:
    """Tune's param_space: the planned trials' records (grid / rows) or the Optuna space."""
    if spec.search != "optuna":
        return {"trial": tune.grid_search([t.record() for t in spec.trials])}
    space = {}
    for path, s in spec.space.items():
        kind, values = next(iter(s.items()))
        if kind == "choice":
            space[path] = tune.choice(tune_choices(values))
        elif kind == "uniform":
            space[path] = tune.uniform(*values)
        elif kind == "loguniform":
            space[path] = tune.loguniform(*values)
        else:
            space[path] = tune.randint(*values)
    return space


def optuna_search(spec: SweepSpec, sweep_dir: Path, study_name: str, resume: bool) -> tuple[OptunaSearch, int, list[TrialDir]]:
    """OptunaSearch on a study journaled in the sweep directory; with `resume`, the earlier
    attempt's study is reloaded (finished points stay told), its interrupted points are
    re-suggested first (so they continue in their directories) and only the remaining
    samples are drawn. Returns (searcher, samples still to run, earlier points done)."""
    storage = JournalStorage(JournalFileBackend(str(Path(sweep_dir) / "optuna.journal")))
    earlier = trial_dirs(sweep_dir) if resume else []
    done = [d for d in earlier if d.done]
    seed = 0
    if resume:
        try:
            study = optuna.load_study(study_name=study_name, storage=storage)
            # a fresh sampler with the first attempt's seed would draw its points again
            seed = len(study.trials)
            for t in study.trials:
                if t.state == optuna.trial.TrialState.RUNNING:  # the interrupted attempt's
                    study.tell(t.number, state=optuna.trial.TrialState.FAIL)
        except KeyError:  # no study yet
            pass
    points = [d.record()["config"] for d in earlier if not d.done]
    search = OptunaSearch(seed=seed, storage=storage, study_name=study_name, points_to_evaluate=points or None)
    return search, max(0, spec.num_samples - len(done)), done


def scheduler(spec: SweepSpec) -> Optional[ASHAScheduler]:
    """ASHA on the `step` of each result (`scheduler: asha`), or None."""
    if spec.scheduler.name != "asha":
        return None
    return ASHAScheduler(
        time_attr="step", max_t=spec.max_steps, grace_period=spec.scheduler.grace_period,
        reduction_factor=spec.scheduler.reduction_factor,
    )
