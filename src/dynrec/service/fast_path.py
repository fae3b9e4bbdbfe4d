"""The routes every client calls, answered without FastAPI's per-request machinery.

``GET /v1/users/{user_id}/recommendations`` is most of a service's traffic. Through FastAPI each
request builds a `Request`, walks the router's regular expressions and solves the route's
dependencies (path and query parameters through pydantic) — more CPU than scoring a user inside a
micro-batch. `FastRecommendations` answers a plainly well-formed request of that route itself: the
path's user id passes the id rule, the query holds only ``k`` (digits, 1..1000), ``exclude_seen``
and ``explain`` (``true`` / ``false``), each at most once. Everything else — other spellings
FastAPI accepts, invalid values, errors while answering (a read: answering again is harmless) —
goes on to the app, so every 4xx and its wording stay FastAPI's. The answer is the route's own
(`dynrec.service.answers_json`), and the request is labelled with the route in the metrics
(``scope["route"]``), as if the router had matched it.

``POST /v1/events`` is the producers' route. Through FastAPI a 100-event body is parsed twice
(the batch-size check, then the body) and validated by pydantic before `validate_events` checks it
again. `FastEvents` parses it once (orjson) and takes it when it is plainly well-formed: the key
holds (when the service has one), a JSON content type (or none), ``{"events": [...]}`` with at most ``max_batch`` events, each an
object of the route's fields whose values have the plain JSON types the schema takes (ids strings,
timestamp and weight numbers, an ASCII event type) and pass `validate_events`. Everything else goes
to the app with the body replayed, before anything is written — so every 4xx and its wording stay
the app's. Once the events are handed to `answer` they are not handed on again: an error after
that point is answered as the app answers it (`answer` maps the library's errors), never by
applying the events a second time.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl

import orjson
from fastapi.responses import Response
from fastapi.routing import APIRoute, APIRouter
from starlette.types import ASGIApp, Receive, Scope, Send

from dynrec.data.events import MAX_TIMESTAMP, Event, InvalidEventError, ValidEvents, validate_events
from dynrec.data.ids import MAX_ID_LENGTH, id_problem
from dynrec.service.edge import replay_body
from dynrec.service.schemas import HTTP_EVENT_TYPE, MAX_EVENT_TYPE_LENGTH, MAX_K

log = logging.getLogger(__name__)

__all__ = [
    "EventsCall",
    "FastEvents",
    "FastRecommendations",
    "RecommendationsCall",
    "parse_events",
    "parse_recommendations",
]

ROUTE = "/v1/users/{user_id}/recommendations"
PREFIX = "/v1/users/"
SUFFIX = "/recommendations"
_BOOLS = {"true": True, "false": False}

RecommendationsCall = Callable[[str, int, bool, bool], Awaitable[Response]]
"""(user id, k, exclude_seen, explain) -> the route's answer."""
EventsCall = Callable[[ValidEvents], Awaitable[Response]]
"""A batch of checked events -> the route's answer (the events applied, or the app's error)."""

EVENTS_ROUTE = "/v1/events"
_EVENT_FIELDS = frozenset({"user_id", "item_id", "timestamp", "event_type", "weight", "event_id"})


def parse_recommendations(path: str, query: bytes) -> tuple[str, int, bool, bool] | None:
    """(user id, k, exclude_seen, explain) of a plainly well-formed request of the route (see the
    module docstring), else None (the app decides)."""
    if not path.startswith(PREFIX) or not path.endswith(SUFFIX):
        return None
    user = path[len(PREFIX) : len(path) - len(SUFFIX)]
    if not user or "/" in user or len(user) > MAX_ID_LENGTH or id_problem(user, "user") is not None:
        return None
    k, flags = 10, {"exclude_seen": True, "explain": False}
    seen: set[str] = set()
    if query:
        try:
            pairs = parse_qsl(query.decode("latin-1"), keep_blank_values=True)
        except ValueError:
            return None
        for name, value in pairs:
            if name in seen:
                return None
            seen.add(name)
            if name == "k":
                if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_K:
                    return None
                k = int(value)
            elif name in flags and value in _BOOLS:
                flags[name] = _BOOLS[value]
            else:
                return None
    return user, k, flags["exclude_seen"], flags["explain"]


class FastRecommendations:
    """Answers plainly well-formed ``GET /v1/users/{user_id}/recommendations`` requests with
    `answer`, passing every other request to `app` (see the module docstring). `router`: the
    app's router, whose route of that path is set as ``scope["route"]`` for the metrics (looked
    up on the first request: the middleware is added before the routes)."""

    def __init__(self, app: ASGIApp, *, answer: RecommendationsCall, router: APIRouter) -> None:
        self.app = app
        self.answer = answer
        self.router = router
        self._route: APIRoute | None = None

    def route(self) -> APIRoute:
        if self._route is None:
            self._route = next(r for r in self.router.routes if isinstance(r, APIRoute) and r.path == ROUTE)
        return self._route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") != "GET" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        parsed = parse_recommendations(str(scope.get("path", "")), scope.get("query_string", b""))
        if parsed is None:
            await self.app(scope, receive, send)
            return
        try:
            response = await self.answer(*parsed)
        except Exception:  # the app answers it again, with its own error handling
            log.debug("fast path for %s: handing the request to the app", scope.get("path"), exc_info=True)
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route()
        await response(scope, receive, send)


