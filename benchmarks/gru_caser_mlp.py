"""Quality + training time of gru4rec / caser / mlp (temporal leave-one-out, full ranking, seen items
excluded; model selection on the validation targets only).

    DYNREC_DATA_DIR=/work/shared/data nice -n 5 .venv/bin/python benchmarks/gru_caser_mlp.py \
        gru4rec ml-1m [--set key=value ...] [--tag NAME]

Writes benchmarks/results/<model>_<dataset>[_<tag>].json and prints one summary line.
``--table`` prints the markdown table of every saved result of these three models instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import time
from pathlib import Path

import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.registry import load
from dynrec.evaluation.offline import evaluate
from dynrec.models.base import create_model
from dynrec.preprocessing.split import leave_one_out

OUT = Path(__file__).resolve().parent / "results"


MODELS = ("gru4rec", "caser", "mlp")


def table() -> str:
    rows = [
        "| model | dataset | run | HR@10 | NDCG@10 | MRR@10 | epochs (best) | train s | s/epoch | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for f in sorted(OUT.glob("*.json")):
        r = json.loads(f.read_text())
        if r.get("model") not in MODELS:
            continue
        run = f.stem.removeprefix(f"{r['model']}_{r['dataset']}").lstrip("_") or "default"
        rows.append(
            f"| {r['model']} | {r['dataset']} | {run} | {r['HR@10']:.4f} | {r['NDCG@10']:.4f} | "
            f"{r['MRR@10']:.4f} | {r['epochs_run']} ({r['best_epoch']}) | {r['train_seconds']:.0f} | "
            f"{r['s_per_epoch']:.1f} | {r['tokens_per_s']:.0f} |"
        )
    return "\n".join(rows)


def main() -> None:
    if "--table" in __import__("sys").argv:
        print(table())
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("dataset")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--save-model", default="", metavar="DIR", help="also save the trained model there")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    overrides = dict(s.split("=", 1) for s in args.set)
    overrides.setdefault("progress", "false")

    t0 = time.perf_counter()
    data = InteractionData.from_events(load(args.dataset))
    split = leave_one_out(data)
    t_data = time.perf_counter() - t0

    model = create_model(args.model, overrides=overrides)
    t1 = time.perf_counter()
    model.fit(split.train, split.valid)
    fit_s = time.perf_counter() - t1
    res = evaluate(model, split.test, ks=(10,), extra=False)
    if args.save_model:
        model.save(args.save_model)
    log_ = model.meta.get("train_log", [])
    epoch_s = [r["seconds"] for r in log_]
    tokens = sum(r["tokens"] for r in log_)
    out = {
        "model": args.model,
        "dataset": args.dataset,
        "config": model.config.to_dict(),
        "HR@10": res.metrics["HR@10"],
        "NDCG@10": res.metrics["NDCG@10"],
        "MRR@10": res.metrics["MRR@10"],
        "valid_NDCG@10": model.meta.get("valid_ndcg@10"),
        "epochs_run": model.meta.get("epochs_run"),
        "best_epoch": model.meta.get("best_epoch"),
        "train_seconds": fit_s,
        "seconds_to_best": model.meta.get("seconds_to_best"),
        "s_per_epoch": sum(epoch_s) / max(1, len(epoch_s)),
        "tokens_per_s": tokens / max(1e-9, sum(epoch_s)),
        "data_seconds": t_data,
        "eval_seconds": res.seconds,
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''} (shared machine, noisy)".strip(),
        "train_log": log_,
    }
    print(
        f"{args.model} {args.dataset} {args.tag}: HR@10 {out['HR@10']:.4f} NDCG@10 {out['NDCG@10']:.4f} "
        f"MRR@10 {out['MRR@10']:.4f} epochs {out['epochs_run']} (best {out['best_epoch']}) "
        f"train {fit_s:.0f}s ({out['s_per_epoch']:.1f} s/epoch)"
    )
    if not args.no_save:
        OUT.mkdir(parents=True, exist_ok=True)
        name = f"{args.model}_{args.dataset}" + (f"_{args.tag}" if args.tag else "")
        (OUT / f"{name}.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
