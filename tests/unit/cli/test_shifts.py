"""Interest shifts through the jobs and the CLI: the calibration saved with a trained (and resumed)
model, and ``dynrec shifts MODEL_DIR --events FILE`` on tiny models trained here — two item groups,
users who stay in theirs, and a replay file with a planted change of group (known answer)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from dynrec import jobs
from dynrec.cli.main import app
from dynrec.data.events import Event
from dynrec.jobs.catalogue import add_items
from dynrec.jobs.recommend import seed_store
from dynrec.models import registry
from dynrec.models.base import Recommender
from dynrec.online.session import OnlineRecommender
from dynrec.online.shift_calibration import SHIFT_FILE, load_calibration, save_calibration
from dynrec.online.shifts import ShiftCalibration
from dynrec.online.store import InMemoryStore
from tests.unit.jobs.test_items import ToyEncoder, write_events, write_items

runner = CliRunner()

HISTORY = 12  # training events per user
CHANGE = 10  # z's events in the file: CHANGE in group a, then group b


def cli(*args: str) -> tuple[int, str, str]:
    r = runner.invoke(app, list(args))
    return r.exit_code, r.stdout, r.stderr


def group_items(g: str, rng: np.random.Generator, n: int) -> list[str]:
    """`n` distinct items of group `g` (``a1``..``a12`` or ``b1``..``b12``) in random order."""
    return [f"{g}{j}" for j in rng.permutation(np.arange(1, 13))[:n]]


def two_groups(root: Path) -> tuple[Path, Path]:
    """(events of 40 users who each stay in their item group, a or b, but for one event of the
    other group; titles of the items)."""
    rng = np.random.default_rng(0)
    rows = ["user_id,item_id,timestamp"]
    for u in range(40):
        own, other = "ab"[u % 2], "ba"[u % 2]
        items = group_items(own, rng, HISTORY)
        items[int(rng.integers(HISTORY))] = group_items(other, rng, 1)[0]
        rows += [f"u{u},{i},{1000 * u + t}" for t, i in enumerate(items)]
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    titles = ["item_id,title", *(f"{g}{j},{g.upper()} item {j}" for g in "ab" for j in range(1, 13))]
    (root / "titles.csv").write_text("\n".join(titles) + "\n")
    return root / "train.csv", root / "titles.csv"


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """als (item vectors; titles, no genres: shifts named by titles) and itemknn (no vectors: the
    items' genres alpha / beta are the space), trained on 40 users who each stay in their item
    group (a or b)."""
    root = tmp_path_factory.mktemp("shift-models")
    train, titles = two_groups(root)
    ids = [(g, j) for g in "ab" for j in range(1, 13)]
    genres = ["item_id,title,genres", *(f"{g}{j},{g}{j},{'alpha' if g == 'a' else 'beta'}" for g, j in ids)]
    (root / "genres.csv").write_text("\n".join(genres) + "\n")
    prepared = jobs.prepare(str(train))
    jobs.train("als", prepared, out=root / "als", items=titles, overrides={"embedding_dim": "8"})
    jobs.train("itemknn", prepared, out=root / "knn", items=root / "genres.csv")
    return {"als": root / "als", "knn": root / "knn", "train": root / "train.csv"}


def _replay_rows() -> list[tuple[str, str, int]]:
    """z (unknown to the model): CHANGE events in group a, then 8 in group b; u0 (trained in group
    a): 6 events in group b."""
    rng = np.random.default_rng(1)
    z = group_items("a", rng, CHANGE) + group_items("b", rng, 8)
    u0 = group_items("b", rng, 6)
    return [("z", i, 100_000 + t) for t, i in enumerate(z)] + [
        ("u0", i, 200_000 + t) for t, i in enumerate(u0)
    ]


def _write(path: Path, rows: list[tuple[str, str, int]], extra: list[str] | None = None) -> Path:
    lines = ["user_id,item_id,timestamp", *(f"{u},{i},{t}" for u, i, t in rows), *(extra or [])]
    path.write_text("\n".join(lines) + "\n")
    return path


def _json(model: Path, events: Path, *args: str) -> dict[str, Any]:
    rc, out, err = cli("shifts", str(model), "--events", str(events), "--json", *args)
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert len(lines) == 1  # one object, nothing else on stdout
    parsed: dict[str, Any] = json.loads(lines[0])
    return parsed


def _one_by_one(
    model_dir: Path, rows: list[tuple[str, str, int]]
) -> tuple[dict[str, list[tuple[int, int]]], dict[str, int]]:
    """Per user, (position in the file, `Shift.event_index`) of each event whose observe completed
    a shift, observing the rows one at a time (already in time order) over the seeded store; and
    the users' seeded (training) history lengths."""
    store = InMemoryStore()
    seed_store(model_dir, store)
    seeded = {u: len(store.history(u)) for u in store.users()}
    online = OnlineRecommender(Recommender.load(model_dir), store)
    online.detect_shifts(load_calibration(model_dir))
    pos: dict[str, int] = {}
    out: dict[str, list[tuple[int, int]]] = {}
    for u, i, t in rows:
        for s in online.observe(Event(u, i, t)).get(u, []):
            out.setdefault(u, []).append((pos.get(u, 0), s.event_index))
        pos[u] = pos.get(u, 0) + 1
    return out, seeded


# ---- the calibration saved with the model --------------------------------------------------------


def test_training_saves_the_calibration(models: dict[str, Path]) -> None:
    als, knn = load_calibration(models["als"]), load_calibration(models["knn"])
    assert als is not None and als.space == "item vectors"
    assert knn is not None and knn.space == "categories"
    # each user's next event is in their own group, a random event is in either: far apart
    assert als.same < als.reference < als.random and als.threshold > 0
    # categories: the next event's category is the user's own (distance 0), k halfway to a random one
    assert knn.same == 0.0 and knn.random > 0.4 and knn.reference == pytest.approx(knn.random / 2)


def test_a_model_without_a_space_saves_none_and_says_why(
    models: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "knn-plain"
    (out).mkdir()
    (out / SHIFT_FILE).write_text("{}")  # an earlier model's: removed with the new weights
    jobs.train("itemknn", jobs.prepare(str(models["train"])), out=out)  # no genres, no vectors
    assert not (out / SHIFT_FILE).exists()
    assert "no interest-shift calibration for itemknn" in caplog.text and "no item vectors" in caplog.text


def test_resume_rewrites_the_calibration(models: dict[str, Path], tmp_path: Path) -> None:
    new = _write(
        tmp_path / "new.csv",
        [(f"n{k}", f"b{j}", 300_000 + 20 * k + j) for k in range(5) for j in range(1, 13)],
    )
    out = tmp_path / "resumed"
    rc, _, err = cli("train", "--resume", str(models["als"]), "--events", str(new), "--out", str(out))
    assert rc == 0, err
    before, after = load_calibration(models["als"]), load_calibration(out)
    assert before is not None and after is not None
    assert after.n_events == before.n_events + 5 * (12 - after.config.warmup)  # the new users' events too


def test_items_added_in_place_keep_the_calibration(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(registry.MODELS, "toytext", "tests.unit.jobs.test_items:ToyText")
    out, enc = tmp_path / "m", ToyEncoder()
    jobs.train(
        "toytext",
        jobs.prepare(str(write_events(tmp_path))),
        out=out,
        items=write_items(tmp_path),
        encoder=enc,
    )
    cal = ShiftCalibration(0.5, 1.0, 0.2, 0.8, 100, "item vectors")
    save_calibration(out, cal)
    new = tmp_path / "new.csv"
    new.write_text("item_id,title,tags,text\nx1,Rocket,scifi,space space space\n")
    assert add_items(out, new, encoder=enc).added == ("x1",)
    assert load_calibration(out) == cal  # same constants for the grown catalogue


# ---- dynrec shifts ----------------------------------------------------------------------------------


def test_json_keys_and_the_planted_change(models: dict[str, Path], tmp_path: Path) -> None:
    rows = _replay_rows()
    got = _json(models["als"], _write(tmp_path / "replay.csv", rows))
    assert set(got) >= {"shifts", "n_users", "n_events"}
    assert got["n_users"] == 2 and got["n_events"] == len(rows) and got["calibration"] == "shifts.json"
    by_user: dict[str, list[dict[str, Any]]] = {}
    for s in got["shifts"]:
        assert set(s) == {"user_id", "event_index", "timestamp", "score", "from", "to"}
        by_user.setdefault(s["user_id"], []).append(s)
    # z changed group at its event CHANGE: flagged within 5 events, named by titles a -> b
    (z,) = by_user["z"]
    assert CHANGE <= z["event_index"] <= CHANGE + 5
    assert z["timestamp"] == 100_000 + z["event_index"]
    assert z["from"] and all(n.startswith("A item") for n in z["from"])
    assert z["to"] and all(n.startswith("B item") for n in z["to"])
    # u0 trained in group a: its first file events in b shift it; the index counts file events only
    u0 = by_user["u0"][0]
    assert u0["event_index"] <= 5 and u0["timestamp"] == 200_000 + u0["event_index"]
    # the same positions as observing the file one event at a time; the detector's own index
    # counts the training history too
    one, seeded = _one_by_one(models["als"], rows)
    assert [s["event_index"] for s in by_user["z"]] == [p for p, _ in one["z"]]
    assert 0 < seeded["u0"] < HISTORY and "z" not in seeded  # the training part of the split
    assert [(s["event_index"], seeded["u0"] + s["event_index"]) for s in by_user["u0"]] == one["u0"]


def test_categories_space_names_categories(models: dict[str, Path], tmp_path: Path) -> None:
    got = _json(models["knn"], _write(tmp_path / "replay.csv", _replay_rows()))
    z = [s for s in got["shifts"] if s["user_id"] == "z"]
    assert [(s["from"], s["to"]) for s in z] == [(["alpha"], ["beta"])]
    assert CHANGE <= z[0]["event_index"] <= CHANGE + 5 and got["space"] == "categories"


def test_invalid_rows_unknown_items_order_and_strict(models: dict[str, Path], tmp_path: Path) -> None:
    rows = _replay_rows()
    clean = _json(models["als"], _write(tmp_path / "clean.csv", rows))
    # two invalid rows (reported by line and field, skipped), an unknown item before z's events
    # (counted, skipped, but one of z's events in the file), the rows in reverse order
    bad = _write(tmp_path / "bad.csv", [("z", "nope", 99_999), *rows][::-1], [",a1,5", "z,a2,soon"])
    rc, out, err = cli("shifts", str(models["als"]), "--events", str(bad), "--json")
    assert rc == 0, err
    got = json.loads(out)
    assert got["n_invalid_rows"] == 2 and got["n_unknown_items"] == 1 and got["n_events"] == len(rows) + 1
    n = len(rows) + 3  # the first invalid row's line: after the header, the rows and the unknown item's
    assert f"bad.csv:{n}: field 'user_id'" in err and f"bad.csv:{n + 1}: field 'timestamp'" in err
    assert "1 events whose item the model does not know" in err

    def shifted(s: dict[str, Any]) -> dict[str, Any]:
        return {**s, "event_index": s["event_index"] + (s["user_id"] == "z")}

    assert got["shifts"] == [shifted(s) for s in clean["shifts"]]
    rc, out, err = cli("shifts", str(models["als"]), "--events", str(bad), "--strict", "--json")
    assert rc == 1 and out == "" and f"line {n}" in err and "user_id" in err and "Traceback" not in err


def test_human_table_and_calibration_without_shifts_json(models: dict[str, Path], tmp_path: Path) -> None:
    events = _write(tmp_path / "replay.csv", _replay_rows())
    rc, out, err = cli("shifts", str(models["knn"]), "--events", str(events))
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["user", "event", "time", "(UTC)", "score", "from", "->", "to"]
    assert any(line.startswith("z ") and "alpha -> beta" in line and "1970-01-02" in line for line in lines)
    assert lines[-1].startswith(f"{len(lines) - 3} interest shifts in 24 events of 2 users")
    assert lines[-1].endswith("(detected in categories, calibration: shifts.json)")
    bare = tmp_path / "knn"
    bare.mkdir()
    for f in models["knn"].iterdir():
        if f.name != SHIFT_FILE:
            (bare / f.name).write_bytes(f.read_bytes())
    rc, out2, err = cli("shifts", str(bare), "--events", str(events))
    assert (
        rc == 0
        and "no shifts.json" in err
        and "calibrated the shift detector on the training histories" in err
    )
    # a calibration made now on the same histories (the store's order: other random draws)
    assert any(line.startswith("z ") and "alpha -> beta" in line for line in out2.splitlines())
    assert out2.splitlines()[-1].endswith("(detected in categories, calibration: training histories)")
