"""A model root: immutable model versions on disk, published through the store.

Layout::

    ROOT/                      a saved model directory (the root's first version, ``"."``) — or not
    ROOT/versions/<id>/        one immutable version per directory (``<id>`` = the model's content
                               fingerprint, `dynrec.online.session.model_version`)

A version directory is written in full under a temporary name next to its final one, synced, and
renamed into place; it is never modified afterwards (a second publication of the same content
finds the directory there and reuses it). Which version is current is not a file: it is the
store's pointer (`dynrec.online.store.versions.VersionStore`), changed only by compare-and-set, so every
process and host sharing the store agrees on it. `publish` is the one way a new version becomes
current: it builds on the version it read and retries when another publisher won the race.

A model directory saved in place (`train --out`, `train --resume`, `items add` on a model never
served, `replay --save-model`) goes through `save_model_dir`: every file written in full to a
temporary folder next to it, then renamed over its old version, so a reader never sees a
half-written model.

Both writers save the interest-shift detector's calibration of the model (``shifts.json``,
`dynrec.online.shift_calibration.save_calibration`; made by `dynrec.jobs.shifts.calibrate_for` on what the
model learned from) with the weights, so every process serving a version detects shifts with the
same constants; a model saved without one has none (a stale one is removed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from dynrec.data.dataset import InteractionData
from dynrec.data.events import Event
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError
from dynrec.jobs.history import TrainingHistory, training_history
from dynrec.jobs.items import ItemInfo, write_item_info
from dynrec.jobs.provenance import count_targets
from dynrec.models.base import Recommender
from dynrec.online.shift_calibration import SHIFT_FILE, save_calibration
from dynrec.online.shifts import ShiftCalibration
from dynrec.online.store import StateStore
from dynrec.online.store.versions import VersionRecord, VersionStore

log = logging.getLogger(__name__)

__all__ = [
    "VERSIONS_DIR",
    "Built",
    "PublishConflict",
    "count_target_events",
    "events_digest",
    "is_model_dir",
    "new_version_id",
    "open_version",
    "publish",
    "register_initial",
    "save_model_dir",
    "training_memory",
    "version_memory",
    "version_path",
    "without_users",
    "write_version_dir",
]

VERSIONS_DIR = "versions"

PUBLISH_RETRIES = 16
"""Compare-and-set attempts before `publish` gives up (each rebuilds on the newer current version)."""


class PublishConflict(DynrecError):
    """Other publishers kept moving the current version while this one built on it."""


def is_model_dir(path: str | Path) -> bool:
    """Whether `path` holds a saved model (its weights and config)."""
    p = Path(path)
    return (p / "model.safetensors").is_file() and (p / "config.json").is_file()


def version_path(root: str | Path, record: VersionRecord) -> Path:
    """The directory of `record` under `root`."""
    return Path(root) / record.path if record.path != "." else Path(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_version_id(model: Recommender) -> str:
    """A fresh version id: the model's content fingerprint (12 hex digits) and a random suffix, so
    that two versions of equal weights (an update that consumed events without changing them) are
    still two records."""
    return f"{model.fingerprint()[:12]}-{secrets.token_hex(3)}"


def _write_synced(
    folder: Path, model: Recommender, item_info: ItemInfo | None, shifts: ShiftCalibration | None
) -> list[str]:
    """Write a model directory's files into `folder` and sync each; their names, sorted."""
    model.save(folder)
    if item_info is not None:
        write_item_info(folder, item_info)
    if shifts is not None:
        save_calibration(folder, shifts)
    names = sorted(p.name for p in folder.iterdir())
    for name in names:
        with open(folder / name, "rb") as fh:
            os.fsync(fh.fileno())
    return names


