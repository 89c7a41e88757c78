"""Every benchmark in one run: prints each ratio and writes benchmarks/results.md (+ .json).

    python benchmarks/run.py [--quick] [--only drift,features,parallel,step,orchestration,eval,data] [--out DIR]

Ratios are measured side by side in this one process run (baseline and ours on the same
machine, same inputs, alternating); absolute times are context only. `--quick` shortens
every benchmark (a smoke run; its numbers are not the ones to report).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform as std_platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

MODULES = {
    "drift": "bench_drift",
    "features": "bench_features",
    "parallel": "bench_parallel",
    "step": "bench_step",
    "orchestration": "bench_orchestration",
    "eval": "bench_eval",
    "data": "bench_data",
}


def _fmt(v, unit=None) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def machine() -> str:
    import torch

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ", no GPU"
    return f"{cpu}, {os.cpu_count()} CPUs{gpu}, torch {torch.__version__} ({torch.get_num_threads()} threads), Python {std_platform.python_version()}"


def table(rows: list[dict]) -> str:
    out = ["| benchmark | case | baseline | ours | unit | ratio | target | met | note |", "|---|---|---:|---:|---|---:|---:|---|---|"]
    for r in rows:
        target = r.get("target")
        ratio = r.get("ratio")
        met = "—" if target is None or ratio is None else ("yes" if ratio >= target else "no")
        out.append(
            f"| {r['benchmark']} | {r['case']} | {_fmt(r.get('baseline'))} | {_fmt(r.get('ours'))} | {r.get('unit', '')} | "
            f"{_fmt(ratio)}{'x' if ratio is not None else ''} | {_fmt(target)}{'x' if target is not None else ''} | {met} | {r.get('note', '')} |"
        )
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="short runs (smoke); not the numbers to report")
    p.add_argument("--only", default=",".join(MODULES), help="comma-separated subset of " + ", ".join(MODULES))
    p.add_argument("--out", default=str(HERE), help="where results.md / results.json go")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    wanted = [w.strip() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in wanted if w not in MODULES]
    if unknown:
        p.error(f"unknown benchmark(s) {unknown}; choose from {list(MODULES)}")
    t_all = time.time()
    rows: list[dict] = []
    timings = {}
    for name in wanted:
        t0 = time.time()
        print(f"== {name} ...", flush=True)
        mod = importlib.import_module(MODULES[name])
        try:
            got = mod.run(quick=args.quick)
        except Exception as exc:  # one broken benchmark must not hide the others
            got = [{"benchmark": name, "case": "error", "baseline": None, "ours": None, "ratio": None, "target": None, "unit": "", "note": f"{type(exc).__name__}: {exc}"}]
        for r in got:
            ratio = r.get("ratio")
            print(f"   {r['benchmark']} | {r['case']}: {_fmt(ratio)}x" + (f" (target {r['target']}x)" if r.get("target") else "") + f"  {r.get('note', '')}", flush=True)
        rows += got
        timings[name] = round(time.time() - t0, 1)
    total = time.time() - t_all
    header = (
        f"Measured {time.strftime('%Y-%m-%d %H:%M')} on {machine()}; "
        f"`python benchmarks/run.py{' --quick' if args.quick else ''}` took {total:.0f} s "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}). Ratio = baseline / ours for times, ours / baseline for rates."
    )
    md = f"# Benchmark results\n\n{header}\n\n{table(rows)}\n"
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps({"header": header, "rows": rows, "seconds": total, "quick": args.quick}, indent=2) + "\n")
    print()
    print(md)
    print(f"written: {out / 'results.md'}, {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
