"""Serve load: the real `dynrec serve` process driven over loopback HTTP.

The server is the real command (``python -m dynrec.cli.main serve MODEL_DIR --store URL --port P
--workers W``, a free loopback port), started once per store, its store seeded first with every
user's training history (`dynrec.jobs.seed_store`). The model is `--model-dir` (a saved model) or,
by default, ``itemknn`` trained here on ml-100k into a temporary folder (``--model sasrec --set
epochs=3`` trains SASRec instead: about 5 minutes on the shared 2-core machine).

The load generator is one asyncio process (this one) with a bounded pool of keep-alive HTTP/1.1
connections: by default a minimal client on asyncio streams (`RawPool`), or ``--client httpx``
(``httpx.AsyncClient`` with ``httpx.Limits``), which was measured to spend more CPU per request
than the server itself. Every phase has a fixed duration. Phases, in order:

* *warm-up* — one recommendation for every seeded user (builds and caches each user's state, as a
  server that has been up for a while has them); not measured.
* *recommendations, N clients* (``--clients``, default 1, 16, 64) — N clients each send
  ``GET /v1/users/{u}/recommendations?k=10`` for random seeded users, one after another, as fast
  as the server answers, for ``--duration`` seconds: throughput = 200 answers / duration, latency
  = send -> response received, per request.
* *open loop at the goal rate* — requests *scheduled* at a fixed rate (``--rate``, default the
  goal's 1,500/s) over at most 16 connections, whatever the answers do; latency counts from the
  scheduled send time, so a server (or generator) that falls behind shows it in the tail instead of
  silently slowing the arrivals (no coordinated omission). ``late_share`` = requests that could
  not be sent within 1 ms of their schedule (the generator itself was behind).
* *ingest* — ``--ingest-clients`` clients POST batches of ``--ingest-batch`` (100) events of random
  seeded users and known items, for ``--duration`` seconds: events/s = events acknowledged (200) /
  duration. Every acknowledged batch is durable (the service commits before the 2xx).
* *freshness* — event acknowledged -> the next recommendation reflects it, defined precisely:
  for a seeded user, GET their top 10 (``exclude_seen=true``) and take its first item X (X is
  unseen, else it would be excluded); send ``POST /v1/events`` with the single event (user, X) at
  t0; after its 200, GET the user's top 10 again, repeating until the list no longer holds X (the
  event is then part of the state that produced the list: X became a seen item); t1 = that GET's
  response received. freshness = t1 - t0 (one POST round trip + one GET round trip when the first
  GET after the ack already reflects it, which `reflected_first_get` counts). Measured idle
  (``--fresh-trials`` sequential trials) and again while 16 clients load the recommendations.

The machine has 2 cores: the load generator (this process) competes with the server for them.
Each phase records both sides' CPU use (seconds of CPU per second of wall time, from /proc: the
server process tree, and this process), so a generator-bound phase shows itself.

*Server CPU per request* (``server_cpu_ms_per_request`` of every phase): the server's CPU over
the phase divided by the answers it gave (for ingest also per event): the figure that holds while
the generator shares the cores.

*Side by side* (``--baseline-src DIR``): the same phases against a server run from another tree's
``src`` (e.g. a ``git worktree`` of an older commit) with the same Python, alternating baseline and
this tree for ``--rounds`` rounds, each run on a freshly seeded store; ``--baseline-block MODULE``
makes modules unimportable for the baseline server (packages the older code's environment did not
have). The record then holds each round's key figures of both (``pairs``) and their medians.

One record per (dataset, model, store, workers) in results/serve.json, with the goals of the
service issue beside the numbers (``goals``). Redis (``--stores redis``) is a throw-away
``redis-server`` started here, durable as the service documents it for production: append-only
file, ``appendfsync always``.

    python -m benchmarks.serve_load --dataset ml-100k --stores sqlite redis --duration 10
    python -m benchmarks.serve_load --model-dir DIR --stores sqlite --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import numpy as np

from benchmarks._common import put, record

GOALS = {
    "recommendations_per_s_at_16_clients": 1500.0,
    "p99_ms_at_16_clients": 50.0,
    "events_per_s": 20_000.0,
    "freshness_ms": 5.0,
}
"""The service issue's goals, stored beside the numbers."""

