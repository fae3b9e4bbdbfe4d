"""Test helpers: a real `dynrec serve` process on a free loopback port, and free ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    """A port nothing listens on right now (bind port 0 on loopback, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(
    model_dir: Path, store: str, log: Path, *extra: str
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`dynrec serve MODEL_DIR --store STORE --port P [extra...]`, ready (its /healthz answers),
    its output appended to `log`; yields (process, base URL); always stopped on exit."""
    port = free_port()
    cmd = [sys.executable, "-m", "dynrec.cli.main", "serve", str(model_dir), "--store", store]
    cmd += ["--port", str(port), *extra]
    with log.open("ab") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = (
            time.monotonic() + 90
        )  # the server imports torch and loads the model; CI machines are small
        while True:
            if proc.poll() is not None:
                pytest.fail(f"dynrec serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dynrec serve did not become ready:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
