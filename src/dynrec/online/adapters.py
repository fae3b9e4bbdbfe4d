"""Incremental per-user state behind one interface, for any model.

A `StateAdapter` gives ``init(histories) -> state``, ``step(state, new events) -> state`` and
``score(state) -> [B, n_items]`` over a batch of users (`StateBatch`), plus the batch plumbing
(select, assign, stack, split rows) the `OnlineRecommender` (one user at a time, states cached in a
`StateStore`) and the replay engine (thousands of users per call) need. The state itself is the
model's: a model implementing `dynrec.models.capabilities.IncrementalState` declares its layout and
does the three operations in its own file (`ModelStateAdapter`); any other model gets
`RecomputeAdapter`, whose state is the history itself and whose scores call ``model.score`` —
correct for every model, O(history) per read. Contract (tested for every model): scoring a state
built by ``init`` + any number of ``step`` calls equals ``model.score`` on the whole history.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import torch

from dynrec.data.query import QueryBatch
from dynrec.models.base import Recommender
from dynrec.models.capabilities import (
    IncrementalState,
    QueryEmbeddings,
    RowStep,
    StateBatch,
    StateQueryEmbeddings,
)

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]

__all__ = ["ModelStateAdapter", "RecomputeAdapter", "StateAdapter", "StateBatch", "adapter_for"]


class StateAdapter(ABC):
    """Incremental per-user state of one model (see the module docstring)."""

    def __init__(self, model: Recommender, kind: str, batch_dims: Mapping[str, int] | None = None) -> None:
        self.model = model
        self.kind = kind
        self.batch_dims: Mapping[str, int] = dict(batch_dims or {})
        """Batch dimension of each state tensor when not 0."""

    @property
    def n_items(self) -> int:
        return self.model.n_items

    # -- the three operations --------------------------------------------------------------
    @abstractmethod
    def init(self, batch: QueryBatch) -> StateBatch:
        """States after consuming each query's history (items must be valid model indices)."""

    @abstractmethod
    def step(self, state: StateBatch, items: IntArray, timestamps: IntArray) -> StateBatch:
        """States after each row consumes one more event (``items [B]`` valid indices). Returns a
        new state; `state` is not modified."""

    @abstractmethod
    def score(self, state: StateBatch) -> torch.Tensor:
        """[B, n_items] float32 CPU scores (column 0 = -inf), a fresh tensor."""

    def step_(self, state: StateBatch, items: IntArray, timestamps: IntArray) -> StateBatch:
        """Like `step`, but may reuse (overwrite) `state`'s buffers — for callers that own the
        state and drop the old one (the replay engine, the session's hot cache)."""
        return self.step(state, items, timestamps)

    # -- approximate retrieval from states (`dynrec.online.retrieval`) ----------------------------
    def query_embeddings(self, state: StateBatch) -> torch.Tensor | None:
        """[B, d] query vectors whose dot products with the model's output item table
        (`QueryEmbeddings.output_embeddings`) rank like `score` (None: the model's scores are no
        dot product, or its state gives no query vector)."""
        return None

    def dot_rows(self, state: StateBatch) -> npt.NDArray[np.bool_]:
        """[B] the rows `score` ranks exactly by `query_embeddings`' dot products (all of them
        unless a wrapper adds a term of its own to some rows' scores)."""
        return np.ones(self.size(state), dtype=bool)

    # -- batch plumbing (generic over the tensors' batch dimension) -------------------------
    def _dim(self, key: str) -> int:
        return self.batch_dims.get(key, 0)

    def size(self, state: StateBatch) -> int:
        k = next(iter(state))
        return int(state[k].shape[self._dim(k)])

    def select(self, state: StateBatch, idx: torch.Tensor | IntArray) -> StateBatch:
        ix = torch.as_tensor(np.asarray(idx, dtype=np.int64) if not isinstance(idx, torch.Tensor) else idx)
        return {k: v.index_select(self._dim(k), ix.to(v.device)) for k, v in state.items()}

    def assign(self, state: StateBatch, idx: torch.Tensor | IntArray, part: StateBatch) -> StateBatch:
        """A copy of `state` with rows `idx` replaced by `part`."""
        ix = torch.as_tensor(np.asarray(idx, dtype=np.int64) if not isinstance(idx, torch.Tensor) else idx)
        out = {}
        for k, v in state.items():
            w = v.clone()
            w.index_copy_(self._dim(k), ix.to(v.device), part[k].to(v.dtype))
            out[k] = w
        return out

    def assign_(self, state: StateBatch, idx: torch.Tensor | IntArray, part: StateBatch) -> StateBatch:
        """`assign` in place: rows `idx` of `state` overwritten by `part`; returns the state to
        use from now on (`state` itself, or a new one where a buffer had to grow)."""
        ix = torch.as_tensor(np.asarray(idx, dtype=np.int64) if not isinstance(idx, torch.Tensor) else idx)
        for k, v in state.items():
            v.index_copy_(self._dim(k), ix.to(v.device), part[k].to(v.dtype))
        return state

    def row_view(self, state: StateBatch, b: int) -> StateBatch:
        """Row `b` as a batch of one made of views of `state`'s tensors (a write to either shows
        in both)."""
        return {k: v.narrow(self._dim(k), b, 1) for k, v in state.items()}

    def concat(self, states: Sequence[StateBatch]) -> StateBatch:
        keys = list(states[0])
        return {k: torch.cat([s[k] for s in states], dim=self._dim(k)) for k in keys}

    def unbatch(self, state: StateBatch, b: int) -> dict[str, torch.Tensor]:
        """Row `b` without its batch dimension (for a store)."""
        return {k: v.select(self._dim(k), b).clone() for k, v in state.items()}

    def batch(self, rows: Sequence[dict[str, torch.Tensor]]) -> StateBatch:
        keys = list(rows[0])
        return {k: torch.stack([r[k] for r in rows], dim=self._dim(k)) for k in keys}

    def step_where(
        self, state: StateBatch, items: IntArray, timestamps: IntArray, mask: npt.NDArray[np.bool_]
    ) -> StateBatch:
        """Step only the rows where `mask` (the others keep their state); a new state."""
        if mask.all():
            return self.step(state, items, timestamps)
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            return state
        part = self.step(self.select(state, rows), items[rows], timestamps[rows])
        return self.assign(state, rows, part)

    def narrow(self, state: StateBatch, n: int) -> StateBatch:
        """The first `n` rows (views, no copy)."""
        return {k: v.narrow(self._dim(k), 0, n) for k, v in state.items()}

    def step_rows_(
        self, state: StateBatch, rows: IntArray, items: IntArray, timestamps: IntArray
    ) -> StateBatch:
        """Advance rows `rows` by one event each, writing into `state` in place where the shapes
        allow (the replay engine owns its states); returns the state to use from now on."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size == 0:
            return state
        n = rows.size
        prefix = bool(rows[0] == 0 and rows[-1] == n - 1 and (n == 1 or np.all(np.diff(rows) == 1)))
        if prefix and n == self.size(state):  # every row steps: the new state is the step's output
            return self.step_(state, items, timestamps)
        cur = self.narrow(state, n) if prefix else self.select(state, rows)
        part = self.step_(cur, items, timestamps)  # `cur` is a copy, or views of our own rows
        if any(part[k].shape != cur[k].shape for k in part):
            return self.assign(state, rows, part)  # shapes changed (a growing buffer)
        ix = torch.from_numpy(rows)
        for k, v in state.items():
            d = self._dim(k)
            if prefix:
                v.narrow(d, 0, n).copy_(part[k])
            else:
                v.index_copy_(d, ix.to(v.device), part[k].to(v.dtype))
        return state


class ModelStateAdapter(StateAdapter):
    """The state of a model implementing `IncrementalState` (its own init / step / score)."""

    def __init__(self, model: Recommender, states: IncrementalState) -> None:
        layout = states.state_layout()
        if layout is None:
            raise ValueError(f"{model.name} has no incremental state in this configuration")
        super().__init__(model, layout.kind, layout.batch_dims)
        self.states = states

    def init(self, batch: QueryBatch) -> StateBatch:
        return self.states.init_state(batch)

    def step(self, state: StateBatch, items: IntArray, timestamps: IntArray) -> StateBatch:
        return self.states.step_state(state, items, timestamps)

    def step_(self, state: StateBatch, items: IntArray, timestamps: IntArray) -> StateBatch:
        return self.states.step_state(state, items, timestamps, inplace=True)

    def score(self, state: StateBatch) -> torch.Tensor:
        return self.states.score_state(state)

    def query_embeddings(self, state: StateBatch) -> torch.Tensor | None:
        if isinstance(self.states, StateQueryEmbeddings) and isinstance(self.states, QueryEmbeddings):
            return self.states.state_query_embeddings(state)
        return None

    def step_rows_(
        self, state: StateBatch, rows: IntArray, items: IntArray, timestamps: IntArray
    ) -> StateBatch:
        """In place through the model's `RowStep` when it has one (no row is copied)."""
        if not isinstance(self.states, RowStep):
            return super().step_rows_(state, rows, items, timestamps)
        if len(rows):
            self.states.step_state_rows_(state, np.asarray(rows, dtype=np.int64), items, timestamps)
        return state


