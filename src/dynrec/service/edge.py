"""The service's edge against browsers on other sites: Host checking and JSON-only writes.

*Host checking* (DNS rebinding): a page on ``evil.example`` whose name is made to resolve to
127.0.0.1 can read a loopback service's answers, since the browser thinks it talks to
``evil.example``; its requests still carry ``Host: evil.example``. So a service that knows where it
is bound answers only requests whose ``Host`` names it (any port): the bound address itself,
``localhost`` and the loopback addresses for a loopback bind, and every ``--allowed-host`` name
(`ServiceSettings.allowed_hosts`; ``*`` turns the check off). Others get 421 naming the Host. The
check applies with and without an API key, since reads (histories, recommendations) never need
the key. A wildcard bind (``0.0.0.0``, ``::``) checks only the ``--allowed-host`` names when some
are given: the names clients use for it are not known here. Settings without a bind address (an
app built directly, as tests do) check nothing unless given allowed hosts. A request without a
``Host`` header (HTTP/1.0) is let through: every browser sends one.

*JSON-only writes* (cross-site forms): without an API key, an HTML form on any site can POST to
the service — a form POST needs no CORS preflight — e.g. to start ``/v1/admin/update``. A form
can only send ``application/x-www-form-urlencoded``, ``multipart/form-data`` or ``text/plain``,
and a script on another site that sets ``Content-Type: application/json`` must ask a preflight
first, which the service never grants. So without a key every POST, and every other non-GET
request that carries a body, must say ``Content-Type: application/json`` (415 otherwise; a
``DELETE`` or ``PUT`` is never sent cross-site without a preflight). With a key, writes need the
``X-API-Key`` header, which a form cannot set either.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "ANY_HOST",
    "LOOPBACK_NAMES",
    "EdgeGuardMiddleware",
    "allowed_host_names",
    "host_name",
    "is_loopback",
    "is_wildcard",
    "json_safe",
    "normalise_host",
    "redact_paths",
    "replay_body",
]

ANY_HOST = "*"
"""An allowed host that turns Host checking off."""

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
"""Names a loopback-bound service answers to besides its bound address."""

_MAX_HOST_VALUES = 256
"""Host header values whose verdict `EdgeGuardMiddleware` remembers (clients choose them)."""

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
JSON_TYPE = "application/json"


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to any interface


def is_wildcard(host: str) -> bool:
    """Whether binding `host` listens on every interface (``0.0.0.0``, ``::``, empty)."""
    h = host.strip().strip("[]")
    if not h:
        return True
    try:
        return ipaddress.ip_address(h).is_unspecified
    except ValueError:
        return False


def normalise_host(name: str) -> str:
    """A host name or address as compared: lower case, no brackets around an IPv6 address, no
    trailing dot, an IPv6 address in its compressed form."""
    h = name.strip().lower()
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    h = h.rstrip(".")
    try:
        return str(ipaddress.ip_address(h))
    except ValueError:
        return h


def host_name(header: str) -> str:
    """The host part of a ``Host`` header value (``name``, ``name:port``, ``[v6]:port``),
    normalised (`normalise_host`); "" when it is malformed."""
    h = header.strip()
    if h.startswith("["):
        end = h.find("]")
        if end < 0 or (h[end + 1 :] and not h[end + 1 :].startswith(":")):
            return ""
        return normalise_host(h[: end + 1])
    name, _, port = h.partition(":")
    if ":" in port or (port and not port.isdigit()):
        return ""
    return normalise_host(name)


def allowed_host_names(bind_host: str | None, allowed_hosts: tuple[str, ...]) -> frozenset[str] | None:
    """The host names a service bound at `bind_host` with `allowed_hosts` answers to (see the
    module docstring); None = every Host (no check)."""
    if ANY_HOST in allowed_hosts:
        return None
    names = {normalise_host(h) for h in allowed_hosts}
    if bind_host is not None and not is_wildcard(bind_host):
        names.add(normalise_host(bind_host))
        if is_loopback(bind_host):
            names |= LOOPBACK_NAMES
    return frozenset(names) if names else None


def json_safe(value: Any) -> Any:
    """`value` (JSON-like: dicts, lists, strings, numbers) with what a strict JSON answer in UTF-8
    cannot hold made printable: non-finite floats become ``"NaN"``, ``"Infinity"``,
    ``"-Infinity"``; strings (and keys) holding lone surrogates show them as backslash escapes (``\\ud800`` for U+D800).
    A 422 echoes the offending input, which may be exactly such a value."""
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, dict):
        return {json_safe(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def redact_paths(text: str, dirs: Sequence[Path]) -> str:
    """`text` with the server folders `dirs` left out of the paths it names: ``DIR/x`` becomes
    ``x`` and ``DIR`` itself ``.`` (an error answered over HTTP names what the client sent, not
    where the server keeps it). The longest folders are replaced first; ``/`` is never replaced."""
    for d in sorted({str(p) for p in dirs}, key=len, reverse=True):
        if d in ("", "/", "."):
            continue
        text = re.sub(re.escape(d) + r"(/|(?![\w-]|\.\w))", lambda m: "" if m.group(1) else ".", text)
    return text


def _media_type(value: bytes) -> str:
    return value.decode("latin-1").split(";", 1)[0].strip().lower()


class EdgeGuardMiddleware:
    """421 for a ``Host`` outside `hosts` (None: no check); with `json_only`, 415 for a POST (or
    another non-GET request with a body) whose ``Content-Type`` is not ``application/json``. See
    the module docstring."""

    def __init__(self, app: ASGIApp, *, hosts: frozenset[str] | None, json_only: bool) -> None:
        self.app = app
        self.hosts = hosts
        self.json_only = json_only
        self._answered: dict[bytes, bool] = {}  # Host header value -> answered (parsed once)

    def _answers(self, host: bytes) -> bool:
        """Whether a request with this ``Host`` value is answered (`hosts` holds its name)."""
        known = self._answered.get(host)
        if known is None:
            assert self.hosts is not None
            known = host_name(host.decode("latin-1")) in self.hosts
            if len(self._answered) >= _MAX_HOST_VALUES:
                self._answered.clear()
            self._answered[host] = known
        return known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or (self.hosts is None and not self.json_only):
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host")
        if self.hosts is not None and host is not None and not self._answers(host):
            detail = (
                f"Host {host.decode('latin-1')[:200]!r} is not a name this service answers to "
                "(start it with --allowed-host NAME to add one)"
            )
            await JSONResponse({"detail": detail}, status_code=421)(scope, receive, send)
            return
        method = str(scope.get("method", "GET")).upper()
        if self.json_only and method not in SAFE_METHODS:
            has_body = (
                method == "POST"
                or b"transfer-encoding" in headers
                or headers.get(b"content-length", b"0") not in (b"0", b"")
            )
            ctype = headers.get(b"content-type")
            if has_body and (ctype is None or _media_type(ctype) != JSON_TYPE):
                shown = "none" if ctype is None else repr(ctype.decode("latin-1")[:100])
                detail = (
                    f"{method} needs Content-Type: application/json (got {shown}); without an API key "
                    "the service accepts no other body type, so that a form on another site cannot post here"
                )
                await JSONResponse({"detail": detail}, status_code=415)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app `body` (already read from the client) as one message, then
    whatever `receive` says next (a disconnect)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay
