"""`dynrec serve --workers 2` disables Nagle's algorithm on the connections it accepts.

uvicorn's multi-process mode binds the listening socket with protocol number 0, so asyncio leaves
TCP_NODELAY off on the accepted sockets and every keep-alive answer's body waited for the client's
delayed ACK. Checked on the real process: the server-side end of a keep-alive connection, taken
from the worker with ``pidfd_getfd`` (Linux), has TCP_NODELAY; and, everywhere, on a listening
socket bound by uvicorn's own ``Config.bind_socket``.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import http.client
import json
import os
import socket
import sys
from pathlib import Path

import pytest
import uvicorn
from uvicorn.server import ServerState

from dynrec.service.serve import NoDelayHTTPProtocol
from tests.conftest import clustered_data
from tests.serve_process import itemknn_dir, running_server

SYS_PIDFD_GETFD = 438  # the same number on every Linux architecture (added in 5.6)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-workers-model")
    data = clustered_data(n_users=30, n_items=24, n_groups=3, per_user=10, seed=1)
    return itemknn_dir(root, data)


def _socket_inode(local_port: int, remote_port: int) -> str:
    """The inode of the IPv4 loopback socket local_port <-> remote_port (from /proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].rsplit(":", 1)[1], 16) == local_port and int(fields[2].rsplit(":", 1)[1], 16) == (
            remote_port
        ):
            return fields[9]
    raise AssertionError(f"no socket 127.0.0.1:{local_port} <-> :{remote_port} in /proc/net/tcp")


def _fds(pid: str) -> list[str]:
    try:
        return os.listdir(f"/proc/{pid}/fd")
    except OSError:  # gone, or not ours to read
        return []


def _link(path: str) -> str:
    try:
        return os.readlink(path)
    except OSError:
        return ""


def _borrow_socket(inode: str) -> socket.socket:
    """A duplicate, in this process, of the file descriptor another process holds for socket `inode`
    (``pidfd_getfd``); skips the test where the kernel or its sandbox does not allow it."""
    target = f"socket:[{inode}]"
    libc = ctypes.CDLL(None, use_errno=True)
    for pid in filter(str.isdigit, os.listdir("/proc")):
        fds = [fd for fd in _fds(pid) if _link(f"/proc/{pid}/fd/{fd}") == target]
        if not fds:
            continue
        pidfd = os.pidfd_open(int(pid))
        try:
            for fd in fds:
                got = libc.syscall(SYS_PIDFD_GETFD, pidfd, int(fd), 0)
                if got >= 0:
                    return socket.socket(fileno=got)
                err = ctypes.get_errno()
                if err in (errno.ENOSYS, errno.EPERM, errno.EACCES):
                    pytest.skip(f"pidfd_getfd is not available here: {os.strerror(err)}")
        finally:
            os.close(pidfd)
    raise AssertionError(f"no process holds {target}")


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not hasattr(os, "pidfd_open"),
    reason="reads another process's socket with pidfd_getfd (Linux)",
)
def test_two_workers_accept_connections_with_nodelay(model_dir: Path, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'events.db'}"
    with running_server(model_dir, store, tmp_path / "server.log", "--workers", "2") as (_, url):
        port = int(url.rsplit(":", 1)[1])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            for _ in range(3):  # one keep-alive connection, as load balancers and clients use them
                conn.request("GET", "/v1/users/u1/recommendations?k=5")
                answer = conn.getresponse()
                assert answer.status == 200 and len(json.loads(answer.read())["items"]) == 5
            assert conn.sock is not None
            server_side = _borrow_socket(_socket_inode(port, conn.sock.getsockname()[1]))
            with server_side:
                assert server_side.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        finally:
            conn.close()


async def _empty_app(scope: object, receive: object, send: object) -> None:
    """An ASGI app that is never called (only the connection is made)."""


def test_protocol_sets_nodelay_on_a_socket_bound_like_uvicorns_workers() -> None:
    config = uvicorn.Config(_empty_app, host="127.0.0.1", port=0, workers=2, lifespan="off")
    listener = config.bind_socket()  # what uvicorn's multi-process mode hands every worker

    async def accepted_nodelay() -> int:
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[int] = loop.create_future()

        class Probe(NoDelayHTTPProtocol):
            def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
                super().connection_made(transport)
                sock = transport.get_extra_info("socket")
                accepted.set_result(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

        server = await loop.create_server(
            lambda: Probe(config=config, server_state=ServerState(), app_state={}), sock=listener
        )
        async with server:
            _, writer = await asyncio.open_connection(*listener.getsockname()[:2])
            try:
                return await asyncio.wait_for(accepted, 30)
            finally:
                writer.close()

    assert asyncio.run(accepted_nodelay()) != 0
