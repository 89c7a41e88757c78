"""What the two training loops share: `train/loop.py` (the generator) and `pretrain/loop.py`
(feature encoders) are built from the same parts (after NVlabs/edm's `torch_utils/misc.py`).

    ctx = RunContext.start(out_dir, device="auto", threads=None)  # rank, world, device, out/
    ckpt = Checkpointer(ctx, hook)            # out/checkpoint.pt: resume, write, failed writes
    state = ckpt.load(config_dict, identity=("data", "model"))   # None: a fresh run
    log = StepLog(ctx, resume_step, reporter) # out/metrics.jsonl + the reporter (rank 0)
    window = MetricWindow()                    # per-step metrics -> averages per log point
    bar = Progress(enabled, total=..., initial=..., desc=...)
    write_summary(ctx, summary)                # out/summary.json, atomically (rank 0)
    with StopSignals(enabled=ctx.world == 1) as stop:  # a SIGINT / SIGTERM sets stop.signum
        stop.check(done, total, ckpt, state_at)     # at a step boundary: checkpoint, raise

plus the EMA of the generator's weights, the learning-rate schedule `lr_factor` and
`StepRNG`, the per-step random generator. Nothing here imports Ray or MLflow; file names come
from `drifting_platform.rundir`.
"""

from __future__ import annotations

import copy
import json
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from .. import rundir
from ..signals import SignalScope
from . import distributed as D
from .checkpoint import CheckpointError, CheckpointWriteError, load_checkpoint, save_checkpoint

Reporter = Callable[[int, dict], None]  # (step, metrics): called on rank 0 at each log point
CheckpointHook = Callable[[int, Path], None]  # (step, run directory): after each checkpoint


def resolve_device(name: str) -> torch.device:
    """`train.device` ("auto", "cpu", "cuda") as a torch device; "cuda" without one is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible")
    return torch.device(name)


@dataclass(frozen=True)
class RunContext:
    """Who this process is in a run and where the run lives."""

    out: Path  # the run directory (created by rank 0)
    rank: int
    world: int
    device: torch.device
    started: float  # time.time() when the loop was called: every duration is measured from it

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, out_dir: str | Path, *, device: str, threads: Optional[int]) -> "RunContext":
        started = time.time()
        out = Path(out_dir)
        rank, world = D.get_rank(), D.get_world_size()
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
        if threads:
            torch.set_num_threads(threads)
        return cls(out=out, rank=rank, world=world, device=resolve_device(device), started=started)

    def elapsed(self) -> float:
        return time.time() - self.started


class EMA:
    """Exponential moving average of the generator's weights, used for sampling.

    The decay ramps up as min(decay, (1 + step) / (10 + step)) so short runs are not
    dominated by the random initialisation.
    """

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))
        # one multi-tensor kernel for all parameters (the same lerp, without a launch per
        # parameter: a release generator has hundreds of them)
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], 1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


def lr_factor(step: int, *, warmup: int, total: int, schedule: str = "constant") -> float:
    """Linear warm-up over `warmup` steps, then constant or cosine decay to 0 at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


@dataclass(frozen=True)
class StepRNG:
    """A fresh generator per (seed, step), seeded (seed * seed_mult + step * step_mult + offset)
    mod 2^63 - 1: a resumed run draws the same noise as an uninterrupted one without saving
    RNG state. Each loop has its own constants; they fix every run's draws, so they never change."""

    seed_mult: int
    step_mult: int
    offset: int = 0

    def __call__(self, seed: int, step: int) -> torch.Generator:
        return torch.Generator().manual_seed((seed * self.seed_mult + step * self.step_mult + self.offset) % (2**63 - 1))


class Checkpointer:
    """The run's checkpoint.pt: read it on resume, write it (rank 0, then a barrier on every
    rank), and when a write fails, say from which step a rerun of the same command resumes."""

    def __init__(self, ctx: RunContext, hook: Optional[CheckpointHook] = None):
        self.ctx = ctx
        self.path = ctx.out / rundir.CHECKPOINT
        self.hook = hook
        self.last_step: Optional[int] = None  # the step of the checkpoint on disk

    def load(self, config: dict, identity: Sequence[str]) -> Optional[dict]:
        """The saved state (None when there is no checkpoint), after checking that it was
        written for the same `identity` sections of `config` (a plain dict of the config)."""
        if not self.path.exists():
            return None
        state = load_checkpoint(self.path, map_location=self.ctx.device)
        saved = state.get("config", {})
        for key in identity:
            if saved.get(key) != config.get(key):
                raise CheckpointError(f"{self.path}: written for a different {key} config ({saved.get(key)} vs {config.get(key)}); use another --out or delete it")
        self.last_step = int(state["step"])
        return state

    def save(self, step: int, state_at: Callable[[int], dict]) -> None:
        """Write `state_at(step)` (built on rank 0 only), then run the hook."""
        if self.ctx.main:
            try:
                save_checkpoint(state_at(step), self.path)
            except CheckpointWriteError as exc:
                where = f"resumes from step {self.last_step}" if self.last_step else "starts from step 0"
                err = CheckpointWriteError(f"step {step}: {exc}. Training stopped; free space and rerun the same command: it {where}")
                err.errno = exc.errno
                raise err from exc
            self.last_step = step
            if self.hook is not None:
                self.hook(step, self.ctx.out)
        D.barrier()

    def save_diverged(self, state: dict) -> None:
        """The state at a non-finite step as diverged.pt, for a post-mortem: beside the last
        good checkpoint, never over it; a failed write is ignored (rank 0)."""
        if self.ctx.main:
            try:
                save_checkpoint({**state, "diverged": True}, self.ctx.out / rundir.DIVERGED)
            except OSError:
                pass


