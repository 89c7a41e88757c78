"""Atomic, resumable checkpoints.

A checkpoint is written to a temporary file in the same directory, flushed to disk and then
moved over the old one with `os.replace`, so a crash (or a full disk) at any moment leaves
either the previous checkpoint or the new one, never half of one. Loading uses
`weights_only=True`: a checkpoint is data, never code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "drifting-platform/checkpoint/v1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or not ours."""


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {"format": FORMAT, **state}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file, pickle of foreign objects, ...
        raise CheckpointError(f"{path}: cannot be read as a drifting-platform checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a drifting-platform checkpoint (format {state.get('format') if isinstance(state, dict) else type(state).__name__!r})")
    return state
