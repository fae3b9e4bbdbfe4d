"""Per-user state: stores, incremental adapters == recomputation from the full history, sessions."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.events import Event
from dynrec.data.query import QueryBatch
from dynrec.errors import DynrecError
from dynrec.models.base import Recommender
from dynrec.models.capabilities import ItemText
from dynrec.models.registry import create_model, get_model_class
from dynrec.online.adapters import RecomputeAdapter, adapter_for
from dynrec.online.session import OnlineRecommender
from dynrec.online.store import (
    CachedState,
    InMemoryStore,
    SQLiteStore,
    StateStore,
    decode_state,
    encode_state,
)
from tests.conftest import clustered_data

TINY: dict[str, Any] = {
    "epochs": 1,
    "embedding_dim": 8,
    "hidden_dim": 8,
    "max_len": 6,
    "num_layers": 2,
    "progress": False,
    "batch_size": 32,
    "k": 20,
    "num_threads": 1,  # tiny models: one thread is fastest (and kind to a shared machine)
}
MODELS = ["pop", "itemknn", "userknn", "als", "ease", "gru4rec", "sasrec", "content"]


def _available(name: str) -> bool:
    try:
        get_model_class(name)
    except (ImportError, AttributeError):
        return False
    return True


def tiny_model(name: str, data: InteractionData, **extra: Any) -> Recommender:
    cls = get_model_class(name)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    cfg = {k: v for k, v in {**TINY, **extra}.items() if k in fields}
    model = create_model(name, config=cfg)
    if isinstance(model, ItemText) and model.wants_item_text():  # a deterministic random text table
        table = torch.randn(data.n_items, 8, generator=torch.Generator().manual_seed(0))
        table[0] = 0.0
        model.set_item_text(table, "test")
    return model.fit(data, None)


@pytest.fixture(scope="module")
def data() -> InteractionData:
    return clustered_data(n_users=30, n_items=24, n_groups=3, per_user=10, seed=1)


_FITTED: dict[str, Recommender] = {}


def fitted(name: str, data: InteractionData) -> Recommender:
    if not _available(name):
        pytest.skip(f"{name} not available")
    if name not in _FITTED:
        extra = {"recency_half_life": 2.0} if name == "itemknn" else {}
        _FITTED[name] = tiny_model(name, data, **extra)
    return _FITTED[name]


# ---- stores -------------------------------------------------------------------------------------


def test_store_history_state_delete(make_store: Callable[[], StateStore]) -> None:
    store = make_store()
    assert isinstance(store, StateStore)
    store.append([Event("u1", "a", 1), Event("u2", "x", 2, "click"), Event("u1", "b", 3)])
    store.append([Event("u1", "c", 2)])  # arrival order is kept
    h = store.history("u1")
    assert h.items == ("a", "b", "c") and h.timestamps.tolist() == [1, 3, 2]
    assert store.history("u1", max_len=2).items == ("b", "c")
    assert store.history("u2").event_types == ("click",)
    assert len(store.history("nobody")) == 0
    gen = store.stamp("u1").generation
    st = CachedState({"h": torch.arange(6, dtype=torch.float32).reshape(2, 3)}, "v1", 3, gen)
    assert store.put_state("u1", st)
    got = store.get_state("u1")
    assert got is not None and got.version == "v1" and got.n_events == 3
    assert torch.equal(got.tensors["h"], st.tensors["h"])
    assert store.delete_user("u1") is True
    assert len(store.history("u1")) == 0 and store.get_state("u1") is None
    assert store.delete_user("u1") is False
    assert store.history("u2").items == ("x",)


def test_sqlite_is_one_wal_file_and_persists(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    with SQLiteStore(path) as store:
        store.append([Event("u", "i1", 5)])
        assert store.put_state("u", CachedState({"x": torch.ones(2)}, "v", 1, store.stamp("u").generation))
    with SQLiteStore(path) as again:
        assert again.history("u").items == ("i1",)
        assert again.get_state("u") is not None
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cols = [r[1] for r in con.execute("PRAGMA table_info(events)")]
    assert {"user_id", "item_id", "event_type", "ts"} <= set(cols)
    con.close()


@pytest.mark.parametrize(("pages", "bounded"), [(20, True), (100_000, False)])
def test_sqlite_checkpoints_the_wal_every_checkpoint_pages(tmp_path: Path, pages: int, bounded: bool) -> None:
    """The WAL is copied back (and restarted) once it holds `checkpoint_pages` pages: with 20 it
    stays near 20 pages plus one batch; with more pages than written it holds every batch."""
    path = tmp_path / "s.db"
    with SQLiteStore(path, checkpoint_pages=pages) as store:
        for b in range(60):
            store.append(Event(f"u{(b * 37 + j) % 500}", f"i{j}", b) for j in range(100))
        wal = (tmp_path / "s.db-wal").stat().st_size
    assert (wal < 400_000) is bounded, wal


@pytest.mark.parametrize(
    "tensors",
    [
        {"a": torch.randn(3, 4), "n": torch.tensor([7])},
        {"f64": torch.randn(5, dtype=torch.float64), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3)},
        {"mask": torch.ones(3, 4, dtype=torch.bool)[:, ::2], "ids": torch.arange(6).reshape(2, 3).t()},
        {"bf16": torch.randn(4, 2).bfloat16(), "n": torch.tensor([7])},  # written through torch
    ],
    ids=["float32", "float64-scalar-empty", "views", "bfloat16"],
)
def test_state_serialisation_round_trip(tensors: dict[str, torch.Tensor]) -> None:
    st = CachedState(tensors, "abc", 9, 4)
    back = decode_state(encode_state(st))
    assert (back.version, back.n_events, back.generation) == ("abc", 9, 4)
    assert back.tensors.keys() == st.tensors.keys()
    for k, t in st.tensors.items():
        assert back.tensors[k].dtype == t.dtype and back.tensors[k].shape == t.shape
        assert torch.equal(back.tensors[k], t)


def test_a_state_encoded_before_the_numpy_writer_still_decodes() -> None:
    """A blob written by safetensors' torch writer (every release before the numpy writer) has
    the same checksum and decodes to the same tensors."""
    from safetensors.torch import save

    tensors = {"s": torch.randn(7), "shift.log": torch.randn(2, 3, dtype=torch.float64)}
    blob = encode_state(CachedState(tensors, "v", 3, 1))
    header = json.loads(blob[8 : 8 + int.from_bytes(blob[:8], "little")])
    meta = header["__metadata__"]
    old = save(tensors, metadata=meta)
    back = decode_state(old)
    assert all(torch.equal(back.tensors[k], tensors[k]) for k in tensors) and back.n_events == 3
    with pytest.raises(DynrecError, match="checksum"):
        decode_state(save({**tensors, "s": tensors["s"] + 1}, metadata=meta))


def test_in_memory_max_history() -> None:
    store = InMemoryStore(max_history=3)
    store.append(Event("u", f"i{j}", j) for j in range(10))
    assert store.history("u").items == ("i7", "i8", "i9")


# ---- incremental state == full recomputation, for every model --------------------------------------


def _split_histories(data: InteractionData, n_pre: int) -> tuple[QueryBatch, QueryBatch, list[np.ndarray]]:
    users = np.arange(1, data.n_users)
    full = [data.sequence(u) for u in users]
    ts = [data.timestamps[data.indptr[u] : data.indptr[u + 1]] for u in users]
    pre = QueryBatch.from_histories(
        [h[:n_pre].tolist() for h in full], users, [t[:n_pre].tolist() for t in ts]
    )
    whole = QueryBatch.from_histories([h.tolist() for h in full], users, [t.tolist() for t in ts])
    return pre, whole, full


@pytest.mark.parametrize("name", MODELS)
def test_incremental_state_equals_recomputation(name: str, data: InteractionData) -> None:
    model = fitted(name, data)
    adapter = adapter_for(model)
    if name in ("gru4rec", "sasrec", "itemknn", "als", "ease", "content"):
        assert not isinstance(adapter, RecomputeAdapter)  # a real O(1)-per-event state
    pre, whole, full = _split_histories(data, 2)
    state = adapter.init(pre)
    lens = np.array([len(h) for h in full])
    for r in range(2, int(lens.max())):
        mask = lens > r
        items = np.array([h[r] if len(h) > r else 1 for h in full])
        ts = np.where(mask, whole.timestamps[np.minimum(whole.indptr[:-1] + r, len(whole.items) - 1)], 0)
        state = adapter.step_where(state, items, ts, mask)
    got, want = adapter.score(state), model.score(whole)
    fin = torch.isfinite(want)
    assert torch.equal(fin, torch.isfinite(got))
    torch.testing.assert_close(got[fin], want[fin], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_online_recommender_follows_each_event(
    name: str, make_store: Callable[[], StateStore], data: InteractionData
) -> None:
    model = fitted(name, data)
    store = make_store()
    online = OnlineRecommender(model, store)
    assert model.item_vocab is not None and model.user_vocab is not None
    user = model.user_vocab.ids[0]
    seq = model.item_vocab.to_ids(data.sequence(1))
    online.observe([Event(user, i, t) for t, i in enumerate(seq[:3])])
    before = online.recommend(user, 5)
    for t, item in enumerate(seq[3:], start=3):
        online.observe(Event(user, item, t))
        cached = online.scores(user, exclude_seen=False)
        torch.testing.assert_close(cached, online.recompute_scores(user), rtol=1e-4, atol=1e-4)
    after = online.recommend(user, 5)
    assert not set(after.items) & set(seq)  # seen items excluded
    assert len(after.items) == 5
    if name != "pop":
        assert before.items != after.items or before.scores != after.scores
    # the state was cached and is reused (not rebuilt) on the next read
    c = store.get_state(user)
    assert c is not None and c.version == online.version and c.n_events == len(seq)


@pytest.mark.parametrize("name", [*MODELS, "recompute"])
def test_batches_over_many_users_step_together_and_equal_recomputation(
    name: str, data: InteractionData
) -> None:
    """One observe() with interleaved events of several users (uneven counts, an unknown item,
    a user seen for the first time) moves every cached state as recomputation from the store."""
    model = fitted("itemknn" if name == "recompute" else name, data)
    adapter = RecomputeAdapter(model) if name == "recompute" else None
    online = OnlineRecommender(model, InMemoryStore(), adapter=adapter, persist_every=4)
    assert model.item_vocab is not None and model.user_vocab is not None
    users = list(model.user_vocab.ids[:5])
    seqs = {u: model.item_vocab.to_ids(data.sequence(j + 1)) for j, u in enumerate(users)}
    online.observe([Event(u, seqs[u][0], 1) for u in users[:4]])  # four hot users, one not yet
    for u in users[:4]:
        online.scores(u)
    batch = [
        Event(users[0], seqs[users[0]][1], 2),
        Event(users[1], seqs[users[1]][1], 2),
        Event(users[0], "never-seen", 3),
        Event(users[2], seqs[users[2]][1], 2),
        Event(users[0], seqs[users[0]][2], 4),
        Event(users[4], seqs[users[4]][0], 5),
        Event(users[1], seqs[users[1]][2], 6),
        Event(users[0], seqs[users[0]][3], 7),
    ]
    online.observe(batch)
    for u in users:
        torch.testing.assert_close(
            online.scores(u, exclude_seen=False), online.recompute_scores(u), rtol=1e-4, atol=1e-4
        )


def test_unknown_items_are_kept_but_skipped(data: InteractionData) -> None:
    model = fitted("itemknn", data)
    online = OnlineRecommender(model)
    assert model.item_vocab is not None
    known = model.item_vocab.ids[:2]
    online.observe(
        [Event("new-user", known[0], 1), Event("new-user", "never-seen", 2), Event("new-user", known[1], 3)]
    )
    assert online.store.history("new-user").items == (known[0], "never-seen", known[1])
    torch.testing.assert_close(
        online.scores("new-user", exclude_seen=False), online.recompute_scores("new-user")
    )


def test_stale_state_is_rebuilt_after_model_change(data: InteractionData) -> None:
    model = tiny_model("pop", data)  # a private copy: mutated below
    assert model.item_vocab is not None
    online = OnlineRecommender(model)
    online.observe(Event("u1", model.item_vocab.ids[0], 1))
    v0 = online.version
    model.popularity = model.popularity * 2  # type: ignore[attr-defined]
    online.refresh()
    assert online.version != v0
    online.recommend("u1")  # rebuilds the state from the history under the new version
    c = online.store.get_state("u1")
    assert c is not None and c.version == online.version


def test_delete_user_forgets_everything(tmp_path: Path, data: InteractionData) -> None:
    model = fitted("itemknn", data)
    online = OnlineRecommender(model, SQLiteStore(tmp_path / "p.db"))
    assert model.item_vocab is not None
    online.observe([Event("alice", model.item_vocab.ids[0], 1), Event("bob", model.item_vocab.ids[1], 1)])
    online.recommend("alice")
    assert online.delete_user("alice")
    assert len(online.store.history("alice")) == 0 and online.store.get_state("alice") is None
    assert online.store.history("bob").items == (model.item_vocab.ids[1],)


# ---- interests ------------------------------------------------------------------------------------


def test_interests_short_vs_long_with_categories(data: InteractionData) -> None:
    model = fitted("itemknn", data)
    assert model.item_vocab is not None
    n = model.n_items
    # 3 groups of 8 items (clustered_data: item index i belongs to group (i-1) // 8)
    rows = np.arange(1, n)
    cats = sp.csr_matrix((np.ones(n - 1), (rows, (rows - 1) // 8)), shape=(n, 3))
    online = OnlineRecommender(model, item_categories=(cats, ["g0", "g1", "g2"]))
    ids = model.item_vocab.to_ids(np.arange(1, n))
    # long history in group 0, then the last 4 events in group 2
    online.observe(
        [Event("u", ids[j], j) for j in range(6)] + [Event("u", ids[16 + j], 10 + j) for j in range(4)]
    )
    it = online.interests("u", short_window=4)
    assert it.basis == "categories"
    assert it.short_term.categories[0][0] == "g2" and it.short_term.categories[0][1] == pytest.approx(1.0)
    assert it.long_term.categories[0][0] == "g0" and it.long_term.categories[0][1] == pytest.approx(0.6)
    assert it.short_term.n_events == 4 and it.long_term.n_events == 10
    assert len(it.short_term.items) > 0


def test_interests_without_metadata_use_clusters(data: InteractionData) -> None:
    model = fitted("als", data)
    online = OnlineRecommender(model)
    assert model.item_vocab is not None
    online.observe([Event("u", i, t) for t, i in enumerate(model.item_vocab.ids[:5])])
    it = online.interests("u", short_window=2)
    assert it.basis == "clusters"
    shares = [x for _, x in it.long_term.categories]
    assert 0 < len(shares) <= 5 and shares == sorted(shares, reverse=True) and sum(shares) <= 1 + 1e-6


def test_checkpointed_state_survives_a_restart(tmp_path: Path, data: InteractionData) -> None:
    """With persist_every > 1 the store holds a checkpoint; a new process replays the tail."""
    model = fitted("sasrec", data)
    assert model.item_vocab is not None
    seq = model.item_vocab.to_ids(np.concatenate([data.sequence(2), data.sequence(3)])[:10])
    db = tmp_path / "c.db"
    first = OnlineRecommender(model, SQLiteStore(db), persist_every=4)
    for t, item in enumerate(seq):
        first.observe(Event("u", item, t))
    want = first.scores("u")
    c = first.store.get_state("u")
    assert c is not None and c.n_events == 8 and len(seq) == 10  # checkpoint after 8, 2 events ahead
    second = OnlineRecommender(model, SQLiteStore(db), cache_size=0)  # a restart, no hot cache
    torch.testing.assert_close(second.scores("u"), want, rtol=1e-4, atol=1e-4)
    first.flush()
    c = first.store.get_state("u")
    assert c is not None and c.n_events == 10
