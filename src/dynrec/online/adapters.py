"""Incremental per-user state for every model family, behind one small interface.

A `StateAdapter` turns a model into ``init(histories) -> state``, ``step(state, new events) ->
state`` and ``score(state) -> [B, n_items]``, where a *state* is a dict of tensors holding a batch of
users (`StateBatch`). The same adapters serve the `OnlineRecommender` (one user at a time, states
cached in a `StateStore`) and the streaming replay (thousands of users per call). Each adapter's
contract: scoring a state built by ``init`` + any number of ``step`` calls gives the same scores as
``model.score`` on the whole history (float tolerance) — tested for every model.

Families (`adapter_for` picks one):

* **SASRec** (rotary positions): the model's per-user key/value ring buffer (`init_state`,
  `step`, `score_state`) — O(max_len) per event, independent of the history length.
* **GRU-style** (`init_state`, `step_state`, `score_state`: gru4rec): the hidden state, O(1) per
  event; with time-gap inputs the state also holds the last event time.
* **ALS** (closed-form fold-in): the sufficient statistics of the user's normal equations, O(k²)
  per event, a k×k solve per read — equal to folding in the whole history. **EASE**: the linear
  score vector ``binary_history @ B``.
* **ItemKNN**: the recency-decayed score vector ``s ← γ s + sim[item]`` (γ = 0.5^(1/half-life)),
  exactly ``history_weights @ sim``.
* **Pop**: scores do not depend on the history (only seen items are masked by the caller).
* **Recompute** (everything else): the history itself (a growing buffer); scores call
  ``model.score`` — correct for any model, O(history) per request.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import torch

from dynrec.data.query import QueryBatch
from dynrec.errors import DynrecError
from dynrec.models.base import Recommender

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
StateBatch = dict[str, torch.Tensor]

__all__ = [
    "ALSFoldInAdapter",
    "BinaryLinearAdapter",
    "GRUStateAdapter",
    "ItemKNNAdapter",
    "PopAdapter",
    "RecomputeAdapter",
    "SASRecAdapter",
    "StateAdapter",
    "StateBatch",
    "adapter_for",
]


class StateAdapter(ABC):
    """Incremental per-user state of one model (see the module docstring)."""

    kind: ClassVar[str] = "state"
    batch_dims: ClassVar[dict[str, int]] = {}
    """Batch dimension of each state tensor when not 0."""

    def __init__(self, model: Recommender) -> None:
        self.model = model

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


# ---- sequence models ------------------------------------------------------------------------------


class SASRecAdapter(StateAdapter):
    """Key/value-cache state of models with ``init_state`` / ``step`` / ``score_state`` whose state
    has ``to_dict`` / ``from_dict`` (SASRec with rotary positions)."""

    kind = "kv-cache"
    batch_dims = {"keys": 1, "values": 1}

    def __init__(self, model: Recommender) -> None:
        super().__init__(model)
        m: Any = model
        self._state_cls = type(m.init_state(QueryBatch.from_histories([[1]])))

    def _wrap(self, state: StateBatch) -> Any:
        return self._state_cls.from_dict(state)

    def init(self, batch: QueryBatch) -> StateBatch:
        m: Any = self.model
        out: StateBatch = m.init_state(batch).to_dict()
        return out

    def step(self, state: StateBatch, items: IntArray, timestamps: IntArray) -> StateBatch:
        m: Any = self.model
        net = _eval_net(m)
        if net is not None and hasattr(net, "step"):  # skip the model's per-call eval/train toggling
            with torch.no_grad():
                it = torch.from_numpy(np.asarray(items, dtype=np.int64)).to(m.device)
                fast: StateBatch = net.step(self._wrap(state), it).to_dict()
                return fast
        out: StateBatch = m.step(self._wrap(state), np.asarray(items, dtype=np.int64)).to_dict()
        return out

    def step_(self, state: StateBatch, items: IntArray, timestamps: IntArray) -> StateBatch:
        """`step` writing the new keys/values into the ring buffers in place: the model's step copies
        both buffers (``[layers, B, heads, max_len, head_dim]`` each) per event, which is most of
        an event's cost on a CPU. Mirrors ``SASRecNet.step`` with the model's own blocks; the
        adapter tests check it against recomputation from the history."""
        m: Any = self.model
        net = _eval_net(m)
        if net is None or not all(
            hasattr(net, a) for a in ("rope", "embed", "item_emb", "block_list", "ln_f", "max_len")
        ):
            return self.step(state, items, timestamps)
        with torch.no_grad():
            it = torch.from_numpy(np.asarray(items, dtype=np.int64)).to(m.device)
            keys, values, p = state["keys"], state["values"], state["length"]
            b, w, dev = it.shape[0], int(net.max_len), it.device
            rope = net.rope(p[:, None])
            slot = p % w
            valid = torch.arange(w, device=dev)[None, :] < (p + 1).clamp(max=w)[:, None]
            mask = valid[:, None, None, :]
            rows = torch.arange(b, device=dev)
            e = net.item_emb(it)
            x = net.embed(it[:, None])
            for li, blk in enumerate(net.block_list()):
                q, k, v = blk.project(x, rope)
                keys[li, rows, :, slot] = k[:, :, 0]
                values[li, rows, :, slot] = v[:, :, 0]
                a = torch.nn.functional.scaled_dot_product_attention(q, keys[li], values[li], attn_mask=mask)
                x = blk.finish(x, a)
            hidden = net.ln_f(x)[:, 0]
            return {
                "keys": keys,
                "values": values,
                "length": p + 1,
                "hidden": hidden,
                "lt_sum": state["lt_sum"] + e,
            }

    def score(self, state: StateBatch) -> torch.Tensor:
        m: Any = self.model
        s: torch.Tensor = m.score_state(self._wrap(state))
        return s


class GRUStateAdapter(StateAdapter):
    """Hidden state of models with ``init_state`` / ``step_state(state, items, gaps)`` /
    ``score_state`` (gru4rec). With time-gap inputs the state keeps the last event time."""

    kind = "hidden"

    def _time_gaps(self) -> bool:
        return bool(getattr(self.model.config, "time_gaps", False))

    def init(self, batch: QueryBatch) -> StateBatch:
        m: Any = self.model
        h: torch.Tensor = m.init_state(batch).cpu()
        n = torch.from_numpy(batch.lengths.astype(np.int64))
        last = np.full(len(batch), -1, dtype=np.int64)
        if batch.timestamps is not None:
            nz = batch.lengths > 0
            last[nz] = batch.timestamps[batch.indptr[1:][nz] - 1]
        return {"h": h, "n": n, "last_ts": torch.from_numpy(last)}

    def step(self, state: StateBatch, items: IntArray, timestamps: IntArray) -> StateBatch:
        m: Any = self.model
        gaps = None
        if self._time_gaps():
            ts = torch.from_numpy(np.asarray(timestamps, dtype=np.int64))
            gaps = torch.where(state["n"] > 0, ts - state["last_ts"], torch.full_like(ts, -1))
        it = torch.from_numpy(np.asarray(items, np.int64))
        net = _eval_net(m)
        if net is not None and hasattr(net, "step"):  # skip the model's per-call eval/train toggling
            with torch.no_grad():
                dev = m.device
                h: torch.Tensor = net.step(
                    state["h"].to(dev), it.to(dev), None if gaps is None else gaps.to(dev)
                ).cpu()
        else:
            h = m.step_state(state["h"], it, gaps).cpu()
        return {"h": h, "n": state["n"] + 1, "last_ts": torch.from_numpy(np.asarray(timestamps, np.int64))}

    def score(self, state: StateBatch) -> torch.Tensor:
        m: Any = self.model
        s: torch.Tensor = m.score_state(state["h"])
        return s


def _eval_net(model: Any) -> Any:
    """The model's module when it is already in eval mode (then its building blocks can be called
    directly under no_grad, as the model's own read methods do after switching to eval)."""
    net = getattr(model, "net", None)
    if isinstance(net, torch.nn.Module) and not net.training:
        return net
    return None


