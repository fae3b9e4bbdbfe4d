"""One interest profile (`dynrec.online.interests`): the session's interests (the page) and the
profile (``/profile``, ``dynrec profile``) give the same shares for the same history, an event
spreading a weight of 1 evenly over its item's tags."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from dynrec.data.events import Event
from dynrec.data.query import QueryBatch
from dynrec.data.vocab import Vocabulary
from dynrec.online.interests import (
    Categories,
    category_shares,
    interest_profile,
    percent,
    tag_categories,
)
from dynrec.online.session import OnlineRecommender
from tests.unit.online.test_state import clustered_data, fitted


def test_session_interests_and_profile_give_the_same_shares() -> None:
    model = fitted("itemknn", clustered_data(n_users=30, n_items=24, n_groups=3, per_user=10, seed=1))
    assert model.item_vocab is not None
    a, b, c = model.item_vocab.ids[:3]
    info = {a: {"title": "A", "tags": ["x", "y"]}, b: {"title": "B", "tags": ["z"]}, c: {"tags": []}}
    online = OnlineRecommender(model, item_info=info)
    online.observe([Event("u", i, t) for t, i in enumerate([a, b, c])])
    it = online.interests("u", short_window=2)
    # a spreads 1 over x and y, b gives z 1, c has no tags: z 1/2, x 1/4, y 1/4 (not 1/3 each)
    want = [("z", 0.5), ("x", 0.25), ("y", 0.25)]
    assert it.basis == "categories" and it.long_term.categories == want  # exact in binary
    idx = model.item_vocab.lookup([a, b, c]).astype(np.int64)
    q = QueryBatch(np.zeros(1, np.int64), np.array([0, 3], np.int64), idx)
    prof = interest_profile(model, q, info, short_window=2)
    assert prof.long_term.tags == want
    assert prof.short_term.tags == it.short_term.categories


def test_categories_rows_spread_one_event() -> None:
    m = sp.csr_matrix(np.array([[0, 0], [1, 1], [0, 1]], dtype=np.float32))
    cats = Categories.of(m, ["p", "q"])
    assert category_shares(np.array([1, 2]), cats) == pytest.approx({"p": 0.25, "q": 0.75})
    assert category_shares(np.array([0]), cats) == {}
    tagged = tag_categories(Vocabulary(["i", "j"]), {"i": {"tags": ["t", "t"]}, "k": {"tags": ["s"]}})
    assert tagged.names == ["t"] and category_shares(np.array([1, 2]), tagged) == {"t": 1.0}


@pytest.mark.parametrize(
    ("share", "js_round"),
    # what the page's Math.round(share * 100) gives (node -e "console.log(Math.round(0.125 * 100))": 13)
    [
        (0.125, 13),
        (0.025, 3),
        (0.145, 14),
        (0.29, 29),
        (0.005, 1),
        (0.0049, 0),
        (1 / 3, 33),
        (1.0, 100),
        (0.0, 0),
    ],
)
def test_percent_rounds_as_the_page_does(share: float, js_round: int) -> None:
    # Python's :.0% rounds halves to even: 0.125 -> "12%", 0.025 -> "2%", where the page shows 13%, 3%
    assert percent(share) == js_round
