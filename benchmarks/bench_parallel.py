"""Data parallelism (issue 17 item 1): the drift loss's collectives per step and their cost.

Under data parallelism each worker holds half of the class groups, and the drift loss needs
statistics of the global batch: every feature set's scale (two means) and every
temperature's force RMS (and for "y" / "none" its largest row mass). One all-reduce per
statistic and feature set ("before": ``drift_loss``'s per-statistic ``batch_mean`` /
``batch_max``, what the training loop did until issue 17) costs 2 + T per set (75 per step
for the digits encoder's 15 feature sets at T = 3); ``drift_losses`` advances the sets
together and gathers each round's statistics into one all-reduce ("after": 2 per step for
"xy").

What is measured: two gloo processes on this machine (1 torch thread each, as two Ray Train
workers with 1 CPU each) compute the loss of the orchestration benchmark's step (digits 8x8
CFG, the digits config's random CNN encoder, 10 classes x 16 generated / 16 positive + 8
unconditional, 5 classes per worker): forward and backward of ``group_drift_loss`` on the
encoder's real feature sets, alternating before / after, median of the repetitions of rank
0. The all-reduces are counted by the training code's own counter
(``train.distributed.all_reduce_count``). Both give the same loss and gradient (checked).
The end-to-end effect, 2 Ray Train workers vs a 2-thread process, is the orchestration
benchmark's 2-worker row.

    python benchmarks/bench_parallel.py [--quick]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "configs" / "digits.yaml"
SAMPLING = ["sampling.n_classes=10", "sampling.n_gen=16", "sampling.n_pos=16", "sampling.n_unc=8"]


def _shard_inputs(cfg, rank: int, world: int):
    """This rank's features of one step: (generated features (leaf tensors), positives,
    unconditional negatives, CFG weights, groups)."""
    from drifting_platform.drift import cfg_negative_weight
    from drifting_platform.train.loop import build_components

    ds, enc, gen = build_components(cfg)
    s = cfg.sampling
    n = s.n_classes // world
    g = torch.Generator().manual_seed(0)
    z = torch.randn(s.n_classes * s.n_gen, gen.noise_dim, generator=g)[rank * n * s.n_gen : (rank + 1) * n * s.n_gen]
    labels = torch.arange(rank * n, (rank + 1) * n).repeat_interleave(s.n_gen)
    alpha = torch.full((n,), 1.5)
    pos_idx = torch.cat([torch.nonzero(ds.y == c).flatten()[: s.n_pos] for c in range(rank * n, (rank + 1) * n)])
    with torch.no_grad():
        gen_f = enc(gen(z, labels, alpha.repeat_interleave(s.n_gen)))
        pos_f, unc_f = enc(ds.x[pos_idx]), enc(ds.x[-s.n_unc :])
    return gen_f, pos_f, unc_f, cfg_negative_weight(alpha, s.n_gen, s.n_unc), n


def _worker(rank: int, world: int, init: str, reps: int, out: str) -> None:
    import torch.distributed as dist

    from drifting_platform.config import load_config
    from drifting_platform.drift import _per_statistic
    from drifting_platform.train import distributed as D
    from drifting_platform.train.objective import group_drift_loss

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        cfg = load_config(CONFIG, "smoke", SAMPLING)
        gen_f, pos_f, unc_f, unc_w, n = _shard_inputs(cfg, rank, world)
        reducers = {"before": _per_statistic(D.global_mean, D.global_max), "after": D.all_reduce_values}
        times = {k: [] for k in reducers}
        counts, results = {}, {}
        for rep in range(reps + 1):  # the first round warms up
            for name, reduce in reducers.items():
                f = {k: v.detach().clone().requires_grad_(True) for k, v in gen_f.items()}
                dist.barrier()
                c0, t0 = D.all_reduce_count(), time.perf_counter()
                loss, _ = group_drift_loss(f, pos_f, unc_f, n_groups=n, unc_weight=unc_w, temperatures=cfg.drift.temperatures, reduce=reduce)
                loss.backward()
                dist.barrier()  # both workers done: the step's time is the slower one's
                t = time.perf_counter() - t0
                counts[name] = D.all_reduce_count() - c0  # (barriers go around the counter)
                if rep:
                    times[name].append(t)
                results[name] = (float(loss.detach()), torch.cat([v.grad.flatten() for v in f.values()]))
        if rank == 0:
            torch.save({"times": times, "counts": counts, "results": results, "sets": len(gen_f), "T": len(cfg.drift.temperatures)}, out)
    finally:
        dist.destroy_process_group()


def run(quick: bool = False) -> list[dict]:
    import torch.multiprocessing as mp

    reps = 5 if quick else 30
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        out = str(Path(tmp) / "rank0.pt")
        mp.spawn(_worker, args=(2, f"file://{Path(tmp) / 'pg'}", reps, out), nprocs=2)
        got = torch.load(out)
    (lb, gb), (la, ga) = got["results"]["before"], got["results"]["after"]
    torch.testing.assert_close(ga, gb, rtol=1e-5, atol=1e-7)
    same = f"same loss ({la:.6g} vs {lb:.6g}) and gradient (max |diff| {float((ga - gb).abs().max()):.1e})"
    before, after = (statistics.median(got["times"][k]) * 1e3 for k in ("before", "after"))
    case = f"digits 8x8 CFG, random CNN encoder ({got['sets']} feature sets, T={got['T']}), 2 gloo workers x 5 classes, 1 thread each"
    return [
        {
            "benchmark": "data parallel: drift-loss all-reduces per step", "case": case,
            "baseline": got["counts"]["before"], "ours": got["counts"]["after"], "unit": "all-reduces",
            "ratio": got["counts"]["before"] / got["counts"]["after"], "target": None,
            "note": f"before: one per statistic and feature set ((2 + T) x {got['sets']}); after: one per round of statistics for all sets; {same}",
        },
        {
            "benchmark": "data parallel: drift loss fwd+bwd, 2 workers", "case": case,
            "baseline": before, "ours": after, "unit": "ms", "ratio": before / after, "target": None,
            "note": f"median of {reps} steps, the slower worker's (barrier to barrier); before = per-statistic all-reduces",
        },
    ]


if __name__ == "__main__":
    from _common import main

    main(run)
