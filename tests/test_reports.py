"""reports.py: tables from a real SQLite MLflow store, the paper's numbers beside, files logged."""
from __future__ import annotations

import csv
import time

import pytest

from drifting_platform import reports as R
from drifting_platform import tracking as T

EXP = "antisymmetry"
# (label, fid or None for a failed trial); deliberately not in the paper's order
TRIALS = [("V+ - 2 V-", 40.0), ("custom row", 25.0), ("V+ - V- (default)", 20.0), ("V+ only", None), ("1.5 V⁺ − V⁻", 30.0)]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlreports")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tr = T.SweepTracker(EXP, uri=uri)
    # an older sweep that the report must ignore
    old = tr.start_sweep("old", {})
    cid = tr.start_trial(old, "V+ - V-", {})
    tr.log_metrics(cid, {"fid": 999.0}, 1)
    tr.end_run(cid)
    tr.end_run(old)
    time.sleep(0.02)

    parent = tr.start_sweep("smoke-1", {"metric": "fid"})
    ids = {}
    for i, (label, fid) in enumerate(TRIALS):
        cid = tr.start_trial(parent, label, {"i": i}, {"drifting.row": label})
        for step in range(4):
            tr.log_metrics(cid, {"loss": 2.0 - 0.3 * step + i, "spread_ratio": 0.1 * step}, step * 10)
        if fid is None:
            tr.end_run(cid, "FAILED", "Traceback ...\nRuntimeError: loss is nan")
        else:
            tr.log_metrics(cid, {"fid": fid + 5.0}, 20)  # an intermediate value
            tr.log_metrics(cid, {"fid": fid, "steps": 30, "seconds": 3.0 + i}, 30)
            tr.end_run(cid)
        ids[label] = cid
    tr.end_run(parent)
    return {"uri": uri, "root": root, "parent": parent, "ids": ids, "tracker": tr}


def test_paper_tables():
    a = R.PAPER_TABLES["antisymmetry"]["rows"]
    assert a == {"V+ - V-": 8.46, "1.5 V+ - V-": 41.05, "V+ - 1.5 V-": 46.28, "2 V+ - V-": 86.16, "V+ - 2 V-": 112.84, "V+ only": 177.14}
    assert R.PAPER_TABLES["temperature"]["rows"] == {"0.02": 10.62, "0.05": 8.67, "0.2": 8.96, "all three": 8.46}
    al = R.PAPER_TABLES["allocation"]["rows"]
    assert al["N_pos=1"] == 20.43 and al["N_pos=64"] == 8.46 and al["N_c=512,N_pos=8"] == 11.82 and al["N_c=128,N_pos=32"] == 9.32
    enc = R.PAPER_TABLES["encoder"]["rows"]
    assert enc["SimCLR"] == 11.05 and enc["MoCo-v2"] == 8.41 and enc["MAE w256"] == 8.46 and enc["MAE w640"] == 6.30
    assert list(enc)[:6] == ["SimCLR", "MoCo-v2", "MAE w256", "MAE w384", "MAE w512", "MAE w640"]
    for name, t in R.PAPER_TABLES.items():
        assert t["metric"] == "fid" and "never ours" in t["note"] and "ImageNet" in t["setting"]
        assert t["default"] in t["rows"], name


def test_label_matching():
    assert R.paper_value("antisymmetry", "V⁺ − V⁻ (default)") == 8.46
    assert R.paper_value("antisymmetry", "v+ only (attraction only)") == 177.14
    assert R.paper_value("antisymmetry", "attraction only") == 177.14
    assert R.paper_value("antisymmetry", "2V+-V-") == 86.16
    assert R.paper_value("ablate_antisymmetry", "V+ - 1.5 V-") == 46.28
    assert R.paper_value("temperature", "tau=0.05") == 8.67
    assert R.paper_value("temperature", "0.5") is None
    assert R.paper_value("allocation", "N_c=256, N_pos=16") == 10.16
    assert R.paper_value("encoder", "moco-v2") == 8.41
    assert R.paper_value("unknown-experiment", "V+ - V-") is None


