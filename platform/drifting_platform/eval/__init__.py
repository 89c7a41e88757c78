"""Evaluation: FID / KID through torch-fidelity, toy-data metrics, independent checks.

- `metrics`: pure functions on features / 2-D samples (`fid_from_features`,
  `kid_from_features`, `mmd_rbf`, `modes_covered`, `high_quality_fraction`).
- `classifier`: the platform's deterministic digits CNN (`get_digits_classifier`), cached
  under `$DRIFTING_CACHE_DIR`.
- `fidelity`: `image_metrics(samples01, reference01, extractor="digits" | "inception")`;
  importing it registers the "drifting-digits" torch-fidelity extractor.
- `independent`: `label_accuracy` (an sklearn SVC), `per_class_diversity`, `data_diversity`.

Only `metrics` is imported eagerly; the rest load on first attribute access.
"""

from .metrics import (
    KEY_FID,
    KEY_HIGH_QUALITY,
    KEY_KID,
    KEY_KID_STD,
    KEY_MMD,
    KEY_MODES_COVERED,
    features_to_statistics,
    fid_from_features,
    high_quality_fraction,
    kid_from_features,
    mmd_rbf,
    modes_covered,
    statistics_to_fid,
)

_LAZY = {
    "image_metrics": "fidelity",
    "DIGITS_EXTRACTOR": "fidelity",
    "get_digits_classifier": "classifier",
    "label_accuracy": "independent",
    "per_class_diversity": "independent",
    "data_diversity": "independent",
    "diversity_ratio": "independent",
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
