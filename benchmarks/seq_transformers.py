"""Train SASRec / BERT4Rec on a dataset and report test quality, time to the best validation
checkpoint, seconds per epoch and achieved GFLOP/s.

Protocol: leave-one-out (last event = test, second last = validation), full ranking over the whole
catalogue with seen items excluded; early stopping and checkpoint selection on validation NDCG@10
only. Writes one JSON per run (``--out``) and prints it.

    DYNREC_DATA_DIR=/work/shared/data python benchmarks/seq_transformers.py \
        --model sasrec --dataset ml-1m --out benchmarks/results/sasrec_ml-1m.json [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.registry import load
from dynrec.evaluation.offline import evaluate
from dynrec.models.base import create_model
from dynrec.preprocessing.split import leave_one_out


def sgemm_peak(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """This machine's measured float32 / bfloat16 matrix-multiply rate (GFLOP/s), same threads."""
    out = {}
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n, n, dtype=dt, device=dev)
        b = torch.randn(n, n, dtype=dt, device=dev)
        for _ in range(2):
            a @ b
        if dev == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(repeats):
            a @ b
        if dev == "cuda":
            torch.cuda.synchronize()
        out[name] = 2 * n**3 * repeats / (time.perf_counter() - t) / 1e9
    return out


def train_flops(model: Any, data: InteractionData) -> tuple[float, int]:
    """Model FLOPs of one training epoch on real (non-padding) positions, and its target tokens.

    Matrix products only: per target token, Q/K/V/O projections 8d², feed-forward 4d·f, attention
    4·d·(attended keys), output layer 2·d·(catalogue or sampled candidates); backward = 2x forward.
    """
    cfg = model.config
    d, f = cfg.embedding_dim, (cfg.ffn_dim or cfg.embedding_dim)
    lens = np.minimum(data.lengths()[data.lengths() >= 2], cfg.max_len + 1) - 1
    if getattr(cfg, "window_stride", 0):
        lens = np.maximum(data.lengths()[data.lengths() >= 2] - 1, 0)  # every event is a target once
    tokens = int(lens.sum())
    mean_keys = float((lens * (lens + 1) / 2).sum()) / max(1, tokens)  # causal: key count per query
    if model.name == "bert4rec":
        mean_keys = float((lens**2).sum()) / max(1, tokens)
    per_layer = 8 * d * d + 4 * d * f + 4 * d * mean_keys
    head = 2 * d * data.n_items if cfg.loss == "ce" else 2 * d * (cfg.n_negatives + 1)
    if model.name == "bert4rec":  # loss only at masked positions
        head *= cfg.mask_prob
    tokens *= max(1, int(getattr(cfg, "mask_repeats", 1)))  # BERT4Rec: passes per epoch
    return 3.0 * tokens * (cfg.num_layers * per_layer + head), tokens


