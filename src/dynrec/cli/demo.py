"""`make demo`: the main job end to end on a real dataset.

Loads the dataset, makes the temporal leave-one-out split, trains the baselines and the
dynamic-interest sequence model, evaluates all of them by full ranking (seen items excluded),
prints the result table, saves the models under ``runs/``, then shows real-time interest
updates: a user's recommendations before and after new events arrive.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from dynrec import jobs as pipeline
from dynrec.data import registry
from dynrec.errors import DynrecError
from dynrec.models.registry import available_models

log = logging.getLogger("dynrec.cli.demo")

DEFAULT_MODELS = ("pop", "itemknn", "ease", "als", "gru4rec")
"""gru4rec is the dynamic-interest model of the default demo: it is the fastest sequence model to
train on a CPU (sasrec: `--models ...,sasrec`, ~25+ min on 2 cores)."""


def _row(name: str, metrics: dict[str, float], seconds: float) -> str:
    return (
        f"| {name:<10} | {metrics['HR@10']:.4f} | {metrics['NDCG@10']:.4f} | {metrics['MRR@10']:.4f} "
        f"| {metrics['Coverage@10']:.3f} | {seconds:7.1f} |"
    )


def run(dataset: str, models: tuple[str, ...], out: Path, sets: dict[str, dict[str, str]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    prepared = pipeline.prepare(dataset, split="loo")
    print(
        f"{dataset}: {len(prepared.data.user_vocab)} users, {len(prepared.data.item_vocab)} items, "
        f"{prepared.data.n_events} events; temporal leave-one-out; prepared in {time.perf_counter() - t0:.1f}s"
    )
    have = set(available_models())
    results: dict[str, Any] = {}
    header = "| model      | HR@10  | NDCG@10 | MRR@10 | Cov@10 | fit s   |\n|------------|--------|---------|--------|--------|---------|"
    rows = []
    trained = {}
    for name in models:
        if name not in have:
            print(f"(skipping {name}: not available in this build)")
            continue
        print(f"training {name} ...", flush=True)
        m = pipeline.train(name, prepared, overrides=sets.get(name), out=out / f"{dataset}-{name}")
        res = pipeline.evaluate_model(m, prepared)
        results[name] = {**res.metrics, "fit_seconds": m.meta["fit_seconds"]}
        rows.append(_row(name, res.metrics, m.meta["fit_seconds"]))
        trained[name] = m
    print(f"\nTest (full ranking over all {len(prepared.data.item_vocab)} items, seen items excluded):")
    print(header)
    print("\n".join(rows))
    dyn = next((trained[n] for n in ("sasrec", "gru4rec", "itemknn") if n in trained), None)
    if dyn is not None:
        _show_real_time(dyn, prepared, out)
    (out / f"{dataset}-results.json").write_text(json.dumps(results, indent=2))
    print(f"\nmodels saved under {out}/ ; results in {out / f'{dataset}-results.json'}")
    return results


def _show_real_time(model: Any, prepared: pipeline.Prepared, out: Path) -> None:
    """Serve the model through the online path (SQLite state store): load a user's history, then
    stream new events; each recommendation already reflects them, with no retraining."""
    from dynrec.online import Event, OnlineRecommender, SQLiteStore

    vocab = prepared.data.item_vocab
    try:
        meta = registry.load_items(prepared.name)
    except DynrecError:
        meta = None

    def names(ids: list[str]) -> list[str]:
        return [(meta.title(i) or i) if meta is not None else i for i in ids]

    q = prepared.split.test.queries.slice(0, 1)
    user = prepared.data.user_vocab.to_ids(q.users)[0]
    hist = vocab.to_ids(q.items)
    ts = q.timestamps.tolist() if q.timestamps is not None else list(range(len(hist)))
    db = out / "state.db"
    db.unlink(missing_ok=True)
    online = OnlineRecommender(model, SQLiteStore(str(db)), item_metadata=meta)
    online.observe([Event(user, i, timestamp=int(t)) for i, t in zip(hist, ts, strict=True)])
    before = online.recommend(user, k=5)
    # the user suddenly picks a random item they have never touched, then follows the recommendations
    rng = np.random.default_rng(0)
    unseen = np.setdiff1d(np.arange(1, vocab.size), q.items)
    pick = vocab.to_ids([int(rng.choice(unseen))])[0]
    t = int(ts[-1]) if ts else 0
    t0 = time.perf_counter()
    online.observe(Event(user, pick, timestamp=t + 1))
    follow = online.recommend(user, k=2).items
    online.observe([Event(user, i, timestamp=t + 2 + j) for j, i in enumerate(follow)])
    after = online.recommend(user, k=5)
    ms = (time.perf_counter() - t0) * 1000 / 2
    interests = online.interests(user)
    print(f"\nServing {model.name} from {db} (SQLite state); user {user}, {len(hist)} past events:")
    print(f"  before      : {names(before.items)}")
    print(f"  new events  : {names([pick, *follow])}")
    print(f"  after       : {names(after.items)}   (~{ms:.1f} ms per observe+recommend)")
    print(f"  short-term  : {interests.short_term.categories[:3]}")
    print(f"  long-term   : {interests.long_term.categories[:3]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--out", default="runs")
    ap.add_argument("--set", action="append", default=[], help="MODEL.key=value")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sets: dict[str, dict[str, str]] = {}
    for s in args.set:
        mk, v = s.split("=", 1)
        m, k = mk.split(".", 1)
        sets.setdefault(m, {})[k] = v
    try:
        run(args.dataset, tuple(args.models.split(",")), Path(args.out), sets)
    except DynrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
