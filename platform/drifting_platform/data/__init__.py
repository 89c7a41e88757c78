"""Data: 2-D toy sets, scikit-learn digits, torchvision sets from a local root, Parquet shards,
and the class-grouped sampler. Everything is in memory and in model space (docs/internals.md)."""

from .base import DataNotFoundError, Dataset
from .images import expected_files, load_digits, load_torchvision
from .latents import make_synthetic_latents
from .registry import DATASETS, IMAGE_DATASETS, TOY_DATASETS, build_dataset, export
from .sampler import ClassGroupedSampler, GroupBatch
from .shards import read_shards, resolve_shard_paths, write_shards
from .toy import sample_toy, toy_mode_centers

__all__ = [
    "DATASETS",
    "IMAGE_DATASETS",
    "TOY_DATASETS",
    "ClassGroupedSampler",
    "DataNotFoundError",
    "Dataset",
    "GroupBatch",
    "build_dataset",
    "expected_files",
    "export",
    "load_digits",
    "load_torchvision",
    "make_synthetic_latents",
    "read_shards",
    "resolve_shard_paths",
    "sample_toy",
    "toy_mode_centers",
    "write_shards",
]
