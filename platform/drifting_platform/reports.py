"""Sweep reports: MLflow runs -> a table with the paper's numbers beside, Markdown, CSV, plots.

``sweep_table(experiment)`` reads the latest sweep (parent run) of an experiment from the
tracking store and returns one row per ``drifting.row`` label: the child runs of a label are
its seeds (``seeds: N`` in the sweep file), and a row's value is the mean over its finished
seeds with their sample std, the per-seed values, the mean and std of the extra metrics
(``EXTRA_COLUMNS``: precision, recall, density, coverage, diversity, FID of the classifier,
label accuracy) and, against the default row, Welch's t-test (``vs default``: worse / better
for p < 0.05, else within noise). ``write_report`` renders it to
``<out_dir>/<experiment>.md|.csv|.png``, plus ``<experiment>_grids.png`` (one sample grid per
row) and ``<experiment>_cfg.png`` (metrics vs the CFG scale, from ``alpha_<a>/<metric>``)
when the runs have them, and logs the files (under ``report/``) and the Markdown (as
``table.md``) to the parent run. The table names the FID extractor the runs used (tag
``drifting.fid_extractor``) and marks rows whose extractors differ.

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
import logging
import math
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import yaml

from .home import EXPERIMENTS_DIR, drifting_home
from .rundir import GRID, slug
from .tracking import TAG_ERROR, TAG_FID_EXTRACTOR, TAG_ROW, TAG_SEED, TAG_STATE, TAG_TRIAL_DIR, SweepTracker

log = logging.getLogger(__name__)

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

#: metric keys the trials may log, printed (mean ± std) when some row has them: key -> header
EXTRA_COLUMNS = {
    "precision": "precision", "recall": "recall", "density": "density", "coverage": "coverage",
    "diversity_ratio": "diversity", "fid_classifier": "FID (classifier)", "label_accuracy": "accuracy",
}
#: decimals of a column's cells (3 when not listed)
EXTRA_DIGITS = {"fid": 2, "fid_classifier": 2, "kid": 4}
#: a CFG-scale metric: alpha_<a>/<metric> (the metric at CFG scale a)
ALPHA_KEY = re.compile(r"^alpha_([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)/(.+)$")
#: the CFG table's metrics besides the sweep's own
CFG_EXTRA = ("recall",)
#: Welch's p below which a row reads better / worse than the default row
P_THRESHOLD = 0.05
#: where a trial's child run has its sample grid (launch/trial.TrialDir.artifacts: the run's root)
GRID_ARTIFACT = GRID

CSV_FIELDS = (
    "label", "status", "metric", "value", "std", "n", "runs", "seeds", "values", "ratio", "vs_default", "p",
    *(f for k in EXTRA_COLUMNS for f in (k, f"{k}_std")),
    "paper", "paper_ratio", "steps", "seconds", "extractor", "run_id", "error",
)


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


# --------------------------------------------------------------------------- statistics


def _num(x: Any) -> Optional[float]:
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float], int]:
    """(mean, sample standard deviation, n) of ``values``.

    std = sqrt(sum (x - mean)^2 / (n - 1)) (ddof = 1, the unbiased variance's root: the seeds
    are a sample of the seed distribution); None for n < 2. mean is None for n = 0."""
    xs = [float(v) for v in values]
    n = len(xs)
    if n == 0:
        return None, None, 0
    mean = sum(xs) / n
    if n < 2:
        return mean, None, n
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)), n


def welch_p(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Two-sided p-value of Welch's t-test that ``a`` and ``b`` have the same mean.

    t = (mean_a - mean_b) / sqrt(s_a^2 / n_a + s_b^2 / n_b) with sample variances s^2
    (ddof 1), compared with Student's t of the Welch-Satterthwaite degrees of freedom
    (``scipy.stats.ttest_ind(a, b, equal_var=False)``). None when either has fewer than two
    values, or when the test is undefined (both constant and equal)."""
    if len(a) < 2 or len(b) < 2:
        return None
    from scipy import stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # constant samples: t = ±inf or nan
        p = float(stats.ttest_ind(list(a), list(b), equal_var=False).pvalue)
    return p if math.isfinite(p) else None


