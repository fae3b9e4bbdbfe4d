"""`dynrec.service.fast_path`: which requests of ``GET /v1/users/{user_id}/recommendations`` and
``POST /v1/events`` it answers itself (known answers of the parsers), that its answers equal the
FastAPI routes' for the same requests, and that everything else — other spellings, invalid values,
errors while answering — still gets the app's answer, behind the edge checks and counted in the
metrics; events handed over are never applied twice."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from dynrec.data.events import Event
from dynrec.errors import DynrecError
from dynrec.service import ServiceSettings, create_app, fast_path
from dynrec.service.fast_path import parse_events, parse_recommendations
from tests.conftest import clustered_data
from tests.serve_process import itemknn_dir

P = "/v1/users/u1/recommendations"


@pytest.mark.parametrize(
    ("path", "query", "parsed"),
    [
        (P, b"", ("u1", 10, True, False)),
        (P, b"k=5", ("u1", 5, True, False)),
        (P, b"k=1000&exclude_seen=false&explain=true", ("u1", 1000, False, True)),
        (P, b"explain=false&k=07", ("u1", 7, True, False)),
        ("/v1/users/caf\u00e9 1/recommendations", b"k=3", ("caf\u00e9 1", 3, True, False)),
        (P, b"k=0", None),  # out of range: FastAPI's 422
        (P, b"k=1001", None),
        (P, b"k=-1", None),
        (P, b"k=%2B5", None),  # "+5": a spelling left to FastAPI
        (P, b"k=\xd9\xa3", None),  # a non-ASCII digit
        (P, b"k=5&k=6", None),  # repeated
        (P, b"exclude_seen=1", None),  # FastAPI reads it as true; left to it
        (P, b"explain=True", None),
        (P, b"limit=5", None),  # a parameter the route does not have
        ("/v1/users//recommendations", b"", None),
        ("/v1/users/a/b/recommendations", b"", None),
        ("/v1/users/ u1/recommendations", b"", None),  # the id rule: padded
        ("/v1/users/" + "x" * 513 + "/recommendations", b"", None),
        ("/v1/users/u1/recommendations/", b"", None),
        ("/v1/users/u1", b"", None),
    ],
)
def test_parse_known_answers(path: str, query: bytes, parsed: tuple[str, int, bool, bool] | None) -> None:
    assert parse_recommendations(path, query) == parsed


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = clustered_data(n_users=16, n_items=12, n_groups=2, per_user=6, seed=5)
    return itemknn_dir(tmp_path_factory.mktemp("fast-path"), data)


@pytest.fixture
def client(model_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = ServiceSettings(
        model_dir=str(model_dir), store_url=f"sqlite:///{tmp_path / 's.db'}", seed=True, bind_host="127.0.0.1"
    )
    with TestClient(create_app(settings), base_url="http://127.0.0.1:8000") as c:
        yield c


def test_fast_answers_equal_the_routes(client: TestClient) -> None:
    user = client.get("/v1/users", params={"limit": 1}).json()["users"][0]
    for fast, routed in [
        ("k=5&exclude_seen=true", "k=%2B5&exclude_seen=1"),
        ("k=3&exclude_seen=false&explain=true", "k=3&exclude_seen=0&explain=yes"),
    ]:
        a = client.get(f"/v1/users/{user}/recommendations?{fast}")
        b = client.get(f"/v1/users/{user}/recommendations?{routed}")
        assert a.status_code == b.status_code == 200
        assert a.content == b.content
        assert a.headers["x-model-version"] == b.headers["x-model-version"]
        assert a.headers["content-type"] == b.headers["content-type"] == "application/json"
    assert client.get("/v1/users/nobody/recommendations").json()["fallback"] == "popular"


def test_everything_else_gets_fastapis_answer(client: TestClient) -> None:
    r = client.get(f"{P}?k=0")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["query", "k"]
    r = client.get("/v1/users/%20u1/recommendations")
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["path", "user_id"]
    assert client.get(P, headers={"Host": "evil.example"}).status_code == 421  # the edge still checks
    assert client.get(P, params={"limit": 3}).status_code == 200  # FastAPI ignores what it does not know


def test_an_error_while_answering_is_answered_by_the_app(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    calls: list[str] = []

    def failing(user: str, *args: object, **kw: object) -> object:
        calls.append(user)
        raise DynrecError(f"no answer for {user}")

    monkeypatch.setattr(runtime, "recommend", failing)
    r = client.get(P)
    assert r.status_code == 400 and r.json() == {"detail": "no answer for u1"}  # the app's handler
    assert calls == ["u1", "u1"]  # tried by the fast path, then by the route


# ---- POST /v1/events ------------------------------------------------------------------------------

E = {"user_id": "u1", "item_id": "i1", "timestamp": 100}


def _body(*events: object, **extra: object) -> bytes:
    return orjson.dumps({"events": list(events), **extra})


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        (_body(E), [Event("u1", "i1", 100, "view", 1.0)]),
        (
            _body({**E, "timestamp": 7.9, "weight": 2, "event_type": "buy", "event_id": "e1"}),
            [Event("u1", "i1", 7, "buy", 2.0, "e1")],
        ),
        (_body({"user_id": "u2", "item_id": "i9"}), [Event("u2", "i9", 555, "view", 1.0)]),  # now
        (_body(), []),
        (_body(E, E), [Event("u1", "i1", 100, "view", 1.0)] * 2),
        (_body(*[E] * 4), None),  # over max_batch: the app's 413
        (_body(E, source="x"), None),  # a field the body does not have
        (b'{"events": [' + orjson.dumps(E) + b"]", None),  # not JSON
        (b"[]", None),
        (_body({**E, "extra": 1}), None),
        (_body({"item_id": "i1"}), None),
        (_body({**E, "user_id": 5}), None),  # a number: the schema's strict strings refuse it
        (_body({**E, "user_id": " u1"}), None),  # the id rule
        (_body({**E, "item_id": "a,b"}), None),
        (_body({**E, "user_id": "x" * 513}), None),
        (_body({**E, "timestamp": True}), None),
        (_body({**E, "timestamp": -0.5}), None),  # truncated it would be 0: the schema refuses it
        (_body({**E, "timestamp": 2**53 + 1}), None),
        (_body({**E, "weight": 0}), None),
        (_body({**E, "weight": "1"}), None),
        (_body({**E, "event_type": " "}), None),
        (_body({**E, "event_type": "cl\u00efck"}), None),  # valid, but left to the schema
        (_body({**E, "event_type": "x" * 65}), None),
        (_body({**E, "event_id": ""}), None),
    ],
)
def test_parse_events_known_answers(raw: bytes, parsed: list[Event] | None) -> None:
    got = parse_events(raw, max_batch=3, now=555)
    assert (None if got is None else list(got)) == parsed


def _events_client(model_dir: Path, tmp_path: Path, name: str, **kw: object) -> TestClient:
    settings = ServiceSettings(
        model_dir=str(model_dir),
        store_url=f"sqlite:///{tmp_path / name}",
        seed=True,
        bind_host="127.0.0.1",
        **kw,  # type: ignore[arg-type]
    )
    return TestClient(create_app(settings), base_url="http://127.0.0.1:8000")


def test_fast_events_answer_as_the_route(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same requests through the fast path and (parser turned off) through the route: equal
    answers, equal stored histories."""
    users = [f"u{u}" for u in range(16)]
    batches = [
        [
            {"user_id": users[(3 * b + j) % 16], "item_id": f"i{(b + j) % 12}", "timestamp": 10**9 + b}
            for j in range(9)
        ]
        for b in range(6)
    ]
    answers, histories, taken = [], [], []
    parse = fast_path.parse_events

    def spy(raw: bytes, max_batch: int) -> object:
        got = parse(raw, max_batch)
        taken.append(got is not None)
        return got

    for name, fast in (("fast.db", True), ("routed.db", False)):
        monkeypatch.setattr(fast_path, "parse_events", spy if fast else lambda *a, **k: None)
        with _events_client(model_dir, tmp_path, name) as c:
            got = []
            for events in batches:
                r = c.post("/v1/events", content=_body(*events), headers={"Content-Type": "application/json"})
                assert r.status_code == 200
                got.append((r.content, r.headers["content-type"]))
            answers.append(got)
            store = c.app.state.runtime.store  # type: ignore[attr-defined]
            histories.append([store.history(u).items for u in users])
            assert "/v1/events" in c.get("/metrics").text  # counted under the route
    assert taken == [True] * len(batches)  # the first client's every batch took the fast path
    assert answers[0] == answers[1]
    assert histories[0] == histories[1]
    assert orjson.loads(answers[0][0][0])["accepted"] == 9


