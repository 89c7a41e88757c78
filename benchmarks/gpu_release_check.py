"""GPU check of the release's models (issue 11): fp32 parity on CUDA and a bf16 training step.

    python benchmarks/gpu_release_check.py --golden DIR            # on a GPU machine, ~2-4 min
    python benchmarks/gpu_release_check.py --golden DIR --tiny     # the same code on the CPU, seconds

1. Parity: every golden case of `release_models/` (DIR holds the case folders and .npz files;
   copy the golden release_models folder there: the shared golden folder does not travel to the GPU machine)
   loaded with `load_release`, run on the device in float32 with TF32 off, compared with the
   release's outputs (max|ours - ref| / max|ref|, must be <= 1e-4).
2. Step: one training step of `release-b/2` (the paper's ablation generator) drifting in the
   features of a release Latent-MAE at the ablation width (base 256, layers 3-4-6-3, random
   weights: the released ones are downloaded elsewhere) at the paper's batch shape
   (N_c = 64 classes x 64 generated, 64 positives each, 16 unconditional; 4x32x32 latents),
   under bf16 autocast: generated samples per second and peak device memory.
It uses the math core only (no Ray, no MLflow), so it runs where only torch is installed.
Prints one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "platform"))

from drifting_platform.drift import cfg_negative_weight, sample_cfg_alpha  # noqa: E402
from drifting_platform.encoders import build_encoder  # noqa: E402
from drifting_platform.models import build_generator  # noqa: E402
from drifting_platform.release import load_release  # noqa: E402
from drifting_platform.train.objective import group_drift_loss  # noqa: E402

CASES = ("generator_latent_tiny", "generator_plain_tiny", "mae_latent_tiny", "mae_pixel_tiny")


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / (np.abs(ref).max() + 1e-6))


@torch.no_grad()
def parity(golden: Path, device: torch.device) -> list[dict]:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    for case in CASES:
        data = np.load(golden / f"{case}.npz")
        module, meta = load_release(golden / case)
        module = module.to(device)
        x = torch.from_numpy(data["in/x_bhwc"]).permute(0, 3, 1, 2).float().to(device)
        errs = {}
        if meta["kind"] == "gen":
            lab = torch.from_numpy(data["in/labels"]).long().to(device)
            scale = torch.from_numpy(data["in/cfg_scale"]).float().to(device)
            styles = torch.from_numpy(data["in/noise_labels"]).long().to(device) if module.n_style else None
            errs["cond"] = rel_err(module.condition(lab, scale, styles).cpu().numpy(), data["out/cond"])
            out = module.release_forward(x, lab, scale, styles).permute(0, 2, 3, 1).cpu().numpy()
            errs["samples"] = rel_err(out, data["out/samples_bhwc"])
        else:
            feats = module.release_activations(x)
            for key in data.files:
                if key.startswith("out/feat/"):
                    errs[key[9:]] = rel_err(feats[key[9:]].cpu().numpy(), data[key])
        worst = max(errs, key=errs.get)
        rows.append({"check": "parity_fp32", "case": case, "device": str(device), "worst": errs[worst], "worst_key": worst, "ok": errs[worst] <= 1e-4})
    return rows


def step_models(device: torch.device, generator: str, mae: dict, shape) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A training step's generator (random weights; its zero-initialised paths opened, as
    after some training; seed 0) and release Latent-MAE encoder (random weights)."""
    torch.manual_seed(0)
    gen = build_generator(generator, data_shape=shape, num_classes=1001).to(device)
    with torch.no_grad():
        for p in gen.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return gen, build_encoder("release_mae", shape, **mae).to(device)


def train_step(device: torch.device, *, n_classes: int, n_gen: int, n_pos: int, n_unc: int, generator: str, mae: dict, shape, steps: int) -> dict:
    gen, enc = step_models(device, generator, mae, shape)
    opt = torch.optim.AdamW(gen.parameters(), lr=2e-4, betas=(0.9, 0.95), weight_decay=0.01, fused=device.type == "cuda")
    data = torch.randn(n_classes * n_pos + n_unc, *shape, device=device)
    labels = torch.arange(n_classes, device=device).repeat_interleave(n_gen)
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    times = []
    for step in range(steps + 2):  # two warm-up steps
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        alpha = sample_cfg_alpha(n_classes, low=1.0, high=4.0, power=3.0).to(device)
        z = torch.randn(n_classes * n_gen, gen.noise_dim, device=device)
        with amp:
            with torch.no_grad():
                pos_f = enc(data[: n_classes * n_pos])
                unc_f = enc(data[n_classes * n_pos:])
            x = gen(z, labels, alpha.repeat_interleave(n_gen))
            gen_f = enc(x)
        loss, _ = group_drift_loss({k: v.float() for k, v in gen_f.items()}, {k: v.float() for k, v in pos_f.items()},
                                   {k: v.float() for k, v in unc_f.items()}, n_groups=n_classes,
                                   unc_weight=cfg_negative_weight(alpha, n_gen, n_unc))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(gen.parameters(), 2.0)
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= 2:
            times.append(time.perf_counter() - t0)
    sec = float(np.median(times))
    row = {"check": "train_step_bf16", "generator": generator, "mae": mae, "batch": {"n_classes": n_classes, "n_gen": n_gen, "n_pos": n_pos, "n_unc": n_unc},
           "device": str(device), "seconds_per_step": round(sec, 4), "generated_samples_per_s": round(n_classes * n_gen / sec, 1),
           "feature_sets": len(gen_f), "loss": float(loss.detach())}
    if device.type == "cuda":
        row["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        row["gpu"] = torch.cuda.get_device_name()
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--golden", type=Path, required=True, help="folder holding the release_models golden cases")
    p.add_argument("--tiny", action="store_true", help="small shapes on the CPU (checks the script, not numbers to report)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--n-classes", type=int, default=64, help="classes per step (lower it if the paper's batch does not fit)")
    a = p.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() and not a.tiny else "cpu")
    for row in parity(a.golden, device):
        print(json.dumps(row), flush=True)
    if a.tiny:
        cfg = dict(n_classes=2, n_gen=4, n_pos=4, n_unc=2, generator="release-s/2", mae=dict(base_channels=32, layers=[1, 1, 1, 1]), shape=(4, 16, 16), steps=1)
    else:
        cfg = dict(n_classes=a.n_classes, n_gen=64, n_pos=64, n_unc=16, generator="release-b/2", mae=dict(base_channels=256, layers=[3, 4, 6, 3]), shape=(4, 32, 32), steps=a.steps)
    print(json.dumps(train_step(device, **cfg)), flush=True)


if __name__ == "__main__":
    main()
