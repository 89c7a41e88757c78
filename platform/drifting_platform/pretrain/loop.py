"""The framework-neutral encoder pre-training loop (the encoder twin of `train.loop`).

`pretrain_loop(cfg, out_dir, ...)` trains a ResNet-style backbone with SimCLR, MoCo-v2 or a
masked autoencoder on the data set's own space (pixels for images, latents for latent
data), optionally followed by classifier fine-tuning, and writes the frozen-encoder
artifact that `encoders/learned.py` loads:

    out_dir/encoder/encoder.json   what the weights are (objective, backbone spec, input shape)
    out_dir/encoder/weights.pt     the backbone's state dict (loads with weights_only=True)

Objective `release_mae` trains the release's Latent-MAE (`encoders/release_mae.ReleaseMAE`)
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

import json
import math
import os
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from ..encoder_artifact import write_encoder_artifact
from ..train import distributed as D
from ..train.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint, save_checkpoint
from ..train.loop import JsonlLog, lr_factor, resolve_device
from .config import PretrainConfig, config_hash, to_dict


class PretrainDiverged(RuntimeError):
    """The pre-training loss became NaN / infinite."""


def _step_rng(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 2_000_003 + step * 104_729 + 17) % (2**63 - 1))


def _average_grads(params) -> None:
    if not D.is_distributed():
        return
    import torch.distributed as dist

    world = D.get_world_size()
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)
            p.grad.div_(world)


def build_pretrain_data(cfg: PretrainConfig):
    from .. import config as C
    from ..data import build_dataset

    d = cfg.data
    ds = build_dataset(
        d.name, n=d.n, size=d.size, root=C.expand_path(d.root, "data.root"),
        path=C.expand_path(d.path, "data.path"), limit=d.limit, seed=cfg.seed,
    )
    if ds.kind == "toy" or len(ds.shape) != 3:
        raise C.ConfigError(f"data.name: encoders are pre-trained on images or latents [C, H, W], not {ds.name} {tuple(ds.shape)}")
    return ds


def build_objective_for(cfg: PretrainConfig, in_channels: int, num_classes: int = 1):
    from .objectives import build_objective, build_release_mae_objective

    torch.manual_seed(cfg.seed)
    if cfg.objective.name == "release_mae":
        import dataclasses

        from .config import ReleaseMAEConfig

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
        from ..config import ConfigError

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


def pretrain_loop(
    cfg: PretrainConfig,
    out_dir: str | Path,
    *,
    reporter: Optional[Callable[[int, dict], None]] = None,
    resume: bool = True,
    progress: bool = True,
    evaluate: bool = True,
    checkpoint_hook: Optional[Callable[[int, Path], None]] = None,
) -> dict:
    """Pre-train (and optionally fine-tune) the encoder of `cfg`; returns the summary."""
    from .objectives import FineTune

    t0 = time.time()
    out = Path(out_dir)
    rank, world = D.get_rank(), D.get_world_size()
    main = rank == 0
    if main:
        out.mkdir(parents=True, exist_ok=True)
    tc, fc = cfg.train, cfg.finetune
    if tc.threads:
        torch.set_num_threads(tc.threads)
    device = resolve_device(tc.device)
    for key, b in (("train.batch_size", tc.batch_size), ("finetune.batch_size", fc.batch_size)):
        if b % world:
            from ..config import ConfigError

            raise ConfigError(f"{key}: {b} cannot be split evenly over {world} workers")

    ds = build_pretrain_data(cfg)
    train_idx, test_idx = split_indices(len(ds.x), cfg.seed)
    x_all = ds.x.to(device)
    y_all = ds.y.to(device)
    in_channels = int(ds.shape[0])
    obj = build_objective_for(cfg, in_channels, ds.num_classes).to(device)
    mask_channel = cfg.objective.name == "mae"
    rm = cfg.release_mae
    if rm is not None and ds.num_classes < 2 and (rm.lambda_cls > 0 or rm.finetune_last_steps > 0):
        from ..config import ConfigError

        raise ConfigError(f"release_mae.lambda_cls / finetune_last_steps: the classifier needs a labelled data set with 2+ classes ({ds.name} has {ds.num_classes})")
    finetune = None
    if fc.steps > 0 and ds.num_classes > 1:
        finetune = FineTune(
            obj.encoder(), ds.num_classes, augment_kwargs={"strength": 0.5 * cfg.augment.strength, "hflip": cfg.augment.hflip},
            input_transform=obj.features_input if hasattr(obj, "features_input") else None,
        ).to(device)
    if fc.steps > 0 and finetune is None:
        from ..config import ConfigError

        raise ConfigError("finetune.steps: classifier fine-tuning needs a labelled data set with 2+ classes")

    def make_opt(phase: str):
        if phase == "pretrain":
            return torch.optim.AdamW(list(obj.trainable_parameters()), lr=tc.lr, weight_decay=tc.weight_decay)
        return torch.optim.AdamW(finetune.parameters(), lr=fc.lr, weight_decay=tc.weight_decay)

    start = 0
    phase = "pretrain"
    opt = make_opt(phase)
    ckpt_path = out / CHECKPOINT_NAME
    if resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=device)
        saved = state.get("config", {})
        now = to_dict(cfg)
        for key in ("data", "objective", "backbone", "release_mae"):
            if saved.get(key) != now.get(key):
                raise CheckpointError(f"{ckpt_path}: written for a different {key} config ({saved.get(key)} vs {now.get(key)}); use another --out or delete it")
        obj.load_state_dict(state["objective"])
        start = int(state["step"])
        phase = state.get("phase", "pretrain")
        if phase == "finetune":
            finetune.load_state_dict(state["finetune"])
        opt = make_opt(phase)
        opt.load_state_dict(state["optimizer"])
        D.print0(f"resumed from {ckpt_path} at step {start} ({phase})")

    log = JsonlLog(out / "metrics.jsonl", start) if main else None

    def save(step: int) -> None:
        if main:
            state = {"step": step, "phase": phase, "objective": obj.state_dict(), "optimizer": opt.state_dict(), "config": to_dict(cfg)}
            if finetune is not None and phase == "finetune":
                state["finetune"] = finetune.state_dict()
            save_checkpoint(state, ckpt_path)
            if checkpoint_hook is not None:
                checkpoint_hook(step, out)
        D.barrier()

    bar = None
    if progress and main:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.total_steps, initial=start, desc=cfg.name, unit="step", dynamic_ncols=True)

    window: dict[str, float] = {}
    window_n = 0
    step_time = time.time()
    last_loss = float("nan")
    obj.train()
    for step in range(start, cfg.total_steps):
        if step == tc.steps and phase == "pretrain":
            phase = "finetune"
            opt = make_opt(phase)
        rng = _step_rng(cfg.seed, step)
        pre = phase == "pretrain"
        batch = tc.batch_size if pre else fc.batch_size
        idx = train_idx[torch.randint(len(train_idx), (batch,), generator=rng)]
        mine = idx[rank * batch // world : (rank + 1) * batch // world].to(device)
        if pre:
            lr = tc.lr * lr_factor(step, warmup=tc.warmup_steps, total=tc.steps, schedule=tc.schedule)
            obj.set_step(step, tc.steps)
            if obj.uses_labels:
                loss, info = obj.loss(x_all[mine], rng, labels=y_all[mine])
            else:
                loss, info = obj.loss(x_all[mine], rng)
            params = list(obj.trainable_parameters())
        else:
            k = step - tc.steps
            lr = fc.lr * lr_factor(k, warmup=min(tc.warmup_steps, fc.steps // 10), total=fc.steps, schedule="cosine")
            loss, info = finetune.loss(x_all[mine], y_all[mine], rng)  # augments, adds MAE's mask channel
            params = list(finetune.parameters())
            info = {f"ft_{k2}": v for k2, v in info.items()}
        for g in opt.param_groups:
            g["lr"] = lr
        opt.zero_grad(set_to_none=True)
        loss.backward()
        _average_grads(params)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, tc.grad_clip))
        opt.step()
        last_loss = float(loss.detach())
        metrics = {"loss" if pre else "ft_loss": last_loss, **{k2: float(v) for k2, v in info.items()}, "grad_norm": grad_norm, "lr": lr}
        if not math.isfinite(last_loss):
            raise PretrainDiverged(f"step {step}: loss is {last_loss} (last good checkpoint: {ckpt_path})")
        for k2, v in metrics.items():
            window[k2] = window.get(k2, 0.0) + v
        window_n += 1
        done = step + 1
        if bar is not None:
            bar.update(1)
            if done % 10 == 0:
                bar.set_postfix(loss=f"{last_loss:.4f}", phase=phase)
        boundary = done == tc.steps or done == cfg.total_steps
        if done % tc.log_every == 0 or boundary:
            now = time.time()
            avg = {k2: v / window_n for k2, v in window.items()}
            avg["steps_per_sec"] = window_n / max(now - step_time, 1e-9)
            window, window_n, step_time = {}, 0, now
            if main:
                log(done, avg)
                if reporter is not None:
                    reporter(done, avg)
        if tc.ckpt_every and done % tc.ckpt_every == 0 and done != cfg.total_steps:
            save(done)
    if bar is not None:
        bar.close()
    save(cfg.total_steps)
    train_seconds = time.time() - t0

    backbone = obj.encoder()
    summary: dict = {"steps": cfg.total_steps, "seconds": round(train_seconds, 2), "train_seconds": round(train_seconds, 2), "final_loss": last_loss}
    if main:
        extra = {}
        if evaluate and ds.num_classes > 1:
            backbone.eval()
            obj.eval()
            f_tr = pooled_features(obj.pooled, x_all[train_idx.to(device)])
            f_te = pooled_features(obj.pooled, x_all[test_idx.to(device)])
            summary["probe_accuracy"] = probe_accuracy(f_tr, ds.y[train_idx], f_te, ds.y[test_idx])
            extra["probe_accuracy"] = summary["probe_accuracy"]
        path = write_encoder_artifact(
            out, backbone, name=cfg.registered_name, objective=cfg.objective.name, data={"name": cfg.data.name, "size": cfg.data.size},
            config_hash=config_hash(cfg), input_shape=ds.shape, mask_channel=mask_channel, extra=extra, arch=obj.artifact_meta(),
            finetuned=finetune is not None or (cfg.release_mae is not None and cfg.release_mae.finetune_last_steps > 0),
        )
        summary["encoder_dir"] = str(path)
        summary["config_hash"] = config_hash(cfg)
        summary["seconds"] = round(time.time() - t0, 2)
        tmp = out / "summary.json.tmp"
        tmp.write_text(json.dumps(summary, indent=2) + "\n")
        os.replace(tmp, out / "summary.json")
    D.barrier()
    return summary