# ---- neighbourhood / popularity ---------------------------------------------------------------------


class ItemKNNAdapter(StateAdapter):
    """``s ← γ·s + sim[item]`` with ``γ = 0.5 ** (1 / recency_half_life)`` (1 when no decay): the
    recency-decayed score vector ItemKNN computes from the whole history."""

    kind = "decayed-scores"

    def _gamma(self) -> float:
        hl = float(getattr(self.model.config, "recency_half_life", 0.0))
        return float(0.5 ** (1.0 / hl)) if hl > 0 else 1.0

    dense_limit: ClassVar[int] = 1 << 24
    """Similarity matrices with at most this many entries are densified once (fast row reads)."""

    def __init__(self, model: Recommender) -> None:
        super().__init__(model)
        sim = getattr(model, "sim", None)
        if sim is None:
            raise DynrecError("itemknn is not fitted")
        self._sim = sim
        n = int(sim.shape[0])
        self._dense = (
            torch.from_numpy(np.asarray(sim.toarray(), dtype=np.float32))
            if n * n <= self.dense_limit
            else None
        )

    def _rows(self, items: IntArray) -> torch.Tensor:
        it = np.asarray(items, dtype=np.int64)
        if self._dense is not None:
            return self._dense[torch.from_numpy(it)]
        return torch.from_numpy(np.asarray(self._sim[it].toarray(), dtype=np.float32))

    def init(self, batch: QueryBatch) -> StateBatch:
        s = self.model.score(batch)
        s[:, 0] = 0.0
        return {"s": s}

    def step(self, state: StateBatch, items: IntArray, timestamps: IntArray) -> StateBatch:
        g = self._gamma()
        s = state["s"] * g if g != 1.0 else state["s"].clone()
        s += self._rows(items)
        return {"s": s}

    def score(self, state: StateBatch) -> torch.Tensor:
        out = state["s"].clone()
        out[:, 0] = -torch.inf
        return out