CLK = os.sysconf("SC_CLK_TCK")


# ---- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+system CPU seconds) of a process from /proc, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # after "pid (comm) "
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK


def tree_cpu(root: int) -> float:
    """CPU seconds used so far by `root` and every live descendant (uvicorn's worker processes)."""
    stats = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st is not None:
                stats[int(entry)] = st
    total, todo, seen = 0.0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in stats:
            continue
        seen.add(pid)
        total += stats[pid][1]
        todo += [p for p, (ppid, _) in stats.items() if ppid == pid]
    return total


def own_cpu() -> float:
    return time.process_time()


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A throw-away durable ``redis-server`` (append-only, fsync on every write) on a free port."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    cmd = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes"]
    cmd += ["--appendfsync", "always", "--dir", str(workdir), "--logfile", "redis.log"]
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        deadline = time.monotonic() + 15
        while True:
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("redis-server did not start") from None
                time.sleep(0.05)
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def dynrec_server(
    model_dir: Path,
    store: str,
    workers: int,
    log: Path,
    launcher: list[str],
    env: dict[str, str] | None = None,
) -> Iterator[tuple[int, str]]:
    """The real ``dynrec serve`` process (pid, base URL), ready; always stopped. `launcher`: the
    command before ``serve`` (default: this Python, ``-m dynrec.cli.main``); `env`: its
    environment (default: this process's)."""
    port = free_port()
    cmd = [*launcher, "serve", str(model_dir), "--store", store]
    cmd += ["--port", str(port), "--workers", str(workers)]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"dynrec serve exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"dynrec serve did not become ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield proc.pid, url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)  # the whole group: uvicorn's workers too
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


# ---- measurements --------------------------------------------------------------------------------


def summary(ms: list[float]) -> dict[str, float]:
    if not ms:
        return {"n": 0}
    a = np.asarray(ms)
    return {
        "n": len(ms),
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "max_ms": float(a.max()),
    }


