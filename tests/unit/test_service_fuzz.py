"""Fuzzing the HTTP API's whole OpenAPI surface (hypothesis + FastAPI's TestClient): for every
route in ``app.openapi()["paths"]`` and each of its methods, random path parameters (any unicode,
blank, very long), random query values (numbers, negatives, huge, strings) and random bodies
(arbitrary JSON, near-valid event batches with wrong types, "NaN" strings, huge numbers, missing
and extra fields, bytes that are not JSON), with and without the API key. No answer may be a 5xx,
and every 4xx must be JSON carrying a ``detail``. Deterministic (``derandomize=True``)."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dynrec import jobs
from dynrec.service import ServiceSettings, create_app
from tests.conftest import clustered_data

KEY = "fuzz-key"
EXAMPLES = 60
"""Examples per route and method (about 12 of them): the file stays under 20 s."""

FUZZ = settings(
    derandomize=True,
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
ids = st.one_of(
    text,
    st.sampled_from(["", " ", "\t", "\x00", "..", "%", "/", "u1", "i1", "é" * 3, "\u202e", "null"]),
    st.text(alphabet="ab\u00e9\U0001f600 ", min_size=500, max_size=3000),  # very long
    st.integers(-(10**30), 10**30).map(str),
)
numbers = st.one_of(
    st.integers(-(10**40), 10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 2**53, 2**63, 10**400, 1e308, -0.0]),
)
query_values = st.one_of(
    numbers.map(str), text, st.sampled_from(["", "true", "false", "NaN", "inf", "-inf", "1e999", "0x10"])
)
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), numbers, text),
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(text, inner, max_size=5)),
    max_leaves=20,
)
field_values = st.one_of(
    json_values,
    ids,
    numbers,
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "", "12", True, False, None, [], {}]),
)
EVENT_FIELDS = ("user_id", "item_id", "timestamp", "event_type", "weight")


@st.composite
def near_valid_event(draw: st.DrawFn) -> dict[str, Any]:
    """A valid event with a few fields replaced by random values, dropped, or extra ones added."""
    ev: dict[str, Any] = {
        "user_id": "u1",
        "item_id": draw(st.sampled_from(["i1", "i2", "new-item"])),
        "timestamp": draw(st.sampled_from([1_000, None, 1.5])),
        "event_type": draw(st.sampled_from(["view", None])),
        "weight": draw(st.sampled_from([1.0, None, 2])),
    }
    for name in draw(st.lists(st.sampled_from(EVENT_FIELDS), max_size=3, unique=True)):
        if draw(st.booleans()):
            ev[name] = draw(field_values)
        else:
            ev.pop(name)
    if draw(st.integers(0, 4)) == 0:
        ev[draw(text)] = draw(json_values)
    return ev


near_valid_bodies = st.one_of(
    st.builds(lambda evs: {"events": evs}, st.lists(near_valid_event(), max_size=8)),
    st.builds(
        lambda n: {"events": [{"user_id": "u1", "item_id": "i1"}] * n}, st.integers(40, 80)
    ),  # > max_batch
    st.builds(
        lambda evs, extra: {"events": evs, **extra},
        st.lists(near_valid_event(), max_size=2),
        st.dictionaries(text, json_values, max_size=2),
    ),
    st.builds(lambda h, k: {"history": h, "k": k}, st.lists(field_values, max_size=6), field_values),
    st.builds(lambda d: {"model_dir": d}, field_values),
)
bodies = st.one_of(
    st.none(),
    json_values.map(lambda v: ("json", v)),
    near_valid_bodies.map(lambda v: ("json", v)),
    st.binary(max_size=64).map(lambda b: ("raw", b)),
    st.sampled_from([("raw", b"{"), ("raw", b"NaN"), ("raw", b'{"events": [}'), ("raw", b"x" * 30_000)]),
)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("fuzz")
    data = clustered_data(n_users=20, n_items=16, n_groups=2, per_user=8, seed=3)
    users = data.user_vocab.to_ids(data.users)
    items = data.item_vocab.to_ids(data.items)
    rows = [f"{u},{i},{int(t)}" for u, i, t in zip(users, items, data.timestamps.tolist(), strict=True)]
    (root / "events.csv").write_text("user_id,item_id,timestamp\n" + "\n".join(rows) + "\n")
    jobs.train("itemknn", jobs.prepare(str(root / "events.csv")), out=root / "model")
    cfg = ServiceSettings(
        model_dir=str(root / "model"),
        store_url=f"sqlite:///{root / 'events.db'}",
        api_key=KEY,
        max_batch=50,
        max_body_bytes=20_000,
    )
    with TestClient(create_app(cfg), raise_server_exceptions=False) as c:
        yield c


def operations(client: TestClient) -> list[tuple[str, str, dict[str, Any]]]:
    spec = client.app.openapi()  # type: ignore[attr-defined]
    ops = []
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in ("get", "post", "put", "patch", "delete"):
                ops.append((method.upper(), path, op))
    return ops


def check(method: str, path: str, status: int, body: bytes) -> None:
    where = f"{method} {path} -> {status}: {body[:300]!r}"
    assert status < 500, where
    if 400 <= status < 500:
        try:
            payload = json.loads(body)
        except ValueError:
            pytest.fail(f"a 4xx that is not JSON: {where}")
        assert isinstance(payload, dict) and "detail" in payload, where


def test_every_route_has_fuzz_coverage(client: TestClient) -> None:
    ops = {(m, p) for m, p, _ in operations(client)}
    assert ("POST", "/v1/events") in ops and ("GET", "/v1/users/{user_id}/recommendations") in ops
    assert len(ops) >= 10


def fuzzer(client: TestClient, method: str, template: str, op: dict[str, Any]) -> Any:
    """A hypothesis test of one operation: random path parameters, query values, body, key."""
    params = op.get("parameters", [])
    path_names = [p["name"] for p in params if p["in"] == "path"]
    query_names = [p["name"] for p in params if p["in"] == "query"]

    @FUZZ
    @given(
        path_values=st.fixed_dictionaries({n: ids for n in path_names}),
        query=st.dictionaries(st.sampled_from(query_names or ["q"]), query_values, max_size=3),
        body=bodies,
        with_key=st.booleans(),
    )
    def fuzz(
        path_values: dict[str, str], query: dict[str, str], body: tuple[str, Any] | None, with_key: bool
    ) -> None:
        url = template
        for name, value in path_values.items():
            url = url.replace("{" + name + "}", quote(value, safe=""))
        headers = {"X-API-Key": KEY} if with_key else {}
        kwargs: dict[str, Any] = {"params": query, "headers": headers}
        if body is not None and method != "GET":
            kind, value = body
            if kind == "json":
                kwargs["content"] = json.dumps(value, allow_nan=True).encode()  # NaN/Infinity tokens too
                headers["Content-Type"] = "application/json"
            else:
                kwargs["content"] = value
        r = client.request(method, url, **kwargs)
        check(method, template, r.status_code, r.content)

    return fuzz


def test_fuzz_openapi_surface_no_5xx_and_json_4xx(client: TestClient) -> None:
    for method, template, op in operations(client):
        fuzzer(client, method, template, op)()


def test_fuzz_sees_the_error_answers(client: TestClient) -> None:
    """The fuzzer's inputs reach the validation paths (not only 404s): a known-bad example of each."""
    bad_event = {"events": [{"user_id": "u1", "item_id": "i1", "timestamp": "NaN"}]}
    r = client.post("/v1/events", json=bad_event, headers={"X-API-Key": KEY})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"][:4] == ["body", "events", 0, "timestamp"]
    r = client.post(
        "/v1/events", json={"events": [{"user_id": "u1", "item_id": "i1"}] * 51}, headers={"X-API-Key": KEY}
    )
    assert r.status_code == 413 and "detail" in r.json()
    assert client.post("/v1/events", json=bad_event).status_code == 401
    assert client.get("/v1/users/u1/recommendations", params={"k": str(10**30)}).status_code == 422
    assert not math.isnan(client.get("/v1/users/u1/recommendations").json()["items"][0]["score"])
