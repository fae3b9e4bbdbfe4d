"""`dynrec serve --store redis://...` as real processes on free loopback ports, over a real
``redis-server`` started durable (append-only file, fsync on every write):

* it comes up and the very next recommendation follows a posted event;
* killed with SIGKILL during sustained ingest — and Redis killed too, as in a machine crash — then
  both restarted on the same data: every event the server acknowledged (2xx) is stored;
* two server processes on the same Redis, written to concurrently for the same users, lose no
  acknowledged event, and each serves exactly the scores recomputed from the stored history
  (``model.recommend`` on the history read back from Redis).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from dynrec import jobs
from dynrec.data.query import QueryBatch
from dynrec.models.base import Recommender
from dynrec.online.store.redis import RedisStore
from tests.conftest import clustered_data
from tests.redis_server import RedisServer, require_redis_server
from tests.serve_process import running_server

N_ITEMS = 24


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-redis-model")
    data = clustered_data(n_users=30, n_items=N_ITEMS, n_groups=3, per_user=10, seed=2)
    users = data.user_vocab.to_ids(data.users)
    items = data.item_vocab.to_ids(data.items)
    rows = [f"{u},{i},{int(t)}" for u, i, t in zip(users, items, data.timestamps.tolist(), strict=True)]
    (root / "events.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    jobs.train("itemknn", jobs.prepare(str(root / "events.csv")), out=root / "model")
    return root / "model"


@pytest.fixture
def redis_durable() -> Iterator[RedisServer]:
    require_redis_server()
    with RedisServer(durable=True) as srv:
        yield srv


def reference(model: Recommender, history: list[str], k: int) -> tuple[list[str], list[float]]:
    """Top `k` (items, scores) recomputed by the model from a whole history (seen items excluded)."""
    assert model.item_vocab is not None
    idx = model.item_vocab.lookup(history, policy="skip").astype(np.int64)
    idx = idx[idx > 0]
    q = QueryBatch(np.zeros(1, np.int64), np.array([0, idx.size], np.int64), idx)
    top, vals = model.recommend(q, k=k)
    keep = torch.isfinite(vals[0])
    return model.item_vocab.to_ids(top[0][keep].numpy()), [float(v) for v in vals[0][keep]]


def ingest_until(
    url: str, stop: threading.Event, users: list[str], first_ts: int, acked: list[tuple[str, int]]
) -> None:
    """POST batches of 20 events (unique timestamps from `first_ts`) round-robin over `users` until
    `stop` or the server goes away; `acked` gets (user, timestamp) of every event answered 200."""
    n = first_ts
    with httpx.Client(base_url=url, timeout=10) as c:
        while not stop.is_set():
            batch = [(users[(n + j) % len(users)], n + j) for j in range(20)]
            events = [{"user_id": u, "item_id": f"i{t % N_ITEMS + 1}", "timestamp": t} for u, t in batch]
            n += 20
            try:
                r = c.post("/v1/events", json={"events": events})
            except httpx.TransportError:
                return
            if r.status_code == 200:
                acked.extend(batch)


def wait_for(acked: list[tuple[str, int]], n: int, thread: threading.Thread) -> None:
    deadline = time.monotonic() + 30
    while len(acked) < n and time.monotonic() < deadline and thread.is_alive():
        time.sleep(0.05)


def test_serve_on_redis_reflects_events_and_survives_kill9(
    model_dir: Path, redis_durable: RedisServer, tmp_path: Path
) -> None:
    model = Recommender.load(model_dir)
    log = tmp_path / "server.log"
    acked: list[tuple[str, int]] = []
    with (
        running_server(model_dir, redis_durable.url, log) as (proc, url),
        httpx.Client(base_url=url, timeout=10) as http,
    ):
        assert http.get("/healthz").json()["store"] == "redis"
        assert http.get("/v1/users/r1/recommendations?k=5").json()["fallback"] == "popular"
        history: list[str] = []
        for item in ("i3", "i17", "i4"):
            r = http.post("/v1/events", json={"events": [{"user_id": "r1", "item_id": item}]})
            assert r.status_code == 200 and r.json() == {"accepted": 1, "unknown_items": 0, "shifts": []}
            history.append(item)
            got = http.get("/v1/users/r1/recommendations?k=5").json()
            assert got["fallback"] is None
            assert [x["item_id"] for x in got["items"]] == reference(model, history, 5)[0]

        stop = threading.Event()
        thread = threading.Thread(target=ingest_until, args=(url, stop, ["k0", "k1", "k2"], 0, acked))
        thread.start()
        try:
            wait_for(acked, 300, thread)
            proc.send_signal(signal.SIGKILL)  # requests in flight
            proc.wait(10)
            redis_durable.kill()  # and the store's process, as in a crash of the machine
        finally:
            stop.set()
            thread.join(30)
    assert len(acked) >= 300, log.read_text()[-2000:]

    redis_durable.start()  # same port and folder: the append-only file is replayed
    with (
        running_server(model_dir, redis_durable.url, log) as (_, url),
        httpx.Client(base_url=url, timeout=10) as http,
    ):
        for user in ("k0", "k1", "k2"):
            stored = http.get(f"/v1/users/{user}?limit=10000").json()["history"]
            have = [e["timestamp"] for e in stored]
            assert len(have) == len(set(have)), f"{user}: an event stored twice"
            missing = [t for u, t in acked if u == user and t not in set(have)]
            assert not missing, f"{user}: {len(missing)} acknowledged events lost, e.g. {missing[:5]}"
            got = http.get(f"/v1/users/{user}/recommendations?k=5").json()
            hist_items = [e["item_id"] for e in stored]
            assert [x["item_id"] for x in got["items"]] == reference(model, hist_items, 5)[0]
        assert [e["item_id"] for e in http.get("/v1/users/r1").json()["history"]] == ["i3", "i17", "i4"]


def test_two_servers_on_one_redis_lose_nothing_and_agree_with_recomputation(
    model_dir: Path, redis_durable: RedisServer, tmp_path: Path
) -> None:
    model = Recommender.load(model_dir)
    users = ["s0", "s1", "s2", "u3"]  # u3 is also in the model's user vocabulary
    acked_a: list[tuple[str, int]] = []
    acked_b: list[tuple[str, int]] = []
    with (
        running_server(model_dir, redis_durable.url, tmp_path / "a.log") as (_, url_a),
        running_server(model_dir, redis_durable.url, tmp_path / "b.log") as (_, url_b),
    ):
        with httpx.Client(timeout=10) as http:  # both have states of every user before the race
            for url in (url_a, url_b):
                for u in users:
                    assert http.get(f"{url}/v1/users/{u}/recommendations").status_code == 200
        stop = threading.Event()
        threads = [
            threading.Thread(target=ingest_until, args=(url_a, stop, users, 0, acked_a)),
            threading.Thread(target=ingest_until, args=(url_b, stop, users, 10_000_000, acked_b)),
        ]
        for t in threads:
            t.start()
        try:
            wait_for(acked_a, 400, threads[0])
            wait_for(acked_b, 400, threads[1])
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        assert len(acked_a) >= 400 and len(acked_b) >= 400

        store = RedisStore(redis_durable.url)
        try:
            stored = {u: store.history(u) for u in users}
        finally:
            store.close()
        with httpx.Client(timeout=10) as http:
            for u in users:
                ts = stored[u].timestamps.tolist()
                assert len(ts) == len(set(ts)), f"{u}: an event stored twice"
                want = {t for v, t in acked_a + acked_b if v == u}
                assert want <= set(ts), f"{u}: {len(want - set(ts))} acknowledged events lost"
                items, scores = reference(model, list(stored[u].items), 10)
                for url in (url_a, url_b):  # each server caught up with the other's writes
                    got = http.get(f"{url}/v1/users/{u}/recommendations?k=10").json()
                    assert [x["item_id"] for x in got["items"]] == items, (u, url)
                    np.testing.assert_allclose(
                        [x["score"] for x in got["items"]], scores, rtol=1e-5, atol=1e-6
                    )
