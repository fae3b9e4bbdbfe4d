"""Interest shifts in the HTTP service (FastAPI TestClient, SQLite store) on a tiny ALS model trained
here on two item groups: the click that completes a shift answers it, the user routes carry it, the
metrics count it; it survives a restart (another app, and an `OnlineRecommender` of its own, on
the same file), the stored detector state equals its recomputation from the history, a deletion
removes it; a version without ``shifts.json`` calibrates on the store's histories; an update
publishes its calibration."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from dynrec import jobs
from dynrec.jobs.recommend import seed_store
from dynrec.models.base import Recommender
from dynrec.online.session import OnlineRecommender
from dynrec.online.shift_calibration import SHIFT_FILE, load_calibration
from dynrec.online.shift_state import split_shift_state
from dynrec.online.store import SQLiteStore
from dynrec.service import ServiceSettings, create_app
from tests.unit.cli.test_shifts import CHANGE, group_items, two_groups

KEY = "s3cret"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("service-shifts")
    train, titles = two_groups(root)
    jobs.train(
        "als", jobs.prepare(str(train)), out=root / "als", items=titles, overrides={"embedding_dim": "8"}
    )
    return root / "als"


@pytest.fixture
def model_dir(trained: Path, tmp_path: Path) -> Path:
    """A copy of the trained model: a served root gets versions written into it."""
    return Path(shutil.copytree(trained, tmp_path / "root"))


def _settings(model_dir: Path, tmp_path: Path) -> ServiceSettings:
    return ServiceSettings(
        model_dir=str(model_dir), store_url=f"sqlite:///{tmp_path / 'store.db'}", api_key=KEY
    )


def _clicks(
    c: TestClient, user: str, items: list[str], t0: int = 1000
) -> list[tuple[int, list[dict[str, Any]]]]:
    """Post `items` one event at a time (timestamps t0, t0+1, ...); (position, shifts) of the
    events whose answer names shifts."""
    out = []
    for t, item in enumerate(items):
        body = {"events": [{"user_id": user, "item_id": item, "timestamp": t0 + t}]}
        r = c.post("/v1/events", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
        if r.json()["shifts"]:
            out.append((t, r.json()["shifts"]))
    return out


def _sample(scrape: str, name: str) -> float:
    return next(float(line.split()[-1]) for line in scrape.splitlines() if line.startswith(name + " "))


def _planted() -> list[str]:
    rng = np.random.default_rng(1)
    return group_items("a", rng, CHANGE) + group_items("b", rng, 8)


def test_a_click_that_completes_a_shift_and_where_it_shows(model_dir: Path, tmp_path: Path) -> None:
    settings = _settings(model_dir, tmp_path)
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/users/z").status_code == 404
        ((t, (shift,)),) = _clicks(c, "z", _planted())  # one shift, answered by the click that made it
        assert CHANGE <= t <= CHANGE + 5
        assert shift["user_id"] == "z" and shift["when"] == 1000 + t and shift["event_index"] == t
        assert all(n.startswith("A item") for n in shift["from"]) and shift["from"]
        assert all(n.startswith("B item") for n in shift["to"]) and shift["to"]
        expected = {k: v for k, v in shift.items() if k != "user_id"}
        user = c.get("/v1/users/z").json()
        assert user["last_shift"] == expected and user["shifts"] == [expected]
        profile = c.get("/v1/users/z/profile").json()
        assert profile["last_shift"] == expected and profile["shifts"] == [expected]
        assert _sample(c.get("/metrics").text, "dynrec_interest_shifts_total") == 1
        c.post(
            "/v1/events", json={"events": [{"user_id": "y", "item_id": "a1", "timestamp": 5}]}, headers=AUTH
        )
        assert c.get("/v1/users/y").json()["last_shift"] is None
    # a restart (another app on the same SQLite file) shows the same shifts
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/users/z").json()["shifts"] == [expected]
    # and so does an OnlineRecommender of its own on the file, with the version's calibration
    db = tmp_path / "store.db"
    online = OnlineRecommender(Recommender.load(model_dir), SQLiteStore(db))
    online.detect_shifts(load_calibration(model_dir))
    (mine,) = online.shifts("z")
    assert (mine.event_index, mine.timestamp) == (t, 1000 + t) and mine.score == pytest.approx(shift["score"])
    # the detector state the service stored equals its recomputation from the history
    stored = SQLiteStore(db).get_state("z")
    assert stored is not None and stored.version == online.version and stored.n_events == len(_planted())
    _, det = split_shift_state(online.adapter.batch([stored.tensors]))
    hist = SQLiteStore(db).history("z")
    assert online.model.item_vocab is not None
    idx = online.model.item_vocab.lookup(hist.items, policy="skip").astype(np.int64)
    assert online.shift_detector is not None
    again = online.shift_detector.init([idx], [hist.timestamps])
    assert det.keys() == again.keys()
    for k in det:
        torch.testing.assert_close(det[k], again[k], rtol=0, atol=1e-9)


def test_deletion_removes_the_shifts(model_dir: Path, tmp_path: Path) -> None:
    settings = _settings(model_dir, tmp_path)
    with TestClient(create_app(settings)) as c:
        assert len(_clicks(c, "z", _planted())) == 1
        assert c.delete("/v1/users/z", headers=AUTH).status_code == 200
        assert c.get("/v1/users/z").status_code == 404
        assert _clicks(c, "z", ["b1"]) == []
        user = c.get("/v1/users/z").json()
        assert user["last_shift"] is None and user["shifts"] == [] and user["n_events"] == 1
    online = OnlineRecommender(Recommender.load(model_dir), SQLiteStore(tmp_path / "store.db"))
    online.detect_shifts(load_calibration(model_dir))
    assert online.shifts("z") == []


def test_a_version_without_calibration_calibrates_on_the_store(
    model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (model_dir / SHIFT_FILE).unlink()
    store = SQLiteStore(tmp_path / "store.db")
    seed_store(model_dir, store)  # the training histories: what the calibration reads now
    store.close()
    with caplog.at_level(logging.WARNING), TestClient(create_app(_settings(model_dir, tmp_path))) as c:
        assert (
            "has no shifts.json: calibrated interest-shift detection on the store's histories" in caplog.text
        )
        # another calibration (the store's users in another order draw other random events), the
        # planted change still found
        flagged = [t for t, _ in _clicks(c, "z", _planted(), t0=10**6)]
        assert any(CHANGE <= t <= CHANGE + 5 for t in flagged)


def test_an_update_publishes_its_calibration(model_dir: Path, tmp_path: Path) -> None:
    with TestClient(create_app(_settings(model_dir, tmp_path))) as c:
        _clicks(c, "z", _planted())
        r = c.post("/v1/admin/update", headers=AUTH)
        assert r.status_code == 200, r.text
        version = r.json()["model_version"]
    (vdir,) = [d for d in (model_dir / "versions").iterdir() if d.name == version]
    cal, first = load_calibration(vdir), load_calibration(model_dir)
    assert cal is not None and first is not None and cal.space == "item vectors"
    assert cal.n_events > first.n_events  # made on what the updated model learned from: z's events too


def test_a_later_version_without_calibration_reuses_the_held_one(
    model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    copy = Path(shutil.copytree(model_dir, model_dir / "copy", ignore=shutil.ignore_patterns(SHIFT_FILE)))
    assert not (copy / SHIFT_FILE).exists()
    with caplog.at_level(logging.INFO), TestClient(create_app(_settings(model_dir, tmp_path))) as c:
        r = c.post("/v1/admin/reload", json={"model_dir": "copy"}, headers=AUTH)
        assert r.status_code == 200, r.text
        rt = c.app.state.runtime  # type: ignore[attr-defined]
        assert rt.holder.version == r.json()["model_version"]
        assert rt.holder.shift_calibration == load_calibration(model_dir)  # no calibration made now
        assert "reusing an earlier version's" in caplog.text and "store's histories" not in caplog.text
        assert len(_clicks(c, "z", _planted())) == 1


def test_a_swapped_version_never_calibrates_an_update_publishes_one(
    model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (model_dir / SHIFT_FILE).unlink()
    copy = Path(shutil.copytree(model_dir, model_dir / "copy"))
    with caplog.at_level(logging.WARNING), TestClient(create_app(_settings(model_dir, tmp_path))) as c:
        rt = c.app.state.runtime  # type: ignore[attr-defined]
        assert rt.holder.shift_calibration is None  # an empty store: nothing to calibrate on
        rng = np.random.default_rng(2)
        for u in range(20):  # enough histories to calibrate on now
            _clicks(c, f"w{u}", group_items("ab"[u % 2], rng, 10))
        caplog.clear()
        assert c.post("/v1/admin/reload", json={"model_dir": "copy"}, headers=AUTH).status_code == 200
        assert rt.holder.shift_calibration is None and "not detected until a version with one" in caplog.text
        assert _clicks(c, "z", _planted()) == []
        r = c.post("/v1/admin/update", headers=AUTH)
        assert r.status_code == 200, r.text
        assert rt.holder.version == r.json()["model_version"] and rt.holder.shift_calibration is not None
    assert not (copy / SHIFT_FILE).exists()
