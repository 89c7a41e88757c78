"""Tracking writes that outlive an unreachable store: a journal on disk, drained by a thread.

A sweep's driver must never wait for MLflow: Tune calls the tracking callback in its own
loop, and a trial's next result waits for that loop, so a tracking server that is down (a
restart, a network blip) would stall every trial for as long as MLflow's HTTP client
retries (minutes with its defaults). ``BufferedTracker`` wraps a ``SweepTracker``: each
write (a child run's creation, metrics, params, tags, artifacts, a run's status) is appended
to ``<sweep dir>/tracking.jsonl`` and returns at once; a background thread writes the
journal's entries to the store in order and records each one as done.

When the store cannot be reached the thread keeps the entries, warns once (what is kept and
where), probes the store every few seconds and, once it answers, writes everything kept and
says so. What is still pending when the sweep ends (the store still down) stays in the
journal: ``sync_journal`` (``drifting-platform sync`` and ``sweep ... --resume``) writes it
later, also after the driver died.

Nothing is logged twice: a child run is created with the tag ``drifting.local_id`` and found
by it before it would be created again; metrics keep the timestamp of the moment they were
journaled (MLflow stores a (key, step, timestamp, value) once); params that a run already
has are skipped; tags, artifacts and statuses overwrite themselves.

Journal lines: ``{"n": 7, "op": "log_metrics", "run": "<run id or local id>", "args": {...}}``
for a write and ``{"done": 7}`` once it is in the store (a run's creation adds ``"local"`` and
``"run_id"``; a write the store refused adds ``"dropped"``). A line cut short by a crash is
ignored.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Union

from .client import SweepTracker, _now_ms
from .store import _is_locked, clean_params, clean_tags, finite_float, mask_url_credentials, metric_key, sqlite_path

log = logging.getLogger(__name__)

JOURNAL = "tracking.jsonl"
LOCAL_PREFIX = "pending-"
TAG_LOCAL_ID = "drifting.local_id"

# what each journaled write is, in the words of the warnings
KINDS = {
    "start_trial": "runs", "log_metrics": "metrics", "log_params": "params", "set_tags": "tags",
    "log_artifacts": "artifacts", "end_run": "run status", "reopen_run": "run status",
}
_PROBE_DELAYS = (1.0, 2.0, 3.0, 5.0)  # seconds between probes of a store that is down
_MAX_TRIES = 3  # a write the reachable store keeps refusing is dropped after this many


class Journal:
    """The append-only journal file: pending writes in order, and local id -> run id."""

    def __init__(self, path: Union[str, "os.PathLike[str]"]):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.pending: dict[int, dict] = {}  # n -> entry, in insertion (= journal) order
        self.ids: dict[str, str] = {}  # local id -> MLflow run id
        self.dropped: set[str] = set()  # local ids whose creation the store refused
        self.next = 1
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:  # a line cut short by a crash
                continue
            if not isinstance(rec, dict):
                continue
            if "n" in rec:
                self.pending[int(rec["n"])] = rec
                self.next = max(self.next, int(rec["n"]) + 1)
            elif "done" in rec:
                self._done(self.pending.pop(int(rec["done"]), None), rec)

    def _done(self, entry: Optional[dict], rec: dict) -> None:
        local = rec.get("local")
        if local and rec.get("run_id"):
            self.ids[local] = rec["run_id"]
        elif local and rec.get("dropped"):
            self.dropped.add(local)

    def _append(self, rec: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(rec, sort_keys=True)
        with self.path.open("a+b") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell():  # the last line of a process that died mid-write: start a new one
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    fh.write(b"\n")
            fh.write(text.encode() + b"\n")
            fh.flush()

    def add(self, op: str, run: Optional[str], args: Mapping[str, Any]) -> int:
        with self._lock:
            n = self.next
            self.next += 1
            rec = {"n": n, "op": op, "run": run, "args": dict(args)}
            self._append(rec)
            self.pending[n] = rec
            return n

    def done(self, n: int, **extra: Any) -> None:
        with self._lock:
            rec = {"done": n, **extra}
            self._append(rec)
            self._done(self.pending.pop(n, None), rec)

    def first(self) -> Optional[dict]:
        with self._lock:
            return next(iter(self.pending.values()), None)

    def entries(self) -> list[dict]:
        with self._lock:
            return list(self.pending.values())

    def resolve(self, run_id: Optional[str]) -> Optional[str]:
        """The MLflow run id of ``run_id`` (a local id once its run exists; else None)."""
        if run_id and run_id.startswith(LOCAL_PREFIX):
            return self.ids.get(run_id)
        return run_id


def store_reachable(uri: str, timeout: float = 3.0) -> bool:
    """Whether the tracking store ``uri`` answers now: a server's ``/health``, an SQLite
    database's ``select 1``; other stores are assumed reachable (their errors decide)."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:  # noqa: S310
                return resp.status < 500
        except urllib.error.HTTPError as exc:
            return exc.code < 500
        except (OSError, ValueError):
            return False
    db = sqlite_path(uri)
    if db is not None:
        try:
            con = sqlite3.connect(str(db), timeout=timeout)
            try:
                con.execute("select 1")
            finally:
                con.close()
            return True
        except sqlite3.Error:
            return False
    return True


