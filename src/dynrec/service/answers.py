"""What the routes answer about one stored user besides their recommendations: per recommended
item the history items that drove it (`explain_user`, `explain`), the interest profile of
``/v1/users/{id}/profile`` and the interests of ``/v1/users/{id}`` — both from
`dynrec.online.interests`, over the same categories (the session's), so the page and the profile
give the same shares for the same user."""

from __future__ import annotations

from collections.abc import Sequence

from dynrec.data.query import QueryBatch
from dynrec.jobs.explain import EXPLAIN_TOP, explain_items
from dynrec.models.capabilities import Explainer
from dynrec.online.interests import InterestProfile, Interests, interest_profile
from dynrec.online.store import History, StateStore
from dynrec.service.holder import ModelHolder

__all__ = ["EXPLAIN_TOP", "explain", "explain_user", "profile", "stored_query", "user_detail"]

Explanations = list[list[tuple[str, float]]]
"""Per recommended item, (history item id, contribution) pairs, largest first."""


def stored_query(store: StateStore, holder: ModelHolder, user: str) -> QueryBatch:
    """`user`'s stored history as a one-query batch (items the model does not know skipped)."""
    hist = store.history(user)
    assert holder.model.user_vocab is not None
    return QueryBatch.from_ids(
        holder.item_vocab,
        [hist.items],
        users=[user],
        user_vocab=holder.model.user_vocab,
        timestamps=[hist.timestamps],
    )


def explain(holder: ModelHolder, q: QueryBatch, items: Sequence[str]) -> Explanations | None:
    """Per recommended item, the `EXPLAIN_TOP` history items contributing most to its score
    (repeated history items summed; `dynrec.jobs.explain.explain_items`); None when the model is
    no `Explainer`."""
    return explain_items(holder.model, q, items, top=EXPLAIN_TOP)


def explain_user(
    store: StateStore, holder: ModelHolder, user: str, items: Sequence[str]
) -> Explanations | None:
    """`explain` over `user`'s stored history."""
    if not isinstance(holder.model, Explainer):
        return None
    return explain(holder, stored_query(store, holder, user), items)


def profile(store: StateStore, holder: ModelHolder, user: str, short_window: int) -> InterestProfile | None:
    """`user`'s interest profile over their stored history (`dynrec.online.interests.interest_profile`
    with the session's categories when they are tags or genres, titles from the holder's item
    info); None when the store holds no event of them."""
    if store.stamp(user).n_events == 0:
        return None
    q = stored_query(store, holder, user)
    with holder.lock:
        cats = holder.online.categories()
    tags = cats if cats.basis == "categories" else None
    return interest_profile(holder.model, q, holder.item_info, short_window=short_window, categories=tags)


def user_detail(
    store: StateStore, holder: ModelHolder, user: str, limit: int
) -> tuple[int, History, Interests] | None:
    """(events appended, the last `limit` events, `Interests`) or None when the store holds no
    event of `user`."""
    n = store.stamp(user).n_events
    if n == 0:
        return None
    hist = store.history(user, limit)
    with holder.lock:
        interests = holder.online.interests(user)
    return n, hist, interests