def verdict(p: Optional[float], mean: Optional[float], default_mean: Optional[float], mode: str = "min", alpha: float = P_THRESHOLD) -> Optional[str]:
    """"worse" / "better" (than the default row, for a metric to ``mode``) when p < ``alpha``,
    else "within noise"; None when there is no test (p None)."""
    if p is None or mean is None or default_mean is None:
        return None
    if p >= alpha or mean == default_mean:
        return "within noise"
    lower = mean < default_mean
    return "better" if lower == (mode == "min") else "worse"


def _fmt_p(p: float) -> str:
    return f"{p:.2f}" if p >= 0.01 else f"{p:.1e}"


def vs_default_cell(row: Mapping[str, Any]) -> str:
    """``worse (p=0.01)``, ``within noise (p=0.40)``, or ``—`` (the default row, or no test)."""
    v, p = row.get("verdict"), row.get("p")
    return f"{v} (p={_fmt_p(p)})" if v and p is not None else "—"


def cfg_metrics(metrics: Mapping[str, Any]) -> dict[str, dict[float, float]]:
    """``{metric: {alpha: value}}`` of a run's ``alpha_<a>/<metric>`` metrics (CFG scales)."""
    out: dict[str, dict[float, float]] = {}
    for key, value in metrics.items():
        m = ALPHA_KEY.match(key)
        v = _num(value)
        if m and v is not None:
            out.setdefault(m.group(2), {})[float(m.group(1))] = v
    return out


# --------------------------------------------------------------------------- reading runs


def _latest_sweep_id(tracker: SweepTracker, experiment: str) -> str:
    """The run id of ``experiment``'s latest sweep (its parent run); LookupError when none."""
    parent = tracker.find_latest_sweep()
    if parent is None:
        raise LookupError(f"no sweep of experiment {experiment!r} in the tracking store {tracker.uri}")
    return parent.info.run_id


def _seed_record(tracker: SweepTracker, run, metric: str) -> dict:
    """One child run (one seed of a row) as the report reads it."""
    data, info = run.data, run.info
    steps = _num(data.metrics.get("steps"))
    if steps is None and metric in data.metrics:
        hist = tracker.metric_history(info.run_id, metric)
        steps = float(max(s for s, _ in hist)) if hist else None
    seconds = _num(data.metrics.get("seconds"))
    if seconds is None and info.end_time and info.start_time:
        seconds = (info.end_time - info.start_time) / 1000.0
    try:
        seed = int(data.tags[TAG_SEED]) if TAG_SEED in data.tags else None
    except ValueError:
        seed = None
    # a grid / rows trial's directory starts with its row's position in the sweep file
    m = re.match(r"^(\d+)_", Path(data.tags.get(TAG_TRIAL_DIR) or "").name)
    return {
        "plan": int(m.group(1)) if m else None,
        "seed": seed,
        "status": data.tags.get(TAG_STATE) or info.status,  # PRUNED: MLflow's KILLED
        "metrics": {k: v for k, v in ((k, _num(v)) for k, v in data.metrics.items()) if v is not None},
        "steps": int(steps) if steps is not None else None,
        "seconds": seconds,
        "run_id": info.run_id,
        "error": data.tags.get(TAG_ERROR),
        "extractor": data.tags.get(TAG_FID_EXTRACTOR),
        "start": info.start_time or 0,
    }


