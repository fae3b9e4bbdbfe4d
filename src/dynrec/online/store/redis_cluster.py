"""`RedisClusterStore`: the `RedisStore` on a Redis Cluster (``redis+cluster://host:port``), for the
scale where one Redis server is not enough.

A Lua script or a ``MULTI`` transaction in a cluster may only touch keys of one hash slot. The
layout therefore gives each user one hash tag and the store-wide keys another (shown for the
default prefix ``dynrec:``; the part in braces is the hash tag, so a prefix may not contain braces):

=================================  =======  ==============================================================
key                                type     content
=================================  =======  ==============================================================
``{dynrec:u:<user>}u``             hash     ``gen``, ``n`` (as `RedisStore`'s ``u:<user>``); after a delete
                                            only ``floor`` (see below), expiring after a day
``{dynrec:u:<user>}e``             list     the user's events (as `RedisStore`'s ``e:<user>``, with seq)
``{dynrec:u:<user>}s``             hash     the cached state (as `RedisStore`'s ``s:<user>``)
``{dynrec:u:<user>}d``             zset     the user's recent event ids (as `RedisStore`'s ``d:<user>``)
``{dynrec:}gens``                  hash     user -> current generation: the authority on generations
``{dynrec:}uj:<user>``             list     the scores (last numbers) of the journal entries naming the
                                            user (one per batch); the entries' list positions are -1:
                                            ``events_since`` reads each named user's whole list
``{dynrec:}generation``, ``seq``,  ...      as `RedisStore`'s keys of those names: counters, the users
``n_events``, ``users``,                    index, the journal, model versions, the current-version
``journal``, ``versions``,                  pointer, leases, tombstones
``current``, ``lease:<name>``,
``deletions``, ``tombstones``
=================================  =======  ==============================================================

A user's keys share one slot, so ``put_state``'s compare-and-set, ``since`` and ``get_state`` are one
script or transaction as on one server; the store-wide keys share another, so the version pointer's
compare-and-set, leases, tombstones and the journal are too. Users spread over the cluster's nodes;
the store-wide slot (the journal: one small entry per batch) lives on one node.

What is atomic. An append is two steps:

1. one script on the store-wide slot takes the batch's block of sequence numbers, gives each new
   user a generation (``gens`` is the authority on a user's generation), and writes the batch's
   journal entry, the users index and ``n_events``: the store-wide view (``event_seq``,
   ``users``, ``n_events``, ``tombstones``, versions) moves atomically, a batch at a time,
   exactly as on one server;
2. one script per user on the user's slot appends the user's events under that generation (all of
   the user's events or none). ``events_since`` reads the events from the histories the journal
   names, so it shows a batch's events of a user once step 2 ran for that user (a batch over
   several users reaches their histories, and ``events_since``, one user at a time).

A delete is two steps too, in the privacy-safe order: (1) one store-wide script records the
tombstone and removes the user from ``gens``, the users index, the journal and ``n_events``;
(2) one script on the user's slot removes the history and state of every generation handed out
before step 1 and leaves a ``floor`` (that generation number, kept a day), so an append whose
step 1 came before the delete cannot bring the deleted generation back in step 2 (its events are
dropped: they left the journal with the delete; the append's stamp for the user is
``UserStamp()``). A history of a generation older than ``gens``' is dropped by the next append.

What a crash between the steps leaves behind (the call that crashed raised): after an append's
step 1, a journal entry naming users whose histories lack the batch's events (``events_since``
reads events from the histories, so it returns none of them; ``n_events`` counts them);
repeating the append brings them into the histories under new numbers, counted once in
training (an acknowledged write is never lost). After a delete's step 1,
the tombstone and the store-wide removal are done but the user's history and state stay readable
by ``history``/``stamp``/``since`` until the delete is repeated or the user appends again. Nothing
of either step ever lets a deleted user's events back into the journal, ``users``,
``iter_events`` or training (readers that list users read ``gens`` and skip histories of another
generation).

Within one user, history order is the order in which step 2 ran; sequence numbers follow step 1:
two appends racing for one user may appear in the history in the other order than their sequence
numbers (on one server both orders agree).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any, cast

from dynrec.data.events import Event, validate_events
from dynrec.errors import DynrecError, requires_extra
from dynrec.online.store.protocol import EVENT_ID_WINDOW, Appended, CachedState, UserStamp, repeated_in_batch
from dynrec.online.store.redis import (
    DEFAULT_PREFIX,
    RedisStore,
    RedisStoreError,
    _check_prefix,
    _int,
)
from dynrec.online.store.redis_scripts import (
    _PUSH_CHUNK,
    _TOMBSTONE,
    _UNJOURNAL,
    _encoded_by_user,
    _history,
    _json,
)
from dynrec.online.store.urls import CLUSTER_SCHEMES, redact_url

with requires_extra("redis", "a Redis state store"):
    from redis.cluster import RedisCluster
    from redis.commands.core import Script
    from redis.exceptions import RedisClusterException

__all__ = ["CLUSTER_SCHEMES", "RedisClusterStore"]

FLOOR_TTL_MS = 86_400_000
"""How long a deleted user's ``floor`` is kept: longer than any append takes between its steps."""

