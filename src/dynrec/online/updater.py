"""Incremental learning: ``update(events)`` — the one mutating call after ``fit``.

`IncrementalUpdater` keeps the model's *memory* (every event it has learned from, in the model's
index space) and, on each update:

1. **grows the vocabularies** with new users and items (the model's and the memory's);
2. hands the model an `UpdateBatch` (memory before/after, touched users/items) when it implements
   `dynrec.models.capabilities.PartialFit` — each model family's incremental step lives in the
   model's own file (warm-start training for neural models, closed-form item solves for ALS,
   additive co-occurrence counts for ItemKNN, counts for popularity) — and otherwise refits the
   model from scratch on the memory (``method = "refit"``);
3. reports what it did (events, new items/users, seconds, method, work).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dynrec.data.dataset import InteractionData
from dynrec.data.events import Event, EventLog
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError, NotFittedError
from dynrec.models.base import Recommender
from dynrec.models.capabilities import PartialFit, UpdateBatch, UpdateConfig

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]

__all__ = ["IncrementalUpdater", "UpdateConfig", "UpdateReport"]


@dataclass(frozen=True)
class UpdateReport:
    """What an update did: the events learned from, the items and users they added, how the model
    learned them (`method`; ``"none"`` when there was nothing to learn), the work that took
    (`work_events`: events processed x passes, when the model reports it) and the time."""

    n_events: int
    new_items: int
    new_users: int
    method: str
    seconds: float
    work_events: int | None = None

    def to_json(self) -> dict[str, int | float | str]:
        """n_events, new_items, new_users, method, work_events (when known), seconds."""
        out: dict[str, int | float | str] = {
            "n_events": self.n_events,
            "new_items": self.new_items,
            "new_users": self.new_users,
            "method": self.method,
        }
        if self.work_events is not None:
            out["work_events"] = self.work_events
        out["seconds"] = self.seconds
        return out


def _events_to_log(events: Iterable[Event]) -> EventLog:
    import polars as pl

    from dynrec.data.events import SCHEMA

    evs = list(events)
    frame = pl.DataFrame(
        {
            "user_id": [e.user_id for e in evs],
            "item_id": [str(e.item_id) for e in evs],
            "timestamp": [int(e.timestamp) for e in evs],
            "event_type": [e.event_type for e in evs],
            "value": [1.0] * len(evs),
            "row": list(range(len(evs))),
            "line": list(range(1, len(evs) + 1)),
        },
        schema=SCHEMA,
    )
    return EventLog(frame, source="<events>")


class IncrementalUpdater:
    """Continues training `model` on new events (see the module docstring).

    `history`: what the model was trained on (InteractionData in the model's vocabulary), the
    initial memory used for replay samples, co-occurrence counts and fold-ins. Without it the
    memory starts empty (updates then learn from new events only).
    """

    def __init__(
        self,
        model: Recommender,
        history: InteractionData | None = None,
        config: UpdateConfig | None = None,
    ) -> None:
        if model.item_vocab is None or model.user_vocab is None:
            raise NotFittedError(f"{model.name} is not fitted")
        self.model = model
        self.config = config or UpdateConfig()
        iv, uv = model.item_vocab, model.user_vocab
        if history is None:
            history = InteractionData.from_arrays(
                np.zeros(0, np.int64), np.zeros(0, np.int64), user_vocab=uv, item_vocab=iv
            )
        self.memory = history
        self._pending: list[Event] = []
        self._fresh = False  # the memory was rewritten (a user forgotten) since the last update
        self._rng = np.random.default_rng(self.config.seed)
        self.n_updates = 0

    # -- bookkeeping --------------------------------------------------------------------------
    def remember(self, events: Iterable[Event]) -> None:
        """Queue events (from `OnlineRecommender.observe`) for the next `update()`."""
        self._pending.extend(events)

    def forget_user(self, user: str) -> bool:
        """Privacy: drop the user's events from the memory and the queue."""
        n0 = len(self._pending)
        self._pending = [e for e in self._pending if e.user_id != user]
        found = len(self._pending) != n0
        uv = self.memory.user_vocab
        if user in uv:
            u = uv.index(user)
            keep = self.memory.users != u
            if not keep.all():
                self.memory = self.memory.select(keep)
                self._fresh = True  # what models derived from the old memory must be rebuilt
                found = True
        return found

    # -- the public update ----------------------------------------------------------------------
    def update(
        self, events: EventLog | Iterable[Event] | None = None, *, refit: bool = False
    ) -> UpdateReport:
        """Learn from `events` (external ids; None = the events queued by `remember`). `refit`:
        fit the model from scratch on the whole memory (the new events included) even when it
        could continue training — so that nothing forgotten since (`forget_user`, or a memory
        built without deleted users) stays in its weights."""
        if events is None:
            evs: EventLog | Iterable[Event] = self._pending
            self._pending = []
        else:
            evs = events
        elog = evs if isinstance(evs, EventLog) else _events_to_log(evs)
        assert self.model.item_vocab is not None and self.model.user_vocab is not None
        iv = Vocabulary(self.model.item_vocab.ids)
        uv = Vocabulary(self.model.user_vocab.ids)
        new = InteractionData.from_events(
            elog, event_weights=elog.event_weights, user_vocab=uv, item_vocab=iv
        )
        return self.update_indexed(
            new.users, new.items, new.timestamps, new.weights, item_vocab=iv, user_vocab=uv, refit=refit
        )

    def update_indexed(
        self,
        users: IntArray,
        items: IntArray,
        timestamps: IntArray,
        weights: npt.NDArray[np.float32] | None = None,
        *,
        item_vocab: Vocabulary | None = None,
        user_vocab: Vocabulary | None = None,
        refit: bool = False,
    ) -> UpdateReport:
        """Learn from events already in index space. Indices beyond the model's vocabulary are new
        ids; `item_vocab` / `user_vocab` (a superset of the model's, same order) name them."""
        t0 = time.perf_counter()
        model = self.model
        assert model.item_vocab is not None and model.user_vocab is not None
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        timestamps = np.asarray(timestamps, dtype=np.int64)
        w = np.ones(len(items), np.float32) if weights is None else np.asarray(weights, np.float32)
        old_items, old_users = model.n_items, model.user_vocab.size
        n_items = max(old_items, int(items.max(initial=0)) + 1)
        n_users = max(old_users, int(users.max(initial=0)) + 1)
        iv = _grown(model.item_vocab, item_vocab, n_items, "item")
        uv = _grown(model.user_vocab, user_vocab, n_users, "user")
        prev = self.memory
        self.memory = _append(prev, users, items, timestamps, w, uv, iv)
        model.item_vocab, model.user_vocab = iv, uv
        grown = (int(len(items)), n_items - old_items, n_users - old_users)
        if len(items) == 0 and not refit:
            return UpdateReport(*grown, method="none", seconds=time.perf_counter() - t0)
        method, work = self._dispatch(prev, users, items, old_items, old_users, refit=refit)
        self.n_updates += 1
        report = UpdateReport(*grown, method=method, seconds=time.perf_counter() - t0, work_events=work)
        log.info("update %d of %s: %s", self.n_updates, model.name, report)
        return report

    # -- the model's own step, or a refit ----------------------------------------------------
    def _dispatch(
        self,
        prev: InteractionData,
        users: IntArray,
        items: IntArray,
        old_items: int,
        old_users: int,
        *,
        refit: bool = False,
    ) -> tuple[str, int]:
        """Apply the update; returns (method, work) where work = events processed x passes over
        them, a device-independent measure of the update's compute."""
        model, mem = self.model, self.memory
        if isinstance(model, PartialFit) and not refit:
            batch = UpdateBatch(
                memory=mem,
                previous=prev,
                users=np.unique(users),
                items=np.unique(items),
                old_n_items=old_items,
                old_n_users=old_users,
                config=self.config,
                rng=self._rng,
                fresh=self._fresh,
            )
            self._fresh = False
            outcome = model.partial_fit(batch)
            return outcome.method, outcome.work_events
        model.fit(mem, None)
        return "refit", mem.n_events * model.fit_passes()


# ---- helpers ---------------------------------------------------------------------------------------


def _grown(current: Vocabulary, superset: Vocabulary | None, size: int, what: str) -> Vocabulary:
    """A copy of `current` grown to `size` rows, naming new ids from `superset` (same order)."""
    if size <= current.size:
        return current
    if superset is None or superset.size < size:
        raise DynrecError(f"new {what} indices up to {size - 1} but no vocabulary names them")
    ids = superset.ids
    if tuple(ids[: len(current)]) != tuple(current.ids):
        raise DynrecError(f"the {what} vocabulary is not an extension of the model's")
    return Vocabulary(ids[: size - 1])


def _append(
    prev: InteractionData,
    users: IntArray,
    items: IntArray,
    ts: IntArray,
    w: npt.NDArray[np.float32],
    uv: Vocabulary,
    iv: Vocabulary,
) -> InteractionData:
    n_old = prev.n_events
    return InteractionData.from_arrays(
        np.concatenate([prev.users, users]),
        np.concatenate([prev.items, items]),
        timestamps=np.concatenate([prev.timestamps, ts]),
        weights=np.concatenate([prev.weights, w]),
        values=np.concatenate([prev.values, np.ones(len(items), np.float32)]),
        user_vocab=uv,
        item_vocab=iv,
        has_time=prev.has_time if n_old else True,
    )