def test_other_event_bodies_get_the_apps_answer(model_dir: Path, tmp_path: Path) -> None:
    with _events_client(model_dir, tmp_path, "s.db", max_batch=2, api_key="k3y") as c:
        key = {"X-API-Key": "k3y"}
        r = c.post("/v1/events", json={"events": [{**E, "user_id": " u1"}]}, headers=key)
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "events", 0, "user_id"]
        assert c.post("/v1/events", json={"events": [E] * 3}, headers=key).status_code == 413
        assert c.post("/v1/events", json={"events": [E]}).status_code == 401  # no key
        assert c.post("/v1/events", json={"events": [E]}, headers={"X-API-Key": "k3"}).status_code == 401
        for ctype in (
            "text/plain",
            "application/x-www-form-urlencoded",
        ):  # a key set: any content type passes the edge
            r = c.post("/v1/events", content=_body(E), headers={**key, "Content-Type": ctype})
            assert r.status_code == 422  # the app reads such a body as bytes, not JSON
        r = c.post("/v1/events", content=_body(E), headers={**key, "Content-Type": "application/vnd.x+json"})
        assert r.status_code == 200 and r.json()["accepted"] == 1
        r = c.post("/v1/events", json={"events": [{**E, "event_type": "cl\u00efck"}]}, headers=key)
        assert r.status_code == 200 and r.json()["accepted"] == 1  # the route took it
        assert c.post("/v1/events", json={"events": [E]}, headers=key).json()["accepted"] == 1
        assert c.post("/v1/events", content=_body(E), headers={**key, "Content-Type": ""}).status_code == 422


