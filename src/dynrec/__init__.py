"""dynrec: learn users' changing interests from their behaviour stream and recommend in real time.

The public API (everything else is internal and may move)::

    import dynrec

    model = dynrec.load("runs/sasrec")                       # a saved model (any registered kind)
    online = dynrec.OnlineRecommender(model, dynrec.SQLiteStore("state.db"))
    online.observe(dynrec.Event("u42", "1187", timestamp=1_700_000_000))
    online.recommend("u42", k=10)

    prepared = dynrec.jobs.prepare("ml-100k")               # dataset -> split
    model = dynrec.jobs.train("sasrec", prepared, out="runs/sasrec")
    dynrec.jobs.evaluate_model(model, prepared).metrics     # full-ranking HR/NDCG/MRR@10 ...

Names are imported on first use, so ``import dynrec`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dynrec.errors import DataError, DynrecError, NotFittedError, UnknownIdError

if TYPE_CHECKING:
    from dynrec import jobs
    from dynrec.data.query import QueryBatch
    from dynrec.models.base import Recommender, RunOptions
    from dynrec.models.registry import available_models, create_model
    from dynrec.models.registry import load_model as load
    from dynrec.online import (
        Event,
        IncrementalUpdater,
        InMemoryStore,
        OnlineRecommender,
        RedisClusterStore,
        RedisStore,
        SQLiteStore,
        StateStore,
        UpdateConfig,
        open_store,
    )

__version__ = "0.1.0"

_LAZY: dict[str, tuple[str, str | None]] = {
    "jobs": ("dynrec.jobs", None),
    "QueryBatch": ("dynrec.data.query", "QueryBatch"),
    "Recommender": ("dynrec.models.base", "Recommender"),
    "RunOptions": ("dynrec.models.base", "RunOptions"),
    "load": ("dynrec.models.registry", "load_model"),
    "create_model": ("dynrec.models.registry", "create_model"),
    "available_models": ("dynrec.models.registry", "available_models"),
    "Event": ("dynrec.online", "Event"),
    "OnlineRecommender": ("dynrec.online", "OnlineRecommender"),
    "StateStore": ("dynrec.online", "StateStore"),
    "InMemoryStore": ("dynrec.online", "InMemoryStore"),
    "SQLiteStore": ("dynrec.online", "SQLiteStore"),
    "RedisStore": ("dynrec.online", "RedisStore"),
    "RedisClusterStore": ("dynrec.online", "RedisClusterStore"),
    "open_store": ("dynrec.online", "open_store"),
    "IncrementalUpdater": ("dynrec.online", "IncrementalUpdater"),
    "UpdateConfig": ("dynrec.online", "UpdateConfig"),
}

__all__ = [
    "DataError",
    "DynrecError",
    "Event",
    "InMemoryStore",
    "IncrementalUpdater",
    "NotFittedError",
    "OnlineRecommender",
    "QueryBatch",
    "Recommender",
    "RedisClusterStore",
    "RedisStore",
    "RunOptions",
    "SQLiteStore",
    "StateStore",
    "UnknownIdError",
    "UpdateConfig",
    "__version__",
    "available_models",
    "create_model",
    "jobs",
    "load",
    "open_store",
]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'dynrec' has no attribute {name!r}")
    module, attr = _LAZY[name]
    mod = importlib.import_module(module)
    value = mod if attr is None else getattr(mod, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
