"""Online API trust: batch validation (all or nothing), corrupt cached states, `k` bounds, and
generation/compare-and-set coherency between sessions sharing one store."""

from __future__ import annotations

import logging
import math
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.events import MAX_TIMESTAMP, Event, InvalidEventError
from dynrec.data.query import QueryBatch
from dynrec.errors import DynrecError
from dynrec.models.base import Recommender
from dynrec.online.session import OnlineRecommender
from dynrec.online.store import CachedState, SQLiteStore, StateStore, UserStamp, decode_state, encode_state
from tests.conftest import clustered_data
from tests.unit.online.test_state import tiny_model

_MODELS: dict[str, Recommender] = {}


@pytest.fixture(scope="module")
def data() -> InteractionData:
    return clustered_data(n_users=30, n_items=24, n_groups=3, per_user=10, seed=1)


def model_of(name: str, data: InteractionData) -> Recommender:
    if name not in _MODELS:
        _MODELS[name] = tiny_model(name, data)
    return _MODELS[name]


def reference_scores(model: Recommender, user: str, items: list[str], ts: list[int]) -> torch.Tensor:
    """`model.score` of exactly this history (items unknown to the model skipped)."""
    assert model.item_vocab is not None and model.user_vocab is not None
    idx = model.item_vocab.lookup(items, policy="skip")
    keep = idx > 0
    q = QueryBatch.from_histories(
        [idx[keep].tolist()],
        [model.user_vocab.index(user, policy="skip")],
        [np.asarray(ts, dtype=np.int64)[keep].tolist()],
    )
    return model.score(q)[0]


def assert_scores(got: torch.Tensor, want: torch.Tensor) -> None:
    fin = torch.isfinite(want)
    assert torch.equal(fin, torch.isfinite(got))
    torch.testing.assert_close(got[fin], want[fin], rtol=1e-4, atol=1e-4)


# ---- event validation ------------------------------------------------------------------------------

BAD: list[tuple[str, dict[str, Any]]] = [
    ("timestamp", {"timestamp": math.nan}),
    ("timestamp", {"timestamp": math.inf}),
    ("timestamp", {"timestamp": -math.inf}),
    ("timestamp", {"timestamp": 1e300}),
    ("timestamp", {"timestamp": 2**63}),
    ("timestamp", {"timestamp": MAX_TIMESTAMP + 1}),
    ("timestamp", {"timestamp": -1}),
    ("timestamp", {"timestamp": -0.5}),
    ("timestamp", {"timestamp": True}),
    ("timestamp", {"timestamp": "12"}),
    ("timestamp", {"timestamp": None}),
    ("timestamp", {"timestamp": np.float64("nan")}),
    ("user_id", {"user_id": ""}),
    ("user_id", {"user_id": "   "}),
    ("user_id", {"user_id": None}),
    ("user_id", {"user_id": math.nan}),
    ("user_id", {"user_id": True}),
    ("item_id", {"item_id": None}),
    ("item_id", {"item_id": ""}),
    ("item_id", {"item_id": 1.5}),
    ("event_type", {"event_type": ""}),
    ("event_type", {"event_type": None}),
]


@pytest.mark.parametrize(("field", "bad"), BAD, ids=[f"{f}={v!r}" for f, b in BAD for v in b.values()])
def test_a_bad_event_rejects_the_whole_batch(
    make_store: Callable[[], StateStore], field: str, bad: dict[str, Any]
) -> None:
    store = make_store()
    store.append([Event("u0", "x", 1)])
    fields: dict[str, Any] = {"user_id": "u2", "item_id": "c", "timestamp": 7, **bad}
    batch = [Event("u0", "a", 5), Event("u1", "b", 6), Event(**fields)]
    with pytest.raises(InvalidEventError) as info:
        store.append(batch)
    assert info.value.index == 2 and info.value.field == field
    assert "event 2 of the batch" in str(info.value) and repr(field) in str(info.value)
    # nothing of the batch was written, for any user
    assert store.history("u0").items == ("x",) and store.stamp("u0").n_events == 1
    assert len(store.history("u1")) == 0 and store.stamp("u1") == UserStamp()
    assert len(store.history("u2")) == 0


def test_ids_and_timestamps_are_normalised(make_store: Callable[[], StateStore]) -> None:
    store = make_store()
    store.append(
        [
            Event(5, 7, 3),  # type: ignore[arg-type]  # integer ids are converted explicitly
            Event("5", "x", np.int64(4)),  # type: ignore[arg-type]
            Event("5", "y", 5.9),  # type: ignore[arg-type]  # fractional seconds truncated
            Event("5", "z", MAX_TIMESTAMP),
        ]
    )
    h = store.history("5")
    assert h.items == ("7", "x", "y", "z")
    assert h.timestamps.tolist() == [3, 4, 5, MAX_TIMESTAMP]
    assert store.stamp("5").n_events == 4


