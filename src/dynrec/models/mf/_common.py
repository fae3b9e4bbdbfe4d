"""Shared pieces of the matrix-factorisation family: dense history matrices from a `QueryBatch`,
factor scoring, and the batched ALS-style closed-form fold-in.

Every model here scores from the query's history: it folds the history into a user vector (or, for
EASE, multiplies it by an item-item matrix), so a user need not have been in training.
"""

from __future__ import annotations

import numpy as np
import torch

from dynrec.data.query import QueryBatch

EVENT_CHUNK = 8192
"""Bounds the padded [queries, length, k] block when accumulating per-query Gram matrices."""
GROUP = 256
"""Queries per padded group (sorted by history length)."""


def history_events(
    batch: QueryBatch, n_items: int, values: np.ndarray | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(row, item, value) of every history event whose item the model knows (index < `n_items`).

    `values` ([nnz]) defaults to ``batch.weights`` (or 1 where the batch has none)."""
    rows = torch.from_numpy(batch.row_ids())
    cols = torch.from_numpy(np.asarray(batch.items, dtype=np.int64))
    if values is None:
        values = batch.weights
    vals = (
        torch.ones(cols.shape[0], dtype=torch.float32)
        if values is None
        else torch.as_tensor(np.asarray(values, dtype=np.float32))
    )
    keep = (cols > 0) & (cols < n_items)
    if not bool(keep.all()):
        rows, cols, vals = rows[keep], cols[keep], vals[keep]
    return rows, cols, vals


def history_dense(
    batch: QueryBatch, n_items: int, *, binary: bool = True, values: np.ndarray | None = None
) -> torch.Tensor:
    """[B, n_items] float32 history matrix: 1 per seen item when `binary`, else the summed
    event values (``batch.weights`` or 1). Items the model does not know are ignored."""
    rows, cols, vals = history_events(batch, n_items, values)
    out = torch.zeros(len(batch), n_items, dtype=torch.float32)
    if binary:
        out[rows, cols] = 1.0
    else:
        out.index_put_((rows, cols), vals, accumulate=True)
    return out


def finish_scores(scores: torch.Tensor, n_items: int) -> torch.Tensor:
    """Pad to the vocabulary's current width (items added after fit score -inf), set column 0 to
    -inf, and return a contiguous float32 CPU tensor the caller owns."""
    scores = scores.detach().to("cpu", torch.float32)
    if scores.shape[1] < n_items:
        pad = torch.full((scores.shape[0], n_items - scores.shape[1]), -torch.inf)
        scores = torch.cat([scores, pad], dim=1)
    elif scores.shape[1] > n_items:
        scores = scores[:, :n_items]
    scores = scores.contiguous()
    scores[:, 0] = -torch.inf
    return scores


def gram_per_query(
    rows: torch.Tensor,
    cols: torch.Tensor,
    weights: torch.Tensor,
    factors: torch.Tensor,
    n_queries: int,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """[B, k, k] (`dtype`): for each query, the sum over its events of ``w · v_i v_iᵀ``.

    Queries are sorted by history length and processed in groups padded to the group's longest
    history, so the work is one batched matmul per group (~nnz · k² flops, little padding)."""
    k = factors.shape[1]
    out = torch.zeros(n_queries, k, k, dtype=dtype)
    if rows.numel() == 0:
        return out
    r = rows.numpy()
    order = np.argsort(r, kind="stable")  # events grouped by query (already so for a QueryBatch)
    lengths = np.bincount(r, minlength=n_queries)
    starts = np.zeros(n_queries, dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    cols_sorted = cols.numpy()[order]
    w_sorted = weights.to(dtype).numpy()[order]
    by_len = np.argsort(lengths, kind="stable")
    by_len = by_len[lengths[by_len] > 0]
    a = 0
    while a < by_len.shape[0]:
        longest = int(lengths[by_len[min(by_len.shape[0], a + GROUP) - 1]])
        size = max(1, min(GROUP, EVENT_CHUNK * 8 // max(1, longest)))  # bound [size, longest, k]
        q = by_len[a : a + size]
        ln = lengths[q]
        pos = np.arange(int(ln.max()))[None, :]
        valid = pos < ln[:, None]  # [g, L]
        idx = np.where(valid, starts[q][:, None] + pos, 0)
        v = factors[torch.from_numpy(cols_sorted[idx])].to(dtype)  # [g, L, k]
        w = torch.from_numpy(np.where(valid, w_sorted[idx], 0.0)).to(dtype)
        out[torch.from_numpy(q)] = torch.bmm((v * w[:, :, None]).transpose(1, 2), v)
        a += size
    return out


def sum_duplicates(
    rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, n_items: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Merge repeated (query, item) events by summing their values (as a CSR matrix would)."""
    key = rows.numpy() * n_items + cols.numpy()
    uniq, inv = np.unique(key, return_inverse=True)
    if uniq.shape[0] == key.shape[0]:
        return rows, cols, vals
    summed = np.bincount(inv, weights=vals.numpy(), minlength=uniq.shape[0]).astype(np.float32)
    return torch.from_numpy(uniq // n_items), torch.from_numpy(uniq % n_items), torch.from_numpy(summed)


def weighted_ridge_fold_in(
    rows: torch.Tensor,
    cols: torch.Tensor,
    extra_weight: torch.Tensor,
    rhs_weight: torch.Tensor,
    factors: torch.Tensor,
    base_gram: torch.Tensor,
    n_queries: int,
) -> torch.Tensor:
    """Batched closed-form user vectors ``(G0 + Σ_h e_i v_i v_iᵀ)⁻¹ Σ_h b_i v_i``.

    `base_gram` [k, k] is the part shared by every query (e.g. ``VᵀV + λI``), `extra_weight` [nnz]
    the per-event extra confidence e_i and `rhs_weight` [nnz] the right-hand-side weight b_i.
    Returns [B, k] float32; a query with an empty history gets the zero vector."""
    k = factors.shape[1]
    a = gram_per_query(rows, cols, extra_weight, factors, n_queries) + base_gram.to(torch.float32)[None]
    b = torch.zeros(n_queries, k, dtype=torch.float32)
    b.index_add_(0, rows, factors[cols].to(torch.float32) * rhs_weight.to(torch.float32)[:, None])
    chol, info = torch.linalg.cholesky_ex(a)  # A is symmetric positive definite (λ > 0)
    if bool((info != 0).any()):  # λ = 0 with a rank-deficient history: fall back to LU
        x64: torch.Tensor = torch.linalg.solve(a.to(torch.float64), b.to(torch.float64)[:, :, None])
        return x64[:, :, 0].float()
    return torch.cholesky_solve(b[:, :, None], chol)[:, :, 0]
