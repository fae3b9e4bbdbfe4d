"""Approximate-retrieval evaluation: the metrics of `dynrec.evaluation.offline.evaluate` when each
query's top list comes from a retriever (an approximate index) instead of a full ranking.

A target's rank is its position in the retrieved list; a target the retriever does not return is
a miss (rank inf), as it would be for a user served by it. With a retriever that returns the exact
top-K the metrics equal the exact evaluation's (ties aside). Coverage@k and Novelty@k use the
retrieved lists.

The retriever is a function (queries, k) -> (item indices [B, k], scores [B, k]), unfilled slots
scored -inf: this layer sits below `dynrec.models`, so the caller binds the model and its index
(`dynrec.jobs.evaluate.evaluate_retrieved` binds `dynrec.models.retrieval.retrieve`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from dynrec.data.query import QueryBatch, check_k
from dynrec.errors import DynrecError
from dynrec.evaluation.offline import DEFAULT_KS, EvalResult, rank_report
from dynrec.preprocessing.split import EvalSet

Retrieve = Callable[[QueryBatch, int], tuple[torch.Tensor, torch.Tensor]]
"""(queries, k) -> (item indices [B, <=k], scores [B, <=k]); an unfilled slot's score is not finite."""


def evaluate_retrieved(
    retrieve: Retrieve,
    evalset: EvalSet,
    *,
    n_items: int,
    name: str = "model",
    ks: Sequence[int] = DEFAULT_KS,
    item_popularity: np.ndarray | None = None,
    chunk_size: int = 1024,
    progress: bool = False,
) -> EvalResult:
    """HR/Recall/NDCG/MRR/Precision/MAP@K, Coverage@K and Novelty@K (with `item_popularity`) over
    `evalset`, each query's top ``max(ks)`` from `retrieve` (`n_items`: the catalogue size, padding
    included; `name`: the progress bar's label)."""
    if not ks:
        raise DynrecError("give at least one cut-off k")
    ks = tuple(check_k(k) for k in ks)
    t0 = time.perf_counter()
    n_q = len(evalset)
    kmax = max(0, min(max(ks), n_items - 1))
    ranks = np.full(n_q, np.inf, dtype=np.float64)
    tops = np.zeros((n_q, kmax), dtype=np.int64)
    bar = tqdm(total=n_q, desc=f"evaluate {name} (ann)", unit="q", disable=not progress, leave=False)
    for a in range(0, n_q, max(1, chunk_size)):
        b = min(n_q, a + max(1, chunk_size))
        q = evalset.queries.slice(a, b)
        idx, scores = retrieve(q, kmax)
        idx = torch.where(torch.isfinite(scores), idx, torch.zeros_like(idx))  # unfilled slots
        tgt = torch.from_numpy(np.asarray(evalset.targets[a:b], dtype=np.int64))
        found = (idx == tgt[:, None]) & (tgt[:, None] > 0)
        pos = found.to(torch.int64).argmax(1).to(torch.float64)
        ranks[a:b] = torch.where(found.any(1), pos, torch.full_like(pos, np.inf)).numpy()
        tops[a:b, : idx.shape[1]] = idx.numpy()
        bar.update(b - a)
    bar.close()
    out = rank_report(ranks, tops, evalset, ks=ks, n_items=n_items, item_popularity=item_popularity)
    return EvalResult(out, ranks, time.perf_counter() - t0)
