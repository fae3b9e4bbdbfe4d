"""`OnlineRecommender`: a model + a `StateStore`; events in, recommendations that already reflect them.

``observe(event)`` appends the event to the user's history and advances the user's cached model
state by one step (O(1) in the history length for sequence, MF and KNN models — see
`dynrec.online.adapters`); ``recommend(user, k)`` scores the cached state, so the very next request
follows the new event. ``update(events)`` continues training the model on new events
(`dynrec.online.updater`) and invalidates every cached state (they are rebuilt lazily from the
histories, tagged by the model version). ``interests(user)`` shows short- vs long-term interests.
``delete_user`` removes everything held about a user (history, state, the updater's memory).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from dynrec.errors import NotFittedError
from dynrec.models.base import QueryBatch, Recommender, topk_stable
from dynrec.online.adapters import StateAdapter, StateBatch, adapter_for
from dynrec.online.state import CachedState, Event, History, InMemoryStore, StateStore

log = logging.getLogger(__name__)

__all__ = ["InterestProfile", "Interests", "OnlineRecommender", "Recommendation", "model_version"]


def model_version(model: Recommender) -> str:
    """A content fingerprint of the model's learned state (stable across processes)."""
    h = hashlib.sha1(model.name.encode())
    for k, v in sorted(model.tensors().items()):
        h.update(k.encode())
        t = v.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class Recommendation:
    user_id: str
    items: list[str]
    scores: list[float]


@dataclass(frozen=True)
class InterestProfile:
    """Top categories (or clusters / items) with their share of the window's weight, and the
    model's top items when it reads only that window."""

    categories: list[tuple[str, float]]
    items: list[str]
    n_events: int


@dataclass(frozen=True)
class Interests:
    user_id: str
    short_term: InterestProfile
    long_term: InterestProfile
    basis: str
    """What the categories are: "categories" (item metadata), "clusters" (of the model's item
    vectors) or "items"."""


@dataclass
class _Categories:
    matrix: sp.csr_matrix  # [n_items, n_cats]
    names: list[str]
    basis: str


