"""The platform's own digits classifier: the feature extractor behind digits FID / KID.

A small CNN trained by the platform itself on scikit-learn's bundled digits (1797 8x8 images,
no download), deterministically: fixed seeds, a private RNG state, one CPU thread and
`torch.use_deterministic_algorithms` while training, so that every process that trains it
gets the same weights (and therefore the same FID) on a given machine and torch build.

Inputs are `[N, 1, H, W]` in [0, 1] (output space) at any size (8, 16, 28, 32 px ...); the
network resizes them to 32x32 itself. `features(x)` is the penultimate layer (`FEATURE_DIM`
dims), used for FID / KID; `forward(x)` gives the 10 logits.

Weights are cached in `$DRIFTING_CACHE_DIR` (default `~/.cache/drifting_platform`) under a
name carrying a hash of the training recipe, so a changed recipe never loads stale weights:

    model = get_digits_classifier()          # trains once (a few seconds), then loads
    feats = model.features(x01)              # [N, 128]
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

CACHE_ENV = "DRIFTING_CACHE_DIR"
DEFAULT_CACHE_DIR = "~/.cache/drifting_platform"
INPUT_SIZE = 32  # every input is resized to INPUT_SIZE x INPUT_SIZE inside the network
FEATURE_DIM = 128
NUM_CLASSES = 10

# Everything that changes the trained weights. Its hash names the cache file.
RECIPE = {
    "arch": "digits-cnn-v1",  # bump when DigitsClassifier changes
    "widths": (8, 16, 32),
    "feature_dim": FEATURE_DIM,
    "input_size": INPUT_SIZE,
    "split_seed": 0,
    "test_fraction": 0.2,
    "seed": 0,
    "epochs": 8,
    "batch_size": 64,
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "max_shift": 2,  # random shifts of up to max_shift px (at 32 px), replicate padding
}

# keys of the saved checkpoint (a plain dict, loadable with torch.load(weights_only=True))
KEY_STATE = "state_dict"
KEY_RECIPE = "recipe_json"
KEY_TEST_ACCURACY = "test_accuracy"
KEY_TRAIN_SECONDS = "train_seconds"

_LOCK = threading.Lock()
_LOADED: dict[str, dict] = {}  # cache path -> checkpoint, so a process reads the file once


# ----------------------------------------------------------------------------- data


def digits_arrays(split: str = "train", *, seed: int = RECIPE["split_seed"], test_fraction: float = RECIPE["test_fraction"]):
    """scikit-learn's digits as `(x float32 [N, 1, 8, 8] in [0, 1], y int64 [N])`.

    `split` is "train", "test" (a fixed, seeded 80/20 split) or "all".
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]  # 0..16 -> [0, 1]
    y = d.target.astype(np.int64)
    if split == "all":
        return x, y
    perm = np.random.RandomState(seed).permutation(len(y))
    n_test = int(round(test_fraction * len(y)))
    idx = {"test": perm[:n_test], "train": perm[n_test:]}.get(split)
    if idx is None:
        raise ValueError(f"split must be 'train', 'test' or 'all', got {split!r}")
    return x[idx], y[idx]


# ----------------------------------------------------------------------------- model


def resize_to_input(x: torch.Tensor, size: int = INPUT_SIZE) -> torch.Tensor:
    """[N, C, H, W] in [0, 1] -> [N, 1, size, size]: grayscale (channel mean), then bilinear resize
    (antialiased when shrinking)."""
    if x.dim() != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {tuple(x.shape)}")
    x = x.float()
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (size, size):
        shrink = x.shape[-1] > size or x.shape[-2] > size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return x


class DigitsClassifier(nn.Module):
    """Three conv stages (32 -> 16 -> 8 -> 4 px), a `FEATURE_DIM` penultimate layer, 10 logits."""

    def __init__(self, widths=RECIPE["widths"], feature_dim: int = FEATURE_DIM, num_classes: int = NUM_CLASSES):
        super().__init__()
        layers, c_in = [], 1
        for w in widths:
            layers += [nn.Conv2d(c_in, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2)]
            c_in = w
        self.body = nn.Sequential(*layers)
        side = INPUT_SIZE // 2 ** len(widths)
        self.fc = nn.Linear(c_in * side * side, feature_dim)
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] in [0, 1] -> penultimate features [N, FEATURE_DIM] (post-ReLU)."""
        x = resize_to_input(x.to(self.fc.weight.device)) * 2 - 1
        return F.relu(self.fc(self.body(x).flatten(1)))

    def logits_from_features(self, f: torch.Tensor) -> torch.Tensor:
        return self.head(f)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] in [0, 1] -> logits [N, 10]."""
        return self.head(self.features(x))


# ----------------------------------------------------------------------------- training


