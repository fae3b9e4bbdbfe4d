"""The dynrec-vs-RecBole SASRec comparison on ml-100k from the two records that
`benchmarks/sasrec_vs_recbole.sh` writes; prints a markdown table and writes
`benchmarks/results_side_by_side.md`.

Time to best = wall seconds from the start of training to the end of the epoch (training +
validation) whose validation NDCG@10 was best, for both systems (test evaluation excluded).
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    ours = json.loads((HERE / "results" / "sasrec_ml-100k_side_by_side.json").read_text())
    rb = json.loads((HERE / "peers" / "results" / "ml-100k" / "SASRec.json").read_text())
    # RecBole's checkpoint re-scored with the history masked (peers/recbole_masked_eval.py)
    rbm = json.loads((HERE / "peers" / "results" / "ml-100k" / "SASRec-masked.json").read_text())
    assert abs(rbm["unmasked"]["ndcg@10"] - rb["test"]["ndcg@10"]) < 1e-4, "re-scoring must reproduce RecBole"
    m = rbm["masked_seen_items"]
    log = rb["epoch_log"]
    best = int(rb["best_epoch"])
    rb_to_best = sum(e["train_wall_s"] + e["valid_wall_s"] for e in log[: best + 1])
    ours_to_best = float(ours["seconds_to_best"])
    rows = [
        "| system | test HR@10 | test NDCG@10 | test HR@10 / NDCG@10, seen items not masked | best epoch / run "
        "| wall s to best checkpoint | s per epoch (train) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
        f"| dynrec sasrec (default) | {ours['test']['HR@10']:.4f} | {ours['test']['NDCG@10']:.4f} "
        f"| {ours['test_unmasked']['HR@10']:.4f} / {ours['test_unmasked']['NDCG@10']:.4f} "
        f"| {ours['best_epoch']} / {ours['epochs_run']} "
        f"| {ours_to_best:,.0f} | {ours['s_per_epoch_median']:.1f} |",
        f"| RecBole 1.2.1 SASRec (its checkpoint re-scored with masking) | {m['hit@10']:.4f} | {m['ndcg@10']:.4f} "
        f"| {rb['test']['hit@10']:.4f} / {rb['test']['ndcg@10']:.4f} (RecBole's own report) "
        f"| {best + 1} / {rb['epochs_run']} ({rb['stopped_by']}) | {rb_to_best:,.0f} "
        f"| {rb['median_train_epoch_s']:.1f} |",
    ]
    ratio = ours_to_best / rb_to_best
    text = "\n".join(rows) + (
        f"\n\nTime to the best validation checkpoint: dynrec / RecBole = {ratio:.3f} "
        f"(1/{1 / ratio:.1f}); test NDCG@10 with seen items masked {ours['test']['NDCG@10']:.4f} vs "
        f"{m['ndcg@10']:.4f}, unmasked {ours['test_unmasked']['NDCG@10']:.4f} vs {rb['test']['ndcg@10']:.4f}.\n"
    )
    print(text)
    (HERE / "results_side_by_side.md").write_text(text)


if __name__ == "__main__":
    main()
