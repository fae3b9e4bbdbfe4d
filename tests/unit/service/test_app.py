"""The HTTP service (FastAPI TestClient) on tiny models trained and saved here: every route, the
401/413/422 cases, live recommendations that follow each posted event (checked against the model
scoring the stored history), the popular fallback, deletion, updates that make a new item
recommendable, reload under concurrent load, micro-batch == one-by-one, metrics."""

from __future__ import annotations

import logging
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from dynrec import jobs
from dynrec.data.dataset import InteractionData
from dynrec.data.events import Event
from dynrec.data.query import QueryBatch
from dynrec.errors import DynrecError
from dynrec.models.base import Recommender
from dynrec.online.session import OnlineRecommender
from dynrec.online.store import InMemoryStore, SQLiteStore
from dynrec.service import ServiceSettings, create_app
from dynrec.service.runtime import Runtime
from dynrec.service.serve import is_loopback, serve
from tests.conftest import clustered_data
from tests.unit.online.test_state import MODELS, fitted, tiny_model

KEY = "s3cret"
AUTH = {"X-API-Key": KEY}


def _write_csv(data: InteractionData, path: Path) -> Path:
    users = data.user_vocab.to_ids(data.users)
    items = data.item_vocab.to_ids(data.items)
    rows = [f"{u},{i},{int(t)}" for u, i, t in zip(users, items, data.timestamps.tolist(), strict=True)]
    path.write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """itemknn (incremental state, partial fit, explanations) and pop, trained by the jobs layer on
    an event file so they record their provenance (the service rebuilds their training history);
    als (item vectors) fitted directly."""
    root = tmp_path_factory.mktemp("service-models")
    data = clustered_data(n_users=30, n_items=24, n_groups=3, per_user=10, seed=1)
    csv = _write_csv(data, root / "events.csv")
    prepared = jobs.prepare(str(csv))
    jobs.train("itemknn", prepared, out=root / "itemknn")
    jobs.train("pop", prepared, out=root / "pop")
    tiny_model("als", data).save(root / "als")
    items = root / "items.csv"
    items.write_text("item_id,title,genres\n" + "".join(f"i{j},Title {j},g{j % 3}\n" for j in range(1, 25)))
    return {"itemknn": root / "itemknn", "pop": root / "pop", "als": root / "als", "items": items}


def _settings(trained: dict[str, Path], tmp_path: Path, **kw: Any) -> ServiceSettings:
    base: dict[str, Any] = {
        "model_dir": str(trained["itemknn"]),
        "store_url": f"sqlite:///{tmp_path / 'store.db'}",
        "api_key": KEY,
    }
    return ServiceSettings(**{**base, **kw})


@pytest.fixture(params=["sqlite", "redis-cluster"])
def client(request: pytest.FixtureRequest, trained: dict[str, Path], tmp_path: Path) -> Iterator[TestClient]:
    """The service on the itemknn model, on SQLite and on a 3-node Redis Cluster."""
    store = {} if request.param == "sqlite" else {"store_url": request.getfixturevalue("redis_cluster_url")}
    with TestClient(create_app(_settings(trained, tmp_path, **store))) as c:
        yield c


def _runtime(c: TestClient) -> Runtime:
    rt = c.app.state.runtime  # type: ignore[attr-defined]
    assert isinstance(rt, Runtime)
    return rt


def _post(c: TestClient, events: list[dict[str, Any]], headers: dict[str, str] | None = AUTH) -> Any:
    return c.post("/v1/events", json={"events": events}, headers=headers)


def _sample(scrape: str, name: str) -> float:
    """The value of an unlabelled sample in a Prometheus scrape."""
    return next(float(line.split()[-1]) for line in scrape.splitlines() if line.startswith(name + " "))


def _reference(model: Recommender, history: list[str], k: int) -> tuple[list[str], list[float]]:
    """The model scoring the whole history (no cached state): what the service must answer."""
    assert model.item_vocab is not None
    idx = model.item_vocab.lookup(history, policy="skip")
    idx = idx[idx > 0].astype(np.int64)
    q = QueryBatch(np.zeros(1, np.int64), np.array([0, idx.size], np.int64), idx)
    top, vals = model.recommend(q, k=k)
    keep = torch.isfinite(vals[0])
    return model.item_vocab.to_ids(top[0][keep].numpy()), [float(v) for v in vals[0][keep]]


