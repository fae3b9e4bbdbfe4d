"""What the two Redis stores (`dynrec.online.store.redis`, `dynrec.online.store.redis_cluster`)
share on the wire: the Lua scripts that make each write atomic and the encoding of a user's list
elements and journal entries (the key layout is in `dynrec.online.store.redis`'s docstring)."""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np

from dynrec.data.events import Event
from dynrec.online.store.protocol import EVENT_ID_WINDOW, History

_PUSH_CHUNK = 1000  # values per RPUSH/ZADD inside a script (Lua's unpack has a stack limit of ~8000)

# Sequence numbers, generations and times travel between Lua and Python as strings formatted
# with %d: a Lua number returned to Redis is truncated to an integer and tostring() switches to
# exponent notation above 1e14.

# KEYS: generation counter, users zset, n_events counter, seq counter, journal, then per user its
# stamp hash, event list and event-id zset. ARGV: the batch's number of events, then per user: its
# id, its id as a JSON string, its number of events m, "1" when event ids follow ("0": none), the
# m events' positions in the batch (0-based), its m encoded events (`_encode`: each gets ``seq]``
# appended), then (with "1") their m event ids ("" = none).
# First the events whose id the user's zset holds are marked skipped; the kept ones get sequence
# numbers seq0 + 1, seq0 + 2, ... in batch order, are pushed, and their ids enter the zset (score:
# the event's position in the user's generation). Ids of positions before the user's last
# EVENT_ID_WINDOW are removed first and never added, so the zset never holds more than the window
# (Redis keeps a zset of up to 128 short members in its compact listpack encoding and never converts
# one back). The batch's journal entry (`_batch_entry`) names each user with kept events and where
# they start in its list.
# Returns the kept events' first sequence number - 1, then per user: generation, event count after
# (as they stand for a user whose every event was skipped), then the skipped events' positions.
_APPEND = f"""
local total = tonumber(ARGV[1])
local skip, nskip = {{}}, 0
local a = 2
for k = 6, #KEYS, 3 do
  local m = tonumber(ARGV[a + 2])
  if ARGV[a + 3] == '1' then
    for j = 0, m - 1 do
      local id = ARGV[a + 4 + 2 * m + j]
      if id ~= '' and redis.call('ZSCORE', KEYS[k + 2], id) then
        skip[tonumber(ARGV[a + 4 + j])] = true
        nskip = nskip + 1
      end
    end
    a = a + 4 + 3 * m
  else
    a = a + 4 + 2 * m
  end
end
local kept = total - nskip
local rank = {{}}
local r = 0
if nskip > 0 then
  for i = 0, total - 1 do
    if not skip[i] then
      r = r + 1
      rank[i] = r
    end
  end
end
local seq0 = redis.call('INCRBY', KEYS[4], kept) - kept
local out = {{string.format('%d', seq0)}}
local entry = {{'[' .. string.format('%d', seq0 + 1)}}
a = 2
for k = 6, #KEYS, 3 do
  local user, ujson, m, hasids = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3] == '1'
  local p0, e0, i0 = a + 4, a + 4 + m, a + 4 + 2 * m
  if hasids then a = a + 4 + 3 * m else a = a + 4 + 2 * m end
  local elems, ids = {{}}, {{}}
  for j = 0, m - 1 do
    local pos = tonumber(ARGV[p0 + j])
    if not skip[pos] then
      elems[#elems + 1] = ARGV[e0 + j] .. string.format('%d', seq0 + (rank[pos] or pos + 1)) .. ']'
      if hasids and ARGV[i0 + j] ~= '' then
        ids[#ids + 1] = #elems
        ids[#ids + 1] = ARGV[i0 + j]
      end
    end
  end
  local mk = #elems
  if mk == 0 then
    local held = redis.call('HMGET', KEYS[k], 'gen', 'n')
    out[#out + 1] = tonumber(held[1] or 0)
    out[#out + 1] = tonumber(held[2] or 0)
  else
    local gen = redis.call('HGET', KEYS[k], 'gen')
    if not gen then
      gen = redis.call('INCR', KEYS[1])
      redis.call('HSET', KEYS[k], 'gen', gen)
      redis.call('ZADD', KEYS[2], 0, user)
    end
    local n = redis.call('HINCRBY', KEYS[k], 'n', mk)
    for s = 1, mk, {_PUSH_CHUNK} do
      redis.call('RPUSH', KEYS[k + 1], unpack(elems, s, math.min(s + {_PUSH_CHUNK - 1}, mk)))
    end
    if n > {EVENT_ID_WINDOW} then
      redis.call('ZREMRANGEBYSCORE', KEYS[k + 2], '-inf', string.format('%d', n - {EVENT_ID_WINDOW}))
    end
    local add = {{}}
    for x = 1, #ids, 2 do
      local pos = n - mk + ids[x]
      if pos > n - {EVENT_ID_WINDOW} then
        add[#add + 1] = string.format('%d', pos)
        add[#add + 1] = ids[x + 1]
      end
    end
    for s = 1, #add, {_PUSH_CHUNK} do
      redis.call('ZADD', KEYS[k + 2], unpack(add, s, math.min(s + {_PUSH_CHUNK - 1}, #add)))
    end
    entry[#entry + 1] = ujson .. ',' .. string.format('%d,%d', n - mk, mk)
    out[#out + 1] = tonumber(gen)
    out[#out + 1] = n
  end
end
if kept > 0 then
  redis.call('ZADD', KEYS[5], string.format('%d', seq0 + kept), table.concat(entry, ',') .. ']')
  redis.call('INCRBY', KEYS[3], kept)
end
for i = 0, total - 1 do
  if skip[i] then out[#out + 1] = i end
end
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
# the deletion counter, the tombstones zset, the user's event-id zset. ARGV: user, user as a JSON
# string, "1" to record a tombstone ("0": a history replaced, not a person forgotten). The user's
# list holds its events in sequence order, so each batch's journal entry (the first with a score
# >= an event's number) is found once. Returns how many of the user's keys existed.
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
local n = redis.call('DEL', KEYS[3], KEYS[4], KEYS[5], KEYS[9])
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


def _encoded_by_user(events: Sequence[Event]) -> dict[str, tuple[list[int], list[bytes], list[str] | None]]:
    """Per user of a batch (in first-appearance order): the positions of their events in the batch,
    the events encoded by `_encode` and their event ids ("" = none; None when none of the user's
    events has one) — what both append paths (one server, cluster) send."""
    by_user: dict[str, tuple[list[int], list[bytes], list[str] | None]] = {}
    for i, e in enumerate(events):
        where, encoded, ids = by_user.setdefault(e.user_id, ([], [], None))
        if e.event_id is not None and ids is None:
            ids = [""] * len(where)
            by_user[e.user_id] = (where, encoded, ids)
        where.append(i)
        encoded.append(_encode(e))
        if ids is not None:
            ids.append(e.event_id or "")
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
