"""Drift loss kernel: `drift_loss` forward + backward against the straightforward reference.

Shapes B x C_g x C_n x C_p x S from the issue, three temperatures, float32 on the CPU (and on
a GPU when there is one: float32 and bf16 inputs). Both implementations run on the same
inputs in the same process, alternating, and the median of several timed repetitions is
compared; results are checked equal first (loss and gradient). Also reported: GFLOP/s of the
kernel's matmul work (2 B C_g N S for the distances + T x 2 B C_g N S for the forces, N =
C_g + C_n + C_p) against the measured peak of a large square matmul on the same machine,
and peak memory (tracemalloc is blind to torch's allocator, so CPU peak memory is the
growth of the process's peak RSS, VmHWM reset through /proc/self/clear_refs, during one
forward+backward in a fresh subprocess per case).

    python benchmarks/bench_drift.py [--quick]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from reference_drift import reference_drift_loss  # noqa: E402

from drifting_platform.drift import drift_loss  # noqa: E402

SHAPES = [(8, 64, 16, 64, 256), (4, 256, 32, 256, 512), (1, 1024, 64, 1024, 512)]
TARGETS = {SHAPES[0]: 1.8, SHAPES[1]: 3.9, SHAPES[2]: 5.5}  # the JAX release's speed-up (XLA)
TEMPS = (0.02, 0.05, 0.2)


def _inputs(shape, device="cpu", dtype=torch.float32, seed=0):
    B, Cg, Cn, Cp, S = shape
    g = torch.Generator().manual_seed(seed)
    gen = torch.randn(B, Cg, S, generator=g)
    pos = torch.randn(B, Cp, S, generator=g) + 0.3
    neg = torch.randn(B, Cn, S, generator=g)
    wneg = torch.rand(B, Cn, generator=g)
    return [t.to(device=device, dtype=dtype) for t in (gen, pos, neg, wneg)]


def _step(fn, gen, pos, neg, wneg, temps=TEMPS):
    g = gen.detach().requires_grad_(True)
    loss, _ = fn(g, pos, neg, weight_neg=wneg, temperatures=temps)
    loss.sum().backward()
    return loss.detach(), g.grad


def _sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn, args, device, reps, min_time=0.2):
    """Median seconds of one forward+backward (each repetition loops for >= min_time)."""
    _step(fn, *args)
    _sync(device)
    t0 = time.perf_counter()
    _step(fn, *args)
    _sync(device)
    one = max(time.perf_counter() - t0, 1e-6)
    inner = max(1, int(min_time / one))
    out = []
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(inner):
            _step(fn, *args)
        _sync(device)
        out.append((time.perf_counter() - t0) / inner)
    return statistics.median(out)


def matmul_peak(device="cpu", n=2048, reps=5) -> float:
    """GFLOP/s of a large float32 square matmul (the machine's practical peak here)."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b
    best = 0.0
    for _ in range(reps):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return best


def matmul_flops(shape, n_temps=len(TEMPS)) -> float:
    B, Cg, Cn, Cp, S = shape
    N = Cg + Cn + Cp
    return 2.0 * B * Cg * N * S * (1 + n_temps)


def check_equal(shape, device="cpu", dtype=torch.float32) -> tuple[float, float]:
    """(max relative loss difference, max relative gradient difference) ours vs reference."""
    args = _inputs(shape, device, dtype)
    l1, g1 = _step(drift_loss, *args)
    l2, g2 = _step(reference_drift_loss, *args)
    rl = float((l1.float() - l2.float()).abs().max() / l2.float().abs().max())
    rg = float((g1.float() - g2.float()).abs().max() / g2.float().abs().max())
    return rl, rg


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _peak_rss_child(which: str, shape, temps) -> None:  # runs in a subprocess
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    args = _inputs(shape)
    fn = drift_loss if which == "ours" else reference_drift_loss
    _step(fn, *args, temps=temps)  # warm: lazy initialisation is not the kernel's memory
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS counter (VmHWM)
    before = _rss_kb("VmRSS")
    _step(fn, *args, temps=temps)
    print(json.dumps({"peak_mb": (_rss_kb("VmHWM") - before) / 1024.0}))


def peak_memory_mb(which: str, shape, temps) -> float:
    """Growth of peak RSS (MB) during one forward+backward, in a fresh process."""
    code = f"import sys; sys.path.insert(0, {str(HERE)!r}); import bench_drift as b; b._peak_rss_child({which!r}, {tuple(shape)!r}, {tuple(temps)!r})"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def run(quick: bool = False) -> list[dict]:
    threads = torch.get_num_threads()
    rows = []
    peak = matmul_peak()
    reps = 3 if quick else 7
    for shape in SHAPES:
        args = _inputs(shape)
        rl, rg = check_equal(shape)
        ref_s = _time(reference_drift_loss, args, "cpu", reps)
        our_s = _time(drift_loss, args, "cpu", reps)
        gflops = matmul_flops(shape) / our_s / 1e9
        rows.append({
            "benchmark": "drift loss fwd+bwd (CPU fp32)", "case": "x".join(map(str, shape)) + " T=3",
            "baseline": ref_s * 1e3, "ours": our_s * 1e3, "unit": "ms", "ratio": ref_s / our_s, "target": TARGETS[shape],
            "note": f"{gflops:.0f} GFLOP/s = {gflops / peak:.0%} of matmul peak {peak:.0f}; rel diff loss {rl:.1e} grad {rg:.1e}; {threads} threads",
        })
    # memory: must not grow with the number of temperatures
    shape = SHAPES[2]
    mem = {t: peak_memory_mb("ours", shape, TEMPS[:1] * t) for t in (1, 3, 6)}
    ref_mem = {t: peak_memory_mb("reference", shape, TEMPS[:1] * t) for t in (1, 6)}
    rows.append({
        "benchmark": "drift loss peak memory", "case": "x".join(map(str, shape)) + " T=1/3/6",
        "baseline": ref_mem[6], "ours": mem[6], "unit": "MB", "ratio": ref_mem[6] / max(mem[6], 1e-9), "target": None,
        "note": f"ours T=1 {mem[1]:.0f} MB, T=3 {mem[3]:.0f} MB, T=6 {mem[6]:.0f} MB; reference T=1 {ref_mem[1]:.0f} MB, T=6 {ref_mem[6]:.0f} MB",
    })
    if torch.cuda.is_available():
        gpeak = matmul_peak("cuda", n=8192)
        for shape in SHAPES:
            for dtype in (torch.float32, torch.bfloat16):
                args = _inputs(shape, "cuda", dtype)
                rl, rg = check_equal(shape, "cuda", dtype)
                ref_s = _time(reference_drift_loss, args, "cuda", reps)
                our_s = _time(drift_loss, args, "cuda", reps)
                rows.append({
                    "benchmark": f"drift loss fwd+bwd (GPU {str(dtype).split('.')[-1]} inputs)", "case": "x".join(map(str, shape)) + " T=3",
                    "baseline": ref_s * 1e3, "ours": our_s * 1e3, "unit": "ms", "ratio": ref_s / our_s, "target": None,
                    "note": f"{matmul_flops(shape) / our_s / 1e9:.0f} GFLOP/s of fp32 matmul peak {gpeak:.0f}; rel diff loss {rl:.1e} grad {rg:.1e}; {torch.cuda.get_device_name()}",
                })
    return rows


if __name__ == "__main__":
    from _common import main

    main(run)
