"""The `content` model: hand-computed scores on a 4-item text table, state == full scoring, exact
explanations, new items from text alone, and save/load with validated tensors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError
from dynrec.models.base import Recommender
from dynrec.models.capabilities import Explainer, IncrementalState, ItemEmbeddings, ItemText, PartialFit
from dynrec.models.content import FLOOR, ContentConfig, ContentModel
from dynrec.models.registry import create_model
from tests.conftest import clustered_data

INF = float("inf")
R2 = 1.0 / math.sqrt(2.0)


def four_items() -> InteractionData:
    """Items a, b, c, d with 3, 1, 0 and 2 training events (c is in the vocabulary, never seen)."""
    uv = Vocabulary(["u1", "u2", "u3"])
    iv = Vocabulary(["a", "b", "c", "d"])
    users = [1, 1, 2, 2, 3, 3]
    items = [1, 2, 1, 4, 1, 4]
    return InteractionData.from_arrays(users, items, timestamps=list(range(6)), user_vocab=uv, item_vocab=iv)


def table4() -> torch.Tensor:
    """a = x, b = y, c = (x + y) (normalised by the model), d = no text."""
    return torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [3.0, 3.0], [0.0, 0.0]])


def fitted4(**cfg: float) -> ContentModel:
    model = ContentModel(ContentConfig(**cfg))  # type: ignore[arg-type]
    model.set_item_text(table4(), "toy-encoder")
    return model.fit(four_items())


def test_protocols_and_config() -> None:
    model = create_model("content")
    assert isinstance(model, ItemText) and isinstance(model, IncrementalState)
    assert isinstance(model, Explainer) and isinstance(model, ItemEmbeddings)
    assert not isinstance(model, PartialFit)
    assert model.wants_item_text() and model.item_text_encoder() == "all-MiniLM-L6-v2"
    with pytest.raises(DynrecError, match="half_life"):
        ContentConfig(half_life=-1.0)
    with pytest.raises(DynrecError, match="popularity_weight"):
        ContentConfig(popularity_weight=-0.5)


def test_fit_without_text_says_how_to_get_it() -> None:
    with pytest.raises(DynrecError, match=r"dynrec train content.*set_item_text"):
        ContentModel().fit(four_items())
    model = ContentModel()
    model.set_item_text(torch.zeros(3, 2), "e")
    with pytest.raises(DynrecError, match="3 rows.*5 item indices"):
        model.fit(four_items())
    with pytest.raises(DynrecError, match="non-finite"):
        model.set_item_text(torch.tensor([[0.0, 0.0], [float("nan"), 1.0]]), "e")


def test_hand_computed_scores() -> None:
    model = fitted4(half_life=1.0)
    assert model.item_text_encoder() == "toy-encoder"
    pop = [math.log(4.0), math.log(2.0), 0.0, math.log(3.0)]
    q = QueryBatch.from_histories([[1, 2], [1, 4], [4], [], [2, 2]])
    s = model.score(q)
    want = torch.tensor(
        [
            # [a, b]: b weighs 1, a 0.5 -> profile (x/2 + y) / 1.5 = (1/3, 2/3)
            [-INF, 1 / 3, 2 / 3, R2, FLOOR],
            # [a, d]: d has no text and only decays a (weight 0.5): the profile is x
            [-INF, 1.0, 0.0, R2, FLOOR],
            # a history without text and an empty one: popularity log(1 + events)
            [-INF, *pop],
            [-INF, *pop],
            # repeats are events: (0.5 y + y) / 1.5 = y
            [-INF, 0.0, 1.0, R2, FLOOR],
        ]
    )
    torch.testing.assert_close(s, want)
    # half_life 0: the plain mean (x + y) / 2
    flat = fitted4(half_life=0.0).score(QueryBatch.from_histories([[1, 2]]))
    torch.testing.assert_close(flat, torch.tensor([[-INF, 0.5, 0.5, R2, FLOOR]]))


def test_popularity_blend_keeps_items_without_text_last() -> None:
    model = fitted4(half_life=1.0, popularity_weight=0.5)
    s = model.score(QueryBatch.from_histories([[1, 2]]))[0]
    unit = [1.0, math.log(2.0) / math.log(4.0), 0.0, math.log(3.0) / math.log(4.0)]
    want = [1 / 3 + 0.5 * unit[0], 2 / 3 + 0.5 * unit[1], R2 + 0.5 * unit[2], FLOOR - 0.5 + 0.5 * unit[3]]
    torch.testing.assert_close(s[1:], torch.tensor(want))
    assert float(s[4]) < float(s[1:4].min())


def test_explanations_are_exact_and_sum_to_the_score() -> None:
    model = fitted4(half_life=1.0)
    q = QueryBatch.from_histories([[1, 2], [1, 4], []])
    targets = torch.tensor([[3, 1], [3, 2], [1, 2]])
    c = model.explain(q, targets)
    want = torch.tensor(
        [
            [0.5 * R2 / 1.5, 0.5 / 1.5],  # event a (weight 0.5 of 1.5) -> c, a
            [1.0 * R2 / 1.5, 0.0],  # event b -> c, a
            [R2, 0.0],  # event a is the whole profile -> c, b
            [0.0, 0.0],  # d has no text
        ]
    )
    torch.testing.assert_close(c, want)
    summed = torch.zeros(2, 2).index_add_(0, torch.from_numpy(q.row_ids()), c)
    torch.testing.assert_close(summed, model.score(q)[:2].gather(1, targets[:2]))


def _random_model(seed: int = 0) -> tuple[ContentModel, InteractionData]:
    data = clustered_data(n_users=12, n_items=20, n_groups=2, per_user=6, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    table = torch.randn(data.n_items, 6, generator=gen)
    table[0] = 0.0
    table[[5, 11]] = 0.0  # two items without text
    model = ContentModel(ContentConfig(half_life=2.5))
    model.set_item_text(table, "e")
    return model.fit(data), data


def test_state_steps_equal_scoring_the_whole_history() -> None:
    model, _ = _random_model(1)
    rng = np.random.default_rng(0)
    hist = [rng.integers(1, 21, size=n).tolist() for n in (0, 1, 4, 9, 7)]
    hist[3][2] = 5  # an event without text in the middle
    state = model.init_state(QueryBatch.from_histories([h[:1] for h in hist]))
    for r in range(1, 9):
        rows = [b for b, h in enumerate(hist) if len(h) > r]
        part = {k: v[rows] for k, v in state.items()}
        before = {k: v.clone() for k, v in part.items()}
        items = np.array([hist[b][r] for b in rows], dtype=np.int64)
        stepped = model.step_state(part, items, np.zeros_like(items))
        assert all(torch.equal(part[k], before[k]) for k in part)  # inplace=False leaves it alone
        for k in state:
            state[k][rows] = stepped[k]
    got = model.score_state(state)
    want = model.score(QueryBatch.from_histories(hist))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # the step is O(d): each state row is a [d] vector and a weight
    assert state["s"].shape == (5, 6) and state["w"].shape == (5,)


def test_add_items_are_recommendable_by_text_at_once() -> None:
    model = fitted4(half_life=1.0)
    data_vocab = four_items().item_vocab
    before = model.score(QueryBatch.from_histories([[1]]))
    model.add_items(["near-a", "opposite-a"], torch.tensor([[2.0, 0.1], [-1.0, 0.0]]))
    assert model.item_vocab is not None and model.n_items == 7
    assert model.item_vocab.index("near-a") == 5 and len(data_vocab) == 4
    q = QueryBatch.from_histories([[1], []])
    s = model.score(q)
    assert s.shape == (2, 7)
    torch.testing.assert_close(s[0, :5], before[0])  # old items keep their scores
    torch.testing.assert_close(s[0, 5], torch.tensor(2.0 / math.sqrt(4.01)))
    torch.testing.assert_close(s[0, 6], torch.tensor(-1.0))
    top, _ = model.recommend(q, k=2)
    assert top[0].tolist() == [5, 3]  # the new item most like a, then c (a itself is seen)
    assert float(s[1, 5]) == 0.0  # no events: last in the popularity fallback (log 1)
    assert model.item_embeddings().shape == (7, 2)
    with pytest.raises(DynrecError, match="'a' is already"):
        model.add_items(["a"], torch.ones(1, 2))
    with pytest.raises(DynrecError, match=r"expected \[1, 2\]"):
        model.add_items(["x"], torch.ones(1, 3))
    with pytest.raises(DynrecError, match="duplicates"):
        model.add_items(["x", "x"], torch.ones(2, 2))


def test_save_load_round_trip_and_corrupt_tensors_refused(tmp_path: Path) -> None:
    model = fitted4(half_life=1.0, popularity_weight=0.25)
    model.add_items(["e"], torch.tensor([[1.0, -1.0]]))
    q = QueryBatch.from_histories([[1, 2, 5], [4], []])
    model.save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    assert isinstance(loaded, ContentModel) and isinstance(loaded, ItemText)
    assert loaded.item_text_encoder() == "toy-encoder"
    assert torch.equal(loaded.score(q), model.score(q))
    tensors = load_file(str(tmp_path / "m" / "model.safetensors"))
    cases = {
        "scaled": ({"item_text": tensors["item_text"] * 2}, "neither L2-normalised nor zero"),
        "padding": ({"item_text": tensors["item_text"].index_fill(0, torch.tensor([0]), 0.6)}, "row 0"),
        "rows": ({"item_text": tensors["item_text"][:-1].contiguous()}, "item_text.*shape"),
        "nan": (
            {"item_text": tensors["item_text"].index_fill(1, torch.tensor([0]), float("nan"))},
            "non-finite",
        ),
        "pop": ({"log_pop": tensors["log_pop"] + 0.5}, "log_pop"),
    }
    for case, (change, msg) in cases.items():
        d = tmp_path / case
        model.save(d)
        save_file({**tensors, **change}, str(d / "model.safetensors"))
        with pytest.raises(DynrecError, match=msg) as err:
            Recommender.load(d)
        assert "model.safetensors" in str(err.value), case
