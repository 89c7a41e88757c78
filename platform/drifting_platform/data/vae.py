"""The SD-VAE of the latent path, through diffusers' `AutoencoderKL` (never downloaded here).

The paper's ImageNet generators work in the latent space of Stable Diffusion's VAE
(`stabilityai/sd-vae-ft-mse`, the PyTorch twin of the Flax VAE the authors' release
loads). Images in [-1, 1] `[B, 3, H, W]` encode to a diagonal Gaussian posterior over
`[B, 4, H/8, W/8]`; a training latent is a draw from it times the scaling factor 0.18215
(`config.scaling_factor`), and decoding divides by it again.

    vae = load_vae("stabilityai/sd-vae-ft-mse")       # a folder, or a name in the HF cache
    moments = encode_moments(vae, images_m11)         # [B, 2C, h, w]: mean then log-variance
    z = sample_latents(moments, scaling_factor(vae))  # a posterior draw, scaled
    images = decode_latents(vae, z)                   # [B, 3, H, W] in [-1, 1]

Sources: a folder written by `save_pretrained` (config.json + weights; what
`write_random_vae` makes for the miniatures and tests), or a Hugging Face repo name found
in the local cache (`$HF_HOME` / `~/.cache/huggingface`, `local_files_only`). The identity
recorded in data manifests (`vae_identity`) is the source plus a SHA-256 over the config
and weight files, so latents from different VAEs never mix silently.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Optional, Union

import torch

DEFAULT_VAE = "stabilityai/sd-vae-ft-mse"
SCALING_FACTOR = 0.18215  # SD-VAE's; the release multiplies posterior draws by it
LOGVAR_RANGE = (-30.0, 20.0)  # the clamp diffusers' DiagonalGaussianDistribution applies to log-variance
_WEIGHT_SUFFIXES = (".safetensors", ".bin")


class VAEError(ValueError):
    """A VAE source that cannot be used (names the source and what to do)."""


def tiny_vae_config(*, latent_channels: int = 4, widths: tuple[int, ...] = (16, 32), sample_size: int = 32) -> dict:
    """An `AutoencoderKL` config small enough for CPU tests and the paper-mini preset:
    the SD-VAE's architecture (down / up encoder blocks, a mid attention block, a 2C-channel
    posterior) at toy widths; the spatial factor is 2 ** (len(widths) - 1)."""
    n = len(widths)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(widths),
        "layers_per_block": 1,
        "latent_channels": int(latent_channels),
        "norm_num_groups": min(8, min(widths)),
        "sample_size": int(sample_size),
        "scaling_factor": SCALING_FACTOR,
    }


def sd_vae_config() -> dict:
    """The architecture of `stabilityai/sd-vae-ft-mse` (its config.json's values): four
    encoder / decoder levels of widths 128-256-512-512, two ResNet layers each, a 4-channel
    latent at 1/8 the resolution. With random weights it costs what the real VAE costs
    (benchmarks, GPU checks); its weights come only from a folder or the HF cache."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 256,
        "scaling_factor": SCALING_FACTOR,
    }


def build_vae(config: dict, *, seed: int = 0):
    """A randomly initialised `AutoencoderKL` of `config` (weights from `seed`), in eval mode."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    try:
        return AutoencoderKL(**config).eval()
    except TypeError as exc:
        raise VAEError(f"AutoencoderKL config: {exc}") from None


def write_random_vae(folder: Union[str, os.PathLike], config: Optional[dict] = None, *, seed: int = 0) -> Path:
    """Save a randomly initialised VAE (`tiny_vae_config()` unless `config`) with
    `save_pretrained` to `folder`; `load_vae(folder)` reads it back. Returns the folder."""
    folder = Path(folder)
    vae = build_vae(tiny_vae_config() if config is None else config, seed=seed)
    folder.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(folder, safe_serialization=True)
    return folder


def _hf_snapshot(name: str) -> Path:
    """The cached snapshot folder of Hugging Face repo `name` (no network)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True, allow_patterns=["config.json", "*.safetensors", "*.bin", "*.json"]))
    except Exception as exc:  # noqa: BLE001 - LocalEntryNotFoundError, bad names, ...
        raise VAEError(
            f"VAE {name!r}: not a folder and not in the Hugging Face cache ({type(exc).__name__}); nothing is downloaded "
            f"here: on a machine with network run `huggingface-cli download {name}` (or pass a folder written by save_pretrained)"
        ) from None


