"""Top-k from live states through an index (`dynrec.online.retrieval`): with an exact index (IVF,
one cell, scanned whole) it returns the exact path's items and exclusions; rows whose scores are
no dot product stay exact; the session serves stored users through it and says so. Also the
state pieces it needs: ALS's state query vector and in-place row step."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch

from dynrec.data.events import Event
from dynrec.data.query import QueryBatch
from dynrec.models.base import Recommender
from dynrec.models.capabilities import IncrementalState, QueryEmbeddings, RowStep, StateQueryEmbeddings
from dynrec.models.retrieval import AnnConfig, AnnIndex
from dynrec.online.adapters import ModelStateAdapter, StateBatch, adapter_for
from dynrec.online.retrieval import state_top_k
from dynrec.online.session import OnlineRecommender
from dynrec.online.store import InMemoryStore
from tests.conftest import clustered_data
from tests.unit.online.test_state import tiny_model

pytest.importorskip("faiss")

EXACT_INDEX = AnnConfig(kind="ivf", nlist=1, nprobe=1, num_threads=1)
"""One k-means cell, scanned whole: a flat scan, so the index answers exactly."""

HISTORIES = [[1, 2, 3], [4, 5], [7, 8, 9, 10, 7], [2], [11, 12, 13, 14]]


@pytest.fixture(scope="module")
def als() -> Recommender:
    data = clustered_data(n_users=60, n_items=40, n_groups=4, per_user=8, seed=5)
    return tiny_model("als", data)


def _exact(model: Recommender, q: QueryBatch, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    return model.recommend(q, k, exclude_seen=True)


@pytest.mark.parametrize("name", ["als", "gru4rec", "sasrec"])
def test_state_query_vector_equals_the_history_query_vector(name: str) -> None:
    """The `StateQueryEmbeddings` contract: a state built event by event (ragged rows, stepped in
    place) gives the query vector of its whole history, and the top-k through an exact index from
    the states is the model's own top-k."""
    data = clustered_data(n_users=60, n_items=40, n_groups=4, per_user=8, seed=5)
    model = tiny_model(name, data, long_term="gate")
    assert isinstance(model, StateQueryEmbeddings) and isinstance(model, QueryEmbeddings)
    adapter = adapter_for(model)
    assert isinstance(adapter, ModelStateAdapter)
    q = QueryBatch.from_histories(HISTORIES)
    state = adapter.init(QueryBatch.from_histories([h[:1] for h in HISTORIES]))
    for r in range(1, max(len(h) for h in HISTORIES)):
        rows = np.array([b for b, h in enumerate(HISTORIES) if len(h) > r], dtype=np.int64)
        items = np.array([HISTORIES[b][r] for b in rows], dtype=np.int64)
        state = adapter.step_rows_(state, rows, items, np.zeros_like(items))
    got = adapter.query_embeddings(state)
    assert got is not None
    torch.testing.assert_close(got, model.query_embeddings(q), rtol=1e-4, atol=1e-4)
    top = state_top_k(
        adapter, state, 8, exclude=q.seen_mask_indices(), index=AnnIndex.for_model(model, EXACT_INDEX)
    )
    want, _ = model.recommend(q, 8)
    assert top.served == ("ann:ivf",) * len(HISTORIES)
    assert (top.items == want).float().mean() > 0.95  # float32 rounding may swap near-equal scores


def test_als_row_step_changes_only_its_rows_in_place(als: Recommender) -> None:
    assert isinstance(als, RowStep)
    adapter = adapter_for(als)
    state = adapter.init(QueryBatch.from_histories(HISTORIES))
    before = {k: v.clone() for k, v in state.items()}
    buffers = {k: v.data_ptr() for k, v in state.items()}
    rows, items = np.array([3, 0]), np.array([5, 1])  # row 0 sees item 1 again, row 3 a new item
    want = adapter.step(adapter.select(before, rows), items, np.zeros(2, np.int64))
    out = adapter.step_rows_(state, rows, items, np.zeros(2, np.int64))
    assert {k: v.data_ptr() for k, v in out.items()} == buffers  # no copy of the batch
    for k in state:
        torch.testing.assert_close(out[k][torch.from_numpy(rows)], want[k])
        torch.testing.assert_close(out[k][[1, 2, 4]], before[k][[1, 2, 4]], rtol=0, atol=0)


