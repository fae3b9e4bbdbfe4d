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

from dynrec.errors import DataError as DataError
from dynrec.errors import DynrecError as DynrecError
from dynrec.errors import NotFittedError as NotFittedError
from dynrec.errors import UnknownIdError as UnknownIdError

# For type checkers only (`X as X` re-exports each name): at run time these names come from
# `_LAZY` below, which is the list of the lazy public names — a name added there needs its line here.
if TYPE_CHECKING:
    from dynrec import jobs as jobs
    from dynrec.data.events import Event as Event
    from dynrec.data.query import QueryBatch as QueryBatch
    from dynrec.models.base import Recommender as Recommender
    from dynrec.models.config import RunOptions as RunOptions
    from dynrec.models.registry import available_models as available_models
    from dynrec.models.registry import create_model as create_model
    from dynrec.models.registry import load_model
    from dynrec.online import IncrementalUpdater as IncrementalUpdater
    from dynrec.online import InMemoryStore as InMemoryStore
    from dynrec.online import OnlineRecommender as OnlineRecommender
    from dynrec.online import SQLiteStore as SQLiteStore
    from dynrec.online import StateStore as StateStore
    from dynrec.online import UpdateConfig as UpdateConfig
    from dynrec.online import open_store as open_store
    from dynrec.online.store.redis import RedisStore as RedisStore
    from dynrec.online.store.redis_cluster import RedisClusterStore as RedisClusterStore

    load = load_model  # an assignment, not `import ... as load`: re-exported without a literal __all__

__version__ = "0.1.0"

_EAGER = ("DataError", "DynrecError", "NotFittedError", "UnknownIdError", "__version__")

# public name -> (module, attribute; None = the module itself), imported on first use
_LAZY: dict[str, tuple[str, str | None]] = {
    "jobs": ("dynrec.jobs", None),
    "QueryBatch": ("dynrec.data.query", "QueryBatch"),
    "Recommender": ("dynrec.models.base", "Recommender"),
    "RunOptions": ("dynrec.models.config", "RunOptions"),
    "load": ("dynrec.models.registry", "load_model"),
    "create_model": ("dynrec.models.registry", "create_model"),
    "available_models": ("dynrec.models.registry", "available_models"),
    "Event": ("dynrec.data.events", "Event"),
    "OnlineRecommender": ("dynrec.online", "OnlineRecommender"),
    "StateStore": ("dynrec.online", "StateStore"),
    "InMemoryStore": ("dynrec.online", "InMemoryStore"),
    "SQLiteStore": ("dynrec.online", "SQLiteStore"),
    "RedisStore": ("dynrec.online.store.redis", "RedisStore"),  # the redis extra
    "RedisClusterStore": ("dynrec.online.store.redis_cluster", "RedisClusterStore"),
    "open_store": ("dynrec.online", "open_store"),
    "IncrementalUpdater": ("dynrec.online", "IncrementalUpdater"),
    "UpdateConfig": ("dynrec.online", "UpdateConfig"),
}

__all__ = sorted([*_EAGER, *_LAZY])


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
