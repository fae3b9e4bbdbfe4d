"""Run the service under uvicorn (what ``dynrec serve`` calls).

One worker: the app is built here (model loaded, store opened — errors surface before binding)
and served in this process. Several workers: uvicorn's multi-process mode imports the app factory
`dynrec.service.app.app_from_env` in each worker, with the settings passed through environment
variables; the workers then share the store, so it must be one several processes can open
(SQLite — its per-user generations and compare-and-set states keep processes coherent — or Redis).
Each serving process uses one torch thread (`dynrec.service.runtime.serving_threads`).

Both modes serve through `NoDelayHTTPProtocol`, which sets TCP_NODELAY on every accepted TCP
connection: in multi-process mode uvicorn binds the listening socket with protocol number 0, and
asyncio only disables Nagle's algorithm on sockets whose protocol is IPPROTO_TCP, so each answer's
body (written after its headers) would wait for the client's delayed ACK, about 40 ms per request
on a keep-alive connection.

The access log (one line per request) is off unless asked for (``access_log``, ``dynrec serve
--access-log``): formatting and writing it is CPU on every request. uvicorn takes its fastest
parts when installed (the ``serve`` extra installs them): httptools for HTTP parsing and uvloop
for the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING

import uvicorn

from dynrec.errors import DynrecError
from dynrec.jobs.recommend import seed_new_store
from dynrec.online.store import open_store, redact_url, store_kind
from dynrec.service.app import create_app
from dynrec.service.edge import ANY_HOST, is_loopback
from dynrec.service.runtime import serving_threads
from dynrec.service.settings import ServiceSettings

if TYPE_CHECKING:
    from uvicorn.protocols.http.h11_impl import H11Protocol as _HTTPProtocol
else:  # the implementation uvicorn's default ``http="auto"`` picks (httptools when installed, else h11)
    from uvicorn.protocols.http.auto import AutoHTTPProtocol as _HTTPProtocol

log = logging.getLogger(__name__)

__all__ = ["NoDelayHTTPProtocol", "is_loopback", "serve", "store_shown"]


WORKER_HEALTHCHECK_S = 60
"""Seconds a worker may take to answer the supervisor's ping (`uvicorn.run`)."""


class NoDelayHTTPProtocol(_HTTPProtocol):
    """uvicorn's HTTP protocol with TCP_NODELAY set on each accepted TCP connection (see the module
    docstring); connections on other sockets (a Unix socket) are left as they are."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]  # narrowed as in uvicorn's base
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def store_shown(url: str) -> str:
    """A store URL as messages show it: a SQLite store as its file path, others without secrets."""
    return url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else redact_url(url)


def serve(
    settings: ServiceSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    access_log: bool = False,
    say: Callable[[str], None] = log.warning,
) -> None:
    """Serve `settings` on host:port until interrupted (see the module docstring).

    With ``settings.seed`` the store is seeded before the model is registered (by the app for one
    worker, here once for several, which then start with ``seed`` off); `say` gets the one line
    that tells what seeding did, when there is something to tell (``dynrec serve`` prints it);
    `access_log`: one log line per request (see the module docstring)."""
    if workers < 1:
        raise DynrecError(f"--workers must be >= 1, got {workers}")
    if not 0 <= port <= 65535:
        raise DynrecError(f"--port must be in 0..65535, got {port}")
    if settings.bind_host is None:  # the bound address decides which Host headers are answered
        settings = dataclasses.replace(settings, bind_host=host)
    if settings.api_key is None and not is_loopback(host):
        log.warning(
            "!!! SERVING ON %s WITHOUT AN API KEY: anyone who can reach this address can write events, "
            "delete users and replace the model. Set --api-key or DYNREC_API_KEY. !!!",
            host,
        )
    if settings.host_names() is None and ANY_HOST not in settings.allowed_hosts:
        log.warning(
            "serving on %s without checking the Host header (the names clients use are not known for "
            "this address): name them with --allowed-host to refuse DNS-rebinding pages",
            host,
        )
    shown = store_shown(settings.store)
    if workers == 1:
        serving_threads()
        app = create_app(settings)
        if (line := app.state.runtime.seeding.line(shown)) is not None:
            say(line)
        uvicorn.run(
            app, host=host, port=port, http=NoDelayHTTPProtocol, log_level="info", access_log=access_log
        )
        return
    store = open_store(settings.store)  # fail here, once, rather than in every worker
    try:
        if store_kind(store) == "memory":
            raise DynrecError(
                "several workers need a shared store (sqlite:///PATH or redis://...), not memory://"
            )
        if settings.seed:  # once, before any worker registers the model
            if (line := seed_new_store(settings.model_dir, store).line(shown)) is not None:
                say(line)
            settings = dataclasses.replace(settings, seed=False)
    finally:
        store.close()
    os.environ.update(settings.to_env())
    uvicorn.run(
        "dynrec.service.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http=NoDelayHTTPProtocol,
        log_level="info",
        access_log=access_log,
        # the supervisor pings each worker and replaces one that does not answer in time; a worker
        # importing torch and loading a model on a busy small machine can take longer than
        # uvicorn's default 5 s, and would be replaced over and over before it ever serves
        timeout_worker_healthcheck=WORKER_HEALTHCHECK_S,
    )
