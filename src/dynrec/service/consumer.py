"""`dynrec consume`: events from a stream, applied to the online state exactly as ``POST /v1/events``
applies them.

A `Consumer` reads batches from an `EventSource`, turns each entry into an `Event` (`entry_event`:
a bad entry goes to the dead-letter stream with the reason naming the field, and is acknowledged,
so it never blocks the group), applies the valid ones through the `OnlineRecommender` of the model
version the store's pointer names (followed as the service follows it,
`dynrec.service.follower.VersionFollower`): one store append — durable when it returns — and the
users' states stepped, then acknowledges the batch.

**Stream entries** (field names; values are strings, as Redis stores them):

==============  =========  ===========================================================================
field           required   value
==============  =========  ===========================================================================
``user_id``     yes        the user id (the id rule of `dynrec.data.ids`)
``item_id``     yes        the item id
``timestamp``   yes        seconds UTC (an integer, or a decimal number: fractions truncated)
``event_type``  no         1 to 64 characters (default ``view``, as over HTTP)
``weight``      no         a finite number > 0 (default 1)
``event_id``    no         the producer's id of the event (default: ``<stream>/<entry id>``)
==============  =========  ===========================================================================

Any other field makes the entry bad. `entry_fields` writes an event in this form and
`dynrec.service.redis_streams.publish_events` is a producer.

**Exactly once.** The store applies an event id once per user (`dynrec.online.store.protocol`:
checked in the append's own transaction), so a batch re-delivered after a consumer died between
its append and its acknowledgement changes nothing the second time; the skipped events are counted
as duplicates. Without an ``event_id`` field the entry's stream and id are the event's id: a
re-delivery is recognised, a producer's second ``XADD`` of the same event is not.

**Per-user order with several consumers.** One stream hands its entries to the group's consumers
in turns, so two consumers of one stream could apply one user's events in either order. A stream
is therefore split into `partitions` streams ``NAME:0`` .. ``NAME:<N-1>``: a producer writes each
event to ``NAME:<partition_of(user_id, N)>`` (a stable hash), and each partition is read by one
consumer at a time — every consumer is started with the partitions it reads
(``--partition-ids``), and a partition lease in Redis refuses a second live consumer of one
partition. A consumer started in a dead one's place (after its lease expired, ``--claim-idle-ms``)
first finishes the dead one's pending entries, taken over by ``XAUTOCLAIM`` once idle that long,
and reads new entries of the partition only after, so the user's order holds. With one partition
(the default) the stream is ``NAME`` itself.

`EventSource` is the small interface a source implements (`dynrec.service.redis_streams.
RedisStreamSource` for Redis Streams; a Kafka topic maps onto it: partitions by user key, ack =
commit the offsets, dead letters to a topic, claim = nothing, the coordinator re-assigns).
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from dynrec.data.events import Event, InvalidEventError, validate_events
from dynrec.errors import DynrecError
from dynrec.jobs.model_root import open_version, register_initial, version_path
from dynrec.online.store import StateStore, open_store
from dynrec.online.store.protocol import EVENT_ID_WINDOW
from dynrec.online.store.versions import VersionRecord, VersionStore
from dynrec.service.follower import VersionFollower
from dynrec.service.holder import ModelHolder
from dynrec.service.schemas import HTTP_EVENT_TYPE

log = logging.getLogger(__name__)

__all__ = [
    "STREAM_FIELDS",
    "BadEntry",
    "BatchResult",
    "ConsumeMetrics",
    "Consumer",
    "ConsumerSettings",
    "Entry",
    "EventSource",
    "LostPartition",
    "StreamBacklog",
    "dead_letter_stream",
    "default_consumer_name",
    "entry_event",
    "entry_fields",
    "partition_of",
    "partition_streams",
    "stream_of",
]

STREAM_FIELDS = ("user_id", "item_id", "timestamp", "event_type", "weight", "event_id")
"""The fields of a stream entry (see the module docstring)."""

MAX_EVENT_TYPE = 64
"""Characters in an event type, at most: the rule of ``POST /v1/events`` (`dynrec.service.schemas`)."""


# ---- partitions and entries ----------------------------------------------------------------------


def partition_of(user_id: str, n: int) -> int:
    """The partition (0 .. `n` - 1) of a user: CRC-32 of the id's UTF-8 bytes mod `n` — stable
    across processes, hosts and Python versions (a producer in another language computes the same
    with any CRC-32, e.g. zlib's)."""
    if n < 1:
        raise DynrecError(f"the number of partitions must be >= 1, got {n}")
    return zlib.crc32(user_id.encode("utf-8", "surrogatepass")) % n


def partition_streams(stream: str, n: int) -> list[str]:
    """The streams of a stream split into `n` partitions: ``[stream]`` for one, else
    ``stream:0`` .. ``stream:<n-1>``."""
    if n < 1:
        raise DynrecError(f"the number of partitions must be >= 1, got {n}")
    return [stream] if n == 1 else [f"{stream}:{p}" for p in range(n)]


def stream_of(stream: str, user_id: str, n: int) -> str:
    """The stream a producer writes `user_id`'s events to (of `n` partitions)."""
    return partition_streams(stream, n)[partition_of(user_id, n)]


def dead_letter_stream(stream: str) -> str:
    """Where the bad entries of `stream` (all its partitions) go: ``stream:dead``."""
    return f"{stream}:dead"


def default_consumer_name(partition_ids: Sequence[int]) -> str:
    """``<host>-p<ids>``: the same name when a consumer of the same partitions restarts on the same
    host, so it finds its own pending entries at once."""
    return f"{socket.gethostname()}-p{'-'.join(str(p) for p in partition_ids)}"


def entry_fields(event: Event) -> dict[str, str]:
    """An event as stream entry fields (`STREAM_FIELDS`; ``event_id`` only when it has one)."""
    out = {
        "user_id": event.user_id,
        "item_id": event.item_id,
        "timestamp": str(int(event.timestamp)),
        "event_type": event.event_type,
        "weight": repr(float(event.weight)),
    }
    if event.event_id is not None:
        out["event_id"] = event.event_id
    return out


@dataclass(frozen=True)
class Entry:
    """One entry of a source: its stream (partition), its id there and its fields (decoded as
    UTF-8; an undecodable byte is kept as a lone surrogate, which the id rule refuses)."""

    stream: str
    id: str
    fields: Mapping[str, str]


class LostPartition(DynrecError):
    """Another consumer holds a partition this one was reading (this one's lease expired: it
    stalled longer than the claim timeout). The consumer stops; restarted, it waits for the
    partition."""


class BadEntry(DynrecError):
    """An entry that is no valid event; `field` names the field (``<entry>`` for the whole)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"field {field!r}: {reason}")
        self.field = field
        self.reason = reason


def _number(name: str, value: str) -> int | float:
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        raise BadEntry(name, f"not a number: {value[:40]!r}") from None


def entry_event(entry: Entry) -> Event:
    """The entry's event, checked by the rules of ``POST /v1/events`` (`validate_events` and the
    event type's length); `BadEntry` naming the field otherwise."""
    f = entry.fields
    unknown = sorted(k for k in f if k not in STREAM_FIELDS)
    if unknown:
        raise BadEntry(unknown[0], f"unknown field (fields: {', '.join(STREAM_FIELDS)})")
    for name in ("user_id", "item_id", "timestamp"):
        if name not in f:
            raise BadEntry(name, "missing")
    event_type = f.get("event_type", HTTP_EVENT_TYPE)
    if len(event_type) > MAX_EVENT_TYPE:
        raise BadEntry("event_type", f"longer than {MAX_EVENT_TYPE} characters")
    event = Event(
        f["user_id"],
        f["item_id"],
        _number("timestamp", f["timestamp"]),  # type: ignore[arg-type]  # made an int by validate_events
        event_type,
        _number("weight", f["weight"]) if "weight" in f else 1.0,
        f.get("event_id", f"{entry.stream}/{entry.id}"),
    )
    try:
        return validate_events([event])[0]
    except InvalidEventError as exc:
        name = exc.field or "<entry>"
        raise BadEntry(name, str(exc).removeprefix(f"event 0 of the batch: field {name!r} ")) from None


# ---- the source ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamBacklog:
    """Where the group stands on one stream: `lag` entries not yet delivered to it (None when the
    server cannot tell) and `pending` delivered but not acknowledged."""

    lag: int | None
    pending: int


class EventSource(Protocol):
    """Where a consumer's events come from (see the module docstring). The consumer calls `claim`,
    and `read` when it returned nothing; it acknowledges every entry it got, after applying the
    batch (`ack`) or moving it to the dead letters (`dead_letter`, which acknowledges it too)."""

    def claim(self, count: int) -> list[Entry]:
        """Up to `count` entries to process before any new one: this consumer's own unacknowledged
        entries (after a restart or `rewind`) and those a dead consumer left pending, taken over
        once idle for the claim timeout. Empty when there are none (or none claimable yet)."""
        ...

    def read(self, count: int, block_ms: int) -> list[Entry]:
        """Up to `count` new entries per partition, waiting up to `block_ms` for one; empty when
        none came (or when every partition still waits for a dead consumer's entries)."""
        ...

    def ack(self, entries: Sequence[Entry]) -> None:
        """Mark `entries` processed: they are never delivered again."""
        ...

    def dead_letter(self, entries: Sequence[tuple[Entry, BadEntry]]) -> None:
        """Move bad entries, each with its reason, to the dead letters and acknowledge them."""
        ...

    def rewind(self) -> None:
        """After a failed batch: deliver the unacknowledged entries again (by `claim`) first."""
        ...

    def backlog(self) -> dict[str, StreamBacklog]:
        """Per stream (partition) read: the group's lag and pending entries."""
        ...

    def keep_alive(self) -> None:
        """Renew what this consumer holds (its partition leases); `DynrecError` when it lost it."""
        ...

    def close(self) -> None:
        """Release the partitions and the connections."""
        ...


# ---- metrics -------------------------------------------------------------------------------------


class _BacklogCollector(Collector):
    """The group's lag and pending entries per stream, read from the source when scraped."""

    def __init__(self, source: EventSource) -> None:
        self.source = source

    def collect(self) -> list[Metric]:
        lag = GaugeMetricFamily(
            "dynrec_consume_lag", "Stream entries not yet delivered to the group", labels=["stream"]
        )
        pending = GaugeMetricFamily(
            "dynrec_consume_pending",
            "Entries delivered to the group, not yet acknowledged",
            labels=["stream"],
        )
        try:
            backlog = self.source.backlog()
        except DynrecError as exc:
            log.warning("reading the stream backlog for /metrics: %s", exc)
            return []
        for stream, b in backlog.items():
            if b.lag is not None:
                lag.add_metric([stream], float(b.lag))
            pending.add_metric([stream], float(b.pending))
        return [lag, pending]


class ConsumeMetrics:
    """A consumer's Prometheus metrics, in their own registry (`watch` adds the source's backlog)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.applied = Counter("dynrec_consume_events_applied", "Events appended and applied", registry=r)
        self.dead = Counter(
            "dynrec_consume_dead_lettered", "Bad entries moved to the dead letters", registry=r
        )
        self.duplicates = Counter(
            "dynrec_consume_duplicates_skipped",
            "Events skipped: their event id was applied before",
            registry=r,
        )
        self.unknown_items = Counter(
            "dynrec_consume_unknown_items", "Applied events whose item the model does not know", registry=r
        )
        self.batch_seconds = Histogram(
            "dynrec_consume_batch_seconds",
            "Time to apply and acknowledge one batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )

    def watch(self, source: EventSource) -> None:
        self.registry.register(_BacklogCollector(source))


# ---- the consumer ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsumerSettings:
    """How a consumer applies events. `model_dir`: the model root (as ``dynrec serve`` takes it);
    `store`: the state store URL; `batch`: entries per read and partition (at most
    `EVENT_ID_WINDOW`, so a re-delivered batch falls within the ids a store keeps); `block_ms`: how
    long a read waits for new entries; `cache_size` / `persist_every`: as the service's
    (`dynrec.service.settings.ServiceSettings`); `follow_s`: how often the store's current-version
    pointer is polled."""

    model_dir: str
    store: str
    batch: int = 100
    block_ms: int = 1000
    cache_size: int = 10_000
    persist_every: int = 16
    follow_s: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.batch <= EVENT_ID_WINDOW:
            raise DynrecError(f"batch must be in [1, {EVENT_ID_WINDOW}], got {self.batch}")
        if self.block_ms < 0:
            raise DynrecError(f"block_ms must be >= 0, got {self.block_ms}")
        if self.cache_size < 0 or self.persist_every < 1:
            raise DynrecError("cache_size must be >= 0 and persist_every >= 1")
        if not math.isfinite(self.follow_s) or self.follow_s <= 0:
            raise DynrecError(f"follow_s must be > 0, got {self.follow_s}")


@dataclass
class BatchResult:
    """What one batch (or a run, summed) did: entries taken, events applied, bad entries
    dead-lettered, duplicates skipped."""

    entries: int = 0
    applied: int = 0
    dead_lettered: int = 0
    duplicates: int = 0
    seconds: float = 0.0
    versions: set[str] = field(default_factory=set)

    def add(self, other: BatchResult) -> None:
        self.entries += other.entries
        self.applied += other.applied
        self.dead_lettered += other.dead_lettered
        self.duplicates += other.duplicates
        self.seconds += other.seconds
        self.versions |= other.versions


class Consumer:
    """Applies a source's events to the store's online state (see the module docstring)."""

    def __init__(
        self, settings: ConsumerSettings, source: EventSource, metrics: ConsumeMetrics | None = None
    ) -> None:
        root = Path(settings.model_dir)
        if not root.is_dir():
            raise DynrecError(f"model directory {settings.model_dir!r} does not exist")
        self.settings = settings
        self.root = root.resolve()
        self.source = source
        self.metrics = metrics if metrics is not None else ConsumeMetrics()
        self.store: StateStore = open_store(settings.store)
        if not isinstance(self.store, VersionStore):
            self.store.close()
            raise DynrecError(f"the state store {settings.store!r} keeps no model versions")
        self.follower = VersionFollower(
            self.store,
            self.store,
            self._load(register_initial(self.store, self.root)),
            self._load,
            poll_s=settings.follow_s,
        )
        self.follower.start()

    def _load(self, record: VersionRecord) -> ModelHolder:
        """A holder of the model version `record` (no item metadata: nothing here shows titles)."""
        return ModelHolder(
            record,
            version_path(self.root, record),
            open_version(self.root, record),
            self.store,
            metadata=None,
            cache_size=self.settings.cache_size,
            persist_every=self.settings.persist_every,
        )

    def step(self, block_ms: int | None = None) -> BatchResult:
        """One batch: claimed entries first, else new ones (waiting up to `block_ms`, default the
        settings'); bad entries to the dead letters; the valid events applied in one
        `OnlineRecommender.observe`; the batch acknowledged. On an error nothing is acknowledged and
        the source re-delivers the batch first (`EventSource.rewind`)."""
        src, n = self.source, self.settings.batch
        src.keep_alive()
        entries = src.claim(n) or src.read(n, self.settings.block_ms if block_ms is None else block_ms)
        if not entries:
            return BatchResult()
        t0 = time.perf_counter()
        try:
            good: list[Entry] = []
            events: list[Event] = []
            bad: list[tuple[Entry, BadEntry]] = []
            for entry in entries:
                try:
                    events.append(entry_event(entry))
                    good.append(entry)
                except BadEntry as exc:
                    bad.append((entry, exc))
            if bad:
                src.dead_letter(bad)
            holder = self.follower.holder
            skipped = holder.online.duplicates_skipped
            if events:
                with holder.lock:
                    holder.online.observe(events)
                src.ack(good)
            dup = holder.online.duplicates_skipped - skipped
        except BaseException:
            src.rewind()
            raise
        unknown = int((holder.item_vocab.lookup([e.item_id for e in events], policy="skip") == 0).sum())
        seconds = time.perf_counter() - t0
        m = self.metrics
        m.applied.inc(len(events) - dup)
        m.duplicates.inc(dup)
        m.dead.inc(len(bad))
        m.unknown_items.inc(unknown)
        m.batch_seconds.observe(seconds)
        for entry, why in bad:
            log.warning("dead-lettered entry %s of %s: %s", entry.id, entry.stream, why)
        return BatchResult(len(entries), len(events) - dup, len(bad), dup, seconds, {holder.version})

    def run(self, stop: threading.Event, *, drain: bool = False, retry_s: float = 1.0) -> BatchResult:
        """Batches until `stop` is set (or, with `drain`, until the source holds nothing more for
        this consumer: no lag, nothing pending). A failed batch (the store or the source
        unreachable) is logged and retried after `retry_s`; a lost partition ends the run
        (`LostPartition`)."""
        total = BatchResult()
        while not stop.is_set():
            try:
                got = self.step()
            except LostPartition:
                raise
            except (DynrecError, OSError) as exc:
                log.warning("consuming a batch failed (retrying in %.1f s): %s", retry_s, exc)
                stop.wait(retry_s)
                continue
            total.add(got)
            if drain and not got.entries and self._drained():
                break
        return total

    def _drained(self) -> bool:
        return all(b.pending == 0 and b.lag == 0 for b in self.source.backlog().values())

    def close(self) -> None:
        self.follower.stop()
        self.source.close()
        self.store.close()
