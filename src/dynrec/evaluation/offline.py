"""Full-ranking offline evaluation: every query is ranked against the whole catalogue.

Per chunk of queries: one `score` call, seen items masked by scatter of -inf (unless kept), the
target's rank computed with matrix ops (ties broken by lower item index, like `recommend`), and
the top-K lists collected for coverage/novelty. Memory is bounded by the chunk size; no Python
loop over users or items.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch
from tqdm.auto import tqdm

from dynrec.data.query import QueryBatch, topk_stable
from dynrec.evaluation import metrics as M
from dynrec.preprocessing.split import EvalSet

DEFAULT_KS = (10,)


@dataclass(frozen=True)
class EvalResult:
    metrics: dict[str, float]
    ranks: np.ndarray  # [Q] 0-based rank of each target (inf = not ranked)
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return dict(self.metrics)


def chunk_size_for(n_items: int, budget_floats: int = 1 << 23) -> int:
    """Queries per chunk so one [chunk, n_items] float32 block stays under ~32 MB."""
    return max(1, min(4096, budget_floats // max(1, n_items)))


class Scorer(Protocol):
    """What evaluation needs of a model: its name, catalogue size and ``score(queries)``
    ([B, n_items] float scores, column 0 = padding). Every `Recommender` is one."""

    @property
    def name(self) -> str: ...

    @property
    def n_items(self) -> int: ...

    def score(self, batch: QueryBatch) -> torch.Tensor: ...


_SPAN = 32_767
"""Columns one int16 accumulator counts over in `row_counts` (0/1 values: it cannot overflow)."""
_BLOCK = 1 << 20
"""Score elements per row block in `target_ranks`: the comparison masks stay small and in cache."""


def row_counts(mask: torch.Tensor) -> torch.Tensor:
    """Number of True values in each row of a bool matrix ``[B, N]``, as int64.

    Summing bool promotes every element to int64 one by one; the uint8 view summed into an int16
    accumulator vectorises (several times faster over a wide catalogue), so the columns go in
    spans an int16 cannot overflow on."""
    u8 = mask.view(torch.uint8)
    out = torch.zeros(mask.shape[0], dtype=torch.int64, device=mask.device)
    for a in range(0, mask.shape[1], _SPAN):
        out += u8[:, a : a + _SPAN].sum(1, dtype=torch.int16)
    return out


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target: #items scoring higher + #equal-scoring items with a lower index
    (the order `recommend` lists them in); inf when the target scores -inf (masked) or NaN.

    Rows go in blocks of about `_BLOCK` scores; the lower-index tie count is taken only for rows
    where another item scores exactly the target's score."""
    n, m = scores.shape
    s_t = scores.gather(1, targets[:, None])
    higher = torch.empty(n, dtype=torch.int64, device=scores.device)
    equal = torch.empty_like(higher)
    step = max(1, _BLOCK // max(1, m))
    for a in range(0, n, step):
        blk, t = scores[a : a + step], s_t[a : a + step]
        higher[a : a + step] = row_counts(blk > t)
        equal[a : a + step] = row_counts(blk == t)
    tied = torch.nonzero(equal > 1).squeeze(1)
    if tied.numel():
        idx = torch.arange(m, device=scores.device)[None, :]
        higher[tied] += row_counts((scores[tied] == s_t[tied]) & (idx < targets[tied, None]))
    rank = higher.to(torch.float64)
    # only a -inf (masked) or NaN target is unranked; a +inf target is ranked like any other score
    ranked = s_t[:, 0] > -torch.inf
    return torch.where(ranked, rank, torch.full_like(rank, float("inf")))


def evaluate(
    model: Scorer,
    evalset: EvalSet,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    exclude_seen: bool = True,
    item_popularity: np.ndarray | None = None,
    chunk_size: int | None = None,
    progress: bool = False,
    extra: bool = True,
) -> EvalResult:
    """HR/Recall/NDCG/MRR/Precision/MAP@K (+ Coverage@K, Novelty@K when `extra`) over `evalset`."""
    t0 = time.perf_counter()
    n_q = len(evalset)
    n_items = model.n_items
    chunk = chunk_size or chunk_size_for(n_items)
    kmax = min(max(ks), n_items)  # top lists (coverage, novelty) never longer than the catalogue
    ranks = np.empty(n_q, dtype=np.float64)
    tops = np.zeros((n_q, kmax), dtype=np.int64) if extra else None
    bar = tqdm(total=n_q, desc=f"evaluate {model.name}", unit="q", disable=not progress, leave=False)
    with torch.no_grad():
        for a in range(0, n_q, chunk):
            b = min(n_q, a + chunk)
            q = evalset.queries.slice(a, b)
            scores = model.score(q).float()
            if exclude_seen and len(q.items):
                rows, cols = q.seen_mask_indices()
                scores[rows.to(scores.device), cols.to(scores.device)] = -torch.inf
            scores[:, 0] = -torch.inf
            tgt = torch.from_numpy(evalset.targets[a:b]).to(scores.device)
            ranks[a:b] = target_ranks(scores, tgt).cpu().numpy()
            if tops is not None:
                tops[a:b] = topk_stable(scores, kmax)[0].cpu().numpy()
            bar.update(b - a)
    bar.close()
    out = rank_report(ranks, tops, evalset, ks=ks, n_items=n_items, item_popularity=item_popularity)
    return EvalResult(out, ranks, time.perf_counter() - t0)


def rank_report(
    ranks: np.ndarray,
    tops: np.ndarray | None,
    evalset: EvalSet,
    *,
    ks: Sequence[int],
    n_items: int,
    item_popularity: np.ndarray | None = None,
) -> dict[str, float]:
    """The metric dict of an evaluation from 0-based target `ranks` (inf = missed) and, when given,
    each query's top list `tops` (Coverage/Novelty): shared by exact and approximate evaluation."""
    out: dict[str, float] = {}
    for k in ks:
        for name, fn in M.ALL_RANK_METRICS.items():
            out[f"{name}@{k}"] = fn(ranks, k)
        if tops is not None:
            out[f"Coverage@{k}"] = M.item_coverage(tops[:, :k], n_items - 1)
            if item_popularity is not None:
                out[f"Novelty@{k}"] = M.novelty(tops[:, :k], item_popularity)
    out["n_users"] = float(np.unique(evalset.queries.users).size)
    out["n_queries"] = float(len(evalset))
    return out


def user_popularity(train: Any) -> np.ndarray:
    """Share of training users who interacted with each item (for novelty)."""
    m = train.csr(binary=True)
    n_users = max(1, int((np.diff(m.indptr) > 0).sum()))
    return np.asarray(m.sum(axis=0)).ravel() / n_users
