"""Model versions shared through the store: several runtimes (as several workers or hosts would be)
on one SQLite file or one Redis, each following the store's current-version pointer.

Reproductions of issue 21: items posted to different processes are all kept; a CLI edit of a
served root is not undone by the next POST; a deletion survives a restart and the next update
equals the model refit without the deleted users; one update per store; a version is never
overwritten."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dynrec import jobs
from dynrec.data.events import Event
from dynrec.errors import DynrecError
from dynrec.jobs.history import training_history
from dynrec.jobs.model_root import is_model_dir, without_users
from dynrec.models.base import Recommender
from dynrec.online.store.versions import VersionRecord
from dynrec.service.metrics import ServiceMetrics
from dynrec.service.runtime import Runtime, UpdateRunning
from dynrec.service.settings import ServiceSettings
from dynrec.text import ItemTexts
from tests.conftest import clustered_data
from tests.unit.service.test_app import _write_csv


@pytest.fixture(scope="module")
def knn_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An itemknn model trained by the jobs layer (records its provenance: the training history
    can be rebuilt, so an update can refit)."""
    root = tmp_path_factory.mktemp("versions-models")
    data = clustered_data(n_users=30, n_items=24, n_groups=3, per_user=10, seed=1)
    prepared = jobs.prepare(str(_write_csv(data, root / "events.csv")))
    jobs.train("itemknn", prepared, out=root / "itemknn")
    return root / "itemknn"


