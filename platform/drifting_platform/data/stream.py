"""Streaming class banks: positives and unconditional samples for sets larger than memory.

The release does not hold ImageNet's latents in memory: each host streams its part of the
data into per-class ring buffers (128 per class) and one global buffer (for the CFG
unconditional samples), pushing a fixed number of new samples per step, and draws each
step's positives from the buffers. `StreamingClassBanks` does the same over prepared
shards (`data prepare`):

- worker `rank` of `world` streams shards rank, rank + world, ...; each pass over them (an
  epoch) visits them in a fresh order and each shard's rows in a fresh order (a function of
  seed, rank and epoch), so the stream is reproducible;
- every row pushed goes to its class's ring buffer (`bank_size`) and to the global buffer
  (`unc_bank_size`), both keeping the moments of the image and of its flip; `fill()` pushes
  until every class has `min(n_pos, bank_size)` rows (or an epoch has passed), `push(n)`
  pushes n more (`push_per_step` per step);
- `sample(step)` draws the step's classes from a generator shared by all ranks (so ranks
  get distinct classes, rank r keeps groups [r k, (r + 1) k)), then per class n_pos rows of
  its buffer (without replacement when it holds enough), n_unc rows of the global buffer,
  and per row a flip and a posterior draw (`moments.draw_latents`);
- `state()` is the stream position (epoch, shard, row, rows pushed; the checkpoint records
  it); `resume(step)` puts the stream where a run left it after `step` steps (the initial
  fill plus push_per_step per step) and refills the buffers with the rows just before that
  point (earlier rows are skipped by Parquet footers, unread), as the release refills its
  bank at resume; so a resumed run continues the stream, not the start of it, and a second
  resume lands on the same position as an uninterrupted run.

Memory: num_classes * bank_size + unc_bank_size slots of 2 x [2C, h, w] float32, plus one
shard being read; nothing grows with the data set. `memory_bytes()` says how much.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from .moments import draw_latents, read_moment_shard

_RANK_MULT = 1_000_003
_EPOCH_MULT = 7919


@dataclass(frozen=True)
class StreamBatch:
    """One step's data for this rank: classes [k]; pos [k, n_pos, C, h, w]; unc [n_unc, C, h, w]."""

    classes: torch.Tensor
    pos: torch.Tensor
    unc: torch.Tensor


