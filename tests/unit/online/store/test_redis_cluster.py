"""`RedisClusterStore` on a real 3-node Redis Cluster (tests/redis_server.py; skipped with a
message when redis-server or redis-cli is not installed): opening by URL, the key layout (a
user's keys share a slot, the store-wide keys share another), and what a crash or a race between
the two steps of an append or a delete leaves (dynrec.online.store.redis_cluster's docstring).

The store contract itself runs on the cluster through the ``make_store`` fixture
(test_state.py, test_online_trust.py, test_store_versions.py, test_redis_store.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from redis.cluster import RedisCluster

from dynrec.data.events import Event
from dynrec.errors import DynrecError
from dynrec.online.store import CachedState, UserStamp, open_store, store_kind
from dynrec.online.store.redis import RedisStoreError
from dynrec.online.store.redis_cluster import RedisClusterStore, cluster_node_url
from tests.serve_process import free_port


class Crash(Exception):
    """Stands for the process dying between two steps of a write."""


@pytest.fixture
def raw(redis_cluster_url: str) -> Iterator[RedisCluster]:
    client = RedisCluster.from_url(cluster_node_url(redis_cluster_url))
    yield client
    client.close()


def all_keys(raw: RedisCluster) -> list[str]:
    keys = raw.keys("*", target_nodes=RedisCluster.PRIMARIES)
    return sorted(k.decode() for k in keys)


def test_open_a_cluster_store_by_url(redis_cluster_url: str) -> None:
    s = open_store(redis_cluster_url)
    assert isinstance(s, RedisClusterStore) and store_kind(s) == "redis-cluster" and s.prefix == "dynrec:"
    assert repr(s) == f"RedisClusterStore({redis_cluster_url!r}, prefix='dynrec:')"
    s.append([Event("u", "i", 1)])
    other = open_store(redis_cluster_url + "?prefix=other:&socket_timeout=5")
    assert isinstance(other, RedisClusterStore) and other.prefix == "other:"
    assert other.users() == [] and s.users() == ["u"]
    other.append([Event("u", "j", 1)])
    assert other.stamp("u").generation == 1 == s.stamp("u").generation  # counters are per prefix
    with pytest.raises(DynrecError, match="may not contain braces"):
        RedisClusterStore(redis_cluster_url, prefix="{x}:")
    s.close()
    other.close()


def test_a_cluster_client_is_shared_not_closed(redis_cluster_url: str) -> None:
    client = RedisCluster.from_url(cluster_node_url(redis_cluster_url))
    with RedisClusterStore(client) as s:
        s.append([Event("u", "i", 1)])
        assert s.where.startswith("redis+cluster://127.0.0.1:")
    assert client.get("{dynrec:}seq") == b"1"  # still open
    client.close()
    decoding = RedisCluster.from_url(cluster_node_url(redis_cluster_url), decode_responses=True)
    with pytest.raises(DynrecError, match="decode_responses"):
        RedisClusterStore(decoding)
    decoding.close()


def test_an_unreachable_cluster_is_one_clear_error() -> None:
    port = free_port()
    with pytest.raises(RedisStoreError, match=rf"127\.0\.0\.1:{port}.*prefix 'dynrec:'") as info:
        open_store(f"redis+cluster://:hunter2@127.0.0.1:{port}?socket_connect_timeout=1")
    assert "hunter2" not in str(info.value)


def test_cluster_key_layout(redis_cluster_url: str, raw: RedisCluster) -> None:
    with RedisClusterStore(redis_cluster_url, prefix="app:") as s:
        s.append([Event("u:1", "i", 1, weight=2.0), Event("v", "j", 2)])
        s.put_state("u:1", CachedState({"x": torch.ones(1)}, "v", 1, s.stamp("u:1").generation))
        wide = ["generation", "gens", "journal", "n_events", "seq", "uj:u:1", "uj:v", "users"]
        assert all_keys(raw) == sorted(
            [
                *(f"{{app:}}{k}" for k in wide),
                "{app:u:u:1}e",
                "{app:u:u:1}s",
                "{app:u:u:1}u",
                "{app:u:v}e",
                "{app:u:v}u",
            ]
        )
        assert raw.lrange("{app:u:u:1}e", 0, -1) == [b'["i",1,"interaction",2.0,1]']
        assert raw.hgetall("{app:u:u:1}u") == {b"gen": b"1", b"n": b"1"}
        assert raw.hgetall("{app:}gens") == {b"u:1": b"1", b"v": b"2"}
        # one entry per batch (list positions not known on the store-wide slot: -1)
        assert raw.zrange("{app:}journal", 0, -1, withscores=True) == [(b'[1,"u:1",-1,1,"v",-1,1]', 2.0)]
        assert raw.lrange("{app:}uj:u:1", 0, -1) == [b"2"]  # the last numbers of the user's batches
        slots = {k: raw.keyslot(k) for k in all_keys(raw)}
        assert len({v for k, v in slots.items() if k.startswith("{app:}")}) == 1  # one slot store-wide
        assert len({v for k, v in slots.items() if k.startswith("{app:u:u:1}")}) == 1  # one per user
        assert slots["{app:u:u:1}u"] != slots["{app:}seq"]
        nodes = {raw.get_node_from_key(f"{{app:u:{u}}}u").name for u in (f"user{j}" for j in range(30))}
        assert len(nodes) == 3  # users spread over the three nodes
        assert s.delete_user("u:1")
        assert "{app:u:u:1}e" not in all_keys(raw) and "{app:}uj:u:1" not in all_keys(raw)
        assert raw.hgetall("{app:u:u:1}u") == {b"floor": b"2"}  # generations up to 2 are over
        assert 0 < raw.pttl("{app:u:u:1}u") <= 86_400_000
        assert raw.hgetall("{app:}gens") == {b"v": b"2"} and raw.get("{app:}n_events") == b"1"
        (member,) = raw.zrange("{app:}tombstones", 0, -1)
        assert json.loads(member)[:2] == [1, "u:1"]
        assert s.stamp("u:1") == UserStamp() and s.events_since(0) == [(2, Event("v", "j", 2))]
        s.append([Event("u:1", "k", 3)])  # a new generation past the floor
        assert raw.hgetall("{app:u:u:1}u") == {b"gen": b"3", b"n": b"1"} and raw.pttl("{app:u:u:1}u") == -1


# ---- crashes and races between the steps -----------------------------------------------------------


def test_a_crash_after_the_store_wide_step_of_an_append(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal names the batch (atomically with its numbers), the histories lack its events:
    events_since returns only what reached a history, so a repeated append (new numbers) brings
    the events into the histories and training once."""
    s = open_store(redis_cluster_url)
    assert isinstance(s, RedisClusterStore)
    s.append([Event("u", "a", 1)])

    def crash(*_: Any) -> list[Any]:
        raise Crash

    with monkeypatch.context() as m:
        m.setattr(s, "_each", crash)
        with pytest.raises(Crash):
            s.append([Event("u", "b", 2), Event("w", "c", 3)])
    assert s.event_seq() == 3 and [e.item_id for _, e in s.events_since(0)] == ["a"]
    assert s.users() == ["u", "w"] and s.n_events() == 3
    assert s.history("u").items == ("a",) and s.stamp("w") == UserStamp()
    assert list(s.iter_events()) == [Event("u", "a", 1)]  # w's history is not there (yet)
    s.append([Event("u", "b", 2), Event("w", "c", 3)])  # the client repeats the failed call
    assert s.history("u").items == ("a", "b") and s.history("w").items == ("c",)
    assert [(q, e.item_id) for q, e in s.events_since(0)] == [(1, "a"), (4, "b"), (5, "c")]
    s.close()