class RecomputeAdapter(StateAdapter):
    """The state *is* the history (right-padded buffer that doubles when full); scores recompute
    ``model.score`` from it. Exact for every model; O(history) per read."""

    def __init__(self, model: Recommender) -> None:
        super().__init__(model, "history")

    def init(self, batch: QueryBatch) -> StateBatch:
        b = len(batch)
        lens = batch.lengths
        width = max(8, int(lens.max(initial=0)) * 2)
        items = np.zeros((b, width), dtype=np.int64)
        ts = np.zeros((b, width), dtype=np.int64)
        if len(batch.items):
            rows = batch.row_ids()
            cols = np.arange(len(batch.items)) - np.repeat(batch.indptr[:-1], lens)
            items[rows, cols] = batch.items
            if batch.timestamps is not None:
                ts[rows, cols] = batch.timestamps
        return {
            "items": torch.from_numpy(items),
            "ts": torch.from_numpy(ts),
            "n": torch.from_numpy(lens.astype(np.int64)),
            "user": torch.from_numpy(batch.users.astype(np.int64)),
        }

    def step(self, state: StateBatch, items: IntArray, timestamps: IntArray) -> StateBatch:
        n = state["n"]
        width = int(state["items"].shape[1])
        it, ts = state["items"], state["ts"]
        if n.numel() and int(n.max()) >= width:
            pad = torch.zeros(it.shape[0], width, dtype=torch.int64)
            it, ts = torch.cat([it, pad], 1), torch.cat([ts, pad], 1)
        else:
            it, ts = it.clone(), ts.clone()
        rows = torch.arange(it.shape[0])
        it[rows, n] = torch.from_numpy(np.asarray(items, dtype=np.int64))
        ts[rows, n] = torch.from_numpy(np.asarray(timestamps, dtype=np.int64))
        return {"items": it, "ts": ts, "n": n + 1, "user": state["user"]}

    def concat(self, states: Sequence[StateBatch]) -> StateBatch:
        width = max(int(s["items"].shape[1]) for s in states)
        return super().concat([self._widen(s, width) for s in states])

    def batch(self, rows: Sequence[dict[str, torch.Tensor]]) -> StateBatch:
        width = max(int(r["items"].shape[0]) for r in rows)
        return super().batch([self._widen_row(r, width) for r in rows])

    def assign(self, state: StateBatch, idx: torch.Tensor | IntArray, part: StateBatch) -> StateBatch:
        width = max(int(state["items"].shape[1]), int(part["items"].shape[1]))
        return super().assign(self._widen(state, width), idx, self._widen(part, width))

    def assign_(self, state: StateBatch, idx: torch.Tensor | IntArray, part: StateBatch) -> StateBatch:
        width = int(state["items"].shape[1])
        if int(part["items"].shape[1]) > width:
            return self.assign(state, idx, part)
        return super().assign_(state, idx, self._widen(part, width))

    def unbatch(self, state: StateBatch, b: int) -> dict[str, torch.Tensor]:
        n = int(state["n"][b])
        width = max(8, 2 * n)
        row = super().unbatch(state, b)
        return self._widen_row({**row, "items": row["items"][:width], "ts": row["ts"][:width]}, width)

    @staticmethod
    def _widen(s: StateBatch, width: int) -> StateBatch:
        w = int(s["items"].shape[1])
        if w >= width:
            return s
        pad = torch.zeros(s["items"].shape[0], width - w, dtype=torch.int64)
        return {**s, "items": torch.cat([s["items"], pad], 1), "ts": torch.cat([s["ts"], pad], 1)}

    @staticmethod
    def _widen_row(r: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
        w = int(r["items"].shape[0])
        if w >= width:
            return r
        pad = torch.zeros(width - w, dtype=torch.int64)
        return {**r, "items": torch.cat([r["items"], pad]), "ts": torch.cat([r["ts"], pad])}

    def queries(self, state: StateBatch) -> QueryBatch:
        n = state["n"].numpy()
        b = n.shape[0]
        indptr = np.zeros(b + 1, dtype=np.int64)
        np.cumsum(n, out=indptr[1:])
        mask = np.arange(state["items"].shape[1])[None, :] < n[:, None]
        return QueryBatch(
            state["user"].numpy().astype(np.int64),
            indptr,
            state["items"].numpy()[mask].astype(np.int64),
            state["ts"].numpy()[mask].astype(np.int64),
            None,
        )

    def score(self, state: StateBatch) -> torch.Tensor:
        return self.model.score(self.queries(state)).clone()

    def query_embeddings(self, state: StateBatch) -> torch.Tensor | None:
        if isinstance(self.model, QueryEmbeddings):
            return self.model.query_embeddings(self.queries(state))
        return None


def adapter_for(model: Recommender, *, prefer: str | None = None) -> StateAdapter:
    """The model's own incremental state when it has one, else the history (``prefer="recompute"``
    forces the history)."""
    if prefer != "recompute" and isinstance(model, IncrementalState) and model.state_layout() is not None:
        return ModelStateAdapter(model, model)
    return RecomputeAdapter(model)