@dataclass
class Phase:
    """What one phase measured: answers (by status), latencies, wall time, both sides' CPU."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    seconds: float = 0.0
    server_cpu: float = 0.0
    generator_cpu: float = 0.0

    def count(self, status: int) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def report(self, **extra: Any) -> dict[str, Any]:
        return {
            **summary(self.latencies),
            "ok": self.ok,
            "non_200": {str(k): v for k, v in sorted(self.statuses.items()) if k != 200},
            "transport_errors": self.errors,
            "seconds": self.seconds,
            "server_cpu_per_s": self.server_cpu / self.seconds if self.seconds else 0.0,
            "generator_cpu_per_s": self.generator_cpu / self.seconds if self.seconds else 0.0,
            "server_cpu_ms_per_request": 1e3 * self.server_cpu / self.ok if self.ok else None,
            **extra,
        }


async def measured(server_pid: int, body: Callable[[Phase], Awaitable[None]]) -> Phase:
    """Run `body` and record wall time and the CPU both processes used meanwhile."""
    ph = Phase()
    s0, g0, t0 = tree_cpu(server_pid), own_cpu(), time.perf_counter()
    await body(ph)
    ph.seconds = time.perf_counter() - t0
    ph.server_cpu, ph.generator_cpu = tree_cpu(server_pid) - s0, own_cpu() - g0
    return ph


class TransportError(Exception):
    """The connection failed (refused, reset, closed mid-answer)."""


class Pool:
    """At most `connections` keep-alive HTTP/1.1 connections to the server; ``request`` waits for a
    free one. Two implementations: `RawPool` (default) and `HttpxPool`."""

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        raise NotImplementedError

    async def aclose(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Pool:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class HttpxPool(Pool):
    """``httpx.AsyncClient`` with a connection limit: the usual Python client, but it spends more
    CPU per request than the server does (measured: about 4 ms), so on 2 shared cores it limits
    what can be measured."""

    def __init__(self, url: str, connections: int) -> None:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        self.http = httpx.AsyncClient(base_url=url, limits=limits, timeout=30)

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"content-type": "application/json"} if body is not None else None
        try:
            r = await self.http.request(method, path, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise TransportError(str(exc)) from exc
        return r.status_code, r.content

    async def aclose(self) -> None:
        await self.http.aclose()


class RawPool(Pool):
    """A minimal HTTP/1.1 client on asyncio streams (keep-alive, ``Content-Length`` bodies — what
    uvicorn sends for every JSON answer): a few tens of microseconds of CPU per request, so the
    generator takes less of the 2 cores from the server."""

    def __init__(self, url: str, connections: int) -> None:
        hostport = url.split("://", 1)[1].rstrip("/")
        host, port = hostport.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None] = asyncio.Queue()
        for _ in range(connections):
            self.free.put_nowait(None)  # connected on first use
        self.open: set[asyncio.StreamWriter] = set()

    async def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        conn = await self.free.get()
        try:
            if conn is None:
                conn = await asyncio.open_connection(self.host, self.port)
                self.open.add(conn[1])
            reader, writer = conn
            head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            if body is not None:
                head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode() + b"\r\n" + (body or b""))
            raw = await reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            length = 0
            for line in lines[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            data = await reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            if conn is not None:
                conn[1].close()
                self.open.discard(conn[1])
            conn = None
            raise TransportError(str(exc)) from exc
        finally:
            self.free.put_nowait(conn)
        return status, data

    async def aclose(self) -> None:
        for w in self.open:
            w.close()
        self.open.clear()


CLIENTS: dict[str, type[Pool]] = {"raw": RawPool, "httpx": HttpxPool}
CLIENT = ["raw"]
"""The pool class in use (``--client``)."""


def client(url: str, connections: int) -> Pool:
    return CLIENTS[CLIENT[0]](url, connections)


def rec_path(user: str) -> str:
    return f"/v1/users/{quote(user, safe='')}/recommendations?k=10"


async def get_rec(http: Pool, user: str, ph: Phase | None) -> dict[str, Any] | None:
    t0 = time.perf_counter()
    try:
        status, body = await http.request("GET", rec_path(user))
    except TransportError:
        if ph is not None:
            ph.errors += 1
        return None
    if ph is not None:
        ph.latencies.append((time.perf_counter() - t0) * 1e3)
        ph.count(status)
    return dict(json.loads(body)) if status == 200 else None


async def closed_loop(
    url: str, users: list[str], clients: int, duration: float, ph: Phase, seed: int
) -> None:
    """`clients` clients, each sending its next request when its previous answer arrived."""
    end = time.perf_counter() + duration
    async with client(url, clients) as http:

        async def one(j: int) -> None:
            rng = random.Random(seed * 1000 + j)
            while time.perf_counter() < end:
                await get_rec(http, rng.choice(users), ph)

        await asyncio.gather(*(one(j) for j in range(clients)))


async def open_loop(
    url: str,
    users: list[str],
    rate: float,
    connections: int,
    duration: float,
    ph: Phase,
    late: list[int],
    abandoned: list[int],
) -> None:
    """Requests scheduled every 1/rate s for `duration` s, at most `connections` in flight; each
    latency counts from its scheduled time (see the module docstring)."""
    rng = random.Random(7)
    sem = asyncio.Semaphore(connections)
    async with client(url, connections) as http:

        async def one(at: float, user: str) -> None:
            async with sem:
                if time.perf_counter() - at > 1e-3:
                    late[0] += 1
                try:
                    status, _ = await http.request("GET", rec_path(user))
                except TransportError:
                    ph.errors += 1
                    return
                ph.latencies.append((time.perf_counter() - at) * 1e3)
                ph.count(status)

        start = time.perf_counter()
        n = int(rate * duration)
        tasks = []
        for j in range(n):
            at = start + j / rate
            delay = at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(at, rng.choice(users))))
        # bounded: what has not finished `duration` s after the last scheduled send is abandoned
        _, unfinished = await asyncio.wait(tasks, timeout=duration)
        for t in unfinished:
            t.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        abandoned[0] = len(unfinished)


async def ingest(
    url: str, users: list[str], items: list[str], clients: int, batch: int, duration: float, ph: Phase
) -> None:
    """`clients` clients POSTing batches of `batch` events back to back for `duration` s."""
    end = time.perf_counter() + duration
    async with client(url, clients) as http:

        async def one(j: int) -> None:
            rng = random.Random(100 + j)
            while time.perf_counter() < end:
                now = int(time.time())
                events = [
                    {"user_id": rng.choice(users), "item_id": rng.choice(items), "timestamp": now}
                    for _ in range(batch)
                ]
                payload = json.dumps({"events": events}).encode()
                t0 = time.perf_counter()
                try:
                    status, _ = await http.request("POST", "/v1/events", payload)
                except TransportError:
                    ph.errors += 1
                    continue
                ph.latencies.append((time.perf_counter() - t0) * 1e3)
                ph.count(status)

        await asyncio.gather(*(one(j) for j in range(clients)))


async def freshness(url: str, users: list[str], trials: int, ph: Phase, out: dict[str, list[float]]) -> None:
    """`trials` sequential freshness probes (see the module docstring) on their own connection."""
    rng = random.Random(11)
    async with client(url, 1) as http:
        for _ in range(trials):
            user = rng.choice(users)
            before = await get_rec(http, user, None)
            if not before or not before["items"]:
                continue
            item = before["items"][0]["item_id"]
            t0 = time.perf_counter()
            ev = {"events": [{"user_id": user, "item_id": item, "timestamp": int(time.time())}]}
            try:
                status, _ = await http.request("POST", "/v1/events", json.dumps(ev).encode())
            except TransportError:
                ph.errors += 1
                continue
            t_ack = time.perf_counter()
            ph.count(status)
            if status != 200:
                continue
            gets = 0
            while gets < 100:
                gets += 1
                after = await get_rec(http, user, None)
                if after is not None and item not in [x["item_id"] for x in after["items"]]:
                    break
            t1 = time.perf_counter()
            ph.latencies.append((t1 - t0) * 1e3)
            out["ack_ms"].append((t_ack - t0) * 1e3)
            out["gets"].append(float(gets))


async def drive(
    pid: int, url: str, users: list[str], items: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    warm = Phase()
    sem = asyncio.Semaphore(16)
    async with client(url, 16) as http:

        async def warm_one(u: str) -> None:
            async with sem:
                await get_rec(http, u, warm)

        await asyncio.gather(*(warm_one(u) for u in users))
    out["warmup"] = {"users": len(users), "seconds": time.perf_counter() - t0, "ok": warm.ok}
    print(f"  warm-up: {len(users)} users in {out['warmup']['seconds']:.1f} s", flush=True)

    recs: dict[str, Any] = {}
    for c in args.clients:
        ph = await measured(pid, lambda p, c=c: closed_loop(url, users, c, args.duration, p, seed=c))
        recs[str(c)] = ph.report(per_s=ph.ok / ph.seconds)
        r = recs[str(c)]
        print(
            f"  {c:>3} clients: {r['per_s']:,.0f} rec/s p50 {r.get('p50_ms', 0):.1f} p99 "
            f"{r.get('p99_ms', 0):.1f} ms; cpu server {r['server_cpu_per_s']:.2f} "
            f"generator {r['generator_cpu_per_s']:.2f}",
            flush=True,
        )
    out["recommendations"] = recs

    late, abandoned = [0], [0]
    ph = await measured(
        pid, lambda p: open_loop(url, users, args.rate, 16, args.duration, p, late, abandoned)
    )
    n = int(args.rate * args.duration)
    out["open_loop"] = ph.report(
        rate=args.rate,
        connections=16,
        scheduled=n,
        per_s=ph.ok / ph.seconds,
        late_share=late[0] / max(1, n),
        abandoned=abandoned[0],
    )
    r = out["open_loop"]
    print(
        f"  open loop {args.rate:,.0f}/s: {r['per_s']:,.0f} rec/s p50 {r.get('p50_ms', 0):.1f} p99 "
        f"{r.get('p99_ms', 0):.1f} ms late {r['late_share']:.2f}",
        flush=True,
    )

    ph = await measured(
        pid, lambda p: ingest(url, users, items, args.ingest_clients, args.ingest_batch, args.duration, p)
    )
    out["ingest"] = ph.report(
        clients=args.ingest_clients,
        batch=args.ingest_batch,
        events_per_s=ph.ok * args.ingest_batch / ph.seconds,
        server_cpu_ms_per_event=1e3 * ph.server_cpu / (ph.ok * args.ingest_batch) if ph.ok else None,
    )
    cpu = out["ingest"]["server_cpu_ms_per_event"]
    print(
        f"  ingest: {out['ingest']['events_per_s']:,.0f} events/s"
        + (f", server CPU {cpu:.3f} ms/event" if cpu is not None else ""),
        flush=True,
    )

    for name, load in (("freshness_idle", 0), ("freshness_16_clients", 16)):
        extra: dict[str, list[float]] = {"ack_ms": [], "gets": []}

        async def probe(p: Phase, load: int = load, extra: dict[str, list[float]] = extra) -> None:
            if not load:
                await freshness(url, users, args.fresh_trials, p, extra)
                return
            bg = asyncio.create_task(closed_loop(url, users, load, 3600.0, Phase(), seed=99))
            try:
                await freshness(url, users, args.fresh_trials, p, extra)
            finally:
                bg.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await bg

        ph = await measured(pid, probe)
        gets = extra["gets"]
        out[name] = ph.report(
            background_clients=load,
            ack=summary(extra["ack_ms"]),
            reflected_first_get=sum(g == 1 for g in gets) / max(1, len(gets)),
            max_gets=max(gets, default=0),
        )
        r = out[name]
        print(
            f"  {name}: p50 {r.get('p50_ms', 0):.1f} p99 {r.get('p99_ms', 0):.1f} ms, first GET reflects "
            f"{r['reflected_first_get']:.0%}",
            flush=True,
        )
    return out


# ---- the run -------------------------------------------------------------------------------------


def train_model(model: str, dataset: str, sets: list[str], out: Path) -> float:
    from dynrec import jobs

    overrides = dict(s.split("=", 1) for s in sets)
    t0 = time.perf_counter()
    jobs.train(model, jobs.prepare(dataset), overrides=overrides or None, out=out)
    return time.perf_counter() - t0


def seeded(model_dir: Path, url: str) -> tuple[list[str], list[str], int]:
    """Seed the store with every user's training history; (users, the model's items, events)."""
    from dynrec import jobs
    from dynrec.models.base import Recommender
    from dynrec.online.store import open_store

    store = open_store(url)
    try:
        info = jobs.seed_store(model_dir, store, replace=True)
        model = Recommender.load(model_dir)
        assert model.user_vocab is not None and model.item_vocab is not None
        users = [u for u in model.user_vocab.ids if len(store.history(u, 1))]
        return users, list(model.item_vocab.ids), info.events
    finally:
        close = getattr(store, "close", None)
        if close is not None:
            close()


KEY_FIGURES = (
    "rec_per_s_1",
    "rec_per_s_16",
    "p99_ms_16",
    "server_cpu_ms_per_rec_1",
    "server_cpu_ms_per_rec_16",
    "events_per_s",
    "server_cpu_ms_per_event",
    "freshness_p50_ms",
)
"""What a side-by-side run compares (`key_figures`)."""


def key_figures(m: dict[str, Any]) -> dict[str, float | None]:
    """The figures of one run that `KEY_FIGURES` names (None where the run has no such phase)."""
    recs, ing = m["recommendations"], m["ingest"]
    r1, r16 = recs.get("1", {}), recs.get("16", {})
    return {
        "rec_per_s_1": r1.get("per_s"),
        "rec_per_s_16": r16.get("per_s"),
        "p99_ms_16": r16.get("p99_ms"),
        "server_cpu_ms_per_rec_1": r1.get("server_cpu_ms_per_request"),
        "server_cpu_ms_per_rec_16": r16.get("server_cpu_ms_per_request"),
        "events_per_s": ing.get("events_per_s"),
        "server_cpu_ms_per_event": ing.get("server_cpu_ms_per_event"),
        "freshness_p50_ms": m["freshness_idle"].get("p50_ms"),
    }


def medians(runs: list[dict[str, float | None]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for k in KEY_FIGURES:
        vals = [r[k] for r in runs if r.get(k) is not None]
        out[k] = float(np.median(vals)) if vals else None
    return out


def blocker_dir(root: Path, modules: list[str]) -> Path:
    """A folder of modules that raise ImportError (put first on the baseline server's path)."""
    root.mkdir(parents=True, exist_ok=True)
    for name in modules:
        (root / f"{name}.py").write_text(f"raise ImportError('{name} is left out of the baseline')\n")
    return root


@dataclass
class Variant:
    """One code tree the server runs from: a name, its environment (None: this process's)."""

    name: str
    env: dict[str, str] | None


def run_once(
    variant: Variant, kind: str, model_dir: Path, tmp: Path, args: argparse.Namespace, tag: str
) -> tuple[dict[str, Any], int, int]:
    """Seed a fresh store of `kind`, serve it from `variant`'s code, drive every phase; (metrics,
    seeded users, seeded events)."""
    with contextlib.ExitStack() as stack:
        if kind == "redis":
            rdir = tmp / f"redis-{tag}"
            rdir.mkdir(exist_ok=True)
            url = stack.enter_context(redis_server(rdir))
        else:
            url = f"sqlite:///{tmp / f'events-{tag}.db'}"
        users, items, n_seeded = seeded(model_dir, url)
        print(f"{variant.name}: {kind} / {args.workers} worker(s): {len(users)} users seeded", flush=True)
        log = tmp / f"server-{kind}-{tag}.log"
        pid, base = stack.enter_context(
            dynrec_server(model_dir, url, args.workers, log, args.launcher, variant.env)
        )
        return asyncio.run(drive(pid, base, users, items, args)), len(users), n_seeded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", type=Path, default=None, help="a saved model (default: train one here)")
    ap.add_argument("--model", default="itemknn", help="model trained when no --model-dir is given")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="KEY=VALUE for the trained model")
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--stores", nargs="+", default=["sqlite"], choices=["sqlite", "redis"])
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured phase")
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--rate", type=float, default=GOALS["recommendations_per_s_at_16_clients"])
    ap.add_argument("--client", choices=sorted(CLIENTS), default="raw", help="load generator's HTTP client")
    ap.add_argument("--ingest-clients", type=int, default=4)
    ap.add_argument("--ingest-batch", type=int, default=100)
    ap.add_argument("--fresh-trials", type=int, default=200)
    ap.add_argument(
        "--launcher",
        nargs="+",
        default=[sys.executable, "-m", "dynrec.cli.main"],
        help="the command before `serve` (e.g. a profiling wrapper around dynrec's CLI)",
    )
    ap.add_argument(
        "--baseline-src",
        type=Path,
        default=None,
        help="another tree's src folder: its server runs the same phases, alternating with this tree's",
    )
    ap.add_argument("--baseline-name", default="baseline", help="how the record names the baseline")
    ap.add_argument(
        "--baseline-block",
        nargs="*",
        default=[],
        help="modules the baseline server cannot import (packages its environment did not have)",
    )
    ap.add_argument("--rounds", type=int, default=1, help="side by side: rounds of baseline + this tree")
    ap.add_argument("--note", default="", help="added to each record's note")
    ap.add_argument("--dry-run", action="store_true", help="print, do not write the results store")
    args = ap.parse_args()
    CLIENT[0] = args.client

    with tempfile.TemporaryDirectory(prefix="dynrec-serve-load-") as tmp_s:
        tmp = Path(tmp_s)
        trained_s = None
        if args.model_dir is None:
            model_dir = tmp / "model"
            print(f"training {args.model} on {args.dataset} into a temporary folder", flush=True)
            trained_s = train_model(args.model, args.dataset, args.sets, model_dir)
        else:
            model_dir = args.model_dir
        from dynrec.models.base import Recommender

        model_name = Recommender.load(model_dir).name
        this = Variant("this tree", None)
        baseline = None
        if args.baseline_src is not None:
            path = [str(args.baseline_src.resolve())]
            if args.baseline_block:
                path.insert(0, str(blocker_dir(tmp / "blocked", args.baseline_block)))
            baseline = Variant(args.baseline_name, {**os.environ, "PYTHONPATH": os.pathsep.join(path)})
        for kind in args.stores:
            pairs: list[dict[str, Any]] = []
            metrics: dict[str, Any] = {}
            n_users = n_seeded = 0
            for r in range(args.rounds if baseline is not None else 1):
                pair: dict[str, Any] = {}
                order = [this] if baseline is None else ([baseline, this] if r % 2 == 0 else [this, baseline])
                for v in order:
                    m, n_users, n_seeded = run_once(v, kind, model_dir, tmp, args, f"{r}-{len(pair)}")
                    pair["baseline" if v is baseline else "this"] = key_figures(m)
                    if v is this:
                        metrics = m
                pairs.append(pair)
            if baseline is not None:
                metrics["side_by_side"] = {
                    "baseline": args.baseline_name,
                    "baseline_blocked": args.baseline_block,
                    "pairs": pairs,
                    "median": {
                        "baseline": medians([p["baseline"] for p in pairs]),
                        "this": medians([p["this"] for p in pairs]),
                    },
                }
            params = {
                "dataset": args.dataset,
                "model": model_name,
                "store": kind,
                "workers": args.workers,
                "seeded_users": n_users,
                "seeded_events": n_seeded,
                "duration_s": args.duration,
                "client": args.client,
                "model_source": (
                    f"{args.model} trained here on {args.dataset} ({trained_s:.0f} s)"
                    + (f" with {' '.join(args.sets)}" if args.sets else "")
                    if trained_s is not None
                    else "a saved model (--model-dir)"
                ),
            }
            metrics["goals"] = GOALS
            metrics["met"] = goals_met(metrics)
            note = (
                f"load generator ({args.client} HTTP client, one asyncio process) and server share the 2 cores; "
                "store "
                + ("redis-server appendonly, appendfsync always" if kind == "redis" else "SQLite WAL")
            )
            if args.note:
                note += "; " + args.note
            command = "python -m benchmarks.serve_load" + (
                " --model-dir DIR" if args.model_dir is not None else f" --model {args.model}"
            )
            command += "".join(f" --set {s}" for s in args.sets)
            command += f" --client {args.client}" if args.client != "raw" else ""
            command += f" --dataset {args.dataset} --stores {kind} --workers {args.workers} --duration {args.duration:g}"
            if args.clients != [1, 16, 64]:
                command += f" --clients {' '.join(map(str, args.clients))}"
            if args.fresh_trials != 200:
                command += f" --fresh-trials {args.fresh_trials}"
            if baseline is not None:
                command += f" --baseline-src DIR --rounds {args.rounds}"
                command += f" --baseline-block {' '.join(args.baseline_block)}" if args.baseline_block else ""
            rec = record(
                "serve",
                f"{args.dataset}/{model_name}/{kind}/workers={args.workers}",
                params,
                metrics,
                command,
                note=note,
            )
            if args.dry_run:
                print(json.dumps(rec.get("metrics", {}).get("side_by_side", {}), indent=1))
            else:
                put(rec)
    if not args.dry_run:
        print("python -m benchmarks.pages  # to render the page")


def goals_met(m: dict[str, Any]) -> dict[str, bool]:
    r16 = m["recommendations"].get("16", {})
    return {
        "recommendations_per_s_at_16_clients": r16.get("per_s", 0.0)
        >= GOALS["recommendations_per_s_at_16_clients"],
        "p99_ms_at_16_clients": r16.get("p99_ms", float("inf")) <= GOALS["p99_ms_at_16_clients"],
        "events_per_s": m["ingest"]["events_per_s"] >= GOALS["events_per_s"],
        "freshness_ms": m["freshness_idle"].get("p50_ms", float("inf")) <= GOALS["freshness_ms"],
    }


if __name__ == "__main__":
    main()
