"""Image FID / KID / precision-recall / density-coverage through torch-fidelity.

Importing this module registers two extractors with torch-fidelity (idempotent):
`DIGITS_DIV_EXTRACTOR` ("drifting-digits-div", extractor "digits-div", the default: the
digits classifier's features and within-class 8x8 pixel residuals, equally weighted, so FID
sees within-class diversity as well as fidelity; `digits_div.py`) and `DIGITS_EXTRACTOR` ("drifting-digits",
extractor "digits": the classifier's penultimate layer alone, `classifier.FEATURE_DIM` dims).
Inception ("inception-v3-compat") is available only from a local weights file: nothing here
ever downloads.

    m = image_metrics(samples01, reference01)
    # {"fid", "kid", "kid_std", "precision", "recall", "density", "coverage"}

Inputs are float `[N, C, H, W]` in [0, 1] (C = 1 or 3), NumPy or torch. They reach
torch-fidelity as Datasets of uint8 `[3, H, W]` (grayscale replicated), which is its
convention for images; no GenerativeModel wrapper is involved.

Reference statistics are cached. The reference set (the real data) is the same for every
run of a data set, so its features (for KID) and FID statistics are computed once and kept
under `$DRIFTING_CACHE_DIR/fidelity/` through torch-fidelity's own cache (`input2_cache_name`),
named by `reference_cache_name`: a hash of the reference images' uint8 content (which
covers the data set, its size and the number of samples), the sample count, and the
extractor's identity (`extractor_identity`).
A changed data set, sample count or extractor therefore never reads stale statistics; the
generated samples are never cached.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import torch
import torch_fidelity
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor

from .classifier import cache_dir as platform_cache_dir
from .classifier import get_digits_classifier, recipe_hash
from ..rundir import slug
from .digits_div import DigitsDiversityFeatures
from .metrics import (
    DC_NEIGHBORHOOD, KEY_COVERAGE, KEY_DENSITY, KEY_FID, KEY_KID, KEY_KID_STD, KEY_PRECISION, KEY_RECALL, PRC_NEIGHBORHOOD,
    density_coverage,
)

DIGITS_EXTRACTOR = "drifting-digits"
DIGITS_DIV_EXTRACTOR = "drifting-digits-div"
INCEPTION_EXTRACTOR = "inception-v3-compat"
EXTRACTORS = {"digits-div": DIGITS_DIV_EXTRACTOR, "digits": DIGITS_EXTRACTOR, "inception": INCEPTION_EXTRACTOR}
FEATURE_FEATURES = "features"  # penultimate layer: FID / KID / PRC
FEATURE_LOGITS = "logits"  # class logits: ISC
CACHE_DIR_KWARG = "drifting_cache_dir"  # extra calculate_metrics kwarg, passed to our extractor


class InceptionWeightsMissing(FileNotFoundError):
    """Inception metrics were asked for without a local weights file (we never download)."""


# ----------------------------------------------------------------------------- extractor


def uint8_to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 [N, 3, H, W] in 0..255 -> float [N, 1, H, W] in [0, 1] (channel mean = grayscale;
    exact for our own grayscale images, which reach torch-fidelity as 3 equal channels)."""
    return x.float().div(255.0).mean(dim=1, keepdim=True)


def check_uint8_images(x) -> None:
    """torch-fidelity hands extractors uint8 [N, 3, H, W]; anything else is a caller's error."""
    if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
        raise ValueError(f"expected uint8 images [N, 3, H, W], got {getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")


class _PlatformExtractor(FeatureExtractorBase):
    """What our extractors share: plain CPU modules that torch-fidelity never compiles."""

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)