def resolve_vae_source(source: Union[str, os.PathLike]) -> Path:
    """The folder holding the VAE's config.json and weights, for a folder or a cached HF name."""
    p = Path(os.path.expanduser(os.fspath(source)))
    if p.is_dir():
        folder = p
    elif p.exists():
        raise VAEError(f"VAE {os.fspath(source)!r}: a file, expected a folder with config.json and weights")
    elif os.path.isabs(os.fspath(source)) or os.fspath(source).startswith("."):
        raise VAEError(f"VAE {os.fspath(source)!r}: no such folder")
    else:
        folder = _hf_snapshot(os.fspath(source))
    if not (folder / "config.json").is_file():
        raise VAEError(f"VAE {os.fspath(source)!r}: {folder} has no config.json (write it with save_pretrained)")
    if not any(f.suffix in _WEIGHT_SUFFIXES for f in folder.iterdir()):
        raise VAEError(f"VAE {os.fspath(source)!r}: {folder} holds no weights (*.safetensors or *.bin)")
    return folder


def vae_files_sha256(folder: Union[str, os.PathLike]) -> str:
    """SHA-256 over config.json and the weight files of a VAE folder (names and bytes, sorted)."""
    folder = Path(folder)
    h = hashlib.sha256()
    files = [folder / "config.json"] + sorted(f for f in folder.iterdir() if f.suffix in _WEIGHT_SUFFIXES)
    for f in files:
        h.update(f.name.encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def load_vae(source: Union[str, os.PathLike], *, device: Union[str, torch.device] = "cpu"):
    """The `AutoencoderKL` of `source` (a folder or a cached HF name), frozen, in eval mode.
    Its `identity` attribute is `vae_identity`'s dict."""
    from diffusers import AutoencoderKL

    folder = resolve_vae_source(source)
    try:
        vae = AutoencoderKL.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
    except Exception as exc:  # noqa: BLE001 - diffusers raises many kinds
        raise VAEError(f"VAE {os.fspath(source)!r}: diffusers cannot load {folder}: {type(exc).__name__}: {exc}") from None
    vae.requires_grad_(False)
    vae.identity = vae_identity(vae, source, folder)
    return vae.eval().to(device)


def vae_identity(vae, source, folder: Union[str, os.PathLike]) -> dict:
    """What names a VAE in manifests: source as given, the files' SHA-256, and the latent geometry."""
    cfg = vae.config
    return {
        "source": os.fspath(source),
        "sha256": vae_files_sha256(folder),
        "scaling_factor": float(scaling_factor(vae)),
        "latent_channels": int(cfg.latent_channels),
        "downsample": int(2 ** (len(cfg.block_out_channels) - 1)),
    }


def scaling_factor(vae) -> float:
    """The factor posterior draws are multiplied by (the config's, else SD-VAE's 0.18215)."""
    v = getattr(vae.config, "scaling_factor", None)
    return float(SCALING_FACTOR if v is None else v)


@torch.no_grad()
def encode_moments(vae, images: torch.Tensor) -> torch.Tensor:
    """Posterior moments of images in [-1, 1] `[B, 3, H, W]`: `[B, 2C, h, w]` float32, the
    C means then the C log-variances (clamped as diffusers clamps them), unscaled."""
    p = vae.encode(images.to(next(vae.parameters()).dtype)).latent_dist
    return torch.cat([p.mean, p.logvar], dim=1).float()


def split_moments(moments: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`[..., 2C, h, w]` -> (mean, log-variance), each `[..., C, h, w]`."""
    c = moments.shape[-3] // 2
    return moments[..., :c, :, :], moments[..., c:, :, :]


def sample_latents(moments: torch.Tensor, scale: float = SCALING_FACTOR, *, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A posterior draw per row, times `scale`: (mean + exp(logvar / 2) * eps) * scale."""
    mean, logvar = split_moments(moments)
    std = torch.exp(0.5 * logvar.clamp(*LOGVAR_RANGE))
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device="cpu").to(mean.device)
    return (mean + std * eps) * scale


@torch.no_grad()
def decode_latents(vae, latents: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """Scaled latents `[B, C, h, w]` -> images `[B, 3, H, W]` in [-1, 1] (clamped), float32,
    decoded `batch_size` at a time."""
    scale = scaling_factor(vae)
    dtype = next(vae.parameters()).dtype
    device = next(vae.parameters()).device
    out = []
    for chunk in torch.split(latents, batch_size):
        out.append(vae.decode(chunk.to(device, dtype) / scale).sample.float().clamp_(-1.0, 1.0).cpu())
    return torch.cat(out) if out else torch.zeros(0, 3, 1, 1)


def read_vae_config(folder: Union[str, os.PathLike]) -> dict:
    """config.json of a VAE folder as a dict."""
    with open(Path(folder) / "config.json") as fh:
        return json.load(fh)
