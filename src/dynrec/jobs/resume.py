"""Warm start: continue training a saved model on new events (``dynrec train --resume``).

The model's memory (what the update replays, co-occurrence counts, fold-ins) is its *training
history* (`dynrec.jobs.history.training_history`): the training part of its recorded split plus the
events of earlier resumes — never the split's validation or test targets, so a resumed model stays
evaluable on its split. The resume is recorded in the model's provenance (file, content hash, and
how many of its events are validation/test targets of the split: `evaluate` refuses a model whose
training included test targets).

Deleted users: with a store (``--store``, or the service's default store ``MODEL_DIR/events.db``
of a served root) every tombstoned user's events are left out — of the training history and of
the new events file — and when the model was trained with any of them the resume refits it from
scratch instead of continuing, so the result is free of them. On a served root (the store records
model versions) the result is published as a new version instead of overwriting a directory;
elsewhere the model is saved in place (or to `out`), each file replaced atomically.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import polars as pl

from dynrec.data.events import EventLog
from dynrec.data.io import read_events
from dynrec.errors import DynrecError
from dynrec.jobs import provenance as prov_
from dynrec.jobs.catalogue import served_store_url
from dynrec.jobs.history import training_history
from dynrec.jobs.items import read_item_info
from dynrec.jobs.model_root import Built, publish, save_model_dir, version_path, without_users
from dynrec.jobs.prepare import column_map
from dynrec.jobs.shifts import calibrate_for
from dynrec.models.base import Recommender
from dynrec.online.shifts import ShiftCalibration
from dynrec.online.store import StateStore, open_store
from dynrec.online.store.versions import VersionRecord, VersionStore
from dynrec.online.updater import IncrementalUpdater, UpdateConfig, UpdateReport

log = logging.getLogger(__name__)

__all__ = ["ResumeResult", "resume_training"]


@dataclass(frozen=True)
class ResumeResult:
    """What `resume_training` did: the update (`IncrementalUpdater.update`: events learned, items
    and users added, the method, its work in events x passes when it trained, seconds), how many
    of the new events are test targets of the model's recorded split (None: the model records no
    provenance), exact duplicate rows dropped, deleted users left out, where the model was saved
    and, on a served root, the model version published."""

    n_events: int
    new_items: int
    new_users: int
    method: str
    seconds: float
    out: str
    work_events: int | None = None
    n_test_targets: int | None = None
    n_duplicates: int = 0
    deleted_users_left_out: int = 0
    model_version: str | None = None

    @classmethod
    def of_update(cls, report: UpdateReport, out: str = "") -> ResumeResult:
        """From the updater's report."""
        return cls(
            n_events=report.n_events,
            new_items=report.new_items,
            new_users=report.new_users,
            method=report.method,
            seconds=report.seconds,
            out=out,
            work_events=report.work_events,
        )

    def to_json(self) -> dict[str, Any]:
        """The update's report, then ``n_test_targets``, ``n_duplicates`` and
        ``deleted_users_left_out`` when there is something to say, ``out`` and ``model_version``."""
        out: dict[str, Any] = {
            "n_events": self.n_events,
            "new_items": self.new_items,
            "new_users": self.new_users,
            "method": self.method,
        }
        if self.work_events is not None:
            out["work_events"] = self.work_events
        out["seconds"] = self.seconds
        if self.n_test_targets is not None:
            out["n_test_targets"] = self.n_test_targets
        if self.n_duplicates:
            out["n_duplicates"] = self.n_duplicates
        if self.deleted_users_left_out:
            out["deleted_users_left_out"] = self.deleted_users_left_out
        out["out"] = self.out
        if self.model_version is not None:
            out["model_version"] = self.model_version
        return out


