"""The event log export closes the loop: events posted to a store -> `dynrec store export` ->
`dynrec train --dataset exported.csv` -> a model serving recommendations over the same store."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dynrec.cli.main import app
from dynrec.data.events import Event
from dynrec.data.io.events import read_events
from dynrec.jobs import export_events
from dynrec.models.base import Recommender
from dynrec.online.session import OnlineRecommender
from dynrec.online.store import StateStore, open_store

runner = CliRunner()


def posted_events() -> list[Event]:
    """20 users, 5 events each; item "hot" in every history, so popularity ranks it first."""
    evs = []
    for u in range(20):
        for j in range(5):
            item = "hot" if j == 2 else f"i{(u + j) % 9}"
            evs.append(Event(f"user{u}", item, 1000 * u + j, "click" if j % 2 else "view", 1.0 + j / 2))
    return evs


def test_export_round_trips_through_the_reader(make_store: Callable[[], StateStore], tmp_path: Path) -> None:
    store = make_store()
    evs = [*posted_events(), Event("odd,user", 'item "q"', 7, "buy", 0.25)]  # CSV quoting needed
    store.append(evs)
    report = export_events(store, tmp_path / "events.csv")
    assert report.to_json() == {"path": str(tmp_path / "events.csv"), "events": 101, "users": 21}
    assert (tmp_path / "events.csv").read_text().splitlines()[
        0
    ] == "user_id,item_id,timestamp,event_type,value"
    log = read_events(tmp_path / "events.csv", strict=True)
    got = {
        (r["user_id"], r["item_id"], r["timestamp"], r["event_type"], r["value"])
        for r in log.frame.iter_rows(named=True)
    }
    assert got == {(e.user_id, e.item_id, e.timestamp, e.event_type, e.weight) for e in evs}
    assert export_events(store, tmp_path / "events.csv.gz").events == 101  # gzip, read back alike
    assert len(read_events(tmp_path / "events.csv.gz", strict=True)) == 101
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_export_quotes_carriage_returns(make_store: Callable[[], StateStore], tmp_path: Path) -> None:
    """A lone "\r" ends a line for the readers; csv's minimal quoting (terminator "\n") left it bare,
    so the row was rejected on re-read. Item ids may not hold one; user ids and event types may."""
    store = make_store()
    evs = [Event("u\r1", "i1", 5, "view"), Event("u2", "i2", 6, "a\rb"), Event("u\r\n3", "i3", 7)]
    store.append(evs)
    export_events(store, tmp_path / "events.csv")
    log = read_events(tmp_path / "events.csv", strict=True)
    got = {(r["user_id"], r["item_id"], r["event_type"]) for r in log.frame.iter_rows(named=True)}
    assert got == {(e.user_id, e.item_id, e.event_type) for e in evs}


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_posted_events_train_the_next_model(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}" if kind == "sqlite" else request.getfixturevalue("redis_url")
    store = open_store(url)
    store.append(posted_events())
    out = tmp_path / "events.csv"
    r = runner.invoke(app, ["store", "export", "--store", url, "--out", str(out), "--json"])
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {"path": str(out), "events": 100, "users": 20}
    r = runner.invoke(app, ["train", "pop", "--dataset", str(out), "--out", str(tmp_path / "model")])
    assert r.exit_code == 0, r.stderr
    model = Recommender.load(tmp_path / "model")
    assert model.user_vocab is not None and len(model.user_vocab.ids) >= 20
    online = OnlineRecommender(model, store)  # the new model over the store the events came from
    rec = online.recommend("new-user", 3)
    assert rec.items[0] == "hot"  # in every history: the most popular item
    assert "hot" not in online.recommend("user3", 3).items  # seen in the store's history: excluded
    store.close()


def test_export_cli_rejects_a_bad_store_url(tmp_path: Path) -> None:
    r = runner.invoke(app, ["store", "export", "--store", "events.db", "--out", str(tmp_path / "e.csv")])
    assert r.exit_code == 1
    assert "bad store URL 'events.db'" in r.stderr and "sqlite:///" in r.stderr
    assert not (tmp_path / "e.csv").exists()
