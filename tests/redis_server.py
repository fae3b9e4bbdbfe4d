"""A throw-away real ``redis-server`` for tests: a free loopback port, its own temporary folder,
always stopped.

    with redis_server() as url:             # "redis://127.0.0.1:PORT/0"
        store = RedisStore(url)

    with RedisServer(durable=True) as srv:  # append-only file, fsync on every write
        ...
        srv.kill()                           # SIGKILL: a crash, nothing flushed on the way out
        srv.start()                          # the same port and folder: what was on disk comes back

    with redis_cluster() as url:            # "redis+cluster://127.0.0.1:PORT": 3 primaries, no replicas
        store = open_store(url)

Nothing is ever saved outside the server's folder (``--save ""``, ``--dir``). When ``redis-server``
(or, for a cluster, ``redis-cli``) is not on PATH, `require_redis_server` skips the calling test
(the fixtures in tests/conftest.py use it); `make test` installs it first (scripts/system-deps.sh).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.serve_process import free_port

__all__ = [
    "NOT_INSTALLED",
    "LocalRedisCluster",
    "RedisServer",
    "redis_cluster",
    "redis_server",
    "require_redis_server",
]

NOT_INSTALLED = "redis-server not installed; scripts/system-deps.sh installs it (make test runs it)"
START_TIMEOUT = 15.0


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def require_redis_server(*, cluster: bool = False) -> str:
    """The path of ``redis-server``, or skip the calling test (with `NOT_INSTALLED`); with
    `cluster`, ``redis-cli`` (which creates the cluster) must be there too."""
    binary = redis_server_binary()
    if binary is None or (cluster and shutil.which("redis-cli") is None):
        pytest.skip(NOT_INSTALLED)
    return binary


def _free_cluster_port() -> int:
    """A free port P whose cluster bus port P + 10000 is free too."""
    for _ in range(200):
        port = free_port()
        if port + 10000 > 65535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair (P, P + 10000) for a cluster node")


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 with its own folder (a temporary one unless
    `directory` is given; removed on `close` when temporary).

    `durable`: ``--appendonly yes --appendfsync always`` (every write on disk before the reply),
    else no persistence at all. `cluster`: a Redis Cluster node (``--cluster-enabled yes``, its
    node table in its folder; `LocalRedisCluster` joins three). `start` (re)starts it on the same
    port and folder, `stop` ends it cleanly (SIGTERM), `kill` abruptly (SIGKILL, as a crash would)."""

    def __init__(
        self, *, durable: bool = False, directory: Path | None = None, cluster: bool = False
    ) -> None:
        self.binary = redis_server_binary()
        if self.binary is None:
            raise RuntimeError(NOT_INSTALLED)
        self.durable = durable
        self.cluster = cluster
        self._tmp = None if directory is not None else tempfile.mkdtemp(prefix="dynrec-redis-")
        self.dir = Path(directory) if directory is not None else Path(str(self._tmp))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> str:
        """The server's log so far (for failure messages)."""
        path = self.dir / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def _command(self) -> list[str]:
        assert self.binary is not None
        persistence = (
            ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]
        )
        cluster = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"] if self.cluster else []
        return [
            *[self.binary, *cluster],
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            *persistence,
            "--dir",
            str(self.dir),
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
        ]

    def start(self) -> RedisServer:
        """Start the server (a free port on the first start, the same one after) and wait until it
        answers PING. A port taken in between (another process was faster) is retried."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        for attempt in range(3):
            if not self.port or attempt:
                self.port = _free_cluster_port() if self.cluster else free_port()
            self.proc = subprocess.Popen(
                self._command(), cwd=self.dir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            if self._wait_ready():
                return self
            self._end(signal.SIGKILL)
        raise RuntimeError(f"redis-server did not start; its log:\n{self.log[-2000:]}")

    def _wait_ready(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_connect_timeout=1, socket_timeout=1)
        deadline = time.monotonic() + START_TIMEOUT
        try:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    return False  # exited: the port was taken, or a bad option (see the log)
                try:
                    if client.ping():
                        return True
                except (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError):
                    time.sleep(0.02)
            return False
        finally:
            client.close()

    def _end(self, sig: signal.Signals) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def stop(self) -> None:
        """Shut the server down cleanly (SIGTERM; waits for it to exit)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """End the server at once (SIGKILL): what it had not written to disk is lost."""
        self._end(signal.SIGKILL)

    def close(self) -> None:
        """Stop the server and remove its temporary folder."""
        try:
            self.stop()
        finally:
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def redis_server(*, durable: bool = False, directory: Path | None = None) -> Iterator[str]:
    """A running server's URL for the ``with`` block; stopped (and its temporary folder removed)
    afterwards, whatever happens."""
    with RedisServer(durable=durable, directory=directory) as srv:
        yield srv.url


class LocalRedisCluster:
    """A Redis Cluster of `n` primaries (no replicas) on loopback ports, each node a `RedisServer`
    with its own temporary folder, joined with ``redis-cli --cluster create``; `url` is the
    ``redis+cluster://`` URL of its first node. `close` stops every node and removes the folders."""

    def __init__(self, n: int = 3) -> None:
        self.nodes = [RedisServer(cluster=True) for _ in range(n)]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> LocalRedisCluster:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError(NOT_INSTALLED)
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        done = subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"redis-cli --cluster create failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
            )
        self._wait_ok()
        return self

    def _wait_ok(self) -> None:
        """Until every node says ``cluster_state:ok`` and knows all its peers."""
        deadline = time.monotonic() + START_TIMEOUT
        clients = [redis.Redis(host="127.0.0.1", port=node.port, socket_timeout=1) for node in self.nodes]
        try:
            while time.monotonic() < deadline:
                infos = [c.execute_command("CLUSTER", "INFO") for c in clients]
                texts = [i.decode() if isinstance(i, bytes) else str(i) for i in infos]
                if all(
                    "cluster_state:ok" in t and f"cluster_known_nodes:{len(self.nodes)}" in t for t in texts
                ):
                    return
                time.sleep(0.05)
        finally:
            for c in clients:
                c.close()
        raise RuntimeError("the Redis Cluster did not reach cluster_state:ok; node logs:\n" + self.log)

    @property
    def log(self) -> str:
        return "\n".join(f"--- node {node.port}:\n{node.log[-1500:]}" for node in self.nodes)

    def close(self) -> None:
        for node in self.nodes:
            node.close()

    def __enter__(self) -> LocalRedisCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def redis_cluster(n: int = 3) -> Iterator[str]:
    """A running `n`-node cluster's ``redis+cluster://`` URL for the ``with`` block; stopped (and
    its folders removed) afterwards, whatever happens."""
    with LocalRedisCluster(n) as cluster:
        yield cluster.url
