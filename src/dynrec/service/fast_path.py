"""The route every client calls, answered without FastAPI's per-request machinery.

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
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qsl

from fastapi.responses import Response
from fastapi.routing import APIRoute, APIRouter
from starlette.types import ASGIApp, Receive, Scope, Send

from dynrec.data.ids import MAX_ID_LENGTH, id_problem
from dynrec.service.schemas import MAX_K

log = logging.getLogger(__name__)

__all__ = ["FastRecommendations", "RecommendationsCall", "parse_recommendations"]

ROUTE = "/v1/users/{user_id}/recommendations"
PREFIX = "/v1/users/"
SUFFIX = "/recommendations"
_BOOLS = {"true": True, "false": False}

RecommendationsCall = Callable[[str, int, bool, bool], Awaitable[Response]]
"""(user id, k, exclude_seen, explain) -> the route's answer."""


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
