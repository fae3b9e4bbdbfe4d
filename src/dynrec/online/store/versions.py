"""Model versions, deletion tombstones and leases as a store holds them (`VersionStore`).

Several serving processes — workers of one server, servers on several hosts — agree on which
model they serve through the store they share, not through files:

* a **version** (`VersionRecord`) names an immutable model directory under a model root (its path
  relative to the root), its parent, when it was made, what it learned beyond its parent (a hash
  of the events and the store's event sequence number it consumed up to) and the deletion
  generation it honours (every tombstone up to that generation is absent from its training data);
* the **current version** is one pointer, changed only by compare-and-set (`set_current`): a
  publisher builds on the version it read and retries when another publisher moved the pointer
  first, so concurrent publishers never lose each other's work;
* a **tombstone** (`Tombstone`) records that a user was deleted (user, time, generation): the
  store writes it in the same transaction as the deletion of the user's events, and every path
  that trains leaves the user's events out, including those of the original training data;
* a **lease** (`Lease`) is a named lock with an expiry (an update runs once per store; a crashed
  holder frees it when it expires).

Every store of `dynrec.online.store` (memory, SQLite, Redis, Redis Cluster) implements the
protocol next to `StateStore`; `dynrec.jobs.model_root` writes the directories.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol, runtime_checkable

from dynrec.errors import DynrecError

__all__ = [
    "InMemoryVersions",
    "Lease",
    "Tombstone",
    "VersionRecord",
    "VersionStore",
    "new_owner_id",
]

VERSION_KINDS = ("initial", "update", "items", "reload", "refit")
"""How a version came to be: the root's first model, an incremental update, items added, a model
directory reloaded under the root, a refit that forgot deleted users."""


@dataclass(frozen=True)
class VersionRecord:
    """One model version (see the module docstring). `path` is relative to the model root, with
    ``/`` separators (``"."`` for a root that is itself a model directory)."""

    id: str
    path: str
    parent: str | None
    created: float
    kind: str
    events_hash: str = ""
    """SHA-256 of the events it learned beyond its parent ("" for none)."""
    n_events: int = 0
    """How many events it learned beyond its parent."""
    event_seq: int = 0
    """The store's event sequence number up to which its training consumed the served events."""
    base_seq: int = 0
    """The event sequence number at which the root's first version was registered: served events
    after it (up to `event_seq`) are what the lineage learned beyond the original training data."""
    deletion_generation: int = 0
    """Every tombstone up to this generation is honoured (absent from its training data)."""
    status: str = "ready"
    note: str = ""

    def __post_init__(self) -> None:
        if not self.id or not isinstance(self.id, str):
            raise DynrecError(f"a version id must be a non-empty string, got {self.id!r}")
        if self.kind not in VERSION_KINDS:
            raise DynrecError(f"version kind must be one of {', '.join(VERSION_KINDS)}, got {self.kind!r}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> VersionRecord:
        try:
            raw: Any = json.loads(text)
        except ValueError as exc:
            raise DynrecError(f"unreadable version record: {exc}") from exc
        if not isinstance(raw, dict):
            raise DynrecError("unreadable version record: not a JSON object")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names})


@dataclass(frozen=True)
class Tombstone:
    """A deleted user: when (UTC seconds) and the store's deletion generation it got (1, 2, ...)."""

    user_id: str
    deleted_at: float
    generation: int


@dataclass(frozen=True)
class Lease:
    """Who holds the lease `name` until `expires` (UTC seconds); `owner` is "" when nobody does."""

    name: str
    owner: str
    expires: float
    note: str = ""

    def held_by(self, owner: str) -> bool:
        return bool(self.owner) and self.owner == owner


def new_owner_id(prefix: str = "") -> str:
    """A random id for a lease owner or a version (unique across processes and hosts)."""
    return f"{prefix}{int(time.time())}-{secrets.token_hex(6)}"


@runtime_checkable
class VersionStore(Protocol):
    """Model versions, the current-version pointer, tombstones and leases (see the module docstring).

    Tombstones are written by ``StateStore.delete_user`` in the same transaction as the deletion."""

    def add_version(self, record: VersionRecord) -> bool:
        """Add `record`; False (nothing written) when a version with its id exists."""
        ...

    def get_version(self, version_id: str) -> VersionRecord | None: ...

    def list_versions(self) -> list[VersionRecord]:
        """Every version, oldest first (by `created`, then id)."""
        ...

    def discard_version(self, version_id: str) -> bool:
        """Remove a record that is not the current version (a candidate whose publication lost its
        compare-and-set); False when it is current or unknown."""
        ...

    def current_version(self) -> str | None:
        """The id the current-version pointer holds (None before the first publication)."""
        ...

    def set_current(self, expected: str | None, version_id: str) -> bool:
        """Compare-and-set the pointer: to `version_id` (a recorded version) only when it still holds
        `expected`. True when set."""
        ...

    def acquire_lease(self, name: str, owner: str, ttl_s: float, note: str = "") -> Lease:
        """Take the lease `name` for `ttl_s` seconds when it is free, expired or already `owner`'s
        (then it is renewed). Returns the lease as it stands: held by `owner` when taken."""
        ...

    def release_lease(self, name: str, owner: str) -> bool:
        """Free the lease when `owner` holds it; True when freed."""
        ...

    def tombstones(self, after_generation: int = 0) -> list[Tombstone]:
        """The tombstones of generation > `after_generation`, oldest first."""
        ...

    def deletion_generation(self) -> int:
        """The generation of the newest tombstone (0 when none)."""
        ...


class InMemoryVersions:
    """`VersionStore` for one process (what `dynrec.online.store.memory.InMemoryStore` holds); the caller
    serialises access (the store's lock)."""

    def __init__(self) -> None:
        self._versions: dict[str, VersionRecord] = {}
        self._current: str | None = None
        self._leases: dict[str, Lease] = {}
        self._tombstones: list[Tombstone] = []

    def add_tombstone(self, user: str, now: float | None = None) -> Tombstone:
        t = Tombstone(user, time.time() if now is None else now, len(self._tombstones) + 1)
        self._tombstones.append(t)
        return t

    def add_version(self, record: VersionRecord) -> bool:
        if record.id in self._versions:
            return False
        self._versions[record.id] = record
        return True

    def get_version(self, version_id: str) -> VersionRecord | None:
        return self._versions.get(version_id)

    def list_versions(self) -> list[VersionRecord]:
        return sorted(self._versions.values(), key=lambda r: (r.created, r.id))

    def discard_version(self, version_id: str) -> bool:
        if version_id == self._current or version_id not in self._versions:
            return False
        del self._versions[version_id]
        return True

    def current_version(self) -> str | None:
        return self._current

    def set_current(self, expected: str | None, version_id: str) -> bool:
        if self._current != expected or version_id not in self._versions:
            return False
        self._current = version_id
        return True

    def acquire_lease(self, name: str, owner: str, ttl_s: float, note: str = "") -> Lease:
        now = time.time()
        held = self._leases.get(name)
        if held is None or held.expires <= now or held.owner == owner:
            held = self._leases[name] = Lease(name, owner, now + ttl_s, note)
        return held

    def release_lease(self, name: str, owner: str) -> bool:
        held = self._leases.get(name)
        if held is None or held.owner != owner:
            return False
        del self._leases[name]
        return True

    def tombstones(self, after_generation: int = 0) -> list[Tombstone]:
        return [t for t in self._tombstones if t.generation > after_generation]

    def deletion_generation(self) -> int:
        return len(self._tombstones)
