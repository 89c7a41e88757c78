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
    assert "| V+ - V- (default) | FINISHED | 20.00 | 1.00 | 8.46 | 1.00 | 30 | 5.0 |" in md
    assert "| custom row | FINISHED | 25.00 | 1.25 | — | — | 30 | 4.0 |" in md
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


def test_one_seed_table_keeps_its_shape(sweep):
    """Runs without seeds: the columns of before, no ± cells, no verdicts."""
    rows = R.sweep_table(EXP, uri=sweep["uri"])
    md = R.render_markdown(rows, experiment=EXP)
    header = next(line for line in md.splitlines() if line.startswith("| row"))
    assert header == "| row | status | fid (ours) | ratio (ours) | FID (paper) | ratio (paper) | steps | seconds |"
    assert "±" not in md and "vs default" not in md and "Welch" not in md
    assert "FID extractor: not recorded by the runs." in md
    for r in rows:
        assert r["runs"] == 1 and r["std"] is None and r["verdict"] is None and r["p"] is None
        assert r["n"] == (0 if r["label"] == "V+ only" else 1)


# --------------------------------------------------------------------------- seeds

SEEDS_EXP = "seeds_antisymmetry"  # finds the antisymmetry paper table (a name it contains)
EXTRACTOR = "digits-div-v1-1a2b3c4d"
OTHER_EXTRACTOR = "digits-div-v2-deadbeef"
# label -> fid per seed 0, 1, 2 (None: that seed failed)
SEEDED = {
    "V+ - V-": [10.0, 10.5, 11.6],  # the default row
    "1.5 V+ - V-": [10.2, 11.5, 10.9],  # overlaps the default: within noise
    "V+ - 1.5 V-": [5.0, 5.2, 5.1],  # clearly lower: better
    "V+ - 2 V-": [30.0, 31.0, 32.5],  # clearly higher: worse
    "V+ only": [40.0, None, None],  # one finished seed: no test
}
ALPHAS = (1.0, 1.5, 2.0)


def _extra(label: str, seed: int) -> dict:
    i = list(SEEDED).index(label)
    return {"precision": 0.5 + 0.1 * i + 0.01 * seed, "recall": 0.4 + 0.02 * seed, "coverage": 0.3 + 0.001 * i * seed}


def _cfg(fid: float, seed: int) -> dict:
    out = {}
    for a in ALPHAS:
        out[f"alpha_{a:g}/fid"] = fid + (a - 1.5) ** 2 * 10 + seed
        out[f"alpha_{a:g}/recall"] = 0.6 - 0.1 * a + 0.01 * seed
    return out


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    import json

    import numpy as np
    from matplotlib.image import imsave

    root = tmp_path_factory.mktemp("mlseeds")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    tr = T.SweepTracker(SEEDS_EXP, uri=uri)
    parent = tr.start_sweep("smoke-seeds", {"metric": "fid", "mode": "min", "seeds": 3})
    ids: dict = {}
    for seed in range(3):  # seed-major, as a sweep plans them
        for label, fids in SEEDED.items():
            fid = fids[seed]
            cid = tr.start_trial(parent, f"{label} (seed {seed})", {"seed": seed}, {T.TAG_ROW: label, T.TAG_SEED: seed})
            ids[(label, seed)] = cid
            tr.log_metrics(cid, {"loss": 1.0 - 0.1 * seed}, 10)
            if fid is None:
                tr.end_run(cid, "FAILED", "Traceback ...\nTrainingDiverged: loss is nan")
                continue
            tr.log_metrics(cid, {"fid": fid, "steps": 30, "seconds": 2.0 + seed, **_extra(label, seed), **_cfg(fid, seed)}, 30)
            d = root / "runs" / f"{len(ids)}"
            d.mkdir(parents=True)
            # the extractor's identity travels in summary.json (tracking tags it); "V+ only" used another
            ident = OTHER_EXTRACTOR if label == "V+ only" else EXTRACTOR
            (d / "summary.json").write_text(json.dumps({"fid": fid, "steps": 30, "fid_extractor": ident}))
            yy, xx = np.mgrid[0:32, 0:32]
            imsave(d / "samples.png", np.sin((xx + 2 * yy) / (1.0 + list(SEEDED).index(label)) + seed), cmap="gray")
            tr.log_artifacts(cid, [d / "samples.png", d / "summary.json"])
            tr.end_run(cid)
    tr.end_run(parent)
    return {"uri": uri, "root": root, "parent": parent, "ids": ids, "tracker": tr}


