"""The live model behind the service and everything the routes do with it.

`ModelHolder` is one loaded model with what is derived from it: its `OnlineRecommender` over the
shared store, its `IncrementalUpdater` (the model's memory: the training history when the model
records its provenance and the data is reachable, else empty), titles and item vectors. A holder
is never changed after it is built except through its session (hot per-user states, under
``holder.lock``) and its updater's memory (user deletions, under the runtime's memory lock).

`Runtime` holds the *current* holder as one reference. Every request reads that reference once
and finishes on the holder it got, so swapping in a new one is atomic for requests:

* ``reload(dir)`` loads the new model completely, then swaps the reference;
* ``update()`` trains a *copy* of the current model (its updater deep-copied, model included) on
  the events observed since the last update while the current one keeps serving, then swaps.
  Events that arrive during the update stay pending for the next one; users deleted during it are
  forgotten by the new memory before the swap.

Popular fallback (users with no stored events, sessions with no item the model knows): items
ranked by their count in the model's memory (its training history, see above) plus the events
this process has ingested since the last update; without a recorded training history that is the
popularity among ingested events only (ties by item index).

With several worker processes each has its own holder and pending events: the store is shared
(every read checks it), while ``update`` and ``reload`` act on the worker that serves them.

Approximate retrieval and precision (`ServiceSettings.ann` / ``precision``): each holder has a
*scoring* model (the model itself, or its int8/bf16 copy) and, with ``ann``, a FAISS index over
that model's item table, both made when the holder is built — so the index is rebuilt with every
new model (reload, update, items added). They serve the stateless session path
(`recommend_history`). A stored user's recommendations come from their cached incremental state
(`OnlineRecommender`), which stays exact and float32: states are checkpointed in the shared store
under the model's version and read back by every worker.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynrec.data import registry
from dynrec.data.dataset import InteractionData
from dynrec.data.items import ItemMetadata
from dynrec.data.query import QueryBatch, topk_stable
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError, UnknownIdError
from dynrec.jobs.explain import EXPLAIN_TOP, explain_items, interest_profile
from dynrec.jobs.items import (
    AddedItems,
    ItemInfo,
    add_items_to_model,
    encoder_for,
    item_info_from_texts,
    read_item_info,
    save_model_dir,
)
from dynrec.jobs.provenance import from_meta
from dynrec.jobs.train import ann_index, training_history
from dynrec.models.base import Recommender
from dynrec.models.capabilities import Explainer, ItemEmbeddings, ItemText, PartialFit
from dynrec.models.neural.quantize import quantize
from dynrec.models.retrieval import AnnIndex, retrieve
from dynrec.online.session import Interests, OnlineRecommender
from dynrec.online.state import Event, History, StateStore, validate_events
from dynrec.online.stores import open_store, store_kind
from dynrec.online.updater import IncrementalUpdater, UpdateReport
from dynrec.service.batching import MicroBatcher, Pending
from dynrec.service.metrics import ServiceMetrics
from dynrec.service.settings import ServiceSettings
from dynrec.text import Encoder, ItemTexts

log = logging.getLogger(__name__)

__all__ = [
    "DeleteResult",
    "EXPLAIN_TOP",
    "ModelHolder",
    "Recommended",
    "Runtime",
    "SavedModel",
    "default_event",
    "serving_threads",
]

HTTP_EVENT_TYPE = "view"
"""Event type of an HTTP event that names none."""


# ---- one loaded model -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SavedModel:
    """A saved model directory as loaded: its version and user vocabulary (who it was trained on)."""

    model_dir: str
    version: str
    users: Vocabulary
    mtime: float


class ModelHolder:
    """One model and what is derived from it (see the module docstring)."""

    def __init__(
        self,
        model_dir: str,
        model: Recommender,
        store: StateStore,
        *,
        updater: IncrementalUpdater,
        metadata: ItemMetadata | None,
        saved: SavedModel,
        cache_size: int,
        trained_memory: bool,
        persist_every: int = 1,
        item_info: ItemInfo | None = None,
        scoring: Recommender | None = None,
        index: AnnIndex | None = None,
    ) -> None:
        self.model_dir = model_dir
        self.trained_memory = trained_memory
        """Whether the updater's memory starts from the model's training history."""
        self.model = model
        self.scoring = scoring if scoring is not None else model
        """The model session recommendations are scored with (`model` or its reduced-precision copy)."""
        self.index = index
        """The approximate index over `scoring`'s item table (None = exact)."""
        self.updater = updater
        self.saved = saved
        self.metadata = metadata
        # the session does not remember events for the updater: the runtime keeps the pending
        # events itself, so they survive the holder being swapped
        self.online = OnlineRecommender(
            model, store, item_metadata=metadata, cache_size=cache_size, persist_every=persist_every
        )
        self.version = self.online.version
        self.lock = threading.Lock()
        """Guards the session's hot per-user states (observe, recommend, interests, delete)."""
        self.item_info: ItemInfo = {**(item_info or {}), **_metadata_info(metadata)}
        """Titles and tags per item: the model directory's item_info.json, then the metadata."""
        self.titles: dict[str, str] = {
            i: r["title"] for i, r in self.item_info.items() if isinstance(r.get("title"), str)
        }
        self._unit: torch.Tensor | None = None
        self._memory_counts: torch.Tensor | None = None
        self._counts_lock = threading.Lock()

    @property
    def item_vocab(self) -> Vocabulary:
        assert self.model.item_vocab is not None
        return self.model.item_vocab

    def title(self, item: str) -> str | None:
        return self.titles.get(item)

    def unit_vectors(self) -> torch.Tensor | None:
        """L2-normalised item vectors of an `ItemEmbeddings` model (None otherwise)."""
        if self._unit is None and isinstance(self.model, ItemEmbeddings):
            v = self.model.item_embeddings().detach().float().cpu()
            if v.dim() == 2 and v.shape[0] == self.model.n_items:
                self._unit = torch.nn.functional.normalize(v, dim=1)
        return self._unit

    def memory_counts(self) -> torch.Tensor:
        """[n_items] float64 event count of each item in the updater's memory."""
        with self._counts_lock:
            if self._memory_counts is None:
                mem = self.updater.memory
                counts = np.bincount(mem.items, minlength=self.model.n_items)[: self.model.n_items]
                self._memory_counts = torch.from_numpy(counts.astype(np.float64))
            return self._memory_counts

    def memory_changed(self) -> None:
        with self._counts_lock:
            self._memory_counts = None


