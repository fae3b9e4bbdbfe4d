"""Generic leave-one-out attribution: how much each history event moves a recommended item's score.

For a model whose score is not a sum over the history (recurrent, convolutional and attention
models, iterative fold-ins) the contribution of event j to item i is the score drop when j alone is
removed: ``score(h)[i] − score(h \\ {j})[i]``. Every variant history is one row of a single
`QueryBatch` built with numpy (no loop over events), scored in chunks of rows so memory stays
bounded by ``chunk_rows x n_items`` scores; only the explained items' scores are kept.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from dynrec.data.query import IntArray, QueryBatch
from dynrec.errors import DynrecError

__all__ = ["DEFAULT_CHUNK_ROWS", "first_occurrence", "leave_one_out", "leave_one_out_batch"]

DEFAULT_CHUNK_ROWS = 256
"""Variant histories scored per call of the model (each call makes a [rows, n_items] tensor)."""


def leave_one_out_batch(batch: QueryBatch, max_events: int) -> tuple[QueryBatch, IntArray, IntArray]:
    """The histories to score for a leave-one-out attribution, as one `QueryBatch`.

    For every query with at least one event: its full history, then one variant per explained
    event (the last `max_events` events, oldest first) with that event removed; users, timestamps
    and weights stay aligned with the kept events. Returns (the batch, the query of each row [R],
    the position in ``batch.items`` of the event each row leaves out, -1 for a full row [R])."""
    if max_events < 1:
        raise DynrecError(f"leave_one_out: max_events={max_events} is not allowed; expected >= 1")
    lengths = batch.lengths
    m = np.minimum(lengths, max_events)  # explained events per query
    queries = np.flatnonzero(m > 0)
    per_query = 1 + m[queries]  # rows: the full history + one per explained event
    n_rows = int(per_query.sum())
    row_query = np.repeat(queries, per_query)
    first_row = np.cumsum(per_query) - per_query  # row index of each query's full history
    variant = np.arange(n_rows, dtype=np.int64) - np.repeat(first_row, per_query)  # 0 = full
    excluded = np.where(variant > 0, batch.indptr[row_query + 1] - m[row_query] + variant - 1, -1).astype(
        np.int64
    )
    # every row walks its query's whole history; the excluded position is then dropped
    full_len = lengths[row_query]
    total = int(full_len.sum())
    walk_start = np.cumsum(full_len) - full_len
    pos = np.repeat(batch.indptr[row_query], full_len) + (
        np.arange(total, dtype=np.int64) - np.repeat(walk_start, full_len)
    )
    keep = pos != np.repeat(excluded, full_len)
    src = pos[keep]
    row_len = full_len - (excluded >= 0)
    indptr = np.zeros(n_rows + 1, dtype=np.int64)
    np.cumsum(row_len, out=indptr[1:])
    out = QueryBatch(
        np.asarray(batch.users, dtype=np.int64)[row_query],
        indptr,
        np.asarray(batch.items, dtype=np.int64)[src],
        None if batch.timestamps is None else batch.timestamps[src],
        None if batch.weights is None else batch.weights[src],
    )
    return out, row_query.astype(np.int64), excluded


def leave_one_out(
    score: Callable[[QueryBatch], torch.Tensor],
    batch: QueryBatch,
    items: torch.Tensor,
    *,
    max_events: int = 50,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
) -> torch.Tensor:
    """Contributions [nnz, k] float32 (rows aligned with ``batch.items``) of each history event to
    the score of each of its query's `items` ([B, k] item indices): ``score(full)[i] −
    score(history without the event)[i]``. Only each query's last `max_events` events are explained
    (older events get 0: they cost one scored history each). A pair whose score is not finite in
    either history (e.g. an item the model masks) gets 0. `score` maps a `QueryBatch` to
    [rows, n_items] scores (a model's ``score``); it is called on at most `chunk_rows` histories at
    a time."""
    if chunk_rows < 1:
        raise DynrecError(f"leave_one_out: chunk_rows={chunk_rows} is not allowed; expected >= 1")
    targets = items.detach().to("cpu", torch.int64)
    if targets.dim() != 2 or targets.shape[0] != len(batch):
        raise DynrecError(f"leave_one_out: items has shape {list(targets.shape)}, expected [{len(batch)}, k]")
    k = int(targets.shape[1])
    out = torch.zeros(len(batch.items), k, dtype=torch.float32)
    variants, row_query, excluded = leave_one_out_batch(batch, max_events)
    n_rows = len(variants)
    if n_rows == 0 or k == 0:
        return out
    row_targets = targets[torch.from_numpy(row_query)]  # [R, k]
    got = torch.empty(n_rows, k, dtype=torch.float32)
    for a in range(0, n_rows, chunk_rows):
        b = min(n_rows, a + chunk_rows)
        s = score(variants.slice(a, b))
        got[a:b] = s.detach().to("cpu", torch.float32).gather(1, row_targets[a:b])
    is_full = torch.from_numpy(excluded < 0)
    full_of_query = torch.zeros(len(batch), k, dtype=torch.float32)
    full_of_query[torch.from_numpy(row_query[excluded < 0])] = got[is_full]
    drop = ~is_full
    diff = full_of_query[torch.from_numpy(row_query)[drop]] - got[drop]
    diff = torch.where(torch.isfinite(diff), diff, torch.zeros((), dtype=torch.float32))
    out[torch.from_numpy(excluded[excluded >= 0])] = diff
    return out


def first_occurrence(batch: QueryBatch) -> np.ndarray:
    """[nnz] bool: whether each event is the first of its item within its query (for models that
    read a binary history, where a repeat adds nothing)."""
    rows = batch.row_ids()
    items = np.asarray(batch.items, dtype=np.int64)
    first = np.zeros(rows.size, dtype=bool)
    if rows.size:
        key = rows * (int(items.max(initial=0)) + 1) + items
        _, idx = np.unique(key, return_index=True)  # index of the first occurrence of each key
        first[idx] = True
    return first
