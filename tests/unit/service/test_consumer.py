"""`dynrec consume` in one process, over a real ``redis-server``: stream entries become events by
the rules of ``POST /v1/events`` (bad ones dead-lettered with the field), a partitioned stream is
applied in each user's order, a batch a consumer appended but never acknowledged is taken over by
another consumer (``XAUTOCLAIM``) and skipped as already applied, and the group's backlog is seen."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis
import torch

from dynrec.data.events import Event
from dynrec.errors import DynrecError
from dynrec.models.base import Recommender
from dynrec.online.session import OnlineRecommender
from dynrec.online.store.redis import RedisStore
from dynrec.service.consumer import (
    BadEntry,
    Consumer,
    ConsumerSettings,
    Entry,
    EventSource,
    StreamBacklog,
    dead_letter_stream,
    entry_event,
    entry_fields,
    partition_of,
    partition_streams,
    stream_of,
)
from dynrec.service.redis_streams import RedisStreamSource, publish_events
from tests.conftest import clustered_data
from tests.serve_process import itemknn_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = clustered_data(n_users=30, n_items=24, n_groups=3, per_user=10, seed=2)
    return itemknn_dir(tmp_path_factory.mktemp("consume-model"), data)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def _entry(**fields: str) -> Entry:
    return Entry("s:1", "5-0", fields)


def test_entries_become_events_by_the_http_rules() -> None:
    e = entry_event(_entry(user_id="u", item_id="i", timestamp="12.9", weight="2", event_id="x1"))
    assert e == Event("u", "i", 12, "view", 2.0, "x1")
    e = entry_event(_entry(user_id="u", item_id="i", timestamp="7", event_type="click"))
    assert e == Event("u", "i", 7, "click", 1.0, "s:1/5-0")  # no event_id: the stream and entry id
    assert entry_event(Entry("s", "1-0", entry_fields(e))) == e
    cases = [
        ({"item_id": "i", "timestamp": "1"}, "user_id", "missing"),
        ({"user_id": "u", "item_id": "i", "timestamp": "1", "rating": "5"}, "rating", "unknown field"),
        ({"user_id": "u", "item_id": "i", "timestamp": "soon"}, "timestamp", "not a number"),
        ({"user_id": "u", "item_id": "i", "timestamp": "-1"}, "timestamp", "finite number of seconds"),
        ({"user_id": "u", "item_id": "i", "timestamp": "1", "weight": "0"}, "weight", "> 0"),
        ({"user_id": "u", "item_id": "a,b", "timestamp": "1"}, "item_id", "comma"),
        ({"user_id": " u", "item_id": "i", "timestamp": "1"}, "user_id", "whitespace"),
        ({"user_id": "u", "item_id": "i", "timestamp": "1", "event_type": "x" * 65}, "event_type", "64"),
        ({"user_id": "u", "item_id": "i", "timestamp": "1", "event_id": ""}, "event_id", "empty"),
    ]
    for fields, name, why in cases:
        with pytest.raises(BadEntry) as err:
            entry_event(_entry(**fields))
        assert err.value.field == name and why in err.value.reason, (fields, err.value)


def test_partitions_are_a_stable_hash_of_the_user() -> None:
    # CRC-32 of the UTF-8 bytes: the same in any process or language
    assert [partition_of(u, 4) for u in ("u1", "u2", "alice", "bob")] == [2, 0, 3, 0]
    assert partition_streams("ev", 1) == ["ev"] and partition_streams("ev", 3) == ["ev:0", "ev:1", "ev:2"]
    assert stream_of("ev", "alice", 4) == "ev:3" and stream_of("ev", "alice", 1) == "ev"


def _events(model: Recommender, n_users: int, per_user: int) -> list[Event]:
    """Interleaved events of `n_users` users (one unknown item among them), with event ids."""
    assert model.item_vocab is not None
    items = model.item_vocab.ids[1:]
    out = []
    for j in range(per_user):
        for u in range(n_users):
            item = "never-seen" if (u, j) == (1, 2) else items[(7 * u + 3 * j) % len(items)]
            out.append(Event(f"user{u}", item, 1000 + j, "click", 1.0 + (j % 3), f"e{u}-{j}"))
    return out


def _check_applied(store: RedisStore, model: Recommender, events: Sequence[Event]) -> None:
    """Each user's stored history is their events in order; states equal recomputation."""
    by_user: dict[str, list[Event]] = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append(e)
    assert sorted(store.users()) == sorted(by_user)
    online = OnlineRecommender(model, store)
    for user, evs in by_user.items():
        h = store.history(user)
        assert h.items == tuple(e.item_id for e in evs)
        assert h.timestamps.tolist() == [e.timestamp for e in evs]
        assert h.weights.tolist() == [e.weight for e in evs]
        assert h.event_types == tuple(e.event_type for e in evs)
        torch.testing.assert_close(
            online.scores(user, exclude_seen=False), online.recompute_scores(user), rtol=1e-5, atol=1e-5
        )


