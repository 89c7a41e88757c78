"""Load a finished (or interrupted) run directory and sample from its EMA generator; or load
a released generator (a release artifact folder, a converted folder or hf://NAME) and sample
from it in its own (model) space."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import Config, from_dict
from .release import load_release
from .sampling import balanced_labels, generate
from .train.checkpoint import CheckpointError, load_checkpoint
from .train.loop import build_data, build_model


@dataclass
class Run:
    cfg: Config
    dataset: object
    generator: torch.nn.Module
    step: int


def load_run(run_dir: str | Path, device: str = "cpu") -> Run:
    """Rebuild the run's data set and generator from its checkpoint (weights_only load)."""
    state = load_checkpoint(run_dir, map_location=device)
    if "ema" not in state or "config" not in state:
        raise CheckpointError(f"{run_dir}: checkpoint has no EMA generator or config")
    cfg = from_dict(state["config"])
    dataset = build_data(cfg)
    gen = build_model(cfg, dataset)
    try:
        gen.load_state_dict(state["ema"])
    except RuntimeError as exc:
        raise CheckpointError(f"{run_dir}: weights do not fit the configured generator: {exc}") from None
    return Run(cfg=cfg, dataset=dataset, generator=gen.to(device).eval(), step=int(state["step"]))


def sample_run(run: Run, num: int, *, cfg_scale: float = 1.0, seed: int = 0, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """What `drifting-platform sample` writes: (samples float32 in output space, labels int64
    balanced over classes)."""
    labels = balanced_labels(num, run.dataset.num_classes)
    x = generate(run.generator, labels, cfg_scale=cfg_scale, seed=seed, device=device)
    return run.dataset.to_output(x).astype(np.float32), labels.numpy().astype(np.int64)


# --------------------------------------------------------------------------- released generators


@dataclass
class ReleaseRun:
    """A released generator (release folder, converted folder or hf://NAME) ready to sample."""

    source: str
    generator: torch.nn.Module
    metadata: dict

    @property
    def num_classes(self) -> int:
        """Classes to balance samples over: the model's class embeddings, less the
        unconditional one of the release's ImageNet models (1001 = 1000 classes + null)."""
        n = int(self.metadata["model_config"].get("num_classes", self.generator.num_classes))
        return 1000 if n == 1001 else n


def load_release_run(source: str | Path, device: str = "cpu") -> ReleaseRun:
    """Build a released generator via `release.load_release` (a ReleaseError names what is wrong)."""
    module, meta = load_release(source, kind="gen")
    return ReleaseRun(source=str(source), generator=module.to(device).eval(), metadata=meta)


def sample_release(run: ReleaseRun, num: int, *, cfg_scale: float = 1.0, seed: int = 0, device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(samples float32 [num, C, H, W] in the model's space, labels int64 balanced over its
    classes). Latent models' samples stay SD-VAE latents: nothing decodes them here."""
    labels = balanced_labels(num, run.num_classes)
    x = generate(run.generator, labels, cfg_scale=cfg_scale, seed=seed, device=device)
    return x.numpy().astype(np.float32), labels.numpy().astype(np.int64)


# --------------------------------------------------------------------------- the evaluation protocol


def build_protocol_runner(source: str | Path, *, vae: str | None = None, extractor: str = "inception", inception_weights=None,
                          device: str = "cpu", batch_size: int = 250):
    """A `train.protocol.ProtocolRunner` for a run directory or a released generator.

    Latent generators are decoded by an SD-VAE: `vae` (a folder or a cached HF name), else
    the VAE a prepared data set records (checked by hash), else, for released latent models,
    `stabilityai/sd-vae-ft-mse`. Raises CheckpointError / ReleaseError / VAEError /
    InceptionWeightsMissing with what to do."""
    from .data.vae import DEFAULT_VAE, VAEError
    from .eval.protocol import ProtocolExtractor
    from .release import is_release_source
    from .train.protocol import LatentDecoder, ProtocolRunner

    ext = ProtocolExtractor(extractor, inception_weights=inception_weights, device=device)
    if is_release_source(source):
        rel = load_release_run(source, device=device)
        gen, k = rel.generator, rel.num_classes
        latent = int(tuple(gen.data_shape)[0]) == 4
        to_images = LatentDecoder(vae or DEFAULT_VAE, device=device) if latent else (lambda x: ((x + 1.0) * 0.5).clamp(0, 1))
    else:
        run = load_run(source, device=device)
        gen, k, ds = run.generator, run.dataset.num_classes, run.dataset
        if ds.kind == "image":
            to_images = lambda x: torch.from_numpy(ds.to_output(x))  # noqa: E731
        elif ds.kind == "latent":
            known = getattr(ds, "vae", None) or {}
            src = vae or known.get("source")
            if not src:
                raise VAEError(f"{source}: a latent run whose data records no VAE; pass --vae (a folder or a cached Hugging Face name)")
            to_images = LatentDecoder(src, expected_sha256=known.get("sha256") or None, device=device)
        else:
            raise VAEError(f"{source}: a run on {ds.kind} data; the image protocol evaluates image and latent generators")
    return ProtocolRunner(gen, k, to_images=to_images, extractor=ext, device=device, batch_size=batch_size)
