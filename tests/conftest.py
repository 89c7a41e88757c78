import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "experiments" / "configs"


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    # platform caches (the digits classifier) go to a per-session folder unless the user set one
    if "DRIFTING_CACHE_DIR" not in os.environ:
        os.environ["DRIFTING_CACHE_DIR"] = str(tmp_path_factory.mktemp("drifting-cache"))
    yield
