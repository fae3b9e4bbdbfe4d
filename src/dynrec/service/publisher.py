"""Publishing new model versions from a serving process: updates, item additions, reloads.

Each goes through `dynrec.jobs.model_root.publish` (build on the current version, write an
immutable directory, compare-and-set the store's pointer, rebuild on the newer version when
another publisher won) and is swapped in here at once (`VersionFollower.swap`); other processes
follow within a poll. An update runs once per store: it holds the store's update lease (with an
expiry, so a crashed updater frees it) and trains on the store's events since the current version
— ingested by any process — leaving every tombstoned user out; when the current version was trained
with a user deleted since, the update refits from scratch so that the version it publishes is free
of them.

Every version is published with its interest-shift calibration (``shifts.json``): an update's is
made on what the updated model learned from (`dynrec.jobs.shifts.calibrate_for` on the updater's
memory; else the parent's), item additions keep the parent's (same constants, more items) — for a
parent without one, the calibration this process serves with — and a reloaded directory brings
its own.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dynrec.data.dataset import InteractionData
from dynrec.data.events import Event
from dynrec.errors import DynrecError
from dynrec.jobs.history import TrainingHistory
from dynrec.jobs.items import AddedItems, add_items_to_model, encoder_for, item_info_from_texts
from dynrec.jobs.model_root import (
    Built,
    count_target_events,
    events_digest,
    is_model_dir,
    open_version,
    publish,
    version_memory,
    version_path,
)
from dynrec.jobs.provenance import PROVENANCE_KEY, ServedEvents, from_meta, target_frame
from dynrec.jobs.shifts import calibrate_for, saved_calibration
from dynrec.models.base import Recommender
from dynrec.models.capabilities import ItemText, PartialFit
from dynrec.online.shifts import ShiftCalibration
from dynrec.online.store import StateStore
from dynrec.online.store.versions import Lease, VersionRecord, VersionStore
from dynrec.online.updater import IncrementalUpdater, UpdateReport
from dynrec.service.follower import VersionFollower
from dynrec.service.holder import ModelHolder, read_info
from dynrec.service.metrics import ServiceMetrics
from dynrec.text import Encoder, ItemTexts

log = logging.getLogger(__name__)

__all__ = ["PublishedUpdate", "Publisher", "UpdateRunning"]

UPDATE_LEASE = "update"
UPDATE_LEASE_S = 60.0
"""How long the store's update lease lasts without renewal: a running update renews it every
third of this, so a crashed updater frees it within this long."""


@dataclass(frozen=True)
class PublishedUpdate:
    """What ``POST /v1/admin/update`` did: the update (``method`` ``"none"`` when there was nothing to
    learn), the version current afterwards, the store's events still not in it, and the seconds the
    whole update took (lease, training, publication)."""

    report: UpdateReport
    model_version: str
    pending_events: int
    seconds: float

    def to_json(self) -> dict[str, int | float | str]:
        """The update's report (`UpdateReport.to_json`, ``seconds`` the whole update's), then
        ``model_version`` and ``pending_events``."""
        out = self.report.to_json()
        out["seconds"] = self.seconds
        out["model_version"] = self.model_version
        out["pending_events"] = self.pending_events
        return out


class UpdateRunning(DynrecError):
    """Another update holds the store's update lease."""

    def __init__(self, lease: Lease) -> None:
        left = max(0.0, lease.expires - time.time())
        super().__init__(
            f"an update is already running ({lease.note or lease.owner}; its lease expires in {left:.0f} s)"
        )
        self.lease = lease


class Publisher:
    """Publishes new versions of the model root `root` through `store` (see the module docstring)."""

    def __init__(
        self,
        store: StateStore,
        versions: VersionStore,
        root: Path,
        follower: VersionFollower,
        load: Callable[[VersionRecord], ModelHolder],
        history: Callable[[Recommender], TrainingHistory | None],
        metrics: ServiceMetrics,
        owner: str,
    ) -> None:
        self.store = store
        self.versions = versions
        self.root = root
        self.follower = follower
        self._load = load
        self._history = history
        self.metrics = metrics
        self.owner = owner
        self._admin_lock = threading.Lock()  # one publication at a time in this process
        self.text_encoder: Encoder | None = None
        """The encoder `add_items` uses (loaded on first use; set it to inject another)."""

    @property
    def holder(self) -> ModelHolder:
        return self.follower.holder

    def _base_memory(self, model: Recommender) -> InteractionData | None:
        history = self._history(model)
        return None if history is None else history.data

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

    def _parent_shifts(self, parent: VersionRecord) -> ShiftCalibration | None:
        """`parent`'s saved shift calibration, else the one the current version serves with."""
        saved = saved_calibration(version_path(self.root, parent))
        return saved if saved is not None else self.holder.shift_calibration

    def update(self) -> PublishedUpdate:
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
            done = threading.Event()
            renewer = threading.Thread(
                target=self._renew_lease, args=(done,), name="dynrec-update-lease", daemon=True
            )
            renewer.start()
            try:
                rec, new = self._publish(lambda parent: self._build_update(parent, reports))
            finally:
                done.set()
                renewer.join()
                self.versions.release_lease(UPDATE_LEASE, self.owner)
        self.metrics.updates.inc()
        n_pending = max(0, self.store.event_seq() - rec.event_seq)
        self.metrics.pending.set(n_pending)
        learned = reports[-1] if new and reports else UpdateReport(0, 0, 0, "none", 0.0)
        return PublishedUpdate(learned, rec.id, n_pending, time.perf_counter() - t0)

    def _renew_lease(self, done: threading.Event) -> None:
        """Keep the update lease while an update runs (until `done`)."""
        while not done.wait(UPDATE_LEASE_S / 3):
            try:
                held = self.versions.acquire_lease(
                    UPDATE_LEASE, self.owner, UPDATE_LEASE_S, note=f"update by {self.owner}"
                )
            except Exception:  # a store hiccup: the next renewal tries again
                log.exception("renewing the update lease failed")
                continue
            if not held.held_by(self.owner):
                log.warning("the update lease passed to %s while this update ran", held.owner)

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
        info = read_info(version_path(self.root, parent))
        shifts = None
        if memory is not None:
            holder = self.holder
            shifts = calibrate_for(model, updater.memory, holder.item_info, holder.metadata)
        return Built(
            model,
            info,
            "refit" if forget else "update",
            events_hash=events_digest(pending),
            n_events=len(pending),
            event_seq=seq,
            deletion_generation=generation,
            note=report.method,
            shifts=shifts if shifts is not None else self._parent_shifts(parent),
        )

    def _record_served(self, model: Recommender, events: Sequence[Event]) -> None:
        """Record in `model`'s provenance the served events it learned and how many of them are
        validation/test targets of its recorded split (`evaluate` refuses a model that learned test
        targets of the split it is evaluated on)."""
        history = self._history(model)
        provenance = from_meta(model.meta).provenance
        if history is None or provenance is None or not events:
            return
        split = history.prepared.split
        data = history.prepared.data
        entry = ServedEvents(
            version=model.fingerprint(),
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
                shifts = self._parent_shifts(parent)
                return Built(model, info, "items", note=f"{len(added.added)} item(s) added", shifts=shifts)

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
                    model,
                    read_info(path),
                    "reload",
                    deletion_generation=0,
                    note=f"reloaded {ref}",
                    shifts=saved_calibration(path),
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
