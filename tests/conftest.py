"""Fixtures shared by the test files (plain values and functions: helpers.py)."""

import importlib.util
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import pytest

from helpers import S3_KEY_ID, S3_SECRET, free_port


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


# --------------------------------------------------------------------------- S3 on loopback


@pytest.fixture(scope="module")
def moto_server(tmp_path_factory):
    """`python -m moto.server` on a free port of 127.0.0.1; yields its endpoint URL."""
    # moto runs only as a server process: importing it would install its botocore hooks
    if importlib.util.find_spec("moto") is None or importlib.util.find_spec("boto3") is None:
        pytest.skip("needs moto[server] and boto3")
    port = free_port()
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}:\n{log_path.read_text()}")
        try:
            urllib.request.urlopen(endpoint + "/", timeout=1).close()
            break
        except urllib.error.HTTPError:
            break  # it answers HTTP: up
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"moto server did not answer on {endpoint}:\n{log_path.read_text()}")
            time.sleep(0.2)
    yield endpoint
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def s3(moto_server, tmp_path_factory):
    """AWS environment pointing at the moto server (restored after the module) and a bucket."""
    with pytest.MonkeyPatch.context() as mp:
        for name in ("AWS_ENDPOINT_URL_S3", "MLFLOW_S3_ENDPOINT_URL", "AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_REGION",
                     "DRIFTING_ARTIFACT_ROOT", "RAY_ADDRESS"):
            mp.delenv(name, raising=False)
        none = tmp_path_factory.mktemp("aws") / "none"
        mp.setenv("AWS_CONFIG_FILE", str(none))  # nothing from ~/.aws
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(none))
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        mp.setenv("AWS_ACCESS_KEY_ID", S3_KEY_ID)
        mp.setenv("AWS_SECRET_ACCESS_KEY", S3_SECRET)
        mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
        mp.setenv("AWS_ENDPOINT_URL", moto_server)
        bucket = f"drifting-{uuid.uuid4().hex[:12]}"
        from drifting_platform import storage

        client = storage.boto3_client()
        client.create_bucket(Bucket=bucket)
        yield {"endpoint": moto_server, "bucket": bucket, "client": client, "mp": mp}
