"""The launcher seam (after NVlabs/edm's torch_utils/distributed.py).

The training loop asks this module who it is and how many peers it has; it never imports a
launcher. Under plain `python`, `torchrun`, a Ray Train worker or a test the same loop runs:
whoever launched the process set up `torch.distributed` (or did not).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


_ALL_REDUCES = [0]  # all-reduces issued through this module by this process


def all_reduce_count() -> int:
    """How many all-reduces this process has issued through this module (DDP's gradient
    buckets are not among them): the training summary's collectives per step."""
    return _ALL_REDUCES[0]


def _all_reduce(t: torch.Tensor, op) -> None:
    _ALL_REDUCES[0] += 1
    dist.all_reduce(t, op=op)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return get_rank() == 0


def print0(*args, **kwargs) -> None:
    if is_main():
        print(*args, **kwargs)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over ranks (a copy; `t` itself is left alone)."""
    if not is_distributed():
        return t
    out = t.detach().clone()
    _all_reduce(out, dist.ReduceOp.SUM)
    return out / get_world_size()


def all_reduce_values(op: str, values: torch.Tensor) -> torch.Tensor:
    """The drift loss's ``reduce``: this worker's statistics (a 1-d tensor of means, or of
    maxima for op "max") -> the same statistics over all workers, in one all-reduce.

    With equal shards on every worker the mean of the workers' means is the global batch's
    mean: N workers train exactly like one worker with the same global batch.
    """
    if not is_distributed():
        return values
    out = values.detach().clone()
    if op == "mean":
        _all_reduce(out, dist.ReduceOp.SUM)
        return out / get_world_size()
    if op == "max":
        _all_reduce(out, dist.ReduceOp.MAX)
        return out
    raise ValueError(f"op must be 'mean' or 'max', got {op!r}")


def global_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over all its elements and over ranks (equal shapes on every rank).

    The drift loss's per-statistic ``batch_mean`` (one all-reduce per call; the training
    loop uses ``all_reduce_values``, one per round of statistics).
    """
    m = t.mean()
    if not is_distributed():
        return m
    m = m.detach().clone()
    _all_reduce(m, dist.ReduceOp.SUM)
    return m / get_world_size()


def global_max(t: torch.Tensor) -> torch.Tensor:
    """Maximum of `t` over all its elements and over ranks.

    The drift loss's per-statistic ``batch_max`` (normalizations "y" and "none": every
    worker rescales its forces by the same, global largest row mass, as one worker would).
    """
    m = t.amax()
    if not is_distributed():
        return m
    m = m.detach().clone()
    _all_reduce(m, dist.ReduceOp.MAX)
    return m
