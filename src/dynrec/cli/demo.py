"""`make demo`: the main job end to end on a real dataset.

Loads the dataset, makes the temporal leave-one-out split, trains the baselines and the
dynamic-interest sequence model, evaluates all of them by full ranking (seen items excluded),
prints the result table, saves the models under ``runs/``, then shows real-time interest
updates (`show_real_time`): a user receives events from a genre absent from their history, and
their interest shares and recommendations change with no retraining.

It ends by serving the dynamic-interest model over HTTP with the try-it page (`dynrec serve` on a
new SQLite store in the output folder, which it seeds with every user's training history), until
Ctrl-C.
``DEMO_SERVE=0`` skips serving, ``DEMO_SERVE=1`` serves even without a terminal; unset, it serves
only when run from a terminal, so scripted runs never hang.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dynrec import jobs
from dynrec.data import registry
from dynrec.errors import DynrecError
from dynrec.models.config import RunOptions
from dynrec.models.registry import available_models
from dynrec.online.interests import Categories, category_shares

log = logging.getLogger("dynrec.cli.demo")

DEFAULT_MODELS = ("pop", "itemknn", "ease", "als", "gru4rec")
"""gru4rec is the dynamic-interest model of the default demo: it is the fastest sequence model to
train on a CPU (sasrec: `--models ...,sasrec`, ~25+ min on 2 cores)."""

DYNAMIC_MODELS = ("sasrec", "gru4rec", "itemknn")
"""The model shown in real time and served at the end: the first of these that was trained."""

SERVE_START_TIMEOUT_S = 300.0
"""How long the served model may take to load before the demo gives up on it."""


COLUMNS = (("model", 10), ("HR@10", 7), ("NDCG@10", 7), ("MRR@10", 7), ("Cov@10", 7), ("fit s", 7))
"""The result table's columns and their widths."""


def _header() -> str:
    head = "| " + " | ".join(f"{name:<{w}}" for name, w in COLUMNS) + " |"
    rule = "|" + "|".join("-" * (w + 2) for _, w in COLUMNS) + "|"
    return f"{head}\n{rule}"


def _row(name: str, metrics: dict[str, float], seconds: float) -> str:
    cells = [metrics["HR@10"], metrics["NDCG@10"], metrics["MRR@10"], metrics["Coverage@10"]]
    values = [f"{v:.4f}" for v in cells] + [f"{seconds:.1f}"]
    w = [width for _, width in COLUMNS]
    return f"| {name:<{w[0]}} | " + " | ".join(f"{v:>{x}}" for v, x in zip(values, w[1:], strict=True)) + " |"


