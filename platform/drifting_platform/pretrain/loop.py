"""The framework-neutral encoder pre-training loop (the encoder twin of `train.loop`).

`pretrain_loop(cfg, out_dir, ...)` trains a ResNet-style backbone with SimCLR, MoCo-v2 or a
masked autoencoder on the data set's own space (pixels for images, latents for latent
data), optionally followed by classifier fine-tuning, and writes the frozen-encoder
artifact that `encoders/learned.py` loads:

    out_dir/encoder/encoder.json   what the weights are (objective, backbone spec, input shape)
    out_dir/encoder/weights.pt     the backbone's state dict (loads with weights_only=True)

Objective `release_mae` trains the release's Latent-MAE (`models/release_mae.ReleaseMAE`)
with the release's loss and classifier ramp instead; its encoder.json holds the network's
`model_config` in place of `backbone`, weights.pt the whole network, and the registered
encoder `release_mae` loads it (`encoder: {name: release_mae, source: ...}`).

plus `checkpoint.pt` (resumable: step, objective incl. MoCo's key encoder and queue,
optimizer, fine-tune head), `metrics.jsonl` and `summary.json` (final loss and a
linear-probe accuracy of the pooled features on a held-out split).

Like the drifting loop it imports neither Ray nor MLflow. Under data parallelism every rank
draws the global batch from a per-step generator and keeps its slice; gradients are
averaged over ranks by hand (`_average_grads`), which also covers objectives whose `loss` is
not a module's forward (DDP's hooks would miss those). SimCLR's negatives and MoCo's queue
are per rank, as in the reference implementations without SyncBN / all-gather.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from .. import config as C
from .. import rundir
from ..config import ConfigError
from ..data import build_dataset
from ..encoder_artifact import ENCODER_DIR, META_FILE, write_encoder_artifact
from ..train import distributed as D
from ..train.kit import (
    Checkpointer, CheckpointHook, MetricWindow, Progress, Reporter, RunContext, StepLog, StepRNG, StopSignals, lr_factor, timing_summary,
    write_summary,
)
from .config import PretrainConfig, ReleaseMAEConfig, config_hash, to_dict
from .objectives import FineTune, build_objective, build_release_mae_objective


# config sections that define what a checkpoint's weights mean; a resumed run must match
IDENTITY_KEYS = ("data", "objective", "backbone", "release_mae")

# the batch indices and augmentations of step `step` of a run with seed `seed`; these
# constants pin every run's draws (and so what a resumed run continues with)
STEP_RNG = StepRNG(seed_mult=2_000_003, step_mult=104_729, offset=17)


class PretrainDiverged(RuntimeError):
    """The pre-training loss became NaN / infinite."""




def _average_grads(params) -> None:
    if not D.is_distributed():
        return
    world = D.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)


def build_pretrain_data(cfg: PretrainConfig):
    d = cfg.data
    ds = build_dataset(
        d.name, n=d.n, size=d.size, root=C.expand_path(d.root, "data.root"),
        path=C.expand_path(d.path, "data.path"), limit=d.limit, seed=cfg.seed,
    )
    if ds.kind == "toy" or len(ds.shape) != 3:
        raise C.ConfigError(f"data.name: encoders are pre-trained on images or latents [C, H, W], not {ds.name} {tuple(ds.shape)}")
    return ds


def build_objective_for(cfg: PretrainConfig, in_channels: int, num_classes: int = 1):
    torch.manual_seed(cfg.seed)
    if cfg.objective.name == "release_mae":
        return build_release_mae_objective(in_channels, num_classes, **dataclasses.asdict(cfg.release_mae or ReleaseMAEConfig()))
    kwargs = dict(cfg.objective.kwargs)
    if cfg.objective.name in ("simclr", "moco"):
        kwargs.setdefault("augment_kwargs", {"strength": cfg.augment.strength, "hflip": cfg.augment.hflip})
    try:
        return build_objective(
            cfg.objective.name, in_channels, widths=tuple(cfg.backbone.widths), blocks=cfg.backbone.blocks,
            stem_stride=cfg.backbone.stem_stride, **kwargs,
        )
    except TypeError as exc:
        raise ConfigError(f"objective.kwargs: {exc}") from None


def split_indices(n: int, seed: int, holdout: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed train / held-out split of n samples (the probe is scored on held-out data)."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 99))
    k = max(1, int(round(n * holdout)))
    return perm[k:], perm[:k]


@torch.no_grad()
def pooled_features(encoder_fn, x: torch.Tensor, batch: int = 512) -> torch.Tensor:
    return torch.cat([encoder_fn(x[i : i + batch]) for i in range(0, len(x), batch)]).float().cpu()


def probe_accuracy(train_f, train_y, test_f, test_y) -> float:
    """Held-out accuracy of a logistic-regression probe on frozen pooled features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train_f.numpy())
    clf = LogisticRegression(max_iter=500).fit(scaler.transform(train_f.numpy()), train_y.numpy())
    return float(clf.score(scaler.transform(test_f.numpy()), test_y.numpy()))


