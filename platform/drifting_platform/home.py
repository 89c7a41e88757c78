"""The platform's home folder: `$DRIFTING_HOME`, default `~/.drifting_platform`.

    <home>/mlflow.db, mlartifacts/   the default tracking store (tracking/)
    <home>/sweeps/EXPERIMENT/...     sweep and trial directories (launch/)
    <home>/pretrain/NAME-HASH/       pre-training runs (launch/pretrain.py)
    <home>/reports/                  rendered tables (reports.py)

Always absolute: a Ray job runs in a temporary copy of the working directory, and a
relative path there would be lost with it. The one place that reads `DRIFTING_HOME`.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV = "DRIFTING_HOME"
# the repository's experiments/ folder (configs, sweep files, the paper's numbers); the
# package is installed from the repository in place (pip install -e), so it is beside it
EXPERIMENTS_DIR = Path(__file__).resolve().parents[2] / "experiments"
DEFAULT = "~/.drifting_platform"


def drifting_home(*, create: bool = True) -> Path:
    """`$DRIFTING_HOME` (default `~/.drifting_platform`), absolute; created unless `create=False`."""
    home = Path(os.environ.get(ENV) or DEFAULT).expanduser().resolve()
    if create:
        home.mkdir(parents=True, exist_ok=True)
    return home


def sweeps_root() -> Path:
    """`<home>/sweeps`: where sweeps put their trial directories (not created here)."""
    return drifting_home(create=False) / "sweeps"
