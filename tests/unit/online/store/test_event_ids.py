"""Events applied once by `Event.event_id`: every store kind skips an id it already applied for the
user (atomically with the append), keeps the ids of each user's last `EVENT_ID_WINDOW` events and
forgets them with the user; `OnlineRecommender.observe` moves no state for a skipped event."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from dynrec.data.events import Event, InvalidEventError, validate_events
from dynrec.online.session import OnlineRecommender
from dynrec.online.store import InMemoryStore, StateStore, UserStamp
from dynrec.online.store.protocol import EVENT_ID_WINDOW
from tests.conftest import clustered_data
from tests.unit.online.test_state import fitted


def _ev(user: str, item: str, ts: int, eid: str | None) -> Event:
    return Event(user, item, ts, event_id=eid)


def test_event_id_is_validated_like_an_id() -> None:
    assert validate_events([Event("u", "i", 1, event_id=7)])[0].event_id == "7"  # type: ignore[arg-type]
    assert validate_events([Event("u", "i", 1)])[0].event_id is None
    for bad in ("", " x", "x" * 513, 1.5):
        with pytest.raises(InvalidEventError) as err:
            validate_events([Event("u", "i", 1), Event("u", "j", 2, event_id=bad)])  # type: ignore[arg-type]
        assert err.value.field == "event_id" and err.value.index == 1


def test_a_repeated_id_is_skipped_atomically_with_the_append(make_store: Callable[[], StateStore]) -> None:
    store = make_store()
    first = store.append([_ev("u", "a", 1, "e1"), _ev("v", "b", 2, "e1"), _ev("u", "c", 3, "e2")])
    assert first.skipped == () and first == {"u": UserStamp(1, 2), "v": UserStamp(2, 1)}
    seq = store.event_seq()
    # a re-delivered batch with one new event; the same id twice in a batch; an event without id
    again = store.append(
        [
            _ev("u", "a", 1, "e1"),
            _ev("u", "d", 4, "e3"),
            _ev("v", "b", 2, "e1"),
            _ev("u", "x", 5, "e3"),
            _ev("u", "n", 6, None),
        ]
    )
    assert again.skipped == (0, 2, 3)
    assert dict(again) == {"u": UserStamp(1, 4), "v": UserStamp(2, 1)}
    assert store.history("u").items == ("a", "c", "d", "n")
    assert store.history("v").items == ("b",)
    assert store.n_events() == 5
    assert store.event_seq() == seq + 2  # skipped events take no sequence number
    assert [(e.user_id, e.item_id) for _, e in store.events_since(seq)] == [("u", "d"), ("u", "n")]
    everything = store.append([_ev("u", "c", 3, "e2"), _ev("v", "b", 2, "e1")])
    assert everything.skipped == (0, 1) and dict(everything) == {"u": UserStamp(1, 4), "v": UserStamp(2, 1)}
    assert store.event_seq() == seq + 2
    # without ids nothing is ever skipped
    assert store.append([Event("v", "b", 2), Event("v", "b", 2)]).skipped == ()
    assert store.history("v").items == ("b", "b", "b")


def test_ids_are_kept_for_the_last_window_events_and_leave_with_the_user(
    make_store: Callable[[], StateStore],
) -> None:
    store = make_store()
    n = EVENT_ID_WINDOW + 3
    for a in range(0, n, 500):  # ids e0 .. e(n-1)
        store.append([_ev("u", f"i{j}", j, f"e{j}") for j in range(a, min(n, a + 500))])
    # e0 .. e2 are older than the user's last EVENT_ID_WINDOW events: applied again; e3 is not
    got = store.append([_ev("u", "again", n, f"e{j}") for j in (0, 2, 3, n - 1)])
    assert got.skipped == (2, 3) and store.stamp("u").n_events == n + 2
    store.append([_ev("w", "x", 1, "k")])
    assert store.delete_user("u")
    assert store.append([_ev("u", "back", 1, "e5")]).skipped == ()  # the deleted user's ids are gone
    assert store.history("u").items == ("back",)
    assert store.append([_ev("w", "x", 1, "k")]).skipped == (0,)


def test_observe_moves_no_state_for_a_skipped_event() -> None:
    data = clustered_data(n_users=30, n_items=24, n_groups=3, per_user=10, seed=1)
    model = fitted("sasrec", data)
    assert model.item_vocab is not None
    items = model.item_vocab.ids[1:6]
    online = OnlineRecommender(model, InMemoryStore())
    online.observe([_ev("u", items[0], 1, "a"), _ev("u", items[1], 2, "b")])
    before = online.scores("u", exclude_seen=False).clone()
    online.observe([_ev("u", items[1], 2, "b")])  # re-delivered: nothing moves
    assert online.duplicates_skipped == 1
    torch.testing.assert_close(online.scores("u", exclude_seen=False), before)
    online.observe([_ev("u", items[0], 1, "a"), _ev("u", items[2], 3, "c"), _ev("u", items[3], 4, "c")])
    assert online.duplicates_skipped == 3
    assert online.store.history("u").items == tuple(items[:3])
    torch.testing.assert_close(
        online.scores("u", exclude_seen=False), online.recompute_scores("u"), rtol=1e-4, atol=1e-4
    )


def test_redis_keeps_a_users_ids_in_the_compact_encoding(redis_url: str, redis_cluster_url: str) -> None:
    """The ids outside the window leave before new ones enter, so a user's zset never grows past
    EVENT_ID_WINDOW and Redis keeps it a listpack (it never converts a skiplist back)."""
    import redis
    from redis.cluster import RedisCluster

    from dynrec.online.store.redis import RedisStore
    from dynrec.online.store.redis_cluster import RedisClusterStore, cluster_node_url

    single, cluster = (
        redis.Redis.from_url(redis_url),
        RedisCluster.from_url(cluster_node_url(redis_cluster_url)),
    )
    for store, raw, key in (
        (RedisStore(single), single, "dynrec:d:u"),
        (RedisClusterStore(cluster), cluster, "{dynrec:u:u}d"),
    ):
        store.append([_ev("u", "i", j, f"id-{j}") for j in range(EVENT_ID_WINDOW - 3)])
        store.append([_ev("u", "i", j, f"id-{j}") for j in range(EVENT_ID_WINDOW - 3, EVENT_ID_WINDOW + 40)])
        assert raw.zcard(key) == EVENT_ID_WINDOW and raw.object("encoding", key) == b"listpack"
        assert raw.zrange(key, 0, 0, withscores=True) == [(b"id-40", 41.0)]
        raw.close()
