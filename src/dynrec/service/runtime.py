"""The service's state and everything the routes do with it.

The pieces, one concern each:

* `dynrec.service.holder.ModelHolder` — one model version as this process holds it;
* `dynrec.service.follower.VersionFollower` — which holder is current: the version the store's
  pointer names, followed within a poll interval whoever published it (any worker, any host, the
  CLI's ``dynrec items add``);
* `dynrec.jobs.model_root.publish` — the one way a new version is made current (compare-and-set
  on the store's pointer, rebuilt on the newer version when another publisher won the race): used
  by ``update``, ``add_items`` and ``reload`` alike;
* `dynrec.service.popularity.Popularity` — the popular fallback's counts from the store;
* the store itself — events, per-user states, model versions, tombstones and leases.

`Runtime` wires them for the routes. Pending events are not kept in memory: an update trains on
the store's events after the current version's event sequence number, so events ingested by any
process are learned by the next update wherever it runs, and none is lost on a restart. An update
runs once per store (a lease with expiry: a second request gets `UpdateRunning`, a crashed updater
frees it when the lease expires). A deletion is a tombstone in the store (written with the deletion
of the user's events): every update leaves the user's events out — those of the original training
data too — and the first update after a deletion of a user the current version was trained with
refits the model from scratch, so the version it publishes is free of the user.

Approximate retrieval and precision (`ServiceSettings.ann` / ``precision``): each holder has a
*scoring* model (the model itself, or its int8/bf16 copy) and, with ``ann``, a FAISS index over
that model's item table, both made when the holder is built — so every new version gets its own.
They serve the stateless session path (`recommend_history`). A stored user's recommendations come
from their cached incremental state (`OnlineRecommender`), which stays exact and float32: states
are checkpointed in the shared store under the model's version and read back by every worker.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynrec.data import registry
from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch, topk_stable
from dynrec.errors import DynrecError
from dynrec.jobs.explain import EXPLAIN_TOP, explain_items, interest_profile
from dynrec.jobs.items import AddedItems, add_items_to_model, encoder_for, item_info_from_texts
from dynrec.jobs.model_root import (
    Built,
    count_target_events,
    events_digest,
    is_model_dir,
    open_version,
    publish,
    register_initial,
    training_memory,
    version_memory,
    version_path,
)
from dynrec.jobs.provenance import PROVENANCE_KEY, ServedEvents, from_meta, target_frame
from dynrec.jobs.train import TrainingHistory, ann_index
from dynrec.models.base import Recommender
from dynrec.models.capabilities import Explainer, ItemText, PartialFit
from dynrec.models.neural.quantize import quantize
from dynrec.models.retrieval import AnnIndex, retrieve, similar_items
from dynrec.online.session import Interests, model_version
from dynrec.online.state import Event, History, validate_events
from dynrec.online.stores import open_store, store_kind
from dynrec.online.updater import IncrementalUpdater, UpdateReport
from dynrec.online.versions import Lease, VersionRecord, VersionStore, new_owner_id
from dynrec.service.batching import MicroBatcher, Pending
from dynrec.service.follower import VersionFollower
from dynrec.service.holder import ModelHolder, dataset_items, read_info
from dynrec.service.metrics import ServiceMetrics
from dynrec.service.popularity import Popularity
from dynrec.service.settings import ServiceSettings
from dynrec.text import Encoder, ItemTexts

log = logging.getLogger(__name__)

__all__ = [
    "DeleteResult",
    "EXPLAIN_TOP",
    "ModelHolder",
    "Recommended",
    "Runtime",
    "UpdateRunning",
    "default_event",
    "serving_threads",
]

HTTP_EVENT_TYPE = "view"
"""Event type of an HTTP event that names none."""

UPDATE_LEASE = "update"
UPDATE_LEASE_S = 3600.0
"""How long an update may hold the store's update lease before another may take it over (a
crashed updater frees it then)."""


class UpdateRunning(DynrecError):
    """Another update holds the store's update lease."""

    def __init__(self, lease: Lease) -> None:
        left = max(0.0, lease.expires - time.time())
        super().__init__(
            f"an update is already running ({lease.note or lease.owner}; its lease expires in {left:.0f} s)"
        )
        self.lease = lease


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


