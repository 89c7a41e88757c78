"""The framework-neutral training loop behind the `train` command.

One function, `training_loop`, with explicit keyword arguments (after NVlabs/edm's
`training/training_loop.py`). It imports neither Ray nor MLflow: metrics leave through the
`reporter` hook, the process group (if any) was set up by whoever launched us, and rank 0
writes checkpoints. The same loop runs under plain `python`, `torchrun`, a Ray Train worker
and the tests. The parts it shares with the encoder pre-training loop are in `kit.py`.

One step (paper Sec. 3 and Alg. 1, class-conditional as in Sec. 3.5):
  1. pick N_c classes; per class draw n_gen noises, a CFG scale alpha and n_pos positives;
     draw N_unc unconditional data samples (the CFG negatives);
  2. x = f(eps, c, alpha); features of x, of the positives and of the unconditional samples
     through the frozen encoder (the data samples' features come from a bank computed once
     before the first step when `train.feature_bank` allows it: `feature_bank.py`);
  3. loss = sum over feature sets (those of the scales in `drift.feature_scales`) of
     drift_loss(gen, pos, unc, weight_neg=(alpha-1)(n_gen-1)/N_unc);
  4. AdamW step, gradient clipping, EMA update.

Files of the run directory (names in `drifting_platform.rundir`): checkpoint.pt, diverged.pt
(a non-finite step), metrics.jsonl, and from the final evaluation samples.npz, samples.png and
summary.json (the `train` command's result: `steps`, `seconds`, the metrics, ...).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
from torch.nn.parallel import DistributedDataParallel

from .. import config as config_lib
from ..config import Config
from ..data import ClassGroupedSampler, build_dataset
from ..data.stream import StreamingClassBanks
from ..drift import cfg_negative_weight, sample_cfg_alpha
from ..encoders import build_encoder, select_feature_sets
from ..models import build_generator
from ..release import ReleaseError, load_release
from . import distributed as D
from .evaluate import ProtocolEval, QuickEval, evaluate_run
from .feature_bank import lookup, prepare_feature_bank
from .kit import (
    EMA, Checkpointer, CheckpointHook, MetricWindow, Progress, Reporter, RunContext, StepLog, StepRNG, StopSignals, lr_factor,
    timing_summary, write_summary,
)
from .objective import class_spread, group_drift_loss, spread_ratio

# config sections that define what a checkpoint's weights mean; a resumed run must match
# (train.feature_bank is not among them: banking does not change results)
IDENTITY_KEYS = ("data", "model", "encoder")

# the noise and alphas of step `step` of a run with seed `seed`; these constants pin every
# run's draws (and so what a resumed run continues with)
STEP_RNG = StepRNG(seed_mult=1_000_003, step_mult=7919)


class TrainingDiverged(RuntimeError):
    """The loss or a diagnostic became NaN / infinite; names the step and the metric."""


def build_data(cfg: Config):
    """The config's data set (paths expanded; nothing is downloaded). A prepared latent set
    that is to be streamed (`data.stream`) comes back as its first `data.reference_size`
    rows with `stream_files` set; the loop then draws its batches from `StreamingClassBanks`."""
    d = cfg.data
    if d.name == "prepared" and d.path:
        from ..data.moments import load_prepared, prepared_bytes

        path = config_lib.expand_path(d.path, "data.path")
        stream = d.stream if d.stream != "auto" else prepared_bytes(path) > d.stream_above_mb * 2**20
        if stream:
            return load_prepared(path, limit=min(d.reference_size, d.limit or d.reference_size), stream=True)
    return build_dataset(
        d.name, n=d.n, size=d.size, root=config_lib.expand_path(d.root, "data.root"),
        path=config_lib.expand_path(d.path, "data.path"), limit=d.limit, seed=cfg.seed,
    )


def build_model(cfg: Config, dataset) -> torch.nn.Module:
    """The config's generator for `dataset`, initialised from the experiment's seed."""
    torch.manual_seed(cfg.seed)
    if cfg.model.init:
        return release_generator(cfg.model.init, dataset)
    try:
        return build_generator(cfg.model.name, data_shape=tuple(dataset.shape), num_classes=dataset.num_classes, **cfg.model.kwargs)
    except TypeError as exc:
        raise config_lib.ConfigError(f"model.kwargs: {exc}") from None


def release_generator(init: str, dataset) -> torch.nn.Module:
    """The generator of a released artifact (model.init), checked against the data set."""
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


class _Run:
    """The state of one training run: what the config builds, the sampler, optimiser and EMA,
    and the step; `training_loop` drives it."""

    def __init__(self, cfg: Config, ctx: RunContext):
        s, tc = cfg.sampling, cfg.train
        self.cfg, self.ctx = cfg, ctx
        self.dataset, self.encoder, self.generator = build_components(cfg, ctx.device)
        _check_compatible(cfg, self.dataset)
        if tc.channels_last:  # before the optimiser and EMA see the parameters
            self.generator.to(memory_format=torch.channels_last)
            self.encoder.to(memory_format=torch.channels_last)
        # the scales of drift.feature_scales, or None when all are selected (nothing to pick)
        self.scales = cfg.drift.feature_scales if set(cfg.drift.feature_scales) != set(config_lib.FEATURE_SCALES) else None
        if self.scales is not None:
            # a selection that leaves no feature set fails here, before any data work
            select_feature_sets(self.encoder.feature_shapes(), self.scales)
        if s.n_classes % ctx.world != 0:
            raise config_lib.ConfigError(f"sampling.n_classes: {s.n_classes} class groups cannot be split evenly over {ctx.world} workers")
        self.use_cfg = cfg.cfg.enabled and self.dataset.num_classes > 1
        # prepared latents: each draw is a fresh flip + posterior sample (in memory: `draw`;
        # streamed: the ring buffers of StreamingClassBanks hand out latents directly)
        self.draws = getattr(self.dataset, "moments", None) is not None
        self.stream, self.sampler = None, None
        if getattr(self.dataset, "stream_files", None):
            ds, dc = self.dataset, cfg.data
            self.stream = StreamingClassBanks(
                ds.stream_files, num_classes=ds.num_classes, moments_shape=ds.moments_shape, scale=ds.scale, n_classes=s.n_classes,
                n_pos=s.n_pos, n_unc=s.n_unc if self.use_cfg else 0, bank_size=dc.bank_size, unc_bank_size=dc.unc_bank_size,
                push_per_step=dc.push_per_step, rank=ctx.rank, world=ctx.world, seed=cfg.seed,
            )
            self.stream_resumed = False
        else:
            sampler = ClassGroupedSampler(self.dataset.y, self.dataset.num_classes, n_classes=s.n_classes, n_pos=s.n_pos, n_unc=s.n_unc, seed=cfg.seed)
            self.sampler = sampler.shard(ctx.rank, ctx.world) if ctx.world > 1 else sampler
        self.n_groups = s.n_classes // ctx.world  # class groups of this rank
        self.data_x = self.dataset.x.to(ctx.device)
        self.class_spread = class_spread(self.dataset.x, self.dataset.y, self.dataset.num_classes)  # spread_ratio's reference
        # fused: one kernel for the whole update (CPU and CUDA; the same AdamW up to rounding)
        self.opt = torch.optim.AdamW(self.generator.parameters(), lr=tc.lr, betas=tc.betas, weight_decay=tc.weight_decay, fused=True)
        self.ema = EMA(self.generator, tc.ema_decay)
        self.start_step = 0
        self.amp = torch.autocast(device_type=ctx.device.type, dtype=torch.bfloat16, enabled=tc.precision == "bf16")

    def restore(self, state: dict, path: Path) -> None:
        """Continue from a checkpoint's state (weights, EMA, optimiser, step, sampler)."""
        self.generator.load_state_dict(state["generator"])
        self.ema.model.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["optimizer"])
        _match_layout(self.opt)
        self.start_step = int(state["step"])
        if self.stream is not None:  # the stream continues where the run left it (each rank its own)
            expected = state.get("data_stream") if self.ctx.rank == 0 else None
            try:
                self.stream.resume(self.start_step, expected)
            except ValueError as exc:
                raise config_lib.ConfigError(f"data.path: cannot resume the stream: {exc}") from None
            self.stream_resumed = True
        else:
            for _ in range(self.start_step):  # replay the sampler so batches continue where they were
                self.sampler.sample()
        D.print0(f"resumed from {path} at step {self.start_step}")

    def prepare(self) -> None:
        """After resuming: wrap the generator for DDP, and bank the data samples' features
        (positives, unconditional negatives), computed once under the step's autocast
        setting; every rank banks the whole (small) data set."""
        device = self.ctx.device
        self.model = self.generator
        if self.ctx.world > 1:
            self.model = DistributedDataParallel(self.generator, device_ids=[device.index] if device.type == "cuda" else None)
        if self.stream is not None and not self.stream_resumed:
            self.stream.fill()
        if self.draws or self.stream is not None:  # no fixed set of data samples to bank
            if self.cfg.train.feature_bank is True:
                raise config_lib.ConfigError("train.feature_bank: prepared latents are drawn afresh (flip, posterior) every step; use auto or false")
            self.bank, self.bank_info = None, {"enabled": False, "reason": "prepared latents: every draw is a fresh flip and posterior sample"}
        else:
            self.bank, self.bank_info = prepare_feature_bank(self.cfg, self.encoder, self.data_x, autocast=self.amp)
        if self.bank is not None and self.scales is not None:  # only the selected sets are looked up per step
            self.bank = select_feature_sets(self.bank, self.scales)

    def state(self, step: int) -> dict:
        """The checkpoint of step `step` (checkpoint.pt, diverged.pt)."""
        ds = self.dataset
        return {
            "step": step,
            "generator": self.generator.state_dict(),
            "ema": self.ema.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "config": config_lib.to_dict(self.cfg),
            "data": {"name": ds.name, "shape": list(ds.shape), "num_classes": int(ds.num_classes), "kind": ds.kind},
            **({"data_stream": self.stream.state()} if self.stream is not None else {}),
        }

    def _draw(self, step: int):
        """This rank's share of step `step`: (batch indices, labels, alphas, noise).

        Noise and alphas are drawn for all class groups of the step and each rank keeps its
        slice: N workers see exactly the batch that one worker would."""
        s, c, device, rank = self.cfg.sampling, self.cfg.cfg, self.ctx.device, self.ctx.rank
        rng = STEP_RNG(self.cfg.seed, step)
        batch = self.stream.sample(step) if self.stream is not None else self.sampler.sample()
        labels = batch.classes.to(device).repeat_interleave(s.n_gen)  # [N_c / world * n_gen]
        if not self.use_cfg:
            alpha = torch.ones(s.n_classes)
        elif c.gamma is not None:
            alpha = torch.full((s.n_classes,), 1.0 / (1.0 - c.gamma))
        else:
            alpha = sample_cfg_alpha(s.n_classes, low=c.alpha_min, high=c.alpha_max, power=c.alpha_power, generator=rng)
        z = torch.randn(s.n_classes * s.n_gen, self.generator.noise_dim, generator=rng)
        lo, hi = rank * self.n_groups, (rank + 1) * self.n_groups
        return batch, labels, alpha[lo:hi].to(device), z[lo * s.n_gen : hi * s.n_gen].to(device)

    def _features(self, batch, labels, alpha, z):
        """(generated samples, features of them, of the positives and of the unconditional
        samples), the features restricted to the feature sets of `drift.feature_scales`."""
        s, device, encoder = self.cfg.sampling, self.ctx.device, self.encoder
        with self.amp:
            x_gen = self.model(z, labels, alpha.repeat_interleave(s.n_gen))
            gen_f = encoder(x_gen)
            use_unc = self.use_cfg and s.n_unc > 0
            if self.stream is not None or self.draws:
                pos_x, unc_x = self._data_draws(batch, use_unc)
                with torch.no_grad():
                    pos_f = encoder(pos_x.to(device))
                    unc_f = encoder(unc_x.to(device)) if use_unc else None
                pick = lambda f: select_feature_sets(f, self.scales) if f is not None and self.scales is not None else f  # noqa: E731
                return x_gen, pick(gen_f), pick(pos_f), pick(unc_f)
            pos_idx = batch.pos_idx.reshape(-1).to(device)
            unc_idx = batch.unc_idx.to(device) if use_unc else None
            if self.bank is not None:
                pos_f = lookup(self.bank, pos_idx)
                unc_f = lookup(self.bank, unc_idx) if unc_idx is not None else None
            else:
                with torch.no_grad():
                    pos_f = encoder(self.data_x[pos_idx])
                    unc_f = encoder(self.data_x[unc_idx]) if unc_idx is not None else None
        pick = lambda f: select_feature_sets(f, self.scales) if f is not None and self.scales is not None else f  # noqa: E731
        return x_gen, pick(gen_f), pick(pos_f), pick(unc_f)

    def _data_draws(self, batch, use_unc: bool):
        """(positives, unconditional samples) of a step on prepared latents: from the stream's
        buffers, or drawn afresh from the in-memory moments (a generator per step and rank)."""
        if self.stream is not None:
            return batch.pos.reshape(-1, *batch.pos.shape[2:]), batch.unc
        g = torch.Generator().manual_seed((STEP_RNG.seed_mult * self.cfg.seed + 104729 * self._step + self.ctx.rank + 1) % (2**63 - 1))
        pos = self.dataset.draw(batch.pos_idx.reshape(-1), g)
        unc = self.dataset.draw(batch.unc_idx, g) if use_unc else None
        return pos, unc

    def step(self, step: int) -> dict:
        """One optimisation step; returns its metrics (loss, grad_norm, spread_ratio, the drift terms)."""
        cfg, s, tc = self.cfg, self.cfg.sampling, self.cfg.train
        self._step = step
        batch, labels, alpha, z = self._draw(step)
        x_gen, gen_f, pos_f, unc_f = self._features(batch, labels, alpha, z)
        unc_w = cfg_negative_weight(alpha, s.n_gen, s.n_unc) if unc_f is not None else None
        loss, metrics = group_drift_loss(
            {k: v.float() for k, v in gen_f.items()},
            {k: v.float() for k, v in pos_f.items()},
            {k: v.float() for k, v in unc_f.items()} if unc_f is not None else None,
            n_groups=self.n_groups,
            unc_weight=unc_w,
            temperatures=cfg.drift.temperatures,
            attraction_scale=cfg.drift.attraction_scale,
            repulsion_scale=cfg.drift.repulsion_scale,
            normalization=cfg.drift.normalization,
            reduce=D.all_reduce_values if self.ctx.world > 1 else None,
        )
        for g in self.opt.param_groups:
            g["lr"] = tc.lr * lr_factor(step, warmup=tc.warmup_steps, total=tc.steps, schedule=tc.schedule)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.generator.parameters(), tc.grad_clip)
        self.opt.step()
        self.ema.update(self.generator, step)
        metrics.update(loss=float(loss.detach()), grad_norm=float(grad_norm), spread_ratio=spread_ratio(x_gen, self.class_spread[batch.classes.cpu()], self.n_groups))
        return metrics

    def data_parallel(self, steps: int, all_reduces: int) -> dict:
        """The summary's `data_parallel`: workers and collectives per step of the `steps`
        steps run (the drift loss's all-reduces, `all_reduces` of them, and DDP's gradient
        buckets, one all-reduce each, overlapping the backward pass)."""
        out: dict = {"workers": self.ctx.world, "drift_loss_all_reduces_per_step": round(all_reduces / max(1, steps), 2)}
        try:  # DDP's own record of its buckets (private: absent from some torch builds)
            out["gradient_buckets"] = len(str(self.model._get_ddp_logging_data()["rebuilt_bucket_sizes"]).split())
        except (AttributeError, KeyError, RuntimeError):
            pass
        return out

    def summary(self, first_step_seconds: Optional[float], data_parallel: Optional[dict] = None) -> dict:
        """summary.json before the final evaluation: steps, timing, feature bank, provenance."""
        summary = timing_summary(self.ctx, self.cfg.train.steps)
        if first_step_seconds is not None:
            summary["first_step_seconds"] = round(first_step_seconds, 3)
        if data_parallel:
            summary["data_parallel"] = data_parallel
        # when this call started (epoch seconds): launchers and benchmarks measure their own
        # overhead against it; a dict, so trackers do not log it as a metric
        summary["timing"] = {"loop_started_at": round(self.ctx.started, 3), "torch_threads": torch.get_num_threads()}
        summary["feature_bank"] = self.bank_info
        if hasattr(self.encoder, "provenance"):  # learned / release encoders: which artifact was used
            summary["encoder"] = self.encoder.provenance()
        if getattr(self.generator, "release_identity", None):  # model.init: which released weights
            summary["model_init"] = dict(self.generator.release_identity)
        return summary


