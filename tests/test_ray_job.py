"""The README's "As a Ray job" commands, run as typed, on a machine where another Ray runs.

Another Ray instance is started first (a `ray.init()` kept running, as a notebook or a sweep
would: it holds Ray's default dashboard and dashboard-agent ports, the cause of the 500 "No
available agent" that `ray start --head` with default ports met). Then the README's bash block
runs in a temporary copy of the repository (Ray's --working-dir), with two substitutions: the
venv's absolute path for `.venv` (the copy has none; uploading a venv is not the point) and free
ports for the README's example ports (any free ports do, as the README says). Every job must
succeed (the two smoke ablations and the paper path in miniature: prepared latents, the
release generator, decoded samples), their runs land in the store named by MLFLOW_TRACKING_URI, `kill %1` must stop the head
it started, and the other Ray must still be running afterwards (which `ray stop` would not
allow). Only processes this test started are ended.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, free_port

BIN = Path(sys.executable).parent
VENV = BIN.parent

pytestmark = pytest.mark.slow

README_PORTS = ("6390", "8275", "52375", "20001")  # --port, --dashboard-port, agent, client server


def listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def readme_ray_block() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("**As a Ray job**"):]
    return re.search(r"```bash\n(.*?)```", section, re.S).group(1)


def killpg(proc: subprocess.Popen, grace: float = 20.0) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)


def test_readme_ray_job_commands_beside_another_ray(tmp_path):
    store = tmp_path / "mlflow.db"
    env = dict(os.environ)
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{store}",
        DRIFTING_HOME=str(tmp_path / "home"),
        RAY_USAGE_STATS_ENABLED="0",
        RAY_AUTH_MODE="token",
    )
    env.pop("RAY_ADDRESS", None)
    subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=env, capture_output=True, timeout=60, check=True)

    # another Ray on the machine: it keeps the default dashboard agent port (52365) busy
    other = subprocess.Popen(
        [sys.executable, "-c", "import ray, time; ray.init(address=\"local\", num_cpus=1, include_dashboard=True); print('ready', flush=True); time.sleep(3600)"],
        env={**env, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'other.db'}"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    head = None
    try:
        other_out = []
        for line in other.stdout:
            other_out.append(line)
            if line.strip() == "ready":
                break
        assert other.poll() is None, "".join(other_out)[-3000:]
        deadline = time.monotonic() + 60
        while not listening(52365) and time.monotonic() < deadline:  # its dashboard agent comes up last
            time.sleep(0.5)
        assert listening(52365), "no Ray holds the default dashboard-agent port: nothing to collide with"

        script = readme_ray_block().replace("source .venv/bin/activate", f"source {VENV}/bin/activate")
        script = script.replace("/tmp/ray-head.log", str(tmp_path / "ray-head.log"))
        ports = {p: str(free_port()) for p in README_PORTS}
        for old, new in ports.items():
            assert f"={old}" in script or f":{old}" in script, old
            script = re.sub(rf"(?<=[=:]){old}\b", new, script)
        work = tmp_path / "repo"
        shutil.copytree(REPO, work, symlinks=True, ignore=shutil.ignore_patterns(
            ".venv", ".git", "runs", "__pycache__", "*.egg-info", ".pytest_cache", "mlruns"))
        (tmp_path / "readme.sh").write_text("set -e\n" + script)
        t0 = time.monotonic()
        head = subprocess.Popen(
            ["bash", str(tmp_path / "readme.sh")], cwd=work, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        )
        out, _ = head.communicate(timeout=2400)
        took = time.monotonic() - t0
        print(f"README Ray-job commands: {took:.0f} s")
        log = (tmp_path / "ray-head.log").read_text(errors="replace") if (tmp_path / "ray-head.log").exists() else ""
        assert head.returncode == 0, f"{out[-6000:]}\n--- ray-head.log:\n{log[-3000:]}"
        assert "No available agent" not in out
        assert "V+ only" in out and "177.14" in out  # the table, paper values beside
        assert "MoCo-v2" in out and "3.36" in out
        dash = int(ports["8275"])
        # `kill %1` stops this head: `ray start --block` ends its processes gracefully first
        # (on 2 busy cores, after a job with Ray Data and Train workers, that took > 30 s)
        deadline = time.monotonic() + 180
        while listening(dash) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not listening(dash), "the head's dashboard still answers after `kill %1`"
        assert other.poll() is None and listening(52365), "the other Ray did not survive"
    finally:
        if head is not None:
            killpg(head)
        killpg(other)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    exp = client.get_experiment_by_name("antisymmetry")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    parents = {r.data.tags["drifting.preset"]: r for r in runs if "mlflow.parentRunId" not in r.data.tags}
    assert sorted(parents) == ["paper-mini", "smoke"]
    for preset, parent in parents.items():
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        assert len(children) == 6, preset
        assert all(r.info.status == "FINISHED" and "fid" in r.data.metrics for r in children)
    # the paper path in miniature: every child trained the release generator on prepared
    # SD-VAE latents and logged decoded samples, the grid and the in-training protocol
    mini = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents["paper-mini"].info.run_id]
    for r in mini:
        assert r.data.params["data.name"] == "prepared" and r.data.params["model.name"] == "release-s/2"
        assert r.data.params["encoder.name"] == "release_mae"
        assert "eval/fid_best_alpha" in r.data.metrics and "alpha_2/fid" in r.data.metrics
        names = {a.path for a in client.list_artifacts(r.info.run_id)}
        assert {"samples.npz", "samples.png"} <= names, names
        z = np.load(client.download_artifacts(r.info.run_id, "samples.npz", str(tmp_path / r.info.run_id)))
        assert z["samples"].shape[1:] == (3, 32, 32) and z["latents"].shape[1:] == (4, 8, 8)

    enc = client.get_experiment_by_name("encoder")
    runs = client.search_runs([enc.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 11 and len(children) == 10  # encoder.yaml: 10 rows
    learned = [r for r in children if "drifting.encoder_version" in r.data.tags]
    assert len(learned) == 8 and all(r.info.status == "FINISHED" for r in children)  # 8 pre-trained encoders
    assert {r.data.tags["drifting.encoder_model"] for r in learned} == {m.name for m in client.search_registered_models()}
