"""Consume: events/s of `dynrec consume` applying a dataset-sized Redis stream to the online state.

For each model (trained here on the dataset, or ``--model-dir MODEL=DIR``) and each number of
consumers, on a fresh throw-away durable ``redis-server`` (append-only file, fsync on every write,
as the service documents it for production; benchmarks/serve_load.py's): the dataset's events in
time order (a prefix with ``--events``), each with an event id, are published to a stream split
into ``--partitions`` partitions (`dynrec.service.redis_streams.publish_events`), then 1 or 2
``dynrec consume --drain`` processes apply them (one consumer reads every partition; two split
them) to an empty Redis state store — every event appended, each user's state stepped and
checkpointed every 16 events, as ``POST /v1/events`` does. The store's event count is polled to
time the run: *events/s* is the steady rate between 10% and 90% of the stream (the consumers' start
skew and model loading left out), *overall* from the first applied event to the last. CPU seconds
of the consumers (their rusage) and of redis-server are per 1,000 events. The consumers, the
redis-server and this process share the machine's cores.

    python -m benchmarks.consume --dataset ml-1m --models itemknn sasrec --consumers 1 2 [--events N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks._common import put, record
from benchmarks.serve_load import _stat, redis_server, train_model

STREAM, GROUP = "ev", "bench"


def stream_events(dataset: str, limit: int | None) -> list[Any]:
    """The dataset's events in time order (ties in file order), each with its row as event id."""
    from dynrec.data import registry
    from dynrec.data.events import Event

    f = registry.load(dataset).sorted().frame
    if limit is not None:
        f = f.head(limit)
    return [
        Event(u, i, int(t), et, 1.0, str(r))
        for u, i, t, et, r in zip(
            f["user_id"].to_list(),
            f["item_id"].to_list(),
            f["timestamp"].to_list(),
            f["event_type"].to_list(),
            f["row"].to_list(),
            strict=True,
        )
    ]


def publish(url: str, events: list[Any], partitions: int) -> float:
    """Publish `events` to the partitioned stream; seconds taken."""
    import redis

    from dynrec.service.redis_streams import publish_events

    client = redis.Redis.from_url(url)
    t0 = time.perf_counter()
    publish_events(client, STREAM, events, partitions)
    seconds = time.perf_counter() - t0
    client.close()
    return seconds


class Poll:
    """The store's event count over time (one GET every `every` seconds), in a thread."""

    def __init__(self, url: str, every: float = 0.2) -> None:
        from dynrec.online.store.redis import RedisStore

        self.store = RedisStore(url)
        self.every = every
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(self.every):
            self.samples.append((time.perf_counter(), self.store.n_events()))

    def finish(self) -> list[tuple[float, int]]:
        self.stop.set()
        self.thread.join()
        self.samples.append((time.perf_counter(), self.store.n_events()))
        self.store.close()
        return self.samples


def crossing(samples: list[tuple[float, int]], n: float) -> float:
    """The time the count first reached `n` (linear between the two samples around it)."""
    prev_t, prev_n = samples[0]
    for t, c in samples:
        if c >= n:
            if c == prev_n:
                return t
            return prev_t + (t - prev_t) * (n - prev_n) / (c - prev_n)
        prev_t, prev_n = t, c
    return samples[-1][0]


def run_consumers(
    model_dir: Path, url: str, n_consumers: int, partitions: int, batch: int, log: Path
) -> tuple[list[dict[str, Any]], float, list[tuple[float, int]]]:
    """`n_consumers` ``dynrec consume --drain`` processes over the partitions; (their summaries,
    their CPU seconds, the store's event count over time)."""
    ids = [list(range(partitions))[k::n_consumers] for k in range(n_consumers)]
    procs = []
    poll = Poll(url)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as err:
        for k, part in enumerate(ids):
            cmd = [sys.executable, "-m", "dynrec.cli.main", "consume", str(model_dir), "--store", url]
            cmd += ["--stream", STREAM, "--group", GROUP, "--consumer", f"c{k}"]
            cmd += ["--partitions", str(partitions), "--partition-ids", ",".join(map(str, part))]
            cmd += ["--batch", str(batch), "--block-ms", "200", "--drain", "--json"]
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env))
    summaries, cpu = [], 0.0
    for p in procs:
        assert p.stdout is not None
        out = p.stdout.read()
        _, status, usage = os.wait4(p.pid, 0)
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode != 0:
            raise SystemExit(f"dynrec consume exited with {p.returncode}:\n{log.read_text()[-3000:]}")
        summaries.append(json.loads(out))
        cpu += usage.ru_utime + usage.ru_stime
    return summaries, cpu, poll.finish()


