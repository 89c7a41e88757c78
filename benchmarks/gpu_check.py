"""GPU check at the paper's scale (issue 17): the drift kernel, a release-b/2 training step and
evaluation throughput on one GPU, written to benchmarks/results_gpu.md.

    python benchmarks/gpu_check.py                       # on a GPU machine, a few minutes
    python benchmarks/gpu_check.py --tiny --out DIR      # the same code on the CPU, seconds

1. Kernel: ``drift_loss`` forward + backward at the paper's feature-set shapes (64 classes x
   tokens as the batch of class groups; 64 generated x 144 targets = 64 generated + 16
   unconditional + 64 positives; 256 to 2560 channels) against the straightforward
   reference (``reference_drift.py``: every intermediate a fresh tensor, as the release
   writes it), ours at the device's default chunk size and at the other device's (2^25
   elements per chunk on a GPU, 2^20 on a CPU), with float32 inputs (TF32 off) and with
   bfloat16 inputs (the encoder's output under autocast; the loss computes in float32
   either way): milliseconds, peak memory and the relative difference of loss and gradient
   from the float32 reference.
2. Step: one training step of ``release-b/2`` drifting in a release Latent-MAE's features
   (base 256, layers 3-4-6-3, random weights) at the paper's batch (64 classes x 64
   generated / 64 positive + 16 unconditional, 4x32x32 latents) under bf16 autocast
   (``gpu_release_check.train_step``): generated samples/s, peak memory, and MFU = the
   step's FLOPs (counted by ``torch.utils.flop_counter``) / time / the GPU's dense bf16 peak;
   and the step's profile (``step_profile``): each part's milliseconds and share (encoder on
   the data samples, generator forward + backward, encoder forward + backward on the
   generated samples, drift loss forward + backward). ``benchmarks/bench_step.py`` runs the
   same profile on the CPU, scaled down.
3. Evaluation: one-step generation (samples/s, bf16, no gradient, batch 256) and the MAE's
   feature extraction (images/s), the two model passes of an evaluation (FID's Inception
   needs downloaded weights and is not run here).

It uses the math core only (torch, no Ray / MLflow / diffusers), so it runs where only torch
is installed. Prints one JSON object per line and writes the table.
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "platform"))
sys.path.insert(0, str(HERE))

from gpu_release_check import step_models, train_step  # noqa: E402
from reference_drift import reference_drift_loss  # noqa: E402

from drifting_platform.drift import drift_loss  # noqa: E402
from drifting_platform.encoders import build_encoder  # noqa: E402
from drifting_platform.models import build_generator  # noqa: E402

# (classes x tokens, generated, unconditional, positives, channels): the paper's feature sets
PAPER_SHAPES = [(64 * 256, 64, 16, 64, 256), (64 * 64, 64, 16, 64, 1024), (64 * 16, 64, 16, 64, 2560)]
TINY_SHAPES = [(8, 8, 2, 8, 16), (4, 8, 2, 8, 32)]
# dense bf16 peak FLOP/s by device name (tensor cores, no sparsity)
PEAKS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device: torch.device, reps: int) -> tuple[float, float]:
    """(median ms of `reps` calls after one warm-up, peak memory GiB of one call)."""
    fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        _sync(device)
        ts.append(time.perf_counter() - t)
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    return statistics.median(ts) * 1e3, peak


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / (b.double().abs().max() + 1e-12))


def kernel(device: torch.device, shapes, reps: int) -> list[dict]:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    rows = []
    for B, C_g, C_n, C_p, S in shapes:
        g = torch.Generator(device="cpu").manual_seed(0)
        gen = torch.randn(B, C_g, S, generator=g).to(device)
        pos = (torch.randn(B, C_p, S, generator=g) + 0.3).to(device)
        neg = torch.randn(B, C_n, S, generator=g).to(device)
        wneg = (torch.rand(B, C_n, generator=g) + 0.5).to(device)
        last: dict = {}

        def run(fn, dtype):
            x = gen.detach().to(dtype).requires_grad_(True)
            loss, _ = fn(x, pos.to(dtype), neg.to(dtype), weight_neg=wneg)
            loss.sum().backward()
            last["out"] = (loss.detach().float(), x.grad.float())

        ref32 = None  # the float32 reference's loss and gradient: what every row is compared with
        # ours with the device's default chunk size, and with the other device's (the GPU
        # default, 2^25 elements per chunk, is a reasoned guess until this row measures it)
        other = 1 << 20 if device.type == "cuda" else 1 << 25
        impls = (("reference", reference_drift_loss), ("ours", drift_loss),
                 (f"ours chunk=2^{other.bit_length() - 1}", functools.partial(drift_loss, chunk_elems=other)))
        for name, fn in impls:
            for dtype in (torch.float32, torch.bfloat16):
                case = {"check": "drift_kernel", "impl": name, "dtype": str(dtype)[6:], "shape": [B, C_g, C_g + C_n + C_p, S]}
                try:
                    ms, peak = _timed(lambda: run(fn, dtype), device, reps)
                except torch.OutOfMemoryError as exc:  # the reference's temporaries at the largest shapes
                    rows.append({**case, "error": f"out of memory: {str(exc)[:120]}"})
                    last.clear()
                    torch.cuda.empty_cache()
                    continue
                loss, grad = last.pop("out")
                if ref32 is None and name == "reference" and dtype == torch.float32:
                    ref32 = (loss, grad)
                row = {**case, "ms_fwd_bwd": round(ms, 3), "peak_memory_gib": round(peak, 3)}
                if ref32 is not None:
                    row.update(rel_diff_loss=f"{_rel(loss, ref32[0]):.1e}", rel_diff_grad=f"{_rel(grad, ref32[1]):.1e}")
                rows.append(row)
    return rows


def step_with_mfu(device: torch.device, cfg: dict) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    row = train_step(device, **cfg)
    counter = FlopCounterMode(display=False)
    with counter:  # one counted call: its two warm-up steps and one step, all the same shape
        train_step(device, **{**cfg, "steps": 1})
    flops = counter.get_total_flops() / 3
    row["tflops_per_step"] = round(flops / 1e12, 3)
    row["achieved_tflops"] = round(flops / row["seconds_per_step"] / 1e12, 2)
    name = torch.cuda.get_device_name() if device.type == "cuda" else ""
    peak = next((v for k, v in PEAKS.items() if k in name), None)
    if peak:
        row["mfu"] = round(flops / row["seconds_per_step"] / peak, 4)
    return row


def step_profile(device: torch.device, *, n_classes: int, n_gen: int, n_pos: int, n_unc: int, generator: str, mae: dict, shape, steps: int,
                 bf16: bool = True) -> dict:
    """Milliseconds of each part of one training step (median of `steps` after one warm-up,
    each part timed alone between device syncs): the encoder on the data samples (no
    gradient), the generator's forward and backward, the encoder's forward and backward on
    the generated samples, and the drift loss's forward and backward on their features.
    Under bf16 autocast (the GPU step), or float32 with ``bf16=False`` (how a CPU trains:
    a CPU without bf16 matrix units emulates bf16 matmuls, several times slower)."""
    from drifting_platform.drift import cfg_negative_weight, sample_cfg_alpha
    from drifting_platform.train.objective import group_drift_loss

    gen, enc = step_models(device, generator, mae, shape)
    for p in enc.parameters():
        p.requires_grad_(False)
    data = torch.randn(n_classes * n_pos + n_unc, *shape, device=device)
    labels = torch.arange(n_classes, device=device).repeat_interleave(n_gen)
    alpha = sample_cfg_alpha(n_classes, low=1.0, high=4.0, power=3.0).to(device)
    z = torch.randn(n_classes * n_gen, gen.noise_dim, device=device)
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)
    with torch.no_grad(), amp:
        pos_f = {k: v.float() for k, v in enc(data[: n_classes * n_pos]).items()}
        unc_f = {k: v.float() for k, v in enc(data[n_classes * n_pos:]).items()}
        x_fixed = gen(z, labels, alpha.repeat_interleave(n_gen)).float()
        gen_fixed = {k: v.float() for k, v in enc(x_fixed).items()}
    weight = cfg_negative_weight(alpha, n_gen, n_unc)

    def data_encode():
        with torch.no_grad(), amp:
            enc(data[: n_classes * n_pos]), enc(data[n_classes * n_pos:])

    def generator_fwd_bwd():
        with amp:
            x = gen(z, labels, alpha.repeat_interleave(n_gen))
        x.float().square().mean().backward()

    def encoder_fwd_bwd():
        x = x_fixed.clone().requires_grad_(True)
        with amp:
            f = enc(x)
        sum(v.float().square().mean() for v in f.values()).backward()

    def drift():
        f = {k: v.clone().requires_grad_(True) for k, v in gen_fixed.items()}
        loss, _ = group_drift_loss(f, pos_f, unc_f, n_groups=n_classes, unc_weight=weight)
        loss.backward()

    parts = {}
    for name, fn in (("encoder on data samples", data_encode), ("generator fwd+bwd", generator_fwd_bwd),
                     ("encoder fwd+bwd on generated", encoder_fwd_bwd), ("drift loss fwd+bwd", drift)):
        parts[name] = round(_timed(fn, device, steps)[0], 2)
        gen.zero_grad(set_to_none=True)
    total = sum(parts.values())
    return {"check": "step_profile_bf16" if bf16 else "step_profile_fp32", "generator": generator, "batch": {"n_classes": n_classes, "n_gen": n_gen, "n_pos": n_pos, "n_unc": n_unc},
            "mae": mae, "shape": list(shape), "device": str(device), "feature_sets": len(gen_fixed), "ms": parts,
            "share": {k: round(v / total, 3) for k, v in parts.items()}, "ms_total": round(total, 2)}


@torch.no_grad()
def evaluation(device: torch.device, generator: str, mae: dict, shape, batch: int, reps: int) -> dict:
    torch.manual_seed(0)
    gen = build_generator(generator, data_shape=shape, num_classes=1001).to(device).eval()
    enc = build_encoder("release_mae", shape, **mae).to(device).eval()
    z = torch.randn(batch, gen.noise_dim, device=device)
    labels = torch.arange(batch, device=device) % 1000
    alpha = torch.full((batch,), 1.5, device=device)
    amp = torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    x = gen(z, labels, alpha)

    def generate():
        with amp:
            gen(z, labels, alpha)

    def features():
        with amp:
            enc(x)

    gen_ms, _ = _timed(generate, device, reps)
    enc_ms, _ = _timed(features, device, reps)
    return {"check": "evaluation_bf16", "generator": generator, "batch": batch, "device": str(device),
            "generated_samples_per_s": round(batch / gen_ms * 1e3, 1), "mae_feature_images_per_s": round(batch / enc_ms * 1e3, 1)}


def table(rows: list[dict], header: str) -> str:
    out = [f"# GPU check\n\n{header}\n", "| check | case | result |", "|---|---|---|"]
    for r in rows:
        r = dict(r)
        check = r.pop("check")
        case = " ".join(f"{k}={r.pop(k)}" for k in ("impl", "dtype", "shape", "generator", "batch") if k in r)
        out.append(f"| {check} | {case} | {', '.join(f'{k} {v}' for k, v in r.items())} |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="small shapes on the CPU (checks the script, not numbers to report)")
    p.add_argument("--out", type=Path, default=HERE, help="where results_gpu.md / results_gpu.json go")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--n-classes", type=int, default=64, help="classes per training step (lower it if the paper's batch does not fit)")
    a = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not a.tiny else "cpu")
    if device.type == "cpu" and not a.tiny:
        p.error("no CUDA device: run on a GPU machine, or --tiny to check the script on the CPU")
    t0 = time.time()
    if a.tiny:
        shapes, reps = TINY_SHAPES, 1
        step = dict(n_classes=2, n_gen=4, n_pos=4, n_unc=2, generator="release-s/2", mae=dict(base_channels=32, layers=[1, 1, 1, 1]), shape=(4, 16, 16), steps=1)
        ev = dict(generator="release-s/2", mae=dict(base_channels=32, layers=[1, 1, 1, 1]), shape=(4, 16, 16), batch=4)
    else:
        shapes, reps = PAPER_SHAPES, a.reps
        step = dict(n_classes=a.n_classes, n_gen=64, n_pos=64, n_unc=16, generator="release-b/2", mae=dict(base_channels=256, layers=[3, 4, 6, 3]), shape=(4, 32, 32), steps=a.reps)
        ev = dict(generator="release-b/2", mae=dict(base_channels=256, layers=[3, 4, 6, 3]), shape=(4, 32, 32), batch=256)
    rows = []
    for part in (lambda: kernel(device, shapes, reps), lambda: [step_with_mfu(device, step)], lambda: [step_profile(device, **step)],
                 lambda: [evaluation(device, reps=reps, **ev)]):
        for row in part():
            print(json.dumps(row), flush=True)
            rows.append(row)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU (--tiny: a check of the script, not numbers to report)"
    header = f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {name}, torch {torch.__version__}; `python benchmarks/gpu_check.py{' --tiny' if a.tiny else ''}` took {time.time() - t0:.0f} s."
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "results_gpu.md").write_text(table(rows, header))
    (a.out / "results_gpu.json").write_text(json.dumps({"header": header, "rows": rows}, indent=2) + "\n")
    print(f"written: {a.out / 'results_gpu.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
