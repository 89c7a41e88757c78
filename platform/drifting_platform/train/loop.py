"""The framework-neutral training loop (contract 3).

One function, `training_loop`, with explicit keyword arguments (after NVlabs/edm's
`training/training_loop.py`). It imports neither Ray nor MLflow: metrics leave through the
`reporter` hook, the process group (if any) was set up by whoever launched us, and rank 0
writes checkpoints. The same loop runs under plain `python`, `torchrun`, a Ray Train worker
and the tests.

One step (paper Sec. 3 and Alg. 1, class-conditional as in Sec. 3.5):
  1. pick N_c classes; per class draw n_gen noises, a CFG scale alpha and n_pos positives;
     draw N_unc unconditional data samples (the CFG negatives);
  2. x = f(eps, c, alpha); features of x, of the positives and of the unconditional samples
     through the frozen encoder (the data samples' features come from a bank computed once
     before the first step when `train.feature_bank` allows it: `feature_bank.py`);
  3. loss = sum over feature sets of drift_loss(gen, pos, unc, weight_neg=(alpha-1)(n_gen-1)/N_unc);
  4. AdamW step, gradient clipping, EMA update.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Optional

import torch

from .. import config as config_lib
from ..config import Config
from ..drift import cfg_negative_weight, sample_cfg_alpha
from . import distributed as D
from .checkpoint import CHECKPOINT_NAME, CheckpointError, CheckpointWriteError, load_checkpoint, save_checkpoint
from .objective import group_drift_loss, spread_ratio

Reporter = Callable[[int, dict], None]

# config sections that define what a checkpoint's weights mean; a resumed run must match
# (train.feature_bank is not among them: banking does not change results)
_IDENTITY_KEYS = ("data", "model", "encoder")


class TrainingDiverged(RuntimeError):
    """The loss or a diagnostic became NaN / infinite; names the step and the metric."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is visible")
    return torch.device(name)


def build_data(cfg: Config):
    """The config's data set (paths expanded; nothing is downloaded)."""
    from ..data import build_dataset

    d = cfg.data
    return build_dataset(
        d.name, n=d.n, size=d.size, root=config_lib.expand_path(d.root, "data.root"),
        path=config_lib.expand_path(d.path, "data.path"), limit=d.limit, seed=cfg.seed,
    )


def build_model(cfg: Config, dataset) -> torch.nn.Module:
    """The config's generator for `dataset`, initialised from the experiment's seed."""
    from ..models import build_generator

    torch.manual_seed(cfg.seed)
    if cfg.model.init:
        return release_generator(cfg.model.init, dataset)
    try:
        return build_generator(cfg.model.name, data_shape=tuple(dataset.shape), num_classes=dataset.num_classes, **cfg.model.kwargs)
    except TypeError as exc:
        raise config_lib.ConfigError(f"model.kwargs: {exc}") from None


def release_generator(init: str, dataset) -> torch.nn.Module:
    """The generator of a released artifact (model.init), checked against the data set."""
    from ..release import ReleaseError, load_release

    try:
        gen, meta = load_release(init, kind="gen")
    except ReleaseError as exc:
        raise config_lib.ConfigError(f"model.init: {exc}") from None
    if tuple(gen.data_shape) != tuple(dataset.shape):
        raise config_lib.ConfigError(f"model.init: {init} generates {tuple(gen.data_shape)}, the data set {dataset.name!r} has samples {tuple(dataset.shape)}")
    if gen.config["num_classes"] < dataset.num_classes:
        raise config_lib.ConfigError(f"model.init: {init} embeds {gen.config['num_classes']} classes, the data set has {dataset.num_classes}")
    gen.num_classes = int(dataset.num_classes)
    gen.release_identity = meta["identity"]  # recorded in summary.json and by the trackers
    return gen.train()


