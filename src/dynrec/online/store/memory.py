"""`InMemoryStore`: the `StateStore` and `VersionStore` in one process's memory (tests, replay, a
single-node service)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from dynrec.data.events import Event, validate_events
from dynrec.online.store.protocol import (
    EVENT_ID_WINDOW,
    Appended,
    CachedState,
    History,
    UserStamp,
    _events_of,
    _limit,
    repeated_in_batch,
)
from dynrec.online.store.versions import InMemoryVersions, Lease, Tombstone, VersionRecord

__all__ = ["InMemoryStore"]


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
    event_ids: dict[str, int] = field(default_factory=dict)  # id -> position, oldest first


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

    def append(self, events: Iterable[Event]) -> Appended:
        evs = validate_events(events)
        out: dict[str, UserStamp] = {}
        skipped = repeated_in_batch(evs)
        with self._lock:
            for i, e in enumerate(evs):  # the ids held before the batch, as every store checks them
                held = self._users.get(e.user_id)
                if held is not None and e.event_id is not None and e.event_id in held.event_ids:
                    skipped.add(i)
            for i, e in enumerate(evs):
                if i in skipped:
                    continue
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
                if e.event_id is not None:
                    u.event_ids[e.event_id] = u.n_events
                while u.event_ids and next(iter(u.event_ids.values())) <= u.n_events - EVENT_ID_WINDOW:
                    del u.event_ids[next(iter(u.event_ids))]
                if self.max_history is not None and len(u.items) > 2 * self.max_history:
                    cut = len(u.items) - self.max_history
                    del u.items[:cut], u.ts[:cut], u.types[:cut], u.weights[:cut], u.seqs[:cut]
                out[e.user_id] = UserStamp(u.generation, u.n_events)
            for i in skipped:
                if evs[i].user_id not in out:
                    u = self._users.get(evs[i].user_id)
                    out[evs[i].user_id] = UserStamp() if u is None else UserStamp(u.generation, u.n_events)
        return Appended(out, tuple(sorted(skipped)))

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

    def put_states(self, states: Sequence[tuple[str, CachedState]]) -> list[bool]:
        return [self.put_state(user, state) for user, state in states]

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
