"""Recommendations for one user or one explicit history from a saved model (CLI / service path),
and seeding an online state store with the histories a model was trained on.

A known user's history is their *training history* as the model records it
(`dynrec.jobs.history.training_history`: the training part of the model's split plus resumed
events; never validation or test targets). `recommend_for(user=U)` and an `OnlineRecommender`
whose store was filled by `seed_store` see the same history, so they give the same items.

`recommend_for` scores at the run option ``precision`` (`options`, see
`dynrec.jobs.evaluate.scoring_model`) and, with `ann`, through an approximate index over the model's
item table (`dynrec.models.retrieval.retrieve`; the model must have the `QueryEmbeddings`
capability). The answer (`RecommendResult`) holds the `Recommendations` and how they were made;
its `to_json` is the one JSON form of it (``dynrec recommend --json``), which records
``"retrieval"`` (the index kind) and ``"precision"`` when they are not exact float32.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.events import Event
from dynrec.data.query import Explanation, QueryBatch, Recommendations, check_k, topk_stable
from dynrec.errors import DynrecError, UnknownIdError
from dynrec.jobs.evaluate import ann_index, scoring_model
from dynrec.jobs.explain import explain_items, explanation_unavailable
from dynrec.jobs.history import training_history
from dynrec.jobs.items import ItemInfo, read_item_info
from dynrec.jobs.model_root import without_users
from dynrec.models.base import Recommender
from dynrec.models.config import RunOptions
from dynrec.models.retrieval import AnnConfig, AnnIndex, retrieve
from dynrec.online.interests import InterestProfile, interest_profile, item_categories
from dynrec.online.store import StateStore
from dynrec.online.store.versions import VersionStore

__all__ = [
    "NewStoreSeed",
    "ProfileResult",
    "RecommendResult",
    "SeedResult",
    "history_batch",
    "popular_items",
    "profile_for",
    "recommend_for",
    "seed_new_store",
    "seed_store",
    "user_history_batch",
]

POPULAR_NOT_EXPLAINED = "the popular fallback (an empty history) has no explanations"


@dataclass(frozen=True)
class RecommendResult:
    """What `recommend_for` answers: one query's `Recommendations` (retrieval ``"exact"``,
    ``"ann:KIND"`` or ``"popular"`` for the popular fallback; with per-item explanations when they
    were asked for), for whom, by which model, at which reduced precision (None: float32, or not
    scored by the model), and the titles of the items it names (from ``item_info.json``)."""

    recommendations: Recommendations
    user: str | None
    model: str
    precision: str | None = None
    titles: Mapping[str, str] = field(default_factory=dict)
    explanation_unavailable: str | None = None
    """Why there are no explanations, when they were asked for and the model cannot give them."""

    @property
    def items(self) -> list[str]:
        return list(self.recommendations.item_ids[0])

    @property
    def scores(self) -> list[float]:
        return list(self.recommendations.scores[0])

    @property
    def retrieval(self) -> str:
        return self.recommendations.retrieval[0]

    @property
    def fallback(self) -> str | None:
        """``"popular"`` for the popular fallback (an empty history), else None."""
        return "popular" if self.retrieval == "popular" else None

    @property
    def explained(self) -> bool:
        """Whether explanations were asked for (they may still be unavailable)."""
        return self.recommendations.explanations is not None

    @property
    def explanations(self) -> Sequence[Explanation] | None:
        """Per recommended item, the history items that drove it, or None (not asked for, or
        unavailable: see `explanation_unavailable`)."""
        rows = self.recommendations.explanations
        return None if rows is None else rows[0]

    def title(self, item: str) -> str | None:
        return self.titles.get(item)

    def to_json(self) -> dict[str, Any]:
        """``{"user", "items", "scores", "model", "fallback"}``, ``"retrieval"`` (the index kind)
        for approximate retrieval, ``"precision"`` when not float32, ``"titles"`` (parallel to
        ``"items"``, null where unknown) when an item has a title or explanations were asked for,
        and with explanations ``"because"`` (per item ``[{"item", "title", "weight"}, ...]``, or
        None) and ``"explanation_unavailable"``."""
        out: dict[str, Any] = {
            "user": self.user,
            "items": self.items,
            "scores": self.scores,
            "model": self.model,
            "fallback": self.fallback,
        }
        if self.retrieval.startswith("ann:"):
            out["retrieval"] = self.retrieval.removeprefix("ann:")
        if self.precision is not None:
            out["precision"] = self.precision
        if self.explained or self.titles:
            out["titles"] = [self.title(i) for i in self.items]
        if self.explained:
            expl = self.explanations
            out["because"] = (
                None
                if expl is None
                else [[{"item": h, "title": self.title(h), "weight": w} for h, w in row] for row in expl]
            )
            out["explanation_unavailable"] = self.explanation_unavailable
        return out


@dataclass(frozen=True)
class ProfileResult:
    """What `profile_for` answers: the interest profile of a user or a history, by which model,
    and whether the model directory had item notes (``item_info.json``: tags and titles)."""

    user: str | None
    model: str
    has_item_info: bool
    profile: InterestProfile

    def to_json(self) -> dict[str, Any]:
        """``{"user", "model", "has_item_info"}`` and the profile's JSON (`InterestProfile.to_json`)."""
        return {
            "user": self.user,
            "model": self.model,
            "has_item_info": self.has_item_info,
            **self.profile.to_json(),
        }


