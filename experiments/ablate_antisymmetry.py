#!/usr/bin/env python
"""The anti-symmetry ablation (paper Table 1) in one command.

Trains class-conditional digits with the drifting field V = a V+ - r V- for the paper's six
rows (V+ - V-, 1.5 V+ - V-, V+ - 1.5 V-, 2 V+ - V-, V+ - 2 V-, V+ only) as one Ray Tune
sweep tracked in MLflow (a parent run, one child per row), then prints the FID table with
the paper's values beside and writes it as Markdown, CSV and a plot.

    python experiments/ablate_antisymmetry.py                  # local preset, ~12 min on 2 CPUs
    python experiments/ablate_antisymmetry.py --preset smoke   # seconds per row
    ray job submit --working-dir . -- python experiments/ablate_antisymmetry.py --preset smoke

Inside a Ray job it uses the job's cluster; otherwise it starts Ray on this machine. The
runs go to $MLFLOW_TRACKING_URI when set, else to the platform's default store
(~/.drifting_platform/mlflow.db); `drifting-platform ui` opens it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SWEEP = Path(__file__).resolve().parent / "antisymmetry.yaml"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="local", help="smoke | local (default) | any preset of antisymmetry.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help="override for every row's config")
    parser.add_argument("--resume", action="store_true", help="continue the latest antisymmetry sweep")
    parser.add_argument("--out", default=None, help="where the report files go (default ~/.drifting_platform/reports)")
    args = parser.parse_args(argv)

    from drifting_platform.config import ConfigError
    from drifting_platform.launch.sweep import run_sweep
    from drifting_platform.reports import write_report
    from drifting_platform.tracking import TrackingUnavailable, tracking_uri

    try:
        result = run_sweep(SWEEP, preset=args.preset, overrides=args.overrides, resume=args.resume)
    except ConfigError as exc:
        print(f"bad sweep or config: {exc}", file=sys.stderr)
        return 2
    except TrackingUnavailable as exc:
        print(f"tracking store: {exc}", file=sys.stderr)
        return 2
    report = write_report(result.experiment, args.out)
    print()
    print(report["table_markdown"])
    print()
    for kind, path in report["paths"].items():
        print(f"{kind}: {path}")
    print(f"trial directories: {result.sweep_dir}")
    print(f"MLflow store: {tracking_uri()}")
    print("open the MLflow UI:  .venv/bin/drifting-platform ui   (http://127.0.0.1:5000, experiment 'antisymmetry')")
    failed = [t for t in result.trials if t.status == "FAILED"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