def _plain_number(value: object) -> bool:
    return (type(value) is int) or (type(value) is float and math.isfinite(value))


def _plain_event(e: Any, now: int) -> Event | None:
    """The `Event` of one event object whose fields have the schema's plain types (the schema's
    defaults filled in as `EventIn.to_event` fills them), else None. The id rule, the weight's
    sign are `validate_events`' to check, as for the app (the same rule as the schema's); the
    timestamp's range is checked here, before fractions are truncated."""
    if type(e) is not dict or not e.keys() <= _EVENT_FIELDS:
        return None
    user, item = e.get("user_id"), e.get("item_id")
    if type(user) is not str or type(item) is not str:
        return None
    ts, et, w, eid = e.get("timestamp"), e.get("event_type"), e.get("weight"), e.get("event_id")
    if ts is not None and not (_plain_number(ts) and 0 <= ts <= MAX_TIMESTAMP):
        return None
    if et is not None and not (
        type(et) is str
        and et.isascii()
        and et.isprintable()
        and et.strip(" ")
        and len(et) <= MAX_EVENT_TYPE_LENGTH
    ):
        return None
    if (w is not None and not _plain_number(w)) or (eid is not None and type(eid) is not str):
        return None
    return Event(
        user,
        item,
        now if ts is None else int(ts),
        HTTP_EVENT_TYPE if et is None else et,
        1.0 if w is None else float(w),
        eid,
    )


def parse_events(raw: bytes, max_batch: int, now: int | None = None) -> ValidEvents | None:
    """The checked events of a plainly well-formed ``POST /v1/events`` body (see the module
    docstring; `now`: the timestamp of events that give none, default the current second), else
    None (the app decides)."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if type(body) is not dict or body.keys() != {"events"}:
        return None
    events = body["events"]
    if type(events) is not list or len(events) > max_batch:
        return None
    t = int(time.time()) if now is None else now
    out: list[Event] = []
    for e in events:
        ev = _plain_event(e, t)
        if ev is None:
            return None
        out.append(ev)
    try:
        return validate_events(out)
    except InvalidEventError:
        return None


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The request body, and whether the client stayed (False: it went away mid-body)."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), True


class FastEvents:
    """Answers plainly well-formed ``POST /v1/events`` requests with `answer`, passing every other
    request to `app` with its body replayed (see the module docstring). `api_key`: the service's
    key (None = none); `max_batch`: the most events in one request; `router` as for
    `FastRecommendations`."""

    def __init__(
        self, app: ASGIApp, *, answer: EventsCall, router: APIRouter, api_key: str | None, max_batch: int
    ) -> None:
        self.app = app
        self.answer = answer
        self.router = router
        self.key = api_key.encode() if api_key is not None else None
        self.max_batch = max_batch
        self._route: APIRoute | None = None

    def route(self) -> APIRoute:
        if self._route is None:
            self._route = next(
                r
                for r in self.router.routes
                if isinstance(r, APIRoute) and r.path == EVENTS_ROUTE and "POST" in (r.methods or ())
            )
        return self._route

    def _authorised(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        if self.key is None:
            return True
        given = [v for k, v in headers if k == b"x-api-key"]  # decoded as the app's header check does
        return len(given) == 1 and hmac.compare_digest(given[0].decode("latin-1").encode(), self.key)

    @staticmethod
    def _json_body(headers: Sequence[tuple[bytes, bytes]]) -> bool:
        """Whether the app would read the body as JSON: no content type, or ``application/json``
        / ``application/*+json`` (other bodies are validated as bytes: the app's 422)."""
        types = [v for k, v in headers if k == b"content-type"]
        if not types:
            return True
        mime = types[0].split(b";", 1)[0].strip().lower()
        return len(types) == 1 and (
            mime == b"application/json" or (mime.startswith(b"application/") and mime.endswith(b"+json"))
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope.get("method") != "POST"
            or scope.get("path") != EVENTS_ROUTE
            or scope.get("root_path")
            or not self._authorised(scope.get("headers") or [])
            or not self._json_body(scope.get("headers") or [])
        ):
            await self.app(scope, receive, send)
            return
        raw, stayed = await _read_body(receive)
        if not stayed:
            return
        events = parse_events(raw, self.max_batch)
        if events is None:
            await self.app(scope, replay_body(raw, receive), send)
            return
        scope["route"] = self.route()
        response = await self.answer(events)
        await response(scope, receive, send)