class OnlineRecommender:
    """A model and its per-user state (see the module docstring).

    `item_categories`: optional ``(matrix [n_items, n_categories], names)`` in the model's item
    index order (e.g. ``ItemMetadata.genre_matrix(model.item_vocab)``) for `interests`.
    """

    def __init__(
        self,
        model: Recommender,
        store: StateStore | None = None,
        *,
        adapter: StateAdapter | None = None,
        item_categories: tuple[sp.csr_matrix, Sequence[str]] | None = None,
        updater: Any = None,
    ) -> None:
        if not model.fitted:
            raise NotFittedError(f"{model.name} is not fitted")
        self.model = model
        self.store: StateStore = store if store is not None else InMemoryStore()
        self.adapter = adapter if adapter is not None else adapter_for(model)
        self.version = model_version(model)
        self.updater = updater
        self._cats: _Categories | None = None
        if item_categories is not None:
            m, names = item_categories
            self._cats = _Categories(
                sp.csr_matrix(m, dtype=np.float32), [str(n) for n in names], "categories"
            )

    # -- index mapping ----------------------------------------------------------------------
    def _query(self, user: str, hist: History) -> QueryBatch:
        assert self.model.item_vocab is not None and self.model.user_vocab is not None
        idx = self.model.item_vocab.lookup(hist.items, policy="skip")
        keep = idx > 0  # items unknown to the model are kept in the history, skipped by the state
        uidx = self.model.user_vocab.index(user, policy="skip")
        items = idx[keep].astype(np.int64)
        return QueryBatch(
            np.array([uidx], dtype=np.int64),
            np.array([0, items.shape[0]], dtype=np.int64),
            items,
            hist.timestamps[keep].astype(np.int64),
            None,
        )

    # -- state ------------------------------------------------------------------------------
    def _fresh_state(self, user: str) -> tuple[StateBatch, int]:
        hist = self.store.history(user)
        return self.adapter.init(self._query(user, hist)), len(hist)

    def _cached(self, user: str) -> StateBatch | None:
        c = self.store.get_state(user)
        if c is None or c.version != self.version:
            return None
        return self.adapter.batch([c.tensors])

    def state(self, user: str) -> StateBatch:
        """The user's current state (batch of one), rebuilt from the history when not cached."""
        st = self._cached(user)
        if st is None:
            st, n = self._fresh_state(user)
            self.store.put_state(user, CachedState(self.adapter.unbatch(st, 0), self.version, n))
        return st

    def observe(self, events: Event | Iterable[Event]) -> None:
        """Record events (in order) and advance each user's cached state past them."""
        evs = [events] if isinstance(events, Event) else list(events)
        if not evs:
            return
        assert self.model.item_vocab is not None
        by_user: dict[str, list[Event]] = {}
        for e in evs:
            by_user.setdefault(e.user_id, []).append(e)
        for user, ues in by_user.items():
            cached = self.store.get_state(user)
            self.store.append(ues)
            if cached is None or cached.version != self.version:
                st, n = self._fresh_state(user)  # history already holds the new events
            else:
                st, n = self.adapter.batch([cached.tensors]), cached.n_events
                idx = self.model.item_vocab.lookup([e.item_id for e in ues], policy="skip")
                for e, i in zip(ues, idx.tolist(), strict=True):
                    n += 1
                    if i > 0:
                        st = self.adapter.step(
                            st, np.array([i], dtype=np.int64), np.array([e.timestamp], dtype=np.int64)
                        )
            self.store.put_state(user, CachedState(self.adapter.unbatch(st, 0), self.version, n))
        if self.updater is not None:
            self.updater.remember(evs)

    # -- reads ------------------------------------------------------------------------------
    def scores(self, user: str, *, exclude_seen: bool = True) -> torch.Tensor:
        """[n_items] scores of every item for `user` from the cached state (seen items -inf)."""
        s = self.adapter.score(self.state(user))[0]
        if exclude_seen:
            q = self._query(user, self.store.history(user))
            if len(q.items):
                s[torch.from_numpy(q.items)] = -torch.inf
        s[0] = -torch.inf
        return s

    def recompute_scores(self, user: str) -> torch.Tensor:
        """Reference path: ``model.score`` on the whole stored history (no cached state)."""
        return self.model.score(self._query(user, self.store.history(user)))[0]

    def recommend(self, user: str, k: int = 10, *, exclude_seen: bool = True) -> Recommendation:
        assert self.model.item_vocab is not None
        s = self.scores(user, exclude_seen=exclude_seen)
        idx, vals = topk_stable(s[None, :], k)
        keep = torch.isfinite(vals[0])
        items = self.model.item_vocab.to_ids(idx[0][keep].numpy())
        return Recommendation(user, items, [float(v) for v in vals[0][keep]])

    # -- interests ----------------------------------------------------------------------------
    def interests(
        self,
        user: str,
        *,
        short_window: int = 10,
        short_half_life: float = 0.0,
        top: int = 5,
    ) -> Interests:
        """Short-term (the last `short_window` events, optionally decayed with `short_half_life`
        events) vs long-term (the whole history) interests: the top categories of each with their
        share, and the model's top items when it reads only that part of the history."""
        assert self.model.item_vocab is not None
        hist = self.store.history(user)
        q = self._query(user, hist)
        cats = self._categories()
        n = len(q.items)
        w_short = np.zeros(n, dtype=np.float32)
        a = max(0, n - short_window)
        back = np.arange(n - 1, -1, -1, dtype=np.float64)[a:]
        w_short[a:] = np.power(0.5, back / short_half_life) if short_half_life > 0 else 1.0
        w_long = np.ones(n, dtype=np.float32)
        short_q = QueryBatch(
            q.users, np.array([0, n - a]), q.items[a:], None if q.timestamps is None else q.timestamps[a:]
        )
        return Interests(
            user,
            InterestProfile(
                self._top_categories(q.items, w_short, cats, top), self._top_items(short_q, q, top), n - a
            ),
            InterestProfile(self._top_categories(q.items, w_long, cats, top), self._top_items(q, q, top), n),
            cats.basis,
        )

    def _top_items(self, q: QueryBatch, seen: QueryBatch, top: int) -> list[str]:
        assert self.model.item_vocab is not None
        if not len(q.items):
            return []
        idx, vals = self.model.recommend(q, top, exclude=seen)
        keep = torch.isfinite(vals[0])
        return self.model.item_vocab.to_ids(idx[0][keep].numpy())

    def _top_categories(
        self, items: npt.NDArray[np.int64], weights: npt.NDArray[np.float32], cats: _Categories, top: int
    ) -> list[tuple[str, float]]:
        if not len(items) or float(weights.sum()) <= 0:
            return []
        h = sp.csr_matrix(
            (weights, (np.zeros(len(items), dtype=np.int64), items)), shape=(1, cats.matrix.shape[0])
        )
        mass = np.asarray((h @ cats.matrix).todense(), dtype=np.float64).ravel()
        total = mass.sum()
        if total <= 0:
            return []
        order = np.argsort(-mass, kind="stable")[:top]
        return [(cats.names[j], float(mass[j] / total)) for j in order if mass[j] > 0]

    def _categories(self) -> _Categories:
        if self._cats is not None and self._cats.matrix.shape[0] == self.model.n_items:
            return self._cats
        if self._cats is not None and self._cats.basis == "categories":  # the catalogue grew
            m = self._cats.matrix
            grown = sp.vstack([m, sp.csr_matrix((self.model.n_items - m.shape[0], m.shape[1]))]).tocsr()
            self._cats = _Categories(grown, self._cats.names, "categories")
            return self._cats
        vecs = item_vectors(self.model)
        if vecs is not None:
            self._cats = cluster_items(vecs, self.model)
        else:
            n = self.model.n_items
            names = ["<pad>", *self.model.item_vocab.ids] if self.model.item_vocab is not None else []
            self._cats = _Categories(sp.identity(n, dtype=np.float32, format="csr"), names, "items")
        return self._cats

    # -- mutation ------------------------------------------------------------------------------
    def update(self, events: Iterable[Event] | None = None) -> dict[str, Any]:
        """Incremental training on new events (or on what `observe` remembered) via the updater;
        cached states become stale (rebuilt lazily)."""
        if self.updater is None:
            from dynrec.online.updater import IncrementalUpdater

            self.updater = IncrementalUpdater(self.model)
        report: dict[str, Any] = self.updater.update(events)
        self.refresh()
        return report

    def refresh(self) -> None:
        """Call after the model changed (update, reload): new version, new adapter."""
        self.version = model_version(self.model)
        self.adapter = (
            adapter_for(self.model) if type(self.adapter).__name__ != "RecomputeAdapter" else self.adapter
        )
        if self._cats is not None and self._cats.basis == "clusters":
            self._cats = None

    def delete_user(self, user: str) -> bool:
        """Privacy: remove the user's history and cached state (and the updater's copy)."""
        found = self.store.delete_user(user)
        if self.updater is not None:
            found = bool(self.updater.forget_user(user)) or found
        return found


