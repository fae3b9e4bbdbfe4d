"""What a user is into: one definition of an interest profile for the session
(`OnlineRecommender.interests`, the page), the service's ``/profile`` route and ``dynrec profile``.

Categories (`Categories`): an ``[n_items, n_categories]`` matrix in the model's item index order
whose every row sums to 1 (or is empty): item tags or metadata genres, else k-means clusters of the
model's item vectors (`cluster_items`), else the items themselves.

Shares (`category_shares`, the one computation): every event spreads its weight (1, or a decay
weight) evenly over its item's categories — an item with two genres gives each half — and a
category's share is its weight over the window's total, so the shares of all categories sum to 1.
Each event counts the same whatever the number of its item's tags (a multi-hot count would let an
item with three genres weigh three times an item with one).

A profile (`interest_profile`) has a long-term window (the whole history) and a short-term one (the
last `short_window` events): per window the top category shares and representative history items —
its distinct history items nearest (cosine) to the mean item vector of the window's events when the
model has item vectors (`ItemEmbeddings`); otherwise the items whose categories carry the most share
(ties: most recent first); without categories, the most recent — and the categories whose
short-term share exceeds their long-term one (`shift`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from dynrec.data.items import ItemMetadata
from dynrec.data.query import QueryBatch, Recommendations
from dynrec.data.vocab import Vocabulary
from dynrec.models.base import Recommender
from dynrec.models.capabilities import ItemEmbeddings
from dynrec.models.retrieval import unit_item_vectors

__all__ = [
    "PROFILE_ITEMS",
    "PROFILE_TAGS",
    "Categories",
    "InterestProfile",
    "InterestWindow",
    "Interests",
    "ProfileWindow",
    "category_shares",
    "cluster_items",
    "ItemInfo",
    "interest_profile",
    "interests_of",
    "item_categories",
    "item_vectors",
    "percent",
    "tag_categories",
    "top_shares",
]

PROFILE_TAGS = 5
"""Categories listed per window of an interest profile."""

PROFILE_ITEMS = 3
"""Representative history items per window."""

ItemInfo = Mapping[str, Mapping[str, Any]]
"""Per item id, ``{"title": str | None, "tags": [str, ...]}`` (the form of ``item_info.json``)."""


@dataclass(frozen=True)
class Categories:
    """Item categories: `matrix` ``[n_items, n_categories]`` (row i = item index i, every row
    summing to 1 or empty), category `names`, and what they are (`basis`): "categories" (tags or
    metadata genres), "clusters" (of the model's item vectors) or "items"."""

    matrix: sp.csr_matrix
    names: list[str]
    basis: str

    @staticmethod
    def of(matrix: Any, names: Sequence[str], basis: str = "categories") -> Categories:
        """From a (multi-hot or weighted) ``[n_items, n_categories]`` matrix: rows normalised so
        that an item spreads a weight of 1 evenly over its categories."""
        m = sp.csr_matrix(matrix, dtype=np.float64)
        sums = np.asarray(m.sum(axis=1), dtype=np.float64).ravel()
        inv = np.divide(1.0, sums, out=np.zeros_like(sums), where=sums > 0)
        return Categories(sp.csr_matrix(sp.diags(inv) @ m), [str(n) for n in names], basis)

    @property
    def n_items(self) -> int:
        return int(self.matrix.shape[0])


def tag_categories(vocab: Vocabulary, item_info: ItemInfo) -> Categories:
    """The tags of `item_info` as categories over `vocab`'s items (a tag repeated on an item
    counts once; items without tags have an empty row)."""
    col: dict[str, int] = {}
    rows: list[int] = []
    cols: list[int] = []
    tagged = [(i, rec.get("tags")) for i, rec in item_info.items() if rec.get("tags")]
    idx = vocab.lookup([i for i, _ in tagged], policy="skip") if tagged else np.zeros(0, np.int64)
    for (_, tags), row in zip(tagged, idx.tolist(), strict=True):
        if row <= 0:
            continue
        for t in dict.fromkeys(str(t) for t in tags or []):
            rows.append(row)
            cols.append(col.setdefault(t, len(col)))
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.float64), (rows, cols)), shape=(vocab.size, len(col)))
    return Categories.of(m, list(col), "categories")


def category_shares(
    items: npt.NDArray[np.int64], cats: Categories, weights: npt.NDArray[np.floating[Any]] | None = None
) -> dict[str, float]:
    """Category -> share of the events `items` (item indices; per-event `weights`, default 1):
    see the module docstring. {} when no event has a category."""
    if not len(items) or cats.matrix.shape[1] == 0:
        return {}
    w = np.ones(len(items), dtype=np.float64) if weights is None else np.asarray(weights, np.float64)
    h = sp.csr_matrix((w, (np.zeros(len(items), dtype=np.int64), items)), shape=(1, cats.n_items))
    mass = np.asarray((h @ cats.matrix).todense(), dtype=np.float64).ravel()
    total = float(mass.sum())
    if total <= 0:
        return {}
    return {cats.names[j]: float(mass[j] / total) for j in np.flatnonzero(mass > 0).tolist()}


