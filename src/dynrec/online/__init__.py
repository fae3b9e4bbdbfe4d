"""Real-time interests: per-user state stores, incremental state per model family, the
`OnlineRecommender` session (observe -> recommend), and incremental training (`update`)."""

from dynrec.online.session import Interests, OnlineRecommender, Recommendation
from dynrec.online.state import CachedState, Event, History, InMemoryStore, SQLiteStore, StateStore
from dynrec.online.updater import IncrementalUpdater, UpdateConfig

__all__ = [
    "CachedState",
    "Event",
    "History",
    "InMemoryStore",
    "IncrementalUpdater",
    "Interests",
    "OnlineRecommender",
    "Recommendation",
    "SQLiteStore",
    "StateStore",
    "UpdateConfig",
]
