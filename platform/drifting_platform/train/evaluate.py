"""End-of-run evaluation: samples from the EMA generator, metrics, sample files.

Image data: FID, KID, precision / recall and density / coverage against the data set through
torch-fidelity on one extractor's features (`eval.extractor`: "digits-div" by default, the
digits classifier's features and within-class 8x8 pixel residuals, which see diversity; "digits", the
classifier alone; or Inception from a local weights file); with "digits-div" the classifier
FID is added as `fid_classifier`. The extractor's identity is recorded as `fid_extractor`
(summary.json; MLflow tag drifting.fid_extractor), so tables never mix extractors. The data
set's features and statistics are computed once and cached (`eval/fidelity.py`), so only the
generated samples are encoded per evaluation. With `eval.cfg_scales`, FID and precision /
recall are also measured at each CFG scale alpha (`alpha_<a>/fid`, `alpha_<a>/precision`,
`alpha_<a>/recall`; `best_alpha` and `fid_best_alpha`). 2-D data: MMD against fresh data
and the number of modes covered. Writes `samples.npz` (the format `drifting-platform sample`
writes: `samples` float32 in output space, `labels` int64) and `samples.png`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .. import rundir
from ..config import Config, expand_path
from ..data import sample_toy, toy_mode_centers
from ..eval.classifier import get_digits_classifier
from ..eval.digits_div import DigitsDiversityFeatures
from ..eval.independent import diversity_ratio, label_accuracy
from ..eval.metrics import fid_from_features, high_quality_fraction, mmd_rbf, modes_covered
from ..sampling import balanced_labels, generate, write_grid, write_samples
from .protocol import LatentDecoder, alpha_key  # noqa: F401 - alpha_key is imported from here too


def evaluate_run(cfg: Config, dataset, generator: torch.nn.Module, out: Path, *, device="cpu") -> dict:
    e = cfg.eval
    labels = balanced_labels(e.num_samples, dataset.num_classes)
    x = generate(generator, labels, cfg_scale=e.cfg_scale, seed=cfg.seed + 12345, batch_size=e.batch_size, device=device)
    decoder = latent_decoder(cfg, dataset, device=device)
    if decoder is not None:  # latents decoded by their SD-VAE: images from here on
        return _evaluate_images(cfg, dataset, generator, out, labels, x, decoder, device=device)
    samples = dataset.to_output(x)
    write_samples(out / rundir.SAMPLES, samples, labels.numpy())
    reference = dataset.to_output(dataset.x)
    metrics: dict = {}
    if dataset.kind == "toy":
        # fresh draws from the same toy distribution (dataset.name survives a shard round trip)
        ref = sample_toy(dataset.name, n=max(len(samples), 2000), seed=cfg.seed + 999)
        metrics["mmd"] = float(mmd_rbf(torch.from_numpy(samples), torch.from_numpy(ref)))
        centers = toy_mode_centers(dataset.name)
        if centers is not None:
            metrics["modes_covered"] = int(modes_covered(samples, centers))
            metrics["modes_total"] = int(len(centers))
            metrics["high_quality_fraction"] = float(high_quality_fraction(samples, centers))
        write_grid(out / rundir.GRID, samples, labels.numpy(), reference=ref[:2000])
    elif dataset.kind == "image":
        from ..eval.fidelity import extractor_identity, image_metrics  # torch-fidelity, only for image data

        weights = expand_path(e.inception_weights, "eval.inception_weights") if e.extractor == "inception" else None
        ref = torch.from_numpy(reference)
        # the reference statistics are cached per data set + extractor + sample count
        score = lambda x01, **kw: image_metrics(torch.from_numpy(x01), ref, extractor=e.extractor, inception_weights=weights,  # noqa: E731
                                                reference_name=dataset.name, **kw)
        metrics.update({k: float(v) for k, v in score(samples).items()})
        if e.extractor == "digits-div":  # the classifier's FID as a second reading
            cls = image_metrics(torch.from_numpy(samples), ref, extractor="digits", reference_name=dataset.name, metrics=("fid",))
            metrics["fid_classifier"] = float(cls["fid"])
        metrics.update(cfg_curve(e.cfg_scales, lambda a: dataset.to_output(
            generate(generator, labels, cfg_scale=a, seed=cfg.seed + 12345, batch_size=e.batch_size, device=device)), score,
            known={float(e.cfg_scale): metrics}))
        if cfg.data.name == "digits":
            # an independent check: an sklearn classifier that shares nothing with the FID
            # features reads the generated digits, and per-class spread against the data's
            metrics["label_accuracy"] = float(label_accuracy(samples, labels.numpy()))
            metrics["diversity_ratio"] = float(diversity_ratio(samples, labels.numpy()))
        write_grid(out / rundir.GRID, samples, labels.numpy())
        metrics["fid_extractor"] = extractor_identity(e.extractor, inception_weights=weights)
    else:  # latents: no pixel-space metric without a decoder
        metrics["latent_mean_abs_diff"] = float(np.abs(samples.mean(0) - reference.mean(0)).mean())
    return metrics


def latent_decoder(cfg: Config, dataset, *, device="cpu"):
    """The SD-VAE decoder of a latent data set (`eval.vae`, else the VAE a prepared set
    records, checked by hash), or None (not latents, or no VAE known)."""
    if dataset.kind != "latent":
        return None
    known = getattr(dataset, "vae", None) or {}
    source = expand_path(cfg.eval.vae, "eval.vae") if cfg.eval.vae else known.get("source")
    if not source or source == "synthetic":
        return None
    return LatentDecoder(source, expected_sha256=known.get("sha256") or None, device=device)


def _evaluate_images(cfg: Config, dataset, generator, out: Path, labels, x, decoder, *, device="cpu") -> dict:
    """The image metrics of decoded latents against the decoded data (as many reference rows
    as samples, at most the set): FID / KID / precision-recall / density-coverage on
    `eval.extractor`, the CFG curve, a grid; samples.npz holds the images and the latents."""
    from ..eval.fidelity import extractor_identity, image_metrics

    e = cfg.eval
    images = decoder(x).numpy()
    write_samples(out / rundir.SAMPLES, images, labels.numpy(), latents=dataset.to_output(x))
    n_ref = min(len(dataset.x), max(len(images), 1000))
    ref = decoder(dataset.x[:n_ref])
    weights = expand_path(e.inception_weights, "eval.inception_weights") if e.extractor == "inception" else None
    score = lambda x01, **kw: image_metrics(torch.from_numpy(x01), ref, extractor=e.extractor, inception_weights=weights,  # noqa: E731
                                            reference_name=f"{dataset.name}-decoded", **kw)
    metrics = {k: float(v) for k, v in score(images).items()}
    metrics.update(cfg_curve(e.cfg_scales, lambda a: decoder(
        generate(generator, labels, cfg_scale=a, seed=cfg.seed + 12345, batch_size=e.batch_size, device=device)).numpy(), score,
        known={float(e.cfg_scale): metrics}))
    write_grid(out / rundir.GRID, images, labels.numpy())
    metrics["fid_extractor"] = extractor_identity(e.extractor, inception_weights=weights)
    return metrics


def cfg_curve(scales, sample_at, score, known=None) -> dict:
    """FID and precision / recall at each CFG scale: {alpha_<a>/fid, .../precision,
    .../recall, best_alpha, fid_best_alpha} ({} without scales). `sample_at(a)` gives
    samples in output space, `score(x, metrics=...)` their image metrics; `known` maps a
    scale whose metrics are already measured (the headline's) to them."""
    out: dict = {}
    known = known or {}
    for a in scales:
        m = known[float(a)] if float(a) in known else score(sample_at(a), metrics=("fid", "prc"))
        m = {k: m[k] for k in ("fid", "precision", "recall")}
        out.update({alpha_key(a, k): float(v) for k, v in m.items()})
    fids = {a: out[alpha_key(a, "fid")] for a in scales if np.isfinite(out[alpha_key(a, "fid")])}
    if fids:
        best = min(fids, key=fids.get)
        out.update(best_alpha=float(best), fid_best_alpha=fids[best])
    return out


class QuickEval:
    """A cheap in-training metric of the EMA generator, comparable across trials.

    Image data with a digits extractor ("digits-div" or "digits"): FID on the same features
    as the final FID, computed directly on `n` samples (so a little higher than the final
    number); 2-D data: MMD against fresh draws. Data features are computed once. Returns {}
    for data it cannot score (latents, Inception).
    """

    def __init__(self, cfg: Config, dataset, *, n: int, device="cpu"):
        self.cfg, self.dataset, self.n, self.device = cfg, dataset, n, device
        self.labels = balanced_labels(n, dataset.num_classes)
        self.kind = None
        if dataset.kind == "image" and cfg.eval.extractor in ("digits", "digits-div") and dataset.shape[0] in (1, 3):
            self.kind = "fid"
            self.features = DigitsDiversityFeatures() if cfg.eval.extractor == "digits-div" else get_digits_classifier().features
            with torch.no_grad():
                self.ref = self.features(torch.from_numpy(dataset.to_output(dataset.x)))
        elif dataset.kind == "toy":
            self.kind = "mmd"
            self.ref = torch.from_numpy(sample_toy(dataset.name, n=max(n, 1000), seed=cfg.seed + 999))

    def __call__(self, generator: torch.nn.Module) -> dict:
        if self.kind is None:
            return {}
        x = generate(generator, self.labels, cfg_scale=self.cfg.eval.cfg_scale, seed=self.cfg.seed + 777, device=self.device)
        out = torch.from_numpy(self.dataset.to_output(x))
        if self.kind == "fid":
            with torch.no_grad():
                return {"fid": float(fid_from_features(self.features(out).numpy(), self.ref.numpy()))}
        return {"mmd": float(mmd_rbf(out, self.ref))}


class ProtocolEval:
    """The ImageNet protocol inside training (`eval.every`): `eval.protocol_samples` samples of
    the EMA generator per CFG scale (`eval.cfg_scales`, else `eval.cfg_scale`), decoded when
    latent, against the statistics in `eval.ref`; returns {eval/alpha_<a>/fid, .../is,
    .../precision, .../recall, eval/best_alpha, eval/fid_best_alpha}."""

    def __init__(self, cfg: Config, dataset, generator: torch.nn.Module, *, device="cpu"):
        from ..eval.protocol import ProtocolExtractor, read_reference
        from .protocol import ProtocolRunner

        e = cfg.eval
        self.cfg = cfg
        self.ref = read_reference(expand_path(e.ref, "eval.ref"))
        name = "inception" if e.extractor == "inception" else "digits"
        weights = expand_path(e.inception_weights, "eval.inception_weights") if name == "inception" else None
        decoder = latent_decoder(cfg, dataset, device=device)
        to_images = decoder if decoder is not None else (lambda x: torch.from_numpy(dataset.to_output(x)))
        self.runner = ProtocolRunner(generator, dataset.num_classes, to_images=to_images,
                                     extractor=ProtocolExtractor(name, inception_weights=weights, device=device), device=device,
                                     batch_size=e.batch_size)
        self.scales = list(e.cfg_scales) or [e.cfg_scale]

    def __call__(self) -> dict:
        from .protocol import evaluate_protocol

        out = evaluate_protocol(self.runner, num=self.cfg.eval.protocol_samples, cfg_scales=self.scales, ref=self.ref, seed=self.cfg.seed + 4242)
        out.pop("num_samples", None)
        return {f"eval/{k}": float(v) for k, v in out.items()}
