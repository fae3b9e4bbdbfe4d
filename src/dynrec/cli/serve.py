"""`dynrec serve`: the HTTP service over a saved model."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dynrec.cli.common import AnnOpt, AnnSetOpt, _fail, _parse_sets, _run_options, handled


def _api_key(ctx: typer.Context, value: str | None) -> str | None:
    """The API key of ``serve``: None only when neither ``--api-key`` nor ``DYNREC_API_KEY`` is
    given; an empty or malformed one is an error naming where it came from (never "no key")."""
    import os

    from dynrec.service.settings import API_KEY_ENV, check_api_key

    if value is None:
        if API_KEY_ENV in os.environ:  # click skips an empty variable: it is not "unset"
            check_api_key(os.environ[API_KEY_ENV], API_KEY_ENV)
        return None
    source = ctx.get_parameter_source("api_key")  # typer's own copy of click's ParameterSource
    from_env = source is not None and source.name == "ENVIRONMENT"
    return check_api_key(value, API_KEY_ENV if from_env else "--api-key")


@handled
def serve(
    ctx: typer.Context,
    model_dir: Annotated[Path, typer.Argument(help="saved model directory")],
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="state store: sqlite:///PATH (default: sqlite:///MODEL_DIR/events.db), redis://host:port/db, "
            "memory://, or a file path (SQLite)",
        ),
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="address to bind (non-loopback: set an API key)")
    ] = "127.0.0.1",
    allowed_hosts: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="a Host name clients reach the service by, besides the bound address (and localhost "
            "for a loopback bind); repeatable; * = any Host (no check). Others get 421",
        ),
    ] = None,
    port: Annotated[int, typer.Option("--port")] = 8000,
    workers: Annotated[
        int, typer.Option("--workers", help="worker processes (> 1 needs a shared store: sqlite or redis)")
    ] = 1,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="DYNREC_API_KEY",
            help="required as X-API-Key on writes, deletes and admin routes (without a key, writes must "
            "be Content-Type: application/json); an empty key is an error, not 'no key'",
        ),
    ] = None,
    items: Annotated[
        Path | None,
        typer.Option("--items", help="item metadata file (titles, genres); default: the model's dataset's"),
    ] = None,
    ann: AnnOpt = None,
    ann_sets: AnnSetOpt = None,
    sets: Annotated[
        list[str] | None,
        typer.Option("--set", help="run option key=value: precision=int8 (session recommendations)"),
    ] = None,
    no_seed: Annotated[
        bool,
        typer.Option(
            "--no-seed",
            help="leave a new store empty (default: a store that serves no model yet and holds none of "
            "the model's users is seeded with its training histories, as `dynrec store seed` does)",
        ),
    ] = False,
    access_log: Annotated[
        bool,
        typer.Option(
            "--access-log", help="log one line per request (off by default: it costs CPU per request)"
        ),
    ] = False,
) -> None:
    """Serve MODEL_DIR over HTTP: events in (POST /v1/events), live recommendations out, the page at /,
    API docs at /docs, Prometheus metrics at /metrics.

    A new store (one that serves no model yet and holds none of the model's users) is first
    seeded with the model's training histories, so known users get personalised recommendations
    at once; one line says so. --no-seed leaves it empty.

    --ann hnsw|ivf: recommendations come from an approximate index over the model's item table,
    built at start and rebuilt on reload, update and item additions: session histories, and stored
    users' cached states (stepped here or by dynrec consume) when the model's state gives a query
    vector (ALS, GRU4Rec, SASRec; a state in an interest-shift lean stays exact). Seen items are
    excluded as on the exact path; each answer names its retrieval. --set precision=int8: session
    recommendations from an int8 scoring copy (cached states stay float32 and exact).

    Only requests whose Host header names the service are answered (DNS rebinding): the bound
    address, localhost and the loopback addresses for a loopback bind, and each --allowed-host
    (behind a proxy that forwards its own Host, name it; a 0.0.0.0 bind checks only those)."""
    from dynrec.service import ServiceSettings
    from dynrec.service.serve import serve as run_service

    key = _api_key(ctx, api_key)
    if not model_dir.is_dir():
        _fail(
            f"model directory {model_dir} does not exist"
            if not model_dir.exists()
            else f"{model_dir} is not a directory"
        )
    pairs = _parse_sets(sets)
    if set(pairs) - {"precision"}:
        _fail(f"serve --set takes precision=... only, got {sorted(set(pairs) - {'precision'})}")
    _, options = _run_options(pairs, progress=False)
    if ann is None and ann_sets:
        _fail("--ann-set needs --ann hnsw|ivf")
    settings = ServiceSettings(
        model_dir=str(model_dir),
        store_url=store,
        api_key=key,
        items_file=str(items) if items is not None else None,
        ann=ann,
        ann_options=tuple(ann_sets or ()),
        precision=options.precision,
        bind_host=host,
        allowed_hosts=tuple(allowed_hosts or ()),
        seed=not no_seed,
    )
    run_service(settings, host=host, port=port, workers=workers, access_log=access_log, say=typer.echo)
