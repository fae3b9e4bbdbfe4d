"""Request and response bodies of the HTTP API (pydantic, at the edge only).

Validation is strict: ids follow the one id rule of every door (`dynrec.data.ids`: non-empty
strings, no numbers, no leading/trailing whitespace, at most 512 characters, no comma or newline
in item ids), timestamps and weights finite numbers (no strings, no booleans; ``NaN``,
``Infinity`` and ``1e400`` refused), no string holds a lone surrogate (``"\\ud800"``: not UTF-8),
unknown fields refused. FastAPI turns a failure into a 422 whose ``loc`` names the field (for
events: ``["body", "events", INDEX, FIELD]``).
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    model_validator,
)

from dynrec.data.events import MAX_TIMESTAMP, Event
from dynrec.data.ids import MAX_ID_LENGTH, IdKind, id_problem

__all__ = [
    "HTTP_EVENT_TYPE",
    "MAX_EVENT_TYPE_LENGTH",
    "MAX_K",
    "MAX_ID_LENGTH",
    "DeleteOut",
    "EventIn",
    "EventsIn",
    "EventsOut",
    "EventShiftOut",
    "ExplanationOut",
    "HealthOut",
    "HistoryEventOut",
    "InterestProfileOut",
    "InterestsOut",
    "ItemId",
    "ItemTextIn",
    "ItemsAddIn",
    "ItemsAddOut",
    "ItemOut",
    "ItemsOut",
    "ModelVersionOut",
    "ProfileOut",
    "ProfileWindowOut",
    "RecommendationsOut",
    "RecommendedItemOut",
    "ReloadIn",
    "ReloadOut",
    "SessionIn",
    "SessionInterestsIn",
    "ShiftOut",
    "SimilarItemOut",
    "SimilarOut",
    "UserId",
    "UserOut",
    "UsersOut",
    "id_rule",
]


def id_rule(kind: IdKind) -> AfterValidator:
    """The id rule of `dynrec.data.ids` as a pydantic validator (a 422 naming the field)."""

    def check(value: str) -> str:
        problem = id_problem(value, kind)
        if problem is not None:
            raise ValueError(f"{kind} id {problem}")
        return value

    return AfterValidator(check)


UserId = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_LENGTH), id_rule("user")]
"""A user id (`dynrec.data.ids`)."""
ItemId = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_LENGTH), id_rule("item")]
"""An item id (`dynrec.data.ids`): also no comma, newline or carriage return."""

Number = StrictInt | StrictFloat

HTTP_EVENT_TYPE = "view"
"""Event type of an HTTP event that names none."""
MAX_EVENT_TYPE_LENGTH = 64
"""The longest event type an HTTP event may name."""


MAX_K = 1000
"""The longest list a request may ask for (``k``; every route that takes one). The library's own
check (`dynrec.data.query.check_k`) has no upper bound; the service caps what one request costs."""


class _Strict(BaseModel):
    """Unknown fields refused. (A string holding a lone surrogate never validates: pydantic
    refuses it as "unable to parse raw data as a unicode string", naming the field.)"""

    model_config = ConfigDict(extra="forbid")


class EventIn(_Strict):
    user_id: UserId
    item_id: ItemId
    timestamp: Annotated[Number, Field(ge=0, le=MAX_TIMESTAMP, allow_inf_nan=False)] | None = Field(
        default=None, description="seconds UTC (fractions truncated); default: now"
    )
    event_type: (
        Annotated[StrictStr, Field(min_length=1, max_length=MAX_EVENT_TYPE_LENGTH, pattern=r"\S")] | None
    ) = Field(default=None, description='default "view"')
    weight: Annotated[Number, Field(gt=0, allow_inf_nan=False)] | None = Field(
        default=None, description="event weight (default 1), stored with the event and exported as its value"
    )
    event_id: UserId | None = Field(
        default=None,
        description="the producer's id of the event: one whose id the store already applied for the user "
        "is skipped, so a retried request applies once",
    )

    def to_event(self) -> Event:
        """The `Event` (timestamp default: now, UTC seconds, fractions truncated; type default
        `HTTP_EVENT_TYPE`; weight default 1)."""
        ts = int(time.time()) if self.timestamp is None else int(self.timestamp)
        et = self.event_type if self.event_type is not None else HTTP_EVENT_TYPE
        weight = 1.0 if self.weight is None else float(self.weight)
        return Event(self.user_id, self.item_id, ts, et, weight, self.event_id)


class EventsIn(_Strict):
    events: list[EventIn]


class ShiftOut(BaseModel):
    """One detected shift of a user's interests (`dynrec.online.shifts`)."""

    when: int = Field(description="timestamp of the event after which the shift was flagged")
    event_index: int = Field(
        description="0-based position of that event among the user's events whose item the model knows"
    )
    score: float = Field(description="cosine distance between the interests before and after")
    from_: list[str] = Field(
        alias="from", description="what the interests moved from: categories, or representative titles"
    )
    to: list[str] = Field(description="what they moved to: categories, or representative titles")


class EventShiftOut(ShiftOut):
    """A shift that an event of the request completed."""

    user_id: str


class EventsOut(BaseModel):
    accepted: int
    unknown_items: int = Field(description="events whose item the loaded model does not know yet")
    shifts: list[EventShiftOut] = Field(
        default_factory=list, description="interest shifts these events completed, in event order per user"
    )


