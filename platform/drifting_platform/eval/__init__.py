"""Evaluation: FID / KID / precision-recall / density-coverage, toy metrics, independent checks.

- `metrics`: pure functions on features / 2-D samples (`fid_from_features`,
  `kid_from_features`, `precision_recall`, `density_coverage`, `mmd_rbf`, `modes_covered`,
  `high_quality_fraction`).
- `classifier`: the platform's deterministic digits CNN (`get_digits_classifier`), cached
  under `$DRIFTING_CACHE_DIR`.
- `digits_div`: the headline features of the small data sets (`DigitsDiversityFeatures`:
  classifier features + within-class pixel residuals), which see diversity as well as fidelity.
- `fidelity`: `image_metrics(samples01, reference01, extractor="digits-div" | "digits" |
  "inception")`; importing it registers the "drifting-digits-div" and "drifting-digits"
  torch-fidelity extractors.
- `degradations`, `validation`: controlled degradations of real digits and the metric
  validation suite built on them (`validation_curves`).
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
    KEY_COVERAGE,
    KEY_DENSITY,
    KEY_PRECISION,
    KEY_RECALL,
    density_coverage,
    features_to_statistics,
    fid_from_features,
    high_quality_fraction,
    kid_from_features,
    mmd_rbf,
    modes_covered,
    precision_recall,
    statistics_to_fid,
)

_LAZY = {
    "image_metrics": "fidelity",
    "DIGITS_EXTRACTOR": "fidelity",
    "DIGITS_DIV_EXTRACTOR": "fidelity",
    "DigitsDiversityFeatures": "digits_div",
    "validation_curves": "validation",
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