@pytest.fixture(params=["sqlite", "redis", "redis-cluster"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "redis":
        return str(request.getfixturevalue("redis_url"))
    if request.param == "redis-cluster":
        return str(request.getfixturevalue("redis_cluster_url"))
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture
def root(knn_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "root"
    shutil.copytree(knn_dir, out)
    return out


@pytest.fixture
def runtimes(root: Path, store_url: str) -> Iterator[Callable[[], Runtime]]:
    """Opens runtimes on one root and store, as several processes would; closed after the test."""
    opened: list[Runtime] = []

    def make() -> Runtime:
        rt = Runtime(
            ServiceSettings(model_dir=str(root), store_url=store_url), ServiceMetrics(), follow_s=0.05
        )
        opened.append(rt)
        return rt

    yield make
    for rt in opened:
        rt.close()


def _wait(cond: Callable[[], bool], timeout: float = 5.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return cond()


def _tensors_equal(a: Recommender, b: Recommender) -> bool:
    ta, tb = a.tensors(), b.tensors()
    return ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)


def test_the_root_becomes_the_first_version_and_is_never_overwritten(
    runtimes: Callable[[], Runtime], root: Path
) -> None:
    before = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file() and p.suffix != ".db"}
    a = runtimes()
    first = a.versions.list_versions()
    assert [(r.path, r.kind, r.parent) for r in first] == [(".", "initial", None)]
    a.ingest([Event("new", "i1", 1), Event("new", "i2", 2)])
    report = a.update()
    rec = a.versions.get_version(report.model_version)
    assert rec is not None and rec.parent == first[0].id and rec.kind == "update" and rec.n_events == 2
    assert rec.event_seq == a.store.event_seq() and is_model_dir(root / rec.path)
    after = {p.name: p.read_bytes() for p in root.iterdir() if p.is_file() and p.suffix != ".db"}
    assert after == before  # the root's own files are untouched
    b = runtimes()  # a restart: the store's current version is served
    assert b.holder.version == rec.id


def test_every_process_follows_a_publication(runtimes: Callable[[], Runtime]) -> None:
    a, b = runtimes(), runtimes()
    assert a.holder.version == b.holder.version
    a.ingest([Event("x", "i1", 1), Event("x", "i3", 2)])
    b.ingest([Event("y", "i2", 1)])
    report = b.update()  # b learns a's events too: they are in the store
    assert report.report.n_events == 3 and report.pending_events == 0
    assert _wait(lambda: a.holder.version == report.model_version, 1.0)


def test_concurrent_item_additions_are_all_kept(
    runtimes: Callable[[], Runtime], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Six items posted alternately to two processes, two at a time: all six in the final version
    (each addition builds on the current version and retries its compare-and-set)."""
    from dynrec.models import registry
    from tests.unit.jobs.test_items import ToyEncoder, write_events, write_items

    monkeypatch.setitem(registry.MODELS, "toytext", "tests.unit.jobs.test_items:ToyText")
    prepared = jobs.prepare(str(write_events(tmp_path)))
    jobs.train("toytext", prepared, out=tmp_path / "toy", items=write_items(tmp_path), encoder=ToyEncoder())
    shutil.rmtree(tmp_path / "root")
    shutil.copytree(tmp_path / "toy", tmp_path / "root")
    procs = [runtimes(), runtimes()]
    for p in procs:
        p.text_encoder = ToyEncoder()
    errors: list[BaseException] = []

    def add(j: int) -> None:
        try:
            texts = ItemTexts(texts={f"new{j}": f"space rocket {j}"}, titles={}, tags={}, source="test")
            procs[j % 2].add_items(texts)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(j,)) for j in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    final = procs[0].versions.current_version()
    assert final is not None
    for p in procs:
        assert _wait(lambda p=p: p.holder.version == final, 1.0)  # type: ignore[misc]
        vocab = p.holder.item_vocab
        assert all(f"new{j}" in vocab for j in range(6))
    chain = [r.kind for r in procs[0].versions.list_versions()]
    assert chain.count("items") == 6


def test_one_update_per_store(runtimes: Callable[[], Runtime]) -> None:
    a, b = runtimes(), runtimes()
    lease = a.versions.acquire_lease("update", "someone-else", 60.0, note="update by someone-else")
    assert lease.held_by("someone-else")
    a.ingest([Event("x", "i1", 1)])
    with pytest.raises(UpdateRunning, match="someone-else"):
        b.update()
    assert a.versions.release_lease("update", "someone-else")
    assert b.update().report.n_events == 1
    # an expired lease (a crashed updater) frees itself
    a.versions.acquire_lease("update", "crashed", 0.01)
    time.sleep(0.05)
    a.ingest([Event("x", "i2", 2)])
    assert a.update().report.n_events == 1


def test_deletion_survives_a_restart_and_the_update_refits_without_the_users(
    runtimes: Callable[[], Runtime], root: Path
) -> None:
    """Delete every rater of one item (all are in the training data), restart, update: the new
    model equals the one refit on the training data without them; the popular fallback stopped
    counting them at the deletion."""
    a = runtimes()
    model = Recommender.load(root)
    data = training_history(model).data
    item = int(np.bincount(data.items).argmax())
    raters = sorted(set(data.user_vocab.to_ids(np.unique(data.users[data.items == item]))))
    assert len(raters) >= 3
    item_id = data.item_vocab.to_ids(np.array([item]))[0]
    top = a.recommend_now("nobody", 1)
    assert top.fallback and top.items == [item_id]
    count = top.scores[0]
    for u in raters:
        a.delete_user(u)
    after = a.recommend_now("nobody", 1000)
    assert after.fallback and after.scores[after.items.index(item_id)] < count  # at once
    a.close()
    b = runtimes()  # a restart: nothing in memory survives, the tombstones do
    assert {t.user_id for t in b.versions.tombstones()} == set(raters)
    report = b.update()
    assert report.report.method == "refit"
    served = b.holder.model
    expected = Recommender.load(root)
    keep = ~np.isin(data.users, data.user_vocab.lookup(raters))
    expected.fit(data.select(keep), None)
    assert _tensors_equal(served, expected)
    assert _tensors_equal(served, Recommender.load(root / b.holder.record.path))
    # (the same through the helper every training path uses)
    assert np.array_equal(without_users(data, set(raters)).users, data.select(keep).users)
    # the versions trained with a deleted user are listed; the refit is not among them
    listed = {v for _, v in b.versions_with(raters[0])}
    assert b.holder.version not in listed and b.versions.list_versions()[0].id in listed


def test_a_cli_edit_of_a_served_root_is_kept(
    runtimes: Callable[[], Runtime], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, store_url: str
) -> None:
    """`dynrec items add ROOT --store URL` publishes through the store; the server follows it and a
    later POST /v1/items builds on it instead of undoing it."""
    from dynrec.models import registry
    from tests.unit.jobs.test_items import ToyEncoder, write_events, write_items

    monkeypatch.setitem(registry.MODELS, "toytext", "tests.unit.jobs.test_items:ToyText")
    prepared = jobs.prepare(str(write_events(tmp_path)))
    jobs.train("toytext", prepared, out=tmp_path / "toy", items=write_items(tmp_path), encoder=ToyEncoder())
    shutil.rmtree(tmp_path / "root")
    shutil.copytree(tmp_path / "toy", tmp_path / "root")
    server = runtimes()
    server.text_encoder = ToyEncoder()
    cli_items = tmp_path / "cli.csv"
    cli_items.write_text("item_id,text\ncli1,space rocket launch\n")
    report = jobs.add_items(tmp_path / "root", cli_items, encoder=ToyEncoder(), store_url=store_url)
    assert report.added == ("cli1",) and report.model_version
    assert _wait(lambda: "cli1" in server.holder.item_vocab, 1.0)
    server.add_items(ItemTexts(texts={"http1": "space"}, titles={}, tags={}, source="test"))
    vocab = server.holder.item_vocab
    assert "cli1" in vocab and "http1" in vocab


def test_evaluate_refuses_a_version_that_learned_test_targets(
    runtimes: Callable[[], Runtime], root: Path
) -> None:
    """Post every test target of the model's split as an event and update: the published version
    records it and `evaluate` refuses it; the root's own model still evaluates."""
    from dynrec.jobs.provenance import from_meta, target_frame

    a = runtimes()
    th = training_history(Recommender.load(root))
    targets = target_frame(th.prepared.data, th.prepared.split.test)
    a.ingest(
        [
            Event(u, i, int(t))
            for u, i, t in zip(targets["user_id"], targets["item_id"], targets["timestamp"], strict=True)
        ]
    )
    version = a.update().model_version
    served = Recommender.load(root / f"versions/{version}")
    prov = from_meta(served.meta).provenance
    assert prov is not None and prov.served[-1].n_test_targets == targets.height
    with pytest.raises(DynrecError, match="test target"):
        jobs.evaluate_saved(root / f"versions/{version}")
    jobs.evaluate_saved(root)


def test_resume_on_a_served_root_publishes_and_leaves_deleted_users_out(
    runtimes: Callable[[], Runtime], root: Path, tmp_path: Path, store_url: str
) -> None:
    """`train --resume ROOT --events F` on a served root: deleted users' events are left out of the
    training history and of F (a refit, since the model was trained with one of them), the result is
    a new version every server follows, the root's own files are untouched."""
    from dynrec.jobs.resume import resume_training

    a = runtimes()
    before = (root / "model.safetensors").read_bytes()
    a.delete_user("u1")  # in the training data
    a.delete_user("ghost")  # never seen: only a tombstone
    events = tmp_path / "new.csv"
    events.write_text("user_id,item_id,timestamp\nghost,i1,99999\nghost,i2,100000\nnewbie,i3,100001\n")
    model, report = resume_training(root, events, store_url=store_url)
    assert report.method == "refit" and report.n_events == 1 and report.deleted_users_left_out == 2
    assert model.user_vocab is not None and "ghost" not in model.user_vocab and "newbie" in model.user_vocab
    assert (root / "model.safetensors").read_bytes() == before
    assert _wait(lambda: a.holder.version == report.model_version, 1.0)
    assert a.holder.record.kind == "refit"


def test_seeding_never_brings_a_deleted_user_back(root: Path, tmp_path: Path) -> None:
    from dynrec.jobs.recommend import seed_store
    from dynrec.online.store import SQLiteStore

    store = SQLiteStore(tmp_path / "seed.db")
    try:
        store.delete_user("u1")
        report = seed_store(root, store)
        assert "u1" not in store.users() and "u2" in store.users() and report.users == len(store.users())
        store.add_version(VersionRecord("v", ".", None, 0.0, "initial"))
        store.set_current(None, "v")
        with pytest.raises(DynrecError, match="already serves model versions"):
            seed_store(root, store, replace=True)
    finally:
        store.close()


def test_models_cli_lists_shows_and_rolls_back(
    runtimes: Callable[[], Runtime], root: Path, store_url: str
) -> None:
    import json

    from typer.testing import CliRunner

    from dynrec.cli.main import app

    a = runtimes()
    first = a.holder.version
    a.ingest([Event("x", "i1", 1), Event("x", "i2", 2)])
    second = a.update().model_version
    cli = CliRunner()
    listed = cli.invoke(app, ["models", "list", str(root), "--store", store_url, "--json"])
    assert listed.exit_code == 0, listed.output
    got = json.loads(listed.output)
    assert [v["id"] for v in got["versions"]] == [first, second] and got["current"] == second
    shown = json.loads(cli.invoke(app, ["models", "show", str(root), "--store", store_url]).output)
    assert shown["id"] == second and shown["parent"] == first and shown["n_events"] == 2 and shown["current"]
    back = cli.invoke(app, ["models", "rollback", str(root), first, "--store", store_url])
    assert back.exit_code == 0 and first in back.output
    assert _wait(lambda: a.holder.version == first, 1.0)  # the server follows the CLI's rollback
    bad = cli.invoke(app, ["models", "rollback", str(root), "nope", "--store", store_url])
    assert bad.exit_code == 1 and "no model version 'nope'" in bad.output
    sim = cli.invoke(app, ["similar", str(root), "i1", "--k", "3", "--json"])
    assert sim.exit_code == 0, sim.output
    out = json.loads(sim.output)
    assert (
        len(out["items"]) == 3
        and "i1" not in out["items"]
        and out["scores"] == sorted(out["scores"], reverse=True)
    )
    assert out["items"] == a.similar("i1", 3)[0]


def test_a_running_update_renews_its_lease(
    runtimes: Callable[[], Runtime], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lease lasts UPDATE_LEASE_S without renewal; an update running longer keeps it (another
    process's update is refused throughout), and it is free once the update ends."""
    from dynrec.service import publisher

    monkeypatch.setattr(publisher, "UPDATE_LEASE_S", 0.3)
    a, b = runtimes(), runtimes()
    a.ingest([Event("x", "i1", 1)])
    build = a.publisher._build_update
    started = threading.Event()

    def slow(parent: Any, reports: Any) -> Any:
        started.set()
        time.sleep(1.2)  # four lease lifetimes
        return build(parent, reports)

    monkeypatch.setattr(a.publisher, "_build_update", slow)
    result: list[Any] = []
    t = threading.Thread(target=lambda: result.append(a.update()))
    t.start()
    assert started.wait(5)
    refused = 0
    while t.is_alive():
        try:
            b.update()
        except UpdateRunning:
            refused += 1
        time.sleep(0.1)
    t.join()
    assert refused >= 5 and result[0].report.n_events == 1
    assert b.update().report.n_events == 0  # free again (nothing left to learn)
