"""Explanations: the generic leave-one-out attribution (exact on an additive toy model, `max_events`,
chunking) and every model's `explain` (shapes, exact sums for ALS/SVD, faithfulness)."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.errors import DynrecError
from dynrec.models.base import Recommender
from dynrec.models.capabilities import Explainer
from dynrec.models.config import RunOptions
from dynrec.models.explain import first_occurrence, leave_one_out, leave_one_out_batch
from dynrec.models.registry import create_model, get_model_class
from tests.conftest import clustered_data

N_ITEMS = 9
GEN = torch.Generator().manual_seed(0)
PAIR = torch.randn(N_ITEMS, N_ITEMS, generator=GEN)  # A[j, i]: what an event on j adds to item i
USER = torch.randn(4, N_ITEMS, generator=GEN)  # a per-user offset (not attributable to any event)


def additive_score(batch: QueryBatch) -> torch.Tensor:
    """score_i = user offset + Σ_j weight_j · A[h_j, i] (+ the timestamp's parity, so a variant with
    misaligned timestamps would score differently); item 8 is masked (-inf)."""
    w = np.ones(len(batch.items)) if batch.weights is None else batch.weights
    ts = np.zeros(len(batch.items)) if batch.timestamps is None else batch.timestamps % 2
    contrib = (
        PAIR[torch.from_numpy(batch.items)] * torch.from_numpy((w * (1 + ts)).astype(np.float32))[:, None]
    )
    out = USER[torch.from_numpy(batch.users)].clone()
    out.index_add_(0, torch.from_numpy(batch.row_ids()), contrib)
    out[:, 8] = -torch.inf
    return out


def toy_batch() -> QueryBatch:
    hist = [[1, 2, 3, 2], [5], [], [4, 6, 7, 1, 3, 5]]
    ts = [[10, 11, 12, 13], [5], [], [1, 2, 3, 4, 5, 6]]
    q = QueryBatch.from_histories(hist, users=[0, 1, 2, 3], timestamps=ts)
    weights = np.linspace(0.5, 2.0, len(q.items)).astype(np.float32)
    return dataclasses.replace(q, weights=weights)


def exact(batch: QueryBatch, items: torch.Tensor) -> torch.Tensor:
    assert batch.weights is not None and batch.timestamps is not None
    w = torch.from_numpy(batch.weights * (1 + batch.timestamps % 2)).float()
    targets = items[torch.from_numpy(batch.row_ids())]
    return PAIR[torch.from_numpy(batch.items)[:, None], targets] * w[:, None]


def test_variant_batch_layout() -> None:
    q = QueryBatch.from_histories(
        [[1, 2, 3], [], [4, 5]], users=[7, 8, 9], timestamps=[[1, 2, 3], [], [4, 5]]
    )
    v, rows, excluded = leave_one_out_batch(q, max_events=2)
    # query 0: full, minus event 1 (item 2), minus event 2 (item 3); query 1 has nothing to explain
    hist = [v.items[v.indptr[r] : v.indptr[r + 1]].tolist() for r in range(len(v))]
    assert hist == [[1, 2, 3], [1, 3], [1, 2], [4, 5], [5], [4]]
    assert rows.tolist() == [0, 0, 0, 2, 2, 2] and excluded.tolist() == [-1, 1, 2, -1, 3, 4]
    assert v.users.tolist() == [7, 7, 7, 9, 9, 9]
    assert v.timestamps is not None and v.timestamps.tolist() == [1, 2, 3, 1, 3, 1, 2, 4, 5, 5, 4]


def test_leave_one_out_is_exact_on_an_additive_model() -> None:
    q = toy_batch()
    items = torch.tensor([[1, 8, 3], [2, 4, 5], [1, 2, 3], [7, 2, 8]])
    got = leave_one_out(additive_score, q, items)
    want = exact(q, items)
    want[:, 1] = torch.where(items[torch.from_numpy(q.row_ids())][:, 1] == 8, 0.0, want[:, 1])
    want[-6:, 2] = 0.0  # item 8 has no finite score: no attribution
    assert got.shape == (len(q.items), 3) and got.dtype == torch.float32
    torch.testing.assert_close(got, want)
    # contributions + the user offset give back the score (the model is additive)
    summed = torch.zeros(4, 3).index_add_(0, torch.from_numpy(q.row_ids()), got)
    full = additive_score(q).gather(1, items)
    fin = torch.isfinite(full)
    torch.testing.assert_close((summed + USER.gather(1, items))[fin], full[fin])


def test_max_events_and_chunking() -> None:
    q = toy_batch()
    items = torch.tensor([[1, 2], [3, 4], [5, 6], [7, 1]])
    want = exact(q, items)
    got = leave_one_out(additive_score, q, items, max_events=2)
    last2 = np.zeros(len(q.items), dtype=bool)
    for b in range(len(q)):
        last2[max(q.indptr[b], q.indptr[b + 1] - 2) : q.indptr[b + 1]] = True
    torch.testing.assert_close(got[torch.from_numpy(last2)], want[torch.from_numpy(last2)])
    assert not got[torch.from_numpy(~last2)].any()
    calls: list[int] = []

    def counted(batch: QueryBatch) -> torch.Tensor:
        calls.append(len(batch))
        return additive_score(batch)

    one = leave_one_out(counted, q, items, chunk_rows=1)
    assert calls == [1] * (5 + 2 + 7)  # (full + one per event) for each query with events
    calls.clear()
    three = leave_one_out(counted, q, items, chunk_rows=3)
    assert max(calls) == 3 and sum(calls) == 14
    assert torch.equal(one, three) and torch.equal(one, leave_one_out(additive_score, q, items))
    with pytest.raises(DynrecError, match="max_events"):
        leave_one_out(additive_score, q, items, max_events=0)
    with pytest.raises(DynrecError, match="items has shape"):
        leave_one_out(additive_score, q, items[:2])
    empty = leave_one_out(
        additive_score, QueryBatch.from_histories([[], []]), torch.ones(2, 3, dtype=torch.long)
    )
    assert empty.shape == (0, 3)


def test_first_occurrence() -> None:
    q = QueryBatch.from_histories([[3, 1, 3, 3], [3, 2, 2]])
    assert first_occurrence(q).tolist() == [True, True, False, False, True, True, False]


# ---- every model's explain ----------------------------------------------------------------------

TINY: dict[str, Any] = {
    "epochs": 2,
    "embedding_dim": 8,
    "hidden_dim": 8,
    "hidden": (16,),
    "max_len": 6,
    "num_layers": 1,
    "batch_size": 32,
    "fold_in_steps": 10,
}
EXPLAINED = ["als", "svd", "nmf", "bpr", "mf", "gru4rec", "caser", "bert4rec", "mlp"]


@pytest.fixture(scope="module")
def data() -> InteractionData:
    return clustered_data(n_users=40, n_items=24, n_groups=3, per_user=8, seed=4)


_FITTED: dict[str, Recommender] = {}


def fitted(name: str, data: InteractionData) -> Recommender:
    if name not in _FITTED:
        fields = {f.name for f in dataclasses.fields(get_model_class(name).config_class)}
        extra = {"epochs": 8} if name == "als" else {}
        cfg = {k: v for k, v in {**TINY, **extra}.items() if k in fields}
        _FITTED[name] = create_model(name, config=cfg).fit(
            data, options=RunOptions(num_threads=1, device="cpu")
        )
    return _FITTED[name]


def queries(data: InteractionData) -> QueryBatch:
    hist = [data.sequence(u).tolist() for u in range(1, 13)]
    hist[0] = hist[0] + hist[0][:2]  # repeats
    return QueryBatch.from_histories([*hist, []], users=[*range(1, 13), 0])


@pytest.mark.parametrize("name", EXPLAINED)
def test_explain_shapes(name: str, data: InteractionData) -> None:
    model = fitted(name, data)
    assert isinstance(model, Explainer)
    q = queries(data)
    top, _ = model.recommend(q, k=3)
    c = model.explain(q, top)
    assert c.shape == (len(q.items), 3) and c.dtype == torch.float32
    assert torch.isfinite(c).all() and c.abs().sum() > 0


@pytest.mark.parametrize("name", ["als", "svd"])
def test_exact_explanations_sum_to_the_score(name: str, data: InteractionData) -> None:
    model = fitted(name, data)
    assert isinstance(model, Explainer)
    q = queries(data)
    q = dataclasses.replace(q, weights=np.linspace(0.5, 1.5, len(q.items)).astype(np.float32))
    top, _ = model.recommend(q, k=4)
    c = model.explain(q, top)
    summed = torch.zeros(len(q), 4).index_add_(0, torch.from_numpy(q.row_ids()), c)
    torch.testing.assert_close(summed, model.score(q).gather(1, top), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", EXPLAINED)
def test_removing_the_top_explained_event_lowers_the_score(name: str, data: InteractionData) -> None:
    """Faithfulness smoke: for most (query, recommended item) pairs, the history without the event
    with the largest contribution scores the item lower."""
    model = fitted(name, data)
    assert isinstance(model, Explainer)
    q = QueryBatch.from_histories([data.sequence(u).tolist() for u in range(1, 16)], users=list(range(1, 16)))
    top, _ = model.recommend(q, k=3)
    c = model.explain(q, top)
    full = model.score(q).gather(1, top)
    hists, targets, before = [], [], []
    for b in range(len(q)):
        a, e = int(q.indptr[b]), int(q.indptr[b + 1])
        for col in range(3):
            drop = a + int(c[a:e, col].argmax())
            hists.append(np.delete(q.items[a:e], drop - a).tolist())
            targets.append(int(top[b, col]))
            before.append(float(full[b, col]))
    users = np.repeat(q.users, 3)
    after = model.score(QueryBatch.from_histories(hists, users=users.tolist()))
    after_t = after.gather(1, torch.tensor(targets)[:, None])[:, 0]
    lowered = (after_t < torch.tensor(before)).float().mean()
    assert lowered >= 0.7, f"{name}: only {float(lowered):.2f} of the pairs lowered"
