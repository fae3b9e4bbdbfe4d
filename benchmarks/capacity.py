"""Capacity: what a recommendation and an event cost Redis, and how many bytes a user takes there.

The measured half of the capacity model in ``docs/deploy.md`` (the other half is the CPU per
recommendation of ``benchmarks/serve_load.py`` and per event of ``benchmarks/consume.py``). For each
model, trained here on the dataset, on a fresh throw-away durable ``redis-server`` (append-only,
fsync on every write, as ``serve_load`` and ``consume`` run it): the store is seeded with every
user's training history (as ``dynrec serve`` seeds it), then an `OnlineRecommender` configured as
the service configures it (hot cache of 10,000 users, a checkpoint every 16 events) is driven
through the three things a deployment does, while Redis's own counters (``INFO commandstats``,
the server's CPU time) are read before and after each:

* *recommend, cold*: one recommendation each for ``--users`` users the process has not seen (a new
  process, or a user evicted from the hot cache): the history and checkpoint are read;
* *recommend, warm*: the same users again, 20,000 recommendations in all (the hot cache holds them:
  only the per-request freshness check reaches Redis);
* *events*: ``--events`` events for those users in batches of 100 over distinct users (a
  ``POST /v1/events`` body or a ``dynrec consume`` batch), each with an event id, then the hot
  states flushed (the checkpoints every deployment eventually writes).

Bytes per user are Redis's ``MEMORY USAGE`` of a user's keys (history, state checkpoint, applied
event ids), mean over those users after the events.

    python -m benchmarks.capacity --dataset ml-100k --models itemknn als sasrec gru4rec

The plan (pure functions at the bottom, used by ``benchmarks/pages.py`` to write the capacity table
of ``docs/deploy.md``) turns these records and the CPU records into cores, Redis memory and shards
for a stated load.
"""

from __future__ import annotations

import argparse
import math
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._common import Record, put, record, table
from benchmarks.serve_load import _stat, redis_server, train_model

BATCH = 100
WARM_RECOMMENDATIONS = 20_000
"""Warm recommendations measured (passes over the users): Redis CPU time is read in clock ticks."""
SERVICE_CACHE, SERVICE_PERSIST_EVERY = 10_000, 16  # dynrec.service.settings defaults