@dataclass(frozen=True)
class SeedResult:
    """What `seed_store` did: the model whose training histories were appended, how many users
    and events; `store` names the store when the caller that opened it says how (``dynrec store
    seed``)."""

    model: str
    users: int
    events: int
    store: str | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"model": self.model, "users": self.users, "events": self.events}
        if self.store is not None:
            out["store"] = self.store
        return out


def history_batch(model: Recommender, items: list[str], user: str | None = None) -> QueryBatch:
    """A one-query batch from external item ids (ids unknown to the model are an error)."""
    assert model.item_vocab is not None and model.user_vocab is not None
    return QueryBatch.from_ids(
        model.item_vocab, [items], users=[user], user_vocab=model.user_vocab, unknown="error"
    )


def user_history_batch(model: Recommender, history: InteractionData, user: str) -> QueryBatch:
    """`user`'s training history as a one-query batch, built like `OnlineRecommender` builds it
    from a store (item indices and timestamps, no weights), so both score the same query."""
    assert model.user_vocab is not None
    if user not in history.user_vocab or history.lengths()[history.user_vocab.index(user)] == 0:
        raise UnknownIdError(f"user {user!r} has no training history in this model (pass --history)")
    u = history.user_vocab.index(user)
    a, b = int(history.indptr[u]), int(history.indptr[u + 1])
    return QueryBatch.from_histories(
        [history.items[a:b].tolist()],
        users=[model.user_vocab.index(user, policy="skip")],
        timestamps=[history.timestamps[a:b].tolist()],
    )


def recommend_for(
    model_dir: str | Path,
    *,
    user: str | None = None,
    history: list[str] | None = None,
    k: int = 10,
    data_dir: str | Path | None = None,
    explain: bool = False,
    options: RunOptions | None = None,
    ann: AnnConfig | AnnIndex | None = None,
) -> RecommendResult:
    """Top-k items for `user` (their training history, see the module docstring) or for an
    explicit `history` of item ids (oldest first). `k` must be >= 1; a `k` above the catalogue
    size returns every item that can be recommended.

    `options`: run options to load the model with (its ``precision`` gives an int8/bf16 scoring
    copy of a neural model). `ann`: an `AnnConfig` (an index is built over the model's item table)
    or a prebuilt `AnnIndex`: the top-k comes from the index (approximate, retrieval
    ``"ann:KIND"``); refused for a model without the `QueryEmbeddings` capability.

    The items' titles (and with `explain` those of the history items named) come from the model
    directory's ``item_info.json``. With `explain`: per recommended item, the history items that
    drove it (`dynrec.jobs.explain.explain_items`); none, with
    `RecommendResult.explanation_unavailable` saying why, for a model that is no `Explainer`.

    An empty `history` gets the popular fallback, as the service answers an anonymous session
    with no known item: `popular_items`, retrieval ``"popular"``."""
    k = check_k(k)
    model = scoring_model(Recommender.load(model_dir, options=options))
    assert model.item_vocab is not None
    info = read_item_info(model_dir)
    if user is None and history is not None and not history:
        popular = popular_items(model, k, data_dir)
        titles = _titles(info, popular.item_ids[0])
        if not explain:
            return RecommendResult(popular, None, model.name, titles=titles)
        return RecommendResult(
            popular.with_explanations([None]),
            None,
            model.name,
            titles=titles,
            explanation_unavailable=POPULAR_NOT_EXPLAINED,
        )
    q = _query(model, user, history, data_dir)
    index = ann_index(model, ann)
    idx, scores = model.recommend(q, k=k) if index is None else retrieve(model, q, k, index)
    served = "exact" if index is None else f"ann:{index.config.kind}"
    recs = Recommendations.from_topk(idx, scores, model.item_vocab, retrieval=served)
    precision = model.options.precision if model.options.precision != "float32" else None
    if not explain:
        return RecommendResult(recs, user, model.name, precision, titles=_titles(info, recs.item_ids[0]))
    expl = explain_items(model, q, recs.item_ids[0])
    named = [*recs.item_ids[0], *(h for row in expl or [] for h, _ in row)]
    return RecommendResult(
        recs.with_explanations([expl]),
        user,
        model.name,
        precision,
        titles=_titles(info, named),
        explanation_unavailable=explanation_unavailable(model),
    )