# Step 1 of an append, on the store-wide slot. KEYS: generation counter, users zset, n_events
# counter, seq counter, journal, gens hash, then per user its uj list. ARGV: the batch's number
# of events, then per user: its id, its id as a JSON string, its number of events m. Writes the
# batch's journal entry (as `RedisStore`'s, each user's list position -1: not known here) and
# appends the batch's last number to each user's uj list. Returns the batch's first sequence
# number - 1, then per user its generation.
_RESERVE = """
local total = tonumber(ARGV[1])
local seq0 = redis.call('INCRBY', KEYS[4], total) - total
local last = string.format('%d', seq0 + total)
local out = {string.format('%d', seq0)}
local entry = {'[' .. string.format('%d', seq0 + 1)}
local a = 2
for k = 7, #KEYS do
  local user, ujson, m = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  a = a + 3
  local gen = redis.call('HGET', KEYS[6], user)
  if not gen then
    gen = redis.call('INCR', KEYS[1])
    redis.call('HSET', KEYS[6], user, gen)
    redis.call('ZADD', KEYS[2], 0, user)
  end
  redis.call('RPUSH', KEYS[k], last)
  entry[#entry + 1] = ujson .. ',-1,' .. m
  out[#out + 1] = tonumber(gen)
end
redis.call('ZADD', KEYS[5], last, table.concat(entry, ',') .. ']')
redis.call('INCRBY', KEYS[3], total)
return out
"""

