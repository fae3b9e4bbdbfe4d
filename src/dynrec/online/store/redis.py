"""`RedisStore`: the `StateStore` and `VersionStore` on a Redis server, shared by every worker and
host using it.

Semantics are exactly those of `SQLiteStore` (see `dynrec.online.store.protocol` and
`dynrec.online.store.versions`): validated, all-or-nothing appends that return each user's `UserStamp`;
per-user generations taken from a store-wide counter that only grows (a deleted and re-created
user never gets an old generation back); a compare-and-set ``put_state``; ``since`` as one
consistent read; a corrupt cached state is a logged cache miss, never an exception; a store-wide
event sequence number (``event_seq``, ``events_since``); model versions with a current-version
pointer changed only by compare-and-set; leases; tombstones written with the deletion.

Every write is one Lua script (Redis runs a script atomically: no other client's command runs in
between), every multi-key read one ``MULTI``/``EXEC`` transaction, so several processes can append,
read, cache states, delete and publish versions concurrently and each sees the store between two
whole operations. Lease expiry and tombstone times are the Redis server's clock (``TIME``), the
one clock every host sharing the store agrees on.

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
                                      each the JSON array ``[item_id, timestamp, event_type, weight,
                                      seq]`` (events written before sequence numbers existed have no
                                      ``seq``: they count as sequence 0 and are in no journal)
``{prefix}s:{user}``         hash     the cached state: ``version``, ``n``, ``gen``, ``blob``
                                      (`dynrec.online.store.protocol.encode_state`)
``{prefix}d:{user}``         zset     the event ids of the user's last `EVENT_ID_WINDOW` events, score
                                      the event's position (checked and written by the append script)
``{prefix}seq``              string   the last event sequence number handed out (never decreases)
``{prefix}journal``          zset     one entry per appended batch: score the batch's last sequence
                                      number, member the JSON array ``[first_seq, user_id, start, m,
                                      user_id, start, m, ...]`` naming each user with events in the
                                      batch, where they start in ``e:{user}`` (0-based) and how many
                                      (a pointer: the events are read from the lists, whose elements
                                      carry their ``seq``); a deleted user's parts leave every entry
                                      with the user, and an entry naming no one is removed
``{prefix}versions``         hash     version id -> `VersionRecord` JSON
``{prefix}current``          string   the current version's id (absent before the first publication)
``{prefix}lease:{name}``     hash     ``owner``, ``expires`` (server clock, microseconds), ``note``
``{prefix}deletions``        string   the last deletion generation handed out (``INCR``)
``{prefix}tombstones``       zset     score the deletion generation, member the JSON array
                                      ``[generation, user_id, deleted_at]`` (seconds, server clock)
===========================  =======  ================================================================

A database written before the sequence numbers, versions and tombstones existed opens as it is:
its events keep their positions and generations and count as sequence 0 (``events_since`` never
returns them: they are not served events of any model version); the new keys appear on the first
write that needs them.

Durability is the server's: with ``appendonly yes`` and ``appendfsync always`` an append is on disk
when it returns; with the default ``everysec`` up to a second of writes can be lost in a crash.

On a Redis Cluster the same store is `dynrec.online.store.redis_cluster.RedisClusterStore`
(``redis+cluster://``): a layout with one hash tag per user and one for the store-wide keys, and
appends and deletes in two steps (that module's docstring says what is atomic there).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, cast

from dynrec.data.events import Event, validate_events
from dynrec.errors import DynrecError, requires_extra
from dynrec.online.store.protocol import (
    Appended,
    CachedState,
    History,
    UserStamp,
    decode_state,
    encode_state,
    repeated_in_batch,
)
from dynrec.online.store.redis_scripts import (
    _ACQUIRE_LEASE,
    _APPEND,
    _DELETE,
    _DISCARD_VERSION,
    _DROP_STATE,
    _PUT_STATE,
    _RELEASE_LEASE,
    _SET_CURRENT,
    _batch_entry,
    _encoded_by_user,
    _history,
    _json,
    _seq_events,
)
from dynrec.online.store.urls import redact_url
from dynrec.online.store.versions import Lease, Tombstone, VersionRecord

with requires_extra("redis", "a Redis state store"):
    import redis
    from redis.cluster import RedisCluster
    from redis.exceptions import RedisClusterException

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_PREFIX", "RedisStore", "RedisStoreError", "redact_url"]

DEFAULT_PREFIX = "dynrec:"

_PAGE = 1000  # journal entries (batches) per round trip of events_since


class RedisStoreError(DynrecError):
    """The Redis server could not be reached or refused a command."""


def _check_prefix(prefix: object) -> None:
    if not isinstance(prefix, str) or not prefix:
        raise DynrecError(f"the Redis key prefix must be a non-empty string, not {prefix!r}")


def _int(value: object) -> int:
    return 0 if value is None else int(cast("bytes | str | int", value))


def _str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    """A `StateStore` and `VersionStore` on Redis (see the module docstring for the key layout and
    guarantees).

    `url_or_client`: a ``redis://``, ``rediss://`` or ``unix://`` URL (any form
    ``redis.Redis.from_url`` takes), or a `redis.Redis` client (without ``decode_responses``)
    shared with the caller, who then also closes it. The server is pinged on construction, so an
    unreachable one fails here. Redis failures surface as `RedisStoreError`.
    Thread-safe (the client's connection pool), and fork-safe (the pool reconnects in a child).
    """

    def __init__(self, url_or_client: str | redis.Redis, *, prefix: str = DEFAULT_PREFIX) -> None:
        _check_prefix(prefix)
        if isinstance(url_or_client, str):
            where = redact_url(url_or_client)
            try:
                client = redis.Redis.from_url(url_or_client)
            except ValueError as exc:
                raise DynrecError(f"bad Redis URL {where!r}: {exc}") from exc
            self._setup(client, where, True, prefix)
        else:
            kw = url_or_client.connection_pool.connection_kwargs
            where = (
                f"unix://{kw['path']}" if "path" in kw else f"redis://{kw.get('host')}:{kw.get('port')}"
            ) + f"/{kw.get('db', 0)}"
            self._setup(url_or_client, where, False, prefix)

    def _setup(self, client: redis.Redis | RedisCluster, where: str, owns: bool, prefix: str) -> None:
        """Take `client` (closed by `close` when `owns`), register the scripts, ping the server."""
        self.prefix = prefix
        self.where = where
        self._client = client
        self._owns = owns
        if client.get_encoder().decode_responses:
            raise DynrecError("RedisStore needs a client without decode_responses (states are bytes)")
        self._append = client.register_script(_APPEND)
        self._put_state = client.register_script(_PUT_STATE)
        self._delete = client.register_script(_DELETE)
        self._drop_state = client.register_script(_DROP_STATE)
        self._discard_version = client.register_script(_DISCARD_VERSION)
        self._set_current = client.register_script(_SET_CURRENT)
        self._acquire_lease = client.register_script(_ACQUIRE_LEASE)
        self._release_lease = client.register_script(_RELEASE_LEASE)
        with self._errors():
            client.ping()

    # -- keys and errors --------------------------------------------------------------------
    def _k(self, name: str) -> str:
        """A store-wide key."""
        return self.prefix + name

    def _k_user(self, user: str) -> str:
        return f"{self.prefix}u:{user}"

    def _k_events(self, user: str) -> str:
        return f"{self.prefix}e:{user}"

    def _k_state(self, user: str) -> str:
        return f"{self.prefix}s:{user}"

    def _k_ids(self, user: str) -> str:
        return f"{self.prefix}d:{user}"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (redis.RedisError, RedisClusterException) as exc:
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
        return f"{type(self).__name__}({self.where!r}, prefix={self.prefix!r})"

    # -- the StateStore protocol --------------------------------------------------------------
    def append(self, events: Iterable[Event]) -> Appended:
        evs = validate_events(events)
        if not evs:
            return Appended({})
        repeats = repeated_in_batch(evs)  # skipped here; the script checks the held ids
        kept = [i for i in range(len(evs)) if i not in repeats]
        by_user = _encoded_by_user([evs[i] for i in kept] if repeats else evs)
        keys = [
            self._k("generation"),
            self._k("users"),
            self._k("n_events"),
            self._k("seq"),
            self._k("journal"),
        ]
        args: list[str | bytes | int] = [len(kept)]
        for user, (where, encoded, ids) in by_user.items():
            keys += [self._k_user(user), self._k_events(user), self._k_ids(user)]
            args += [user, _json(user), len(encoded), "0" if ids is None else "1", *where, *encoded]
            args += ids or []
        with self._errors():
            res = cast("list[int | bytes]", self._append(keys=keys, args=args))
        stamps = {
            user: UserStamp(_int(res[1 + 2 * j]), _int(res[2 + 2 * j])) for j, user in enumerate(by_user)
        }
        skipped = repeats | {kept[_int(p)] for p in res[1 + 2 * len(by_user) :]}
        return Appended(stamps, tuple(sorted(skipped)))

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

    def put_states(self, states: Sequence[tuple[str, CachedState]]) -> list[bool]:
        """See `StateStore.put_states`: the compare-and-set script once per state, pipelined."""
        if not states:
            return []
        with self._errors():
            pipe = self._client.pipeline(transaction=False)
            for user, state in states:
                args: list[str | int | bytes] = [
                    state.version,
                    int(state.n_events),
                    int(state.generation),
                    encode_state(state),
                ]
                self._put_state(keys=[self._k_user(user), self._k_state(user)], args=args, client=pipe)
            return [bool(r) for r in pipe.execute()]

    def delete_user(self, user: str, *, tombstone: bool = True) -> bool:
        keys = [
            self._k("users"),
            self._k("n_events"),
            self._k_user(user),
            self._k_events(user),
            self._k_state(user),
            self._k("journal"),
            self._k("deletions"),
            self._k("tombstones"),
            self._k_ids(user),
        ]
        with self._errors():
            args = [user, _json(user), "1" if tombstone else "0"]
            return int(cast("int", self._delete(keys=keys, args=args))) > 0

    def event_seq(self) -> int:
        with self._errors():
            return _int(self._client.get(self._k("seq")))

    def events_since(self, seq: int, upto: int | None = None) -> list[tuple[int, Event]]:
        """See `StateStore.events_since`: the journal's batch entries ending after `seq` in pages
        of `_PAGE` (one command each), then the named users' events of those batches in one
        pipeline per page. An event is returned when its number lies in its batch's range and
        in the window, so a delete (or a delete and re-creation) of a user between the two reads
        drops that user's events of the page and nothing else."""
        out: list[tuple[int, Event]] = []
        low, high = int(seq), None if upto is None else int(upto)
        while True:
            with self._errors():
                page = cast(
                    "list[tuple[bytes, int]]",
                    self._client.zrangebyscore(
                        self._k("journal"),
                        f"({low}",
                        "+inf",
                        start=0,
                        num=_PAGE,
                        withscores=True,
                        score_cast_func=int,
                    ),
                )
            batches: list[tuple[int, int, list[tuple[str, int, int]]]] = []
            done = len(page) < _PAGE
            for value, last in page:
                first, parts = _batch_entry(value)
                if high is not None and first > high:
                    done = True  # batches are numbered in score order: the rest are later still
                    break
                lo = max(first, low + 1)
                batches.append((lo, last if high is None else min(last, high), parts))
            out += self._batch_events(batches)
            if done:
                out.sort(key=lambda p: p[0])
                return out
            low = int(page[-1][1])

    def _batch_events(
        self, batches: Sequence[tuple[int, int, list[tuple[str, int, int]]]]
    ) -> list[tuple[int, Event]]:
        """The events numbered in [lo, hi] of each (lo, hi, parts) of `batches`: each part's
        list slice (the whole list where the position is not known), read in one pipeline."""
        reads: list[tuple[str, int, int, int, int]] = []
        whole: dict[str, int] = {}
        for lo, hi, parts in batches:
            for user, start, m in parts:
                if start < 0:
                    whole.setdefault(user, len(whole))
                reads.append((user, start, m, lo, hi))
        with self._errors():
            pipe = self._client.pipeline(transaction=False)
            for user in whole:
                pipe.lrange(self._k_events(user), 0, -1)
            for user, start, m, _, _ in reads:
                if start >= 0:
                    pipe.lrange(self._k_events(user), start, start + m - 1)
            got: list[Any] = pipe.execute() if reads else []
        lists, slices = got[: len(whole)], iter(got[len(whole) :])
        out: list[tuple[int, Event]] = []
        for user, start, _, lo, hi in reads:
            values = lists[whole[user]] if start < 0 else next(slices)
            out += _seq_events(user, values, lo, hi)
        return out

    def users(self, limit: int | None = None) -> list[str]:
        if limit is not None and limit <= 0:
            return []
        end = -1 if limit is None else int(limit) - 1
        with self._errors():
            members = cast("list[bytes]", self._client.zrange(self._k("users"), 0, end))
        return [m.decode() for m in members]

    def n_events(self) -> int:
        with self._errors():
            return _int(self._client.get(self._k("n_events")))

    def iter_events(self, chunk: int = 500) -> Iterator[Event]:
        """See `StateStore.iter_events`: `chunk` users per round trip (their lists read in one
        pipeline; each list is one command, so one consistent read)."""
        low = "-"
        while True:
            with self._errors():
                users = [
                    m.decode()
                    for m in cast(
                        "list[bytes]",
                        self._client.zrangebylex(self._k("users"), low, "+", start=0, num=chunk),
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

    # -- the VersionStore protocol ------------------------------------------------------------
    def add_version(self, record: VersionRecord) -> bool:
        with self._errors():
            return bool(self._client.hsetnx(self._k("versions"), record.id, record.to_json()))

    def get_version(self, version_id: str) -> VersionRecord | None:
        with self._errors():
            raw = cast("bytes | None", self._client.hget(self._k("versions"), version_id))
        return None if raw is None else VersionRecord.from_json(raw)

    def list_versions(self) -> list[VersionRecord]:
        with self._errors():
            raw = cast("list[bytes]", self._client.hvals(self._k("versions")))
        return sorted((VersionRecord.from_json(r) for r in raw), key=lambda r: (r.created, r.id))

    def discard_version(self, version_id: str) -> bool:
        keys = [self._k("versions"), self._k("current")]
        with self._errors():
            return bool(self._discard_version(keys=keys, args=[version_id]))

    def current_version(self) -> str | None:
        with self._errors():
            raw = self._client.get(self._k("current"))
        return None if raw is None else _str(raw)

    def set_current(self, expected: str | None, version_id: str) -> bool:
        keys = [self._k("current"), self._k("versions")]
        args = ["0", ""] if expected is None else ["1", expected]
        with self._errors():
            return bool(self._set_current(keys=keys, args=[*args, version_id]))

    def acquire_lease(self, name: str, owner: str, ttl_s: float, note: str = "") -> Lease:
        ttl_us = round(float(ttl_s) * 1e6)
        with self._errors():
            held = cast(
                "list[bytes]",
                self._acquire_lease(keys=[self._k(f"lease:{name}")], args=[owner, ttl_us, note]),
            )
        return Lease(name, _str(held[0]), _int(held[1]) / 1e6, _str(held[2]))

    def release_lease(self, name: str, owner: str) -> bool:
        with self._errors():
            return bool(self._release_lease(keys=[self._k(f"lease:{name}")], args=[owner]))

    def tombstones(self, after_generation: int = 0) -> list[Tombstone]:
        with self._errors():
            raw = cast(
                "list[bytes]",
                self._client.zrangebyscore(self._k("tombstones"), f"({int(after_generation)}", "+inf"),
            )
        out = []
        for r in raw:
            g, user, at = json.loads(r)
            out.append(Tombstone(str(user), float(at), int(g)))
        return out

    def deletion_generation(self) -> int:
        with self._errors():
            return _int(self._client.get(self._k("deletions")))
