"""Quality: every model x dataset, default config, test HR/NDCG/MRR/Coverage@10 with full ranking.

Temporal leave-one-out, seen items excluded, model selection on the validation targets only (all
through `dynrec.jobs`). One record per (dataset, model, seed) in results/quality.json; a rerun
replaces its record. ``--unmasked`` also stores the metrics without masking seen items, the
protocol RecBole uses for its sequential models.

    python -m benchmarks.quality --datasets ml-100k,ml-1m --models pop,itemknn,sasrec [--seed 1]
    python -m benchmarks.quality --datasets ml-100k --models sasrec --set sasrec.num_threads=2
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from benchmarks._common import parse_sets, put, record, set_args
from dynrec.jobs import evaluate_model, prepare, train
from dynrec.models.registry import available_models

METRICS = ("HR@10", "NDCG@10", "MRR@10", "Coverage@10")


def device_name(model: object) -> str:
    dev = getattr(model, "device", None)
    if dev is not None and torch.device(dev).type == "cuda":
        return str(torch.cuda.get_device_name(torch.device(dev)))
    return "cpu"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="ml-100k,ml-1m,amazon-beauty")
    ap.add_argument("--models", default=",".join(available_models()))
    ap.add_argument("--seed", type=int, default=None, help="config seed (default: the model's)")
    ap.add_argument("--set", action="append", default=[], help="MODEL.key=value config override")
    ap.add_argument("--unmasked", action="store_true", help="also store metrics with seen items kept")
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    sets = parse_sets(args.set)
    for ds in args.datasets.split(","):
        prepared = prepare(ds, data_dir=args.data_dir)
        for name in args.models.split(","):
            overrides = dict(sets.get(name, {}))
            if args.seed is not None:
                overrides["seed"] = str(args.seed)
            t0 = time.perf_counter()
            model = train(name, prepared, overrides=overrides)
            fit_s = time.perf_counter() - t0
            metrics: dict[str, object] = {
                k: v for k, v in evaluate_model(model, prepared).metrics.items() if k in METRICS
            }
            if args.unmasked:
                raw = evaluate_model(model, prepared, exclude_seen=False).metrics
                metrics.update({f"{k}_unmasked": raw[k] for k in METRICS[:3]})
            meta = model.meta
            metrics.update(
                {
                    "fit_s": fit_s,
                    "epochs": meta.get("epochs_run"),
                    "best_epoch": meta.get("best_epoch"),
                    "s_to_best": meta.get("seconds_to_best"),
                    "valid_NDCG@10": meta.get("valid_ndcg@10"),
                }
            )
            seed = getattr(model.config, "seed", None)
            operational = {k: v for k, v in overrides.items() if k != "seed"}
            command = f"python -m benchmarks.quality --datasets {ds} --models {name}"
            command += (f" --seed {args.seed}" if args.seed is not None else "") + set_args(operational, name)
            command += " --unmasked" if args.unmasked else ""
            rec = record(
                "quality",
                f"{ds}/{name}/seed={seed}",
                {"dataset": ds, "model": name, "seed": seed, "overrides": operational},
                {k: v for k, v in metrics.items() if v is not None},
                command,
                device=device_name(model),
            )
            put(rec)
            print(json.dumps({"key": rec["key"], **rec["metrics"]}), flush=True)
    print("python -m benchmarks.pages  # to render the page")


if __name__ == "__main__":
    main()
