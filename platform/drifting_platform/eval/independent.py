"""Checks that share nothing with the FID extractor: label accuracy and per-class diversity.

`label_accuracy` scores class-conditional samples with an SVC (RBF kernel, gamma="scale")
trained on scikit-learn's digits at their native 8x8: a different model family, input size and
code path from the CNN behind digits FID, so a generator cannot look good on both by
exploiting one network. Samples of any size are area-averaged down to 8x8 first.

`per_class_diversity` / `data_diversity` give the mean pairwise L2 distance within each class
(at 8x8 by default) for generated and real digits; `diversity_ratio` compares them (near 0 =
collapse, near 1 = as varied as the data).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
import torch.nn.functional as F

from .classifier import digits_arrays

KEY_LABEL_ACCURACY = "label_accuracy"
KEY_DIVERSITY_RATIO = "diversity_ratio"
NATIVE_SIZE = 8  # sklearn digits are 8x8
MAX_PER_CLASS = 1000  # pairwise distances use at most this many samples per class


def to_grayscale_size(x01, size: int = NATIVE_SIZE) -> torch.Tensor:
    """float [N, C, H, W] in [0, 1] -> [N, 1, size, size]: channel mean, then area averaging
    (exact block means when H and W are multiples of size; adaptive pooling otherwise)."""
    x = torch.as_tensor(np.asarray(x01) if not torch.is_tensor(x01) else x01).detach().cpu().float()
    if x.dim() != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] != 1:
        x = x.mean(dim=1, keepdim=True)
    if x.shape[-2:] != (size, size):
        if x.shape[-1] < size or x.shape[-2] < size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        else:
            x = F.adaptive_avg_pool2d(x, size)
    return x


def _flat(x01, size: int = NATIVE_SIZE) -> np.ndarray:
    return to_grayscale_size(x01, size).flatten(1).numpy().astype(np.float64)


@functools.lru_cache(maxsize=2)
def get_independent_classifier(split: str = "train"):
    """sklearn SVC(gamma="scale") fitted on the digits `split` ("train" or "all") at 8x8 in
    [0, 1]. Deterministic and fast (< 1 s), so it is refitted per process, never cached on disk."""
    from sklearn.svm import SVC

    x, y = digits_arrays(split)
    return SVC(gamma="scale", C=10.0).fit(x.reshape(len(x), -1).astype(np.float64), y)


def predict_labels(samples01) -> np.ndarray:
    """[N] int64 predicted digit for each image (any size, 1 or 3 channels, [0, 1])."""
    return get_independent_classifier().predict(_flat(samples01)).astype(np.int64)


def label_accuracy(samples01, labels) -> float:
    """Fraction of samples the independent classifier assigns to their conditioning label."""
    labels = np.asarray(torch.as_tensor(labels).cpu()).astype(np.int64).reshape(-1)
    if len(labels) != len(samples01):
        raise ValueError(f"{len(samples01)} samples but {len(labels)} labels")
    if len(labels) == 0:
        return float("nan")
    return float((predict_labels(samples01) == labels).mean())


# ----------------------------------------------------------------------------- diversity


def mean_pairwise_distance(x: np.ndarray) -> float:
    """Mean L2 distance over pairs i != j of the rows of x [N, D] (nan when N < 2)."""
    n = len(x)
    if n < 2:
        return float("nan")
    if n > MAX_PER_CLASS:  # evenly spaced, deterministic subsample
        x = x[np.linspace(0, n - 1, MAX_PER_CLASS).round().astype(int)]
        n = len(x)
    t = torch.from_numpy(x)
    return float(torch.cdist(t, t).sum() / (n * (n - 1)))


def per_class_diversity(samples01, labels, *, size: int = NATIVE_SIZE) -> dict[int, float]:
    """{class: mean pairwise L2 distance between that class's samples, resized to size x size}.

    Classes with fewer than 2 samples are left out.
    """
    x = _flat(samples01, size)
    labels = np.asarray(torch.as_tensor(labels).cpu()).astype(np.int64).reshape(-1)
    if len(labels) != len(x):
        raise ValueError(f"{len(x)} samples but {len(labels)} labels")
    return {int(c): mean_pairwise_distance(x[labels == c]) for c in np.unique(labels) if (labels == c).sum() >= 2}


@functools.lru_cache(maxsize=4)
def _data_diversity(split: str, size: int) -> tuple:
    x, y = digits_arrays(split)
    return tuple(sorted(per_class_diversity(x, y, size=size).items()))


def data_diversity(*, split: str = "all", size: int = NATIVE_SIZE) -> dict[int, float]:
    """`per_class_diversity` of the real sklearn digits (same distance, same size)."""
    return dict(_data_diversity(split, size))


def diversity_ratio(samples01, labels, *, size: int = NATIVE_SIZE) -> float:
    """Mean over the classes present of generated / real within-class diversity."""
    gen, real = per_class_diversity(samples01, labels, size=size), data_diversity(size=size)
    ratios = [gen[c] / real[c] for c in gen if c in real and real[c] > 0]
    return float(np.mean(ratios)) if ratios else float("nan")
