"""Item text: cold items, warm and tail quality, faithful explanations, encoding throughput.

Four questions, one subcommand each, every record in results/text.json:

* ``cold`` — 10% of the items (uniformly at random, seeded) are removed from training entirely:
  their events leave the training part, the validation targets and every history. On the test
  events whose target is a cold item, the target is ranked among the cold items only (random
  HR@10 = 10 / number of cold items) and among all items; warm test events are reported beside.
* ``quality`` — temporal leave-one-out, full ranking, default configs: text-aware ``sasrec``
  (``item_text=on``) vs ID-only ``sasrec`` per seed, overall and on tail targets (items in the
  bottom 80% by training frequency), plus fit seconds (the hybrid's training-time overhead).
* ``faithful`` — for sampled (user, recommended item) pairs: the score drop when the top-1..k
  explained history events are removed (a DEL@k curve), the share of pairs whose score drops
  when the top-explained event is removed, and the drop for random events of the same count.
* ``encode`` — text encoder throughput on a dataset's item text, cold (empty cache) and cached.

    python -m benchmarks.text cold --dataset ml-100k --models sasrec-text,sasrec,content
    python -m benchmarks.text quality --dataset amazon-beauty --seeds 42,43,44
    python -m benchmarks.text faithful --dataset ml-100k --models sasrec-text,content,itemknn
    python -m benchmarks.text encode --dataset ml-1m
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import parse_sets, put, record
from dynrec.data.query import QueryBatch
from dynrec.evaluation.offline import evaluate, target_ranks
from dynrec.jobs import Prepared, prepare, train
from dynrec.models.base import Recommender
from dynrec.models.capabilities import Explainer
from dynrec.models.config import RunOptions
from dynrec.preprocessing.split import EvalSet, Split

VARIANTS: dict[str, tuple[str, dict[str, str]]] = {
    "sasrec-text": ("sasrec", {"item_text": "on"}),
    "sasrec": ("sasrec", {}),
    "content": ("content", {}),
}
"""Benchmark model names -> (registered model, config overrides)."""


def variant(name: str) -> tuple[str, dict[str, str]]:
    return VARIANTS.get(name, (name, {}))


def fit(name: str, prepared: Prepared, extra: dict[str, str], seed: int | None, threads: int) -> Recommender:
    model, over = variant(name)
    over = {**over, **extra}
    if seed is not None:
        over["seed"] = str(seed)
    if model not in ("content",) and "num_threads" not in over:
        over["num_threads"] = str(threads)
    return train(model, prepared, overrides=over, options=RunOptions(num_threads=threads))


# ---- cold items ---------------------------------------------------------------------------------


def strip_items(q: QueryBatch, drop: np.ndarray) -> QueryBatch:
    """`q` with every event of the items flagged in `drop` ([n_items] bool) removed."""
    keep = ~drop[q.items]
    counts = (
        np.add.reduceat(keep.astype(np.int64), q.indptr[:-1]) if len(q.items) else np.zeros(len(q), np.int64)
    )
    counts = np.where(np.diff(q.indptr) > 0, counts, 0)
    indptr = np.zeros(len(q) + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    ts = q.timestamps[keep] if q.timestamps is not None else None
    w = q.weights[keep] if q.weights is not None else None
    return QueryBatch(q.users, indptr, q.items[keep], ts, w)


def strip_eval(es: EvalSet, drop: np.ndarray, *, targets: bool) -> EvalSet:
    """Histories without the dropped items; with `targets`, also without queries whose target is one."""
    q = strip_items(es.queries, drop)
    out = EvalSet(q, es.targets, es.target_timestamps)
    if targets:
        out = out.subset(np.flatnonzero(~drop[es.targets]).astype(np.int64))
    return out


def cold_split(prepared: Prepared, share: float, seed: int) -> tuple[Prepared, np.ndarray]:
    """The split with `share` of the items removed from training (and from every history)."""
    n = prepared.data.n_items
    rng = np.random.default_rng(seed)
    cold = np.sort(rng.choice(np.arange(1, n), size=max(1, round(share * (n - 1))), replace=False))
    drop = np.zeros(n, bool)
    drop[cold] = True
    sp = prepared.split
    train_part = sp.train.select(~drop[sp.train.items])
    split = Split(
        sp.kind,
        train_part,
        strip_eval(sp.valid, drop, targets=True),
        strip_eval(sp.test, drop, targets=False),
        sp.full,
        sp.cut,
    )
    return dataclasses.replace(prepared, split=split), cold


def rank_metrics(ranks: np.ndarray, k: int = 10) -> dict[str, float]:
    """HR@k / NDCG@k from 0-based ranks."""
    hit = ranks < k
    ndcg = np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0)
    return {
        f"HR@{k}": float(hit.mean()) if len(ranks) else 0.0,
        f"NDCG@{k}": float(ndcg.mean()) if len(ranks) else 0.0,
    }


def cold_ranks(model: Recommender, es: EvalSet, cold: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """0-based ranks of each target among the cold items only, and among all items (seen masked)."""
    among_cold, among_all = [], []
    cold_t = torch.from_numpy(cold)
    pos = {int(c): j for j, c in enumerate(cold)}
    for a in range(0, len(es), 256):
        idx = np.arange(a, min(len(es), a + 256), dtype=np.int64)
        sub = es.subset(idx)
        s = model.score(sub.queries).float()
        if len(sub.queries.items):
            r, c = sub.queries.seen_mask_indices()
            s[r, c] = -torch.inf
        s[:, 0] = -torch.inf
        tgt = torch.from_numpy(sub.targets)
        among_all.append(target_ranks(s, tgt).numpy())
        sc = s[:, cold_t]
        tc = torch.tensor([pos[int(t)] for t in sub.targets])
        among_cold.append(target_ranks(sc, tc).numpy())
    return np.concatenate(among_cold), np.concatenate(among_all)


def run_cold(args: argparse.Namespace) -> None:
    prepared = prepare(args.dataset, split="loo")
    cp, cold = cold_split(prepared, args.cold_share, args.cold_seed)
    test = cp.split.test
    is_cold = np.isin(test.targets, cold)
    cold_es = test.subset(np.flatnonzero(is_cold).astype(np.int64))
    warm_es = test.subset(np.flatnonzero(~is_cold).astype(np.int64))
    sets = parse_sets(args.set)
    for name in args.models.split(","):
        t0 = time.perf_counter()
        model = fit(name, cp, sets.get(name, {}), args.seed, args.threads)
        fit_s = time.perf_counter() - t0
        rc, ra = cold_ranks(model, cold_es, cold)
        warm = evaluate(model, warm_es, ks=(10,), extra=False).metrics
        metrics: dict[str, Any] = {
            "cold_targets": int(len(cold_es)),
            "n_cold_items": int(len(cold)),
            "random_HR@10_among_cold": min(1.0, 10 / len(cold)),
            **{f"{k} among cold": v for k, v in rank_metrics(rc).items()},
            **{f"{k} among all": v for k, v in rank_metrics(ra).items()},
            "warm HR@10": warm["HR@10"],
            "warm NDCG@10": warm["NDCG@10"],
            "warm_targets": int(len(warm_es)),
            "fit_seconds": fit_s,
            "epochs": model.meta.get("epochs_run"),
        }
        metrics["x_random_among_cold"] = metrics["HR@10 among cold"] / metrics["random_HR@10_among_cold"]
        seed_part = f"/seed{args.seed}" if args.seed is not None else ""
        over = " ".join(f"--set {name}.{k}={v}" for k, v in sorted(sets.get(name, {}).items()))
        cmd = f"python -m benchmarks.text cold --dataset {args.dataset} --models {name} {over}".strip()
        put(
            record(
                "text",
                f"cold/{args.dataset}/{name}{seed_part}",
                {
                    "dataset": args.dataset,
                    "model": name,
                    "cold_share": args.cold_share,
                    "overrides": sets.get(name, {}),
                },
                metrics,
                cmd,
                note=args.note,
            )
        )
        print(json.dumps({"model": name, **metrics}))


# ---- warm and tail quality ------------------------------------------------------------------------


def tail_items(prepared: Prepared, head_share: float = 0.2) -> np.ndarray:
    """[n_items] bool: items outside the top `head_share` by training frequency."""
    counts = prepared.split.train.item_counts()
    order = np.argsort(-counts[1:], kind="stable") + 1
    n_head = int(round(head_share * (len(counts) - 1)))
    tail = np.ones(len(counts), bool)
    tail[order[:n_head]] = False
    tail[0] = False
    return tail


def run_quality(args: argparse.Namespace) -> None:
    prepared = prepare(args.dataset, split="loo")
    tail = tail_items(prepared)
    test = prepared.split.test
    tail_es = test.subset(np.flatnonzero(tail[test.targets]).astype(np.int64))
    sets = parse_sets(args.set)
    for seed in [int(s) for s in args.seeds.split(",")]:
        for name in args.models.split(","):
            t0 = time.perf_counter()
            model = fit(name, prepared, sets.get(name, {}), seed, args.threads)
            fit_s = time.perf_counter() - t0
            allm = evaluate(model, test, ks=(10,), extra=False).metrics
            tm = evaluate(model, tail_es, ks=(10,), extra=False).metrics
            epochs = model.meta.get("epochs_run") or 0
            metrics = {
                "HR@10": allm["HR@10"],
                "NDCG@10": allm["NDCG@10"],
                "tail HR@10": tm["HR@10"],
                "tail NDCG@10": tm["NDCG@10"],
                "tail_targets": int(len(tail_es)),
                "fit_seconds": fit_s,
                "epochs": epochs,
                "seconds_per_epoch": fit_s / epochs if epochs else None,
            }
            over = " ".join(f"--set {name}.{k}={v}" for k, v in sorted(sets.get(name, {}).items()))
            cmd = f"python -m benchmarks.text quality --dataset {args.dataset} --models {name} --seeds {seed} {over}"
            put(
                record(
                    "text",
                    f"quality/{args.dataset}/{name}/seed{seed}",
                    {"dataset": args.dataset, "model": name, "seed": seed, "overrides": sets.get(name, {})},
                    metrics,
                    cmd.strip(),
                    note=args.note,
                )
            )
            print(json.dumps({"model": name, "seed": seed, **metrics}))


# ---- faithful explanations -------------------------------------------------------------------------


def remove_events(q: QueryBatch, remove: list[np.ndarray]) -> QueryBatch:
    """`q` without, for each query b, the events at local positions `remove[b]`."""
    keep = np.ones(len(q.items), bool)
    for b, pos in enumerate(remove):
        keep[q.indptr[b] + pos] = False
    counts = np.diff(q.indptr) - np.array([len(p) for p in remove])
    indptr = np.zeros(len(q) + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    ts = q.timestamps[keep] if q.timestamps is not None else None
    w = q.weights[keep] if q.weights is not None else None
    return QueryBatch(q.users, indptr, q.items[keep], ts, w)


def run_faithful(args: argparse.Namespace) -> None:
    prepared = prepare(args.dataset, split="loo")
    rng = np.random.default_rng(args.seed or 0)
    test = prepared.split.test
    lens = np.diff(test.queries.indptr)
    eligible = np.flatnonzero(lens > args.max_k).astype(np.int64)
    pick = np.sort(rng.choice(eligible, size=min(args.pairs, len(eligible)), replace=False))
    es = test.subset(pick)
    q = es.queries
    sets = parse_sets(args.set)
    for name in args.models.split(","):
        model = fit(name, prepared, sets.get(name, {}), args.seed, args.threads)
        if not isinstance(model, Explainer):
            print(f"{name}: not an Explainer, skipped")
            continue
        t0 = time.perf_counter()
        items, _ = model.recommend(q, k=1)  # the top recommendation of each user
        contrib = model.explain(q, items).float()[:, 0].numpy()  # [nnz]
        explain_s = time.perf_counter() - t0
        base = model.score(q).gather(1, items).numpy()[:, 0]
        top_order = [
            np.argsort(-contrib[q.indptr[b] : q.indptr[b + 1]], kind="stable") for b in range(len(q))
        ]
        curve, rand_curve, lowered = [], [], 0.0
        for k in range(1, args.max_k + 1):
            qt = remove_events(q, [o[:k] for o in top_order])
            drop = base - model.score(qt).gather(1, items).numpy()[:, 0]
            rand_drops = []
            for r in range(args.random_repeats):
                rr = np.random.default_rng(1000 * k + r)
                qr = remove_events(
                    q, [rr.choice(int(lens_b), size=k, replace=False) for lens_b in np.diff(q.indptr)]
                )
                rand_drops.append(base - model.score(qr).gather(1, items).numpy()[:, 0])
            rd = np.mean(rand_drops, axis=0)
            if k == 1:
                lowered = float((drop > 0).mean())
                ratio = float(drop.mean() / rd.mean()) if rd.mean() > 0 else float("inf")
            curve.append(float(drop.mean()))
            rand_curve.append(float(rd.mean()))
        metrics = {
            "pairs": int(len(q)),
            "share_lowered_top1": lowered,
            "mean_drop_top1": curve[0],
            "mean_drop_random1": rand_curve[0],
            "drop_ratio_top1_vs_random": ratio,
            "DEL_curve_top": curve,
            "DEL_curve_random": rand_curve,
            "explain_seconds": explain_s,
        }
        put(
            record(
                "text",
                f"faithful/{args.dataset}/{name}",
                {
                    "dataset": args.dataset,
                    "model": name,
                    "max_k": args.max_k,
                    "overrides": sets.get(name, {}),
                },
                metrics,
                f"python -m benchmarks.text faithful --dataset {args.dataset} --models {name}",
                note=args.note,
            )
        )
        print(json.dumps({"model": name, **metrics}))


# ---- encoding throughput ---------------------------------------------------------------------------


def run_encode(args: argparse.Namespace) -> None:
    from dynrec.text import TextEncoder, dataset_item_texts

    torch.set_num_threads(args.threads)
    texts = dataset_item_texts(args.dataset)
    ids = sorted(texts.texts)
    batch = [texts.texts[i] for i in ids]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        enc = TextEncoder(args.encoder, cache_dir=Path(tmp))
        _ = enc.dim
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        enc.encode(batch)
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        enc.encode(batch)
        cached_s = time.perf_counter() - t0
        stats = enc.last_stats
    lengths = [len(t) for t in batch]
    metrics = {
        "items": len(batch),
        "mean_chars": float(np.mean(lengths)),
        "load_seconds": load_s,
        "cold_items_per_s": len(batch) / cold_s,
        "cached_items_per_s": len(batch) / cached_s,
        "cached_stats": str(stats),
        "threads": args.threads,
    }
    put(
        record(
            "text",
            f"encode/{args.dataset}/{args.encoder}",
            {"dataset": args.dataset, "encoder": args.encoder},
            metrics,
            f"python -m benchmarks.text encode --dataset {args.dataset} --threads {args.threads}",
            note=args.note,
        )
    )
    print(json.dumps(metrics))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("cold", "quality", "faithful", "encode"):
        p = sub.add_parser(name)
        p.add_argument("--dataset", default="ml-100k")
        p.add_argument("--threads", type=int, default=2)
        p.add_argument("--note", default="")
        p.add_argument("--set", action="append", default=[], help="MODEL.key=value config override")
        if name == "cold":
            p.add_argument("--models", default="sasrec-text,sasrec,content")
            p.add_argument("--cold-share", type=float, default=0.1)
            p.add_argument("--cold-seed", type=int, default=0)
            p.add_argument("--seed", type=int, default=None)
        if name == "quality":
            p.add_argument("--models", default="sasrec-text,sasrec")
            p.add_argument("--seeds", default="42,43,44")
        if name == "faithful":
            p.add_argument("--models", default="sasrec-text,content,itemknn")
            p.add_argument("--pairs", type=int, default=200)
            p.add_argument("--max-k", type=int, default=5)
            p.add_argument("--random-repeats", type=int, default=3)
            p.add_argument("--seed", type=int, default=None)
        if name == "encode":
            p.add_argument("--encoder", default="all-MiniLM-L6-v2")
    args = ap.parse_args()
    {"cold": run_cold, "quality": run_quality, "faithful": run_faithful, "encode": run_encode}[args.cmd](args)


if __name__ == "__main__":
    main()