def test_an_error_after_the_events_were_handed_over_is_answered_once(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with _events_client(model_dir, tmp_path, "s.db") as c:
        runtime = c.app.state.runtime  # type: ignore[attr-defined]
        calls: list[int] = []

        def failing(events: object) -> object:
            calls.append(1)
            raise DynrecError("the store is read-only")

        monkeypatch.setattr(runtime, "ingest", failing)
        r = c.post("/v1/events", json={"events": [E]})
        assert r.status_code == 400 and r.json() == {"detail": "the store is read-only"}  # the app's handler
        assert calls == [1]  # never applied a second time by the route


def test_a_recommendation_reads_the_users_stamp_once(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback's test (does the user have events?) and the live state's check share one
    read of the store's stamp, and the answer is the one the session gives with its own read."""
    runtime = client.app.state.runtime  # type: ignore[attr-defined]
    store, online = runtime.store, runtime.holder.online
    user = client.get("/v1/users", params={"limit": 1}).json()["users"][0]
    want = online.recommend_many([user], 5)[0]
    reads: list[str] = []
    stamp = store.stamp

    def counted(u: str) -> object:
        reads.append(u)
        return stamp(u)

    monkeypatch.setattr(store, "stamp", counted)
    got = client.get(f"/v1/users/{user}/recommendations?k=5").json()
    assert reads == [user]
    assert [r["item_id"] for r in got["items"]] == want.items
    assert online.recommend_many([user], 5, stamps=[stamp(user)])[0] == want
    with pytest.raises(ValueError, match="1 stamps for 2 users"):
        online.recommend_many([user, user], 5, stamps=[stamp(user)])
