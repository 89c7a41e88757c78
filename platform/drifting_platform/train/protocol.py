"""The evaluation protocol of the paper's ImageNet runs, for any generator: balanced labels,
1-NFE samples, SD-VAE decoding of latents, extractor features and logits, then FID / IS /
precision-recall against reference statistics (`eval/protocol.py`), at each CFG scale.

    runner = ProtocolRunner(generator, num_classes, decoder=LatentDecoder(vae_source), extractor=ext)
    result = evaluate_protocol(runner, num=50000, cfg_scales=[1.0, 1.5], ref=read_reference(path))
    # {"alpha_1/fid": ..., "alpha_1/is": ..., ..., "best_alpha": 1.5, "fid_best_alpha": ...}

Samples are made in fixed chunks (`CHUNK` labels; chunk i uses noise seed `seed + i`), so
the numbers do not depend on how the chunks are spread over workers (`launch/evaluate.py`
hands chunks to Ray actors; `chunk_features` is what each computes). Used by the
`evaluate` command and, every `eval.every` steps, by the training loop.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
import torch

from ..eval.protocol import ProtocolExtractor, protocol_metrics, to_uint8_rgb
from ..sampling import balanced_labels, generate

CHUNK = 500  # labels per chunk (and per worker task)


def alpha_key(alpha: float, metric: str) -> str:
    """The metric name of `metric` at CFG scale `alpha`: alpha_1.5/fid."""
    return f"alpha_{float(alpha):g}/{metric}"


class LatentDecoder:
    """SD-VAE decoding of scaled latents to images in [0, 1]; checks that the VAE is the one
    the data was prepared with when that identity is known."""

    def __init__(self, source: str, *, expected_sha256: Optional[str] = None, device="cpu", batch_size: int = 64):
        from ..data.vae import VAEError, load_vae

        self.vae = load_vae(source, device=device)
        sha = self.vae.identity["sha256"]
        if expected_sha256 and sha != expected_sha256:
            raise VAEError(f"VAE {source!r} (sha256 {sha[:12]}) is not the one the latents were prepared with (sha256 {expected_sha256[:12]})")
        self.source, self.batch_size = source, batch_size

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        from ..data.vae import decode_latents

        return (decode_latents(self.vae, latents, batch_size=self.batch_size) + 1.0) * 0.5


def chunk_labels(num: int, num_classes: int, chunk: int = CHUNK) -> list[torch.Tensor]:
    """The balanced labels (num // K or one more per class, the release's 50 per class for
    50k over ImageNet) cut into chunks."""
    labels = balanced_labels(num, num_classes)
    return list(torch.split(labels, chunk))


class ProtocolRunner:
    """A generator with what turns its samples into features: `to_images` (model-space samples
    -> [0, 1] images; latents are decoded) and the extractor."""

    def __init__(self, generator: torch.nn.Module, num_classes: int, *, to_images: Callable[[torch.Tensor], torch.Tensor],
                 extractor: ProtocolExtractor, device="cpu", batch_size: int = 250):
        self.generator, self.num_classes, self.to_images = generator, int(num_classes), to_images
        self.extractor, self.device, self.batch_size = extractor, device, batch_size

    @torch.no_grad()
    def chunk_features(self, labels: torch.Tensor, cfg_scale: float, seed: int, keep: int = 0) -> tuple[np.ndarray, np.ndarray, torch.Tensor]:
        """(features, logits, the first `keep` uint8 images) of one chunk's samples."""
        x = generate(self.generator, labels, cfg_scale=cfg_scale, seed=seed, batch_size=self.batch_size, device=self.device)
        u8 = to_uint8_rgb(self.to_images(x))
        f, lg = self.extractor.many(torch.split(u8, self.batch_size))
        return f, lg, u8[:keep].clone()


def evaluate_protocol(runner: ProtocolRunner, *, num: int, cfg_scales: Sequence[float], ref: dict, seed: int = 0, chunk: int = CHUNK,
                      map_chunks: Optional[Callable] = None, progress: Optional[Callable[[int], None]] = None, keep_images: int = 0) -> dict:
    """Metrics at each CFG scale: {alpha_<a>/<fid|is|is_std|precision|recall>, best_alpha,
    fid_best_alpha}, plus "images" (the first `keep_images` <= chunk uint8 samples at the best
    scale) when asked. `map_chunks(fn_args) -> results` may spread the chunks (Ray); the default
    runs them here. `progress(n)` is told of each chunk's samples."""
    chunks = chunk_labels(num, runner.num_classes, chunk)
    out: dict = {}
    kept = {}
    for a in cfg_scales:
        args = [(lab, float(a), seed + i, keep_images if i == 0 else 0) for i, lab in enumerate(chunks)]
        if map_chunks is None:
            results = []
            for arg in args:
                results.append(runner.chunk_features(*arg))
                if progress:
                    progress(len(arg[0]))
        else:
            results = map_chunks(args)
        feats = np.concatenate([r[0] for r in results])
        logits = np.concatenate([r[1] for r in results])
        m = protocol_metrics(feats, logits, ref)
        out.update({alpha_key(a, k): v for k, v in m.items() if k != "num_samples"})
        if keep_images:
            kept[float(a)] = results[0][2]
    fids = {float(a): out[alpha_key(a, "fid")] for a in cfg_scales if np.isfinite(out[alpha_key(a, "fid")])}
    if fids:
        best = min(fids, key=fids.get)
        out.update(best_alpha=best, fid_best_alpha=fids[best])
        if keep_images:
            out["images"] = kept[best]
    out["num_samples"] = int(num)
    return out