# ---- basics ----------------------------------------------------------------------------------------


def test_health_docs_page_and_static(client: TestClient, trained: dict[str, Path]) -> None:
    h = client.get("/healthz").json()
    model = Recommender.load(trained["itemknn"])
    assert (
        h["status"] == "ok"
        and h["model"] == "itemknn"
        and h["store"] == _runtime(client).store_kind in ("sqlite", "redis-cluster")
    )
    assert (
        h["model_version"].startswith(OnlineRecommender(model).version[:12]) and h["model_kind"] == "initial"
    )
    assert client.get("/docs").status_code == 200
    paths = set(client.get("/openapi.json").json()["paths"])
    assert {
        "/v1/events",
        "/v1/users/{user_id}/recommendations",
        "/v1/recommendations",
        "/v1/users/{user_id}",
        "/v1/users",
        "/v1/items",
        "/v1/items/{item_id}/similar",
        "/v1/admin/update",
        "/v1/admin/reload",
        "/healthz",
    } <= paths
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    static = Path(__file__).resolve().parents[3] / "src/dynrec/service/static"
    for name in ("style.css", "app.js"):
        if (static / name).is_file():
            assert client.get(f"/static/{name}").status_code == 200


def test_settings_round_trip_through_the_environment() -> None:
    s = ServiceSettings(
        model_dir="/m", store_url="memory://", api_key="k", max_batch=7, model_dirs=("/a", "/b")
    )
    assert ServiceSettings.from_env(s.to_env()) == s
    assert ServiceSettings.from_env({"DYNREC_SERVICE_MODEL_DIR": "/m", "DYNREC_API_KEY": "x"}).api_key == "x"
    assert ServiceSettings(model_dir="/m").store == "sqlite:////m/events.db"
    with pytest.raises(DynrecError):
        ServiceSettings(model_dir="/m", max_batch=0)


# ---- events -> live recommendations --------------------------------------------------------------


def test_each_event_changes_the_next_recommendation(client: TestClient, trained: dict[str, Path]) -> None:
    model = Recommender.load(trained["itemknn"])
    first = client.get("/v1/users/alice/recommendations?k=5").json()
    assert first["fallback"] == "popular" and first["user_id"] == "alice" and len(first["items"]) == 5
    history: list[str] = []
    previous = first["items"]
    for item in ["i1", "i14", "i2"]:
        r = _post(client, [{"user_id": "alice", "item_id": item, "timestamp": 100 + len(history)}])
        assert r.status_code == 200 and r.json() == {"accepted": 1, "unknown_items": 0, "shifts": []}
        history.append(item)
        got = client.get("/v1/users/alice/recommendations?k=5").json()
        want_items, want_scores = _reference(model, history, 5)
        assert got["fallback"] is None
        assert [x["item_id"] for x in got["items"]] == want_items
        np.testing.assert_allclose([x["score"] for x in got["items"]], want_scores, rtol=1e-5, atol=1e-6)
        assert not set(history) & {x["item_id"] for x in got["items"]}  # seen items excluded
        assert got["items"] != previous
        previous = got["items"]
    kept = client.get("/v1/users/alice/recommendations?k=30&exclude_seen=false").json()
    assert set(history) <= {x["item_id"] for x in kept["items"]}


