"""Why an item was recommended, and what a user is into: shared by ``dynrec recommend --explain``,
``dynrec profile`` and the service.

* `explain_items` — per recommended item, the history items that contributed most to its score
  (the model's `Explainer` contributions; a history item that occurs several times has its events'
  contributions summed). `because` adds titles for JSON output.
* `interest_profile` — long-term (the whole history) vs short-term (the last `short_window`
  events) interests: tag shares, representative history items, and the tags that rise.

Tag shares: every event spreads a weight of 1 evenly over its item's tags (an item with two genres
gives each 0.5; items without tags give nothing), and a tag's share is its weight over the
window's total, so the shares of all tags sum to 1. Events are not decayed: the short-term window
is the recency view.

Representative items of a window: its distinct history items nearest (cosine) to the mean item
vector of the window's events when the model has item vectors (`ItemEmbeddings`); otherwise the
items whose tags carry the most share (ties: most recent first); without tags, the most recent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from dynrec.data.query import QueryBatch
from dynrec.models.base import Recommender
from dynrec.models.capabilities import Explainer, ItemEmbeddings

__all__ = [
    "EXPLAIN_TOP",
    "because",
    "explain_items",
    "explanation_unavailable",
    "interest_profile",
]

EXPLAIN_TOP = 3
"""History items shown per recommended item."""

PROFILE_TAGS = 5
"""Tags listed per window of an interest profile."""

PROFILE_ITEMS = 3
"""Representative history items per window."""

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


def _tag_shares(ids: Sequence[str], item_info: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Tag -> share of the events `ids` (see the module docstring); {} without tags."""
    mass: dict[str, float] = {}
    for i in ids:
        rec = item_info.get(i)
        tags = list(dict.fromkeys(rec.get("tags") or [])) if rec is not None else []
        for t in tags:
            mass[t] = mass.get(t, 0.0) + 1.0 / len(tags)
    total = sum(mass.values())
    return {t: m / total for t, m in mass.items()} if total > 0 else {}


def _top(shares: Mapping[str, float], n: int) -> list[tuple[str, float]]:
    """The `n` largest shares, ties by tag name."""
    return sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def _unit_vectors(model: Recommender) -> torch.Tensor | None:
    if not isinstance(model, ItemEmbeddings):
        return None
    v = model.item_embeddings().detach().float().cpu()
    if v.dim() != 2 or v.shape[0] != model.n_items:
        return None
    return torch.nn.functional.normalize(v, dim=1)


def _representative(
    items: npt.NDArray[np.int64],
    ids: Sequence[str],
    shares: Mapping[str, float],
    item_info: Mapping[str, Mapping[str, Any]],
    unit: torch.Tensor | None,
    n: int,
) -> list[str]:
    """The window's `n` most representative distinct history items (see the module docstring)."""
    # distinct items, most recent occurrence first
    order: list[int] = []
    seen: set[int] = set()
    for pos in range(len(items) - 1, -1, -1):
        if int(items[pos]) not in seen:
            seen.add(int(items[pos]))
            order.append(pos)
    if unit is not None:
        vecs = unit[torch.from_numpy(items.astype(np.int64))]
        centre = torch.nn.functional.normalize(vecs.mean(0), dim=0)
        sims = (vecs @ centre).tolist()
        ranked = sorted(order, key=lambda p: -sims[p])  # stable: ties keep the most recent first
    elif shares:

        def weight(p: int) -> float:
            rec = item_info.get(ids[p])
            return sum(shares.get(t, 0.0) for t in dict.fromkeys((rec or {}).get("tags") or []))

        ranked = sorted(order, key=lambda p: -weight(p))
    else:
        ranked = order
    return [ids[p] for p in ranked[:n]]


def _window(
    items: npt.NDArray[np.int64],
    ids: Sequence[str],
    item_info: Mapping[str, Mapping[str, Any]],
    unit: torch.Tensor | None,
) -> dict[str, Any]:
    shares = _tag_shares(ids, item_info)
    rep = _representative(items, ids, shares, item_info, unit, PROFILE_ITEMS)
    return {
        "n_events": len(ids),
        "tags": [[t, s] for t, s in _top(shares, PROFILE_TAGS)],
        "items": [_title(item_info, i) or i for i in rep],
        "item_ids": rep,
    }


def interest_profile(
    model: Recommender,
    batch: QueryBatch,
    item_info: Mapping[str, Mapping[str, Any]],
    *,
    short_window: int = 10,
) -> dict[str, Any]:
    """Long- vs short-term interests of a one-query `batch` (the history, oldest first; valid item
    indices) from the items' tags and titles in `item_info` (see the module docstring):
    ``{"long_term": W, "short_term": W, "shift": [[tag, rise], ...]}`` where each window W is
    ``{"n_events", "tags": [[tag, share], ...] (top 5), "items": [title or id, ...] (3),
    "item_ids": [...]}`` and `shift` lists the tags whose short-term share exceeds their
    long-term share, by how much (largest first, at most 5)."""
    if short_window < 1:
        raise ValueError(f"short_window must be >= 1, got {short_window}")
    assert model.item_vocab is not None
    items = np.asarray(batch.items[batch.indptr[0] : batch.indptr[1]], dtype=np.int64)
    ids = model.item_vocab.to_ids(items)
    unit = _unit_vectors(model) if items.size else None
    long = _window(items, ids, item_info, unit)
    a = max(0, len(ids) - short_window)
    short = _window(items[a:], ids[a:], item_info, unit)
    long_shares = _tag_shares(ids, item_info)
    short_shares = _tag_shares(ids[a:], item_info)
    rise = {t: s - long_shares.get(t, 0.0) for t, s in short_shares.items()}
    shift = [[t, r] for t, r in _top({t: r for t, r in rise.items() if r > 1e-12}, PROFILE_TAGS)]
    return {"long_term": long, "short_term": short, "shift": shift, "short_window": short_window}