def training_loop(
    cfg: Config,
    out_dir: str | Path,
    *,
    reporter: Optional[Reporter] = None,  # called on rank 0 every train.log_every steps
    resume: bool = True,  # continue from out_dir/checkpoint.pt when it exists
    progress: bool = True,  # a tqdm bar on rank 0
    evaluate: bool = True,  # final metrics, samples.npz, grid and summary.json
    checkpoint_hook: Optional[CheckpointHook] = None,  # after each checkpoint
) -> dict:
    """Train the generator of `cfg`; returns (and writes, on rank 0) the summary.

    SIGINT / SIGTERM (in the main thread of a one-process run) stop it at the next step
    boundary: the metrics of the steps since the last log point are logged, checkpoint.pt
    is written at that step and `TrainingInterrupted` is raised; a rerun resumes there."""
    with StopSignals(enabled=D.get_world_size() == 1) as stop:
        return _train(cfg, out_dir, stop, reporter=reporter, resume=resume, progress=progress, evaluate=evaluate, checkpoint_hook=checkpoint_hook)


def _train(cfg: Config, out_dir, stop: StopSignals, *, reporter, resume, progress, evaluate, checkpoint_hook) -> dict:
    tc = cfg.train
    # setup: the process, then data, encoder, generator, sampler, optimiser, EMA
    ctx = RunContext.start(out_dir, device=tc.device, threads=tc.threads)
    run = _Run(cfg, ctx)
    # resume: the checkpoint must have been written for the same data / model / encoder
    ckpt = Checkpointer(ctx, checkpoint_hook)
    state = ckpt.load(config_lib.to_dict(cfg), IDENTITY_KEYS) if resume else None
    if state is not None:
        run.restore(state, ckpt.path)
    log = StepLog(ctx, run.start_step, reporter)
    run.prepare()
    bar = Progress(progress and ctx.main, total=tc.steps, initial=run.start_step, desc=cfg.name)
    quick = QuickEval(cfg, run.dataset, n=tc.eval_samples, device=ctx.device) if tc.eval_every and ctx.main else None
    protocol = ProtocolEval(cfg, run.dataset, run.ema.model, device=ctx.device) if cfg.eval.every and ctx.main else None

    window = MetricWindow()
    first_step_seconds = None  # setup (data, encoder, bank, model) + one step
    run.generator.train()
    done = run.start_step
    all_reduces = D.all_reduce_count()

    def flush() -> None:  # an interrupt between log points logs the steps since the last one
        if window.n:
            log(done, window.mean(lr=run.opt.param_groups[0]["lr"]))

    try:
        stop.check(done, tc.steps, ckpt, run.state)  # a signal during the setup
        for step in range(run.start_step, tc.steps):
            # step: one optimisation step; a non-finite metric stops the run
            metrics = run.step(step)
            bad = [k for k, v in metrics.items() if not math.isfinite(v)]
            if bad:
                ckpt.save_diverged(run.state(step))
                raise TrainingDiverged(f"step {step}: {bad[0]} is {metrics[bad[0]]} (run stopped; last good checkpoint kept at {ckpt.path})")
            window.add(metrics)
            done = step + 1
            if first_step_seconds is None:
                first_step_seconds = ctx.elapsed()
            last = done == tc.steps
            bar.update({"loss": f"{metrics['loss']:.4f}", "spread": f"{metrics['spread_ratio']:.2f}"} if done % 10 == 0 or last else None)
            # log: window averages (+ the quick evaluation) to metrics.jsonl and the reporter
            if done % tc.log_every == 0 or last:
                avg = window.mean(lr=run.opt.param_groups[0]["lr"])
                # the last step's quick evaluation is left to the final one (no fid logged twice)
                if quick is not None and done % tc.eval_every == 0 and not (evaluate and last):
                    avg.update(quick(run.ema.model))
                    window.restart_clock()
                if protocol is not None and done % cfg.eval.every == 0:  # the release's periodic FID over cfg scales
                    avg.update(protocol())
                    window.restart_clock()
                log(done, avg)
            # checkpoint: every train.ckpt_every steps, at the end, and after SIGINT / SIGTERM
            if tc.ckpt_every and done % tc.ckpt_every == 0 and not last:
                ckpt.save(done, run.state)
            if not last:
                stop.check(done, tc.steps, ckpt, run.state, flush)
    finally:
        bar.close()
    parallel = run.data_parallel(tc.steps - run.start_step, D.all_reduce_count() - all_reduces) if ctx.world > 1 else None
    ckpt.save(tc.steps, run.state)
    stop.check(tc.steps, tc.steps, ckpt, run.state)  # a signal in the last step: stop before the evaluation

    # finish: the final evaluation and summary.json (rank 0)
    summary = run.summary(first_step_seconds, parallel)
    if ctx.main and evaluate:
        summary.update(evaluate_run(cfg, run.dataset, run.ema.model, ctx.out, device=ctx.device))
        summary["seconds"] = round(ctx.elapsed(), 2)
    write_summary(ctx, summary)
    return summary


def _match_layout(opt: torch.optim.Optimizer) -> None:
    """Give every optimiser state tensor its parameter's memory layout. A checkpoint keeps
    the layout it was saved in (NCHW or channels-last conv weights, train.channels_last),
    and the fused AdamW walks parameter and state as flat memory: a state of the other
    layout would be updated element by element against the wrong parameter entries."""
    for group in opt.param_groups:
        for p in group["params"]:
            for k, v in opt.state.get(p, {}).items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    opt.state[p][k] = torch.empty_like(p).copy_(v)
