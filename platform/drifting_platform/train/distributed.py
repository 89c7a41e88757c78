"""The launcher seam (after NVlabs/edm's torch_utils/distributed.py).

The training loop asks this module who it is and how many peers it has; it never imports a
launcher. Under plain `python`, `torchrun`, a Ray Train worker or a test the same loop runs:
whoever launched the process set up `torch.distributed` (or did not).
"""

from __future__ import annotations

import torch
import torch.distributed as dist


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
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / get_world_size()


def global_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of `t` over all its elements and over ranks (equal shapes on every rank).

    Used inside the drift loss (no gradient): with it, the feature scale and each
    temperature's force normalisation are those of the global batch, so N workers train
    exactly like one worker with the same global batch.
    """
    m = t.mean()
    if not is_distributed():
        return m
    m = m.detach().clone()
    dist.all_reduce(m, op=dist.ReduceOp.SUM)
    return m / get_world_size()


def global_max(t: torch.Tensor) -> torch.Tensor:
    """Maximum of `t` over all its elements and over ranks.

    Used inside the drift loss (no gradient) by normalizations "y" and "none": every worker
    rescales its forces by the same, global largest row mass, as one worker would.
    """
    m = t.amax()
    if not is_distributed():
        return m
    m = m.detach().clone()
    dist.all_reduce(m, op=dist.ReduceOp.MAX)
    return m
