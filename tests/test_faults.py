"""Faults, for real: a full disk while checkpointing, corrupt and malicious checkpoints, an
unreachable tracking server, a Ray Train worker killed mid-run, a sweep driver killed and
resumed, a trial that fails for good. Every fault is made, not mocked: a tmpfs that fills
up, a file limit set by the kernel, bytes cut from a checkpoint, a pickle that would run
code, a closed port, SIGKILL to live processes."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from helpers import REPO, free_port

from drifting_platform.config import load_config
from drifting_platform.train.checkpoint import CheckpointError, CheckpointWriteError, load_checkpoint
from drifting_platform.train.loop import training_loop

CONFIGS = REPO / "experiments" / "configs"
DIGITS = CONFIGS / "digits.yaml"
CLI = str(Path(sys.executable).with_name("drifting-platform"))


def _steps(path: Path) -> list[int]:
    return [json.loads(l)["step"] for l in path.read_text().splitlines()]


# --------------------------------------------------------------------------- full disk


@pytest.fixture
def small_disk(tmp_path):
    """A real 8 MiB tmpfs (needs mount rights; skipped where the kernel refuses)."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({res.stderr.strip()}); test_file_size_limit_* covers the write failure")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave: int) -> Path:
    """Write a filler file so that about `leave` bytes stay free on `mnt`."""
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    filler = mnt / "filler.bin"
    with filler.open("wb") as fh:
        fh.write(b"\0" * max(0, free - leave))
    return filler


def test_full_disk_while_checkpointing_keeps_the_previous_checkpoint(small_disk):
    over = ["train.steps=8", "train.ckpt_every=4", "train.log_every=2", "sampling.n_gen=32", "sampling.n_pos=32"]
    run = small_disk / "run"
    half = load_config(CONFIGS / "toy_8gaussians.yaml", "smoke", [*over, "train.steps=4"])
    training_loop(half, run, progress=False, evaluate=False)
    size = (run / "checkpoint.pt").stat().st_size
    before = (run / "checkpoint.pt").read_bytes()
    filler = _fill(small_disk, leave=size // 2)  # room for metric lines, not for a checkpoint

    full = load_config(CONFIGS / "toy_8gaussians.yaml", "smoke", over)
    with pytest.raises(CheckpointWriteError) as info:
        training_loop(full, run, progress=False, evaluate=False)
    msg = str(info.value)
    assert "No space left on device" in msg and "step 8" in msg and "resumes from step 4" in msg, msg
    assert info.value.errno == 28
    # what was kept: the step-4 checkpoint, byte for byte, and no temporary file beside it
    assert (run / "checkpoint.pt").read_bytes() == before
    assert load_checkpoint(run)["step"] == 4
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]

    filler.unlink()  # space is back: the same call resumes and finishes
    training_loop(full, run, progress=False, evaluate=False)
    assert load_checkpoint(run)["step"] == 8
    assert _steps(run / "metrics.jsonl") == [2, 4, 6, 8]


