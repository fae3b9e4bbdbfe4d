"""The dynrec-vs-RecBole SASRec comparison on ml-100k from the records that
`benchmarks/sasrec_vs_recbole.sh` writes (ours: one JSON per seed,
`results/sasrec_ml-100k_side_by_side*.json`; RecBole: `peers/results/ml-100k/SASRec*.json`);
prints a markdown table and writes `benchmarks/results_side_by_side.md`.

Time to best = wall seconds from the start of training to the end of the epoch (training +
validation) whose validation NDCG@10 was best, for both systems (test evaluation excluded).
Our runs are grouped by weight averaging (`ema_decay`; 0 = the default before 2026-11-28).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ours = [
        json.loads(p.read_text())
        for p in sorted((HERE / "results").glob("sasrec_ml-100k_side_by_side*.json"))
    ]
    rb = json.loads((HERE / "peers" / "results" / "ml-100k" / "SASRec.json").read_text())
    # RecBole's checkpoint re-scored with the history masked (peers/recbole_masked_eval.py)
    rbm = json.loads((HERE / "peers" / "results" / "ml-100k" / "SASRec-masked.json").read_text())
    assert abs(rbm["unmasked"]["ndcg@10"] - rb["test"]["ndcg@10"]) < 1e-4, "re-scoring must reproduce RecBole"
    m = rbm["masked_seen_items"]
    log = rb["epoch_log"]
    best = int(rb["best_epoch"])
    rb_to_best = sum(e["train_wall_s"] + e["valid_wall_s"] for e in log[: best + 1])
    rows = [
        "| system | seed | test HR@10 | test NDCG@10 | test HR@10 / NDCG@10, seen items not masked "
        "| best epoch / run | wall s to best checkpoint | s per epoch (train) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    groups: dict[float, list[dict[str, object]]] = {}
    for r in sorted(ours, key=lambda r: (-float(r["config"].get("ema_decay", 0.0)), r["config"]["seed"])):
        ema = float(r["config"].get("ema_decay", 0.0))
        groups.setdefault(ema, []).append(r)
        label = f"dynrec sasrec, ema_decay {ema:g}" + (" (previous default)" if ema == 0 else "")
        rows.append(
            f"| {label} | {r['config']['seed']} | {r['test']['HR@10']:.4f} | {r['test']['NDCG@10']:.4f} "
            f"| {r['test_unmasked']['HR@10']:.4f} / {r['test_unmasked']['NDCG@10']:.4f} "
            f"| {r['best_epoch']} / {r['epochs_run']} | {float(r['seconds_to_best']):,.0f} "
            f"| {r['s_per_epoch_median']:.1f} |"
        )
    rows.append(
        f"| **RecBole 1.2.1 SASRec** (its checkpoint re-scored with masking) | 2020 | {m['hit@10']:.4f} "
        f"| {m['ndcg@10']:.4f} | {rb['test']['hit@10']:.4f} / {rb['test']['ndcg@10']:.4f} (RecBole's own "
        f"report) | {best + 1} / {rb['epochs_run']} ({rb['stopped_by']}) | {rb_to_best:,.0f} "
        f"| {rb['median_train_epoch_s']:.1f} |"
    )
    lines = ["", ""]
    for ema, rs in groups.items():
        nd = [float(r["test"]["NDCG@10"]) for r in rs]  # type: ignore[index]
        hr = [float(r["test"]["HR@10"]) for r in rs]  # type: ignore[index]
        t = statistics.median(float(r["seconds_to_best"]) for r in rs)  # type: ignore[arg-type]
        tmax = max(float(r["seconds_to_best"]) for r in rs)  # type: ignore[arg-type]
        lines.append(
            f"- ema_decay {ema:g}, {len(rs)} seeds: test NDCG@10 mean {statistics.mean(nd):.4f} "
            f"(range {min(nd):.4f}-{max(nd):.4f}), HR@10 mean {statistics.mean(hr):.4f}; "
            f"{sum(x > m['ndcg@10'] for x in nd)} of {len(rs)} seeds above RecBole's {m['ndcg@10']:.4f}; "
            f"median time to best {t:,.0f} s = 1/{rb_to_best / t:.0f} of RecBole's {rb_to_best:,.0f} s "
            f"(slowest seed 1/{rb_to_best / tmax:.0f})."
        )
    text = "\n".join(rows + lines) + "\n"
    print(text)
    (HERE / "results_side_by_side.md").write_text(text)


if __name__ == "__main__":
    main()
