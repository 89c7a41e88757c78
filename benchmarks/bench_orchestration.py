"""Orchestration overhead (issue 6 item 3): the same training config in the plain loop, on
Ray Train (1 and 2 workers) and inside a Ray Tune trial, measured in one run.

Config: digits 8x8 (the digits config's conv-s generator and random CNN encoder),
class-conditional with CFG, 10 classes x 16 generated / 16 positive + 8 unconditional
samples per step (the encoder ablation's batch), 80 steps with metrics every 10 (the loop's
reporter hook, i.e. `ray.train.report` / `tune.report`, ~1 report/s), no intermediate
checkpoints or quick evaluations; the final checkpoint is written (and, on Ray Train,
reported).

Measured for each launcher:
- steady-state steps/s: the loop's own `steps_per_sec` of each log window (metrics.jsonl,
  rank 0), median of the windows after the first; the plain loop runs before and after
  the launcher runs it is compared with, and the median pools both runs' windows;
- time to first step: from the launcher call (`training_loop`, `fit_ray`, `run_sweep`) to
  the end of the first training step = (loop start - call) + the loop's
  `first_step_seconds` (summary.json; `timing.loop_started_at` is the loop's start); the
  in-process reference is the first plain run (torch imported, nothing else warm);
- fixed overhead: wall time of the call minus the loop's own time (`seconds` in
  summary.json: setup, steps, checkpoint and, for the Tune trial, its final evaluation),
  i.e. what Ray / Tune add before the loop starts and after it returns. The sweep has two
  trials, one after the other: the first is measured from the `run_sweep` call to its
  loop's end; for the second (a short one) the note gives the gap between the two loops
  (a reused trial process: no new process, no imports) and the tail until `run_sweep`
  returns.

Like is compared with like: the plain loop with 1 torch thread vs 1 Ray Train worker (1 CPU,
1 thread) and vs a Tune trial (`resources.workers: 1`, 1 CPU: the loop runs inside the trial
process); 2 Ray Train workers (1 CPU and 1 thread each, the same global batch split over
them, gloo all-reduces) vs the plain loop with 2 threads. Ratio = launcher steps/s / plain
steps/s (target >= 0.9; 0.85 for 2 workers, issue 17). The 2-worker row's note gives the
collectives per step from the run's summary (`data_parallel`). One `ray.init` (local, this machine's CPUs) serves all Ray
measurements; it is shut down at the end unless Ray was already running. The sweep runs
without MLflow tracking (tracker=False): tracking is measured nowhere here. With `quick`,
only the plain loop and the Tune trial run (Ray Train's worker start-up alone is ~8 s).

    python benchmarks/bench_orchestration.py [--quick]
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "configs" / "digits.yaml"


SAMPLING = ["sampling.n_classes=10", "sampling.n_gen=16", "sampling.n_pos=16", "sampling.n_unc=8"]


def _overrides(steps: int, log_every: int, threads: int) -> list[str]:
    return [
        *SAMPLING, f"train.steps={steps}", f"train.log_every={log_every}", "train.ckpt_every=0", "train.eval_every=0",
        "train.warmup_steps=2", f"train.threads={threads}", "eval.num_samples=100",
    ]


def _cfg(steps, log_every, threads):
    from drifting_platform.config import load_config

    return load_config(CONFIG, "smoke", _overrides(steps, log_every, threads))


def _measure(run_dir: Path, call_start: float, call_end: float) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    rates = [json.loads(line)["steps_per_sec"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    started = summary["timing"]["loop_started_at"]
    launch = max(0.0, started - call_start)
    windows = rates[1:] if len(rates) > 1 else rates
    return {
        "windows": windows,
        "steps_per_sec": statistics.median(windows),
        "first_step": launch + summary["first_step_seconds"],
        "loop_first_step": summary["first_step_seconds"],
        "launch": launch,
        "overhead": max(0.0, (call_end - call_start) - summary["seconds"]),
        "wall": call_end - call_start,
        "loop_seconds": summary["seconds"],
        "data_parallel": summary.get("data_parallel"),
    }


def _plain(tmp: Path, steps, log_every, threads, tag: str = "") -> dict:
    from drifting_platform.train import training_loop

    d = tmp / f"plain-{threads}t{tag}"
    t0 = time.time()
    training_loop(_cfg(steps, log_every, threads), d, progress=False, evaluate=False, resume=False)
    return _measure(d, t0, time.time())


def _pooled(a: dict, b: dict) -> dict:
    """Two plain-loop runs bracketing the launcher runs: steps/s = median of all their
    windows (this machine's speed drifts by ~10% between runs); first-step time of the first."""
    return {**a, "windows": a["windows"] + b["windows"], "steps_per_sec": statistics.median(a["windows"] + b["windows"])}


def _ray_train(tmp: Path, steps, log_every, workers) -> dict:
    from drifting_platform.launch.ray_train import fit_ray

    d = tmp / f"ray-{workers}w"
    t0 = time.time()
    fit_ray(_cfg(steps, log_every, 1), d, workers=workers, cpus_per_worker=1, evaluate=False, resume=False, max_failures=0)
    return _measure(d, t0, time.time())


def _tune(tmp: Path, steps, log_every) -> dict:
    from drifting_platform.launch.sweep import run_sweep

    sweep = tmp / "bench_sweep.yaml"
    sweep.write_text(json.dumps({
        "name": "bench-orchestration", "base": str(CONFIG), "preset": "smoke",
        "set": _overrides(steps, log_every, 1), "search": "grid",
        # the second (short) trial runs after the first in the same, reused trial process
        "rows": [{"name": "first", "set": {"seed": 0}}, {"name": "second", "set": {"seed": 1, "train.steps": 10}}],
        "resources": {"cpus_per_trial": 1, "workers": 1}, "max_concurrent": 1, "max_failures": 0,
        "metric": {"name": "fid", "mode": "min"},
    }))
    t0 = time.time()
    result = run_sweep(sweep, out_root=tmp / "sweeps", tracker=False, verbose=0)
    t1 = time.time()
    for trial in result.trials:
        if trial.status != "FINISHED":
            raise RuntimeError(f"benchmark trial {trial.label} {trial.status}: {trial.error}")
    first, second = (json.loads((Path(t.trial_dir) / "summary.json").read_text()) for t in result.trials)
    first_end = first["timing"]["loop_started_at"] + first["seconds"]
    second_end = second["timing"]["loop_started_at"] + second["seconds"]
    out = _measure(Path(result.trials[0].trial_dir), t0, first_end)
    out["second"] = {
        "launch": second["timing"]["loop_started_at"] - first_end,  # between the two trials' loops
        "loop_first_step": second["first_step_seconds"],
        "tail": t1 - second_end,  # after the last trial until run_sweep returns
    }
    return out


def run(quick: bool = False) -> list[dict]:
    import ray

    from drifting_platform.launch.cluster import ray_init_for_sweep

    steps, log_every = (20, 5) if quick else (80, 10)
    threads_before = torch.get_num_threads()
    rows: list[dict] = []
    started_ray = not ray.is_initialized()
    with tempfile.TemporaryDirectory(prefix="bench-orch-") as tmp:
        tmp = Path(tmp)
        old_home = os.environ.get("DRIFTING_HOME")
        os.environ["DRIFTING_HOME"] = str(tmp / "home")
        try:
            plain1a = _plain(tmp, steps, log_every, 1)
            t = time.time()
            ray_init_for_sweep(log_to_driver=False)  # workers' logs stay in Ray's session folder
            ray_init_s = time.time() - t
            tune1 = _tune(tmp, steps, log_every)
            ray1 = None if quick else _ray_train(tmp, steps, log_every, 1)
            plain1 = plain1a if quick else _pooled(plain1a, _plain(tmp, steps, log_every, 1, "b"))
            cases = [("Tune trial, workers: 1 (1 CPU, 1 thread, loop in the trial) vs plain loop (1 thread)", tune1, plain1)]
            if not quick:
                cases.insert(0, ("Ray Train, 1 worker (1 CPU, 1 thread) vs plain loop (1 thread)", ray1, plain1))
                plain2a = _plain(tmp, steps, log_every, 2)
                ray2 = _ray_train(tmp, steps, log_every, 2)
                plain2 = _pooled(plain2a, _plain(tmp, steps, log_every, 2, "b"))
                cases.append(("Ray Train, 2 workers (1 CPU, 1 thread each; same global batch) vs plain loop (2 threads)", ray2, plain2))
        finally:
            if started_ray:
                ray.shutdown()
            if old_home is None:
                os.environ.pop("DRIFTING_HOME", None)
            else:
                os.environ["DRIFTING_HOME"] = old_home
            torch.set_num_threads(threads_before)
    case = f"digits 8x8 CFG, 10x(16 gen + 16 pos) + 8 unc, {steps} steps, log every {log_every}"
    for label, ours, base in cases:
        note = (
            f"time to first step {ours['first_step']:.1f} s vs {plain1a['first_step']:.1f} s in process "
            f"(launch {ours['launch']:.1f} s + loop setup and step {ours['loop_first_step']:.1f} s); "
            f"fixed overhead per run {ours['overhead']:.1f} s (wall {ours['wall']:.1f} s - loop {ours['loop_seconds']:.1f} s); "
            f"ray.init {ray_init_s:.1f} s once, not counted; log windows {min(ours['windows']):.1f}-{max(ours['windows']):.1f} "
            f"vs {min(base['windows']):.1f}-{max(base['windows']):.1f} steps/s"
        )
        if "second" in ours:
            sec = ours["second"]
            note += (f"; a second trial in the reused trial process: launch {sec['launch']:.2f} s + loop setup and step "
                     f"{sec['loop_first_step']:.1f} s; run_sweep returns {sec['tail']:.1f} s after the last loop")
        dp = ours.get("data_parallel")
        if dp:
            note += (f"; collectives per step: {dp['drift_loss_all_reduces_per_step']:g} drift-loss all-reduces (all feature sets' "
                     f"global statistics; 75 before issue 17) + {dp.get('gradient_buckets', '?')} DDP gradient bucket(s)")
        rows.append({
            "benchmark": "orchestration: steady-state steps/s", "case": f"{case}; {label}",
            "baseline": base["steps_per_sec"], "ours": ours["steps_per_sec"], "unit": "steps/s",
            "ratio": ours["steps_per_sec"] / base["steps_per_sec"], "target": 0.85 if "2 workers" in label else 0.9,
            "note": note,
        })
    return rows


if __name__ == "__main__":
    from _common import main

    main(run)
