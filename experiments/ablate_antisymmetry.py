#!/usr/bin/env python
"""The anti-symmetry ablation (paper Table 1) in one command.

Trains class-conditional digits with the drifting field V = a V+ - r V- for the paper's six
rows (V+ - V-, 1.5 V+ - V-, V+ - 1.5 V-, 2 V+ - V-, V+ - 2 V-, V+ only) as one Ray Tune
sweep tracked in MLflow (a parent run, one child per row), then prints the FID table with
the paper's values beside and writes it as Markdown, CSV and a plot.

    python experiments/ablate_antisymmetry.py                  # local preset: 3 seeds, ~50 min on 2 CPUs
    python experiments/ablate_antisymmetry.py --seeds 1        # one seed (make demo), ~12 min
    python experiments/ablate_antisymmetry.py --preset smoke   # seconds per row
    ray job submit --working-dir . -- python experiments/ablate_antisymmetry.py --preset smoke

Inside a Ray job it uses the job's cluster; otherwise it starts Ray on this machine. The
runs go to $MLFLOW_TRACKING_URI when set, else to the platform's default store
(~/.drifting_platform/mlflow.db); `drifting-platform ui` opens it.
"""

from __future__ import annotations

import sys
from pathlib import Path

SWEEP = Path(__file__).resolve().parent / "antisymmetry.yaml"


def main(argv: list[str] | None = None) -> int:
    from drifting_platform.launch.ablation import ablation_main

    return ablation_main(SWEEP, __doc__, argv)


if __name__ == "__main__":
    sys.exit(main())
