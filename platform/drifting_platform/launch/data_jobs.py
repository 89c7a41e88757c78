"""The `prepare:` section of a sweep: make (or reuse) the prepared latent set every trial
trains on, before any trial starts: `prepare_sweep_data`.

Three steps, each skipped when its output is already there, each written so that a process
killed half-way leaves nothing that looks finished:

1. the ImageFolder: a built-in image set (digits, upsampled to `resolution`, as RGB PNGs),
   written to a temporary folder and renamed into place; or the folder the sweep names;
2. the VAE: `random` saves a randomly initialised `AutoencoderKL` (the SD-VAE's architecture
   at `vae_widths`), likewise renamed into place; else the named VAE folder / HF name;
3. `data prepare`'s plan run on Ray Data actors (finished shards are reused), then the
   reference statistics of the decoded data on the digits extractor (`reference.npz`, the
   miniature's stand-in for the ImageNet reference batch).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from .spec import BUILTIN_IMAGES, PrepareData

REFERENCE = "reference.npz"


def _made_once(final: Path, write) -> Path:
    """`final`, written by `write(tmp)` into a temporary sibling and renamed into place unless
    it is already there (a process killed half-way leaves only the temporary folder; a rival
    that got there first wins)."""
    if final.is_dir():
        return final
    tmp = final.with_name(f".{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    write(tmp)
    try:
        os.replace(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _image_folder(p: PrepareData, out: Path) -> Path:
    if p.images not in BUILTIN_IMAGES:
        return Path(p.images)
    from ..data.images import load_digits
    from ..data.prepare import write_image_folder

    def write(tmp: Path) -> None:
        ds = load_digits(p.resolution, limit=p.limit)
        write_image_folder(((ds.x + 1.0) / 2.0).numpy(), ds.y.numpy(), tmp, class_names=[f"digit_{c}" for c in range(ds.num_classes)])

    return _made_once(out / "images", write)


def _vae(p: PrepareData, out: Path) -> str:
    if p.vae != "random":
        return p.vae
    from ..data.vae import tiny_vae_config, write_random_vae

    config = tiny_vae_config(latent_channels=p.latent_channels, widths=tuple(p.vae_widths), sample_size=p.resolution)
    return str(_made_once(out / "vae", lambda tmp: write_random_vae(tmp, config, seed=0)))


def write_decoded_reference(latents: str, out: Path, *, batch_size: int = 256) -> Path:
    """Statistics (mu, sigma and the features) of the prepared set's decoded posterior means on
    the digits extractor, to `out` (atomic), decoded by the VAE the set records (checked by
    hash). The reference the in-training protocol (`eval.every`) scores against: what the VAE
    can represent of the data."""
    import numpy as np
    import torch

    from ..data.moments import load_prepared
    from ..eval.protocol import ProtocolExtractor, to_uint8_rgb, write_reference
    from ..train.protocol import LatentDecoder

    ds = load_prepared(latents)
    decode = LatentDecoder(ds.vae["source"], expected_sha256=ds.vae.get("sha256"), batch_size=batch_size)
    extractor = ProtocolExtractor("digits")
    with torch.no_grad():
        feats = [extractor(to_uint8_rgb(decode(chunk)))[0] for chunk in torch.split(ds.x, batch_size)]
    tmp = out.with_name(f".{out.stem}-{os.getpid()}.npz")
    write_reference(tmp, np.concatenate(feats))
    os.replace(tmp, out)
    return out


def prepare_sweep_data(p: PrepareData, out: str, *, workers: int = 1) -> dict:
    """Make (or reuse) the sweep's prepared set under `out`; returns {"path" (the shards),
    "reference", "rows", "shape", "reused", "seconds", "images_per_second"}."""
    from ..data.prepare import PrepareError, make_plan, read_manifest
    from ..data.vae import resolve_vae_source, vae_files_sha256
    from .prepare import run_prepare

    t0 = time.time()
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    latents, reference = root / "latents", root / REFERENCE
    images = _image_folder(p, root)
    vae = _vae(p, root)
    folder = resolve_vae_source(vae)
    try:
        manifest = read_manifest(latents)
    except PrepareError:  # absent or unfinished: (re)run the plan, which reuses finished shards
        manifest = None
    reused = manifest is not None and reference.is_file()
    ips = 0.0
    if manifest is None:
        plan = make_plan(images, latents, vae=vae, vae_sha256=vae_files_sha256(folder), resolution=p.resolution,
                         shard_size=p.shard_size, name=f"{Path(images).name}-{p.resolution}")
        print(f"data: preparing {len(plan.items)} images of {len(plan.classes)} classes -> {plan.num_shards} shard(s) under {latents}", flush=True)
        res = run_prepare(plan, workers=p.workers if p.workers is not None else workers, progress=True)
        manifest, ips = res["manifest"], res["images_per_second"]
    if not reference.is_file():
        write_decoded_reference(str(latents), reference)
    seconds = time.time() - t0
    verb = "reusing" if reused else "prepared"
    print(f"data: {verb} {manifest['rows']} latents {tuple(manifest['shape'])} under {latents} ({seconds:.0f} s"
          + (f", {ips:.1f} images/s" if ips else "") + ")", flush=True)
    return {"path": str(latents), "reference": str(reference), "rows": manifest["rows"], "shape": list(manifest["shape"]),
            "reused": reused, "seconds": round(seconds, 2), "images_per_second": ips}
