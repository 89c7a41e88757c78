"""Data-parallel training on Ray Train (Train V2): `fit_ray`.

Every worker of a `TorchTrainer` runs the framework-neutral `training_loop`. Ray sets up the
process group (gloo on CPU, NCCL on GPU); the loop shards class groups by rank, draws the
noise of the global batch and keeps its slice, and takes global batch means inside the
drift loss, so N workers train like one worker with the same global batch.

Reporting under Train V2. `ray.train.report` is a barrier: every rank must call it the same
number of times. The loop calls its `reporter` and `checkpoint_hook` on rank 0 only, so the
other ranks run a *shadow reporter*: a thread that waits on
`ray.train.collective.broadcast_from_rank_zero` for rank 0's next message and answers
"report" with an empty `ray.train.report({})` (and "done" by leaving). Rank 0 announces each
report before making it, and sends "done" after the loop returns. Nothing has to predict
when the loop reports, so the protocol survives changes to the loop's schedule.

Checkpoints. After each `checkpoint.pt` the loop calls `checkpoint_hook(step, run_dir)` on
rank 0; it copies the file into a fresh directory and reports it with
`Checkpoint.from_directory`, which Ray copies into the run's storage. When the worker group
is restarted (`FailureConfig(max_failures)`), `ray.train.get_checkpoint()` holds the latest
one: each rank copies its `checkpoint.pt` where the loop looks (rank 0: the run directory,
other ranks: a private scratch directory, so no rank reads a half-written file) and the
loop resumes from it. Evaluation (FID, samples) runs on rank 0 only.

Polling. Train V2's controller looks at its workers every `RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`
(Ray's default: 2 s), and everything waits for that look: a `ray.train.report` blocks
until the controller has taken the previous one (a queue of one), a reported checkpoint
until it is registered, and the end of training is noticed at the next poll. With 2 s, a
loop that reports more often than every 2 s is throttled to Ray's pace, each checkpoint
costs up to 2 s and each run ~4 s at the end. `make_trainer` therefore sets the interval
to `POLL_INTERVAL_S` unless the variable is set already (Ray passes it on to the
controller and the workers); set it yourself to choose another value.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

import ray
import ray.train
import torch
from ray.train import Checkpoint, CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.collective import broadcast_from_rank_zero
from ray.train.torch import TorchConfig, TorchTrainer, get_device

from .. import rundir
from .. import storage as storage_lib
from .. import tracking  # noqa: F401 - registers the models:/ and runs:/ encoder-source resolvers in workers
from ..config import Config, ConfigError
from ..pretrain.config import PretrainConfig
from ..pretrain.loop import pretrain_loop
from ..train import training_loop
from ..train.checkpoint import CheckpointError, load_checkpoint
from ..train.kit import StopSignals, TrainingInterrupted
from .cluster import ray_init_for_sweep

_REPORT, _DONE = "report", "done"

POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"  # Ray Train V2's controller poll interval
POLL_INTERVAL_S = "0.25"  # ours, unless the user set POLL_ENV (see the module docstring)


# --------------------------------------------------------------------------- worker side


class _ShadowReporter(threading.Thread):
    """On ranks > 0: mirrors rank 0's `ray.train.report` calls (see the module docstring)."""

    def __init__(self):
        super().__init__(name="drifting-shadow-reporter", daemon=True)
        self.error: Optional[BaseException] = None

    def run(self) -> None:
        try:
            while True:
                msg = broadcast_from_rank_zero(None)
                if msg == _DONE:
                    return
                ray.train.report({})
        except BaseException as exc:  # surfaced by the worker's main thread
            self.error = exc


class _Rank0Reporter:
    """Rank 0's side: the loop's `reporter` and `checkpoint_hook`, collective-safe."""

    def __init__(self, world: int):
        self.world = world
        self.last: dict[str, Any] = {}

    def _announce(self, msg: str) -> None:
        if self.world > 1:
            broadcast_from_rank_zero(msg)

    def metrics(self, step: int, metrics: dict) -> None:
        self.last = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
        self._announce(_REPORT)
        ray.train.report(dict(self.last))

    def checkpoint(self, step: int, run_dir: Path) -> None:
        staging = Path(tempfile.mkdtemp(prefix="drifting-ckpt-"))
        try:
            shutil.copy2(Path(run_dir) / rundir.CHECKPOINT, staging / rundir.CHECKPOINT)
            (staging / "meta.json").write_text(json.dumps({"step": int(step)}))
            self._announce(_REPORT)
            ray.train.report({**self.last, "step": int(step), "checkpoint_step": int(step)}, checkpoint=Checkpoint.from_directory(str(staging)))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def done(self) -> None:
        self._announce(_DONE)


