"""`RedisStreamSource`: the `dynrec.service.consumer.EventSource` of ``dynrec consume`` on Redis
Streams (one server: ``redis://``, ``rediss://``, ``unix://``), and `publish_events`, a producer.

One consumer group reads the partition streams (`dynrec.service.consumer.partition_streams`); a
`RedisStreamSource` reads the partitions it was given, each in three phases:

1. **own** — its own pending entries (``XREADGROUP ... 0``): what it read and did not acknowledge
   before it restarted (under the same consumer name) or before a failed batch (`rewind`);
2. **others** — entries other consumers of the group left pending: taken over with ``XAUTOCLAIM``
   once idle for `claim_idle_ms` (a dead consumer's), until ``XPENDING`` shows none left;
3. **live** — new entries (``XREADGROUP ... >``, blocking), all live partitions in one call.

New entries of a partition are read only in phase 3, after every older entry of it was applied:
one user's events (one partition) are applied in stream order.

A partition is held by one consumer at a time through a lease key ``<partition stream>:lease:<group>``
(the consumer name, expiring after `claim_idle_ms`, renewed every third of it): a second consumer
started for a held partition waits until the holder stops renewing (it died) — by then the dead
consumer's entries are idle long enough to be claimed. A consumer that finds its lease taken (it
stalled longer than the timeout) stops with `LostPartition`. Consumer names must be unique among
live consumers (the default, `default_consumer_name`, is the host and the partitions).

Bad entries go to ``<stream>:dead`` (`dead_letter_stream`) with ``stream``, ``id``, ``field``,
``reason`` and ``entry`` (the entry's fields as JSON), in one ``MULTI`` with their ``XACK``: each
bad entry is dead-lettered once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, cast

from dynrec.data.events import Event
from dynrec.errors import DynrecError, requires_extra
from dynrec.online.store.urls import redact_url
from dynrec.service.consumer import (
    BadEntry,
    Entry,
    LostPartition,
    StreamBacklog,
    dead_letter_stream,
    entry_fields,
    partition_streams,
    stream_of,
)

with requires_extra("redis", "a Redis Streams source"):
    import redis

log = logging.getLogger(__name__)

__all__ = ["RedisStreamSource", "publish_events"]

# KEYS: the lease. ARGV: owner, ttl (ms). Takes the lease when free or already the owner's (and
# renews it); returns the holder.
_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if not held or held == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return ARGV[1]
end
return held
"""

# KEYS: the lease. ARGV: owner. Removes it when the owner's.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

_OWN, _OTHERS, _LIVE = "own", "others", "live"


def _s(value: object) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


