"""A sweep interrupted by SIGINT / SIGTERM, resumed, and resumed again once finished.

The real `drifting-platform sweep` command as a subprocess (real Ray, real Tune, the real
SQLite MLflow store of `isolated_home`), a real signal sent to it, and the command it prints
run again.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from helpers import REPO

pytest.importorskip("ray")
mlflow = pytest.importorskip("mlflow")

DIGITS = REPO / "experiments" / "configs" / "digits.yaml"
CLI = Path(sys.executable).parent / "drifting-platform"
LONG = 80  # steps of the rows that the signal interrupts


def _sweep_file(tmp_path: Path) -> Path:
    # row 0 is short (it finishes before the signal); rows 1 and 2 are still to do
    path = tmp_path / "three.yaml"
    path.write_text(textwrap.dedent(f"""
        name: three_rows
        base: {DIGITS}
        preset: smoke
        set: [eval.num_samples=100, train.log_every=4, train.ckpt_every=8]
        rows:
          - {{name: "short V+ - V-", set: {{train.steps: 8}}}}
          - {{name: "V+ - 2 V-", set: {{drift.repulsion_scale: 2.0, train.steps: {LONG}}}}}
          - {{name: "V+ only", set: {{drift.repulsion_scale: 0.0, train.steps: {LONG}}}}}
        resources: {{cpus_per_trial: 1, workers: 1}}
        max_concurrent: 2
        metric: {{name: fid, mode: min}}
    """))
    return path


def _runs(client):
    exp = client.get_experiment_by_name("three_rows")
    if exp is None:
        return None, []
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("drifting.sweep") == "true"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    return (parents[0] if parents else None), children


def _by_row(children) -> dict:
    return {r.data.tags["drifting.row"]: r for r in children}


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_sweep_is_killed_then_resumed_then_complete(sig, tmp_path, isolated_home):
    sweep = _sweep_file(tmp_path)
    client = mlflow.MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    # an earlier sweep's report: an interrupted sweep must leave it byte-identical
    reports = isolated_home / "reports"
    reports.mkdir(parents=True)
    earlier = {ext: f"earlier report {ext}\n".encode() for ext in ("md", "csv", "png")}
    for ext, data in earlier.items():
        (reports / f"three_rows.{ext}").write_bytes(data)

    argv = [str(CLI), "sweep", str(sweep)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    sweeps = isolated_home / "sweeps" / "three_rows"
    try:
        # wait until row 0 has finished (its child run FINISHED) and row 1 reports
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            _, children = _runs(client)
            rows = _by_row(children)
            short = rows.get("short V+ - V-")
            if short is not None and short.info.status == "FINISHED" and list(sweeps.glob("*/01_*/metrics.jsonl")):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the sweep did not get going: rc={proc.poll()}")
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    assert proc.returncode == 128 + sig, (out, err)
    assert "Tuner.restore" not in out + err
    lines = [x for x in err.splitlines() if x.startswith("resume with: ")]
    assert len(lines) == 1, err
    resume = shlex.split(lines[0].removeprefix("resume with: "))
    assert resume[1:] == argv[1:] + ["--resume"]
    assert os.path.realpath(shutil.which(resume[0]) or resume[0]) == os.path.realpath(argv[0])
    assert f"interrupted by {sig.name}" in err

    # MLflow: the parent and every unfinished child KILLED, the finished child FINISHED
    parent, children = _runs(client)
    assert parent.info.status == "KILLED"
    rows = _by_row(children)
    assert rows["short V+ - V-"].info.status == "FINISHED"
    assert rows["V+ - 2 V-"].info.status == "KILLED"
    assert all(r.info.status in ("FINISHED", "KILLED") for r in children)
    assert "drifting.error" not in rows["V+ - 2 V-"].data.tags
    # no report: the earlier one is untouched
    for ext, data in earlier.items():
        assert (reports / f"three_rows.{ext}").read_bytes() == data
    # trial directories, and Tune's, named by the rows
    (sweep_dir,) = [p for p in sweeps.iterdir() if p.is_dir()]
    assert {"00_short_V+_-_V-", "01_V+_-_2_V-"} <= {p.name for p in sweep_dir.iterdir()}
    tune_dirs = [p.name for p in (sweep_dir / "_tune" / "tune").iterdir() if p.is_dir()]
    assert tune_dirs and all(n[:3] in ("00_", "01_", "02_") for n in tune_dirs), tune_dirs

    # the printed command finishes the sweep in the same runs
    ids = {label: r.info.run_id for label, r in rows.items()}
    done = subprocess.run(resume, capture_output=True, text=True, cwd=tmp_path, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    parent2, children2 = _runs(client)
    assert parent2.info.run_id == parent.info.run_id and parent2.info.status == "FINISHED"
    rows2 = _by_row(children2)
    assert sorted(rows2) == ["V+ - 2 V-", "V+ only", "short V+ - V-"] and len(children2) == 3
    for label, run_id in ids.items():
        assert rows2[label].info.run_id == run_id
    for label, r in rows2.items():
        assert r.info.status == "FINISHED", label
        assert "drifting.error" not in r.data.tags
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "loss")]
        last = 8 if label.startswith("short") else LONG
        assert steps == list(range(4, last + 1, 4)), (label, steps)  # one continuous history
    md = (reports / "three_rows.md").read_text()
    assert "V+ - 2 V-" in md and "FINISHED" in md
    # console: one line per trial, by row; none of Tune's own tables or names
    progress = [x for x in done.stdout.splitlines() if x.startswith("[") and "/3]" in x]
    assert len(progress) == 3 and all(" FINISHED " in x for x in progress), done.stdout
    assert any("V+ - 2 V-" in x for x in progress)
    noise = done.stdout + done.stderr
    for word in ("run_trial_", "Trial status", "Current best trial", "Downloading artifacts", "Tuner.restore"):
        assert word not in noise, word

    # resumed once more: already complete, nothing runs, nothing new in MLflow
    before = {p: p.read_bytes() for p in reports.iterdir()}
    again = subprocess.run(resume, capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert again.returncode == 0, again.stderr
    assert f"sweep three_rows ({sweep_dir}) is already complete: 3 trials finished; nothing to run" in again.stdout
    assert str(reports / "three_rows.md") in again.stdout
    assert "Ray instance" not in again.stderr  # Ray never started
    parent3, children3 = _runs(client)
    assert parent3.info.status == "FINISHED" and len(children3) == 3
    assert {r.info.run_id for r in children3} == {r.info.run_id for r in children2}
    assert {p: p.read_bytes() for p in reports.iterdir()} == before


def test_resume_command_is_the_argv_plus_resume():
    from drifting_platform.launch.sweep import resume_command

    assert resume_command(["./bin/drifting-platform", "sweep", "my file.yaml", "--preset", "smoke"]) == (
        "./bin/drifting-platform sweep 'my file.yaml' --preset smoke --resume"
    )
    assert resume_command(["drifting-platform", "sweep", "x.yaml", "--resume"]) == "drifting-platform sweep x.yaml --resume"
    cmd = shlex.split(resume_command(["experiments/ablate_antisymmetry.py", "--preset", "smoke"], script=True))
    assert cmd[1:] == ["experiments/ablate_antisymmetry.py", "--preset", "smoke", "--resume"]
    assert os.path.realpath(shutil.which(cmd[0]) or cmd[0]) == os.path.realpath(sys.executable)


def test_trial_processes_drop_only_exit_tracebacks_from_gc_callbacks():
    """Ray's SIGTERM at shutdown raises SystemExit; inside a GC callback Python prints it as
    'Exception ignored' (forwarded to the sweep's console). Trial processes drop exactly those."""
    code = (
        "import weakref, gc\n"
        "from drifting_platform.launch.trial import quiet_exit_in_gc\n"
        "quiet_exit_in_gc()\n"
        "class A: pass\n"
        "def cb(_):\n    raise SystemExit(1)\n"
        "def bad(_):\n    raise ValueError('a real bug')\n"
        "a, b = A(), A()\n"
        "ra, rb = weakref.ref(a, cb), weakref.ref(b, bad)\n"
        "del a, b\n"
        "gc.collect()\n"
        "print('alive')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "alive" in out.stdout
    assert "SystemExit" not in out.stderr
    assert "ValueError: a real bug" in out.stderr
