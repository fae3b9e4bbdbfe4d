"""The HTTP service: `create_app(settings)` -> a FastAPI app over a `Runtime` (docs at /docs).

Routes (JSON in and out; the page at ``/``, its files under ``/static``):

* ``POST /v1/events`` — events stored durably (one store transaction, committed before the 2xx),
  all or nothing; they move the users' live states at once, so the very next recommendation
  follows them. Items the model does not know are stored and counted (``unknown_items``); they
  become recommendable at the next ``POST /v1/admin/update``.
* ``GET /v1/users/{user_id}/recommendations`` — from the user's cached state (micro-batched with
  concurrent requests); users without stored events get the popular fallback (``"fallback":
  "popular"``). ``POST /v1/recommendations`` — the same for an anonymous session's history.
* ``GET /v1/users/{user_id}``, ``GET /v1/users``, ``GET /v1/items``, ``GET /v1/items/{id}/similar``;
  ``POST /v1/interests`` — an anonymous session's interests (`dynrec.service.page`).
* ``GET /v1/users/{user_id}/profile`` — long- vs short-term interests (tags, representative titles).
  Both user routes carry the user's interest shifts (``last_shift``, ``shifts`` newest first;
  `dynrec.online.shifts`), and ``POST /v1/events`` answers the shifts its events completed.
* ``POST /v1/items`` — items without events join the live model from their text (models that read
  item text), published as a new model version.
* ``DELETE /v1/users/{user_id}`` — removes everything held about the user and records a tombstone
  (see `Runtime.delete_user`); lists the model versions still trained with the user.
* ``POST /v1/admin/update`` — incremental training on the store's events since the current version,
  published as a new version (409 while another update holds the store's lease);
  ``POST /v1/admin/reload`` — a recorded version made current again, or a model directory under
  the served root published.
* ``GET /healthz``, ``GET /metrics`` (Prometheus text).

Model versions live in the store (`dynrec.service.runtime`): every process serving the root follows
the store's current version within a second, and every response names the version that answered it
(``X-Model-Version``).

With an API key set, ``X-API-Key`` must carry it on writes, deletes and admin routes (401
otherwise); reads and anonymous-session recommendations stay open. Without one, every POST needs
``Content-Type: application/json`` (415), so that no form on another site can post here; a
service that knows its bound address answers only the ``Host`` names that reach it (421; see
`dynrec.service.edge` and ``--allowed-host``). Bodies above
``max_body_bytes`` (by ``Content-Length`` or by the bytes actually sent) and event batches above
``max_batch`` get 413; invalid input 422 naming the field (for events its index too).
"""

from __future__ import annotations

import asyncio
import hmac
import inspect
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated

import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dynrec.data.events import InvalidEventError, ValidEvents
from dynrec.errors import DynrecError, UnknownIdError
from dynrec.jobs.items import ExistingItemsError
from dynrec.jobs.model_root import PublishConflict
from dynrec.online.interests import ProfileWindow
from dynrec.service.answers_json import JSONBytes, events_json, recommendations_json, shift_json
from dynrec.service.edge import EdgeGuardMiddleware, json_safe, redact_paths, replay_body
from dynrec.service.fast_path import FastEvents, FastRecommendations
from dynrec.service.metrics import CONTENT_TYPE, MetricsMiddleware, ServiceMetrics
from dynrec.service.page import add_page, docs_app, interests_out
from dynrec.service.runtime import (
    ModelHolder,
    Runtime,
    UpdateRunning,
    serving_threads,
)
from dynrec.service.schemas import (
    MAX_ID_LENGTH,
    MAX_K,
    DeleteOut,
    EventsIn,
    EventsOut,
    HealthOut,
    HistoryEventOut,
    ItemOut,
    ItemsAddIn,
    ItemsAddOut,
    ItemsOut,
    ModelVersionOut,
    ProfileOut,
    ProfileWindowOut,
    RecommendationsOut,
    ReloadIn,
    ReloadOut,
    SessionIn,
    ShiftOut,
    SimilarItemOut,
    SimilarOut,
    UserOut,
    UsersOut,
    id_rule,
)
from dynrec.service.settings import ServiceSettings
from dynrec.text import ItemTexts

log = logging.getLogger(__name__)

__all__ = ["BodyLimitMiddleware", "app_from_env", "create_app"]

UserId = Annotated[str, PathParam(min_length=1, max_length=MAX_ID_LENGTH), id_rule("user")]
ItemId = Annotated[str, PathParam(min_length=1, max_length=MAX_ID_LENGTH), id_rule("item")]
K = Annotated[int, Query(ge=1, le=MAX_K, description="list length; above the catalogue size: every item")]


