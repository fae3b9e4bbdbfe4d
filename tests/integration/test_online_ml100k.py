"""Real data (ml-100k, marked slow): interests by genre, replay modes ordered as expected."""

from __future__ import annotations

import pytest

from dynrec.data import registry
from dynrec.data.events import Event
from dynrec.jobs import fit_for_replay, load_replay_data
from dynrec.models.base import Recommender
from dynrec.online.session import OnlineRecommender
from dynrec.replay import ReplayConfig, replay

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def knn() -> tuple[Recommender, object]:
    rd = load_replay_data("ml-100k", quantile=0.8)
    return fit_for_replay("itemknn", rd), rd


def test_interests_by_genre(knn: tuple[Recommender, object]) -> None:
    model, _ = knn
    assert model.item_vocab is not None
    online = OnlineRecommender(model, item_metadata=registry.load_items("ml-100k"))
    titles = registry.load_items("ml-100k")
    # a long run of children's films, then a short run of horror films
    kids = [i for i in model.item_vocab.ids if "Children's" in titles.genres(i)][:20]
    horror = [i for i in model.item_vocab.ids if "Horror" in titles.genres(i)][:5]
    online.observe([Event("fan", i, t) for t, i in enumerate(kids + horror)])
    it = online.interests("fan", short_window=5)
    assert it.basis == "categories"
    assert it.short_term.categories[0][0] == "Horror"
    assert it.long_term.categories[0][0] == "Children's"
    assert len(online.recommend("fan", 10).items) == 10


def test_replay_state_beats_static(knn: tuple[Recommender, object]) -> None:
    model, rd = knn
    static = replay(model, rd, ReplayConfig(mode="static"))  # type: ignore[arg-type]
    state = replay(model, rd, ReplayConfig(mode="state"))  # type: ignore[arg-type]
    assert state.metrics["NDCG@10"] > 2 * static.metrics["NDCG@10"]
    assert state.metrics["HR@10"] > 0.10
