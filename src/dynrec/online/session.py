"""`OnlineRecommender`: a model + a `StateStore`; events in, recommendations that already reflect them.

``observe(event)`` appends the event to the user's history and advances the user's cached model
state by one step (O(1) in the history length for sequence, MF and KNN models — see
`dynrec.online.adapters`); ``recommend(user, k)`` scores the cached state (or searches an index
with it), so the very next request follows the new event. ``update(events)`` continues training
the model on new events (`dynrec.online.updater`) and invalidates every cached state (rebuilt
lazily from the histories, tagged by the model version). ``interests(user)`` shows short- vs
long-term interests. ``delete_user`` removes everything held about a user (history, state, the
updater's memory)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from dynrec.data.events import Event, validate_events
from dynrec.data.items import ItemMetadata
from dynrec.data.query import QueryBatch, Recommendations, check_k
from dynrec.errors import NotFittedError
from dynrec.models.base import Recommender
from dynrec.models.retrieval import AnnIndex
from dynrec.online.adapters import RecomputeAdapter, StateAdapter, StateBatch, adapter_for
from dynrec.online.hot_state import HotCache, HotRun, HotState
from dynrec.online.interests import (
    Categories,
    Interests,
    ItemInfo,
    interests_of,
    item_categories,
)
from dynrec.online.retrieval import state_top_k
from dynrec.online.shift_state import ShiftAdapter, build_detector, recent_shifts, stored_histories
from dynrec.online.shifts import Shift, ShiftCalibration, ShiftConfig, ShiftDetector, shift_counts
from dynrec.online.store import CachedState, History, InMemoryStore, StateStore, UserStamp
from dynrec.online.updater import IncrementalUpdater, UpdateReport

log = logging.getLogger(__name__)

__all__ = ["OnlineRecommender", "Recommendation"]


@dataclass(frozen=True)
class Recommendation:
    user_id: str
    items: list[str]
    scores: list[float]
    retrieval: str = "exact"
    """What served the list: ``"exact"`` or ``"ann:<kind>"``."""


class OnlineRecommender:
    """A model and its per-user state (see the module docstring).

    `item_categories`: optional ``(matrix [n_items, n_categories], names)`` in the model's item
    index order (e.g. ``ItemMetadata.genre_matrix(model.item_vocab)``) for `interests`; else the
    tags of `item_info`, the genres of `item_metadata`, clusters or items
    (`dynrec.online.interests.item_categories`). `index`: an `AnnIndex` over the model's item
    table that `recommend` searches (`dynrec.online.retrieval`; None = exact), rebuilt by `refresh`."""

    def __init__(
        self,
        model: Recommender,
        store: StateStore | None = None,
        *,
        adapter: StateAdapter | None = None,
        item_categories: tuple[sp.csr_matrix, Sequence[str]] | None = None,
        item_metadata: ItemMetadata | None = None,
        item_info: ItemInfo | None = None,
        updater: IncrementalUpdater | None = None,
        cache_size: int = 10_000,
        persist_every: int = 1,
        shifts: ShiftDetector | None = None,
        index: AnnIndex | None = None,
    ) -> None:
        if not model.fitted:
            raise NotFittedError(f"{model.name} is not fitted")
        self.model = model
        self.store: StateStore = store if store is not None else InMemoryStore()
        self.shift_detector = shifts
        """Interest-shift detection (`dynrec.online.shifts`): its state rides along each user's
        model state (`ShiftAdapter`); None = off."""
        self.adapter = self._wrap(adapter if adapter is not None else adapter_for(model))
        self.version = self._version()
        self.updater = updater
        self.index = index
        self.cache_size = cache_size
        """Users whose decoded state and seen items stay in this process (LRU; 0 = none). Every
        read checks a hot state against the store's stamp of the user (one indexed lookup), so
        events appended or users deleted by other processes are never missed."""
        self.persist_every = max(1, persist_every)
        """Write a user's state to the store every this many events (1 = write-through). A stored
        state is a checkpoint: loading replays the history events after it, so at most
        ``persist_every - 1`` steps are redone after a restart."""
        self._hot = HotCache(self.adapter, cache_size, self._persist)
        self.cache_hits = 0
        """Reads served by a hot state (current, or caught up with events appended elsewhere)."""
        self.cache_misses = 0
        """Reads that rebuilt the state from the store (checkpoint + tail, or the whole history)."""
        self.duplicates_skipped = 0
        """Observed events the store skipped: their `Event.event_id` was already applied."""
        self._cats: Categories | None = None
        self.item_metadata = item_metadata
        """`ItemMetadata` (e.g. ``registry.load_items("ml-100k")``): its genres are the categories of
        `interests` (rebuilt when the catalogue grows)."""
        self.item_info = item_info
        """Titles and tags per item id (``item_info.json``'s form): its tags, when any, are the
        categories of `interests` (before `item_metadata`'s genres)."""
        if item_categories is not None:
            m, names = item_categories
            self._cats = Categories.of(m, names, "categories")

    def _wrap(self, adapter: StateAdapter) -> StateAdapter:
        if self.shift_detector is None or isinstance(adapter, ShiftAdapter):
            return adapter
        return ShiftAdapter(adapter, self.shift_detector)

    def _version(self) -> str:
        """The tag of the states this session writes: the model's fingerprint, plus the detector's
        calibration when one rides along (states of another calibration are rebuilt)."""
        v, det = self.model.fingerprint(), self.shift_detector
        return v if det is None else f"{v}+s{hashlib.sha1(repr(det.calibration).encode()).hexdigest()[:8]}"

    # -- index mapping ----------------------------------------------------------------------
    def _query(self, user: str, hist: History) -> QueryBatch:
        assert self.model.item_vocab is not None and self.model.user_vocab is not None
        # items unknown to the model are kept in the history, skipped by the state
        return QueryBatch.from_ids(
            self.model.item_vocab,
            [hist.items],
            users=[user],
            user_vocab=self.model.user_vocab,
            timestamps=[hist.timestamps],
        )

    # -- state ------------------------------------------------------------------------------
    def _load(self, user: str, stamp: UserStamp | None = None) -> HotState:
        """The user's state, checked against the store's stamp on every call (another process
        may have appended events or deleted the user): the hot state when current, or stepped
        through the events appended elsewhere; else the store's checkpoint + the events after it,
        else built from the whole history. `stamp`: the stamp the caller has just read."""
        hot = self._hot.get(user)
        if hot is not None and hot.version == self.version:
            stamp = self.store.stamp(user) if stamp is None else stamp
            if stamp == UserStamp(hot.generation, hot.n_events):
                self._hot.touch(user)
                self.cache_hits += 1
                return hot
            if (
                stamp.generation == hot.generation
                and stamp.n_events > hot.n_events
                and self._catch_up(user, hot)
            ):
                self.cache_hits += 1
                return hot
        self._hot.drop(user)  # stale: another generation, or a history we cannot extend
        self.cache_misses += 1
        return self._rebuild(user)

    def _catch_up(self, user: str, hot: HotState) -> bool:
        """Step `hot` through the events appended (by another process) since it was built; False
        when the store moved on in a way stepping cannot follow (then the caller rebuilds)."""
        stamp, tail = self.store.since(user, hot.n_events)
        missing = stamp.n_events - hot.n_events
        if stamp.generation != hot.generation or missing < 0 or len(tail) != missing:
            return False
        idx, ts = self._known(tail.items, tail.timestamps)
        self._hot.step([hot], [idx], [ts])
        hot.seen.update(idx.tolist())
        hot.n_events, hot.dirty = stamp.n_events, hot.dirty + missing
        if hot.dirty >= self.persist_every:
            self._persist(user, hot)
        self._hot.touch(user)
        return True

    def _rebuild(self, user: str, persist_at: int = 1) -> HotState:
        """The user's state from the store: its checkpoint (same model version and generation) +
        the events after it, else recomputed from the held history; persisted when it is
        `persist_at` or more events ahead of the checkpoint."""
        stamp, hist = self.store.since(user, 0)
        q = self._query(user, hist)
        c = self.store.get_state(user)
        missing = -1 if c is None else stamp.n_events - c.n_events
        if (
            c is not None
            and c.version == self.version
            and c.generation == stamp.generation
            and 0 <= missing <= len(hist)
        ):
            a = len(hist) - missing
            st, dirty, tail = (
                self.adapter.batch([c.tensors]),
                missing,
                self._known(hist.items[a:], hist.timestamps[a:]),
            )
        else:
            st, dirty, tail = self.adapter.init(q), len(hist), None
        hot = HotState(
            st, stamp.n_events, self.version, set(q.items.tolist()), dirty, generation=stamp.generation
        )
        if tail is not None:  # the checkpoint's own copy, stepped in place
            self._hot.step([hot], [tail[0]], [tail[1]])
        if dirty and (dirty >= persist_at or self.cache_size <= 0):
            self._persist(user, hot)
        self._hot.put(user, hot)
        return hot

    def _known(
        self, items: Sequence[str], timestamps: Sequence[int] | npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        """The model's indices of the known `items` and their timestamps (items unknown to the
        model are kept in the history, skipped by the state)."""
        assert self.model.item_vocab is not None
        idx = self.model.item_vocab.lookup(items, policy="skip")
        keep = idx > 0
        return idx[keep].astype(np.int64), np.asarray(timestamps, dtype=np.int64)[keep]

    def _persist(self, user: str, hot: HotState) -> bool:
        """Write `hot` back (compare-and-set). Refused when the user's generation changed (the
        next read rebuilds) or the store holds a newer checkpoint: either way nothing to redo."""
        return self._persist_many([(user, hot)])[0]

    def _persist_many(self, hots: Sequence[tuple[str, HotState]]) -> list[bool]:
        """`_persist` for several users in one store write (`StateStore.put_states`)."""
        states = []
        for user, hot in hots:
            states.append(
                (
                    user,
                    CachedState(
                        self.adapter.unbatch(hot.state, 0), hot.version, hot.n_events, hot.generation
                    ),
                )
            )
            hot.dirty = 0
        return self.store.put_states(states) if states else []

    def state(self, user: str) -> StateBatch:
        """A copy of the user's current state (batch of one), rebuilt from the history when not
        cached."""
        return self.adapter.select(self._load(user).state, np.zeros(1, dtype=np.int64))

    def observe(self, events: Event | Iterable[Event]) -> dict[str, list[Shift]]:
        """Record events (in order) and advance each user's cached state past them. Returns the
        interest shifts these events completed, per user (empty: none, or detection off).

        All or nothing: the whole batch is validated (`validate_events`, an `InvalidEventError`
        naming the event's index and field) and appended in one store transaction before any
        state moves. A hot state is stepped in place when the store's stamp after the append
        shows this batch on top of it, or on top of events another process appended since (then
        through those events too, read from the store); otherwise (a deletion, another model
        version) the user's state is rebuilt from the store. Events the store skipped
        (their event id was already applied: a re-delivery) move no state and count in
        `duplicates_skipped`."""
        evs: Sequence[Event] = validate_events(events)
        if not evs:
            return {}
        stamps = self.store.append(evs)
        if stamps.skipped:
            self.duplicates_skipped += len(stamps.skipped)
            skipped = set(stamps.skipped)
            evs = [e for i, e in enumerate(evs) if i not in skipped]
            if not evs:
                return {}
        assert self.model.item_vocab is not None
        # the batch's events grouped by user (first appearance order), each user's in order
        code: dict[str, int] = {}
        users = np.fromiter((code.setdefault(e.user_id, len(code)) for e in evs), np.int64, len(evs))
        order = np.argsort(users, kind="stable")
        idx = self.model.item_vocab.lookup([e.item_id for e in evs], policy="skip")[order]
        ts = np.fromiter((e.timestamp for e in evs), np.int64, len(evs))[order]
        ends = np.cumsum(np.bincount(users, minlength=len(code))).tolist()
        rebuilt: dict[str, int] = {}
        try:
            ours: list[HotRun] = []
            for user, a, b in zip(code, [0, *ends[:-1]], ends, strict=True):
                run_i, run_t = idx[a:b], ts[a:b]
                own = int(np.count_nonzero(run_i))  # the known items (unknown ones: index 0)
                if own < b - a:
                    run_i, run_t = run_i[run_i > 0], run_t[run_i > 0]
                if (hot := self._hot.owned(user, b - a, stamps[user], self.version)) is not None:
                    ours.append(HotRun(user, hot, b - a, stamps[user], run_i, run_t, own))
                elif (behind := self._behind_hot(user, stamps[user], own)) is not None:
                    ours.append(behind)  # steps with the others, through every missing event
                else:
                    self._hot.drop(user)
                    self._rebuild(user, self.persist_every)  # these events and any appended elsewhere
                    rebuilt[user] = own
            flagged = self._advance(ours)
        except BaseException:  # a half-stepped hot state must not be served: rebuilt on next read
            for user in code:
                self._hot.drop(user)
            raise
        if self.updater is not None:
            self.updater.remember(evs)
        done = {**flagged, **rebuilt}
        return self._completed({u: done[u] for u in code if u in done})

    def _completed(self, known: dict[str, int]) -> dict[str, list[Shift]]:
        """The shifts flagged on the users' just-observed events (`known`: how many of each
        user's last events the detector consumed)."""
        if self.shift_detector is None:
            return {}
        out: dict[str, list[Shift]] = {}
        for user, n in known.items():
            hot = self._hot.get(user) or self._load(user)  # stepped (or rebuilt) just now
            fresh = recent_shifts(self.shift_detector, hot.state, n) if n else []
            if fresh:
                out[user] = fresh
        return out

    def shifts(self, user: str) -> list[Shift]:
        """The user's recent interest shifts, newest first (empty when detection is off)."""
        if self.shift_detector is None:
            return []
        return recent_shifts(self.shift_detector, self._load(user).state)[::-1]

    def _behind_hot(self, user: str, stamp: UserStamp, own: int) -> HotRun | None:
        """`user`'s hot state with the events the store holds after it (another process's, then
        this batch's) and the stamp they end at, when the hot state is of this generation and
        merely behind (several workers taking the user's events in turn); None when it must be
        rebuilt (no hot state, another model version or generation, a trimmed history)."""
        hot = self._hot.get(user)
        if hot is None or hot.version != self.version or hot.generation != stamp.generation:
            return None
        if not 0 <= hot.n_events < stamp.n_events:
            return None
        now, tail = self.store.since(user, hot.n_events)
        if now.generation != hot.generation or len(tail) != now.n_events - hot.n_events:
            return None
        idx, ts = self._known(tail.items, tail.timestamps)
        return HotRun(user, hot, len(tail), now, idx, ts, own)

    def _advance(self, ours: list[HotRun]) -> dict[str, int]:
        """Step the owned hot states past their users' just-appended events, together in their
        rows (`HotRows.step_runs_`): a request's cost follows its longest per-user run. Returns the
        users whose shift detector counted a new shift meanwhile, with the events it consumed."""
        if not ours:
            return {}
        hots = [r.hot for r in ours]
        before = None if self.shift_detector is None else self._hot.gather(hots, shift_counts)
        self._hot.step(hots, [r.items for r in ours], [r.timestamps for r in ours])
        flagged: dict[str, int] = {}
        if before is not None:  # a run flagged a shift only if its detector's count grew
            grew = torch.nonzero(self._hot.gather(hots, shift_counts) > before).flatten().tolist()
            flagged = {ours[b].user: ours[b].own for b in grew}
        due: list[tuple[str, HotState]] = []
        for r in ours:
            hot = r.hot
            hot.seen.update(r.items.tolist())
            hot.generation, hot.n_events = r.stamp.generation, r.stamp.n_events
            hot.dirty += r.n_events
            self._hot.touch(r.user)
            if hot.dirty >= self.persist_every or self.cache_size <= 0:
                due.append((r.user, hot))
        self._persist_many(due)  # the request's checkpoints in one store write
        return flagged

    def flush(self) -> None:
        """Write every cached state not yet persisted to the store (compare-and-set: states made
        stale by another process are not written)."""
        self._persist_many([(user, hot) for user, hot in self._hot.items() if hot.dirty])

    # -- reads ------------------------------------------------------------------------------
    def scores(self, user: str, *, exclude_seen: bool = True) -> torch.Tensor:
        """[n_items] scores of every item for `user` from the cached state (seen items -inf)."""
        hot = self._load(user)
        s = self.adapter.score(hot.state)[0]
        if exclude_seen and hot.seen:
            s[hot.seen_index()] = -torch.inf
        s[0] = -torch.inf
        return s

    def recompute_scores(self, user: str) -> torch.Tensor:
        """Reference path: ``model.score`` on the whole stored history (no cached state)."""
        return self.model.score(self._query(user, self.store.history(user)))[0]

    def recommend(self, user: str, k: int = 10, *, exclude_seen: bool = True) -> Recommendation:
        """The user's top `k` items (fewer when fewer are recommendable: a `k` beyond the
        catalogue returns every item not excluded). `k` must be an integer >= 1."""
        return self.recommend_many([user], k, exclude_seen=exclude_seen)[0]

    def recommend_many(
        self,
        users: Sequence[str],
        k: int = 10,
        *,
        exclude_seen: bool = True,
        stamps: Sequence[UserStamp] | None = None,
    ) -> list[Recommendation]:
        """`recommend` for several users with one scoring (or index search) over their cached
        states (the service's micro-batches); the same as `recommend` for each user in turn.
        `stamps`: the users' `StateStore.stamp`s when the caller has just read them (with nothing
        else using this session in between), so the store is not asked again."""
        k = check_k(k)
        assert self.model.item_vocab is not None
        if not users:
            return []
        if stamps is not None and len(stamps) != len(users):
            raise ValueError(f"{len(stamps)} stamps for {len(users)} users")
        hots = [self._load(u, None if stamps is None else stamps[b]) for b, u in enumerate(users)]
        state = hots[0].state if len(hots) == 1 else self.adapter.concat([h.state for h in hots])
        exclude = None
        if exclude_seen:
            seen = [h.seen_index() for h in hots]
            rows = torch.repeat_interleave(torch.arange(len(hots)), torch.tensor([t.numel() for t in seen]))
            exclude = (rows, torch.cat(seen))
        got = state_top_k(self.adapter, state, k, exclude=exclude, index=self.index)
        recs = Recommendations.from_topk(got.items, got.scores, self.model.item_vocab)
        return [Recommendation(u, *recs.row(b), got.served[b]) for b, u in enumerate(users)]

    # -- interests ----------------------------------------------------------------------------
    def interests(
        self, user: str, *, short_window: int = 10, short_half_life: float = 0.0, top: int = 5
    ) -> Interests:
        """Short-term (the last `short_window` events, optionally decayed with `short_half_life`
        events) vs long-term (the whole history) interests (`dynrec.online.interests.interests_of`)."""
        q = self._query(user, self.store.history(user))
        return interests_of(
            self.model,
            user,
            q,
            self.categories(),
            short_window=short_window,
            short_half_life=short_half_life,
            top=top,
        )

    def categories(self) -> Categories:
        """The categories `interests` reads (`dynrec.online.interests.item_categories`), kept until
        the catalogue grows or the model changes (clusters)."""
        self._cats = item_categories(
            self.model, given=self._cats, item_info=self.item_info, metadata=self.item_metadata
        )
        return self._cats

    # -- mutation ------------------------------------------------------------------------------
    def update(self, events: Iterable[Event] | None = None) -> UpdateReport:
        """Incremental training on new events (or on what `observe` remembered) via the updater;
        cached states become stale (rebuilt lazily)."""
        if self.updater is None:
            self.updater = IncrementalUpdater(self.model)
        report = self.updater.update(events)
        self.refresh()
        return report

    def refresh(self) -> None:
        """Call after the model changed (update, reload): new version, new adapter."""
        if self._cats is not None and self._cats.basis == "clusters":
            self._cats = None
        if self.shift_detector is not None:  # same constants, the model's new item vectors
            cal = self.shift_detector.calibration
            self.shift_detector = build_detector(self.model, [], self.categories(), calibration=cal)
        inner = self.adapter.inner if isinstance(self.adapter, ShiftAdapter) else self.adapter
        if not isinstance(inner, RecomputeAdapter):  # the model's own state may have changed kind
            inner = adapter_for(self.model)
        self.adapter = self._wrap(inner)
        if self.index is not None and not self.index.fits(self.model):  # the item table changed
            self.index = AnnIndex.for_model(self.model, self.index.config)
        version, self.version = self.version, self._version()
        if version != self.version:  # every hot state is stale: rebuilt on its next read
            self._hot.clear(self.adapter)
        else:  # the same states: the rows stay, stepped by the new adapter
            self._hot.rows.adapter = self.adapter

    def detect_shifts(
        self,
        calibration: ShiftCalibration | None = None,
        *,
        config: ShiftConfig | None = None,
        histories: Sequence[npt.NDArray[np.int64]] | None = None,
    ) -> ShiftDetector:
        """Turn on interest-shift detection in the space of the model and `categories()`: with
        `calibration` (e.g. a model directory's ``shifts.json``), else calibrated on `histories`
        (item indices, time order; default: every stored user's history)."""
        if calibration is None and histories is None:
            histories = stored_histories(self.model, self.store)
        self.shift_detector = build_detector(
            self.model, histories or [], self.categories(), config, calibration=calibration
        )
        self.refresh()
        self._hot.clear(self.adapter)
        return self.shift_detector

    def delete_user(self, user: str) -> bool:
        """Privacy: remove the user's history and cached state (and the updater's copy)."""
        self._hot.drop(user)
        found = self.store.delete_user(user)
        if self.updater is not None:
            found = bool(self.updater.forget_user(user)) or found
        return found
