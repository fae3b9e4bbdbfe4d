"""What the two Redis stores (`dynrec.online.store.redis`, `dynrec.online.store.redis_cluster`)
share on the wire: the Lua scripts that make each write atomic and the encoding of a user's list
elements and journal entries (the key layout is in `dynrec.online.store.redis`'s docstring)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from dynrec.data.events import Event
from dynrec.online.store.protocol import History

_PUSH_CHUNK = 1000  # values per RPUSH/ZADD inside a script (Lua's unpack has a stack limit of ~8000)

# Sequence numbers, generations and times travel between Lua and Python as strings formatted
# with %d: a Lua number returned to Redis is truncated to an integer and tostring() switches to
# exponent notation above 1e14.

# KEYS: generation counter, users zset, n_events counter, seq counter, journal, then per user its
# stamp hash and event list. ARGV: the batch's number of events, then per user: its id, its id as
# a JSON string, its number of events m, the m events' positions in the batch (0-based), its m
# encoded events (`_encode`: each gets ``seq]`` appended). Event i of the batch gets sequence
# number seq0 + i + 1; the batch's
# journal entry (`_batch_entry`) names each user with where its events start in its list.
# Returns the batch's first sequence number - 1, then per user: generation, event count after.
_APPEND = f"""
local total = tonumber(ARGV[1])
local seq0 = redis.call('INCRBY', KEYS[4], total) - total
local out = {{string.format('%d', seq0)}}
local entry = {{'[' .. string.format('%d', seq0 + 1)}}
local a = 2
for k = 6, #KEYS, 2 do
  local user, ujson, m = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])
  a = a + 3
  local gen = redis.call('HGET', KEYS[k], 'gen')
  if not gen then
    gen = redis.call('INCR', KEYS[1])
    redis.call('HSET', KEYS[k], 'gen', gen)
    redis.call('ZADD', KEYS[2], 0, user)
  end
  local n = redis.call('HINCRBY', KEYS[k], 'n', m)
  local elems = {{}}
  for j = 0, m - 1 do
    elems[j + 1] = ARGV[a + m + j] .. string.format('%d', seq0 + tonumber(ARGV[a + j]) + 1) .. ']'
  end
  for s = 1, m, {_PUSH_CHUNK} do
    redis.call('RPUSH', KEYS[k + 1], unpack(elems, s, math.min(s + {_PUSH_CHUNK - 1}, m)))
  end
  a = a + 2 * m
  entry[#entry + 1] = ujson .. ',' .. string.format('%d,%d', n - m, m)
  out[#out + 1] = tonumber(gen)
  out[#out + 1] = n
end
redis.call('ZADD', KEYS[5], string.format('%d', seq0 + total), table.concat(entry, ',') .. ']')
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

# Records a tombstone: KEYS[t] the deletion counter, KEYS[t + 1] the tombstones zset; `ujson` the
# user id as a JSON string. Shared by the delete scripts.
_TOMBSTONE = """
local function tombstone(t, ujson)
  local now = redis.call('TIME')
  local g = redis.call('INCR', KEYS[t])
  local at = string.format('%d.%06d', now[1], now[2])
  redis.call('ZADD', KEYS[t + 1], g, '[' .. string.format('%d', g) .. ',' .. ujson .. ',' .. at .. ']')
end
"""

# Takes a user out of a batch's journal entry (`_batch_entry`): KEYS[j] the journal, `entry` and
# `score` the entry as held, `ujson` the user id as a JSON string. ``,"<user>",`` occurs in an
# entry only where that user's part starts (inside a JSON string a '"' is always escaped), and a
# user has at most one part per batch. An entry naming no one any more is removed. Returns the
# user's number of events in the batch (0 when the entry does not name the user).
_UNJOURNAL = """
local function unjournal(j, entry, score, ujson)
  local i, e = string.find(entry, ',' .. ujson .. ',', 1, true)
  if not i then return 0 end
  local _, k, m = string.find(entry, '^%-?%d+,(%d+)', e + 1)
  local rest = string.sub(entry, 1, i - 1) .. string.sub(entry, k + 1)
  redis.call('ZREM', KEYS[j], entry)
  if string.find(rest, ',', 1, true) then redis.call('ZADD', KEYS[j], score, rest) end
  return tonumber(m)
end
"""

# KEYS: users zset, n_events counter, the user's stamp hash, event list, state hash, the journal,
# the deletion counter, the tombstones zset. ARGV: user, user as a JSON string, "1" to record a
# tombstone ("0": a history replaced, not a person forgotten). The user's list holds its events
# in sequence order, so each batch's journal entry (the first with a score >= an event's number)
# is found once. Returns how many of the user's three keys existed.
_DELETE = (
    _TOMBSTONE
    + _UNJOURNAL
    + """
local held = redis.call('LLEN', KEYS[4])
if held > 0 then
  local covered = -1
  for _, e in ipairs(redis.call('LRANGE', KEYS[4], 0, -1)) do
    local seq = cjson.decode(e)[5]
    if seq and seq > covered then
      local found = redis.call('ZRANGEBYSCORE', KEYS[6], string.format('%d', seq), '+inf',
                               'WITHSCORES', 'LIMIT', 0, 1)
      if #found > 0 then
        covered = tonumber(found[2])
        unjournal(6, found[1], found[2], ARGV[2])
      end
    end
  end
end
local n = redis.call('DEL', KEYS[3], KEYS[4], KEYS[5])
redis.call('ZREM', KEYS[1], ARGV[1])
if held > 0 then redis.call('DECRBY', KEYS[2], held) end
if ARGV[3] == '1' then tombstone(7, ARGV[2]) end
return n
"""
)

# KEYS: the user's state hash. ARGV: the unreadable blob. Drops only that blob (a good state
# written since stays).
_DROP_STATE = """
if redis.call('HGET', KEYS[1], 'blob') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
"""

# KEYS: versions hash, current pointer. ARGV: version id. 1 when removed (not current, known).
_DISCARD_VERSION = """
if redis.call('GET', KEYS[2]) == ARGV[1] then return 0 end
return redis.call('HDEL', KEYS[1], ARGV[1])
"""

# KEYS: current pointer, versions hash. ARGV: "1" when a current version is expected ("0": none),
# the expected id, the new id. Compare-and-set: 1 when set.
_SET_CURRENT = """
local held = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if held ~= ARGV[2] then return 0 end
elseif held then
  return 0
end
if redis.call('HEXISTS', KEYS[2], ARGV[3]) == 0 then return 0 end
redis.call('SET', KEYS[1], ARGV[3])
return 1
"""

# KEYS: the lease hash. ARGV: owner, ttl (microseconds), note. Returns the lease as it stands:
# owner, expires (microseconds, server clock), note.
_ACQUIRE_LEASE = """
local now = redis.call('TIME')
local t = tonumber(now[1]) * 1000000 + tonumber(now[2])
local held = redis.call('HMGET', KEYS[1], 'owner', 'expires', 'note')
if not held[1] or tonumber(held[2]) <= t or held[1] == ARGV[1] then
  local expires = string.format('%d', t + tonumber(ARGV[2]))
  redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'expires', expires, 'note', ARGV[3])
  return {ARGV[1], expires, ARGV[3]}
end
return held
"""

# KEYS: the lease hash. ARGV: owner. 1 when released.
_RELEASE_LEASE = """
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def _json(value: str) -> str:
    return _jstr(value)


def _jstr(value: str) -> str:
    """``json.dumps(value, ensure_ascii=False)``, without its cost for the usual id (printable,
    no quote or backslash: the only characters JSON escapes are those and control characters)."""
    if value.isprintable() and '"' not in value and "\\" not in value:
        return '"' + value + '"'
    return json.dumps(value, ensure_ascii=False)


def _encode(e: Event) -> bytes:
    """A validated event as the head of its list element, ``[item_id,timestamp,event_type,weight,``
    (the JSON of `json.dumps` with separators ``,``/``:``): the store appends ``seq]``."""
    return f"[{_jstr(e.item_id)},{e.timestamp},{_jstr(e.event_type)},{e.weight!r},".encode()


def _encoded_by_user(events: Sequence[Event]) -> dict[str, tuple[list[int], list[bytes]]]:
    """Per user of a batch (in first-appearance order): the positions of their events in the batch
    and the events encoded by `_encode` — what both append paths (one server, cluster) send."""
    by_user: dict[str, tuple[list[int], list[bytes]]] = {}
    for i, e in enumerate(events):
        where, encoded = by_user.setdefault(e.user_id, ([], []))
        where.append(i)
        encoded.append(_encode(e))
    return by_user


def _history(values: Sequence[bytes]) -> History:
    """Elements ``[item, ts, type, weight]`` or ``[item, ts, type, weight, seq]``."""
    if not values:
        return History()
    rows = [json.loads(v) for v in values]
    return History(
        tuple(str(r[0]) for r in rows),
        np.fromiter((int(r[1]) for r in rows), dtype=np.int64, count=len(rows)),
        tuple(str(r[2]) for r in rows),
        np.fromiter((float(r[3]) for r in rows), dtype=np.float64, count=len(rows)),
    )


def _batch_entry(value: bytes) -> tuple[int, list[tuple[str, int, int]]]:
    """A journal entry ``[first, user, start, m, user, start, m, ...]``: the batch's first
    sequence number, and per user the position in its list of its first event of the batch (-1:
    not known, on a Redis Cluster) and its number of events in the batch."""
    row = json.loads(value)
    return int(row[0]), [(str(row[j]), int(row[j + 1]), int(row[j + 2])) for j in range(1, len(row), 3)]


def _seq_events(user: str, values: Sequence[bytes], low: int, high: int) -> list[tuple[int, Event]]:
    """The elements of `user`'s list with sequence number in [`low`, `high`], as events."""
    out = []
    for v in values:
        r = json.loads(v)
        if len(r) > 4 and low <= r[4] <= high:
            out.append((int(r[4]), Event(user, str(r[0]), int(r[1]), str(r[2]), float(r[3]))))
    return out
