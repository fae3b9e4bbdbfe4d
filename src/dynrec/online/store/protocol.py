"""The store protocol: each user's event history plus the model's cached per-user state.

`StateStore` is the small interface every backend implements (`dynrec.online.store.memory`,
`dynrec.online.store.sqlite`, `dynrec.online.store.redis`, `dynrec.online.store.redis_cluster`;
`dynrec.online.store.open_store` opens one by URL): ``append``
events, read a user's ``history`` (oldest first, the last ``max_len``), ``get_state``/``put_state``
the cached model state, ``delete_user`` (privacy: remove everything held about a user on request),
and list what is held (``users``, ``n_events``, ``iter_events``: exports, the service's pages).
Every store also implements `dynrec.online.store.versions.VersionStore`.

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

Event batches are validated as a whole (`dynrec.data.events.validate_events`) before anything is
written, and a batch is appended atomically: all of it or none of it.

**Applied once by event id.** An event with an `Event.event_id` is appended only if the store has
not applied that id for the user yet, checked in the same transaction as the append (a Lua script
on Redis, the write transaction on SQLite, the lock in memory); a repeat within the batch is
skipped too. `append` returns the skipped events' positions (`Appended.skipped`). A store keeps
the ids of each user's last `EVENT_ID_WINDOW` events (deleted with the user): a re-sent or
re-delivered event is recognised while fewer than that many of its user's events were appended
after it — always so for ``dynrec consume``, whose batches are smaller (see
`dynrec.service.consumer`). Events without an id are always appended.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt
import torch
from safetensors.numpy import save as np_save
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from dynrec.data.events import Event
from dynrec.errors import DynrecError

__all__ = [
    "EVENT_ID_WINDOW",
    "Appended",
    "CachedState",
    "History",
    "StateStore",
    "UserStamp",
    "decode_state",
    "encode_state",
    "histories_of",
]


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


EVENT_ID_WINDOW = 128
"""A store keeps the event ids of each user's last this many events: the window in which a
repeated id is recognised (see the module docstring). 128 keeps a user's ids in Redis's compact
sorted-set encoding (``zset-max-listpack-entries`` 128, ids up to 64 bytes): about the id's length
plus 4 bytes each, where 1024 ids cost about 90 bytes each — on ml-1m (165 events per user) 12.5 KB
per user, twice the history. ``dynrec consume`` refuses a batch larger than this, so a
re-delivered batch always falls inside the window."""


@dataclass(frozen=True, eq=False)
class Appended(Mapping[str, UserStamp]):
    """What `StateStore.append` did: as a mapping, each user's stamp right after the batch (users
    whose every event was skipped included, with their stamp as it stands); `skipped`, the
    positions in the batch of the events skipped because their `Event.event_id` was already
    applied for their user (earlier, or earlier in the same batch), ascending. Compares equal to
    a plain dict of the same stamps."""

    stamps: dict[str, UserStamp]
    skipped: tuple[int, ...] = ()

    def __getitem__(self, user: str) -> UserStamp:
        return self.stamps[user]

    def __iter__(self) -> Iterator[str]:
        return iter(self.stamps)

    def __len__(self) -> int:
        return len(self.stamps)


def repeated_in_batch(events: Sequence[Event]) -> set[int]:
    """Positions of the events whose (user, event id) occurs earlier in the same batch: every store
    skips those before it looks at the ids it holds."""
    first: set[tuple[str, str]] = set()
    out: set[int] = set()
    for i, e in enumerate(events):
        if e.event_id is not None:
            key = (e.user_id, e.event_id)
            if key in first:
                out.add(i)
            first.add(key)
    return out


@runtime_checkable
class StateStore(Protocol):
    """Where per-user histories and cached model states live (in memory, SQLite, Redis, ...)."""

    def append(self, events: Iterable[Event]) -> Appended:
        """Validate the whole batch (`validate_events`), then add it to the users' histories (in
        the given order) atomically, skipping the events whose event id the store already applied
        for their user (see the module docstring). Returns each user's stamp right after the
        batch and the skipped positions."""
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

    def put_states(self, states: Sequence[tuple[str, CachedState]]) -> list[bool]:
        """`put_state` for each (user, state), in one write transaction (SQLite) or one round
        trip (Redis) — a request's checkpoints together; per pair whether it was written."""
        ...

    def delete_user(self, user: str, *, tombstone: bool = True) -> bool:
        """Remove the user's history and state, end the generation and record a tombstone for the
        user (`dynrec.online.store.versions.Tombstone`) in the same transaction — also when the store
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


def _arrays(tensors: Mapping[str, torch.Tensor]) -> dict[str, npt.NDArray[np.generic]] | None:
    """The tensors as C-contiguous numpy arrays (sharing the tensors' memory where they already
    are contiguous), or None when a dtype has no numpy equivalent (bfloat16): then the tensors are
    written through torch."""
    if any(t.dtype == torch.bfloat16 for t in tensors.values()):
        return None
    return {k: t.detach().cpu().contiguous().numpy() for k, t in tensors.items()}


def _checksum(tensors: Mapping[str, torch.Tensor], arrays: Mapping[str, npt.NDArray[np.generic]]) -> str:
    """crc32 over the tensors' names, dtypes, shapes and bytes (sorted by name); the bytes are
    read from `arrays` (the same tensors as numpy arrays)."""
    crc = 0
    for k in sorted(tensors):
        t = tensors[k]
        crc = zlib.crc32(f"{k}:{t.dtype}:{tuple(t.shape)};".encode(), crc)
        if t.numel():
            crc = zlib.crc32(arrays[k].reshape(-1).view(np.uint8).data, crc)
    return f"{crc:08x}"


def _byte_arrays(tensors: Mapping[str, torch.Tensor]) -> dict[str, npt.NDArray[np.generic]]:
    """Each tensor's bytes as a numpy array (any dtype, bfloat16 included), for `_checksum`."""
    return {
        k: t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy() for k, t in tensors.items()
    }


