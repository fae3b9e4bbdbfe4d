"""Shared fixtures: tiny deterministic datasets (no real data unless a test is marked slow)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from dynrec.data.dataset import InteractionData
from dynrec.data.vocab import Vocabulary
from dynrec.online.store import StateStore
from dynrec.preprocessing.split import Split, leave_one_out

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("DYNREC_DATA_DIR", str((REPO.parent / "shared" / "data").resolve()))


def clustered_data(
    n_users: int = 60, n_items: int = 40, n_groups: int = 4, per_user: int = 12, seed: int = 0
) -> InteractionData:
    """Users in `n_groups` taste groups; each consumes a random walk over its group's items
    (with occasional off-group noise), so both CF and sequence models have something to learn."""
    rng = np.random.default_rng(seed)
    items_per_group = n_items // n_groups
    users, items, ts = [], [], []
    for u in range(n_users):
        g = u % n_groups
        own = np.arange(g * items_per_group, (g + 1) * items_per_group) + 1
        seq = rng.permutation(own)[:per_user]
        if rng.random() < 0.3:
            seq[rng.integers(len(seq))] = rng.integers(1, n_items + 1)
        seq = list(dict.fromkeys(int(i) for i in seq))
        users += [u + 1] * len(seq)
        items += seq
        ts += list(range(1000 * u, 1000 * u + len(seq)))
    uv = Vocabulary(f"u{i}" for i in range(1, n_users + 1))
    iv = Vocabulary(f"i{i}" for i in range(1, n_items + 1))
    return InteractionData.from_arrays(users, items, timestamps=ts, user_vocab=uv, item_vocab=iv)


@pytest.fixture(scope="session")
def tiny_data() -> InteractionData:
    return clustered_data()


@pytest.fixture(scope="session")
def tiny_split(tiny_data: InteractionData) -> Split:
    return leave_one_out(tiny_data)


def data_dir() -> Path:
    return Path(os.environ["DYNREC_DATA_DIR"])


# ---- state stores (memory, SQLite, a real Redis server, a real Redis Cluster) -----------------


@pytest.fixture(scope="session")
def redis_server_url() -> Iterator[str]:
    """One throw-away ``redis-server`` for the whole session (tests/redis_server.py); skips the
    test when it is not installed."""
    from tests.redis_server import redis_server, require_redis_server

    require_redis_server()
    with redis_server() as url:
        yield url


@pytest.fixture
def redis_url(redis_server_url: str) -> str:
    """The session's Redis server, emptied for this test."""
    import redis

    client = redis.Redis.from_url(redis_server_url)
    try:
        client.flushall()
    finally:
        client.close()
    return redis_server_url


@pytest.fixture(scope="session")
def redis_cluster_server_url() -> Iterator[str]:
    """One throw-away 3-node Redis Cluster for the whole session (tests/redis_server.py: three
    ``redis-server --cluster-enabled yes`` joined by ``redis-cli --cluster create``), as a
    ``redis+cluster://`` URL; skips the test when redis-server or redis-cli is not installed."""
    from tests.redis_server import redis_cluster, require_redis_server

    require_redis_server(cluster=True)
    with redis_cluster() as url:
        yield url


@pytest.fixture
def redis_cluster_url(redis_cluster_server_url: str) -> str:
    """The session's Redis Cluster, every node emptied for this test."""
    from redis.cluster import RedisCluster

    from dynrec.online.store.redis_cluster import cluster_node_url

    client = RedisCluster.from_url(cluster_node_url(redis_cluster_server_url))
    try:
        client.flushall(target_nodes=RedisCluster.PRIMARIES)
    finally:
        client.close()
    return redis_cluster_server_url


STORE_KINDS = ("memory", "sqlite", "redis", "redis-cluster")


@pytest.fixture(params=STORE_KINDS)
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], StateStore]]:
    """A factory of clients of ONE store of each kind (the test runs once per kind): every call
    opens another client of the same data, as another worker would (memory: the same object,
    which is all one process can share). Closed after the test."""
    from dynrec.online.store import InMemoryStore, SQLiteStore
    from dynrec.online.store.redis import RedisStore
    from dynrec.online.store.redis_cluster import RedisClusterStore

    kind = request.param
    url = request.getfixturevalue(kind.replace("-", "_") + "_url") if kind.startswith("redis") else ""
    memory = InMemoryStore()
    opened: list[StateStore] = []

    def make() -> StateStore:
        store: StateStore
        if kind == "memory":
            store = memory
        elif kind == "sqlite":
            store = SQLiteStore(tmp_path / "store.db")
        elif kind == "redis":
            store = RedisStore(url)
        else:
            store = RedisClusterStore(url)
        opened.append(store)
        return store

    try:
        yield make
    finally:
        for store in opened:
            store.close()