class DigitsFeatureExtractor(_PlatformExtractor):
    """torch-fidelity extractor over the platform's digits classifier.

    torch-fidelity builds it as `cls(name, features_list, **calculate_metrics_kwargs)`;
    `drifting_cache_dir` among those kwargs selects the classifier's cache folder.
    """

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        self.net = get_digits_classifier(kwargs.get(CACHE_DIR_KWARG))

    @staticmethod
    def get_provided_features_list():
        return (FEATURE_FEATURES, FEATURE_LOGITS)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": FEATURE_LOGITS, "fid": FEATURE_FEATURES, "kid": FEATURE_FEATURES, "prc": FEATURE_FEATURES}[metric]

    def forward(self, x):
        check_uint8_images(x)
        f = self.net.features(uint8_to_unit(x))
        out = {FEATURE_FEATURES: f, FEATURE_LOGITS: self.net.logits_from_features(f)}
        return tuple(out[name] for name in self.features_list)


class DigitsDivFeatureExtractor(_PlatformExtractor):
    """torch-fidelity extractor over `digits_div.DigitsDiversityFeatures` (the headline
    features of the small data sets: classifier features and within-class 8x8 pixel
    residuals, equally weighted)."""

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        self.features = DigitsDiversityFeatures(kwargs.get(CACHE_DIR_KWARG))

    @staticmethod
    def get_provided_features_list():
        return (FEATURE_FEATURES,)

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        if metric == "isc":
            raise ValueError("the digits-div features have no class logits: no Inception Score")
        return FEATURE_FEATURES

    def forward(self, x):
        check_uint8_images(x)
        return (self.features(uint8_to_unit(x)).to(x.device),)


def _register(name: str, cls: type) -> None:
    """Register `cls` under `name`; a no-op when already there. A re-executed module
    (importlib.reload) replaces its own older class; a foreign class under the name is an error."""
    have = FEATURE_EXTRACTORS_REGISTRY.get(name)
    if have is cls:
        return
    if have is None:
        register_feature_extractor(name, cls)
    elif (have.__module__, have.__qualname__) == (cls.__module__, cls.__qualname__):
        FEATURE_EXTRACTORS_REGISTRY[name] = cls
    else:
        raise ValueError(f"torch-fidelity extractor {name!r} is already taken by {have!r}")


def register_digits_extractor() -> None:
    """Register our extractors (DIGITS_EXTRACTOR, DIGITS_DIV_EXTRACTOR) with torch-fidelity (idempotent)."""
    _register(DIGITS_EXTRACTOR, DigitsFeatureExtractor)
    _register(DIGITS_DIV_EXTRACTOR, DigitsDivFeatureExtractor)


register_digits_extractor()


# ----------------------------------------------------------------------------- inputs


class UInt8Images(Dataset):
    """A fixed set of uint8 [3, H, W] images, the input form torch-fidelity expects."""

    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def unit_to_uint8(x) -> torch.Tensor:
    """float [N, C, H, W] in [0, 1] (C = 1 or 3) -> uint8 [N, 3, H, W] (clamped, rounded)."""
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x).detach().cpu()
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1 or 3, H, W] in [0, 1], got shape {tuple(x.shape)}")
    x = x.float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x


def images_to_dataset(x01) -> UInt8Images:
    return UInt8Images(unit_to_uint8(x01))


# ----------------------------------------------------------------------------- metrics


def extractor_kwargs(extractor: str, *, inception_weights=None, cache_dir=None) -> dict:
    """calculate_metrics kwargs that select the feature extractor (and its weights)."""
    if extractor in ("digits", "digits-div"):
        return {"feature_extractor": EXTRACTORS[extractor], CACHE_DIR_KWARG: cache_dir}
    if extractor == "inception":
        if not inception_weights:
            raise InceptionWeightsMissing(
                "extractor='inception' needs a local Inception weights file (torch-fidelity's "
                "'weights-inception-2015-12-05-6726825d.pth'): pass inception_weights=/path/to/weights.pth; "
                "the platform never downloads weights"
            )
        if not os.path.isfile(inception_weights):
            raise InceptionWeightsMissing(f"Inception weights file not found: {inception_weights}")
        return {"feature_extractor": INCEPTION_EXTRACTOR, "feature_extractor_weights_path": str(inception_weights)}
    raise ValueError(f"extractor must be one of {sorted(EXTRACTORS)}, got {extractor!r}")


