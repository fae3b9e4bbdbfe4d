"""What the service's page needs beyond the JSON API of `dynrec.service.app`: the page itself at
``/`` with its files under ``/static``, and ``POST /v1/interests`` — the short- vs long-term
interests of an anonymous session's history, in the form ``GET /v1/users/{id}`` gives a stored
user's (`dynrec.service.answers.session_interests`), so the page's interest panel works for both.

The API docs at ``/docs`` are Swagger UI served from the ``fastapi_offline`` package's own files
(`docs_app`), so they work on a machine without internet access.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from dynrec.online.interests import Interests
from dynrec.service import answers
from dynrec.service.runtime import Runtime
from dynrec.service.schemas import InterestProfileOut, InterestsOut, SessionInterestsIn

__all__ = ["DOCS_ASSETS", "STATIC_DIR", "add_page", "docs_app", "interests_out"]

STATIC_DIR = Path(__file__).resolve().parent / "static"

DOCS_ASSETS = "/static-docs"
"""Where the Swagger UI and ReDoc files of ``fastapi_offline`` are served."""


def docs_app(**kwargs: Any) -> FastAPI:
    """A `FastAPI` app (`kwargs` as FastAPI takes them) whose ``/docs`` (Swagger UI) and ``/redoc``
    load their scripts, styles and icon from this service (``DOCS_ASSETS``), not from a CDN.
    Swagger UI's validator badge (an image from an outside validator service) is turned off."""
    params = {"validatorUrl": None, **kwargs.pop("swagger_ui_parameters", {})}
    return FastAPIOffline(static_url=DOCS_ASSETS, swagger_ui_parameters=params, **kwargs)


def interests_out(it: Interests) -> InterestsOut:
    """`it` in the form of the API (``interests`` of ``GET /v1/users/{id}``)."""
    return InterestsOut(
        basis=it.basis,
        short_term=InterestProfileOut(categories=it.short_term.categories, items=it.short_term.items),
        long_term=InterestProfileOut(categories=it.long_term.categories, items=it.long_term.items),
    )


def add_page(app: FastAPI, runtime: Runtime) -> None:
    """Add the page, its files and ``POST /v1/interests`` to `app` (served by `runtime`)."""
    router = APIRouter()

    @router.post("/v1/interests", response_model=InterestsOut, tags=["recommend"])
    def session_interests(body: SessionInterestsIn) -> InterestsOut:
        """Short- vs long-term interests of an anonymous session's history (item ids, oldest first;
        ids the model does not know are skipped): category shares and the model's top items per
        window, computed as for a stored user (``GET /v1/users/{id}``)."""
        return interests_out(answers.session_interests(runtime.holder, body.history, body.short_window))

    @router.get("/", include_in_schema=False)
    def page() -> FileResponse:
        index = STATIC_DIR / "index.html"
        if not index.is_file():
            raise HTTPException(404, "the page is not installed")
        return FileResponse(index)

    app.include_router(router)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
