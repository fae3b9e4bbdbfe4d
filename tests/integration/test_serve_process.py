"""`dynrec serve` as a real process on a free loopback port with a SQLite store: posted events show
in the next recommendations; killed with SIGKILL during sustained ingest and restarted on the same
store, it still returns every event it acknowledged."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from dynrec.data.query import QueryBatch
from dynrec.models.base import Recommender
from tests.conftest import clustered_data
from tests.serve_process import itemknn_dir, running_server

KEY = "integration-key"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("serve-model")
    data = clustered_data(n_users=30, n_items=24, n_groups=3, per_user=10, seed=1)
    return itemknn_dir(root, data)


@contextmanager
def _server(model_dir: Path, store: str, log: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """A `dynrec serve` process with the test's API key, ready; always stopped on exit."""
    with running_server(model_dir, store, log, "--api-key", KEY) as served:
        yield served


def _reference(model: Recommender, history: list[str], k: int) -> list[str]:
    assert model.item_vocab is not None
    idx = model.item_vocab.lookup(history, policy="skip").astype(np.int64)
    q = QueryBatch(np.zeros(1, np.int64), np.array([0, idx.size], np.int64), idx)
    top, vals = model.recommend(q, k=k)
    return model.item_vocab.to_ids(top[0][torch.isfinite(vals[0])].numpy())


def test_serve_reflects_events_and_survives_kill9(model_dir: Path, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'events.db'}"
    log = tmp_path / "server.log"
    model = Recommender.load(model_dir)
    acked: list[tuple[str, int]] = []
    with _server(model_dir, store, log) as (proc, url), httpx.Client(base_url=url, timeout=10) as http:
        assert http.get("/healthz").json()["store"] == "sqlite"
        assert http.get("/v1/users/p1/recommendations?k=5").json()["fallback"] == "popular"
        history = []
        for item in ("i1", "i14"):
            r = http.post("/v1/events", json={"events": [{"user_id": "p1", "item_id": item}]}, headers=AUTH)
            assert r.status_code == 200 and r.json()["accepted"] == 1
            history.append(item)
            got = http.get("/v1/users/p1/recommendations?k=5").json()
            assert got["fallback"] is None and [x["item_id"] for x in got["items"]] == _reference(
                model, history, 5
            )
        assert (
            http.post("/v1/events", json={"events": [{"user_id": "p1", "item_id": "i2"}]}).status_code == 401
        )

        stop = threading.Event()

        def ingest() -> None:
            """Post batches until the server dies; remember exactly what it acknowledged."""
            n = 0
            with httpx.Client(base_url=url, timeout=10) as c:
                while not stop.is_set():
                    batch = [(f"w{(n + j) % 3}", n + j) for j in range(20)]
                    events = [{"user_id": u, "item_id": f"i{t % 24 + 1}", "timestamp": t} for u, t in batch]
                    try:
                        r = c.post("/v1/events", json={"events": events}, headers=AUTH)
                    except httpx.TransportError:
                        return
                    if r.status_code == 200:
                        acked.extend(batch)
                    n += 20

        thread = threading.Thread(target=ingest)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while len(acked) < 300 and time.monotonic() < deadline and thread.is_alive():
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)  # mid-ingest: requests are in flight
            proc.wait(10)
        finally:
            stop.set()
            thread.join(30)
    assert len(acked) >= 300, log.read_text()[-2000:]

    with _server(model_dir, store, log) as (_, url), httpx.Client(base_url=url, timeout=10) as http:
        for user in ("w0", "w1", "w2"):
            stored = http.get(f"/v1/users/{user}?limit=10000").json()["history"]
            have = {e["timestamp"] for e in stored}
            missing = [t for u, t in acked if u == user and t not in have]
            assert not missing, f"{user}: {len(missing)} acknowledged events lost, e.g. {missing[:5]}"
        assert [e["item_id"] for e in http.get("/v1/users/p1").json()["history"]] == ["i1", "i14"]
        assert http.get("/v1/users/w0/recommendations?k=3").json()["fallback"] is None


def test_serve_seeds_a_new_store_so_known_users_get_the_model(model_dir: Path, tmp_path: Path) -> None:
    from dynrec import jobs

    store = f"sqlite:///{tmp_path / 'seeded.db'}"
    log = tmp_path / "seeded.log"
    with running_server(model_dir, store, log) as (_, url), httpx.Client(base_url=url, timeout=10) as http:
        for user in ("u1", "u17", "u30"):
            got = http.get(f"/v1/users/{user}/recommendations?k=5").json()
            assert got["fallback"] is None
            assert [x["item_id"] for x in got["items"]] == jobs.recommend_for(model_dir, user=user, k=5).items
    lines = [ln for ln in log.read_text().splitlines() if "seeded the store" in ln]
    assert lines == [
        f"seeded the store {tmp_path / 'seeded.db'} with the training histories of 30 users "
        f"({_n_train(model_dir)} "
        "events), so they get personalised recommendations (--no-seed: leave the store as it is)"
    ]
    # restarted on the seeded store: nothing to say; --no-seed on a new store: the popular fallback
    with running_server(model_dir, store, log) as (_, url):
        assert httpx.get(f"{url}/v1/users/u1/recommendations?k=5").json()["fallback"] is None
    assert sum("seeded the store" in ln for ln in log.read_text().splitlines()) == 1
    fresh = f"sqlite:///{tmp_path / 'unseeded.db'}"
    with running_server(model_dir, fresh, tmp_path / "unseeded.log", "--no-seed") as (_, url):
        assert httpx.get(f"{url}/v1/users/u1/recommendations?k=5").json()["fallback"] == "popular"
    assert "seeded" not in (tmp_path / "unseeded.log").read_text()


def _n_train(model_dir: Path) -> int:
    from dynrec.jobs.history import training_history

    return training_history(Recommender.load(model_dir)).data.n_events