# ---- item vectors and clusters (interests without item metadata) --------------------------------


def item_vectors(model: Recommender) -> torch.Tensor | None:
    """[n_items, d] item vectors of a model when it has them (an embedding / factor table)."""
    n = model.n_items
    for name in ("item_factors", "item_vectors"):
        v = getattr(model, name, None)
        if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape[0] == n:
            return v.detach().float().cpu()
        if isinstance(v, np.ndarray) and v.ndim == 2 and v.shape[0] == n:
            return torch.from_numpy(np.asarray(v, dtype=np.float32))
    net = getattr(model, "net", None)
    if isinstance(net, torch.nn.Module):
        for mod in net.modules():
            if isinstance(mod, torch.nn.Embedding) and mod.num_embeddings >= n:
                return mod.weight.detach()[:n].float().cpu()
    return None


def cluster_items(
    vecs: torch.Tensor, model: Recommender, n_clusters: int = 20, iters: int = 25
) -> _Categories:
    """k-means (cosine, seeded) of the item vectors; each cluster is named by its 3 items nearest
    the centroid."""
    x = torch.nn.functional.normalize(vecs[1:].float(), dim=1)
    n = x.shape[0]
    k = max(1, min(n_clusters, n))
    gen = torch.Generator().manual_seed(model.config.seed)
    cent = x[torch.randperm(n, generator=gen)[:k]].clone()
    assign = torch.zeros(n, dtype=torch.int64)
    for _ in range(iters):
        assign = (x @ cent.T).argmax(1)
        for c in range(k):
            members = x[assign == c]
            if members.shape[0]:
                cent[c] = torch.nn.functional.normalize(members.mean(0), dim=0)
    sims = (x @ cent.T).gather(1, assign[:, None])[:, 0]
    names = []
    ids = model.item_vocab.ids if model.item_vocab is not None else []
    for c in range(k):
        mem = torch.nonzero(assign == c).squeeze(1)
        best = mem[torch.argsort(sims[mem], descending=True)[:3]].tolist()
        names.append(f"cluster {c}: " + ", ".join(ids[i] for i in best) if ids else f"cluster {c}")
    rows = np.arange(1, n + 1)
    m = sp.csr_matrix(
        (np.ones(n, dtype=np.float32), (rows, assign.numpy())), shape=(n + 1, k), dtype=np.float32
    )
    return _Categories(m, names, "clusters")


__all__ += ["cluster_items", "item_vectors"]
