"""Parquet shards: any `Dataset` (images, latents or 2-D points) as flat rows plus labels.

Layout of one shard file (pyarrow):

- column `x`: fixed_size_list<float32>[D], each sample flattened in C order (model space).
  Readers also accept list / large_list of any numeric type, and binary rows of D float32
  little-endian bytes, so shards written by other tools load too.
- column `label`: int64 class label (zeros for unconditional data).
- schema metadata (JSON values): `shape` (per-sample shape, D = prod(shape)), `kind`
  ("image" | "latent" | "toy"), `num_classes`, `name`, `format`, and for images `value_range`,
  the range of the stored values ([-1, 1] when written here; another range, e.g. [0, 1], is
  mapped linearly to model space on reading).

Reading takes an optional pyarrow filesystem (e.g. `pyarrow.fs.S3FileSystem`), handed to
pyarrow.parquet, so remote storage plugs in without changing this module. `s3://bucket/...`
paths (directory, glob or file) need none: they are read, and `write_shards` writes them,
through `drifting_platform.storage.s3_filesystem()` (endpoint, region and credentials from
the standard AWS environment). Errors name the `s3://` path.
"""

from __future__ import annotations

import fnmatch
import glob
import json
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .. import storage
from .base import KINDS, Dataset, as_shape, check_positive_int

FORMAT = "drifting_platform.shards/1"
DEFAULT_SHARD_SIZE = 4096
_SUFFIX = ".parquet"
_MAGIC = ("*", "?", "[")
_SHARD_GLOB = "{prefix}-[0-9][0-9][0-9][0-9][0-9]-of-[0-9][0-9][0-9][0-9][0-9]" + _SUFFIX

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------------- writing


def _metadata(ds: Dataset) -> dict[bytes, bytes]:
    meta = {"format": FORMAT, "shape": list(ds.shape), "kind": ds.kind, "num_classes": int(ds.num_classes), "name": ds.name}
    if ds.kind == "image":
        meta["value_range"] = [-1.0, 1.0]  # stored in model space
    return {k.encode(): json.dumps(v).encode() for k, v in meta.items()}


