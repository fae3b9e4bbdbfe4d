"""What the page reads besides the core routes (`dynrec.service.page`): the API docs served without
a CDN, an anonymous session's interests (``POST /v1/interests``, the same numbers a stored user
with that history gets), one interest computation for the page and ``dynrec profile`` (the page's
JSON and the CLI's JSON equal for the same user, over tags and over clusters, from the training
history and from the store), and the popular fallback's scores being the event counts the page
labels them as."""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from dynrec.cli.main import app as cli
from dynrec.data.dataset import InteractionData
from dynrec.jobs.history import training_history
from dynrec.jobs.items import write_item_info
from dynrec.models.base import Recommender
from dynrec.service import ServiceSettings, create_app
from tests.conftest import clustered_data
from tests.serve_process import itemknn_dir
from tests.unit.online.test_state import tiny_model

# genres of the tagged model's items: i<j> has g<j % 3>, every fourth item also "extra"
TAGS = {
    f"i{j}": {"title": f"Film {j}", "tags": [f"g{j % 3}", *(["extra"] if j % 4 == 0 else [])]}
    for j in range(1, 25)
}


def _data() -> InteractionData:
    return clustered_data(n_users=30, n_items=24, n_groups=3, per_user=10, seed=1)


@pytest.fixture(scope="module")
def tagged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """itemknn trained by the jobs layer (its training history is recorded), with an item_info.json
    of titles and tags: the categories of both the page and ``dynrec profile``."""
    model_dir = itemknn_dir(tmp_path_factory.mktemp("page-tagged"), _data())
    write_item_info(model_dir, TAGS)
    return model_dir


@pytest.fixture(scope="module")
def untagged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """als (item vectors) without item_info.json: the categories are clusters of its vectors."""
    root = tmp_path_factory.mktemp("page-untagged")
    tiny_model("als", _data()).save(root / "als")  # fitted directly: histories come by --history
    return root / "als"


def _client(model_dir: Path, tmp_path: Path, **kw: Any) -> TestClient:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    return TestClient(create_app(ServiceSettings(str(model_dir), store_url=url, **kw)))


@pytest.fixture
def served(tagged: Path, tmp_path: Path) -> Iterator[TestClient]:
    """The tagged model served on a new SQLite store seeded with its training histories."""
    with _client(tagged, tmp_path, seed=True) as c:
        yield c


def _cli_profile(*args: str) -> dict[str, Any]:
    r = CliRunner().invoke(cli, ["profile", *args, "--json"])
    assert r.exit_code == 0, r.output
    out: dict[str, Any] = json.loads(r.output)
    return out


def _page_shares(interests: dict[str, Any]) -> dict[str, list[list[Any]]]:
    return {w: [list(c) for c in interests[w]["categories"]] for w in ("long_term", "short_term")}


def _cli_shares(profile: dict[str, Any]) -> dict[str, list[list[Any]]]:
    return {w: [list(t) for t in profile[w]["tags"]] for w in ("long_term", "short_term")}


# ---- the API docs without a CDN ----------------------------------------------------------------------


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_api_docs_reference_only_this_service(served: TestClient, page: str) -> None:
    r = served.get(page)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    html = r.text
    assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", html, re.IGNORECASE), html  # no host named
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(a.endswith(".js") for a in assets) and all(a.startswith("/") for a in assets), assets
    for a in assets:
        got = served.get(a)
        assert got.status_code == 200 and len(got.content) > 1000, a
    assert "validatorUrl" not in html or '"validatorUrl": null' in html  # no badge from a validator site
    spec = re.search(r"""(?:url: ?'|spec-url=")(/[^'"]+)""", html)
    assert spec is not None and served.get(spec.group(1)).json()["info"]["title"] == "dynrec"


# ---- an anonymous session's interests ---------------------------------------------------------------