class RedisStreamSource:
    """Partitions `partition_ids` (default: all) of `stream` split into `partitions`, read by
    `consumer` of `group` (see the module docstring). The group is created on the partitions that
    lack it, at their first entry (``XGROUP CREATE ... 0 MKSTREAM``). `url_or_client`: a Redis URL or
    a `redis.Redis` client the caller closes. Waits for held partitions up to `wait_s` seconds
    (None = as long as it takes), then `DynrecError`."""

    def __init__(
        self,
        url_or_client: str | redis.Redis,
        stream: str,
        group: str,
        consumer: str,
        *,
        partitions: int = 1,
        partition_ids: Sequence[int] | None = None,
        claim_idle_ms: int = 30_000,
        wait_s: float | None = None,
    ) -> None:
        names = partition_streams(stream, partitions)
        ids = list(range(partitions)) if partition_ids is None else list(partition_ids)
        if not ids or len(set(ids)) != len(ids) or not all(0 <= p < partitions for p in ids):
            raise DynrecError(f"partition ids must be distinct, in [0, {partitions}), got {ids}")
        for name, value in (("stream", stream), ("group", group), ("consumer", consumer)):
            if not value or not value.strip():
                raise DynrecError(f"the {name} name must not be empty")
        if claim_idle_ms < 100:
            raise DynrecError(f"claim_idle_ms must be >= 100, got {claim_idle_ms}")
        if isinstance(url_or_client, str):
            self.where = redact_url(url_or_client)
            if "+cluster" in url_or_client.split("://", 1)[0].lower():
                raise DynrecError("a Redis Cluster is no stream source yet: give a redis:// URL")
            try:
                self._client = redis.Redis.from_url(url_or_client)
            except ValueError as exc:
                raise DynrecError(f"bad Redis URL {self.where!r}: {exc}") from exc
            self._owns = True
        else:
            self._client, self._owns, self.where = url_or_client, False, "a Redis client"
        self.stream, self.group, self.consumer = stream, group, consumer
        self.streams = [names[p] for p in ids]
        self.claim_idle_ms = claim_idle_ms
        self._phase = dict.fromkeys(self.streams, _OWN)
        self._cursor = dict.fromkeys(self.streams, "0-0")
        self._next_claim = dict.fromkeys(self.streams, 0.0)
        self._renewed = 0.0
        self._acquire = self._client.register_script(_ACQUIRE)
        self._release = self._client.register_script(_RELEASE)
        try:
            self._create_groups()
            self._take_partitions(wait_s)
        except BaseException:
            self.close()
            raise

    # -- setup --------------------------------------------------------------------------------
    def _lease(self, stream: str) -> str:
        return f"{stream}:lease:{self.group}"

    def _call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except redis.RedisError as exc:
            raise DynrecError(f"Redis stream source {self.where}: {what}: {exc}") from exc

    def _create_groups(self) -> None:
        for s in self.streams:
            try:
                self._client.xgroup_create(s, self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise DynrecError(
                        f"Redis stream source {self.where}: creating group on {s}: {exc}"
                    ) from exc
            except redis.RedisError as exc:
                raise DynrecError(f"Redis stream source {self.where}: {exc}") from exc

    def _take_partitions(self, wait_s: float | None) -> None:
        """Hold every partition's lease, waiting while another live consumer holds one."""
        deadline = None if wait_s is None else time.monotonic() + wait_s
        told: set[tuple[str, str]] = set()
        while True:
            held = {
                s: _s(
                    self._call(
                        "taking a partition",
                        self._acquire,
                        [self._lease(s)],
                        [self.consumer, self.claim_idle_ms],
                    )
                )
                for s in self.streams
            }
            others = {s: h for s, h in held.items() if h != self.consumer}
            if not others:
                self._renewed = time.monotonic()
                return
            for s, h in others.items():
                if (s, h) not in told:
                    log.warning("partition %s is held by consumer %r: waiting until it stops", s, h)
                    told.add((s, h))
            if deadline is not None and time.monotonic() >= deadline:
                self._release_all()
                raise DynrecError(
                    "partitions held by other consumers: "
                    + ", ".join(f"{s} ({h!r})" for s, h in others.items())
                )
            time.sleep(min(1.0, self.claim_idle_ms / 4000))

    # -- EventSource ----------------------------------------------------------------------------
    def keep_alive(self) -> None:
        if time.monotonic() - self._renewed < self.claim_idle_ms / 3000:
            return
        for s in self.streams:
            held = _s(
                self._call(
                    "renewing a partition",
                    self._acquire,
                    [self._lease(s)],
                    [self.consumer, self.claim_idle_ms],
                )
            )
            if held != self.consumer:
                raise LostPartition(f"partition {s} was taken over by consumer {held!r}")
        self._renewed = time.monotonic()

    def _entries(self, stream: str, rows: Iterable[Any]) -> list[Entry]:
        """Entries of one reply; an entry deleted from the stream while pending (no fields) is
        acknowledged and left out."""
        out, gone = [], []
        for eid, fields in rows:
            if not fields:
                gone.append(eid)
                continue
            out.append(Entry(stream, _s(eid), {_s(k): _s(v) for k, v in fields.items()}))
        if gone:
            self._call("acknowledging deleted entries", self._client.xack, stream, self.group, *gone)
        return out

    def claim(self, count: int) -> list[Entry]:
        for s in self.streams:
            if self._phase[s] == _OWN:
                reply = self._call(
                    "reading pending entries",
                    self._client.xreadgroup,
                    self.group,
                    self.consumer,
                    {s: "0"},
                    count=count,
                )
                got = self._entries(s, reply[0][1]) if reply else []
                if got:
                    return got
                if not reply or not reply[0][1]:
                    self._phase[s] = _OTHERS
            if self._phase[s] == _OTHERS and time.monotonic() >= self._next_claim[s]:
                got = self._claim_others(s, count)
                if got:
                    return got
        return []

    def _claim_others(self, s: str, count: int) -> list[Entry]:
        """One ``XAUTOCLAIM`` step on `s`; after a full pass without entries, live when no other
        consumer has entries pending, else try again a little later."""
        reply = self._call(
            "claiming pending entries",
            self._client.xautoclaim,
            s,
            self.group,
            self.consumer,
            self.claim_idle_ms,
            start_id=self._cursor[s],
            count=count,
        )
        cursor, rows = _s(reply[0]), reply[1]
        self._cursor[s] = cursor
        got = self._entries(s, rows)
        if got or cursor != "0-0":
            return got
        summary = self._call("reading the pending summary", self._client.xpending, s, self.group)
        others = sum(
            int(c["pending"]) for c in summary.get("consumers") or [] if _s(c["name"]) != self.consumer
        )
        if others == 0:
            self._phase[s] = _LIVE if int(summary.get("pending") or 0) == 0 else _OWN
        else:
            self._next_claim[s] = time.monotonic() + min(1.0, self.claim_idle_ms / 4000)
        return []

    def read(self, count: int, block_ms: int) -> list[Entry]:
        live = [s for s in self.streams if self._phase[s] == _LIVE]
        if not live:
            time.sleep(min(block_ms, 100) / 1000)
            return []
        reply = self._call(
            "reading new entries",
            self._client.xreadgroup,
            self.group,
            self.consumer,
            dict.fromkeys(live, ">"),
            count=count,
            block=min(block_ms, self.claim_idle_ms // 3) if block_ms > 0 else None,  # leases stay renewed
        )
        out: list[Entry] = []
        for stream, rows in reply or []:
            out += self._entries(_s(stream), rows)
        return out

    def ack(self, entries: Sequence[Entry]) -> None:
        by_stream: dict[str, list[str]] = {}
        for e in entries:
            by_stream.setdefault(e.stream, []).append(e.id)
        pipe = self._client.pipeline(transaction=False)
        for s, ids in by_stream.items():
            pipe.xack(s, self.group, *ids)
        self._call("acknowledging entries", pipe.execute)

    def dead_letter(self, entries: Sequence[tuple[Entry, BadEntry]]) -> None:
        dead = dead_letter_stream(self.stream)
        pipe = self._client.pipeline(transaction=True)
        for e, why in entries:
            fields = {
                "stream": e.stream,
                "id": e.id,
                "field": why.field,
                "reason": why.reason,
                "entry": json.dumps(dict(e.fields)),
            }
            pipe.xadd(dead, {k: v.encode("utf-8", "backslashreplace") for k, v in fields.items()})
            pipe.xack(e.stream, self.group, e.id)
        self._call("dead-lettering entries", pipe.execute)

    def rewind(self) -> None:
        self._phase = dict.fromkeys(self.streams, _OWN)

    def backlog(self) -> dict[str, StreamBacklog]:
        pipe = self._client.pipeline(transaction=False)
        for s in self.streams:
            pipe.xinfo_groups(s)
        replies = self._call("reading the group's backlog", pipe.execute)
        out: dict[str, StreamBacklog] = {}
        for s, groups in zip(self.streams, replies, strict=True):
            for g in groups:
                if _s(g["name"]) == self.group:
                    lag = g.get("lag")
                    out[s] = StreamBacklog(None if lag is None else int(lag), int(g["pending"]))
        return out

    def _release_all(self) -> None:
        for s in self.streams:
            try:
                self._release([self._lease(s)], [self.consumer])
            except redis.RedisError as exc:  # the lease expires anyway
                log.warning("releasing partition %s: %s", s, exc)

    def close(self) -> None:
        """Release the partitions (another consumer may take them at once) and close a client made
        from a URL."""
        self._release_all()
        if self._owns:
            self._client.close()


def publish_events(
    client: redis.Redis, stream: str, events: Iterable[Event], partitions: int = 1, *, chunk: int = 1000
) -> list[str]:
    """``XADD`` each event (`dynrec.service.consumer.entry_fields`) to its user's partition of
    `stream` (`dynrec.service.consumer.stream_of`), `chunk` per pipeline; the entry ids, in order."""
    out: list[str] = []
    pipe = client.pipeline(transaction=False)
    n = 0
    for e in events:
        pipe.xadd(stream_of(stream, e.user_id, partitions), cast("Any", entry_fields(e)))
        n += 1
        if n == chunk:
            out += [_s(r) for r in pipe.execute()]
            n = 0
    if n:
        out += [_s(r) for r in pipe.execute()]
    return out