def test_fid_extractor_tag_from_summary(seeded):
    assert T.artifact_tags({"fid": 1.0, "fid_extractor": EXTRACTOR}) == {T.TAG_FID_EXTRACTOR: EXTRACTOR}
    assert T.artifact_tags({"fid_extractor": 3}) == {}  # only a string names an extractor
    run = seeded["tracker"].get_run(seeded["ids"][("V+ - V-", 0)])
    assert run.data.tags[T.TAG_FID_EXTRACTOR] == EXTRACTOR


def test_seeded_rows_mean_std_ratio(seeded):
    import statistics

    rows = R.sweep_table(SEEDS_EXP, uri=seeded["uri"])
    # one row per drifting.row label, in the paper's order
    assert [r["label"] for r in rows] == ["V+ - V-", "1.5 V+ - V-", "V+ - 1.5 V-", "V+ - 2 V-", "V+ only"]
    by = {r["label"]: r for r in rows}
    base = statistics.mean(SEEDED["V+ - V-"])
    for label, fids in SEEDED.items():
        r = by[label]
        done = [f for f in fids if f is not None]
        assert r["seeds"] == [0, 1, 2] and r["runs"] == 3 and r["n"] == len(done)
        assert r["values"] == done
        assert r["value"] == pytest.approx(statistics.mean(done), rel=1e-12)
        assert r["ratio"] == pytest.approx(statistics.mean(done) / base, rel=1e-12)
        if len(done) > 1:
            assert r["std"] == pytest.approx(statistics.stdev(done), rel=1e-12)  # ddof = 1
        else:
            assert r["std"] is None
        for key in ("precision", "recall", "coverage"):
            vals = [_extra(label, s)[key] for s, f in enumerate(fids) if f is not None]
            assert r[key] == pytest.approx(statistics.mean(vals), rel=1e-12)
            assert r[f"{key}_std"] == (pytest.approx(statistics.stdev(vals), rel=1e-12) if len(vals) > 1 else None)
        assert r["density"] is None and r["fid_classifier"] is None
        assert r["run_id"] == seeded["ids"][(label, 0)]  # the first seed's
        assert r["steps"] == 30 and r["seconds"] == pytest.approx(statistics.mean([2.0 + s for s, f in enumerate(fids) if f is not None]))
    assert by["V+ - V-"]["value"] == pytest.approx(10.7) and by["V+ - V-"]["ratio"] == 1.0
    assert by["V+ only"]["status"] == "1 FINISHED, 2 FAILED" and "seed 1: " in by["V+ only"]["error"]
    assert by["V+ - V-"]["status"] == "FINISHED"
    # the CFG-scale metrics: mean and std over the seeds at each alpha
    cfg = by["V+ - 2 V-"]["cfg"]
    assert set(cfg) == {"fid", "recall"} and sorted(cfg["fid"]) == list(ALPHAS)
    vals = [_cfg(f, s)["alpha_2/fid"] for s, f in enumerate(SEEDED["V+ - 2 V-"])]
    assert cfg["fid"][2.0]["mean"] == pytest.approx(statistics.mean(vals)) and cfg["fid"][2.0]["std"] == pytest.approx(statistics.stdev(vals))
    assert cfg["fid"][2.0]["n"] == 3 and by["V+ only"]["cfg"]["fid"][1.5]["std"] is None


