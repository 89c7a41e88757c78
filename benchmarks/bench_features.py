"""Feature bank (issue 6 item 2): training steps/s with the data features banked vs re-encoded.

What is measured: the real training loop (`training_loop`, digits at 32x32, class-conditional
with CFG, 10 classes x 16 generated / 16 positive + 8 unconditional samples per step: the
encoder ablation's local setting) from the same seed with `train.feature_bank=false`
(positives and unconditional negatives go through the frozen encoder every step) and with
`train.feature_bank=true` (their features are computed once before the first step and
indexed per step). Steps/s is the loop's own `steps_per_sec` of each log window
(metrics.jsonl); the first window (warm-up) is dropped. Each setting runs twice, in the
order off, on, on, off (this machine's speed drifts between runs), and the median over both
runs' windows is reported. Bank build time is outside the step rate and reported in the
note. Runs with and without the bank must end with the same generator (checked with
torch.testing.assert_close; the largest difference is reported).

Encoders: the MAE-w32 architecture of the encoder ablation (a ResNet, widths 32/64/128,
GroupNorm; its weights are a seeded random init written to a temporary directory: the cost
of a forward pass does not depend on the weights' values, and no registry is needed) and
the ablation's random CNN (widths 32/64, first stage at stride 2). One torch thread, as the
ablation's trials run. Without `quick`, a short profile of one step's parts (encoder on
the data samples, on the generated samples, the drift loss, the generator) explains the
ratio (Amdahl: the bank removes only the data samples' encoder passes).

    python benchmarks/bench_features.py [--quick]
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "experiments" / "configs" / "digits.yaml"
THREADS = 1
SAMPLING = ["sampling.n_classes=10", "sampling.n_gen=16", "sampling.n_pos=16", "sampling.n_unc=8"]


def write_mae_encoder(out: Path, widths=(32, 64, 128), seed: int = 0) -> Path:
    """A local encoder directory (encoder.json + weights.pt) with the MAE-w32 architecture
    for 32x32 digits: what `pretrain_loop` writes, with seeded random weights."""
    from drifting_platform.encoders.backbone import ResNetBackbone
    from drifting_platform.encoder_artifact import ENCODER_FORMAT

    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        backbone = ResNetBackbone(2, widths, blocks=1, stem_stride=2)  # 1 image + 1 mask channel
    torch.save(backbone.state_dict(), out / "weights.pt")
    meta = {"format": ENCODER_FORMAT, "name": "bench-mae", "objective": "mae", "backbone": backbone.spec, "input_shape": [1, 32, 32], "mask_channel": True}
    (out / "encoder.json").write_text(json.dumps(meta) + "\n")
    return out


def _config(encoder: list[str], *, steps: int, log_every: int, bank: bool):
    from drifting_platform.config import load_config

    return load_config(CONFIG, "local", [
        "data.size=32", *encoder, *SAMPLING, f"train.steps={steps}", f"train.log_every={log_every}", "train.ckpt_every=0",
        "train.warmup_steps=2", f"train.threads={THREADS}", "train.eval_every=0", f"train.feature_bank={'true' if bank else 'false'}",
    ])


def _windows(run_dir: Path) -> list[float]:
    rates = [json.loads(line)["steps_per_sec"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return rates[1:] if len(rates) > 1 else rates  # the first window is warm-up


def _train(cfg, run_dir: Path) -> tuple[list[float], dict, dict]:
    from drifting_platform.train import training_loop
    from drifting_platform.train.checkpoint import load_checkpoint

    summary = training_loop(cfg, run_dir, progress=False, evaluate=False, resume=False)
    return _windows(run_dir), summary, load_checkpoint(run_dir / "checkpoint.pt")["generator"]


def _max_diff(a: dict, b: dict, what: str = "feature bank", rtol: float = 1e-5, atol: float = 1e-6) -> float:
    for k in a:  # raises when they differ beyond float tolerance
        torch.testing.assert_close(a[k], b[k], rtol=rtol, atol=atol, msg=f"{what} changed generator parameter {k}")
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _profile(cfg, reps: int = 3) -> dict:
    """Milliseconds of one step's parts (median of `reps`), outside the loop."""
    from drifting_platform.train.loop import build_components
    from drifting_platform.train.objective import group_drift_loss

    ds, enc, gen = build_components(cfg)
    s = cfg.sampling
    n = s.n_classes
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n * s.n_gen, gen.noise_dim, generator=g)
    labels = torch.arange(n).repeat_interleave(s.n_gen)
    alpha = torch.full((n * s.n_gen,), 1.5)
    x_pos, x_unc = ds.x[: n * s.n_pos], ds.x[-s.n_unc :]
    with torch.no_grad():
        pos_f, unc_f = enc(x_pos), enc(x_unc)
        x_fixed = gen(z, labels, alpha)

    def data_encode():
        with torch.no_grad():
            enc(x_pos), enc(x_unc)

    def gen_encode():
        x = x_fixed.clone().requires_grad_(True)
        sum(v.float().sum() for v in enc(x).values()).backward()

    def drift():
        with torch.no_grad():
            f = enc(x_fixed)
        f = {k: v.float().requires_grad_(True) for k, v in f.items()}
        loss, _ = group_drift_loss(f, pos_f, unc_f, n_groups=n, unc_weight=torch.ones(n), temperatures=cfg.drift.temperatures)
        loss.backward()

    def generator():
        gen(z, labels, alpha).sum().backward()

    out = {}
    for name, fn in (("encoder on data samples", data_encode), ("encoder fwd+bwd on generated", gen_encode), ("drift loss fwd+bwd", drift), ("generator fwd+bwd", generator)):
        fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        out[name] = statistics.median(ts) * 1e3
    return out


