"""`QueryBatch`: B users' time-ordered histories (the input of every model), and deterministic top-k.

A recommendation is a function of the user's history: every model scores a `QueryBatch` of
time-ordered histories (item indices, timestamps, weights), so real-time updates, cold users,
offline evaluation, streaming replay and serving all share one path.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from dynrec.errors import DynrecError

IntArray = npt.NDArray[np.int64]

__all__ = ["IntArray", "QueryBatch", "check_k", "topk_stable"]


@dataclass(frozen=True)
class QueryBatch:
    """B queries: query b's history is ``items[indptr[b]:indptr[b+1]]`` (oldest first).

    `users` holds the known user index (0 = unknown/anonymous); models that keep per-user
    parameters may use it, but every model must score from the history alone when it is 0.
    """

    users: IntArray  # [B]
    indptr: IntArray  # [B + 1]
    items: IntArray  # [nnz]
    timestamps: IntArray | None = None  # [nnz]
    weights: npt.NDArray[np.float32] | None = None  # [nnz]

    def __len__(self) -> int:
        return int(self.users.shape[0])

    @property
    def lengths(self) -> IntArray:
        return np.diff(self.indptr)

    @classmethod
    def from_histories(
        cls,
        histories: Sequence[Sequence[int]],
        users: Sequence[int] | None = None,
        timestamps: Sequence[Sequence[int]] | None = None,
    ) -> QueryBatch:
        lens = np.array([len(h) for h in histories], dtype=np.int64)
        indptr = np.zeros(len(histories) + 1, dtype=np.int64)
        np.cumsum(lens, out=indptr[1:])
        items = np.array([i for h in histories for i in h], dtype=np.int64)
        ts = None if timestamps is None else np.array([t for h in timestamps for t in h], dtype=np.int64)
        u = np.zeros(len(histories), np.int64) if users is None else np.asarray(users, dtype=np.int64)
        return cls(u, indptr, items, ts, None)

    def slice(self, start: int, stop: int) -> QueryBatch:
        a, b = int(self.indptr[start]), int(self.indptr[stop])
        return QueryBatch(
            self.users[start:stop],
            self.indptr[start : stop + 1] - a,
            self.items[a:b],
            None if self.timestamps is None else self.timestamps[a:b],
            None if self.weights is None else self.weights[a:b],
        )

    def take(self, idx: IntArray) -> QueryBatch:
        idx = np.asarray(idx, dtype=np.int64)
        starts, lens = self.indptr[idx], self.lengths[idx]
        indptr = np.zeros(len(idx) + 1, dtype=np.int64)
        np.cumsum(lens, out=indptr[1:])
        flat = np.repeat(starts - indptr[:-1], lens) + np.arange(int(indptr[-1]), dtype=np.int64)
        return QueryBatch(
            self.users[idx],
            indptr,
            self.items[flat],
            None if self.timestamps is None else self.timestamps[flat],
            None if self.weights is None else self.weights[flat],
        )

    def known_users(self, n_users: int) -> torch.Tensor:
        """[B] user indices as a LongTensor, with users a model has no row for (index outside
        1..n_users-1, e.g. added to the vocabulary after training) mapped to 0 = unknown."""
        users = torch.from_numpy(np.asarray(self.users, dtype=np.int64))
        return torch.where((users < 0) | (users >= n_users), 0, users)

    def row_ids(self) -> IntArray:
        """Query index of every history event ([nnz])."""
        return np.repeat(np.arange(len(self), dtype=np.int64), self.lengths)

    def padded(self, max_len: int, *, left: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """The last `max_len` items of each history as a [B, L] LongTensor (0 = padding) and the
        matching [B, L] timestamps (0 where padded). Left padding keeps the newest item at column L-1."""
        b = len(self)
        lens = np.minimum(self.lengths, max_len)
        out = np.zeros((b, max_len), dtype=np.int64)
        tout = np.zeros((b, max_len), dtype=np.int64)
        total = int(lens.sum())
        if total:
            rows = np.repeat(np.arange(b), lens)
            offs = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)  # 0..len-1 within row
            src = np.repeat(self.indptr[1:] - lens, lens) + offs
            cols = (np.repeat(max_len - lens, lens) + offs) if left else offs
            out[rows, cols] = self.items[src]
            if self.timestamps is not None:
                tout[rows, cols] = self.timestamps[src]
        return torch.from_numpy(out), torch.from_numpy(tout)

    def seen_mask_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(row, item) index pairs of every history item, for scatter-masking seen items."""
        return torch.from_numpy(self.row_ids()), torch.from_numpy(self.items)


def check_k(k: object) -> int:
    """`k` as an int when it is a list length (an integer >= 1; a bool is not one), else `DynrecError`.
    A `k` above the catalogue size is allowed: the caller returns every item it may."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise DynrecError(f"k must be an integer >= 1, got {k!r}")
    return int(k)


def topk_stable(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k by descending score with ties broken by lower item index (deterministic)."""
    k = max(0, min(k, scores.shape[1]))
    if k == 0:  # nothing to rank (k <= 0 or no items): empty [B, 0] results, like topk
        empty = torch.empty(scores.shape[0], 0, dtype=torch.long, device=scores.device)
        return empty, scores[:, :0]
    # stable descending sort on a chunk would cost O(N log N); topk then re-sort the tie groups.
    vals, idx = torch.topk(scores, k, dim=1)
    kth = vals[:, -1:]
    n_at_least = (scores >= kth).sum(1)
    if bool((n_at_least > k).any()):  # ties cross the k boundary: resolve by index
        order = torch.sort(scores, dim=1, descending=True, stable=True)
        return order.indices[:, :k], order.values[:, :k]
    # ties within the top-k: sort by (-score, index)
    key_idx, perm = torch.sort(idx, dim=1)
    key_vals = torch.gather(vals, 1, perm)
    order2 = torch.sort(key_vals, dim=1, descending=True, stable=True).indices
    return torch.gather(key_idx, 1, order2), torch.gather(key_vals, 1, order2)
