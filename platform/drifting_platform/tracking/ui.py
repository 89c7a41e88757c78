"""The MLflow UI process: ``serve_ui`` runs ``python -m mlflow ui`` on the tracking store,
bound to 127.0.0.1 by default, in its own session (process group); ``stop_ui`` ends the whole
group and waits until the port is free. ``ui_links`` gives the links ``drifting-platform ui``
prints: the experiments list, the latest sweep's runs table and its children compared by ``fid``.

MLflow 3.17's UI (a hash router: the query string goes after ``#/path``) opens an experiment
in its GenAI view unless the URL says ``workflowType=machine_learning``. Its
``#/compare-runs?runs=[...]&experiments=[...]`` page has no URL state for its plots: the
parallel-coordinates plot starts on the first metric in the list and the scatter plot on the
first param / metric. What does select a metric is the experiment page's chart view
(``compareRunsMode=CHART``) opened on a *saved view* (``viewStateShareKey=<key>``, MLflow's own
"share view" mechanism: the view's state is the experiment tag ``mlflow.sharedViewState.<key>``).
``ui_links`` writes one such tag per sweep (``save_compare_view``): the sweep's children only,
sorted by the metric, a bar chart of it and a parallel-coordinates chart of the varied params
against it.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Optional, Union

from .client import SweepTracker
from .store import default_artifact_root, root_uri, tracking_uri, with_retry
from .tags import TAG_PARENT, TAG_SWEEP, TAG_SWEEP_NAME

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


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts connections on ``host:port``."""
    try:
        with socket.create_connection((_url_host(host).strip("[]"), int(port)), timeout=1):
            return True
    except OSError:
        return False


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_ui(proc: subprocess.Popen, timeout: float = 10.0, *, port: Optional[int] = None, host: str = "127.0.0.1") -> None:
    """Stop a ``serve_ui`` process and every process of its group: SIGTERM to the group, then,
    after ``timeout`` seconds, SIGKILL to whatever is left of it (the MLflow CLI and the
    uvicorn / gunicorn workers it spawned). With ``port``, also wait (up to ``timeout``) until
    nothing answers on ``host:port`` any more."""
    try:
        pgid = os.getpgid(proc.pid) if proc.poll() is None else proc.pid
    except ProcessLookupError:
        pgid = proc.pid
    own = pgid == proc.pid  # serve_ui starts a new session, so the group is ours alone
    if own and _group_alive(pgid):
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and _group_alive(pgid):
            proc.poll()  # reap the CLI process so it does not linger as a zombie of the group
            time.sleep(0.1)
        if _group_alive(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    elif proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    if port is not None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and port_in_use(port, host):
            time.sleep(0.1)


# -- the links ``drifting-platform ui`` prints

RUNS_VIEW = "workflowType=machine_learning"  # MLflow 3.17 opens experiments in the GenAI view otherwise
SHARED_VIEW_TAG = "mlflow.sharedViewState."  # MLflow's saved / shared view: experiment tag + ?viewStateShareKey=


def latest_sweep(uri: Optional[str] = None, tracker: Optional[SweepTracker] = None):
    """The most recently started sweep parent run (tag ``drifting.sweep=true``) in any active
    experiment of the store, or None."""
    tracker = tracker or SweepTracker(uri=uri)
    client = tracker.client
    exp_ids = [e.experiment_id for e in with_retry(client.search_experiments)]
    if not exp_ids:
        return None
    runs = with_retry(
        client.search_runs, exp_ids, filter_string=f"tags.`{TAG_SWEEP}` = 'true'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    return runs[0] if runs else None


def _varied_params(children: list, limit: int = 6) -> list[str]:
    """The params whose values differ between ``children`` (what the sweep varied), sorted."""
    keys = sorted({k for r in children for k in r.data.params})
    varied = [k for k in keys if len({r.data.params.get(k) for r in children}) > 1]
    return varied[:limit]


def _children_filter(parent_id: str) -> str:
    return f"tags.`{TAG_PARENT}` = '{parent_id}'"


def save_compare_view(tracker: SweepTracker, parent, children: list, metric: str = "fid", *, mode: str = "min") -> str:
    """Write MLflow's saved-view tag for sweep ``parent`` on its experiment and return its key.

    The view (opened with ``?compareRunsMode=CHART&viewStateShareKey=<key>``) shows the
    sweep's children only (``searchFilter``), sorted by ``metric`` (ascending for
    ``mode="min"``), with a section of two charts first: a bar chart of ``metric`` and a
    parallel-coordinates chart of the varied params against it. The key is a hash of the parent
    run id and the metric, so writing it again replaces the same tag."""
    pid = parent.info.run_id
    key = hashlib.sha256(f"drifting:{pid}:{metric}".encode()).hexdigest()[:32]
    section = f"drifting-{key[:8]}"
    n = max(len(children), 1)
    base = {"runsCountToCompare": n, "metricSectionId": section, "deleted": False, "isGenerated": False}
    charts = [
        {**base, "uuid": f"{section}-bar", "type": "BAR", "metricKey": metric, "displayName": metric},
        {**base, "uuid": f"{section}-parallel", "type": "PARALLEL",
         "selectedParams": _varied_params(children), "selectedMetrics": [metric]},
    ]
    name = parent.data.tags.get(TAG_SWEEP_NAME) or parent.info.run_name or pid
    state = {
        "searchFilter": _children_filter(pid),
        "orderByKey": f"metrics.`{metric}`",
        "orderByAsc": mode != "max",
        "compareRunCharts": charts,
        "compareRunSections": [{"uuid": section, "name": f"{name}: {metric}", "display": True,
                                "isReordered": False, "deleted": False, "isGenerated": False}],
        "isAccordionReordered": True,
    }
    now = int(time.time() * 1000)
    envelope = {"name": f"{name} by {metric}", "createdAt": now, "updatedAt": now, "state": json.dumps(state)}
    with_retry(tracker.client.set_experiment_tag, parent.info.experiment_id, SHARED_VIEW_TAG + key, json.dumps(envelope))
    return key


def _q(value: Any) -> str:
    return urllib.parse.quote(json.dumps(value, separators=(",", ":")), safe="")


def ui_links(base_url: str, *, uri: Optional[str] = None, metric: str = "fid") -> dict[str, str]:
    """The links ``drifting-platform ui`` prints, each usable as typed.

    ``experiments``: the experiments list. With a sweep in the store (the latest one, see
    ``latest_sweep``) also ``runs``: the runs table of its experiment showing the sweep's
    children sorted by ``metric`` (URL state only); ``compare``: the same runs in the chart
    view with a chart of ``metric`` first (a saved view, see ``save_compare_view``);
    ``compare_runs``: MLflow's compare-runs page of the children (its plots start on the first
    metric: no URL state selects one)."""
    base = base_url.rstrip("/")
    links = {"experiments": f"{base}/#/experiments"}
    tracker = SweepTracker(uri=uri)
    parent = latest_sweep(tracker=tracker)
    if parent is None:
        return links
    exp_id, pid = parent.info.experiment_id, parent.info.run_id
    runs = f"{base}/#/experiments/{exp_id}/runs?{RUNS_VIEW}"  # not /experiments/<id>: it redirects, dropping the query
    facets = urllib.parse.urlencode(
        {"searchFilter": _children_filter(pid), "orderByKey": f"metrics.`{metric}`", "orderByAsc": "true"},
        quote_via=urllib.parse.quote,
    )
    links["runs"] = f"{runs}&{facets}"
    children = tracker.child_runs(pid)
    if children:
        key = save_compare_view(tracker, parent, children, metric)
        links["compare"] = f"{runs}&compareRunsMode=CHART&viewStateShareKey={key}"
        ids = [r.info.run_id for r in children]
        links["compare_runs"] = f"{base}/#/compare-runs?runs={_q(ids)}&experiments={_q([exp_id])}"
    return links
