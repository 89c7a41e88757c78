"""`drifting-platform ui` as a process: real signals, real MLflow server, real ports.

SIGTERM (what a process manager sends) and SIGINT (Ctrl-C) must end the MLflow server and its
uvicorn worker with the command, exit 0 and free the port. A headless Chromium must see the
latest sweep's child runs by name behind the links `ui` prints (skipped, with the reason, when
Debian's `chromium` is not installed; scripts/check_ui.py runs the same check by hand).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import REPO, free_port

sys.path.insert(0, str(REPO / "scripts"))
import check_ui  # noqa: E402


def port_pids(port: int) -> set[int]:
    """Live (non-zombie) processes whose command line has ``--port PORT``: the MLflow CLI and
    its uvicorn server (a /proc scan: no psutil here)."""
    pids = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            args = (d / "cmdline").read_bytes().split(b"\0")
            state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and any(a == b"--port" and b == str(port).encode() for a, b in zip(args, args[1:])):
            pids.add(int(d.name))
    return pids


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_ui_signal_stops_server_and_frees_port(isolated_home, tmp_path, sig):
    env = {"MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"], "DRIFTING_HOME": str(isolated_home)}
    if sig == signal.SIGTERM:  # a store with a sweep: every link is printed
        env = check_ui.make_store(tmp_path)["env"]
        until = "latest sweep, compare"
    else:  # an empty store: just the experiments list
        until = "experiments"
    port = free_port()
    proc, links, lines = check_ui.start_ui(env, port, until=until)
    try:
        assert links.get("experiments") == f"http://127.0.0.1:{port}/#/experiments", lines
        if sig == signal.SIGTERM:
            assert set(links) == {"experiments", "latest sweep, runs", "latest sweep, by fid", "latest sweep, compare"}
            assert "workflowType=machine_learning" in links["latest sweep, runs"]
        with urllib.request.urlopen(links["experiments"], timeout=10) as resp:
            assert resp.status == 200
        server = port_pids(port) - {proc.pid}
        assert server, "no MLflow server process found for the port"
    finally:
        code = check_ui.stop(proc, sig)
    rest = proc.stdout.read() if proc.stdout and not proc.stdout.closed else ""
    assert code == 0, rest
    if sig == signal.SIGINT:
        assert set(links) == {"experiments"}  # no sweep: no sweep links
    assert not [p for p in server if alive(p)], f"left running: {server}"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_ui_refuses_a_busy_port(isolated_home):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        t0 = time.monotonic()
        out = subprocess.run(
            [str(check_ui.BIN / "drifting-platform"), "ui", "--port", str(port)],
            capture_output=True, text=True, timeout=60,
        )
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"Error: port {port} on 127.0.0.1 is in use (another MLflow UI?); choose a free one with --port"
    assert time.monotonic() - t0 < 20


@pytest.mark.slow
@pytest.mark.skipif(check_ui.chromium() is None, reason="no `chromium` on PATH (Debian: apt-get install -y chromium)")
def test_chromium_sees_the_sweep_children(tmp_path):
    times = check_ui.check(tmp_path, log=lambda *a: None)
    print("timings:", {k: round(v, 1) for k, v in times.items()})