def _status(seeds: Sequence[Mapping[str, Any]]) -> str:
    """The state of a row: its seeds' one state, else "2 FINISHED, 1 FAILED"."""
    counts: dict[str, int] = {}
    for s in seeds:
        counts[s["status"]] = counts.get(s["status"], 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return ", ".join(f"{n} {st}" for st, n in counts.items())


def _row(experiment: str, label: str, seeds: list[dict], metric: str) -> dict:
    """One table row from the seeds of one ``drifting.row`` label (in seed order)."""
    done = [s for s in seeds if s["status"] == "FINISHED"]
    values = [s["metrics"][metric] for s in done if metric in s["metrics"]]
    mean, std, n = mean_std(values)
    first = (done or seeds)[0]
    secs = [s["seconds"] for s in (done or seeds) if s["seconds"] is not None]
    errors = [s for s in seeds if s["error"]]
    error = None
    if errors:
        e = errors[0]
        error = (f"seed {e['seed']}: " if len(seeds) > 1 and e["seed"] is not None else "") + str(e["error"])
    row = {
        "label": label,
        "status": _status(seeds),
        "metric": metric,
        "value": mean,  # the mean over the finished seeds
        "std": std,
        "n": n,
        "runs": len(seeds),
        "seeds": [s["seed"] for s in seeds],
        "values": values,
        "per_seed": [{"seed": s["seed"], "status": s["status"], "value": s["metrics"].get(metric), "run_id": s["run_id"]} for s in seeds],
        "ratio": None,
        "verdict": None,
        "p": None,
        "paper": paper_value(experiment, label),
        "paper_ratio": None,
        "steps": first["steps"],
        "seconds": sum(secs) / len(secs) if secs else None,  # per seed
        "run_id": first["run_id"],
        "run_ids": [s["run_id"] for s in seeds],
        "error": error,
        # of the seeds whose values the row shows (a failed seed computed no FID)
        "extractors": sorted({s["extractor"] for s in done if s["extractor"]}),
        "unrecorded_extractor": any(not s["extractor"] for s in done),
        "extras": [],
    }
    for key in EXTRA_COLUMNS:
        vals = [s["metrics"][key] for s in done if key in s["metrics"]]
        if vals:
            row["extras"].append(key)
        row[key], row[f"{key}_std"], _ = mean_std(vals)
    cfg: dict[str, dict[float, dict]] = {}
    per = [cfg_metrics(s["metrics"]) for s in done]
    for name in sorted({k for c in per for k in c}):
        for a in sorted({a for c in per for a in c.get(name, {})}):
            m, sd, k = mean_std([c[name][a] for c in per if a in c.get(name, {})])
            cfg.setdefault(name, {})[a] = {"mean": m, "std": sd, "n": k}
    row["cfg"] = cfg
    return row


def sweep_table(experiment: str, *, uri: Optional[str] = None, metric: str = "fid", parent_id: Optional[str] = None, mode: Optional[str] = None) -> list[dict]:
    """One row per ``drifting.row`` label of the latest sweep of ``experiment`` (or of
    ``parent_id``); the child runs of a label are its seeds.

    Row keys: ``label`` (tag ``drifting.row``, else the run name), ``status`` (the seeds'
    state, or "2 FINISHED, 1 FAILED"), ``metric`` (the name), ``value`` (the mean over the
    FINISHED seeds that logged it; None when none did), ``std`` (their sample std, ddof 1;
    None for fewer than two), ``n`` (how many), ``runs`` (child runs of the row), ``seeds``,
    ``values`` (the per-seed values the mean is over), ``per_seed``; ``ratio`` (value / the
    default row's value; the default row is the paper's default when present, else the
    first row with a value); ``verdict`` and ``p`` (Welch's t-test of the row's seeds
    against the default row's: "worse" / "better" for p < 0.05, else "within noise"; None
    for the default row and where either has fewer than two seeds); for each key of
    ``EXTRA_COLUMNS`` the mean ``<key>`` and ``<key>_std`` (None when not logged) and
    ``extras`` (the keys it has); ``cfg`` (``{metric: {alpha: {mean, std, n}}}`` from the
    ``alpha_<a>/<metric>`` metrics); ``extractors`` (the FID extractor identities, tag
    ``drifting.fid_extractor``, of the finished seeds) and ``unrecorded_extractor`` (a finished
    seed without the tag); ``paper`` and ``paper_ratio``
    (the paper's value and its ratio to the paper's default, or None); ``steps`` and
    ``run_id`` (of the first finished seed), ``run_ids``, ``seconds`` (mean per seed),
    ``error`` (the first seed's error). ``mode`` (min / max, default the parent run's param
    ``mode``, else min) says which direction is better. Order: the paper's order for labels
    it has, then the others in the sweep file's order (the plan index of tag
    ``drifting.trial_dir``), then in run start order. Raises ``LookupError`` when there is no sweep."""
    tracker = SweepTracker(experiment, uri=uri)
    parent_id = parent_id or _latest_sweep_id(tracker, experiment)
    if mode is None:
        mode = tracker.get_run(parent_id).data.params.get("mode") or "min"
    groups: dict[str, list[dict]] = {}
    for run in tracker.child_runs(parent_id):
        label = run.data.tags.get(TAG_ROW) or run.info.run_name or run.info.run_id[:8]
        groups.setdefault(label, []).append(_seed_record(tracker, run, metric))
    rows, plan = [], []
    for label, seeds in groups.items():
        seeds.sort(key=lambda s: (s["seed"] is None, s["seed"] or 0, s["start"]))
        rows.append(_row(experiment, label, seeds, metric))
        plan.append(min((s["plan"] for s in seeds if s["plan"] is not None), default=None))
    # the sweep file's order (concurrent trials start in any order), then start order
    rows = [r for _, _, r in sorted(zip(plan, range(len(rows)), rows), key=lambda t: (t[0] is None, t[0] or 0, t[1]))]

    # order: paper order first (stable for duplicates), then start order
    name = _table_name(experiment)
    if name is not None:
        order = {k: i for i, k in enumerate(PAPER_TABLES[name]["rows"])}

        def key(item):
            i, row = item
            m = match_paper_label(experiment, row["label"])
            return (0, order[m], i) if m is not None else (1, 0, i)

        rows = [r for _, r in sorted(enumerate(rows), key=key)]
    _add_ratios(experiment, rows, mode)
    return rows


def _default_row(experiment: str, rows: list[dict]) -> dict:
    table = paper_table(experiment)
    default = None
    if table is not None:
        default = next((r for r in rows if match_paper_label(experiment, r["label"]) == table["default"]), None)
    return default or next((r for r in rows if r["value"] is not None), rows[0])


def _add_ratios(experiment: str, rows: list[dict], mode: str = "min") -> None:
    if not rows:
        return
    table = paper_table(experiment)
    default = _default_row(experiment, rows)
    base = default["value"]
    for r in rows:
        r["ratio"] = (r["value"] / base) if (r["value"] is not None and base) else None
        r["default"] = r is default
        if r is not default:
            r["p"] = welch_p(r.get("values") or [], default.get("values") or [])
            r["verdict"] = verdict(r["p"], r["value"], base, mode)
    if table is not None:
        pbase = table["rows"].get(table["default"])
        for r in rows:
            r["paper_ratio"] = (r["paper"] / pbase) if (r["paper"] is not None and pbase) else None


def metric_histories(rows: Sequence[Mapping[str, Any]], *, uri: Optional[str] = None, keys: Optional[Iterable[str]] = None) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{row label: {metric key: [(step, value), ...]}}`` of each row's first seed, for every
    metric its run logged except the CFG-scale ones (``alpha_<a>/...``: one value each), or
    only ``keys``."""
    tracker = SweepTracker(uri=uri)
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for row in rows:
        run_id = row.get("run_id")
        if not run_id:
            continue
        run = tracker.get_run(run_id)
        wanted = list(keys) if keys is not None else sorted(k for k in run.data.metrics if not ALPHA_KEY.match(k))
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


def _pm(mean: Optional[float], std: Optional[float], digits: int = 2) -> str:
    """``10.70 ± 0.41``; ``10.70`` without a std (one seed); ``—`` without a mean."""
    if mean is None:
        return "—"
    return _fmt(float(mean), digits) + (f" ± {_fmt(float(std), digits)}" if std is not None else "")


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def extractor_marks(rows: Sequence[Mapping[str, Any]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """When the rows' FID extractors differ: (identity -> mark "a", "b", ..., label -> the
    marks of its seeds' extractors); ({}, {}) when every run used one (or none recorded one).
    A run without the tag counts as the identity "not recorded"."""
    idents: list[str] = []
    per_row: dict[str, list[str]] = {}
    for r in rows:
        own = list(r.get("extractors") or []) + (["not recorded"] if r.get("unrecorded_extractor") else [])
        per_row[str(r.get("label"))] = own
        idents += [i for i in own if i not in idents]
    if len(idents) <= 1:
        return {}, {}
    marks = {ident: chr(ord("a") + i) if i < 26 else str(i) for i, ident in enumerate(idents)}
    return marks, {label: [marks[i] for i in own] for label, own in per_row.items()}


def _extractor_lines(rows: Sequence[Mapping[str, Any]], metric: str) -> list[str]:
    """The line naming the FID extractor of the runs, or, when the rows' differ, which rows
    used which (their marks); nothing for a sweep without FIDs that recorded none."""
    marks, per_row = extractor_marks(rows)
    if not marks:
        ids = sorted({i for r in rows for i in (r.get("extractors") or [])})
        if ids:
            return [f"FID extractor: `{ids[0]}` (every run)."]
        return ["FID extractor: not recorded by the runs."] if metric.lower().startswith("fid") else []
    lines = ["**The rows' FID extractors differ** (marked [a], [b], ... after the row): compare FIDs only between rows with the same mark."]
    for ident, m in marks.items():
        users = [label for label, ms in per_row.items() if m in ms]
        shown = ident if ident == "not recorded" else f"`{ident}`"
        lines.append(f"- [{m}] {shown}: {', '.join(users)}")
    return lines


def render_markdown(rows: Sequence[Mapping[str, Any]], *, experiment: Optional[str] = None, metric: Optional[str] = None, title: Optional[str] = None) -> str:
    """A Markdown table (with a title and the paper note when ``experiment`` has a paper table).

    Cells are ``mean ± std`` over a row's finished seeds (just the value for one seed). With
    several seeds per row the table adds ``seeds`` (n, or n/runs when some did not finish)
    and ``vs default`` (Welch's verdict); the ``EXTRA_COLUMNS`` some row logged follow the
    ratio. Under the table: how to read it, the FID extractor (rows that used different
    ones are marked), the paper note and the failed rows' errors."""
    metric = metric or (rows[0].get("metric") if rows else None) or "fid"
    table = paper_table(experiment) if experiment else None
    multi = any((r.get("runs") or 1) > 1 for r in rows)
    extras = [k for k in EXTRA_COLUMNS if any(k in (r.get("extras") or ()) for r in rows)]
    _, row_marks = extractor_marks(rows)
    lines = []
    if title or experiment:
        lines += [f"## {title or f'{experiment}: {metric}'}", ""]
    head = ["row", "status"] + (["seeds"] if multi else []) + [f"{metric} (ours)", "ratio (ours)"]
    head += ["vs default"] if multi else []
    head += [EXTRA_COLUMNS[k] for k in extras]
    if table is not None:
        head += [f"{table['metric'].upper()} (paper)", "ratio (paper)"]
    head += ["steps", "seconds"]
    lines.append("| " + " | ".join(head) + " |")
    aligns = ["---", "---"] + (["---:"] if multi else []) + ["---:", "---:"] + (["---"] if multi else []) + ["---:"] * (len(head) - 4 - 2 * multi)
    lines.append("|" + "|".join(aligns) + "|")
    for r in rows:
        label = str(r.get("label"))
        if row_marks.get(label):
            label += f" [{', '.join(row_marks[label])}]"
        cells = [_md_cell(label), _md_cell(r.get("status") or "—")]
        if multi:
            n, runs = r.get("n") or 0, r.get("runs") or 1
            cells.append(str(n) if n == runs else f"{n}/{runs}")
        cells += [_pm(r.get("value"), r.get("std")), _fmt(r.get("ratio"))]
        if multi:
            cells.append(vs_default_cell(r))
        cells += [_pm(r.get(k), r.get(f"{k}_std"), EXTRA_DIGITS.get(k, 3)) for k in extras]
        if table is not None:
            cells += [_fmt(r.get("paper")), _fmt(r.get("paper_ratio"))]
        cells += [_fmt(r.get("steps")), _fmt(r.get("seconds"), 1)]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("ratio = value / the default row's value (the paper's default setting when it is in the sweep, else the first row).")
    if multi:
        lines.append(
            f"{metric} (ours) and the other columns: mean ± sample std (ddof 1) over each row's finished seeds; "
            f"vs default: Welch's t-test (unequal variances) of the row's seeds against the default row's, "
            f"p < {P_THRESHOLD:g} reads better / worse, else within noise (— for the default row and rows of one seed)."
        )
    lines += _extractor_lines(rows, metric)
    if table is not None:
        lines.append(f"Paper column: {table['source']}; {table['setting']}. {table['note']}")
    failed = [r for r in rows if r.get("error")]
    for r in failed:
        err = str(r["error"]).strip().splitlines()
        lines.append(f"- `{_md_cell(r['label'])}` {r.get('status', '')}: {_md_cell(err[-1] if err else '')[:300]}")
    return "\n".join(lines) + "\n"


def cfg_table_metrics(rows: Sequence[Mapping[str, Any]], metric: str = "fid") -> list[str]:
    """The metrics of the CFG-scale table present in some row: ``metric`` (or fid, when the
    sweep ranks by a metric without a curve, such as fid_best_alpha), then ``recall``."""
    return [m for m in dict.fromkeys((metric, "fid", *CFG_EXTRA)) if any(m in (r.get("cfg") or {}) for r in rows)]


def render_cfg_markdown(rows: Sequence[Mapping[str, Any]], *, metric: str = "fid", figure: Optional[str] = None) -> str:
    """The CFG-scale section: per metric (``metric``, recall) a table row x alpha of mean ±
    std over the finished seeds (from the ``alpha_<a>/<metric>`` metrics); "" when no row has
    them. ``figure``: the file name of the curves, linked under the tables."""
    names = cfg_table_metrics(rows, metric)
    if not names:
        return ""
    lines = ["### CFG scale", ""]
    for name in names:
        alphas = sorted({a for r in rows for a in (r.get("cfg") or {}).get(name, {})})
        lines.append(f"{name} by CFG scale α (mean ± std over the seeds):")
        lines.append("")
        lines.append("| row | " + " | ".join(f"α={a:g}" for a in alphas) + " |")
        lines.append("|---|" + "|".join(["---:"] * len(alphas)) + "|")
        for r in rows:
            per = (r.get("cfg") or {}).get(name, {})
            cells = [_pm(per[a]["mean"], per[a]["std"], EXTRA_DIGITS.get(name, 3)) if a in per else "—" for a in alphas]
            lines.append(f"| {_md_cell(r.get('label'))} | " + " | ".join(cells) + " |")
        lines.append("")
    if figure:
        lines.append(f"![{' and '.join(names)} vs CFG scale]({figure})")
        lines.append("")
    return "\n".join(lines)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Rows as CSV (``CSV_FIELDS`` columns, empty cell for None; ``values`` and ``seeds``
    joined by ";", ``vs_default`` the verdict, ``extractor`` the identities joined by ";")."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def cell(r: Mapping[str, Any], k: str) -> Any:
        if k in ("values", "seeds"):
            return ";".join("" if v is None else str(v) for v in (r.get(k) or []))
        if k == "vs_default":
            return r.get("verdict") or ""
        if k == "extractor":
            return ";".join(r.get("extractors") or [])
        v = r.get(k)
        return "" if v is None else v

    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(CSV_FIELDS), extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: cell(r, k) for k in CSV_FIELDS})
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