@dataclass(frozen=True)
class _RecRequest:
    holder: ModelHolder
    user: str
    k: int
    exclude_seen: bool
    explain: bool


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
        self._admin_lock = threading.Lock()  # one publication at a time in this process
        self._user_vocabs: dict[str, frozenset[str]] = {}  # version id -> its users (immutable)
        self._recent: OrderedDict[str, None] = OrderedDict()  # users seen by this process, newest last
        self._recent_lock = threading.Lock()
        self._retired = (0, 0)  # cache hits/misses of swapped-out sessions
        self._base: TrainingHistory | None = None
        self._base_ready = False
        self.text_encoder: Encoder | None = None
        """The encoder `add_items` uses (loaded on first use; set it to inject another)."""
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
        return ModelHolder(
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
        )

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
        self.popularity.refresh()
        self.metrics.pending.set(max(0, self.store.event_seq() - self.holder.record.event_seq))

    # -- events ----------------------------------------------------------------------------------------
    def ingest(self, events: Sequence[Event]) -> tuple[int, int]:
        """Validate `events` as a batch, append them to the store in one transaction (durable on
        return) and advance the users' states. Returns (accepted, events with unknown items)."""
        evs = validate_events(events)
        if not evs:
            return 0, 0
        holder = self.holder
        with holder.lock:
            holder.online.observe(evs)
        unknown = int((holder.item_vocab.lookup([e.item_id for e in evs], policy="skip") == 0).sum())
        with self._recent_lock:
            for e in evs:
                self._recent[e.user_id] = None
                self._recent.move_to_end(e.user_id)
            while len(self._recent) > 1000:
                self._recent.popitem(last=False)
        self.metrics.events.inc(len(evs))
        self.metrics.unknown_items.inc(unknown)
        return len(evs), unknown

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
        live = []
        for j, r in enumerate(reqs):
            if self.store.stamp(r.user).n_events == 0:
                out[j] = self._popular(holder, r.k)
            else:
                live.append(j)
        if live:
            kmax = max(reqs[j].k for j in live)
            with holder.lock:
                recs = holder.online.recommend_many(
                    [reqs[j].user for j in live], kmax, exclude_seen=reqs[0].exclude_seen
                )
            for j, rec in zip(live, recs, strict=True):
                r = reqs[j]
                items, scores = rec.items[: r.k], rec.scores[: r.k]
                expl = self._explain_user(holder, r.user, items) if r.explain else None
                out[j] = Recommended(items, scores, expl, False, holder.version, holder)
        return [o for o in out if o is not None]

    def recommend_history(
        self, history: Sequence[str], k: int, *, exclude_seen: bool = True, explain: bool = False
    ) -> Recommended:
        """Top `k` for an anonymous session's item ids (oldest first; ids the model does not know
        are skipped); the popular fallback when none is known. Scored by the holder's scoring
        model, through its approximate index when the service has one."""
        holder = self.holder
        idx = holder.item_vocab.lookup(list(history), policy="skip")
        idx = idx[idx > 0].astype(np.int64)
        if idx.size == 0:
            return self._popular(holder, k)
        q = QueryBatch(np.zeros(1, np.int64), np.array([0, idx.size], np.int64), idx)
        m, kk = holder.scoring, min(k, holder.scoring.n_items)
        if holder.index is not None:
            top, vals = retrieve(m, q, kk, holder.index, exclude_seen=exclude_seen)
        else:
            top, vals = m.recommend(q, k=kk, exclude_seen=exclude_seen)
        keep = torch.isfinite(vals[0])
        items = holder.item_vocab.to_ids(top[0][keep].numpy())
        scores = [float(v) for v in vals[0][keep]]
        expl = self._explain(holder, q, items) if explain else None
        return Recommended(items, scores, expl, False, holder.version, holder)

    def _popular(self, holder: ModelHolder, k: int) -> Recommended:
        s = self.popularity.scores(holder).clone()
        s[0] = -torch.inf
        top, vals = topk_stable(s[None, :].float(), min(k, s.shape[0]))
        keep = torch.isfinite(vals[0])
        items = holder.item_vocab.to_ids(top[0][keep].numpy())
        self.metrics.fallbacks.inc()
        return Recommended(items, [float(v) for v in vals[0][keep]], None, True, holder.version, holder)

    # -- explanations ----------------------------------------------------------------------------------
    def _explain_user(
        self, holder: ModelHolder, user: str, items: list[str]
    ) -> list[list[tuple[str, float]]] | None:
        if not isinstance(holder.model, Explainer):
            return None
        return self._explain(holder, self._stored_query(holder, user), items)

    def _stored_query(self, holder: ModelHolder, user: str) -> QueryBatch:
        """`user`'s stored history as a one-query batch (items the model does not know skipped)."""
        hist = self.store.history(user)
        idx = holder.item_vocab.lookup(hist.items, policy="skip")
        keep = idx > 0
        known = idx[keep].astype(np.int64)
        assert holder.model.user_vocab is not None
        return QueryBatch(
            np.array([holder.model.user_vocab.index(user, policy="skip")], np.int64),
            np.array([0, known.size], np.int64),
            known,
            hist.timestamps[keep].astype(np.int64),
        )

    def profile(self, user: str, short_window: int) -> tuple[dict[str, Any], ModelHolder] | None:
        """`user`'s interest profile over their stored history (`dynrec.jobs.explain.interest_profile`,
        tags and titles from the holder's item info); None when the store holds no event of them."""
        if self.store.stamp(user).n_events == 0:
            return None
        holder = self.holder
        q = self._stored_query(holder, user)
        return interest_profile(holder.model, q, holder.item_info, short_window=short_window), holder

    def _explain(
        self, holder: ModelHolder, q: QueryBatch, items: list[str]
    ) -> list[list[tuple[str, float]]] | None:
        """Per recommended item, the `EXPLAIN_TOP` history items contributing most to its score
        (repeated history items summed; `dynrec.jobs.explain.explain_items`); None when the model
        is no `Explainer`."""
        return explain_items(holder.model, q, items, top=EXPLAIN_TOP)

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
        return DeleteResult(found or held > 0, held, self.versions_with(user))

    def versions_with(self, user: str) -> list[tuple[str, str]]:
        """(path under the root, id) of every recorded version trained with `user`'s data: the user
        is in its user vocabulary and it honours no tombstone of the user (a version published
        after a deletion of the user was refitted without their events; events of a user re-created
        after a deletion are not told apart). Then the operator's further saved models
        (`ServiceSettings.model_dirs`) holding the user, by the path configured."""
        tombs = [t.generation for t in self.versions.tombstones() if t.user_id == user]
        out: list[tuple[str, str]] = []
        for rec in self.versions.list_versions():
            if any(g <= rec.deletion_generation for g in tombs):
                continue
            if user in self._users_of(rec):
                out.append((rec.path, rec.id))
        for d in self.settings.model_dirs:  # saved models outside the root the operator named
            users = self._users_of_dir(d)
            if users is not None and user in users[1]:
                out.append((d, users[0]))
        return out

    def _users_of_dir(self, model_dir: str) -> tuple[str, frozenset[str]] | None:
        """(content fingerprint, users) of the saved model at `model_dir`, None when unreadable."""
        try:
            model = Recommender.load(model_dir)
        except DynrecError as exc:
            log.warning("cannot check saved model %s for a deleted user: %s", model_dir, exc)
            return None
        assert model.user_vocab is not None
        return model_version(model), frozenset(model.user_vocab.ids)

    def _users_of(self, rec: VersionRecord) -> frozenset[str]:
        users = self._user_vocabs.get(rec.id)
        if users is None:
            try:
                model = open_version(self.root, rec)
            except DynrecError as exc:
                log.warning("cannot check model version %s for a deleted user: %s", rec.id, exc)
                return frozenset()
            assert model.user_vocab is not None
            users = self._user_vocabs[rec.id] = frozenset(model.user_vocab.ids)
        return users

    # -- publishing new versions --------------------------------------------------------------------
    def _publish(self, built: Any) -> tuple[VersionRecord, bool]:
        """`publish` on this root, then the new version swapped in here at once."""
        rec, new = publish(self.store, self.root, built)
        if new or rec.id != self.holder.version:
            self.follower.swap(self._load(rec))
        return rec, new

    def _parent_model(self, parent: VersionRecord) -> Recommender:
        """A private copy of `parent`'s model to build on (the held one when it is `parent`)."""
        holder = self.holder
        if holder.version == parent.id:
            return copy.deepcopy(holder.model)
        return open_version(self.root, parent)

    def update(self) -> UpdateReport:
        """Incremental training on the store's events since the current version (whichever process
        ingested them), on a copy of the model while the current one serves; the result is
        published as a new version (see the module docstring). One per store: `UpdateRunning`
        when another holds the lease."""
        with self._admin_lock:
            lease = self.versions.acquire_lease(
                UPDATE_LEASE, self.owner, UPDATE_LEASE_S, note=f"update by {self.owner}"
            )
            if not lease.held_by(self.owner):
                raise UpdateRunning(lease)
            t0 = time.perf_counter()
            reports: list[UpdateReport] = []
            try:
                rec, new = self._publish(lambda parent: self._build_update(parent, reports))
            finally:
                self.versions.release_lease(UPDATE_LEASE, self.owner)
        self.metrics.updates.inc()
        n_pending = max(0, self.store.event_seq() - rec.event_seq)
        self.metrics.pending.set(n_pending)
        report: UpdateReport = (
            dict(reports[-1])
            if new and reports
            else {"n_events": 0, "new_items": 0, "new_users": 0, "method": "none"}
        )
        report["seconds"] = time.perf_counter() - t0
        report["model_version"] = rec.id
        report["pending_events"] = n_pending
        return report

    def _build_update(self, parent: VersionRecord, reports: list[UpdateReport]) -> Built | None:
        seq = self.store.event_seq()
        pending = [e for _, e in self.store.events_since(parent.event_seq, seq)]
        generation = self.versions.deletion_generation()
        tombstones = self.versions.tombstones()
        deleted = {t.user_id for t in tombstones}
        model = self._parent_model(parent)
        assert model.user_vocab is not None
        unhonoured = {t.user_id for t in tombstones if t.generation > parent.deletion_generation}
        forget = any(u in model.user_vocab for u in unhonoured)
        if not pending and not forget:
            return None
        memory = version_memory(model, self.store, parent, self._base_memory(model), deleted)
        if memory is None and not isinstance(model, PartialFit):
            raise DynrecError(
                f"{model.name} retrains from scratch on an update and its training history is not "
                "available (no provenance, or the data is missing): an update would fit it to the new "
                "events alone. Retrain it with the new events instead"
            )
        if forget and memory is None:
            raise DynrecError(
                "deleted users are in the model but its training history is not available to refit "
                "without them: retrain the model from data without them"
            )
        updater = IncrementalUpdater(model, memory)
        report = updater.update(pending, refit=forget)
        reports.append(report)
        self._record_served(model, pending)
        return Built(
            model,
            read_info(version_path(self.root, parent)),
            "refit" if forget else "update",
            events_hash=events_digest(pending),
            n_events=len(pending),
            event_seq=seq,
            deletion_generation=generation,
            note=f"{report.get('method', '')}",
        )

    def _record_served(self, model: Recommender, events: Sequence[Event]) -> None:
        """Record in `model`'s provenance the served events it learned and how many of them are
        validation/test targets of its recorded split (`evaluate` refuses a model that learned test
        targets of the split it is evaluated on)."""
        history = self._history(model)
        provenance = from_meta(model.meta)
        if history is None or provenance is None or not events:
            return
        split = history.prepared.split
        data = history.prepared.data
        entry = ServedEvents(
            version=model_version(model),
            events_hash=events_digest(events),
            n_events=len(events),
            n_test_targets=count_target_events(events, target_frame(data, split.test)),
            n_valid_targets=count_target_events(events, target_frame(data, split.valid)),
        )
        if entry.n_test_targets:
            log.warning(
                "the update learned %d test target(s) of the model's %r split: `dynrec evaluate` will refuse "
                "the new version",
                entry.n_test_targets,
                split.kind,
            )
        model.meta[PROVENANCE_KEY] = provenance.with_served(entry).to_dict()

    def add_items(
        self, texts: ItemTexts, *, skip_existing: bool = False, encoder: Encoder | None = None
    ) -> tuple[AddedItems, str]:
        """Add items without events to the live model from their text (`dynrec.jobs.items`): built
        on a copy of the current version and published as a new one (concurrent additions from
        any process are all kept: each builds on the current version and retries its
        compare-and-set). `encoder` (default: the one the model recorded) must be the model's.
        Returns (what was added, the version serving now)."""
        with self._admin_lock:
            done: list[AddedItems] = []

            def build(parent: VersionRecord) -> Built | None:
                model = self._parent_model(parent)
                enc = self._encoder(model, encoder)
                added = add_items_to_model(model, texts, enc, skip_existing=skip_existing)
                done.append(added)
                if not added.added:
                    return None
                info = {
                    **read_info(version_path(self.root, parent)),
                    **item_info_from_texts(texts, added.added),
                }
                return Built(model, info, "items", note=f"{len(added.added)} item(s) added")

            rec, _ = self._publish(build)
            return done[-1], rec.id

    def _encoder(self, model: Recommender, encoder: Encoder | None) -> Encoder:
        cached = self.text_encoder
        if encoder is None and cached is not None:
            recorded = model.item_text_encoder() if isinstance(model, ItemText) else None
            encoder = cached if cached.name == recorded else None
        enc = encoder_for(model, encoder)
        self.text_encoder = enc  # loading an encoder is slow: keep it for the next request
        return enc

    def reload(self, ref: str) -> str:
        """Make `ref` the current version: a recorded version id (a rollback), or a model directory
        under the model root (relative to it), published as a new version. Errors name `ref` as
        given, never a server path."""
        with self._admin_lock:
            rec = self.versions.get_version(ref)
            if rec is not None:
                cur = self.versions.current_version()
                if cur != rec.id:
                    open_version(self.root, rec)  # it must load before it is published
                    if not self.versions.set_current(cur, rec.id):
                        raise DynrecError("the current model version changed meanwhile; try again")
                    self.follower.swap(self._load(rec))
                return rec.id
            path = self._under_root(ref)
            model = Recommender.load(path)
            new, _ = self._publish(
                lambda parent: Built(
                    model, read_info(path), "reload", deletion_generation=0, note=f"reloaded {ref}"
                )
            )
            return new.id

    def _under_root(self, ref: str) -> Path:
        """The model directory `ref` names under the root (relative, or absolute inside it)."""
        bad = DynrecError(
            f"{ref!r} is neither a model version id (see GET /healthz, `dynrec models list`) nor a saved "
            "model directory under the served model root"
        )
        if not ref.strip() or "\x00" in ref:
            raise bad
        p = Path(ref)
        target = (p if p.is_absolute() else self.root / p).resolve()
        if target != self.root and self.root not in target.parents:
            raise bad
        if not is_model_dir(target):
            raise bad
        return target

    # -- users -------------------------------------------------------------------------------------
    def search_items(self, query: str, limit: int) -> list[tuple[str, str | None]]:
        """Catalogue items whose title or id contains `query` (case-insensitive), in catalogue
        order; the first `limit` items when `query` is empty."""
        holder = self.holder
        q = query.strip().lower()
        out: list[tuple[str, str | None]] = []
        for item in holder.item_vocab.ids:
            title = holder.titles.get(item)
            if not q or q in item.lower() or (title is not None and q in title.lower()):
                out.append((item, title))
                if len(out) >= limit:
                    break
        return out

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

    def user(self, user: str, limit: int) -> tuple[int, History, ModelHolder, Interests] | None:
        """(events appended, the last `limit` events, holder, `Interests`) or None when the store
        holds no event of `user`."""
        n = self.store.stamp(user).n_events
        if n == 0:
            return None
        holder = self.holder
        hist = self.store.history(user, limit)
        with holder.lock:
            interests = holder.online.interests(user)
        return n, hist, holder, interests


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


def default_event(
    user: str, item: str, timestamp: float | None, event_type: str | None, weight: float | None = None
) -> Event:
    """An `Event` from an HTTP event (timestamp default: now, UTC seconds; type default "view";
    weight default 1)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    et = event_type if event_type is not None else HTTP_EVENT_TYPE
    return Event(user, item, ts, et, 1.0 if weight is None else float(weight))
