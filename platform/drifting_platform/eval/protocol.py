"""The ImageNet evaluation protocol: FID against reference statistics, Inception Score and
precision / recall, from one extractor's features and logits.

The paper's numbers are FID-50k of 50 samples per class against the ADM reference batch of
ImageNet 256 (guided-diffusion's `VIRTUAL_imagenet256_labeled.npz`; MeanFlow and the
release ship the same statistics as `mu`, `sigma`), Inception Score over 10 splits and
k = 3 precision / recall. Here:

    ref = read_reference("VIRTUAL_imagenet256_labeled.npz")   # mu, sigma (+ features)
    ext = ProtocolExtractor("inception", inception_weights=path)
    feats, logits = ext(images_u8)                            # batches of uint8 [B, 3, H, W]
    protocol_metrics(feats, logits, ref)                      # {fid, is, is_std, precision, recall}

`ProtocolExtractor` runs torch-fidelity's Inception-v3 (`inception-v3-compat`, the TF-FID
port; 2048-d pool features, 1008 unbiased logits) from a local weights file only, or the
digits classifier (features, logits) for the miniatures. `write_random_inception(path)`
saves an Inception of that architecture with random weights: tests and device benchmarks
run the real network code without downloading.

Reference files: an .npz with `mu` [D] and `sigma` [D, D] (float64), and optionally
`features` [M, D] (reference features for precision / recall); written by
`write_reference` from reference images.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

import numpy as np
import torch

from .metrics import features_to_statistics, statistics_to_fid

IS_SPLITS = 10
PR_K = 3  # the ADM evaluator's k for precision / recall
INCEPTION_FEATURES = "2048"
INCEPTION_LOGITS = "logits_unbiased"


class ReferenceError(ValueError):
    """A reference-statistics file that cannot be used (names the file and what is wrong)."""


def read_reference(path) -> dict:
    """{"mu": [D], "sigma": [D, D], "features": [M, D] or None} of an ADM / MeanFlow-style npz."""
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise ReferenceError(f"{p}: no such reference-statistics file")
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = set(z.files)
            if not {"mu", "sigma"} <= keys:
                raise ReferenceError(f"{p}: a reference file needs arrays 'mu' and 'sigma' (has {sorted(keys)})")
            mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
            feats = z["features"].astype(np.float64) if "features" in keys else None
    except ReferenceError:
        raise
    except Exception as exc:  # noqa: BLE001 - not an npz, truncated
        raise ReferenceError(f"{p}: not a readable .npz ({type(exc).__name__}: {exc})") from None
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise ReferenceError(f"{p}: mu {mu.shape} and sigma {sigma.shape} do not fit ([D] and [D, D])")
    if feats is not None and (feats.ndim != 2 or feats.shape[1] != len(mu)):
        raise ReferenceError(f"{p}: features {feats.shape} do not fit mu [{len(mu)}]")
    return {"mu": mu, "sigma": sigma, "features": feats}


def write_reference(path, features: np.ndarray, *, keep_features: bool = True) -> dict:
    """Write reference statistics of `features` [M, D] (and the features, for precision /
    recall) to `path` (.npz); returns what `read_reference` gives back."""
    f = np.asarray(features, dtype=np.float64)
    mu, sigma = features_to_statistics(f)
    arrays = {"mu": mu, "sigma": sigma}
    if keep_features:
        arrays["features"] = f.astype(np.float32)
    tmp = f"{os.fspath(path)}.tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, os.fspath(path))
    return read_reference(path)


def inception_score(logits: np.ndarray, splits: int = IS_SPLITS) -> tuple[float, float]:
    """(mean, std) over `splits` equal parts of exp(E_x KL(p(y|x) || p(y))), p(y|x) the
    softmax of the logits (torch-fidelity's and the TF Inception Score's definition)."""
    lg = np.asarray(logits, dtype=np.float64)
    if lg.ndim != 2 or len(lg) < splits:
        raise ValueError(f"inception_score: need [N >= {splits}, K] logits, got {lg.shape}")
    lg = lg - lg.max(axis=1, keepdims=True)
    p = np.exp(lg)
    p /= p.sum(axis=1, keepdims=True)
    scores = []
    n = len(p)
    for k in range(splits):
        part = p[k * n // splits : (k + 1) * n // splits]
        py = part.mean(axis=0, keepdims=True)
        kl = (part * (np.log(np.clip(part, 1e-300, None)) - np.log(np.clip(py, 1e-300, None)))).sum(axis=1).mean()
        scores.append(np.exp(kl))
    return float(np.mean(scores)), float(np.std(scores))


def _knn_radii_blocked(f: torch.Tensor, k: int, block: int) -> torch.Tensor:
    out = torch.empty(len(f), dtype=f.dtype)
    for i in range(0, len(f), block):
        d = torch.cdist(f[i : i + block], f)
        out[i : i + block] = d.kthvalue(k + 1, dim=1).values  # the row itself is at distance 0
    return out


def _covered(a: torch.Tensor, b: torch.Tensor, radii_b: torch.Tensor, block: int) -> torch.Tensor:
    """[len(a)] bool: row of a within radii_b[j] of some row j of b."""
    out = torch.zeros(len(a), dtype=torch.bool)
    for i in range(0, len(a), block):
        out[i : i + block] = (torch.cdist(a[i : i + block], b) <= radii_b[None, :]).any(dim=1)
    return out


def precision_recall_blocked(gen, real, *, k: int = PR_K, block: int = 2048) -> tuple[float, float]:
    """`metrics.precision_recall` (k-NN manifolds, inclusive <=) in row blocks: memory
    O(block x N) instead of O(N^2), for 50k samples against a 10k reference."""
    g = torch.as_tensor(np.asarray(gen, dtype=np.float64))
    r = torch.as_tensor(np.asarray(real, dtype=np.float64))
    if min(len(g), len(r)) <= k:
        raise ValueError(f"precision / recall need more than k={k} samples per set, got {len(g)} and {len(r)}")
    rg, rr = _knn_radii_blocked(g, k, block), _knn_radii_blocked(r, k, block)
    return float(_covered(g, r, rr, block).double().mean()), float(_covered(r, g, rg, block).double().mean())


def protocol_metrics(features: np.ndarray, logits: Optional[np.ndarray], ref: dict, *, k: int = PR_K, is_splits: int = IS_SPLITS) -> dict:
    """FID against `ref` (mu, sigma), Inception Score of `logits` (when given), precision /
    recall at k against `ref["features"]` (when the file has them)."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or f.shape[1] != len(ref["mu"]):
        raise ReferenceError(f"features of dimension {f.shape[1:]} against reference statistics of dimension {len(ref['mu'])} (another extractor?)")
    mu, sigma = features_to_statistics(f)
    out = {"fid": float(statistics_to_fid(mu, sigma, ref["mu"], ref["sigma"])), "num_samples": int(len(f))}
    if logits is not None:
        out["is"], out["is_std"] = inception_score(logits, is_splits)
    if ref.get("features") is not None:
        out["precision"], out["recall"] = precision_recall_blocked(f, ref["features"], k=k)
    return out


