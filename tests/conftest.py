"""Fixtures shared by the test files (plain values and functions: helpers.py)."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    # platform caches (the digits classifier) go to a per-session folder unless the user set one
    if "DRIFTING_CACHE_DIR" not in os.environ:
        os.environ["DRIFTING_CACHE_DIR"] = str(tmp_path_factory.mktemp("drifting-cache"))
    yield


@pytest.fixture
def isolated_home(tmp_path, monkeypatch):
    """A fresh `DRIFTING_HOME` (tmp_path/home) and SQLite tracking store (tmp_path/mlflow.db)
    for one test: nothing it records reaches the user's ~/.drifting_platform."""
    monkeypatch.setenv("DRIFTING_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    return tmp_path / "home"
