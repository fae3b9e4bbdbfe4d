"""caser: planted cycles, unknown-user fallback, persistence, seeding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynrec.data.query import QueryBatch
from dynrec.evaluation.offline import evaluate
from dynrec.models.base import Recommender
from dynrec.models.config import RunOptions
from dynrec.models.seq.caser import Caser, CaserConfig
from dynrec.preprocessing.split import Split, leave_one_out
from tests.unit.models.seq.planted_cycles import planted_cycles

FAST = {"embedding_dim": 16, "batch_size": 128}
OPTS = RunOptions(num_threads=1)


@pytest.fixture(scope="module")
def cycles() -> Split:
    return leave_one_out(planted_cycles())


@pytest.fixture(scope="module")
def trained(cycles: Split) -> Caser:
    cfg = CaserConfig(**FAST, epochs=4, max_len=3, learning_rate=0.02, dropout=0.0)
    return Caser(cfg).fit(cycles.train, options=OPTS)


def test_learns_planted_cycles(trained: Caser, cycles: Split) -> None:
    hr1 = evaluate(trained, cycles.test, ks=(1,), exclude_seen=False, extra=False).metrics["HR@1"]
    assert hr1 >= 0.95


def test_unknown_users_use_the_learned_unknown_vector(trained: Caser) -> None:
    n_users = int(trained.meta["n_users"])
    hist = [[1, 2, 3]] * 4
    s = trained.score(QueryBatch.from_histories(hist, users=[0, n_users + 5, -1, 1]))
    assert torch.all(torch.isfinite(s[:, 1:]))
    torch.testing.assert_close(s[1], s[0])  # not in training -> unknown vector
    torch.testing.assert_close(s[2], s[0])
    assert not torch.allclose(s[3], s[0])  # a known user's embedding is used
    # the unknown vector is trained (user_dropout > 0), not left at its initial value
    assert trained.config.user_dropout > 0


def test_without_user_embedding(cycles: Split) -> None:
    model = Caser(Caser.config_class(**FAST, epochs=1, use_user=False)).fit(cycles.train, options=OPTS)
    q = QueryBatch.from_histories([[1, 2], [1, 2]], users=[0, 1])
    s = model.score(q)
    torch.testing.assert_close(s[0], s[1])


def test_save_load_identical(trained: Caser, cycles: Split, tmp_path: Path) -> None:
    trained.save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    assert isinstance(loaded, Caser) and loaded.config == trained.config
    q = cycles.test.queries
    torch.testing.assert_close(loaded.score(q), trained.score(q), rtol=0, atol=0)


def test_seeded_reproducibility(cycles: Split) -> None:
    def fit(seed: int) -> dict[str, torch.Tensor]:
        return (
            Caser(CaserConfig(**FAST, epochs=1, seed=seed))
            .fit(cycles.train, cycles.valid, options=OPTS)
            .tensors()
        )

    a, b, c = fit(1), fit(1), fit(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_sampled_softmax_option(cycles: Split) -> None:
    model = Caser(CaserConfig(**FAST, epochs=1, loss="sampled", n_negatives=8)).fit(
        cycles.train, options=OPTS
    )
    assert torch.all(torch.isfinite(model.score(cycles.test.queries)[:, 1:]))