def test_observe_is_all_or_nothing(data: InteractionData) -> None:
    model = model_of("sasrec", data)
    assert model.item_vocab is not None
    ids = model.item_vocab.ids
    online = OnlineRecommender(model)
    online.observe([Event("u1", ids[0], 1), Event("u1", ids[1], 2)])
    before = online.scores("u1", exclude_seen=False).clone()
    bad = Event("u3", ids[4], math.nan)  # type: ignore[arg-type]
    with pytest.raises(InvalidEventError, match="event 2 of the batch: field 'timestamp'"):
        online.observe([Event("u1", ids[2], 3), Event("u2", ids[3], 4), bad])
    assert online.store.history("u1").items == (ids[0], ids[1])
    assert len(online.store.history("u2")) == 0 and len(online.store.history("u3")) == 0
    torch.testing.assert_close(online.scores("u1", exclude_seen=False), before, rtol=0, atol=0)
    assert_scores(online.scores("u2", exclude_seen=False), reference_scores(model, "u2", [], []))


# ---- corrupt cached states -------------------------------------------------------------------------


def test_decode_state_rejects_damage() -> None:
    blob = encode_state(CachedState({"h": torch.arange(8, dtype=torch.float32)}, "v", 3, 2))
    back = decode_state(blob)
    assert (back.version, back.n_events, back.generation) == ("v", 3, 2)
    flipped = bytearray(blob)
    flipped[-1] ^= 0x40  # one bit of the tensor data
    for bad in (b"", b"\x01\x02", blob[:20], blob[:-4], bytes(flipped), b"\xff" * 8 + blob[8:]):
        with pytest.raises(DynrecError, match="corrupt cached state"):
            decode_state(bad)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "bitflip"])
