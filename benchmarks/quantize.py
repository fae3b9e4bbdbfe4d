"""Compressed inference: CPU scoring of a neural model at float32 vs int8 (and bf16 where the CPU
has bf16 units), with the quality change.

Trains `--model` on `--dataset` (``--set key=value`` overrides, e.g. ``epochs=2`` for a quick
model when only the speed ratio is wanted) or loads a model trained on it (`--model-dir`), makes
the int8 copy (`dynrec.models.neural.quantize`), then times ``model.score`` of the test queries
(`--users` of them, 0 = all; the precisions take turns, median of `--repeats`, `--threads` threads) and
evaluates test HR/NDCG@10 on every test user (full ranking, seen items excluded) for each precision. One record in
results/quantize.json per dataset/model/overrides.

    python -m benchmarks.quantize --dataset ml-1m --set epochs=2 --threads 1
    python -m benchmarks.quantize --dataset ml-100k --threads 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import torch

from benchmarks._common import put, record
from dynrec.jobs import evaluate_model, prepare, train
from dynrec.models.base import Recommender, RunOptions
from dynrec.models.neural.quantize import cpu_bf16_supported, quantize


def time_scoring(model: Recommender, queries: Any, repeats: int) -> float:
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.score(queries)
        ms.append(time.perf_counter() - t0)
    return statistics.median(ms)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--model", default="sasrec")
    ap.add_argument("--set", action="append", default=[], help="key=value config override")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--users", type=int, default=0, help="time the first N test users only (0 = all)")
    ap.add_argument(
        "--model-dir", default=None, help="a saved model trained on --dataset (instead of training)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = dict(s.split("=", 1) for s in args.set)
    prepared = prepare(args.dataset)
    t0 = time.perf_counter()
    if args.model_dir:
        model = Recommender.load(args.model_dir, options=RunOptions(device="cpu"))
        overrides = {"trained": str(model.meta.get("epochs_run", "?")) + " epochs"}
    else:
        model = train(args.model, prepared, overrides=overrides, options=RunOptions(device="cpu"))
    fit_s = time.perf_counter() - t0
    queries = prepared.split.test.queries
    timed = queries.slice(0, min(args.users, len(queries))) if args.users else queries
    precisions = ["float32", "int8"] + (["bf16"] if cpu_bf16_supported() else [])
    out: dict[str, Any] = {"fit_s": fit_s, "bf16_units": cpu_bf16_supported(), "n_timed": len(timed)}
    copies = {p: quantize(model, p) for p in precisions}
    times: dict[str, list[float]] = {p: [] for p in precisions}
    for _ in range(args.repeats):  # the precisions take turns, so load changes hit them alike
        for p, m in copies.items():
            times[p].append(time_scoring(m, timed, 1))
    for p, m in copies.items():
        ev = evaluate_model(m, prepared).metrics
        out[p] = {"score_s": statistics.median(times[p]), "HR@10": ev["HR@10"], "NDCG@10": ev["NDCG@10"]}
        print(p, json.dumps(out[p]), flush=True)
    f32 = out["float32"]
    for p in precisions[1:]:
        out[p]["speedup"] = f32["score_s"] / out[p]["score_s"]
        out[p]["ndcg_change"] = out[p]["NDCG@10"] / f32["NDCG@10"] - 1.0
    print(json.dumps(out, indent=1))
    sets = "".join(f" --set {k}={v}" for k, v in sorted(overrides.items()))
    command = (
        f"python -m benchmarks.quantize --dataset {args.dataset} --model {args.model} --threads {args.threads}"
        f" --users {args.users}" + (" --model-dir DIR" if args.model_dir else sets)
    )
    key = f"{args.dataset}/{args.model}" + "".join(f"/{k}={v}" for k, v in sorted(overrides.items()))
    params = {"dataset": args.dataset, "model": args.model, "overrides": overrides, "threads": args.threads}
    rec = record("quantize", key, params, out, command)
    put(rec)


if __name__ == "__main__":
    main()
