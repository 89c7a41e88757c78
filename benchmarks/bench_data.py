"""The latent data path (issue 15): `data prepare` throughput and streaming memory.

What is measured (CPU here; the same script on a GPU machine measures the GPU):
- prepare: images/s of `data prepare` on a 2,000-image ImageFolder (scikit-learn's digits
  upsampled to 32x32 RGB PNGs), reading + ADM crop + VAE encoding of the image and its flip
  + Parquet, with the small random VAE the miniature uses (`tiny_vae_config`), in this
  process (`--workers 0`) and on 2 Ray Data actors (the Ray start is outside the timing);
  and the SD-VAE's own architecture (`sd_vae_config`, random weights) at 256x256 on a
  handful of images: what ImageNet preparation costs per core;
- streaming memory: peak RSS of a training process (the digits config's smoke shape,
  prepared latents 4x16x16) over prepared sets of two sizes, 12x and 48x the ring buffers'
  memory, streamed vs held in memory. Streaming's peak should not grow with the set;
  in-memory's does. The ratio is in-memory peak / streamed peak at the larger size.

    python benchmarks/bench_data.py [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "configs" / "digits.yaml"
MB = 2**20

_TRAIN = r"""
import json, sys
from drifting_platform.config import load_config
from drifting_platform.train.loop import training_loop
path, stream, out = sys.argv[1], sys.argv[2], sys.argv[3]
sets = ["data.name=prepared", f"data.path={path}", "data.size=null", f"data.stream={stream}", "data.bank_size=32",
        "data.unc_bank_size=200", "data.push_per_step=32", "data.reference_size=500", "train.steps=30", "train.ckpt_every=0", "model.name=conv-s",
        "encoder.name=random_cnn", "encoder.kwargs={widths: [8, 16]}", "train.feature_bank=false"]
