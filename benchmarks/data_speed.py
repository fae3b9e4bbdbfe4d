"""How long do load + prepare + split take, and how much memory?

For each dataset, in a fresh subprocess (so peak memory is that dataset's alone): `registry.load`
(read + validate), `InteractionData.from_events` (vocabularies, stable time sort, ragged arrays)
and `leave_one_out`, repeated `--runs` times. Reported: the median of each stage and of the
per-run totals, and the process's peak RSS (``ru_maxrss``) next to its RSS right after imports.

    DYNREC_DATA_DIR=../shared/data .venv/bin/python benchmarks/data_speed.py

Writes benchmarks/results/data_speed.json and benchmarks/results_data_speed.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_DATASETS = ("ml-100k", "ml-1m", "ml-1m-full")
TARGET_S = {"ml-1m": 5.0}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def child(name: str, runs: int, data_dir: str | None) -> dict[str, object]:
    """Runs in the subprocess: time every stage `runs` times."""
    import polars as pl

    from dynrec.data import registry
    from dynrec.data.dataset import InteractionData
    from dynrec.preprocessing.split import leave_one_out

    base_rss = _rss_mib()
    stages: dict[str, list[float]] = {"load": [], "prepare": [], "split": [], "total": []}
    info: dict[str, object] = {}
    for _ in range(runs):
        t0 = time.perf_counter()
        events = registry.load(name, data_dir)
        t1 = time.perf_counter()
        data = InteractionData.from_events(events)
        t2 = time.perf_counter()
        split = leave_one_out(data)
        t3 = time.perf_counter()
        for key, val in (("load", t1 - t0), ("prepare", t2 - t1), ("split", t3 - t2), ("total", t3 - t0)):
            stages[key].append(val)
        info = {
            "file": events.source,
            "n_events": len(events),
            "n_users": len(data.user_vocab),
            "n_items": len(data.item_vocab),
            "n_invalid": events.report.n_invalid,
            "n_test": len(split.test),
        }
        del events, data, split
    return {
        "dataset": name,
        **info,
        "runs": runs,
        **{f"{k}_s": statistics.median(v) for k, v in stages.items()},
        "all_runs_s": {k: [round(x, 4) for x in v] for k, v in stages.items()},
        "rss_after_imports_mib": round(base_rss, 1),
        "peak_rss_mib": round(_rss_mib(), 1),
        "polars_threads": pl.thread_pool_size(),
    }


def run_child(name: str, runs: int, data_dir: str | None) -> dict[str, object]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--runs", str(runs)]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{name}: benchmark child failed:\n{out.stderr.strip()}")
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def markdown(results: list[dict[str, object]], meta: dict[str, object]) -> str:
    lines = [
        "# Data pipeline speed: load + prepare + split",
        "",
        f"`benchmarks/data_speed.py`, {meta['date']}, {meta['cpus']} CPUs ({meta['machine']}), "
        f"Python {meta['python']}, Polars {meta['polars']}; load average {meta['loadavg']} at start "
        "(shared machine, noisy). Median of "
        f"{meta['runs']} runs in one fresh process per dataset; peak RSS = `ru_maxrss` of that process "
        "(it includes the interpreter and imports; the last column is the RSS right after them).",
        "",
        "| dataset | events | users | items | load s | prepare s | split s | **total s** | first run s | target | "
        "peak RSS MiB | RSS after imports MiB |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        target = TARGET_S.get(str(r["dataset"]))
        ok = "" if target is None else f"≤ {target:g} s {'✓' if float(r['total_s']) <= target else '✗'}"  # type: ignore[arg-type]
        lines.append(
            f"| {r['dataset']} | {r['n_events']:,} | {r['n_users']:,} | {r['n_items']:,} | "
            f"{r['load_s']:.3f} | {r['prepare_s']:.3f} | {r['split_s']:.3f} | **{r['total_s']:.3f}** | "
            f"{r['all_runs_s']['total'][0]:.3f} | {ok} |"  # type: ignore[index]
            f" {r['peak_rss_mib']:.0f} | {r['rss_after_imports_mib']:.0f} |"
        )
    lines += [
        "",
        "Stages: *load* = `registry.load` (read, decompress, split lines, validate every row); "
        "*prepare* = `InteractionData.from_events` (vocabularies, stable (user, time, file order) sort, "
        "ragged arrays); *split* = `leave_one_out`; *first run* = the cold run of the five (first "
        "use of each code path, OS file cache), included in the median. `ml-1m` is the SASRec file (`user item` lines, "
        "gzipped); `ml-1m-full` is whichever of `ratings.dat` / `ml-1m-full.txt.gz` the data dir holds.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", nargs="+", default=list(DEFAULT_DATASETS))
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "data_speed.json")
    ap.add_argument("--md", type=Path, default=HERE / "results_data_speed.md")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.runs, args.data_dir)))
        return
    import polars as pl

    meta: dict[str, object] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpus": os.cpu_count(),
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "polars": pl.__version__,
        "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg()),
        "runs": args.runs,
    }
    results = []
    for name in args.datasets:
        r = run_child(name, args.runs, args.data_dir)
        results.append(r)
        print(
            f"{name:12s} total {r['total_s']:.3f}s (load {r['load_s']:.3f}, prepare {r['prepare_s']:.3f}, "
            f"split {r['split_s']:.3f}), peak RSS {r['peak_rss_mib']:.0f} MiB"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    args.md.write_text(markdown(results, meta))
    print(f"wrote {args.out} and {args.md}")


if __name__ == "__main__":
    main()
