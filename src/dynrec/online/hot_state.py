"""A session's hot cache: users' decoded model states held in this process (`dynrec.online.session`).

`HotState` is one user's entry, with what it covers, so a request can tell whether the store moved
past it. `HotRows` holds the states of every cached user as the rows of one batch: an ingest
request steps its users' rows in place, round by round (`StateAdapter.step_rows_`), so no state
is concatenated into a batch before the step or split back into one-row states after it.
`HotCache` is the least-recently-used map of users to their entries over those rows."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, ItemsView, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from dynrec.online.adapters import StateAdapter, StateBatch
from dynrec.online.store import UserStamp

__all__ = ["HotCache", "HotRows", "HotRun", "HotState"]


@dataclass(eq=False)
class HotState:
    """A user's decoded state in this process: the state, the events of the user's store
    generation it covers, the model version, the seen item indices, how many events it is ahead of
    the store's checkpoint, and the generation (`UserStamp`). A state admitted to `HotRows` is a
    view of its row there (`row`); -1 = a state of its own."""

    state: StateBatch
    n_events: int
    version: str
    seen: set[int]
    dirty: int = 0
    seen_idx: torch.Tensor | None = None
    generation: int = 0
    row: int = -1

    def seen_index(self) -> torch.Tensor:
        """The seen item indices as a sorted tensor, kept until the seen set grows."""
        if self.seen_idx is None or self.seen_idx.numel() != len(self.seen):
            self.seen_idx = torch.tensor(sorted(self.seen), dtype=torch.int64)
        return self.seen_idx


@dataclass(frozen=True)
class HotRun:
    """A cached user's events for `OnlineRecommender.observe` to step through: `n_events` stored
    events ending at `stamp` (a batch's, after any that another process appended since the entry),
    of which the known items `items` / `timestamps` move the state."""

    user: str
    hot: HotState
    n_events: int
    stamp: UserStamp
    items: npt.NDArray[np.int64]
    timestamps: npt.NDArray[np.int64]
    own: int
    """How many of `items` are the batch's (the last ones)."""


class HotRows:
    """The cached users' states as rows of one batch of `adapter`'s states (see the module
    docstring). Each admitted `HotState.state` is a view of its row, re-pointed whenever the batch
    is reallocated (growth, a state that outgrows the buffers); at most `capacity` rows are held."""

    def __init__(self, adapter: StateAdapter, capacity: int) -> None:
        self.adapter = adapter
        self.capacity = max(1, capacity)
        self.batch: StateBatch | None = None
        self._owners: dict[int, HotState] = {}
        self._free: list[int] = []

    def __len__(self) -> int:
        return len(self._owners)

    @property
    def allocated(self) -> int:
        """Rows of the batch (admitted + free)."""
        return 0 if self.batch is None else self.adapter.size(self.batch)

    def admit(self, hot: HotState) -> None:
        """Copy `hot`'s one-row state into a free row (growing the batch when none is free) and
        make `hot.state` a view of it."""
        if hot.row >= 0:
            return
        if not self._free:
            self._grow(hot.state)
        row = self._free.pop()
        assert self.batch is not None
        self._replace(self.adapter.assign_(self.batch, np.array([row], dtype=np.int64), hot.state))
        hot.row = row
        self._owners[row] = hot
        hot.state = self.adapter.row_view(self.batch, row)

    def evict(self, hot: HotState) -> None:
        """Give `hot`'s row back; `hot.state` becomes a copy of its own."""
        if hot.row < 0 or self._owners.get(hot.row) is not hot:
            return
        assert self.batch is not None
        hot.state = self.adapter.select(self.batch, np.array([hot.row], dtype=np.int64))
        del self._owners[hot.row]
        self._free.append(hot.row)
        hot.row = -1

    def step_runs_(
        self,
        hots: Sequence[HotState],
        items: Sequence[npt.NDArray[np.int64]],
        timestamps: Sequence[npt.NDArray[np.int64]],
    ) -> None:
        """Advance each admitted `hots[b]` through its own run of events (``items[b]``,
        ``timestamps[b]``), in place: round r steps every row's r-th event as one batch."""
        if not hots:
            return
        assert self.batch is not None and all(h.row >= 0 for h in hots)
        lens = np.fromiter(map(len, items), dtype=np.int64, count=len(items))
        starts = np.cumsum(lens) - lens
        flat_items = np.concatenate(items).astype(np.int64, copy=False)
        flat_ts = np.concatenate(timestamps).astype(np.int64, copy=False)
        rows = np.fromiter((h.row for h in hots), dtype=np.int64, count=len(hots))
        for r in range(int(lens.max(initial=0))):
            live = np.flatnonzero(lens > r)
            at = starts[live] + r
            self._replace(self.adapter.step_rows_(self.batch, rows[live], flat_items[at], flat_ts[at]))

    def clear(self) -> None:
        """Forget every row; the admitted states keep copies of their own."""
        for hot in list(self._owners.values()):
            self.evict(hot)
        self.batch, self._free = None, []

    # -- storage ----------------------------------------------------------------------------------
    def _grow(self, like: StateBatch) -> None:
        """Add free rows (doubling, up to `capacity`; past it only when every row is taken)."""
        have = self.allocated
        extra = (
            max(1, min(max(16, have), self.capacity - have)) if have < self.capacity else max(1, have // 2)
        )
        fill = self.adapter.select(like, np.zeros(extra, dtype=np.int64))
        self._replace(fill if self.batch is None else self.adapter.concat([self.batch, fill]))
        self._free.extend(range(have + extra - 1, have - 1, -1))  # lowest row first

    def _replace(self, batch: StateBatch) -> None:
        """Take `batch` as the rows; re-point the admitted states when its tensors are new ones."""
        old, self.batch = self.batch, batch
        if old is not None and len(old) == len(batch) and all(batch[k] is old.get(k) for k in batch):
            return
        for row, hot in self._owners.items():
            hot.state = self.adapter.row_view(batch, row)


class HotCache:
    """Users' `HotState`s, least recently used first, at most `size` of them (0 = none kept), their
    states rows of one `HotRows`. `evicted(user, hot)` is called for a dirty entry pushed out by a
    newer one (to checkpoint it) before its row is reused."""

    def __init__(self, adapter: StateAdapter, size: int, evicted: Callable[[str, HotState], object]) -> None:
        self.size = size
        self.rows = HotRows(adapter, size)
        self._lru: OrderedDict[str, HotState] = OrderedDict()
        self._evicted = evicted

    def get(self, user: str) -> HotState | None:
        return self._lru.get(user)

    def owned(self, user: str, m: int, stamp: UserStamp, version: str) -> HotState | None:
        """`user`'s entry (of model `version`) when the store's stamp after appending `m` events
        shows exactly those events on top of it (no other process appended or deleted in between)."""
        hot = self._lru.get(user)
        if hot is None or hot.version != version:
            return None
        if (stamp.generation == hot.generation and stamp.n_events == hot.n_events + m) or (
            hot.generation == 0 and hot.n_events == 0 and stamp.n_events == m  # a new user
        ):
            return hot
        return None

    def touch(self, user: str) -> None:
        """Mark `user` as the most recently used."""
        self._lru.move_to_end(user)

    def items(self) -> ItemsView[str, HotState]:
        return self._lru.items()

    def put(self, user: str, hot: HotState) -> None:
        """Keep `hot` as `user`'s entry (its state moves into the rows), evicting the least recently
        used first."""
        if self.size <= 0:
            return
        self.drop(user)
        self._lru[user] = hot
        while len(self._lru) > self.size:
            old, h = self._lru.popitem(last=False)
            if h.dirty:
                self._evicted(old, h)
            self.rows.evict(h)
        self.rows.admit(hot)

    def drop(self, user: str) -> None:
        """Forget `user`'s entry (its row is freed)."""
        hot = self._lru.pop(user, None)
        if hot is not None:
            self.rows.evict(hot)

    def clear(self, adapter: StateAdapter) -> None:
        """Forget every entry; the rows hold `adapter`'s states from now on."""
        self._lru.clear()
        self.rows = HotRows(adapter, self.size)

    def step(
        self,
        hots: Sequence[HotState],
        items: Sequence[npt.NDArray[np.int64]],
        timestamps: Sequence[npt.NDArray[np.int64]],
    ) -> None:
        """Advance each entry through its own run of events: the cached ones together, in their
        rows (`HotRows.step_runs_`); one of its own (not kept) step by step."""
        rows = [b for b, h in enumerate(hots) if h.row >= 0]
        self.rows.step_runs_([hots[b] for b in rows], [items[b] for b in rows], [timestamps[b] for b in rows])
        for b, hot in enumerate(hots):
            if hot.row < 0:
                for i, t in zip(items[b].tolist(), timestamps[b].tolist(), strict=True):
                    hot.state = self.rows.adapter.step_(
                        hot.state, np.array([i], dtype=np.int64), np.array([t], dtype=np.int64)
                    )

    def gather(self, hots: Sequence[HotState], read: Callable[[StateBatch], torch.Tensor]) -> torch.Tensor:
        """``read`` (a per-row quantity of a state batch, [B, ...]) of each entry, [len(hots), ...]:
        one indexing of the rows when every entry is kept."""
        rows = [h.row for h in hots]
        batch = self.rows.batch
        if batch is not None and rows and min(rows) >= 0:
            return read(batch)[torch.tensor(rows, dtype=torch.int64)]
        return torch.cat([read(h.state) for h in hots])
