"""End to end on ml-100k (marked slow): the newcomer's path through the page, in Debian's Chromium
driven by Playwright against a real `dynrec serve` (which seeds its new SQLite store with the
model's training histories), and the API docs working offline.

The path: load the page -> pick user 42 from the list (numeric ids in numeric order) -> find and
click three films of a genre absent from their history -> the short-term interest panel now shows
that genre (with the share `dynrec profile --store` computes, rounded the same way) and the
recommendations change. The page at that moment is saved as a PNG: to ``docs/page.png`` (the
README's picture) when ``DYNREC_UPDATE_SCREENSHOT=1``, else to the test's temporary folder.
"""

from __future__ import annotations

import os
import struct
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Page, ViewportSize, sync_playwright

from dynrec import jobs
from dynrec.jobs.history import training_history
from dynrec.jobs.items import ItemInfo, read_item_info
from dynrec.models.base import Recommender
from dynrec.online.interests import percent
from dynrec.online.store import SQLiteStore
from tests.e2e.test_page import BROWSER_ARGS, STEP_TIMEOUT_MS, chromium_path, shown, wait_rendered
from tests.serve_process import running_server

pytestmark = pytest.mark.slow

USER = "42"
CLICKS = 3
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "page.png"
VIEWPORT: ViewportSize = {"width": 1000, "height": 860}


@dataclass(frozen=True)
class Served:
    base: str
    db: Path
    model_dir: Path
    info: ItemInfo
    history: list[str]  # USER's training history (what the store is seeded with), oldest first
    popularity: Counter[str]  # training events per item


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`dynrec serve` of an ItemKNN (recency-weighted, so recent clicks count: as the demo's
    sequence models make them) trained on ml-100k in seconds; a new SQLite store, seeded."""
    chromium = chromium_path()
    if chromium is None:
        pytest.skip(
            "no chromium binary found (scripts/system-deps.sh installs Debian's chromium; make test runs it)"
        )
    root = tmp_path_factory.mktemp("newcomer")
    model_dir = root / "model"
    jobs.train("itemknn", jobs.prepare("ml-100k"), config={"recency_half_life": 2.0}, out=model_dir)
    hist = training_history(Recommender.load(model_dir)).data
    u = hist.user_vocab.index(USER)
    mine = hist.item_vocab.to_ids(hist.items[int(hist.indptr[u]) : int(hist.indptr[u + 1])])
    popularity = Counter(hist.item_vocab.to_ids(hist.items))
    db = root / "state.db"
    with running_server(model_dir, f"sqlite:///{db}", root / "server.log") as (_, base):
        yield Served(base, db, model_dir, read_item_info(model_dir), mine, popularity)


def _tags(info: ItemInfo, item: str) -> list[str]:
    return [str(t) for t in (info.get(item) or {}).get("tags") or []]


def newcomer_picks(s: Served) -> tuple[str, list[str]]:
    """A genre absent from USER's history (the one with the most films; not "unknown") and its
    CLICKS most watched films that are mostly of it (at most one other genre): well-known titles,
    as a newcomer would pick (for ml-100k: Film-Noir; Blade Runner, The Maltese Falcon, The
    Manchurian Candidate)."""
    had = {t for i in s.history for t in _tags(s.info, i)}
    by_genre = Counter(t for i in s.info for t in _tags(s.info, i) if t not in had and t != "unknown")
    genre = by_genre.most_common(1)[0][0]
    films = [i for i in s.info if genre in _tags(s.info, i) and len(_tags(s.info, i)) <= 2]
    films.sort(key=lambda i: (-s.popularity[i], i))
    return genre, films[:CLICKS]


def panel(page: Page, window: str) -> dict[str, str]:
    """The interest panel's categories of `window` ("short"/"long"): name -> percentage shown."""
    rows: list[list[str]] = page.eval_on_selector_all(
        f'[data-testid="interests-{window}"] [data-testid="interest-category"]',
        "els => els.map(e => [e.dataset.category, e.querySelector('.pct').textContent])",
    )
    return dict((name, pct) for name, pct in rows)


def shown_as_cli(profile: dict[str, object], window: str) -> dict[str, str]:
    """`dynrec profile --json`'s shares of `window` as the page should print them."""
    tags = profile[f"{window}_term"]
    assert isinstance(tags, dict)
    return {str(t): f"{percent(float(s))}%" for t, s in tags["tags"]}


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", head[16:24])
    return int(width), int(height)


