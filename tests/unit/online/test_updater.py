"""Incremental learning: vocabulary growth, new items become recommendable, bounded forgetting,
exactness of the additive updates, warm start from the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from dynrec.data.dataset import InteractionData
from dynrec.data.events import Event
from dynrec.data.query import QueryBatch
from dynrec.evaluation.offline import evaluate
from dynrec.jobs.provenance import from_meta
from dynrec.models.base import Recommender
from dynrec.models.neural.growth import grow_torch_model
from dynrec.online.updater import IncrementalUpdater, UpdateConfig
from dynrec.replay import holdout_last
from tests.conftest import clustered_data
from tests.unit.online.test_state import _available, tiny_model

N_GROUP = 10  # clustered_data(n_items=40, n_groups=4): items 1..10 are group 0


@pytest.fixture(scope="module")
def split() -> tuple[InteractionData, object]:
    return holdout_last(clustered_data(n_users=60, n_items=40, n_groups=4, per_user=12, seed=0))


def new_item_events(model: Recommender) -> list[Event]:
    """Group-0 users (u1, u5, ...) consume the brand-new item NEW right after a group-0 item."""
    assert model.item_vocab is not None
    first = model.item_vocab.ids[0]
    evs = []
    for u in range(0, 60, 4):
        evs += [Event(f"u{u + 1}", "NEW", 5000 + u), Event(f"u{u + 1}", first, 5001 + u)]
    evs.append(Event("brand-new-user", "NEW", 9000))
    return evs


def rank_of(model: Recommender, item: str, history: list[int]) -> int:
    assert model.item_vocab is not None
    s = model.score(QueryBatch.from_histories([history]))[0]
    j = model.item_vocab.index(item)
    return int((s > s[j]).sum())


CASES = [("pop", 10), ("itemknn", 3), ("als", 10), ("gru4rec", 21), ("sasrec", 15)]


@pytest.mark.parametrize(("name", "max_rank"), CASES)
def test_new_item_becomes_recommendable(
    name: str, max_rank: int, split: tuple[InteractionData, object]
) -> None:
    if not _available(name):
        pytest.skip(f"{name} not available")
    train, _ = split
    model = tiny_model(name, train, epochs=20, embedding_dim=16, hidden_dim=16, max_len=10)
    assert model.item_vocab is not None and "NEW" not in model.item_vocab
    n0 = model.n_items
    up = IncrementalUpdater(model, train, UpdateConfig(epochs=3, seed=1))
    rep = up.update(new_item_events(model))
    assert (rep.new_items, rep.new_users, rep.n_events) == (1, 1, 31)
    assert model.n_items == n0 + 1 and "NEW" in model.item_vocab
    assert model.score(QueryBatch.from_histories([[1]])).shape == (1, n0 + 1)
    # a group-0 history now ranks NEW among the top items (of 41)
    assert rank_of(model, "NEW", [2, 3, 4]) < max_rank


@pytest.mark.parametrize("name", ["gru4rec", "sasrec"])
def test_grown_model_saves_and_loads(
    name: str, split: tuple[InteractionData, object], tmp_path: Path
) -> None:
    if not _available(name):
        pytest.skip(f"{name} not available")
    train, _ = split
    model = tiny_model(name, train)
    IncrementalUpdater(model, train, UpdateConfig(epochs=1)).update(new_item_events(model))
    model.save(tmp_path / "m")
    back = Recommender.load(tmp_path / "m")
    q = QueryBatch.from_histories([[1, 2, 41], [5]])
    torch.testing.assert_close(back.score(q), model.score(q))


def test_grow_torch_model_initialises_from_neighbours(split: tuple[InteractionData, object]) -> None:
    if not _available("sasrec"):
        pytest.skip("sasrec not available")
    import scipy.sparse as sp

    train, _ = split
    model = tiny_model("sasrec", train)
    emb = model.net.item_emb.weight.detach().clone()  # type: ignore[union-attr]
    n = emb.shape[0]
    init = sp.csr_matrix((np.array([0.5, 0.5]), ([0, 0], [1, 2])), shape=(2, n))  # row 1 of 2: no neighbours
    grown = grow_torch_model(model, n + 2, 0, init)
    w = model.net.item_emb.weight.detach()  # type: ignore[union-attr]
    assert "item_emb.weight" in grown and w.shape[0] == n + 2 and model.meta["n_items"] == n + 2
    torch.testing.assert_close(w[n], 0.5 * (emb[1] + emb[2]))
    torch.testing.assert_close(w[n + 1], emb[1:].mean(0))
    assert torch.equal(w[:n], emb)


def test_forgetting_is_bounded(split: tuple[InteractionData, object]) -> None:
    """Several updates on a drifted stream (group-0 users moving to group 1) keep quality on the old
    validation targets within a bound, thanks to the replay sample."""
    if not _available("sasrec"):
        pytest.skip("sasrec not available")
    train, valid = split
    model = tiny_model("sasrec", train, epochs=20, embedding_dim=16, max_len=10)
    before = evaluate(model, valid, extra=False).metrics["NDCG@10"]  # type: ignore[arg-type]
    up = IncrementalUpdater(model, train, UpdateConfig(epochs=2, replay_ratio=2.0, seed=3))
    assert model.item_vocab is not None
    g1 = model.item_vocab.ids[N_GROUP : 2 * N_GROUP]
    rng = np.random.default_rng(0)
    for r in range(3):
        evs = [
            Event(f"u{u + 1}", g1[int(j)], 10_000 * (r + 1) + k)
            for u in range(0, 60, 4)
            for k, j in enumerate(rng.integers(0, N_GROUP, 3))
        ]
        up.update(evs)
    after = evaluate(model, valid, extra=False).metrics["NDCG@10"]  # type: ignore[arg-type]
    assert after >= 0.75 * before, (before, after)


def test_itemknn_and_pop_updates_equal_a_refit(split: tuple[InteractionData, object]) -> None:
    train, _ = split
    for name, extra in (("itemknn", {"k": 5}), ("pop", {"half_life": 50.0})):
        model = tiny_model(name, train, **extra)
        up = IncrementalUpdater(model, train)
        up.update(new_item_events(model))
        up.update([Event("u2", "NEW", 20_000), Event("u3", "NEW2", 20_001)])
        refit = tiny_model(name, up.memory, **extra)
        q = QueryBatch.from_histories([[1, 2, 3], [41, 7], []])
        torch.testing.assert_close(model.score(q), refit.score(q), rtol=1e-5, atol=1e-6)


def test_forget_user_drops_memory(split: tuple[InteractionData, object]) -> None:
    train, _ = split
    model = tiny_model("pop", train)
    up = IncrementalUpdater(model, train)
    n = up.memory.n_events
    assert up.forget_user("u1")
    assert up.memory.n_events < n and not up.forget_user("nobody")


def test_cli_train_resume_warm_starts(tmp_path: Path) -> None:
    from dynrec.cli.main import app

    data = clustered_data(n_users=20, n_items=16, n_groups=2, per_user=6)
    rows = [
        f"{data.user_vocab.ids[u - 1]},{data.item_vocab.ids[i - 1]},{t}"
        for u, i, t in zip(data.users.tolist(), data.items.tolist(), data.timestamps.tolist(), strict=True)
    ]
    old = tmp_path / "old.csv"
    old.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    new = tmp_path / "new.csv"
    new.write_text("user_id,item_id,timestamp\nu1,brand-new,99999\nu2,brand-new,99999\nnewbie,i1,99999\n")
    runner = CliRunner()
    out = tmp_path / "model"
    r = runner.invoke(app, ["train", "itemknn", "--dataset", str(old), "--out", str(out), "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["train", "--resume", str(out), "--events", str(new), "--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output.strip().splitlines()[-1])
    assert rep["new_items"] == 1 and rep["new_users"] == 1 and rep["n_events"] == 3
    back = Recommender.load(out)
    assert back.item_vocab is not None and "brand-new" in back.item_vocab
    resumes = [r.path for r in from_meta(back.meta).provenance.resumes]  # type: ignore[union-attr]
    assert resumes == [str(new.resolve())]
    r = runner.invoke(app, ["train", "--resume", str(out)])
    assert r.exit_code != 0


@pytest.mark.parametrize("name", ["gru4rec", "sasrec"])
def test_an_update_is_reproducible_whatever_the_global_generator(
    name: str, split: tuple[InteractionData, object]
) -> None:
    """The update's dropout draws come from its own seed, not from whatever torch's global
    generator holds; and the caller's generator is left as it was."""
    if not _available(name):
        pytest.skip(f"{name} not available")
    train, _ = split
    weights = []
    for global_seed in (1, 2):
        model = tiny_model(name, train, dropout=0.5)
        torch.manual_seed(global_seed)
        want = torch.rand(1)
        torch.manual_seed(global_seed)
        IncrementalUpdater(model, train, UpdateConfig(epochs=2, seed=1)).update(new_item_events(model))
        assert torch.rand(1) == want  # the caller's generator, untouched
        weights.append({k: v.clone() for k, v in model.net.state_dict().items()})
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], rtol=0, atol=0)
