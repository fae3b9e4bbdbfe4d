"""Stores chosen by URL, event weights, listing/iteration, and the Redis store against a real
``redis-server`` (tests/redis_server.py; skipped with a message when it is not installed):
several clients (workers) sharing one server, atomic batches, corrupt cached states, key
prefixes, a crash of a durable server, an unreachable server.

The protocol-level behaviour every store shares (all-or-nothing batches, generations,
compare-and-set, sessions sharing a store) runs over Redis too: test_state.py and
test_online_trust.py are parametrised over memory, SQLite and Redis (`make_store`).
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import torch
from redis.cluster import RedisCluster

from dynrec.data.dataset import InteractionData
from dynrec.data.events import Event, InvalidEventError
from dynrec.errors import DynrecError
from dynrec.online.session import OnlineRecommender
from dynrec.online.store import (
    CachedState,
    History,
    InMemoryStore,
    SQLiteStore,
    StateStore,
    UserStamp,
    encode_state,
    open_store,
    store_kind,
)
from dynrec.online.store.redis import RedisStore, RedisStoreError
from dynrec.online.store.redis_cluster import cluster_node_url
from dynrec.online.store.sqlite import CHECKPOINT_PAGES
from dynrec.online.store.versions import VersionRecord
from tests.conftest import clustered_data
from tests.redis_server import RedisServer, require_redis_server
from tests.serve_process import free_port
from tests.unit.online.test_session_validation import assert_scores, model_of, reference_scores

MakeStore = Callable[[], StateStore]


REDIS_KINDS = ("redis", "redis-cluster")


@pytest.fixture(params=REDIS_KINDS)
def any_redis_url(request: pytest.FixtureRequest) -> str:
    """An emptied Redis server (``redis://``) or 3-node Redis Cluster (``redis+cluster://``): the
    test runs once on each; `open_store` opens either."""
    return str(request.getfixturevalue(request.param.replace("-", "_") + "_url"))


def raw_client(url: str) -> redis.Redis | RedisCluster:
    """A plain client of the server or cluster behind a store URL (to look at or damage keys)."""
    if url.startswith("redis+cluster://"):
        return RedisCluster.from_url(cluster_node_url(url))
    return redis.Redis.from_url(url)


def state_key(url: str, user: str) -> str:
    """The key of `user`'s cached state (the layouts in the modules' docstrings)."""
    return f"{{dynrec:u:{user}}}s" if url.startswith("redis+cluster://") else f"dynrec:s:{user}"


def open_redis(url: str) -> RedisStore:
    store = open_store(url)
    assert isinstance(store, RedisStore)
    return store


@pytest.fixture(scope="module")
def data() -> InteractionData:
    return clustered_data(n_users=30, n_items=24, n_groups=3, per_user=10, seed=1)


# ---- event weights (every store) -----------------------------------------------------------------

BAD_WEIGHTS: list[Any] = [0, 0.0, -1.0, math.nan, math.inf, -math.inf, True, "2", None, np.float64("nan")]


@pytest.mark.parametrize("bad", BAD_WEIGHTS, ids=[repr(b) for b in BAD_WEIGHTS])
def test_a_bad_weight_rejects_the_whole_batch(make_store: MakeStore, bad: Any) -> None:
    store = make_store()
    store.append([Event("u", "x", 1)])
    with pytest.raises(
        InvalidEventError, match="event 1 of the batch: field 'weight' must be a finite"
    ) as info:
        store.append([Event("u", "a", 2), Event("v", "b", 3, weight=bad)])
    assert (info.value.index, info.value.field) == (1, "weight")
    assert store.history("u").items == ("x",) and store.stamp("v") == UserStamp()


def test_weights_are_stored_and_read_back(make_store: MakeStore) -> None:
    a, b = make_store(), make_store()
    a.append(
        [
            Event("u", "i1", 1),
            Event("u", "i2", 2, "rating", 4.5),
            Event("v", "i3", 3, weight=2),  # an integer weight becomes a float
            Event("u", "i4", 4, weight=1e-3),
        ]
    )
    h = b.history("u")
    assert h.items == ("i1", "i2", "i4") and h.event_types == ("interaction", "rating", "interaction")
    assert h.weights.dtype == np.float64 and h.weights.tolist() == [1.0, 4.5, 1e-3]
    assert b.history("u", 1).weights.tolist() == [1e-3]
    assert b.since("u", 1)[1].weights.tolist() == [4.5, 1e-3]
    assert b.history("v").weights.tolist() == [2.0]
    assert len(b.history("nobody").weights) == 0


def test_history_weights_default_to_one() -> None:
    assert History(("a", "b"), np.array([1, 2])).weights.tolist() == [1.0, 1.0]
    assert len(History().weights) == 0


# ---- listing and iteration (every store) ----------------------------------------------------------


def test_users_n_events_and_iteration(make_store: MakeStore) -> None:
    store = make_store()
    assert store.users() == [] and store.n_events() == 0 and list(store.iter_events()) == []
    evs = [Event("b", "x", 1), Event("a", "y", 2, "click", 3.0), Event("b", "z", 0), Event("é", "w", 5)]
    store.append(evs)
    store.append([Event("a", "y2", 7)])
    assert store.users() == ["a", "b", "é"] and store.users(limit=2) == ["a", "b"]
    assert store.users(limit=0) == [] and store.n_events() == 5
    assert list(store.iter_events()) == [  # user by user, each in arrival order
        Event("a", "y", 2, "click", 3.0),
        Event("a", "y2", 7),
        Event("b", "x", 1),
        Event("b", "z", 0),
        Event("é", "w", 5),
    ]
    assert store.delete_user("b")
    assert store.users() == ["a", "é"] and store.n_events() == 3
    assert [e.user_id for e in store.iter_events()] == ["a", "a", "é"]


@pytest.mark.parametrize("kind", ["sqlite", "redis", "redis-cluster"])
def test_iteration_in_chunks_sees_every_user(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store: SQLiteStore | RedisStore
    if kind == "sqlite":
        store = SQLiteStore(tmp_path / "i.db")
    else:
        store = open_redis(request.getfixturevalue(kind.replace("-", "_") + "_url"))
    with store:
        store.append(Event(f"u{j % 23:02d}", f"i{j}", j) for j in range(100))
        got = list(store.iter_events(chunk=5))  # 23 users: 5 chunks, the last one short
        assert len(got) == 100 and sorted({e.user_id for e in got}) == [f"u{j:02d}" for j in range(23)]
        assert [e.user_id for e in got] == sorted(e.user_id for e in got)
        assert [e.timestamp for e in got if e.user_id == "u03"] == [3, 26, 49, 72, 95]


# ---- SQLite: files without the weight column -------------------------------------------------------


def test_sqlite_file_without_weights_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "w.db"
    con = sqlite3.connect(db)
    con.executescript(  # the layout before event weights (generations and positions already there)
        "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, "
        "item_id TEXT NOT NULL, event_type TEXT NOT NULL, ts INTEGER NOT NULL, pos INTEGER NOT NULL);"
        "CREATE TABLE users (user_id TEXT PRIMARY KEY, generation INTEGER NOT NULL, n_events INTEGER NOT NULL);"
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);"
        "INSERT INTO meta VALUES ('generation', 4);"
        "INSERT INTO users VALUES ('a', 4, 2);"
        "INSERT INTO events (user_id, item_id, event_type, ts, pos) VALUES ('a', 'i1', 't', 5, 1), ('a', 'i2', 't', 6, 2);"
    )
    con.close()
    with SQLiteStore(db) as s:
        assert s.stamp("a") == UserStamp(4, 2)
        assert s.history("a").weights.tolist() == [1.0, 1.0]
        s.append([Event("a", "i3", 7, weight=0.5)])
        assert s.since("a", 2)[1].weights.tolist() == [0.5]
    with SQLiteStore(db) as s:  # reopened: nothing to migrate, the weights are kept
        assert s.history("a").weights.tolist() == [1.0, 1.0, 0.5]


# ---- open_store ------------------------------------------------------------------------------------


def test_open_store_by_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rel = open_store("sqlite:///rel.db")
    assert isinstance(rel, SQLiteStore) and store_kind(rel) == "sqlite"
    rel.append([Event("u", "i", 1)])
    rel.close()
    assert (tmp_path / "rel.db").is_file()
    absolute = open_store(f"sqlite:///{tmp_path / 'abs.db'}?synchronous=FULL&timeout=2")  # sqlite:////...
    assert isinstance(absolute, SQLiteStore) and absolute.path == tmp_path / "abs.db"
    assert absolute.checkpoint_pages == CHECKPOINT_PAGES
    absolute.close()
    absolute = open_store(f"sqlite:///{tmp_path / 'abs.db'}?checkpoint_pages=50")
    assert isinstance(absolute, SQLiteStore) and absolute.checkpoint_pages == 50
    absolute.close()
    mem = open_store("memory://")
    assert isinstance(mem, InMemoryStore) and store_kind(mem) == "memory"
    bounded = open_store("memory://?max_history=2")
    assert isinstance(bounded, InMemoryStore) and bounded.max_history == 2


def test_open_redis_store_by_url(redis_url: str) -> None:
    r = open_store(redis_url)
    assert isinstance(r, RedisStore) and store_kind(r) == "redis" and r.prefix == "dynrec:"
    r.append([Event("u", "i", 1)])
    other = open_store(redis_url + "?prefix=other:&socket_timeout=5")
    assert isinstance(other, RedisStore) and other.prefix == "other:"
    assert other.users() == [] and r.users() == ["u"]
    other.append([Event("u", "j", 1)])
    assert other.stamp("u").generation == 1 == r.stamp("u").generation  # counters are per prefix too
    r.close()
    other.close()


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("store.db", "no scheme"),
        ("postgres://h/db", "unknown scheme 'postgres'"),
        ("sqlite://host/x.db", "has no host"),
        ("sqlite:///", "no file path"),
        ("sqlite:///x.db?journal=WAL", "unknown option 'journal'"),
        ("sqlite:///x.db?timeout=soon", "timeout must be"),
        ("sqlite:///x.db?synchronous=SOMETIMES", "synchronous must be"),
        ("sqlite:///x.db?checkpoint_pages=0", "checkpoint_pages must be"),
        ("sqlite:///x.db?checkpoint_pages=many", "checkpoint_pages must be"),
        ("memory://somewhere", "takes no host or path"),
        ("memory://?max_history=0", "max_history must be"),
        ("redis://:secret@127.0.0.1:1/0?prefix=", "prefix must not be empty"),
        ("redis+cluster://:secret@127.0.0.1:1?prefix=", "prefix must not be empty"),
        ("redis+sentinel://h:1", "unknown scheme 'redis\\+sentinel'"),
    ],
)
def test_open_store_rejects_bad_urls(
    url: str, problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DynrecError, match=problem) as info:
        open_store(url)
    msg = str(info.value)
    assert "secret" not in msg
    if "synchronous" not in problem:  # SQLiteStore's own message for that one
        assert "accepted: sqlite:///" in msg and "redis://host:port/db" in msg and "memory://" in msg
        assert "redis+cluster://host:port" in msg


def test_unreachable_redis_is_one_clear_error() -> None:
    port = free_port()  # nothing listens there
    with pytest.raises(RedisStoreError, match=rf"127\.0\.0\.1:{port}.*prefix 'dynrec:'") as info:
        open_store(f"redis://:hunter2@127.0.0.1:{port}/0?socket_connect_timeout=2")
    assert "hunter2" not in str(info.value)


# ---- Redis: several workers, atomic batches -------------------------------------------------------


def test_key_layout_under_the_prefix(redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url)
    with RedisStore(redis_url, prefix="app:") as s:
        s.append([Event("u:1", "i", 1, weight=2.0)])  # a ':' in an id is just part of the key
        s.put_state("u:1", CachedState({"x": torch.ones(1)}, "v", 1, s.stamp("u:1").generation))
        keys = sorted(k.decode() for k in raw.keys("*"))
        assert keys == [
            "app:e:u:1",
            "app:generation",
            "app:journal",
            "app:n_events",
            "app:s:u:1",
            "app:seq",
            "app:u:u:1",
            "app:users",
        ]
        assert raw.lrange("app:e:u:1", 0, -1) == [b'["i",1,"interaction",2.0,1]']  # seq last
        # one entry per batch: its first number, then per user its list position and event count
        assert raw.zrange("app:journal", 0, -1, withscores=True) == [(b'[1,"u:1",0,1]', 1.0)]
        assert raw.hgetall("app:u:u:1") == {b"gen": b"1", b"n": b"1"}
        s.delete_user("u:1")
        assert sorted(k.decode() for k in raw.keys("*")) == [
            "app:deletions",
            "app:generation",
            "app:n_events",
            "app:seq",
            "app:tombstones",
        ]
        assert raw.get("app:seq") == b"1" and raw.get("app:deletions") == b"1"
        (member,) = raw.zrange("app:tombstones", 0, -1)
        assert json.loads(member)[:2] == [1, "u:1"]
        v = VersionRecord("v1", "versions/v1", None, 5.0, "initial")
        assert s.add_version(v) and s.set_current(None, "v1")
        assert s.acquire_lease("update", "me", 10.0).held_by("me")
        assert raw.hgetall("app:versions") == {b"v1": v.to_json().encode()}
        assert raw.get("app:current") == b"v1"
        assert raw.hget("app:lease:update", "owner") == b"me"
    raw.close()


def test_two_workers_appending_concurrently_lose_nothing(any_redis_url: str) -> None:
    """Two clients (as two worker processes would hold), each from its own thread, append batches
    for the same users: every event is kept, each worker's events stay in its order, and every
    append got its own consistent stamp (counter and list moved together)."""
    workers = [open_redis(any_redis_url), open_redis(any_redis_url)]
    users = ["u0", "u1", "u2"]
    stamps: list[list[dict[str, UserStamp]]] = [[], []]

    def work(w: int) -> None:
        for j in range(60):
            batch = [Event(users[(j + k) % 3], f"w{w}-{j}-{k}", j) for k in range(1 + j % 3)]
            stamps[w].append(workers[w].append(batch))

    threads = [threading.Thread(target=work, args=(w,)) for w in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    reader = workers[0]
    total = 2 * sum(1 + j % 3 for j in range(60))
    assert reader.n_events() == total and sum(reader.stamp(u).n_events for u in users) == total
    for u in users:
        h = reader.history(u)
        st = reader.stamp(u)
        assert len(h) == st.n_events and len(set(h.items)) == len(h)
        for w in range(2):
            mine = [i for i in h.items if i.startswith(f"w{w}-")]
            assert mine == sorted(mine, key=lambda s: tuple(int(x) for x in s.split("-")[1:]))
        seen = sorted(s[u].n_events for w in range(2) for s in stamps[w] if u in s)
        assert len(seen) == len(set(seen)) and seen[-1] == st.n_events  # no two appends saw one count
        assert {s[u].generation for w in range(2) for s in stamps[w] if u in s} == {st.generation}
    assert len({reader.stamp(u).generation for u in users}) == 3
    for w in workers:
        w.close()


def test_a_reader_never_sees_part_of_a_batch(any_redis_url: str) -> None:
    """Batches larger than one RPUSH inside the script (chunks of 1000): a concurrent reader on
    another client sees each user's history at batch boundaries only."""
    writer, reader = open_redis(any_redis_url), open_redis(any_redis_url)
    size, rounds = 1500, 5
    done = threading.Event()
    observed: list[tuple[int, int]] = []

    def read() -> None:
        while not done.is_set():
            for u in ("a", "b"):
                st, h = reader.since(u, 0)
                observed.append((st.n_events, len(h)))

    t = threading.Thread(target=read)
    t.start()
    try:
        for r in range(rounds):
            writer.append([Event(u, f"{u}{r}-{j}", r) for u in ("a", "b") for j in range(size)])
    finally:
        done.set()
        t.join()
    assert observed and all(n == m and n % size == 0 for n, m in observed)
    assert writer.stamp("a") == UserStamp(writer.stamp("a").generation, size * rounds)
    writer.close()
    reader.close()


