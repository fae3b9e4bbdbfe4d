"""Hand-checked metric values and the full-ranking evaluator on a model with known scores."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch, topk_stable
from dynrec.data.vocab import Vocabulary
from dynrec.evaluation import metrics as M
from dynrec.evaluation.offline import evaluate, row_counts, target_ranks
from dynrec.models.base import Recommender
from dynrec.models.config import ModelConfig
from dynrec.preprocessing.split import EvalSet

RANKS = np.array([0.0, 2.0, 9.0, 10.0, np.inf])  # hit@1, hit@3, hit@10, miss, unranked


def test_hand_computed_values() -> None:
    assert M.hit_rate(RANKS, 10) == pytest.approx(3 / 5)
    assert M.hit_rate(RANKS, 1) == pytest.approx(1 / 5)
    assert M.ndcg(RANKS, 10) == pytest.approx((1 + 1 / math.log2(4) + 1 / math.log2(11)) / 5)
    assert M.mrr(RANKS, 10) == pytest.approx((1 + 1 / 3 + 1 / 10) / 5)
    assert M.precision(RANKS, 10) == pytest.approx(3 / 50)
    assert M.recall(RANKS, 10) == M.hit_rate(RANKS, 10)
    assert M.average_precision(RANKS, 10) == M.mrr(RANKS, 10)


def test_coverage_and_novelty() -> None:
    tops = np.array([[1, 2], [2, 3]])
    assert M.item_coverage(tops, 10) == pytest.approx(0.3)
    pop = np.array([0.0, 0.5, 0.25, 0.125])
    assert M.novelty(tops, pop) == pytest.approx((1 + 2 + 2 + 3) / 4)


def test_target_ranks_break_ties_by_index() -> None:
    s = torch.tensor([[-torch.inf, 1.0, 3.0, 3.0, 3.0, 0.5]])
    assert target_ranks(s, torch.tensor([3])).tolist() == [1.0]  # item 2 ties and has lower index
    assert target_ranks(s, torch.tensor([1])).tolist() == [3.0]
    assert target_ranks(s, torch.tensor([0])).tolist() == [math.inf]  # -inf target = unranked


def test_target_ranks_wide_catalogue_and_row_blocks() -> None:
    """More columns than one int16 span counts (70,000 > 32,767) and more rows than one block:
    every rank equals the target's position in a stable descending sort, ties included."""
    g = torch.Generator().manual_seed(3)
    s = torch.randint(0, 500, (40, 70_000), generator=g).float()  # ~140 copies of every value
    s[:, 0] = -torch.inf
    s[5, 1:] = 7.0  # a row of one value: rank = the target's index - 1 (column 0 is -inf)
    targets = torch.randint(1, 70_000, (40,), generator=g)
    targets[6] = 0  # masked target
    ranks = target_ranks(s, targets)
    order = torch.sort(-s, dim=1, stable=True).indices
    expected = (order == targets[:, None]).float().argmax(1).double()
    expected[6] = math.inf
    assert torch.equal(ranks, expected)
    assert ranks[5] == targets[5] - 1


def test_row_counts_spans() -> None:
    m = torch.zeros(3, 100_000, dtype=torch.bool)
    m[0] = True
    m[1, ::3] = True
    assert row_counts(m).tolist() == [100_000, 33_334, 0]


def test_topk_stable_tie_order() -> None:
    s = torch.tensor([[0.0, 2.0, 5.0, 2.0, 2.0, 1.0]])
    idx, vals = topk_stable(s, 3)
    assert idx.tolist() == [[2, 1, 3]]
    assert vals.tolist() == [[5.0, 2.0, 2.0]]


class _Fixed(Recommender):
    """Scores = a fixed matrix row per query (known answers)."""

    name = "fixed"
    config_class = ModelConfig

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.table = table
        self.item_vocab = Vocabulary(str(i) for i in range(1, table.shape[1]))
        self.user_vocab = Vocabulary(["a", "b"])

    def _fit(self, data: InteractionData, valid: object) -> None:  # pragma: no cover
        pass

    def score(self, batch: QueryBatch) -> torch.Tensor:
        out = self.table[torch.from_numpy(batch.users) - 1].clone()
        out[:, 0] = -torch.inf
        return out


def test_evaluate_masks_seen_items_and_matches_hand_ranks() -> None:
    table = torch.tensor([[0.0, 9.0, 8.0, 7.0, 6.0], [0.0, 1.0, 2.0, 3.0, 4.0]])
    model = _Fixed(table)
    # user a saw item 1 (top score) -> target 3 ranks 1 (after item 2); user b target 1 ranks 3.
    q = QueryBatch(np.array([1, 2]), np.array([0, 1, 2]), np.array([1, 4]))
    es = EvalSet(q, np.array([3, 1]), np.array([0, 0]))
    r = evaluate(model, es, ks=(1, 2), chunk_size=1)
    assert r.ranks.tolist() == [1.0, 2.0]
    assert r.metrics["HR@2"] == pytest.approx(0.5)
    assert r.metrics["NDCG@2"] == pytest.approx(0.5 / math.log2(3))
    assert r.metrics["HR@1"] == 0.0
    kept = evaluate(model, es, ks=(2,), exclude_seen=False)
    assert kept.ranks.tolist() == [2.0, 3.0]


def test_ndcg_standard_error_known_answer() -> None:
    ranks = np.array([0.0, np.inf, 1.0, 20.0])
    g = [1.0, 0.0, 1.0 / math.log2(3.0), 0.0]
    mean = sum(g) / 4
    sd = math.sqrt(sum((x - mean) ** 2 for x in g) / 3)  # sample standard deviation
    assert M.ndcg_gains(ranks, 10).tolist() == pytest.approx(g)
    assert M.ndcg(ranks, 10) == pytest.approx(mean)
    assert M.ndcg_standard_error(ranks, 10) == pytest.approx(sd / 2.0)
    assert M.ndcg_standard_error(np.array([3.0]), 10) == 0.0