class BodyLimitMiddleware:
    """413 for a request body above `max_bytes`: refused by its ``Content-Length`` before reading,
    or — without one, or when it lies — once the bytes received pass the limit (the body is
    buffered up to the limit and then handed to the app)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None:
            try:
                declared = int(length)
            except ValueError:
                declared = -1
            if declared < 0:
                await JSONResponse({"detail": "bad Content-Length"}, status_code=400)(scope, receive, send)
                return
            if declared > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.max_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(body)
            more = bool(message.get("more_body", False))
        await self.app(scope, replay_body(b"".join(chunks), receive), send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        detail = f"request body larger than {self.max_bytes} bytes"
        await JSONResponse({"detail": detail}, status_code=413)(scope, receive, send)


class VersionHeaderMiddleware:
    """Names the model version serving now in every HTTP response (``X-Model-Version``)."""

    def __init__(self, app: ASGIApp, version: Callable[[], str]) -> None:
        self.app = app
        self.version = version

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_version(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), (b"x-model-version", self.version().encode())]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_version)


def _key_check(api_key: str | None) -> Callable[..., None]:
    expected = api_key.encode() if api_key is not None else None

    def require_key(x_api_key: Annotated[str | None, Header()] = None) -> None:
        """The X-API-Key header must carry the service's key (when one is set)."""
        if expected is None:
            return
        if x_api_key is None or not hmac.compare_digest(x_api_key.encode(), expected):
            raise HTTPException(401, "missing or wrong X-API-Key", headers={"WWW-Authenticate": "X-API-Key"})

    return require_key


def _batch_check(max_batch: int) -> Callable[[Request], Awaitable[None]]:
    async def check_batch(request: Request) -> None:
        """413 for more than `max_batch` events (checked before the events are validated). Parsed
        by orjson; what it refuses and the standard parser reads (``NaN``, ``Infinity``) by the
        standard parser, so the check sees every body FastAPI will parse."""
        raw = await request.body()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            try:
                body = json.loads(raw)
            except (ValueError, UnicodeDecodeError):
                return  # not JSON: the body validation reports it (422)
        events = body.get("events") if isinstance(body, dict) else None
        if isinstance(events, list) and len(events) > max_batch:
            raise HTTPException(413, f"{len(events)} events in one request; at most {max_batch}")

    return check_batch


