"""The metric validation suite: does the headline FID see each failure a generator can have?

Real digits are split in two halves (a seeded permutation): the reference half plays the
data set, the other half the "generator". Each degradation of `degradations.DEGRADATIONS`
(within-class shrink, dropped classes, pixel noise, blur, duplicates) is applied to the
candidate half at three strengths, and every metric is computed against the reference half:
the headline FID ("digits-div" features), the classifier FID ("digits" features), precision,
recall, density and coverage (on the headline features). Real against real (strength 0) is
each curve's floor.

`validation_curves()` returns the numbers; `tests/test_metric_validation.py` asserts that the
headline FID rises monotonically with every degradation's strength from the floor, and
`scripts/metric_validation.py` plots them to `docs/metric_validation.png`. Images pass
through uint8 as in `image_metrics`, so the numbers are those an evaluation would give.
"""

from __future__ import annotations

import numpy as np
import torch

from .classifier import digits_arrays, get_digits_classifier
from .degradations import DEGRADATIONS, degrade
from .digits_div import DigitsDiversityFeatures
from .metrics import density_coverage, fid_from_features, precision_recall

METRICS = ("fid", "fid_classifier", "precision", "recall", "density", "coverage")


def quantize(x01: np.ndarray) -> torch.Tensor:
    """float images -> the uint8 grid torch-fidelity sees -> float again."""
    return torch.from_numpy(np.round(np.clip(np.asarray(x01, dtype=np.float32), 0, 1) * 255) / 255).float()


def split_halves(seed: int = 0):
    """(reference x, candidate x, candidate y): a seeded half split of all 1797 digits."""
    x, y = digits_arrays("all")
    perm = np.random.RandomState(seed).permutation(len(y))
    a, b = perm[: len(y) // 2], perm[len(y) // 2 :]
    return x[a], x[b], y[b]


class Scorer:
    """All METRICS of candidate images against a fixed reference set."""

    def __init__(self, reference01, cache_dir=None):
        self.div = DigitsDiversityFeatures(cache_dir)
        self.cls = get_digits_classifier(cache_dir)
        ref = quantize(reference01)
        with torch.no_grad():
            self.ref_div, self.ref_cls = self.div(ref).numpy(), self.cls.features(ref).numpy()

    def __call__(self, x01) -> dict[str, float]:
        x = quantize(x01)
        with torch.no_grad():
            f, fc = self.div(x).numpy(), self.cls.features(x).numpy()
        p, r = precision_recall(f, self.ref_div)
        d, c = density_coverage(f, self.ref_div)
        return {"fid": fid_from_features(f, self.ref_div), "fid_classifier": fid_from_features(fc, self.ref_cls),
                "precision": p, "recall": r, "density": d, "coverage": c}


def validation_curves(split_seed: int = 0, degrade_seed: int = 0, cache_dir=None) -> dict:
    """{"floor": metrics of the untouched half, "identity": the headline extractor's identity,
    "curves": {degradation: {"what", "strengths": [0, s1, s2, s3], metric: [floor, v1, v2, v3]}}}."""
    ref, cand, y = split_halves(split_seed)
    score = Scorer(ref, cache_dir)
    floor = score(cand)
    curves = {}
    for name, (_, strengths, what) in DEGRADATIONS.items():
        rows = [floor] + [score(degrade(name, cand, y, s, seed=degrade_seed)) for s in strengths]
        curves[name] = {"what": what, "strengths": [0, *strengths], **{m: [r[m] for r in rows] for m in METRICS}}
    return {"floor": floor, "identity": score.div.identity, "curves": curves}
