"""mlp ("DynamicInterestModel" done right): learns from history, causal training, persistence."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dynrec.data.query import QueryBatch
from dynrec.evaluation.offline import evaluate
from dynrec.models.base import Recommender
from dynrec.models.config import RunOptions
from dynrec.models.mlp import MLPConfig, MLPNet, MLPRecommender
from dynrec.preprocessing.split import Split, leave_one_out
from tests.unit.models.seq.planted_cycles import planted_cycles

FAST = {"embedding_dim": 16, "batch_size": 16}
OPTS = RunOptions(num_threads=1)


@pytest.fixture(scope="module")
def cycles() -> Split:
    return leave_one_out(planted_cycles())


@pytest.fixture(scope="module")
def trained(cycles: Split) -> MLPRecommender:
    cfg = MLPConfig(**FAST, epochs=15, learning_rate=0.01, dropout=0.0)
    return MLPRecommender(cfg).fit(cycles.train, options=OPTS)


def test_learns_planted_cycles_from_recency(trained: MLPRecommender, cycles: Split) -> None:
    """The next item depends only on the last one: the learned short-term (decayed) pooling finds it."""
    hr1 = evaluate(trained, cycles.test, ks=(1,), exclude_seen=False, extra=False).metrics["HR@1"]
    assert hr1 >= 0.85


@pytest.mark.parametrize("pooling", ["mean", "decay", "both"])
def test_training_pooling_is_causal_and_matches_scoring(pooling: str) -> None:
    """Position t of the training pass sees items 0..t only, exactly as scoring that prefix does."""
    torch.manual_seed(0)
    cfg = MLPConfig(embedding_dim=8, hidden=(16,), dropout=0.0, pooling=pooling, decay=0.7)
    net = MLPNet(cfg, 20, 5).eval()
    x = torch.tensor([[3, 5, 7, 9, 0, 0], [2, 4, 6, 8, 10, 12]])
    pooled = net.pool_all(x)
    for b in range(2):
        for t in range(int((x[b] > 0).sum())):
            prefix = x[b : b + 1, : t + 1]
            last = net.pool_last(prefix, torch.tensor([t + 1]))
            torch.testing.assert_close(pooled[b, t], last[0])
    x2 = x.clone()
    x2[:, 3:] = 1  # changing later items leaves earlier positions untouched (no future leakage)
    torch.testing.assert_close(net.pool_all(x2)[:, :3], pooled[:, :3])


def test_user_embedding_option(cycles: Split) -> None:
    model = MLPRecommender(MLPConfig(**FAST, epochs=1, use_user=True)).fit(cycles.train, options=OPTS)
    n_users = int(model.meta["n_users"])
    s = model.score(QueryBatch.from_histories([[1, 2]] * 3, users=[0, n_users + 3, 1]))
    assert torch.all(torch.isfinite(s[:, 1:]))
    torch.testing.assert_close(s[0], s[1])
    assert not torch.allclose(s[0], s[2])


def test_save_load_identical(trained: MLPRecommender, cycles: Split, tmp_path: Path) -> None:
    trained.save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    assert isinstance(loaded, MLPRecommender) and loaded.config == trained.config
    q = cycles.test.queries
    torch.testing.assert_close(loaded.score(q), trained.score(q), rtol=0, atol=0)


def test_seeded_reproducibility(cycles: Split) -> None:
    def fit(seed: int) -> dict[str, torch.Tensor]:
        cfg = MLPConfig(**FAST, epochs=1, seed=seed)
        return MLPRecommender(cfg).fit(cycles.train, cycles.valid, options=OPTS).tensors()

    a, b, c = fit(1), fit(1), fit(2)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_sampled_softmax_option(cycles: Split) -> None:
    model = MLPRecommender(MLPConfig(**FAST, epochs=1, loss="sampled", n_negatives=8)).fit(
        cycles.train, options=OPTS
    )
    assert torch.all(torch.isfinite(model.score(cycles.test.queries)[:, 1:]))