def _restore(checkpoint: Optional[Checkpoint], run_dir: Path, initial: Optional[str]) -> bool:
    """Put the checkpoint to resume from at run_dir/checkpoint.pt; True when there is one."""
    src_ctx = None
    if checkpoint is not None:
        src_ctx = checkpoint.as_directory()
        src = Path(src_ctx.__enter__()) / rundir.CHECKPOINT
    elif initial:
        src = Path(initial)
    else:
        return False
    try:
        if not src.is_file():
            raise FileNotFoundError(f"{src}: checkpoint to resume from is missing")
        run_dir.mkdir(parents=True, exist_ok=True)
        dst = run_dir / rundir.CHECKPOINT
        if src.resolve() != dst.resolve():
            tmp = dst.with_suffix(".restore.tmp")
            shutil.copy2(src, tmp)
            os.replace(tmp, dst)
        return True
    finally:
        if src_ctx is not None:
            src_ctx.__exit__(None, None, None)


def _loop_for(cfg):
    """The framework-neutral loop that runs `cfg`: drifting training or encoder pre-training."""
    return pretrain_loop if isinstance(cfg, PretrainConfig) else training_loop


def _train_worker(config: dict) -> None:
    """The per-worker function of the TorchTrainer."""
    cfg = config["cfg"]
    loop = _loop_for(cfg)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if config["gpu"]:
        torch.cuda.set_device(get_device())
    run_dir = Path(config["run_dir"]) if rank == 0 else Path(tempfile.mkdtemp(prefix=f"drifting-rank{rank}-"))
    try:
        resume = _restore(ray.train.get_checkpoint(), run_dir, config.get("initial_checkpoint"))
        if rank == 0:
            rep = _Rank0Reporter(world)
            loop(
                cfg, run_dir, reporter=rep.metrics if config["report_metrics"] else None, checkpoint_hook=rep.checkpoint,
                resume=resume, progress=config["progress"], evaluate=config["evaluate"],
            )
            rep.done()
        else:
            shadow = _ShadowReporter()
            shadow.start()
            loop(cfg, run_dir, resume=resume, progress=False, evaluate=False)
            shadow.join()  # returns once rank 0 sent "done" (after its evaluation)
            if shadow.error is not None:
                raise shadow.error
    finally:
        if rank != 0:
            shutil.rmtree(run_dir, ignore_errors=True)


# --------------------------------------------------------------------------- driver side


def worker_cfg(cfg, *, gpu: bool, cpus_per_worker: int):
    """The config as each worker runs it: device from `gpu`, torch threads <= its CPUs."""
    tc = cfg.train
    if gpu and tc.device == "cpu":
        raise ConfigError("train.device: 'cpu' but the workers were asked for GPUs (gpu=True)")
    if not gpu and tc.device == "cuda":
        raise ConfigError("train.device: 'cuda' but the workers have no GPU (gpu=False)")
    device = ("cuda" if gpu else "cpu") if tc.device == "auto" else tc.device
    threads = tc.threads
    if not gpu:
        threads = max(1, min(threads or cpus_per_worker, cpus_per_worker))
    return dataclasses.replace(cfg, train=dataclasses.replace(tc, device=device, threads=threads))


def make_trainer(
    cfg: Config,
    run_dir: str | Path,
    *,
    workers: int = 1,
    gpu: bool = False,
    cpus_per_worker: int = 1,
    max_failures: int = 2,
    storage_path: Optional[str] = None,
    name: Optional[str] = None,
    progress: bool = False,
    evaluate: bool = True,
    report_metrics: bool = True,
    initial_checkpoint: Optional[str] = None,
    callbacks: Optional[list] = None,
) -> TorchTrainer:
    """The TorchTrainer of one data-parallel run (used by `fit_ray` and by sweeps)."""
    if workers < 1:
        raise ConfigError(f"workers: must be >= 1, got {workers}")
    if isinstance(cfg, Config) and cfg.sampling.n_classes % workers:
        raise ConfigError(f"sampling.n_classes: {cfg.sampling.n_classes} class groups cannot be split evenly over {workers} workers")
    if not isinstance(cfg, Config) and cfg.train.batch_size % workers:
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} cannot be split evenly over {workers} workers")
    run_dir = Path(run_dir).expanduser().resolve()
    # s3://bucket/prefix -> ("bucket/prefix", S3FileSystem for the AWS_ENDPOINT_URL endpoint)
    storage, storage_fs = storage_lib.ray_storage(storage_path) if storage_path else (str(run_dir / "ray"), None)
    loop_config = {
        "cfg": worker_cfg(cfg, gpu=gpu, cpus_per_worker=cpus_per_worker),
        "run_dir": str(run_dir),
        "gpu": gpu,
        "progress": progress,
        "evaluate": evaluate,
        "report_metrics": report_metrics,
        "initial_checkpoint": initial_checkpoint,
    }
    resources = {"CPU": cpus_per_worker}
    if gpu:
        resources["GPU"] = 1
    os.environ.setdefault(POLL_ENV, POLL_INTERVAL_S)  # read when the trainer starts its controller
    return TorchTrainer(
        _train_worker,
        train_loop_config=loop_config,
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu, resources_per_worker=resources),
        run_config=RunConfig(
            name=name or f"{cfg.name}-{int(time.time())}",
            storage_path=storage,
            storage_filesystem=storage_fs,
            failure_config=FailureConfig(max_failures=max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=callbacks,
        ),
    )


