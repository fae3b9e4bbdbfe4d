"""Pure metric functions for next-item evaluation (one relevant item per query).

`ranks` are 0-based positions of the target in the full ranking (0 = first), ``inf`` when the
target could not be ranked (e.g. it was masked as already seen). With a single relevant item,
Recall@K = HR@K, Precision@K = HR@K / K and MAP@K = MRR@K; they are still reported under their
own names so tables line up with multi-target protocols.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]


def hit_rate(ranks: FloatArray, k: int) -> float:
    return float(np.mean(ranks < k)) if ranks.size else 0.0


def recall(ranks: FloatArray, k: int) -> float:
    return hit_rate(ranks, k)


def precision(ranks: FloatArray, k: int) -> float:
    return hit_rate(ranks, k) / k


def ndcg_gains(ranks: FloatArray, k: int) -> FloatArray:
    """Per-query NDCG@K (one relevant item: ``1 / log2(rank + 2)`` inside the top K, else 0)."""
    return np.where(ranks < k, 1.0 / np.log2(np.minimum(ranks, k) + 2.0), 0.0)


def ndcg(ranks: FloatArray, k: int) -> float:
    return float(np.mean(ndcg_gains(ranks, k))) if ranks.size else 0.0


def ndcg_standard_error(ranks: FloatArray, k: int) -> float:
    """Standard error of the mean NDCG@K over the queries (sample std / sqrt(n); 0 below 2 queries)."""
    if ranks.size < 2:
        return 0.0
    return float(np.std(ndcg_gains(ranks, k), ddof=1) / np.sqrt(ranks.size))


def mrr(ranks: FloatArray, k: int) -> float:
    if not ranks.size:
        return 0.0
    return float(np.mean(np.where(ranks < k, 1.0 / (np.minimum(ranks, k) + 1.0), 0.0)))


def average_precision(ranks: FloatArray, k: int) -> float:
    """MAP@K with one relevant item: AP = precision at the hit = 1 / (rank + 1)."""
    return mrr(ranks, k)


def item_coverage(top_items: npt.NDArray[np.int64], n_items: int) -> float:
    """Share of the catalogue (excluding padding) appearing in at least one top-K list."""
    if n_items <= 0:
        return 0.0
    uniq = np.unique(top_items[top_items > 0])
    return float(uniq.size / n_items)


def novelty(top_items: npt.NDArray[np.int64], item_popularity: FloatArray) -> float:
    """Mean self-information -log2(p(i)) of recommended items, p(i) = share of training users
    who interacted with i (items never seen in training get the smallest non-zero share)."""
    if top_items.size == 0:
        return 0.0
    p = np.asarray(item_popularity, dtype=np.float64)
    positive = p[p > 0]
    floor = positive.min() if positive.size else 1.0
    p = np.where(p > 0, p, floor)
    return float(np.mean(-np.log2(p[top_items[top_items > 0]])))


ALL_RANK_METRICS = {
    "HR": hit_rate,
    "Recall": recall,
    "NDCG": ndcg,
    "MRR": mrr,
    "Precision": precision,
    "MAP": average_precision,
}
