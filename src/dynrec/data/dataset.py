"""InteractionData: index-space arrays every model trains on.

Events are mapped through the vocabularies and ordered per user by (timestamp, source row) — a
*stable* sort, so equal timestamps keep file order (this decides leave-one-out targets when a user
rated several items in the same second). Each user's events form a contiguous slice
``indptr[u]:indptr[u+1]`` of the flat arrays (user 0 = padding, always empty): time-ordered ragged
sequences, and `csr()` gives the user x item matrix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import scipy.sparse as sp

from dynrec.data.events import EventLog
from dynrec.data.vocab import Vocabulary

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class InteractionData:
    """Index-space events grouped by user in time order (flat arrays + ``indptr``)."""

    user_vocab: Vocabulary
    item_vocab: Vocabulary
    users: IntArray  # [n] user index of each event (grouped, ascending)
    items: IntArray  # [n] item index
    timestamps: IntArray  # [n]
    weights: FloatArray  # [n] implicit-feedback weight (event-type weight, or 1)
    values: FloatArray  # [n] raw value (e.g. rating)
    indptr: IntArray  # [n_users + 1]; user u's events are [indptr[u], indptr[u+1])
    has_time: bool = True

    @property
    def n_users(self) -> int:
        """Rows of a user table including padding row 0."""
        return self.user_vocab.size

    @property
    def n_items(self) -> int:
        """Columns of the item table including padding column 0."""
        return self.item_vocab.size

    @property
    def n_events(self) -> int:
        return int(self.items.shape[0])

    def lengths(self) -> IntArray:
        return np.diff(self.indptr)

    def sequence(self, user: int) -> IntArray:
        return self.items[self.indptr[user] : self.indptr[user + 1]]

    def csr(self, *, binary: bool = False) -> sp.csr_matrix:
        """User x item matrix (n_users x n_items incl. padding row/column); duplicates summed."""
        data = np.ones_like(self.weights) if binary else self.weights
        m = sp.csr_matrix(
            (data, (self.users, self.items)), shape=(self.n_users, self.n_items), dtype=np.float32
        )
        m.sum_duplicates()
        if binary:
            m.data[:] = 1.0
        return m

    def item_counts(self) -> IntArray:
        return np.bincount(self.items, minlength=self.n_items).astype(np.int64)

    def select(self, mask: npt.NDArray[np.bool_]) -> InteractionData:
        """Keep the events where `mask` is true (same vocabularies; order preserved)."""
        users = self.users[mask]
        counts = np.bincount(users, minlength=self.n_users)
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return InteractionData(
            self.user_vocab,
            self.item_vocab,
            users,
            self.items[mask],
            self.timestamps[mask],
            self.weights[mask],
            self.values[mask],
            indptr,
            self.has_time,
        )

    @classmethod
    def from_arrays(
        cls,
        users: npt.ArrayLike,
        items: npt.ArrayLike,
        *,
        timestamps: npt.ArrayLike | None = None,
        weights: npt.ArrayLike | None = None,
        values: npt.ArrayLike | None = None,
        user_vocab: Vocabulary,
        item_vocab: Vocabulary,
        has_time: bool = True,
    ) -> InteractionData:
        """Build from index arrays (any order); sorts stably by (user, timestamp, input order)."""
        u = np.asarray(users, dtype=np.int64)
        i = np.asarray(items, dtype=np.int64)
        n = u.shape[0]
        t = np.arange(n, dtype=np.int64) if timestamps is None else np.asarray(timestamps, dtype=np.int64)
        w = np.ones(n, np.float32) if weights is None else np.asarray(weights, dtype=np.float32)
        v = np.ones(n, np.float32) if values is None else np.asarray(values, dtype=np.float32)
        order = np.lexsort((np.arange(n), t, u))
        u, i, t, w, v = u[order], i[order], t[order], w[order], v[order]
        counts = np.bincount(u, minlength=user_vocab.size)
        indptr = np.zeros(user_vocab.size + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(user_vocab, item_vocab, u, i, t, w, v, indptr, has_time)

    @classmethod
    def from_events(
        cls,
        log: EventLog,
        *,
        event_weights: Mapping[str, float] | None = None,
        user_vocab: Vocabulary | None = None,
        item_vocab: Vocabulary | None = None,
    ) -> InteractionData:
        """Map ids through vocabularies (built from the log, in first-appearance order, if not given;
        given ones are grown with new ids) and order each user's events stably by time. Event-type
        weights default to the log's own (`EventLog.event_weights`)."""
        frame = log.frame if log.frame["row"].is_sorted() else log.frame.sort("row")
        if event_weights is None:
            event_weights = log.event_weights
        uv, u = _index_ids(user_vocab, frame["user_id"])
        iv, i = _index_ids(item_vocab, frame["item_id"])
        if event_weights is not None:
            w = (
                frame["event_type"]
                .replace_strict(dict(event_weights), default=1.0, return_dtype=pl.Float32)
                .to_numpy()
            )
        else:
            w = np.ones(frame.height, dtype=np.float32)
        return cls.from_arrays(
            u,
            i,
            timestamps=frame["timestamp"].to_numpy(),
            weights=w,
            values=frame["value"].to_numpy().astype(np.float32),
            user_vocab=uv,
            item_vocab=iv,
            has_time=log.has_time,
        )


def _index_ids(vocab: Vocabulary | None, ids: pl.Series) -> tuple[Vocabulary, IntArray]:
    """(vocabulary, index of every id): the unique ids in first-appearance order build a new
    vocabulary or grow the given one (one pass over the unique ids), then a join maps every
    event's id to its index (no per-event Python)."""
    uniq = ids.unique(maintain_order=True)
    if vocab is None:
        vocab = Vocabulary.from_unique(uniq.to_list())
        idx = np.arange(1, uniq.len() + 1, dtype=np.int64)
    else:
        idx = vocab.add(uniq.to_list())  # adds the new ids, returns every id's index
    table = pl.DataFrame({"k": uniq, "v": idx})
    out = pl.DataFrame({"k": ids}).join(table, on="k", how="left", maintain_order="left")["v"]
    return vocab, np.asarray(out.to_numpy(), dtype=np.int64)


def ragged_from_lists(seqs: list[list[int]]) -> tuple[IntArray, IntArray]:
    """(indptr, flat) for a list of integer lists (helper for tests and small inputs)."""
    lens = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    indptr = np.zeros(len(seqs) + 1, dtype=np.int64)
    np.cumsum(lens, out=indptr[1:])
    flat = np.fromiter((x for s in seqs for x in s), dtype=np.int64, count=int(indptr[-1]))
    return indptr, flat


def describe(data: InteractionData) -> dict[str, Any]:
    lens = data.lengths()[1:]
    counts = data.item_counts()[1:]
    n_u, n_i = len(data.user_vocab), len(data.item_vocab)
    return {
        "n_users": n_u,
        "n_items": n_i,
        "n_events": data.n_events,
        "density": data.n_events / max(1, n_u * n_i),
        "events_per_user_min": int(lens.min()) if lens.size else 0,
        "events_per_user_median": float(np.median(lens)) if lens.size else 0.0,
        "events_per_user_max": int(lens.max()) if lens.size else 0,
        "events_per_item_min": int(counts.min()) if counts.size else 0,
        "events_per_item_median": float(np.median(counts)) if counts.size else 0.0,
        "events_per_item_max": int(counts.max()) if counts.size else 0,
        "has_time": data.has_time,
    }