def test_a_crash_after_the_store_wide_step_of_a_delete(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The tombstone and the store-wide removal are done (nothing trains on the user any more);
    the history stays until the delete is repeated."""
    s = open_store(redis_cluster_url)
    assert isinstance(s, RedisClusterStore)
    s.append([Event("u", "a", 1), Event("v", "b", 2)])

    def crash(*_: Any, **__: Any) -> Any:
        raise Crash

    with monkeypatch.context() as m:
        m.setattr(s, "_delete_user", crash)
        with pytest.raises(Crash):
            s.delete_user("u")
    assert [t.user_id for t in s.tombstones()] == ["u"]
    assert s.users() == ["v"] and s.n_events() == 1 and s.events_since(0) == [(2, Event("v", "b", 2))]
    assert list(s.iter_events()) == [Event("v", "b", 2)]
    assert s.history("u").items == ("a",)  # left behind: readable until the delete is repeated
    assert s.delete_user("u") is True  # repeated: the history goes, a second tombstone
    assert s.history("u").items == () and s.stamp("u") == UserStamp() and len(s.tombstones()) == 2
    s.close()


def test_an_append_overtaken_by_a_delete_is_dropped(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A's append takes its numbers and generation, B deletes the user completely, then A's
    per-user step runs: the deleted generation does not come back (its events left the journal
    with the delete)."""
    a, b = open_store(redis_cluster_url), open_store(redis_cluster_url)
    assert isinstance(a, RedisClusterStore)
    a.append([Event("u", "x", 1)])
    each = a._each

    def delete_first(*args: Any) -> list[Any]:
        assert b.delete_user("u")
        return each(*args)

    with monkeypatch.context() as m:
        m.setattr(a, "_each", delete_first)
        assert a.append([Event("u", "y", 2), Event("v", "z", 3)]) == {"u": UserStamp(), "v": UserStamp(2, 1)}
    assert a.history("u").items == () and a.stamp("u") == UserStamp()
    assert a.events_since(0) == [(3, Event("v", "z", 3))] and a.users() == ["v"] and a.n_events() == 1
    a.append([Event("u", "again", 4)])
    assert a.history("u").items == ("again",) and a.stamp("u").generation == 3
    a.close()
    b.close()


def test_an_append_overtaken_by_a_delete_and_a_return_is_dropped(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As above, but the user came back (a new generation) before A's per-user step: A's events
    of the ended generation are dropped, the new generation's history stays."""
    a, b = open_store(redis_cluster_url), open_store(redis_cluster_url)
    assert isinstance(a, RedisClusterStore)
    a.append([Event("u", "x", 1)])
    each = a._each

    def delete_and_return_first(*args: Any) -> list[Any]:
        b.delete_user("u")
        b.append([Event("u", "new", 5)])
        return each(*args)

    with monkeypatch.context() as m:
        m.setattr(a, "_each", delete_and_return_first)
        assert a.append([Event("u", "y", 2)]) == {"u": UserStamp()}
    assert a.history("u").items == ("new",) and a.stamp("u") == UserStamp(2, 1)
    assert a.events_since(0) == [(3, Event("u", "new", 5))]
    a.close()
    b.close()


def test_a_history_left_by_a_crashed_delete_is_replaced_on_return(
    redis_cluster_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A delete crashed after its store-wide step; the user appends again: the new generation
    starts empty (the old history is dropped, not continued)."""
    s = open_store(redis_cluster_url)
    assert isinstance(s, RedisClusterStore)
    s.append([Event("u", "old", 1)])
    with monkeypatch.context() as m:
        m.setattr(s, "_delete_user", lambda **_: (_ for _ in ()).throw(Crash()))
        with pytest.raises(Crash):
            s.delete_user("u")
    assert s.append([Event("u", "new", 2)]) == {"u": UserStamp(2, 1)}
    assert s.history("u").items == ("new",) and list(s.iter_events()) == [Event("u", "new", 2)]
    s.close()
