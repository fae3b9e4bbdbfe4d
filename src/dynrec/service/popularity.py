"""`Popularity`: the item counts behind the service's popular fallback, shared by every process.

An item's count is its number of events in the model root's original training history (when the
model records its provenance and the data is reachable), the deleted users' events left out, plus
its number of events served since the root's first version — read from the store, so every worker
and host counts the events every other one ingested. `refresh` (called on the follower's tick and
after a deletion in this process) reads the store's event sequence and deletion generation; the
counts are brought up to date lazily, incrementally for new events and in full after a deletion.
"""

from __future__ import annotations

import threading
from collections import Counter

import numpy as np
import torch

from dynrec.data.dataset import InteractionData
from dynrec.jobs.model_root import without_users
from dynrec.online.store import StateStore
from dynrec.online.store.versions import VersionStore
from dynrec.service.holder import ModelHolder

__all__ = ["Popularity"]


class Popularity:
    """Fallback counts (see the module docstring). `base` is the original training history
    (None = unknown: served events only); `base_seq` the sequence number the served events start after."""

    def __init__(
        self, store: StateStore, versions: VersionStore, base: InteractionData | None, base_seq: int
    ) -> None:
        self.store = store
        self.versions = versions
        self.base = base
        self.base_seq = base_seq
        self._lock = threading.Lock()
        self._seen = (store.event_seq(), versions.deletion_generation())  # what the store said last
        self._built: tuple[int, int] | None = None  # (seq, deletion generation) the counts reflect
        self._base_counts: dict[str, float] = {}
        self._served: Counter[str] = Counter()
        self._cache: tuple[str, tuple[int, int], torch.Tensor] | None = None

    def refresh(self) -> int:
        """Read where the store stands (its event sequence and deletion generation); returns the
        event sequence number read."""
        seen = (self.store.event_seq(), self.versions.deletion_generation())
        with self._lock:
            self._seen = seen
        return seen[0]

    def _bring_up_to_date(self) -> tuple[int, int]:
        """(seq, generation) the counts now reflect; call with the lock held."""
        seq, gen = self._seen
        built = self._built
        if built is None or built[1] != gen:
            deleted = {t.user_id for t in self.versions.tombstones()}
            if self.base is not None:
                kept = without_users(self.base, deleted)
                counts = np.bincount(kept.items, minlength=kept.n_items)
                ids = kept.item_vocab.to_ids(np.nonzero(counts)[0])
                self._base_counts = {
                    i: float(c) for i, c in zip(ids, counts[counts > 0].tolist(), strict=True)
                }
            self._served = Counter(e.item_id for _, e in self.store.events_since(self.base_seq, seq))
        elif built[0] < seq:
            self._served.update(e.item_id for _, e in self.store.events_since(built[0], seq))
        self._built = (seq, gen)
        return self._built

    def scores(self, holder: ModelHolder) -> torch.Tensor:
        """[n_items] float64 counts in `holder`'s item vocabulary (row 0 = padding, 0)."""
        with self._lock:
            key = self._bring_up_to_date()
            cached = self._cache
            if cached is not None and cached[0] == holder.version and cached[1] == key:
                return cached[2]
            vocab = holder.item_vocab
            s = torch.zeros(vocab.size, dtype=torch.float64)
            for counts in (self._base_counts, self._served):
                if counts:
                    ids = list(counts)
                    idx = vocab.lookup(ids, policy="skip")
                    vals = np.array([counts[i] for i in ids], dtype=np.float64)
                    ok = idx > 0
                    s.index_add_(0, torch.from_numpy(idx[ok].astype(np.int64)), torch.from_numpy(vals[ok]))
            self._cache = (holder.version, key, s)
            return s
