"""The service's state and everything the routes do with it; one concern per module:

* `dynrec.service.holder.ModelHolder` — one model version as this process holds it;
* `dynrec.service.follower.VersionFollower` — which holder is current: the version the store's
  pointer names, followed within a poll interval whoever published it (any worker, any host, the
  CLI's ``dynrec items add``);
* `dynrec.service.publisher.Publisher` — updates, item additions and reloads, each published
  through `dynrec.jobs.model_root.publish` (compare-and-set on the store's pointer);
* `dynrec.service.popularity.Popularity` — the popular fallback's counts from the store;
* `dynrec.service.privacy.TrainedWith` — the model versions still trained with a deleted user;
* the store itself — events, per-user states, model versions, tombstones and leases.

`Runtime` wires them for the routes and answers the reads: ingest (with the interest shifts the
events complete), recommendations (micro-batched), explanations, profiles and shifts
(`dynrec.service.answers`), users and items. Pending events are not kept in memory: an update trains on the
store's events after the current version's event sequence number, so events ingested by any
process are learned by the next update wherever it runs, and none is lost on a restart.

Approximate retrieval and precision (`ServiceSettings.ann` / ``precision``): each holder has a
*scoring* model (the model itself, or its int8/bf16 copy) and, with ``ann``, a FAISS index over
that model's item table, both made when the holder is built — so every new version gets its own.
They serve the session path (`recommend_history`); a stored user's recommendations come from their
cached float32 state (`OnlineRecommender`, whoever stepped it: an ingest or ``dynrec consume``),
through the index too at float32 (`dynrec.online.retrieval`). Each answer names its retrieval.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path

import torch

from dynrec.data import registry
from dynrec.data.dataset import InteractionData
from dynrec.data.events import Event, validate_events
from dynrec.data.query import QueryBatch, Recommendations, topk_stable
from dynrec.errors import DynrecError
from dynrec.jobs.evaluate import ann_index
from dynrec.jobs.history import TrainingHistory
from dynrec.jobs.items import AddedItems
from dynrec.jobs.model_root import (
    open_version,
    register_initial,
    training_memory,
    version_path,
)
from dynrec.jobs.recommend import NewStoreSeed, seed_new_store
from dynrec.models.base import Recommender
from dynrec.models.neural.quantize import quantize
from dynrec.models.retrieval import AnnIndex, retrieve, similar_items
from dynrec.online.interests import InterestProfile
from dynrec.online.session import Recommendation
from dynrec.online.shifts import Shift, ShiftCalibration
from dynrec.online.store import UserStamp, open_store, store_kind
from dynrec.online.store.versions import VersionRecord, VersionStore, new_owner_id
from dynrec.service import answers
from dynrec.service.answers import EXPLAIN_TOP, UserDetail
from dynrec.service.batching import MicroBatcher, Pending
from dynrec.service.follower import VersionFollower
from dynrec.service.holder import ModelHolder, dataset_items, read_info
from dynrec.service.metrics import ServiceMetrics
from dynrec.service.popularity import Popularity
from dynrec.service.privacy import TrainedWith
from dynrec.service.publisher import PublishedUpdate, Publisher, UpdateRunning
from dynrec.service.settings import ServiceSettings
from dynrec.text import Encoder, ItemTexts

log = logging.getLogger(__name__)

__all__ = [
    "DeleteResult",
    "EXPLAIN_TOP",
    "Ingested",
    "ModelHolder",
    "Recommended",
    "Runtime",
    "UpdateRunning",
    "serving_threads",
]

# ---- results ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recommended:
    """A ranked list: items with scores, per item the history items that drove it (when the model
    explains and it was asked), whether it is the popular fallback, and the model version."""

    items: list[str]
    scores: list[float]
    explanations: list[list[tuple[str, float]]] | None
    fallback: bool
    version: str
    holder: ModelHolder
    retrieval: str = "exact"
    """``"exact"``, ``"ann:<kind>"`` or ``"popular"``."""


@dataclass(frozen=True)
class _RecRequest:
    holder: ModelHolder
    user: str
    k: int
    exclude_seen: bool
    explain: bool


@dataclass(frozen=True)
class Ingested:
    """What an ingest did: events accepted, those whose item the model does not know yet, and the
    interest shifts the events completed as (user, shift), oldest first per user, sides named."""

    accepted: int
    unknown_items: int
    shifts: list[tuple[str, Shift]]


@dataclass(frozen=True)
class DeleteResult:
    """What a deletion removed, and the model versions still trained with the user's data (by
    relative path under the model root and id): the next update publishes a version free of them."""

    deleted: bool
    deleted_events: int
    model_versions: list[tuple[str, str]]


# ---- the runtime ----------------------------------------------------------------------------------------


class Runtime:
    """The service's state: the store, the version follower, the popular fallback, the batcher."""

    def __init__(self, settings: ServiceSettings, metrics: ServiceMetrics, *, follow_s: float = 0.25) -> None:
        self.settings = settings
        self.metrics = metrics
        root = Path(settings.model_dir)
        if not root.is_dir():
            raise DynrecError(f"model directory {settings.model_dir!r} does not exist")
        self.root = root.resolve()
        self.items_override = (
            registry.load_items(settings.items_file) if settings.items_file is not None else None
        )
        self.store = open_store(settings.store)
        if not isinstance(self.store, VersionStore):
            raise DynrecError(f"the state store {settings.store!r} keeps no model versions")
        self.versions: VersionStore = self.store
        self.store_kind = store_kind(self.store)
        self.owner = new_owner_id(f"{os.uname().nodename}:{os.getpid()}:")
        self._recent: OrderedDict[str, None] = OrderedDict()  # users seen by this process, newest last
        self._recent_lock = threading.Lock()
        self._retired = (0, 0)  # cache hits/misses of swapped-out sessions
        self._base: TrainingHistory | None = None
        self._base_ready = False
        self._shifts: ShiftCalibration | None = None  # the last one a holder used (`ModelHolder`)
        self._started = False  # only the first holder may calibrate shift detection on the store
        off = NewStoreSeed(None, "seeding is off", quiet=True)
        self.seeding = seed_new_store(self.root, self.store) if settings.seed else off  # before registering
        first = register_initial(self.store, self.root)
        holder = self._load(first)
        root_rec = self.versions.get_version(self._root_id(first)) or first
        self.popularity = Popularity(
            self.store, self.versions, self._base_memory(holder.model), root_rec.base_seq
        )
        self.follower = VersionFollower(
            self.store,
            self.versions,
            holder,
            self._load,
            poll_s=follow_s,
            on_swap=self._swapped,
            on_tick=self._tick,
        )
        self.metrics.set_model(holder.model.name, holder.version)
        self.metrics.watch_cache(self.cache_stats)
        self.batcher: MicroBatcher[_RecRequest, Recommended] = MicroBatcher(
            self._handle_batch,
            max_wait_s=settings.batch_wait_ms / 1000.0,
            max_size=settings.batch_size,
            on_batch=self.metrics.batch_size.observe,
        )
        self.publisher = Publisher(
            self.store,
            self.versions,
            self.root,
            self.follower,
            self._load,
            self._history,
            self.metrics,
            self.owner,
        )
        self.trained_with = TrainedWith(self.versions, self.root, settings.model_dirs)
        self.follower.start()

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def holder(self) -> ModelHolder:
        """The current model; read it once per request and finish on it."""
        return self.follower.holder

    def close(self) -> None:
        self.follower.stop()
        self.batcher.stop()
        self.store.close()

    def cache_stats(self) -> tuple[int, int]:
        h = self.holder
        return self._retired[0] + h.online.cache_hits, self._retired[1] + h.online.cache_misses

    def _root_id(self, rec: VersionRecord) -> str:
        """The id of the lineage's first version (walks the parents)."""
        seen: set[str] = set()
        while rec.parent is not None and rec.parent not in seen:
            seen.add(rec.id)
            parent = self.versions.get_version(rec.parent)
            if parent is None:
                break
            rec = parent
        return rec.id

    def _load(self, record: VersionRecord) -> ModelHolder:
        """A holder for the version `record`, loaded completely (model, titles, scoring, index)."""
        return self._holder_for(record, open_version(self.root, record))

    def _holder_for(self, record: VersionRecord, model: Recommender) -> ModelHolder:
        metadata = self.items_override if self.items_override is not None else dataset_items(model)
        scoring, index = self._scoring(model)
        holder = ModelHolder(
            record,
            version_path(self.root, record),
            model,
            self.store,
            metadata=metadata,
            cache_size=self.settings.cache_size,
            persist_every=self.settings.persist_every,
            item_info=read_info(version_path(self.root, record)),
            scoring=scoring,
            index=index,
            shifts_fallback=self._shifts,
            calibrate=not self._started,
        )
        self._shifts, self._started = holder.shift_calibration or self._shifts, True
        return holder

    def _scoring(self, model: Recommender) -> tuple[Recommender, AnnIndex | None]:
        """(scoring model at the settings' precision, approximate index over it or None)."""
        scoring = quantize(model, self.settings.precision)
        return scoring, ann_index(scoring, self.settings.ann_config())

    def _base_memory(self, model: Recommender) -> InteractionData | None:
        """The original training history (computed once per process)."""
        history = self._history(model)
        return None if history is None else history.data

    def _history(self, model: Recommender) -> TrainingHistory | None:
        if not self._base_ready:
            self._base = training_memory(model)
            self._base_ready = True
        return self._base

    def _swapped(self, old: ModelHolder, new: ModelHolder) -> None:
        self._retired = (
            self._retired[0] + old.online.cache_hits,
            self._retired[1] + old.online.cache_misses,
        )
        self.metrics.set_model(new.model.name, new.version)

    def _tick(self) -> None:
        """The follower's periodic work besides the pointer: popularity and the pending gauge."""
        seq = self.popularity.refresh()
        self.metrics.pending.set(max(0, seq - self.holder.record.event_seq))

    # -- events ----------------------------------------------------------------------------------------
    def ingest(self, events: Sequence[Event]) -> Ingested:
        """Validate `events` as a batch, append them to the store in one transaction (durable on
        return) and advance the users' states (and their shift detectors)."""
        evs = validate_events(events)
        if not evs:
            return Ingested(0, 0, [])
        holder = self.holder
        with holder.lock:
            done = holder.online.observe(evs)
        shifts = [(u, s) for u, got in done.items() for s in answers.named_shifts(holder, got)]
        unknown = int((holder.item_vocab.lookup([e.item_id for e in evs], policy="skip") == 0).sum())
        with self._recent_lock:
            for e in evs:
                self._recent[e.user_id] = None
                self._recent.move_to_end(e.user_id)
            while len(self._recent) > 1000:
                self._recent.popitem(last=False)
        self.metrics.events.inc(len(evs))
        self.metrics.unknown_items.inc(unknown)
        self.metrics.shifts.inc(len(shifts))
        return Ingested(len(evs), unknown, shifts)

    # -- recommendations ----------------------------------------------------------------------------
    def recommend(
        self, user: str, k: int, *, exclude_seen: bool = True, explain: bool = False
    ) -> Future[Recommended]:
        """A stored user's top `k` from their live state, through the micro-batcher."""
        return self.batcher.submit(_RecRequest(self.holder, user, k, exclude_seen, explain))

    def recommend_now(
        self, user: str, k: int, *, exclude_seen: bool = True, explain: bool = False
    ) -> Recommended:
        """`recommend` without batching (same result)."""
        return self._answer([_RecRequest(self.holder, user, k, exclude_seen, explain)])[0]

    def _handle_batch(self, batch: Sequence[Pending[_RecRequest, Recommended]]) -> None:
        groups: dict[tuple[int, bool], list[Pending[_RecRequest, Recommended]]] = {}
        for p in batch:
            groups.setdefault((id(p.payload.holder), p.payload.exclude_seen), []).append(p)
        for group in groups.values():
            try:
                results = self._answer([p.payload for p in group])
            except Exception:  # one bad request must not fail the others: answer one by one
                for p in group:
                    try:
                        p.future.set_result(self._answer([p.payload])[0])
                    except Exception as exc:
                        p.future.set_exception(exc)
                continue
            for p, r in zip(group, results, strict=True):
                p.future.set_result(r)

    def _answer(self, reqs: Sequence[_RecRequest]) -> list[Recommended]:
        """Requests sharing one holder and `exclude_seen`: users without stored events get the
        popular fallback, the others one `recommend_many` call over their cached states."""
        holder = reqs[0].holder
        out: list[Recommended | None] = [None] * len(reqs)
        live: list[int] = []
        stamps: list[UserStamp] = []
        recs: list[Recommendation] = []
        with holder.lock:  # each user's stamp read once: the fallback's test and the state's check
            for j, r in enumerate(reqs):
                stamp = self.store.stamp(r.user)
                if stamp.n_events > 0:
                    live.append(j)
                    stamps.append(stamp)
            if live:
                recs = holder.online.recommend_many(
                    [reqs[j].user for j in live],
                    max(reqs[j].k for j in live),
                    exclude_seen=reqs[0].exclude_seen,
                    stamps=stamps,
                )
        for j, rec in zip(live, recs, strict=True):
            r = reqs[j]
            items, scores = rec.items[: r.k], rec.scores[: r.k]
            expl = answers.explain_user(self.store, holder, r.user, items) if r.explain else None
            out[j] = Recommended(items, scores, expl, False, holder.version, holder, rec.retrieval)
        return [o if o is not None else self._popular(holder, reqs[j].k) for j, o in enumerate(out)]

    def recommend_history(
        self, history: Sequence[str], k: int, *, exclude_seen: bool = True, explain: bool = False
    ) -> Recommended:
        """Top `k` for an anonymous session's item ids (oldest first; ids the model does not know
        are skipped); the popular fallback when none is known. Scored by the holder's scoring
        model, through its approximate index when the service has one."""
        holder = self.holder
        q = QueryBatch.from_ids(holder.item_vocab, [list(history)])
        if q.items.size == 0:
            return self._popular(holder, k)
        m, kk = holder.scoring, min(k, holder.scoring.n_items)
        if holder.index is not None:
            top, vals = retrieve(m, q, kk, holder.index, exclude_seen=exclude_seen)
            served = f"ann:{holder.index.config.kind}"
        else:
            top, vals = m.recommend(q, k=kk, exclude_seen=exclude_seen)
            served = "exact"
        items, scores = Recommendations.from_topk(top, vals, holder.item_vocab, retrieval=served).row()
        expl = answers.explain(holder, q, items) if explain else None
        return Recommended(items, scores, expl, False, holder.version, holder, served)

    def _popular(self, holder: ModelHolder, k: int) -> Recommended:
        s = self.popularity.scores(holder).clone()
        s[0] = -torch.inf
        top, vals = topk_stable(s[None, :].float(), min(k, s.shape[0]))
        items, scores = Recommendations.from_topk(top, vals, holder.item_vocab, retrieval="popular").row()
        self.metrics.fallbacks.inc()
        return Recommended(items, scores, None, True, holder.version, holder, "popular")

    # -- explanations and profiles (`dynrec.service.answers`) ------------------------------------------
    def profile(self, user: str, short_window: int) -> tuple[InterestProfile, ModelHolder] | None:
        """`user`'s interest profile over their stored history; None when they have no event."""
        holder = self.holder
        got = answers.profile(self.store, holder, user, short_window)
        return None if got is None else (got, holder)

    # -- items -------------------------------------------------------------------------------------
    def similar(self, item: str, k: int) -> tuple[list[str], list[float], ModelHolder]:
        """Items most like `item` (`dynrec.models.retrieval.similar_items`)."""
        holder = self.holder
        items, scores = similar_items(holder.model, item, k, unit=holder.unit_vectors())
        return items, scores, holder

    # -- privacy -----------------------------------------------------------------------------------
    def delete_user(self, user: str) -> DeleteResult:
        """Privacy: the user's events and cached state leave the store together with a tombstone
        (one transaction), the hot state leaves this process (other processes check the store's
        generation on every read); the popular fallback stops counting the user at once (other
        processes within a follower poll). Lists the model versions still trained with the user."""
        holder = self.holder
        held = len(self.store.history(user))
        with holder.lock:
            found = holder.online.delete_user(user)  # the store's deletion and tombstone included
        with self._recent_lock:
            self._recent.pop(user, None)
        self.popularity.refresh()
        return DeleteResult(found or held > 0, held, self.trained_with.versions_with(user))

    # -- publishing (dynrec.service.publisher) ---------------------------------------------------------
    def update(self) -> PublishedUpdate:
        """See `Publisher.update`."""
        return self.publisher.update()

    def add_items(
        self, texts: ItemTexts, *, skip_existing: bool = False, encoder: Encoder | None = None
    ) -> tuple[AddedItems, str]:
        """See `Publisher.add_items`."""
        return self.publisher.add_items(texts, skip_existing=skip_existing, encoder=encoder)

    def reload(self, ref: str) -> str:
        """See `Publisher.reload`."""
        return self.publisher.reload(ref)

    def versions_with(self, user: str) -> list[tuple[str, str]]:
        """See `TrainedWith.versions_with`."""
        return self.trained_with.versions_with(user)

    @property
    def text_encoder(self) -> Encoder | None:
        """The encoder item additions use (set it to inject another)."""
        return self.publisher.text_encoder

    @text_encoder.setter
    def text_encoder(self, encoder: Encoder | None) -> None:
        self.publisher.text_encoder = encoder

    # -- items -------------------------------------------------------------------------------------
    def search_items(self, query: str, limit: int) -> list[tuple[str, str | None]]:
        """See `answers.search_items`."""
        return answers.search_items(self.holder, query, limit)

    # -- users -------------------------------------------------------------------------------------
    def users(self, limit: int) -> list[str]:
        """Users with stored events: those this process saw most recently first, then the store's."""
        with self._recent_lock:
            recent = list(reversed(self._recent))
        out: list[str] = []
        seen: set[str] = set()
        for u in recent:
            if len(out) >= limit:
                break
            if u not in seen and self.store.stamp(u).n_events > 0:
                out.append(u)
                seen.add(u)
        if len(out) < limit:
            for u in self.store.users(limit + len(out)):
                if len(out) >= limit:
                    break
                if u not in seen:
                    out.append(u)
                    seen.add(u)
        return out

    def user(self, user: str, limit: int) -> tuple[UserDetail, ModelHolder] | None:
        """`user`'s detail (`answers.user_detail`) with the holder that answered, or None when the
        store holds no event of `user`."""
        holder = self.holder
        got = answers.user_detail(self.store, holder, user, limit)
        return None if got is None else (got, holder)

    def shifts(self, user: str, holder: ModelHolder) -> list[Shift]:
        """`user`'s recent interest shifts by `holder`'s session, newest first."""
        return answers.user_shifts(holder, user)


# ---- helpers ---------------------------------------------------------------------------------------------


def serving_threads() -> int:
    """Give a serving process one torch intra-op thread (unless ``OMP_NUM_THREADS`` sets it); the
    number in use.

    A request's tensors are tiny (one user's state step, a micro-batch's scores), while torch's
    default — a thread per core — makes every operator a parallel region whose threads contend with
    the event loop, the request threads and the other workers for the same cores. On the 2-core
    benchmark machine (with another process busy) one SASRec state step took 18 ms with 2 threads
    and 2 ms with 1 (benchmarks/serve_load.py); scale with ``--workers`` instead."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)
    return torch.get_num_threads()
