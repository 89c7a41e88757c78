"""Image FID / KID through torch-fidelity, with the platform's digits feature extractor.

Importing this module registers `DIGITS_EXTRACTOR` ("drifting-digits") with torch-fidelity
(idempotent). It wraps `classifier.get_digits_classifier()`: features are its penultimate layer
(`classifier.FEATURE_DIM` dims). Inception FID ("inception-v3-compat") is available only from
a local weights file: nothing here ever downloads.

    m = image_metrics(samples01, reference01)  # {"fid": ..., "kid": ..., "kid_std": ...}

Inputs are float `[N, C, H, W]` in [0, 1] (C = 1 or 3), NumPy or torch. They reach
torch-fidelity as Datasets of uint8 `[3, H, W]` (grayscale replicated), which is its
convention for images; no GenerativeModel wrapper is involved.

Reference statistics are cached. The reference set (the real data) is the same for every
run of a data set, so its features (for KID) and FID statistics are computed once and kept
under `$DRIFTING_CACHE_DIR/fidelity/` through torch-fidelity's own cache (`input2_cache_name`),
named by `reference_cache_name`: a hash of the reference images' uint8 content (which
covers the data set, its size and the number of samples), the sample count, and the
extractor's identity (the digits classifier's recipe hash, or the Inception weights file).
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
from .metrics import KEY_FID, KEY_KID, KEY_KID_STD

DIGITS_EXTRACTOR = "drifting-digits"
INCEPTION_EXTRACTOR = "inception-v3-compat"
EXTRACTORS = {"digits": DIGITS_EXTRACTOR, "inception": INCEPTION_EXTRACTOR}
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


class DigitsFeatureExtractor(FeatureExtractorBase):
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

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 3, 32, 32, dtype=torch.uint8)

    def forward(self, x):
        if not (torch.is_tensor(x) and x.dtype == torch.uint8 and x.dim() == 4 and x.shape[1] == 3):
            raise ValueError(f"expected uint8 images [N, 3, H, W], got {getattr(x, 'dtype', type(x))} {tuple(getattr(x, 'shape', ()))}")
        f = self.net.features(uint8_to_unit(x))
        out = {FEATURE_FEATURES: f, FEATURE_LOGITS: self.net.logits_from_features(f)}
        return tuple(out[name] for name in self.features_list)


def register_digits_extractor() -> None:
    """Register DigitsFeatureExtractor under DIGITS_EXTRACTOR; a no-op when already there.

    A re-executed module (importlib.reload) replaces its own older class; a foreign class
    under the same name is an error.
    """
    have = FEATURE_EXTRACTORS_REGISTRY.get(DIGITS_EXTRACTOR)
    if have is DigitsFeatureExtractor:
        return
    if have is None:
        register_feature_extractor(DIGITS_EXTRACTOR, DigitsFeatureExtractor)
    elif (have.__module__, have.__qualname__) == (DigitsFeatureExtractor.__module__, DigitsFeatureExtractor.__qualname__):
        FEATURE_EXTRACTORS_REGISTRY[DIGITS_EXTRACTOR] = DigitsFeatureExtractor
    else:
        raise ValueError(f"torch-fidelity extractor {DIGITS_EXTRACTOR!r} is already taken by {have!r}")


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
    if extractor == "digits":
        return {"feature_extractor": DIGITS_EXTRACTOR, CACHE_DIR_KWARG: cache_dir}
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


def extractor_identity(extractor: str, *, inception_weights=None) -> str:
    """What determines the extractor's features: the digits classifier's recipe (and torch)
    hash, or the Inception weights file (path, size, modification time)."""
    if extractor == "digits":
            return f"digits{recipe_hash()}"
    st = os.stat(inception_weights)
    blob = f"{os.path.realpath(inception_weights)}|{st.st_size}|{st.st_mtime_ns}"
    return "inception" + hashlib.sha256(blob.encode()).hexdigest()[:12]


def reference_cache_name(reference_u8: torch.Tensor, extractor: str, *, inception_weights=None, name: str | None = None) -> str:
    """The cache name of a reference set's features / statistics (see the module docstring).

    reference_u8: the uint8 [N, 3, H, W] images torch-fidelity sees. `name` (e.g. the data
    set's name) only makes the file names readable; the content hash identifies the set.
    """
    h = hashlib.sha256(str(tuple(reference_u8.shape)).encode())
    h.update(reference_u8.contiguous().numpy().tobytes())
    label = slug(name, keep="_.", limit=40, default="") + "-" if name else ""
    return f"ref-{label}n{len(reference_u8)}-{h.hexdigest()[:16]}-{extractor_identity(extractor, inception_weights=inception_weights)}"


def reference_cache_root(cache_dir=None) -> str:
    """Where reference features / statistics live: `<platform cache>/fidelity`."""
    return str(platform_cache_dir(cache_dir) / "fidelity")


def fidelity_to_metrics(out: dict) -> dict:
    """torch-fidelity's result dict -> {"fid", "kid", "kid_std"} as floats."""
    return {
        KEY_FID: float(out[torch_fidelity.KEY_METRIC_FID]),
        KEY_KID: float(out[torch_fidelity.KEY_METRIC_KID_MEAN]),
        KEY_KID_STD: float(out[torch_fidelity.KEY_METRIC_KID_STD]),
    }


def image_metrics(samples01, reference01, *, extractor: str = "digits", inception_weights=None, kid_subsets: int = 100,
                  kid_subset_size: int = 1000, batch_size: int = 256, cuda: bool | None = None, cache_dir=None,
                  seed: int = 0, verbose: bool = False, cache_reference: bool = True, reference_name: str | None = None) -> dict:
    """FID and KID of samples against reference images (both float [N, C, H, W] in [0, 1]).

    `extractor`: "digits" (the platform's classifier; trained and cached on first use) or
    "inception" (needs `inception_weights`, a local file; raises InceptionWeightsMissing
    otherwise). `kid_subset_size` is clipped to the smaller set. `cuda`: default = available.
    `cache_dir`: the platform cache folder (default $DRIFTING_CACHE_DIR): the digits
    classifier and, with `cache_reference` (default), the reference set's features and FID
    statistics (computed on first use, then loaded; `reference_name` labels the file names).
    Returns {"fid": float, "kid": float, "kid_std": float}; all NaN when a set has < 2 images.
    """
    fe = extractor_kwargs(extractor, inception_weights=inception_weights, cache_dir=cache_dir)
    input1, input2 = images_to_dataset(samples01), images_to_dataset(reference01)
    if min(len(input1), len(input2)) < 2:  # no covariance from one image: undefined, not an error
        return {KEY_FID: float("nan"), KEY_KID: float("nan"), KEY_KID_STD: float("nan")}
    cache = {"cache": False}  # nothing is written under ~/.cache/torch
    if cache_reference:
        cache = {
            "cache": True, "cache_root": reference_cache_root(cache_dir),
            "input2_cache_name": reference_cache_name(input2.images, extractor, inception_weights=inception_weights, name=reference_name),
        }
    out = torch_fidelity.calculate_metrics(
        input1=input1,
        input2=input2,
        fid=True,
        kid=True,
        kid_subsets=kid_subsets,
        kid_subset_size=min(kid_subset_size, len(input1), len(input2)),
        batch_size=batch_size,
        cuda=torch.cuda.is_available() if cuda is None else cuda,
        save_cpu_ram=True,  # DataLoader without worker processes: our inputs are in memory already
        rng_seed=seed,
        verbose=verbose,
        **cache,
        **fe,
    )
    return fidelity_to_metrics(out)