class _Pretraining:
    """The state of one pre-training run: data and its split, the objective, the optional
    fine-tuning head, the phase ("pretrain", then "finetune") and its optimiser."""

    def __init__(self, cfg: PretrainConfig, ctx: RunContext):
        tc, fc = cfg.train, cfg.finetune
        self.cfg, self.ctx = cfg, ctx
        for key, b in (("train.batch_size", tc.batch_size), ("finetune.batch_size", fc.batch_size)):
            if b % ctx.world:
                raise ConfigError(f"{key}: {b} cannot be split evenly over {ctx.world} workers")
        self.ds = ds = build_pretrain_data(cfg)
        self.train_idx, self.test_idx = split_indices(len(ds.x), cfg.seed)
        self.x_all = ds.x.to(ctx.device)
        self.y_all = ds.y.to(ctx.device)
        self.obj = build_objective_for(cfg, int(ds.shape[0]), ds.num_classes).to(ctx.device)
        self.mask_channel = cfg.objective.name == "mae"
        rm = cfg.release_mae
        if rm is not None and ds.num_classes < 2 and (rm.lambda_cls > 0 or rm.finetune_last_steps > 0):
            raise ConfigError(f"release_mae.lambda_cls / finetune_last_steps: the classifier needs a labelled data set with 2+ classes ({ds.name} has {ds.num_classes})")
        self.finetune = None
        if fc.steps > 0 and ds.num_classes > 1:
            self.finetune = FineTune(
                self.obj.encoder(), ds.num_classes, augment_kwargs={"strength": 0.5 * cfg.augment.strength, "hflip": cfg.augment.hflip},
                input_transform=self.obj.features_input if hasattr(self.obj, "features_input") else None,
            ).to(ctx.device)
        if fc.steps > 0 and self.finetune is None:
            raise ConfigError("finetune.steps: classifier fine-tuning needs a labelled data set with 2+ classes")
        self.start = 0
        self.phase = "pretrain"
        self.opt = self._make_opt()
        self.last_loss = float("nan")

    def _make_opt(self) -> torch.optim.Optimizer:
        tc = self.cfg.train
        if self.phase == "pretrain":
            return torch.optim.AdamW(list(self.obj.trainable_parameters()), lr=tc.lr, weight_decay=tc.weight_decay)
        return torch.optim.AdamW(self.finetune.parameters(), lr=self.cfg.finetune.lr, weight_decay=tc.weight_decay)

    def restore(self, state: dict, path: Path) -> None:
        """Continue from a checkpoint's state (objective, phase, fine-tuning head, optimiser)."""
        self.obj.load_state_dict(state["objective"])
        self.start = int(state["step"])
        self.phase = state.get("phase", "pretrain")
        if self.phase == "finetune":
            self.finetune.load_state_dict(state["finetune"])
        self.opt = self._make_opt()
        self.opt.load_state_dict(state["optimizer"])
        self.last_loss = float(state.get("last_loss", float("nan")))
        D.print0(f"resumed from {path} at step {self.start} ({self.phase})")

    def state(self, step: int) -> dict:
        """The checkpoint of step `step`."""
        state = {
            "step": step, "phase": self.phase, "objective": self.obj.state_dict(), "optimizer": self.opt.state_dict(), "config": to_dict(self.cfg),
            "last_loss": self.last_loss,  # the summary's final_loss when a rerun finds the run finished
        }
        if self.finetune is not None and self.phase == "finetune":
            state["finetune"] = self.finetune.state_dict()
        return state

    def step(self, step: int) -> dict:
        """One optimisation step (of the objective, or of the fine-tuning head after
        train.steps); returns its metrics."""
        cfg, tc, fc, ctx = self.cfg, self.cfg.train, self.cfg.finetune, self.ctx
        if step == tc.steps and self.phase == "pretrain":
            self.phase = "finetune"
            self.opt = self._make_opt()
        rng = STEP_RNG(cfg.seed, step)
        pre = self.phase == "pretrain"
        batch = tc.batch_size if pre else fc.batch_size
        idx = self.train_idx[torch.randint(len(self.train_idx), (batch,), generator=rng)]
        mine = idx[ctx.rank * batch // ctx.world : (ctx.rank + 1) * batch // ctx.world].to(ctx.device)
        x, y = self.x_all[mine], self.y_all[mine]
        if pre:
            lr = tc.lr * lr_factor(step, warmup=tc.warmup_steps, total=tc.steps, schedule=tc.schedule)
            self.obj.set_step(step, tc.steps)
            loss, info = self.obj.loss(x, rng, labels=y) if self.obj.uses_labels else self.obj.loss(x, rng)
            params = list(self.obj.trainable_parameters())
        else:
            k = step - tc.steps
            lr = fc.lr * lr_factor(k, warmup=min(tc.warmup_steps, fc.steps // 10), total=fc.steps, schedule="cosine")
            loss, info = self.finetune.loss(x, y, rng)  # augments, adds MAE's mask channel
            params = list(self.finetune.parameters())
            info = {f"ft_{name}": v for name, v in info.items()}
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        _average_grads(params)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, tc.grad_clip))
        self.opt.step()
        self.last_loss = float(loss.detach())
        return {"loss" if pre else "ft_loss": self.last_loss, **{name: float(v) for name, v in info.items()}, "grad_norm": grad_norm, "lr": lr}

    def final_loss(self) -> Optional[float]:
        """The loss of the last step; after a resume at the end (a rerun of a finished run whose
        checkpoint predates `last_loss`), the last logged loss; None when neither exists."""
        if math.isfinite(self.last_loss):
            return self.last_loss
        logged = [row.get("ft_loss", row.get("loss")) for _, row in rundir.read_metrics(self.ctx.out / rundir.METRICS)]
        logged = [float(v) for v in logged if isinstance(v, (int, float)) and math.isfinite(v)]
        return logged[-1] if logged else None

    def finish(self, evaluate: bool) -> dict:
        """The summary; on rank 0 also the linear probe (`evaluate`, labelled data), the
        encoder artifact and summary.json."""
        cfg, ctx, ds, obj = self.cfg, self.ctx, self.ds, self.obj
        backbone = obj.encoder()
        summary = {**timing_summary(ctx, cfg.total_steps), "final_loss": self.final_loss()}
        if not ctx.main:
            return summary
        extra = {}
        if evaluate and ds.num_classes > 1:
            backbone.eval()
            obj.eval()
            f_tr = pooled_features(obj.pooled, self.x_all[self.train_idx.to(ctx.device)])
            f_te = pooled_features(obj.pooled, self.x_all[self.test_idx.to(ctx.device)])
            summary["probe_accuracy"] = probe_accuracy(f_tr, ds.y[self.train_idx], f_te, ds.y[self.test_idx])
            extra["probe_accuracy"] = summary["probe_accuracy"]
        path = write_encoder_artifact(
            ctx.out, backbone, name=cfg.registered_name, objective=cfg.objective.name, data={"name": cfg.data.name, "size": cfg.data.size},
            config_hash=config_hash(cfg), input_shape=ds.shape, mask_channel=self.mask_channel, extra=extra, arch=obj.artifact_meta(),
            finetuned=self.finetune is not None or (cfg.release_mae is not None and cfg.release_mae.finetune_last_steps > 0),
        )
        summary["encoder_dir"] = str(path)
        summary["config_hash"] = config_hash(cfg)
        summary["seconds"] = round(ctx.elapsed(), 2)
        write_summary(ctx, summary)
        return summary


def pretrain_loop(
    cfg: PretrainConfig,
    out_dir: str | Path,
    *,
    reporter: Optional[Reporter] = None,  # called on rank 0 every train.log_every steps and at the phase ends
    resume: bool = True,  # continue from out_dir/checkpoint.pt when it exists
    progress: bool = True,  # a tqdm bar on rank 0
    evaluate: bool = True,  # the linear probe's accuracy in summary.json (labelled data)
    checkpoint_hook: Optional[CheckpointHook] = None,  # after each checkpoint
) -> dict:
    """Pre-train (and optionally fine-tune) the encoder of `cfg`; returns the summary.

    A rerun of a finished run (its checkpoint at the last step, summary.json and the encoder
    artifact present) returns the stored summary and rewrites nothing. SIGINT / SIGTERM stop
    it at the next step boundary as they stop `train.loop.training_loop`."""
    with StopSignals(enabled=D.get_world_size() == 1) as stop:
        return _pretrain(cfg, out_dir, stop, reporter=reporter, resume=resume, progress=progress, evaluate=evaluate, checkpoint_hook=checkpoint_hook)


def _finished_summary(ctx: RunContext, total: int) -> Optional[dict]:
    """summary.json of a run that finished `total` steps with its encoder artifact, else None."""
    summary = rundir.read_json(ctx.out / rundir.SUMMARY)
    if not isinstance(summary, dict) or summary.get("steps") != total or not (ctx.out / ENCODER_DIR / META_FILE).is_file():
        return None
    return summary


def _pretrain(cfg: PretrainConfig, out_dir, stop: StopSignals, *, reporter, resume, progress, evaluate, checkpoint_hook) -> dict:
    tc = cfg.train
    # setup: the process, then data, objective, fine-tuning head, optimiser
    ctx = RunContext.start(out_dir, device=tc.device, threads=tc.threads)
    run = _Pretraining(cfg, ctx)
    # resume: the checkpoint must have been written for the same data / objective / network
    ckpt = Checkpointer(ctx, checkpoint_hook)
    state = ckpt.load(to_dict(cfg), IDENTITY_KEYS) if resume else None
    if state is not None:
        run.restore(state, ckpt.path)
        if run.start == cfg.total_steps and ctx.world == 1:
            finished = _finished_summary(ctx, cfg.total_steps)
            if finished is not None:  # a rerun of a finished run: nothing to train or rewrite
                return finished
    log = StepLog(ctx, run.start, reporter)
    bar = Progress(progress and ctx.main, total=cfg.total_steps, initial=run.start, desc=cfg.name)

    window = MetricWindow()
    run.obj.train()
    done = run.start

    def flush() -> None:  # an interrupt between log points logs the steps since the last one
        if window.n:
            log(done, window.mean())

    try:
        stop.check(done, cfg.total_steps, ckpt, run.state)  # a signal during the setup
        for step in range(run.start, cfg.total_steps):
            # step: one optimisation step; a non-finite loss stops the run
            metrics = run.step(step)
            if not math.isfinite(run.last_loss):
                raise PretrainDiverged(f"step {step}: loss is {run.last_loss} (last good checkpoint: {ckpt.path})")
            window.add(metrics)
            done = step + 1
            bar.update({"loss": f"{run.last_loss:.4f}", "phase": run.phase} if done % 10 == 0 else None)
            # log: window averages to metrics.jsonl and the reporter, also at the end of each phase
            if done % tc.log_every == 0 or done in (tc.steps, cfg.total_steps):
                log(done, window.mean())
            # checkpoint: every train.ckpt_every steps, at the end, and after SIGINT / SIGTERM
            if tc.ckpt_every and done % tc.ckpt_every == 0 and done != cfg.total_steps:
                ckpt.save(done, run.state)
            if done != cfg.total_steps:
                stop.check(done, cfg.total_steps, ckpt, run.state, flush)
    finally:
        bar.close()
    ckpt.save(cfg.total_steps, run.state)
    stop.check(cfg.total_steps, cfg.total_steps, ckpt, run.state)  # a signal in the last step: stop before the probe

    # finish: probe, encoder artifact, summary.json (rank 0)
    summary = run.finish(evaluate)
    D.barrier()
    return summary