class RedisCounters:
    """Commands processed (by name) and CPU seconds of one redis-server, read as deltas."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)
        self.pid = int(self.client.info("server")["process_id"])

    def read(self) -> tuple[dict[str, int], float]:
        stats = self.client.info("commandstats")
        calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
        st = _stat(self.pid)
        return calls, 0.0 if st is None else st[1]

    def measure(self, work: Callable[[], None]) -> tuple[dict[str, int], float, float]:
        """(commands by name, redis CPU seconds, wall seconds) that `work` cost; the counters'
        own ``INFO`` calls are left out."""
        c0, cpu0 = self.read()
        t0 = time.perf_counter()
        work()
        wall = time.perf_counter() - t0
        c1, cpu1 = self.read()
        calls = {k: v - c0.get(k, 0) for k, v in c1.items() if v - c0.get(k, 0) > 0}
        calls["info"] = calls.get("info", 0) - 1
        return {k: v for k, v in calls.items() if v > 0}, cpu1 - cpu0, wall


def per(calls: dict[str, int], cpu: float, n: int) -> dict[str, Any]:
    """Commands per operation (total and the busiest names) and redis CPU seconds per 1,000."""
    total = sum(calls.values())
    top = sorted(calls.items(), key=lambda kv: -kv[1])[:6]
    return {
        "commands": total / n,
        "by_command": {k: v / n for k, v in top},
        "redis_cpu_s_per_1k": 1000 * cpu / n,
    }


def measure_model(model_dir: Path, url: str, n_users: int, n_events: int, seed: int) -> dict[str, Any]:
    from dynrec import jobs
    from dynrec.data.events import Event
    from dynrec.models.base import Recommender
    from dynrec.online.session import OnlineRecommender
    from dynrec.online.store import open_store

    store = open_store(url)
    seeded = jobs.seed_store(model_dir, store, replace=True)
    model = Recommender.load(model_dir)
    assert model.user_vocab is not None and model.item_vocab is not None
    rng = random.Random(seed)
    users = rng.sample(list(model.user_vocab.ids), min(n_users, len(model.user_vocab.ids)))
    items = list(model.item_vocab.ids)
    counters = RedisCounters(url)
    session = OnlineRecommender(model, store, cache_size=SERVICE_CACHE, persist_every=SERVICE_PERSIST_EVERY)

    passes = max(1, WARM_RECOMMENDATIONS // len(users))

    def recommend_each(times: int) -> Callable[[], None]:
        def work() -> None:
            for _ in range(times):
                for u in users:
                    session.recommend_many([u], 10)

        return work

    cold = per(*counters.measure(recommend_each(1))[:2], len(users))
    warm = per(*counters.measure(recommend_each(passes))[:2], passes * len(users))
    t0 = 2_000_000_000
    events = [
        Event(users[j % len(users)], rng.choice(items), t0 + j, "click", 1.0, f"cap-{j}")
        for j in range(n_events)
    ]
    batches = [events[a : a + BATCH] for a in range(0, len(events), BATCH)]

    def observe_all() -> None:
        for b in batches:
            session.observe(b)
        session.flush()

    calls, cpu, wall = counters.measure(observe_all)
    ev = per(calls, cpu, len(events))
    ev["session_events_per_s"] = len(events) / wall
    keys = {"history": "e", "state": "s", "event_ids": "d"}
    sizes = {
        name: sum(counters.client.memory_usage(f"dynrec:{k}:{u}") or 0 for u in users) / len(users)
        for name, k in keys.items()
    }
    lengths = [len(store.history(u)) for u in users]
    counters.client.close()
    close = getattr(store, "close", None)
    if close is not None:
        close()
    return {
        "recommend_cold": cold,
        "recommend_warm": warm,
        "events": ev,
        "bytes_per_user": sizes,
        "mean_history_events": sum(lengths) / len(lengths),
        "seeded_users": seeded.users,
        "seeded_events": seeded.events,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--models", nargs="+", default=["itemknn", "als", "sasrec", "gru4rec"])
    ap.add_argument(
        "--set", dest="sets", action="append", default=[], help="MODEL.KEY=VALUE for a trained model"
    )
    ap.add_argument("--users", type=int, default=500)
    ap.add_argument("--events", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dry-run", action="store_true", help="print, do not write the results store")
    args = ap.parse_args()
    for name in args.models:
        sets = [s.split(".", 1)[1] for s in args.sets if s.startswith(f"{name}.")]
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / "model"
            train_s = train_model(name, args.dataset, sets, model_dir)
            with redis_server(Path(tmp)) as url:
                metrics = measure_model(model_dir, url, args.users, args.events, args.seed)
        metrics["train_s"] = train_s
        cmd = f"python -m benchmarks.capacity --dataset {args.dataset} --models {name}"
        cmd += "".join(f" --set {s}" for s in args.sets if s.startswith(f"{name}."))
        rec = record(
            "capacity",
            f"{args.dataset}/{name}",
            {
                "dataset": args.dataset,
                "model": name,
                "users": args.users,
                "events": args.events,
                "sets": sets,
            },
            metrics,
            cmd,
            note="redis-server append-only with fsync always; session as the service configures it",
        )
        print(
            f"{name}: rec cold {metrics['recommend_cold']['commands']:.2f} / warm "
            f"{metrics['recommend_warm']['commands']:.2f} commands, event {metrics['events']['commands']:.2f}; "
            f"bytes/user {metrics['bytes_per_user']}"
        )
        if not args.dry_run:
            put(rec)
    if not args.dry_run:
        print("python -m benchmarks.pages  # to render the page")


# ---- the plan: from measured costs to a deployment ------------------------------------------


@dataclass(frozen=True)
class Load:
    """The load a deployment is sized for, and the headroom it keeps."""

    recommendations_per_s: float = 10_000
    users: int = 100_000_000
    events_per_user_per_day: float = 20
    utilisation: float = 0.6
    """Share of a core (or a Redis shard's one main thread) planned busy; the rest absorbs peaks."""
    shard_memory_gib: float = 25
    """Data one Redis shard holds (its machine's memory less fork/replication headroom)."""
    replicas: int = 1
    """Replicas per shard (each holds a full copy: memory, not CPU, for writes)."""

    @property
    def events_per_s(self) -> float:
        return self.users * self.events_per_user_per_day / 86_400


@dataclass(frozen=True)
class Costs:
    """One model's measured costs (CPU seconds are per operation)."""

    model: str
    serve_cpu_per_rec: float
    serve_source: str
    consume_cpu_per_event: float
    consume_source: str
    redis_cpu_per_rec: float
    redis_cpu_per_event: float
    commands_per_rec: float
    commands_per_event: float
    bytes_per_user: float
    bytes_source: str


@dataclass(frozen=True)
class Plan:
    costs: Costs
    serve_cores: float
    consume_cores: float
    redis_cores: float
    redis_memory_gib: float
    shards: int
    shards_by: str


def plan(costs: Costs, load: Load) -> Plan:
    """Cores for the serving processes and the consumers, Redis CPU and memory, and the shards that
    carry both (a shard's main thread is one core; its data at most `shard_memory_gib`)."""
    u = load.utilisation
    serve = load.recommendations_per_s * costs.serve_cpu_per_rec / u
    consume = load.events_per_s * costs.consume_cpu_per_event / u
    redis_cpu = (
        load.recommendations_per_s * costs.redis_cpu_per_rec + load.events_per_s * costs.redis_cpu_per_event
    ) / u
    memory = load.users * costs.bytes_per_user / 2**30
    by_cpu, by_memory = math.ceil(redis_cpu), math.ceil(memory / load.shard_memory_gib)
    return Plan(
        costs,
        serve,
        consume,
        redis_cpu,
        memory * (1 + load.replicas),
        max(by_cpu, by_memory, 1),
        "memory" if by_memory >= by_cpu else "CPU",
    )


def _best_serve(serve: list[Record], model: str) -> tuple[float, str] | None:
    """Server CPU per recommendation at 16 clients: the lowest of the model's one-worker records on
    Redis (the deployed store), else on SQLite."""
    found: list[tuple[int, float, str]] = []
    for r in serve:
        p, m = r["params"], r["metrics"]
        rec = m.get("recommendations", {}).get("16")
        if p.get("model") != model or p.get("workers") != 1 or not rec or not rec.get("per_s"):
            continue
        rank = 0 if p.get("store") == "redis" else 1
        found.append((rank, rec["server_cpu_per_s"] / rec["per_s"], f"serve {r['key']}; {_cpu(r)}"))
    if not found:
        return None
    _, cpu, source = min(found)
    return cpu, source


def _cpu(r: Record) -> str:
    """The CPU a record ran on, as the record names it."""
    return str(r.get("machine", {}).get("cpu", "CPU not recorded"))


def costs_of(model: str, serve: list[Record], consume: list[Record], capacity: list[Record]) -> Costs | None:
    """The model's costs from the stores' records; None when one of the three is missing. Bytes per
    user come from the consume record (the longest histories measured), Redis commands and CPU per
    recommendation from the capacity record, per event from the consume record (a real stream)."""
    s = _best_serve(serve, model)
    cons = [r for r in consume if r["params"]["model"] == model and r["params"]["consumers"] == 1]
    cap = [r for r in capacity if r["params"]["model"] == model]
    if s is None or not cons or not cap:
        return None
    c, k = cons[0]["metrics"], cap[0]["metrics"]
    return Costs(
        model=model,
        serve_cpu_per_rec=s[0],
        serve_source=s[1],
        consume_cpu_per_event=c["consumer_cpu_s_per_1k"] / 1000,
        consume_source=f"consume {cons[0]['key']}; {_cpu(cons[0])}",
        redis_cpu_per_rec=k["recommend_warm"]["redis_cpu_s_per_1k"] / 1000,
        redis_cpu_per_event=c["redis_cpu_s_per_1k"] / 1000,
        commands_per_rec=k["recommend_warm"]["commands"],
        commands_per_event=k["events"]["commands"],
        bytes_per_user=c["state_bytes_per_user"]
        + c["history_bytes_per_user"]
        + c["event_ids_bytes_per_user"],
        bytes_source=f"consume {cons[0]['key']}",
    )


# ---- rendering: benchmarks/README.md's inputs table and docs/deploy.md's capacity table ------

MODELS = ("itemknn", "sasrec")
"""The models planned in docs/deploy.md: those with serve, consume and capacity records."""
BEGIN = "<!-- capacity table: written by python -m benchmarks.pages from benchmarks/results; do not edit -->"
END = "<!-- end of capacity table -->"


def inputs_table(capacity: list[Record]) -> str:
    """benchmarks/README.md: the Redis side of a recommendation and an event, per model."""
    if not capacity:
        return ""
    rows = []
    for r in sorted(capacity, key=lambda r: r["key"]):
        m = r["metrics"]
        cold, warm, ev, b = m["recommend_cold"], m["recommend_warm"], m["events"], m["bytes_per_user"]
        top = ", ".join(f"{k} {v:.2f}" for k, v in ev["by_command"].items())
        rows.append(
            [
                r["params"]["dataset"],
                r["params"]["model"],
                f"{cold['commands']:.2f} / {warm['commands']:.2f}",
                f"{ev['commands']:.2f} ({top})",
                f"{warm['redis_cpu_s_per_1k']:.3f} / {ev['redis_cpu_s_per_1k']:.3f}",
                f"{b['state']:,.0f} / {b['history']:,.0f} / {b['event_ids']:,.0f}",
                f"{m['mean_history_events']:.0f}",
                f"{r['machine']['cpu']} ({r['machine']['cpus']} cores); {r.get('note', '')}",
                f"`{r['command']}`",
            ]
        )
    return (
        "## Capacity inputs: Redis per recommendation, per event, per user\n\n"
        "`python -m benchmarks.capacity`: an `OnlineRecommender` configured as the service configures it\n"
        "(hot cache, a checkpoint every 16 events) over a seeded throw-away redis-server; Redis's own\n"
        "counters (`INFO commandstats`, its CPU time) read around each part. A cold recommendation is a\n"
        "user this process has not cached (history and checkpoint read); a warm one is cached (only the\n"
        "freshness check reaches Redis). Events: batches of 100 over distinct users, each with an event\n"
        "id, checkpoints flushed at the end. Commands count those run inside Lua scripts. Bytes per user:\n"
        "`MEMORY USAGE` of the user's keys after the events. `docs/deploy.md` turns these and the CPU\n"
        "records above into a deployment.\n\n"
        + table(
            [
                "dataset",
                "model",
                "commands per rec: cold / warm",
                "commands per event (busiest)",
                "redis CPU s / 1k: warm recs / events",
                "bytes per user: state / history / ids",
                "events per user",
                "CPU; notes",
                "reproduce",
            ],
            rows,
        )
    )


def capacity_block(serve: list[Record], consume: list[Record], capacity: list[Record], load: Load) -> str:
    """docs/deploy.md's generated part: the measured costs and the plan for `load`, per model."""
    costs = [c for c in (costs_of(m, serve, consume, capacity) for m in MODELS) if c is not None]
    missing = [m for m in MODELS if m not in {c.model for c in costs}]
    cost_rows = [
        [
            c.model,
            f"{1000 * c.serve_cpu_per_rec:.2f} ({c.serve_source})",
            f"{1000 * c.consume_cpu_per_event:.3f} ({c.consume_source})",
            f"{c.commands_per_rec:.2f} / {c.commands_per_event:.2f}",
            f"{1000 * c.redis_cpu_per_rec:.4f} / {1000 * c.redis_cpu_per_event:.4f}",
            f"{c.bytes_per_user:,.0f} ({c.bytes_source})",
        ]
        for c in costs
    ]
    plans = [plan(c, load) for c in costs]
    plan_rows = [
        [
            p.costs.model,
            f"{p.serve_cores:.1f}",
            f"{p.consume_cores:.1f}",
            f"{p.redis_cores:.1f}",
            f"{p.redis_memory_gib:,.0f}",
            f"{p.shards} (by {p.shards_by})",
        ]
        for p in plans
    ]
    parts = [
        BEGIN,
        f"Load: **{load.recommendations_per_s:,.0f} recommendations/s** and **{load.users:,} users** sending "
        f"{load.events_per_user_per_day:g} events a day each ({load.events_per_s:,.0f} events/s); cores planned "
        f"{load.utilisation:.0%} busy; a Redis shard holds at most {load.shard_memory_gib:g} GiB of data, with "
        f"{load.replicas} replica{'s' if load.replicas != 1 else ''}.",
        "Measured costs (CPU per operation on the CPU each source record names: where the sources ran on "
        "different machines, so does this plan; sources are record keys in `benchmarks/results/`):",
        table(
            [
                "model",
                "server CPU ms per rec",
                "consumer CPU ms per event",
                "Redis commands per rec / event",
                "Redis CPU ms per rec / event",
                "Redis bytes per user",
            ],
            cost_rows,
        ),
        "The deployment they imply:",
        table(
            [
                "model",
                "serving cores",
                "consumer cores",
                "Redis cores (main threads)",
                "Redis memory GiB (with replicas)",
                "Redis Cluster shards",
            ],
            plan_rows,
        ),
    ]
    if missing:
        parts.append(f"No plan yet for {', '.join(missing)}: a serve, consume or capacity record is missing.")
    return "\n\n".join([*parts, END])


def render_deploy(doc: str, block: str) -> str:
    """`doc` with its capacity table (between the markers) replaced by `block`."""
    a, b = doc.find(BEGIN), doc.find(END)
    if a < 0 or b < a:
        raise ValueError("docs/deploy.md has no capacity-table markers")
    return doc[:a] + block + doc[b + len(END) :]


if __name__ == "__main__":
    main()
