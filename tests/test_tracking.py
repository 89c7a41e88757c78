"""The tracking package against a real SQLite MLflow store in a temporary folder."""
from __future__ import annotations

import math
import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from helpers import REPO, free_port

from drifting_platform import tracking as T
from drifting_platform.home import drifting_home



@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One SQLite store per module (creating the schema takes seconds)."""
    root = tmp_path_factory.mktemp("mlstore")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tracker = T.SweepTracker("test-exp", uri=uri)
    tracker.experiment_id()  # creates the database and the experiment
    return {"uri": uri, "root": root, "db": root / "mlflow.db", "tracker": tracker}


def _trial_dir(tmp_path: Path, name: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    np.savez(d / "samples.npz", samples=np.zeros((4, 2), np.float32), labels=np.zeros(4, np.int64))
    (d / "samples.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    (d / "summary.json").write_text('{"fid": 1.0}')
    return d


def test_import_is_cheap():
    code = "import sys, drifting_platform.tracking, drifting_platform.reports; assert 'mlflow' not in sys.modules, 'mlflow imported'; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_default_uri_and_home(tmp_path, monkeypatch):
    monkeypatch.setenv("DRIFTING_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    home = drifting_home()
    assert home == (tmp_path / "home").resolve() and home.is_dir()
    assert T.tracking_uri() == f"sqlite:///{home / 'mlflow.db'}"
    assert T.tracking_uri().startswith("sqlite:////")  # absolute
    assert T.default_artifact_root() == home / "mlartifacts"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert T.tracking_uri() == "http://127.0.0.1:5999"
    assert T.default_artifact_root() is None
    assert T.SweepTracker("x").uri == "http://127.0.0.1:5999"
    assert T.default_artifact_root("sqlite:////data/x/m.db") == Path("/data/x/mlartifacts")


def test_sweep_parent_and_children(store, tmp_path):
    tr = store["tracker"]
    parent = tr.start_sweep("sweep-a", {"metric": "fid", "space": {"lr": [1, 2]}}, {"drifting.preset": "smoke"})
    children = []
    for i, name in enumerate(["row-a", "row-b", "row-c"]):
        cid = tr.start_trial(parent, name, {"train": {"lr": 0.1 * (i + 1), "steps": 5}, "model": {"style_tokens": 4}},
                             {"drifting.row": name, "drifting.trial_dir": str(tmp_path / name)})
        for step in range(5):
            n = tr.log_metrics(cid, {"loss": 1.0 / (step + 1) + i, "spread_ratio": 0.5 + step, "bad": float("nan"),
                                     "text": "x", "inf": math.inf, "np": np.float32(2.5)}, step)
            assert n == 3  # loss, spread_ratio, np; nan / inf / text skipped
        tr.log_metrics(cid, {"fid": 10.0 + i, "steps": 5, "seconds": 1.5}, 5)
        tdir = _trial_dir(tmp_path, name)
        logged = tr.log_artifacts(cid, [tdir / f for f in ("samples.npz", "samples.png", "summary.json")] + [tmp_path / "missing.npz"])
        assert logged == ["samples.npz", "samples.png", "summary.json"]
        tr.end_run(cid, "FINISHED")
        children.append(cid)
    tr.log_text(parent, "| a |\n", "table.md")
    tr.log_dict(parent, {"rows": 3}, "sweep.json")
    tr.end_run(parent)

    c = tr.client
    prun = c.get_run(parent)
    assert prun.data.tags["drifting.sweep"] == "true"
    assert prun.data.tags["drifting.sweep_name"] == "sweep-a"
    assert prun.data.tags["drifting.preset"] == "smoke"
    assert prun.data.params["space.lr"] == "[1, 2]"
    assert prun.info.status == "FINISHED" and prun.info.run_name == "sweep-a"
    assert {a.path for a in c.list_artifacts(parent)} == {"table.md", "sweep.json"}

    assert tr.find_latest_sweep().info.run_id == parent
    assert T.find_latest_sweep("test-exp", uri=store["uri"]).info.run_id == parent
    kids = T.child_runs(parent, uri=store["uri"])
    assert [k.info.run_id for k in kids] == children  # start order
    for i, k in enumerate(kids):
        assert k.data.tags["mlflow.parentRunId"] == parent
        assert k.info.run_name == ["row-a", "row-b", "row-c"][i]
        assert k.data.tags["drifting.row"] == k.info.run_name
        assert k.info.status == "FINISHED"
        assert k.data.params["train.lr"] == str(0.1 * (i + 1))
        assert k.data.params["model.style_tokens"] == "4"  # not taken for a credential
        assert k.data.metrics["fid"] == 10.0 + i
        hist = tr.metric_history(k.info.run_id, "loss")
        assert [s for s, _ in hist] == [0, 1, 2, 3, 4]  # no loss of points
        assert hist[-1][1] == pytest.approx(0.2 + i)
        assert len(tr.metric_history(k.info.run_id, "spread_ratio")) == 5
        assert "bad" not in k.data.metrics and "inf" not in k.data.metrics
        assert k.data.metrics["np"] == 2.5
        assert {a.path for a in c.list_artifacts(k.info.run_id)} == {"samples.npz", "samples.png", "summary.json"}
    # artifacts live next to the database, not in the cwd
    assert (store["root"] / "mlartifacts" / "test-exp").is_dir()


def test_sweep_tag_from_caller_and_resume(store):
    tr = T.SweepTracker(uri=store["uri"])  # no experiment: the sweep's name is the experiment
    pid = tr.start_sweep("other-exp", {"a": 1}, {"drifting.sweep": "smoke-20260101", "drifting.sweep_dir": "/x"})
    run = tr.get_run(pid)
    assert run.data.tags["drifting.sweep"] == "true"
    assert run.data.tags["drifting.sweep_name"] == "smoke-20260101"
    assert run.info.run_name == "smoke-20260101"
    tr.end_run(pid, "KILLED")
    # resume: same run, params re-logged (same and new keys; a changed value is not an error)
    again = tr.start_sweep("other-exp", {"a": 2, "b": 3}, resume_run_id=pid)
    assert again == pid
    run = tr.get_run(pid)
    assert run.info.status == "RUNNING" and run.data.params == {"a": "1", "b": "3"}
    assert T.find_latest_sweep("other-exp", uri=store["uri"]).info.run_id == pid
    assert T.find_latest_sweep("never-created", uri=store["uri"]) is None


def test_failed_run_error_tag(store):
    tr = store["tracker"]
    parent = tr.start_sweep("sweep-failed", {})
    cid = tr.start_trial(parent, "boom", {"x": 1})
    tr.log_metrics(cid, {"loss": 1.0}, 0)
    err = "Traceback (most recent call last):\n" + "  frame\n" * 2000 + "RuntimeError: diverged"
    tr.end_run(cid, "FAILED", err)
    run = tr.get_run(cid)
    assert run.info.status == "FAILED"
    tag = run.data.tags["drifting.error"]
    assert len(tag) <= T.MAX_ERROR_LENGTH and tag.endswith("RuntimeError: diverged")
    with pytest.raises(ValueError):
        tr.end_run(cid, "WHATEVER")
    tr.end_run(parent, "FAILED", "every trial failed")
    assert tr.get_run(parent).data.tags["drifting.error"] == "every trial failed"


def test_credentials_never_logged(store):
    tr = store["tracker"]
    rid = tr.start_sweep("sweep-secrets", {})
    params = {
        "data": {"s3": {"aws_access_key_id": "AKIAXXXX", "aws_secret_access_key": "s3cr3t", "endpoint": "http://u:pw@minio:9000/b",
                        "bucket": "shards"}},
        "hf_token": "hf_abc", "auth": {"password": "pw", "token": "t"}, "api_key": "k", "credentials": {"user": "u"},
        "model": {"style_tokens": 32, "register_tokens": 16}, "long": "x" * 10000,
    }
    logged = tr.log_params(rid, params)
    assert set(logged) == {"data.s3.endpoint", "data.s3.bucket", "model.style_tokens", "model.register_tokens", "long"}
    run = tr.get_run(rid)
    text = repr(run.data.params) + repr(run.data.tags)
    for secret in ("AKIAXXXX", "s3cr3t", "hf_abc", "pw@", "'pw'", "'t'", "'k'"):
        assert secret not in text
    assert run.data.params["data.s3.endpoint"] == "http://***@minio:9000/b"
    assert len(run.data.params["long"]) == T.MAX_PARAM_VAL_LENGTH
    tr.set_tags(rid, {"session_token": "zzz", "ok": "yes"})
    tags = tr.get_run(rid).data.tags
    assert "session_token" not in tags and tags["ok"] == "yes"
    tr.end_run(rid)


def test_write_waits_out_a_real_lock(store):
    """Another connection holds an exclusive SQLite transaction for ~1 s; the write succeeds after."""
    tr = store["tracker"]
    rid = tr.start_sweep("sweep-lock", {})
    conn = sqlite3.connect(store["db"], timeout=10, isolation_level=None, check_same_thread=False)
    conn.execute("BEGIN EXCLUSIVE")
    released = threading.Event()

    def release():
        time.sleep(1.0)
        conn.execute("COMMIT")
        conn.close()
        released.set()

    t = threading.Thread(target=release)
    t0 = time.monotonic()
    t.start()
    try:
        tr.log_metrics(rid, {"loss": 0.5}, 7)
        tr.end_run(rid)
    finally:
        t.join()
    assert released.is_set() and time.monotonic() - t0 >= 0.9
    assert tr.metric_history(rid, "loss") == [(7, 0.5)]
    assert tr.get_run(rid).info.status == "FINISHED"


def test_log_metrics_retries_mlflow_lock_errors(store, monkeypatch):
    """MLflow surfaces an exhausted SQLite busy-wait as an MlflowException: the tracker retries it."""
    from mlflow.exceptions import MlflowException

    tr = T.SweepTracker("test-exp", uri=store["uri"])
    rid = tr.start_sweep("sweep-flaky", {})
    real, calls = tr.client.log_batch, []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) <= 2:
            raise MlflowException("(sqlite3.OperationalError) database is locked")
        return real(*args, **kwargs)

    monkeypatch.setattr(tr.client, "log_batch", flaky)
    assert tr.log_metrics(rid, {"loss": 1.5}, 3) == 1
    assert len(calls) == 3 and tr.metric_history(rid, "loss") == [(3, 1.5)]
    tr.end_run(rid)


def test_with_retry_backoff():
    calls = []

    def flaky():
        calls.append(time.monotonic())
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return "ok"

    assert T.with_retry(flaky, delays=(0.01, 0.02, 0.04)) == "ok" and len(calls) == 3

    def always_locked():
        raise RuntimeError("database is locked")

    with pytest.raises(RuntimeError):
        T.with_retry(always_locked, delays=(0.01, 0.01))

    other = []

    def broken():
        other.append(1)
        raise ValueError("no such table")

    with pytest.raises(ValueError):
        T.with_retry(broken, delays=(0.01, 0.01))
    assert other == [1]  # other errors are not retried
    assert sum(T.store._RETRY_DELAYS) <= 5.0


def test_track_run(store, tmp_path):
    run_id, report, finish = T.track_run("train-exp", "toy-run", {"train": {"steps": 3}, "s3": {"secret_key": "x"}}, uri=store["uri"])
    for s in range(3):
        report(s, {"loss": 1.0 - 0.1 * s, "lr": 1e-3})
    run_dir = _trial_dir(tmp_path, "run")
    (run_dir / "checkpoint.pt").write_bytes(b"0" * 10)
    finish({"mmd": 0.01, "modes_covered": 8, "steps": 3, "seconds": 2.0, "name": "x"}, run_dir)
    tr = T.SweepTracker("train-exp", uri=store["uri"])
    run = tr.get_run(run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "toy-run"
    assert run.data.params == {"train.steps": "3"}
    assert run.data.metrics["mmd"] == 0.01 and run.data.metrics["modes_covered"] == 8
    assert len(tr.metric_history(run_id, "loss")) == 3
    arts = {a.path for a in tr.client.list_artifacts(run_id)}
    assert arts == {"samples.npz", "samples.png", "summary.json"}  # no checkpoint


def test_ui_command_defaults(tmp_path, monkeypatch):
    monkeypatch.setenv("DRIFTING_HOME", str(tmp_path))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cmd = T.ui_command(port=5123)
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "ui"]
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and cmd[cmd.index("--port") + 1] == "5123"
    assert cmd[cmd.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    assert cmd[cmd.index("--default-artifact-root") + 1] == (tmp_path.resolve() / "mlartifacts").as_uri()
    assert "--default-artifact-root" not in T.ui_command(uri="http://127.0.0.1:1")


def test_serve_ui_answers_on_localhost(store, tmp_path):
    port = free_port()
    proc = T.serve_ui(port=port, uri=store["uri"], log_path=tmp_path / "ui.log")
    try:
        assert T.wait_for_ui(f"http://127.0.0.1:{port}/", timeout=40, proc=proc), (tmp_path / "ui.log").read_text()[-3000:]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            assert resp.status == 200
        with pytest.raises(OSError):  # bound to 127.0.0.1 only
            host_ip = socket.gethostbyname(socket.gethostname())
            if host_ip.startswith("127."):
                raise OSError("no other interface to try")
            socket.create_connection((host_ip, port), timeout=1).close()
        proc.terminate()  # what a CLI does on Ctrl-C: stops the whole process group
        proc.wait(timeout=15)
    finally:
        T.stop_ui(proc)
    assert proc.poll() is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the uvicorn server went with it
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("MLflow UI processes outlived terminate()")
    with pytest.raises(OSError):  # nothing listens any more
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_import_registers_the_encoder_source_resolvers():
    from drifting_platform import encoder_artifact as A

    assert A._RESOLVERS["models:/"] is T.download_encoder and A._RESOLVERS["runs:/"] is T.download_encoder


def test_downloading_a_registered_encoder_prints_no_progress_bar(isolated_home, tmp_path, monkeypatch, capfd):
    """A sweep's every trial may fetch its pinned encoder: no "Downloading artifacts" bars."""
    import json

    import mlflow
    from mlflow import MlflowClient

    from drifting_platform.encoder_artifact import META_FILE
    from drifting_platform.tracking.registry import download_encoder

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    uri = os.environ["MLFLOW_TRACKING_URI"]
    src = tmp_path / "enc"
    src.mkdir()
    (src / META_FILE).write_text(json.dumps({"name": "probe"}))
    (src / "weights.bin").write_bytes(os.urandom(1 << 16))
    mlflow.set_tracking_uri(uri)
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(src), "encoder")
    client = MlflowClient(uri)
    client.create_registered_model("probe")
    client.create_model_version("probe", source=f"runs:/{run.info.run_id}/encoder", run_id=run.info.run_id)
    capfd.readouterr()
    got = download_encoder("models:/probe/1", uri=uri)
    out, err = capfd.readouterr()
    assert (got / "weights.bin").read_bytes() == (src / "weights.bin").read_bytes()
    assert "Downloading artifacts" not in out + err
