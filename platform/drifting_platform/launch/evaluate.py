"""`drifting-platform evaluate` spread over Ray: generation, decoding and Inception features
of the protocol's chunks on a pool of actors (one per GPU when asked), the statistics on
the driver.

    run_evaluation(source, num=50000, cfg_scales=[1.0, 1.5], ref=path, workers=8, gpu=True)
    run_evaluation(source, num=2000, cfg_scales=[1.0], ref=path, workers=0)   # this process

Chunks are fixed by `train.protocol.CHUNK` and seeded by their index, so the numbers are the
same for any number of workers.
"""

from __future__ import annotations

import os
from typing import Optional, Sequence

from ..eval.protocol import read_reference
from ..inference import build_protocol_runner
from ..train.protocol import CHUNK, evaluate_protocol


class _ChunkWorker:
    """A Ray actor holding one generator, decoder and extractor."""

    def __init__(self, source, kwargs, threads):
        import torch

        torch.set_num_threads(threads)
        if kwargs.get("device") == "cuda" and not torch.cuda.is_available():
            kwargs = dict(kwargs, device="cpu")
        self.runner = build_protocol_runner(source, **kwargs)

    def run(self, args):
        return self.runner.chunk_features(*args)


def run_evaluation(source: str, *, num: int, cfg_scales: Sequence[float], ref: str, vae: Optional[str] = None, extractor: str = "inception",
                   inception_weights=None, workers: int = 0, gpu: bool = False, seed: int = 0, batch_size: int = 250, chunk: int = CHUNK,
                   progress: bool = True, keep_images: int = 0) -> dict:
    """The protocol's metrics of `source` (a run directory or a released generator) at each
    CFG scale against the reference file `ref`; see `train.protocol.evaluate_protocol`."""
    from tqdm import tqdm

    reference = read_reference(ref)  # before any model is built: a bad file fails first
    kwargs = dict(vae=vae, extractor=extractor, inception_weights=inception_weights, device="cuda" if gpu else "cpu", batch_size=batch_size)
    bar = tqdm(total=num * len(cfg_scales), unit="img", desc="evaluate", disable=not progress, dynamic_ncols=True)
    if workers == 0:
        runner = build_protocol_runner(source, **kwargs)
        out = evaluate_protocol(runner, num=num, cfg_scales=cfg_scales, ref=reference, seed=seed, chunk=chunk, progress=bar.update,
                                keep_images=keep_images)
        bar.close()
        return out
    import ray
    from ray.util import ActorPool

    from .cluster import ray_init_for_sweep

    ray_init_for_sweep(gpus=1 if gpu else 0, gpu_key="--gpu")
    threads = 1 if gpu else max(1, (os.cpu_count() or 1) // workers)
    actor = ray.remote(num_gpus=1 if gpu else 0, num_cpus=0 if gpu else threads)(_ChunkWorker)
    pool_actors = [actor.remote(str(source), kwargs, threads) for _ in range(workers)]
    # the runner on the driver only knows the class count; it never generates
    num_classes = ray.get(pool_actors[0].__ray_call__.remote(lambda self: self.runner.num_classes))

    def map_chunks(args):
        pool = ActorPool(pool_actors)
        results = []
        for r in pool.map(lambda a, arg: a.run.remote(arg), args):  # in order
            results.append(r)
            bar.update(len(r[0]))
        return results

    class _Counts:  # what evaluate_protocol reads from a runner when chunks are mapped
        pass

    counts = _Counts()
    counts.num_classes = num_classes
    try:
        out = evaluate_protocol(counts, num=num, cfg_scales=cfg_scales, ref=reference, seed=seed, chunk=chunk, map_chunks=map_chunks,
                                keep_images=keep_images)
    finally:
        bar.close()
        for a in pool_actors:
            ray.kill(a)
    return out