class PopAdapter(StateAdapter):
    """Popularity scores ignore the history; the state only counts events."""

    kind = "none"

    def init(self, batch: QueryBatch) -> StateBatch:
        return {"n": torch.from_numpy(batch.lengths.astype(np.int64))}

    def step(self, state: StateBatch, items: IntArray, timestamps: IntArray) -> StateBatch:
        return {"n": state["n"] + 1}

    def score(self, state: StateBatch) -> torch.Tensor:
        b = int(state["n"].shape[0])
        return self.model.score(QueryBatch.from_histories([[]] * b))


# ---- fallback -----------------------------------------------------------------------------------


class RecomputeAdapter(StateAdapter):
    """The state *is* the history (right-padded buffer that doubles when full); scores recompute
    ``model.score`` from it. Exact for every model; O(history) per read."""

    kind = "history"

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


# ---- selection ---------------------------------------------------------------------------------


def adapter_for(model: Recommender, *, prefer: str | None = None) -> StateAdapter:
    """The incremental-state adapter for `model` (``prefer="recompute"`` forces the fallback)."""
    if prefer == "recompute":
        return RecomputeAdapter(model)
    if hasattr(model, "init_state") and hasattr(model, "step") and hasattr(model, "score_state"):
        try:
            return SASRecAdapter(model)
        except DynrecError as exc:  # e.g. absolute positions: no incremental state
            log.info("%s: no incremental state (%s); recomputing from the history", model.name, exc)
            return RecomputeAdapter(model)
    if hasattr(model, "init_state") and hasattr(model, "step_state") and hasattr(model, "score_state"):
        return GRUStateAdapter(model)
    from dynrec.models.knn import ItemKNN
    from dynrec.models.popularity import MostPopular

    if isinstance(model, ItemKNN):
        return ItemKNNAdapter(model)
    if isinstance(model, MostPopular):
        return PopAdapter(model)
    mf = _mf_adapter(model)
    if mf is not None:
        return mf
    return RecomputeAdapter(model)


def _mf_adapter(model: Recommender) -> StateAdapter | None:
    """Incremental adapters for the MF family (which does not expose fold-in hooks itself)."""
    try:
        from dynrec.models.mf.als import ALS
        from dynrec.models.mf.ease import EASE
    except ImportError:  # pragma: no cover - the MF family is optional
        return None
    if isinstance(model, ALS):
        return ALSFoldInAdapter(model)
    if isinstance(model, EASE):
        return BinaryLinearAdapter(model)
    return None


