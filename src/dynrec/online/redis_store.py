"""`RedisStore`: the `StateStore` on a Redis server, shared by every worker and host using it.

Semantics are exactly those of `SQLiteStore` (see `dynrec.online.state`): validated, all-or-nothing
appends that return each user's `UserStamp`; per-user generations taken from a store-wide counter
that only grows (a deleted and re-created user never gets an old generation back); a
compare-and-set ``put_state``; ``since`` as one consistent read; a corrupt cached state is a
logged cache miss, never an exception.

Every write is one Lua script (Redis runs a script atomically: no other client's command runs in
between), every multi-key read one ``MULTI``/``EXEC`` transaction, so several processes can append,
read, cache states and delete concurrently and each sees the store between two whole operations.

Key layout (all under `prefix`, default ``"dynrec:"``, so several stores can share one server;
give them prefixes of which none starts another, e.g. ``"shop-a:"`` and ``"shop-b:"``):

===========================  =======  ================================================================
key                          type     content
===========================  =======  ================================================================
``{prefix}generation``       string   the last generation handed out (``INCR``; never decreases)
``{prefix}n_events``         string   how many events the store holds, all users together
``{prefix}users``            zset     ids of the users holding events (all scores 0: ordered by bytes)
``{prefix}u:{user}``         hash     ``gen`` (the user's generation), ``n`` (events appended in it)
``{prefix}e:{user}``         list     the user's events in arrival order (element i = position i+1),
                                      each the JSON array ``[item_id, timestamp, event_type, weight]``
``{prefix}s:{user}``         hash     the cached state: ``version``, ``n``, ``gen``, ``blob``
                                      (`dynrec.online.state.encode_state` bytes)
===========================  =======  ================================================================

Durability is the server's: with ``appendonly yes`` and ``appendfsync always`` an append is on disk
when it returns; with the default ``everysec`` up to a second of writes can be lost in a crash.
Redis Cluster is not supported (an append touches the keys of several users in one script).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import redis

from dynrec.errors import DynrecError
from dynrec.online.state import (
    CachedState,
    Event,
    History,
    UserStamp,
    decode_state,
    encode_state,
    validate_events,
)

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_PREFIX", "RedisStore", "RedisStoreError", "redact_url"]

DEFAULT_PREFIX = "dynrec:"

_PUSH_CHUNK = 1000  # values per RPUSH inside a script (Lua's unpack has a stack limit of ~8000)

# KEYS: generation counter, users zset, n_events counter, then per user its stamp hash and event
# list. ARGV: per user its id, its number of events m, then its m encoded events.
# Returns per user: generation, event count after the batch.
_APPEND = f"""
local out = {{}}
local a = 1
local total = 0
for k = 4, #KEYS, 2 do
  local user = ARGV[a]
  local m = tonumber(ARGV[a + 1])
  a = a + 2
  local gen = redis.call('HGET', KEYS[k], 'gen')
  if not gen then
    gen = redis.call('INCR', KEYS[1])
    redis.call('HSET', KEYS[k], 'gen', gen)
    redis.call('ZADD', KEYS[2], 0, user)
  end
  local n = redis.call('HINCRBY', KEYS[k], 'n', m)
  local last = a + m - 1
  for s = a, last, {_PUSH_CHUNK} do
    redis.call('RPUSH', KEYS[k + 1], unpack(ARGV, s, math.min(s + {_PUSH_CHUNK - 1}, last)))
  end
  a = a + m
  total = total + m
  out[#out + 1] = tonumber(gen)
  out[#out + 1] = n
end
redis.call('INCRBY', KEYS[3], total)
return out
"""

# KEYS: the user's stamp hash, state hash. ARGV: version, n_events, generation, blob.
# Compare-and-set: 1 when written.
_PUT_STATE = """
local gen = redis.call('HGET', KEYS[1], 'gen')
if not gen or tonumber(gen) ~= tonumber(ARGV[3]) then return 0 end
if tonumber(ARGV[2]) > tonumber(redis.call('HGET', KEYS[1], 'n')) then return 0 end
local held = redis.call('HMGET', KEYS[2], 'version', 'gen', 'n')
if held[1] == ARGV[1] and tonumber(held[2]) == tonumber(ARGV[3])
   and tonumber(held[3]) > tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[2], 'version', ARGV[1], 'n', ARGV[2], 'gen', ARGV[3], 'blob', ARGV[4])
return 1
"""

# KEYS: users zset, n_events counter, the user's stamp hash, event list, state hash. ARGV: user.
# Returns how many of the three keys existed.
_DELETE = """
local held = redis.call('LLEN', KEYS[4])
local n = redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
redis.call('ZREM', KEYS[1], ARGV[1])
if held > 0 then redis.call('DECRBY', KEYS[2], held) end
return n
"""

# KEYS: the user's state hash. ARGV: the unreadable blob. Drops only that blob (a good state
# written since stays).
_DROP_STATE = """
if redis.call('HGET', KEYS[1], 'blob') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""


class RedisStoreError(DynrecError):
    """The Redis server could not be reached or refused a command."""


def redact_url(url: str) -> str:
    """`url` with its password replaced by ``***`` (for messages and logs)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable url>"
    if parts.password is None:
        return url
    netloc = (parts.username or "") + ":***@" + (parts.hostname or "")
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


def _encode(e: Event) -> bytes:
    return json.dumps(
        [e.item_id, e.timestamp, e.event_type, e.weight], ensure_ascii=False, separators=(",", ":")
    ).encode()


def _history(values: Sequence[bytes]) -> History:
    if not values:
        return History()
    rows = [json.loads(v) for v in values]
    return History(
        tuple(str(r[0]) for r in rows),
        np.fromiter((int(r[1]) for r in rows), dtype=np.int64, count=len(rows)),
        tuple(str(r[2]) for r in rows),
        np.fromiter((float(r[3]) for r in rows), dtype=np.float64, count=len(rows)),
    )


def _int(value: object) -> int:
    return 0 if value is None else int(cast("bytes | str | int", value))


class RedisStore:
    """A `StateStore` on Redis (see the module docstring for the key layout and guarantees).

    `url_or_client`: a ``redis://``, ``rediss://`` or ``unix://`` URL (any form
    ``redis.Redis.from_url`` takes), or a `redis.Redis` client (without ``decode_responses``)
    shared with the caller, who then also closes it. The server is pinged on construction, so an
    unreachable one fails here. Redis failures surface as `RedisStoreError`.
    Thread-safe (the client's connection pool), and fork-safe (the pool reconnects in a child).
    """

    def __init__(self, url_or_client: str | redis.Redis, *, prefix: str = DEFAULT_PREFIX) -> None:
        if not isinstance(prefix, str) or not prefix:
            raise DynrecError(f"the Redis key prefix must be a non-empty string, not {prefix!r}")
        self.prefix = prefix
        if isinstance(url_or_client, str):
            self.where = redact_url(url_or_client)
            try:
                self._client: redis.Redis = redis.Redis.from_url(url_or_client)
            except ValueError as exc:
                raise DynrecError(f"bad Redis URL {self.where!r}: {exc}") from exc
            self._owns = True
        else:
            kw = url_or_client.connection_pool.connection_kwargs
            self.where = (
                f"unix://{kw['path']}" if "path" in kw else f"redis://{kw.get('host')}:{kw.get('port')}"
            ) + f"/{kw.get('db', 0)}"
            self._client = url_or_client
            self._owns = False
        if self._client.connection_pool.connection_kwargs.get("decode_responses"):
            raise DynrecError("RedisStore needs a client without decode_responses (states are bytes)")
        self._k_generation = prefix + "generation"
        self._k_n_events = prefix + "n_events"
        self._k_users = prefix + "users"
        c = self._client
        self._append = c.register_script(_APPEND)
        self._put_state = c.register_script(_PUT_STATE)
        self._delete = c.register_script(_DELETE)
        self._drop_state = c.register_script(_DROP_STATE)
        with self._errors():
            c.ping()

    # -- keys and errors --------------------------------------------------------------------
    def _k_user(self, user: str) -> str:
        return f"{self.prefix}u:{user}"

    def _k_events(self, user: str) -> str:
        return f"{self.prefix}e:{user}"

    def _k_state(self, user: str) -> str:
        return f"{self.prefix}s:{user}"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except redis.RedisError as exc:
            raise RedisStoreError(f"Redis state store {self.where} (prefix {self.prefix!r}): {exc}") from exc

    def close(self) -> None:
        """Close the connections of a client this store made from a URL (a caller's client stays)."""
        if self._owns:
            self._client.close()

    def __enter__(self) -> RedisStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RedisStore({self.where!r}, prefix={self.prefix!r})"

    # -- the StateStore protocol --------------------------------------------------------------
    def append(self, events: Iterable[Event]) -> dict[str, UserStamp]:
        evs = validate_events(events)
        if not evs:
            return {}
        by_user: dict[str, list[bytes]] = {}
        for e in evs:
            by_user.setdefault(e.user_id, []).append(_encode(e))
        keys = [self._k_generation, self._k_users, self._k_n_events]
        args: list[str | bytes | int] = []
        for user, encoded in by_user.items():
            keys += [self._k_user(user), self._k_events(user)]
            args += [user, len(encoded), *encoded]
        with self._errors():
            res = cast("list[int]", self._append(keys=keys, args=args))
        return {user: UserStamp(int(res[2 * j]), int(res[2 * j + 1])) for j, user in enumerate(by_user)}

    def history(self, user: str, max_len: int | None = None) -> History:
        if max_len is not None and max_len <= 0:
            return History()
        start = 0 if max_len is None else -int(max_len)
        with self._errors():
            values = cast("list[bytes]", self._client.lrange(self._k_events(user), start, -1))
        return _history(values)

    def stamp(self, user: str) -> UserStamp:
        with self._errors():
            gen, n = cast("list[bytes | None]", self._client.hmget(self._k_user(user), ["gen", "n"]))
        return UserStamp(_int(gen), _int(n))

    def since(self, user: str, n_events: int) -> tuple[UserStamp, History]:
        with self._errors():
            pipe = self._client.pipeline(transaction=True)
            pipe.hmget(self._k_user(user), ["gen", "n"])
            pipe.lrange(self._k_events(user), max(0, int(n_events)), -1)
            (gen, n), values = pipe.execute()
        return UserStamp(_int(gen), _int(n)), _history(values)

    def get_state(self, user: str) -> CachedState | None:
        with self._errors():
            pipe = self._client.pipeline(transaction=True)
            pipe.hget(self._k_user(user), "gen")
            pipe.hmget(self._k_state(user), ["version", "n", "gen", "blob"])
            gen, (version, n, sgen, blob) = pipe.execute()
        if gen is None or blob is None or _int(sgen) != _int(gen):
            return None
        try:
            state = decode_state(blob)
            held = (None if version is None else version.decode(), _int(n), _int(sgen))
            if (state.version, state.n_events, state.generation) != held:
                raise DynrecError("its header disagrees with the state's fields")
        except DynrecError as exc:
            log.warning("dropping the unreadable cached state of user %r in %s: %s", user, self.where, exc)
            with self._errors():
                self._drop_state(keys=[self._k_state(user)], args=[blob])
            return None
        return state

    def put_state(self, user: str, state: CachedState) -> bool:
        blob = encode_state(state)
        args: list[str | int | bytes] = [state.version, int(state.n_events), int(state.generation), blob]
        with self._errors():
            return bool(self._put_state(keys=[self._k_user(user), self._k_state(user)], args=args))

    def delete_user(self, user: str) -> bool:
        keys = [
            self._k_users,
            self._k_n_events,
            self._k_user(user),
            self._k_events(user),
            self._k_state(user),
        ]
        with self._errors():
            return int(cast("int", self._delete(keys=keys, args=[user]))) > 0

    def users(self, limit: int | None = None) -> list[str]:
        if limit is not None and limit <= 0:
            return []
        end = -1 if limit is None else int(limit) - 1
        with self._errors():
            members = cast("list[bytes]", self._client.zrange(self._k_users, 0, end))
        return [m.decode() for m in members]

    def n_events(self) -> int:
        with self._errors():
            return _int(self._client.get(self._k_n_events))

    def iter_events(self, chunk: int = 500) -> Iterator[Event]:
        """See `StateStore.iter_events`: `chunk` users per round trip (their lists read in one
        pipeline; each list is one command, so one consistent read)."""
        low = "-"
        while True:
            with self._errors():
                users = [
                    m.decode()
                    for m in cast(
                        "list[bytes]", self._client.zrangebylex(self._k_users, low, "+", start=0, num=chunk)
                    )
                ]
                pipe = self._client.pipeline(transaction=False)
                for user in users:
                    pipe.lrange(self._k_events(user), 0, -1)
                lists: list[Any] = pipe.execute() if users else []
            for user, values in zip(users, lists, strict=True):
                h = _history(values)
                for item, ts, et, w in zip(
                    h.items, h.timestamps.tolist(), h.event_types, h.weights.tolist(), strict=True
                ):
                    yield Event(user, item, int(ts), et, float(w))
            if len(users) < chunk:
                return
            low = "(" + users[-1]