def write_version_dir(
    root: str | Path,
    model: Recommender,
    item_info: ItemInfo | None,
    shifts: ShiftCalibration | None = None,
) -> tuple[str, str]:
    """Save `model` (and `item_info`, and the shift calibration `shifts` as ``shifts.json``) as a
    new immutable version directory under `root`; returns (its path relative to the root, its id).
    Written under a temporary name, synced, then renamed into place (a rename never replaces a
    directory that holds files)."""
    vid = new_version_id(model)
    base = Path(root) / VERSIONS_DIR
    base.mkdir(parents=True, exist_ok=True)
    final = base / vid
    tmp = Path(tempfile.mkdtemp(dir=base, prefix=f".{vid}.writing-"))
    try:
        _write_synced(tmp, model, item_info, shifts)
        os.chmod(tmp, 0o755)
        os.rename(tmp, final)
        _fsync_dir(base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return f"{VERSIONS_DIR}/{vid}", vid


def events_digest(events: Sequence[Event]) -> str:
    """SHA-256 of events in the given order (ids, timestamps, types, weights); "" for none."""
    if not events:
        return ""
    h = hashlib.sha256()
    for e in events:
        h.update(json.dumps([e.user_id, e.item_id, e.timestamp, e.event_type, e.weight]).encode())
        h.update(b"\n")
    return h.hexdigest()


def register_initial(store: StateStore, root: str | Path) -> VersionRecord:
    """The store's current version; when it has none, `root` (a saved model directory) becomes
    the first version (path ``"."``), its served events starting at the store's sequence now."""
    vs = _versions(store)
    cur = vs.current_version()
    if cur is not None:
        rec = vs.get_version(cur)
        if rec is None:
            raise DynrecError(f"the store's current model version {cur!r} has no record")
        return rec
    if not is_model_dir(root):
        raise DynrecError(
            f"{Path(root).name or root!s} is not a saved model directory and the store has no model version "
            "yet: serve a directory written by `dynrec train` first"
        )
    model = Recommender.load(root)
    seq = store.event_seq()
    rec = VersionRecord(
        id=new_version_id(model),
        path=".",
        parent=None,
        created=time.time(),
        kind="initial",
        event_seq=seq,
        base_seq=seq,
        deletion_generation=vs.deletion_generation(),
        note="the model root's own directory",
    )
    vs.add_version(rec)
    if not vs.set_current(None, rec.id):  # another process registered first: follow it
        vs.discard_version(rec.id)
        return register_initial(store, root)
    return rec


def open_version(root: str | Path, record: VersionRecord) -> Recommender:
    path = version_path(root, record)
    if not is_model_dir(path):
        raise DynrecError(
            f"model version {record.id} ({record.path}) is missing from the model root: "
            "serve the root the store's versions were published under"
        )
    return Recommender.load(path)


@dataclass(frozen=True)
class Built:
    """What a publisher built on a parent version: the new model and what it learned."""

    model: Recommender
    item_info: ItemInfo | None
    kind: str
    events_hash: str = ""
    n_events: int = 0
    event_seq: int | None = None
    """Served events consumed up to this sequence number (None = the parent's)."""
    deletion_generation: int | None = None
    """Tombstones honoured up to this generation (None = the parent's)."""
    note: str = ""
    shifts: ShiftCalibration | None = None
    """The shift detector's calibration saved with the version (None: the version has none)."""


def publish(
    store: StateStore,
    root: str | Path,
    build: Callable[[VersionRecord], Built | None],
    *,
    retries: int = PUBLISH_RETRIES,
) -> tuple[VersionRecord, bool]:
    """Make a new current version: read the current one, `build` on it, write the directory, then
    compare-and-set the pointer from the version built on; when another publisher moved it first,
    build again on the newer one (up to `retries` times, then `PublishConflict`). `build` returns
    None when there is nothing to publish. Returns (the current version, whether it is new)."""
    vs = _versions(store)
    for _ in range(retries):
        cur = vs.current_version()
        parent = vs.get_version(cur) if cur is not None else None
        if parent is None:
            parent = register_initial(store, root)
        built = build(parent)
        if built is None:
            return parent, False
        rel, vid = write_version_dir(root, built.model, built.item_info, built.shifts)
        rec = VersionRecord(
            id=vid,
            path=rel,
            parent=parent.id,
            created=time.time(),
            kind=built.kind,
            events_hash=built.events_hash,
            n_events=built.n_events,
            event_seq=parent.event_seq if built.event_seq is None else built.event_seq,
            base_seq=parent.base_seq,
            deletion_generation=(
                parent.deletion_generation if built.deletion_generation is None else built.deletion_generation
            ),
            note=built.note,
        )
        if not vs.add_version(rec):
            raise DynrecError(f"model version id {vid} is taken")  # 24 random bits: not in practice
        if vs.set_current(parent.id, rec.id):
            log.info("published model version %s (%s, parent %s)", rec.id, rec.kind, parent.id)
            return rec, True
        vs.discard_version(rec.id)
        shutil.rmtree(version_path(root, rec), ignore_errors=True)
        log.info("model version %s lost the race to another publisher; rebuilding", vid)
    raise PublishConflict(
        f"the current model version kept changing while publishing ({retries} attempts); try again"
    )


def _versions(store: StateStore) -> VersionStore:
    if not isinstance(store, VersionStore):
        raise DynrecError(f"the state store {type(store).__name__} keeps no model versions")
    return store


# ---- what a version learned from ------------------------------------------------------------------


def without_users(data: InteractionData, users: set[str]) -> InteractionData:
    """`data` without the events of `users` (same vocabularies)."""
    if not users:
        return data
    idx = data.user_vocab.lookup(sorted(users), policy="skip")
    idx = idx[idx > 0]
    if idx.size == 0:
        return data
    return data.select(~np.isin(data.users, idx))


def training_memory(model: Recommender, data_dir: str | Path | None = None) -> TrainingHistory | None:
    """The model's original training history (its recorded provenance, the data checked unchanged)
    in the model's vocabulary, with the split it was prepared with; None when it cannot be rebuilt
    (no provenance, data missing)."""
    try:
        return training_history(model, data_dir)
    except (DynrecError, OSError) as exc:
        log.warning("no training history for %s (%s): updates learn from served events only", model.name, exc)
        return None


def count_target_events(events: Sequence[Event], targets: pl.DataFrame) -> int:
    """How many of `events` are one of `targets` (same user, item and timestamp:
    `provenance.count_targets` on the events as a frame)."""
    frame = pl.DataFrame(
        {
            "user_id": [e.user_id for e in events],
            "item_id": [e.item_id for e in events],
            "timestamp": [e.timestamp for e in events],
        },
        schema={"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64},
    )
    return count_targets(frame, targets)


def version_memory(
    model: Recommender,
    store: StateStore,
    record: VersionRecord,
    base: InteractionData | None,
    deleted: set[str],
) -> InteractionData | None:
    """Every event the version `record` (whose model is `model`) learned from, deleted users left
    out: `base` (the original training history in a vocabulary `model`'s extends; None = unknown)
    without `deleted`, plus the served events of its lineage (store sequence numbers in
    (``record.base_seq``, ``record.event_seq``]). None when `base` is None."""
    if base is None:
        return None
    assert model.user_vocab is not None and model.item_vocab is not None
    uv, iv = Vocabulary(model.user_vocab.ids), Vocabulary(model.item_vocab.ids)
    kept = without_users(base, deleted)
    served = [e for _, e in store.events_since(record.base_seq, record.event_seq) if e.user_id not in deleted]
    users, items, ts, w = kept.users, kept.items, kept.timestamps, kept.weights
    if served:
        u = uv.lookup([e.user_id for e in served], policy="skip")
        i = iv.lookup([e.item_id for e in served], policy="skip")
        ok = (u > 0) & (i > 0)
        users = np.concatenate([users, u[ok].astype(np.int64)])
        items = np.concatenate([items, i[ok].astype(np.int64)])
        ts = np.concatenate([ts, np.array([e.timestamp for e in served], np.int64)[ok]])
        w = np.concatenate([w, np.ones(int(ok.sum()), np.float32)])
    return InteractionData.from_arrays(
        users, items, timestamps=ts, weights=w, user_vocab=uv, item_vocab=iv, has_time=True
    )


def save_model_dir(
    model: Recommender,
    model_dir: str | Path,
    item_info: ItemInfo | None = None,
    shifts: ShiftCalibration | None = None,
) -> Path:
    """Save `model` (and `item_info`, and the shift calibration `shifts` as ``shifts.json``) into
    `model_dir` without leaving a half-written model: every file is written in full (and synced)
    to a temporary folder next to it first, then each is moved over its old version (an atomic
    rename per file). Without `shifts` a ``shifts.json`` there (an earlier model's) is removed.
    Other files in `model_dir` (a service's event store) are left alone."""
    target = Path(model_dir)
    target.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.saving-"))
    try:
        names = _write_synced(tmp, model, item_info, shifts)
        if shifts is None:
            (target / SHIFT_FILE).unlink(missing_ok=True)
        # weights last: a reader that sees new vocabularies with old weights fails its checks
        names.sort(key=lambda n: n == "model.safetensors")
        for name in names:
            os.replace(tmp / name, target / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