def test_a_partitioned_stream_is_applied_in_each_users_order_and_bad_entries_are_dead_lettered(
    model_dir: Path, redis_url: str, client: redis.Redis
) -> None:
    model = Recommender.load(model_dir)
    events = _events(model, 12, 9)
    publish_events(client, "ev", events[:50], partitions=3)
    client.xadd("ev:1", {"user_id": "user0", "item_id": "i1"})  # no timestamp
    client.xadd("ev:2", {"user_id": "user3", "item_id": "i1", "timestamp": "1", "rating": "5"})
    publish_events(client, "ev", events[50:], partitions=3)
    settings = ConsumerSettings(str(model_dir), redis_url, batch=7, block_ms=50)
    source = RedisStreamSource(redis_url, "ev", "g", "c1", partitions=3, claim_idle_ms=500)
    consumer = Consumer(settings, source)
    try:
        total = consumer.run(threading.Event(), drain=True)
        assert set(source.backlog().values()) == {StreamBacklog(0, 0)}
        assert total.applied == len(events) and total.dead_lettered == 2 and total.duplicates == 0
        version = next(iter(total.versions))
    finally:
        consumer.close()
    dead = client.xrange(dead_letter_stream("ev"))
    assert [(f[b"stream"], f[b"field"], f[b"reason"]) for _, f in dead] == [
        (b"ev:1", b"timestamp", b"missing"),
        (
            b"ev:2",
            b"rating",
            b"unknown field (fields: "
            + b", ".join(
                x.encode() for x in ("user_id", "item_id", "timestamp", "event_type", "weight", "event_id")
            )
            + b")",
        ),
    ]
    assert json.loads(dead[0][1][b"entry"]) == {"user_id": "user0", "item_id": "i1"}
    with RedisStore(redis_url) as store:
        _check_applied(store, model, events)
        assert store.current_version() == version
        state = store.get_state("user0")
        assert state is not None and state.n_events == 9  # checkpointed by the consumer


class _DiesBeforeAck:
    """A source whose consumer dies after appending a batch, before acknowledging it."""

    def __init__(self, inner: RedisStreamSource) -> None:
        self.inner = inner

    def claim(self, count: int) -> list[Entry]:
        return self.inner.claim(count)

    def read(self, count: int, block_ms: int) -> list[Entry]:
        return self.inner.read(count, block_ms)

    def ack(self, entries: Sequence[Entry]) -> None:
        raise ConnectionError("killed before XACK")

    def dead_letter(self, entries: Sequence[tuple[Entry, BadEntry]]) -> None:
        self.inner.dead_letter(entries)

    def rewind(self) -> None:
        self.inner.rewind()

    def backlog(self) -> dict[str, StreamBacklog]:
        return self.inner.backlog()

    def keep_alive(self) -> None:
        self.inner.keep_alive()

    def close(self) -> None:  # dead: its lease is not released, it expires
        pass


def test_a_dead_consumers_batch_is_taken_over_and_skipped_as_already_applied(
    model_dir: Path, redis_url: str, client: redis.Redis
) -> None:
    model = Recommender.load(model_dir)
    events = _events(model, 5, 6)
    publish_events(client, "ev", events)
    settings = ConsumerSettings(str(model_dir), redis_url, batch=12, block_ms=50)
    dying: EventSource = _DiesBeforeAck(RedisStreamSource(redis_url, "ev", "g", "a", claim_idle_ms=300))
    first = Consumer(settings, dying)
    with pytest.raises(ConnectionError):
        first.step()  # the first 12 events are appended, never acknowledged
    first.close()
    with RedisStore(redis_url) as store:
        assert store.n_events() == 12
    pending = client.xpending("ev", "g")
    assert pending["pending"] == 12 and pending["consumers"] == [{"name": b"a", "pending": 12}]
    # b waits for a's partition lease, then claims a's entries once idle (XAUTOCLAIM)
    source = RedisStreamSource(redis_url, "ev", "g", "b", claim_idle_ms=300)
    second = Consumer(settings, source)
    try:
        claimed = second.step()
        assert (claimed.entries, claimed.applied, claimed.duplicates) == (12, 0, 12)
        rest = second.run(threading.Event(), drain=True)
        assert (rest.applied, rest.duplicates) == (len(events) - 12, 0)
        assert second.metrics.registry.get_sample_value("dynrec_consume_duplicates_skipped_total") == 12
    finally:
        second.close()
    assert client.xpending("ev", "g")["pending"] == 0
    with RedisStore(redis_url) as store:
        _check_applied(store, model, events)
        assert store.n_events() == len(events)


