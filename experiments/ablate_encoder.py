#!/usr/bin/env python
"""The feature-encoder ablation (paper Table 3) in one command.

Pre-trains (or reuses, by config hash, from the MLflow model registry) SimCLR, MoCo-v2 and
MAE encoders at four widths (one with classifier fine-tuning) on digits at 32x32, then
trains a class-conditional generator in each encoder's feature space, plus pixel and random
CNN baselines, as one Ray Tune sweep tracked in MLflow (a parent run, one child per row,
each child naming its registered encoder version). Prints the FID table with the paper's
values beside and writes it as Markdown, CSV and a plot.

    python experiments/ablate_encoder.py                  # local preset, ~40 min on 2 CPUs
    python experiments/ablate_encoder.py --preset smoke   # ~2 min
    ray job submit --working-dir . -- python experiments/ablate_encoder.py --preset smoke

Inside a Ray job it uses the job's cluster; otherwise it starts Ray on this machine. The
runs go to $MLFLOW_TRACKING_URI when set, else to the platform's default store
(~/.drifting_platform/mlflow.db); `drifting-platform ui` opens it.
"""

from __future__ import annotations

import sys
from pathlib import Path

SWEEP = Path(__file__).resolve().parent / "encoder.yaml"


def main(argv: list[str] | None = None) -> int:
    from drifting_platform.launch.ablation import ablation_main

    return ablation_main(SWEEP, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