def top_shares(shares: Mapping[str, float], n: int) -> list[tuple[str, float]]:
    """The `n` largest shares, ties by name."""
    return sorted(shares.items(), key=lambda kv: (-kv[1], kv[0]))[:n]


def percent(share: float) -> int:
    """`share` (0..1) as a whole percentage, halves rounded up: the rounding of JavaScript's
    ``Math.round(share * 100)``, which the service's page applies to the same shares, so that
    ``dynrec profile`` and the page print the same numbers (Python's ``round`` and ``:.0%`` round
    halves to even: 0.125 would be 12% here and 13% there)."""
    x = share * 100.0
    whole = math.floor(x)
    return int(whole + 1 if x - whole >= 0.5 else whole)


# ---- the session's view (the page) -------------------------------------------------------------------


@dataclass(frozen=True)
class InterestWindow:
    """Top categories with their share of the window's weight (`category_shares`), and the model's
    top items when it reads only that window."""

    categories: list[tuple[str, float]]
    items: list[str]
    n_events: int


@dataclass(frozen=True)
class Interests:
    """A user's short- vs long-term interests as `OnlineRecommender.interests` gives them."""

    user_id: str
    short_term: InterestWindow
    long_term: InterestWindow
    basis: str
    """What the categories are (`Categories.basis`)."""


# ---- profiles ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProfileWindow:
    """One window of a profile: its event count, top category shares, representative history items
    (ids, and titles or ids)."""

    n_events: int
    tags: list[tuple[str, float]]
    item_ids: list[str]
    items: list[str]

    def to_json(self) -> dict[str, Any]:
        return {
            "n_events": self.n_events,
            "tags": [[t, s] for t, s in self.tags],
            "items": list(self.items),
            "item_ids": list(self.item_ids),
        }


@dataclass(frozen=True)
class InterestProfile:
    """Long- vs short-term interests and the categories rising in the short term (largest first)."""

    long_term: ProfileWindow
    short_term: ProfileWindow
    shift: list[tuple[str, float]]
    short_window: int

    def to_json(self) -> dict[str, Any]:
        """``{"long_term": W, "short_term": W, "shift": [[tag, rise], ...], "short_window"}`` where
        W is ``{"n_events", "tags": [[tag, share], ...], "items": [title or id, ...], "item_ids"}``."""
        return {
            "long_term": self.long_term.to_json(),
            "short_term": self.short_term.to_json(),
            "shift": [[t, r] for t, r in self.shift],
            "short_window": self.short_window,
        }


def _title(item_info: ItemInfo, item: str) -> str | None:
    rec = item_info.get(item)
    t = rec.get("title") if rec is not None else None
    return t if isinstance(t, str) else None


def _representative(
    items: npt.NDArray[np.int64],
    shares: Mapping[str, float],
    cats: Categories,
    unit: torch.Tensor | None,
    n: int,
) -> list[int]:
    """Positions of the window's `n` most representative distinct history items (module docstring)."""
    order: list[int] = []  # distinct items, most recent occurrence first
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
        share = np.array([shares.get(c, 0.0) for c in cats.names], dtype=np.float64)
        has = (cats.matrix[items] > 0).astype(np.float64)  # [len(items), n_categories]
        weight = np.asarray(has @ share, dtype=np.float64).ravel()
        ranked = sorted(order, key=lambda p: -weight[p])
    else:
        ranked = order
    return ranked[:n]


def _window(
    items: npt.NDArray[np.int64],
    ids: Sequence[str],
    cats: Categories,
    item_info: ItemInfo,
    unit: torch.Tensor | None,
) -> tuple[ProfileWindow, dict[str, float]]:
    shares = category_shares(items, cats)
    rep = [ids[p] for p in _representative(items, shares, cats, unit, PROFILE_ITEMS)]
    titled = [_title(item_info, i) or i for i in rep]
    return ProfileWindow(len(ids), top_shares(shares, PROFILE_TAGS), rep, titled), shares


def interest_profile(
    model: Recommender,
    batch: QueryBatch,
    item_info: ItemInfo,
    *,
    short_window: int = 10,
    categories: Categories | None = None,
) -> InterestProfile:
    """Long- vs short-term interests of a one-query `batch` (the history, oldest first; valid item
    indices): category shares from `categories` (default: the tags of `item_info`), titles from
    `item_info`; see the module docstring."""
    if short_window < 1:
        raise ValueError(f"short_window must be >= 1, got {short_window}")
    assert model.item_vocab is not None
    cats = categories if categories is not None else tag_categories(model.item_vocab, item_info)
    items = np.asarray(batch.items[batch.indptr[0] : batch.indptr[1]], dtype=np.int64)
    ids = model.item_vocab.to_ids(items)
    unit = unit_item_vectors(model) if items.size else None
    long, long_shares = _window(items, ids, cats, item_info, unit)
    a = max(0, len(ids) - short_window)
    short, short_shares = _window(items[a:], ids[a:], cats, item_info, unit)
    rise = {t: s - long_shares.get(t, 0.0) for t, s in short_shares.items()}
    shift = top_shares({t: r for t, r in rise.items() if r > 1e-12}, PROFILE_TAGS)
    return InterestProfile(long, short, shift, short_window)


