"""Sweep reports: MLflow runs -> a table with the paper's numbers beside, Markdown, CSV, a plot.

``sweep_table(experiment)`` reads the latest sweep (parent run) of an experiment from the
tracking store and returns one row per child run; ``write_report`` renders it to
``<out_dir>/<experiment>.md|.csv|.png`` and logs the three files (under ``report/``) and the
Markdown table (as ``table.md``) to the parent run.

``PAPER_TABLES`` holds the paper's ablation numbers, read from
``experiments/paper_tables.yaml`` (Deng et al., 2026, arXiv 2602.04770; ImageNet 256, latent space, DiT-B/2, 100 epochs, FID-50k, lower is better). They are printed
beside our numbers for comparison: they are never our results. Row labels are matched
loosely (case, spaces, underscores, ``⁺/⁻/−`` and a parenthesised suffix are ignored; a
``name=`` prefix such as ``tau=0.02`` is tried without it), so a sweep row named
``V+ - V- (default)`` finds ``V+ - V-``; each table's labels and other spellings are in the
YAML file.

Nothing here prints; the CLI does.
"""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import yaml

from .home import EXPERIMENTS_DIR, drifting_home
from .rundir import slug
from .tracking import TAG_ERROR, TAG_ROW, TAG_STATE, SweepTracker

PAPER_TABLES_FILE = EXPERIMENTS_DIR / "paper_tables.yaml"


def load_paper_tables(path: str | Path = PAPER_TABLES_FILE) -> tuple[dict[str, dict], dict[str, dict[str, str]]]:
    """(tables, aliases) from the paper's numbers file (experiments/paper_tables.yaml).

    tables: experiment -> {metric, source, setting, note, default, rows: {label: value}};
    aliases: experiment -> {other spelling: paper label}."""
    raw = yaml.safe_load(Path(path).read_text())
    tables, aliases = {}, {}
    for name, t in raw["tables"].items():
        note = "The paper's ImageNet-256 numbers, printed for comparison; never ours."
        tables[name] = {
            "metric": raw["metric"],
            "source": f"{raw['paper']}, {t['source']}",
            "setting": raw["setting"],
            "note": note + (f" {t['note']}" if t.get("note") else ""),
            "default": t["default"],
            "rows": {str(k): float(v) for k, v in t["rows"].items()},
        }
        aliases[name] = {str(k): str(v) for k, v in (t.get("aliases") or {}).items()}
    return tables, aliases


#: the paper's numbers: experiment -> {metric, source, setting, note, default, rows: {label: value}};
#: _ALIASES: extra spellings -> canonical label, per table (keys normalised by _norm)
PAPER_TABLES, _ALIASES = load_paper_tables()

CSV_FIELDS = ("label", "status", "metric", "value", "ratio", "paper", "paper_ratio", "steps", "seconds", "run_id", "error")


# --------------------------------------------------------------------------- labels


def _norm(label: str) -> str:
    s = str(label).lower()
    s = s.replace("⁺", "+").replace("⁻", "-").replace("−", "-").replace("–", "-").replace("τ", "tau")
    s = re.sub(r"\s*\([^()]*\)\s*$", "", s)  # "(default)", "(ours: w16)", ...
    s = re.sub(r"[\s_]+", "", s)
    return s


def paper_table(experiment: str) -> Optional[dict]:
    """The ``PAPER_TABLES`` entry for ``experiment`` (exact name, else a table name contained in
    it, e.g. ``ablate_antisymmetry``), or None."""
    if experiment in PAPER_TABLES:
        return PAPER_TABLES[experiment]
    low = experiment.lower()
    for name in sorted(PAPER_TABLES, key=len, reverse=True):
        if name in low:
            return PAPER_TABLES[name]
    return None


def _table_name(experiment: str) -> Optional[str]:
    t = paper_table(experiment)
    return next((k for k, v in PAPER_TABLES.items() if v is t), None)


def match_paper_label(experiment: str, label: str) -> Optional[str]:
    """The paper row label that ``label`` names in ``experiment``'s table, or None."""
    name = _table_name(experiment)
    if name is None:
        return None
    canon = {_norm(k): k for k in PAPER_TABLES[name]["rows"]}
    aliases = {_norm(k): v for k, v in _ALIASES.get(name, {}).items()}
    candidates = [_norm(label)]
    m = re.match(r"^[a-z0-9]+=(.*)$", candidates[0])  # tau=0.02 -> 0.02
    if m and "," not in candidates[0]:
        candidates.append(m.group(1))
    for c in candidates:
        if c in canon:
            return canon[c]
        if c in aliases:
            return aliases[c]
    return None