def resume_training(
    model_dir: str | Path,
    events_file: str | Path,
    *,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    config: UpdateConfig | None = None,
    strict: bool = False,
    columns: str | None = None,
    store_url: str | None = None,
) -> tuple[Recommender, ResumeResult]:
    """Load a saved model, continue training it on the events in `events_file` (transfer / warm
    start: new users and items are added), save it to `out` (default: in place, or a new version
    on a served root; see the module docstring).

    `strict` fails on the first invalid row; `columns` maps the file's columns. Refuses (nothing
    saved, the model untouched) a file with no valid events and data changed since training."""
    src = Path(model_dir)
    events_path = Path(events_file).expanduser().resolve()
    new_log = read_events(events_path, strict=strict, columns=column_map(columns))
    if len(new_log) == 0:
        rep = new_log.report
        why = f"; first: {rep.invalid[0]}" if rep.invalid else ""
        raise DynrecError(
            f"{events_path}: no valid events ({rep.n_invalid} invalid rows{why}); {src} was not changed"
        )
    if new_log.report.n_invalid:
        log.warning("%s: %s", events_path, new_log.report.summary())
    url = served_store_url(src, store_url)
    store: StateStore | None = open_store(url) if url is not None else None
    try:
        served = isinstance(store, VersionStore) and store.current_version() is not None and out is None
        deleted: set[str] = (
            {t.user_id for t in store.tombstones()} if isinstance(store, VersionStore) else set()
        )
        if not served:
            model, report, shifts = _resume(src, new_log, events_path, deleted, data_dir, config, columns)
            dest = Path(out) if out is not None else src
            info = read_item_info(src) if (src / "item_info.json").is_file() else None
            save_model_dir(model, dest, info, shifts)
            return model, replace(report, out=str(dest))
        assert store is not None
        results: list[tuple[Recommender, ResumeResult, ShiftCalibration | None]] = []

        def build(parent: VersionRecord) -> Built:
            vdir = version_path(src, parent)
            results.append(_resume(vdir, new_log, events_path, deleted, data_dir, config, columns))
            model, report, shifts = results[-1]
            info = read_item_info(vdir) if (vdir / "item_info.json").is_file() else None
            assert isinstance(store, VersionStore)
            return Built(
                model,
                info,
                "refit" if report.method == "refit" and deleted else "update",
                events_hash=prov_.events_hash(new_log),
                n_events=len(new_log),
                deletion_generation=store.deletion_generation(),
                note=f"train --resume on {events_path.name}",
                shifts=shifts,
            )

        rec, _ = publish(store, src, build)
        model, report, _ = results[-1]
        return model, replace(report, out=str(src / rec.path), model_version=rec.id)
    finally:
        if store is not None:
            store.close()


def _resume(
    load_dir: Path,
    new_log: EventLog,
    events_path: Path,
    deleted: set[str],
    data_dir: str | Path | None,
    config: UpdateConfig | None,
    columns: str | None,
) -> tuple[Recommender, ResumeResult, ShiftCalibration | None]:
    """The model at `load_dir` trained on `new_log`, `deleted` users left out (see the module
    docstring); returns it with what the update did (saved nowhere yet: no `out`) and its
    interest-shift calibration on what it has now learned from (`dynrec.jobs.shifts.calibrate_for`
    on the updater's memory; None when there is none to make)."""
    model = Recommender.load(load_dir)
    assert model.item_vocab is not None and model.user_vocab is not None
    if deleted:
        new_log = new_log.with_frame(new_log.frame.filter(~pl.col("user_id").is_in(sorted(deleted))))
    history = None
    lineage = prov_.from_meta(model.meta, source=f"{load_dir.name}/config.json")
    n_test = n_valid = 0
    forget = False
    if lineage.provenance is not None or lineage.dataset:
        th = training_history(model, data_dir)
        history = without_users(th.data, deleted)
        forget = history.n_events != th.data.n_events
        prepared = th.prepared
        n_test = prov_.count_targets(new_log, prov_.target_frame(prepared.data, prepared.split.test))
        n_valid = prov_.count_targets(new_log, prov_.target_frame(prepared.data, prepared.split.valid))
        if n_test:
            log.warning(
                "%s: %d of its events are test targets of the model's %r split: the resumed model "
                "cannot be evaluated on that split any more (evaluate will refuse it)",
                events_path,
                n_test,
                prepared.split.kind,
            )
    else:
        log.warning(
            "resume: %s records no dataset; the update learns from the new events only", load_dir.name
        )
    # an older model (no provenance) gets none now either: its training data was never hashed, and
    # `evaluate` must keep refusing it once resumed (older resumes leaked test targets)
    entry = prov_.ResumedFile(
        str(events_path), prov_.events_hash(new_log), len(new_log), n_test, n_valid, columns
    )
    updater = IncrementalUpdater(model, history, config)
    report = ResumeResult.of_update(updater.update(new_log, refit=forget))
    lineage.with_resume(entry).write_to(model.meta)
    report = replace(
        report,
        n_test_targets=n_test if lineage.provenance is not None else None,
        n_duplicates=new_log.report.exact_duplicates,
        deleted_users_left_out=len(deleted),
    )
    return model, report, calibrate_for(model, updater.memory, read_item_info(load_dir))
