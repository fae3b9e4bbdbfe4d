"""Fuzzing the HTTP API's whole OpenAPI surface (hypothesis + FastAPI's TestClient): for every
route in ``app.openapi()["paths"]`` and each of its methods, random path parameters (any unicode,
blank, very long), random query values (numbers, negatives, huge, strings) and random bodies
(arbitrary JSON, near-valid event batches with wrong types, "NaN" strings, huge numbers, missing
and extra fields, bytes that are not JSON), with and without the API key. No answer may be a 5xx,
and every 4xx must be JSON carrying a ``detail``. Deterministic (``derandomize=True``)."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
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


# ---- schema-driven fuzz: a few thousand requests built from the OpenAPI schema, fixed seed ------------------

SEED = 21
REQUESTS_PER_APP = 2000
"""Requests sent to each of the two apps (with a key; without one, bound to loopback): 4,000 in
all, about 15 s."""


class Raw:
    """A JSON token written as it is (``1e400``: Python's json cannot write it, any client can)."""

    def __init__(self, token: str) -> None:
        self.token = token


NASTY_NUMBERS: list[Any] = [
    math.nan,
    math.inf,
    -math.inf,
    Raw("1e400"),
    Raw("-1e400"),
    -1,
    0,
    10**30,
    2**63,
    1.5,
    True,
]
NASTY_STRINGS: list[Any] = [
    "\ud800",
    "a\udfffb",
    " u1",
    "u1 ",
    "\ti1",
    "i1\n",
    "\u3000i1",
    "a,b",
    "a\rb",
    "",
    " ",
    "x" * 513,
    "é\u202e",
    "NaN",
    "null",
    "../../etc/passwd",
    "/",
    "%",
]
NASTY_VALUES: list[Any] = [*NASTY_NUMBERS, *NASTY_STRINGS, None, [], {}, [math.nan], {"\ud800": 1}]
KNOWN_USERS = ["u1", "u2", "u3", "new-user"]
KNOWN_ITEMS = ["i1", "i2", "i3", "i9", "new-item"]


def wire(text: str) -> str:
    """`text` percent-encoded for a URL; a lone surrogate as the bytes a sloppy client sends
    (surrogatepass: ``%ED%A0%80``), which are not UTF-8."""
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def dump(value: Any) -> str:
    """JSON text of `value` with NaN/Infinity tokens, `Raw` tokens and lone surrogates as escapes."""
    if isinstance(value, Raw):
        return value.token
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(str(k))}:{dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(dump(v) for v in value) + "]"
    return json.dumps(value, allow_nan=True)


class SchemaFuzzer:
    """Values for the app's OpenAPI schemas: mostly valid (known ids, in-range numbers, required
    fields), each node replaced with probability `p_nasty` by a value the service must refuse
    cleanly (NaN, Infinity, 1e400, lone surrogates, whitespace-padded or comma ids, wrong types),
    fields dropped or added now and then."""

    def __init__(self, spec: dict[str, Any], rng: random.Random, p_nasty: float = 0.08) -> None:
        self.spec = spec
        self.rng = rng
        self.p_nasty = p_nasty

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            name = schema["$ref"].rsplit("/", 1)[-1]
            schema = self.spec["components"]["schemas"][name]
        return schema

    def nasty(self) -> Any:
        return self.rng.choice(NASTY_VALUES)

    def value(self, schema: dict[str, Any], name: str = "", depth: int = 0) -> Any:
        r = self.rng
        if r.random() < self.p_nasty:
            return self.nasty()
        schema = self.resolve(schema)
        options = schema.get("anyOf") or schema.get("oneOf")
        if options:
            return self.value(
                {**r.choice(options), **{k: v for k, v in schema.items() if k in ("ge", "le", "gt")}},
                name,
                depth,
            )
        kind = schema.get("type")
        if kind == "object":
            props: dict[str, Any] = schema.get("properties", {})
            required = set(schema.get("required", []))
            out: dict[str, Any] = {}
            for key, sub in props.items():
                if (key in required and r.random() > 0.03) or r.random() < 0.5:
                    out[key] = self.value(sub, key, depth + 1)
            if r.random() < 0.05:
                out[r.choice(["extra", "\ud800", " user_id", "NaN"])] = self.nasty()
            return out
        if kind == "array":
            hi = min(int(schema.get("maxItems", 6)), 6 if depth else 8)
            lo = min(int(schema.get("minItems", 0)), hi)
            items = schema.get("items", {})
            return [self.value(items, name, depth + 1) for _ in range(r.randint(lo, hi))]
        if kind == "string":
            if name in ("user_id",):
                return r.choice(KNOWN_USERS)
            if name in ("item_id", "history"):
                return r.choice(KNOWN_ITEMS)
            lo, hi = int(schema.get("minLength", 0)), min(int(schema.get("maxLength", 20)), 20)
            return "".join(r.choice("abcxyz é") for _ in range(r.randint(lo, max(lo, hi))))
        if kind in ("integer", "number"):
            lo = schema.get("minimum", schema.get("ge", schema.get("gt", 0)))
            hi = min(schema.get("maximum", schema.get("le", 10**6)), 10**6)
            v = r.randint(int(lo), int(hi))
            return v if kind == "integer" or r.random() < 0.5 else v + 0.5
        if kind == "boolean":
            return r.random() < 0.5
        if kind == "null":
            return None
        return self.nasty()

    def query_value(self, schema: dict[str, Any]) -> str:
        if self.rng.random() < 0.2:
            return self.rng.choice(
                ["NaN", "inf", "-inf", "1e400", "-1", "", "0x10", "\x00", str(10**40), "true"]
            )
        v = self.value(schema)
        if isinstance(v, bool):
            return "true" if v else "false"
        return dump(v) if not isinstance(v, str) else v


def schema_fuzz(
    client: TestClient, *, key: str | None, hosts: list[str], n: int, seed: int
) -> Counter[tuple[str, str, int]]:
    """`n` requests over every operation of the app's schema; returns (method, path, status) counts.
    Fails at the first server error, showing the request."""
    rng = random.Random(seed)
    spec = client.app.openapi()  # type: ignore[attr-defined]
    fz = SchemaFuzzer(spec, rng)
    ops = operations(client)
    seen: Counter[tuple[str, str, int]] = Counter()
    for _ in range(n):
        method, template, op = rng.choice(ops)
        url = template
        for p in op.get("parameters", []):
            if p["in"] == "path":
                pool = KNOWN_USERS if p["name"] == "user_id" else KNOWN_ITEMS
                raw = rng.choice(pool) if rng.random() > 0.3 else rng.choice(NASTY_STRINGS[2:])
                url = url.replace("{" + p["name"] + "}", wire(raw))
        params = {
            p["name"]: fz.query_value(p["schema"])
            for p in op.get("parameters", [])
            if p["in"] == "query" and rng.random() < 0.5
        }
        headers = {"Host": rng.choice(hosts)}
        if key is not None and rng.random() < 0.85:
            headers["X-API-Key"] = key if rng.random() < 0.95 else key + "x"
        content: bytes | None = None
        body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
        if method != "GET":
            if body is not None and rng.random() < 0.9:
                content = dump(fz.value(body)).encode()
            elif rng.random() < 0.5:
                content = rng.choice(
                    [
                        b"",
                        b"{",
                        b"NaN",
                        b"[1e400]",
                        b'"\\ud800"',
                        b"a=1&b=2",
                        b"x" * 30_000,
                        rng.randbytes(12),
                    ]
                )
            headers["Content-Type"] = rng.choices(
                ["application/json", "text/plain", "application/x-www-form-urlencoded", ""],
                [0.85, 0.05, 0.05, 0.05],
            )[0]
        query = "&".join(f"{wire(k)}={wire(v)}" for k, v in params.items())
        r = client.request(method, f"{url}?{query}" if query else url, headers=headers, content=content)
        shown = (
            f"{method} {url} params={params} headers={headers} body={content[:300] if content else content!r}"
        )
        assert r.status_code < 500, f"{shown} -> {r.status_code}: {r.text[:300]}"
        check(method, template, r.status_code, r.content)
        seen[(method, template, r.status_code)] += 1
    return seen


def test_schema_fuzz_gives_no_server_error(client: TestClient, tmp_path: Path) -> None:
    """4,000 requests (two apps, fixed seed): every route, bodies from its schema with NaN, Infinity,
    1e400, lone surrogates, whitespace-padded and comma ids, wrong types and extra fields mixed in;
    no 5xx, every 4xx JSON with a detail. Before the 422 handler encoded inputs safely, a NaN or a
    lone surrogate anywhere in a body gave 500."""
    keyed = schema_fuzz(client, key=KEY, hosts=["testserver"], n=REQUESTS_PER_APP, seed=SEED)
    settings = client.app.state.settings  # type: ignore[attr-defined]
    open_settings = dataclasses.replace(
        settings, api_key=None, bind_host="127.0.0.1", store_url=f"sqlite:///{tmp_path / 'open.db'}"
    )
    with TestClient(create_app(open_settings), raise_server_exceptions=False) as open_client:
        keyless = schema_fuzz(
            open_client,
            key=None,
            hosts=["127.0.0.1:8000", "localhost:8000", "evil.example", "[::1]:8000"],
            n=REQUESTS_PER_APP,
            seed=SEED + 1,
        )
    total = keyed + keyless
    assert sum(total.values()) == 2 * REQUESTS_PER_APP
    assert not [k for k in total if k[2] >= 500]
    by_status = Counter(s for _, _, s in total.elements())
    print(f"schema fuzz: {sum(total.values())} requests, statuses {sorted(by_status.items())}")
    # the inputs reach past validation, and each edge answer occurs
    assert total[("POST", "/v1/events", 200)] > 20 and total[("POST", "/v1/recommendations", 200)] > 20
    for status in (401, 404, 413, 415, 421, 422):
        assert by_status[status] > 0, status