def test_welch_verdicts_against_the_default_row(seeded):
    from scipy import stats

    rows = R.sweep_table(SEEDS_EXP, uri=seeded["uri"])
    by = {r["label"]: r for r in rows}
    default = SEEDED["V+ - V-"]
    for label, want in (("1.5 V+ - V-", "within noise"), ("V+ - 1.5 V-", "better"), ("V+ - 2 V-", "worse")):
        p = stats.ttest_ind(SEEDED[label], default, equal_var=False).pvalue
        assert by[label]["p"] == pytest.approx(p, rel=1e-12)
        assert by[label]["verdict"] == want
        assert R.vs_default_cell(by[label]) == f"{want} (p={R._fmt_p(p)})"
    assert by["1.5 V+ - V-"]["p"] > 0.05 and by["V+ - 2 V-"]["p"] < 0.05
    # the default row and a row of one finished seed have no test
    assert by["V+ - V-"]["verdict"] is None and R.vs_default_cell(by["V+ - V-"]) == "—"
    assert by["V+ only"]["p"] is None and R.vs_default_cell(by["V+ only"]) == "—"
    # a metric to maximise turns the verdicts round
    up = {r["label"]: r for r in R.sweep_table(SEEDS_EXP, uri=seeded["uri"], mode="max")}
    assert up["V+ - 2 V-"]["verdict"] == "better" and up["V+ - 1.5 V-"]["verdict"] == "worse"


def test_statistics_helpers():
    assert R.mean_std([]) == (None, None, 0)
    assert R.mean_std([3.0]) == (3.0, None, 1)
    m, s, n = R.mean_std([1.0, 2.0, 4.0])
    assert (m, n) == (pytest.approx(7 / 3), 3) and s == pytest.approx(((16 / 9 + 1 / 9 + 25 / 9) / 2) ** 0.5)
    assert R.welch_p([1.0], [1.0, 2.0]) is None and R.welch_p([1.0, 1.0], [1.0, 1.0]) is None
    assert R.verdict(0.01, 2.0, 1.0, "min") == "worse" and R.verdict(0.2, 2.0, 1.0) == "within noise"
    assert R._fmt_p(0.4) == "0.40" and R._fmt_p(0.0012) == "1.2e-03"
    assert R.cfg_metrics({"alpha_1.5/fid": 3.0, "alpha_2/recall": 0.5, "fid": 1.0, "alpha_x/fid": 2.0}) == {"fid": {1.5: 3.0}, "recall": {2.0: 0.5}}


def test_seeded_markdown_csv_and_extractor_mismatch(seeded, tmp_path):
    import statistics

    rows = R.sweep_table(SEEDS_EXP, uri=seeded["uri"])
    md = R.render_markdown(rows, experiment=SEEDS_EXP)
    header = next(line for line in md.splitlines() if line.startswith("| row"))
    assert header == ("| row | status | seeds | fid (ours) | ratio (ours) | vs default | precision | recall | coverage "
                      "| FID (paper) | ratio (paper) | steps | seconds |")
    d = SEEDED["V+ - V-"]
    cell = f"{statistics.mean(d):.2f} ± {statistics.stdev(d):.2f}"
    assert cell == "10.70 ± 0.82"
    line = next(x for x in md.splitlines() if x.startswith("| V+ - V- [a] |"))
    assert f"| FINISHED | 3 | {cell} | 1.00 | — |" in line
    worse = next(x for x in md.splitlines() if x.startswith("| V+ - 2 V- [a] |"))
    assert "| worse (p=" in worse
    only = next(x for x in md.splitlines() if x.startswith("| V+ only [b] |"))
    assert "| 1 FINISHED, 2 FAILED | 1/3 | 40.00 | " in only  # one seed: no ±
    # the extractors differ: the rows are marked and the note says who used which
    assert "FID extractors differ" in md
    assert f"- [a] `{EXTRACTOR}`: V+ - V-, 1.5 V+ - V-, V+ - 1.5 V-, V+ - 2 V-" in md
    assert f"- [b] `{OTHER_EXTRACTOR}`: V+ only" in md
    assert "Welch" in md

    path = R.write_csv(rows, tmp_path / "s.csv")
    back = {b["label"]: b for b in csv.DictReader(path.open())}
    b = back["V+ - 2 V-"]
    assert float(b["value"]) == pytest.approx(statistics.mean(SEEDED["V+ - 2 V-"]))
    assert float(b["std"]) == pytest.approx(statistics.stdev(SEEDED["V+ - 2 V-"]))
    assert b["n"] == "3" and b["seeds"] == "0;1;2" and b["values"] == "30.0;31.0;32.5"
    assert b["vs_default"] == "worse" and float(b["p"]) < 0.05 and b["extractor"] == EXTRACTOR
    assert b["precision"] and b["precision_std"] and b["density"] == ""
    assert back["V+ - V-"]["vs_default"] == "" and back["V+ only"]["std"] == ""