def write_shards(dataset: Dataset, out_dir: PathLike, *, shard_size: int = DEFAULT_SHARD_SIZE, prefix: str = "shard") -> list[str]:
    """Write `dataset` to `out_dir/{prefix}-{i:05d}-of-{k:05d}.parquet`, `shard_size` rows each.

    Earlier shards with the same prefix in `out_dir` are replaced (a re-export never mixes
    with a stale one). Each file is written to a temporary name and renamed, so a reader
    never sees half a shard. `out_dir` may be `s3://bucket/prefix` (an object appears
    whole when its upload completes, so no temporary name is needed there). Returns the
    paths written, in order (`s3://...` for S3).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    shard_size = check_positive_int(shard_size, "shard_size")
    if not prefix or any(c in prefix for c in "/\\*?["):
        raise ValueError(f"prefix must be a plain file-name prefix, got {prefix!r}")
    n = len(dataset)
    if n == 0:
        raise ValueError(f"data set {dataset.name!r} is empty: nothing to write")
    s3 = storage.is_s3(out_dir)
    if s3:
        from pyarrow import fs as pafs

        s3fs, base = storage.filesystem_and_path(out_dir)
        stale_glob = _SHARD_GLOB.format(prefix=prefix)
        try:
            infos = s3fs.get_file_info(pafs.FileSelector(base, allow_not_found=True))
            for info in infos:
                if info.type == pafs.FileType.File and fnmatch.fnmatch(info.base_name, stale_glob):
                    s3fs.delete_file(info.path)
        except OSError as exc:
            raise OSError(f"{storage.s3_uri(base)}: cannot list or clean the S3 prefix: {exc}") from None
    else:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob(_SHARD_GLOB.format(prefix=prefix)):
            stale.unlink()

    d = int(np.prod(dataset.shape))
    flat = dataset.x.detach().to("cpu", torch.float32).reshape(n, d).numpy()  # [N, D]
    labels = dataset.y.detach().to("cpu", torch.int64).numpy()
    meta = _metadata(dataset)
    k = -(-n // shard_size)
    paths = []
    for i in range(k):
        lo, hi = i * shard_size, min(n, (i + 1) * shard_size)
        xs = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(flat[lo:hi]).reshape(-1), type=pa.float32()), d)
        table = pa.table({"x": xs, "label": pa.array(labels[lo:hi], type=pa.int64())}).replace_schema_metadata(meta)
        fname = f"{prefix}-{i:05d}-of-{k:05d}{_SUFFIX}"
        if s3:
            key = f"{base}/{fname}"
            try:
                pq.write_table(table, key, filesystem=s3fs, compression="zstd")
            except OSError as exc:
                raise OSError(f"{storage.s3_uri(key)}: cannot write the shard to S3: {exc}") from None
            paths.append(storage.s3_uri(key))
            continue
        path = out / fname
        tmp = path.with_name(f".{path.name}.tmp")
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
        paths.append(str(path))
    return paths


# --------------------------------------------------------------------------- finding files


def _has_magic(s: str) -> bool:
    return any(c in s for c in _MAGIC)


def _on_fs(p: str, filesystem, cache: dict):
    """`(filesystem, path on it, prefix)`: an `s3://` path is `bucket/key` on an S3 filesystem
    (`filesystem` when given, else one `storage.s3_filesystem()` kept in `cache`); `prefix`
    (`"s3://"` or `""`) turns a path on the filesystem back into the form users see."""
    if storage.is_s3(p):
        if filesystem is None:
            if "s3" not in cache:
                cache["s3"] = storage.s3_filesystem()
            filesystem = cache["s3"]
        return filesystem, storage.s3_path(p), storage.SCHEME
    return filesystem, p, ""


def _resolve_one(p: str, filesystem, shown: str = "") -> list[str]:
    """The files `p` names; `shown` (e.g. "s3://") is put before paths in errors and results."""
    if filesystem is None:
        if _has_magic(p):
            files = sorted(f for f in glob.glob(p, recursive=True) if os.path.isfile(f))
            if not files:
                raise FileNotFoundError(f"no Parquet shards match {p!r}")
            return files
        if os.path.isdir(p):
            files = sorted(os.path.join(p, f) for f in os.listdir(p) if f.endswith(_SUFFIX) and os.path.isfile(os.path.join(p, f)))
            if not files:
                raise FileNotFoundError(f"no {_SUFFIX} shards in directory {p!r}")
            return files
        if os.path.isfile(p):
            return [p]
        raise FileNotFoundError(f"shard path {p!r}: no such file or directory")

    from pyarrow import fs as pafs

    where = shown + p
    try:
        if _has_magic(p):
            parent, _, pattern = p.rpartition("/")
            if _has_magic(parent):
                raise ValueError(f"{where!r}: with a pyarrow filesystem only the last path component may hold a wildcard")
            infos = filesystem.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
            files = sorted(i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.base_name, pattern))
            if not files:
                raise FileNotFoundError(f"no Parquet shards match {where!r}")
            return [shown + f for f in files]
        info = filesystem.get_file_info(p)
        if info.type == pafs.FileType.Directory:
            infos = filesystem.get_file_info(pafs.FileSelector(p))
            files = sorted(i.path for i in infos if i.type == pafs.FileType.File and i.base_name.endswith(_SUFFIX))
            if not files:
                raise FileNotFoundError(f"no {_SUFFIX} shards in directory {where!r}")
            return [shown + f for f in files]
        if info.type == pafs.FileType.File:
            return [where]
    except (FileNotFoundError, ValueError):
        raise
    except OSError as exc:  # e.g. no such bucket, access denied, endpoint unreachable
        raise OSError(f"shard path {where!r}: cannot list it: {exc}") from None
    raise FileNotFoundError(f"shard path {where!r}: no such file or directory")


def resolve_shard_paths(path: Union[PathLike, Sequence[PathLike]], *, filesystem=None, _cache: Optional[dict] = None) -> list[str]:
    """The shard files `path` names: a directory (its *.parquet), a glob, a file, or a list of those.

    `s3://` items resolve to `s3://bucket/key` files (listed through `filesystem`, else
    `storage.s3_filesystem()`)."""
    items = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    if not items:
        raise FileNotFoundError("no shard paths given")
    cache = {} if _cache is None else _cache
    files: list[str] = []
    for item in items:
        fs, p, shown = _on_fs(os.fspath(item), filesystem, cache)
        for f in _resolve_one(p, fs, shown):
            if f not in files:
                files.append(f)
    return files


# --------------------------------------------------------------------------- reading


def _column_to_numpy(col, d: int, where: str) -> np.ndarray:
    """Column `x` (any supported Arrow type, possibly chunked) -> float32 [rows, d]."""
    import pyarrow as pa
    import pyarrow.compute as pc

    parts = []
    for arr in col.chunks:
        if arr.null_count:
            raise ValueError(f"{where}: column 'x' has {arr.null_count} null rows")
        t = arr.type
        if pa.types.is_fixed_size_list(t) or pa.types.is_list(t) or pa.types.is_large_list(t):
            if len(arr):
                lengths = pc.list_value_length(arr)
                lo, hi = pc.min(lengths).as_py(), pc.max(lengths).as_py()
                if lo != d or hi != d:
                    raise ValueError(f"{where}: rows of column 'x' hold {lo}..{hi} values, the shape metadata says {d}")
            values = arr.flatten()
            if values.null_count:
                raise ValueError(f"{where}: column 'x' holds null values")
            parts.append(values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(len(arr), d))
        elif pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t):
            width = 4 * d  # float32 little-endian
            if pa.types.is_fixed_size_binary(t):
                if t.byte_width != width:
                    raise ValueError(f"{where}: binary rows of {t.byte_width} bytes, expected {width} (float32 x {d})")
                data = np.frombuffer(arr.buffers()[1], dtype=np.uint8)[arr.offset * width : (arr.offset + len(arr)) * width]
            else:
                lengths = pc.binary_length(arr)
                if len(arr) and (pc.min(lengths).as_py() != width or pc.max(lengths).as_py() != width):
                    raise ValueError(f"{where}: binary rows must be {width} bytes (float32 x {d})")
                off_t = np.int64 if pa.types.is_large_binary(t) else np.int32
                offsets = np.frombuffer(arr.buffers()[1], dtype=off_t)[arr.offset : arr.offset + len(arr) + 1]
                data = np.frombuffer(arr.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]] if len(arr) else np.zeros(0, np.uint8)
            parts.append(data.view("<f4").astype(np.float32).reshape(len(arr), d))
        else:
            raise ValueError(f"{where}: column 'x' has unsupported type {t} (expected a list of numbers or binary float32)")
    return np.concatenate(parts) if parts else np.zeros((0, d), np.float32)


def _read_meta(table, where: str) -> dict:
    raw = table.schema.metadata or {}
    meta = {}
    for k, v in raw.items():
        key = k.decode(errors="replace")
        try:
            meta[key] = json.loads(v.decode())
        except (UnicodeDecodeError, json.JSONDecodeError):
            meta[key] = v
    missing = [k for k in ("shape", "kind") if k not in meta]
    if missing:
        raise ValueError(f"{where}: not a drifting-platform shard (schema metadata lacks {', '.join(missing)}; write shards with write_shards)")
    if meta["kind"] not in KINDS:
        raise ValueError(f"{where}: metadata kind {meta['kind']!r} is not one of {KINDS}")
    try:
        meta["shape"] = as_shape(meta["shape"])
    except (TypeError, ValueError):
        raise ValueError(f"{where}: metadata shape {meta['shape']!r} is not a list of integers") from None
    return meta


def _read_one(f: str, filesystem, cache: Optional[dict] = None):
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, p, shown = _on_fs(f, filesystem, {} if cache is None else cache)
    try:
        table = pq.read_table(p, filesystem=fs)
    except FileNotFoundError:
        raise FileNotFoundError(f"{f}: shard not found") from None
    except OSError as exc:
        if shown and not isinstance(exc, pa.ArrowInvalid):  # S3: network, bucket, access
            raise OSError(f"{f}: cannot read the shard from S3: {exc}") from None
        raise ValueError(f"{f}: not a readable Parquet shard (corrupt or truncated?): {exc}") from None
    except (pa.ArrowException, ValueError) as exc:
        raise ValueError(f"{f}: not a readable Parquet shard (corrupt or truncated?): {exc}") from None
    meta = _read_meta(table, f)
    for c in ("x", "label"):
        if c not in table.column_names:
            raise ValueError(f"{f}: shard lacks column {c!r} (has {table.column_names})")
    d = int(np.prod(meta["shape"]))
    x = _column_to_numpy(table.column("x"), d, f).reshape(-1, *meta["shape"])
    label = table.column("label")
    if label.null_count:
        raise ValueError(f"{f}: column 'label' has null values")
    y = label.to_numpy().astype(np.int64)
    if meta["kind"] == "image" and "value_range" in meta:
        lo, hi = (float(v) for v in meta["value_range"])
        if (lo, hi) != (-1.0, 1.0):
            if hi <= lo:
                raise ValueError(f"{f}: metadata value_range {meta['value_range']} is empty")
            x = (x - lo) * (2.0 / (hi - lo)) - 1.0  # stored range -> model space [-1, 1]
    return x.astype(np.float32, copy=False), y, meta


def read_shards(path: Union[PathLike, Sequence[PathLike]], *, filesystem=None) -> Dataset:
    """All rows of the shards `path` names (directory, glob, file or list), concatenated in file order.

    filesystem: an optional pyarrow filesystem the paths live on (None: local files, and
    `s3://bucket/...` paths through `storage.s3_filesystem()`).
    A missing path raises FileNotFoundError, a corrupt or inconsistent shard ValueError, an
    S3 object store that cannot be reached or read OSError; all name the file.
    """
    cache: dict = {}
    files = resolve_shard_paths(path, filesystem=filesystem, _cache=cache)
    xs, ys, first = [], [], None
    names = set()
    for f in files:
        x, y, meta = _read_one(f, filesystem, cache)
        if first is None:
            first = (f, meta)
        else:
            f0, m0 = first
            for key in ("shape", "kind", "num_classes"):
                if meta.get(key) != m0.get(key):
                    raise ValueError(f"{f}: {key} {meta.get(key)!r} differs from {m0.get(key)!r} in {f0}")
        names.add(str(meta.get("name", "shards")))
        xs.append(x)
        ys.append(y)
    _, m0 = first
    x = np.concatenate(xs)
    y = np.concatenate(ys)
    num_classes = m0.get("num_classes")
    if num_classes is None:
        num_classes = int(y.max()) + 1 if len(y) else 1
    if len(y) and (y.min() < 0 or y.max() >= int(num_classes)):
        raise ValueError(f"{', '.join(files[:3])}{'...' if len(files) > 3 else ''}: labels span [{y.min()}, {y.max()}] but num_classes is {num_classes}")
    name = names.pop() if len(names) == 1 else "shards"
    return Dataset(torch.from_numpy(x), torch.from_numpy(y), int(num_classes), m0["kind"], name, m0["shape"])