class BufferedTracker:
    """A ``SweepTracker`` whose writes are journaled and written by a background thread.

    Writes return at once (a child run's id is a local id, ``pending-...``, until the store
    has created it: ``resolve`` turns it into the run id); reads go to the store. ``flush``
    waits (bounded) for the journal to empty; ``incomplete`` says which runs still have
    writes pending; ``close`` stops the thread (the journal keeps what is pending)."""

    def __init__(self, tracker: SweepTracker, path: Union[str, "os.PathLike[str]"], *, start: bool = True):
        self.tracker = tracker
        self.uri = tracker.uri
        self.journal = Journal(path)
        self.names: dict[str, str] = {}  # run id / local id -> what the user calls it
        self.written = 0  # writes done by this object
        self.down_since: Optional[float] = None
        self._cv = threading.Condition()
        self._stop = False
        self._tries: Counter = Counter()
        self.while_down = ""
        self._thread: Optional[threading.Thread] = None
        if start:
            self.start()

    def __reduce__(self):
        # Tune pickles its callbacks with the experiment's state: a copy is the journal and
        # the store, without this process's thread and locks
        return (_unpickled, (self.tracker, str(self.journal.path)))

    def __repr__(self) -> str:
        return f"BufferedTracker({self.tracker!r}, journal={str(self.journal.path)!r})"

    def start(self) -> None:
        """Start the writer thread (writes from now on return at once)."""
        if self._thread is None:
            self.while_down = "training goes on, and "
            self._stop = False
            self._thread = threading.Thread(target=self._run, name="drifting-tracking-writer", daemon=True)
            self._thread.start()

    # -- the SweepTracking protocol: writes
    def start_sweep(self, name: str, params=None, tags=None, resume_run_id: Optional[str] = None) -> str:
        """The parent run, written at once (the store was checked a moment ago)."""
        run_id = self.tracker.start_sweep(name, params, tags, resume_run_id=resume_run_id)
        self.names[run_id] = f"sweep {(tags or {}).get('drifting.sweep') or name}"
        return run_id

    def start_trial(self, parent_id: str, trial_name: str, params=None, tags=None) -> str:
        local = f"{LOCAL_PREFIX}{uuid.uuid4().hex[:16]}"
        self.names[local] = trial_name
        self._put("start_trial", parent_id, {"name": trial_name, "params": clean_params(params), "tags": clean_tags(tags), "local": local})
        return local

    def log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int = 0) -> int:
        clean = {metric_key(k): f for k, v in (metrics or {}).items() if (f := finite_float(v)) is not None}
        if clean:
            self._put("log_metrics", run_id, {"metrics": clean, "step": int(step), "ts": _now_ms()})
        return len(clean)

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> dict:
        clean = clean_params(params)
        if clean:
            self._put("log_params", run_id, {"params": clean})
        return clean

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        clean = clean_tags(tags)
        if clean:
            self._put("set_tags", run_id, {"tags": clean})

    def log_artifacts(self, run_id: str, paths: Union[str, Iterable[str]], artifact_path: Optional[str] = None) -> list[str]:
        items = [str(paths)] if isinstance(paths, (str, os.PathLike)) else [str(p) for p in paths]
        self._put("log_artifacts", run_id, {"paths": items, "artifact_path": artifact_path})
        return items

    def end_run(self, run_id: str, status: str = "FINISHED", error: Optional[str] = None) -> None:
        self._put("end_run", run_id, {"status": str(status), "error": error})

    def reopen_run(self, run_id: str) -> None:
        self._put("reopen_run", run_id, {})

    # -- reads go to the store
    def find_sweep_run(self, experiment: str, sweep_name: str):
        return self.tracker.find_sweep_run(experiment, sweep_name)

    def child_runs(self, parent_id: str) -> list:
        return self.tracker.child_runs(self.resolve(parent_id) or parent_id)

    def last_steps(self, run_id: str) -> dict[str, int]:
        return self.tracker.last_steps(self.resolve(run_id) or run_id)

    def get_run(self, run_id: str):
        return self.tracker.get_run(self.resolve(run_id) or run_id)

    def resolve(self, run_id: Optional[str]) -> Optional[str]:
        return self.journal.resolve(run_id)

    # -- state
    def pending(self) -> int:
        return len(self.journal.pending)

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for every journaled write to be in the store
        (without a thread: write them here); True when none is left."""
        if self._thread is None:
            return self.drain(timeout)
        deadline = time.monotonic() + timeout
        with self._cv:
            self._cv.notify_all()
            while self.journal.pending and time.monotonic() < deadline:
                self._cv.wait(min(0.2, max(0.0, deadline - time.monotonic())))
        return not self.journal.pending

    def close(self) -> None:
        """Stop the writer thread (what is pending stays in the journal)."""
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def incomplete(self) -> list[dict]:
        """The runs with writes still pending: ``[{"run": label, "run_id": id or None,
        "writes": n, "kinds": [...]}]`` in journal order."""
        out: dict[str, dict] = {}
        for rec in self.journal.entries():
            key = rec["args"]["local"] if rec["op"] == "start_trial" else rec["run"]
            real = self.resolve(key)
            row = out.setdefault(key, {"run": self.names.get(key) or (rec["args"].get("name") if rec["op"] == "start_trial" else None) or real or key,
                                       "run_id": real, "writes": 0, "kinds": []})
            row["writes"] += 1
            kind = KINDS.get(rec["op"], rec["op"])
            if kind not in row["kinds"]:
                row["kinds"].append(kind)
        return list(out.values())

    # -- writing
    def _put(self, op: str, run: Optional[str], args: Mapping[str, Any]) -> None:
        self.journal.add(op, run, args)
        with self._cv:
            self._cv.notify_all()

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self.journal.pending and not self._stop:
                    self._cv.wait(1.0)
                if self._stop:
                    return
            if not self._step():
                with self._cv:  # the store is down (or refused): wait, unless told to stop
                    self._cv.wait(self._delay())
                    if self._stop:
                        return
            with self._cv:
                self._cv.notify_all()

    def drain(self, timeout: float = 0.0) -> bool:
        """Write the journal's entries here (no thread) until none is left (True), or the
        store has been down for ``timeout`` seconds (False; 0: give up once it is down).
        A locked or refusing store is retried for at least a minute."""
        start = time.monotonic()
        while self.journal.pending:
            if self._step():
                continue
            now = time.monotonic()
            if (self.down_since is not None and now - start >= timeout) or now - start >= max(timeout, 60.0):
                return False
            time.sleep(self._delay())
        return True

    def _delay(self) -> float:
        if self.down_since is None:
            return _PROBE_DELAYS[0]
        i = min(len(_PROBE_DELAYS) - 1, int((time.monotonic() - self.down_since) // 10))
        return _PROBE_DELAYS[i]

    def _step(self) -> bool:
        """Write the first pending entry; True when it is done (written or dropped)."""
        rec = self.journal.first()
        if rec is None:
            return True
        if self.down_since is not None and not store_reachable(self.uri):
            return False  # still down: no request that would wait out MLflow's retries
        try:
            extra = self._apply(rec)
        except Exception as exc:  # noqa: BLE001 - MlflowException, requests, sqlalchemy, OSError
            return self._failed(rec, exc)
        self._back()
        self.journal.done(rec["n"], **extra)
        self.written += 1
        return True

    def _failed(self, rec: dict, exc: BaseException) -> bool:
        if _is_locked(exc):
            return False  # another writer holds SQLite: try again shortly
        if not store_reachable(self.uri):
            if self.down_since is None:
                self.down_since = time.monotonic()
                log.warning(
                    "tracking: the store %s is unreachable (%s); %swhat cannot be logged "
                    "(metrics, params, tags, artifacts, run status) is kept in %s and written when the store is back",
                    mask_url_credentials(self.uri), _short(exc), self.while_down, self.journal.path,
                )
            return False
        self._tries[rec["n"]] += 1
        if self._tries[rec["n"]] < _MAX_TRIES:
            return False
        log.warning("tracking: the store refused %s of run %s (%s); dropped", rec["op"], self._label(rec), _short(exc))
        extra: dict = {"dropped": _short(exc)}
        if rec["op"] == "start_trial":
            extra["local"] = rec["args"]["local"]
        self.journal.done(rec["n"], **extra)
        return True

    def _back(self) -> None:
        if self.down_since is None:
            return
        gone = time.monotonic() - self.down_since
        self.down_since = None
        kinds = Counter(KINDS.get(r["op"], r["op"]) for r in self.journal.entries())
        log.warning(
            "tracking: the store %s is back after %.0f s; writing the %d writes kept meanwhile (%s)",
            mask_url_credentials(self.uri), gone, sum(kinds.values()), ", ".join(f"{n} {k}" for k, n in kinds.items()),
        )

    def _label(self, rec: dict) -> str:
        key = rec["args"].get("local") if rec["op"] == "start_trial" else rec["run"]
        return self.names.get(key) or str(key)

    def _apply(self, rec: dict) -> dict:
        op, args, tr = rec["op"], rec["args"], self.tracker
        run = self.resolve(rec["run"])
        if run is None:
            if rec["run"] in self.journal.dropped:  # its run was never created: nothing to write to
                return {"dropped": "the run's creation was refused"}
            raise RuntimeError(f"run {rec['run']} is not created yet")  # pragma: no cover - ordered journal
        if op == "start_trial":
            local = args["local"]
            found = tr.find_child(run, TAG_LOCAL_ID, local)  # created before its answer was lost?
            if found is None:
                run_id = tr.start_trial(run, args["name"], args["params"], {**args["tags"], TAG_LOCAL_ID: local})
            else:
                run_id = found
                tr.log_params(run_id, args["params"])  # skips those it has
            self.names.setdefault(run_id, args["name"])
            return {"local": local, "run_id": run_id}
        if op == "log_metrics":
            tr.log_metrics(run, args["metrics"], args["step"], timestamp_ms=args["ts"])
        elif op == "log_params":
            tr.log_params(run, args["params"])
        elif op == "set_tags":
            tr.set_tags(run, args["tags"])
        elif op == "log_artifacts":
            tr.log_artifacts(run, args["paths"], args.get("artifact_path"))
        elif op == "end_run":
            tr.end_run(run, args["status"], args.get("error"))
        elif op == "reopen_run":
            tr.reopen_run(run)
        else:
            return {"dropped": f"unknown write {op!r}"}
        return {}


def _unpickled(tracker: SweepTracker, path: str) -> "BufferedTracker":
    return BufferedTracker(tracker, path, start=False)


def _short(exc: BaseException, n: int = 300) -> str:
    text = mask_url_credentials(f"{type(exc).__name__}: {exc}").replace("\n", " ")
    return text if len(text) <= n else text[: n - 3] + "..."


def sync_journal(path: Union[str, "os.PathLike[str]"], tracker: Optional[SweepTracker] = None, *, timeout: float = 0.0) -> dict:
    """Write the pending entries of the journal ``path`` to the store (``tracker``, default
    the platform's): ``{"written": n, "pending": n left, "ids": {local id: run id}}``."""
    buffered = BufferedTracker(tracker or SweepTracker(), path, start=False)
    buffered.drain(timeout)
    buffered.close()
    return {"written": buffered.written, "pending": buffered.pending(), "ids": dict(buffered.journal.ids),
            "incomplete": buffered.incomplete()}
