"""Per-user interest state: each user's event history plus the model's cached per-user state.

`StateStore` is the small interface every backend implements (in-memory and SQLite here, Redis in
`dynrec.online.redis_store`; `dynrec.online.stores.open_store` opens one by URL): ``append``
events, read a user's ``history`` (oldest first, the last ``max_len``), ``get_state``/``put_state``
the cached model state, ``delete_user`` (privacy: remove everything held about a user on request),
and list what is held (``users``, ``n_events``, ``iter_events``: exports, the service's pages).

Histories hold *external* ids (strings), so a store stays valid when a model is retrained or its
vocabulary grows. A user's history is kept in *arrival order*: the incremental state is a function
of that order, and recomputing from the history reproduces it exactly.

Several processes may share one store, so every cached state says exactly what it was built from:

- the store keeps per user a **generation** and the **number of events** appended in it
  (`UserStamp`). A user's first event starts a generation taken from a store-wide counter that
  only grows; ``delete_user`` ends it. A deleted and re-created user therefore never gets an old
  generation back, and a state built from deleted events can never pass for a current one.
- `CachedState` records the model version, the generation and how many of the generation's
  events it has consumed. ``put_state`` is a compare-and-set: it writes only if the generation is
  still the user's and the state does not claim more events than stored (nor replaces a newer
  checkpoint of the same model version); ``get_state`` returns only states of the current
  generation. ``since(user, n)`` returns the stamp and the events after the first ``n`` in one
  consistent read, so a reader can bring a state up to date with the exact missing events.

Event batches are validated as a whole (`validate_events`) before anything is written, and a
batch is appended atomically: all of it or none of it.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from dynrec.data.events import DEFAULT_EVENT_TYPE
from dynrec.data.ids import IdKind, id_problem
from dynrec.errors import DataError, DynrecError
from dynrec.online.versions import InMemoryVersions, Lease, Tombstone, VersionRecord

log = logging.getLogger(__name__)

__all__ = [
    "MAX_TIMESTAMP",
    "CachedState",
    "Event",
    "History",
    "InMemoryStore",
    "InvalidEventError",
    "SQLiteStore",
    "StateStore",
    "UserStamp",
    "decode_state",
    "encode_state",
    "validate_events",
]

MAX_TIMESTAMP = 2**53
"""Largest accepted timestamp: covers epoch seconds, milliseconds and microseconds, and every
integer up to it is exact as a float (so a float timestamp converts without loss)."""


@dataclass(frozen=True)
class Event:
    """One behaviour event at the public boundary (external ids; timestamp in seconds UTC, or the
    position in the user's sequence for order-only data). Checked by `validate_events` when it
    enters a store or a session."""

    user_id: str
    item_id: str
    timestamp: int = 0
    event_type: str = DEFAULT_EVENT_TYPE
    weight: float = 1.0
    """The event's strength (a rating, a dwell-time share, ...): finite and > 0; stored with the
    event and exported as its value."""


class InvalidEventError(DataError):
    """An event of a batch is invalid; `index` is its position in the batch, `field` the field.
    Nothing of the batch was written."""

    def __init__(self, index: int, field: str, problem: str, value: object) -> None:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"event {index} of the batch: field {field!r} {problem}, got {shown}")
        self.field = field
        self.index = index


def _check_id(index: int, name: str, value: object, kind: IdKind) -> str:
    """A string that follows the id rule (`dynrec.data.ids`: not blank, no leading/trailing
    whitespace, <= 512 characters, no comma/newline in item ids); an integer (not a bool) is
    converted with str()."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_):
        return str(int(value))
    if not isinstance(value, str):
        raise InvalidEventError(index, name, "must be a non-empty string (or an integer)", value)
    problem = id_problem(value, kind)
    if problem is not None:
        raise InvalidEventError(index, name, problem, value)
    return str(value)


def _check_timestamp(index: int, value: object) -> int:
    """A finite number in [0, MAX_TIMESTAMP]; fractional seconds are truncated (as when reading
    files, `dynrec.data.events`)."""
    problem = f"must be a finite number of seconds in [0, {MAX_TIMESTAMP}]"
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise InvalidEventError(index, "timestamp", problem, value)
    if isinstance(value, numbers.Integral):
        ts = int(value)
    else:
        f = float(value)
        if not math.isfinite(f) or not 0 <= f <= MAX_TIMESTAMP:
            raise InvalidEventError(index, "timestamp", problem, value)
        ts = int(f)
    if not 0 <= ts <= MAX_TIMESTAMP:
        raise InvalidEventError(index, "timestamp", problem, value)
    return ts


def _check_weight(index: int, value: object) -> float:
    """A finite number > 0 (an integer is converted to float)."""
    problem = "must be a finite number > 0"
    if isinstance(value, bool | np.bool_) or not isinstance(value, numbers.Real):
        raise InvalidEventError(index, "weight", problem, value)
    w = float(value)
    if not math.isfinite(w) or w <= 0:
        raise InvalidEventError(index, "weight", problem, value)
    return w


def validate_events(events: Event | Iterable[Event]) -> list[Event]:
    """The batch as normalised events (plain `str` ids, `int` timestamps, `float` weights), or an
    `InvalidEventError` naming the first bad event's index and field. Checks every event before
    returning, so a caller can write the batch all or nothing."""
    evs = [events] if isinstance(events, Event) else list(events)
    out = []
    for i, e in enumerate(evs):
        if not isinstance(e, Event):
            raise InvalidEventError(i, "event", "must be an Event", e)
        et = e.event_type
        if not isinstance(et, str) or not et.strip():
            raise InvalidEventError(i, "event_type", "must be a non-empty string", et)
        out.append(
            Event(
                _check_id(i, "user_id", e.user_id, "user"),
                _check_id(i, "item_id", e.item_id, "item"),
                _check_timestamp(i, e.timestamp),
                str(et),
                _check_weight(i, e.weight),
            )
        )
    return out


@dataclass(frozen=True)
class History:
    """A user's events, oldest first. `weights` are the events' `Event.weight`s; left out (empty)
    with items given, every event weighs 1.0."""

    items: tuple[str, ...] = ()
    timestamps: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    event_types: tuple[str, ...] = ()
    weights: npt.NDArray[np.float64] = field(default_factory=lambda: np.zeros(0, dtype=np.float64))

    def __post_init__(self) -> None:
        if len(self.weights) == 0 and self.items:
            object.__setattr__(self, "weights", np.ones(len(self.items), dtype=np.float64))

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class UserStamp:
    """Where a user's stored history stands: its generation (0 = the store holds nothing of the
    user) and the number of events appended in that generation (trimmed ones included)."""

    generation: int = 0
    n_events: int = 0


@dataclass(frozen=True)
class CachedState:
    """A model's per-user state: tensors (one user, no batch dimension) + what produced it.

    `version` is the model version, `generation` the user's generation (`UserStamp`) and
    `n_events` how many of that generation's events the state has consumed."""

    tensors: dict[str, torch.Tensor]
    version: str
    n_events: int = 0
    generation: int = 0


@runtime_checkable
class StateStore(Protocol):
    """Where per-user histories and cached model states live (in memory, SQLite, Redis, ...)."""

    def append(self, events: Iterable[Event]) -> dict[str, UserStamp]:
        """Validate the whole batch (`validate_events`), then add it to the users' histories (in
        the given order) atomically. Returns each user's stamp right after the batch."""
        ...

    def history(self, user: str, max_len: int | None = None) -> History:
        """The user's last `max_len` events (all when None), oldest first; empty when unknown."""
        ...

    def stamp(self, user: str) -> UserStamp:
        """The user's generation and event count (one cheap lookup)."""
        ...

    def since(self, user: str, n_events: int) -> tuple[UserStamp, History]:
        """In one consistent read: the stamp and the held events after the first `n_events` of
        the current generation (fewer than ``stamp.n_events - n_events`` when trimmed)."""
        ...

    def get_state(self, user: str) -> CachedState | None:
        """The cached model state of `user` in its current generation, or None (also when the
        stored state is unreadable: a warning is logged and it is dropped)."""
        ...

    def put_state(self, user: str, state: CachedState) -> bool:
        """Compare-and-set: cache `state` if its generation is the user's, it covers no more
        events than stored, and it does not replace a state of the same version that covers more.
        True when written."""
        ...

    def delete_user(self, user: str, *, tombstone: bool = True) -> bool:
        """Remove the user's history and state, end the generation and record a tombstone for the
        user (`dynrec.online.versions.Tombstone`) in the same transaction — also when the store
        held nothing of the user (they may be in a model's training data). `tombstone=False`
        replaces a history rather than forgetting a person (``store seed --replace``): no tombstone.
        True if anything was held."""
        ...

    def event_seq(self) -> int:
        """The sequence number of the last event appended (0 when none): every appended event
        gets the next one, store-wide, never reused."""
        ...

    def events_since(self, seq: int, upto: int | None = None) -> list[tuple[int, Event]]:
        """The held events with sequence number in (`seq`, `upto`] (`upto` None = all), in
        sequence (arrival) order, with their numbers; deleted users' events are gone."""
        ...

    def users(self, limit: int | None = None) -> list[str]:
        """Ids of the users the store holds events of, sorted (by code point); the first `limit`."""
        ...

    def n_events(self) -> int:
        """How many events the store holds, all users together."""
        ...

    def iter_events(self) -> Iterator[Event]:
        """Every held event, user by user (in `users` order), each user's in arrival order. Read
        in chunks, not one snapshot of the whole store: each user's events are one consistent
        read, and users appended or deleted meanwhile may or may not be included."""
        ...

    def close(self) -> None:
        """Release the store's connections (a no-op where there are none)."""
        ...


# ---- serialisation ------------------------------------------------------------------------------


def _checksum(tensors: dict[str, torch.Tensor]) -> str:
    """crc32 over the tensors' names, dtypes, shapes and bytes (sorted by name)."""
    crc = 0
    for k in sorted(tensors):
        t = tensors[k].detach().cpu().contiguous()
        crc = zlib.crc32(f"{k}:{t.dtype}:{tuple(t.shape)};".encode(), crc)
        if t.numel():
            crc = zlib.crc32(t.reshape(-1).view(torch.uint8).numpy().tobytes(), crc)
    return f"{crc:08x}"


def encode_state(state: CachedState) -> bytes:
    """safetensors bytes of the tensors; version, generation, event count and a checksum of the
    tensors in the header metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.tensors.items()}
    meta = {
        "version": state.version,
        "n_events": str(state.n_events),
        "generation": str(state.generation),
        "crc32": _checksum(tensors),
    }
    return bytes(st_save(tensors, metadata=meta))


def decode_state(blob: bytes) -> CachedState:
    """The state `encode_state` wrote; a `DynrecError` when the blob is truncated, malformed or
    fails its checksum."""
    try:
        if len(blob) < 8:
            raise ValueError(f"{len(blob)} bytes, shorter than the header length")
        (n,) = struct.unpack("<Q", blob[:8])
        if n > len(blob) - 8:
            raise ValueError(f"header of {n} bytes in a blob of {len(blob)}")
        header = json.loads(blob[8 : 8 + n])
        meta = header.get("__metadata__") or {}
        tensors = dict(st_load(blob))
        if meta.get("crc32") != _checksum(tensors):
            raise ValueError("checksum mismatch")
        return CachedState(
            tensors, str(meta["version"]), int(meta["n_events"]), int(meta.get("generation", 0))
        )
    except Exception as exc:  # struct/json/safetensors/KeyError: whatever the damage, one error
        raise DynrecError(f"corrupt cached state ({type(exc).__name__}: {exc})") from exc


# ---- in-memory ------------------------------------------------------------------------------------


@dataclass
class _MemUser:
    generation: int
    n_events: int = 0
    seqs: list[int] = field(default_factory=list)
    items: list[str] = field(default_factory=list)
    ts: list[int] = field(default_factory=list)
    types: list[str] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    state: CachedState | None = None


def _limit(limit: int | None) -> int | None:
    """`limit` as a slice end: None = all, a negative number = none."""
    return None if limit is None else max(0, int(limit))


def _events_of(user: str, h: History) -> Iterator[Event]:
    """`h`'s events as `Event`s of `user` (what `iter_events` yields)."""
    for item, ts, et, w in zip(
        h.items, h.timestamps.tolist(), h.event_types, h.weights.tolist(), strict=True
    ):
        yield Event(user, item, int(ts), et, float(w))


def _newer_same_version(held: CachedState | None, state: CachedState) -> bool:
    """Does `held` cover more events than `state` under the same model version and generation?"""
    return (
        held is not None
        and held.version == state.version
        and held.generation == state.generation
        and held.n_events > state.n_events
    )


class InMemoryStore:
    """Dict-backed store for one process (tests, replay, a single-node service); thread-safe.

    States are kept as objects (no serialisation); `max_history` bounds each user's kept history
    (None = unbounded); the stamp still counts every appended event.
    """

    def __init__(self, max_history: int | None = None) -> None:
        self.max_history = max_history
        self._users: dict[str, _MemUser] = {}
        self._generations = 0  # the last generation handed out; never reused
        self._seq = 0  # the last event sequence number handed out
        self._versions = InMemoryVersions()
        self._lock = threading.Lock()

    def append(self, events: Iterable[Event]) -> dict[str, UserStamp]:
        evs = validate_events(events)
        out: dict[str, UserStamp] = {}
        with self._lock:
            for e in evs:
                u = self._users.get(e.user_id)
                if u is None:
                    self._generations += 1
                    u = self._users[e.user_id] = _MemUser(self._generations)
                self._seq += 1
                u.seqs.append(self._seq)
                u.items.append(e.item_id)
                u.ts.append(e.timestamp)
                u.types.append(e.event_type)
                u.weights.append(e.weight)
                u.n_events += 1
                if self.max_history is not None and len(u.items) > 2 * self.max_history:
                    cut = len(u.items) - self.max_history
                    del u.items[:cut], u.ts[:cut], u.types[:cut], u.weights[:cut], u.seqs[:cut]
                out[e.user_id] = UserStamp(u.generation, u.n_events)
        return out

    def _tail(self, u: _MemUser, start: int) -> History:
        return History(
            tuple(u.items[start:]),
            np.asarray(u.ts[start:], dtype=np.int64),
            tuple(u.types[start:]),
            np.asarray(u.weights[start:], dtype=np.float64),
        )

    def history(self, user: str, max_len: int | None = None) -> History:
        with self._lock:
            u = self._users.get(user)
            if u is None or not u.items:
                return History()
            n = len(u.items)
            limit = max(0, min(x for x in (max_len, self.max_history, n) if x is not None))
            return self._tail(u, n - limit)

    def stamp(self, user: str) -> UserStamp:
        with self._lock:
            u = self._users.get(user)
            return UserStamp() if u is None else UserStamp(u.generation, u.n_events)

    def since(self, user: str, n_events: int) -> tuple[UserStamp, History]:
        with self._lock:
            u = self._users.get(user)
            if u is None:
                return UserStamp(), History()
            first = u.n_events - len(u.items)  # events trimmed away before the held ones
            return UserStamp(u.generation, u.n_events), self._tail(u, max(0, n_events - first))

    def get_state(self, user: str) -> CachedState | None:
        with self._lock:
            u = self._users.get(user)
            if u is None or u.state is None or u.state.generation != u.generation:
                return None
            return u.state

    def put_state(self, user: str, state: CachedState) -> bool:
        with self._lock:
            u = self._users.get(user)
            if u is None or state.generation != u.generation or state.n_events > u.n_events:
                return False
            if _newer_same_version(u.state, state):
                return False
            u.state = state
            return True

    def delete_user(self, user: str, *, tombstone: bool = True) -> bool:
        with self._lock:
            if tombstone:
                self._versions.add_tombstone(user)
            return self._users.pop(user, None) is not None

    def event_seq(self) -> int:
        with self._lock:
            return self._seq

    def events_since(self, seq: int, upto: int | None = None) -> list[tuple[int, Event]]:
        hi = self._seq if upto is None else upto
        out: list[tuple[int, Event]] = []
        with self._lock:
            for user, u in self._users.items():
                for j, s in enumerate(u.seqs):
                    if seq < s <= hi:
                        out.append((s, Event(user, u.items[j], u.ts[j], u.types[j], u.weights[j])))
        out.sort(key=lambda p: p[0])
        return out

    # -- VersionStore ----------------------------------------------------------------------------
    def add_version(self, record: VersionRecord) -> bool:
        with self._lock:
            return self._versions.add_version(record)

    def get_version(self, version_id: str) -> VersionRecord | None:
        with self._lock:
            return self._versions.get_version(version_id)

    def list_versions(self) -> list[VersionRecord]:
        with self._lock:
            return self._versions.list_versions()

    def discard_version(self, version_id: str) -> bool:
        with self._lock:
            return self._versions.discard_version(version_id)

    def current_version(self) -> str | None:
        with self._lock:
            return self._versions.current_version()

    def set_current(self, expected: str | None, version_id: str) -> bool:
        with self._lock:
            return self._versions.set_current(expected, version_id)

    def acquire_lease(self, name: str, owner: str, ttl_s: float, note: str = "") -> Lease:
        with self._lock:
            return self._versions.acquire_lease(name, owner, ttl_s, note)

    def release_lease(self, name: str, owner: str) -> bool:
        with self._lock:
            return self._versions.release_lease(name, owner)

    def tombstones(self, after_generation: int = 0) -> list[Tombstone]:
        with self._lock:
            return self._versions.tombstones(after_generation)

    def deletion_generation(self) -> int:
        with self._lock:
            return self._versions.deletion_generation()

    def users(self, limit: int | None = None) -> list[str]:
        with self._lock:
            return sorted(self._users)[: _limit(limit)]

    def n_events(self) -> int:
        with self._lock:
            return sum(len(u.items) for u in self._users.values())

    def iter_events(self) -> Iterator[Event]:
        for user in self.users():
            h = self.history(user)
            yield from _events_of(user, h)

    def close(self) -> None:
        """Nothing to release (the protocol's `close`)."""


# ---- SQLite -------------------------------------------------------------------------------------

_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    ts INTEGER NOT NULL,
    pos INTEGER NOT NULL,
    weight REAL NOT NULL DEFAULT 1.0
)""",
    "CREATE TABLE IF NOT EXISTS users (user_id TEXT PRIMARY KEY, generation INTEGER NOT NULL, "
    "n_events INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO meta (key, value) VALUES ('generation', 0)",
    """CREATE TABLE IF NOT EXISTS states (
    user_id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    n_events INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    state BLOB NOT NULL
)""",
    "CREATE TABLE IF NOT EXISTS versions (id TEXT PRIMARY KEY, created REAL NOT NULL, record TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS pointers (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tombstones (generation INTEGER PRIMARY KEY AUTOINCREMENT, "
    "user_id TEXT NOT NULL, deleted_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS leases (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL, "
    "note TEXT NOT NULL)",
]
_INDEX = "CREATE INDEX IF NOT EXISTS events_by_user_pos ON events (user_id, pos)"


@contextmanager
def _transaction(conn: sqlite3.Connection, begin: str) -> Iterator[None]:
    conn.execute(begin)
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


class SQLiteStore:
    """One SQLite file (stdlib `sqlite3`, WAL journal): ``events`` (user, item, event_type, ts,
    pos = 1-based position in the user's generation, weight), ``users`` (generation, event count),
    ``meta`` (the generation counter) and ``states`` (safetensors-serialised model states).

    Safe to share between threads (one connection behind a lock) and between processes: every
    write is one ``BEGIN IMMEDIATE`` transaction, reads of several rows one read transaction
    (WAL gives it a consistent snapshot). A file written before generations existed is migrated
    on open (its cached states are dropped: they are rebuilt from the histories); one written
    before event weights existed gets the column, every held event weighing 1.0.
    `timeout`: seconds to wait for another process's write lock.
    """

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL", timeout: float = 10.0) -> None:
        self.path = Path(path)
        if synchronous.upper() not in ("OFF", "NORMAL", "FULL"):
            raise DynrecError(f"synchronous must be OFF, NORMAL or FULL, not {synchronous!r}")
        try:
            self._conn = sqlite3.connect(
                str(self.path), check_same_thread=False, isolation_level=None, timeout=timeout
            )
        except sqlite3.Error as exc:
            raise DynrecError(f"cannot open state store {self.path}: {exc}") from exc
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            with self._write():
                cols = {r[1] for r in self._conn.execute("PRAGMA table_info(events)")}
                if cols and "pos" not in cols:
                    self._migrate()
                if cols and "weight" not in cols:
                    log.warning(
                        "migrating state store %s: adding event weights (1.0 for held events)", self.path
                    )
                    self._conn.execute("ALTER TABLE events ADD COLUMN weight REAL NOT NULL DEFAULT 1.0")
                for stmt in _SCHEMA:
                    self._conn.execute(stmt)
                self._conn.execute(_INDEX)

    def _migrate(self) -> None:
        """Add positions, users with fresh generations and the counter to a file of the earlier
        layout (events in arrival order, states without generation)."""
        log.warning("migrating state store %s: adding per-user generations; cached states dropped", self.path)
        c = self._conn
        c.execute("ALTER TABLE events ADD COLUMN pos INTEGER NOT NULL DEFAULT 0")
        c.execute(
            "UPDATE events SET pos = r.p FROM (SELECT seq AS s, "
            "ROW_NUMBER() OVER (PARTITION BY user_id ORDER BY seq) AS p FROM events) AS r WHERE seq = r.s"
        )
        c.execute("DROP TABLE IF EXISTS states")
        for stmt in _SCHEMA[1:4]:
            c.execute(stmt)
        c.execute(
            "INSERT INTO users (user_id, generation, n_events) SELECT user_id, "
            "ROW_NUMBER() OVER (ORDER BY user_id), COUNT(*) FROM events GROUP BY user_id"
        )
        c.execute("UPDATE meta SET value = (SELECT COUNT(*) FROM users) WHERE key = 'generation'")

    def _write(self) -> AbstractContextManager[None]:
        """A write transaction: takes the file's write lock at once (the caller holds self._lock)."""
        return _transaction(self._conn, "BEGIN IMMEDIATE")

    def _read(self) -> AbstractContextManager[None]:
        """A read transaction: one consistent snapshot for several statements."""
        return _transaction(self._conn, "BEGIN")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stamp(self, user: str) -> UserStamp:
        row = self._conn.execute(
            "SELECT generation, n_events FROM users WHERE user_id = ?", (user,)
        ).fetchone()
        return UserStamp() if row is None else UserStamp(int(row[0]), int(row[1]))

    def append(self, events: Iterable[Event]) -> dict[str, UserStamp]:
        evs = validate_events(events)
        if not evs:
            return {}
        counts: dict[str, int] = {}
        for e in evs:
            counts[e.user_id] = counts.get(e.user_id, 0) + 1
        out: dict[str, UserStamp] = {}
        with self._lock, self._write():
            start: dict[str, int] = {}
            for user, m in counts.items():
                st = self._stamp(user)
                gen = st.generation
                if gen == 0:  # a new user (or one deleted before): a generation never used
                    self._conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'generation'")
                    gen = int(
                        self._conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0]
                    )
                self._conn.execute(
                    "INSERT INTO users (user_id, generation, n_events) VALUES (?, ?, ?) "
                    "ON CONFLICT(user_id) DO UPDATE SET n_events = excluded.n_events",
                    (user, gen, st.n_events + m),
                )
                start[user] = st.n_events
                out[user] = UserStamp(gen, st.n_events + m)
            rows = []
            for e in evs:
                start[e.user_id] += 1
                rows.append((e.user_id, e.item_id, e.event_type, e.timestamp, start[e.user_id], e.weight))
            self._conn.executemany(
                "INSERT INTO events (user_id, item_id, event_type, ts, pos, weight) VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
        return out

    @staticmethod
    def _history(rows: list[tuple[str, int, str, float]]) -> History:
        if not rows:
            return History()
        items, ts, types, weights = zip(*rows, strict=True)
        return History(
            tuple(items), np.asarray(ts, dtype=np.int64), tuple(types), np.asarray(weights, dtype=np.float64)
        )

    def history(self, user: str, max_len: int | None = None) -> History:
        with self._lock:
            if max_len is None:
                rows = self._conn.execute(
                    "SELECT item_id, ts, event_type, weight FROM events WHERE user_id = ? ORDER BY pos",
                    (user,),
                ).fetchall()
            else:
                rows = self._conn.execute(
                    "SELECT item_id, ts, event_type, weight FROM events WHERE user_id = ? "
                    "ORDER BY pos DESC LIMIT ?",
                    (user, max(0, int(max_len))),
                ).fetchall()[::-1]
        return self._history(rows)

    def stamp(self, user: str) -> UserStamp:
        with self._lock:
            return self._stamp(user)

    def since(self, user: str, n_events: int) -> tuple[UserStamp, History]:
        with self._lock, self._read():
            st = self._stamp(user)
            rows = self._conn.execute(
                "SELECT item_id, ts, event_type, weight FROM events WHERE user_id = ? AND pos > ? ORDER BY pos",
                (user, int(n_events)),
            ).fetchall()
        return st, self._history(rows)

    def get_state(self, user: str) -> CachedState | None:
        with self._lock:
            row = self._conn.execute(
                "SELECT s.state, s.version, s.n_events, s.generation FROM states s JOIN users u "
                "ON u.user_id = s.user_id AND u.generation = s.generation WHERE s.user_id = ?",
                (user,),
            ).fetchone()
        if row is None:
            return None
        blob = bytes(row[0])
        try:
            state = decode_state(blob)
            if (state.version, state.n_events, state.generation) != (row[1], row[2], row[3]):
                raise DynrecError("its header disagrees with the states table")
        except DynrecError as exc:
            log.warning("dropping the unreadable cached state of user %r in %s: %s", user, self.path, exc)
            with self._lock, self._write():  # only this blob: a good state written since stays
                self._conn.execute("DELETE FROM states WHERE user_id = ? AND state = ?", (user, blob))
            return None
        return state

    def put_state(self, user: str, state: CachedState) -> bool:
        blob = encode_state(state)
        with self._lock, self._write():
            st = self._stamp(user)
            if st.generation == 0 or st.generation != state.generation or state.n_events > st.n_events:
                return False
            cur = self._conn.execute(
                "INSERT INTO states (user_id, version, n_events, generation, state) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(user_id) DO UPDATE SET version = excluded.version, "
                "n_events = excluded.n_events, generation = excluded.generation, state = excluded.state "
                "WHERE NOT (states.version = excluded.version AND states.generation = excluded.generation "
                "AND states.n_events > excluded.n_events)",
                (user, state.version, state.n_events, state.generation, blob),
            )
            return cur.rowcount > 0

    def delete_user(self, user: str, *, tombstone: bool = True) -> bool:
        with self._lock, self._write():
            n1 = self._conn.execute("DELETE FROM events WHERE user_id = ?", (user,)).rowcount
            n2 = self._conn.execute("DELETE FROM states WHERE user_id = ?", (user,)).rowcount
            n3 = self._conn.execute("DELETE FROM users WHERE user_id = ?", (user,)).rowcount
            if tombstone:
                self._conn.execute(
                    "INSERT INTO tombstones (user_id, deleted_at) VALUES (?, ?)", (user, time.time())
                )
        return (n1 + n2 + n3) > 0

    def event_seq(self) -> int:
        with self._lock:
            # AUTOINCREMENT keeps the largest number ever handed out in sqlite_sequence, also
            # after the rows holding it were deleted
            row = self._conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return 0 if row is None else int(row[0])

    def events_since(self, seq: int, upto: int | None = None) -> list[tuple[int, Event]]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, user_id, item_id, ts, event_type, weight FROM events "
                "WHERE seq > ? AND (? IS NULL OR seq <= ?) ORDER BY seq",
                (int(seq), upto, upto),
            ).fetchall()
        return [(int(q), Event(str(u), str(i), int(t), str(et), float(w))) for q, u, i, t, et, w in rows]

    # -- VersionStore ----------------------------------------------------------------------------
    def add_version(self, record: VersionRecord) -> bool:
        with self._lock, self._write():
            cur = self._conn.execute(
                "INSERT OR IGNORE INTO versions (id, created, record) VALUES (?, ?, ?)",
                (record.id, record.created, record.to_json()),
            )
            return cur.rowcount > 0

    def get_version(self, version_id: str) -> VersionRecord | None:
        with self._lock:
            row = self._conn.execute("SELECT record FROM versions WHERE id = ?", (version_id,)).fetchone()
        return None if row is None else VersionRecord.from_json(row[0])

    def list_versions(self) -> list[VersionRecord]:
        with self._lock:
            rows = self._conn.execute("SELECT record FROM versions ORDER BY created, id").fetchall()
        return [VersionRecord.from_json(r[0]) for r in rows]

    def discard_version(self, version_id: str) -> bool:
        with self._lock, self._write():
            cur = self._conn.execute(
                "DELETE FROM versions WHERE id = ? AND id IS NOT "
                "(SELECT value FROM pointers WHERE key = 'current')",
                (version_id,),
            )
            return cur.rowcount > 0

    def current_version(self) -> str | None:
        with self._lock:
            row = self._conn.execute("SELECT value FROM pointers WHERE key = 'current'").fetchone()
        return None if row is None else str(row[0])

    def set_current(self, expected: str | None, version_id: str) -> bool:
        with self._lock, self._write():
            row = self._conn.execute("SELECT value FROM pointers WHERE key = 'current'").fetchone()
            held = None if row is None else str(row[0])
            known = self._conn.execute("SELECT 1 FROM versions WHERE id = ?", (version_id,)).fetchone()
            if held != expected or known is None:
                return False
            self._conn.execute(
                "INSERT INTO pointers (key, value) VALUES ('current', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (version_id,),
            )
            return True

    def acquire_lease(self, name: str, owner: str, ttl_s: float, note: str = "") -> Lease:
        now = time.time()
        with self._lock, self._write():
            row = self._conn.execute(
                "SELECT owner, expires, note FROM leases WHERE name = ?", (name,)
            ).fetchone()
            if row is None or float(row[1]) <= now or row[0] == owner:
                self._conn.execute(
                    "INSERT INTO leases (name, owner, expires, note) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET owner = excluded.owner, expires = excluded.expires, "
                    "note = excluded.note",
                    (name, owner, now + ttl_s, note),
                )
                return Lease(name, owner, now + ttl_s, note)
            return Lease(name, str(row[0]), float(row[1]), str(row[2]))

    def release_lease(self, name: str, owner: str) -> bool:
        with self._lock, self._write():
            cur = self._conn.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, owner))
            return cur.rowcount > 0

    def tombstones(self, after_generation: int = 0) -> list[Tombstone]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT user_id, deleted_at, generation FROM tombstones WHERE generation > ? ORDER BY generation",
                (int(after_generation),),
            ).fetchall()
        return [Tombstone(str(u), float(t), int(g)) for u, t, g in rows]

    def deletion_generation(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT MAX(generation) FROM tombstones").fetchone()
        return 0 if row is None or row[0] is None else int(row[0])

    def users(self, limit: int | None = None) -> list[str]:
        lim = _limit(limit)
        with self._lock:
            rows = self._conn.execute(
                "SELECT user_id FROM users ORDER BY 1 LIMIT ?", (-1 if lim is None else lim,)
            ).fetchall()
        return [str(r[0]) for r in rows]

    def n_events(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def iter_events(self, chunk: int = 500) -> Iterator[Event]:
        """See `StateStore.iter_events`: `chunk` users per read transaction (the lock is not held
        between chunks, so other threads and processes keep writing while an export runs)."""
        last: str | None = None
        while True:
            with self._lock, self._read():
                users = [
                    str(r[0])
                    for r in self._conn.execute(
                        "SELECT user_id FROM users WHERE ? IS NULL OR user_id > ? ORDER BY 1 LIMIT ?",
                        (last, last, int(chunk)),
                    )
                ]
                rows = self._conn.execute(
                    "SELECT user_id, item_id, ts, event_type, weight FROM events WHERE user_id IN "
                    f"({', '.join('?' * len(users))}) ORDER BY user_id, pos",
                    users,
                ).fetchall()
            for u, item, ts, et, w in rows:
                yield Event(str(u), str(item), int(ts), str(et), float(w))
            if len(users) < chunk:
                return
            last = users[-1]


def histories_of(store: StateStore, users: Sequence[str], max_len: int | None = None) -> list[History]:
    return [store.history(u, max_len) for u in users]