def test_all_or_nothing_and_422_names_the_field(client: TestClient) -> None:
    good = {"user_id": "bob", "item_id": "i1"}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"user_id": "bob"}, "item_id"),
        ({"user_id": "bob", "item_id": ""}, "item_id"),
        ({"user_id": "bob", "item_id": "   "}, "item_id"),
        ({"user_id": 7, "item_id": "i1"}, "user_id"),
        ({"user_id": "bob", "item_id": "i1", "timestamp": "123"}, "timestamp"),
        ({"user_id": "bob", "item_id": "i1", "timestamp": -1}, "timestamp"),
        ({"user_id": "bob", "item_id": "i1", "timestamp": True}, "timestamp"),
        ({"user_id": "bob", "item_id": "i1", "event_type": ""}, "event_type"),
        ({"user_id": "bob", "item_id": "i1", "weight": -2}, "weight"),
        ({"user_id": "bob", "item_id": "i1", "colour": "red"}, "colour"),
    ]
    for bad, field in cases:
        r = _post(client, [good, good, bad])
        assert r.status_code == 422, bad
        locs = [d["loc"] for d in r.json()["detail"]]
        assert any(loc[:3] == ["body", "events", 2] and field in loc for loc in locs), (bad, locs)
    assert _runtime(client).store.stamp("bob").n_events == 0  # nothing of any bad batch was written
    assert _post(client, [good]).status_code == 200
    for q in ("k=0", "k=1001", "k=abc", "k=2.5"):
        r = client.get(f"/v1/users/bob/recommendations?{q}")
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "k"]
    assert client.get("/v1/users/%20/recommendations").status_code == 422
    assert client.post("/v1/recommendations", json={"history": [1]}).status_code == 422
    assert client.post("/v1/events", content=b"{not json", headers=AUTH).status_code == 422


def test_defaults_and_unknown_items(client: TestClient) -> None:
    r = _post(client, [{"user_id": "carol", "item_id": "never-seen"}, {"user_id": "carol", "item_id": "i3"}])
    assert r.json() == {"accepted": 2, "unknown_items": 1, "shifts": []}
    user = client.get("/v1/users/carol").json()
    assert [e["item_id"] for e in user["history"]] == ["never-seen", "i3"]
    assert {e["event_type"] for e in user["history"]} == {"view"}
    assert all(e["timestamp"] > 1_600_000_000 for e in user["history"])  # default: now


def test_large_k_is_clamped_to_the_catalogue(client: TestClient) -> None:
    _post(client, [{"user_id": "dan", "item_id": "i1"}])
    items = client.get("/v1/users/dan/recommendations?k=1000").json()["items"]
    assert 0 < len(items) <= 23 and "i1" not in {x["item_id"] for x in items}
    assert len(client.get("/v1/users/nobody/recommendations?k=1000").json()["items"]) == 24


# ---- security and limits -------------------------------------------------------------------------------