def encode_state(state: CachedState) -> bytes:
    """safetensors bytes of the tensors; version, generation, event count and a checksum of the
    tensors in the header metadata. Written through safetensors' numpy writer (no torch
    dispatch per tensor: a small state encodes several times faster), through torch for dtypes
    numpy lacks; both write the same format, which `decode_state` reads."""
    tensors = dict(state.tensors)
    arrays = _arrays(tensors)
    meta = {
        "version": state.version,
        "n_events": str(state.n_events),
        "generation": str(state.generation),
        "crc32": _checksum(tensors, arrays if arrays is not None else _byte_arrays(tensors)),
    }
    if arrays is not None:
        return bytes(np_save(arrays, metadata=meta))
    return bytes(st_save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=meta))


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
        if meta.get("crc32") != _checksum(tensors, _byte_arrays(tensors)):
            raise ValueError("checksum mismatch")
        return CachedState(
            tensors, str(meta["version"]), int(meta["n_events"]), int(meta.get("generation", 0))
        )
    except Exception as exc:  # struct/json/safetensors/KeyError: whatever the damage, one error
        raise DynrecError(f"corrupt cached state ({type(exc).__name__}: {exc})") from exc


def _limit(limit: int | None) -> int | None:
    """`limit` as a slice end: None = all, a negative number = none."""
    return None if limit is None else max(0, int(limit))


def _events_of(user: str, h: History) -> Iterator[Event]:
    """`h`'s events as `Event`s of `user` (what `iter_events` yields)."""
    for item, ts, et, w in zip(
        h.items, h.timestamps.tolist(), h.event_types, h.weights.tolist(), strict=True
    ):
        yield Event(user, item, int(ts), et, float(w))


def histories_of(store: StateStore, users: Sequence[str], max_len: int | None = None) -> list[History]:
    return [store.history(u, max_len) for u in users]