def save_small(png: Path, to: Path) -> None:
    """`png` as a 128-colour PNG at `to` (the page's flat colours survive; ~70 KB, not ~210 KB)."""
    from PIL import Image  # Pillow comes with the plots extra (matplotlib), as `make install` sets up

    with Image.open(png) as im:
        im.convert("RGB").quantize(128).save(to, optimize=True)


def test_newcomer_path(served: Served, tmp_path: Path) -> None:
    genre, films = newcomer_picks(served)
    assert len(films) == CLICKS and not any(genre in _tags(served.info, i) for i in served.history)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(STEP_TIMEOUT_MS)
            page_errors: list[str] = []
            page.on("pageerror", lambda e: page_errors.append(str(e)))
            page.goto(f"{served.base}/")
            page.wait_for_selector('#user-select[data-loaded="true"]', state="attached")
            options = page.eval_on_selector_all("#user-select option", "els => els.map(e => e.value)")
            assert options[1:4] == ["1", "2", "3"] and USER in options  # numbers in numeric order

            # pick user 42: their history, interests (as `dynrec profile` computes them) and list
            page.select_option("#user-select", USER)
            gen = wait_rendered(page, "0")
            before = shown(page, "rec-item")
            assert len(before) == 10 and not set(before) & set(served.history)
            cli_before = jobs.profile_for(served.model_dir, user=USER).to_json()
            assert panel(page, "long") == shown_as_cli(cli_before, "long")
            assert panel(page, "short") == shown_as_cli(cli_before, "short")
            assert genre not in panel(page, "short") and genre not in panel(page, "long")

            # three films of the absent genre, found by title and clicked
            for film in films:
                title = str(served.info[film]["title"])
                page.fill("#search-query", title)
                page.click("#search-go")
                hit = f'[data-testid="search-item"][data-item-id="{film}"] button'
                page.wait_for_selector(hit)
                page.click(hit)
                gen = wait_rendered(page, gen)
                page.wait_for_function(
                    "c => document.querySelector('[data-testid=history-item]')?.dataset.itemId === c",
                    arg=film,
                )
            assert shown(page, "history-item")[:CLICKS] == films[::-1]

            # the interest panel shows the new genre with the share `dynrec profile --store` gives
            with SQLiteStore(served.db) as store:
                cli_after = jobs.profile_for(served.model_dir, user=USER, store=store).to_json()
            short = panel(page, "short")
            assert short == shown_as_cli(cli_after, "short") and genre in short
            want = sum(1 / len(_tags(served.info, f)) for f in films) / 10  # of the last 10 events
            assert short[genre] == f"{percent(want)}%"
            assert panel(page, "long") == shown_as_cli(cli_after, "long")

            # ... and the recommendations changed: none clicked, the new genre among them
            after = shown(page, "rec-item")
            assert len(after) == 10 and after != before and not set(after) & set(films)
            assert not any(genre in _tags(served.info, i) for i in before)
            assert any(genre in _tags(served.info, i) for i in after)
            assert page.locator("#error").is_hidden() and page_errors == []

            assert "null" not in page.inner_text("#interests").split()  # no stray "null" child
            page.mouse.move(0, 0)  # no hover highlight in the picture
            page.evaluate("window.scrollTo(0, 0)")
            out = tmp_path / "page.png"
            page.screenshot(path=str(out))
            assert png_size(out) == (VIEWPORT["width"], VIEWPORT["height"])
            if os.environ.get("DYNREC_UPDATE_SCREENSHOT") == "1":
                save_small(out, SCREENSHOT)
        finally:
            browser.close()


def test_api_docs_render_offline(served: Served) -> None:
    """Swagger UI renders the service's API from the service's own files: no request leaves it."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium_path(), headless=True, args=BROWSER_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(STEP_TIMEOUT_MS)
            outside: list[str] = []
            page.on("request", lambda r: None if r.url.startswith(served.base) else outside.append(r.url))
            page.goto(f"{served.base}/docs")
            page.wait_for_selector(".swagger-ui .info .title")
            assert page.inner_text(".swagger-ui .info .title").startswith("dynrec")
            page.wait_for_selector('[data-path="/v1/interests"]')  # the routes are listed
            assert outside == []
        finally:
            browser.close()