def test_a_held_partition_is_refused_until_its_lease_expires(redis_url: str, client: redis.Redis) -> None:
    a = RedisStreamSource(redis_url, "ev", "g", "a", partitions=2, partition_ids=[1], claim_idle_ms=400)
    try:
        with pytest.raises(DynrecError, match=r"ev:1 \('a'\)"):
            RedisStreamSource(redis_url, "ev", "g", "b", partitions=2, claim_idle_ms=400, wait_s=0.2)
        other = RedisStreamSource(
            redis_url, "ev", "g", "b", partitions=2, partition_ids=[0], claim_idle_ms=400
        )
        other.close()
    finally:
        a.close()  # released: b takes both at once
    RedisStreamSource(redis_url, "ev", "g", "b", partitions=2, claim_idle_ms=400, wait_s=0.0).close()
    # a consumer that dies holds its partitions until the lease expires (claim_idle_ms)
    RedisStreamSource(client, "ev", "g", "dead", partitions=2, claim_idle_ms=400)  # never closed
    t0 = time.monotonic()
    RedisStreamSource(redis_url, "ev", "g", "b", partitions=2, claim_idle_ms=400, wait_s=5.0).close()
    assert 0.2 < time.monotonic() - t0 < 2.0


def test_http_events_with_an_event_id_apply_once(model_dir: Path, tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from dynrec.service import ServiceSettings, create_app

    settings = ServiceSettings(str(model_dir), store_url=f"sqlite:///{tmp_path / 'events.db'}")
    body = {"events": [{"user_id": "u", "item_id": "i1", "timestamp": 5, "event_id": "click-1"}]}
    with TestClient(create_app(settings)) as http:
        for _ in range(2):  # a retried request
            assert http.post("/v1/events", json=body).status_code == 200
        bad = http.post("/v1/events", json={"events": [{"user_id": "u", "item_id": "i1", "event_id": " x"}]})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][-1] == "event_id"
        assert [e["item_id"] for e in http.get("/v1/users/u").json()["history"]] == ["i1"]


def test_states_a_consumer_stepped_are_served_through_the_index(
    tmp_path: Path, redis_url: str, client: redis.Redis
) -> None:
    """ALS states written by `dynrec consume` are read by a service with ``ann``: each answer comes
    from the index (a one-cell IVF index, a flat scan: the exact items) and says so."""
    pytest.importorskip("faiss")
    from fastapi.testclient import TestClient

    from dynrec import jobs
    from dynrec.service import ServiceSettings
    from dynrec.service.app import create_app
    from dynrec.service.runtime import Runtime
    from tests.unit.service.test_app import _write_csv

    data = clustered_data(n_users=30, n_items=24, n_groups=3, per_user=10, seed=2)
    csv = _write_csv(data, tmp_path / "events.csv")
    model_dir = tmp_path / "als"
    jobs.train("als", jobs.prepare(str(csv)), config={"embedding_dim": 8, "num_threads": 1}, out=model_dir)
    model = Recommender.load(model_dir)
    events = [e for e in _events(model, 6, 5) if e.item_id != "never-seen"]
    publish_events(client, "ev", events)
    settings = ConsumerSettings(str(model_dir), redis_url, batch=10, block_ms=50)
    consumer = Consumer(settings, RedisStreamSource(redis_url, "ev", "g", "c1"))
    try:
        assert consumer.run(threading.Event(), drain=True).applied == len(events)
    finally:
        consumer.close()
    ann = ("nlist=1", "nprobe=1", "num_threads=1")
    served = [
        ServiceSettings(model_dir=str(model_dir), store_url=redis_url, **extra)  # type: ignore[arg-type]
        for extra in ({}, {"ann": "ivf", "ann_options": ann})
    ]
    with TestClient(create_app(served[0])) as c_exact, TestClient(create_app(served[1])) as c_ann:
        exact, approx = (c.app.state.runtime for c in (c_exact, c_ann))  # type: ignore[attr-defined]
        assert isinstance(exact, Runtime) and isinstance(approx, Runtime)
        for u in sorted({e.user_id for e in events}):
            want, got = exact.recommend_now(u, 5), approx.recommend_now(u, 5)
            assert (want.retrieval, got.retrieval) == ("exact", "ann:ivf") and got.items == want.items
            assert not set(got.items) & {e.item_id for e in events if e.user_id == u}