def paper_value(experiment: str, label: str) -> Optional[float]:
    """The paper's number for row ``label`` of ``experiment``, or None."""
    key = match_paper_label(experiment, label)
    return PAPER_TABLES[_table_name(experiment)]["rows"][key] if key else None


# --------------------------------------------------------------------------- reading runs


def _num(x: Any) -> Optional[float]:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _latest_sweep_id(tracker: SweepTracker, experiment: str) -> str:
    """The run id of ``experiment``'s latest sweep (its parent run); LookupError when none."""
    parent = tracker.find_latest_sweep()
    if parent is None:
        raise LookupError(f"no sweep of experiment {experiment!r} in the tracking store {tracker.uri}")
    return parent.info.run_id


def sweep_table(experiment: str, *, uri: Optional[str] = None, metric: str = "fid", parent_id: Optional[str] = None) -> list[dict]:
    """One row per child run of the latest sweep of ``experiment`` (or of ``parent_id``).

    Row keys: ``label`` (tag ``drifting.row``, else the run name), ``status``, ``metric`` (the
    name), ``value`` (our final value, None when missing), ``ratio`` (value / the default
    row's value; the default row is the paper's default when present, else the first row),
    ``paper`` and ``paper_ratio`` (the paper's value and its ratio to the paper's default, or
    None), ``steps``, ``seconds``, ``run_id``, ``error``. Order: the paper's order for labels it
    has, then the others in run start order. Raises ``LookupError`` when there is no sweep."""
    tracker = SweepTracker(experiment, uri=uri)
    children = tracker.child_runs(parent_id or _latest_sweep_id(tracker, experiment))

    rows = []
    for run in children:
        data, info = run.data, run.info
        label = data.tags.get(TAG_ROW) or info.run_name or info.run_id[:8]
        steps = _num(data.metrics.get("steps"))
        if steps is None and metric in data.metrics:
            hist = tracker.metric_history(info.run_id, metric)
            steps = float(max(s for s, _ in hist)) if hist else None
        seconds = _num(data.metrics.get("seconds"))
        if seconds is None and info.end_time and info.start_time:
            seconds = (info.end_time - info.start_time) / 1000.0
        rows.append({
            "label": label,
            "status": data.tags.get(TAG_STATE) or info.status,  # PRUNED: MLflow's KILLED
            "metric": metric,
            "value": _num(data.metrics.get(metric)),
            "ratio": None,
            "paper": paper_value(experiment, label),
            "paper_ratio": None,
            "steps": int(steps) if steps is not None else None,
            "seconds": seconds,
            "run_id": info.run_id,
            "error": data.tags.get(TAG_ERROR),
        })

    # order: paper order first (stable for duplicates), then start order
    name = _table_name(experiment)
    if name is not None:
        order = {k: i for i, k in enumerate(PAPER_TABLES[name]["rows"])}

        def key(item):
            i, row = item
            m = match_paper_label(experiment, row["label"])
            return (0, order[m], i) if m is not None else (1, 0, i)

        rows = [r for _, r in sorted(enumerate(rows), key=key)]
    _add_ratios(experiment, rows)
    return rows


def _add_ratios(experiment: str, rows: list[dict]) -> None:
    if not rows:
        return
    table = paper_table(experiment)
    default = None
    if table is not None:
        default = next((r for r in rows if match_paper_label(experiment, r["label"]) == table["default"]), None)
    default = default or next((r for r in rows if r["value"] is not None), rows[0])
    base = default["value"]
    for r in rows:
        r["ratio"] = (r["value"] / base) if (r["value"] is not None and base) else None
    if table is not None:
        pbase = table["rows"].get(table["default"])
        for r in rows:
            r["paper_ratio"] = (r["paper"] / pbase) if (r["paper"] is not None and pbase) else None


