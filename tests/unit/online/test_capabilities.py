"""Capabilities are typed protocols a model implements in its own file; everything above the models
works through them alone.

The toy model below lives only in this test: one class plus one registry line give it per-user
state, incremental updates, save/load and serving, with no edit to `dynrec.online`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.events import Event
from dynrec.data.query import IntArray, QueryBatch, topk_stable
from dynrec.models import registry
from dynrec.models.base import Recommender
from dynrec.models.capabilities import (
    Explainer,
    IncrementalState,
    ItemEmbeddings,
    ItemText,
    PartialFit,
    StateBatch,
    StateLayout,
    UpdateBatch,
    UpdateOutcome,
)
from dynrec.models.config import ModelConfig, RunOptions
from dynrec.online.adapters import ModelStateAdapter, RecomputeAdapter, adapter_for
from dynrec.online.interests import item_vectors
from dynrec.online.session import OnlineRecommender
from dynrec.online.store import InMemoryStore
from dynrec.online.updater import IncrementalUpdater
from tests.conftest import clustered_data

# ---- a model defined here: sum of the history's item vectors, dotted with every item vector ------


@dataclass(frozen=True)
class ToyConfig(ModelConfig):
    embedding_dim: int = 4


class ToySum(Recommender):
    """score(h) = (Σ_{i∈h} E_i) · E_jᵀ with E an item table derived from co-occurrence counts."""

    name = "toysum"
    config_class = ToyConfig
    config: ToyConfig

    def __init__(self, config: ToyConfig | None = None) -> None:
        super().__init__(config)
        self.emb: torch.Tensor | None = None
        self.n_partial_fits = 0

    def _table(self, data: InteractionData) -> torch.Tensor:
        gen = torch.Generator().manual_seed(self.config.seed)
        base = torch.randn(data.n_items, self.config.embedding_dim, generator=gen)
        counts = torch.from_numpy(np.bincount(data.items, minlength=data.n_items).astype(np.float32))
        e = base * (1.0 + counts)[:, None].sqrt()
        e[0] = 0.0
        return e

    def _fit(self, data: InteractionData, valid: object) -> None:
        self.emb = self._table(data)

    def _e(self) -> torch.Tensor:
        assert self.emb is not None
        return self.emb

    def score(self, batch: QueryBatch) -> torch.Tensor:
        rows = torch.from_numpy(batch.row_ids())
        u = torch.zeros(len(batch), self.config.embedding_dim)
        u.index_add_(0, rows, self._e()[torch.from_numpy(batch.items)])
        out = u @ self._e().T
        out[:, 0] = -torch.inf
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"emb": self._e()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.emb = tensors["emb"]

    # IncrementalState
    def state_layout(self) -> StateLayout:
        return StateLayout("toy-sum")

    def init_state(self, batch: QueryBatch) -> StateBatch:
        rows = torch.from_numpy(batch.row_ids())
        u = torch.zeros(len(batch), self.config.embedding_dim)
        u.index_add_(0, rows, self._e()[torch.from_numpy(batch.items)])
        return {"u": u}

    def step_state(
        self, state: StateBatch, items: IntArray, timestamps: IntArray, *, inplace: bool = False
    ) -> StateBatch:
        return {"u": state["u"] + self._e()[torch.from_numpy(np.asarray(items, dtype=np.int64))]}

    def score_state(self, state: StateBatch) -> torch.Tensor:
        out = state["u"] @ self._e().T
        out[:, 0] = -torch.inf
        return out

    # PartialFit: the table of the whole memory (new items get rows)
    def partial_fit(self, update: UpdateBatch) -> UpdateOutcome:
        self.emb = self._table(update.memory)
        self.n_partial_fits += 1
        return UpdateOutcome("toy table", update.memory.n_events)

    # ItemEmbeddings
    def item_embeddings(self) -> torch.Tensor:
        return self._e().clone()


@pytest.fixture
def toy_registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one registry line a new model needs."""
    monkeypatch.setitem(registry.MODELS, "toysum", f"{__name__}:ToySum")


def test_toy_model_gets_state_update_and_serving_through_the_protocols(
    toy_registered: None, tmp_path: Path
) -> None:
    data = clustered_data(n_users=12, n_items=16, n_groups=2, per_user=6, seed=3)
    model = registry.create_model("toysum", {"embedding_dim": "3"})
    model.fit(data)
    assert isinstance(model, IncrementalState) and isinstance(model, PartialFit)
    assert isinstance(model, ItemEmbeddings) and not isinstance(model, Explainer)
    # state: the online layer uses the model's own state, which follows each event exactly
    adapter = adapter_for(model)
    assert isinstance(adapter, ModelStateAdapter) and adapter.kind == "toy-sum"
    online = OnlineRecommender(model, InMemoryStore())
    events = [Event("alice", "i3", 10), Event("alice", "i5", 11), Event("alice", "i3", 12)]
    for e in events:
        online.observe(e)
    want = model.score(QueryBatch.from_histories([[3, 5, 3]]))[0]
    torch.testing.assert_close(online.scores("alice", exclude_seen=False), want)
    masked = want.clone()
    masked[[3, 5]] = -torch.inf  # seen items are not recommended
    top = topk_stable(masked[None], 3)[0][0]
    assert model.item_vocab is not None
    assert online.recommend("alice", k=3).items == model.item_vocab.to_ids(top.numpy())
    # item vectors for interests / similar items come from the ItemEmbeddings capability
    vecs = item_vectors(model)
    assert vecs is not None and vecs.shape == (model.n_items, 3)
    # update: the updater calls the model's partial_fit, vocabulary growth included
    updater = IncrementalUpdater(model, data)
    report = updater.update([Event("bob", "brand-new", 20), Event("bob", "i1", 21)])
    assert (report.method, report.new_items, report.new_users) == ("toy table", 1, 1)
    assert isinstance(model, ToySum) and model.n_partial_fits == 1
    assert model.item_vocab is not None and "brand-new" in model.item_vocab
    assert model.score(QueryBatch.from_histories([[model.n_items - 1]])).shape == (1, model.n_items)
    # save / load through the registry line
    model.save(tmp_path / "toy")
    loaded = Recommender.load(tmp_path / "toy")
    q = QueryBatch.from_histories([[1, 2], [model.n_items - 1]])
    assert isinstance(loaded, ToySum)
    torch.testing.assert_close(loaded.score(q), model.score(q))


