"""`make demo`: the main job end to end on a real dataset.

Loads the dataset, makes the temporal leave-one-out split, trains the baselines and the
dynamic-interest sequence model, evaluates all of them by full ranking (seen items excluded),
prints the result table, saves the models under ``runs/``, then shows real-time interest
updates: a user's recommendations before and after new events arrive.

It ends by serving the dynamic-interest model over HTTP with the try-it page (`dynrec serve`, a
SQLite store in the output folder seeded with every user's training history), until Ctrl-C.
``DEMO_SERVE=0`` skips serving, ``DEMO_SERVE=1`` serves even without a terminal; unset, it serves
only when run from a terminal, so scripted runs never hang.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from dynrec import jobs
from dynrec.data import registry
from dynrec.errors import DynrecError
from dynrec.models.registry import available_models

log = logging.getLogger("dynrec.cli.demo")

DEFAULT_MODELS = ("pop", "itemknn", "ease", "als", "gru4rec")
"""gru4rec is the dynamic-interest model of the default demo: it is the fastest sequence model to
train on a CPU (sasrec: `--models ...,sasrec`, ~25+ min on 2 cores)."""

DYNAMIC_MODELS = ("sasrec", "gru4rec", "itemknn")
"""The model shown in real time and served at the end: the first of these that was trained."""

SERVE_START_TIMEOUT_S = 300.0
"""How long the served model may take to load before the demo gives up on it."""


def _row(name: str, metrics: dict[str, float], seconds: float) -> str:
    return (
        f"| {name:<10} | {metrics['HR@10']:.4f} | {metrics['NDCG@10']:.4f} | {metrics['MRR@10']:.4f} "
        f"| {metrics['Coverage@10']:.3f} | {seconds:7.1f} |"
    )


def run(dataset: str, models: tuple[str, ...], out: Path, sets: dict[str, dict[str, str]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    prepared = jobs.prepare(dataset, split="loo")
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
        m = jobs.train(name, prepared, overrides=sets.get(name), out=out / f"{dataset}-{name}")
        res = jobs.evaluate_model(m, prepared)
        results[name] = {**res.metrics, "fit_seconds": jobs.fit_seconds(m)}
        rows.append(_row(name, res.metrics, jobs.fit_seconds(m)))
        trained[name] = m
    print(f"\nTest (full ranking over all {len(prepared.data.item_vocab)} items, seen items excluded):")
    print(header)
    print("\n".join(rows))
    dyn = next((trained[n] for n in DYNAMIC_MODELS if n in trained), None)
    if dyn is not None:
        _show_real_time(dyn, prepared, out)
    (out / f"{dataset}-results.json").write_text(json.dumps(results, indent=2))
    print(f"\nmodels saved under {out}/ ; results in {out / f'{dataset}-results.json'}")
    return results


def _show_real_time(model: Any, prepared: jobs.Prepared, out: Path) -> None:
    """Serve the model through the online path (SQLite state store): load a user's history, then
    stream new events; each recommendation already reflects them, with no retraining."""
    from dynrec.data.events import Event
    from dynrec.online import OnlineRecommender, SQLiteStore

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


def _want_serve(flag: bool) -> bool:
    """Serve unless ``--no-serve`` or ``DEMO_SERVE=0``; when DEMO_SERVE is unset, only from a
    terminal (a scripted run must end on its own)."""
    env = os.environ.get("DEMO_SERVE", "").strip().lower()
    if not flag or env in ("0", "false", "no", "off"):
        return False
    if env in ("1", "true", "yes", "on"):
        return True
    if not sys.stdin.isatty():
        print("\n(not serving: no terminal; set DEMO_SERVE=1 to serve the model anyway)")
        return False
    return True


def _port(host: str, wanted: int) -> int:
    """`wanted` when it is free on `host`, else a free port there (told to the user)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, wanted))
            return wanted
        except OSError:
            pass
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        port = int(s.getsockname()[1])
    print(f"(port {wanted} is taken; using {port})")
    return port


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/healthz", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _get_json(url: str) -> dict[str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            out = json.loads(r.read())
    except (urllib.error.URLError, OSError, ValueError):
        return {}
    return out if isinstance(out, dict) else {}


