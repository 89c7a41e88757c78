"""`data prepare` on Ray: the shards of a `PreparePlan` spread over Ray Data actors.

    run_prepare(plan, workers=4, gpu=True)   # one VAE actor per GPU
    run_prepare(plan, workers=0)             # this process, no Ray

Each actor loads the VAE once and turns shard indices into written shards
(`data.prepare.run_shard`); Ray Data's `map_batches` with an actor pool streams the indices
to them, and the driver collects each shard's metadata as it lands (a tqdm bar over
images). Shards already finished for the same items, resolution and VAE are skipped before
anything starts, so an interrupted prepare is resumed by running it again; the manifest is
written once all shards exist.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

from ..data.prepare import PreparePlan, UnreadableImage, existing_shards, finish, run_shard


def _threads_per_actor(workers: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, workers))


class _ShardEncoder:
    """A Ray Data actor: one VAE, many shards."""

    def __init__(self, plan: PreparePlan, threads: int, device: str):
        import torch

        from ..data.vae import load_vae

        torch.set_num_threads(threads)
        if device == "cuda" and not torch.cuda.is_available():
            device = "cpu"
        self.plan = plan
        self.vae = load_vae(plan.vae, device=device)

    def __call__(self, batch: dict) -> dict:
        import json

        from ..data.prepare import UnreadableImage

        metas, errors = [], []
        for i in batch["index"]:
            try:  # --on-error fail: the image goes back to the driver as data, not as a Ray error
                metas.append(json.dumps(run_shard(self.vae, self.plan, int(i))))
                errors.append("")
            except UnreadableImage as exc:
                metas.append("")
                errors.append(str(exc))
        return {"index": np.asarray(batch["index"], dtype=np.int64), "meta": np.array(metas, dtype=object), "error": np.array(errors, dtype=object)}


def _progress(plan: PreparePlan, done: dict, enabled: bool):
    from tqdm import tqdm

    rows = sum(plan.ranges[i][1] - plan.ranges[i][0] for i in done)
    return tqdm(total=len(plan.items), initial=rows, unit="img", desc=f"prepare {plan.name}", disable=not enabled, dynamic_ncols=True)


def run_prepare(plan: PreparePlan, *, workers: int = 1, gpu: bool = False, progress: bool = True, threads: Optional[int] = None) -> dict:
    """Encode every unfinished shard of `plan`, then write the manifest; returns
    {"manifest", "skipped" (shards reused), "written", "seconds", "images_per_second" (all of
    it, actor start included), "steady_images_per_second" (Ray: after every actor's first
    shard; None in-process)}.

    workers = 0: in this process; N >= 1: N Ray Data actors (each with a GPU when `gpu`),
    on the cluster of the Ray job when there is one, else a local Ray."""
    import json
    import time

    t0 = time.time()
    done = existing_shards(plan.out, plan.keys)
    skipped = sorted(done)
    todo = [i for i in range(plan.num_shards) if i not in done]
    bar = _progress(plan, done, progress)
    landed: list = []  # (time, rows) of each shard written by the actors
    sizes = {i: plan.ranges[i][1] - plan.ranges[i][0] for i in range(plan.num_shards)}
    if todo and workers == 0:
        import torch

        from ..data.vae import load_vae

        if threads:
            torch.set_num_threads(threads)
        vae = load_vae(plan.vae, device="cuda" if gpu else "cpu")
        for i in todo:
            done[i] = run_shard(vae, plan, i)
            bar.update(sizes[i])
    elif todo:
        import ray

        from .cluster import ray_init_for_sweep

        ray_init_for_sweep(gpus=1 if gpu else 0, gpu_key="--gpu")
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours counts images, not blocks
        n = min(workers, len(todo))
        per = threads or _threads_per_actor(n)
        ds = ray.data.from_items([{"index": i} for i in todo], override_num_blocks=len(todo))
        ds = ds.map_batches(
            _ShardEncoder, fn_constructor_kwargs={"plan": plan, "threads": per, "device": "cuda" if gpu else "cpu"},
            batch_size=1, concurrency=n, num_gpus=1 if gpu else 0, num_cpus=0 if gpu else per, zero_copy_batch=True,
        )
        for row in ds.iter_rows():
            if row["error"]:
                bar.close()
                raise UnreadableImage(row["error"])
            i = int(row["index"])
            done[i] = json.loads(row["meta"])
            bar.update(sizes[i])
            landed.append((time.time(), sizes[i]))
    bar.close()
    manifest = finish(plan, done)
    seconds = time.time() - t0
    written = len(todo)
    encoded = sum(sizes[i] for i in todo)
    # once every actor has written a shard (VAE loaded, pipeline full): the steady rate
    n_first = min(len(landed), max(1, workers))
    steady = None
    if len(landed) > n_first:
        rows = sum(r for _, r in landed[n_first:])
        steady = round(rows / max(landed[-1][0] - landed[n_first - 1][0], 1e-9), 2)
    return {
        "steady_images_per_second": steady,
        "manifest": manifest,
        "skipped": skipped,
        "written": written,
        "seconds": round(seconds, 2),
        "images_per_second": round(encoded / seconds, 2) if encoded else 0.0,
    }
