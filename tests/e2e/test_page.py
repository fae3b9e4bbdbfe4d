"""End to end: the page at `/`, driven by a real browser (Debian's Chromium through Playwright)
against a real `dynrec serve` process with a SQLite store.

A user with a stored history is picked from the page's list; the recommendations shown are read;
clicking one posts the event (with the API key the page was given) and the page re-reads history,
interests and recommendations. Checked: a write without the key is refused and the API's error is
shown in the page; with the key the list changes (the clicked item leaves it and heads the history),
and the event is in the store (over HTTP and in the SQLite file itself). An anonymous session, fed
from the item search, gets recommendations and an interest panel from its in-page history (before
its first click: the popular fallback, its scores labelled as event counts).
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Page, sync_playwright

from dynrec.data.dataset import InteractionData
from dynrec.data.vocab import Vocabulary
from dynrec.models.registry import create_model
from dynrec.online.store import SQLiteStore
from tests.conftest import clustered_data
from tests.serve_process import running_server
from tests.unit.online.test_state import tiny_model

API_KEY = "page-test-key"
USER = "u3"
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
STEP_TIMEOUT_MS = 20_000  # one page step (a request round trip and a render)


def chromium_path() -> str | None:
    found = shutil.which("chromium")
    if found:
        return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


@dataclass(frozen=True)
class Served:
    base: str
    db: Path
    history: list[tuple[str, int]]  # USER's events: (item id, timestamp), oldest first


def user_history(data: InteractionData, user: str) -> list[tuple[str, int]]:
    """`user`'s events in `data` as (item id, timestamp), oldest first."""
    u = data.user_vocab.index(user)
    lo, hi = int(data.indptr[u]), int(data.indptr[u + 1])
    items = data.item_vocab.to_ids(data.items[lo:hi])
    return sorted(zip(items, (int(t) for t in data.timestamps[lo:hi]), strict=True), key=lambda r: r[1])


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    """`dynrec serve` on a free loopback port: a tiny ItemKNN (recency-weighted, with explanations)
    fitted on clustered data, item titles from a CSV, a SQLite store in tmp_path; always stopped."""
    data = clustered_data(n_users=30, n_items=24, n_groups=3, per_user=10, seed=1)
    model = create_model("itemknn", config={"k": 20, "recency_half_life": 2.0}).fit(data, None)
    model_dir = tmp_path / "model"
    model.save(model_dir)
    items = tmp_path / "items.csv"
    items.write_text(
        "item_id,title,genres\n" + "".join(f"i{i},Film {i},Group{(i - 1) // 8}\n" for i in range(1, 25)),
        encoding="utf-8",
    )
    db = tmp_path / "state.db"
    log = tmp_path / "server.log"
    extra = ("--api-key", API_KEY, "--items", str(items))
    with running_server(model_dir, f"sqlite:///{db}", log, *extra) as (_, base):
        yield Served(base, db, user_history(data, USER))


def shown(page: Page, testid: str) -> list[str]:
    """The item ids of the elements with this data-testid, in page order."""
    ids: list[str] = page.eval_on_selector_all(
        f'[data-testid="{testid}"]', "els => els.map(e => e.dataset.itemId)"
    )
    return ids


def wait_rendered(page: Page, after_generation: str) -> str:
    """Wait until the recommendation list was rendered again after `after_generation` and no
    refresh is in flight; returns the new generation."""
    page.wait_for_function(
        "g => { const r = document.getElementById('recs');"
        " return r.dataset.generation !== g && r.getAttribute('aria-busy') === 'false'; }",
        arg=after_generation,
        timeout=STEP_TIMEOUT_MS,
    )
    gen = page.get_attribute("#recs", "data-generation")
    assert gen is not None
    return gen