class StreamingClassBanks:
    """Per-class ring buffers fed from a stream over prepared shards (see the module doc)."""

    def __init__(self, files: Sequence[str], *, num_classes: int, moments_shape: Sequence[int], scale: float, n_classes: int, n_pos: int,
                 n_unc: int, bank_size: int = 128, unc_bank_size: int = 1000, push_per_step: int = 64, rank: int = 0, world: int = 1,
                 seed: int = 0, filesystem=None):
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"rank {rank} of world {world}")
        mine = list(files)[rank::world]
        if not mine:
            raise ValueError(f"{len(files)} shard(s) cannot be split over {world} workers: worker {rank} would stream none (prepare with a smaller --shard-size)")
        if n_classes > num_classes or n_classes % world:
            raise ValueError(f"n_classes {n_classes}: at most num_classes ({num_classes}) and divisible by the {world} workers")
        for what, v in (("bank_size", bank_size), ("unc_bank_size", unc_bank_size), ("n_pos", n_pos)):
            if v < 1:
                raise ValueError(f"{what} must be >= 1, got {v}")
        if push_per_step < 0 or n_unc < 0:
            raise ValueError(f"push_per_step and n_unc must be >= 0, got {push_per_step}, {n_unc}")
        self.files = mine
        self.num_classes, self.n_classes, self.n_pos, self.n_unc = int(num_classes), int(n_classes), int(n_pos), int(n_unc)
        self.bank_size, self.unc_bank_size, self.push_per_step = int(bank_size), int(unc_bank_size), int(push_per_step)
        self.rank, self.world, self.seed, self.scale = int(rank), int(world), int(seed), float(scale)
        self.filesystem = filesystem
        shape = (2, *(int(s) for s in moments_shape))  # the image's moments and its flip's
        self.moments_shape = tuple(int(s) for s in moments_shape)
        self.bank = np.zeros((self.num_classes, self.bank_size, *shape), np.float32)
        self.count = np.zeros(self.num_classes, np.int64)
        self.ptr = np.zeros(self.num_classes, np.int64)
        self.unc = np.zeros((self.unc_bank_size, *shape), np.float32)
        self.unc_count = 0
        self.unc_ptr = 0
        # the stream position
        self.epoch, self.shard_pos, self.row_pos, self.pushed = 0, 0, 0, 0
        self._order: Optional[np.ndarray] = None  # this epoch's shard order
        self._rows: Optional[dict] = None  # the shard being read, rows permuted
        self._rows_key: Optional[tuple] = None
        self._sizes: dict[int, int] = {}  # rows per shard, from footers (skip)

    # ------------------------------------------------------------------ the stream

    def _rng(self, *parts: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, self.rank, *parts])

    def _epoch_order(self) -> np.ndarray:
        if self._order is None:
            self._order = self._rng(self.epoch).permutation(len(self.files))
        return self._order

    def _current_shard(self) -> dict:
        key = (self.epoch, self.shard_pos)
        if self._rows_key != key:
            f = self.files[int(self._epoch_order()[self.shard_pos])]
            cols, _ = read_moment_shard(f, filesystem=self.filesystem)
            perm = self._rng(self.epoch, self.shard_pos, 1).permutation(len(cols["label"]))
            self._rows = {
                "both": np.stack([cols["moments"], cols["moments_flip"]], axis=1)[perm],  # [rows, 2, 2C, h, w]
                "label": cols["label"].astype(np.int64)[perm],
            }
            self._rows_key = key
        return self._rows

    def _advance_shard(self) -> None:
        self.shard_pos += 1
        self.row_pos = 0
        if self.shard_pos >= len(self.files):
            self.epoch += 1
            self.shard_pos = 0
            self._order = None
        self._rows, self._rows_key = None, None

    def _next_rows(self, n: int):
        """Up to n rows from the stream: (both-flip moments [m, 2, 2C, h, w], labels [m])."""
        rows = self._current_shard()
        avail = len(rows["label"]) - self.row_pos
        if avail <= 0:
            self._advance_shard()
            return self._next_rows(n)
        take = min(n, avail)
        lo = self.row_pos
        self.row_pos += take
        both, labels = rows["both"][lo : lo + take], rows["label"][lo : lo + take]
        if self.row_pos >= len(rows["label"]):
            self._advance_shard()
        return both, labels

    def _add(self, both: np.ndarray, labels: np.ndarray) -> None:
        if len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"a shard of {self.files[0]}...: labels outside [0, {self.num_classes})")
        for row, c in zip(both, labels):
            c = int(c)
            self.bank[c, self.ptr[c]] = row
            self.ptr[c] = (self.ptr[c] + 1) % self.bank_size
            self.count[c] = min(self.count[c] + 1, self.bank_size)
            self.unc[self.unc_ptr] = row
            self.unc_ptr = (self.unc_ptr + 1) % self.unc_bank_size
            self.unc_count = min(self.unc_count + 1, self.unc_bank_size)
        self.pushed += len(labels)

    def push(self, n: int) -> None:
        """Push the next n rows of the stream into the buffers."""
        while n > 0:
            both, labels = self._next_rows(n)
            self._add(both, labels)
            n -= len(labels)

    def fill(self, *, max_rows: Optional[int] = None) -> int:
        """Push until every class has min(n_pos, bank_size) rows and the global buffer is
        full, or one pass over this rank's shards (or `max_rows`) has been pushed; returns
        the rows pushed. A class still empty after that is an error (this rank's split has
        none of it)."""
        target = min(self.n_pos, self.bank_size)
        start = self.pushed
        epoch0, shard0, row0 = self.epoch, self.shard_pos, self.row_pos
        while (self.count < target).any() or self.unc_count < min(self.unc_bank_size, max(self.n_unc, 1)):
            self.push(min(256, self.bank_size))
            passed = (self.epoch, self.shard_pos, self.row_pos) >= (epoch0 + 1, shard0, row0)
            if passed or (max_rows is not None and self.pushed - start >= max_rows):
                break
        empty = np.flatnonzero(self.count == 0)
        if len(empty):
            raise ValueError(
                f"worker {self.rank}'s shards ({len(self.files)} of them) hold no samples of class(es) {empty[:5].tolist()}: "
                "every worker needs every class (prepare more, smaller shards: the items are shuffled across shards)"
            )
        return self.pushed - start

    # ------------------------------------------------------------------ drawing

    def sample(self, step: int) -> StreamBatch:
        """Step `step`'s classes, positives and unconditional samples for this rank (fresh
        flips and posterior draws); `push_per_step` rows are pushed first."""
        if self.push_per_step:
            self.push(self.push_per_step)
        shared = torch.Generator().manual_seed(self.seed * _RANK_MULT + step * _EPOCH_MULT)
        classes = torch.randperm(self.num_classes, generator=shared)[: self.n_classes]
        k = self.n_classes // self.world
        mine = classes[self.rank * k : (self.rank + 1) * k]
        g = torch.Generator().manual_seed((self.seed * _RANK_MULT + step) * _EPOCH_MULT + self.rank + 1)
        picks = []
        for c in mine.tolist():
            m = int(self.count[c])
            if m == 0:
                raise ValueError(f"class {c} has no samples in worker {self.rank}'s buffers")
            idx = torch.randperm(m, generator=g)[: self.n_pos] if m >= self.n_pos else torch.randint(m, (self.n_pos,), generator=g)
            picks.append(self.bank[c, idx.numpy()])
        pos = np.concatenate(picks) if picks else np.zeros((0, 2, *self.moments_shape), np.float32)  # [k * n_pos, 2, 2C, h, w]
        uidx = torch.randint(max(self.unc_count, 1), (self.n_unc,), generator=g).numpy()
        unc = self.unc[uidx]
        both = torch.from_numpy(np.concatenate([pos, unc]))
        lat = draw_latents(both[:, 0], both[:, 1], self.scale, generator=g)
        n = len(pos)
        return StreamBatch(mine.clone(), lat[:n].reshape(len(mine), self.n_pos, *lat.shape[1:]), lat[n:])

    # ------------------------------------------------------------------ resuming

    def state(self) -> dict:
        """The stream position (what a checkpoint keeps)."""
        return {"epoch": self.epoch, "shard_pos": self.shard_pos, "row_pos": self.row_pos, "pushed": self.pushed,
                "rank": self.rank, "world": self.world, "files": len(self.files)}

    def _rows_in(self, i: int) -> int:
        """Rows of this rank's shard i (from the Parquet footer; cached)."""
        if i not in self._sizes:
            import pyarrow.parquet as pq

            from .. import storage

            f = self.files[i]
            fs, p = storage.filesystem_and_path(f) if storage.is_s3(f) and self.filesystem is None else (self.filesystem, f)
            self._sizes[i] = int(pq.read_metadata(p, filesystem=fs).num_rows)
        return self._sizes[i]

    def skip(self, n: int) -> None:
        """Move the stream position n rows on without reading them (footers only)."""
        n = int(n)
        while n > 0:
            size = self._rows_in(int(self._epoch_order()[self.shard_pos]))
            take = min(n, size - self.row_pos)
            self.row_pos += take
            self.pushed += take
            n -= take
            if self.row_pos >= size:
                self._advance_shard()

    def _reset(self) -> None:
        self.count[:] = 0
        self.ptr[:] = 0
        self.unc_count = self.unc_ptr = 0
        self.epoch, self.shard_pos, self.row_pos, self.pushed = 0, 0, 0, 0
        self._order, self._rows, self._rows_key = None, None, None

    def resume(self, step: int, expected: Optional[dict] = None) -> dict:
        """Continue a run at `step` (`step` steps done). The stream position is where the run
        left it, P = F + step * push_per_step (F: the rows `fill()` takes from the start,
        recomputed; each rank its own), and the buffers hold what the run's held: the last
        min(P, 2 F) rows before P are pushed again (the rows before them are skipped by
        footers, unread). `expected`: the position a checkpoint recorded for this rank;
        ValueError when the stream does not reach it (the shards changed)."""
        if expected is not None and (expected.get("rank"), expected.get("world"), expected.get("files")) != (self.rank, self.world, len(self.files)):
            raise ValueError(f"the checkpoint's data stream was worker {expected.get('rank')}/{expected.get('world')} over "
                             f"{expected.get('files')} shards, this is worker {self.rank}/{self.world} over {len(self.files)}")
        self._reset()
        fill_rows = self.fill()
        target = fill_rows + int(step) * self.push_per_step
        window = min(target, 2 * fill_rows)
        self._reset()
        self.skip(target - window)
        self.push(window)
        here = self.state()
        keys = ("epoch", "shard_pos", "row_pos", "pushed")
        if expected is not None and {k: here[k] for k in keys} != {k: expected[k] for k in keys}:
            raise ValueError(f"the data stream does not reach the checkpoint's position {expected} (got {here}): were the shards changed?")
        return here

    def memory_bytes(self) -> int:
        """Bytes held by the buffers (the bound on this object's memory, plus one shard)."""
        return int(self.bank.nbytes + self.unc.nbytes)

    def class_spread(self) -> torch.Tensor:
        """Per-class std of the buffered (scaled mean) latents, [num_classes] (`spread_ratio`'s reference)."""
        c = self.moments_shape[0] // 2
        out = torch.zeros(self.num_classes)
        for k in range(self.num_classes):
            m = int(self.count[k])
            if m > 1:
                x = torch.from_numpy(self.bank[k, :m, 0, :c]).reshape(m, -1) * self.scale
                out[k] = x.std(dim=0).mean()
        return out
