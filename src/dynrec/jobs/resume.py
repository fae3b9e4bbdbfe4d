"""Warm start: continue training a saved model on new events (``dynrec train --resume``).

The model's memory (what the update replays, co-occurrence counts, fold-ins) is its *training
history* (`dynrec.jobs.train.training_history`): the training part of its recorded split plus the
events of earlier resumes — never the split's validation or test targets, so a resumed model stays
evaluable on its split. The resume is recorded in the model's provenance (file, content hash, and
how many of its events are validation/test targets of the split: `evaluate` refuses a model whose
training included test targets).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dynrec.data.io import read_events
from dynrec.errors import DynrecError
from dynrec.jobs import provenance as prov_
from dynrec.jobs.train import column_map, training_history
from dynrec.models.base import Recommender
from dynrec.online.updater import IncrementalUpdater, UpdateConfig

log = logging.getLogger(__name__)

__all__ = ["resume_training"]


def resume_training(
    model_dir: str | Path,
    events_file: str | Path,
    *,
    out: str | Path | None = None,
    data_dir: str | Path | None = None,
    config: UpdateConfig | None = None,
    strict: bool = False,
    columns: str | None = None,
) -> tuple[Recommender, dict[str, Any]]:
    """Load a saved model, continue training it on the events in `events_file` (transfer / warm
    start: new users and items are added), save it to `out` (default: in place).

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
    model = Recommender.load(src)
    assert model.item_vocab is not None and model.user_vocab is not None
    history = None
    provenance = prov_.from_meta(model.meta, source=f"{src}/config.json")
    entry: prov_.ResumedFile | None = None
    if provenance is not None or model.meta.get("dataset"):
        th = training_history(model, data_dir)
        history = th.data
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
        entry = prov_.ResumedFile(
            str(events_path), prov_.events_hash(new_log), len(new_log), n_test, n_valid, columns
        )
        # an older model (no provenance) gets none now either: its training data was never hashed,
        # and `evaluate` must keep refusing it once resumed (older resumes leaked test targets)
    else:
        log.warning("resume: %s records no dataset; the update learns from the new events only", src)
    updater = IncrementalUpdater(model, history, config)
    report = updater.update(new_log)
    model.meta["update_files"] = [*model.meta.get("update_files", []), str(events_path)]
    if provenance is not None and entry is not None:
        model.meta[prov_.PROVENANCE_KEY] = provenance.with_resume(entry).to_dict()
        report["n_test_targets"] = entry.n_test_targets
    dest = Path(out) if out is not None else src
    model.save(dest)
    report["out"] = str(dest)
    if new_log.report.exact_duplicates:
        report["n_duplicates"] = new_log.report.exact_duplicates
    return model, report
