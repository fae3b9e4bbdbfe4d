"""What the routes answer about one stored user besides their recommendations: per recommended
item the history items that drove it (`explain_user`, `explain`), the interest profile of
``/v1/users/{id}/profile``, the interests of ``/v1/users/{id}`` and of an anonymous session
(`session_interests`) — all from `dynrec.online.interests`, over the same categories (the
session's), so the page and the profile give the same shares for the same user — the user's interest shifts (`user_shifts`: the session's
detector, newest first; `named_shifts` names their sides for people), and the catalogue search of
``GET /v1/items`` (`search_items`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from dynrec.data.query import QueryBatch
from dynrec.jobs.explain import EXPLAIN_TOP, explain_items
from dynrec.jobs.shifts import shift_names
from dynrec.models.capabilities import Explainer
from dynrec.online.interests import InterestProfile, Interests, interest_profile, interests_of
from dynrec.online.shifts import Shift
from dynrec.online.store import History, StateStore
from dynrec.service.holder import ModelHolder

__all__ = [
    "EXPLAIN_TOP",
    "UserDetail",
    "explain",
    "explain_user",
    "named_shifts",
    "profile",
    "search_items",
    "session_interests",
    "stored_query",
    "user_detail",
    "user_shifts",
]

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
    with the session's categories — tags or genres, else clusters of the item vectors, as
    ``dynrec profile`` takes them; none when they are the items themselves — titles from the
    holder's item info); None when the store holds no event of them."""
    if store.stamp(user).n_events == 0:
        return None
    q = stored_query(store, holder, user)
    with holder.lock:
        cats = holder.online.categories()
    tags = cats if cats.basis != "items" else None
    return interest_profile(holder.model, q, holder.item_info, short_window=short_window, categories=tags)


def session_interests(holder: ModelHolder, history: Sequence[str], short_window: int = 10) -> Interests:
    """The interests of an anonymous session's item ids (oldest first; ids the model does not know
    skipped), computed as a stored user's (`OnlineRecommender.interests`: `interests_of` over the
    session's categories), so the page shows a session what it shows a user with that history."""
    q = QueryBatch.from_ids(holder.item_vocab, [list(history)])
    with holder.lock:
        cats = holder.online.categories()
        return interests_of(holder.model, "", q, cats, short_window=short_window)


@dataclass(frozen=True)
class UserDetail:
    """What ``GET /v1/users/{id}`` shows: events appended, the last events, the interests and the
    recent interest shifts (newest first)."""

    n_events: int
    history: History
    interests: Interests
    shifts: list[Shift]


def user_detail(store: StateStore, holder: ModelHolder, user: str, limit: int) -> UserDetail | None:
    """`user`'s `UserDetail` with their last `limit` events, or None when the store holds no
    event of them."""
    n = store.stamp(user).n_events
    if n == 0:
        return None
    hist = store.history(user, limit)
    with holder.lock:
        interests = holder.online.interests(user)
    return UserDetail(n, hist, interests, user_shifts(holder, user))


def named_shifts(holder: ModelHolder, shifts: Sequence[Shift]) -> list[Shift]:
    """`shifts` with their sides named for people (`dynrec.jobs.shifts.shift_names`: categories as
    they are, items by their titles)."""
    det = holder.online.shift_detector
    if det is None:
        return list(shifts)
    info = holder.item_info
    return [
        replace(s, from_=tuple(shift_names(det, s.from_, info)), to=tuple(shift_names(det, s.to, info)))
        for s in shifts
    ]


def user_shifts(holder: ModelHolder, user: str) -> list[Shift]:
    """`user`'s recent interest shifts, newest first (none when the version detects none)."""
    with holder.lock:
        shifts = holder.online.shifts(user)
    return named_shifts(holder, shifts)


def search_items(holder: ModelHolder, query: str, limit: int) -> list[tuple[str, str | None]]:
    """Catalogue items (id, title) whose title or id contains `query` (case-insensitive), in
    catalogue order; the first `limit` items when `query` is empty."""
    q = query.strip().lower()
    out: list[tuple[str, str | None]] = []
    for item in holder.item_vocab.ids:
        title = holder.titles.get(item)
        if not q or q in item.lower() or (title is not None and q in title.lower()):
            out.append((item, title))
            if len(out) >= limit:
                break
    return out