def create_app(settings: ServiceSettings) -> FastAPI:
    """The service for `settings`: loads the model and opens the store now (errors surface here)."""
    metrics = ServiceMetrics()
    runtime = Runtime(settings, metrics)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            runtime.close()

    app = docs_app(  # Swagger UI from this service's files, no CDN (dynrec.service.page)
        title="dynrec",
        summary="Dynamic-interest recommendations: events in, live recommendations out.",
        version="1",
        lifespan=lifespan,
    )
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.metrics = metrics

    async def recommend_user(user_id: str, k: int, exclude_seen: bool, explain: bool) -> Response:
        rec = await asyncio.wrap_future(
            runtime.recommend(user_id, k, exclude_seen=exclude_seen, explain=explain)
        )
        return JSONBytes(recommendations_json(user_id, rec))

    async def ingest_events(events: ValidEvents) -> Response:
        try:
            done = await run_in_threadpool(runtime.ingest, events)
        except Exception as exc:  # answered by the app's handler of its class, when it has one
            handler = next(
                (app.exception_handlers[c] for c in type(exc).__mro__ if c in app.exception_handlers), None
            )
            if handler is None:
                raise
            answer = handler(Request({"type": "http", "method": "POST", "path": "/v1/events"}), exc)
            return await answer if inspect.isawaitable(answer) else answer
        return JSONBytes(events_json(done))

    # innermost: after the edge checks, inside the metrics (dynrec.service.fast_path)
    app.add_middleware(FastRecommendations, answer=recommend_user, router=app.router)
    app.add_middleware(
        FastEvents,
        answer=ingest_events,
        router=app.router,
        api_key=settings.api_key,
        max_batch=settings.max_batch,
    )
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(VersionHeaderMiddleware, version=lambda: runtime.holder.version)
    # Host checking; without a key, JSON-only writes (dynrec.service.edge): before any body is read
    app.add_middleware(EdgeGuardMiddleware, hosts=settings.host_names(), json_only=settings.api_key is None)
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # outermost: also counts 413s
    write = [Depends(_key_check(settings.api_key))]

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's own 422, except that offending inputs its handler fails to encode (answering
        500, found by tests/unit/service/test_fuzz.py) are shown safely: bytes that are not UTF-8
        (a body sent without a JSON content type) with replacement characters, ``NaN`` /
        ``Infinity`` / ``1e400`` as strings, lone surrogates escaped (`edge.json_safe`)."""
        detail = jsonable_encoder(
            exc.errors(), custom_encoder={bytes: lambda b: b.decode("utf-8", "replace")}
        )
        return JSONResponse({"detail": json_safe(detail)}, status_code=422)

    @app.exception_handler(ExistingItemsError)
    async def existing_items(_: Request, exc: ExistingItemsError) -> JSONResponse:
        detail = f'{exc}; send "skip_existing": true to add only the new ones'
        return JSONResponse({"detail": detail}, status_code=400)

    @app.exception_handler(InvalidEventError)
    async def invalid_event(_: Request, exc: InvalidEventError) -> JSONResponse:
        loc = ["body", "events", exc.index, exc.field]
        return JSONResponse(
            {"detail": [{"loc": loc, "msg": str(exc), "type": "value_error"}]}, status_code=422
        )

    @app.exception_handler(UpdateRunning)
    async def update_running(_: Request, exc: UpdateRunning) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(PublishConflict)
    async def publish_conflict(_: Request, exc: PublishConflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(UnknownIdError)
    async def unknown_id(_: Request, exc: UnknownIdError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    server_dirs = [Path(settings.model_dir).resolve(), Path.cwd().resolve()]

    @app.exception_handler(DynrecError)
    async def dynrec_error(_: Request, exc: DynrecError) -> JSONResponse:
        """400 with the error's message, the server's own folders (the model root, the working
        directory) left out of the paths it names (`edge.redact_paths`)."""
        return JSONResponse({"detail": redact_paths(str(exc), server_dirs)}, status_code=400)

    @app.post(
        "/v1/events",
        response_model=EventsOut,
        dependencies=[*write, Depends(_batch_check(settings.max_batch))],
        tags=["events"],
    )
    def post_events(body: EventsIn) -> Response:
        """Store events (durably, all or nothing) and move the users' live states."""
        done = runtime.ingest([e.to_event() for e in body.events])
        return JSONBytes(events_json(done))

    @app.get("/v1/users/{user_id}/recommendations", response_model=RecommendationsOut, tags=["recommend"])
    async def user_recommendations(
        user_id: UserId, k: K = 10, exclude_seen: bool = True, explain: bool = False
    ) -> Response:
        """The user's top k from their live state; the popular fallback for users without events.
        (Plainly well-formed requests are answered by `dynrec.service.fast_path` before the router.)"""
        return await recommend_user(user_id, k, exclude_seen, explain)

    @app.post("/v1/recommendations", response_model=RecommendationsOut, tags=["recommend"])
    def session_recommendations(body: SessionIn) -> Response:
        """Top k for an anonymous session's history (item ids, oldest first)."""
        rec = runtime.recommend_history(
            body.history, body.k, exclude_seen=body.exclude_seen, explain=body.explain
        )
        return JSONBytes(recommendations_json(None, rec))

    @app.get("/v1/users", response_model=UsersOut, tags=["users"])
    def list_users(limit: Annotated[int, Query(ge=1, le=1000)] = 20) -> UsersOut:
        """Some users that have events (the page's picker)."""
        return UsersOut(users=runtime.users(limit))

    @app.get("/v1/users/{user_id}", response_model=UserOut, tags=["users"])
    def get_user(user_id: UserId, limit: Annotated[int, Query(ge=1, le=10_000)] = 50) -> UserOut:
        """The user's last `limit` events (most recent last), short- vs long-term interests and
        recent interest shifts."""
        got = runtime.user(user_id, limit)
        if got is None:
            raise HTTPException(404, f"user {user_id!r} has no events")
        detail, holder = got
        hist = detail.history
        history = [
            HistoryEventOut(item_id=i, timestamp=int(t), event_type=et, title=holder.title(i))
            for i, t, et in zip(hist.items, hist.timestamps.tolist(), hist.event_types, strict=True)
        ]
        shifts = [ShiftOut.model_validate(shift_json(s)) for s in detail.shifts]
        return UserOut(
            user_id=user_id,
            n_events=detail.n_events,
            history=history,
            interests=interests_out(detail.interests),
            last_shift=shifts[0] if shifts else None,
            shifts=shifts,
        )

    @app.get("/v1/users/{user_id}/profile", response_model=ProfileOut, tags=["users"])
    def user_profile(
        user_id: UserId, short_window: Annotated[int, Query(ge=1, le=10_000)] = 10
    ) -> ProfileOut:
        """Long- vs short-term interests of the user's stored history: tag (genre/category) shares,
        representative titles, the tags rising in the last `short_window` events, and the user's
        recent interest shifts."""
        got = runtime.profile(user_id, short_window)
        if got is None:
            raise HTTPException(404, f"user {user_id!r} has no events")
        prof, holder = got
        shifts = [ShiftOut.model_validate(shift_json(s)) for s in runtime.shifts(user_id, holder)]

        def window(w: ProfileWindow) -> ProfileWindowOut:
            return ProfileWindowOut(n_events=w.n_events, tags=w.tags, items=w.items, item_ids=w.item_ids)

        return ProfileOut(
            user_id=user_id,
            long_term=window(prof.long_term),
            short_term=window(prof.short_term),
            shift=prof.shift,
            short_window=short_window,
            model_version=holder.version,
            last_shift=shifts[0] if shifts else None,
            shifts=shifts,
        )

    @app.delete("/v1/users/{user_id}", response_model=DeleteOut, dependencies=write, tags=["users"])
    def delete_user(user_id: UserId) -> DeleteOut:
        """Remove the user's events, cached state and the updater's copy; list the saved model
        versions trained with the user's data (their weights still hold it: retrain without it)."""
        res = runtime.delete_user(user_id)
        versions = [ModelVersionOut(model_dir=d, version=v) for d, v in res.model_versions]
        return DeleteOut(
            user_id=user_id,
            deleted=res.deleted,
            deleted_events=res.deleted_events,
            model_versions_with_user=versions,
        )

    @app.get("/v1/items", response_model=ItemsOut, tags=["items"])
    def search_items(
        query: Annotated[str, Query(max_length=200)] = "", limit: Annotated[int, Query(ge=1, le=1000)] = 20
    ) -> ItemsOut:
        """Catalogue items whose title or id contains `query` (case-insensitive)."""
        return ItemsOut(items=[ItemOut(item_id=i, title=t) for i, t in runtime.search_items(query, limit)])

    @app.post("/v1/items", response_model=ItemsAddOut, dependencies=write, tags=["items"])
    def add_items(body: ItemsAddIn) -> ItemsAddOut:
        """Add items without events to the live model from their text (models that read item text):
        encoded with the model's encoder, saved to the model directory and swapped in; they are
        recommendable at once. Ids already in the catalogue: 400 unless `skip_existing`."""
        ids = [it.item_id for it in body.items]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise HTTPException(422, f"item id {dup!r} appears more than once")
        texts = ItemTexts(
            texts={it.item_id: it.text for it in body.items},
            titles={it.item_id: it.title for it in body.items if it.title is not None},
            tags={it.item_id: list(it.tags) for it in body.items if it.tags},
            source="POST /v1/items",
        )
        done, version = runtime.add_items(texts, skip_existing=body.skip_existing)
        n_items = runtime.holder.model.n_items - 1
        return ItemsAddOut(added=done.added, skipped=done.skipped, n_items=n_items, model_version=version)

    @app.get("/v1/items/{item_id}/similar", response_model=SimilarOut, tags=["items"])
    def similar_items(item_id: ItemId, k: K = 10) -> SimilarOut:
        """Items most like `item_id` (cosine of item vectors, else scores for a one-item history)."""
        items, scores, holder = runtime.similar(item_id, k)
        out = [
            SimilarItemOut(item_id=i, score=s, title=holder.title(i))
            for i, s in zip(items, scores, strict=True)
        ]
        return SimilarOut(item_id=item_id, items=out)

    @app.post("/v1/admin/update", dependencies=write, tags=["admin"])
    def admin_update() -> dict[str, int | float | str]:
        """Incremental training on the store's events since the current model version (ingested by
        any process); a copy of the model is trained while the current one serves, published as a
        new version and followed by every process on the store. One update per store at a time
        (409 naming the running one)."""
        return runtime.update().to_json()

    @app.post("/v1/admin/reload", response_model=ReloadOut, dependencies=write, tags=["admin"])
    def admin_reload(body: ReloadIn) -> ReloadOut:
        """Make a recorded model version current (``version``), or publish a saved model directory
        under the served model root (``model_dir``, relative to the root) as a new version; every
        process on the store follows within a second."""
        return ReloadOut(model_version=runtime.reload(body.ref))

    @app.get("/healthz", response_model=HealthOut, tags=["ops"])
    def healthz() -> HealthOut:
        h: ModelHolder = runtime.holder
        return HealthOut(
            status="ok",
            model=h.model.name,
            model_version=h.version,
            store=runtime.store_kind,
            model_kind=h.record.kind,
            parent_version=h.record.parent,
        )

    @app.get("/metrics", tags=["ops"])
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    add_page(app, runtime)  # the page at /, its files, POST /v1/interests (dynrec.service.page)
    return app


def app_from_env() -> FastAPI:
    """App factory for uvicorn's multi-process mode: settings from the environment
    (`ServiceSettings.from_env`); one torch thread per worker (`serving_threads`)."""
    serving_threads()
    return create_app(ServiceSettings.from_env())
