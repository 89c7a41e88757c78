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

from ..rundir import CHECKPOINT

FORMAT = "drifting-platform/checkpoint/v1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt or not ours."""


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, quota, permissions); the previous one
    at the same path is untouched."""


def _os_error_in(exc: BaseException) -> "OSError | None":
    """The OSError behind `exc` (itself, or along its cause / context chain), if any."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError):
            return exc
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return None


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` atomically to `path`; on failure the file there stays as it was."""
    path = Path(path)
    state = {"format": FORMAT, **state}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        # torch.save reports a failed write as RuntimeError("... file write failed"): the
        # OS error (ENOSPC, EDQUOT, EFBIG) is what the user needs to see
        os_error = _os_error_in(exc)
        if os_error is not None:
            what = os_error.strerror or str(os_error)
            kept = "the previous checkpoint there is unchanged" if path.exists() else "no earlier checkpoint existed"
            err = CheckpointWriteError(f"{path}: the checkpoint could not be written ({what}); {kept}")
            err.errno = getattr(os_error, "errno", None)
            raise err from exc
        raise
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint here")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt file, pickle of foreign objects, ...
        raise CheckpointError(f"{path}: cannot be read as a drifting-platform checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a drifting-platform checkpoint (format {state.get('format') if isinstance(state, dict) else type(state).__name__!r})")
    return state