def test_exact_index_returns_the_exact_items_and_obeys_exclusions(als: Recommender) -> None:
    q = QueryBatch.from_histories(HISTORIES)
    adapter = adapter_for(als)
    state = adapter.init(q)
    index = AnnIndex.for_model(als, EXACT_INDEX)
    got = state_top_k(adapter, state, 10, exclude=q.seen_mask_indices(), index=index)
    want_i, want_s = _exact(als, q, 10)
    assert got.items.tolist() == want_i.tolist()
    torch.testing.assert_close(got.scores, want_s, rtol=1e-4, atol=1e-4)
    assert got.served == ("ann:ivf",) * len(HISTORIES)
    for b, h in enumerate(HISTORIES):
        assert not set(h) & set(got.items[b].tolist())
    exact = state_top_k(adapter, state, 10, exclude=q.seen_mask_indices())
    assert exact.items.tolist() == want_i.tolist() and exact.served == ("exact",) * len(HISTORIES)


class _NoDotRow(ModelStateAdapter):
    """ALS's adapter with row 1's scores declared no dot product (as a leaning shift makes them)."""

    def dot_rows(self, state: StateBatch) -> npt.NDArray[np.bool_]:
        rows = super().dot_rows(state)
        rows[1] = False
        return rows


def test_rows_the_index_cannot_rank_and_empty_histories_stay_exact(als: Recommender) -> None:
    assert isinstance(als, IncrementalState)
    histories = [*HISTORIES, []]
    q = QueryBatch.from_histories(histories)
    adapter = _NoDotRow(als, als)
    state = adapter.init(q)
    index = AnnIndex.for_model(als, EXACT_INDEX)
    got = state_top_k(adapter, state, 5, exclude=q.seen_mask_indices(), index=index)
    assert got.served == ("ann:ivf", "exact", "ann:ivf", "ann:ivf", "ann:ivf", "exact")
    want_i, _ = _exact(als, q, 5)
    assert got.items.tolist() == want_i.tolist()


def test_session_serves_stored_users_through_the_index(als: Recommender) -> None:
    assert als.item_vocab is not None
    ids = [als.item_vocab.to_ids(np.array(h)) for h in HISTORIES[:3]]
    index = AnnIndex.for_model(als, EXACT_INDEX)
    exact, ann = OnlineRecommender(als, InMemoryStore()), OnlineRecommender(als, InMemoryStore(), index=index)
    for online in (exact, ann):
        online.observe([Event(f"u{b}", i, j) for b, h in enumerate(ids) for j, i in enumerate(h)])
    users = [f"u{b}" for b in range(3)]
    want, got = exact.recommend_many(users, 8), ann.recommend_many(users, 8)
    assert [r.items for r in got] == [r.items for r in want]
    assert [r.retrieval for r in got] == ["ann:ivf"] * 3 and [r.retrieval for r in want] == ["exact"] * 3
    new = got[0].items[0]  # the user takes their top item: it leaves their list at once
    for online in (exact, ann):
        online.observe([Event("u0", new, 100), Event("u1", new, 100), Event("u1", got[1].items[0], 101)])
    after = ann.recommend("u0", 8)
    assert new not in after.items and after.retrieval == "ann:ivf"
    assert after.items == exact.recommend("u0", 8).items
    assert ann.recommend("u1", 8).items == exact.recommend("u1", 8).items


def test_a_state_in_a_shift_lean_is_served_exactly_until_the_lean_fades(als: Recommender) -> None:
    """With shift detection leaning on a fresh shift, that user's scores are no dot product: the
    session serves them exactly (and says so) for the lean's events, then through the index."""
    from dynrec.online.shifts import ShiftCalibration, ShiftConfig

    assert als.item_vocab is not None
    cal = ShiftCalibration(0.3, 0.6, 0.0, 1.0, 0, "item vectors", 0.0, ShiftConfig(warmup=3, lean_events=3))
    online = OnlineRecommender(als, InMemoryStore(), index=AnnIndex.for_model(als, EXACT_INDEX))
    online.detect_shifts(cal.with_lean(2.0))
    group = [[f"i{g * 10 + j}" for j in range(1, 11)] for g in range(4)]  # clustered_data's groups
    online.observe([Event("v", item, t) for t, item in enumerate(group[0][:8])])
    assert online.recommend("v", 5).retrieval == "ann:ivf" and not online.shifts("v")
    served = []
    for t, item in enumerate(group[2][:6]):  # another taste group: a shift, then its lean fades
        online.observe(Event("v", item, 100 + t))
        served.append(online.recommend("v", 5).retrieval)
    assert online.shifts("v") and "exact" in served and served[-1] == "ann:ivf"
