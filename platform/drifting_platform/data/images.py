"""Image data sets: scikit-learn's digits and torchvision sets read from a local root.

Every loader returns a `Dataset` of kind "image" in model space: x = 2 * x01 - 1, [N, C, H, W].
Nothing is ever downloaded: torchvision is called with download=False and a missing file
raises `DataNotFoundError` listing what torchvision looks for.
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from typing import Optional

import numpy as np
import torch

from .base import DataNotFoundError, Dataset, check_positive_int, resize_images

# what torchvision (0.2x) checks under `root` before reading: class -> (folder, files)
_MNIST_RAW = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta")
TORCHVISION_SETS = {
    # name: (torchvision class name, folder under root, files in that folder)
    "mnist": ("MNIST", os.path.join("MNIST", "raw"), _MNIST_RAW),
    "fashion_mnist": ("FashionMNIST", os.path.join("FashionMNIST", "raw"), _MNIST_RAW),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", _CIFAR10_FILES),
}


def _images01_to_dataset(x01: torch.Tensor, y: torch.Tensor, num_classes: int, name: str, size: Optional[int]) -> Dataset:
    """[N, C, H, W] in [0, 1] -> model-space Dataset (optionally resized to size x size)."""
    if size is not None:
        x01 = resize_images(x01, size).clamp_(0.0, 1.0)
    x = x01 * 2.0 - 1.0
    return Dataset(x, y, num_classes, "image", name, tuple(x.shape[1:]))


def digits_images_and_labels() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as (images float64 [1797, 8, 8] in 0..16, labels [1797]).

    Read straight from the CSV file that ships inside scikit-learn (what
    `sklearn.datasets.load_digits` parses), without importing scikit-learn: its import takes
    seconds, and every digits run would pay them before its first step. Falls back to
    `load_digits` when the file is not where scikit-learn keeps it.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        path = os.path.join(root, "datasets", "data", "digits.csv.gz")
        if os.path.isfile(path):
            with gzip.open(path, mode="rt", encoding="utf-8") as fh:
                data = np.loadtxt(fh, delimiter=",")
            return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits as _sk_load_digits

    d = _sk_load_digits()
    return d.images, d.target


def load_digits(size: Optional[int] = None, *, limit: Optional[int] = None) -> Dataset:
    """scikit-learn's 1797 8x8 handwritten digits (10 classes), values 0..16 -> [0, 1].

    size: side length to resize to (bilinear, e.g. 16 or 32); None keeps 8x8.
    """
    images, target = digits_images_and_labels()
    x01 = torch.from_numpy(np.asarray(images, dtype=np.float32) / 16.0).unsqueeze(1)  # [1797, 1, 8, 8]
    y = torch.from_numpy(np.asarray(target, dtype=np.int64))
    if limit is not None:
        limit = check_positive_int(limit, "limit")
        x01, y = x01[:limit], y[:limit]
    return _images01_to_dataset(x01, y, 10, "digits", size)


def expected_files(name: str, root) -> list[str]:
    """The paths torchvision looks for when reading torchvision set `name` under `root`."""
    _, folder, files = TORCHVISION_SETS[name]
    return [os.path.join(str(root), folder, f) for f in files]


def _not_found(name: str, root, detail: str = "") -> DataNotFoundError:
    files = expected_files(name, root)
    missing = [f for f in files if not os.path.isfile(f)]
    lines = "\n  ".join(files)
    msg = (
        f"{name}: data not found under root {str(root)!r} (nothing is downloaded; put the files there "
        f"yourself, e.g. with torchvision's download=True on a machine with network access).\n"
        f"torchvision expects:\n  {lines}"
    )
    if missing and len(missing) < len(files):
        msg += "\nmissing: " + ", ".join(missing)
    elif not missing:
        msg += "\nall of them exist, but torchvision rejected them (corrupt, or a checksum mismatch)"
    if detail:
        msg += f"\n(torchvision said: {detail})"
    return DataNotFoundError(msg)


def load_torchvision(
    name: str, root, *, size: Optional[int] = None, limit: Optional[int] = None, train: bool = True
) -> Dataset:
    """MNIST / FashionMNIST / CIFAR-10 from a local torchvision root (download=False).

    name: "mnist" | "fashion_mnist" | "cifar10"; root: the directory that holds `MNIST/raw/...`,
    `FashionMNIST/raw/...` or `cifar-10-batches-py/...`; size: resize to size x size (bilinear);
    limit: keep the first `limit` samples; train: the training split (else the test split).
    """
    if name not in TORCHVISION_SETS:
        raise ValueError(f"unknown torchvision set {name!r}; valid: {', '.join(TORCHVISION_SETS)}")
    if root is None:
        raise ValueError(f"{name}: needs a local root (data.root) holding {', '.join(expected_files(name, '<root>')[:2])}, ...")
    if not os.path.isdir(str(root)):
        raise _not_found(name, root, f"root {str(root)!r} is not a directory")
    import torchvision.datasets as tvd  # seconds to import; only the torchvision sets need it

    cls_name = TORCHVISION_SETS[name][0]
    try:
        ds = getattr(tvd, cls_name)(root=str(root), train=train, download=False)
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted. You can use download=True ..."
        raise _not_found(name, root, str(exc)) from None
    except FileNotFoundError as exc:
        raise _not_found(name, root, str(exc)) from None

    data = ds.data  # MNIST-like: uint8 tensor [N, H, W]; CIFAR: uint8 ndarray [N, H, W, 3]
    targets = ds.targets
    if limit is not None:
        limit = check_positive_int(limit, "limit")
        data, targets = data[:limit], targets[:limit]
    data = torch.as_tensor(np.asarray(data))
    x01 = (data.unsqueeze(1) if data.ndim == 3 else data.permute(0, 3, 1, 2)).to(torch.float32) / 255.0
    y = torch.as_tensor(np.asarray(targets, dtype=np.int64))
    return _images01_to_dataset(x01.contiguous(), y, len(ds.classes), name, size)
