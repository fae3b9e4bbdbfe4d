"""Where per-user histories, cached model states and model versions live, one file a room:
`protocol` (`StateStore`, `UserStamp`, `CachedState`, `History`, state encoding), `versions`
(`VersionStore` and its records), `memory` (`InMemoryStore`), `sqlite` (`SQLiteStore`), `redis`
(`RedisStore`) and `redis_cluster` (`RedisClusterStore`); this module opens one by URL. The two Redis
stores need the ``redis`` extra and are imported only when a Redis URL is opened (import them from
their modules); without the extra, opening one is a `MissingExtraError` naming it.

Open a `StateStore` by URL (what ``dynrec serve --store`` and ``dynrec store export --store`` take).

=====================================  ==================================================================
URL                                    store
=====================================  ==================================================================
``sqlite:///relative/path.db``         `SQLiteStore` on ``relative/path.db`` (relative to the working dir)
``sqlite:////absolute/path.db``        `SQLiteStore` on ``/absolute/path.db``
``redis://[:password@]host:port/db``   `RedisStore` (``rediss://`` with TLS; any ``redis.Redis.from_url``
``unix:///path/redis.sock?db=N``       query option such as ``socket_timeout`` passes through)
``redis+cluster://host:port``          `RedisClusterStore` on the Redis Cluster that node belongs to
                                       (``rediss+cluster://`` with TLS; ``RedisCluster.from_url`` options)
``memory://``                          `InMemoryStore` (this process only; gone when it exits)
=====================================  ==================================================================

Options in the query string: SQLite ``synchronous`` (OFF, NORMAL, FULL), ``timeout`` (seconds to
wait for another process's write lock) and ``checkpoint_pages`` (WAL pages between checkpoints,
default `CHECKPOINT_PAGES`); Redis and Redis Cluster ``prefix`` (the key prefix,
default ``dynrec:``);
memory ``max_history`` (events kept per user). A SQLite path is taken literally (no %-decoding).
"""

from __future__ import annotations

import sqlite3
from urllib.parse import parse_qsl, urlencode, urlsplit

from dynrec.errors import DynrecError, MissingExtraError
from dynrec.online.store.memory import InMemoryStore
from dynrec.online.store.protocol import (
    CachedState,
    History,
    StateStore,
    UserStamp,
    decode_state,
    encode_state,
)
from dynrec.online.store.sqlite import CHECKPOINT_PAGES, SQLiteStore
from dynrec.online.store.urls import CLUSTER_SCHEMES, redact_url
from dynrec.online.store.versions import Lease, Tombstone, VersionRecord, VersionStore

__all__ = [
    "SCHEMES",
    "CachedState",
    "History",
    "InMemoryStore",
    "Lease",
    "SQLiteStore",
    "StateStore",
    "Tombstone",
    "UserStamp",
    "VersionRecord",
    "VersionStore",
    "decode_state",
    "encode_state",
    "open_store",
    "redact_url",
    "store_kind",
]

SCHEMES = ("sqlite", "redis", "rediss", "unix", *CLUSTER_SCHEMES, "memory")
_FORMS = (
    "sqlite:///relative/path.db, sqlite:////absolute/path.db, redis://host:port/db, rediss://..., "
    "unix:///path/to/redis.sock, redis+cluster://host:port, memory://"
)


def _bad(url: str, problem: str) -> DynrecError:
    return DynrecError(f"bad store URL {redact_url(url)!r}: {problem} (accepted: {_FORMS})")


def _options(url: str, query: str, allowed: tuple[str, ...]) -> dict[str, str]:
    opts: dict[str, str] = {}
    for key, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if key not in allowed:
            allowed_s = ", ".join(allowed) if allowed else "none"
            raise _bad(url, f"unknown option {key!r} (options here: {allowed_s})")
        opts[key] = value
    return opts


def open_store(url: str) -> StateStore:
    """The store `url` names (see the module docstring); a `DynrecError` naming the URL and the
    accepted forms when it is not one of them, or when the store cannot be opened."""
    if not isinstance(url, str) or "://" not in url:
        raise _bad(str(url), "no scheme")
    scheme = url.split("://", 1)[0].lower()
    if scheme not in SCHEMES:
        raise _bad(url, f"unknown scheme {scheme!r}")
    parts = urlsplit(url, allow_fragments=False)
    if scheme == "memory":
        if parts.netloc or parts.path:
            raise _bad(url, "memory:// takes no host or path")
        opts = _options(url, parts.query, ("max_history",))
        if "max_history" not in opts:
            return InMemoryStore()
        try:
            n = int(opts["max_history"])
        except ValueError:
            n = 0
        if n < 1:
            raise _bad(url, f"max_history must be an integer >= 1, got {opts['max_history']!r}")
        return InMemoryStore(max_history=n)
    if scheme == "sqlite":
        if parts.netloc:
            raise _bad(url, f"a SQLite URL has no host ({parts.netloc!r}); use three slashes: sqlite:///PATH")
        path = parts.path[1:]  # sqlite:///rel -> "rel", sqlite:////abs -> "/abs"
        if not path:
            raise _bad(url, "no file path")
        opts = _options(url, parts.query, ("synchronous", "timeout", "checkpoint_pages"))
        try:
            timeout = float(opts.get("timeout", "10"))
        except ValueError:
            timeout = -1.0
        if not 0 <= timeout < float("inf"):
            raise _bad(url, f"timeout must be a number of seconds >= 0, got {opts['timeout']!r}")
        pages = opts.get("checkpoint_pages", str(CHECKPOINT_PAGES))
        if not pages.isdigit() or int(pages) < 1:
            raise _bad(url, f"checkpoint_pages must be an integer >= 1, got {pages!r}")
        try:
            return SQLiteStore(
                path,
                synchronous=opts.get("synchronous", "NORMAL"),
                timeout=timeout,
                checkpoint_pages=int(pages),
            )
        except sqlite3.Error as exc:  # e.g. "file is not a database": name the file
            raise DynrecError(f"cannot open state store {path}: {exc}") from None
    # redis, rediss, unix and the cluster schemes: redis-py parses the URL; only our own option
    # is taken out. Imported here: the redis extra is needed only by who opens a Redis store.
    from dynrec.online.store.redis import RedisStore
    from dynrec.online.store.redis_cluster import RedisClusterStore

    cls = RedisClusterStore if scheme in CLUSTER_SCHEMES else RedisStore
    query = parse_qsl(parts.query, keep_blank_values=True)
    prefixes = [value for key, value in query if key == "prefix"]
    if not prefixes:
        return cls(url)
    if not prefixes[-1]:
        raise _bad(url, "prefix must not be empty")
    rest = urlencode([(key, value) for key, value in query if key != "prefix"])
    return cls(url.split("?", 1)[0] + (f"?{rest}" if rest else ""), prefix=prefixes[-1])


def store_kind(store: StateStore) -> str:
    """``"sqlite"``, ``"redis"``, ``"redis-cluster"`` or ``"memory"`` for the stores `open_store`
    opens; another implementation's class name, lower-cased."""
    if isinstance(store, SQLiteStore):
        return "sqlite"
    if isinstance(store, InMemoryStore):
        return "memory"
    try:  # without the redis extra no store is a Redis store
        from dynrec.online.store.redis import RedisStore
        from dynrec.online.store.redis_cluster import RedisClusterStore
    except MissingExtraError:
        return type(store).__name__.lower()
    if isinstance(store, RedisClusterStore):
        return "redis-cluster"
    if isinstance(store, RedisStore):
        return "redis"
    return type(store).__name__.lower()