def test_delete_by_one_worker_ends_the_generation_for_all(any_redis_url: str) -> None:
    a, b = open_redis(any_redis_url), open_redis(any_redis_url)
    a.append([Event("u", "i1", 1), Event("u", "i2", 2)])
    g = a.stamp("u").generation
    state = CachedState({"h": torch.zeros(3)}, "v", 2, g)  # built by worker A before the delete
    assert b.delete_user("u")
    assert not a.put_state("u", state)  # A's write-back of the old generation is refused
    assert a.get_state("u") is None and a.stamp("u") == UserStamp() and len(a.history("u")) == 0
    a.append([Event("u", "i3", 3)])
    assert b.stamp("u").generation > g and b.history("u").items == ("i3",)
    assert not b.put_state("u", CachedState({"h": torch.zeros(3)}, "v", 1, g))
    a.close()
    b.close()


# ---- Redis: corrupt cached states ------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["truncate", "garbage", "bitflip", "fields"])
def test_corrupt_redis_state_is_a_cache_miss(
    any_redis_url: str, data: InteractionData, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = model_of("sasrec", data)
    assert model.item_vocab is not None
    items = list(model.item_vocab.ids[:4])
    OnlineRecommender(model, open_redis(any_redis_url)).observe(
        [Event("u", i, t) for t, i in enumerate(items)]
    )
    raw = raw_client(any_redis_url)
    key = state_key(any_redis_url, "u")
    blob = raw.hget(key, "blob")
    assert blob is not None
    if damage == "fields":  # a good blob whose fields disagree with its header
        raw.hset(key, "version", "another")
    else:
        bad = {"truncate": blob[:7], "garbage": b"\x00" * 50, "bitflip": blob[:-1] + bytes([blob[-1] ^ 1])}
        raw.hset(key, "blob", bad[damage])
    fresh = OnlineRecommender(model, open_redis(any_redis_url))
    with caplog.at_level(logging.WARNING):
        got = fresh.scores("u", exclude_seen=False)
    assert any("unreadable cached state" in r.getMessage() for r in caplog.records)
    assert_scores(got, reference_scores(model, "u", items, list(range(4))))
    c = open_redis(any_redis_url).get_state("u")  # the bad state was replaced by the rebuilt one
    assert c is not None and c.n_events == 4 and c.version == fresh.version
    raw.close()


def test_a_state_written_after_the_damage_is_not_dropped(any_redis_url: str) -> None:
    s = open_redis(any_redis_url)
    s.append([Event("u", "i", 1)])
    raw = raw_client(any_redis_url)
    key = state_key(any_redis_url, "u")
    raw.hset(key, mapping={"version": "v", "n": 1, "gen": s.stamp("u").generation, "blob": b"junk"})
    assert s.get_state("u") is None and raw.exists(key) == 0
    good = CachedState({"x": torch.ones(2)}, "v", 1, s.stamp("u").generation)
    assert s.put_state("u", good)
    got = s.get_state("u")
    assert got is not None and torch.equal(got.tensors["x"], torch.ones(2))
    raw.close()
    s.close()


def test_a_client_decoding_responses_is_refused(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    with pytest.raises(DynrecError, match="decode_responses"):
        RedisStore(client)
    client.close()


# ---- Redis: a durable server that crashes; a server that goes away ---------------------------------


def test_durable_server_keeps_events_and_generations_through_a_crash(tmp_path: Path) -> None:
    require_redis_server()
    with RedisServer(durable=True, directory=tmp_path / "redis") as srv:
        s = RedisStore(srv.url)
        s.append([Event("u", "i1", 1, weight=3.0), Event("v", "i2", 2)])
        g = s.stamp("u").generation
        s.delete_user("u")
        s.close()
        srv.kill()  # SIGKILL: only what was fsynced survives
        srv.start()
        s = RedisStore(srv.url)
        assert s.history("v").items == ("i2",) and s.n_events() == 1 and s.users() == ["v"]
        s.append([Event("u", "i3", 3)])
        assert s.stamp("u").generation > max(g, s.stamp("v").generation)  # never an old generation
        s.close()


def test_operations_on_a_stopped_server_raise_store_errors(tmp_path: Path) -> None:
    require_redis_server()
    with RedisServer(directory=tmp_path / "gone") as srv:
        s = RedisStore(f"{srv.url}?socket_connect_timeout=2&socket_timeout=2")
        s.append([Event("u", "i", 1)])
        srv.stop()
        for call in (lambda: s.append([Event("u", "j", 2)]), lambda: s.history("u"), lambda: s.stamp("u")):
            with pytest.raises(RedisStoreError, match=f"127.0.0.1:{srv.port}"):
                call()
        s.close()


# ---- Redis: a database written by the release before sequence numbers and versions ------------------

# The append script of the release before event sequence numbers (git show d2cb253~1:
# src/dynrec/online/redis_store.py, now src/dynrec/online/store/redis.py), verbatim: a database it
# wrote must open with today's code.
OLD_APPEND = """
local out = {}
local a = 1
local total = 0
for k = 4, #KEYS, 2 do
  local user = ARGV[a]
  local m = tonumber(ARGV[a + 1])
  a = a + 2
  local gen = redis.call('HGET', KEYS[k], 'gen')
  if not gen then
    gen = redis.call('INCR', KEYS[1])
    redis.call('HSET', KEYS[k], 'gen', gen)
    redis.call('ZADD', KEYS[2], 0, user)
  end
  local n = redis.call('HINCRBY', KEYS[k], 'n', m)
  local last = a + m - 1
  for s = a, last, 1000 do
    redis.call('RPUSH', KEYS[k + 1], unpack(ARGV, s, math.min(s + 999, last)))
  end
  a = a + m
  total = total + m
  out[#out + 1] = tonumber(gen)
  out[#out + 1] = n
end
redis.call('INCRBY', KEYS[3], total)
return out
"""


def _old_append(raw: redis.Redis, events: list[Event], prefix: str = "dynrec:") -> list[int]:
    """Append as the old release did: its script, its keys and its encoding of an event."""
    by_user: dict[str, list[bytes]] = {}
    for e in events:
        row = [e.item_id, e.timestamp, e.event_type, e.weight]
        by_user.setdefault(e.user_id, []).append(json.dumps(row, separators=(",", ":")).encode())
    keys = [prefix + "generation", prefix + "users", prefix + "n_events"]
    args: list[Any] = []
    for user, encoded in by_user.items():
        keys += [f"{prefix}u:{user}", f"{prefix}e:{user}"]
        args += [user, len(encoded), *encoded]
    return [int(x) for x in raw.register_script(OLD_APPEND)(keys=keys, args=args)]


def test_a_database_of_the_previous_release_opens_and_works(redis_url: str) -> None:
    raw = redis.Redis.from_url(redis_url)
    old_a = [Event("a", "i1", 10, weight=2.0), Event("a", "i2", 11, "click")]
    assert _old_append(raw, [*old_a, Event("b", "i3", 12)]) == [1, 2, 2, 1]
    state = CachedState({"h": torch.arange(3.0)}, "m1", 2, 1)
    raw.hset("dynrec:s:a", mapping={"version": "m1", "n": 2, "gen": 1, "blob": encode_state(state)})
    with RedisStore(redis_url) as s:
        assert s.stamp("a") == UserStamp(1, 2) and s.stamp("b") == UserStamp(2, 1)
        h = s.history("a")
        assert h.items == ("i1", "i2") and h.timestamps.tolist() == [10, 11]
        assert h.event_types == ("interaction", "click") and h.weights.tolist() == [2.0, 1.0]
        got = s.get_state("a")
        assert got is not None and (got.version, got.n_events, got.generation) == ("m1", 2, 1)
        assert torch.equal(got.tensors["h"], torch.arange(3.0))
        assert (
            s.users() == ["a", "b"]
            and s.n_events() == 3
            and list(s.iter_events()) == [*old_a, Event("b", "i3", 12)]
        )
        assert s.event_seq() == 0 and s.events_since(0) == []  # old events count as sequence 0
        assert s.list_versions() == [] and s.current_version() is None and s.tombstones() == []
        new_a, new_c = Event("a", "i4", 13), Event("c", "i5", 14)
        assert s.append([new_a, new_c]) == {"a": UserStamp(1, 3), "c": UserStamp(3, 1)}
        st, tail = s.since("a", 2)
        assert st == UserStamp(1, 3) and tail.items == ("i4",) and tail.timestamps.tolist() == [13]
        assert s.history("a").items == ("i1", "i2", "i4")  # old and new elements side by side
        assert s.events_since(0) == [(1, new_a), (2, new_c)] and s.event_seq() == 2
        assert s.n_events() == 5
        assert s.delete_user("a")  # old elements (no seq) and new ones together
        assert s.n_events() == 2 and s.users() == ["b", "c"] and s.events_since(0) == [(2, new_c)]
        assert [(t.user_id, t.generation) for t in s.tombstones()] == [("a", 1)]
        assert s.history("b").items == ("i3",) and s.get_state("a") is None
    raw.close()


# ---- Redis: the journal (one entry per batch, naming users and list positions) ----------------------


def test_journal_entries_point_into_the_lists_and_leave_with_the_user(redis_url: str) -> None:
    """A batch is one journal entry naming its users (with their list positions); a delete takes
    the user's part out of every entry (ids with quotes, commas and backslashes included) and an
    entry naming no one any more is removed; events_since reads the lists' slices."""
    raw = redis.Redis.from_url(redis_url)
    odd = 'q"u,1\\\\",'  # a quote, a comma and a backslash in an id
    with RedisStore(redis_url, prefix="j:") as s:
        s.append([Event("a", "x", 1), Event(odd, "y", 2), Event("a", "z", 3)])
        s.append([Event("b", "w", 4), Event("a", "v", 5)])
        s.append([Event(odd, "t", 6)])
        entries = raw.zrange("j:journal", 0, -1, withscores=True)
        assert entries == [
            (b'[1,"a",0,2,' + json.dumps(odd).encode() + b",0,1]", 3.0),
            (b'[4,"b",0,1,"a",2,1]', 5.0),
            (b"[6," + json.dumps(odd).encode() + b",1,1]", 6.0),
        ]
        assert [seq for seq, _ in s.events_since(2, 5)] == [3, 4, 5]
        assert s.events_since(2, 3) == [(3, Event("a", "z", 3))]
        assert s.delete_user(odd)
        assert raw.zrange("j:journal", 0, -1) == [b'[1,"a",0,2]', b'[4,"b",0,1,"a",2,1]']
        assert s.delete_user("a")
        assert raw.zrange("j:journal", 0, -1) == [b'[4,"b",0,1]']
        s.append([Event("a", "n", 7)])  # a re-created user: positions in its new list
        assert s.events_since(0) == [(4, Event("b", "w", 4)), (7, Event("a", "n", 7))]
        assert s.n_events() == 2
