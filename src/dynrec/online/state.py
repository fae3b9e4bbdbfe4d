"""Per-user interest state: each user's event history plus the model's cached per-user state.

`StateStore` is the small interface every backend implements (in-memory and SQLite here; Redis
comes with the service): ``append`` events, read a user's ``history`` (oldest first, the last
``max_len``), ``get_state``/``put_state`` the cached model state, ``delete_user`` (privacy: remove
everything held about a user on request).

Histories hold *external* ids (strings), so a store stays valid when a model is retrained or its
vocabulary grows. The cached state is a dict of tensors serialised with safetensors, tagged with
the model version that produced it (`CachedState.version`); a state of another version is stale
and is rebuilt from the history. A user's history is kept in *arrival order*: the incremental
state is a function of that order, and recomputing from the history reproduces it exactly.
"""

from __future__ import annotations

import json
import sqlite3
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from dynrec.data.events import DEFAULT_EVENT_TYPE
from dynrec.errors import DynrecError

__all__ = [
    "CachedState",
    "Event",
    "History",
    "InMemoryStore",
    "SQLiteStore",
    "StateStore",
    "decode_state",
    "encode_state",
]


@dataclass(frozen=True)
class Event:
    """One behaviour event at the public boundary (external ids; timestamp in seconds UTC, or the
    position in the user's sequence for order-only data)."""

    user_id: str
    item_id: str
    timestamp: int = 0
    event_type: str = DEFAULT_EVENT_TYPE


@dataclass(frozen=True)
class History:
    """A user's events, oldest first."""

    items: tuple[str, ...] = ()
    timestamps: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    event_types: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class CachedState:
    """A model's per-user state: tensors (one user, no batch dimension) + the producing version.

    `n_events` is the number of history events the state has consumed (for consistency checks)."""

    tensors: dict[str, torch.Tensor]
    version: str
    n_events: int = 0


@runtime_checkable
class StateStore(Protocol):
    """Where per-user histories and cached model states live (in memory, SQLite, Redis, ...)."""

    def append(self, events: Iterable[Event]) -> None:
        """Add events to their users' histories (in the given order)."""

    def history(self, user: str, max_len: int | None = None) -> History:
        """The user's last `max_len` events (all when None), oldest first; empty when unknown."""
        ...

    def get_state(self, user: str) -> CachedState | None:
        """The cached model state of `user`, or None."""
        ...

    def put_state(self, user: str, state: CachedState) -> None:
        """Cache a model state for `user` (replaces any previous one)."""

    def delete_user(self, user: str) -> bool:
        """Remove the user's history and state; True if anything was held."""
        ...


# ---- serialisation ------------------------------------------------------------------------------


def encode_state(state: CachedState) -> bytes:
    """safetensors bytes of the tensors, with version and event count in the header metadata."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.tensors.items()}
    meta = {"version": state.version, "n_events": str(state.n_events)}
    return bytes(st_save(tensors, metadata=meta))


def decode_state(blob: bytes) -> CachedState:
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    meta = header.get("__metadata__", {}) or {}
    tensors = st_load(blob)
    return CachedState(dict(tensors), str(meta.get("version", "")), int(meta.get("n_events", 0)))


# ---- in-memory ------------------------------------------------------------------------------------


class InMemoryStore:
    """Dict-backed store for one process (tests, replay, a single-node service).

    States are kept as objects (no serialisation); `max_history` bounds each user's kept history
    (None = unbounded).
    """

    def __init__(self, max_history: int | None = None) -> None:
        self.max_history = max_history
        self._items: dict[str, list[str]] = {}
        self._ts: dict[str, list[int]] = {}
        self._types: dict[str, list[str]] = {}
        self._states: dict[str, CachedState] = {}
        self._lock = threading.Lock()

    def append(self, events: Iterable[Event]) -> None:
        with self._lock:
            for e in events:
                items = self._items.setdefault(e.user_id, [])
                ts = self._ts.setdefault(e.user_id, [])
                types = self._types.setdefault(e.user_id, [])
                items.append(str(e.item_id))
                ts.append(int(e.timestamp))
                types.append(e.event_type)
                if self.max_history is not None and len(items) > 2 * self.max_history:
                    cut = len(items) - self.max_history
                    del items[:cut], ts[:cut], types[:cut]

    def history(self, user: str, max_len: int | None = None) -> History:
        items = self._items.get(user)
        if not items:
            return History()
        n = len(items)
        limit = min(x for x in (max_len, self.max_history, n) if x is not None)
        a = n - limit
        return History(
            tuple(items[a:]), np.asarray(self._ts[user][a:], dtype=np.int64), tuple(self._types[user][a:])
        )

    def get_state(self, user: str) -> CachedState | None:
        return self._states.get(user)

    def put_state(self, user: str, state: CachedState) -> None:
        self._states[user] = state

    def delete_user(self, user: str) -> bool:
        with self._lock:
            found = user in self._items or user in self._states
            for d in (self._items, self._ts, self._types, self._states):
                d.pop(user, None)  # type: ignore[attr-defined]
            return found

    def users(self) -> list[str]:
        return sorted(set(self._items) | set(self._states))


# ---- SQLite -------------------------------------------------------------------------------------

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    ts INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_user ON events (user_id, seq);
CREATE TABLE IF NOT EXISTS states (
    user_id TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    n_events INTEGER NOT NULL,
    state BLOB NOT NULL
);
"""


