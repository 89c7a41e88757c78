"""What several test files share: the repository root, golden files, free ports.

Fixtures shared by many files live in conftest.py; plain values and functions live here
(`from helpers import REPO, golden_path, free_port`).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"

# the golden files small enough to ship with the tests: the drift loss and the two generator
# cases of the release (1.6 MB); the two Latent-MAE cases (27 MB of weights) are read from the
# shared golden folder beside the repository, or from $DRIFTING_GOLDEN_DIR
VENDORED_GOLDEN = Path(__file__).resolve().parent / "data" / "golden"


def shared_golden_dir() -> Path:
    """$DRIFTING_GOLDEN_DIR, else the `shared/golden` folder beside the repository."""
    root = os.environ.get("DRIFTING_GOLDEN_DIR")
    return Path(root) if root else REPO.parent / "shared" / "golden"


def golden_path(relative: str) -> Path:
    """A golden file or folder: the copy under tests/data/golden when it is vendored there,
    else the one in `shared_golden_dir()` (which may not exist on a fresh clone)."""
    vendored = VENDORED_GOLDEN / relative
    return vendored if vendored.exists() else shared_golden_dir() / relative


# the dummy AWS credentials of the S3 tests (conftest's `s3` fixture): chosen so that a search
# for them in params, tags, artifacts, Ray's storage and logs is meaningful
S3_KEY_ID = "testing-key-id-123"
S3_SECRET = "testing-secret-XYZ"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
