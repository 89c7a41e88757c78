"""S3-compatible storage against a real S3 server: moto's server mode in a subprocess on 127.0.0.1.

Nothing here mocks boto3 or pyarrow: every read and write is an HTTP request to the moto
server, through `drifting_platform.storage` (pyarrow's S3FileSystem for shards and Ray
Train, boto3 inside MLflow). The AWS credentials are dummy values chosen so that a search for
them in params, tags, artifacts, Ray's storage and the logs is meaningful.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
from pathlib import Path

import pytest
import torch

from helpers import CONFIGS
from helpers import S3_KEY_ID, S3_SECRET, free_port

from drifting_platform import storage
from drifting_platform.data import build_dataset, read_shards, write_shards
from drifting_platform.data.shards import resolve_shard_paths

# moto runs only as a server process: importing it here would install its botocore hooks
if importlib.util.find_spec("moto") is None or importlib.util.find_spec("boto3") is None:
    pytest.skip("needs moto[server] and boto3", allow_module_level=True)

# the moto server and the AWS environment (fixtures `moto_server`, `s3`) are in conftest.py
KEY_ID, SECRET = S3_KEY_ID, S3_SECRET
CLI = str(Path(sys.executable).parent / "drifting-platform")


def _keys(s3, prefix: str = "") -> list[str]:
    out, token = [], None
    while True:
        kw = {"Bucket": s3["bucket"], "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        page = s3["client"].list_objects_v2(**kw)
        out += [o["Key"] for o in page.get("Contents", [])]
        token = page.get("NextContinuationToken")
        if not token:
            return out


@pytest.fixture(scope="module")
def digits(s3, tmp_path_factory):
    """digits (8x8) written as shards to S3 and to a local folder."""
    ds = build_dataset("digits", size=8)
    local = tmp_path_factory.mktemp("digits-shards")
    write_shards(ds, local, shard_size=700)
    uri = f"s3://{s3['bucket']}/digits"
    written = write_shards(ds, uri, shard_size=700)
    return {"ds": ds, "local": local, "uri": uri, "written": written}


# --------------------------------------------------------------------------- storage module


def test_endpoint_region_and_filesystem_from_env(s3, monkeypatch):
    assert storage.is_s3("s3://b/k") and storage.is_s3("S3A://b/k") and not storage.is_s3("/data/s3://x")
    assert storage.s3_path("s3://bucket/a/b/") == "bucket/a/b" and storage.s3_uri("bucket/a") == "s3://bucket/a"
    assert storage.s3_endpoint() == s3["endpoint"] and storage.s3_region() == "us-east-1"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "https://minio.example:9000")  # the S3-specific one wins
    assert storage.s3_endpoint() == "https://minio.example:9000"
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://mlflow-only:9000")
    assert storage.s3_endpoint() == "https://minio.example:9000"
    assert storage.s3_endpoint(for_mlflow=True) == "http://mlflow-only:9000"
    fs = storage.s3_filesystem("https://minio.example:9000")
    assert fs.region == "us-east-1"
    fs, path = storage.filesystem_and_path("s3://bkt/x/y.parquet")
    assert type(fs).__name__ == "S3FileSystem" and path == "bkt/x/y.parquet"
    assert storage.filesystem_and_path("/tmp/x") == (None, "/tmp/x")
    path, fs = storage.ray_storage("s3://bkt/ray/")
    assert path == "bkt/ray" and fs is not None
    assert storage.ray_storage("rel/dir") == (str(Path("rel/dir").resolve()), None)


def test_credentials_in_uris_are_refused_without_echoing_them(s3, monkeypatch):
    for bad in (f"s3://{KEY_ID}:{SECRET}@bucket/x", f"http://{KEY_ID}:{SECRET}@127.0.0.1:9000"):
        with pytest.raises(storage.StorageError) as err:
            storage.s3_filesystem(bad) if bad.startswith("http") else storage.s3_path(bad)
        assert SECRET not in str(err.value) and KEY_ID not in str(err.value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{KEY_ID}:{SECRET}@127.0.0.1:9000")
    with pytest.raises(storage.StorageError, match="AWS_ENDPOINT_URL must not hold credentials") as err:
        storage.s3_filesystem()
    assert SECRET not in str(err.value)


def test_configure_mlflow_env_sets_endpoint_only_when_unset(s3, monkeypatch):
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    assert storage.configure_mlflow_env() == s3["endpoint"]
    assert os.environ["MLFLOW_S3_ENDPOINT_URL"] == s3["endpoint"]
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", "http://other:1")
    assert storage.configure_mlflow_env() == "http://other:1"
    assert os.environ["MLFLOW_S3_ENDPOINT_URL"] == "http://other:1"


# --------------------------------------------------------------------------- shards


def test_shards_round_trip_through_s3(s3, digits):
    keys = _keys(s3, "digits/")
    shards = sorted(k for k in keys if k.endswith(".parquet"))
    assert shards == [f"digits/shard-0000{i}-of-00003.parquet" for i in range(3)]
    assert digits["written"] == [f"s3://{s3['bucket']}/{k}" for k in shards]
    local = read_shards(digits["local"])
    for spec in (digits["uri"], digits["uri"] + "/", digits["uri"] + "/*.parquet", digits["written"]):
        got = read_shards(spec)
        assert torch.equal(got.x, local.x) and torch.equal(got.y, local.y), spec
        assert (got.shape, got.kind, got.num_classes, got.name) == (local.shape, local.kind, local.num_classes, local.name)
    assert torch.equal(local.x, digits["ds"].x)
    assert resolve_shard_paths(digits["uri"] + "/shard-0000[01]-*.parquet") == digits["written"][:2]
    # through the data registry, as a config's `data: {name: shards, path: s3://...}` does
    ds = build_dataset("shards", path=digits["uri"], limit=100)
    assert len(ds.x) == 100 and torch.equal(ds.x, local.x[:100])


def test_rewriting_s3_shards_replaces_stale_ones(s3, digits):
    uri = f"s3://{s3['bucket']}/rewrite"
    write_shards(digits["ds"], uri, shard_size=700)
    write_shards(digits["ds"], uri, shard_size=1000)
    assert sorted(k for k in _keys(s3, "rewrite/") if k.endswith(".parquet")) == [
        "rewrite/shard-00000-of-00002.parquet", "rewrite/shard-00001-of-00002.parquet"]
    assert len(read_shards(uri).x) == len(digits["ds"].x)


def test_missing_and_corrupt_s3_shards_name_the_s3_path(s3, digits):
    b = s3["bucket"]
    with pytest.raises(FileNotFoundError, match=f"s3://{b}/nothing/"):
        read_shards(f"s3://{b}/nothing/*.parquet")
    with pytest.raises(FileNotFoundError, match=f"s3://{b}/nothing"):
        read_shards(f"s3://{b}/nothing")
    # a truncated copy of a real shard, and an object that is not Parquet at all
    good = s3["client"].get_object(Bucket=b, Key="digits/shard-00000-of-00003.parquet")["Body"].read()
    s3["client"].put_object(Bucket=b, Key="corrupt/shard-00000-of-00002.parquet", Body=good[: len(good) // 2])
    s3["client"].put_object(Bucket=b, Key="corrupt/shard-00001-of-00002.parquet", Body=b"not parquet")
    with pytest.raises(ValueError, match=f"s3://{b}/corrupt/shard-00000-of-00002.parquet: not a readable Parquet shard"):
        read_shards(f"s3://{b}/corrupt")
    with pytest.raises(ValueError, match=f"s3://{b}/corrupt/shard-00001-of-00002.parquet"):
        read_shards(f"s3://{b}/corrupt/shard-00001-of-00002.parquet")
    # a shard that disappears between listing and reading
    s3["client"].put_object(Bucket=b, Key="gone/shard-00000-of-00001.parquet", Body=good)
    from drifting_platform.data import shards as S

    files = resolve_shard_paths(f"s3://{b}/gone")
    s3["client"].delete_object(Bucket=b, Key="gone/shard-00000-of-00001.parquet")
    with pytest.raises(FileNotFoundError, match=f"s3://{b}/gone/shard-00000-of-00001.parquet: shard not found"):
        S._read_one(files[0], None)


def test_unreachable_endpoint_is_an_error_naming_the_path(s3, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    with pytest.raises(OSError, match=f"s3://{s3['bucket']}/digits"):
        read_shards(f"s3://{s3['bucket']}/digits/shard-00000-of-00003.parquet")


# --------------------------------------------------------------------------- Ray Train + MLflow


class _ListHandler(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[tuple[str, int, str]] = []

    def emit(self, record):
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001
            text = str(record.msg)
        self.records.append((record.name, record.levelno, text))


@pytest.fixture(scope="module")
def e2e(s3, digits, tmp_path_factory):
    """One training run on Ray Train (the CLI in a subprocess: its own local Ray, 1 worker)
    with data from S3 shards and Ray storage on S3, then tracked into MLflow (SQLite store
    here, artifact root on S3) by this process, with every log line captured."""
    tmp = tmp_path_factory.mktemp("e2e")
    b = s3["bucket"]
    mp = s3["mp"]
    home = tmp / "home"
    mp.setenv("DRIFTING_HOME", str(home))
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp / 'mlflow.db'}")
    mp.setenv("DRIFTING_ARTIFACT_ROOT", f"s3://{b}/mlflow")
    ray_tmp = tempfile.mkdtemp(prefix="rs3-", dir="/tmp")  # short: Ray's unix sockets live here
    run_dir = tmp / "run"
    overrides = ["train.steps=4", "train.log_every=2", "train.ckpt_every=2", "train.threads=1", "eval.num_samples=100",
                 "data.name=shards", f"data.path={digits['uri']}", "data.size=null"]
    cmd = [CLI, "train", str(CONFIGS / "digits.yaml"), "--preset", "smoke", "--out", str(run_dir), "--quiet",
           "--workers", "1", "--storage-path", f"s3://{b}/ray"]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1"}
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    train_s = time.monotonic() - t0
    if proc.returncode != 0:
        shutil.rmtree(ray_tmp, ignore_errors=True)
        raise AssertionError(f"train failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    ray_logs = []
    for p in Path(ray_tmp).rglob("*"):
        if p.is_file() and p.suffix in (".log", ".out", ".err", ".json", ".txt", ".yaml"):
            try:
                ray_logs.append((str(p), p.read_bytes()))
            except OSError:
                pass
    shutil.rmtree(ray_tmp, ignore_errors=True)

    # tracking, as the sweep driver or a user script does it, with Python logging captured
    from drifting_platform import tracking as T
    from drifting_platform.config import load_config, to_dict

    handler = _ListHandler()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        cfg = load_config(CONFIGS / "digits.yaml", "smoke", overrides)
        (run_dir / "config.json").write_text(json.dumps(to_dict(cfg)))
        params = {
            **to_dict(cfg),
            # what a careless caller might pass: credentials in a URL and as keys
            "storage": {"endpoint": f"http://{KEY_ID}:{SECRET}@127.0.0.1:9000", "path": f"s3://{b}/ray"},
            "aws_secret_access_key": SECRET, "aws_access_key_id": KEY_ID, "s3": {"secret_key": SECRET},
        }
        tags = {"drifting.endpoint": f"s3://{KEY_ID}:{SECRET}@{b}/x", "aws.secret_access_key": SECRET}
        summary = json.loads((run_dir / "summary.json").read_text())
        run = T.track_run("s3-e2e", "digits-s3", params, tags=tags)
        for line in (run_dir / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            run.report(row["step"], row)
        run.finish(summary, run_dir)
        failed = T.track_run("s3-e2e", "failed", {"x": 1})
        failed.finish(status="FAILED", error=f"OSError: cannot reach http://{KEY_ID}:{SECRET}@127.0.0.1:9000/bucket")
        tracker = T.SweepTracker("s3-e2e")
        records = [tracker.get_run(run.run_id), tracker.get_run(failed.run_id)]
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
    return {
        "run_dir": run_dir, "home": home, "proc": proc, "train_s": train_s, "summary": summary, "run_id": run.run_id,
        "records": records, "tracker": tracker, "logs": handler.records, "ray_logs": ray_logs, "params": params,
    }


@pytest.mark.slow
def test_ray_train_checkpoints_and_results_go_to_s3(s3, e2e):
    assert e2e["summary"]["steps"] == 4 and "fid" in e2e["summary"]
    keys = _keys(s3, "ray/")
    ckpts = [k for k in keys if k.endswith("/checkpoint.pt")]
    assert ckpts, keys
    assert any(k.endswith("checkpoint_manager_snapshot.json") for k in keys), keys
    # the last reported checkpoint is the run's final state (step 4), readable back from S3
    metas = sorted(json.loads(s3["client"].get_object(Bucket=s3["bucket"], Key=k)["Body"].read())["step"]
                   for k in keys if k.endswith("/meta.json"))
    assert metas[-1] == 4
    assert not (e2e["run_dir"] / "ray").exists()  # nothing fell back to the local default


@pytest.mark.slow
def test_mlflow_artifacts_go_to_s3_and_download_back(s3, e2e, tmp_path):
    run = e2e["records"][0]
    assert run.info.artifact_uri.startswith(f"s3://{s3['bucket']}/mlflow/s3-e2e/")
    prefix = run.info.artifact_uri[len(f"s3://{s3['bucket']}/"):]
    keys = _keys(s3, prefix + "/")
    for name in ("samples.npz", "samples.png", "summary.json", "metrics.jsonl", "config.json"):
        assert f"{prefix}/{name}" in keys, keys
    from mlflow.artifacts import download_artifacts

    got = Path(download_artifacts(run_id=e2e["run_id"], artifact_path="samples.npz", dst_path=str(tmp_path),
                                  tracking_uri=e2e["tracker"].uri))
    assert got.read_bytes() == (e2e["run_dir"] / "samples.npz").read_bytes()
    assert [a.path for a in e2e["tracker"].client.list_artifacts(e2e["run_id"]) if a.path == "summary.json"]
    assert run.data.metrics["fid"] == pytest.approx(e2e["summary"]["fid"])
    hist = e2e["tracker"].metric_history(e2e["run_id"], "loss")
    assert [s for s, _ in hist][:2] == [2, 4]


@pytest.mark.slow
def test_credentials_never_recorded(s3, e2e):
    needles = (KEY_ID, SECRET)

    def clean(text, where):
        for n in needles:
            assert n not in text, f"{n!r} found in {where}"

    # params and tags of both runs (the failed one carries the masked error)
    for run in e2e["records"]:
        clean(json.dumps(run.data.params), f"params of {run.info.run_name}")
        clean(json.dumps(run.data.tags), f"tags of {run.info.run_name}")
    params = e2e["records"][0].data.params
    assert params["storage.endpoint"] == "http://***@127.0.0.1:9000"
    assert not any("secret" in k or "access_key" in k for k in params)
    assert params["data.path"] == e2e["params"]["data"]["path"]
    assert "***@" in e2e["records"][1].data.tags["drifting.error"]
    # every object in the bucket: Ray's storage, MLflow artifacts, the shards
    keys = _keys(s3)
    assert any(k.startswith("ray/") for k in keys) and any(k.startswith("mlflow/") for k in keys)
    for k in keys:
        body = s3["client"].get_object(Bucket=s3["bucket"], Key=k)["Body"].read()
        for n in needles:
            assert n.encode() not in body, f"{n!r} found in s3://{s3['bucket']}/{k}"
    # local files: the run directory, DRIFTING_HOME, the MLflow database
    for root in (e2e["run_dir"], e2e["home"], Path(e2e["tracker"].uri[len("sqlite:///"):]).parent):
        for p in Path(root).rglob("*"):
            if p.is_file():
                data = p.read_bytes()
                for n in needles:
                    assert n.encode() not in data, f"{n!r} found in {p}"
    # the trainer's stdout / stderr (with Ray's worker output), Ray's own session logs, and every
    # Python log record of the tracking part (at DEBUG)
    clean(e2e["proc"].stdout + e2e["proc"].stderr, "the train command's output")
    assert e2e["ray_logs"], "no Ray session logs were found"
    for path, data in e2e["ray_logs"]:
        for n in needles:
            assert n.encode() not in data, f"{n!r} found in Ray log {path}"
    # The secret key appears in no log record at any level. The access key *id* (public by AWS's
    # definition: it names the key) is in botocore's own DEBUG dump of signed request headers
    # ("Authorization: ... Credential=<key id>/..."); it must not appear anywhere else.
    logs = e2e["logs"]
    assert logs
    assert SECRET not in "\n".join(text for _, _, text in logs), "the secret key is in a log record"
    wire = ("botocore.", "urllib3.", "s3transfer.")
    for name, level, text in logs:
        if level >= logging.INFO or not name.startswith(wire):
            assert KEY_ID not in text, f"the access key id is in a {logging.getLevelName(level)} record of {name}: {text[:300]}"


# --------------------------------------------------------------------------- configuration


def test_artifact_root_from_env(tmp_path, monkeypatch):
    from drifting_platform import tracking as T

    monkeypatch.setenv("DRIFTING_ARTIFACT_ROOT", "s3://bkt/mlflow/")
    assert T.default_artifact_root("sqlite:////x/m.db") == "s3://bkt/mlflow"
    assert T.default_artifact_root("http://127.0.0.1:5000") == "s3://bkt/mlflow"  # the user asked for it
    cmd = T.ui_command(uri="sqlite:////x/m.db")
    assert cmd[cmd.index("--default-artifact-root") + 1] == "s3://bkt/mlflow"
    monkeypatch.setenv("DRIFTING_ARTIFACT_ROOT", str(tmp_path / "arts"))
    assert T.default_artifact_root() == (tmp_path / "arts").resolve()
    monkeypatch.setenv("DRIFTING_ARTIFACT_ROOT", f"s3://{KEY_ID}:{SECRET}@bkt/mlflow")
    with pytest.raises(ValueError, match="DRIFTING_ARTIFACT_ROOT must not hold credentials") as err:
        T.default_artifact_root()
    assert SECRET not in str(err.value)


def test_cli_storage_path_needs_workers(tmp_path):
    out = subprocess.run([CLI, "train", str(CONFIGS / "toy_8gaussians.yaml"), "--preset", "smoke", "--out", str(tmp_path / "r"),
                          "--storage-path", "s3://bkt/ray"], capture_output=True, text=True)
    assert out.returncode == 2 and "--storage-path" in out.stderr and "--workers" in out.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_sweep_storage_on_s3(s3, tmp_path):
    """`sweep --storage-path s3://...`: Tune's state and a 2-worker trial's Ray Train
    checkpoints land in the bucket; the trial itself finishes as usual."""
    b = s3["bucket"]
    sweep = tmp_path / "s3sweep.yaml"
    sweep.write_text(
        f"name: s3sweep\nbase: {CONFIGS / 'digits.yaml'}\npreset: smoke\n"
        "set: [train.steps=4, train.log_every=2, train.ckpt_every=2, train.threads=1, eval.num_samples=100]\n"
        "rows: [{name: only, set: {drift.repulsion_scale: 1.0}}]\n"
        "resources: {cpus_per_trial: 1, workers: 2}\nmetric: {name: fid, mode: min}\n"
    )
    ray_tmp = tempfile.mkdtemp(prefix="rs3-", dir="/tmp")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, "PYTHONUNBUFFERED": "1", "DRIFTING_HOME": str(tmp_path / "home"),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    try:
        proc = subprocess.run([CLI, "sweep", str(sweep), "--out-root", str(tmp_path / "sweeps"), "--no-report",
                               "--storage-path", f"s3://{b}/sweeps"], capture_output=True, text=True, env=env, timeout=400)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FINISHED" in proc.stdout
    keys = _keys(s3, "sweeps/s3sweep/")
    assert any("/_tune/tune/" in k for k in keys), keys  # Tune's experiment state
    ckpts = [k for k in keys if k.endswith("/checkpoint.pt") and "/ray/" in k]  # <sweep>/<trial>/ray/...
    assert ckpts, keys
    assert not list((tmp_path / "sweeps").rglob("_tune"))  # nothing fell back to the local default
    for k in keys:
        body = s3["client"].get_object(Bucket=b, Key=k)["Body"].read()
        assert SECRET.encode() not in body and KEY_ID.encode() not in body, k