def redis_facts(url: str, users: list[str]) -> dict[str, Any]:
    """Memory of the server and the bytes a user's history, state and event ids take (mean over
    `users`)."""
    import redis

    client = redis.Redis.from_url(url)
    info = client.info("memory")
    per: dict[str, float] = {}
    for kind in ("e", "s", "d"):
        sizes = [client.memory_usage(f"dynrec:{kind}:{u}") or 0 for u in users]
        per[kind] = sum(sizes) / max(1, len(sizes))
    client.close()
    return {
        "used_memory_mib": info["used_memory"] / 2**20,
        "history_bytes_per_user": per["e"],
        "state_bytes_per_user": per["s"],
        "event_ids_bytes_per_user": per["d"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="ml-1m")
    ap.add_argument("--models", nargs="+", default=["itemknn", "sasrec"])
    ap.add_argument("--model-dir", action="append", default=[], help="MODEL=DIR: a saved model to use")
    ap.add_argument("--sasrec-epochs", type=int, default=1, help="epochs of a SASRec trained here")
    ap.add_argument("--consumers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--events", type=int, default=None, help="a prefix of the stream (default: all)")
    ap.add_argument("--note", default="")
    ap.add_argument("--dry-run", action="store_true", help="print, do not write the results store")
    args = ap.parse_args()
    given = dict(s.split("=", 1) for s in args.model_dir)

    events = stream_events(args.dataset, args.events)
    users = sorted({e.user_id for e in events})
    sample = users[:: max(1, len(users) // 200)]
    print(f"{len(events):,} events of {len(users):,} users from {args.dataset}", flush=True)
    with tempfile.TemporaryDirectory(prefix="dynrec-consume-") as tmp_s:
        tmp = Path(tmp_s)
        for model in args.models:
            trained = ""
            if model in given:
                model_dir = Path(given[model])
            else:
                model_dir = tmp / model
                sets = [f"epochs={args.sasrec_epochs}"] if model == "sasrec" else []
                print(f"training {model} on {args.dataset}", flush=True)
                secs = train_model(model, args.dataset, sets, model_dir)
                trained = f"{model} trained here ({secs:.0f} s{', ' + ' '.join(sets) if sets else ''})"
            for n in args.consumers:
                rdir = tmp / f"redis-{model}-{n}"
                rdir.mkdir()
                with redis_server(rdir) as url:
                    pub_s = publish(url, events, args.partitions)
                    redis_cpu0, load0 = _redis_cpu(url), os.getloadavg()[0]
                    print(f"{model}, {n} consumer(s): published in {pub_s:.1f} s; consuming", flush=True)
                    summaries, cpu, samples = run_consumers(
                        model_dir, url, n, args.partitions, args.batch, tmp / "consumers.log"
                    )
                    redis_cpu, load1 = _redis_cpu(url) - redis_cpu0, os.getloadavg()[0]
                    facts = redis_facts(url, sample)
                total = len(events)
                applied = sum(s["applied"] for s in summaries)
                if applied != total:
                    raise SystemExit(f"applied {applied} of {total} events: {summaries}")
                t10, t90 = crossing(samples, 0.1 * total), crossing(samples, 0.9 * total)
                first = next(t for t, c in samples if c > 0)
                metrics = {
                    "events": total,
                    "events_per_s": 0.8 * total / (t90 - t10),
                    "overall_events_per_s": total / (samples[-1][0] - first),
                    "consumer_cpu_s_per_1k": 1000 * cpu / total,
                    "redis_cpu_s_per_1k": 1000 * redis_cpu / total,
                    "publish_events_per_s": total / pub_s,
                    "duplicates_skipped": sum(s["duplicates_skipped"] for s in summaries),
                    "dead_lettered": sum(s["dead_lettered"] for s in summaries),
                    "loadavg_before": load0,
                    "loadavg_after": load1,
                    "consumers": summaries,
                    **facts,
                }
                params = {
                    "dataset": args.dataset,
                    "model": model,
                    "consumers": n,
                    "partitions": args.partitions,
                    "batch": args.batch,
                    "events": total,
                    "prefix": args.events is not None,
                    "model_source": trained or "a saved model (--model-dir)",
                }
                note = (
                    "consumers, redis-server (appendonly, appendfsync always) and the poller share the cores; "
                    "persist_every 16, one torch thread per consumer"
                )
                if args.note:
                    note += "; " + args.note
                command = (
                    f"python -m benchmarks.consume --dataset {args.dataset} --models {model} --consumers {n}"
                )
                command += f" --partitions {args.partitions} --batch {args.batch}"
                command += f" --events {args.events}" if args.events is not None else ""
                command += f" --model-dir {model}=DIR" if model in given else ""
                rec = record(
                    "consume", f"{args.dataset}/{model}/consumers={n}", params, metrics, command, note=note
                )
                print(
                    f"{model}, {n} consumer(s): {metrics['events_per_s']:,.0f} events/s "
                    f"({metrics['consumer_cpu_s_per_1k']:.2f} consumer CPU s per 1k events)",
                    flush=True,
                )
                if args.dry_run:
                    print(json.dumps(rec, default=str)[:2000])
                else:
                    put(rec)
    if not args.dry_run:
        print("python -m benchmarks.pages  # to render the page")


def _redis_cpu(url: str) -> float:
    """CPU seconds redis-server has used (its pid from INFO server)."""
    import redis

    client = redis.Redis.from_url(url)
    pid = int(client.info("server")["process_id"])
    client.close()
    st = _stat(pid)
    return 0.0 if st is None else st[1]


if __name__ == "__main__":
    main()