cfg = load_config(sys.argv[4], "smoke", sets)
training_loop(cfg, out, progress=False, evaluate=False)
# VmHWM: this process's peak (ru_maxrss would carry the parent's peak over fork + exec)
hwm = [l for l in open("/proc/self/status") if l.startswith("VmHWM")][0].split()[1]
print(json.dumps({"maxrss_mb": int(hwm) / 1024}))
"""


def _prepare_rows(quick: bool, tmp: Path) -> list[dict]:
    import torch

    from drifting_platform.data import vae as V
    from drifting_platform.data.images import load_digits
    from drifting_platform.data.prepare import make_plan, write_image_folder
    from drifting_platform.launch.prepare import run_prepare

    n = 400 if quick else 2000
    ds = load_digits(32)
    idx = np.arange(n) % len(ds)
    root = write_image_folder(((ds.x[idx] + 1) / 2).numpy(), ds.y[idx].numpy(), tmp / "folder")
    vae_dir = V.write_random_vae(tmp / "tiny_vae")
    sha = V.vae_files_sha256(vae_dir)
    rows = []
    rates = {}
    for workers in (0, 2):
        plan = make_plan(root, tmp / f"out{workers}", vae=str(vae_dir), vae_sha256=sha, resolution=32, shard_size=250, name="digits32")
        if workers:
            import ray

            from drifting_platform.launch.cluster import ray_init_for_sweep

            ray_init_for_sweep()
        try:
            res = run_prepare(plan, workers=workers, progress=False, threads=None if workers else 2)
        finally:
            if workers:
                ray.shutdown()
        rates[workers] = res["images_per_second"]
        if workers:
            steady = res["steady_images_per_second"]
    rows.append({
        "benchmark": "data prepare (images/s)", "case": f"{n} PNGs 32x32 -> tiny AutoencoderKL (16/32 wide) moments + flip, shards of 250",
        "baseline": rates[0], "ours": rates[2], "unit": "images/s", "ratio": round(rates[2] / rates[0], 3), "target": None,
        "note": f"baseline: this process, 2 threads ({rates[0]:.0f} img/s); ours: 2 Ray Data actors, 1 thread each ({rates[2]:.0f} img/s "
                f"with the actors' start (torch + diffusers import, VAE load), {steady or 0:.0f} img/s once both run); "
                f"{os.cpu_count()} CPUs",
    })
    # the real SD-VAE architecture at ImageNet resolution: encoding the image and its flip
    torch.set_num_threads(os.cpu_count() or 1)
    vae = V.build_vae(V.sd_vae_config())
    k = 2 if quick else 4
    x = torch.rand(k, 3, 256, 256) * 2 - 1
    V.encode_moments(vae, x[:1])
    t = time.perf_counter()
    V.encode_moments(vae, x)
    V.encode_moments(vae, torch.flip(x, dims=[3]))
    enc = k / (time.perf_counter() - t)
    z = V.sample_latents(V.encode_moments(vae, x[:2]))
    t = time.perf_counter()
    V.decode_latents(vae, z)
    dec = 2 / (time.perf_counter() - t)
    rows.append({
        "benchmark": "SD-VAE cost (CPU)", "case": "sd-vae-ft-mse architecture (83.7M params), 256x256, random weights",
        "baseline": None, "ours": round(enc, 3), "unit": "images/s", "ratio": None, "target": None,
        "note": f"encode image + flip {enc:.2f} img/s, decode {dec:.2f} img/s on {torch.get_num_threads()} threads: ImageNet's 1.28M "
                f"images would take {1.281e6 / enc / 3600:.0f} h on this machine's cores; prepare ImageNet on GPUs (`--gpu`)",
    })
    return rows


def _rss(path: Path, stream: bool, tmp: Path) -> float:
    out = tmp / f"run-{path.name}-{stream}"
    env = dict(os.environ, OMP_NUM_THREADS="2")
    r = subprocess.run([sys.executable, "-c", _TRAIN, str(path), str(stream).lower(), str(out), str(CONFIG)], capture_output=True, text=True,
                       env=env, timeout=900)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return float(json.loads(r.stdout.strip().splitlines()[-1])["maxrss_mb"])


def _stream_rows(quick: bool, tmp: Path) -> list[dict]:
    from drifting_platform.data.moments import prepared_bytes, write_moment_shards

    shape = (8, 16, 16)
    slot = 2 * int(np.prod(shape)) * 4
    bank = (10 * 32 + 200) * slot
    sizes = {}
    rng = np.random.default_rng(0)
    for mult in ((12, 24) if quick else (12, 48)):
        n = mult * bank // slot
        path = tmp / f"set{mult}"
        for lo in range(0, n, 4000):  # written in parts, so this process stays small too
            m = rng.standard_normal((min(4000, n - lo), *shape), dtype=np.float32)
            write_moment_shards(m, m, rng.integers(0, 10, len(m)), path / f"part{lo:07d}", num_classes=10, shard_size=500)
        sizes[mult] = (path, n)
    rows = []
    peaks = {}
    for mult, (path, n) in sizes.items():
        glob_dir = tmp / f"flat{mult}"  # one folder of all parts' shards
        glob_dir.mkdir()
        for i, p in enumerate(sorted(Path(path).glob("part*/*.parquet"))):
            os.symlink(p, glob_dir / f"latents-{i:05d}.parquet")
        peaks[(mult, True)] = _rss(glob_dir, True, tmp)
        peaks[(mult, False)] = _rss(glob_dir, False, tmp)
        sizes[mult] = (glob_dir, n, prepared_bytes(glob_dir))
    (lo, hi) = sorted(sizes)
    rows.append({
        "benchmark": "streaming class banks (peak RSS)", "case": f"prepared 4x16x16 latents, buffers {bank / MB:.1f} MB; sets {lo}x and {hi}x that "
                f"({sizes[lo][2] / MB:.0f} / {sizes[hi][2] / MB:.0f} MB, {sizes[lo][1]} / {sizes[hi][1]} rows)",
        "baseline": round(peaks[(hi, False)], 1), "ours": round(peaks[(hi, True)], 1), "unit": "MB", "ratio": round(peaks[(hi, False)] / peaks[(hi, True)], 2),
        "target": None,
        "note": f"streamed: {peaks[(lo, True)]:.0f} MB -> {peaks[(hi, True)]:.0f} MB ({peaks[(hi, True)] - peaks[(lo, True)]:+.0f}); in memory: "
                f"{peaks[(lo, False)]:.0f} MB -> {peaks[(hi, False)]:.0f} MB ({peaks[(hi, False)] - peaks[(lo, False)]:+.0f}); 30 steps, 32 rows pushed per step",
    })
    return rows


def run(quick: bool = False) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="bench-data-") as d:
        tmp = Path(d)
        return _prepare_rows(quick, tmp) + _stream_rows(quick, tmp)


if __name__ == "__main__":
    from _common import main

    main(run)
