"""Every file name of a run directory and of a sweep's trial directory, and their JSON I/O.

A run directory (`drifting-platform train --out DIR`, `pretrain --out DIR`, one Tune trial):

    checkpoint.pt     the last good state (train/checkpoint.py writes it atomically)
    diverged.pt       the state at a non-finite step, for a post-mortem (never resumed)
    metrics.jsonl     one JSON object per logged step: {"step": N, "loss": ..., ...}
    summary.json      the final metrics; its presence means "finished"
    samples.npz       evaluation samples (`samples` float32, `labels` int64)
    samples.png       a grid of them
    encoder/          pretrain only: encoder.json + weights.pt (encoder_artifact.py)

A trial directory is a run directory plus the sweep's markers:

    trial.json        {"label", "params", "config"}: which trial this directory is
    fatal.json        {"error"}: a deterministic failure, so Tune's retry fails at once
    stopped.json      {"step"}: stopped early by the scheduler; done, never resumed

This module is pure standard library: every layer (loops, launchers, tracking) may use it.
"""

from __future__ import annotations

import json
import math
import os
import re
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional

CHECKPOINT = "checkpoint.pt"
DIVERGED = "diverged.pt"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
SAMPLES = "samples.npz"
GRID = "samples.png"
TRIAL = "trial.json"
FATAL = "fatal.json"
STOPPED = "stopped.json"


def _finite(obj: Any, where: str, bad: list) -> Any:
    """`obj` with every NaN / infinite float replaced by None (their key paths go to `bad`)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        bad.append(where or "(top level)")
        return None
    if isinstance(obj, Mapping):
        return {k: _finite(v, f"{where}.{k}" if where else str(k), bad) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v, f"{where}[{i}]", bad) for i, v in enumerate(obj)]
    return obj


def write_json(path: str | Path, obj: Any, *, indent: Optional[int] = 2) -> Path:
    """Write `obj` as strict JSON atomically (a temporary file, then `os.replace`).

    JSON has no NaN or Infinity: such floats (a metric of a diverged trial, say) are written
    as null, with a RuntimeWarning naming their keys, so every file here parses with any
    JSON reader."""
    path = Path(path)
    bad: list[str] = []
    obj = _finite(obj, "", bad)
    if bad:
        warnings.warn(f"{path}: non-finite values written as null: {', '.join(bad)}", RuntimeWarning, stacklevel=2)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=indent, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)
    return path


def read_json(path: str | Path, default: Any = None) -> Any:
    """The JSON object at `path`, or `default` when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return default
    return json.loads(path.read_text())


def read_metrics(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(step, the rest of the record) for every readable line of a metrics.jsonl, in file
    order; nothing when the file does not exist. A line cut by a crash is skipped."""
    path = Path(path)
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        yield int(rec.pop("step", 0)), rec


def numeric(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The entries of `metrics` that are numbers (bools and nested values left out), as floats."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def slug(text: str, *, keep: str = "_.-", strip: str = "", limit: Optional[int] = None, default: str = "_") -> str:
    """`text` as a file or experiment name: each run of characters other than letters,
    digits and `keep` becomes "_"; then `strip` is stripped from both ends, the result cut to
    `limit` characters, and `default` returned for an empty result."""
    s = re.sub(f"[^A-Za-z0-9{re.escape(keep)}]+", "_", str(text)).strip(strip)
    return s[:limit] or default
