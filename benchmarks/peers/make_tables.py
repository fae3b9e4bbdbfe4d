#!/usr/bin/env python
"""Markdown tables (one per dataset) from the JSON records in benchmarks/peers/results/.

Records: ``results/DATASET/MODEL.json`` (+ ``MODEL.time``, GNU time -v) from
shared/peers/recbole_run.py, and ``results/DATASET/implicit.json`` from
shared/peers/implicit_run.py.  Standard library only.

usage: python benchmarks/peers/make_tables.py [RESULTS_DIR]
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ["Pop", "ItemKNN", "BPR", "GRU4Rec", "SASRec", "BERT4Rec"]
SEQUENTIAL = {"GRU4Rec", "SASRec", "BERT4Rec"}
NO_TRAINING = {"Pop", "ItemKNN"}
DATASET_ORDER = ["ml-100k", "ml-100k-pos", "ml-1m", "amazon-beauty"]


def gnu_time(path: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    if not path.exists():
        return out
    txt = path.read_text()
    m = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", txt)
    if m:
        sec = 0.0
        for x in m.group(1).split(":"):
            sec = sec * 60 + float(x)
        out["wall"] = sec
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", txt)
    if m:
        out["rss_mib"] = int(m.group(1)) / 1024
    return out


def secs(x: float) -> str:
    return f"{x:,.0f} s" if x >= 10 else f"{x:.1f} s"


def recbole_row(path: Path) -> str:
    r = json.loads(path.read_text())
    m = r["model"]
    te = r["test"]
    notes = []
    if r["stopped_by"] == "time_budget":
        notes.append(f"stopped by the {r['time_budget_s']:.0f} s budget; not converged")
    elif r["stopped_by"] == "early_stopping":
        notes.append("early stopping (10 epochs without valid gain)")
    if m not in NO_TRAINING:
        notes.append(
            f"train epoch median {r['median_train_epoch_s']:.1f} s (mean {r['mean_train_epoch_s']:.1f} s), "
            f"valid pass mean {r['mean_valid_epoch_s']:.1f} s"
        )
    if m in SEQUENTIAL:
        notes.append("seen items NOT masked")
    else:
        notes.append("train(+valid) items masked")
    rss = gnu_time(path.with_suffix(".time")).get("rss_mib")
    if rss:
        notes.append(f"peak RSS {rss:,.0f} MiB")
    epochs = "1 (no training loop)" if m in NO_TRAINING else f"best {r['best_epoch']} of {r['epochs_run']}"
    return (
        f"| RecBole {m} | {te['hit@10']:.4f} | {te['ndcg@10']:.4f} | {te['mrr@10']:.4f} "
        f"| {secs(r['fit_wall_s'])} / {secs(r['fit_cpu_s'])} | {epochs} | {'; '.join(notes)} |"
    )


def implicit_rows(path: Path) -> list[str]:
    r = json.loads(path.read_text())
    rows = []
    for kind in ("ALS", "BPR"):
        runs = [x for x in r["runs"] if x["model"] == kind]
        picks = [
            (
                "defaults, fit on train",
                next((x for x in runs if x["tag"] == "default" and x["regime"].startswith("A")), None),
            ),
            ("defaults, refit on train+valid", None),  # listed only when nothing was tuned
            ("tuned on valid, fit on train", next((x for x in runs if x.get("selected_on_valid")), None)),
            ("tuned on valid, refit on train+valid", next((x for x in runs if x["tag"] == "selected"), None)),
        ]
        if picks[2][1] is None:  # no grid: show the default refit instead
            b = next((x for x in runs if x["tag"] == "default" and x["regime"].startswith("B")), None)
            picks[1] = ("defaults, refit on train+valid", b)
        for label, x in picks:
            if x is None:
                continue
            te = x["test"]
            p = x["params"]
            its = p.get("iterations")
            ps = ", ".join(f"{k}={v}" for k, v in p.items() if k != "iterations")
            split_ok = (
                "split verified = RecBole's" if r.get("split_identical_to_recbole") else "split not verified"
            )
            rows.append(
                f"| implicit {kind} ({label}) | {te['hit@10']:.4f} | {te['ndcg@10']:.4f} | {te['mrr@10']:.4f} "
                f"| {secs(x['fit_wall_s'])} / {secs(x['fit_cpu_s'])} | {its} iterations | {ps}; {r['threads']} threads; seen items masked; "
                f"{split_ok} |"
            )
    return rows


def probe_row(path: Path) -> str:
    r = json.loads(path.read_text())
    ev = f", one full-sort valid pass {secs(r['valid_pass_wall_s'])}" if "valid_pass_wall_s" in r else ""
    return (
        f"| RecBole {r['model']} (not run: epoch-time probe only) | - | - | - "
        f"| est. {secs(r['est_train_epoch_wall_s'])} / {secs(r['est_train_epoch_cpu_s'])} per epoch | 0 "
        f"| {r['batches_per_epoch']:,} batches/epoch of {r['batch_size']}; extrapolated from "
        f"{r['batches_timed']} timed batches ({r['wall_s_per_batch']:.2f} s wall, {r['cpu_s_per_batch']:.2f} s CPU each)"
        f"{ev}; load average {r['loadavg_at_end'][0]:.1f} on 2 cores |"
    )


def main(argv: list[str]) -> int:
    root = Path(argv[1]) if len(argv) > 1 else HERE / "results"
    dsets = sorted(
        (d for d in root.iterdir() if d.is_dir()),
        key=lambda d: (DATASET_ORDER.index(d.name) if d.name in DATASET_ORDER else 99, d.name),
    )
    for d in dsets:
        rows = []
        stats = None
        for m in ORDER:
            p = d / f"{m}.json"
            if p.exists():
                rows.append(recbole_row(p))
                stats = stats or json.loads(p.read_text())["dataset_stats"]
        for pp in sorted(d.glob("*-probe.json")):
            rows.append(probe_row(pp))
        ip = d / "implicit.json"
        if ip.exists():
            rows.extend(implicit_rows(ip))
        if not rows:
            continue
        print(f"### {d.name}")
        if stats:
            print(
                f"\n{stats['users_incl_pad'] - 1:,} users, {stats['items_incl_pad'] - 1:,} items, "
                f"{stats['inters']:,} interactions; train/valid/test rows "
                f"{stats['train_rows']:,}/{stats['valid_rows']:,}/{stats['test_rows']:,}.\n"
            )
        print("| model | HR@10 | NDCG@10 | MRR@10 | train time (wall / CPU) | epochs | notes |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(rows))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
