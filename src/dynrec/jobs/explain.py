"""Why an item was recommended, and what a user is into: shared by ``dynrec recommend --explain``,
``dynrec profile`` and the service.

* `explain_items` — per recommended item, the history items that contributed most to its score
  (the model's `Explainer` contributions; a history item that occurs several times has its events'
  contributions summed). `because` adds titles for JSON output.
* `interest_profile` — the JSON form of `dynrec.online.interests.interest_profile` (long- vs
  short-term tag shares, representative history items, the tags that rise), where the one
  definition of an interest profile and of its shares lives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from dynrec.data.query import QueryBatch
from dynrec.models.base import Recommender
from dynrec.models.capabilities import Explainer
from dynrec.online.interests import Categories
from dynrec.online.interests import interest_profile as profile_of

__all__ = [
    "EXPLAIN_TOP",
    "because",
    "explain_items",
    "explanation_unavailable",
    "interest_profile",
]

EXPLAIN_TOP = 3
"""History items shown per recommended item."""

Explanation = list[tuple[str, float]]
"""(history item id, contribution) pairs, largest first."""


def explanation_unavailable(model: Recommender) -> str | None:
    """Why `model` cannot explain its recommendations (None when it can)."""
    if isinstance(model, Explainer):
        return None
    return f"{model.name} does not attribute its scores to history events (not an Explainer)"


def explain_items(
    model: Recommender, batch: QueryBatch, items: Sequence[str], *, top: int = EXPLAIN_TOP
) -> list[Explanation] | None:
    """For a one-query `batch` (the history, valid item indices) and recommended `items`
    (external ids): per item, the `top` history items by summed contribution, largest first
    (items whose contribution is zero or not finite are left out). None when the model is no
    `Explainer`."""
    if not isinstance(model, Explainer):
        return None
    assert model.item_vocab is not None
    if not items or batch.items.size == 0:
        return [[] for _ in items]
    rec = torch.from_numpy(model.item_vocab.lookup(list(items), policy="error").astype(np.int64))[None, :]
    with torch.no_grad():
        contrib = model.explain(batch, rec).detach().float().cpu()  # [nnz, k]
    uniq, inv = np.unique(batch.items, return_inverse=True)
    summed = torch.zeros(len(uniq), contrib.shape[1]).index_add_(0, torch.from_numpy(inv), contrib)
    names = model.item_vocab.to_ids(uniq)
    out: list[Explanation] = []
    for j in range(len(items)):
        col = summed[:, j]
        order = torch.argsort(col, descending=True, stable=True)[:top].tolist()
        out.append([(names[i], float(col[i])) for i in order if torch.isfinite(col[i]) and col[i] != 0])
    return out


def because(
    explanations: Sequence[Explanation], item_info: Mapping[str, Mapping[str, Any]]
) -> list[list[dict[str, Any]]]:
    """JSON form of `explain_items`: per item ``[{"item", "title", "weight"}, ...]``."""
    return [
        [{"item": i, "title": _title(item_info, i), "weight": w} for i, w in expl] for expl in explanations
    ]


def _title(item_info: Mapping[str, Mapping[str, Any]], item: str) -> str | None:
    rec = item_info.get(item)
    t = rec.get("title") if rec is not None else None
    return t if isinstance(t, str) else None


# ---- interest profile --------------------------------------------------------------------------------


def interest_profile(
    model: Recommender,
    batch: QueryBatch,
    item_info: Mapping[str, Mapping[str, Any]],
    *,
    short_window: int = 10,
    categories: Categories | None = None,
) -> dict[str, Any]:
    """JSON form of `dynrec.online.interests.interest_profile` (the one profile of the session, the
    page, the service and ``dynrec profile``): ``{"long_term": W, "short_term": W, "shift": [[tag,
    rise], ...], "short_window"}`` where each window W is ``{"n_events", "tags": [[tag, share], ...]
    (top 5), "items": [title or id, ...] (3), "item_ids": [...]}``."""
    return profile_of(model, batch, item_info, short_window=short_window, categories=categories).to_json()
