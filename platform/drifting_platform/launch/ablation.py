"""The `python experiments/ablate_*.py` entry point: one sweep file, then its report.

Each ablation script is its docstring plus `ablation_main(SWEEP, __doc__)`: it runs the
sweep (inside a Ray job on the job's cluster, otherwise on a local Ray), prints the table
with the paper's values beside, writes it as Markdown, CSV and a plot, and says where the
runs are. Exit status: 0, 1 when a trial failed, 2 for a bad sweep / config or an
unreachable tracking store (nothing started), 130 / 143 when SIGINT / SIGTERM stopped the
sweep (the runs KILLED, no report written; it prints the command that resumes), 75 when the
sweep finished with the tracking store unreachable (its writes kept; `--resume` writes them and the report).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from ..config import ConfigError
from ..reports import report_paths, write_report
from ..tracking import TrackingUnavailable, tracking_uri
from .sweep import EXIT_TRACKING_PENDING, SweepInterrupted, incomplete_message, resume_command, run_sweep


def ablation_main(sweep: Path, doc: str, argv: Optional[list[str]] = None) -> int:
    name = Path(sweep).stem
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="local", help=f"smoke | local (default) | any preset of {Path(sweep).name}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE", help="override for every row's config")
    parser.add_argument("--seeds", type=int, default=None, metavar="N", help="run every row N times, seeds base + 0..N-1; the table gives mean ± std (default: the sweep file's, 1)")
    parser.add_argument("--resume", action="store_true", help=f"continue the latest {name} sweep")
    parser.add_argument("--out", default=None, help="where the report files go (default ~/.drifting_platform/reports)")
    args = parser.parse_args(argv)
    try:
        result = run_sweep(sweep, preset=args.preset, overrides=args.overrides, resume=args.resume, seeds=args.seeds)
    except ConfigError as exc:
        print(f"bad sweep or config: {exc}", file=sys.stderr)
        return 2
    except TrackingUnavailable as exc:
        print(f"tracking store: {exc}", file=sys.stderr)
        return 2
    except SweepInterrupted as exc:
        print(str(exc), file=sys.stderr)
        print(f"resume with: {resume_command([sys.argv[0], *(sys.argv[1:] if argv is None else argv)], script=True)}", file=sys.stderr)
        return exc.exit_code
    if result.already_complete and not result.synced:
        print(f"sweep {result.experiment} ({result.sweep_dir}) is already complete: {result.counts()}; nothing to run")
        for kind, path in report_paths(result.experiment, args.out).items():
            if path.exists():
                print(f"{kind}: {path}")
        return 0
    if result.synced:
        print(f"sweep {result.experiment} ({result.sweep_dir}) is already complete: {result.counts()}; "
              f"wrote the {result.synced} tracking writes kept while the store was unreachable")
    if result.incomplete:  # the store is still unreachable: nothing lost, the report waits for it
        print(incomplete_message(result, resume_command([sys.argv[0], *(sys.argv[1:] if argv is None else argv)], script=True)), file=sys.stderr)
        return EXIT_TRACKING_PENDING
    report = write_report(result.experiment, args.out)
    print()
    print(report["table_markdown"])
    print()
    for kind, path in report["paths"].items():
        print(f"{kind}: {path}")
    print(f"trial directories: {result.sweep_dir}")
    print(f"MLflow store: {tracking_uri()}")
    print(f"open the MLflow UI:  .venv/bin/drifting-platform ui   (http://127.0.0.1:5000, experiment '{result.experiment}')")
    return 1 if any(t.status == "FAILED" for t in result.trials) else 0
