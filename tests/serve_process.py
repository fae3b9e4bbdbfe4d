"""Test helpers: a real `dynrec serve` process on a free loopback port, free ports, and a small
saved itemknn model to serve."""

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

from dynrec import jobs
from dynrec.data.dataset import InteractionData


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


def itemknn_dir(root: Path, data: InteractionData) -> Path:
    """`data` written as ``root/events.csv`` and an itemknn model trained on it by the jobs layer
    (so it records its provenance) into ``root/model``; returns the model directory."""
    users = data.user_vocab.to_ids(data.users)
    items = data.item_vocab.to_ids(data.items)
    rows = [f"{u},{i},{int(t)}" for u, i, t in zip(users, items, data.timestamps.tolist(), strict=True)]
    (root / "events.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    jobs.train("itemknn", jobs.prepare(str(root / "events.csv")), out=root / "model")
    return root / "model"
