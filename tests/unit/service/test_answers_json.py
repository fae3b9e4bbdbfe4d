"""The hot routes' answers, built without their response models (`dynrec.service.answers_json`):
byte for byte what FastAPI made from the response models (same keys, order, aliases, numbers),
on the real routes and for an ingest that completed a shift; the metrics middleware's kept
children still count every request under its route and status."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from fastapi.testclient import TestClient

from dynrec.online.shifts import Shift
from dynrec.service import ServiceSettings, create_app
from dynrec.service.answers_json import JSONBytes, events_json
from dynrec.service.runtime import Ingested
from dynrec.service.schemas import EventShiftOut, EventsOut, RecommendationsOut
from tests.conftest import clustered_data
from tests.serve_process import itemknn_dir


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = clustered_data(n_users=16, n_items=12, n_groups=2, per_user=6, seed=5)
    return itemknn_dir(tmp_path_factory.mktemp("answers-json"), data)


@pytest.fixture
def client(model_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    settings = ServiceSettings(
        model_dir=str(model_dir), store_url=f"sqlite:///{tmp_path / 's.db'}", seed=True
    )
    with TestClient(create_app(settings)) as c:
        yield c


def _as_the_model_made_it(model: type[RecommendationsOut] | type[EventsOut], body: bytes) -> bytes:
    """`body` validated by `model` and serialised as FastAPI serialises a response model."""
    return model.model_validate_json(body).model_dump_json(by_alias=True).encode()


def test_recommendations_equal_the_response_model(client: TestClient) -> None:
    user = client.get("/v1/users", params={"limit": 1}).json()["users"][0]
    for params in ({"k": 5}, {"k": 3, "explain": "true"}, {"k": 1000, "exclude_seen": "false"}):
        r = client.get(f"/v1/users/{user}/recommendations", params=params)
        assert r.status_code == 200 and r.headers["content-type"] == "application/json"
        assert r.content == _as_the_model_made_it(RecommendationsOut, r.content)
        got = r.json()
        assert got["user_id"] == user and got["fallback"] is None and got["items"]
        if "explain" in params:
            assert all(it["explanation"] is not None for it in got["items"])
    cold = client.get("/v1/users/nobody/recommendations", params={"k": 4})
    assert cold.content == _as_the_model_made_it(RecommendationsOut, cold.content)
    assert cold.json()["fallback"] == "popular" and len(cold.json()["items"]) == 4
    items = [it["item_id"] for it in client.get(f"/v1/users/{user}/recommendations").json()["items"]]
    session = client.post("/v1/recommendations", json={"history": items[:2], "k": 4})
    assert session.status_code == 200 and session.json()["user_id"] is None
    assert session.content == _as_the_model_made_it(RecommendationsOut, session.content)


def test_events_answer_equals_the_response_model(client: TestClient) -> None:
    user = client.get("/v1/users", params={"limit": 1}).json()["users"][0]
    item = client.get(f"/v1/users/{user}/recommendations").json()["items"][0]["item_id"]
    body = {
        "events": [{"user_id": user, "item_id": item}, {"user_id": "new-user", "item_id": "no-such-item"}]
    }
    r = client.post("/v1/events", json=body)
    assert r.status_code == 200
    assert r.content == _as_the_model_made_it(EventsOut, r.content)
    assert r.json() == {"accepted": 2, "unknown_items": 1, "shifts": []}


def test_an_ingest_with_a_shift_as_the_old_response_model_wrote_it() -> None:
    shift = Shift(
        event_index=7, timestamp=1_700_000_000, score=0.625, start_index=5, from_=("a", "b"), to=("c",)
    )
    done = Ingested(accepted=3, unknown_items=0, shifts=[("u1", shift)])
    old = EventsOut(
        accepted=3,
        unknown_items=0,
        shifts=[
            EventShiftOut.model_validate(
                {
                    "user_id": "u1",
                    "when": 1_700_000_000,
                    "event_index": 7,
                    "score": 0.625,
                    "from": ["a", "b"],
                    "to": ["c"],
                }
            )
        ],
    )
    assert JSONBytes(events_json(done)).body == old.model_dump_json(by_alias=True).encode()
    assert orjson.loads(JSONBytes(events_json(done)).body)["shifts"][0]["from"] == ["a", "b"]


def test_non_finite_scores_are_null_as_before() -> None:
    assert JSONBytes({"score": math.inf, "n": math.nan}).body == b'{"score":null,"n":null}'


def _count(metrics: str, route: str, status: str) -> float:
    pat = rf'dynrec_http_requests_total\{{method="GET",route="{re.escape(route)}",status="{status}"\}} (\S+)'
    m = re.search(pat, metrics)
    return 0.0 if m is None else float(m.group(1))


def test_metrics_count_every_request_by_route_and_status(client: TestClient) -> None:
    route = "/v1/users/{user_id}/recommendations"
    before = client.get("/metrics").text
    for j in range(7):
        assert client.get(f"/v1/users/u{j}/recommendations").status_code == 200
    for _ in range(3):
        assert client.get("/v1/users/u1/recommendations", params={"k": 0}).status_code == 422
    after = client.get("/metrics").text
    assert _count(after, route, "200") - _count(before, route, "200") == 7
    assert _count(after, route, "422") - _count(before, route, "422") == 3
    pat = rf'dynrec_http_request_duration_seconds_count\{{method="GET",route="{re.escape(route)}"\}} (\S+)'
    n = re.search(pat, after)
    assert n is not None and float(n.group(1)) >= 10
