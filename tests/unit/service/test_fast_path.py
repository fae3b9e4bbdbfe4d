"""`dynrec.service.fast_path`: which requests of ``GET /v1/users/{user_id}/recommendations`` it
answers itself (known answers of the parser), that its answers equal the FastAPI route's for the
same request, and that everything else — other spellings, invalid values, errors while answering
— still gets FastAPI's answer, behind the edge checks and counted in the metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dynrec.errors import DynrecError
from dynrec.service import ServiceSettings, create_app
from dynrec.service.fast_path import parse_recommendations
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