# Step 2 of an append, on the user's slot. KEYS: the user's stamp hash, event list, state hash,
# event-id zset. ARGV: the generation step 1 gave, "1" when event ids follow the events ("0":
# none), the user's m encoded events with their sequence numbers, then (with "1") their m event ids
# ("" = none). An event whose id the zset holds is skipped (its sequence number stays unused); the
# others are pushed and their ids kept as `RedisStore`'s append script keeps them. Returns the
# generation, the event count after and the skipped events' indices (0-based, among the m), or
# {0, 0} when the generation has ended (a delete came between the steps: the events left the
# journal with it).
_USER_APPEND = f"""
local g = tonumber(ARGV[1])
local held = redis.call('HMGET', KEYS[1], 'gen', 'floor')
if held[2] and g <= tonumber(held[2]) then return {{0, 0}} end
if held[1] and tonumber(held[1]) > g then return {{0, 0}} end
if not held[1] or tonumber(held[1]) < g then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
  redis.call('HSET', KEYS[1], 'gen', ARGV[1])
end
local hasids = ARGV[2] == '1'
local m = #ARGV - 2
if hasids then m = m / 2 end
local rows, ids, out = {{}}, {{}}, {{g, 0}}
for j = 1, m do
  local id = ''
  if hasids then id = ARGV[2 + m + j] end
  if id ~= '' and redis.call('ZSCORE', KEYS[4], id) then
    out[#out + 1] = j - 1
  else
    rows[#rows + 1] = ARGV[2 + j]
    if id ~= '' then
      ids[#ids + 1] = #rows
      ids[#ids + 1] = id
    end
  end
end
local n = redis.call('HINCRBY', KEYS[1], 'n', #rows)
for s = 1, #rows, {_PUSH_CHUNK} do
  redis.call('RPUSH', KEYS[2], unpack(rows, s, math.min(s + {_PUSH_CHUNK - 1}, #rows)))
end
if n > {EVENT_ID_WINDOW} then
  redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', string.format('%d', n - {EVENT_ID_WINDOW}))
end
local add = {{}}
for x = 1, #ids, 2 do
  local pos = n - #rows + ids[x]
  if pos > n - {EVENT_ID_WINDOW} then
    add[#add + 1] = string.format('%d', pos)
    add[#add + 1] = ids[x + 1]
  end
end
for s = 1, #add, {_PUSH_CHUNK} do
  redis.call('ZADD', KEYS[4], unpack(add, s, math.min(s + {_PUSH_CHUNK - 1}, #add)))
end
out[2] = n
return out
"""

# Step 1 of a delete, on the store-wide slot. KEYS: users zset, n_events counter, gens hash,
# journal, deletion counter, tombstones zset, generation counter, the user's uj list. ARGV: user,
# user as a JSON string, "1" to record a tombstone. Takes the user out of the journal entry of
# each batch its uj list names. Returns whether the user had a generation and the last
# generation handed out.
_DELETE_WIDE = (
    _TOMBSTONE
    + _UNJOURNAL
    + """
local held = redis.call('HGET', KEYS[3], ARGV[1])
local n = 0
for _, s in ipairs(redis.call('LRANGE', KEYS[8], 0, -1)) do
  for _, entry in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], s, s)) do
    n = n + unjournal(4, entry, s, ARGV[2])
  end
end
if n > 0 then redis.call('DECRBY', KEYS[2], n) end
redis.call('DEL', KEYS[8])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
if ARGV[3] == '1' then tombstone(5, ARGV[2]) end
local last = redis.call('GET', KEYS[7]) or '0'
return {held and 1 or 0, last}
"""
)

# Step 2 of a delete, on the user's slot. KEYS: the user's stamp hash, event list, state hash,
# event-id zset.
# ARGV: the last generation handed out at step 1, the floor's time to live (ms). Removes every
# generation up to it and leaves the floor. Returns how many of the three keys it removed.
_DELETE_USER = """
local last = tonumber(ARGV[1])
local held = redis.call('HMGET', KEYS[1], 'gen', 'floor')
if held[1] and tonumber(held[1]) > last then return 0 end
local n = redis.call('EXISTS', KEYS[2], KEYS[3])
if held[1] then n = n + 1 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4])
local floor = ARGV[1]
if held[2] and tonumber(held[2]) > last then floor = held[2] end
redis.call('HSET', KEYS[1], 'floor', floor)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return n
"""

# A user's generation and events in one read. KEYS: the user's stamp hash, event list.
_READ_USER = """
return {redis.call('HGET', KEYS[1], 'gen') or '0', redis.call('LRANGE', KEYS[2], 0, -1)}
"""


def cluster_node_url(url: str) -> str:
    """``redis+cluster://...`` -> ``redis://...`` (the form redis-py's cluster client takes)."""
    scheme, rest = url.split("://", 1) if "://" in url else ("", url)
    return scheme.lower().removesuffix("+cluster") + "://" + rest


