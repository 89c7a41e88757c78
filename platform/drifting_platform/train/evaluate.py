"""End-of-run evaluation: samples from the EMA generator, metrics, sample files.

Image data: FID and KID against the data set through torch-fidelity with the platform's own
feature extractor (or Inception from a local weights file). 2-D data: MMD against fresh data
and the number of modes covered. Writes `samples.npz` (contract 4) and `samples.png`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..config import Config
from ..sampling import balanced_labels, generate, write_grid, write_samples


def evaluate_run(cfg: Config, dataset, generator: torch.nn.Module, out: Path, *, device="cpu") -> dict:
    e = cfg.eval
    labels = balanced_labels(e.num_samples, dataset.num_classes)
    x = generate(generator, labels, cfg_scale=e.cfg_scale, seed=cfg.seed + 12345, batch_size=e.batch_size, device=device)
    samples = dataset.to_output(x)
    write_samples(out / "samples.npz", samples, labels.numpy())
    reference = dataset.to_output(dataset.x)
    metrics: dict = {}
    if dataset.kind == "toy":
        from ..data import sample_toy, toy_mode_centers
        from ..eval.metrics import high_quality_fraction, mmd_rbf, modes_covered

        # fresh draws from the same toy distribution (dataset.name survives a shard round trip)
        ref = sample_toy(dataset.name, n=max(len(samples), 2000), seed=cfg.seed + 999)
        metrics["mmd"] = float(mmd_rbf(torch.from_numpy(samples), torch.from_numpy(ref)))
        centers = toy_mode_centers(dataset.name)
        if centers is not None:
            metrics["modes_covered"] = int(modes_covered(samples, centers))
            metrics["modes_total"] = int(len(centers))
            metrics["high_quality_fraction"] = float(high_quality_fraction(samples, centers))
        write_grid(out / "samples.png", samples, labels.numpy(), reference=ref[:2000])
    elif dataset.kind == "image":
        from ..eval.fidelity import image_metrics

        m = image_metrics(torch.from_numpy(samples), torch.from_numpy(reference), extractor=e.extractor, inception_weights=e.inception_weights)
        metrics.update({k: float(v) for k, v in m.items()})
        if cfg.data.name == "digits":
            # an independent check: an sklearn classifier that shares nothing with the FID
            # features reads the generated digits, and per-class spread against the data's
            from ..eval.independent import diversity_ratio, label_accuracy

            metrics["label_accuracy"] = float(label_accuracy(samples, labels.numpy()))
            metrics["diversity_ratio"] = float(diversity_ratio(samples, labels.numpy()))
        write_grid(out / "samples.png", samples, labels.numpy())
    else:  # latents: no pixel-space metric without a decoder
        metrics["latent_mean_abs_diff"] = float(np.abs(samples.mean(0) - reference.mean(0)).mean())
    return metrics