HEADROOM = 1.35  # the bar chart's y range / its tallest bar: room for the legend above the bars


def _seed_offsets(n: int, width: float) -> list[float]:
    """x offsets of n seed dots inside a bar of ``width`` (centred, evenly spread)."""
    if n <= 1:
        return [0.0] * n
    half = width * 0.3
    return [-half + 2 * half * i / (n - 1) for i in range(n)]


def plot_report(
    rows: Sequence[Mapping[str, Any]],
    histories: Optional[Mapping[str, Mapping[str, Sequence]]],
    path: str | Path,
    *,
    metric: Optional[str] = None,
    title: Optional[str] = None,
) -> Path:
    """PNG: top, our metric per row (bars: the mean over the seeds, error bars: their std,
    dots: each seed; left axis) with the paper's value beside (hatched bars, right axis);
    bottom, up to three metric curves over steps (each row's first seed), one line per row."""
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
    stds = [r.get("std") for r in rows]
    bx = [x - width / 2 if have_paper else x for x in xs]
    bars = ax.bar(bx, [v if v is not None else 0.0 for v in ours], width, color="tab:blue", alpha=0.85, label=f"{metric} (ours)")
    if any(s is not None for s in stds):
        ex = [b for b, v, s in zip(bx, ours, stds) if v is not None and s is not None]
        ax.errorbar(ex, [v for v, s in zip(ours, stds) if v is not None and s is not None],
                    yerr=[s for v, s in zip(ours, stds) if v is not None and s is not None],
                    fmt="none", ecolor="black", elinewidth=1.2, capsize=4, zorder=3, label="± std over seeds")
    dots_x, dots_y = [], []
    for b, r in zip(bx, rows):
        vals = list(r.get("values") or [])
        if len(vals) > 1:
            dots_x += [b + o for o in _seed_offsets(len(vals), width)]
            dots_y += vals
    if dots_x:
        ax.scatter(dots_x, dots_y, s=14, color="navy", zorder=4, label="each seed")
    for b, r in zip(bars, rows):
        v = r.get("value")
        text = _pm(v, r.get("std")) if v is not None else (str(r.get("status") or "n/a").lower())
        top = b.get_height() + (r.get("std") or 0.0)
        ax.annotate(text, (b.get_x() + b.get_width() / 2, max(top, max(r.get("values") or [0.0]))), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 2), textcoords="offset points", color="tab:blue" if v is not None else "tab:red")
    ax.set_ylabel(f"{metric} (ours)", color="tab:blue")
    ax.set_xticks(xs)
    long_labels = max((len(s) for s in labels), default=0) > 8
    ax.set_xticklabels(labels, rotation=20 if long_labels else 0, ha="right" if long_labels else "center", fontsize=9)
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
        ax2.set_ylim(0, max([v for v in pv if v is not None] or [1.0]) * HEADROOM)
        handles.append(pbars)
    tops = [v + (s or 0.0) for v, s in zip(ours, stds) if v is not None] + dots_y
    ymax = max(tops or [1.0])
    ax.set_ylim(0, ymax * HEADROOM if ymax > 0 else 1.0)
    own_handles, _ = ax.get_legend_handles_labels()
    handles = own_handles + handles[1:]
    ax.legend(handles=handles, labels=[h.get_label() for h in handles], loc="upper left", fontsize=8, ncol=2)
    seeds_note = " (mean ± std over seeds)" if any((r.get("runs") or 1) > 1 for r in rows) else ""
    ax.set_title(title or f"{metric} per row{seeds_note}" + (" (paper's ImageNet-256 values beside)" if have_paper else ""), fontsize=11)

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
    return _save_figure(fig, path)


