"""Update strategies of a replay between segments: incremental (`IncrementalUpdater`) or a full
retrain from scratch on everything revealed so far."""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from dynrec.models.base import Recommender
from dynrec.online.updater import IncrementalUpdater
from dynrec.replay.stream import ReplayData, revealed_data

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]

__all__ = ["UpdateFn", "incremental_fn", "retrain_fn"]


class UpdateFn(Protocol):
    def __call__(
        self, model: Recommender, events: IntArray, rd: ReplayData
    ) -> tuple[Recommender, dict[str, Any]]: ...


# ---- model updates ------------------------------------------------------------------------------


def incremental_fn(updater: IncrementalUpdater) -> UpdateFn:
    def fn(model: Recommender, events: IntArray, rd: ReplayData) -> tuple[Recommender, dict[str, Any]]:
        pos = rd.stream[events]
        d = rd.data
        rep = updater.update_indexed(
            d.users[pos],
            d.items[pos],
            d.timestamps[pos],
            d.weights[pos],
            item_vocab=d.item_vocab,
            user_vocab=d.user_vocab,
        )
        return updater.model, dict(rep.to_json())

    return fn


def retrain_fn(n_stream: int, *, holdout: bool, retrain_epochs: int) -> UpdateFn:
    """Refit from scratch on the pre-cut events + the stream events sent so far (each user's last
    pre-cut event held out when `holdout`), for `retrain_epochs` (0 = the initial fit's best epoch)."""
    sent = np.zeros(n_stream, dtype=bool)

    def fn(model: Recommender, events: IntArray, rd: ReplayData) -> tuple[Recommender, dict[str, Any]]:
        sent[events] = True
        train = revealed_data(rd, sent, holdout=holdout)
        config = model.config
        epochs = retrain_epochs or int(model.meta.get("best_epoch", 0) or 0)
        if epochs and "epochs" in config.option_names():
            config = config.with_overrides({"epochs": epochs})
        new = type(model)(config)  # same kind and hyper-parameters, fresh weights
        new.meta = {k: v for k, v in model.meta.items() if k in ("dataset", "split")}
        new.fit(train, None, options=model.options)
        for k in ("best_epoch",):
            if k in model.meta:
                new.meta[k] = model.meta[k]
        work = train.n_events * new.fit_passes()
        return new, {"n_events": int(len(events)), "method": "refit", "work_events": work}

    return fn
