"""`dynrec consume` as real processes over a real ``redis-server``: two consumers share a stream split
into four partitions; one is killed with SIGKILL mid-stream and restarted. Every event is applied
exactly once — each user's stored history is the stream's events of that user in order, and the
cached states equal recomputation from it — bad entries are in the dead-letter stream with the
field and reason, and nothing else is lost or left pending."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import redis
import torch

from dynrec.data.events import Event
from dynrec.models.base import Recommender
from dynrec.online.session import OnlineRecommender
from dynrec.online.store.redis import RedisStore
from dynrec.service.consumer import dead_letter_stream, stream_of
from dynrec.service.redis_streams import publish_events
from tests.conftest import clustered_data
from tests.serve_process import itemknn_dir

N_USERS, PER_USER = 80, 60


def _consumer(model_dir: Path, url: str, name: str, ids: str, log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "dynrec.cli.main", "consume", str(model_dir), "--store", url]
    cmd += ["--stream", "ev", "--group", "g", "--consumer", name, "--partitions", "4"]
    cmd += ["--partition-ids", ids, "--batch", "20", "--block-ms", "100", "--claim-idle-ms", "1500"]
    cmd += ["--drain", "--json"]
    with log.open("ab") as out:
        return subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=out, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )


def _applied(store: RedisStore, users: list[str]) -> int:
    return sum(store.stamp(u).n_events for u in users)


def test_two_consumers_one_killed_and_restarted_apply_every_event_once(
    tmp_path: Path, redis_url: str
) -> None:
    model_dir = itemknn_dir(tmp_path, clustered_data(n_users=30, n_items=24, n_groups=3, per_user=10, seed=3))
    model = Recommender.load(model_dir)
    assert model.item_vocab is not None
    items = model.item_vocab.ids[1:]
    events = [
        Event(f"u{u}", items[(5 * u + 7 * j + j * j) % len(items)], 10 * j, "view", 1.0 + j % 2, f"{u}:{j}")
        for j in range(PER_USER)
        for u in range(N_USERS)
    ]
    client = redis.Redis.from_url(redis_url)
    bad = [
        ({"user_id": "u1", "item_id": "x", "timestamp": "yesterday"}, "timestamp"),
        ({"user_id": "u2", "timestamp": "5"}, "item_id"),
        ({"user_id": "u3", "item_id": "x", "timestamp": "5", "colour": "red"}, "colour"),
        ({"user_id": "u4", "item_id": "x", "timestamp": "5", "weight": "-2"}, "weight"),
    ]
    third = len(events) // 3
    publish_events(client, "ev", events[:third], partitions=4)
    for fields, _ in bad:
        client.xadd(stream_of("ev", fields["user_id"], 4), fields)  # type: ignore[arg-type]
    publish_events(client, "ev", events[third:], partitions=4)

    users_a = [f"u{u}" for u in range(N_USERS) if stream_of("ev", f"u{u}", 4) in ("ev:0", "ev:1")]
    log = tmp_path / "consumers.log"
    a = _consumer(model_dir, redis_url, "a", "0,1", log)
    b = _consumer(model_dir, redis_url, "b", "2,3", log)
    try:
        deadline = time.monotonic() + 120
        with RedisStore(redis_url) as store:
            while _applied(store, users_a) < len(users_a) * PER_USER // 3:  # A is mid-stream
                assert a.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.002)
            a.send_signal(signal.SIGKILL)
            a.wait(10)
            assert _applied(store, users_a) < len(users_a) * PER_USER  # killed before it finished
        a = _consumer(model_dir, redis_url, "a", "0,1", log)  # the same name: its own pending first
        out_a, _ = a.communicate(timeout=180)
        out_b, _ = b.communicate(timeout=180)
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
                p.wait(10)
    assert a.returncode == 0 and b.returncode == 0, log.read_text()[-3000:]
    sa, sb = json.loads(out_a), json.loads(out_b)
    assert sa["streams"] == ["ev:0", "ev:1"] and sb["streams"] == ["ev:2", "ev:3"]
    assert sb["duplicates_skipped"] == 0 and sa["dead_lettered"] + sb["dead_lettered"] <= len(bad)

    # nothing pending, nothing unread
    for s in ("ev:0", "ev:1", "ev:2", "ev:3"):
        (g,) = client.xinfo_groups(s)
        assert (g["pending"], g["lag"]) == (0, 0)
    # bad entries: each in the dead letters once, with the field and the reason
    dead = client.xrange(dead_letter_stream("ev"))
    assert sorted(f[b"field"].decode() for _, f in dead) == sorted(name for _, name in bad)
    for _, f in dead:
        assert f[b"reason"] and json.loads(f[b"entry"]) in [fields for fields, _ in bad]
    # every valid event exactly once, in each user's order; states equal recomputation
    with RedisStore(redis_url) as store:
        assert store.n_events() == len(events)
        online = OnlineRecommender(model, store)
        for u in range(N_USERS):
            user = f"u{u}"
            mine = [e for e in events if e.user_id == user]
            h = store.history(user)
            assert h.items == tuple(e.item_id for e in mine)
            assert h.timestamps.tolist() == [e.timestamp for e in mine]
            assert h.weights.tolist() == [e.weight for e in mine]
            state = store.get_state(user)
            assert state is not None and state.version == online.version
            torch.testing.assert_close(
                online.scores(user, exclude_seen=False), online.recompute_scores(user), rtol=1e-5, atol=1e-5
            )
    client.close()
