"""`QueryBatch.from_ids` and `Recommendations.from_topk`: the one query-from-ids and the one
top-k -> ids conversion (known answers)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from dynrec.data.query import QueryBatch, Recommendations, topk_stable
from dynrec.data.vocab import Vocabulary
from dynrec.errors import UnknownIdError

ITEMS = Vocabulary(["a", "b", "c", "d"])  # a=1 b=2 c=3 d=4
USERS = Vocabulary(["u1", "u2"])


def test_from_ids_skips_unknown_items_with_their_timestamps() -> None:
    q = QueryBatch.from_ids(
        ITEMS,
        [["c", "zz", "a"], [], ["d"]],
        users=["u2", None, "nobody"],
        user_vocab=USERS,
        timestamps=[[10, 11, 12], [], np.array([20])],
    )
    assert q.users.tolist() == [2, 0, 0]
    assert q.indptr.tolist() == [0, 2, 2, 3]
    assert q.items.tolist() == [3, 1, 4]
    assert q.timestamps is not None and q.timestamps.tolist() == [10, 12, 20]
    assert q.weights is None
    assert q.items.dtype == np.int64 and q.users.dtype == np.int64 and q.indptr.dtype == np.int64


def test_from_ids_without_users_or_timestamps() -> None:
    q = QueryBatch.from_ids(ITEMS, [["b", "b"]])
    assert q.users.tolist() == [0]
    assert q.items.tolist() == [2, 2]
    assert q.timestamps is None
    empty = QueryBatch.from_ids(ITEMS, [])
    assert len(empty) == 0 and empty.items.shape == (0,) and empty.indptr.tolist() == [0]


def test_from_ids_refuses_unknown_naming_the_id() -> None:
    with pytest.raises(UnknownIdError, match="'zz'"):
        QueryBatch.from_ids(ITEMS, [["a", "zz"]], unknown="error")
    with pytest.raises(ValueError):
        QueryBatch.from_ids(ITEMS, [["a"]], timestamps=[[1, 2]])
    with pytest.raises(ValueError):
        QueryBatch.from_ids(ITEMS, [["a"]], users=["u1", "u2"], user_vocab=USERS)


def test_from_topk_drops_non_finite_and_maps_ids() -> None:
    top = torch.tensor([[3, 1, 2], [4, 2, 1]])
    vals = torch.tensor([[0.5, 0.25, -torch.inf], [2.0, float("nan"), 1.0]])
    rec = Recommendations.from_topk(top, vals, ITEMS, retrieval="ann:hnsw")
    assert len(rec) == 2
    assert rec.item_ids == (("c", "a"), ("d", "a"))
    assert rec.scores == ((0.5, 0.25), (2.0, 1.0))
    assert rec.retrieval == ("ann:hnsw", "ann:hnsw")
    assert rec.row(1) == (["d", "a"], [2.0, 1.0])
    assert rec.to_json() == [
        {"items": ["c", "a"], "scores": [0.5, 0.25], "retrieval": "ann:hnsw"},
        {"items": ["d", "a"], "scores": [2.0, 1.0], "retrieval": "ann:hnsw"},
    ]
    json.dumps(rec.to_json())


def test_from_topk_of_topk_stable_matches_the_ranking() -> None:
    scores = torch.tensor([[-torch.inf, 1.0, 3.0, 3.0, 0.5]])  # index 0 = padding
    top, vals = topk_stable(scores, 10)
    rec = Recommendations.from_topk(top, vals, ITEMS)
    assert rec.row() == (["b", "c", "a", "d"], [3.0, 3.0, 1.0, 0.5])  # ties by lower index
    assert rec.retrieval == ("exact",)
    empty = Recommendations.from_topk(top[:, :0], vals[:, :0], ITEMS, retrieval="popular")
    assert empty.row_json() == {"items": [], "scores": [], "retrieval": "popular"}


def test_recommendations_explanations_and_shape_checks() -> None:
    rec = Recommendations.from_topk(torch.tensor([[2]]), torch.tensor([[1.5]]), ITEMS)
    ex = rec.with_explanations([[[("a", 0.75)]]])
    assert ex.row_json()["explanations"] == [[["a", 0.75]]]
    with pytest.raises(ValueError):
        Recommendations.from_topk(torch.tensor([[1, 2]]), torch.tensor([[1.0]]), ITEMS)
    with pytest.raises(ValueError):
        Recommendations((("a",),), ((1.0, 2.0),), ("exact",))
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.retrieval = ("popular",)  # type: ignore[misc]