def test_session_interests_are_a_stored_users_with_that_history(served: TestClient) -> None:
    # i1 g1, i2 g2, i3 g0, i4 g1+extra; zzz is not in the catalogue (skipped, as recommendations skip it)
    history = ["i1", "i2", "i3", "i4", "zzz"]
    got = served.post("/v1/interests", json={"history": history, "short_window": 2})
    assert got.status_code == 200, got.text
    it = got.json()
    assert it["basis"] == "categories"
    # long term: g1 1 + 1/2, g2 1, g0 1, extra 1/2 over 4 events
    assert it["long_term"]["categories"] == [["g1", 0.375], ["g0", 0.25], ["g2", 0.25], ["extra", 0.125]]
    assert it["short_term"]["categories"] == [["g0", 0.5], ["extra", 0.25], ["g1", 0.25]]
    assert it["long_term"]["items"] and not set(it["long_term"]["items"]) & set(history)  # unseen top items
    # a stored user with the same events gets the same numbers
    events = [{"user_id": "anon-twin", "item_id": i, "timestamp": t} for t, i in enumerate(history)]
    assert served.post("/v1/events", json={"events": events}).status_code == 200
    twin = served.get("/v1/users/anon-twin").json()["interests"]  # the page's short window: 10
    assert twin == served.post("/v1/interests", json={"history": history}).json()
    empty = served.post("/v1/interests", json={"history": []}).json()
    assert empty["long_term"] == {"categories": [], "items": []} == empty["short_term"]
    assert served.post("/v1/interests", json={"history": ["i1"], "short_window": 0}).status_code == 422
    assert served.post("/v1/interests", json={"history": ["i1"], "k": 3}).status_code == 422


# ---- one interest computation: the page's JSON == the CLI's JSON ----------------------------------


def test_page_and_cli_profile_give_the_same_shares(served: TestClient, tagged: Path, tmp_path: Path) -> None:
    for user in ("u1", "u2", "u17"):
        page = served.get(f"/v1/users/{user}").json()["interests"]
        cli_json = _cli_profile(str(tagged), "--user", user)
        route = served.get(f"/v1/users/{user}/profile").json()
        assert page["long_term"]["categories"], user
        assert _page_shares(page) == _cli_shares(cli_json) == _cli_shares(route), user
    # the user clicks on: the page follows the store, and so does `dynrec profile --store`
    events = [
        {"user_id": "u1", "item_id": i, "timestamp": 10**6 + t} for t, i in enumerate(["i4", "i8", "i12"])
    ]
    assert served.post("/v1/events", json={"events": events}).status_code == 200
    page = served.get("/v1/users/u1").json()["interests"]
    stored = _cli_profile(str(tagged), "--user", "u1", "--store", str(tmp_path / "store.db"))
    assert _page_shares(page) == _cli_shares(stored)
    before = _cli_profile(str(tagged), "--user", "u1")  # the training history only
    extra = [dict(p["short_term"]["tags"]).get("extra", 0.0) for p in (before, stored)]
    assert extra[1] > extra[0]  # i4, i8, i12 are all "extra"


def test_page_and_cli_profile_agree_on_clusters_without_tags(untagged: Path, tmp_path: Path) -> None:
    history = ["i1", "i2", "i9", "i17", "i18"]
    with _client(untagged, tmp_path) as c:
        events = [{"user_id": "v", "item_id": i, "timestamp": t} for t, i in enumerate(history)]
        assert c.post("/v1/events", json={"events": events}).status_code == 200
        page = c.get("/v1/users/v").json()["interests"]
        route = c.get("/v1/users/v/profile").json()
    cli_json = _cli_profile(str(untagged), "--history", ",".join(history))
    assert page["basis"] == "clusters" and page["long_term"]["categories"]
    assert all(name.startswith("cluster ") for name, _ in page["long_term"]["categories"])
    assert _page_shares(page) == _cli_shares(cli_json) == _cli_shares(route)


def test_profile_text_rounds_as_the_page(tagged: Path) -> None:
    r = CliRunner().invoke(cli, ["profile", str(tagged), "--history", "i1,i2,i3,i4"])
    assert r.exit_code == 0, r.output
    # shares 0.375, 0.25, 0.25, 0.125: halves rounded up as Math.round does (Python's :.0% says 12%)
    assert "long term (4 events): g1 38%, g0 25%, g2 25%, extra 13%" in r.output
    bad = CliRunner().invoke(cli, ["profile", str(tagged), "--history", "i1", "--store", "x.db"])
    assert bad.exit_code != 0 and "--store reads a user's history" in bad.output


# ---- the popular fallback --------------------------------------------------------------------------


def test_fallback_scores_are_event_counts(served: TestClient, tagged: Path) -> None:
    got = served.get("/v1/users/nobody/recommendations?k=5").json()
    assert got["fallback"] == "popular"
    hist = training_history(Recommender.load(tagged)).data
    counts = Counter(hist.item_vocab.to_ids(hist.items))
    assert [x["score"] for x in got["items"]] == sorted(counts.values(), reverse=True)[:5]
    assert all(counts[x["item_id"]] == x["score"] for x in got["items"])