def build_components(cfg: Config, device: torch.device | str = "cpu"):
    """Dataset, frozen encoder and generator exactly as the config describes them."""
    from ..encoders import build_encoder

    dataset = build_data(cfg)
    try:
        kwargs = dict(cfg.encoder.kwargs)
        if cfg.encoder.source:
            kwargs["source"] = cfg.encoder.source
        encoder = build_encoder(cfg.encoder.name, tuple(dataset.shape), **kwargs)
    except TypeError as exc:
        raise config_lib.ConfigError(f"encoder.kwargs: {exc}") from None
    except (ValueError, FileNotFoundError) as exc:
        if cfg.encoder.source:  # a source that does not fit this data or does not exist
            raise config_lib.ConfigError(f"encoder.source: {exc}") from None
        raise
    return dataset, encoder.to(device), build_model(cfg, dataset).to(device)


def _check_compatible(cfg: Config, dataset) -> None:
    s = cfg.sampling
    if s.n_classes > dataset.num_classes:
        raise config_lib.ConfigError(f"sampling.n_classes: {s.n_classes} classes per step but the data set has {dataset.num_classes}")
    if cfg.cfg.enabled and dataset.num_classes < 2:
        raise config_lib.ConfigError("cfg.enabled: CFG needs a class-conditional data set")


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
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - d)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


def _step_rng(seed: int, step: int) -> torch.Generator:
    # a fresh generator per (seed, step): a resumed run draws the same noise and alphas as
    # an uninterrupted one without saving RNG state
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 7919) % (2**63 - 1))