def popular_items(model: Recommender, k: int, data_dir: str | Path | None = None) -> Recommendations:
    """The popular fallback: the `k` items most frequent in the model's training history (see
    the module docstring; ties by item index), with their counts as scores (retrieval
    ``"popular"``) — what the service answers for a history it knows nothing of, before any event
    was posted to it."""
    assert model.item_vocab is not None
    try:
        hist = training_history(model, data_dir).data
    except (DynrecError, OSError) as exc:
        raise DynrecError(
            f"an empty history gets the popular fallback, which counts the model's training data: {exc}"
        ) from exc
    counts = np.bincount(hist.items, minlength=model.n_items)[: model.n_items].astype(np.float64)
    scores = torch.from_numpy(counts)[None, :].clone()
    scores[0, 0] = -torch.inf  # the padding index
    top, vals = topk_stable(scores, min(k, model.n_items))
    return Recommendations.from_topk(top, vals, model.item_vocab, retrieval="popular")


def _titles(info: ItemInfo, items: Sequence[str]) -> dict[str, str]:
    """The titles ``item_info.json`` gives `items` (items without one left out)."""
    out: dict[str, str] = {}
    for item in items:
        t = info.get(item, {}).get("title")
        if isinstance(t, str):
            out[item] = t
    return out


def _query(
    model: Recommender, user: str | None, history: list[str] | None, data_dir: str | Path | None
) -> QueryBatch:
    """The one-query batch of `user`'s training history, or of the explicit `history`."""
    if history is None:
        if user is None:
            raise DynrecError("give a user or a history")
        return user_history_batch(model, training_history(model, data_dir).data, user)
    try:
        return history_batch(model, history, user)
    except UnknownIdError as exc:
        raise DynrecError(f"history item not in the model's catalogue: {exc}") from exc


def profile_for(
    model_dir: str | Path,
    *,
    user: str | None = None,
    history: list[str] | None = None,
    short_window: int = 10,
    data_dir: str | Path | None = None,
    store: StateStore | None = None,
) -> ProfileResult:
    """The interest profile (`dynrec.online.interests.interest_profile`) of `user` (their training
    history, as `recommend_for` reads it; with `store`, the history the store holds — what a
    service on that store shows, events posted since the seeding included, items the model does
    not know skipped as the service skips them) or of an explicit `history`, over the categories
    the service's page uses (`dynrec.online.interests.item_categories`: the tags of the model
    directory's ``item_info.json``, else clusters of the model's item vectors; none without
    either), titles from it."""
    if isinstance(short_window, bool) or not isinstance(short_window, int) or short_window < 1:
        raise DynrecError(f"--short-window must be an integer >= 1, got {short_window!r}")
    model = Recommender.load(model_dir)
    if store is not None and user is not None and history is None:
        q = _stored_query(model, store, user)
    else:
        q = _query(model, user, history, data_dir)
    info = read_item_info(model_dir)
    cats = item_categories(model, item_info=info)
    tags = cats if cats.basis != "items" else None  # items themselves are no tags: none listed
    prof = interest_profile(model, q, info, short_window=short_window, categories=tags)
    return ProfileResult(user, model.name, bool(info), prof)


def _stored_query(model: Recommender, store: StateStore, user: str) -> QueryBatch:
    """`user`'s history in `store` as a one-query batch, built as `OnlineRecommender` builds it."""
    hist = store.history(user)
    if not hist.items:
        raise UnknownIdError(f"user {user!r} has no events in the store")
    assert model.item_vocab is not None and model.user_vocab is not None
    return QueryBatch.from_ids(
        model.item_vocab,
        [hist.items],
        users=[user],
        user_vocab=model.user_vocab,
        timestamps=[hist.timestamps],
    )


