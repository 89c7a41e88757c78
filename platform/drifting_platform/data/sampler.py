"""Class-grouped sampling of data indices (the paper's per-step batch layout, Sec. 3.5 / App. A).

Each step draws N_c distinct classes; for each class N_pos positives from that class's bank
(one *class group*, a row of the drift loss's batch dimension B); and N_unc unconditional
samples from the whole data set, shared by all groups as the CFG negatives. The generator
produces N_gen samples per group elsewhere; this module deals in indices only.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch


@dataclass(frozen=True)
class GroupBatch:
    """Indices into the data set for one step.

    classes: int64 [N_c] distinct class labels; pos_idx: int64 [N_c, N_pos], row i all of class
    classes[i]; unc_idx: int64 [N_unc] drawn from the whole data set.
    """

    classes: torch.Tensor
    pos_idx: torch.Tensor
    unc_idx: torch.Tensor


def _count(v, what: str, minimum: int) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or int(v) < minimum:
        raise ValueError(f"{what} must be an integer >= {minimum}, got {v!r}")
    return int(v)


class ClassGroupedSampler:
    """Draws `GroupBatch`es: N_c classes without replacement, N_pos positives per class, N_unc
    unconditional samples.

    y: int64 [N] labels of the data set; num_classes: labels lie in [0, num_classes).
    n_classes (N_c): classes per step, at most the number of classes that have samples.
    n_pos (N_pos): positives per class, without replacement when the class has at least N_pos
    samples, with replacement otherwise. n_unc (N_unc, may be 0): i.i.d. uniform draws from the
    whole data set. seed: the stream of batches is a function of the seed alone
    (a CPU `torch.Generator`).
    """

    def __init__(self, y, num_classes: int, *, n_classes: int, n_pos: int, n_unc: int, seed: int = 0):
        self.num_classes = _count(num_classes, "num_classes", 1)
        self.n_classes = _count(n_classes, "n_classes", 1)
        self.n_pos = _count(n_pos, "n_pos", 1)
        self.n_unc = _count(n_unc, "n_unc", 0)
        self.seed = int(seed)
        y = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y).reshape(-1).to("cpu", torch.int64)
        if len(y) == 0:
            raise ValueError("ClassGroupedSampler: the data set is empty")
        if int(y.min()) < 0 or int(y.max()) >= self.num_classes:
            raise ValueError(f"ClassGroupedSampler: labels span [{int(y.min())}, {int(y.max())}], outside [0, {self.num_classes})")
        if self.n_classes > self.num_classes:
            raise ValueError(f"n_classes ({self.n_classes}) exceeds num_classes ({self.num_classes})")
        counts = torch.bincount(y, minlength=self.num_classes)
        self._present = torch.nonzero(counts).reshape(-1)  # classes that have samples
        if self.n_classes > len(self._present):
            raise ValueError(f"n_classes ({self.n_classes}) exceeds the {len(self._present)} classes that have samples")
        order = torch.argsort(y, stable=True)
        self._banks = list(torch.split(order, counts.tolist()))  # per-class index banks
        self._n = len(y)
        self.rank, self.world_size = 0, 1
        self._gen = torch.Generator().manual_seed(self.seed)

    @property
    def groups_per_rank(self) -> int:
        """Class groups this sampler's `sample()` returns (n_classes // world_size)."""
        return self.n_classes // self.world_size

    def sample(self) -> GroupBatch:
        """The next step's indices (this rank's share of the class groups when sharded)."""
        g = self._gen
        # every rank draws the full step from the same stream and keeps its slice, so the
        # union over ranks is exactly the one-process step
        classes = self._present[torch.randperm(len(self._present), generator=g)[: self.n_classes]]  # [N_c]
        pos = torch.empty(self.n_classes, self.n_pos, dtype=torch.int64)
        for i, c in enumerate(classes.tolist()):
            bank = self._banks[c]
            m = len(bank)
            pick = torch.randperm(m, generator=g)[: self.n_pos] if m >= self.n_pos else torch.randint(m, (self.n_pos,), generator=g)
            pos[i] = bank[pick]
        unc = torch.randint(self._n, (self.n_unc,), generator=g, dtype=torch.int64)  # [N_unc]
        k = self.groups_per_rank
        lo = self.rank * k
        return GroupBatch(classes[lo : lo + k].clone(), pos[lo : lo + k].clone(), unc)

    def __iter__(self) -> Iterator[GroupBatch]:
        while True:
            yield self.sample()

    def shard(self, rank: int, world_size: int) -> "ClassGroupedSampler":
        """A sampler for worker `rank` of `world_size`: the same stream of steps (continuing from
        this sampler's position), keeping class groups [rank * k, (rank + 1) * k) of each step,
        k = n_classes // world_size. The unconditional samples are shared by all groups, so
        every rank gets all N_unc of them."""
        world_size = _count(world_size, "world_size", 1)
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= int(rank) < world_size:
            raise ValueError(f"rank must be an integer in [0, {world_size}), got {rank!r}")
        if self.world_size != 1:
            raise ValueError("shard() of an already sharded sampler; shard the unsharded one")
        if self.n_classes % world_size:
            raise ValueError(f"n_classes ({self.n_classes}) class groups cannot be split evenly over {world_size} workers")
        out = copy.copy(self)
        out.rank, out.world_size = int(rank), world_size
        out._gen = torch.Generator()
        out._gen.set_state(self._gen.get_state())
        return out