def lr_factor(step: int, *, warmup: int, total: int, schedule: str = "constant") -> float:
    """Linear warm-up over `warmup` steps, then constant or cosine decay to 0 at `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(total - warmup, 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


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


def training_loop(
    cfg: Config,
    out_dir: str | Path,
    *,
    reporter: Optional[Reporter] = None,  # called on rank 0 every train.log_every steps
    resume: bool = True,  # continue from out_dir/checkpoint.pt when it exists
    progress: bool = True,  # a tqdm bar on rank 0
    evaluate: bool = True,  # final metrics, samples.npz, grid and summary.json
    checkpoint_hook: Optional[Callable[[int, Path], None]] = None,  # after each checkpoint
) -> dict:
    """Train the generator of `cfg`; returns (and writes, on rank 0) the summary."""
    t0 = time.time()
    out = Path(out_dir)
    rank, world = D.get_rank(), D.get_world_size()
    main = rank == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    s, tc = cfg.sampling, cfg.train

    dataset, encoder, generator = build_components(cfg, device)
    _check_compatible(cfg, dataset)
    if s.n_classes % world != 0:
        raise config_lib.ConfigError(f"sampling.n_classes: {s.n_classes} class groups cannot be split evenly over {world} workers")

    from ..data import ClassGroupedSampler

    sampler = ClassGroupedSampler(dataset.y, dataset.num_classes, n_classes=s.n_classes, n_pos=s.n_pos, n_unc=s.n_unc, seed=cfg.seed)
    if world > 1:
        sampler = sampler.shard(rank, world)
    n_groups = s.n_classes // world
    data_x = dataset.x.to(device)

    opt = torch.optim.AdamW(generator.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay)
    ema = EMA(generator, tc.ema_decay)
    start_step = 0
    ckpt_path = out / CHECKPOINT_NAME
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=device)
        saved = state.get("config", {})
        now = config_lib.to_dict(cfg)
        for key in _IDENTITY_KEYS:
            if saved.get(key) != now[key]:
                raise CheckpointError(f"{ckpt_path}: written for a different {key} config ({saved.get(key)} vs {now[key]}); use another --out or delete it")
        generator.load_state_dict(state["generator"])
        ema.model.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        start_step = int(state["step"])
        for _ in range(start_step):  # replay the sampler so batches continue where they were
            sampler.sample()
        D.print0(f"resumed from {ckpt_path} at step {start_step}")

    model = generator
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(generator, device_ids=[device.index] if device.type == "cuda" else None)

    log = JsonlLog(out / "metrics.jsonl", start_step) if main else None
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16")
    use_cfg = cfg.cfg.enabled and dataset.num_classes > 1

    # features of the data samples (positives, unconditional negatives), computed once under
    # the step's autocast setting; every rank banks the whole (small) data set
    from .feature_bank import lookup, prepare_feature_bank

    bank, bank_info = prepare_feature_bank(cfg, encoder, data_x, autocast=amp)

    last_saved = {"step": start_step if start_step else None}

    def save(step: int) -> None:
        if main:
            try:
                save_checkpoint(
                    {
                    "step": step,
                    "generator": generator.state_dict(),
                    "ema": ema.model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "config": config_lib.to_dict(cfg),
                    "data": {"name": dataset.name, "shape": list(dataset.shape), "num_classes": int(dataset.num_classes), "kind": dataset.kind},
                    },
                    ckpt_path,
                )
            except CheckpointWriteError as exc:
                where = f"resumes from step {last_saved['step']}" if last_saved["step"] else "starts from step 0"
                err = CheckpointWriteError(f"step {step}: {exc}. Training stopped; free space and rerun the same command: it {where}")
                err.errno = exc.errno
                raise err from exc
            last_saved["step"] = step
            if checkpoint_hook is not None:
                checkpoint_hook(step, out)
        D.barrier()

    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=tc.steps, initial=start_step, desc=cfg.name, unit="step", dynamic_ncols=True)

    quick = None
    if tc.eval_every and main:
        from .evaluate import QuickEval

        quick = QuickEval(cfg, dataset, n=tc.eval_samples, device=device)

    window: dict[str, float] = {}
    window_n = 0
    first_step_seconds = None
    step_time = time.time()
    generator.train()
    for step in range(start_step, tc.steps):
        # noise and alphas are drawn for all class groups of the step and each rank keeps
        # its slice: N workers see exactly the batch that one worker would
        rng = _step_rng(cfg.seed, step)
        batch = sampler.sample()
        classes = batch.classes.to(device)  # [N_c / world]
        labels = classes.repeat_interleave(s.n_gen)  # [N_c / world * n_gen]
        if use_cfg:
            if cfg.cfg.gamma is not None:
                alpha = torch.full((s.n_classes,), 1.0 / (1.0 - cfg.cfg.gamma))
            else:
                alpha = sample_cfg_alpha(s.n_classes, low=cfg.cfg.alpha_min, high=cfg.cfg.alpha_max, power=cfg.cfg.alpha_power, generator=rng)
        else:
            alpha = torch.ones(s.n_classes)
        z = torch.randn(s.n_classes * s.n_gen, generator.noise_dim, generator=rng)
        mine = slice(rank * n_groups, (rank + 1) * n_groups)
        alpha = alpha[mine].to(device)
        z = z[rank * n_groups * s.n_gen : (rank + 1) * n_groups * s.n_gen].to(device)
        pos_idx = batch.pos_idx.reshape(-1).to(device)
        x_pos = data_x[pos_idx]
        with amp:
            x_gen = model(z, labels, alpha.repeat_interleave(s.n_gen))
            gen_f = encoder(x_gen)
            unc_idx = batch.unc_idx.to(device) if use_cfg and s.n_unc > 0 else None
            if bank is not None:
                pos_f = lookup(bank, pos_idx)
                unc_f = lookup(bank, unc_idx) if unc_idx is not None else None
            else:
                with torch.no_grad():
                    pos_f = encoder(x_pos)
                    unc_f = encoder(data_x[unc_idx]) if unc_idx is not None else None
        unc_w = cfg_negative_weight(alpha, s.n_gen, s.n_unc) if unc_f is not None else None
        loss, metrics = group_drift_loss(
            {k: v.float() for k, v in gen_f.items()},
            {k: v.float() for k, v in pos_f.items()},
            {k: v.float() for k, v in unc_f.items()} if unc_f is not None else None,
            n_groups=n_groups,
            unc_weight=unc_w,
            temperatures=cfg.drift.temperatures,
            attraction_scale=cfg.drift.attraction_scale,
            repulsion_scale=cfg.drift.repulsion_scale,
            batch_mean=D.global_mean if world > 1 else None,
        )
        for g in opt.param_groups:
            g["lr"] = tc.lr * lr_factor(step, warmup=tc.warmup_steps, total=tc.steps, schedule=tc.schedule)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(generator.parameters(), tc.grad_clip)
        opt.step()
        ema.update(generator, step)

        loss_v = float(loss.detach())
        metrics.update(loss=loss_v, grad_norm=float(grad_norm), spread_ratio=spread_ratio(x_gen, x_pos, n_groups))
        bad = [k for k, v in metrics.items() if not math.isfinite(v)]
        if bad:
            if main:
                try:  # the diverged state, for a post-mortem; never in place of the last good checkpoint
                    save_checkpoint({"step": step, "generator": generator.state_dict(), "ema": ema.model.state_dict(), "optimizer": opt.state_dict(), "config": config_lib.to_dict(cfg), "diverged": True}, out / "diverged.pt")
                except OSError:
                    pass
            raise TrainingDiverged(f"step {step}: {bad[0]} is {metrics[bad[0]]} (run stopped; last good checkpoint kept at {ckpt_path})")
        for k, v in metrics.items():
            window[k] = window.get(k, 0.0) + v
        window_n += 1
        done = step + 1
        if first_step_seconds is None:  # setup (data, encoder, bank, model) + one step
            first_step_seconds = time.time() - t0
        if bar is not None:
            bar.update(1)
            if done % 10 == 0 or done == tc.steps:
                bar.set_postfix(loss=f"{loss_v:.4f}", spread=f"{metrics['spread_ratio']:.2f}")
        if done % tc.log_every == 0 or done == tc.steps:
            now = time.time()
            avg = {k: v / window_n for k, v in window.items()}
            avg["lr"] = opt.param_groups[0]["lr"]
            avg["steps_per_sec"] = window_n / max(now - step_time, 1e-9)
            window, window_n, step_time = {}, 0, now
            # the last step's quick evaluation is left to the final one (no fid logged twice)
            if main and quick is not None and done % tc.eval_every == 0 and not (evaluate and done == tc.steps):
                avg.update(quick(ema.model))
                step_time = time.time()  # evaluation time is not training time
            if main:
                log(done, avg)
                if reporter is not None:
                    reporter(done, avg)
        if tc.ckpt_every and done % tc.ckpt_every == 0 and done != tc.steps:
            save(done)
    if bar is not None:
        bar.close()
    save(tc.steps)
    train_seconds = time.time() - t0

    summary: dict = {"steps": tc.steps, "seconds": round(train_seconds, 2), "train_seconds": round(train_seconds, 2)}
    if first_step_seconds is not None:
        summary["first_step_seconds"] = round(first_step_seconds, 3)
    # when this call started (epoch seconds): launchers and benchmarks measure their own
    # overhead against it; a dict, so trackers do not log it as a metric
    summary["timing"] = {"loop_started_at": round(t0, 3)}
    summary["feature_bank"] = bank_info
    if hasattr(encoder, "provenance"):  # learned / release encoders: which artifact was used
        summary["encoder"] = encoder.provenance()
    if getattr(generator, "release_identity", None):  # model.init: which released weights
        summary["model_init"] = dict(generator.release_identity)
    if main and evaluate:
        from .evaluate import evaluate_run

        summary.update(evaluate_run(cfg, dataset, ema.model, out, device=device))
        summary["seconds"] = round(time.time() - t0, 2)
    if main:
        tmp = out / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, out / "summary.json")
    return summary


def train(cfg: Config, out_dir: str | Path, **kwargs) -> dict:
    """`training_loop` under its short name (contract 3's `train` command calls this)."""
    return training_loop(cfg, out_dir, **kwargs)