def time_to_target(curve: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """First epoch at which the checkpoint a user would hold — the best on validation so far —
    has test NDCG@10 >= `target` (test numbers are never used to choose it)."""
    best_valid, held = -1.0, None
    for row in curve:
        if row["valid_ndcg"] is not None and row["valid_ndcg"] > best_valid:
            best_valid, held = row["valid_ndcg"], row
        if held is not None and held["test_ndcg"] >= target:
            return {
                "target_ndcg": target,
                "epoch": row["epoch"],
                "elapsed_s": row["elapsed_s"],
                "checkpoint_epoch": held["epoch"],
                "checkpoint_test_ndcg": held["test_ndcg"],
                "checkpoint_test_hr": held["test_hr"],
            }
    return None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="sasrec")
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--out", default="")
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-peak", action="store_true")
    ap.add_argument(
        "--budget-s",
        type=float,
        default=0.0,
        help="stop training after this many seconds (remaining epochs run no batches; for sweeps)",
    )
    ap.add_argument(
        "--track-test",
        action="store_true",
        help="also evaluate the test set after every epoch (an epoch callback, time excluded) and "
        "report when the best-validation checkpoint so far first reaches --target-ndcg",
    )
    ap.add_argument("--target-ndcg", type=float, default=0.0)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    overrides = dict(kv.split("=", 1) for kv in args.set)
    if args.threads:  # the model sets its threads when it fits: pass it as a config value
        overrides.setdefault("num_threads", str(args.threads))

    t0 = time.perf_counter()
    full = InteractionData.from_events(load(args.dataset))
    split = leave_one_out(full)
    t_data = time.perf_counter() - t0
    model = create_model(args.model, overrides={"progress": "false", **overrides})
    t1 = time.perf_counter()
    budget_hit = False
    if args.budget_s > 0:
        deadline = t1 + args.budget_s
        orig = model.train_batches  # type: ignore[attr-defined]

        def limited(data: Any, gen: Any) -> Any:
            nonlocal budget_hit
            if time.perf_counter() > deadline:
                budget_hit = True
                return iter(())
            return orig(data, gen)

        model.train_batches = limited  # type: ignore[attr-defined]
    curve: list[dict[str, Any]] = []
    if args.track_test:

        def track(rec: Any, m: Any) -> None:
            t = evaluate(m, split.test, ks=(10,), extra=False).metrics
            curve.append(
                {
                    "epoch": rec.epoch,
                    "elapsed_s": rec.elapsed,
                    "valid_ndcg": rec.valid_ndcg,
                    "test_ndcg": t["NDCG@10"],
                    "test_hr": t["HR@10"],
                }
            )
            logging.info("epoch %d test NDCG@10 %.4f HR@10 %.4f", rec.epoch, t["NDCG@10"], t["HR@10"])

        model.epoch_callbacks.append(track)  # type: ignore[attr-defined]
    model.fit(split.train, split.valid)
    fit_s = time.perf_counter() - t1
    res = evaluate(model, split.test, ks=(10,), extra=False)
    # RecBole's sequential models do not mask seen items: report ours both ways
    res_unmasked = evaluate(model, split.test, ks=(10,), extra=False, exclude_seen=False)
    m = model.meta
    logs = m.get("train_log", [])
    ep_s = [r["seconds"] for r in logs]
    flops, tokens = train_flops(model, split.train)
    mean_ep = float(np.mean(ep_s)) if ep_s else float("nan")
    out: dict[str, Any] = {
        "model": args.model,
        "tag": args.tag,
        "dataset": args.dataset,
        "protocol": "leave-one-out, full ranking, seen items excluded, early stop on valid NDCG@10",
        "config": model.config.to_dict(),
        "overrides": overrides,
        "test": {k: res.metrics[k] for k in ("HR@10", "NDCG@10", "MRR@10")},
        "test_unmasked": {k: res_unmasked.metrics[k] for k in ("HR@10", "NDCG@10", "MRR@10")},
        "valid_ndcg@10": m.get("valid_ndcg@10"),
        "epochs_run": m.get("epochs_run"),
        "best_epoch": m.get("best_epoch"),
        "seconds_to_best": m.get("seconds_to_best"),
        "fit_seconds": fit_s,
        "budget_hit": budget_hit,
        "data_seconds": t_data,
        "s_per_epoch_train": mean_ep,
        "s_per_epoch_median": float(np.median(ep_s)) if ep_s else float("nan"),
        "train_tokens_per_epoch": tokens,
        "train_gflop_per_epoch": flops / 1e9,
        "achieved_gflops": flops / 1e9 / mean_ep if ep_s else float("nan"),
        "device": str(model.device),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "loadavg_end": os.getloadavg(),
        "train_log": [{k: r[k] for k in ("epoch", "loss", "seconds", "valid_ndcg")} for r in logs],
    }
    if curve:
        out["test_curve"] = curve
        out["time_to_target"] = time_to_target(curve, args.target_ndcg) if args.target_ndcg else None
    if not args.no_peak:
        out["matmul_peak_gflops"] = sgemm_peak()
    text = json.dumps(out, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    summary = {
        k: out[k]
        for k in (
            "tag",
            "test",
            "best_epoch",
            "epochs_run",
            "seconds_to_best",
            "s_per_epoch_train",
            "achieved_gflops",
            "time_to_target",
        )
        if k in out
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
