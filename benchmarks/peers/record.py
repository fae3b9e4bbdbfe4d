"""Turn one peer run's JSON (recbole_run.py / implicit_subset.py) into records of results/peers.json.

Keeps the metrics and timings only: the raw run (RecBole's resolved config, logs, checkpoints) stays
in $PEERS_DIR/runs. A RecBole record gets the seen-items-masked metrics of recbole_masked_eval.py
when ``--masked`` names its output.

    python -m benchmarks.peers.record ml-100k SASRec RUN.json [--masked MASKED.json] [--seed 2020]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from benchmarks._common import put, record


def recbole(ds: str, model: str, d: dict[str, Any], masked: dict[str, Any] | None, command: str) -> None:
    t = d["test"]
    m: dict[str, Any] = {
        "HR@10": t["hit@10"],
        "NDCG@10": t["ndcg@10"],
        "MRR@10": t["mrr@10"],
        "valid_NDCG@10": (d.get("best_valid") or {}).get("ndcg@10"),
        "best_epoch": d.get("best_epoch"),
        "epochs": d.get("epochs_run"),
        "fit_s": d.get("fit_wall_s"),
        "s_per_epoch": d.get("median_train_epoch_s"),
        "peak_rss_mib": d.get("peak_rss_mib"),
    }
    log, best = d.get("epoch_log") or [], d.get("best_epoch")
    if log and best is not None and best < len(log):
        m["s_to_best"] = sum(e["train_wall_s"] + e.get("valid_wall_s", 0.0) for e in log[: best + 1])
    if masked is not None:
        mk = masked["masked_seen_items"]
        m.update(
            {"HR@10_masked": mk["hit@10"], "NDCG@10_masked": mk["ndcg@10"], "MRR@10_masked": mk["mrr@10"]}
        )
    seed = int((d.get("config_overrides") or {}).get("seed", 2020))
    stopped = d.get("stopped_by")
    params = {
        "library": f"RecBole {d['recbole_version']}",
        "dataset": ds,
        "model": model,
        "seed": seed,
        "time_budget_s": d.get("time_budget_s"),
    }
    note = f"stopped by {stopped}" if stopped and stopped != "early_stopping" else ""
    metrics = {k: v for k, v in m.items() if v is not None}
    put(record("peers", f"{ds}/RecBole-{model}/seed={seed}", params, metrics, command, note=note))


def implicit(ds: str, d: dict[str, Any], command: str) -> None:
    notes = {"tuned": "grid point chosen on validation", "selected": "grid's choice refitted on train+valid"}
    for r in d["runs"]:
        if "test" not in r or (r["tag"] == "grid" and not r.get("selected_on_valid")):
            continue
        tag = "tuned" if r["tag"] == "grid" else r["tag"]
        m = {
            "HR@10": r["test"]["hit@10"],
            "NDCG@10": r["test"]["ndcg@10"],
            "MRR@10": r["test"]["mrr@10"],
            "valid_NDCG@10": (r.get("valid") or {}).get("ndcg@10"),
            "fit_s": r["fit_wall_s"],
        }
        params = {
            "library": f"implicit {d['implicit_version']}",
            "dataset": ds,
            "model": r["model"],
            "tag": tag,
            "regime": r["regime"],
            "seed": int(d["seed"]),
            "model_params": r["params"],
        }
        key = f"{ds}/implicit-{r['model']}/{tag}/{r['regime']}"
        metrics = {k: v for k, v in m.items() if v is not None}
        put(record("peers", key, params, metrics, command, note=notes.get(tag, "implicit's defaults")))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset")
    ap.add_argument("model", help="a RecBole model name, or implicit")
    ap.add_argument("run", type=Path)
    ap.add_argument("--masked", type=Path, default=None)
    ap.add_argument("--command", required=True, help="the command that produced the run")
    args = ap.parse_args()
    d = json.loads(args.run.read_text())
    if args.model == "implicit":
        implicit(args.dataset, d, args.command)
    else:
        masked = json.loads(args.masked.read_text()) if args.masked else None
        recbole(args.dataset, args.model, d, masked, args.command)


if __name__ == "__main__":
    main()