def test_corrupt_blob_is_a_cache_miss(
    tmp_path: Path, data: InteractionData, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    model = model_of("sasrec", data)
    assert model.item_vocab is not None
    items = list(model.item_vocab.ids[:4])
    db = tmp_path / "c.db"
    OnlineRecommender(model, SQLiteStore(db)).observe([Event("u", i, t) for t, i in enumerate(items)])
    con = sqlite3.connect(db)
    (blob,) = con.execute("SELECT state FROM states WHERE user_id = 'u'").fetchone()
    bad = {"truncate": blob[:7], "garbage": b"\x00" * 50, "bitflip": blob[:-1] + bytes([blob[-1] ^ 1])}
    con.execute("UPDATE states SET state = ? WHERE user_id = 'u'", (bad[damage],))
    con.commit()
    con.close()
    fresh = OnlineRecommender(model, SQLiteStore(db))
    with caplog.at_level(logging.WARNING, logger="dynrec.online.store.sqlite"):
        got = fresh.scores("u", exclude_seen=False)
    assert any("unreadable cached state" in r.getMessage() for r in caplog.records)
    assert_scores(got, reference_scores(model, "u", items, list(range(4))))
    c = SQLiteStore(db).get_state("u")  # the bad blob was replaced by the rebuilt state
    assert c is not None and c.n_events == 4 and c.version == fresh.version


# ---- recommend's k ----------------------------------------------------------------------------------


def test_recommend_k_bounds(data: InteractionData) -> None:
    model = model_of("pop", data)
    assert model.item_vocab is not None
    online = OnlineRecommender(model)
    seen = list(model.item_vocab.ids[:3])
    online.observe([Event("u", i, t) for t, i in enumerate(seen)])
    for k in (0, -1, True, 2.5):
        with pytest.raises(DynrecError, match="k must be an integer >= 1"):
            online.recommend("u", k)  # type: ignore[arg-type]
    everything = online.recommend("u", 10**9)
    assert len(everything.items) == model.n_items - 1 - len(seen)  # every item but padding and seen
    assert not set(everything.items) & set(seen)
    assert online.recommend("u", 1).items == everything.items[:1]
    assert len(online.recommend("u", model.n_items + 1, exclude_seen=False).items) == model.n_items - 1


# ---- generations and compare-and-set in the stores ---------------------------------------------------


def test_store_generations_and_compare_and_set(make_store: Callable[[], StateStore]) -> None:
    store = make_store()
    t = {"x": torch.ones(2)}
    assert store.append([Event("u", "a", 1), Event("v", "b", 1), Event("u", "c", 2)]) == {
        "u": store.stamp("u"),
        "v": store.stamp("v"),
    }
    g = store.stamp("u").generation
    assert store.stamp("u") == UserStamp(g, 2) and g > 0 and store.stamp("v").generation != g
    st, tail = store.since("u", 1)
    assert st == UserStamp(g, 2) and tail.items == ("c",)
    assert not store.put_state("u", CachedState(t, "m", 3, g))  # more events than stored
    assert not store.put_state("u", CachedState(t, "m", 2, g + 100))  # another generation
    assert not store.put_state("nobody", CachedState(t, "m", 0, 0))  # no generation at all
    assert store.put_state("u", CachedState(t, "m", 2, g))
    assert not store.put_state("u", CachedState(t, "m", 1, g))  # older checkpoint, same model
    assert store.put_state("u", CachedState(t, "m2", 1, g))  # another model version replaces it
    got = store.get_state("u")
    assert got is not None and (got.version, got.n_events, got.generation) == ("m2", 1, g)
    assert store.delete_user("u")
    assert store.stamp("u") == UserStamp() and store.get_state("u") is None
    assert not store.put_state("u", CachedState(t, "m", 0, g))  # the deleted generation is gone
    store.append([Event("u", "d", 3)])
    g2 = store.stamp("u").generation
    assert g2 > g and g2 != store.stamp("v").generation and store.stamp("u").n_events == 1
    assert not store.put_state("u", CachedState(t, "m", 1, g))  # a state of the old generation
    assert store.get_state("u") is None


def test_put_states_is_put_state_per_user(make_store: Callable[[], StateStore]) -> None:
    """One write for several users' checkpoints, each compare-and-set on its own."""
    store = make_store()
    store.append([Event("u", "a", 1), Event("v", "b", 1), Event("v", "c", 2)])
    gu, gv = store.stamp("u").generation, store.stamp("v").generation
    t = {"x": torch.arange(3, dtype=torch.float32)}
    assert store.put_states([]) == []
    got = store.put_states(
        [
            ("u", CachedState(t, "m", 1, gu)),
            ("v", CachedState(t, "m", 3, gv)),  # more events than stored
            ("nobody", CachedState(t, "m", 0, 0)),
            ("v", CachedState({"x": 2 * t["x"]}, "m", 2, gv)),
        ]
    )
    assert got == [True, False, False, True]
    assert store.put_states([("v", CachedState(t, "m", 1, gv)), ("u", CachedState(t, "m2", 1, gu))]) == [
        False,  # older than the held checkpoint of the same model
        True,
    ]
    u, v = store.get_state("u"), store.get_state("v")
    assert u is not None and (u.version, u.n_events) == ("m2", 1)
    assert v is not None and v.n_events == 2 and torch.equal(v.tensors["x"], 2 * t["x"])


class _CheckpointReads(SQLiteStore):
    """A SQLite store that counts checkpoint reads (every state rebuild reads one)."""

    reads = 0

    def get_state(self, user: str) -> CachedState | None:
        self.reads += 1
        return super().get_state(user)


@pytest.mark.parametrize("name", ["itemknn", "sasrec"])
def test_workers_taking_turns_step_through_each_others_events(
    name: str, data: InteractionData, tmp_path: Path
) -> None:
    """Two sessions on one store (two workers) observing a user's events in turn: each steps its
    hot state through the other's events read from the store, without a rebuild, and both score
    exactly the whole history."""
    model = model_of(name, data)
    assert model.item_vocab is not None
    stores = [_CheckpointReads(tmp_path / "w.db") for _ in range(2)]
    a, b = (OnlineRecommender(model, st, persist_every=16) for st in stores)
    items = model.item_vocab.ids
    hist: list[tuple[str, int]] = []
    reads = 0
    for j in range(12):
        evs = [Event("u", items[(3 * j + r) % len(items)], 10 * j + r) for r in range(1 + j % 3)]
        hist += [(e.item_id, e.timestamp) for e in evs]
        (a, b)[j % 2].observe(evs)
        if j == 1:  # each worker has built the user's state once
            reads = sum(st.reads for st in stores)
            assert reads == 2
    assert sum(st.reads for st in stores) == reads  # from then on only stepped, never rebuilt
    want = reference_scores(model, "u", [i for i, _ in hist], [t for _, t in hist])
    want[0] = -torch.inf
    for w in (a, b):
        assert_scores(w.scores("u", exclude_seen=False), want)


def test_sqlite_generation_counter_survives_reopen(tmp_path: Path) -> None:
    db = tmp_path / "g.db"
    with SQLiteStore(db) as s:
        s.append([Event("u", "a", 1)])
        g = s.stamp("u").generation
        s.delete_user("u")
    with SQLiteStore(db) as s:  # no row of "u" is left, yet its old generation is never reused
        s.append([Event("u", "a", 1)])
        assert s.stamp("u").generation > g


def test_sqlite_file_of_the_earlier_layout_is_migrated(tmp_path: Path) -> None:
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript(
        "CREATE TABLE events (seq INTEGER PRIMARY KEY AUTOINCREMENT, user_id TEXT NOT NULL, "
        "item_id TEXT NOT NULL, event_type TEXT NOT NULL, ts INTEGER NOT NULL);"
        "CREATE TABLE states (user_id TEXT PRIMARY KEY, version TEXT NOT NULL, "
        "n_events INTEGER NOT NULL, state BLOB NOT NULL);"
        "INSERT INTO events (user_id, item_id, event_type, ts) VALUES "
        "('a', 'i1', 't', 5), ('b', 'i2', 't', 1), ('a', 'i3', 't', 2);"
        "INSERT INTO states VALUES ('a', 'v', 2, x'00');"
    )
    con.close()
    with SQLiteStore(db) as s:
        assert s.history("a").items == ("i1", "i3") and s.history("a").timestamps.tolist() == [5, 2]
        assert s.stamp("a").n_events == 2 and s.stamp("b").n_events == 1
        assert s.stamp("a").generation != s.stamp("b").generation
        assert s.get_state("a") is None  # old states are dropped, rebuilt on demand
        s.append([Event("a", "i4", 9), Event("c", "i5", 1)])
        assert s.since("a", 2)[1].items == ("i4",)
        assert s.stamp("c").generation > max(s.stamp("a").generation, s.stamp("b").generation)


# ---- sessions sharing a store (in one process; real processes: test_store_processes.py) --------------


def test_delete_is_not_undone_by_a_stale_cache(
    make_store: Callable[[], StateStore], data: InteractionData
) -> None:
    model = model_of("sasrec", data)
    assert model.item_vocab is not None
    ids = model.item_vocab.ids
    sa, sb, sc = make_store(), make_store(), make_store()
    a, b = OnlineRecommender(model, sa), OnlineRecommender(model, sb)
    a.observe([Event("u", ids[j], j) for j in range(5)])
    a.recommend("u")  # A holds u hot
    assert b.delete_user("u")
    a.observe(Event("u", ids[9], 100))
    want = reference_scores(model, "u", [ids[9]], [100])
    for online in (a, OnlineRecommender(model, sc)):
        assert_scores(online.scores("u", exclude_seen=False), want)
    assert sc.history("u").items == (ids[9],)
    c = sc.get_state("u")
    assert c is not None and c.n_events == 1 and c.generation == sc.stamp("u").generation


def test_delete_then_read_serves_an_empty_history(
    make_store: Callable[[], StateStore], data: InteractionData
) -> None:
    model = model_of("itemknn", data)
    assert model.item_vocab is not None
    sa, sb = make_store(), make_store()
    a, b = OnlineRecommender(model, sa, persist_every=3), OnlineRecommender(model, sb)
    a.observe([Event("u", i, t) for t, i in enumerate(model.item_vocab.ids[:3])])  # persisted
    a.observe(Event("u", model.item_vocab.ids[3], 3))  # one event ahead of the checkpoint
    b.delete_user("u")
    assert_scores(a.scores("u", exclude_seen=False), reference_scores(model, "u", [], []))
    a.flush()  # the stale hot state is gone: nothing is written back
    assert sa.get_state("u") is None and len(sa.history("u")) == 0


@pytest.mark.parametrize("persist_every", [1, 3])
def test_interleaved_writers_serve_recomputed_states(
    make_store: Callable[[], StateStore], persist_every: int, data: InteractionData
) -> None:
    model = model_of("sasrec", data)
    assert model.item_vocab is not None
    ids = model.item_vocab.ids
    sa, sb, sc = make_store(), make_store(), make_store()
    a = OnlineRecommender(model, sa, persist_every=persist_every)
    b = OnlineRecommender(model, sb, persist_every=persist_every)
    rng = np.random.default_rng(0)
    hist: dict[str, list[tuple[str, int]]] = {"u": [], "w": []}
    for step in range(16):
        writer = (a, b)[int(rng.integers(2))]
        user = ("u", "w")[int(rng.integers(2))]
        ev = (ids[int(rng.integers(len(ids)))], step)
        writer.observe(Event(user, *ev))
        hist[user].append(ev)
        reader = (a, b)[int(rng.integers(2))]
        want = reference_scores(model, user, [i for i, _ in hist[user]], [t for _, t in hist[user]])
        assert_scores(reader.scores(user, exclude_seen=False), want)
    a.flush()
    b.flush()
    for user, h in hist.items():
        want = reference_scores(model, user, [i for i, _ in h], [t for _, t in h])
        for online in (a, b, OnlineRecommender(model, sc, cache_size=0)):
            assert_scores(online.scores(user, exclude_seen=False), want)
        c = sc.get_state(user)
        assert c is not None and c.n_events == len(h)  # the newest checkpoint was kept
