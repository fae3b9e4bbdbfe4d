"""gru4rec: planted cycles, exact incremental state, persistence, seeding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from dynrec.data.query import QueryBatch
from dynrec.evaluation.offline import evaluate
from dynrec.models.base import Recommender
from dynrec.models.capabilities import StateBatch
from dynrec.models.config import RunOptions
from dynrec.models.seq.gru4rec import GRU4Rec, GRU4RecConfig
from dynrec.preprocessing.split import Split, leave_one_out
from tests.unit.models.seq.planted_cycles import planted_cycles

FAST = {"embedding_dim": 16, "hidden_dim": 32, "batch_size": 16}
OPTS = RunOptions(num_threads=1)


@pytest.fixture(scope="module")
def cycles() -> Split:
    return leave_one_out(planted_cycles())


@pytest.fixture(scope="module")
def trained(cycles: Split) -> GRU4Rec:
    cfg = GRU4RecConfig(**FAST, epochs=40, learning_rate=0.01, dropout=0.0)
    return GRU4Rec(cfg).fit(cycles.train, options=OPTS)


def test_learns_planted_cycles(trained: GRU4Rec, cycles: Split) -> None:
    hr1 = evaluate(trained, cycles.test, ks=(1,), exclude_seen=False, extra=False).metrics["HR@1"]
    assert hr1 >= 0.95


def _step_through(model: GRU4Rec, q: QueryBatch, start: StateBatch, first: np.ndarray) -> StateBatch:
    """Feed each row's events from position `first[b]` on, one event per call."""
    state = start
    for t in range(int(q.lengths.max())):
        has = (t >= first) & (t < q.lengths)
        pos = np.minimum(q.indptr[:-1] + t, len(q.items) - 1)
        items = np.where(has, q.items[pos], 0)
        assert q.timestamps is not None
        new = model.step_state(state, items, q.timestamps[pos])
        keep = torch.from_numpy(has)
        state = {k: torch.where(keep.view(-1, *([1] * (v.dim() - 1))), new[k], v) for k, v in state.items()}
    return state


@pytest.mark.parametrize(("layers", "gaps"), [(1, False), (2, True)])
def test_incremental_state_equals_recompute(cycles: Split, layers: int, gaps: bool) -> None:
    cfg = GRU4RecConfig(**FAST, epochs=1, num_layers=layers, time_gaps=gaps, dropout=0.2)
    model = GRU4Rec(cfg).fit(cycles.train, options=OPTS)
    q = cycles.test.queries.slice(0, 24)
    # from the empty state, event by event
    empty = QueryBatch(q.users, np.zeros(len(q) + 1, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64))
    state = _step_through(model, q, model.init_state(empty), np.zeros(len(q), np.int64))
    torch.testing.assert_close(state["h"], model.init_state(q)["h"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(model.score_state(state), model.score(q), rtol=1e-5, atol=1e-5)
    # from the state of a prefix (first half of each history), then the rest
    half = q.lengths // 2
    prefix = QueryBatch.from_histories(
        [q.items[q.indptr[b] : q.indptr[b] + half[b]].tolist() for b in range(len(q))],
        users=q.users.tolist(),
        timestamps=[q.timestamps[q.indptr[b] : q.indptr[b] + half[b]].tolist() for b in range(len(q))],  # type: ignore[index]
    )
    state2 = _step_through(model, q, model.init_state(prefix), half)
    torch.testing.assert_close(model.score_state(state2), model.score(q), rtol=1e-5, atol=1e-5)


def test_step_state_is_a_pure_read(trained: GRU4Rec, cycles: Split) -> None:
    q = cycles.test.queries.slice(0, 4)
    s0 = trained.init_state(q)
    copy = {k: v.clone() for k, v in s0.items()}
    before = {k: v.clone() for k, v in trained.tensors().items()}
    s1 = trained.step_state(s0, np.array([1, 2, 3, 4]), np.array([5, 6, 7, 8]))
    assert all(torch.equal(s0[k], copy[k]) for k in s0) and not torch.equal(s1["h"], s0["h"])
    for k, v in trained.tensors().items():
        assert torch.equal(v, before[k])


def test_score_len_reads_only_recent_events(cycles: Split) -> None:
    model = GRU4Rec(GRU4RecConfig(**FAST, epochs=1, score_len=3)).fit(cycles.train, options=OPTS)
    q = cycles.test.queries.slice(0, 6)
    last3 = QueryBatch.from_histories(
        [q.items[q.indptr[b + 1] - 3 : q.indptr[b + 1]].tolist() for b in range(len(q))]
    )
    torch.testing.assert_close(model.score(q), model.score(last3))


def test_time_gaps_are_read(cycles: Split) -> None:
    model = GRU4Rec(GRU4RecConfig(**FAST, epochs=1, time_gaps=True)).fit(cycles.train, options=OPTS)
    a = QueryBatch.from_histories([[1, 2, 3]], timestamps=[[0, 10, 20]])
    b = QueryBatch.from_histories([[1, 2, 3]], timestamps=[[0, 10, 10**7]])
    assert not torch.allclose(model.score(a), model.score(b))


def test_save_load_identical(trained: GRU4Rec, cycles: Split, tmp_path: Path) -> None:
    trained.save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    assert isinstance(loaded, GRU4Rec) and loaded.config == trained.config
    q = cycles.test.queries
    torch.testing.assert_close(loaded.score(q), trained.score(q), rtol=0, atol=0)
    torch.testing.assert_close(loaded.init_state(q)["h"], trained.init_state(q)["h"], rtol=0, atol=0)


def test_seeded_reproducibility(cycles: Split) -> None:
    def fit(seed: int) -> dict[str, torch.Tensor]:
        return (
            GRU4Rec(GRU4RecConfig(**FAST, epochs=2, seed=seed))
            .fit(cycles.train, cycles.valid, options=OPTS)
            .tensors()
        )

    a, b, c = fit(1), fit(1), fit(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_sampled_softmax_option(cycles: Split) -> None:
    cfg = GRU4RecConfig(**FAST, epochs=1, loss="sampled", n_negatives=8, negative_sampling="popularity")
    model = GRU4Rec(cfg).fit(cycles.train, options=OPTS)
    assert torch.all(torch.isfinite(model.score(cycles.test.queries)[:, 1:]))
