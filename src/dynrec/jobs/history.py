"""What a model learned from: the training part of its recorded split plus the events of every
resume (never validation or test targets), rebuilt from its provenance with the data checked
unchanged. `recommend --user`, `seed_store`, `train --resume` and the service's version memory
use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dynrec.data.dataset import InteractionData
from dynrec.data.events import EventLog
from dynrec.data.io import read_events
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError
from dynrec.jobs import provenance as prov_
from dynrec.jobs.prepare import Prepared, check_vocab, column_map, legacy_prepared, prepare_recorded
from dynrec.jobs.provenance import Provenance
from dynrec.models.base import Recommender


@dataclass(frozen=True)
class TrainingHistory:
    """The events a model learned from, in the model's vocabulary: the training part of its
    recorded split plus the events of every resume (never validation or test targets)."""

    data: InteractionData
    prepared: Prepared
    provenance: Provenance | None


def read_resumed(entry: prov_.ResumedFile) -> EventLog:
    """A resumed event file, checked against the hash recorded when the model was resumed on it."""
    p = Path(entry.path)
    if not p.is_file():
        raise DynrecError(
            f"{p}: the model was resumed on this events file but it is gone; the model's training history "
            "cannot be rebuilt without it (restore it, or retrain)"
        )
    events = read_events(p, columns=column_map(entry.columns))
    got = prov_.events_hash(events)
    if got != entry.events_hash:
        raise DynrecError(
            f"{p} content changed since the model was resumed on it: events hash {got[:12]}… != recorded "
            f"{entry.events_hash[:12]}…; restore it, or retrain"
        )
    return events


def training_history(
    model: Recommender, data_dir: str | Path | None = None, *, dataset: str | None = None
) -> TrainingHistory:
    """What `model` learned from (see `TrainingHistory`), rebuilt from its recorded provenance (the
    data checked unchanged). Models without provenance use their recorded dataset and split
    (`dynrec.jobs.provenance.Lineage`)."""
    assert model.item_vocab is not None and model.user_vocab is not None
    lineage = prov_.from_meta(model.meta)
    provenance = lineage.provenance
    logs: list[EventLog] = []
    if provenance is None:
        prepared = legacy_prepared(lineage, dataset, data_dir, "pass --history")
        logs = [read_events(Path(f)) for f in lineage.legacy_updates if Path(f).is_file()]
    else:
        prepared = prepare_recorded(provenance, data_dir, dataset=dataset)
        logs = [read_resumed(r) for r in provenance.resumes]
    train = prepared.split.train
    check_vocab(model, train, "use")
    parts = [(train.users, train.items, train.timestamps, train.weights, train.values)]
    n_users, n_items = model.user_vocab.size, model.item_vocab.size
    for lg in logs:
        d = InteractionData.from_events(
            lg, user_vocab=Vocabulary(model.user_vocab.ids), item_vocab=Vocabulary(model.item_vocab.ids)
        )
        keep = (d.users < n_users) & (d.items < n_items)  # ids the model never took in are dropped
        parts.append((d.users[keep], d.items[keep], d.timestamps[keep], d.weights[keep], d.values[keep]))
    users, items, ts, w, v = (np.concatenate([p[j] for p in parts]) for j in range(5))
    data = InteractionData.from_arrays(
        users,
        items,
        timestamps=ts,
        weights=w,
        values=v,
        user_vocab=model.user_vocab,
        item_vocab=model.item_vocab,
        has_time=train.has_time,
    )
    return TrainingHistory(data, prepared, provenance)