class SQLiteStore:
    """One SQLite file (stdlib `sqlite3`, WAL journal): an ``events`` table (user, item,
    event_type, ts in arrival order) and a ``states`` table of safetensors-serialised model states.

    Safe to share between threads (one connection behind a lock); several processes may open the
    same file (WAL allows concurrent readers with one writer).
    """

    def __init__(self, path: str | Path, *, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        try:
            self._conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        except sqlite3.Error as exc:
            raise DynrecError(f"cannot open state store {self.path}: {exc}") from exc
        self._lock = threading.Lock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            if synchronous.upper() not in ("OFF", "NORMAL", "FULL"):
                raise DynrecError(f"synchronous must be OFF, NORMAL or FULL, not {synchronous!r}")
            self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self._conn.executescript(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def append(self, events: Iterable[Event]) -> None:
        rows = [(e.user_id, str(e.item_id), e.event_type, int(e.timestamp)) for e in events]
        if not rows:
            return
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                self._conn.executemany(
                    "INSERT INTO events (user_id, item_id, event_type, ts) VALUES (?, ?, ?, ?)", rows
                )
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise

    def history(self, user: str, max_len: int | None = None) -> History:
        with self._lock:
            if max_len is None:
                cur = self._conn.execute(
                    "SELECT item_id, ts, event_type FROM events WHERE user_id = ? ORDER BY seq", (user,)
                )
                rows = cur.fetchall()
            else:
                cur = self._conn.execute(
                    "SELECT item_id, ts, event_type FROM events WHERE user_id = ? ORDER BY seq DESC LIMIT ?",
                    (user, int(max_len)),
                )
                rows = cur.fetchall()[::-1]
        if not rows:
            return History()
        items, ts, types = zip(*rows, strict=True)
        return History(tuple(items), np.asarray(ts, dtype=np.int64), tuple(types))

    def get_state(self, user: str) -> CachedState | None:
        with self._lock:
            row = self._conn.execute("SELECT state FROM states WHERE user_id = ?", (user,)).fetchone()
        return None if row is None else decode_state(bytes(row[0]))

    def put_state(self, user: str, state: CachedState) -> None:
        blob = encode_state(state)
        with self._lock:
            self._conn.execute(
                "INSERT INTO states (user_id, version, n_events, state) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(user_id) DO UPDATE SET version = excluded.version, "
                "n_events = excluded.n_events, state = excluded.state",
                (user, state.version, state.n_events, blob),
            )

    def delete_user(self, user: str) -> bool:
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                n1 = self._conn.execute("DELETE FROM events WHERE user_id = ?", (user,)).rowcount
                n2 = self._conn.execute("DELETE FROM states WHERE user_id = ?", (user,)).rowcount
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return (n1 + n2) > 0

    def users(self) -> list[str]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT user_id FROM events UNION SELECT user_id FROM states ORDER BY 1"
            ).fetchall()
        return [str(r[0]) for r in rows]

    def n_events(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM events").fetchone()[0])


def histories_of(store: StateStore, users: Sequence[str], max_len: int | None = None) -> list[History]:
    return [store.history(u, max_len) for u in users]
