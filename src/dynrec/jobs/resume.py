"""Warm start: continue training a saved model on new events (``dynrec train --resume``)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from dynrec.data import registry
from dynrec.data.dataset import InteractionData
from dynrec.data.events import EventLog
from dynrec.data.io import read_events
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError
from dynrec.models.base import Recommender
from dynrec.online.updater import IncrementalUpdater, UpdateConfig

log = logging.getLogger(__name__)

__all__ = ["resume_training"]


def resume_training(
    model_dir: str | Any,
    events_file: str | Any,
    *,
    out: str | Any | None = None,
    data_dir: str | Any | None = None,
    config: UpdateConfig | None = None,
) -> tuple[Recommender, dict[str, Any]]:
    """Load a saved model, continue training it on the events in `events_file` (transfer / warm
    start: new users and items are added), save it to `out` (default: in place).

    The replay sample comes from what the model learned before: its dataset (``meta["dataset"]``,
    when it can be loaded) and the event files of earlier resumes (``meta["update_files"]``)."""
    src = Path(model_dir)
    model = Recommender.load(src)
    assert model.item_vocab is not None and model.user_vocab is not None
    logs: list[EventLog] = []
    ds = model.meta.get("dataset")
    if ds:
        try:
            logs.append(registry.load(str(ds), data_dir))
        except DynrecError as exc:
            log.warning("resume: cannot load the model's dataset %r (%s); replaying new events only", ds, exc)
    for f in model.meta.get("update_files", []):
        if Path(f).exists():
            logs.append(read_events(Path(f)))
    history = None
    if logs:
        old = EventLog.concat(logs)
        history = InteractionData.from_events(
            old,
            event_weights=old.event_weights,
            user_vocab=Vocabulary(model.user_vocab.ids),
            item_vocab=Vocabulary(model.item_vocab.ids),
        )
        # the history may name ids the model never saw (e.g. test-only items): grow the model too
        model_iv, model_uv = model.item_vocab, model.user_vocab
        if history.n_items > model_iv.size or history.n_users > model_uv.size:
            history = _restrict(history, model_iv.size, model_uv.size, model_iv, model_uv)
    updater = IncrementalUpdater(model, history, config)
    new_log = read_events(Path(events_file))
    report = updater.update(new_log)
    files = [*model.meta.get("update_files", []), str(Path(events_file).resolve())]
    model.meta["update_files"] = files
    dest = Path(out) if out is not None else src
    model.save(dest)
    report["out"] = str(dest)
    return model, report


def _restrict(
    data: InteractionData, n_items: int, n_users: int, iv: Vocabulary, uv: Vocabulary
) -> InteractionData:
    """Events of `data` whose user and item are in the model's vocabularies."""
    keep = (data.items < n_items) & (data.users < n_users)
    sub = data.select(keep)
    return dataclasses.replace(sub, item_vocab=iv, user_vocab=uv, indptr=sub.indptr[: n_users + 1])
