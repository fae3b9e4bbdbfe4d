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
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from dynrec.data.query import QueryBatch, topk_stable
from dynrec.errors import NotFittedError
from dynrec.models.base import Recommender
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
class _Hot:
    """A user's decoded state in this process: the state, history events it covers, the model
    version, the seen item indices, and how many events it is ahead of the store."""

    state: StateBatch
    n_events: int
    version: str
    seen: set[int]
    dirty: int = 0
    seen_idx: torch.Tensor | None = None


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
        item_metadata: Any = None,
        updater: Any = None,
        cache_size: int = 10_000,
        persist_every: int = 1,
    ) -> None:
        if not model.fitted:
            raise NotFittedError(f"{model.name} is not fitted")
        self.model = model
        self.store: StateStore = store if store is not None else InMemoryStore()
        self.adapter = adapter if adapter is not None else adapter_for(model)
        self.version = model_version(model)
        self.updater = updater
        self.cache_size = cache_size
        """Users whose decoded state and seen items stay in this process (LRU; 0 = none). Assumes
        this process is the only writer of those users (sticky routing); `refresh` clears it."""
        self.persist_every = max(1, persist_every)
        """Write a user's state to the store every this many events (1 = write-through). A stored
        state is a checkpoint: loading replays the history events after it, so at most
        ``persist_every - 1`` steps are redone after a restart."""
        self._hot: OrderedDict[str, _Hot] = OrderedDict()
        self._cats: _Categories | None = None
        self.item_metadata = item_metadata
        """`ItemMetadata` (e.g. ``registry.load_items("ml-100k")``): its genres are the categories of
        `interests` (rebuilt when the catalogue grows)."""
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
    def _load(self, user: str) -> _Hot:
        """The user's state: from the hot cache, else the store's checkpoint + the history events
        after it, else built from the whole history."""
        hot = self._hot.get(user)
        if hot is not None and hot.version == self.version:
            self._hot.move_to_end(user)
            return hot
        hist = self.store.history(user)
        q = self._query(user, hist)
        c = self.store.get_state(user)
        if c is not None and c.version == self.version and c.n_events <= len(hist):
            st = self.adapter.batch([c.tensors])
            tail = self._query(user, History(hist.items[c.n_events :], hist.timestamps[c.n_events :]))
            for i, t in zip(tail.items.tolist(), tail.timestamps.tolist(), strict=True):  # type: ignore[union-attr]
                st = self.adapter.step(st, np.array([i], dtype=np.int64), np.array([t], dtype=np.int64))
            dirty = len(hist) - c.n_events
        elif c is not None and c.version == self.version:  # history trimmed below the checkpoint
            st, dirty = self.adapter.batch([c.tensors]), 0
        else:
            st, dirty = self.adapter.init(q), len(hist)
        hot = _Hot(st, len(hist), self.version, set(q.items.tolist()), dirty)
        if dirty:
            self._persist(user, hot)
        self._remember(user, hot)
        return hot

    def _persist(self, user: str, hot: _Hot) -> None:
        self.store.put_state(user, CachedState(self.adapter.unbatch(hot.state, 0), hot.version, hot.n_events))
        hot.dirty = 0

    def _remember(self, user: str, hot: _Hot) -> None:
        if self.cache_size <= 0:
            return
        self._hot[user] = hot
        self._hot.move_to_end(user)
        while len(self._hot) > self.cache_size:
            old, h = self._hot.popitem(last=False)
            if h.dirty:
                self._persist(old, h)

    def state(self, user: str) -> StateBatch:
        """The user's current state (batch of one), rebuilt from the history when not cached."""
        return self._load(user).state

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
            hot = self._load(user)
            self.store.append(ues)
            idx = self.model.item_vocab.lookup([e.item_id for e in ues], policy="skip")
            st = hot.state
            for e, i in zip(ues, idx.tolist(), strict=True):
                if i > 0:  # the hot state is owned here: step in place
                    st = self.adapter.step_(
                        st, np.array([i], dtype=np.int64), np.array([e.timestamp], dtype=np.int64)
                    )
                    hot.seen.add(i)
            hot.state, hot.n_events, hot.dirty = st, hot.n_events + len(ues), hot.dirty + len(ues)
            if hot.dirty >= self.persist_every or self.cache_size <= 0:
                self._persist(user, hot)
        if self.updater is not None:
            self.updater.remember(evs)

    def flush(self) -> None:
        """Write every cached state not yet persisted to the store."""
        for user, hot in self._hot.items():
            if hot.dirty:
                self._persist(user, hot)

    # -- reads ------------------------------------------------------------------------------
    def scores(self, user: str, *, exclude_seen: bool = True) -> torch.Tensor:
        """[n_items] scores of every item for `user` from the cached state (seen items -inf)."""
        hot = self._load(user)
        s = self.adapter.score(hot.state)[0]
        if exclude_seen and hot.seen:
            if hot.seen_idx is None or hot.seen_idx.numel() != len(hot.seen):
                hot.seen_idx = torch.tensor(sorted(hot.seen), dtype=torch.int64)
            s[hot.seen_idx] = -torch.inf
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
        if self.item_metadata is not None and self.model.item_vocab is not None:
            m, names = self.item_metadata.genre_matrix(self.model.item_vocab)
            if len(names):
                self._cats = _Categories(sp.csr_matrix(m, dtype=np.float32), list(names), "categories")
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
        self._hot.pop(user, None)
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