class ALSFoldInAdapter(StateAdapter):
    """Implicit ALS: the user vector is ``A⁻¹ b`` with ``A = VᵀV + λI + Σ_i α w_i v_i v_iᵀ`` and
    ``b = Σ_i (1 + α w_i) v_i`` over the history's items (w_i = events on item i). An event on item
    i adds ``α v_i v_iᵀ`` to A and ``α v_i`` to b (plus ``v_i`` the first time i is seen): O(k²) per
    event; a read solves the k×k system — the same normal equations `ALS.user_vectors` solves from
    the whole history."""

    kind = "fold-in"
    event_block: ClassVar[int] = 2048
    """History events whose outer products are formed at once when building states."""

    def _parts(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        m: Any = self.model
        v: torch.Tensor = m.item_vectors()
        g: torch.Tensor = m._base_gram if m._base_gram is not None else m._gram(v)
        return v, g, float(m.config.alpha)

    def init(self, batch: QueryBatch) -> StateBatch:
        v, g, alpha = self._parts()
        n, k = v.shape
        seen = torch.zeros(len(batch), n, dtype=torch.bool)
        a = g.to(torch.float64)[None].repeat(len(batch), 1, 1)
        b = torch.zeros(len(batch), k, dtype=torch.float64)
        if len(batch.items):
            rows = torch.from_numpy(batch.row_ids())
            cols = torch.from_numpy(batch.items.astype(np.int64))
            keep = (cols > 0) & (cols < n)
            rows, cols = rows[keep], cols[keep]
            for s0 in range(0, int(rows.shape[0]), self.event_block):  # bounded [block, k, k] memory
                r, vv = (
                    rows[s0 : s0 + self.event_block],
                    v[cols[s0 : s0 + self.event_block]].to(torch.float64),
                )
                a.index_add_(0, r, alpha * vv[:, :, None] * vv[:, None, :])
                b.index_add_(0, r, alpha * vv)
            seen[rows, cols] = True
            r2, c2 = torch.nonzero(seen, as_tuple=True)
            b.index_add_(0, r2, v[c2].to(torch.float64))
        return {"A": a, "b": b, "seen": seen}

    def step(self, state: StateBatch, items: IntArray, timestamps: IntArray) -> StateBatch:
        v, _, alpha = self._parts()
        it = torch.from_numpy(np.asarray(items, dtype=np.int64))
        rows = torch.arange(it.shape[0])
        vv = v[it].to(torch.float64)
        first = ~state["seen"][rows, it]
        seen = state["seen"].clone()
        seen[rows, it] = True
        a = state["A"] + alpha * vv[:, :, None] * vv[:, None, :]
        b = state["b"] + (alpha + first.to(torch.float64))[:, None] * vv
        return {"A": a, "b": b, "seen": seen}

    def score(self, state: StateBatch) -> torch.Tensor:
        v, _, _ = self._parts()
        u = torch.linalg.solve(state["A"], state["b"]).to(torch.float32)
        return _pad_scores(u @ v.T, self.model.n_items)


class BinaryLinearAdapter(StateAdapter):
    """Models scoring ``binary_history @ W`` (EASE): ``s += W[item]`` the first time an item is
    seen — O(n_items) per event."""

    kind = "linear"

    def _w(self) -> torch.Tensor:
        m: Any = self.model
        w: torch.Tensor = m.weights
        return w

    def init(self, batch: QueryBatch) -> StateBatch:
        w = self._w()
        n = w.shape[0]
        seen = torch.zeros(len(batch), n, dtype=torch.bool)
        if len(batch.items):
            cols = torch.from_numpy(batch.items.astype(np.int64))
            keep = (cols > 0) & (cols < n)
            seen[torch.from_numpy(batch.row_ids())[keep], cols[keep]] = True
        return {"s": seen.float() @ w, "seen": seen}

    def step(self, state: StateBatch, items: IntArray, timestamps: IntArray) -> StateBatch:
        w = self._w()
        it = torch.from_numpy(np.asarray(items, dtype=np.int64))
        rows = torch.arange(it.shape[0])
        first = ~state["seen"][rows, it]
        seen = state["seen"].clone()
        seen[rows, it] = True
        return {"s": state["s"] + first.float()[:, None] * w[it], "seen": seen}

    def score(self, state: StateBatch) -> torch.Tensor:
        return _pad_scores(state["s"].clone(), self.model.n_items)


def _pad_scores(s: torch.Tensor, n_items: int) -> torch.Tensor:
    """Scores as [B, n_items] (items beyond the model's tables -inf), column 0 -inf, contiguous."""
    if s.shape[1] < n_items:
        s = torch.cat([s, torch.full((s.shape[0], n_items - s.shape[1]), -torch.inf)], 1)
    s = s.contiguous()
    s[:, 0] = -torch.inf
    return s