# ---- item vectors and clusters (categories without tags) ------------------------------------------------


def item_vectors(model: Recommender) -> torch.Tensor | None:
    """[n_items, d] item vectors of a model implementing `ItemEmbeddings` (None otherwise)."""
    if isinstance(model, ItemEmbeddings):
        v = model.item_embeddings()
        if v.dim() == 2 and v.shape[0] == model.n_items:
            return v.detach().float().cpu()
    return None


def cluster_items(
    vecs: torch.Tensor, model: Recommender, n_clusters: int = 20, iters: int = 25
) -> Categories:
    """k-means (cosine, seeded) of the item vectors; each cluster is named by its 3 items nearest
    the centroid."""
    x = torch.nn.functional.normalize(vecs[1:].float(), dim=1)
    n = x.shape[0]
    k = max(1, min(n_clusters, n))
    gen = torch.Generator().manual_seed(model.config.seed)
    cent = x[torch.randperm(n, generator=gen)[:k]].clone()
    assign = torch.zeros(n, dtype=torch.int64)
    for _ in range(iters):
        assign = (x @ cent.T).argmax(1)
        for c in range(k):
            members = x[assign == c]
            if members.shape[0]:
                cent[c] = torch.nn.functional.normalize(members.mean(0), dim=0)
    sims = (x @ cent.T).gather(1, assign[:, None])[:, 0]
    names = []
    ids = model.item_vocab.ids if model.item_vocab is not None else []
    for c in range(k):
        mem = torch.nonzero(assign == c).squeeze(1)
        best = mem[torch.argsort(sims[mem], descending=True)[:3]].tolist()
        names.append(f"cluster {c}: " + ", ".join(ids[i] for i in best) if ids else f"cluster {c}")
    rows = np.arange(1, n + 1)
    m = sp.csr_matrix((np.ones(n), (rows, assign.numpy())), shape=(n + 1, k))
    return Categories.of(m, names, "clusters")


def item_categories(
    model: Recommender,
    *,
    given: Categories | None = None,
    item_info: ItemInfo | None = None,
    metadata: ItemMetadata | None = None,
) -> Categories:
    """The categories of `model`'s items: `given` when it covers the catalogue, else the tags of
    `item_info`, else the genres of `metadata`, else `given` grown with empty rows (the catalogue
    grew), else clusters of the model's item vectors, else the items themselves."""
    assert model.item_vocab is not None
    n = model.n_items
    if given is not None and given.n_items == n:
        return given
    if item_info:
        cats = tag_categories(model.item_vocab, item_info)
        if cats.names:
            return cats
    if metadata is not None:
        m, names = metadata.genre_matrix(model.item_vocab)
        if len(names):
            return Categories.of(m, names, "categories")
    if given is not None and given.basis == "categories" and given.n_items < n:
        m = given.matrix
        grown = sp.vstack([m, sp.csr_matrix((n - m.shape[0], m.shape[1]))]).tocsr()
        return Categories(grown, given.names, given.basis)
    vecs = item_vectors(model)
    if vecs is not None:
        return cluster_items(vecs, model)
    names = ["<pad>", *model.item_vocab.ids]
    return Categories(sp.identity(n, dtype=np.float64, format="csr"), names, "items")


def interests_of(
    model: Recommender,
    user: str,
    q: QueryBatch,
    cats: Categories,
    *,
    short_window: int = 10,
    short_half_life: float = 0.0,
    top: int = 5,
) -> Interests:
    """Short-term (the last `short_window` events of the one-user query `q`, optionally decayed
    with `short_half_life` events) vs long-term (all of it) interests: the top categories of each
    with their share (`category_shares`, the shares of ``/profile`` and ``dynrec profile``), and
    the model's top items when it reads only that part of the history."""
    n = len(q.items)
    a = max(0, n - short_window)
    back = np.arange(n - 1, -1, -1, dtype=np.float64)[a:]
    w_short = np.power(0.5, back / short_half_life) if short_half_life > 0 else np.ones(n - a)
    short_q = QueryBatch(
        q.users, np.array([0, n - a]), q.items[a:], None if q.timestamps is None else q.timestamps[a:]
    )
    short = top_shares(category_shares(q.items[a:], cats, w_short), top)
    long = top_shares(category_shares(q.items, cats), top)
    return Interests(
        user,
        InterestWindow(short, _top_items(model, short_q, q, top), n - a),
        InterestWindow(long, _top_items(model, q, q, top), n),
        cats.basis,
    )


def _top_items(model: Recommender, q: QueryBatch, seen: QueryBatch, top: int) -> list[str]:
    assert model.item_vocab is not None
    if not len(q.items):
        return []
    idx, vals = model.recommend(q, top, exclude=seen)
    return list(Recommendations.from_topk(idx, vals, model.item_vocab).item_ids[0])
