"""Several real processes on one SQLite store: deletes stay deleted, interleaved writers serve
states equal to recomputation from the stored history.

Two worker processes (spawned: a fresh interpreter each, as separate service processes would be)
load the same saved tiny model and open the same SQLite file; the test drives them over queues and
is itself the third process reading the file.
"""

from __future__ import annotations

import multiprocessing as mp
import queue
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from dynrec.data.events import Event
from dynrec.models.base import Recommender
from dynrec.models.registry import get_model_class
from dynrec.online.session import OnlineRecommender
from dynrec.online.store import SQLiteStore
from tests.conftest import clustered_data
from tests.unit.online.test_session_validation import assert_scores, reference_scores
from tests.unit.online.test_state import tiny_model

MODEL = "sasrec"  # order-sensitive: a state stepped through events in the wrong order shows
TIMEOUT = 60.0


def _serve(db: str, persist_every: int, inbox: Any, outbox: Any) -> None:
    """A worker process: one `OnlineRecommender` on the shared file, answering commands. The
    first message is the saved model's folder (the worker imports while the model is fitted)."""
    torch.set_num_threads(1)
    _, model_dir = inbox.get()
    model = get_model_class(MODEL).load(model_dir)
    online = OnlineRecommender(model, SQLiteStore(db), persist_every=persist_every)
    outbox.put(("ok", None))
    while True:
        cmd, arg = inbox.get()
        if cmd == "stop":
            return
        try:
            out: Any = None
            if cmd == "observe":
                online.observe([Event(*e) for e in arg])
            elif cmd == "observe_each":  # one event at a time, reading after each (hot cache in use)
                for e in arg:
                    online.observe(Event(*e))
                    online.recommend(e[0], 3)
            elif cmd == "recommend":
                out = online.recommend(arg, 5).items
            elif cmd == "scores":
                out = online.scores(arg, exclude_seen=False).tolist()
            elif cmd == "delete":
                out = online.delete_user(arg)
            elif cmd == "flush":
                online.flush()
            outbox.put(("ok", out))
        except Exception as exc:  # reported to the test, which fails with it
            outbox.put(("error", repr(exc)))


class Worker:
    def __init__(self, ctx: Any, db: Path, persist_every: int) -> None:
        self.inbox, self.outbox = ctx.Queue(), ctx.Queue()
        self.proc = ctx.Process(
            target=_serve, args=(str(db), persist_every, self.inbox, self.outbox), daemon=True
        )
        self.proc.start()

    def send(self, cmd: str, arg: Any = None) -> None:
        self.inbox.put((cmd, arg))

    def result(self) -> Any:
        try:
            status, out = self.outbox.get(timeout=TIMEOUT)
        except queue.Empty:
            pytest.fail(f"worker {self.proc.pid} did not answer within {TIMEOUT}s")
        assert status == "ok", out
        return out

    def call(self, cmd: str, arg: Any = None) -> Any:
        self.send(cmd, arg)
        return self.result()


Setup = tuple[Recommender, Path, list[Worker]]


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("procs")
    db = tmp / "shared.db"
    SQLiteStore(db).close()  # create the file before the workers race to
    ctx = mp.get_context("spawn")
    workers = [Worker(ctx, db, pe) for pe in (1, 2)]
    try:
        data = clustered_data(n_users=30, n_items=24, n_groups=3, per_user=10, seed=1)
        tiny_model(MODEL, data).save(tmp / "model")
        model = get_model_class(MODEL).load(tmp / "model")
        for w in workers:
            w.send("model", str(tmp / "model"))
        for w in workers:
            w.result()  # loaded and ready
        yield model, db, workers
    finally:
        for w in workers:
            w.send("stop")
        for w in workers:
            w.proc.join(10)
            if w.proc.is_alive():
                w.proc.kill()


def _scores_here(model: Recommender, db: Path, user: str) -> torch.Tensor:
    """Process C: a fresh session in this (test) process."""
    with SQLiteStore(db) as store:
        return OnlineRecommender(model, store).scores(user, exclude_seen=False)


def test_delete_in_one_process_is_not_undone_by_another(setup: Setup) -> None:
    model, db, (a, b) = setup
    assert model.item_vocab is not None
    ids = model.item_vocab.ids
    a.call("observe", [("u", ids[j], j) for j in range(6)])
    assert len(a.call("recommend", "u")) == 5  # A now holds u's state in its hot cache
    assert b.call("delete", "u") is True
    a.call("observe", [("u", ids[9], 100)])
    want = reference_scores(model, "u", [ids[9]], [100])
    assert_scores(_scores_here(model, db, "u"), want)
    for w in (a, b):
        assert_scores(torch.tensor(w.call("scores", "u")), want)
    with SQLiteStore(db) as store:
        assert store.history("u").items == (ids[9],)
        st = store.get_state("u")
        assert st is not None and st.n_events == 1 and st.generation == store.stamp("u").generation


def test_interleaved_writers_in_two_processes(setup: Setup) -> None:
    model, db, (a, b) = setup
    assert model.item_vocab is not None
    ids = model.item_vocab.ids
    users = ["p", "q"]
    a.call("recommend", "p")  # both writers start with (empty) hot states of the users
    b.call("recommend", "q")
    evs_a = [(users[j % 2], ids[(3 * j) % len(ids)], 1000 + j) for j in range(12)]
    evs_b = [(users[(j + 1) % 2], ids[(5 * j + 1) % len(ids)], 2000 + j) for j in range(12)]
    a.send("observe_each", evs_a)  # both run at the same time
    b.send("observe_each", evs_b)
    a.result()
    b.result()
    with SQLiteStore(db) as store:
        hists = {u: store.history(u) for u in users}
    assert sorted(len(h) for h in hists.values()) == [12, 12]
    for u, h in hists.items():
        want = reference_scores(model, u, list(h.items), h.timestamps.tolist())
        assert_scores(_scores_here(model, db, u), want)
        for w in (a, b):
            assert_scores(torch.tensor(w.call("scores", u)), want)
    for w in (a, b):
        w.call("flush")
    with SQLiteStore(db) as store:
        for u in users:
            st = store.get_state(u)
            assert st is not None and st.n_events == 12 and st.generation == store.stamp(u).generation
