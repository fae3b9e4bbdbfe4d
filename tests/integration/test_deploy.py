"""The deployment of docs/deploy.md, small, on loopback, as real processes: a 3-node Redis Cluster
holds the state; a separate ``redis-server`` holds the event streams; two ``dynrec serve`` processes
on the cluster answer a round-robin client (the load balancer); one ``dynrec consume`` worker applies
the streams. Events arrive both ways — ``XADD`` by a producer and ``POST /v1/events`` through the
balancer — and afterwards:

* every event is stored once, each user's in the order it was sent;
* both servers answer every user exactly what the model recomputes from the stored history, and
  serve the same model version.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import redis

from dynrec.data.events import Event
from dynrec.models.base import Recommender
from dynrec.online.store import open_store
from dynrec.service.redis_streams import publish_events
from tests.conftest import clustered_data
from tests.integration.test_serve_redis import reference
from tests.serve_process import itemknn_dir, running_server

USERS = [f"d{u}" for u in range(12)] + ["u1", "u2"]  # u1, u2 are in the model's user vocabulary
PER_USER = 12


def test_servers_and_a_consumer_on_a_redis_cluster_agree(
    tmp_path: Path, redis_cluster_url: str, redis_url: str
) -> None:
    model_dir = itemknn_dir(tmp_path, clustered_data(n_users=30, n_items=24, n_groups=3, per_user=10, seed=5))
    model = Recommender.load(model_dir)
    assert model.item_vocab is not None
    items = model.item_vocab.ids[1:]
    streamed = [  # timestamps 1000.. by stream; 5000.. by HTTP: each user's order is by timestamp
        Event(u, items[(3 * k + 5 * j) % len(items)], 1000 + j, "view", 1.0, f"s{k}:{j}")
        for j in range(PER_USER)
        for k, u in enumerate(USERS)
    ]
    posted = [
        {
            "user_id": u,
            "item_id": items[(7 * k + j) % len(items)],
            "timestamp": 5000 + j,
            "event_id": f"h{k}:{j}",
        }
        for j in range(PER_USER)
        for k, u in enumerate(USERS)
    ]
    log = tmp_path / "deploy.log"
    consume = [
        sys.executable,
        "-m",
        "dynrec.cli.main",
        "consume",
        str(model_dir),
        "--store",
        redis_cluster_url,
    ]
    consume += ["--source", redis_url, "--stream", "ev", "--group", "g", "--partitions", "2"]
    consume += ["--batch", "20", "--block-ms", "100"]
    with (
        running_server(model_dir, redis_cluster_url, tmp_path / "a.log") as (_, url_a),
        running_server(model_dir, redis_cluster_url, tmp_path / "b.log") as (_, url_b),
        log.open("ab") as out,
    ):
        worker = subprocess.Popen(consume, stdout=out, stderr=subprocess.STDOUT, env={**os.environ})
        try:
            source = redis.Redis.from_url(redis_url)
            publish_events(source, "ev", streamed, partitions=2)
            source.close()
            balancer = itertools.cycle([url_a, url_b])
            with httpx.Client(timeout=10) as http:
                for a in range(0, len(posted), 8):  # round-robin, 8 events a request
                    r = http.post(f"{next(balancer)}/v1/events", json={"events": posted[a : a + 8]})
                    assert r.status_code == 200, r.text
            store = open_store(redis_cluster_url)
            want = len(streamed) + len(posted)
            deadline = time.monotonic() + 120
            while sum(store.stamp(u).n_events for u in USERS) < want:
                assert worker.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.05)
            histories = {u: store.history(u) for u in USERS}
            store.close()
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(30)
        assert worker.returncode == 0, log.read_text()[-3000:]

        assert model.user_vocab is not None
        known = set(model.user_vocab.ids)
        with httpx.Client(timeout=10) as http:
            versions = {http.get(f"{url}/healthz").json()["model_version"] for url in (url_a, url_b)}
            assert len(versions) == 1
            for u in USERS:
                h = histories[u]
                by_stream = [e.timestamp for e in streamed if e.user_id == u]
                by_http = [int(p["timestamp"]) for p in posted if p["user_id"] == u]
                ts = h.timestamps.tolist()
                new = ts[len(ts) - len(by_stream) - len(by_http) :]
                assert sorted(new) == sorted(by_stream + by_http), f"{u}: events lost or doubled"
                # the two sources interleave as they arrived; each keeps its own order
                assert [t for t in new if t < 5000] == by_stream and [
                    t for t in new if t >= 5000
                ] == by_http, u
                assert u in known or len(ts) == len(new), f"{u}: events before its first"
                expected, _ = reference(model, list(h.items), 10)
                for url in (url_a, url_b):
                    got = http.get(f"{url}/v1/users/{u}/recommendations?k=10").json()
                    assert [x["item_id"] for x in got["items"]] == expected, (u, url, json.dumps(got)[:300])
