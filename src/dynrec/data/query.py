"""`QueryBatch`: B users' time-ordered histories (the input of every model), and deterministic top-k.

A recommendation is a function of the user's history: every model scores a `QueryBatch` of
time-ordered histories (item indices, timestamps, weights), so real-time updates, cold users,
offline evaluation, streaming replay and serving all share one path.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError

IntArray = npt.NDArray[np.int64]
Explanation = Sequence[tuple[str, float]]
"""For one recommended item, (history item id, contribution) pairs, largest first."""

__all__ = ["Explanation", "IntArray", "QueryBatch", "Recommendations", "check_k", "topk_stable"]


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

    @classmethod
    def from_ids(
        cls,
        item_vocab: Vocabulary,
        histories: Sequence[Sequence[str]],
        *,
        users: Sequence[str | None] | None = None,
        user_vocab: Vocabulary | None = None,
        unknown: Literal["skip", "error"] = "skip",
        timestamps: Sequence[Sequence[int] | npt.NDArray[np.integer]] | None = None,
    ) -> QueryBatch:
        """The batch of external-id `histories` (oldest first), the one place a query is built
        from ids. Item ids `item_vocab` lacks are dropped with their timestamps (``unknown="skip"``)
        or refused with `UnknownIdError` naming the id (``"error"``). `users` (external ids, None =
        anonymous) map through `user_vocab` to their index, 0 when unknown or not given; without
        `timestamps` the batch has none. No weights."""
        if unknown not in ("skip", "error"):
            raise ValueError(f"unknown must be 'skip' or 'error', got {unknown!r}")
        if users is not None and len(users) != len(histories):
            raise ValueError(f"{len(users)} users for {len(histories)} histories")
        if timestamps is not None and len(timestamps) != len(histories):
            raise ValueError(f"{len(timestamps)} timestamp rows for {len(histories)} histories")
        parts: list[IntArray] = []
        stamps: list[IntArray] = []
        for b, hist in enumerate(histories):
            idx = item_vocab.lookup(list(hist), policy=unknown).astype(np.int64)
            keep = idx > 0
            parts.append(idx[keep])
            if timestamps is not None:
                ts = np.asarray(timestamps[b], dtype=np.int64)
                if ts.shape != idx.shape:
                    raise ValueError(f"history {b}: {ts.shape[0]} timestamps for {idx.shape[0]} items")
                stamps.append(ts[keep])
        lens = np.array([p.shape[0] for p in parts], dtype=np.int64)
        indptr = np.zeros(len(parts) + 1, dtype=np.int64)
        np.cumsum(lens, out=indptr[1:])
        items = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        ts_all = None
        if timestamps is not None:
            ts_all = np.concatenate(stamps) if stamps else np.zeros(0, np.int64)
        if users is None or user_vocab is None:
            u = np.zeros(len(parts), np.int64)
        else:
            u = np.array([0 if x is None else user_vocab.index(x, policy="skip") for x in users], np.int64)
        return cls(u, indptr, items, ts_all, None)

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


@dataclass(frozen=True)
class Recommendations:
    """B ranked answers, the one result type of a recommendation: per query the item ids and
    their scores (best first, only finite scores), optional per-item explanations, and which
    retrieval served it (``"exact"``, ``"ann:hnsw"``, ``"popular"`` ...)."""

    item_ids: tuple[tuple[str, ...], ...]
    scores: tuple[tuple[float, ...], ...]
    retrieval: tuple[str, ...]
    explanations: tuple[tuple[Explanation, ...] | None, ...] | None = None

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        if len(self.scores) != n or len(self.retrieval) != n:
            raise ValueError("item_ids, scores and retrieval need one row per query")
        if self.explanations is not None and len(self.explanations) != n:
            raise ValueError("explanations need one row per query")
        for ids, sc in zip(self.item_ids, self.scores, strict=True):
            if len(ids) != len(sc):
                raise ValueError("every item needs one score")

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_topk(
        cls,
        top: torch.Tensor,
        vals: torch.Tensor,
        item_vocab: Vocabulary,
        *,
        retrieval: str = "exact",
    ) -> Recommendations:
        """From [B, k] top-k item indices and their scores (`topk_stable`, a model's `recommend`,
        an index's search): slots with a non-finite score (excluded or unfilled) are dropped and
        indices become `item_vocab`'s external ids."""
        if top.dim() != 2 or tuple(top.shape) != tuple(vals.shape):
            raise ValueError(f"top {tuple(top.shape)} and vals {tuple(vals.shape)} must be the same [B, k]")
        top_c, vals_c = top.detach().cpu(), vals.detach().cpu()
        keep = torch.isfinite(vals_c)
        ids: list[tuple[str, ...]] = []
        scores: list[tuple[float, ...]] = []
        for b in range(top_c.shape[0]):
            ids.append(tuple(item_vocab.to_ids(top_c[b][keep[b]].numpy())))
            scores.append(tuple(float(v) for v in vals_c[b][keep[b]].tolist()))
        return cls(tuple(ids), tuple(scores), (retrieval,) * len(ids))

    def with_explanations(self, explanations: Sequence[Sequence[Explanation] | None]) -> Recommendations:
        """The same answers with per-query explanations (one per item, or None for a query)."""
        rows = tuple(None if e is None else tuple(e) for e in explanations)
        return Recommendations(self.item_ids, self.scores, self.retrieval, rows)

    def row(self, b: int = 0) -> tuple[list[str], list[float]]:
        """Query `b`'s item ids and scores as lists."""
        return list(self.item_ids[b]), list(self.scores[b])

    def row_json(self, b: int = 0) -> dict[str, object]:
        """Query `b` as JSON-ready values: ``items``, ``scores``, ``retrieval`` and, when there
        are explanations, ``explanations`` (per item, [history id, contribution] pairs)."""
        out: dict[str, object] = {
            "items": list(self.item_ids[b]),
            "scores": list(self.scores[b]),
            "retrieval": self.retrieval[b],
        }
        if self.explanations is not None:
            e = self.explanations[b]
            out["explanations"] = None if e is None else [[[i, float(c)] for i, c in row] for row in e]
        return out

    def to_json(self) -> list[dict[str, object]]:
        """Every query's `row_json`."""
        return [self.row_json(b) for b in range(len(self))]