def _seed_plan(
    model_dir: str | Path, store: StateStore, data_dir: str | Path | None
) -> tuple[Recommender, InteractionData, list[str]]:
    """The model, its training histories less the users the store holds a tombstone of, and the
    external ids of the users with a non-empty history."""
    model = Recommender.load(model_dir)
    hist = training_history(model, data_dir).data
    if isinstance(store, VersionStore):
        hist = without_users(hist, {t.user_id for t in store.tombstones()})
    lens = hist.lengths()
    users = [u for u in range(1, hist.n_users) if lens[u] > 0]
    return model, hist, hist.user_vocab.to_ids(users)


def _append_histories(store: StateStore, hist: InteractionData) -> None:
    item_ids = hist.item_vocab.to_ids(hist.items)
    user_ids = hist.user_vocab.to_ids(hist.users)
    ts = hist.timestamps.tolist()
    # one batch: the store validates and writes it all or nothing; users' events stay in time order
    store.append(Event(user_ids[j], item_ids[j], int(ts[j])) for j in range(hist.n_events))


def seed_store(
    model_dir: str | Path,
    store: StateStore,
    *,
    data_dir: str | Path | None = None,
    replace: bool = False,
) -> SeedResult:
    """Append every user's training history (see the module docstring) to `store`, oldest first,
    so an `OnlineRecommender` over it starts where `recommend --user` is. Users the store holds a
    tombstone of (deleted) are left out: a deletion is never undone by seeding.

    Refuses a store that already holds events of one of these users (their history would be
    doubled) unless `replace`, which deletes those users' events and states first (a replaced
    history, not a deletion: no tombstone), and a store that already serves model versions (its
    events after the first version are what updates learn: seeded ones would be learned twice)."""
    if isinstance(store, VersionStore) and store.current_version() is not None:
        raise DynrecError(
            "the store already serves model versions (`dynrec models list`): seed it before its first "
            "`dynrec serve`, or seed a new store"
        )
    model, hist, names = _seed_plan(model_dir, store, data_dir)
    for name in names:
        if len(store.history(name, 1)):
            if not replace:
                raise DynrecError(
                    f"the store already holds events of user {name!r}: seed an empty store, or replace "
                    "those users' histories (--replace)"
                )
            store.delete_user(name, tombstone=False)
    _append_histories(store, hist)
    return SeedResult(model.name, len(names), hist.n_events)


@dataclass(frozen=True)
class NewStoreSeed:
    """What `seed_new_store` did: `seeded` when it filled the store, else why not (`skipped`;
    `quiet` when there was nothing to say: the store was seeded or served before)."""

    seeded: SeedResult | None
    skipped: str = ""
    quiet: bool = False

    def line(self, store: str) -> str | None:
        """The one line ``dynrec serve`` prints about it (None when quiet)."""
        if self.seeded is not None:
            s = self.seeded
            return (
                f"seeded the store {store} with the training histories of {s.users:,} users ({s.events:,} "
                "events), so they get personalised recommendations (--no-seed: leave the store as it is)"
            )
        return None if self.quiet else f"the store {store} was not seeded: {self.skipped}"


def seed_new_store(
    model_dir: str | Path, store: StateStore, *, data_dir: str | Path | None = None
) -> NewStoreSeed:
    """`seed_store` for a store that serves no model version yet and holds none of the model's
    users (``dynrec serve`` calls it before registering the model, unless --no-seed); a store that
    serves versions or holds some of these users is left as it is (quietly), and so is one whose
    training histories cannot be read (the reason is returned, the service still starts)."""
    if isinstance(store, VersionStore) and store.current_version() is not None:
        return NewStoreSeed(None, "the store already serves model versions", quiet=True)
    try:
        model, hist, names = _seed_plan(model_dir, store, data_dir)
    except DynrecError as exc:
        return NewStoreSeed(
            None,
            f"the model's training histories could not be read ({exc}); known users get the popular fallback",
        )
    if not names:
        return NewStoreSeed(None, "the model records no training histories")
    held = next((n for n in names if len(store.history(n, 1))), None)
    if held is not None:
        return NewStoreSeed(None, f"the store already holds events of user {held!r}", quiet=True)
    _append_histories(store, hist)
    return NewStoreSeed(SeedResult(model.name, len(names), hist.n_events))
