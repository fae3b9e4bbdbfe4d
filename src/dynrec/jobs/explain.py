"""Why an item was recommended: shared by ``dynrec recommend --explain`` and the service.

`explain_items` gives, per recommended item, the history items that contributed most to its score
(the model's `Explainer` contributions; a history item that occurs several times has its events'
contributions summed); `dynrec.jobs.recommend.RecommendResult.to_json` adds titles for JSON output.
The interest profile (``dynrec profile``, the session, the page and the service) is
`dynrec.online.interests.interest_profile`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from dynrec.data.query import QueryBatch
from dynrec.models.base import Recommender
from dynrec.models.capabilities import Explainer

__all__ = [
    "EXPLAIN_TOP",
    "explain_items",
    "explanation_unavailable",
]

EXPLAIN_TOP = 3
"""History items shown per recommended item."""


def explanation_unavailable(model: Recommender) -> str | None:
    """Why `model` cannot explain its recommendations (None when it can)."""
    if isinstance(model, Explainer):
        return None
    return f"{model.name} does not attribute its scores to history events (not an Explainer)"


def explain_items(
    model: Recommender, batch: QueryBatch, items: Sequence[str], *, top: int = EXPLAIN_TOP
) -> list[list[tuple[str, float]]] | None:
    """For a one-query `batch` (the history, valid item indices) and recommended `items`
    (external ids): per item, the `top` history items by summed contribution, largest first
    (items whose contribution is zero or not finite are left out): (history item id,
    contribution) pairs, a `dynrec.data.query.Explanation` each. None when the model is no
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
    out: list[list[tuple[str, float]]] = []
    for j in range(len(items)):
        col = summed[:, j]
        order = torch.argsort(col, descending=True, stable=True)[:top].tolist()
        out.append([(names[i], float(col[i])) for i in order if torch.isfinite(col[i]) and col[i] != 0])
    return out