def test_page_click_updates_recommendations_and_store(served: Served) -> None:
    chromium = chromium_path()
    if chromium is None:
        pytest.skip(
            "no chromium binary found (scripts/system-deps.sh installs Debian's chromium; make test runs it)"
        )
    seen = [i for i, _ in served.history]
    assert len(seen) >= 5
    r = httpx.post(
        f"{served.base}/v1/events",
        json={"events": [{"user_id": USER, "item_id": i, "timestamp": t} for i, t in served.history]},
        headers={"X-API-Key": API_KEY},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    assert r.json() == {"accepted": len(seen), "unknown_items": 0, "shifts": []}

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page_errors: list[str] = []
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto(f"{served.base}/")
            page.wait_for_selector('#user-select[data-loaded="true"]', state="attached")
            options = page.eval_on_selector_all("#user-select option", "els => els.map(e => e.value)")
            assert USER in options

            # pick the user: history (most recent first), interests and titled recommendations
            page.select_option("#user-select", USER)
            gen = wait_rendered(page, "0")
            before = shown(page, "rec-item")
            assert len(before) == 10
            assert not set(before) & set(seen)  # seen items are excluded
            assert shown(page, "history-item") == seen[::-1]
            assert page.inner_text(f'[data-testid="rec-item"][data-item-id="{before[0]}"] .title') == (
                f"Film {before[0][1:]}"
            )
            assert (
                page.locator('[data-testid="interests-short"] [data-testid="interest-category"]').count() > 0
            )
            assert page.locator('[data-testid="rec-why"]').count() > 0  # ItemKNN explains its picks
            assert page.locator("#error").is_hidden()

            # without the key the write is refused: the API's 401 is shown, nothing changes
            clicked = before[2]
            pick = page.locator(f'[data-testid="rec-item"][data-item-id="{clicked}"] button')
            pick.click()
            page.wait_for_selector("#error:not([hidden])")
            assert "401" in page.inner_text("#error")
            assert shown(page, "rec-item") == before
            page.click("#error .dismiss")

            # with the key: the event is stored and the page re-reads everything from the API
            page.fill("#api-key", API_KEY)
            pick.click()
            gen = wait_rendered(page, gen)
            page.wait_for_function(
                "c => document.querySelector('[data-testid=history-item]')?.dataset.itemId === c", arg=clicked
            )
            after = shown(page, "rec-item")
            assert after != before
            assert clicked not in after
            assert shown(page, "history-item")[0] == clicked
            assert page.locator("#error").is_hidden()

            # anonymous session: items found by title search, recommendations from the page's history
            page.click("#anon-start")
            gen = wait_rendered(page, gen)
            assert page.get_attribute("#recs", "data-fallback") == "popular"
            assert page.locator('[data-testid="interests-empty"]').count() == 1  # nothing clicked yet
            # the fallback's scores are event counts, labelled so
            scores = page.locator("#recs .score").all_inner_texts()
            assert scores and all(re.fullmatch(r"[0-9][0-9,]* events?", t) for t in scores), scores
            page.fill("#search-query", "Film 1")
            page.click("#search-go")
            page.wait_for_selector('[data-testid="search-item"]')
            found = shown(page, "search-item")
            assert found and all(
                page.inner_text(f'[data-testid="search-item"][data-item-id="{i}"] .title').startswith(
                    "Film 1"
                )
                for i in found
            )
            picked = found[-1]
            page.click(f'[data-testid="search-item"][data-item-id="{picked}"] button')
            gen = wait_rendered(page, gen)
            assert shown(page, "history-item") == [picked]
            anon = shown(page, "rec-item")
            assert anon and picked not in anon
            assert page.get_attribute("#recs", "data-fallback") == ""
            # the session's interest panel, from its one item: Film N is in Group(N-1)//8
            short = page.eval_on_selector_all(
                '[data-testid="interests-short"] [data-testid="interest-category"]',
                "els => els.map(e => [e.dataset.category, e.querySelector('.pct').textContent])",
            )
            assert short == [[f"Group{(int(picked[1:]) - 1) // 8}", "100%"]]
            assert page_errors == []
        finally:
            browser.close()

    # the click reached the store: over the API and in the SQLite file
    user = httpx.get(f"{served.base}/v1/users/{USER}", params={"limit": 50}, timeout=30).json()
    assert user["n_events"] == len(seen) + 1
    assert [h["item_id"] for h in user["history"]] == [*seen, clicked]
    with SQLiteStore(served.db) as store:  # anonymous picks stay in the page
        assert store.history(USER).items == (*seen, clicked)


@pytest.fixture
def untitled(tmp_path: Path) -> Iterator[str]:
    """`dynrec serve` of an ALS model (item vectors) on data without titles or genres, its item
    ids like "item138": the page's categories are clusters of the item vectors, named by ids."""
    base = clustered_data(n_users=30, n_items=24, n_groups=3, per_user=10, seed=1)
    ids = Vocabulary(f"item{100 + j}" for j in range(1, 25))
    data = InteractionData.from_arrays(
        base.users, base.items, timestamps=base.timestamps, user_vocab=base.user_vocab, item_vocab=ids
    )
    model_dir = tmp_path / "model"
    tiny_model("als", data).save(model_dir)
    with running_server(model_dir, "memory://", tmp_path / "server.log") as (_, url):
        events = [{"user_id": "u1", "item_id": f"item{100 + j}", "timestamp": j} for j in (1, 2, 9, 17)]
        assert httpx.post(f"{url}/v1/events", json={"events": events}, timeout=30).status_code == 200
        yield url


def test_page_without_titles_shows_ids_once_and_full_cluster_names(untitled: str) -> None:
    chromium = chromium_path()
    if chromium is None:
        pytest.skip(
            "no chromium binary found (scripts/system-deps.sh installs Debian's chromium; make test runs it)"
        )
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page.goto(f"{untitled}/?user=u1")
            wait_rendered(page, "0")
            # an item without a title: its id once (not "item item101 #item101")
            first = page.locator('[data-testid="history-item"]').first
            assert first.inner_text().splitlines()[0] == "item117"
            assert first.locator(".id").count() == 0
            rec = page.locator('[data-testid="rec-item"] .pick').first
            assert re.fullmatch(r"item1[0-9]{2}", rec.inner_text())
            # clusters named in full: the whole name shown (wrapped), nothing cut off
            names = page.eval_on_selector_all(
                '[data-testid="interest-category"]',
                "els => els.map(e => { const n = e.querySelector('.name');"
                " return [e.dataset.category, n.textContent, n.title, n.scrollWidth <= n.clientWidth]; })",
            )
            assert names and "clusters" in page.inner_text("#interests")
            for category, text, tooltip, fits in names:
                assert re.fullmatch(r"cluster \d+: item1\d\d(, item1\d\d){0,2}", category)
                assert text == tooltip == category and fits, (category, text)
            assert max(len(n[0]) for n in names) > 30, names  # one longer than its column: wrapped
        finally:
            browser.close()
