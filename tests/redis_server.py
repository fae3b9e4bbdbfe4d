"""A throw-away real ``redis-server`` for tests: a free loopback port, its own temporary folder,
always stopped.

    with redis_server() as url:             # "redis://127.0.0.1:PORT/0"
        store = RedisStore(url)

    with RedisServer(durable=True) as srv:  # append-only file, fsync on every write
        ...
        srv.kill()                           # SIGKILL: a crash, nothing flushed on the way out
        srv.start()                          # the same port and folder: what was on disk comes back

Nothing is ever saved outside the server's folder (``--save ""``, ``--dir``). When ``redis-server``
is not on PATH, `require_redis_server` skips the calling test (the fixtures in tests/conftest.py
use it); `.ci/run` installs it.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.serve_process import free_port

__all__ = ["NOT_INSTALLED", "RedisServer", "redis_server", "require_redis_server"]

NOT_INSTALLED = "redis-server not installed; .ci/run installs it"
START_TIMEOUT = 15.0


def redis_server_binary() -> str | None:
    return shutil.which("redis-server")


def require_redis_server() -> str:
    """The path of ``redis-server``, or skip the calling test (with `NOT_INSTALLED`)."""
    binary = redis_server_binary()
    if binary is None:
        pytest.skip(NOT_INSTALLED)
    return binary


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1 with its own folder (a temporary one unless
    `directory` is given; removed on `close` when temporary).

    `durable`: ``--appendonly yes --appendfsync always`` (every write on disk before the reply),
    else no persistence at all. `start` (re)starts it on the same port and folder, `stop` ends it
    cleanly (SIGTERM), `kill` abruptly (SIGKILL, as a crash would)."""

    def __init__(self, *, durable: bool = False, directory: Path | None = None) -> None:
        self.binary = redis_server_binary()
        if self.binary is None:
            raise RuntimeError(NOT_INSTALLED)
        self.durable = durable
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
        return [
            self.binary,
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
                self.port = free_port()
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
