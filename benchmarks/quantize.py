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

``--widths 64,128,256,512`` instead times the layers int8 replaces, alone: a Transformer block's
position-wise feed-forward (``Linear(d, d) -> ReLU -> Linear(d, d)``, SASRec's shape) over
``--rows`` positions (a 256-user scoring batch of 200-item histories by default), float32 against
the same dynamic int8 quantisation, the two taking turns. It shows from which width int8 pays on
the CPU it runs on (each record names it). One record per width, key ``linear/d=D``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import torch

from benchmarks._common import put, record
from dynrec.jobs import evaluate_model, prepare, train
from dynrec.models.base import Recommender
from dynrec.models.config import RunOptions
from dynrec.models.neural.quantize import cpu_bf16_supported, quantize


def time_scoring(model: Recommender, queries: Any, repeats: int) -> float:
    ms = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.score(queries)
        ms.append(time.perf_counter() - t0)
    return statistics.median(ms)


def linear_widths(widths: list[int], rows: int, threads: int, repeats: int) -> None:
    """float32 vs dynamic int8 on a feed-forward block of each width (see the module docstring)."""
    torch.manual_seed(0)
    for d in widths:
        ffn = torch.nn.Sequential(torch.nn.Linear(d, d), torch.nn.ReLU(), torch.nn.Linear(d, d)).eval()
        spec = dict.fromkeys(["0", "2"], torch.ao.quantization.default_dynamic_qconfig)
        q8 = torch.ao.quantization.quantize_dynamic(ffn, spec, dtype=torch.qint8)
        x = torch.randn(rows, d)
        load0 = os.getloadavg()[0]
        times: dict[str, list[float]] = {"float32": [], "int8": []}
        with torch.no_grad():
            for _ in range(repeats):
                for name, m in (("float32", ffn), ("int8", q8)):
                    t0 = time.perf_counter()
                    m(x)
                    times[name].append(time.perf_counter() - t0)
            err = float((q8(x) - ffn(x)).abs().max() / ffn(x).abs().max())
        out = {p: statistics.median(t) for p, t in times.items()}
        metrics = {
            "float32_s": out["float32"],
            "int8_s": out["int8"],
            "speedup": out["float32"] / out["int8"],
        }
        metrics["max_rel_error"] = err
        metrics["loadavg"] = [round(load0, 2), round(os.getloadavg()[0], 2)]
        print(f"d={d}", json.dumps(metrics), flush=True)
        params = {"d": d, "rows": rows, "threads": threads}
        command = f"python -m benchmarks.quantize --widths {d} --rows {rows} --threads {threads}"
        put(record("quantize", f"linear/d={d}", params, metrics, command))


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
    ap.add_argument("--widths", default="", help="comma-separated widths: time the int8 layers alone")
    ap.add_argument("--rows", type=int, default=256 * 200, help="positions per call with --widths")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.widths:
        linear_widths([int(w) for w in args.widths.split(",")], args.rows, args.threads, max(5, args.repeats))
        return
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
