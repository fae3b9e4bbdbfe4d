"""Real-time interests: per-user state stores, incremental state per model family, the
`OnlineRecommender` session (observe -> recommend), and incremental training (`update`)."""

from dynrec.online.redis_cluster import RedisClusterStore
from dynrec.online.redis_store import RedisStore
from dynrec.online.session import Interests, OnlineRecommender, Recommendation
from dynrec.online.state import (
    CachedState,
    Event,
    History,
    InMemoryStore,
    InvalidEventError,
    SQLiteStore,
    StateStore,
    UserStamp,
)
from dynrec.online.stores import open_store
from dynrec.online.updater import IncrementalUpdater, UpdateConfig
from dynrec.online.versions import Lease, Tombstone, VersionRecord, VersionStore

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
    "RedisClusterStore",
    "RedisStore",
    "SQLiteStore",
    "StateStore",
    "Tombstone",
    "UpdateConfig",
    "UserStamp",
    "VersionRecord",
    "VersionStore",
    "open_store",
]