def recipe_hash(recipe: dict = RECIPE) -> str:
    blob = json.dumps(recipe, sort_keys=True) + f"|torch-{torch.__version__.split('+')[0]}"
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _deterministic_cpu(seed: int):
    """Single thread, deterministic kernels, private RNG state; all restored on exit.

    Thread count and the deterministic flag are process-wide in torch, so other threads see
    them for the few seconds training takes (it happens once per cache folder).
    """
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)  # float reductions must not depend on the thread count
        torch.use_deterministic_algorithms(True)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(det, warn_only=warn_only)
            torch.set_num_threads(threads)


def random_shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Shift each image by an integer offset in [-max_shift, max_shift]^2 (edge padding)."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    p = max_shift
    padded = F.pad(x, (p, p, p, p), mode="replicate")
    dx = torch.randint(0, 2 * p + 1, (n,), generator=g)
    dy = torch.randint(0, 2 * p + 1, (n,), generator=g)
    rows = (dy[:, None] + torch.arange(h)[None])  # [N, H]
    cols = (dx[:, None] + torch.arange(w)[None])  # [N, W]
    idx_n = torch.arange(n)[:, None, None]
    return padded[idx_n, 0, rows[:, :, None], cols[:, None, :]][:, None]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    was_training = model.training
    model.eval()
    correct = sum(int((model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size].to(model.fc.weight.device)).sum()) for i in range(0, len(x), batch_size))
    model.train(was_training)
    return correct / max(len(x), 1)


def train_digits_classifier(recipe: dict = RECIPE) -> tuple[DigitsClassifier, dict]:
    """Train from scratch on the train split (deterministic). Returns (model in eval mode, info)
    with info = {"test_accuracy": held-out accuracy, "train_seconds": wall time}."""
    t0 = time.perf_counter()
    xtr, ytr = digits_arrays("train", seed=recipe["split_seed"], test_fraction=recipe["test_fraction"])
    xte, yte = digits_arrays("test", seed=recipe["split_seed"], test_fraction=recipe["test_fraction"])
    with _deterministic_cpu(recipe["seed"]):
        g = torch.Generator().manual_seed(recipe["seed"])
        model = DigitsClassifier(recipe["widths"], recipe["feature_dim"])
        # the shift augmentation happens at 32 px, so resize once up front
        x32 = resize_to_input(torch.from_numpy(xtr), recipe["input_size"])
        y = torch.from_numpy(ytr)
        steps_per_epoch = -(-len(y) // recipe["batch_size"])
        opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=recipe["weight_decay"])
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=recipe["epochs"] * steps_per_epoch)
        model.train()
        for _ in range(recipe["epochs"]):
            perm = torch.randperm(len(y), generator=g)
            for i in range(0, len(y), recipe["batch_size"]):
                b = perm[i : i + recipe["batch_size"]]
                xb = random_shift(x32[b], recipe["max_shift"], g)
                loss = F.cross_entropy(model(xb), y[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        acc = accuracy(model, torch.from_numpy(xte), torch.from_numpy(yte))
    return model, {KEY_TEST_ACCURACY: acc, KEY_TRAIN_SECONDS: time.perf_counter() - t0}


# ----------------------------------------------------------------------------- cache


def cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The platform cache folder: the argument, else `$DRIFTING_CACHE_DIR`, else the default."""
    return Path(os.path.expanduser(str(cache_dir or os.environ.get(CACHE_ENV) or DEFAULT_CACHE_DIR)))


def classifier_cache_path(cache_dir_: str | os.PathLike | None = None, recipe: dict = RECIPE) -> Path:
    return cache_dir(cache_dir_) / f"digits_classifier-{recipe_hash(recipe)}.pt"


def atomic_torch_save(obj, path: Path) -> None:
    """torch.save to a temp file in the same folder, then os.replace: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _checkpoint(path: Path, recipe: dict) -> dict:
    """The checkpoint at `path`: from memory, else from disk, else trained now and written."""
    key = str(path)
    with _LOCK:
        if key not in _LOADED:
            if path.is_file():
                ckpt = load_checkpoint(path)
            else:
                model, info = train_digits_classifier(recipe)
                ckpt = {KEY_STATE: model.state_dict(), KEY_RECIPE: json.dumps(recipe, sort_keys=True), **info}
                atomic_torch_save(ckpt, path)
            _LOADED[key] = ckpt
        return _LOADED[key]


def get_digits_classifier(cache_dir: str | os.PathLike | None = None, *, recipe: dict = RECIPE) -> DigitsClassifier:
    """The trained digits classifier (eval mode, no parameter gradients), on CPU.

    Trains it on first use (a few seconds) and caches the weights; later calls load them.
    Each call returns a fresh module, so callers may move it to a device freely.
    """
    ckpt = _checkpoint(classifier_cache_path(cache_dir, recipe), recipe)
    model = DigitsClassifier(recipe["widths"], recipe["feature_dim"])
    model.load_state_dict(ckpt[KEY_STATE])
    model.test_accuracy = float(ckpt[KEY_TEST_ACCURACY])  # held-out accuracy, for reports
    return model.eval().requires_grad_(False)


def clear_memory_cache() -> None:
    """Forget checkpoints loaded in this process (the files stay); mainly for tests."""
    with _LOCK:
        _LOADED.clear()
