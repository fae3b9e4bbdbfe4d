"""The service's edge (issue 21, "the edge is closed"): API keys that cannot be keys are refused,
Host checking against DNS rebinding, JSON-only writes without a key, 422 (never 500) for
non-finite numbers and lone surrogates anywhere in a body, the id rule on every field and path,
and error answers that name what the client sent rather than server paths."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from dynrec import jobs
from dynrec.errors import DynrecError
from dynrec.service import ServiceSettings, create_app
from dynrec.service.edge import allowed_host_names, host_name
from tests.conftest import clustered_data
from tests.serve_process import itemknn_dir

KEY = "edge-key"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("edge")
    data = clustered_data(n_users=16, n_items=12, n_groups=2, per_user=6, seed=5)
    return itemknn_dir(root, data)


def _app(model_dir: Path, tmp_path: Path, **kw: Any) -> TestClient:
    settings = ServiceSettings(model_dir=str(model_dir), store_url=f"sqlite:///{tmp_path / 'store.db'}", **kw)
    return TestClient(create_app(settings))


@pytest.fixture
def keyed(model_dir: Path, tmp_path: Path) -> Iterator[TestClient]:
    with _app(model_dir, tmp_path, api_key=KEY) as c:
        yield c


# ---- API keys -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "why"),
    [
        ("", "api_key is empty"),  # before: ServiceSettings took "" (the CLI turned it into "no key")
        ("   ", "api_key is empty"),
        (" k", "starts or ends with whitespace"),
        ("k\n", "starts or ends with whitespace"),
        ("kéy", "printable ASCII"),
    ],
)
def test_keys_that_cannot_be_keys_are_refused(key: str, why: str) -> None:
    with pytest.raises(DynrecError, match=why):
        ServiceSettings(model_dir="/m", api_key=key)


def test_empty_key_variables_are_errors_naming_the_variable() -> None:
    with pytest.raises(DynrecError, match="DYNREC_API_KEY is empty"):  # before: silently no key
        ServiceSettings.from_env({"DYNREC_SERVICE_MODEL_DIR": "/m", "DYNREC_API_KEY": ""})
    with pytest.raises(DynrecError, match="DYNREC_SERVICE_API_KEY is empty"):
        ServiceSettings.from_env({"DYNREC_SERVICE_MODEL_DIR": "/m", "DYNREC_SERVICE_API_KEY": ""})
    assert ServiceSettings.from_env({"DYNREC_SERVICE_MODEL_DIR": "/m"}).api_key is None  # unset: no key
    got = ServiceSettings.from_env({"DYNREC_SERVICE_MODEL_DIR": "/m", "DYNREC_API_KEY": "k"})
    assert got.api_key == "k"


def test_bind_and_allowed_hosts_reach_the_workers() -> None:
    s = ServiceSettings(model_dir="/m", bind_host="::1", allowed_hosts=("api.example", "10.0.0.5"))
    again = ServiceSettings.from_env(s.to_env())
    assert again == s
    assert again.host_names() == {"::1", "localhost", "127.0.0.1", "api.example", "10.0.0.5"}


@pytest.mark.parametrize("bad", ["api.example:8000", "a b", "http://x", "", "a/b"])
def test_allowed_hosts_are_host_names(bad: str) -> None:
    with pytest.raises(DynrecError, match="allowed host"):
        ServiceSettings(model_dir="/m", allowed_hosts=(bad,))


# ---- Host checking ------------------------------------------------------------------------------------


def test_host_names() -> None:
    assert host_name("LocalHost:8000") == "localhost"
    assert host_name("[::1]:8000") == host_name("[0:0::1]") == "::1"
    assert host_name("evil.example.") == "evil.example"
    assert host_name("a:b:c") == host_name("[::1") == ""
    assert allowed_host_names(None, ()) is None  # an app built directly: no check
    assert allowed_host_names("0.0.0.0", ()) is None  # a wildcard bind: the names are not known here
    assert allowed_host_names("0.0.0.0", ("api.example",)) == {"api.example"}
    assert allowed_host_names("10.0.0.5", ()) == {"10.0.0.5"}
    assert allowed_host_names("127.0.0.1", ("*",)) is None


@pytest.mark.parametrize("api_key", [None, KEY])
def test_host_outside_the_bound_names_gets_421(model_dir: Path, tmp_path: Path, api_key: str | None) -> None:
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 reads with Host evil.example.
    Reads need no key, so the check applies with a key too."""
    with _app(model_dir, tmp_path, api_key=api_key, bind_host="127.0.0.1") as c:
        for host in ("evil.example", "evil.example:8000", "127.0.0.2", "", "a:b:c"):
            r = c.get("/v1/users/u1/recommendations", headers={"Host": host})
            assert r.status_code == 421, (host, r.text)
            assert "is not a name this service answers to" in r.json()["detail"]
        assert c.get("/healthz", headers={"Host": "evil.example"}).status_code == 421
        for host in ("127.0.0.1:8000", "localhost:8000", "LOCALHOST", "[::1]:8000", "127.0.0.1"):
            r = c.get("/v1/users/u1/recommendations", headers={"Host": host})
            assert r.status_code == 200, (host, r.text)


