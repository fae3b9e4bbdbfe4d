"""`VersionFollower`: the model version a serving process answers with follows the store's pointer.

Every process serving a model root holds one `ModelHolder`, the version the store's current-version
pointer names (`dynrec.online.store.versions.VersionStore`). A background thread polls the pointer every
`poll_s` seconds (one small read: SQLite and Redis alike) and, when another process published,
loads the new version completely, then swaps the reference; a version published by this process is
swapped in by `swap` right after its compare-and-set. `swap` installs a loaded version when the
pointer names it, or when it lies on the pointer's lineage between the held version and the
pointer (walking parents from the pointer reaches it before the held one): publications that come
faster than a load completes then move a process forward one load at a time instead of leaving it
on its old version until a load outruns the next publication, and a slow load of a version that
was superseded never replaces a newer one (nor undoes a rollback: a rolled-back branch is not on
the pointer's lineage). After installing a superseded version the follower loads the pointer's
version at once. The same thread watches the store's deletion generation: a deletion made by any
process reaches `on_deletions` within one poll.

Requests read `holder` once and finish on the holder they got, so a swap is atomic for them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from dynrec.errors import DynrecError
from dynrec.online.store import StateStore
from dynrec.online.store.versions import VersionRecord, VersionStore
from dynrec.service.holder import ModelHolder

log = logging.getLogger(__name__)

__all__ = ["MAX_CATCH_UP", "MAX_LINEAGE_STEPS", "VersionFollower"]

MAX_LINEAGE_STEPS = 64
"""How many versions back from the pointer `swap` looks for a superseded version it loaded."""
MAX_CATCH_UP = 4
"""Loads per poll while publications keep superseding the version being loaded."""


class VersionFollower:
    """The current `ModelHolder` of one process, kept on the store's current version."""

    def __init__(
        self,
        store: StateStore,
        versions: VersionStore,
        first: ModelHolder,
        load: Callable[[VersionRecord], ModelHolder],
        *,
        poll_s: float = 0.25,
        on_swap: Callable[[ModelHolder, ModelHolder], None] | None = None,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.versions = versions
        self._holder = first
        self._load = load
        self.poll_s = poll_s
        self._on_swap = on_swap
        self._on_tick = on_tick
        self._lock = threading.Lock()  # one swap at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def holder(self) -> ModelHolder:
        """The current model; read it once per request and finish on it."""
        return self._holder

    def start(self) -> None:
        if self._thread is None and self.poll_s > 0:
            self._thread = threading.Thread(target=self._run, name="dynrec-version-follower", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5 * self.poll_s + 1)

    def swap(self, new: ModelHolder) -> bool:
        """Install `new` when the store's pointer names it or `new` is on the pointer's lineage
        and newer than the held version (see the module docstring); else keep the current holder.
        True when `new` is the held version afterwards."""
        with self._lock:
            old = self._holder
            if old.version == new.version:
                return True
            if not self._ahead(new.version, old.version):
                return False
            self._holder = new
        if self._on_swap is not None:
            self._on_swap(old, new)
        log.info("serving model version %s (was %s)", new.version, old.version)
        return True

    def _ahead(self, candidate: str, held: str) -> bool:
        """Whether walking the parents from the pointer's version reaches `candidate` before `held`
        (within `MAX_LINEAGE_STEPS` versions)."""
        cur = self.versions.current_version()
        for _ in range(MAX_LINEAGE_STEPS):
            if cur is None or cur == held:
                return False
            if cur == candidate:
                return True
            rec = self.versions.get_version(cur)
            cur = None if rec is None else rec.parent
        return False

    def follow_once(self) -> None:
        """Load and install the pointer's version when it differs from the held one; when a load
        was superseded before it completed, install it (it is newer than the held version) and
        load the pointer's version again, up to `MAX_CATCH_UP` loads per poll."""
        for _ in range(MAX_CATCH_UP):
            cur = self.versions.current_version()
            if cur is None or cur == self._holder.version:
                return
            rec = self.versions.get_version(cur)
            if rec is None:
                log.warning("the store's current model version %s has no record", cur)
                return
            if not self.swap(self._load(rec)):
                return  # the pointer moved off this lineage (a rollback): the next poll follows it

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.follow_once()
                if self._on_tick is not None:
                    self._on_tick()
            except (DynrecError, OSError) as exc:
                log.warning("following the store's model version: %s", exc)
            except Exception:  # the follower must outlive one bad poll (a store hiccup)
                log.exception("following the store's model version failed")