def test_file_size_limit_while_checkpointing_via_cli(tmp_path):
    """Without mount rights: the kernel's RLIMIT_FSIZE makes the checkpoint write fail (EFBIG)."""
    out = tmp_path / "run"
    first = subprocess.run([CLI, "train", str(CONFIGS / "toy_8gaussians.yaml"), "--preset", "smoke", "--out", str(out), "--quiet", "--no-eval",
                            "--set", "train.steps=4", "--set", "train.ckpt_every=2"], capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    before = (out / "checkpoint.pt").read_bytes()
    limit = len(before) // 2

    def limit_writes():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() returns EFBIG instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    res = subprocess.run([CLI, "train", str(CONFIGS / "toy_8gaussians.yaml"), "--preset", "smoke", "--out", str(out), "--quiet", "--no-eval",
                          "--set", "train.steps=8", "--set", "train.ckpt_every=2"], capture_output=True, text=True, preexec_fn=limit_writes)
    assert res.returncode != 0
    assert "Traceback" not in res.stderr, res.stderr  # a message, not a stack dump
    assert "could not be written" in res.stderr and "step 6" in res.stderr and "resumes from step 4" in res.stderr, res.stderr
    assert (out / "checkpoint.pt").read_bytes() == before


# --------------------------------------------------------------------------- checkpoints


def test_truncated_checkpoint_is_refused_and_not_overwritten(tmp_path):
    cfg = load_config(CONFIGS / "toy_8gaussians.yaml", "smoke", ["train.steps=4", "train.ckpt_every=2"])
    training_loop(cfg, tmp_path, progress=False, evaluate=False)
    path = tmp_path / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a crash in the middle of a copy
    cut = path.read_bytes()
    with pytest.raises(CheckpointError, match="cannot be read"):
        training_loop(load_config(CONFIGS / "toy_8gaussians.yaml", "smoke", ["train.steps=8", "train.ckpt_every=2"]), tmp_path, progress=False, evaluate=False)
    assert path.read_bytes() == cut  # left for the user to inspect, never silently replaced
    res = subprocess.run([CLI, "train", str(CONFIGS / "toy_8gaussians.yaml"), "--preset", "smoke", "--out", str(tmp_path), "--quiet"], capture_output=True, text=True)
    assert res.returncode != 0 and "cannot be read as a drifting-platform checkpoint" in res.stderr and "Traceback" not in res.stderr


class _RunsCode:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_checkpoint_never_runs_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": "drifting-platform/checkpoint/v1", "step": 1, "generator": _RunsCode(marker)}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(tmp_path)
    res = subprocess.run([CLI, "sample", str(tmp_path), "--num", "4", "--out", str(tmp_path / "s.npz")], capture_output=True, text=True)
    assert res.returncode != 0
    assert not marker.exists()  # weights_only=True: the pickle's code was never executed


# --------------------------------------------------------------------------- tracking server


def test_unreachable_tracking_server_fails_before_anything_starts(tmp_path):
    port = free_port()  # nothing listens here
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}", "DRIFTING_HOME": str(tmp_path / "home")}
    res = subprocess.run([CLI, "sweep", "antisymmetry.yaml", "--preset", "smoke"], capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode != 0
    assert f"http://127.0.0.1:{port} is unreachable" in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert not (tmp_path / "home" / "sweeps").exists()  # no sweep directory, no trial
    assert "Started a local Ray instance" not in res.stdout + res.stderr
    res = subprocess.run([sys.executable, "experiments/ablate_antisymmetry.py", "--preset", "smoke"], capture_output=True, text=True, env=env, cwd=REPO)
    assert res.returncode == 2 and "is unreachable" in res.stderr


def test_tracking_store_check_accepts_a_live_server_and_masks_credentials(tmp_path):
    from http.server import BaseHTTPRequestHandler, HTTPServer
    import threading

    from drifting_platform.tracking import TrackingUnavailable, check_tracking_store

    class Health(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            ok = self.path == "/health"
            self.send_response(200 if ok else 404)
            self.end_headers()
            self.wfile.write(b"OK" if ok else b"")

        def log_message(self, *args):
            pass

    srv = HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        uri = f"http://127.0.0.1:{srv.server_port}"
        assert check_tracking_store(uri) == uri
    finally:
        srv.shutdown()
    with pytest.raises(TrackingUnavailable) as info:
        check_tracking_store(f"http://alice:s3cr3t@127.0.0.1:{free_port()}", timeout=2)
    assert "s3cr3t" not in str(info.value) and "***@" in str(info.value)
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "mlflow.db").write_bytes(b"")
    os.chmod(ro / "mlflow.db", 0o444)
    if os.geteuid() != 0:  # root writes anyway
        with pytest.raises(TrackingUnavailable, match="not writable"):
            check_tracking_store(f"sqlite:///{ro / 'mlflow.db'}")


# --------------------------------------------------------------------------- Ray: killed processes


def _children_by_dir(uri: str, experiment: str):
    from drifting_platform.tracking import SweepTracker

    tr = SweepTracker(uri=uri)
    parents = tr.client.search_runs([tr.experiment_id(experiment, create=False)], filter_string="tags.`drifting.sweep` = 'true'")
    out = {}
    for p in parents:
        for c in tr.child_runs(p.info.run_id):
            out[Path(c.data.tags["drifting.trial_dir"]).name] = c
    return tr, parents, out


def _wait_for_step(path: Path, step: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if path.exists() and any(s >= step for s in _steps(path)):
            return
        if proc.poll() is not None:
            raise AssertionError(f"the sweep ended (rc {proc.returncode}) before {path} reached step {step}:\n{proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.2)
    raise AssertionError(f"{path} did not reach step {step} in {timeout} s")


def _cmdlines():
    """(pid, command line bytes) of every live process on this machine, from /proc."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                yield int(d.name), (d / "cmdline").read_bytes()
            except OSError:
                continue


def _ray_train_workers() -> list[tuple[int, str]]:
    """(pid, command line) of the live Ray Train worker processes on this machine."""
    return [(pid, cmd.replace(b"\0", b" ").decode(errors="replace")) for pid, cmd in _cmdlines() if b"RayTrainWorker" in cmd]


def _gone(pid: int, timeout: float = 10) -> bool:
    t0 = time.time()
    while time.time() - t0 < timeout:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        st = Path(f"/proc/{pid}/stat")
        if st.exists() and st.read_text().split(")")[-1].split()[0] == "Z":
            return True  # a zombie: dead, waiting for its parent
        time.sleep(0.1)
    return False


def _ray_pids() -> set[int]:
    """Live Ray processes on this machine (raylet, GCS, agents, workers)."""
    return {pid for pid, cmd in _cmdlines() if cmd.startswith(b"ray::") or b"/ray/" in cmd}


def _reap(before: set[int]) -> None:
    """Kill what a SIGKILLed driver's Ray left behind (its agents can outlive the raylet)."""
    time.sleep(2)
    for pid in _ray_pids() - before:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _env(tmp_path: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS",)}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path}/mlflow.db", DRIFTING_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1")
    return env


@pytest.mark.slow
def test_killed_ray_train_worker_is_replaced_and_history_stays_continuous(tmp_path):
    sweep = tmp_path / "w2.yaml"
    sweep.write_text(textwrap.dedent(f"""
        name: fault_worker
        base: {DIGITS}
        preset: smoke
        set: [train.steps=60, train.log_every=5, train.ckpt_every=10, train.threads=1, eval.num_samples=100]
        rows:
          - {{name: two workers, set: {{drift.repulsion_scale: 1.0}}}}
        resources: {{cpus_per_trial: 1, workers: 2}}
        metric: {{name: fid, mode: min}}
    """))
    out_root = tmp_path / "sweeps"
    proc = subprocess.Popen([CLI, "sweep", str(sweep), "--out-root", str(out_root), "--no-report"], env=_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        jsonl = None
        t0 = time.time()
        while jsonl is None and time.time() - t0 < 240:
            found = list(out_root.rglob("metrics.jsonl"))
            jsonl = found[0] if found else None
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read())
            time.sleep(0.2)
        assert jsonl is not None
        _wait_for_step(jsonl, 20, proc)  # at least one checkpoint (step 10 or 20) reported
        victims = _ray_train_workers()
        assert len(victims) == 2, victims
        pid = victims[0][0]
        os.kill(pid, signal.SIGKILL)  # no cleanup, no goodbye
        assert _gone(pid)
        output, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, output
    assert "resumed from" in output, output  # the new worker group continued from a checkpoint
    trial_dir = jsonl.parent
    assert json.loads((trial_dir / "summary.json").read_text())["steps"] == 60
    assert _steps(jsonl) == list(range(5, 61, 5))
    tr, parents, children = _children_by_dir(f"sqlite:///{tmp_path}/mlflow.db", "fault_worker")
    assert len(parents) == 1 and len(children) == 1
    run = children[trial_dir.name]
    assert run.info.status == "FINISHED"
    steps = [s for s, _ in tr.metric_history(run.info.run_id, "loss")]
    assert steps == list(range(5, 61, 5))  # one continuous history: no step missing or twice
    assert [s for s, _ in tr.metric_history(run.info.run_id, "fid")] == [60]


def _kill_sweep_mid_trial(cmd: list, tmp_path: Path, pick, *, step: int, timeout: float = 240) -> Path:
    """Start the sweep `cmd`, wait until `pick(trial dirs)` names a trial and that trial has
    logged `step`, then SIGKILL the driver's whole process group (the driver and the local
    Ray it started die at once: a lost machine or a killed job; the trial must not get to
    finish) and reap what Ray leaves behind. Returns the interrupted trial's directory."""
    out_root = Path(cmd[cmd.index("--out-root") + 1])
    ray_before = _ray_pids()
    proc = subprocess.Popen(cmd, env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        t0 = time.time()
        target = None
        while target is None and time.time() - t0 < timeout:
            target = pick([p.parent for p in out_root.rglob("trial.json")])
            if proc.poll() is not None:
                raise AssertionError(proc.stdout.read())
            if target is None:
                time.sleep(0.2)
        assert target is not None
        _wait_for_step(target / "metrics.jsonl", step, proc)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    _reap(ray_before)
    return target


@pytest.mark.slow
def test_killed_sweep_driver_resumes_without_rerunning_and_failures_stay_failed(tmp_path):
    sweep = tmp_path / "resume.yaml"
    sweep.write_text(textwrap.dedent(f"""
        name: fault_resume
        base: {DIGITS}
        preset: smoke
        set: [train.log_every=5, train.ckpt_every=10, eval.num_samples=100]
        rows:
          - {{name: quick, set: {{train.steps: 10}}}}
          - {{name: diverges, set: {{train.steps: 10, train.lr: 1.0e+30, train.grad_clip: 1.0e+30, train.warmup_steps: 0}}}}
          - {{name: long, set: {{train.steps: 200}}}}
        resources: {{cpus_per_trial: 1, workers: 1}}
        max_concurrent: 1
        metric: {{name: fid, mode: min}}
    """))
    out_root = tmp_path / "sweeps"
    cmd = [CLI, "sweep", str(sweep), "--out-root", str(out_root), "--no-report"]
    long_dir = _kill_sweep_mid_trial(cmd, tmp_path, lambda dirs: next((d for d in dirs if d.name.endswith("long")), None), step=30)
    sweep_dir = long_dir.parent
    quick_dir = next(d for d in sweep_dir.iterdir() if d.name.endswith("quick"))
    bad_dir = next(d for d in sweep_dir.iterdir() if d.name.endswith("diverges"))
    quick_summary = (quick_dir / "summary.json").read_bytes()
    quick_mtime = (quick_dir / "summary.json").stat().st_mtime_ns
    ckpt_step = load_checkpoint(long_dir)["step"]
    assert ckpt_step >= 10
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tr, parents, before = _children_by_dir(uri, "fault_resume")
    assert len(parents) == 1 and parents[0].info.status == "RUNNING"  # nobody closed it
    assert before[quick_dir.name].info.status == "FINISHED" and before[bad_dir.name].info.status == "FAILED"
    quick_hist = tr.metric_history(before[quick_dir.name].info.run_id, "loss")

    res = subprocess.run([*cmd, "--resume"], env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    output = res.stdout + res.stderr
    assert res.returncode == 0, output
    assert f"resumed from {long_dir / 'checkpoint.pt'} at step {ckpt_step}" in output, output
    assert f"resuming sweep {sweep_dir.name}" in output
    # the finished trial was not run again
    assert (quick_dir / "summary.json").read_bytes() == quick_summary
    assert (quick_dir / "summary.json").stat().st_mtime_ns == quick_mtime
    tr, parents_after, after = _children_by_dir(uri, "fault_resume")
    assert [p.info.run_id for p in parents_after] == [parents[0].info.run_id]  # the parent run is reused ...
    assert tr.get_run(parents[0].info.run_id).info.status == "FINISHED"
    assert {k: v.info.run_id for k, v in after.items()} == {k: v.info.run_id for k, v in before.items()}  # ... and so are the trials'
    assert tr.metric_history(after[quick_dir.name].info.run_id, "loss") == quick_hist
    long_run = after[long_dir.name]
    assert long_run.info.status == "FINISHED"
    assert [s for s, _ in tr.metric_history(long_run.info.run_id, "loss")] == list(range(5, 201, 5))
    assert _steps(long_dir / "metrics.jsonl") == list(range(5, 201, 5))
    # the trial that fails for good: FAILED with the step and the metric, the others went on
    bad = after[bad_dir.name]
    assert bad.info.status == "FAILED"
    err = bad.data.tags["drifting.error"]
    assert "TrainingDiverged" in err and ("is nan" in err or "is inf" in err), err
    result = json.loads((sweep_dir / "sweep_result.json").read_text())
    assert sorted(t["status"] for t in result["trials"]) == ["FAILED", "FINISHED", "FINISHED"]


@pytest.mark.slow
def test_killed_optuna_sweep_resumes_its_study(tmp_path):
    sweep = tmp_path / "opt.yaml"
    sweep.write_text(textwrap.dedent(f"""
        name: fault_optuna
        base: {DIGITS}
        preset: smoke
        search: optuna
        num_samples: 3
        space:
          train.lr: {{loguniform: [1.0e-4, 1.0e-3]}}
          sampling.n_pos: {{choice: [8, 16]}}
        set: [train.steps=160, train.log_every=5, train.ckpt_every=10, eval.num_samples=100]
        resources: {{cpus_per_trial: 1, workers: 1}}
        max_concurrent: 1
        metric: {{name: fid, mode: min}}
    """))
    out_root = tmp_path / "sweeps"
    cmd = [CLI, "sweep", str(sweep), "--out-root", str(out_root), "--no-report"]

    def second_point(dirs):  # the first unfinished point once one point has finished
        if not any((d / "summary.json").exists() for d in dirs):
            return None
        return next((d for d in dirs if not (d / "summary.json").exists()), None)

    second = _kill_sweep_mid_trial(cmd, tmp_path, second_point, step=20, timeout=300)
    first = next(d.parent for d in out_root.rglob("trial.json") if d.parent != second and (d.parent / "summary.json").exists())
    first_summary = (first / "summary.json").read_bytes()
    ckpt_step = load_checkpoint(second)["step"]

    res = subprocess.run([*cmd, "--resume"], env=_env(tmp_path), capture_output=True, text=True, timeout=600)
    output = res.stdout + res.stderr
    assert res.returncode == 0, output
    assert "resuming: 1 of 3 Optuna trials are done; 2 to run" in output, output
    assert f"resumed from {second / 'checkpoint.pt'} at step {ckpt_step}" in output, output  # the interrupted point continued
    assert (first / "summary.json").read_bytes() == first_summary  # the finished point did not run again
    dirs = sorted(p.parent for p in out_root.rglob("trial.json"))
    assert len(dirs) == 3 and all((d / "summary.json").exists() for d in dirs)
    tr, parents, children = _children_by_dir(f"sqlite:///{tmp_path}/mlflow.db", "fault_optuna")
    assert len(parents) == 1 and tr.get_run(parents[0].info.run_id).info.status == "FINISHED"
    assert sorted(children) == sorted(d.name for d in dirs)  # one child run per point, none twice
    assert all(c.info.status == "FINISHED" for c in children.values())
    assert [s for s, _ in tr.metric_history(children[second.name].info.run_id, "loss")] == list(range(5, 161, 5))
