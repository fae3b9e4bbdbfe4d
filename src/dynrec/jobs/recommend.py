"""Recommendations for one user or one explicit history from a saved model (CLI / service path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from dynrec.data import registry
from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.errors import DynrecError, UnknownIdError
from dynrec.models.base import Recommender


def history_batch(model: Recommender, items: list[str], user: str | None = None) -> QueryBatch:
    """A one-query batch from external item ids (ids unknown to the model are an error)."""
    assert model.item_vocab is not None and model.user_vocab is not None
    idx = model.item_vocab.lookup(items, policy="error")
    uidx = model.user_vocab.index(user, policy="skip") if user is not None else 0
    return QueryBatch(np.array([uidx], np.int64), np.array([0, len(idx)], np.int64), idx.astype(np.int64))


def recommend_for(
    model_dir: str | Path,
    *,
    user: str | None = None,
    history: list[str] | None = None,
    k: int = 10,
    data_dir: str | Path | None = None,
) -> dict[str, Any]:
    model = Recommender.load(model_dir)
    assert model.item_vocab is not None
    if history is None:
        if user is None:
            raise DynrecError("give a user or a history")
        ds = model.meta.get("dataset")
        if ds is None:
            raise DynrecError("the model does not record its dataset; pass --history")
        data = InteractionData.from_events(registry.load(ds, data_dir))
        if user not in data.user_vocab:
            raise UnknownIdError(f"unknown user {user!r} in dataset {ds!r}")
        u = data.user_vocab.index(user)
        history = data.item_vocab.to_ids(data.sequence(u))
    try:
        q = history_batch(model, history, user)
    except UnknownIdError as exc:
        raise DynrecError(f"history item not in the model's catalogue: {exc}") from exc
    idx, scores = model.recommend(q, k=k)
    keep = np.isfinite(scores[0].numpy())
    return {
        "user": user,
        "items": model.item_vocab.to_ids(idx[0].numpy()[keep]),
        "scores": [float(s) for s in scores[0].numpy()[keep]],
        "model": model.name,
    }
