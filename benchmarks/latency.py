"""Latency: one real-time step, a new event updates the user's cached state, then a fresh top-10.

SASRec on ml-1m by default (the model trained as for the replay: pre-cut = all but each user's last
10 events). For `--users` users whose pre-cut history is already in the store, each user's next
event is timed through `OnlineRecommender`: ``observe(event)`` (append + one incremental state step +
store write) and ``recommend(user, 10)`` (score the cached state, mask seen items, top-10), in the
in-memory and the SQLite store; compared with the stateless path (``model.score`` on the whole
history + top-10). Then the state-mode replay throughput over the whole stream. One record in
results/latency.json per model/dataset.

    python -m benchmarks.latency --dataset ml-1m --users 500 --threads 1 [--model-dir DIR]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks._common import put, record
from dynrec.data.events import Event
from dynrec.data.query import QueryBatch
from dynrec.jobs import fit_for_replay, load_replay_data
from dynrec.models.base import Recommender
from dynrec.online.session import OnlineRecommender
from dynrec.online.store import InMemoryStore, SQLiteStore, StateStore
from dynrec.replay import ReplayConfig, replay


def pct(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def summary(ms: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(ms), "p90_ms": pct(ms, 90), "p99_ms": pct(ms, 99), "n": len(ms)}


def time_store(
    model: Recommender,
    store: StateStore,
    users: list[str],
    hist: dict[str, list[tuple[str, int]]],
    nxt: dict[str, tuple[str, int]],
) -> dict[str, Any]:
    online = OnlineRecommender(model, store)
    for u in users:  # pre-cut history in the store, state built and cached
        store.append(Event(u, i, t) for i, t in hist[u])
        online.recommend(u, 10)
    both, obs, rec = [], [], []
    for u in users:
        item, t = nxt[u]
        t0 = time.perf_counter()
        online.observe(Event(u, item, t))
        t1 = time.perf_counter()
        online.recommend(u, 10)
        t2 = time.perf_counter()
        obs.append((t1 - t0) * 1e3)
        rec.append((t2 - t1) * 1e3)
        both.append((t2 - t0) * 1e3)
    return {"observe+recommend": summary(both), "observe": summary(obs), "recommend": summary(rec)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model-dir", type=Path, default=None, help="sasrec trained for the ml-1m replay")
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-replay", action="store_true")
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--model", default="sasrec")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rd = load_replay_data(args.dataset, last_n=10)
    model = Recommender.load(args.model_dir) if args.model_dir is not None else fit_for_replay(args.model, rd)
    d = rd.data
    assert model.item_vocab is not None
    rng = np.random.default_rng(0)
    uidx = np.sort(rng.choice(np.arange(1, d.n_users), args.users, replace=False))
    ids = d.item_vocab.ids
    hist, nxt = {}, {}
    for u in uidx.tolist():
        name = d.user_vocab.ids[u - 1]
        pre = range(int(d.indptr[u]), int(rd.pre_end[u]))
        hist[name] = [(ids[int(d.items[p]) - 1], int(d.timestamps[p])) for p in pre]
        p = int(rd.pre_end[u])
        nxt[name] = (ids[int(d.items[p]) - 1], int(d.timestamps[p]))
    users = list(hist)
    out: dict[str, Any] = {
        "model": model.name,
        "dataset": args.dataset,
        "users": len(users),
        "threads": args.threads,
    }
    out["in_memory"] = time_store(model, InMemoryStore(), users, hist, nxt)
    with tempfile.TemporaryDirectory() as tmp:
        out["sqlite"] = time_store(model, SQLiteStore(Path(tmp) / "s.db"), users, hist, nxt)
    # the stateless path: score the whole history (+ the new event) and take the top-10
    ms = []
    for u in users:
        h = [model.item_vocab.index(i, "skip") for i, _ in hist[u]] + [
            model.item_vocab.index(nxt[u][0], "skip")
        ]
        q = QueryBatch.from_histories([[x for x in h if x > 0]])
        t0 = time.perf_counter()
        model.recommend(q, 10)
        ms.append((time.perf_counter() - t0) * 1e3)
    out["recompute_from_history"] = summary(ms)
    avg_len = float(np.mean([len(hist[u]) for u in users]))
    out["mean_history_len"] = avg_len
    print(json.dumps(out, indent=1))
    if not args.skip_replay:
        t0 = time.perf_counter()
        res = replay(
            Recommender.load(args.model_dir) if args.model_dir else model, rd, ReplayConfig(mode="state")
        )
        out["replay_state"] = {
            **{k: res.metrics[k] for k in ("HR@10", "NDCG@10", "n_events")},
            **{
                k: res.timing[k]
                for k in (
                    "seconds",
                    "events_per_s",
                    "serve_events_per_s",
                    "state_init_seconds",
                    "serve_seconds",
                )
            },
            "wall_s": time.perf_counter() - t0,
        }
        print(json.dumps(out["replay_state"], indent=1))
    params = {k: out.pop(k) for k in ("model", "dataset", "users", "threads")}
    command = (
        f"python -m benchmarks.latency --dataset {args.dataset} --users {args.users} --threads {args.threads}"
    )
    put(record("latency", f"{params['model']}/{params['dataset']}", params, out, command))
    print("python -m benchmarks.pages  # to render the page")


if __name__ == "__main__":
    main()
