"""SIGINT / SIGTERM to real `train` and `pretrain` processes: a checkpoint at the step they
stopped at, the printed resume command, exit 128 + the signal; the resume command finishes
the run with one continuous history. And a rerun of a finished `pretrain`: strict JSON, no
second model version."""

import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from drifting_platform import rundir
from helpers import CONFIGS, REPO

ENCODERS = REPO / "experiments" / "encoders"


def _strict_json(path: Path):
    """json.loads that refuses NaN / Infinity (what Python's json writes but JSON lacks)."""

    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")

    return json.loads(Path(path).read_text(), parse_constant=refuse)


def _start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    """The CLI as a user runs it, output to `log` (a pipe could fill and block the child)."""
    return subprocess.Popen(
        [sys.executable, "-m", "drifting_platform.cli", *args], cwd=cwd,
        env={**{k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}, "PYTHONUNBUFFERED": "1"},
        stdout=log.open("w"), stderr=subprocess.STDOUT, text=True,
    )


def _wait_for_lines(metrics: Path, proc: subprocess.Popen, log: Path, n: int = 1, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.is_file() and len(metrics.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            pytest.fail(f"the run ended (rc {proc.returncode}) before logging a step:\n{log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"no step logged in {timeout} s:\n{log.read_text()}")


def _interrupt(proc: subprocess.Popen, sig: int, log: Path) -> str:
    proc.send_signal(sig)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"still running 120 s after {signal.Signals(sig).name}:\n{log.read_text()}")
    return log.read_text()


def _resume_command(output: str) -> list[str]:
    lines = [line for line in output.splitlines() if "resume with: " in line]
    assert len(lines) == 1, output
    return shlex.split(lines[0].split("resume with: ", 1)[1])


def _steps(metrics: Path) -> list[int]:
    return [step for step, _ in rundir.read_metrics(metrics)]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_train_interrupt_checkpoints_and_resumes(isolated_home, tmp_path, sig):
    total, every = 600, 5  # the smoke preset has ckpt_every 0: only the interrupt saves mid-run
    args = ["train", str(CONFIGS / "toy_8gaussians.yaml"), "--preset", "smoke", "--out", "runs/x",
            "--set", f"train.steps={total}", "--set", f"train.log_every={every}", "--quiet", "--no-resume"]
    log, run = tmp_path / "train.log", tmp_path / "runs" / "x"
    proc = _start(args, tmp_path, log)
    _wait_for_lines(run / rundir.METRICS, proc, log)
    output = _interrupt(proc, sig, log)

    assert proc.returncode == 128 + sig, output  # 130 / 143
    assert "Traceback" not in output, output
    line = next(ln for ln in output.splitlines() if "resume with:" in ln)
    step = int(line.split(" at step ", 1)[1].split(" ", 1)[0])
    assert f"interrupted ({signal.Signals(sig).name}) at step {step} of {total}; checkpoint in runs/x/checkpoint.pt; resume with: " in line
    assert 0 < step < total
    assert torch.load(run / rundir.CHECKPOINT, weights_only=True)["step"] == step
    assert _steps(run / rundir.METRICS)[-1] == step  # the steps since the last log point are logged
    assert not (run / rundir.SUMMARY).exists()

    command = _resume_command(output)
    assert command[:3] == [sys.executable, "-m", "drifting_platform.cli"] and "--no-resume" not in command
    assert command[3:] == [a for a in args if a != "--no-resume"]
    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert f"resumed from runs/x/checkpoint.pt at step {step}" in resumed.stdout + resumed.stderr

    steps = _steps(run / rundir.METRICS)
    assert steps == sorted(set(steps)), steps  # strictly increasing: no step twice
    assert set(steps) == set(range(every, total + 1, every)) | {step}  # none missing
    summary = _strict_json(run / rundir.SUMMARY)
    assert summary["steps"] == total
    assert torch.load(run / rundir.CHECKPOINT, weights_only=True)["step"] == total


def _encoder_runs(client):
    exp = client.get_experiment_by_name("encoders")
    return client.search_runs([exp.experiment_id]) if exp is not None else []


def _versions(client, name):
    try:
        return client.search_model_versions(f"name='{name}'")
    except Exception:  # noqa: BLE001 - no such registered model
        return []


@pytest.mark.slow
def test_pretrain_sigterm_kills_the_mlflow_run_and_the_rerun_finishes_it(isolated_home, tmp_path):
    from mlflow import MlflowClient

    total = 50
    args = ["pretrain", str(ENCODERS / "mae_digits32.yaml"), "--preset", "smoke", "--out", "runs/p",
            "--set", f"train.steps={total}", "--set", "train.log_every=2", "--quiet"]
    log, run = tmp_path / "pretrain.log", tmp_path / "runs" / "p"
    proc = _start(args, tmp_path, log)
    _wait_for_lines(run / rundir.METRICS, proc, log)
    output = _interrupt(proc, signal.SIGTERM, log)

    assert proc.returncode == 143, output
    assert "Traceback" not in output, output
    step = int(output.split("interrupted (SIGTERM) at step ", 1)[1].split(" ", 1)[0])
    assert 0 < step < total
    assert torch.load(run / rundir.CHECKPOINT, weights_only=True)["step"] == step
    client = MlflowClient()
    runs = _encoder_runs(client)
    assert [r.info.status for r in runs] == ["KILLED"]
    assert f"at step {step} of {total}" in runs[0].data.tags["drifting.error"]
    assert _versions(client, "mae-digits32-w32") == []  # nothing registered for an interrupted run

    resumed = subprocess.run(_resume_command(output), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    runs = _encoder_runs(client)
    assert [(r.info.run_id, r.info.status) for r in runs] == [(runs[0].info.run_id, "FINISHED")]  # the same run, finished
    assert "drifting.error" not in runs[0].data.tags
    versions = _versions(client, "mae-digits32-w32")
    assert [(int(v.version), v.run_id) for v in versions] == [(1, runs[0].info.run_id)]
    steps = _steps(run / rundir.METRICS)
    assert steps == sorted(set(steps)) and steps[-1] == total and step in steps
    logged = [m.step for m in client.get_metric_history(runs[0].info.run_id, "loss")]
    assert logged == steps, (logged, steps)  # MLflow's history: each step once, none missing
    assert math.isfinite(_strict_json(run / rundir.SUMMARY)["final_loss"])


@pytest.mark.slow
def test_pretrain_rerun_of_a_finished_run_keeps_summary_and_version(isolated_home, tmp_path):
    from mlflow import MlflowClient

    from drifting_platform.launch.pretrain import load_pretrain_config, run_pretrain

    cfg = load_pretrain_config(ENCODERS / "mae_digits32.yaml", "smoke", ())
    first = run_pretrain(cfg, tmp_path / "p", progress=False)
    stored = _strict_json(tmp_path / "p" / rundir.SUMMARY)
    again = run_pretrain(cfg, tmp_path / "p", progress=False)

    summary = _strict_json(tmp_path / "p" / rundir.SUMMARY)  # was "final_loss": NaN
    assert isinstance(summary["final_loss"], float) and math.isfinite(summary["final_loss"])
    assert summary == stored and again["summary"] == stored
    assert again["registered"]["uri"] == first["registered"]["uri"] == "models:/mae-digits32-w32/1"
    client = MlflowClient()
    assert [int(v.version) for v in _versions(client, "mae-digits32-w32")] == [1]
    assert [r.info.status for r in _encoder_runs(client)] == ["FINISHED"]


def test_write_json_never_writes_nan(tmp_path):
    with pytest.warns(RuntimeWarning, match=r"fid, curve\[1\]"):
        path = rundir.write_json(tmp_path / "s.json", {"fid": float("nan"), "curve": [1.0, float("inf")], "steps": 3})
    assert _strict_json(path) == {"fid": None, "curve": [1.0, None], "steps": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # finite values: no warning
        rundir.write_json(tmp_path / "t.json", {"loss": 0.5})


def _descendants(pid: int) -> set[int]:
    """Every live descendant of `pid` (from /proc: the Ray processes a driver started)."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(stat.parent.name)] = int(fields[1])
    out, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = {c for c, pp in parents.items() if pp == p}
        todo.extend(kids - out)
        out |= kids
    return out


def _alive(pid: int) -> bool:
    try:
        return "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return False


@pytest.mark.slow
def test_train_with_ray_workers_sigterm_stops_workers_and_resumes(isolated_home, tmp_path):
    total, every, ckpt_every = 120, 5, 20
    args = ["train", str(CONFIGS / "toy_8gaussians.yaml"), "--preset", "smoke", "--out", "runs/r", "--workers", "1",
            "--set", f"train.steps={total}", "--set", f"train.log_every={every}", "--set", f"train.ckpt_every={ckpt_every}", "--quiet"]
    log, run = tmp_path / "ray.log", tmp_path / "runs" / "r"
    proc = _start(args, tmp_path, log)
    _wait_for_lines(run / rundir.METRICS, proc, log, n=ckpt_every // every + 1)  # a checkpoint was written
    ray_processes = _descendants(proc.pid)
    assert ray_processes  # the local Ray: GCS, raylet, the worker
    output = _interrupt(proc, signal.SIGTERM, log)

    assert proc.returncode == 143, output
    assert "Traceback" not in output, output
    ckpt_step = torch.load(run / rundir.CHECKPOINT, weights_only=True)["step"]
    assert ckpt_step % ckpt_every == 0 and 0 < ckpt_step < total
    assert f"; checkpoint of step {ckpt_step} in {run / rundir.CHECKPOINT} (the Ray Train workers were stopped" in output
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in ray_processes):
        time.sleep(0.2)
    assert not [p for p in ray_processes if _alive(p)], "Ray processes outlived the driver"

    resumed = subprocess.run(_resume_command(output), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    steps = _steps(run / rundir.METRICS)
    assert steps == list(range(every, total + 1, every))  # lines past the checkpoint were logged again, once
    assert _strict_json(run / rundir.SUMMARY)["steps"] == total