def test_sweep_table_values(sweep):
    rows = R.sweep_table(EXP, uri=sweep["uri"])
    labels = [r["label"] for r in rows]
    # paper order for known labels (V+ - V-, 1.5 V+ - V-, V+ - 2 V-, V+ only), then the rest
    assert labels == ["V+ - V- (default)", "1.5 V⁺ − V⁻", "V+ - 2 V-", "V+ only", "custom row"]
    by = {r["label"]: r for r in rows}
    for label, fid in TRIALS:
        r = by[label]
        assert r["value"] == fid  # the final value, not the intermediate one
        assert r["run_id"] == sweep["ids"][label]
        assert r["metric"] == "fid"
    assert by["V+ - V- (default)"]["paper"] == 8.46 and by["V+ - 2 V-"]["paper"] == 112.84
    assert by["1.5 V⁺ − V⁻"]["paper"] == 41.05 and by["custom row"]["paper"] is None
    assert by["V+ only"]["status"] == "FAILED" and by["V+ only"]["value"] is None and "nan" in by["V+ only"]["error"]
    assert by["V+ only"]["paper"] == 177.14
    # ratio to the default row (the paper's default, here not the first started)
    assert by["V+ - V- (default)"]["ratio"] == 1.0 and by["V+ - 2 V-"]["ratio"] == pytest.approx(2.0)
    assert by["V+ - 2 V-"]["paper_ratio"] == pytest.approx(112.84 / 8.46)
    assert by["V+ - 2 V-"]["steps"] == 30 and by["V+ - 2 V-"]["seconds"] == 3.0
    assert all(r["status"] == "FINISHED" for r in rows if r["label"] != "V+ only")


def test_no_sweep_raises(sweep):
    with pytest.raises(LookupError):
        R.sweep_table("temperature", uri=sweep["uri"])


def test_render_markdown_and_csv(sweep, tmp_path):
    rows = R.sweep_table(EXP, uri=sweep["uri"])
    md = R.render_markdown(rows, experiment=EXP)
    assert "| row | status | fid (ours) | ratio (ours) | FID (paper) | ratio (paper) | steps | seconds |" in md
    assert "| V+ - V- (default) | FINISHED | 20.000 | 1.00 | 8.46 | 1.00 | 30 | 5.0 |" in md
    assert "| custom row | FINISHED | 25.000 | 1.25 | — | — | 30 | 4.0 |" in md
    assert "never ours" in md and "RuntimeError: loss is nan" in md
    path = R.write_csv(rows, tmp_path / "t.csv")
    back = list(csv.DictReader(path.open()))
    assert [b["label"] for b in back] == [r["label"] for r in rows]
    assert float(back[0]["value"]) == 20.0 and float(back[0]["paper"]) == 8.46
    assert back[3]["value"] == "" and back[3]["status"] == "FAILED"


def test_write_report_files_and_parent_artifacts(sweep, tmp_path):
    out = R.write_report(EXP, tmp_path / "reports", uri=sweep["uri"])
    paths = out["paths"]
    assert set(paths) == {"md", "csv", "png"}
    for key, suffix in (("md", ".md"), ("csv", ".csv"), ("png", ".png")):
        assert paths[key] == str(tmp_path / "reports" / f"{EXP}{suffix}")
    assert (tmp_path / "reports" / f"{EXP}.md").read_text() == out["table_markdown"]
    png = (tmp_path / "reports" / f"{EXP}.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    assert out["parent_run_id"] == sweep["parent"]

    client = sweep["tracker"].client
    top = {a.path for a in client.list_artifacts(sweep["parent"])}
    assert {"table.md", "report"} <= top
    assert {a.path for a in client.list_artifacts(sweep["parent"], "report")} == {
        f"report/{EXP}.md", f"report/{EXP}.csv", f"report/{EXP}.png"}
    local = client.download_artifacts(sweep["parent"], "table.md", str(tmp_path))
    assert open(local).read() == out["table_markdown"]


def test_write_report_default_dir(sweep, tmp_path, monkeypatch):
    monkeypatch.setenv("DRIFTING_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", sweep["uri"])  # uri from the environment
    out = R.write_report(EXP, log_to_parent=False)
    assert out["paths"]["md"] == str((tmp_path / "home").resolve() / "reports" / f"{EXP}.md")


def test_plot_report_histories(sweep, tmp_path):
    rows = R.sweep_table(EXP, uri=sweep["uri"])
    hist = R.metric_histories(rows, uri=sweep["uri"])
    assert [s for s, _ in hist["custom row"]["loss"]] == [0, 10, 20, 30]
    assert hist["V+ - V- (default)"]["fid"] == [(20, 25.0), (30, 20.0)]
    assert R._pick_curves(hist, "fid") == ["loss", "fid", "spread_ratio"]
    p = R.plot_report(rows, hist, tmp_path / "p.png")
    assert p.stat().st_size > 20_000
    # no histories, no paper table: still a picture
    q = R.plot_report([{"label": "a", "value": 1.0}, {"label": "b", "value": None, "status": "FAILED"}], {}, tmp_path / "q.png")
    assert q.stat().st_size > 5_000