def test_one_extractor_is_named(seeded):
    rows = [r for r in R.sweep_table(SEEDS_EXP, uri=seeded["uri"]) if r["label"] != "V+ only"]
    md = R.render_markdown(rows, experiment=SEEDS_EXP)
    assert f"FID extractor: `{EXTRACTOR}` (every run)." in md and "[a]" not in md


def test_seeded_report_writes_grids_and_cfg(seeded, tmp_path):
    out = R.write_report(SEEDS_EXP, tmp_path / "reports", uri=seeded["uri"])
    paths = out["paths"]
    assert set(paths) == {"md", "csv", "png", "grids", "cfg"}
    assert paths["grids"] == str(tmp_path / "reports" / f"{SEEDS_EXP}_grids.png")
    assert paths["cfg"] == str(tmp_path / "reports" / f"{SEEDS_EXP}_cfg.png")
    for key in ("png", "grids", "cfg"):
        data = open(paths[key], "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, key
    md = out["table_markdown"]
    assert f"![sample grids]({SEEDS_EXP}_grids.png)" in md and f"({SEEDS_EXP}_cfg.png)" in md
    assert "### CFG scale" in md and "| row | α=1 | α=1.5 | α=2 |" in md
    assert "fid by CFG scale" in md and "recall by CFG scale" in md
    import statistics

    vals = [_cfg(f, s)["alpha_1.5/fid"] for s, f in enumerate(SEEDED["V+ - V-"])]
    assert f"| V+ - V- | {statistics.mean([_cfg(f, s)['alpha_1/fid'] for s, f in enumerate(SEEDED['V+ - V-'])]):.2f} ± " in md
    assert f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}" in md
    # the grid of each row is its first seed's
    assert [label for label, _ in R._grid_images(out["rows"], seeded["tracker"], tmp_path / "g")] == [r["label"] for r in out["rows"]]
    client = seeded["tracker"].client
    assert {a.path for a in client.list_artifacts(seeded["parent"], "report")} == {
        f"report/{SEEDS_EXP}.md", f"report/{SEEDS_EXP}.csv", f"report/{SEEDS_EXP}.png",
        f"report/{SEEDS_EXP}_grids.png", f"report/{SEEDS_EXP}_cfg.png"}


def test_stale_grids_and_cfg_files_are_removed(sweep, tmp_path):
    """A report of runs without sample grids / CFG metrics leaves no older sweep's picture."""
    out_dir = tmp_path / "reports"
    out_dir.mkdir()
    for name in (f"{EXP}_grids.png", f"{EXP}_cfg.png"):
        (out_dir / name).write_bytes(b"old")
    out = R.write_report(EXP, out_dir, uri=sweep["uri"], log_to_parent=False)
    assert set(out["paths"]) == {"md", "csv", "png"}
    assert not (out_dir / f"{EXP}_grids.png").exists() and not (out_dir / f"{EXP}_cfg.png").exists()
    assert "CFG scale" not in out["table_markdown"] and "sample grids" not in out["table_markdown"]