def test_a_model_without_capabilities_recomputes_and_refits(toy_registered: None) -> None:
    class Plain(Recommender):
        name = "plain"
        config_class = ToyConfig

        def _fit(self, data: InteractionData, valid: object) -> None:
            self.n_fits = getattr(self, "n_fits", 0) + 1

        def score(self, batch: QueryBatch) -> torch.Tensor:
            out = torch.zeros(len(batch), self.n_items)
            rows = torch.from_numpy(batch.row_ids())
            out.index_put_((rows, torch.from_numpy(batch.items)), torch.ones(rows.shape[0]), accumulate=True)
            out[:, 0] = -torch.inf
            return out

    data = clustered_data(n_users=6, n_items=8, n_groups=2, per_user=4, seed=0)
    model = Plain().fit(data)
    assert not isinstance(model, IncrementalState | PartialFit | ItemEmbeddings)
    assert isinstance(adapter_for(model), RecomputeAdapter)
    report = IncrementalUpdater(model, data).update([Event("u1", "i2", 99)])
    assert report.method == "refit"


# ---- every registered model ---------------------------------------------------------------------

EXPECTED: dict[str, set[type]] = {
    # model -> capabilities it must implement (a regression guard for the online layer's fast paths)
    "pop": {IncrementalState, PartialFit},
    "content": {IncrementalState, ItemEmbeddings, Explainer, ItemText},
    "itemknn": {IncrementalState, PartialFit, Explainer},
    "userknn": {PartialFit},
    "als": {IncrementalState, PartialFit, ItemEmbeddings, Explainer},
    "ease": {IncrementalState, Explainer},
    "gru4rec": {IncrementalState, PartialFit, ItemEmbeddings, Explainer},
    "sasrec": {IncrementalState, PartialFit, ItemEmbeddings, Explainer, ItemText},
    "bert4rec": {PartialFit, ItemEmbeddings, Explainer},
    "caser": {PartialFit, ItemEmbeddings, Explainer},
    "mlp": {PartialFit, ItemEmbeddings, Explainer},
    "bpr": {PartialFit, ItemEmbeddings, Explainer},
    "mf": {PartialFit, ItemEmbeddings, Explainer},
    "svd": {ItemEmbeddings, Explainer},
    "nmf": {ItemEmbeddings, Explainer},
}


def test_every_registry_entry_imports_and_declares_its_capabilities() -> None:
    assert set(registry.available_models()) == set(EXPECTED)
    for name in registry.MODELS:
        cls = registry.get_model_class(name)  # an import error fails here, never skipped
        model = cls()
        for cap in EXPECTED[name]:
            assert isinstance(model, cap), f"{name} should implement {cap.__name__}"


def test_broken_registry_entry_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(registry.MODELS, "broken", "dynrec.models.does_not_exist:Nope")
    with pytest.raises(ImportError):
        registry.get_model_class("broken")


@pytest.mark.parametrize("name", ["itemknn", "ease", "als", "svd", "content"])
def test_explanations_of_additive_models_sum_to_the_score(name: str) -> None:
    data = clustered_data(n_users=20, n_items=16, n_groups=2, per_user=6, seed=2)
    configs: dict[str, dict[str, Any]] = {
        "itemknn": {"recency_half_life": 3.0},
        "als": {"embedding_dim": 4, "epochs": 3},
        "svd": {"embedding_dim": 4, "item_exponent": 0.5},
        "content": {"half_life": 2.0},
    }
    cfg = configs.get(name, {})
    model = registry.create_model(name, config=cfg)
    if isinstance(model, ItemText):  # content reads a text table; a deterministic random one here
        table = torch.randn(data.n_items, 6, generator=torch.Generator().manual_seed(0))
        table[0] = 0.0
        model.set_item_text(table, "test")
    model.fit(data, options=RunOptions(num_threads=1))
    assert isinstance(model, Explainer)
    q = QueryBatch.from_histories([[1, 2, 3, 2], [5], []])
    top, _ = model.recommend(q, k=4)
    contrib = model.explain(q, top)
    assert contrib.shape == (len(q.items), 4)
    scores = model.score(q)
    rows = torch.from_numpy(q.row_ids())
    summed = torch.zeros(len(q), 4).index_add_(0, rows, contrib)
    want = scores.gather(1, top)
    torch.testing.assert_close(summed[:2], want[:2], rtol=1e-5, atol=1e-5)


def test_item_embeddings_have_one_row_per_item() -> None:
    data = clustered_data(n_users=20, n_items=16, n_groups=2, per_user=6, seed=2)
    for name in ("als", "gru4rec", "sasrec", "bpr"):
        cfg = {"epochs": 1, "embedding_dim": 8}
        model = registry.create_model(name, config=cfg).fit(data, options=RunOptions(num_threads=1))
        assert isinstance(model, ItemEmbeddings)
        v = model.item_embeddings()
        assert v.shape[0] == model.n_items and v.dtype == torch.float32 and torch.isfinite(v).all()
