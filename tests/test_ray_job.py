"""`ray start --head` / `ray job submit` / `ray stop`: the ablation script as a Ray job.

A real head node is started on this machine (on free ports, so a Ray that another process
runs here cannot collide with it), the anti-symmetry ablation is submitted with the smoke
preset from a temporary copy of the repository (Ray's --working-dir), and the runs must land
in the MLflow store named by MLFLOW_TRACKING_URI in the environment of `ray start`.
"""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO


BIN = Path(sys.executable).parent

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_cmd(*args, env, timeout=120, check=True):
    out = subprocess.run([str(BIN / "ray"), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if check and out.returncode != 0:
        raise AssertionError(f"ray {' '.join(args)} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def test_ray_job_submit_round_trip(tmp_path):
    store = tmp_path / "mlflow.db"
    env = dict(os.environ)
    env.update(
        # the job's `python` must be this environment's (ray start passes PATH on)
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        RAY_AUTH_MODE="token",  # works whether or not ~/.ray/auth_token exists yet
        MLFLOW_TRACKING_URI=f"sqlite:///{store}",
        DRIFTING_HOME=str(tmp_path / "home"),
        RAY_USAGE_STATS_ENABLED="0",
    )
    env.pop("RAY_ADDRESS", None)
    ray_cmd("get-auth-token", "--generate", env=env)
    dash = free_port()
    ray_cmd(
        "start", "--head", "--num-cpus", "2", "--disable-usage-stats",
        "--port", str(free_port()), "--dashboard-port", str(dash),
        "--dashboard-agent-listen-port", str(free_port()), "--metrics-export-port", str(free_port()),
        env=env, timeout=180,
    )
    try:
        deadline = time.time() + 90
        while True:  # the job agent comes up a few seconds after `ray start` returns
            out = ray_cmd(
                "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(REPO),
                "--", "python", "experiments/ablate_antisymmetry.py", "--preset", "smoke",
                env=env, timeout=600, check=False,
            )
            if "No available agent" in out.stderr + out.stdout and time.time() < deadline:
                time.sleep(3)
                continue
            break
        assert out.returncode == 0, f"{out.stdout[-6000:]}\n{out.stderr[-3000:]}"
        assert "V+ only" in out.stdout and "177.14" in out.stdout  # the table, paper values beside
        # the encoder ablation too: its encoders are pre-trained as tasks on the same cluster
        out = ray_cmd(
            "job", "submit", "--address", f"http://127.0.0.1:{dash}", "--working-dir", str(REPO),
            "--", "python", "experiments/ablate_encoder.py", "--preset", "smoke",
            env=env, timeout=600, check=False,
        )
        assert out.returncode == 0, f"{out.stdout[-6000:]}\n{out.stderr[-3000:]}"
        assert "MoCo-v2" in out.stdout and "3.36" in out.stdout
    finally:
        ray_cmd("stop", "--force", env=env, check=False)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    exp = client.get_experiment_by_name("antisymmetry")
    assert exp is not None
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 6
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert all(r.info.status == "FINISHED" and "fid" in r.data.metrics for r in children)
    assert not str(store).startswith(str(REPO))  # the store is outside the job's temporary copy

    enc = client.get_experiment_by_name("encoder")
    runs = client.search_runs([enc.experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(runs) == 11 and len(children) == 10  # encoder.yaml: 10 rows
    learned = [r for r in children if "drifting.encoder_version" in r.data.tags]
    assert len(learned) == 8 and all(r.info.status == "FINISHED" for r in children)  # 8 pre-trained encoders
    assert {r.data.tags["drifting.encoder_model"] for r in learned} == {m.name for m in client.search_registered_models()}