def plot_cfg(rows: Sequence[Mapping[str, Any]], path: str | Path, *, metric: str = "fid", title: Optional[str] = None) -> Optional[Path]:
    """PNG of the CFG-scale curves: one panel per metric of ``cfg_table_metrics`` (``metric``
    vs alpha, recall vs alpha), one line per row (the mean over its seeds) with a band of ±
    their std. None (nothing written) when no row logged ``alpha_<a>/...`` metrics."""
    from matplotlib.figure import Figure

    names = cfg_table_metrics(rows, metric)
    if not names:
        return None
    fig = Figure(figsize=(5.2 * len(names), 4.2), dpi=110)
    for j, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), j + 1)
        for r in rows:
            per = (r.get("cfg") or {}).get(name) or {}
            alphas = sorted(a for a in per if per[a]["mean"] is not None)
            if not alphas:
                continue
            mean = [per[a]["mean"] for a in alphas]
            (line,) = ax.plot(alphas, mean, marker="o", markersize=3, linewidth=1.4, label=str(r.get("label")))
            if any(per[a]["std"] is not None for a in alphas):
                sd = [per[a]["std"] or 0.0 for a in alphas]
                ax.fill_between(alphas, [m - s for m, s in zip(mean, sd)], [m + s for m, s in zip(mean, sd)], color=line.get_color(), alpha=0.18, linewidth=0)
        ax.set_xlabel("CFG scale α")
        ax.set_ylabel(name)
        ax.set_title(f"{name} vs α", fontsize=10)
        ax.grid(alpha=0.3)
        if j == 0:
            ax.legend(fontsize=7, loc="best")
    return _save_figure(fig, path, title)


