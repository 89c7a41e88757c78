"""Faults of a real cluster, made for real: the tracking server stopped while a sweep runs
(a real `mlflow server` on loopback, stopped for longer than MLflow's own retries), and still
down when the sweep ends; a journal of tracking writes left by a driver that died; two
sweeps started together on one store (SQLite, and a server); a Ray node lost while a
2-worker and a 1-worker trial run on it (two `ray start` nodes on this machine, the second's
raylet SIGKILLed and its temp dir deleted; checkpoints on a shared folder, or on S3)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from helpers import REPO, free_port

from drifting_platform.tracking import SweepTracker, stop_ui, wait_for_ui
from drifting_platform.tracking.outbox import JOURNAL, LOCAL_PREFIX, TAG_LOCAL_ID, BufferedTracker

DIGITS = REPO / "experiments" / "configs" / "digits.yaml"
BIN = Path(sys.executable).parent
CLI = str(BIN / "drifting-platform")
# MLflow's own HTTP retries, short: the outages below outlast them many times over
SHORT_RETRIES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


class MlflowServer:
    """A real `mlflow server` on 127.0.0.1 (SQLite backend, artifacts served by it) that a
    test stops and starts again on the same port."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self, timeout: float = 120) -> "MlflowServer":
        self.root.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        env.pop("MLFLOW_TRACKING_URI", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
             "--artifacts-destination", str(self.root / "artifacts"), "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"],
            stdout=open(self.root / "server.log", "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env,
        )
        assert wait_for_ui(f"{self.uri}/health", timeout=timeout, proc=self.proc), (self.root / "server.log").read_text()[-3000:]
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_ui(self.proc, port=self.port)
            self.proc = None


@pytest.fixture
def server(tmp_path):
    srv = MlflowServer(tmp_path / "server").start()
    yield srv
    srv.stop()


def _steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()] if path.exists() else []


def _children(uri: str, experiment: str) -> tuple[SweepTracker, list, dict]:
    """(tracker, parent runs, {trial dir name: child run}) of `experiment` in store `uri`;
    every child of every parent, so a run created twice would show."""
    tr = SweepTracker(uri=uri)
    exp = tr.experiment_id(experiment, create=False)
    parents = tr.client.search_runs([exp], filter_string="tags.`drifting.sweep` = 'true'") if exp else []
    out: dict = {}
    for p in parents:
        for c in tr.child_runs(p.info.run_id):
            name = Path(c.data.tags["drifting.trial_dir"]).name
            assert name not in out, f"{name}: two child runs"
            out[name] = c
    return tr, parents, out