def test_api_key_guards_writes_only(client: TestClient) -> None:
    ev = [{"user_id": "eve", "item_id": "i1"}]
    assert _post(client, ev, headers=None).status_code == 401
    assert _post(client, ev, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.delete("/v1/users/eve").status_code == 401
    assert client.post("/v1/admin/update").status_code == 401
    assert client.post("/v1/admin/reload", json={"model_dir": "x"}).status_code == 401
    assert _runtime(client).store.stamp("eve").n_events == 0
    assert client.get("/v1/users/eve/recommendations").status_code == 200
    assert client.post("/v1/recommendations", json={"history": ["i1"]}).status_code == 200
    assert _post(client, ev).status_code == 200


def test_body_and_batch_limits(trained: dict[str, Path], tmp_path: Path) -> None:
    with TestClient(create_app(_settings(trained, tmp_path, max_batch=5, max_body_bytes=2_000))) as c:
        six = [{"user_id": "u", "item_id": "i1"}] * 6
        r = _post(c, six)
        assert r.status_code == 413 and "at most 5" in r.json()["detail"]
        bad_six = [{"user_id": "u"}] * 6  # too many wins over invalid
        assert _post(c, bad_six).status_code == 413
        nan = b'{"user_id": "u", "item_id": "i1", "timestamp": NaN}'
        json_headers = {**AUTH, "Content-Type": "application/json"}
        r = c.post("/v1/events", content=b'{"events": [' + b",".join([nan] * 6) + b"]}", headers=json_headers)
        assert r.status_code == 413  # a body only the standard JSON parser reads is counted too
        r = c.post("/v1/events", content=b'{"events": [' + nan + b"]}", headers=json_headers)
        assert r.status_code == 422  # one is within the limit: refused for its timestamp
        assert _post(c, six[:5]).status_code == 200
        big = [{"user_id": "u" * 450, "item_id": "i1"}] * 5
        assert _post(c, big).status_code == 413  # by Content-Length

        def chunks() -> Iterator[bytes]:  # no Content-Length: the bytes received count
            yield b'{"events": ['
            for _ in range(40):
                yield b'{"user_id": "uuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuuu", "item_id": "i1"},'
            yield b'{"user_id": "u", "item_id": "i1"}]}'

        r = c.post("/v1/events", content=chunks(), headers={**AUTH, "Content-Type": "application/json"})
        assert r.status_code == 413
        assert _runtime(c).store.stamp("u").n_events == 5


def test_loopback_and_the_warning_without_a_key(caplog: pytest.LogCaptureFixture) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")
    with caplog.at_level(logging.WARNING), pytest.raises(DynrecError, match="shared store"):
        serve(ServiceSettings(model_dir="/m", store_url="memory://"), host="0.0.0.0", workers=2)
    assert any(
        "WITHOUT AN API KEY" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records
    )


# ---- sessions, explanations, users, items -----------------------------------------------------------------


def test_anonymous_session(client: TestClient, trained: dict[str, Path]) -> None:
    model = Recommender.load(trained["itemknn"])
    r = client.post("/v1/recommendations", json={"history": ["i1", "i2", "zzz"], "k": 4}).json()
    want, _ = _reference(model, ["i1", "i2"], 4)
    assert r["user_id"] is None and r["fallback"] is None and [x["item_id"] for x in r["items"]] == want
    for hist in ([], ["zzz"]):
        r = client.post("/v1/recommendations", json={"history": hist, "k": 3}).json()
        assert r["fallback"] == "popular" and len(r["items"]) == 3


def test_explanations_sum_to_the_score(client: TestClient) -> None:
    _post(
        client, [{"user_id": "fay", "item_id": i, "timestamp": t} for t, i in enumerate(["i1", "i2", "i3"])]
    )
    got = client.get("/v1/users/fay/recommendations?k=4&explain=true").json()
    for item in got["items"]:
        expl = item["explanation"]
        assert expl and {e["item_id"] for e in expl} <= {"i1", "i2", "i3"}
        weights = [e["weight"] for e in expl]
        assert weights == sorted(weights, reverse=True)
        assert sum(weights) == pytest.approx(item["score"], rel=1e-4, abs=1e-6)  # itemknn is additive
    plain = client.get("/v1/users/fay/recommendations?k=4").json()
    assert all(x["explanation"] is None for x in plain["items"])
    session = client.post("/v1/recommendations", json={"history": ["i1"], "k": 2, "explain": True}).json()
    assert all(x["explanation"][0]["item_id"] == "i1" for x in session["items"])


def test_user_detail_and_listing(client: TestClient) -> None:
    assert client.get("/v1/users/gus").status_code == 404
    _post(client, [{"user_id": "gus", "item_id": f"i{j}", "timestamp": j} for j in range(1, 8)])
    u = client.get("/v1/users/gus?limit=3").json()
    assert u["n_events"] == 7 and [e["item_id"] for e in u["history"]] == ["i5", "i6", "i7"]
    assert set(u["interests"]) == {"basis", "short_term", "long_term"}
    assert u["interests"]["long_term"]["categories"] and u["interests"]["short_term"]["items"]
    users = client.get("/v1/users?limit=5").json()["users"]
    assert users[0] == "gus" and len(users) <= 5


def test_titles_search_and_similar(trained: dict[str, Path], tmp_path: Path) -> None:
    with TestClient(create_app(_settings(trained, tmp_path, items_file=str(trained["items"])))) as c:
        found = c.get("/v1/items?query=title 1&limit=50").json()["items"]
        assert found and all("Title 1" in x["title"] for x in found)
        assert {x["item_id"] for x in found} == {"i1", *(f"i{j}" for j in range(10, 20))}
        assert len(c.get("/v1/items?limit=4").json()["items"]) == 4
        _post(c, [{"user_id": "hal", "item_id": "i1"}])
        rec = c.get("/v1/users/hal/recommendations?k=3").json()["items"]
        assert all(x["title"] == f"Title {x['item_id'][1:]}" for x in rec)
        assert c.get("/v1/users/hal").json()["history"][0]["title"] == "Title 1"
        assert c.get("/v1/users/hal").json()["interests"]["basis"] == "categories"
        sim = c.get("/v1/items/i1/similar?k=5").json()
        assert (
            sim["item_id"] == "i1"
            and len(sim["items"]) == 5
            and "i1" not in {x["item_id"] for x in sim["items"]}
        )
        assert sim["items"][0]["title"] is not None
        assert c.get("/v1/items/nope/similar").status_code == 404
    with TestClient(create_app(_settings(trained, tmp_path))) as c:
        no_titles = c.get("/v1/items?query=i2").json()["items"]
    assert [x["item_id"] for x in no_titles][:1] == ["i2"] and all(x["title"] is None for x in no_titles)


def test_similar_items_by_cosine_of_item_vectors(trained: dict[str, Path], tmp_path: Path) -> None:
    model = Recommender.load(trained["als"])
    assert model.item_vocab is not None
    v = torch.nn.functional.normalize(model.item_embeddings().float(), dim=1)  # type: ignore[attr-defined]
    i = model.item_vocab.index("i5")
    sims = (v @ v[i]).tolist()
    with TestClient(create_app(_settings(trained, tmp_path, model_dir=str(trained["als"])))) as c:
        got = c.get("/v1/items/i5/similar?k=3").json()["items"]
    for x in got:
        assert x["score"] == pytest.approx(sims[model.item_vocab.index(x["item_id"])], abs=1e-5)
    rest = sorted((s for j, s in enumerate(sims) if j not in (0, i)), reverse=True)
    assert [x["score"] for x in got] == pytest.approx(rest[:3], abs=1e-5)


# ---- deletion ------------------------------------------------------------------------------------------------


def test_delete_removes_everything_and_lists_trained_models(
    client: TestClient, trained: dict[str, Path]
) -> None:
    rt = _runtime(client)
    _post(client, [{"user_id": "ivy", "item_id": i} for i in ("i1", "i2", "new-item")])
    _post(client, [{"user_id": "u1", "item_id": "i3"}])  # u1 is in the model's training data
    assert client.get("/v1/users/ivy/recommendations").json()["fallback"] is None  # a state is cached
    r = client.delete("/v1/users/ivy", headers=AUTH).json()
    assert r == {"user_id": "ivy", "deleted": True, "deleted_events": 3, "model_versions_with_user": []}
    assert len(rt.store.history("ivy")) == 0 and rt.store.get_state("ivy") is None
    assert rt.store.stamp("ivy").n_events == 0
    assert client.get("/v1/users/ivy/recommendations").json()["fallback"] == "popular"
    assert client.get("/v1/users/ivy").status_code == 404
    assert "ivy" not in client.get("/v1/users").json()["users"]
    report = client.post("/v1/admin/update", headers=AUTH).json()
    assert report["n_events"] == 1 and report["new_items"] == 0  # ivy's pending events are gone too

    r = client.delete("/v1/users/u1", headers=AUTH).json()
    assert r["deleted"] is True and r["deleted_events"] == 1
    dirs = {(m["model_dir"], m["version"]) for m in r["model_versions_with_user"]}
    first = rt.versions.list_versions()[0]
    assert first.path == "." and (".", first.id) in dirs  # the root's own model, and the update
    assert (f"versions/{report['model_version']}", report["model_version"]) in dirs
    # the next update honours the deletion: a refit without u1's events, and no version is listed
    refit = client.post("/v1/admin/update", headers=AUTH).json()
    assert refit["method"] == "refit" and refit["n_events"] == 0
    assert client.get("/healthz").json()["model_kind"] == "refit"
    again = client.delete("/v1/users/u1", headers=AUTH).json()
    assert {m["version"] for m in again["model_versions_with_user"]} == {v for _, v in dirs}  # not the refit
    assert client.delete("/v1/users/ivy", headers=AUTH).json()["deleted"] is False


def test_delete_lists_other_saved_models_with_the_user(trained: dict[str, Path], tmp_path: Path) -> None:
    with TestClient(create_app(_settings(trained, tmp_path, model_dirs=(str(trained["pop"]),)))) as c:
        r = c.delete("/v1/users/u2", headers=AUTH).json()
        tomb = _runtime(c).versions.tombstones()
    assert r["deleted"] is False and r["deleted_events"] == 0  # no stored events: a tombstone only
    assert [t.user_id for t in tomb] == ["u2"]
    assert {m["model_dir"] for m in r["model_versions_with_user"]} == {".", str(trained["pop"])}


# ---- update and reload ---------------------------------------------------------------------------------------


def test_update_makes_a_new_item_recommendable(client: TestClient) -> None:
    events = []
    for u in range(6):
        events += [
            {"user_id": f"n{u}", "item_id": "i1", "timestamp": 1},
            {"user_id": f"n{u}", "item_id": "fresh", "timestamp": 2},
        ]
    r = _post(client, events).json()
    assert r == {"accepted": 12, "unknown_items": 6, "shifts": []}
    _post(client, [{"user_id": "probe", "item_id": "i1"}])
    before = client.get("/v1/users/probe/recommendations?k=1000").json()
    assert "fresh" not in {x["item_id"] for x in before["items"]}
    assert client.get("/v1/items/fresh/similar").status_code == 404
    report = client.post("/v1/admin/update", headers=AUTH).json()
    assert report["n_events"] == 13 and report["new_items"] == 1 and report["pending_events"] == 0
    assert report["model_version"] != before["model_version"]
    after = client.get("/v1/users/probe/recommendations?k=1000").json()
    assert after["model_version"] == report["model_version"]
    assert "fresh" in {x["item_id"] for x in after["items"]}
    assert client.get("/v1/items/fresh/similar").status_code == 200
    assert client.get("/healthz").json()["model_version"] == report["model_version"]
    again = client.post("/v1/admin/update", headers=AUTH).json()
    assert again["n_events"] == 0 and again["model_version"] == report["model_version"]


def test_reload_under_load_fails_no_request(trained: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(trained["itemknn"], root)
    shutil.copytree(trained["pop"], root / "candidates" / "pop")
    with TestClient(create_app(_settings(trained, tmp_path, model_dir=str(root)))) as client:
        _reload_under_load(client, trained, tmp_path)


def _reload_under_load(client: TestClient, trained: dict[str, Path], tmp_path: Path) -> None:
    _post(client, [{"user_id": f"load{j}", "item_id": f"i{j + 1}"} for j in range(4)])
    errors: list[str] = []
    versions: set[str] = set()
    stop = threading.Event()

    def hammer(j: int) -> None:
        while not stop.is_set():
            r = client.get(f"/v1/users/load{j % 4}/recommendations?k=5")
            if r.status_code != 200 or len(r.json()["items"]) != 5:
                errors.append(f"{r.status_code} {r.text[:200]}")
            else:
                versions.add(r.json()["model_version"])

    threads = [threading.Thread(target=hammer, args=(j,)) for j in range(3)]
    for t in threads:
        t.start()
    try:
        v_knn = client.get("/healthz").json()["model_version"]
        # a directory under the root becomes a new version; a version id makes that one current again
        v_pop = client.post("/v1/admin/reload", json={"model_dir": "candidates/pop"}, headers=AUTH).json()
        back = client.post("/v1/admin/reload", json={"version": v_knn}, headers=AUTH).json()
        v_pop2 = client.post(
            "/v1/admin/reload", json={"version": v_pop["model_version"]}, headers=AUTH
        ).json()
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not errors, errors[:3]
    assert back["model_version"] == v_knn and v_pop == v_pop2 and v_pop["model_version"] != v_knn
    assert client.get("/healthz").json()["model"] == "pop"
    assert versions  # requests were served throughout
    for ref in ({"model_dir": str(trained["pop"])}, {"model_dir": "../pop"}, {"version": "nope"}):
        bad = client.post("/v1/admin/reload", json=ref, headers=AUTH)
        assert bad.status_code == 400 and client.get("/healthz").json()["model"] == "pop"
        if not ref.get("model_dir", "").startswith("/"):
            assert str(tmp_path) not in bad.text  # no resolved server path in the error


# ---- micro-batching ---------------------------------------------------------------------------------------------


def test_micro_batches_equal_one_by_one(trained: dict[str, Path], tmp_path: Path) -> None:
    settings = _settings(trained, tmp_path, batch_wait_ms=200.0, batch_size=64)
    with TestClient(create_app(settings)) as c:
        rt = _runtime(c)
        rng = np.random.default_rng(0)
        users = [f"m{j}" for j in range(12)]
        rt.ingest(
            [Event(u, f"i{int(rng.integers(1, 25))}", t) for t in range(5) for u in users]
        )  # interleaved users
        # the popular fallback counts the events the follower's last tick saw (every 0.25 s): read
        # where the store stands now, so the batched and the one-by-one answers count the same events
        rt.popularity.refresh()
        futures = [rt.recommend(u, 6) for u in users] + [rt.recommend("stranger", 6)]
        batched = [f.result(timeout=30) for f in futures]
        one_by_one = [rt.recommend_now(u, 6) for u in [*users, "stranger"]]
        reference = OnlineRecommender(
            Recommender.load(trained["itemknn"]), SQLiteStore(tmp_path / "store.db")
        )
        for u, b, o in zip([*users, "stranger"], batched, one_by_one, strict=True):
            assert (
                b.items == o.items
                and b.scores == pytest.approx(o.scores, rel=1e-6)
                and b.fallback == o.fallback
            )
            if u != "stranger":
                ref = reference.recommend(u, 6)
                assert b.items == ref.items and b.scores == pytest.approx(ref.scores, rel=1e-5)
        assert batched[-1].fallback
        scrape = c.get("/metrics").text
        assert _sample(scrape, "dynrec_recommend_batch_size_sum") > _sample(
            scrape, "dynrec_recommend_batch_size_count"
        )  # some batch held more than one request


@pytest.mark.parametrize("name", MODELS)
def test_recommend_many_equals_recommend(name: str) -> None:
    """One scoring call over several users' cached states (states of different history lengths)
    gives each user what `recommend` gives them alone."""
    model = fitted(name, clustered_data(n_users=30, n_items=24, n_groups=3, per_user=10, seed=1))
    assert model.item_vocab is not None
    online = OnlineRecommender(model, InMemoryStore())
    rng = np.random.default_rng(1)
    users = [f"x{j}" for j in range(5)] + ["u1"]
    for j, u in enumerate(users):
        online.observe(
            [Event(u, model.item_vocab.ids[int(rng.integers(0, 24))], t) for t in range(2 * j + 1)]
        )
    many = online.recommend_many([*users, users[0]], 5)
    for u, got in zip([*users, users[0]], many, strict=True):
        alone = online.recommend(u, 5)
        assert got.user_id == u and got.items == alone.items
        np.testing.assert_allclose(got.scores, alone.scores, rtol=1e-5, atol=1e-6)
    assert online.recommend_many([], 5) == []


# ---- metrics ------------------------------------------------------------------------------------------------------


def test_metrics_per_route_template(client: TestClient, trained: dict[str, Path], tmp_path: Path) -> None:
    _post(client, [{"user_id": "kim", "item_id": "i1"}, {"user_id": "kim", "item_id": "unknown"}])
    client.get("/v1/users/kim/recommendations")
    client.get("/v1/users/kim/recommendations")
    client.get("/v1/users/lee/recommendations")
    text = client.get("/metrics").text
    assert (
        'dynrec_http_requests_total{method="GET",route="/v1/users/{user_id}/recommendations",status="200"} 3.0'
        in text
    )
    assert "/v1/users/kim" not in text  # templates, never raw paths
    assert 'dynrec_http_request_duration_seconds_bucket{le="0.005",method="POST",route="/v1/events"}' in text
    assert "dynrec_events_ingested_total 2.0" in text and "dynrec_events_unknown_items_total 1.0" in text
    version = client.get("/healthz").json()["model_version"]
    assert f'dynrec_model_info{{model="itemknn",version="{version}"}} 1.0' in text
    assert _sample(text, "dynrec_state_cache_hits_total") >= 1
    assert "dynrec_state_cache_misses_total" in text
    assert "dynrec_recommend_fallbacks_total 1.0" in text
    with TestClient(create_app(_runtime(client).settings)) as other:  # same store, its own registry
        assert other.get("/v1/users/kim/recommendations").json()["fallback"] is None
        scrape = other.get("/metrics").text
    assert _sample(scrape, "dynrec_events_ingested_total") == 0
    assert _sample(scrape, "dynrec_state_cache_misses_total") == 1  # built from the stored history


# ---- interest profiles and items added from text ------------------------------------------------------


def test_profile_route_gives_exact_tag_shares(trained: dict[str, Path], tmp_path: Path) -> None:
    with TestClient(create_app(_settings(trained, tmp_path, items_file=str(trained["items"])))) as c:
        assert c.get("/v1/users/pat/profile").status_code == 404
        # genres: i1 g1, i2 g2, i3 g0, i4 g1
        _post(c, [{"user_id": "pat", "item_id": f"i{j}", "timestamp": j} for j in range(1, 5)])
        p = c.get("/v1/users/pat/profile?short_window=2").json()
        assert p["long_term"]["n_events"] == 4 and p["short_term"]["n_events"] == 2
        assert p["long_term"]["tags"] == [["g1", 0.5], ["g0", 0.25], ["g2", 0.25]]
        assert p["short_term"]["tags"] == [["g0", 0.5], ["g1", 0.5]]
        assert p["shift"] == [["g0", 0.25]]
        assert set(p["short_term"]["item_ids"]) == {"i3", "i4"}
        assert set(p["short_term"]["items"]) == {"Title 3", "Title 4"}
        assert c.get("/v1/users/pat/profile?short_window=0").status_code == 422


def test_post_items_adds_to_the_live_model(
    trained: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dynrec.models import registry
    from tests.unit.jobs.test_items import ToyEncoder, write_events, write_items

    monkeypatch.setitem(registry.MODELS, "toytext", "tests.unit.jobs.test_items:ToyText")
    prepared = jobs.prepare(str(write_events(tmp_path)))
    jobs.train("toytext", prepared, out=tmp_path / "toy", items=write_items(tmp_path), encoder=ToyEncoder())
    body = {"items": [{"item_id": "x1", "text": "space space space", "title": "Rocket", "tags": ["scifi"]}]}
    with TestClient(create_app(_settings(trained, tmp_path, model_dir=str(tmp_path / "toy")))) as c:
        _runtime(c).text_encoder = ToyEncoder()
        v0 = c.get("/healthz").json()["model_version"]
        assert c.post("/v1/items", json=body).status_code == 401
        r = c.post("/v1/items", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        got = r.json()
        assert got["added"] == ["x1"] and got["skipped"] == [] and got["n_items"] == 13
        assert (
            got["model_version"] != v0 and got["model_version"] == c.get("/healthz").json()["model_version"]
        )
        _post(c, [{"user_id": "sam", "item_id": "i1"}, {"user_id": "sam", "item_id": "i2"}])
        rec = c.get("/v1/users/sam/recommendations?k=5").json()["items"]
        assert [x["item_id"] for x in rec][4] == "x1" and rec[4]["title"] == "Rocket"
        # the same id again: refused, or skipped on request
        assert c.post("/v1/items", json=body, headers=AUTH).status_code == 400
        again = c.post("/v1/items", json={**body, "skip_existing": True}, headers=AUTH).json()
        assert again["added"] == [] and again["skipped"] == ["x1"]
        dup = {"items": [body["items"][0], body["items"][0]]}
        assert c.post("/v1/items", json=dup, headers=AUTH).status_code == 422
        assert (
            c.post("/v1/items", json={"items": [{"item_id": "y", "text": " "}]}, headers=AUTH).status_code
            == 422
        )
    # published: a new immutable version directory has the item, its title and tag; the root is untouched
    version = tmp_path / "toy" / "versions" / got["model_version"]
    saved = Recommender.load(version)
    assert saved.item_vocab is not None and "x1" in saved.item_vocab
    assert jobs.read_item_info(version)["x1"] == {"title": "Rocket", "tags": ["scifi"]}
    root = Recommender.load(tmp_path / "toy")
    assert root.item_vocab is not None and "x1" not in root.item_vocab


def test_post_items_refused_for_models_without_item_text(client: TestClient) -> None:
    body = {"items": [{"item_id": "x1", "text": "space"}]}
    r = client.post("/v1/items", json=body, headers=AUTH)
    assert r.status_code == 400 and "reads no item text" in r.json()["detail"]