def run(dataset: str, models: tuple[str, ...], out: Path, sets: dict[str, dict[str, str]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    prepared = jobs.prepare(dataset, split="loo")
    print(
        f"{dataset}: {len(prepared.data.user_vocab)} users, {len(prepared.data.item_vocab)} items, "
        f"{prepared.data.n_events} events; temporal leave-one-out; prepared in {time.perf_counter() - t0:.1f}s"
    )
    have = set(available_models())
    results: dict[str, Any] = {}
    rows = []
    trained = {}
    bars = sys.stderr.isatty()  # the training bar of `dynrec train`, only on a terminal
    options = RunOptions(progress=bars)
    for pos, name in enumerate(models, 1):
        if name not in have:
            print(f"(skipping {name}: not available in this build)")
            continue
        tag = f"[{pos}/{len(models)}] {name:<10}"
        # on a terminal the finished line overwrites this one (below a model's training bar)
        print(f"{tag} training ...", end="\r" if bars else "\n", flush=True)
        t_model = time.perf_counter()
        m = jobs.train(
            name, prepared, overrides=sets.get(name), options=options, out=out / f"{dataset}-{name}"
        )
        res = jobs.evaluate_model(m, prepared)
        results[name] = {**res.metrics, "fit_seconds": jobs.fit_seconds(m)}
        rows.append(_row(name, res.metrics, jobs.fit_seconds(m)))
        trained[name] = m
        print(f"{tag} trained and evaluated in {time.perf_counter() - t_model:6.1f} s", flush=True)
    print(f"\nTest (full ranking over all {len(prepared.data.item_vocab)} items, seen items excluded):")
    print(_header())
    print("\n".join(rows))
    dyn = next((trained[n] for n in DYNAMIC_MODELS if n in trained), None)
    if dyn is not None:
        show_real_time(dyn, prepared, out / f"{dataset}-{dyn.name}")
    (out / f"{dataset}-results.json").write_text(json.dumps(results, indent=2))
    print(f"\nmodels saved under {out}/ ; results in {out / f'{dataset}-results.json'}")
    return results


NEW_EVENTS = 5
"""Events from the new genre fed to the demo user."""

SHORT_WINDOW = 10
"""The recent events whose interest shares the demo shows (the page's short-term window)."""


@dataclass(frozen=True)
class Newcomer:
    """The demo's user, their history (item ids, time order, with timestamps), the category absent
    from it and the catalogue items from that category fed to them."""

    user: str
    history: list[str]
    timestamps: list[int]
    category: str | None
    new_items: list[str]


def pick_newcomer(
    model: Any, prepared: jobs.Prepared, cats: Categories | None, n_new: int = NEW_EVENTS
) -> Newcomer:
    """The first test user with 15+ past events that has a category (with 10+ items mainly in it)
    taking at most 2% of their history, with the most popular such category (by training events of
    its items); the `n_new` most popular items mainly in that category that the user never had.
    Without categories (or no such user): the first test user and the most popular unseen items."""
    vocab = model.item_vocab
    train = prepared.split.train
    counts = np.bincount(train.items, minlength=train.item_vocab.size)
    pop = np.zeros(vocab.size)
    idx = vocab.lookup(train.item_vocab.ids, policy="skip")
    pop[idx[idx > 0]] = counts[1:][idx > 0]  # training events per model item index
    q = prepared.split.test.queries
    main = None if cats is None or cats.basis == "items" else (cats.matrix >= 0.5).toarray()
    first: Newcomer | None = None
    for row in range(min(len(q.users), 300)):
        one = q.slice(row, row + 1)
        user = prepared.data.user_vocab.to_ids(one.users)[0]
        hist = prepared.data.item_vocab.to_ids(one.items)
        ts = one.timestamps.tolist() if one.timestamps is not None else list(range(len(hist)))
        seen = vocab.lookup(hist, policy="skip")
        unseen_pop = pop.copy()
        unseen_pop[seen] = -1.0
        unseen_pop[0] = -1.0
        if first is None:
            top = np.argsort(-unseen_pop, kind="stable")[:n_new]
            first = Newcomer(user, hist, [int(t) for t in ts], None, vocab.to_ids(top))
        if main is None or cats is None or len(hist) < 15:
            continue
        shares = category_shares(seen[seen > 0], cats)
        best: tuple[float, int] | None = None
        for j, name in enumerate(cats.names):
            members = np.flatnonzero(main[:, j])
            if len(members) < 10 or shares.get(name, 0.0) > 0.02:
                continue
            mass = float(pop[members].sum())
            if best is None or mass > best[0]:
                best = (mass, j)
        if best is None:
            continue
        j = best[1]
        cand = np.flatnonzero(main[:, j] & (unseen_pop > 0))
        top = cand[np.argsort(-unseen_pop[cand], kind="stable")][:n_new]
        if len(top) == n_new:
            return Newcomer(user, hist, [int(t) for t in ts], cats.names[j], vocab.to_ids(top))
    assert first is not None
    return first


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def share_table(before: list[tuple[str, float]], after: list[tuple[str, float]], new: str | None) -> str:
    """Percent shares of the categories in either top 3 (and `new`), before and after, aligned."""
    b, a = dict(before), dict(after)
    names = list(
        dict.fromkeys([*(n for n, _ in before[:3]), *(n for n, _ in after[:3]), *([new] if new else [])])
    )
    width = max([len("interest"), *(len(n) for n in names)])
    head = f"  {'interest':<{width}}  {'before':>7}  {'after':>7}"
    lines = [head, "  " + "-" * (len(head) - 2)]
    for n in names:
        mark = "  <- new" if n == new else ""
        lines.append(f"  {n:<{width}}  {b.get(n, 0.0):>7.1%}  {a.get(n, 0.0):>7.1%}{mark}")
    return "\n".join(lines)


def rec_table(before: list[str], after: list[str], width: int = 40) -> str:
    """Ranked titles before and after, side by side, aligned."""
    left = max([len("before"), *(len(_cut(t, width)) for t in before)])
    lines = [f"  rank  {'before':<{left}}  after", "  " + "-" * (8 + left + 2 + width)]
    for r in range(max(len(before), len(after))):
        x = _cut(before[r], width) if r < len(before) else ""
        y = _cut(after[r], width) if r < len(after) else ""
        lines.append(f"  {r + 1:>4}  {x:<{left}}  {y}")
    return "\n".join(lines)


def show_real_time(model: Any, prepared: jobs.Prepared, model_dir: Path) -> None:
    """Real-time interests through the online path (an in-memory state store, no serving, no
    retraining): a user's history, then events from a category absent from it (`pick_newcomer`);
    prints the short-term interest shares and the recommendations before and after, and the
    interest shift the model's detector flags (when ``shifts.json`` is in `model_dir`)."""
    from dynrec.data.events import Event
    from dynrec.online import InMemoryStore, OnlineRecommender
    from dynrec.online.shift_calibration import load_calibration

    info = jobs.read_item_info(model_dir)
    meta = None
    if prepared.name in registry.DATASETS:  # an event file has no metadata of its own
        try:
            meta = registry.load_items(prepared.name)
        except DynrecError:
            meta = None
    online = OnlineRecommender(model, InMemoryStore(), item_metadata=meta, item_info=info or None)
    cats = online.categories()
    calibration = load_calibration(model_dir)
    if calibration is not None:
        online.detect_shifts(calibration)

    def title(item: str) -> str:
        t = (info.get(item) or {}).get("title") or (meta.title(item) if meta is not None else None)
        return str(t) if t else item

    def shares() -> list[tuple[str, float]]:
        return online.interests(
            who.user, short_window=SHORT_WINDOW, top=len(cats.names)
        ).short_term.categories

    who = pick_newcomer(model, prepared, cats)
    online.observe(
        [Event(who.user, i, timestamp=t) for i, t in zip(who.history, who.timestamps, strict=True)]
    )
    before, before_shares = online.recommend(who.user, k=5).items, shares()
    t = who.timestamps[-1] if who.timestamps else 0
    after = before
    shifted: list[str] = []
    t0 = time.perf_counter()
    for n, item in enumerate(who.new_items, 1):
        for s in online.observe(Event(who.user, item, timestamp=t + n)).get(who.user, []):
            shifted.append(
                f"after new event {n}: interests shifted: {', '.join(s.from_)} -> {', '.join(s.to)}"
            )
        after = online.recommend(who.user, k=5).items
    ms = (time.perf_counter() - t0) * 1000 / max(1, len(who.new_items))
    genre = f" ({who.category}, absent from their history)" if who.category else ""
    print(
        f"\nReal-time interests with {model.name} (no retraining): user {who.user}, {len(who.history)} past events"
    )
    print(f"  new events{genre}:")
    for item in who.new_items:
        print(f"    {title(item)}")
    if calibration is not None:
        print("  " + ("\n  ".join(shifted) if shifted else "no interest shift detected"))
    if cats.basis != "items":
        print(f"\n  share of the last {SHORT_WINDOW} events")
        print(share_table(before_shares, shares(), who.category))
    print()
    print(rec_table([title(i) for i in before], [title(i) for i in after]))
    print(f"  ({ms:.1f} ms per event: observe + recommend)")


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
    """Serve ``out/<dataset>-<model_name>`` with `dynrec serve` (the same command a user runs) on a
    new SQLite store ``out/<dataset>-serve.db``, which `dynrec serve` seeds with every user's
    training history (so the page lists users with a past); print the page's URL and curl examples
    once it answers, then wait until Ctrl-C. Returns the server's exit code (0 after Ctrl-C)."""
    model_dir = out / f"{dataset}-{model_name}"
    db = out / f"{dataset}-serve.db"
    for stale in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        stale.unlink(missing_ok=True)
    print()
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


def path_hint(bin_dir: Path, found: str | None, model_dir: Path) -> str:
    """What to run next from a shell. The README's commands need ``dynrec`` on PATH, which `make`
    does not put there (it runs ``.venv/bin/python`` directly): `bin_dir` holds this interpreter
    (and ``dynrec``), `found` is where PATH finds ``dynrec`` now (None: nowhere)."""
    example = f"`dynrec recommend {model_dir} --user 42`"
    if found is not None and Path(found).parent.resolve() == bin_dir.resolve():
        return f"Next, from a shell: the README's commands, e.g. {example}."
    activate = bin_dir / "activate"
    if not activate.is_file():
        return f"Next, from a shell: add {bin_dir} to PATH for the README's commands, e.g. {example}."
    rel = os.path.relpath(activate)
    shown = str(activate) if rel.startswith("..") else rel
    return (
        f"Next, from a shell: `source {shown}` puts dynrec on PATH for the README's commands, e.g. {example}."
    )


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
        example = out / f"{args.dataset}-{served or next(iter(results), 'MODEL')}"
        print("\n" + path_hint(Path(sys.executable).parent, shutil.which("dynrec"), example))
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