def metric_histories(rows: Sequence[Mapping[str, Any]], *, uri: Optional[str] = None, keys: Optional[Iterable[str]] = None) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{row label: {metric key: [(step, value), ...]}}`` for every metric the rows' runs logged
    (or only ``keys``)."""
    tracker = SweepTracker(uri=uri)
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for row in rows:
        run_id = row.get("run_id")
        if not run_id:
            continue
        run = tracker.get_run(run_id)
        wanted = list(keys) if keys is not None else sorted(run.data.metrics)
        out[row["label"]] = {k: tracker.metric_history(run_id, k) for k in wanted if k in run.data.metrics}
    return out


# --------------------------------------------------------------------------- rendering


def _fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{digits}f}"
    return str(x)


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def render_markdown(rows: Sequence[Mapping[str, Any]], *, experiment: Optional[str] = None, metric: Optional[str] = None, title: Optional[str] = None) -> str:
    """A Markdown table (with a title and the paper note when ``experiment`` has a paper table)."""
    metric = metric or (rows[0].get("metric") if rows else None) or "fid"
    table = paper_table(experiment) if experiment else None
    lines = []
    if title or experiment:
        lines += [f"## {title or f'{experiment}: {metric}'}", ""]
    head = ["row", "status", f"{metric} (ours)", "ratio (ours)"]
    if table is not None:
        head += [f"{table['metric'].upper()} (paper)", "ratio (paper)"]
    head += ["steps", "seconds"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] + ["---"] + ["---:"] * (len(head) - 2)) + "|")
    for r in rows:
        cells = [_md_cell(r.get("label")), _md_cell(r.get("status") or "—"), _fmt(r.get("value"), 3), _fmt(r.get("ratio"))]
        if table is not None:
            cells += [_fmt(r.get("paper")), _fmt(r.get("paper_ratio"))]
        cells += [_fmt(r.get("steps")), _fmt(r.get("seconds"), 1)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("ratio = value / the default row's value (the paper's default setting when it is in the sweep, else the first row).")
    if table is not None:
        lines.append(f"Paper column: {table['source']}; {table['setting']}. {table['note']}")
    failed = [r for r in rows if r.get("error")]
    for r in failed:
        err = str(r["error"]).strip().splitlines()
        lines.append(f"- `{_md_cell(r['label'])}` {r.get('status', '')}: {_md_cell(err[-1] if err else '')[:300]}")
    return "\n".join(lines) + "\n"


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Rows as CSV (``CSV_FIELDS`` columns, empty cell for None)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_FIELDS), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})
    return path


_CURVE_PRIORITY = ("loss", "fid", "spread_ratio", "mmd", "kid")
_NOT_CURVES = {"steps", "seconds", "step", "final"}


def _pick_curves(histories: Mapping[str, Mapping[str, Sequence]], metric: str, limit: int = 3) -> list[str]:
    keys: dict[str, int] = {}
    for per_run in histories.values():
        for k, pts in per_run.items():
            if k not in _NOT_CURVES and len(pts) >= 2:
                keys[k] = keys.get(k, 0) + 1
    prio = [k for k in (_CURVE_PRIORITY[0], metric, *_CURVE_PRIORITY[1:]) if k in keys]
    rest = sorted((k for k in keys if k not in prio), key=lambda k: (-keys[k], k))
    out = []
    for k in prio + rest:
        if k not in out:
            out.append(k)
    return out[:limit]


def plot_report(
    rows: Sequence[Mapping[str, Any]],
    histories: Optional[Mapping[str, Mapping[str, Sequence]]],
    path: str | Path,
    *,
    metric: Optional[str] = None,
    title: Optional[str] = None,
) -> Path:
    """PNG: top, our metric per row (bars, left axis) with the paper's value beside (hatched
    bars, right axis); bottom, up to three metric curves over steps, one line per row."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no GUI backend

    metric = metric or (rows[0].get("metric") if rows else None) or "fid"
    curves = _pick_curves(histories or {}, metric)
    ncols = max(1, len(curves))
    fig = Figure(figsize=(max(8.0, 3.6 * ncols), 8.5 if curves else 4.8), dpi=110)
    grid = fig.add_gridspec(2 if curves else 1, ncols, height_ratios=[1.15, 1] if curves else [1])

    ax = fig.add_subplot(grid[0, :])
    labels = [str(r.get("label")) for r in rows]
    xs = list(range(len(rows)))
    have_paper = any(r.get("paper") is not None for r in rows)
    width = 0.38 if have_paper else 0.6
    ours = [r.get("value") for r in rows]
    bx = [x - width / 2 if have_paper else x for x in xs]
    bars = ax.bar(bx, [v if v is not None else 0.0 for v in ours], width, color="tab:blue", label=f"{metric} (ours)")
    for b, r in zip(bars, rows):
        v = r.get("value")
        text = _fmt(v, 2) if v is not None else (str(r.get("status") or "n/a").lower())
        ax.annotate(text, (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 2), textcoords="offset points", color="tab:blue" if v is not None else "tab:red")
    ax.set_ylabel(f"{metric} (ours)", color="tab:blue")
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=20 if max((len(s) for s in labels), default=0) > 8 else 0, ha="right" if max((len(s) for s in labels), default=0) > 8 else "center", fontsize=9)
    handles = [bars]
    if have_paper:
        ax2 = ax.twinx()
        pv = [r.get("paper") for r in rows]
        pbars = ax2.bar([x + width / 2 for x in xs], [v if v is not None else 0.0 for v in pv], width,
                        color="tab:orange", alpha=0.75, hatch="//", label="FID (paper, ImageNet 256)")
        for b, v in zip(pbars, pv):
            if v is not None:
                ax2.annotate(_fmt(v, 2), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom",
                             fontsize=8, xytext=(0, 2), textcoords="offset points", color="tab:orange")
        ax2.set_ylabel("FID (paper, ImageNet 256)", color="tab:orange")
        ax2.set_ylim(0, max([v for v in pv if v is not None] or [1.0]) * 1.15)
        handles.append(pbars)
    ymax = max([v for v in ours if v is not None] or [1.0])
    ax.set_ylim(0, ymax * 1.15 if ymax > 0 else 1.0)
    ax.legend(handles=handles, labels=[h.get_label() for h in handles], loc="upper left", fontsize=8)
    ax.set_title(title or f"{metric} per row" + (" (paper's ImageNet-256 values beside)" if have_paper else ""), fontsize=11)

    for j, key in enumerate(curves):
        cax = fig.add_subplot(grid[1, j])
        for label in labels:
            pts = (histories or {}).get(label, {}).get(key) or []
            if len(pts) >= 1:
                cax.plot([p[0] for p in pts], [p[1] for p in pts], marker="." if len(pts) < 30 else None, label=label, linewidth=1.3)
        cax.set_title(key, fontsize=10)
        cax.set_xlabel("step")
        cax.grid(alpha=0.3)
        if j == 0:
            cax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