class TrainingInterrupted(RuntimeError):
    """SIGINT / SIGTERM stopped a run at a step boundary. `step` is where it stopped and
    `checkpoint` the checkpoint a rerun of the same command continues from (None: there is
    none, a rerun starts at step 0); `checkpoint_step` its step (it lags `step` when the
    workers could not write one at the interrupt: Ray Train). The CLI prints the resume
    command and exits with `exit_code` (128 + the signal: 130 for SIGINT, 143 for SIGTERM)."""

    def __init__(self, step: int, total: int, checkpoint: Optional[Path], signum: int, *, checkpoint_step: Optional[int] = None, note: str = ""):
        self.step, self.total, self.signum = int(step), int(total), int(signum)
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.checkpoint_step = int(step) if checkpoint_step is None and checkpoint is not None else checkpoint_step
        self.note = note
        super().__init__(self.describe())

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def describe(self) -> str:
        """"interrupted at step 137 of 400; checkpoint in runs/x/checkpoint.pt" and the like."""
        text = f"interrupted ({self.signal_name}) at step {self.step} of {self.total}"
        if self.checkpoint is None:
            text += "; no checkpoint yet (a rerun starts at step 0)"
        elif self.checkpoint_step is not None and self.checkpoint_step != self.step:
            text += f"; checkpoint of step {self.checkpoint_step} in {self.checkpoint}"
        else:
            text += f"; checkpoint in {self.checkpoint}"
        return text + (f" ({self.note})" if self.note else "")


class StopSignals(SignalScope):
    """While active (a context manager), the first SIGINT or SIGTERM only records itself
    (`signum`): the loop stops at its next step boundary (`check`). A second one raises
    KeyboardInterrupt at once (a hard abort; checkpoint writes are atomic). The previous
    handlers come back on exit. Inert outside the main thread (Ray Train and Tune run loops
    in threads: their drivers own the signals) and when `enabled` is False."""

    def check(self, step: int, total: int, ckpt: "Checkpointer", state_at: Callable[[int], dict], flush: Optional[Callable[[], None]] = None) -> None:
        """At a step boundary (`step` steps done): after a signal, `flush` (the partial log
        window), write the checkpoint of `step` (unless it is on disk already) and raise
        TrainingInterrupted; otherwise nothing."""
        if self.signum is None:
            return
        if flush is not None:
            flush()
        if step > 0 and ckpt.last_step != step:
            ckpt.save(step, state_at)
        raise TrainingInterrupted(step, total, ckpt.path if ckpt.last_step is not None else None, self.signum)


class JsonlLog:
    """metrics.jsonl in the run directory; on resume, lines past the checkpoint are dropped."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        if path.exists():
            keep = []
            for line in path.read_text().splitlines():
                try:
                    if json.loads(line).get("step", 0) <= resume_step:
                        keep.append(line)
                except json.JSONDecodeError:
                    continue  # a line cut by a crash
            path.write_text("".join(k + "\n" for k in keep))

    def __call__(self, step: int, metrics: dict) -> None:
        with self.path.open("a") as fh:
            fh.write(json.dumps({"step": step, **metrics}) + "\n")


class StepLog:
    """Where a log point's metrics go: metrics.jsonl, then the reporter; rank 0 only."""

    def __init__(self, ctx: RunContext, resume_step: int, reporter: Optional[Reporter] = None):
        self.jsonl = JsonlLog(ctx.out / rundir.METRICS, resume_step) if ctx.main else None
        self.reporter = reporter

    def __call__(self, step: int, metrics: dict) -> None:
        if self.jsonl is None:
            return
        self.jsonl(step, metrics)
        if self.reporter is not None:
            self.reporter(step, metrics)


class MetricWindow:
    """Sums of the per-step metrics since the last log point; `mean` averages them, adds the
    throughput `steps_per_sec` and starts the next window."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.n = 0
        self.since = time.time()

    def add(self, metrics: dict) -> None:
        for k, v in metrics.items():
            self.sums[k] = self.sums.get(k, 0.0) + v
        self.n += 1

    def mean(self, **extra: float) -> dict:
        """{metric: mean over the window, **extra, "steps_per_sec": ...}; resets the window."""
        now = time.time()
        avg = {k: v / self.n for k, v in self.sums.items()}
        avg.update(extra)
        avg["steps_per_sec"] = self.n / max(now - self.since, 1e-9)
        self.sums, self.n, self.since = {}, 0, now
        return avg

    def restart_clock(self) -> None:
        """Time spent since the last `mean` (an evaluation) is not training time."""
        self.since = time.time()


class Progress:
    """A tqdm bar of the run's steps, or nothing when disabled."""

    def __init__(self, enabled: bool, *, total: int, initial: int, desc: str):
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True) if enabled else None

    def update(self, postfix: Optional[dict] = None) -> None:
        """One step done; `postfix` (when given) replaces the figures shown beside the bar."""
        if self.bar is None:
            return
        self.bar.update(1)
        if postfix:
            self.bar.set_postfix(**postfix)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def timing_summary(ctx: RunContext, steps: int) -> dict:
    """The summary's first keys: `steps` and the seconds since the loop started (`seconds` is
    updated again after the final evaluation; `train_seconds` is not)."""
    seconds = round(ctx.elapsed(), 2)
    return {"steps": steps, "seconds": seconds, "train_seconds": seconds}


def write_summary(ctx: RunContext, summary: dict) -> None:
    """summary.json, atomically, on rank 0: its presence means the run finished."""
    if ctx.main:
        rundir.write_json(ctx.out / rundir.SUMMARY, summary)
