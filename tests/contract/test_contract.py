"""The contract every registered model passes (DESIGN.md "Tests")."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dynrec.data.query import QueryBatch
from dynrec.models.base import Recommender
from dynrec.models.capabilities import ItemText
from dynrec.models.registry import MODELS, create_model, get_model_class
from dynrec.preprocessing.split import Split

# Small, fast settings; only fields a model's config has are applied.
FAST: dict[str, Any] = {
    "epochs": 3,
    "iterations": 3,
    "embedding_dim": 16,
    "factors": 16,
    "hidden_dim": 16,
    "max_len": 20,
    "num_layers": 1,
    "progress": False,
    "patience": 100,
    "batch_size": 16,
    "num_threads": 1,  # tiny tensors: more threads only add synchronisation (and oversubscribe CI)
}


def _available() -> list[str]:
    names = []
    for name in MODELS:
        try:
            get_model_class(name)
        except (ImportError, AttributeError):
            continue
        names.append(name)
    return names


MODEL_NAMES = _available()


def cluster_text(n_items: int, items_per_group: int = 10) -> torch.Tensor:
    """Item "text" for the planted clusters (`clustered_data`: item i is in group (i-1) // 10): the
    group's one-hot plus seeded noise, L2-normalised; row 0 (padding) zero."""
    gen = torch.Generator().manual_seed(0)
    n_groups = (n_items - 2) // items_per_group + 1
    t = torch.cat([torch.zeros(n_items, n_groups), 0.3 * torch.randn(n_items, 4, generator=gen)], dim=1)
    idx = torch.arange(1, n_items)
    t[idx, (idx - 1) // items_per_group] = 1.0
    t = torch.nn.functional.normalize(t, dim=1)
    t[0] = 0.0
    return t


def make(name: str, **extra: Any) -> Recommender:
    cls = get_model_class(name)
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    cfg = {k: v for k, v in {**FAST, **extra}.items() if k in fields}
    model = create_model(name, config=cfg)
    if isinstance(model, ItemText) and model.wants_item_text():  # the jobs layer would encode text
        model.set_item_text(cluster_text(41), "test")
    return model


@pytest.fixture(scope="module", params=MODEL_NAMES)
def fitted(request: pytest.FixtureRequest, tiny_split: Split) -> Recommender:
    return make(request.param).fit(tiny_split.train, tiny_split.valid)


def params_of(model: Recommender) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.tensors().items()}


def test_config_round_trip(fitted: Recommender) -> None:
    cfg = fitted.config
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


def test_recommend_sorted_unique_excludes_seen(fitted: Recommender, tiny_split: Split) -> None:
    q = tiny_split.test.queries
    idx, scores = fitted.recommend(q, k=5)
    assert idx.shape == (len(q), 5)
    assert torch.all(scores[:, :-1] >= scores[:, 1:])
    for b in range(len(q)):
        row = idx[b].tolist()
        assert len(set(row)) == len(row)
        assert 0 not in row
        seen = set(q.items[q.indptr[b] : q.indptr[b + 1]].tolist())
        assert not seen & set(row)


def test_k_larger_than_catalogue(fitted: Recommender, tiny_split: Split) -> None:
    q = tiny_split.test.queries.slice(0, 2)
    idx, _ = fitted.recommend(q, k=10_000, exclude_seen=False)
    assert idx.shape[1] <= fitted.n_items


def test_batch_equals_one_by_one(fitted: Recommender, tiny_split: Split) -> None:
    q = tiny_split.test.queries.slice(0, 8)
    full = fitted.score(q)
    for b in range(len(q)):
        one = fitted.score(q.slice(b, b + 1))
        torch.testing.assert_close(one[0], full[b], rtol=1e-4, atol=1e-4)


def test_score_shape_and_padding(fitted: Recommender, tiny_split: Split) -> None:
    q = tiny_split.test.queries.slice(0, 4)
    s = fitted.score(q)
    assert s.shape == (4, fitted.n_items) and s.dtype == torch.float32
    assert torch.all(torch.isneginf(s[:, 0]))
    assert torch.all(torch.isfinite(s[:, 1:]))


def test_empty_and_unknown_user_history(fitted: Recommender) -> None:
    q = QueryBatch.from_histories([[], [1, 2]], users=[0, 0])
    s = fitted.score(q)
    assert s.shape == (2, fitted.n_items)
    assert torch.all(torch.isfinite(s[:, 1:]))


def test_save_load_identical(fitted: Recommender, tiny_split: Split, tmp_path: Path) -> None:
    fitted.save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    assert type(loaded) is type(fitted) and loaded.config == fitted.config
    q = tiny_split.test.queries
    torch.testing.assert_close(loaded.score(q), fitted.score(q))
    assert not list((tmp_path / "m").glob("*.pkl")) and not list((tmp_path / "m").glob("*.pt"))


def test_reads_do_not_mutate(fitted: Recommender, tiny_split: Split) -> None:
    before = params_of(fitted)
    q = tiny_split.test.queries
    s1 = fitted.score(q)
    fitted.recommend(q, k=5)
    s2 = fitted.score(q)
    torch.testing.assert_close(s1, s2)
    after = params_of(fitted)
    assert before.keys() == after.keys()
    for k in before:
        torch.testing.assert_close(before[k], after[k])


def test_new_event_changes_only_that_user(fitted: Recommender, tiny_split: Split) -> None:
    q = tiny_split.test.queries.slice(0, 2)
    base = fitted.score(q)
    h0 = q.items[q.indptr[0] : q.indptr[1]].tolist()
    h1 = q.items[q.indptr[1] : q.indptr[2]].tolist()
    new_item = next(i for i in range(1, fitted.n_items) if i not in h0 and i != h0[-1])
    q2 = QueryBatch.from_histories([[*h0, new_item], h1], users=q.users.tolist())
    after = fitted.score(q2)
    if fitted.name == "pop":  # popularity ignores the history by design
        torch.testing.assert_close(after, base)
        return
    assert not torch.allclose(after[0], base[0]), "a new event must change that user's scores"
    torch.testing.assert_close(after[1], base[1])


def test_same_seed_same_parameters(fitted: Recommender, tiny_split: Split) -> None:
    again = make(fitted.name).fit(tiny_split.train, tiny_split.valid)
    a, b = params_of(fitted), params_of(again)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_beats_random_on_clusters(fitted: Recommender, tiny_split: Split) -> None:
    """Every model except popularity must find the planted taste groups (random HR@10 ~ 0.25)."""
    from dynrec.evaluation.offline import evaluate

    if fitted.name == "pop":
        pytest.skip("popularity has no personalisation")
    hr = evaluate(fitted, tiny_split.test, extra=False).metrics["HR@10"]
    assert hr >= 0.5, f"{fitted.name} HR@10 {hr:.3f} on planted clusters"


def test_known_models_listed() -> None:
    assert {"pop", "itemknn", "userknn"} <= set(MODEL_NAMES)
    assert np.all([isinstance(n, str) for n in MODEL_NAMES])


def test_itemknn_chunked_similarity_equals_single_chunk(
    tiny_split: Split, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The item-item similarity is built in row chunks for big catalogues; chunking must not change it."""
    import dynrec.models.knn as knn

    one = make("itemknn").fit(tiny_split.train)
    monkeypatch.setattr(knn, "CHUNK_FLOATS", 3 * tiny_split.train.n_items)  # 3 items per chunk
    many = make("itemknn").fit(tiny_split.train)
    assert many.sim is not None and one.sim is not None
    assert many.sim.shape == one.sim.shape == (tiny_split.train.n_items,) * 2
    assert abs(many.sim - one.sim).max() < 1e-6
