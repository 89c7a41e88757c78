"""The headline image features of the small data sets: semantics and within-class variation.

The digits classifier's penultimate features (`classifier.py`) are trained to be invariant
within a class, so a Frechet distance on them moves little when a generator collapses each
class onto a few nearby training digits, the failure that excess attraction causes
(measured on `make demo`'s rows: 1.5 V+ - V- has 0.56 of the data's per-class spread
against 0.76 for V+ - V-, recall 0.05 against 0.41, yet a classifier FID of 12.2 against
10.7). The headline extractor adds a block that measures exactly that spread, each block
weighted to the same total variance on the real digits:

    f(x) = [ c(x) / sqrt(tr Cov_real(c)),  r(x) / sqrt(tr Cov_real(r)) ] * sqrt(BLOCK_VARIANCE)
    r(x) = p(x) - m_{k(x)}

with c the classifier's 128 penultimate features, p the image as 8x8 grayscale pixels
(area-averaged from any size; sklearn's digits are natively 8x8), k(x) the classifier's
predicted class and m_k the real digits' mean image of class k: r is where a digit sits
within its class (its style), with the between-class structure left to c. On the real digits
each block has total variance BLOCK_VARIANCE (50), so the Frechet distance weighs fidelity
(the classifier block: class structure, stroke shapes) and diversity (the residual block:
spread within a class) alike. The normalisers and class means come from all 1797 real digits
through the cached, deterministic classifier, so they are fixed for a given classifier.

`tests/test_metric_validation.py` checks the claim: every controlled degradation of real
digits (shrink toward the class mean, drop classes, pixel noise, blur, duplicates) raises
this FID monotonically with its strength; `docs/metric_validation.png` plots the curves
(`scripts/metric_validation.py`).

    feats = DigitsDiversityFeatures()(x01)      # [N, 192]
    DigitsDiversityFeatures().identity          # "digits-div-v1-<hash>"
"""

from __future__ import annotations

import functools
import hashlib

import numpy as np
import torch

from .classifier import FEATURE_DIM, NUM_CLASSES, digits_arrays, get_digits_classifier, recipe_hash
from .independent import NATIVE_SIZE, to_grayscale_size

NAME = "digits-div"
VERSION = 1
BLOCK_VARIANCE = 50.0  # total variance of each block on the real digits
PIXEL_SIZE = NATIVE_SIZE  # the pixel block: 8x8 grayscale
DIM = FEATURE_DIM + PIXEL_SIZE * PIXEL_SIZE


def pixel_block(x01: torch.Tensor) -> torch.Tensor:
    """[N, C, H, W] in [0, 1] -> [N, 64]: grayscale, area-averaged to 8x8, flattened."""
    return to_grayscale_size(x01, PIXEL_SIZE).flatten(1)


def total_variance(f: torch.Tensor) -> float:
    """tr Cov(f) for rows f [N, D] (unbiased)."""
    return float(f.double().var(dim=0, unbiased=True).sum())


def class_means(p: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """[K, D] mean of the rows of p [N, D] per label y [N]."""
    return torch.stack([p[y == k].mean(0) for k in range(num_classes)])


@functools.lru_cache(maxsize=4)
def _constants(cache_dir: str | None) -> tuple[torch.Tensor, float, float]:
    """(class mean images [10, 64], classifier-block scale, residual-block scale) from all real digits."""
    net = get_digits_classifier(cache_dir)
    x, y = digits_arrays("all")
    x = torch.from_numpy(x)
    with torch.no_grad():
        c = net.features(x)
        pred = net.logits_from_features(c).argmax(1)
    p = pixel_block(x)
    means = class_means(p, torch.from_numpy(y), NUM_CLASSES)
    r = p - means[pred]
    return means, (BLOCK_VARIANCE / total_variance(c)) ** 0.5, (BLOCK_VARIANCE / total_variance(r)) ** 0.5


class DigitsDiversityFeatures:
    """Callable: float images [N, C, H, W] in [0, 1] -> features [N, DIM] (float32)."""

    def __init__(self, cache_dir=None):
        self.cache_dir = None if cache_dir is None else str(cache_dir)
        self.net = get_digits_classifier(self.cache_dir)
        self.means, self.scale_classifier, self.scale_residual = _constants(self.cache_dir)

    @property
    def identity(self) -> str:
        """name-version-hash: the hash covers the classifier's recipe (and torch version),
        the block sizes and both normalisers, so two results carry the same identity only
        when their features are computed the same way."""
        blob = f"{NAME}|{VERSION}|{recipe_hash()}|{PIXEL_SIZE}|{BLOCK_VARIANCE}|{self.scale_classifier:.8e}|{self.scale_residual:.8e}"
        return f"{NAME}-v{VERSION}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"

    @torch.no_grad()
    def __call__(self, x01) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(x01) if not torch.is_tensor(x01) else x01).float()
        c = self.net.features(x).cpu()
        k = self.net.logits_from_features(c).argmax(1)
        r = pixel_block(x.cpu()) - self.means[k]
        return torch.cat([c * self.scale_classifier, r * self.scale_residual], dim=1)
