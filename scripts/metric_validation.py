#!/usr/bin/env python
"""Plot the metric validation suite: every degradation's curve, for every metric.

    .venv/bin/python scripts/metric_validation.py            # writes docs/metric_validation.{png,md}

Real digits split in halves; the candidate half is degraded at three strengths (within-class
shrink, dropped classes, pixel noise, blur, duplicates; `eval/degradations.py`) and scored
against the reference half (`eval/validation.py`). Top row: the headline FID (digits-div
features) and the classifier FID; bottom: precision, recall, density, coverage. The same
numbers are asserted by tests/test_metric_validation.py. About 20 s on 2 CPU cores.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from drifting_platform.eval.validation import METRICS, validation_curves

ROOT = Path(__file__).resolve().parents[1]
TITLES = {"fid": "headline FID (digits-div)", "fid_classifier": "classifier FID (digits)", "precision": "precision (k=3)",
          "recall": "recall (k=3)", "density": "density (k=5)", "coverage": "coverage (k=5)"}


def markdown(res: dict) -> str:
    lines = [f"# Metric validation suite ({res['identity']})", "",
             "Real digits, two halves: each degradation of the candidate half against the reference half",
             "(`scripts/metric_validation.py`; asserted by `tests/test_metric_validation.py`). Strength 0 is",
             "real against real, the floor.", "",
             "| degradation | strength | " + " | ".join(METRICS) + " |", "|---|---:|" + "---:|" * len(METRICS)]
    for name, c in res["curves"].items():
        for i, s in enumerate(c["strengths"]):
            lines.append(f"| {name} ({c['what']}) | {s:g} | " + " | ".join(f"{c[m][i]:.3f}" for m in METRICS) + " |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(13, 7.5), dpi=110)
    axes = fig.subplots(2, 3)
    for ax, m in zip(axes.flat, METRICS):
        for name, c in res["curves"].items():
            xs = [i / 3 for i in range(len(c["strengths"]))]  # strengths of each degradation on one axis
            ax.plot(xs, c[m], marker="o", label=name)
        ax.set_title(TITLES[m], fontsize=10)
        ax.set_xticks([0, 1 / 3, 2 / 3, 1])
        ax.set_xticklabels(["real", "weak", "medium", "strong"])
        ax.grid(alpha=0.3)
        if m.startswith("fid"):
            ax.set_yscale("log")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"Metric validation on real digits ({res['identity']}): strengths " + "; ".join(
        f"{n} {', '.join(f'{s:g}' for s in c['strengths'][1:])}" for n, c in res["curves"].items()), fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs" / "metric_validation"), help="path without suffix")
    args = ap.parse_args()
    res = validation_curves()
    out = Path(args.out)
    plot(res, out.with_suffix(".png"))
    out.with_suffix(".md").write_text(markdown(res))
    print(f"wrote {out.with_suffix('.png')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
