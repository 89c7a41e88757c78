"""What every benchmark module's command line does: `--quick`, then one JSON row per line."""

from __future__ import annotations

import argparse
import json


def main(run) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true", help="short runs (smoke); not the numbers to report")
    a = p.parse_args()
    for r in run(a.quick):
        print(json.dumps(r))
