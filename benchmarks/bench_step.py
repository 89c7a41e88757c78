"""The training step's profile (issue 17 item 2), on the CPU, scaled down from the paper's.

The paper's step: ``release-b/2`` on 4x32x32 latents, a release Latent-MAE (base 256, layers
3-4-6-3), 64 classes x 64 generated / 64 positives + 16 unconditional, bf16 autocast. Here the
same code path (``gpu_check.step_profile``, what ``benchmarks/gpu_check.py`` runs on a GPU)
at a size two CPU cores finish in seconds: ``release-s/2`` on 4x16x16 latents, a release MAE
of base 32 with one block per stage, 4 classes x 16 generated / 16 positives + 4
unconditional, in float32 (how a CPU trains; without bf16 matrix units a CPU emulates bf16
matmuls, several times slower, so bf16 here would profile the emulation). Each part is
timed alone (median of the repetitions after one warm-up): the encoder on the data samples
(no gradient), the generator's forward and backward, the encoder's forward and backward on
the generated samples, the drift loss's forward and backward on their features. The shares say where a step's time goes; absolute times on the
CPU say nothing about a GPU.

    python benchmarks/bench_step.py [--quick]
"""

from __future__ import annotations

import torch

CASE = dict(n_classes=4, n_gen=16, n_pos=16, n_unc=4, generator="release-s/2",
            mae=dict(base_channels=32, layers=[1, 1, 1, 1]), shape=(4, 16, 16))


def run(quick: bool = False) -> list[dict]:
    from gpu_check import step_profile

    row = step_profile(torch.device("cpu"), **CASE, steps=2 if quick else 5, bf16=False)
    parts = ", ".join(f"{k} {v:.0f} ms ({row['share'][k]:.0%})" for k, v in row["ms"].items())
    b = row["batch"]
    case = (f"{row['generator']} 4x16x16, release MAE base 32 [1,1,1,1] ({row['feature_sets']} feature sets), "
            f"{b['n_classes']} classes x {b['n_gen']} gen / {b['n_pos']} pos + {b['n_unc']} unc, float32, CPU")
    return [{
        "benchmark": "step profile (CPU, scaled down)", "case": case, "baseline": None, "ours": row["ms_total"],
        "unit": "ms", "ratio": None, "target": None,
        "note": f"parts: {parts}; the paper-scale profile is gpu_check.py's step_profile_bf16 row (bf16, release-b/2, 64 classes)",
    }]


if __name__ == "__main__":
    from _common import main

    main(run)
