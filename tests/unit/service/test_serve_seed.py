"""Serving a model seeds a new store with its training histories (issue 25 item 1): known users
get the model's recommendations at once, the same items `dynrec recommend --user` gives; a store
that holds some of the users or already serves versions is left as it is; ``--no-seed`` is off."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from dynrec import jobs
from dynrec.jobs.recommend import seed_new_store
from dynrec.online.store import open_store
from dynrec.service import ServiceSettings, create_app
from dynrec.service.serve import store_shown
from tests.conftest import clustered_data
from tests.serve_process import itemknn_dir

N_USERS = 24


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = clustered_data(n_users=N_USERS, n_items=20, n_groups=2, per_user=8, seed=3)
    return itemknn_dir(tmp_path_factory.mktemp("seed-model"), data)


def _train_events(model_dir: Path) -> int:
    """Events in the model's training histories (what a seeded store holds)."""
    from dynrec.jobs.history import training_history
    from dynrec.models.base import Recommender

    return training_history(Recommender.load(model_dir)).data.n_events


def test_the_app_seeds_a_new_store_and_known_users_get_the_model(model_dir: Path) -> None:
    with TestClient(create_app(ServiceSettings(str(model_dir), store_url="memory://", seed=True))) as client:
        seeding = client.app.state.runtime.seeding  # type: ignore[attr-defined]
        assert seeding.seeded is not None
        assert (seeding.seeded.users, seeding.seeded.events) == (N_USERS, _train_events(model_dir))
        line = seeding.line("memory://")
        assert line == (
            f"seeded the store memory:// with the training histories of {N_USERS} users "
            f"({_train_events(model_dir)} events), so they get personalised recommendations "
            "(--no-seed: leave the store as it is)"
        )
        for user in ("u1", "u7", "u24"):
            got = client.get(f"/v1/users/{user}/recommendations?k=5").json()
            want = jobs.recommend_for(model_dir, user=user, k=5)
            assert got["fallback"] is None
            assert [x["item_id"] for x in got["items"]] == want.items


def test_without_seed_known_users_get_the_popular_fallback(model_dir: Path) -> None:
    with TestClient(create_app(ServiceSettings(str(model_dir), store_url="memory://"))) as client:
        seeding = client.app.state.runtime.seeding  # type: ignore[attr-defined]
        assert seeding.seeded is None and seeding.line("memory://") is None
        assert client.get("/v1/users/u1/recommendations?k=5").json()["fallback"] == "popular"


def test_a_store_is_seeded_once_and_a_served_one_never(model_dir: Path, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'events.db'}"
    settings = ServiceSettings(str(model_dir), store_url=url, seed=True)
    with TestClient(create_app(settings)) as client:
        assert client.app.state.runtime.seeding.seeded.users == N_USERS  # type: ignore[attr-defined]
    with TestClient(create_app(settings)) as client:  # restarted: served before, left as it is
        again = client.app.state.runtime.seeding  # type: ignore[attr-defined]
        assert again.seeded is None and again.quiet and again.line(store_shown(url)) is None
    store = open_store(url)
    try:
        assert store.event_seq() == _train_events(model_dir)  # not doubled
    finally:
        store.close()


def test_seed_new_store_leaves_stores_with_the_users_and_says_why_it_could_not(
    model_dir: Path, tmp_path: Path
) -> None:
    store = open_store("memory://")
    jobs.seed_store(model_dir, store)
    held = seed_new_store(model_dir, store)
    assert (
        held.seeded is None and held.quiet and held.skipped == "the store already holds events of user 'u1'"
    )
    # a model whose training data is gone: the service still starts, and the line says why
    moved = tmp_path / "moved"
    moved.mkdir()
    for f in model_dir.iterdir():
        if f.is_file():
            (moved / f.name).write_bytes(f.read_bytes())
    (model_dir.parent / "events.csv").rename(tmp_path / "elsewhere.csv")
    try:
        gone = seed_new_store(moved, open_store("memory://"))
    finally:
        (tmp_path / "elsewhere.csv").rename(model_dir.parent / "events.csv")
    assert gone.seeded is None and not gone.quiet
    line = gone.line("memory://")
    assert line is not None and line.startswith(
        "the store memory:// was not seeded: the model's training histories could not be read ("
    )
    assert "events.csv" in line and line.endswith("known users get the popular fallback")


def test_settings_carry_seed_through_the_environment() -> None:
    s = ServiceSettings(model_dir="/m", seed=True)
    assert ServiceSettings.from_env(s.to_env()).seed is True
    assert ServiceSettings.from_env(ServiceSettings(model_dir="/m").to_env()).seed is False
    assert store_shown("sqlite:////tmp/x/events.db") == "/tmp/x/events.db"
    assert store_shown("redis://:secret@host:6379/0") == "redis://:***@host:6379/0"