def _save_figure(fig, path: str | Path, title: Optional[str] = None) -> Path:
    """Title (optional), tight layout, write the PNG (making its folder); returns its path."""
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _grid_images(rows: Sequence[Mapping[str, Any]], tracker: SweepTracker, tmp: Path) -> list[tuple[str, Path]]:
    """(row label, local samples.png) of each row's first seed that logged one."""
    out = []
    for i, r in enumerate(rows):
        for j, s in enumerate(r.get("per_seed") or [{"run_id": r.get("run_id")}]):
            run_id = s.get("run_id")
            if not run_id:
                continue
            try:
                if GRID_ARTIFACT not in tracker.artifact_paths(run_id):
                    continue
                out.append((str(r.get("label")), tracker.download_artifact(run_id, GRID_ARTIFACT, tmp / f"{i}_{j}")))
            except Exception as exc:  # noqa: BLE001 - a missing picture must not stop the report
                log.warning("report: could not read %s of run %s: %s", GRID_ARTIFACT, run_id, exc)
                continue
            break
    return out


def plot_grids(images: Sequence[tuple[str, Path]], path: str | Path, *, title: Optional[str] = None) -> Optional[Path]:
    """PNG with one panel per (row label, sample-grid PNG), titled with the label; None (nothing
    written) without images."""
    import textwrap

    from matplotlib.figure import Figure
    from matplotlib.image import imread

    if not images:
        return None
    n = len(images)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(3.6 * ncols, 3.9 * nrows + (0.4 if title else 0.0)), dpi=110)
    for k, (label, file) in enumerate(images):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        img = imread(str(file))
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(label, 34)) or label, fontsize=9)
        ax.set_axis_off()
    return _save_figure(fig, path, title)