def test_allowed_hosts_add_names(model_dir: Path, tmp_path: Path) -> None:
    with _app(model_dir, tmp_path, bind_host="0.0.0.0", allowed_hosts=("recs.example",)) as c:
        assert c.get("/healthz", headers={"Host": "recs.example:443"}).status_code == 200
        assert c.get("/healthz", headers={"Host": "evil.example"}).status_code == 421
    with _app(model_dir, tmp_path, bind_host="127.0.0.1", allowed_hosts=("*",)) as c:
        assert c.get("/healthz", headers={"Host": "anything.example"}).status_code == 200


def test_serve_carries_the_bound_address_into_the_app(
    model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import dynrec.service.serve as serve_mod

    served: dict[str, Any] = {}
    monkeypatch.setattr(serve_mod.uvicorn, "run", lambda app, **kw: served.update(app=app, **kw))
    settings = ServiceSettings(
        model_dir=str(model_dir), store_url=f"sqlite:///{tmp_path / 's.db'}", api_key=KEY
    )
    serve_mod.serve(settings, host="127.0.0.1", port=0)
    with TestClient(served["app"]) as c:
        assert c.get("/healthz", headers={"Host": "evil.example"}).status_code == 421
        assert c.get("/healthz", headers={"Host": "localhost:8000"}).status_code == 200
    assert "without checking the Host header" not in caplog.text
    serve_mod.serve(settings, host="0.0.0.0", port=0)  # the names clients use are not known here
    assert "without checking the Host header" in caplog.text and "--allowed-host" in caplog.text


def test_app_without_a_bind_address_checks_no_host(keyed: TestClient) -> None:
    assert keyed.get("/healthz").status_code == 200  # TestClient's Host: testserver


# ---- JSON-only writes without a key ---------------------------------------------------------------------


FORM_TYPES = ["application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "text/plain", None]


@pytest.mark.parametrize("ctype", FORM_TYPES)
def test_without_a_key_a_form_post_gets_415(model_dir: Path, tmp_path: Path, ctype: str | None) -> None:
    """A cross-site form POST needs no preflight: without a key it must not start an update (before:
    200) nor write events."""
    with _app(model_dir, tmp_path) as c:
        headers = {} if ctype is None else {"Content-Type": ctype}
        for path, body in [
            ("/v1/admin/update", b""),
            ("/v1/events", b'{"events": [{"user_id": "u1", "item_id": "i1"}]}'),
            ("/v1/recommendations", b'{"history": ["i1"]}'),
            ("/v1/items", b'{"items": [{"item_id": "x", "text": "t"}]}'),
            ("/v1/admin/reload", b'{"model_dir": "x"}'),
        ]:
            r = c.post(path, content=body, headers=headers)
            assert r.status_code == 415, (path, r.status_code, r.text)
            assert "needs Content-Type: application/json" in r.json()["detail"]
        assert len(c.get("/v1/users").json()["users"]) == 0  # nothing was written
        # JSON is served; a DELETE without a body (never cross-site without a preflight) is too
        r = c.post("/v1/events", json={"events": [{"user_id": "u1", "item_id": "i1"}]})
        assert r.status_code == 200, r.text
        assert (
            c.request(
                "POST",
                "/v1/recommendations",
                content=b'{"history": ["i1"]}',
                headers={"Content-Type": "Application/JSON; charset=utf-8"},
            ).status_code
            == 200
        )
        assert c.delete("/v1/users/u1").status_code == 200


def test_with_a_key_the_key_guards_writes(keyed: TestClient) -> None:
    r = keyed.post("/v1/admin/update", content=b"", headers={"Content-Type": "text/plain"})
    assert r.status_code == 401  # a form cannot send X-API-Key
    r = keyed.post(
        "/v1/recommendations", content=b'{"history": ["i1"]}', headers={"Content-Type": "text/plain"}
    )
    assert r.status_code != 415


# ---- 422, never 500: non-finite numbers, lone surrogates, the id rule ----------------------------------------


BAD_BODIES: list[tuple[str, str, list[Any]]] = [
    (
        "/v1/events",
        '{"events": [{"user_id": "u1", "item_id": "i1", "timestamp": NaN}]}',
        ["events", 0, "timestamp"],
    ),
    (
        "/v1/events",
        '{"events": [{"user_id": "u1", "item_id": "i1", "timestamp": 1e400}]}',
        ["events", 0, "timestamp"],
    ),
    (
        "/v1/events",
        '{"events": [{"user_id": "u1", "item_id": "i1", "weight": Infinity}]}',
        ["events", 0, "weight"],
    ),
    (
        "/v1/events",
        '{"events": [{"user_id": "u1", "item_id": "i1", "weight": -Infinity}]}',
        ["events", 0, "weight"],
    ),
    ("/v1/events", '{"events": [{"user_id": "\\ud800", "item_id": "i1"}]}', ["events", 0, "user_id"]),
    (
        "/v1/events",
        '{"events": [{"user_id": "u1", "item_id": "i1", "event_type": "a\\udfff"}]}',
        ["events", 0, "event_type"],
    ),
    ("/v1/events", '{"events": [{"user_id": "u1", "item_id": "i1"}], "extra": NaN}', ["extra"]),
    # a key that is no string: the body is named (pydantic's loc ["body"])
    ("/v1/events", '{"events": [{"user_id": "u1", "item_id": "i1"}], "\\ud800": 1}', []),
    ("/v1/events", '{"events": [{"user_id": " u1", "item_id": "i1"}]}', ["events", 0, "user_id"]),
    ("/v1/events", '{"events": [{"user_id": "u1", "item_id": "a,b"}]}', ["events", 0, "item_id"]),
    ("/v1/events", '{"events": [{"user_id": "u1", "item_id": "i1\\n"}]}', ["events", 0, "item_id"]),
    (
        "/v1/events",
        json.dumps({"events": [{"user_id": "u" * 513, "item_id": "i1"}]}),
        ["events", 0, "user_id"],
    ),
    ("/v1/recommendations", '{"history": ["i1"], "k": NaN}', ["k"]),
    ("/v1/recommendations", '{"history": ["i1", Infinity]}', ["history", 1]),
    ("/v1/recommendations", '{"history": ["\\ud800"]}', ["history", 0]),
    ("/v1/recommendations", '{"history": ["i1 "]}', ["history", 0]),
    ("/v1/items", '{"items": [{"item_id": "x", "text": "\\ud800"}]}', ["items", 0, "text"]),
    ("/v1/items", '{"items": [{"item_id": " x", "text": "t"}]}', ["items", 0, "item_id"]),
    ("/v1/items", json.dumps({"items": [{"item_id": "y" * 100_000, "text": "t"}]}), ["items", 0, "item_id"]),
    ("/v1/items", '{"items": [{"item_id": "x", "text": "t", "tags": [NaN]}]}', ["items", 0, "tags", 0]),
    ("/v1/admin/reload", '{"model_dir": "\\ud800"}', ["model_dir"]),
    ("/v1/admin/reload", '{"model_dir": 1e400}', ["model_dir"]),
]


@pytest.mark.parametrize(("path", "body", "loc"), BAD_BODIES)
def test_bad_values_anywhere_are_422_naming_the_field(
    keyed: TestClient, path: str, body: str, loc: list[Any]
) -> None:
    """Before: 500 (and a traceback) for NaN/Infinity/1e400/lone surrogates — validation refused the
    value, then the 422 handler could not encode it; whitespace-padded ids were accepted."""
    headers = {"X-API-Key": KEY, "Content-Type": "application/json"}
    r = keyed.post(path, content=body.encode(), headers=headers)
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert any(d["loc"][1:] == loc for d in detail), detail
    assert keyed.get("/v1/users").json()["users"] == []  # nothing was written


@pytest.mark.parametrize(
    "path",
    [
        "/v1/users/%20u1/recommendations",
        "/v1/users/u1%09",
        "/v1/users/%20/profile",
        "/v1/items/a%2Cb/similar",
        "/v1/items/i1%0A/similar",
        "/v1/users/" + "u" * 513,
    ],
)
def test_path_ids_follow_the_id_rule(keyed: TestClient, path: str) -> None:
    r = keyed.get(path)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"][0] == "path"


def test_existing_item_message_names_the_json_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dynrec.models import registry
    from tests.unit.jobs.test_items import ToyEncoder, write_events, write_items

    monkeypatch.setitem(registry.MODELS, "toytext", "tests.unit.jobs.test_items:ToyText")
    prepared = jobs.prepare(str(write_events(tmp_path)))
    jobs.train("toytext", prepared, out=tmp_path / "toy", items=write_items(tmp_path), encoder=ToyEncoder())
    with _app(tmp_path / "toy", tmp_path, api_key=KEY) as c:
        c.app.state.runtime.text_encoder = ToyEncoder()  # type: ignore[attr-defined]
        r = c.post("/v1/items", json={"items": [{"item_id": "i1", "text": "t"}]}, headers={"X-API-Key": KEY})
    assert r.status_code == 400
    detail = r.json()["detail"]
    assert "'i1'" in detail and '"skip_existing": true' in detail and "--skip-existing" not in detail


# ---- no server paths in error answers ---------------------------------------------------------------------


def test_reload_errors_name_what_the_client_sent(keyed: TestClient, model_dir: Path, tmp_path: Path) -> None:
    auth = {"X-API-Key": KEY}
    r = keyed.post("/v1/admin/reload", json={"model_dir": "no-such-model"}, headers=auth)
    assert 400 <= r.status_code < 500
    detail = r.json()["detail"]
    assert "no-such-model" in detail
    assert str(Path.cwd().resolve()) not in detail and str(model_dir.resolve()) not in detail
    broken = model_dir / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "config.json").write_text("not json")
    try:
        r = keyed.post("/v1/admin/reload", json={"model_dir": str(broken)}, headers=auth)
    finally:
        (broken / "config.json").unlink()
        broken.rmdir()
    assert 400 <= r.status_code < 500
    assert str(model_dir.resolve()) not in r.json()["detail"], r.json()