def extractor_identity(extractor: str, *, inception_weights=None, cache_dir=None) -> str:
    """What determines the extractor's features, as one string recorded with every result
    (summary.json "fid_extractor", MLflow tag drifting.fid_extractor): "digits-div-v1-<hash>"
    (`DigitsDiversityFeatures.identity`), "digits<classifier recipe hash>", or
    "inception<hash of the weights file's path, size, modification time>"."""
    if extractor == "digits-div":
        return DigitsDiversityFeatures(cache_dir).identity
    if extractor == "digits":
        return f"digits{recipe_hash()}"
    st = os.stat(inception_weights)
    blob = f"{os.path.realpath(inception_weights)}|{st.st_size}|{st.st_mtime_ns}"
    return "inception" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def reference_cache_name(reference_u8: torch.Tensor, extractor: str, *, inception_weights=None, name: str | None = None, cache_dir=None) -> str:
    """The cache name of a reference set's features / statistics (see the module docstring).

    reference_u8: the uint8 [N, 3, H, W] images torch-fidelity sees. `name` (e.g. the data
    set's name) only makes the file names readable; the content hash identifies the set.
    """
    h = hashlib.sha256(str(tuple(reference_u8.shape)).encode())
    h.update(reference_u8.contiguous().numpy().tobytes())
    label = slug(name, keep="_.", limit=40, default="") + "-" if name else ""
    return f"ref-{label}n{len(reference_u8)}-{h.hexdigest()[:16]}-{extractor_identity(extractor, inception_weights=inception_weights, cache_dir=cache_dir)}"


def reference_cache_root(cache_dir=None) -> str:
    """Where reference features / statistics live: `<platform cache>/fidelity`."""
    return str(platform_cache_dir(cache_dir) / "fidelity")


def fidelity_to_metrics(out: dict) -> dict:
    """torch-fidelity's result dict -> our metric names as floats (those present)."""
    names = {
        torch_fidelity.KEY_METRIC_FID: KEY_FID, torch_fidelity.KEY_METRIC_KID_MEAN: KEY_KID,
        torch_fidelity.KEY_METRIC_KID_STD: KEY_KID_STD, torch_fidelity.KEY_METRIC_PRECISION: KEY_PRECISION,
        torch_fidelity.KEY_METRIC_RECALL: KEY_RECALL,
    }
    return {ours: float(out[theirs]) for theirs, ours in names.items() if theirs in out}


METRIC_GROUPS = ("fid", "kid", "prc", "dc")  # what image_metrics can compute
GROUP_KEYS = {"fid": (KEY_FID,), "kid": (KEY_KID, KEY_KID_STD), "prc": (KEY_PRECISION, KEY_RECALL), "dc": (KEY_DENSITY, KEY_COVERAGE)}