class RedisClusterStore(RedisStore):
    """A `RedisStore` on a Redis Cluster (see the module docstring for the key layout and what is
    atomic). `url_or_client`: a ``redis+cluster://host:port`` (``rediss+cluster://`` with TLS)
    URL of any node, with the options ``redis.cluster.RedisCluster.from_url`` takes, or a
    `RedisCluster` client (without ``decode_responses``) the caller closes."""

    def __init__(self, url_or_client: str | RedisCluster, *, prefix: str = DEFAULT_PREFIX) -> None:
        _check_prefix(prefix)
        if "{" in prefix or "}" in prefix:
            raise DynrecError(
                f"a Redis Cluster key prefix may not contain braces (its hash tag), not {prefix!r}"
            )
        if isinstance(url_or_client, str):
            where = redact_url(url_or_client)
            try:
                client = RedisCluster.from_url(cluster_node_url(url_or_client))
            except ValueError as exc:
                raise DynrecError(f"bad Redis Cluster URL {where!r}: {exc}") from exc
            except RedisClusterException as exc:
                raise RedisStoreError(
                    f"Redis Cluster state store {where} (prefix {prefix!r}): {exc}"
                ) from exc
            owns = True
        else:
            node = url_or_client.get_default_node()  # type: ignore[no-untyped-call]  # unannotated in redis-py
            where = f"redis+cluster://{node.host}:{node.port}" if node is not None else "redis+cluster://?"
            client, owns = url_or_client, False
        self._cluster_client = client
        self._setup(client, where, owns, prefix)
        self._reserve = client.register_script(_RESERVE)
        self._user_append = client.register_script(_USER_APPEND)
        self._delete_wide = client.register_script(_DELETE_WIDE)
        self._delete_user = client.register_script(_DELETE_USER)
        self._read_user = client.register_script(_READ_USER)

    # -- keys: one hash tag per user, one for the store-wide keys --------------------------------
    def _k(self, name: str) -> str:
        return "{" + self.prefix + "}" + name

    def _k_user(self, user: str) -> str:
        return "{" + self.prefix + "u:" + user + "}u"

    def _k_events(self, user: str) -> str:
        return "{" + self.prefix + "u:" + user + "}e"

    def _k_state(self, user: str) -> str:
        return "{" + self.prefix + "u:" + user + "}s"

    def _k_ids(self, user: str) -> str:
        return "{" + self.prefix + "u:" + user + "}d"

    def _user_keys(self, user: str) -> list[str]:
        return [self._k_user(user), self._k_events(user), self._k_state(user), self._k_ids(user)]

    # -- the two-step writes ---------------------------------------------------------------------
    def _held_ids(self, evs: Sequence[Event], skipped: set[int]) -> None:
        """Add to `skipped` the positions of the events whose id the user's zset holds (one read
        per user with ids, before step 1, so that a re-delivered event takes no sequence number;
        step 2 checks again atomically)."""
        by_user: dict[str, tuple[list[int], list[str]]] = {}
        for i, e in enumerate(evs):
            if e.event_id is not None and i not in skipped:
                where, ids = by_user.setdefault(e.user_id, ([], []))
                where.append(i)
                ids.append(e.event_id)
        for user, (where, ids) in by_user.items():
            scores: list[float | None] = self._client.zmscore(self._k_ids(user), ids)
            skipped.update(i for i, sc in zip(where, scores, strict=True) if sc is not None)

    def append(self, events: Iterable[Event]) -> Appended:
        """See `StateStore.append`, in the two steps of the module docstring. A repeated event id
        is found before step 1 (the common case: a re-delivery) or, when two appends of one id
        race, by step 2, which then skips it after step 1 counted it: ``n_events`` and the batch's
        journal entry then count one event too many, as after a crash between the steps."""
        evs = validate_events(events)
        if not evs:
            return Appended({})
        skipped = repeated_in_batch(evs)
        out: dict[str, UserStamp] = {}
        with self._errors():
            if any(e.event_id is not None for e in evs):
                self._held_ids(evs, skipped)
            kept = [i for i in range(len(evs)) if i not in skipped]
            by_user = _encoded_by_user([evs[i] for i in kept])
            if kept:
                keys = [self._k(n) for n in ("generation", "users", "n_events", "seq", "journal", "gens")]
                keys += [self._k(f"uj:{user}") for user in by_user]
                args: list[str | bytes | int] = [len(kept)]
                for user, (_, encoded, _) in by_user.items():
                    args += [user, _json(user), len(encoded)]
                res = cast("list[int | bytes]", self._reserve(keys=keys, args=args))
                seq0 = _int(res[0])
                calls: list[tuple[list[str], list[Any]]] = []
                for j, (user, (where, encoded, ids)) in enumerate(by_user.items()):
                    rows = [enc + b"%d]" % (seq0 + i + 1) for i, enc in zip(where, encoded, strict=True)]
                    flag = "0" if ids is None else "1"
                    calls.append((self._user_keys(user), [_int(res[1 + j]), flag, *rows, *(ids or [])]))
                done = self._each(self._user_append, calls)
                for (user, (where, _, _)), got in zip(by_user.items(), done, strict=True):
                    gen, n = _int(got[0]), _int(got[1])
                    out[user] = UserStamp(gen, n) if gen else UserStamp()
                    skipped.update(kept[where[_int(j)]] for j in got[2:])
            for i in skipped:  # users whose every event was skipped: their stamp as it stands
                if evs[i].user_id not in out:
                    out[evs[i].user_id] = self.stamp(evs[i].user_id)
        return Appended(out, tuple(sorted(skipped)))

    def delete_user(self, user: str, *, tombstone: bool = True) -> bool:
        wide = [
            self._k(n)
            for n in (
                "users",
                "n_events",
                "gens",
                "journal",
                "deletions",
                "tombstones",
                "generation",
                f"uj:{user}",
            )
        ]
        with self._errors():
            had, last = cast(
                "list[int | bytes]",
                self._delete_wide(keys=wide, args=[user, _json(user), "1" if tombstone else "0"]),
            )
            n = self._delete_user(keys=self._user_keys(user), args=[_int(last), FLOOR_TTL_MS])
        return bool(_int(had)) or _int(n) > 0

    def iter_events(self, chunk: int = 500) -> Iterator[Event]:
        """See `StateStore.iter_events`: `chunk` users per round trip with their generations from
        ``gens``; each history is read with its generation in one script, and one of another
        generation (a delete or re-creation between the steps of another client's write) is
        skipped."""
        low = "-"
        while True:
            with self._errors():
                members = cast(
                    "list[bytes]", self._client.zrangebylex(self._k("users"), low, "+", start=0, num=chunk)
                )
                users = [m.decode() for m in members]
                gens = cast("list[bytes | None]", self._client.hmget(self._k("gens"), users)) if users else []
                read = self._each(
                    self._read_user, [([self._k_user(u), self._k_events(u)], []) for u in users]
                )
            for user, gen, (held, values) in zip(users, gens, read, strict=True):
                if gen is None or _int(held) != _int(gen):
                    continue
                h = _history(values)
                for item, ts, et, w in zip(
                    h.items, h.timestamps.tolist(), h.event_types, h.weights.tolist(), strict=True
                ):
                    yield Event(user, item, int(ts), et, float(w))
            if len(users) < chunk:
                return
            low = "(" + users[-1]

    def put_states(self, states: Sequence[tuple[str, CachedState]]) -> list[bool]:
        """One compare-and-set per state, each in its user's slot (no cluster pipeline of scripts)."""
        return [self.put_state(user, state) for user, state in states]

    def _each(self, script: Script, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
        """`script` once per (keys, args) of `calls`, one round trip each (redis-py's cluster
        pipeline refuses scripts; the cluster client follows a slot that moved)."""
        return [script(keys=keys, args=args) for keys, args in calls]
