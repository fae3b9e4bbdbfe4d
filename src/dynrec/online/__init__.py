"""Real-time interests: per-user state stores (`dynrec.online.store`), incremental state per model family, the
`OnlineRecommender` session (observe -> recommend), and incremental training (`update`). The Redis
stores (the ``redis`` extra) are in `dynrec.online.store.redis` and `dynrec.online.store.redis_cluster`."""

from dynrec.data.events import Event, InvalidEventError  # re-exported: the public API's names
from dynrec.online.interests import Interests
from dynrec.online.session import OnlineRecommender, Recommendation
from dynrec.online.store import (
    CachedState,
    History,
    InMemoryStore,
    Lease,
    SQLiteStore,
    StateStore,
    Tombstone,
    UserStamp,
    VersionRecord,
    VersionStore,
    open_store,
)
from dynrec.online.updater import IncrementalUpdater, UpdateConfig

__all__ = [
    "CachedState",
    "Event",
    "History",
    "InMemoryStore",
    "IncrementalUpdater",
    "Interests",
    "InvalidEventError",
    "Lease",
    "OnlineRecommender",
    "Recommendation",
    "SQLiteStore",
    "StateStore",
    "Tombstone",
    "UpdateConfig",
    "UserStamp",
    "VersionRecord",
    "VersionStore",
    "open_store",
]