def run(quick: bool = False) -> list[dict]:
    threads_before = torch.get_num_threads()
    steps, log_every = (12, 4) if quick else (16, 4)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        tmp = Path(tmp)
        mae = write_mae_encoder(tmp / "mae-w32")
        cases = [("MAE-w32 encoder (ResNet 32/64/128, GroupNorm)", ["encoder.name=mae", f"encoder.source={mae}", "encoder.kwargs={}"])]
        if not quick:
            cases.append(("random CNN encoder (32/64, first stride 2)", ["encoder.name=random_cnn", "encoder.kwargs={widths: [32, 64], first_stride: 2}"]))
        try:
            for i, (label, enc) in enumerate(cases):
                # off, on, on, off (without quick): the machine's speed drifts between runs, so
                # each setting's windows are pooled over runs placed symmetrically in time
                order = [False, True] if quick else [False, True, True, False]
                windows: dict[bool, list[float]] = {False: [], True: []}
                weights: dict[bool, dict] = {}
                for j, bank in enumerate(order):
                    got, summ, w = _train(_config(enc, steps=steps, log_every=log_every, bank=bank), tmp / f"{i}-{j}-{bank}")
                    windows[bank] += got
                    weights.setdefault(bank, w)
                    if bank:
                        summary = summ
                off_rate, on_rate = statistics.median(windows[False]), statistics.median(windows[True])
                diff = _max_diff(weights[True], weights[False])
                fb = summary["feature_bank"]
                saved_ms = 1e3 / off_rate - 1e3 / on_rate
                pays = (f"pays off after ~{fb['build_seconds'] * 1e3 / saved_ms:.0f} steps" if saved_ms > 0.5
                        else "no step time saved in this run, within the noise")
                note = (
                    f"same results: max |param diff| {diff:.1e} after {steps} steps; bank {fb['megabytes']:.0f} MB built in "
                    f"{fb['build_seconds']:.2f} s ({pays}); "
                    f"step {1e3 / off_rate:.0f} -> {1e3 / on_rate:.0f} ms (median of {len(windows[False])} / {len(windows[True])} windows "
                    f"of {log_every} steps over {len(order) // 2} run(s) each); {THREADS} thread"
                )
                if not quick:
                    prof = _profile(_config(enc, steps=steps, log_every=log_every, bank=False))
                    total = sum(prof.values())
                    note += "; step profile: " + ", ".join(f"{k} {v:.0f} ms ({v / total:.0%})" for k, v in prof.items())
                rows.append({
                    "benchmark": "feature bank (train steps/s)",
                    "case": f"digits 32x32 CFG, 10x(16 gen + 16 pos) + 8 unc, {label}",
                    "baseline": off_rate, "ours": on_rate, "unit": "steps/s", "ratio": on_rate / off_rate, "target": 1.3, "note": note,
                })
            if not quick:
                rows.append(_channels_last_row(tmp, steps=steps, log_every=log_every))
        finally:
            torch.set_num_threads(threads_before)
    return rows


def _channels_last_row(tmp: Path, *, steps: int, log_every: int) -> dict:
    """`train.channels_last` off vs on (the default) on the demo's setting: digits 8x8, the
    local preset (10 x (32 gen + 32 pos) + 16 unc, random CNN), one thread; runs in the order
    off, on, on, off as above, and the generators of both layouts must agree."""
    from drifting_platform.config import load_config

    windows: dict[bool, list[float]] = {False: [], True: []}
    weights: dict[bool, dict] = {}
    for j, cl in enumerate([False, True, True, False]):
        cfg = load_config(CONFIG, "local", [
            f"train.steps={steps}", f"train.log_every={log_every}", "train.ckpt_every=0", "train.warmup_steps=2",
            f"train.threads={THREADS}", "train.eval_every=0", f"train.channels_last={'true' if cl else 'false'}",
        ])
        got, _, w = _train(cfg, tmp / f"cl-{j}-{cl}")
        windows[cl] += got
        weights.setdefault(cl, w)
    diff = _max_diff(weights[True], weights[False], "channels_last", rtol=1e-4, atol=1e-5)
    off_rate, on_rate = statistics.median(windows[False]), statistics.median(windows[True])
    return {
        "benchmark": "channels-last convolutions (train steps/s)",
        "case": "digits 8x8 local preset (make demo's trials), random CNN, 1 thread",
        "baseline": off_rate, "ours": on_rate, "unit": "steps/s", "ratio": on_rate / off_rate, "target": 1.05,
        "note": f"same results up to rounding: max |param diff| {diff:.1e} after {steps} steps; step {1e3 / off_rate:.0f} -> {1e3 / on_rate:.0f} ms",
    }


if __name__ == "__main__":
    from _common import main

    main(run)