def image_metrics(samples01, reference01, *, extractor: str = "digits-div", inception_weights=None, kid_subsets: int = 100,
                  kid_subset_size: int = 1000, batch_size: int = 256, cuda: bool | None = None, cache_dir=None,
                  seed: int = 0, verbose: bool = False, cache_reference: bool = True, reference_name: str | None = None,
                  metrics: tuple[str, ...] = METRIC_GROUPS, prc_k: int = PRC_NEIGHBORHOOD, dc_k: int = DC_NEIGHBORHOOD) -> dict:
    """FID, KID, precision / recall and density / coverage of samples against reference images
    (both float [N, C, H, W] in [0, 1]), all on one extractor's features.

    `extractor`: "digits-div" (the headline features of the small data sets: the digits
    classifier's features and within-class pixel residuals, `digits_div.py`), "digits" (the classifier's
    features alone) or "inception" (needs `inception_weights`, a local file; raises
    InceptionWeightsMissing otherwise). `metrics`: any of "fid", "kid", "prc" (precision /
    recall, k = `prc_k`, torch-fidelity's), "dc" (density / coverage, k = `dc_k`).
    `kid_subset_size` is clipped to the smaller set. `cuda`: default = available. `cache_dir`:
    the platform cache folder (default $DRIFTING_CACHE_DIR): the digits classifier and, with
    `cache_reference` (default), the reference set's features and FID statistics (computed on
    first use, then loaded; `reference_name` labels the file names). The features go through
    torch-fidelity's own steps (extractor, feature cache, FID statistics, KID, PRC), so each
    number is what `torch_fidelity.calculate_metrics` gives for the same inputs.
    Returns {"fid", "kid", "kid_std", "precision", "recall", "density", "coverage"} (those
    asked for); all NaN when a set has too few images (< 2, or <= k for the k-NN metrics).
    """
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics_cached, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_featuresdict_to_metric
    from torch_fidelity.metric_prc import prc_featuresdict_to_metric
    from torch_fidelity.utils import (
        create_feature_extractor, extract_featuresdict_from_input_id_cached, get_cacheable_input_name,
        resolve_feature_layer_for_metric,
    )

    unknown = [m for m in metrics if m not in METRIC_GROUPS]
    if unknown:
        raise ValueError(f"metrics must be among {METRIC_GROUPS}, got {unknown}")
    fe = extractor_kwargs(extractor, inception_weights=inception_weights, cache_dir=cache_dir)
    input1, input2 = images_to_dataset(samples01), images_to_dataset(reference01)
    keys = [k for m in metrics for k in GROUP_KEYS[m]]
    need = max(2, prc_k + 1 if "prc" in metrics else 0, dc_k + 1 if "dc" in metrics else 0)
    if min(len(input1), len(input2)) < need:  # no covariance from one image: undefined, not an error
        return {k: float("nan") for k in keys}
    cache = {"cache": False}  # nothing is written under ~/.cache/torch
    if cache_reference:
        cache = {
            "cache": True, "cache_root": reference_cache_root(cache_dir),
            "input2_cache_name": reference_cache_name(input2.images, extractor, inception_weights=inception_weights, name=reference_name, cache_dir=cache_dir),
        }
    cuda = torch.cuda.is_available() if cuda is None else cuda
    kw = dict(
        input1=input1, input2=input2, fid="fid" in metrics, kid="kid" in metrics, prc="prc" in metrics,
        kid_subsets=kid_subsets, kid_subset_size=min(kid_subset_size, len(input1), len(input2)),
        prc_neighborhood=prc_k, batch_size=batch_size, cuda=cuda,
        save_cpu_ram=True,  # DataLoader without worker processes: our inputs are in memory already
        rng_seed=seed, verbose=verbose, **cache, **fe,
    )
    layer = resolve_feature_layer_for_metric("fid", **kw)  # "features" (ours), "2048" (Inception)
    net = create_feature_extractor(fe["feature_extractor"], [layer], **kw)
    f1 = extract_featuresdict_from_input_id_cached(1, net, **kw)
    f2 = extract_featuresdict_from_input_id_cached(2, net, **kw)
    out: dict = {}
    if "fid" in metrics:
        s1 = fid_featuresdict_to_statistics_cached(f1, get_cacheable_input_name(1, **kw), net, layer, **kw)
        s2 = fid_featuresdict_to_statistics_cached(f2, get_cacheable_input_name(2, **kw), net, layer, **kw)
        out.update(fid_statistics_to_metric(s1, s2, verbose))
    if "kid" in metrics:
        out.update(kid_featuresdict_to_metric(f1, f2, layer, **kw))
    if "prc" in metrics:
        out.update(prc_featuresdict_to_metric(f1, f2, layer, **kw))
    result = fidelity_to_metrics(out)
    if "dc" in metrics:
        density, coverage = density_coverage(f1[layer].double().numpy(), f2[layer].double().numpy(), k=dc_k)
        result.update({KEY_DENSITY: density, KEY_COVERAGE: coverage})
    return {k: result[k] for k in keys}
