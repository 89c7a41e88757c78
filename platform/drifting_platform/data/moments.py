"""Prepared latent sets (`data prepare`'s shards of SD-VAE posterior moments) as training data.

A training latent is drawn as the release draws it: pick the image or its horizontal flip
(probability 1/2 each), sample its posterior, multiply by the VAE's scaling factor. Both
flips' moments are stored, so every draw is fresh.

- `load_prepared(path)`: the whole set in memory, a `MomentDataset` (x = the scaled
  posterior means, the deterministic latents evaluation and diagnostics use; `draw(idx)`
  for training draws). For sets that fit in memory (digits, the miniatures).
- `StreamingClassBanks` (`stream.py`): larger-than-memory sets, streamed.

`path` is a prepared folder (local or s3://, its manifest.json lists the shards), a glob or
a list of shard files.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .. import storage
from .base import Dataset
from .prepare import FORMAT, MANIFEST, PrepareError, read_manifest

PathLike = Union[str, os.PathLike]


def _is_prepared_folder(path) -> bool:
    if isinstance(path, (list, tuple)):
        return False
    p = os.fspath(path)
    if storage.is_s3(p):
        fs, base = storage.filesystem_and_path(p)
        from pyarrow import fs as pafs

        try:
            return fs.get_file_info(f"{base.rstrip('/')}/{MANIFEST}").type == pafs.FileType.File
        except OSError:
            return False
    return os.path.isfile(os.path.join(p, MANIFEST))


def moment_files(path: Union[PathLike, Sequence[PathLike]]) -> tuple[list[str], Optional[dict]]:
    """(shard files in order, the manifest or None) of a prepared folder, glob, file or list."""
    from .shards import resolve_shard_paths

    if _is_prepared_folder(path):
        manifest = read_manifest(path)
        base = os.fspath(path).rstrip("/")
        return [f"{base}/{name}" for name in manifest["shards"]], manifest
    return resolve_shard_paths(path), None


def read_moment_shard(path: str, *, columns: Sequence[str] = ("moments", "moments_flip", "label"), filesystem=None) -> tuple[dict, dict]:
    """({column: numpy array}, metadata) of one prepared shard; moment columns come back as
    float32 [rows, 2C, h, w]. ValueError names the file when it is not a prepared shard."""
    import json

    import pyarrow.parquet as pq

    fs, p = (storage.filesystem_and_path(path) if storage.is_s3(path) and filesystem is None else (filesystem, path))
    try:
        table = pq.read_table(p, columns=list(columns), filesystem=fs)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: shard not found") from None
    except Exception as exc:  # noqa: BLE001 - truncated, not Parquet, missing columns
        raise ValueError(f"{path}: not a readable prepared-latent shard ({type(exc).__name__}: {exc})") from None
    meta = {k.decode(): json.loads(v.decode()) for k, v in (table.schema.metadata or {}).items()}
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r} (write it with `drifting-platform data prepare`)")
    shape = tuple(meta["moments_shape"])
    out = {}
    for c in columns:
        col = table.column(c)
        if c.startswith("moments"):
            values = col.combine_chunks().flatten().to_numpy(zero_copy_only=False)
            out[c] = np.ascontiguousarray(values, dtype=np.float32).reshape(len(col), *shape)
        else:
            out[c] = col.to_numpy(zero_copy_only=False)
    return out, meta


def draw_latents(moments: torch.Tensor, moments_flip: torch.Tensor, scale: float, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One training latent per row: the image's or the flip's moments (probability 1/2
    each), a posterior draw, times `scale`. moments, moments_flip [n, 2C, h, w] -> [n, C, h, w]."""
    from .vae import sample_latents

    flip = torch.rand(len(moments), generator=generator) < 0.5
    m = torch.where(flip.view(-1, 1, 1, 1).to(moments.device), moments_flip, moments)
    return sample_latents(m, scale, generator=generator)


