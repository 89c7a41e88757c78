"""The MLflow UI process: ``serve_ui`` runs ``python -m mlflow ui`` on the tracking store,
bound to 127.0.0.1 by default, in its own process group; ``stop_ui`` ends the whole group.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Optional, Union

from .store import default_artifact_root, root_uri, tracking_uri

PathLike = Union[str, "os.PathLike[str]"]


def ui_command(*, port: int = 5000, host: str = "127.0.0.1", uri: Optional[str] = None, workers: int = 1) -> list[str]:
    """``python -m mlflow ui`` for store ``uri`` (default ``tracking_uri()``), bound to ``host``."""
    uri = uri or tracking_uri()
    cmd = [
        sys.executable, "-m", "mlflow", "ui",
        "--backend-store-uri", uri,
        "--host", host,
        "--port", str(int(port)),
        "--workers", str(int(workers)),
    ]
    root = default_artifact_root(uri)
    if root is not None:
        cmd += ["--default-artifact-root", root_uri(root)]
    return cmd


class UIProcess(subprocess.Popen):
    """The ``serve_ui`` process. It leads its own process group (the MLflow CLI plus the uvicorn
    server it spawns), and ``terminate()`` / ``kill()`` signal that whole group, so stopping it
    never leaves a server behind."""

    def send_signal(self, sig: int) -> None:
        if self.poll() is not None:
            return
        try:
            os.killpg(self.pid, sig)
        except (ProcessLookupError, PermissionError):
            super().send_signal(sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def serve_ui(
    *,
    port: int = 5000,
    host: str = "127.0.0.1",
    uri: Optional[str] = None,
    wait: Optional[float] = None,
    log_path: Optional[PathLike] = None,
    jobs: bool = False,
) -> UIProcess:
    """Start the MLflow UI in the background (its own process group); returns the process
    (a ``subprocess.Popen`` whose ``terminate()`` stops the whole group).

    With ``wait`` (seconds), block until ``http://host:port/`` answers 200, else stop it and
    raise ``TimeoutError``. Output goes to ``log_path`` (default: discarded). Stop it with
    ``stop_ui(proc)``, which also ends the server's worker processes. ``jobs=False`` (unless
    ``$MLFLOW_SERVER_ENABLE_JOB_EXECUTION`` is set) turns off MLflow's server-side job executor,
    which browsing runs does not need; it halves the start-up time."""
    uri = uri or tracking_uri()
    root = default_artifact_root(uri)
    if isinstance(root, Path):
        root.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    if not jobs:
        env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    out = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    try:
        proc = UIProcess(
            ui_command(port=port, host=host, uri=uri),
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True, env=env,
        )
    finally:
        if log_path:
            out.close()
    if wait:
        if not wait_for_ui(f"http://{_url_host(host)}:{port}/", timeout=wait, proc=proc):
            stop_ui(proc)
            raise TimeoutError(f"MLflow UI did not answer on {host}:{port} within {wait:g}s")
    return proc


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def wait_for_ui(url: str, *, timeout: float = 30.0, proc: Optional[subprocess.Popen] = None) -> bool:
    """Poll ``url`` until it answers HTTP 200 (True) or ``timeout`` passes / ``proc`` exits (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 - local URL
                if resp.status == 200:
                    return True
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.3)
    return False


def stop_ui(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop a ``serve_ui`` process and its process group (SIGTERM, then SIGKILL)."""
    if proc.poll() is not None:
        return
    try:
        pgid = os.getpgid(proc.pid)
    except ProcessLookupError:
        return
    own = pgid == proc.pid  # serve_ui starts a new session, so the group is ours alone
    try:
        os.killpg(pgid, signal.SIGTERM) if own else proc.terminate()
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL) if own else proc.kill()
        proc.wait(timeout=timeout)
    except ProcessLookupError:
        pass
    if own:  # workers that outlived the CLI process
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