def _metadata_info(metadata: ItemMetadata | None) -> ItemInfo:
    """Titles and genres (as tags) of item metadata, in the form of ``item_info.json``."""
    if metadata is None:
        return {}
    f = metadata.frame
    return {
        str(i): {"title": None if t is None else str(t), "tags": [str(g) for g in (gs or [])]}
        for i, t, gs in zip(f["item_id"].to_list(), f["title"].to_list(), f["genres"].to_list(), strict=True)
    }


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
    deleted: bool
    deleted_events: int
    model_versions: list[tuple[str, str]]


# ---- the runtime ----------------------------------------------------------------------------------------


class Runtime:
    """The service's state: the store, the current `ModelHolder`, pending events, the batcher."""

    def __init__(self, settings: ServiceSettings, metrics: ServiceMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.items_override = (
            registry.load_items(settings.items_file) if settings.items_file is not None else None
        )
        self.store = open_store(settings.store)
        self.store_kind = store_kind(self.store)
        self._saved: dict[str, SavedModel] = {}
        self._holder = self._load(settings.model_dir)
        self._admin_lock = threading.Lock()  # one update or reload at a time
        self._memory_lock = threading.Lock()  # the current updater's memory: copy vs forget
        self._forget_on_swap: set[str] | None = None  # users deleted while an update runs
        self._pending: list[tuple[int, Event]] = []  # events observed since the last update
        self._pending_counts: Counter[str] = Counter()
        self._pending_seq = 0
        self._pending_lock = threading.Lock()
        self._pop_cache: tuple[tuple[int, int], torch.Tensor] | None = None
        self._recent: OrderedDict[str, None] = OrderedDict()  # users seen by this process, newest last
        self._retired = (0, 0)  # cache hits/misses of swapped-out sessions
        self.text_encoder: Encoder | None = None
        """The encoder `add_items` uses (loaded on first use; set it to inject another)."""
        self.metrics.set_model(self._holder.model.name, self._holder.version)
        self.metrics.watch_cache(self.cache_stats)
        self.batcher: MicroBatcher[_RecRequest, Recommended] = MicroBatcher(
            self._handle_batch,
            max_wait_s=settings.batch_wait_ms / 1000.0,
            max_size=settings.batch_size,
            on_batch=self.metrics.batch_size.observe,
        )

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def holder(self) -> ModelHolder:
        """The current model; read it once per request and finish on it."""
        return self._holder

    def close(self) -> None:
        self.batcher.stop()
        self.store.close()

    def cache_stats(self) -> tuple[int, int]:
        h = self._holder
        return self._retired[0] + h.online.cache_hits, self._retired[1] + h.online.cache_misses

    def _load(self, model_dir: str | Path) -> ModelHolder:
        """A holder for a saved model, loaded completely (model, training memory, titles)."""
        path = str(Path(model_dir).resolve())
        model = Recommender.load(path)
        assert model.user_vocab is not None
        memory = _training_memory(model)
        updater = IncrementalUpdater(model, memory)
        metadata = self.items_override if self.items_override is not None else _dataset_items(model)
        version = OnlineRecommender(model, self.store, cache_size=0).version
        saved = SavedModel(path, version, model.user_vocab, _mtime(path))
        self._saved[path] = saved
        scoring, index = self._scoring(model)
        return ModelHolder(
            path,
            model,
            self.store,
            updater=updater,
            metadata=metadata,
            saved=saved,
            cache_size=self.settings.cache_size,
            persist_every=self.settings.persist_every,
            trained_memory=memory is not None,
            item_info=_read_info(path),
            scoring=scoring,
            index=index,
        )

    def _scoring(self, model: Recommender) -> tuple[Recommender, AnnIndex | None]:
        """(scoring model at the settings' precision, approximate index over it or None) for a
        holder of `model` (see the module docstring)."""
        scoring = quantize(model, self.settings.precision)
        return scoring, ann_index(scoring, self.settings.ann_config())

    def _swap(self, new: ModelHolder) -> None:
        old = self._holder
        self._holder = new
        self._retired = (
            self._retired[0] + old.online.cache_hits,
            self._retired[1] + old.online.cache_misses,
        )
        self.metrics.set_model(new.model.name, new.version)

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
        with self._pending_lock:
            for e in evs:
                self._pending_seq += 1
                self._pending.append((self._pending_seq, e))
                self._pending_counts[e.item_id] += 1
                self._recent[e.user_id] = None
                self._recent.move_to_end(e.user_id)
            while len(self._recent) > 1000:
                self._recent.popitem(last=False)
            n_pending = len(self._pending)
        self.metrics.events.inc(len(evs))
        self.metrics.unknown_items.inc(unknown)
        self.metrics.pending.set(n_pending)
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
        s = self._popularity(holder).clone()
        s[0] = -torch.inf
        top, vals = topk_stable(s[None, :].float(), min(k, s.shape[0]))
        keep = torch.isfinite(vals[0])
        items = holder.item_vocab.to_ids(top[0][keep].numpy())
        self.metrics.fallbacks.inc()
        return Recommended(items, [float(v) for v in vals[0][keep]], None, True, holder.version, holder)

    def _popularity(self, holder: ModelHolder) -> torch.Tensor:
        """[n_items] counts: the model's memory plus the events pending since the last update."""
        with self._pending_lock:
            key = (id(holder), self._pending_seq)
            cached = self._pop_cache
            if cached is not None and cached[0] == key and cached[1].shape[0] == holder.model.n_items:
                return cached[1]
            ids = list(self._pending_counts)
            counts = np.array([self._pending_counts[i] for i in ids], dtype=np.float64)
        s = holder.memory_counts().clone()
        if ids:
            idx = holder.item_vocab.lookup(ids, policy="skip")
            ok = idx > 0
            s.index_add_(0, torch.from_numpy(idx[ok]), torch.from_numpy(counts[ok]))
        with self._pending_lock:
            self._pop_cache = (key, s)
        return s

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
        """Items most like `item`: cosine of the model's item vectors (`ItemEmbeddings`), else the
        model's scores for a one-item history. `UnknownIdError` for an item the model lacks."""
        holder = self.holder
        i = holder.item_vocab.index(item, policy="skip")
        if i == 0:
            raise UnknownIdError(f"item {item!r} is not in the model's catalogue")
        unit = holder.unit_vectors()
        if unit is not None:
            s = unit @ unit[i]
        else:
            q = QueryBatch(np.zeros(1, np.int64), np.array([0, 1], np.int64), np.array([i], np.int64))
            s = holder.model.score(q)[0].clone()
        s[0] = -torch.inf
        s[i] = -torch.inf
        top, vals = topk_stable(s[None, :].float(), min(k, s.shape[0]))
        keep = torch.isfinite(vals[0])
        return holder.item_vocab.to_ids(top[0][keep].numpy()), [float(v) for v in vals[0][keep]], holder

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
        with self._pending_lock:
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

    def delete_user(self, user: str) -> DeleteResult:
        """Privacy: the user's events and cached state (store), hot state, the updater's memory rows
        and pending events; lists the model versions trained with the user's data."""
        holder = self.holder
        held = len(self.store.history(user))
        with holder.lock:
            found = holder.online.delete_user(user)
        with self._memory_lock:
            found = holder.updater.forget_user(user) or found
            holder.memory_changed()
            if self._forget_on_swap is not None:
                self._forget_on_swap.add(user)
        with self._pending_lock:
            kept = [(s, e) for s, e in self._pending if e.user_id != user]
            if len(kept) != len(self._pending):
                found = True
                for _, e in self._pending:
                    if e.user_id == user:
                        self._pending_counts[e.item_id] -= 1
                self._pending_counts = +self._pending_counts  # drop zero counts
                self._pending = kept
                self._pending_seq += 1  # invalidates the cached popularity
            self._recent.pop(user, None)
        return DeleteResult(found, held, self.versions_with(user, holder))

    def versions_with(self, user: str, holder: ModelHolder) -> list[tuple[str, str]]:
        """(model dir, version) of every model known to this process whose user vocabulary holds
        `user` (it was trained on the user's events): the loaded model as saved, the in-memory
        model when updates since made it differ, the dirs in ``settings.model_dirs`` and those
        served earlier (reloads)."""
        out: list[tuple[str, str]] = []
        if user in holder.saved.users:
            out.append((holder.saved.model_dir, holder.saved.version))
        assert holder.model.user_vocab is not None
        if holder.version != holder.saved.version and user in holder.model.user_vocab:
            out.append((holder.model_dir, holder.version))
        dirs = [str(Path(d).resolve()) for d in self.settings.model_dirs]
        dirs += [d for d in self._saved if d not in dirs]
        for d in dirs:
            if d == holder.saved.model_dir:
                continue
            saved = self._saved_model(d)
            if saved is not None and user in saved.users:
                out.append((saved.model_dir, saved.version))
        return out

    def _saved_model(self, model_dir: str) -> SavedModel | None:
        mtime = _mtime(model_dir)
        saved = self._saved.get(model_dir)
        if saved is not None and saved.mtime == mtime:
            return saved
        try:
            model = Recommender.load(model_dir)
        except DynrecError as exc:
            log.warning("cannot check saved model %s for a deleted user: %s", model_dir, exc)
            return None
        assert model.user_vocab is not None
        saved = SavedModel(
            model_dir, OnlineRecommender(model, self.store, cache_size=0).version, model.user_vocab, mtime
        )
        self._saved[model_dir] = saved
        return saved

    # -- admin ---------------------------------------------------------------------------------------
    def update(self) -> UpdateReport:
        """Incremental training on the events observed since the last update, on a copy of the
        model while the current one serves; then the copy is swapped in."""
        with self._admin_lock:
            old = self.holder
            with self._pending_lock:
                taken = list(self._pending)
            if not taken:
                return {
                    "n_events": 0,
                    "new_items": 0,
                    "new_users": 0,
                    "method": "none",
                    "seconds": 0.0,
                    "model_version": old.version,
                    "pending_events": 0,
                }
            if not old.trained_memory and not isinstance(old.model, PartialFit):
                raise DynrecError(
                    f"{old.model.name} retrains from scratch on an update and its training history is not "
                    "available (no provenance, or the data is missing): an update would fit it to the new "
                    "events alone. Retrain it with the new events instead"
                )
            t0 = time.perf_counter()
            with self._memory_lock:
                updater = copy.deepcopy(old.updater)  # the model comes along (the updater holds it)
                self._forget_on_swap = set()
            try:
                report = updater.update([e for _, e in taken])
                new = self._successor(old, updater, old.item_info)
                with self._memory_lock:
                    for user in self._forget_on_swap:
                        updater.forget_user(user)
                    new.memory_changed()
                    last = taken[-1][0]
                    with self._pending_lock:
                        self._pending = [(s, e) for s, e in self._pending if s > last]
                        self._pending_counts = Counter(e.item_id for _, e in self._pending)
                        self._pending_seq += 1
                        n_pending = len(self._pending)
                    self._swap(new)
            finally:
                self._forget_on_swap = None
            self.metrics.updates.inc()
            self.metrics.pending.set(n_pending)
            report = dict(report)
            report["seconds"] = time.perf_counter() - t0
            report["model_version"] = new.version
            report["pending_events"] = n_pending
            return report

    def _successor(self, old: ModelHolder, updater: IncrementalUpdater, item_info: ItemInfo) -> ModelHolder:
        """The holder that replaces `old` once `updater` (a deep copy of old's) changed its model:
        same directory, metadata and training memory, fresh scoring copy and index."""
        scoring, index = self._scoring(updater.model)
        return ModelHolder(
            old.model_dir,
            updater.model,
            self.store,
            updater=updater,
            metadata=old.metadata,
            saved=old.saved,
            cache_size=self.settings.cache_size,
            persist_every=self.settings.persist_every,
            trained_memory=old.trained_memory,
            item_info=item_info,
            scoring=scoring,
            index=index,
        )

    def add_items(
        self, texts: ItemTexts, *, skip_existing: bool = False, encoder: Encoder | None = None
    ) -> tuple[AddedItems, str]:
        """Add items without events to the live model from their text (`dynrec.jobs.items`): a copy
        of the current model (its updater deep-copied, model included) gets the items while the
        current one serves; the copy is saved over the model directory (each file replaced
        atomically) and swapped in. One at a time with updates and reloads. `encoder` (default:
        the one the model recorded) must be the model's. Returns (what was added, new version)."""
        with self._admin_lock:
            old = self.holder
            cached = self.text_encoder
            if encoder is None and cached is not None:
                recorded = old.model.item_text_encoder() if isinstance(old.model, ItemText) else None
                encoder = cached if cached.name == recorded else None
            enc = encoder_for(old.model, encoder)
            self.text_encoder = enc  # loading an encoder is slow: keep it for the next request
            with self._memory_lock:
                updater = copy.deepcopy(old.updater)  # the model comes along (the updater holds it)
                self._forget_on_swap = set()
            try:
                model = updater.model
                done = add_items_to_model(model, texts, enc, skip_existing=skip_existing)
                if not done.added:
                    return done, old.version
                added_info = item_info_from_texts(texts, done.added)
                save_model_dir(model, old.model_dir, {**_read_info(old.model_dir), **added_info})
                new = self._successor(old, updater, {**old.item_info, **added_info})
                with self._memory_lock:
                    for user in self._forget_on_swap:
                        updater.forget_user(user)
                    new.memory_changed()
                    self._swap(new)
            finally:
                self._forget_on_swap = None
            return done, new.version

    def reload(self, model_dir: str) -> str:
        """Swap in the saved model at `model_dir` (loaded completely first); its version."""
        with self._admin_lock:
            new = self._load(model_dir)
            self._swap(new)
            return new.version


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


def _mtime(model_dir: str) -> float:
    try:
        return os.stat(Path(model_dir) / "model.safetensors").st_mtime
    except OSError:
        return 0.0


def _training_memory(model: Recommender) -> InteractionData | None:
    """The model's training history when its provenance is recorded and the data is reachable
    (checked unchanged), else None (the updater's memory then starts empty)."""
    try:
        return training_history(model).data
    except (DynrecError, OSError) as exc:
        log.warning(
            "no training history for %s (%s): incremental updates learn from new events only and the "
            "popular fallback counts ingested events",
            model.name,
            exc,
        )
        return None


def _read_info(model_dir: str) -> ItemInfo:
    """The model directory's item_info.json, best effort ({} when missing or damaged)."""
    try:
        return read_item_info(model_dir)
    except (DynrecError, OSError) as exc:
        log.warning("ignoring %s/item_info.json: %s", model_dir, exc)
        return {}


def _dataset_items(model: Recommender) -> ItemMetadata | None:
    """Item metadata of the model's registered dataset, when the data registry has it."""
    try:
        prov = from_meta(model.meta)
    except DynrecError:
        prov = None
    name = prov.dataset if prov is not None else model.meta.get("dataset")
    if not isinstance(name, str) or name not in registry.DATASETS:
        return None
    try:
        return registry.load_items(name)
    except (DynrecError, OSError) as exc:
        log.info("no item metadata for %s: %s", name, exc)
        return None


def default_event(
    user: str, item: str, timestamp: float | None, event_type: str | None, weight: float | None = None
) -> Event:
    """An `Event` from an HTTP event (timestamp default: now, UTC seconds; type default "view";
    weight default 1)."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    et = event_type if event_type is not None else HTTP_EVENT_TYPE
    return Event(user, item, ts, et, 1.0 if weight is None else float(weight))