def _fit_interruptibly(trainer: TorchTrainer, run_dir: Path, total: int):
    """`trainer.fit()` in a thread, so that this (main) thread keeps SIGINT / SIGTERM: Train
    V2 takes SIGINT for an abort that waits on its controller, which waits forever on a
    resource request no node can fill. On a signal Ray is shut down, which stops the
    workers (a local Ray ends; a cluster ends this driver's job and its actors), and
    `TrainingInterrupted` names the last checkpoint rank 0 wrote (every `train.ckpt_every`
    steps: the workers are not asked for one at the interrupt)."""
    box: dict[str, Any] = {}

    def fit() -> None:
        try:
            box["result"] = trainer.fit()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = exc

    thread = threading.Thread(target=fit, name="drifting-fit", daemon=True)
    with StopSignals(announce="stopping the Ray Train workers") as stop:
        thread.start()
        while thread.is_alive() and not stop.requested:
            thread.join(0.2)
        if stop.requested:
            ray.shutdown()
            raise _interrupted(run_dir, total, stop.signum)
    if "error" in box:
        raise box["error"]
    return box["result"]


def _interrupted(run_dir: Path, total: int, signum: int) -> TrainingInterrupted:
    """Where a Ray Train run stood when the driver stopped it: the last logged step and the
    checkpoint on disk (rank 0's run_dir/checkpoint.pt)."""
    path = run_dir / rundir.CHECKPOINT
    ckpt_step = None
    if path.is_file():
        try:
            ckpt_step = int(load_checkpoint(path)["step"])
        except CheckpointError:
            ckpt_step = None
    logged = max((step for step, _ in rundir.read_metrics(run_dir / rundir.METRICS)), default=0)
    step = max(logged, ckpt_step or 0)
    note = "the Ray Train workers were stopped; a rerun continues from the last checkpoint they wrote (train.ckpt_every)"
    return TrainingInterrupted(step, total, path if ckpt_step is not None else None, signum, checkpoint_step=ckpt_step, note=note)


def fit_ray(
    cfg: Config,
    out_dir: str | Path,
    *,
    workers: int = 1,
    gpu: bool = False,
    cpus_per_worker: int = 1,
    max_failures: int = 2,
    storage_path: Optional[str] = None,
    progress: bool = False,
    resume: bool = True,
    evaluate: bool = True,
) -> dict:
    """Train `cfg` on `workers` Ray Train workers; returns rank 0's summary (summary.json).

    `cfg` is an experiment `Config` (the drifting loop) or a `PretrainConfig` (encoder
    pre-training, `pretrain/loop.py`); both run on the same launcher.

    Starts a local Ray (this machine's CPUs) unless Ray is initialised or a cluster is
    reachable through RAY_ADDRESS / a Ray job. `out_dir` is the run directory (rank 0
    writes it; on a multi-node cluster it must be on a shared file system). `storage_path`
    is where Ray keeps reported checkpoints and results: a shared directory or an
    `s3://bucket/prefix` (endpoint and credentials from the AWS environment, see
    `drifting_platform.storage`); default `out_dir/ray`. With
    `resume` and an existing `out_dir/checkpoint.pt`, training continues from it.
    SIGINT / SIGTERM stop the workers and raise `TrainingInterrupted` (`_fit_interruptibly`).
    """
    # GPUs that are not there are refused here (before a local Ray starts, or right after
    # connecting to a cluster), not waited for by the trainer
    ray_init_for_sweep(gpus=workers if gpu else 0)
    run_dir = Path(out_dir).expanduser().resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    initial = run_dir / rundir.CHECKPOINT
    summary_path = run_dir / rundir.SUMMARY
    if summary_path.exists():
        summary_path.unlink()  # a stale summary must not pass for this run's
    trainer = make_trainer(
        cfg, run_dir, workers=workers, gpu=gpu, cpus_per_worker=cpus_per_worker, max_failures=max_failures,
        storage_path=storage_path, progress=progress, evaluate=evaluate,
        initial_checkpoint=str(initial) if resume and initial.exists() else None,
    )
    total = cfg.total_steps if isinstance(cfg, PretrainConfig) else cfg.train.steps
    result = _fit_interruptibly(trainer, run_dir, total)
    if result.error is not None:
        raise result.error
    if not summary_path.exists():
        raise RuntimeError(f"{summary_path}: the Ray Train run finished without writing its summary")
    return json.loads(summary_path.read_text())
