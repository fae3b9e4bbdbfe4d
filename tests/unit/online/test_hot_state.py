"""`dynrec.online.hot_state.HotRows`: cached users' states as rows of one batch. Runs of events
stepped together in the rows equal stepping each state alone (a model with an in-place row step,
one without, and the history state whose buffers grow); growing the batch keeps every admitted
state; an evicted state keeps a copy of its own and its row is reused; the batch stays within its
capacity."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynrec.data.query import QueryBatch
from dynrec.models.base import Recommender
from dynrec.online.adapters import RecomputeAdapter, StateAdapter, StateBatch, adapter_for
from dynrec.online.hot_state import HotRows, HotState
from tests.conftest import clustered_data
from tests.unit.online.test_state import tiny_model

HISTORIES = [[1, 2, 3], [4, 5], [7, 8, 9, 10, 7], [2], [11, 12, 13, 14]]


@pytest.fixture(scope="module", params=["als", "itemknn", "recompute"])
def adapter(request: pytest.FixtureRequest) -> StateAdapter:
    data = clustered_data(n_users=40, n_items=30, n_groups=3, per_user=8, seed=3)
    if request.param == "recompute":
        return RecomputeAdapter(tiny_model("itemknn", data))
    model: Recommender = tiny_model(request.param, data)
    return adapter_for(model)


def _hot(adapter: StateAdapter, history: list[int]) -> HotState:
    return HotState(adapter.init(QueryBatch.from_histories([history])), len(history), "v", set(history))


def _alone(adapter: StateAdapter, state: StateBatch, run: list[int]) -> StateBatch:
    for i in run:
        state = adapter.step(state, np.array([i]), np.array([0]))
    return state


def _assert_same(adapter: StateAdapter, got: StateBatch, want: StateBatch) -> None:
    if isinstance(adapter, RecomputeAdapter):  # compare the histories, not the spare width
        got, want = adapter.queries(got), adapter.queries(want)
        np.testing.assert_array_equal(got.items, want.items)
        np.testing.assert_array_equal(got.indptr, want.indptr)
        return
    for k in want:
        torch.testing.assert_close(got[k], want[k])


def test_runs_step_together_like_each_state_alone(adapter: StateAdapter) -> None:
    rows = HotRows(adapter, capacity=100)
    hots = [_hot(adapter, h) for h in HISTORIES]
    for h in hots:
        rows.admit(h)
    runs = [[3, 3, 9], [], [20, 1, 2, 5, 6, 7, 8, 9, 11, 12, 13, 14, 15, 16, 17, 18, 19], [4], [6, 2]]
    want = [
        _alone(adapter, adapter.init(QueryBatch.from_histories([h])), r)
        for h, r in zip(HISTORIES, runs, strict=True)
    ]
    stepped = [b for b, r in enumerate(runs) if r]
    rows.step_runs_(
        [hots[b] for b in stepped],
        [np.array(runs[b], np.int64) for b in stepped],
        [np.zeros(len(runs[b]), np.int64) for b in stepped],
    )
    for h, w in zip(hots, want, strict=True):
        _assert_same(adapter, h.state, w)
        assert adapter.size(h.state) == 1


def test_growth_keeps_every_state_and_eviction_keeps_a_copy(adapter: StateAdapter) -> None:
    rows = HotRows(adapter, capacity=40)
    hots = [_hot(adapter, HISTORIES[b % len(HISTORIES)] + [b % 29 + 1]) for b in range(35)]
    want = [adapter.select(h.state, np.zeros(1, np.int64)) for h in hots]
    for h in hots:
        rows.admit(h)  # grows 16 -> 32 -> 40 rows, re-pointing the admitted states
    assert rows.allocated == 40 and len(rows) == 35
    for h, w in zip(hots, want, strict=True):
        _assert_same(adapter, h.state, w)
    gone = hots[3]
    rows.evict(gone)
    assert gone.row == -1 and len(rows) == 34
    rows.step_runs_(hots[:3], [np.array([5], np.int64)] * 3, [np.zeros(1, np.int64)] * 3)
    _assert_same(adapter, gone.state, want[3])  # its own copy: untouched by the rows' steps
    newcomer = _hot(adapter, [9, 9])
    rows.admit(newcomer)
    assert newcomer.row == 3 and rows.allocated == 40  # the freed row, no growth
    _assert_same(adapter, newcomer.state, adapter.init(QueryBatch.from_histories([[9, 9]])))
    rows.clear()
    assert len(rows) == 0 and all(h.row == -1 for h in hots)
    _assert_same(adapter, hots[0].state, _alone(adapter, want[0], [5]))