def write_random_inception(path, *, seed: int = 0) -> str:
    """Save torch-fidelity's Inception-v3 (inception-v3-compat) with random weights to `path`
    (a state dict torch-fidelity loads through `feature_extractor_weights_path`)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, state_dict, *args, **kwargs):  # noqa: ARG002 - keep the random init
            return None

    p = os.fspath(path)
    empty = f"{p}.empty"
    torch.save({}, empty)
    torch.manual_seed(seed)
    try:
        net = _Unloaded("inception-v3-compat", [INCEPTION_FEATURES], feature_extractor_weights_path=empty)
    finally:
        os.unlink(empty)
    torch.save(net.state_dict(), p)
    return p


class ProtocolExtractor:
    """Features and logits of uint8 images [B, 3, H, W]: `inception` (torch-fidelity's
    Inception-v3 from a local weights file) or `digits` (the digits classifier)."""

    def __init__(self, name: str = "inception", *, inception_weights=None, device="cpu"):
        self.name, self.device = name, torch.device(device)
        if name == "inception":
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

            from .fidelity import extractor_kwargs

            path = extractor_kwargs("inception", inception_weights=inception_weights)["feature_extractor_weights_path"]
            self.net = FeatureExtractorInceptionV3("inception-v3-compat", [INCEPTION_FEATURES, INCEPTION_LOGITS], feature_extractor_weights_path=path)
        elif name == "digits":
            from .fidelity import DigitsFeatureExtractor, FEATURE_FEATURES, FEATURE_LOGITS

            self.net = DigitsFeatureExtractor("drifting-digits", [FEATURE_FEATURES, FEATURE_LOGITS])
        else:
            raise ValueError(f"extractor must be 'inception' or 'digits', got {name!r}")
        self.net = self.net.to(self.device).eval()

    @torch.no_grad()
    def __call__(self, images_u8: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        x = torch.as_tensor(images_u8)
        if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected uint8 images [B, 3, H, W], got {x.dtype} {tuple(x.shape)}")
        f, lg = self.net(x.to(self.device))
        return f.double().cpu().numpy(), lg.double().cpu().numpy()

    def many(self, batches: Iterable[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
        fs, ls = [], []
        for b in batches:
            f, lg = self(b)
            fs.append(f)
            ls.append(lg)
        return np.concatenate(fs), np.concatenate(ls)


def to_uint8_rgb(x01: torch.Tensor) -> torch.Tensor:
    """float [B, C, H, W] in [0, 1] (C = 1 or 3) -> uint8 [B, 3, H, W] (rounded, as saved PNGs)."""
    x = torch.as_tensor(x01).float().clamp(0, 1)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x * 255.0).round().to(torch.uint8)
