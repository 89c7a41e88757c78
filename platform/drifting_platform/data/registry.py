"""`build_dataset`: one entry point from a data set name (and options) to a `Dataset`; and
`export`, the same data set written as Parquet shards."""

from __future__ import annotations

from typing import Optional

from .base import Dataset, check_positive_int, reject_options, resize_images, take_first
from .images import TORCHVISION_SETS, load_digits, load_torchvision
from .latents import make_synthetic_latents
from .shards import DEFAULT_SHARD_SIZE, PathLike, read_shards, write_shards
from .toy import TOY_SETS, load_toy

TOY_DATASETS = tuple(TOY_SETS)
IMAGE_DATASETS = ("digits", *TORCHVISION_SETS)
DATASETS = (*TOY_DATASETS, *IMAGE_DATASETS, "shards", "synthetic_latents", "prepared")


def build_dataset(
    name: str,
    *,
    n: Optional[int] = None,
    size: Optional[int] = None,
    root=None,
    path=None,
    limit: Optional[int] = None,
    seed: int = 0,
) -> Dataset:
    """The data set `name` (one of `DATASETS`) in model space.

    n: points to draw (toy sets, default 10000; synthetic_latents, default 1024);
    size: side length to resize images to (digits, torchvision sets, image shards);
    root: local torchvision root (mnist, fashion_mnist, cifar10); path: shards directory, glob,
    file or list (prepared: a `data prepare` folder); limit: keep the first `limit` samples;
    seed: toy and synthetic draws.
    An option the named set does not use raises ValueError (a likely config mistake).
    """
    if name in TOY_SETS:
        reject_options(name, size=size, root=root, path=path)
        ds = load_toy(name, n, seed=seed)
    elif name == "digits":
        reject_options(name, n=n, root=root, path=path)
        return load_digits(size, limit=limit)
    elif name in TORCHVISION_SETS:
        reject_options(name, n=n, path=path)
        return load_torchvision(name, root, size=size, limit=limit)
    elif name == "shards":
        reject_options(name, n=n, root=root)
        if path is None:
            raise ValueError("data set 'shards' needs path= (data.path): a directory, glob or file of Parquet shards")
        ds = read_shards(path)
        if size is not None:
            if ds.kind != "image":
                raise ValueError(f"size applies to image shards only; these hold {ds.kind} data of shape {ds.shape}")
            x = resize_images((ds.x + 1.0) * 0.5, size).clamp_(0.0, 1.0) * 2.0 - 1.0
            ds = Dataset(x, ds.y, ds.num_classes, ds.kind, ds.name, tuple(x.shape[1:]))
    elif name == "prepared":  # `data prepare`'s SD-VAE moments, in memory (streaming: train/loop.build_data)
        reject_options(name, n=n, root=root, size=size)
        if path is None:
            raise ValueError("data set 'prepared' needs path= (data.path): a folder written by `drifting-platform data prepare`")
        from .moments import load_prepared

        return load_prepared(path, limit=limit)
    elif name == "synthetic_latents":
        reject_options(name, size=size, root=root, path=path)
        ds = make_synthetic_latents(1024 if n is None else check_positive_int(n, "n"), seed=seed)
    else:
        raise ValueError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    return take_first(ds, limit)


def export(name: str, out_dir: PathLike, *, shard_size: int = DEFAULT_SHARD_SIZE, prefix: str = "shard", **build_kwargs) -> list[str]:
    """Build data set `name` (`build_dataset(name, **build_kwargs)`) and write it as shards."""
    return write_shards(build_dataset(name, **build_kwargs), out_dir, shard_size=shard_size, prefix=prefix)
