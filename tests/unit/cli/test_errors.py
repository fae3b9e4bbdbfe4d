"""The trust reproductions through the CLI: each gives a clear one-line error or the right answer,
and no traceback reaches a user."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from dynrec.cli.main import app
from dynrec.models.base import Recommender
from dynrec.online.session import OnlineRecommender
from dynrec.online.store import SQLiteStore
from tests.conftest import data_dir
from tests.unit.jobs.test_provenance import write_events

runner = CliRunner()


def cli(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


def last_json(out: str) -> dict[str, object]:
    parsed: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    return parsed


@pytest.fixture(scope="module")
def ml100k_itemknn(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (data_dir() / "ml-100k" / "u.data").exists():
        pytest.skip("ml-100k not available")
    out = tmp_path_factory.mktemp("ml100k") / "m"
    rc, _, err = cli("train", "itemknn", "--dataset", "ml-100k", "--out", str(out), "--json")
    assert rc == 0, err
    return out


def test_resume_with_unrelated_event_keeps_ml100k_metrics(ml100k_itemknn: Path, tmp_path: Path) -> None:
    rc, out, err = cli("evaluate", str(ml100k_itemknn), "--json")
    assert rc == 0, err
    before = last_json(out)["HR@10"]
    assert before == pytest.approx(0.1156, abs=5e-4)
    new = tmp_path / "new.csv"
    new.write_text("user_id,item_id,timestamp\nzz,1,1\n")
    resumed = tmp_path / "resumed"
    rc, out, err = cli("train", "--resume", str(ml100k_itemknn), "--events", str(new), "--out", str(resumed))
    assert rc == 0, err
    rc, out, err = cli("evaluate", str(resumed), "--json")
    assert rc == 0, err
    assert last_json(out)["HR@10"] == before  # before the fix: 0.1357 (test targets replayed)
    # a resume whose events are test targets: evaluate refuses, saying why
    leak = tmp_path / "leak.csv"
    leak.write_text("user_id,item_id,timestamp\n196,110,881252305\n")  # user 196's last rating
    rc, _, err = cli(
        "train", "--resume", str(ml100k_itemknn), "--events", str(leak), "--out", str(tmp_path / "l")
    )
    assert rc == 0, err
    rc, _, err = cli("evaluate", str(tmp_path / "l"))
    assert rc == 1 and "included 1 test target(s) of its 'loo' split" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("k", ["0", "-1"])
def test_bad_cutoff_is_a_clear_error(ml100k_itemknn: Path, k: str) -> None:
    for cmd in (["evaluate", str(ml100k_itemknn)], ["recommend", str(ml100k_itemknn), "--user", "1"]):
        rc, _, err = cli(*cmd, "--k", k)
        assert rc == 1 and err.strip() == f"error: k must be an integer >= 1, got {k}"


def test_cutoff_above_catalogue_is_clamped(ml100k_itemknn: Path) -> None:
    rc, out, err = cli("evaluate", str(ml100k_itemknn), "--k", "5000", "--json")
    assert rc == 0, err
    metrics = last_json(out)
    assert metrics["Coverage@5000"] == 1.0 and metrics["Precision@5000"] == pytest.approx(
        metrics["HR@5000"] / 5000
    )
    rc, out, err = cli("recommend", str(ml100k_itemknn), "--user", "1", "--k", "5000", "--json")
    assert rc == 0, err
    items = last_json(out)["items"]
    assert isinstance(items, list) and 1000 < len(items) < 1682 and len(set(items)) == len(items)


def test_changed_dataset_is_refused_and_relative_paths_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    csv = write_events(data / "events.csv")
    monkeypatch.chdir(data)
    rc, _, err = cli("train", "itemknn", "--dataset", "events.csv", "--out", "../m", "--json")
    assert rc == 0, err
    monkeypatch.chdir(tmp_path)  # another directory: the recorded path is absolute
    rc, out, err = cli("evaluate", "m", "--json")
    assert rc == 0, err
    rc, out, err = cli("recommend", "m", "--user", "u1", "--k", "3", "--json")
    assert rc == 0 and len(last_json(out)["items"]) == 3  # type: ignore[arg-type]
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([*lines[:-1], lines[-1].rsplit(",", 1)[0] + ",999999"]) + "\n")
    rc, _, err = cli("evaluate", "m")
    assert rc == 1
    assert f"error: {csv} content changed since training: events hash" in err and "retrain" in err


def test_empty_data_is_refused_and_nothing_saved(tmp_path: Path) -> None:
    header = tmp_path / "header.csv"
    header.write_text("user_id,item_id,timestamp\n")
    rc, _, err = cli("train", "pop", "--dataset", str(header), "--out", str(tmp_path / "h"))
    assert rc == 1 and "no valid events" in err and not (tmp_path / "h").exists()
    good = write_events(tmp_path / "good.csv")
    rc, _, err = cli("train", "pop", "--dataset", str(good), "--out", str(tmp_path / "m"))
    assert rc == 0, err
    saved = {f.name: f.read_bytes() for f in (tmp_path / "m").iterdir()}
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,timestamp\n,i1,5\n")
    rc, _, err = cli("train", "--resume", str(tmp_path / "m"), "--events", str(bad), "--strict")
    assert rc == 1 and "line 2" in err and "user_id" in err
    rc, _, err = cli("train", "--resume", str(tmp_path / "m"), "--events", str(bad))
    assert rc == 1 and "no valid events" in err
    assert {f.name: f.read_bytes() for f in (tmp_path / "m").iterdir()} == saved


def test_duplicate_rows_are_counted(tmp_path: Path) -> None:
    f = write_events(tmp_path / "dups.csv")
    lines = f.read_text().splitlines()
    f.write_text("\n".join([*lines, *lines[1:4]]) + "\n")
    rc, out, err = cli("data", "stats", str(f), "--json")
    assert rc == 0, err
    assert last_json(out)["n_duplicate_rows"] == 3 and last_json(out)["n_events"] == 72
    rc, out, err = cli("train", "pop", "--dataset", str(f), "--out", str(tmp_path / "m"), "--json")
    assert rc == 0 and last_json(out)["n_duplicate_rows"] == 3


def test_no_traceback_reaches_a_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dynrec.jobs.recommend as rec

    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(rec, "recommend_for", boom)
    rc, _, err = cli("recommend", str(tmp_path), "--user", "u")
    assert rc == 1
    assert err.strip() == "error: RuntimeError: boom (run with --debug for the traceback)"
    r = runner.invoke(app, ["--debug", "recommend", str(tmp_path), "--user", "u"])
    assert r.exit_code == 1 and isinstance(r.exception, RuntimeError)
    rc, _, err = cli("evaluate", str(tmp_path / "missing-model"))  # a DynrecError: one line
    assert rc == 1 and err.startswith("error: ") and "Traceback" not in err
    rc, _, _ = cli("evaluate", "--no-such-option")  # usage errors keep click's code
    assert rc == 2


def test_store_seed_matches_recommend_user(tmp_path: Path) -> None:
    csv = write_events(tmp_path / "events.csv")
    rc, _, err = cli("train", "itemknn", "--dataset", str(csv), "--out", str(tmp_path / "m"))
    assert rc == 0, err
    db = tmp_path / "store.db"
    rc, out, err = cli("store", "seed", str(tmp_path / "m"), "--store", f"sqlite:///{db}", "--json")
    assert rc == 0, err
    assert last_json(out)["events"] == 12 * 4  # each user's 6 events less validation and test
    with SQLiteStore(db) as store:
        online = OnlineRecommender(Recommender.load(tmp_path / "m"), store)
        for user in ("u0", "u5", "u11"):
            rc, out, err = cli("recommend", str(tmp_path / "m"), "--user", user, "--k", "4", "--json")
            assert rc == 0, err
            got = last_json(out)
            rec = online.recommend(user, 4)
            assert got["items"] == rec.items
            np.testing.assert_allclose(got["scores"], rec.scores, rtol=1e-5)  # type: ignore[arg-type]
    rc, _, err = cli("store", "seed", str(tmp_path / "m"), "--store", str(db))
    assert rc == 1 and "already holds events" in err