def _example(url: str) -> tuple[str, str]:
    """A user with events in the served store and that user's top recommendation, for the curl
    examples (asked from the API itself)."""
    users = _get_json(f"{url}/v1/users?limit=1").get("users") or ["1"]
    user = str(users[0])
    recs = (
        _get_json(f"{url}/v1/users/{urllib.parse.quote(user, safe='')}/recommendations?k=1").get("items")
        or []
    )
    item = str(recs[0]["item_id"]) if recs and isinstance(recs[0], dict) and "item_id" in recs[0] else "1"
    return user, item


def serve(dataset: str, model_name: str, out: Path, host: str, port: int) -> int:
    """Serve ``out/<dataset>-<model_name>`` with `dynrec serve` (the same command a user runs) and
    a SQLite store ``out/<dataset>-serve.db`` seeded with every user's training history (so the
    page lists users with a past); print the page's URL and curl examples once it answers, then
    wait until Ctrl-C. Returns the server's exit code (0 after Ctrl-C)."""
    from dynrec.online import SQLiteStore

    model_dir = out / f"{dataset}-{model_name}"
    db = out / f"{dataset}-serve.db"
    for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)
    t0 = time.perf_counter()
    with SQLiteStore(db) as store:
        seeded = jobs.seed_store(model_dir, store)
    print(
        f"\nseeded {db} with {seeded.users} users' training histories ({seeded.events} events) "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    port = _port(host, port)
    cmd = [
        sys.executable,
        "-m",
        "dynrec.cli.main",
        "serve",
        str(model_dir),
        "--store",
        f"sqlite:///{db.resolve()}",
        "--host",
        host,
        "--port",
        str(port),
    ]
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    url = f"http://{shown_host}:{port}"
    print(f"starting: dynrec serve {model_dir} --store sqlite:///{db.resolve()} --host {host} --port {port}")
    proc = subprocess.Popen(cmd)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # `kill` of the demo stops its server too, as Ctrl-C does

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        deadline = time.monotonic() + SERVE_START_TIMEOUT_S
        while not _healthy(url):
            if proc.poll() is not None:
                print(f"error: dynrec serve exited with code {proc.returncode}", file=sys.stderr)
                return proc.returncode or 1
            if time.monotonic() > deadline:
                print(
                    f"error: dynrec serve did not answer within {SERVE_START_TIMEOUT_S:.0f}s", file=sys.stderr
                )
                return 1
            time.sleep(0.5)
        user, item = _example(url)
        key = ' -H "X-API-Key: $DYNREC_API_KEY"' if os.environ.get("DYNREC_API_KEY") else ""
        print(
            f"""
Serving {model_name} trained on {dataset} at {url}/  (open it in a browser: pick a user, click items)
Try the API from another terminal:
  curl -s -X POST {url}/v1/events -H 'Content-Type: application/json'{key} \\
       -d '{{"events": [{{"user_id": "{user}", "item_id": "{item}"}}]}}'
  curl -s '{url}/v1/users/{user}/recommendations?k=5&explain=true'
  curl -s '{url}/v1/users/{user}'
Press Ctrl-C to stop.""",
            flush=True,
        )
        while True:  # short waits: a signal delivered to another thread is still handled promptly
            try:
                return proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, previous)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        print("server stopped")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--models", default=",".join(DEFAULT_MODELS))
    ap.add_argument("--out", default="runs")
    ap.add_argument("--set", action="append", default=[], help="MODEL.key=value")
    ap.add_argument(
        "--no-serve", dest="serve", action="store_false", help="end without serving (as DEMO_SERVE=0)"
    )
    ap.add_argument("--host", default="127.0.0.1", help="where to serve (default: loopback only)")
    ap.add_argument("--port", type=int, default=8000, help="port to serve on (a free one if taken)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    sets: dict[str, dict[str, str]] = {}
    for s in args.set:
        mk, v = s.split("=", 1)
        m, k = mk.split(".", 1)
        sets.setdefault(m, {})[k] = v
    out = Path(args.out)
    try:
        results = run(args.dataset, tuple(args.models.split(",")), out, sets)
        served = next((n for n in DYNAMIC_MODELS if n in results), None)
        if served is None:
            print("\n(not serving: none of the dynamic models " + ", ".join(DYNAMIC_MODELS) + " was trained)")
            return 0
        if _want_serve(args.serve):
            return serve(args.dataset, served, out, args.host, args.port)
    except DynrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