# --------------------------------------------------------------------------- the report


def default_reports_dir() -> Path:
    return drifting_home() / "reports"


def report_paths(experiment: str, out_dir: Optional[str | Path] = None) -> dict[str, Path]:
    """``{"md", "csv", "png"}``: where ``write_report`` writes ``experiment``'s report."""
    out = Path(out_dir).expanduser().resolve() if out_dir else default_reports_dir()
    stem = slug(experiment, default="report")
    return {ext: out / f"{stem}.{ext}" for ext in ("md", "csv", "png")}


def write_report(
    experiment: str,
    out_dir: Optional[str | Path] = None,
    *,
    uri: Optional[str] = None,
    metric: str = "fid",
    log_to_parent: bool = True,
    parent_id: Optional[str] = None,
) -> dict:
    """Write ``<out_dir>/<experiment>.md``, ``.csv`` and ``.png`` for the latest sweep of
    ``experiment`` (default ``out_dir``: ``<drifting_home>/reports``) and, with
    ``log_to_parent``, log them to the parent run under ``report/`` plus the Markdown table as
    ``table.md``. Returns ``{"paths": {"md", "csv", "png"}, "table_markdown", "rows",
    "parent_run_id"}``. Prints nothing. Raises ``LookupError`` when there is no sweep."""
    tracker = SweepTracker(experiment, uri=uri)
    parent_id = parent_id or _latest_sweep_id(tracker, experiment)
    rows = sweep_table(experiment, uri=tracker.uri, metric=metric, parent_id=parent_id)
    histories = metric_histories(rows, uri=tracker.uri)

    where = report_paths(experiment, out_dir)
    where["md"].parent.mkdir(parents=True, exist_ok=True)
    table_md = render_markdown(rows, experiment=experiment, metric=metric)
    md = where["md"]
    md.write_text(table_md)
    csv_path = write_csv(rows, where["csv"])
    png = plot_report(rows, histories, where["png"], metric=metric, title=f"{experiment}: {metric} per row")
    paths = {"md": str(md), "csv": str(csv_path), "png": str(png)}
    if log_to_parent:
        tracker.log_artifacts(parent_id, [md, csv_path, png], artifact_path="report")
        tracker.log_text(parent_id, table_md, "table.md")
    return {"paths": paths, "table_markdown": table_md, "rows": rows, "parent_run_id": parent_id}
