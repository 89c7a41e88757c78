#!/usr/bin/env python
"""Check `drifting-platform ui` end to end in a headless Chromium (Debian's `chromium`).

    PYTHONPATH=platform .venv/bin/python scripts/check_ui.py          # exit 0: all seen
    PYTHONPATH=platform .venv/bin/python scripts/check_ui.py --keep   # also leave the store

It makes a small sweep store in a temporary folder (a parent run tagged as a sweep and three
child runs named like the rows of experiments/antisymmetry.yaml, written with the platform's
own SweepTracker into a SQLite store), starts `drifting-platform ui --port <free>` on it,
reads the links it prints, and opens them in `chromium --headless=new --dump-dom`:

  - the runs view must list the child runs by name (the runs table, not the GenAI view);
  - the "by fid" view must show the child runs and a chart section named after fid;
  - the compare-runs link must show the child runs.

Then it sends SIGTERM to the ui and checks that it exits and that nothing listens on the
port any more. tests/test_ui.py runs the same checks (skipped, with the reason, when there is
no chromium); `apt-get install -y chromium` installs it on Debian.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = [  # (row name, attraction, repulsion, fid): names as in experiments/antisymmetry.yaml
    ("V+ - V-", 1.0, 1.0, 41.5),
    ("2 V+ - V-", 2.0, 1.0, 77.25),
    ("V+ only", 1.0, 0.0, 160.0),
]
SWEEP = "antisymmetry"
BIN = Path(sys.executable).parent
LINK = re.compile(r"^(?P<label>[a-z ,]+):\s+(?P<url>http://\S+)$")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def make_store(folder: Path) -> dict:
    """A SQLite store under ``folder`` holding one sweep (parent + ROWS as child runs, each
    FINISHED with a ``fid`` and a short ``loss`` history); returns env vars and run ids."""
    from drifting_platform.tracking import SweepTracker

    uri = f"sqlite:///{folder / 'mlflow.db'}"
    tr = SweepTracker(uri=uri)
    parent = tr.start_sweep(SWEEP, {"sweep.file": "antisymmetry.yaml"}, {"drifting.sweep": f"{SWEEP}-check"})
    children = []
    for name, a, r, fid in ROWS:
        rid = tr.start_trial(parent, name, {"drift.attraction_scale": a, "drift.repulsion_scale": r, "train.steps": 3})
        for step in range(3):
            tr.log_metrics(rid, {"loss": fid / 100 + 1.0 / (step + 1)}, step)
        tr.log_metrics(rid, {"fid": fid, "kid": fid / 1000}, 3)
        tr.end_run(rid, "FINISHED")
        children.append(rid)
    tr.end_run(parent, "FINISHED")
    env = {"MLFLOW_TRACKING_URI": uri, "DRIFTING_HOME": str(folder / "home")}
    return {"uri": uri, "env": env, "parent": parent, "children": children}


def start_ui(env: dict, port: int, *, until: str = "latest sweep, compare", timeout: float = 150.0) -> tuple[subprocess.Popen, dict, list[str]]:
    """Start `drifting-platform ui --port PORT` with ``env`` added; read its output up to the
    link labelled ``until`` (or its end); returns (process, links by label, lines printed)."""
    full = {**os.environ, **env, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [str(BIN / "drifting-platform"), "ui", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=full,
    )
    lines, links = [], {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line.rstrip())
        m = LINK.match(line.strip())
        if m:
            links[m["label"].strip()] = m["url"]
            if m["label"].strip() == until:
                break
    return proc, links, lines


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"ui did not exit within {timeout:g}s of {signal.Signals(sig).name}:\n{out}")
    return proc.returncode


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def dump_dom(url: str, *, budget_ms: int = 15000, timeout: float = 120.0) -> str:
    """The DOM of ``url`` after ``budget_ms`` of virtual time in headless Chromium."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        out = subprocess.run(
            [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             f"--user-data-dir={profile}", "--window-size=1600,1200",
             f"--virtual-time-budget={budget_ms}", "--dump-dom", url],
            capture_output=True, text=True, timeout=timeout,
        )
    return out.stdout


def check(folder: Path, log=print) -> dict:
    """Run every check; raises AssertionError on the first failure; returns timings."""
    times = {}
    t0 = time.monotonic()
    store = make_store(folder)
    times["store_s"] = time.monotonic() - t0
    port = free_port()
    t0 = time.monotonic()
    proc, links, lines = start_ui(store["env"], port)
    times["ui_ready_s"] = time.monotonic() - t0
    try:
        log("\n".join(lines))
        assert {"experiments", "latest sweep, runs", "latest sweep, by fid", "latest sweep, compare"} <= set(links), lines
        names = [r[0] for r in ROWS]
        for label in ("latest sweep, runs", "latest sweep, by fid", "latest sweep, compare"):
            t0 = time.monotonic()
            dom = dump_dom(links[label])
            times[f"chromium {label} s"] = time.monotonic() - t0
            missing = [n for n in names if n not in dom]
            assert not missing, f"{label}: {links[label]}: run names {missing} not in the DOM ({len(dom)} chars)"
            log(f"ok: {label}: {names} in the DOM of {links[label]}")
            if label != "latest sweep, compare":  # the experiment pages: the model-training view, not GenAI's
                assert "Evaluation runs" not in dom and "Model training" in dom, f"{label}: not the runs view"
            if label == "latest sweep, by fid":
                assert f"{SWEEP}-check: fid" in dom, "the saved view's section (fid charts) is not shown"
                log("ok: the 'by fid' view shows its fid chart section")
    finally:
        t0 = time.monotonic()
        code = stop(proc)
        times["stop_s"] = time.monotonic() - t0
    assert code == 0, f"ui exited {code} on SIGTERM"
    assert not port_open(port), f"port {port} still answers after the ui stopped"
    log(f"ok: SIGTERM: ui exited 0 in {times['stop_s']:.1f}s and port {port} is free")
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", action="store_true", help="keep the temporary store (its path is printed)")
    args = ap.parse_args()
    if chromium() is None:
        print("no chromium on PATH (Debian: apt-get install -y chromium)", file=sys.stderr)
        return 2
    folder = Path(tempfile.mkdtemp(prefix="drifting-ui-check-"))
    try:
        times = check(folder)
    except AssertionError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    finally:
        if args.keep:
            print(f"store kept in {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
    print("timings: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
