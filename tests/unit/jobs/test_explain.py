"""Explanations (`dynrec.jobs.explain`) and interest profiles (`dynrec.online.interests`) on
hand-built histories with known answers: summed contributions of repeated items, exact tag shares,
representative items by tags or by item vectors, and models that do not explain."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dynrec import jobs
from dynrec.data.query import QueryBatch, Recommendations
from dynrec.data.vocab import Vocabulary
from dynrec.jobs.explain import explain_items, explanation_unavailable
from dynrec.jobs.items import ItemInfo
from dynrec.jobs.recommend import RecommendResult, recommend_for
from dynrec.models.base import Recommender
from dynrec.online.interests import InterestProfile
from dynrec.online.interests import interest_profile as profile_of
from tests.unit.jobs.test_items import ToyText, write_events


def _toy(table: list[list[float]]) -> ToyText:
    """A fitted toy text model over items a, b, c, d (rows 1..4 of `table`)."""
    m = ToyText()
    m.item_vocab = Vocabulary(["a", "b", "c", "d"])
    m.user_vocab = Vocabulary(["u"])
    m.table = torch.tensor([[0.0, 0.0], *table], dtype=torch.float32)
    return m


def _q(model: Recommender, ids: list[str]) -> QueryBatch:
    assert model.item_vocab is not None
    idx = model.item_vocab.lookup(ids).astype(np.int64)
    return QueryBatch(np.zeros(1, np.int64), np.array([0, idx.size], np.int64), idx)


def test_contributions_of_repeated_items_are_summed() -> None:
    m = _toy([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]])
    q = _q(m, ["a", "b", "a"])
    got = explain_items(m, q, ["c", "d"])
    # toy: contribution of one event = T_h · T_target / 3
    assert got is not None
    (c, d) = got
    assert (
        [i for i, _ in c] == ["a", "b"]
        and c[0][1] == pytest.approx(2 / 3)
        and c[1][1] == pytest.approx(1 / 3)
    )
    assert (
        [i for i, _ in d] == ["a", "b"]
        and d[0][1] == pytest.approx(4 / 3)
        and d[1][1] == pytest.approx(-1 / 3)
    )
    score = m.score(q)[0]
    assert sum(w for _, w in c) == pytest.approx(float(score[3]))  # exact for an additive model
    top1 = explain_items(m, q, ["c"], top=1)
    assert top1 is not None and len(top1[0]) == 1 and top1[0][0][0] == "a"
    recs = Recommendations((("c", "d"),), ((1.0, 0.5),), ("exact",)).with_explanations([got])
    answer = RecommendResult(recs, None, "toy", titles={"a": "Alpha"}).to_json()
    assert answer["because"][0] == [
        {"item": "a", "title": "Alpha", "weight": pytest.approx(2 / 3)},
        {"item": "b", "title": None, "weight": pytest.approx(1 / 3)},
    ]
    assert answer["titles"] == [None, None] and answer["explanation_unavailable"] is None
    assert explain_items(m, _q(m, []), ["c"]) == [[]]


def test_models_that_do_not_explain_say_so(tmp_path: Path) -> None:
    prepared = jobs.prepare(str(write_events(tmp_path)))
    pop = jobs.train("pop", prepared, out=tmp_path / "pop")
    assert explain_items(pop, _q(pop, ["i1"]), ["i2"]) is None
    assert "pop does not attribute its scores" in (explanation_unavailable(pop) or "")
    got = recommend_for(tmp_path / "pop", history=["i1"], k=2, explain=True).to_json()
    assert got["because"] is None and "not an Explainer" in got["explanation_unavailable"]
    assert len(got["items"]) == 2 and got["titles"] == [None, None]
    assert "because" not in recommend_for(tmp_path / "pop", history=["i1"], k=2).to_json()


def _profile(model: Recommender, q: QueryBatch, info: ItemInfo, *, short_window: int) -> dict[str, Any]:
    """The profile's JSON form (`InterestProfile.to_json`, what ``dynrec profile --json`` shows)."""
    prof: InterestProfile = profile_of(model, q, info, short_window=short_window)
    return prof.to_json()


INFO: ItemInfo = {
    "a": {"title": "Alpha", "tags": ["A"]},
    "b": {"title": "Beta", "tags": ["A", "B"]},
    "c": {"title": "Gamma", "tags": ["C"]},
    "d": {"title": None, "tags": []},
}


def test_profile_tag_shares_shift_and_items_by_tags(tmp_path: Path) -> None:
    prepared = jobs.prepare(str(write_events(tmp_path)))
    pop = jobs.train("pop", prepared)  # no item vectors: representative items by tag share
    pop.item_vocab = Vocabulary(["a", "b", "c", "d"])
    q = _q(pop, ["a", "a", "b", "c", "c", "c", "c", "d"])
    p = _profile(pop, q, INFO, short_window=4)
    # long: A = 1 + 1 + 0.5, B = 0.5, C = 4 (d has no tags) -> / 7
    assert p["long_term"]["n_events"] == 8
    assert p["long_term"]["tags"] == [
        ["C", pytest.approx(4 / 7)],
        ["A", pytest.approx(2.5 / 7)],
        ["B", pytest.approx(0.5 / 7)],
    ]
    # item weight = sum of its tags' shares: c 4/7 > b 3/7 > a 2.5/7 > d 0
    assert p["long_term"]["item_ids"] == ["c", "b", "a"] and p["long_term"]["items"] == [
        "Gamma",
        "Beta",
        "Alpha",
    ]
    # short: the last 4 events c, c, c, d -> C 100%; d (no tags) comes after c
    assert p["short_term"]["tags"] == [["C", 1.0]] and p["short_term"]["item_ids"] == ["c", "d"]
    assert p["short_term"]["items"] == ["Gamma", "d"]  # no title: the id
    assert p["shift"] == [["C", pytest.approx(3 / 7)]]
    # no tags at all: the most recent distinct items
    bare = _profile(pop, q, {}, short_window=2)
    assert bare["long_term"]["tags"] == [] and bare["long_term"]["item_ids"] == ["d", "c", "b"]
    assert bare["shift"] == []
    with pytest.raises(ValueError, match="short_window"):
        _profile(pop, q, INFO, short_window=0)


def test_profile_items_nearest_the_mean_item_vector() -> None:
    # a, b point one way, c the other, d in between: the mean of a, a, b, c is nearest a/b
    m = _toy([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.5, 0.5]])
    p = _profile(m, _q(m, ["a", "a", "b", "c"]), INFO, short_window=1)
    mean = torch.tensor([2.9, 1.1]) / 4
    cos = {
        k: float(torch.nn.functional.cosine_similarity(mean, m._t()[i], dim=0))
        for k, i in zip("abc", (1, 2, 3), strict=True)
    }
    want = sorted("abc", key=lambda k: -cos[k])
    assert p["long_term"]["item_ids"] == want and want[-1] == "c"
    assert p["short_term"]["item_ids"] == ["c"] and p["short_term"]["tags"] == [["C", 1.0]]