# --------------------------------------------------------------------------- the report


def default_reports_dir() -> Path:
    return drifting_home() / "reports"


def report_paths(experiment: str, out_dir: Optional[str | Path] = None) -> dict[str, Path]:
    """``{"md", "csv", "png", "grids", "cfg"}``: where ``write_report`` writes ``experiment``'s
    report (``<name>.md|.csv|.png``, ``<name>_grids.png``, ``<name>_cfg.png``; the last two
    only when the runs have sample grids / CFG-scale metrics)."""
    out = Path(out_dir).expanduser().resolve() if out_dir else default_reports_dir()
    stem = slug(experiment, default="report")
    paths = {ext: out / f"{stem}.{ext}" for ext in ("md", "csv", "png")}
    paths["grids"] = out / f"{stem}_grids.png"
    paths["cfg"] = out / f"{stem}_cfg.png"
    return paths


def write_report(
    experiment: str,
    out_dir: Optional[str | Path] = None,
    *,
    uri: Optional[str] = None,
    metric: Optional[str] = None,
    log_to_parent: bool = True,
    parent_id: Optional[str] = None,
) -> dict:
    """Write ``<out_dir>/<experiment>.md``, ``.csv`` and ``.png`` for the latest sweep of
    ``experiment`` (default ``out_dir``: ``<drifting_home>/reports``), plus
    ``<experiment>_grids.png`` (each row's first-seed ``samples.png``, when the child runs
    logged one) and ``<experiment>_cfg.png`` with the CFG-scale tables (when they logged
    ``alpha_<a>/<metric>`` metrics); stale copies of those two are removed. With
    ``log_to_parent``, log the files to the parent run under ``report/`` plus the Markdown
    as ``table.md``. Returns ``{"paths": {"md", "csv", "png"[, "grids"][, "cfg"]},
    "table_markdown", "rows", "parent_run_id"}``. Prints nothing. Raises ``LookupError``
    when there is no sweep. ``metric``: the table's headline; default the sweep's own (the
    parent run's param ``metric``, e.g. fid_best_alpha for cfg_gamma.yaml), else fid."""
    tracker = SweepTracker(experiment, uri=uri)
    parent_id = parent_id or _latest_sweep_id(tracker, experiment)
    metric = metric or tracker.get_run(parent_id).data.params.get("metric") or "fid"
    rows = sweep_table(experiment, uri=tracker.uri, metric=metric, parent_id=parent_id)
    histories = metric_histories(rows, uri=tracker.uri)

    where = report_paths(experiment, out_dir)
    where["md"].parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="drifting-grids-") as tmp:
        grids = plot_grids(_grid_images(rows, tracker, Path(tmp)), where["grids"], title=f"{experiment}: samples per row (first seed)")
    cfg = plot_cfg(rows, where["cfg"], metric=metric, title=f"{experiment}: CFG scale")
    for key, made in (("grids", grids), ("cfg", cfg)):
        if made is None:
            where[key].unlink(missing_ok=True)  # an earlier report's, of other runs

    table_md = render_markdown(rows, experiment=experiment, metric=metric)
    if grids is not None:
        table_md += f"\nSamples of each row (its first seed): ![sample grids]({grids.name})\n"
    cfg_md = render_cfg_markdown(rows, metric=metric, figure=cfg.name if cfg is not None else None)
    if cfg_md:
        table_md += "\n" + cfg_md
    md = where["md"]
    md.write_text(table_md)
    csv_path = write_csv(rows, where["csv"])
    png = plot_report(rows, histories, where["png"], metric=metric, title=f"{experiment}: {metric} per row")
    paths = {"md": str(md), "csv": str(csv_path), "png": str(png)}
    if grids is not None:
        paths["grids"] = str(grids)
    if cfg is not None:
        paths["cfg"] = str(cfg)
    if log_to_parent:
        tracker.log_artifacts(parent_id, [Path(p) for p in paths.values()], artifact_path="report")
        tracker.log_text(parent_id, table_md, "table.md")
    return {"paths": paths, "table_markdown": table_md, "rows": rows, "parent_run_id": parent_id}