@dataclass
class MomentDataset(Dataset):
    """A prepared latent set held in memory. `x` holds the scaled posterior means (what
    evaluation and the spread diagnostics use); training draws come from `draw`."""

    moments: torch.Tensor = field(default=None, repr=False)  # [N, 2C, h, w]
    moments_flip: torch.Tensor = field(default=None, repr=False)
    scale: float = 0.18215
    manifest: Optional[dict] = field(default=None, repr=False)
    vae: dict = field(default_factory=dict)  # the identity of the VAE that made it (decoding needs it)
    moments_shape: tuple = ()
    stream_files: Optional[list] = field(default=None, repr=False)  # set when the set is streamed

    def draw(self, idx: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Fresh training latents [len(idx), C, h, w] of rows `idx` (flip and posterior per draw)."""
        idx = idx.to(self.moments.device)
        return draw_latents(self.moments[idx], self.moments_flip[idx], self.scale, generator)


def _concat(files: Sequence[str], limit: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    ms, fs, ys, first = [], [], [], None
    for f in files:
        if limit is not None and sum(len(y) for y in ys) >= limit:
            break  # the first `limit` rows are read: the other shards are not opened
        cols, meta = read_moment_shard(f)
        if first is None:
            first = (f, meta)
        else:
            for key in ("moments_shape", "num_classes", "scaling_factor"):
                if meta.get(key) != first[1].get(key):
                    raise ValueError(f"{f}: {key} {meta.get(key)!r} differs from {first[1].get(key)!r} in {first[0]}")
            if (meta.get("vae") or {}).get("sha256") != (first[1].get("vae") or {}).get("sha256"):
                raise ValueError(f"{f}: made with another VAE than {first[0]} (vae.sha256 differs)")
        ms.append(cols["moments"])
        fs.append(cols["moments_flip"])
        ys.append(cols["label"].astype(np.int64))
    return np.concatenate(ms), np.concatenate(fs), np.concatenate(ys), first[1]


def prepared_bytes(path: Union[PathLike, Sequence[PathLike]]) -> int:
    """Bytes the moments of both flips of a prepared set take in memory (from the manifest,
    else the shards' footers)."""
    import pyarrow.parquet as pq

    files, manifest = moment_files(path)
    if manifest is not None:
        rows, shape = int(manifest["rows"]), manifest["moments_shape"]
    else:
        rows, shape = 0, None
        for f in files:
            fs, p = storage.filesystem_and_path(f) if storage.is_s3(f) else (None, f)
            md = pq.read_metadata(p, filesystem=fs)
            rows += md.num_rows
            if shape is None:
                import json

                shape = json.loads(md.metadata[b"moments_shape"].decode())
    return int(rows * 2 * int(np.prod(shape)) * 4)


def load_prepared(path: Union[PathLike, Sequence[PathLike]], *, limit: Optional[int] = None, stream: bool = False) -> MomentDataset:
    """A prepared latent set in memory (all its shards, in order; the first `limit` rows).
    stream: the set will be streamed (`StreamingClassBanks`); only the first `limit` rows are
    read, and only their means kept (evaluation's reference, the spread diagnostics);
    `stream_files` names all shards."""
    files, manifest = moment_files(path)
    if not files:
        raise PrepareError(f"{path}: no prepared shards")
    m, mf, y, meta = _concat(files, limit)
    if limit is not None:
        m, mf, y = m[:limit], mf[:limit], y[:limit]
    scale = float(meta["scaling_factor"])
    c = m.shape[1] // 2
    x = torch.from_numpy(m[:, :c] * scale)
    ds = MomentDataset(x, torch.from_numpy(y), int(meta["num_classes"]), "latent", str(meta.get("name", "prepared")), tuple(x.shape[1:]),
                       moments=torch.from_numpy(m), moments_flip=torch.from_numpy(mf), scale=scale, manifest=manifest,
                       vae=dict(meta.get("vae") or {}), moments_shape=tuple(meta["moments_shape"]))
    if stream:  # the buffers hand out the training draws: keep only the means (the reference)
        ds.stream_files = list(files)
        ds.moments = ds.moments_flip = None
    return ds


def write_moment_shards(moments: np.ndarray, moments_flip: np.ndarray, labels: np.ndarray, out: PathLike, *, num_classes: int,
                        shard_size: int = 1024, name: str = "synthetic", scaling_factor: float = 0.18215, vae: Optional[dict] = None) -> list[str]:
    """Write given moments as prepared shards plus a manifest (tests and benchmarks: large
    prepared sets without encoding images). Returns the shard paths."""
    from .prepare import build_manifest, moments_table, plan_shards, shard_name, write_manifest, write_shard

    n = len(labels)
    vae = vae or {"source": "synthetic", "sha256": "", "scaling_factor": scaling_factor}
    ranges = plan_shards(n, shard_size)
    paths, metas = [], []
    for i, (lo, hi) in enumerate(ranges):
        y = np.asarray(labels[lo:hi], np.int64)
        counts = {str(int(c)): int(k) for c, k in zip(*np.unique(y, return_counts=True))}
        meta = {"format": FORMAT, "kind": "latent", "shape": [moments.shape[1] // 2, *moments.shape[2:]], "moments_shape": list(moments.shape[1:]),
                "num_classes": int(num_classes), "name": name, "resolution": 0, "scaling_factor": float(scaling_factor), "vae": vae,
                "shard": [i, len(ranges)], "shard_key": f"synthetic-{i}", "counts": counts, "failed": []}

        table = moments_table(moments[lo:hi], moments_flip[lo:hi], y, [f"{j}" for j in range(lo, hi)], meta)
        paths.append(write_shard(table, out, shard_name(i, len(ranges))))
        metas.append(meta)
    write_manifest(build_manifest(metas, classes=[str(c) for c in range(num_classes)], root="synthetic", num_images=n, shard_size=shard_size, seed=0), out)
    return paths