def _sweep_file(tmp_path: Path, name: str, *, steps: int, rows: int = 2, workers: int = 1, extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    all_rows = [("V+ - V-", 1.0), ("1.5 V-", 1.5), ("V+ only", 0.0)][:rows]
    body = "\n".join(f"  - {{name: \"{r}\", set: {{drift.repulsion_scale: {s}}}}}" for r, s in all_rows)
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        base: {DIGITS}
        preset: smoke
        set: [train.steps={steps}, train.log_every=5, train.ckpt_every=10, train.threads=1, eval.num_samples=100]
        resources: {{cpus_per_trial: 1, workers: {workers}}}
        max_concurrent: {rows}
        metric: {{name: fid, mode: min}}
        {extra}rows:
        """) + body + "\n")
    return path


def _env(tmp_path: Path, uri: str, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(MLFLOW_TRACKING_URI=uri, DRIFTING_HOME=str(tmp_path / "home"), PYTHONUNBUFFERED="1", RAY_USAGE_STATS_ENABLED="0", **extra)
    return env


def _wait(cond, proc: subprocess.Popen | None, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the sweep ended (rc {proc.returncode}) before {what}:\n{proc.stdout.read() if proc.stdout else ''}")
        time.sleep(0.3)
    raise AssertionError(f"{what}: not within {timeout} s")


def _jsonls(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("metrics.jsonl") if "_tune" not in p.parts)


def _complete_child(tr: SweepTracker, run, trial_dir: Path, steps: int) -> None:
    """A child run that lacks nothing and has nothing twice: every step of metrics.jsonl
    once, params, tags, the artifacts, FINISHED."""
    rid = run.info.run_id
    expected = list(range(5, steps + 1, 5))
    assert _steps(trial_dir / "metrics.jsonl") == expected
    assert [s for s, _ in tr.metric_history(rid, "loss")] == expected, trial_dir.name
    assert [s for s, _ in tr.metric_history(rid, "fid")] == [steps]
    assert run.info.status == "FINISHED", (trial_dir.name, run.info.status)
    assert run.data.params["train.steps"] == str(steps) and "drift.repulsion_scale" in run.data.params
    assert run.data.tags["drifting.row"] and TAG_LOCAL_ID in run.data.tags
    assert {"samples.npz", "samples.png", "summary.json"} <= set(tr.artifact_paths(rid))


# --------------------------------------------------------------------------- the journal itself


def test_writes_while_the_server_is_down_return_at_once_and_are_written_once_when_it_is_back(server, tmp_path, caplog, monkeypatch):
    for k, v in SHORT_RETRIES.items():
        monkeypatch.setenv(k, v)
    tr = SweepTracker("outage", uri=server.uri)
    b = BufferedTracker(tr, tmp_path / JOURNAL)
    parent = b.start_sweep("outage", {"a": 1}, {})
    first = b.start_trial(parent, "row one", {"x": 1}, {"drifting.row": "row one"})
    for i in (1, 2, 3):
        b.log_metrics(first, {"loss": 1.0 / i}, i)
    assert b.flush(30) and b.resolve(first) and not b.resolve(first).startswith(LOCAL_PREFIX)

    server.stop()
    art = tmp_path / "samples.png"
    art.write_bytes(b"\x89PNG fake but a file")
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="drifting_platform.tracking.outbox"):
        for i in (4, 5, 6):
            b.log_metrics(first, {"loss": 1.0 / i}, i)
        b.log_artifacts(first, [str(art)])
        b.set_tags(first, {"late": "yes"})
        b.end_run(first, "FINISHED")
        second = b.start_trial(parent, "row two", {"x": 2}, {})
        b.log_metrics(second, {"loss": 5.0}, 1)
        b.end_run(second, "FAILED", "boom")
        took = time.monotonic() - t0
        assert took < 1.0, took  # nine writes, none of them waits for the server
        time.sleep(8)  # longer than MLflow's retries (1 retry, backoff 1 s)
        assert b.pending() == 9
        pending = {r["run"]: r for r in b.incomplete()}
        assert pending["row one"]["writes"] == 6 and pending["row one"]["run_id"] == b.resolve(first)
        assert pending["row two"]["run_id"] is None and pending["row two"]["kinds"] == ["runs", "metrics", "run status"]
        assert any("is unreachable" in r.getMessage() and str(tmp_path / JOURNAL) in r.getMessage() for r in caplog.records)
        server.start()
        assert b.flush(60), b.incomplete()
        assert any("is back after" in r.getMessage() and "9 writes" in r.getMessage() for r in caplog.records)
    b.close()
    one, two = tr.get_run(b.resolve(first)), tr.get_run(b.resolve(second))
    assert [s for s, _ in tr.metric_history(one.info.run_id, "loss")] == [1, 2, 3, 4, 5, 6]
    assert one.info.status == "FINISHED" and one.data.tags["late"] == "yes" and tr.artifact_paths(one.info.run_id) == ["samples.png"]
    assert two.info.status == "FAILED" and two.data.tags["drifting.error"] == "boom" and two.data.params == {"x": "2"}
    assert [r.info.run_name for r in tr.child_runs(parent)] == ["row one", "row two"]


def test_a_journal_left_by_a_dead_driver_is_synced_once(tmp_path):
    """The driver died with writes in its journal, one child run created but its answer
    lost, and its last line cut short: `drifting-platform sync` writes the rest once."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    sweep_dir = tmp_path / "home" / "sweeps" / "dead" / "smoke-1"
    tr = SweepTracker("dead", uri=uri)
    b = BufferedTracker(tr, sweep_dir / JOURNAL, start=False)  # no writer: as if it died at once
    parent = b.start_sweep("dead", {}, {})
    a = b.start_trial(parent, "a", {"x": 1}, {})
    for i in (5, 10):
        b.log_metrics(a, {"loss": float(i)}, i)
    b.end_run(a, "FINISHED")
    c = b.start_trial(parent, "c", {"x": 3}, {})
    b.log_metrics(c, {"loss": 1.0}, 5)
    # `a`'s creation reached the store, the answer did not
    created = tr.start_trial(parent, "a", {"x": 1}, {TAG_LOCAL_ID: a})
    with (sweep_dir / JOURNAL).open("a") as fh:
        fh.write('{"n": 99, "op": "log_metr')  # the write the crash cut
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "DRIFTING_HOME": str(tmp_path / "home")}
    res = subprocess.run([CLI, "sync"], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{sweep_dir}: wrote 6 writes; complete" in res.stdout
    runs = {r.info.run_name: r for r in tr.child_runs(parent)}
    assert sorted(runs) == ["a", "c"] and runs["a"].info.run_id == created  # found, not made twice
    assert [s for s, _ in tr.metric_history(created, "loss")] == [5, 10] and runs["a"].info.status == "FINISHED"
    assert runs["a"].data.params == {"x": "1"} and runs["c"].data.params == {"x": "3"}
    res = subprocess.run([CLI, "sync", str(sweep_dir)], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "nothing to sync" in res.stdout
    assert [s for s, _ in tr.metric_history(created, "loss")] == [5, 10]
    res = subprocess.run([CLI, "sync", str(tmp_path / "nope")], env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "no tracking journal" in res.stderr and "Traceback" not in res.stderr


# --------------------------------------------------------------------------- the server goes away mid-sweep


def _start_sweep(cmd: list, env: dict) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 900) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return out


@pytest.mark.slow
def test_tracking_server_down_mid_sweep_training_goes_on_and_nothing_is_lost(server, tmp_path):
    steps = 150
    sweep = _sweep_file(tmp_path, "outage", steps=steps)
    out_root = tmp_path / "sweeps"
    env = _env(tmp_path, server.uri, **SHORT_RETRIES)
    t0 = time.monotonic()
    proc = _start_sweep([CLI, "sweep", str(sweep), "--out-root", str(out_root)], env)
    try:
        _wait(lambda: len(_jsonls(out_root)) == 2 and all(max(_steps(p) or [0]) >= 20 for p in _jsonls(out_root)), proc, 300, "both trials at step 20")
        server.stop()
        down_at = {p: max(_steps(p)) for p in _jsonls(out_root)}
        time.sleep(25)  # many times MLflow's retries (1 retry, backoff 1 s)
        during = {p: max(_steps(p)) for p in _jsonls(out_root)}
        server.start()
        down = time.monotonic()
        out = _finish(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    took = time.monotonic() - t0
    print(f"sweep with a 25 s outage: {took:.0f} s; steps trained while the server was down: "
          f"{[during[p] - down_at[p] for p in down_at]}; after the restart {time.monotonic() - down:.0f} s")
    assert proc.returncode == 0, out[-6000:]
    # training never stopped: each trial went on while the server was down
    assert all(during[p] - down_at[p] >= 10 for p in down_at), (down_at, during)
    assert "is unreachable" in out and "training goes on" in out and str(out_root) in out, out[-4000:]
    assert "is back after" in out and "writes kept meanwhile" in out, out[-4000:]
    assert "report files:" in out  # the report came
    tr, parents, children = _children(server.uri, "outage")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert "sweep_result.json" in tr.artifact_paths(parents[0].info.run_id)
    assert sorted(children) == sorted(p.parent.name for p in _jsonls(out_root))
    for p in _jsonls(out_root):
        _complete_child(tr, tr.get_run(children[p.parent.name].info.run_id), p.parent, steps)
    result = json.loads(next(out_root.rglob("sweep_result.json")).read_text())
    assert {t["run_id"] for t in result["trials"]} == {c.info.run_id for c in children.values()}


@pytest.mark.slow
def test_tracking_server_still_down_at_the_end_names_the_runs_and_resume_writes_them(server, tmp_path):
    steps = 40
    sweep = _sweep_file(tmp_path, "outage_end", steps=steps)
    out_root = tmp_path / "sweeps"
    env = _env(tmp_path, server.uri, DRIFTING_TRACKING_WAIT="3", **SHORT_RETRIES)
    cmd = [CLI, "sweep", str(sweep), "--out-root", str(out_root)]
    proc = _start_sweep(cmd, env)
    _wait(lambda: len(_jsonls(out_root)) == 2 and all(max(_steps(p) or [0]) >= 10 for p in _jsonls(out_root)), proc, 300, "both trials at step 10")
    server.stop()
    out = _finish(proc)
    assert proc.returncode == 75, out[-6000:]
    sweep_dir = next(out_root.rglob("sweep_result.json")).parent
    assert "the sweep finished, but the tracking store" in out and "3 runs are incomplete in MLflow" in out, out[-4000:]
    for name in ("V+ - V-", "1.5 V-", "sweep "):
        assert f"\n  {name}" in out, (name, out[-3000:])
    assert f"drifting-platform sync {sweep_dir}" in out and "--resume" in out
    assert "report files:" not in out and not (tmp_path / "home" / "reports" / "outage_end.md").exists()
    kept = (sweep_dir / JOURNAL).read_text()

    server.start()
    res = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    out2 = res.stdout + res.stderr
    assert res.returncode == 0, out2[-4000:]
    assert "is already complete" in out2 and "wrote the" in out2 and "report files:" in out2, out2[-3000:]
    assert "Started a local Ray instance" not in out2  # nothing ran again
    assert (sweep_dir / JOURNAL).read_text().startswith(kept)
    tr, parents, children = _children(server.uri, "outage_end")
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    for p in _jsonls(out_root):
        _complete_child(tr, tr.get_run(children[p.parent.name].info.run_id), p.parent, steps)
    result = json.loads((sweep_dir / "sweep_result.json").read_text())
    assert {t["run_id"] for t in result["trials"]} == {c.info.run_id for c in children.values()}  # no local ids left
    # a second --resume has nothing left to write
    res = subprocess.run([*cmd, "--resume"], env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and "wrote the" not in res.stdout
    tr, _, again = _children(server.uri, "outage_end")
    assert all(len(tr.metric_history(c.info.run_id, "loss")) == steps // 5 for c in again.values())


# --------------------------------------------------------------------------- a Ray cluster on this machine


class RayCluster:
    """`ray start --head` plus `ray start --address ...` nodes on this machine, each with its
    own CPUs and temp dir, each owned by its `ray start --block` process."""

    def __init__(self, tmp: Path):
        self.tmp, self.port = tmp, free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        self.env.update(RAY_AUTH_MODE="token", RAY_USAGE_STATS_ENABLED="0")
        self.procs: dict[str, subprocess.Popen] = {}
        self.temp: dict[str, Path] = {}
        subprocess.run([str(BIN / "ray"), "get-auth-token", "--generate"], env=self.env, capture_output=True, timeout=60, check=True)

    def _start(self, name: str, args: list[str]) -> None:
        log = open(self.tmp / f"ray-{name}.log", "ab")
        self.procs[name] = subprocess.Popen([str(BIN / "ray"), "start", *args, "--block"], env=self.env, stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)

    def head(self, cpus: int, resources: str = "{}") -> "RayCluster":
        self._start("head", ["--head", f"--port={self.port}", f"--num-cpus={cpus}", f"--resources={resources}", "--include-dashboard=false",
                             f"--ray-client-server-port={free_port()}"])
        self.wait_nodes(1)
        return self

    def node(self, name: str, cpus: int) -> int:
        """Start a worker node; returns its node manager port (its raylet's)."""
        port = free_port()
        # its own temp dir, short: Ray's socket paths under it must stay within 107 bytes
        self.temp[name] = Path(tempfile.mkdtemp(prefix=f"ray-{name}-", dir="/tmp"))
        self._start(name, [f"--address={self.address}", f"--num-cpus={cpus}", f"--temp-dir={self.temp[name]}", f"--node-manager-port={port}"])
        self.wait_nodes(len(self.procs))
        return port

    def python(self, code: str, timeout: float = 60) -> str:
        res = subprocess.run([sys.executable, "-c", f"import ray\nray.init(address={self.address!r}, log_to_driver=False)\n{code}"],
                             env=self.env, capture_output=True, text=True, timeout=timeout)
        assert res.returncode == 0, res.stderr[-3000:]
        return res.stdout

    def alive(self) -> int:
        return int(self.python("print(sum(n['Alive'] for n in ray.nodes()))").strip().splitlines()[-1])

    def wait_nodes(self, n: int, timeout: float = 180) -> None:
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            try:
                if self.alive() == n:
                    return
            except AssertionError:
                pass
            time.sleep(2)
        raise AssertionError(f"{n} Ray nodes not up in {timeout} s: " + (self.tmp / "ray-head.log").read_text()[-2000:])

    def raylet_pid(self, name: str) -> int:
        marker = str(self.temp[name]).encode()
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    cmd = (d / "cmdline").read_bytes()
                except OSError:
                    continue
                if b"/raylet/raylet" in cmd and marker in cmd:
                    return int(d.name)
        raise AssertionError(f"no raylet of node {name}")

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        for proc in self.procs.values():
            try:
                proc.wait(max(1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for path in self.temp.values():
            shutil.rmtree(path, ignore_errors=True)


def _children_of(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().split(")")[-1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                continue
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow
@pytest.mark.parametrize("store", ["sqlite", "server"])
def test_two_sweeps_started_together_on_one_store_both_complete(store, tmp_path):
    srv = MlflowServer(tmp_path / "server").start() if store == "server" else None
    uri = srv.uri if srv else f"sqlite:///{tmp_path / 'fresh' / 'mlflow.db'}"  # not there yet: both create it
    cluster = RayCluster(tmp_path).head(cpus=4)
    steps = 30
    try:
        sweep = _sweep_file(tmp_path, "together", steps=steps)
        env = _env(tmp_path, uri, RAY_ADDRESS=cluster.address, RAY_AUTH_MODE="token")
        procs = [_start_sweep([CLI, "sweep", str(sweep), "--out-root", str(tmp_path / f"sweeps{i}"), "--no-report"], env) for i in (1, 2)]
        outs = [_finish(p) for p in procs]
    finally:
        cluster.stop()
    try:
        for p, out in zip(procs, outs):
            assert p.returncode == 0, out[-5000:]
            assert "database is locked" not in out and "tracking:" not in out, out[-3000:]
        tr = SweepTracker(uri=uri)
        parents = tr.client.search_runs([tr.experiment_id("together", create=False)], filter_string="tags.`drifting.sweep` = 'true'")
        assert len(parents) == 2 and all(p.info.status == "FINISHED" for p in parents)
        dirs = [p.parent for i in (1, 2) for p in _jsonls(tmp_path / f"sweeps{i}")]
        assert len(dirs) == 4  # two sweeps x two rows
        for p in parents:
            kids = tr.child_runs(p.info.run_id)
            assert len(kids) == 2 and all(k.info.status == "FINISHED" for k in kids)
            for k in kids:
                d = Path(k.data.tags["drifting.trial_dir"])
                assert d in dirs
                _complete_child(tr, tr.get_run(k.info.run_id), d, steps)
    finally:
        if srv:
            srv.stop()


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["shared-dir", "s3"])
def test_lost_node_mid_sweep_trials_resume_on_the_surviving_node(storage, tmp_path, request):
    """A 2-worker trial and a 1-worker trial (two sweeps: a sweep file has one `resources`)
    run on the second node; its raylet is SIGKILLed and its temp dir deleted; both trials
    continue from their checkpoints on the head, and the results match an uninterrupted run."""
    shared = tmp_path / "nfs"  # stands for the NFS every node mounts: sweep dirs, and checkpoints
    env_extra: dict = {}
    if storage == "s3":
        s3 = request.getfixturevalue("s3")
        env_extra = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}  # the s3 fixture's endpoint and keys
        storage_path = f"s3://{s3['bucket']}/lost-node"
    else:
        storage_path = str(shared / "ray")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # the 1-worker trial runs ~4x the 2-worker trial's steps/s here: it gets more steps, so
    # that both still run when the node goes
    steps = {"two": 300, "one": 600}
    sweeps = {k: _sweep_file(tmp_path, f"lost_{k}", steps=steps[k], rows=1, workers=2 if k == "two" else 1) for k in steps}
    cluster = RayCluster(tmp_path).head(cpus=3, resources='{"headslot": 1}')
    blocker = None
    try:
        cluster.node("spot", cpus=3)
        # the head is busy at first (a placement group holds its CPUs): the trials go to the spot node
        blocker = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(f"""
                import ray, time
                from ray.util.placement_group import placement_group
                ray.init(address={cluster.address!r}, log_to_driver=False)
                pg = placement_group([{{"CPU": 3, "headslot": 1}}])
                ray.get(pg.ready())
                print("ready", flush=True)
                time.sleep(3600)
            """)], env=cluster.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        said = []
        for line in blocker.stdout:  # Ray's connection lines first
            said.append(line)
            if line.strip() == "ready":
                break
        assert said and said[-1].strip() == "ready", "".join(said)
        env = _env(tmp_path, uri, RAY_ADDRESS=cluster.address, RAY_AUTH_MODE="token", **env_extra)
        jsonl = {k: lambda k=k: next(iter(_jsonls(shared / "sweeps" / k)), None) for k in sweeps}
        procs, started = {}, {}
        for k, s in sweeps.items():  # the 2-worker sweep first: its worker group takes longest to start
            started[k] = time.monotonic()
            procs[k] = _start_sweep([CLI, "sweep", str(s), "--out-root", str(shared / "sweeps" / k), "--storage-path", storage_path, "--no-report"], env)
            _wait(lambda k=k: jsonl[k]() is not None and max(_steps(jsonl[k]()) or [0]) >= 10, procs[k], 400, f"the {k}-worker trial at step 10")
        for k, proc in procs.items():
            _wait(lambda k=k: max(_steps(jsonl[k]()) or [0]) >= 20, proc, 400, f"the {k}-worker trial at step 20")
        raylet = cluster.raylet_pid("spot")
        on_spot = [_cmdline(p).split()[0] for p in _children_of(raylet) if _cmdline(p).strip()]
        assert sum("RayTrainWorker" in c for c in on_spot) == 2, on_spot  # the 2-worker trial's workers ...
        assert any("ImplicitFunc" in c for c in on_spot), on_spot  # ... and the 1-worker trial (a Tune function trainable)
        assert all(max(_steps(jsonl[k]())) < steps[k] for k in procs)  # both still running
        before = {k: max(_steps(jsonl[k]())) for k in procs}
        os.killpg(blocker.pid, signal.SIGKILL)  # the head frees up ...
        blocker.wait(10)
        time.sleep(2)
        t_kill = time.monotonic()
        os.kill(raylet, signal.SIGKILL)  # ... and the spot node is reclaimed: no cleanup, no goodbye
        shutil.rmtree(cluster.temp["spot"], ignore_errors=True)  # its local disk is gone with it
        outs = {k: _finish(p) for k, p in procs.items()}
        took = {k: time.monotonic() - started[k] for k in procs}  # (both were waited for together: an upper bound)
        lost = time.monotonic() - t_kill
        assert cluster.alive() == 1  # the spot node is dead; the sweeps finished on the head
    finally:
        if blocker is not None and blocker.poll() is None:
            os.killpg(blocker.pid, signal.SIGKILL)
        cluster.stop()
    print(f"lost node ({storage}): killed at steps {before}; sweeps done {lost:.0f} s after the kill")
    for k, out in outs.items():
        assert procs[k].returncode == 0, out[-6000:]
        assert "resumed from" in out, out[-4000:]
    tr, parents, children = _children(uri, "lost_two")
    _, parents1, children1 = _children(uri, "lost_one")
    for k, kids in (("two", children), ("one", children1)):
        assert len(kids) == 1
        d = jsonl[k]().parent
        _complete_child(tr, tr.get_run(kids[d.name].info.run_id), d, steps[k])  # one continuous history each

    # the same two sweeps without the fault, on one local Ray: the same rows
    base_env = _env(tmp_path, f"sqlite:///{tmp_path / 'baseline.db'}", **env_extra)
    for k, s in sweeps.items():
        t0 = time.monotonic()
        res = subprocess.run([CLI, "sweep", str(s), "--out-root", str(tmp_path / "baseline" / k), "--no-report"], env=base_env,
                             capture_output=True, text=True, timeout=900)
        assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
        print(f"uninterrupted {k}-worker sweep alone: {time.monotonic() - t0:.0f} s; with the lost node: {took[k]:.0f} s (beside the other sweep)")
    for k in sweeps:
        got = json.loads(next((shared / "sweeps" / k).rglob("sweep_result.json")).read_text())["trials"]
        ref = json.loads(next((tmp_path / "baseline" / k).rglob("sweep_result.json")).read_text())["trials"]
        assert [(t["label"], t["status"], t["metrics"]["steps"]) for t in got] == [(t["label"], t["status"], t["metrics"]["steps"]) for t in ref]
        for a, b in zip(got, ref):
            assert a["metrics"]["fid"] == pytest.approx(b["metrics"]["fid"], rel=1e-3), (k, a["metrics"], b["metrics"])