class ExplanationOut(BaseModel):
    item_id: str
    weight: float


class RecommendedItemOut(BaseModel):
    item_id: str
    score: float
    title: str | None
    explanation: list[ExplanationOut] | None


class RecommendationsOut(BaseModel):
    user_id: str | None
    items: list[RecommendedItemOut]
    fallback: Literal["popular"] | None
    model_version: str
    retrieval: str = "exact"
    """What ranked the list: ``exact`` (every item scored), ``ann:<kind>`` (the served FAISS index,
    `dynrec serve --ann`), ``popular`` (the fallback)."""


class SessionIn(_Strict):
    history: Annotated[list[ItemId], Field(max_length=10_000)] = Field(description="item ids, oldest first")
    k: Annotated[StrictInt, Field(ge=1, le=MAX_K)] = 10
    exclude_seen: StrictBool = True
    explain: StrictBool = False


class SessionInterestsIn(_Strict):
    history: Annotated[list[ItemId], Field(max_length=10_000)] = Field(description="item ids, oldest first")
    short_window: Annotated[StrictInt, Field(ge=1, le=10_000)] = Field(
        10, description="events of the short-term window (the most recent)"
    )


class HistoryEventOut(BaseModel):
    item_id: str
    timestamp: int
    event_type: str
    title: str | None


class InterestProfileOut(BaseModel):
    categories: list[tuple[str, float]]
    items: list[str]


class InterestsOut(BaseModel):
    basis: str
    short_term: InterestProfileOut
    long_term: InterestProfileOut


class UserOut(BaseModel):
    user_id: str
    n_events: int
    history: list[HistoryEventOut]
    interests: InterestsOut
    last_shift: ShiftOut | None = Field(description="the user's latest interest shift (null: none)")
    shifts: list[ShiftOut] = Field(description="recent interest shifts, newest first")


class UsersOut(BaseModel):
    users: list[str]


class ItemOut(BaseModel):
    item_id: str
    title: str | None


class ItemsOut(BaseModel):
    items: list[ItemOut]


class SimilarItemOut(BaseModel):
    item_id: str
    score: float
    title: str | None


class SimilarOut(BaseModel):
    item_id: str
    items: list[SimilarItemOut]


class ModelVersionOut(BaseModel):
    model_dir: str
    """The version's directory relative to the model root ("." for the root itself)."""
    version: str


class DeleteOut(BaseModel):
    user_id: str
    deleted: bool
    deleted_events: int
    model_versions_with_user: list[ModelVersionOut]
    """Recorded model versions still trained with the user's data; the next update publishes a
    version free of it (and `dynrec models rollback` warns before returning to one of these)."""


class ReloadIn(_Strict):
    """Either a model version id recorded in the store (a rollback) or a saved model directory under
    the served model root (relative to it), published as a new version."""

    version: Annotated[StrictStr | None, Field(min_length=1, max_length=512, pattern=r"\S")] = None
    model_dir: Annotated[StrictStr | None, Field(min_length=1, max_length=4096, pattern=r"\S")] = None

    @model_validator(mode="after")
    def _one_of(self) -> ReloadIn:
        if (self.version is None) == (self.model_dir is None):
            raise ValueError("give exactly one of 'version' and 'model_dir'")
        return self

    @property
    def ref(self) -> str:
        ref = self.version if self.version is not None else self.model_dir
        assert ref is not None
        return ref


class ReloadOut(BaseModel):
    model_version: str


class HealthOut(BaseModel):
    status: Literal["ok"]
    model: str
    model_version: str
    store: str
    model_kind: str = ""
    """How the version came to be: initial, update, refit, items, reload."""
    parent_version: str | None = None


class ItemTextIn(_Strict):
    item_id: ItemId
    text: Annotated[StrictStr, Field(min_length=1, max_length=20_000, pattern=r"\S")] = Field(
        description="the text the model's encoder embeds (title, description, categories, ...)"
    )
    title: Annotated[StrictStr, Field(max_length=2_000)] | None = None
    tags: Annotated[
        list[Annotated[StrictStr, Field(min_length=1, max_length=200)]], Field(max_length=100)
    ] = Field(default_factory=list, description="genres / categories (for interest profiles)")


class ItemsAddIn(_Strict):
    items: Annotated[list[ItemTextIn], Field(min_length=1, max_length=10_000)]
    skip_existing: StrictBool = Field(
        default=False, description="skip ids already in the catalogue (default: refuse the request)"
    )


class ItemsAddOut(BaseModel):
    added: list[str]
    skipped: list[str]
    n_items: int
    model_version: str


class ProfileWindowOut(BaseModel):
    n_events: int
    tags: list[tuple[str, float]] = Field(description="top tags with their share of the window")
    items: list[str] = Field(description="titles (else ids) of the most representative history items")
    item_ids: list[str]


class ProfileOut(BaseModel):
    user_id: str
    long_term: ProfileWindowOut
    short_term: ProfileWindowOut
    shift: list[tuple[str, float]] = Field(
        description="tags whose short-term share exceeds the long-term one"
    )
    short_window: int
    model_version: str
    last_shift: ShiftOut | None = Field(description="the user's latest interest shift (null: none)")
    shifts: list[ShiftOut] = Field(description="recent interest shifts, newest first")
