"""Training provenance: content hashes, what a saved model records, and the checks that use it
(evaluate refuses changed data and leaked test targets; resume never replays test targets;
`recommend --user` and a seeded online store see the same training history)."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from dynrec import jobs
from dynrec.data.io import read_events
from dynrec.errors import DynrecError
from dynrec.jobs import provenance as prov
from dynrec.models.base import Recommender
from dynrec.online.session import OnlineRecommender
from dynrec.online.store import InMemoryStore


def write_events(path: Path, n_users: int = 12, per_user: int = 6, seed: int = 0) -> Path:
    """A small CSV: each user consumes distinct items of a 15-item catalogue at increasing times."""
    rng = np.random.default_rng(seed)
    rows = ["user_id,item_id,timestamp"]
    for u in range(n_users):
        items = rng.permutation(15)[:per_user]
        rows += [f"u{u},i{i},{1000 * u + t}" for t, i in enumerate(items)]
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture
def events_csv(tmp_path: Path) -> Path:
    return write_events(tmp_path / "events.csv")


def _hr(model_dir: Path) -> float:
    return jobs.evaluate_saved(model_dir).metrics["HR@10"]


# ---- hashing -----------------------------------------------------------------------------------


def test_events_hash_ignores_formatting_but_not_content(tmp_path: Path, events_csv: Path) -> None:
    base = prov.events_hash(read_events(events_csv))
    lines = events_csv.read_text().splitlines()
    # TSV, columns reordered, users' rows interleaved differently: same content, same hash
    tsv = tmp_path / "same.tsv"
    swapped = [",".join(reversed(line.split(","))) for line in lines]
    tsv.write_text("\n".join([swapped[0], *reversed(swapped[1:])]).replace(",", "\t") + "\n")
    assert prov.events_hash(read_events(tsv)) == base
    # one timestamp changed: different hash
    changed = tmp_path / "changed.csv"
    changed.write_text("\n".join([*lines[:-1], lines[-1].rsplit(",", 1)[0] + ",99999"]) + "\n")
    assert prov.events_hash(read_events(changed)) != base


def test_events_hash_sees_reordered_order_only_history(tmp_path: Path) -> None:
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    a.write_text("user_id,item_id\nu1,x\nu1,y\nu1,z\n")
    b.write_text("user_id,item_id\nu1,z\nu1,y\nu1,x\n")  # the same items, the user's order reversed
    cols = "user=user_id,item=item_id,time="
    from dynrec.data.io import parse_columns

    ha = prov.events_hash(read_events(a, columns=parse_columns(cols)))
    hb = prov.events_hash(read_events(b, columns=parse_columns(cols)))
    assert ha != hb


def test_provenance_round_trip_and_bad_records() -> None:
    p = prov.Provenance("ml-100k", "/d/u.data", "ab" * 32, 10, "loo", None, "cd" * 32, 3)
    p2 = p.with_resume(prov.ResumedFile("/x/new.csv", "ef" * 32, 1, 0, 0))
    assert prov.Provenance.from_dict(json.loads(json.dumps(p2.to_dict()))) == p2
    with pytest.raises(DynrecError, match="unknown field.*'bogus'"):
        prov.Provenance.from_dict({**p.to_dict(), "bogus": 1})
    with pytest.raises(DynrecError, match="split 'random' is not one of loo, time"):
        prov.Provenance.from_dict({**p.to_dict(), "split": "random"})


# ---- what training records ---------------------------------------------------------------------


def test_train_records_absolute_location_and_hash(
    tmp_path: Path, events_csv: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(events_csv.parent)
    prepared = jobs.prepare("events.csv")  # relative path
    jobs.train("pop", prepared, out=tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())["meta"]
    p = prov.Provenance.from_dict(meta["provenance"])
    assert p.dataset == p.location == str(events_csv.resolve())
    assert not set(prov.LEGACY_KEYS) & set(meta)  # dataset, split, ... live in the record only
    assert prov.from_meta(meta) == prov.Lineage(p.dataset, "loo", None, p)
    assert p.events_hash == prov.events_hash(read_events(events_csv))
    assert (p.split, p.n_events, p.n_test) == ("loo", 72, 12)


def test_evaluate_refuses_changed_data_and_accepts_it_restored(tmp_path: Path, events_csv: Path) -> None:
    jobs.train("itemknn", jobs.prepare(str(events_csv)), out=tmp_path / "m")
    before = _hr(tmp_path / "m")
    original = events_csv.read_text()
    lines = original.splitlines()
    # reverse the order of user u0's events (its times swap): the split's targets change
    u0 = [line for line in lines[1:] if line.startswith("u0,")]
    times = [line.rsplit(",", 1)[1] for line in u0]
    rev = [line.rsplit(",", 1)[0] + "," + t for line, t in zip(u0, reversed(times), strict=True)]
    events_csv.write_text("\n".join([lines[0], *rev, *lines[1 + len(u0) :]]) + "\n")
    with pytest.raises(DynrecError, match=r"content changed since training: events hash \w+… != recorded"):
        jobs.evaluate_saved(tmp_path / "m")
    events_csv.write_text(original)
    assert _hr(tmp_path / "m") == before


def test_old_model_without_provenance_still_evaluates(
    tmp_path: Path, events_csv: Path, caplog: pytest.LogCaptureFixture
) -> None:
    jobs.train("pop", jobs.prepare(str(events_csv)), out=tmp_path / "m")
    cfg = tmp_path / "m" / "config.json"
    spec = json.loads(cfg.read_text())
    record = spec["meta"].pop("provenance")  # what a release before provenance wrote instead:
    spec["meta"].update(dataset=record["dataset"], split=record["split"], split_cut=record["split_cut"])
    cfg.write_text(json.dumps(spec))
    with caplog.at_level(logging.WARNING):
        jobs.evaluate_saved(tmp_path / "m")
    assert "records no provenance" in caplog.text
    # an old model resumed by an older dynrec (which replayed test targets) is refused
    spec["meta"]["update_files"] = ["/somewhere/new.csv"]
    cfg.write_text(json.dumps(spec))
    with pytest.raises(DynrecError, match="resumed .* by an older dynrec"):
        jobs.evaluate_saved(tmp_path / "m")


# ---- model directories of earlier releases: the lineage migration -------------------------------


def _meta(model_dir: Path) -> dict[str, object]:
    meta: dict[str, object] = json.loads((model_dir / "config.json").read_text())["meta"]
    return meta


def _as_saved_before(src: Path, dst: Path, lineage_keys: dict[str, object]) -> Path:
    """A copy of the model directory `src` whose meta records its data as an earlier release did
    (`lineage_keys` in place of what this release writes)."""
    shutil.copytree(src, dst)
    spec = json.loads((dst / "config.json").read_text())
    for key in (prov.PROVENANCE_KEY, prov.REPLAY_KEY, *prov.LEGACY_KEYS):
        spec["meta"].pop(key, None)
    spec["meta"].update(lineage_keys)
    (dst / "config.json").write_text(json.dumps(spec))
    return dst


def test_model_directories_with_the_old_meta_keys_load_and_behave_the_same(
    tmp_path: Path, events_csv: Path
) -> None:
    jobs.train("itemknn", jobs.prepare(str(events_csv)), out=tmp_path / "m")
    record = _meta(tmp_path / "m")[prov.PROVENANCE_KEY]
    p = prov.Provenance.from_dict(record)  # type: ignore[arg-type]
    loose = {"dataset": p.dataset, "split": "loo", "split_cut": None}
    # the release before this one: the record and the loose keys; releases before provenance: loose only
    both = _as_saved_before(tmp_path / "m", tmp_path / "both", {"provenance": record, **loose})
    legacy = _as_saved_before(tmp_path / "m", tmp_path / "legacy", loose)
    assert prov.from_meta(_meta(both)) == prov.Lineage.trained(p) == prov.Lineage(p.dataset, "loo", None, p)
    assert prov.from_meta(_meta(legacy)) == prov.Lineage(p.dataset, "loo", None)
    want = jobs.training_history(Recommender.load(tmp_path / "m")).data
    for d in (both, legacy):
        got = jobs.training_history(Recommender.load(d)).data
        np.testing.assert_array_equal(got.items, want.items)
        np.testing.assert_array_equal(got.users, want.users)
        assert jobs.evaluate_saved(d).metrics == jobs.evaluate_saved(tmp_path / "m").metrics
        assert jobs.recommend_for(d, user="u3").items == jobs.recommend_for(tmp_path / "m", user="u3").items
    new = tmp_path / "new.csv"
    new.write_text("user_id,item_id,timestamp\nzz,i1,1\n")
    # a resume writes the typed record only: its resumes, the loose keys gone
    jobs.resume_training(both, new)
    lineage = prov.from_meta(_meta(both))
    assert not set(prov.LEGACY_KEYS) & set(_meta(both))
    assert lineage.provenance is not None and [r.path for r in lineage.provenance.resumes] == [
        str(new.resolve())
    ]
    # a model without provenance stays one: the resumed file joins its update_files, as before
    jobs.resume_training(legacy, new)
    meta = _meta(legacy)
    assert prov.PROVENANCE_KEY not in meta and meta["dataset"] == p.dataset
    assert meta["update_files"] == [str(new.resolve())]
    assert prov.from_meta(meta).legacy_updates == (str(new.resolve()),)
    assert jobs.training_history(Recommender.load(legacy)).data.n_events == want.n_events + 1
    with pytest.raises(DynrecError, match="resumed .* by an older dynrec"):
        jobs.evaluate_saved(legacy)


def test_replay_models_record_a_typed_lineage_and_old_ones_still_match(
    tmp_path: Path, events_csv: Path
) -> None:
    rd = jobs.load_replay_data(str(events_csv))
    model = jobs.fit_for_replay("pop", rd)
    assert model.meta[prov.REPLAY_KEY] == {"dataset": rd.name, "protocol": rd.protocol}
    assert not set(prov.LEGACY_KEYS) & set(model.meta)
    assert prov.from_meta(model.meta) == prov.Lineage(rd.name, "replay", replay_protocol=rd.protocol)
    model.save(tmp_path / "rp")
    old = _as_saved_before(
        tmp_path / "rp",
        tmp_path / "old",
        {"dataset": rd.name, "split": "replay", "replay_protocol": rd.protocol},
    )
    for d in (tmp_path / "rp", old):
        loaded = Recommender.load(d)
        assert prov.from_meta(loaded.meta) == prov.Lineage.replay(rd.name, rd.protocol)
        jobs.check_replay_model(loaded, rd)
        with pytest.raises(DynrecError, match="not trained for the replay"):
            jobs.check_replay_model(loaded, jobs.load_replay_data(str(events_csv), quantile=0.5))
        with pytest.raises(DynrecError, match="trained for a replay .* on no train/test split"):
            jobs.evaluate_saved(d)


def test_from_meta_refuses_malformed_lineage_keys() -> None:
    assert prov.from_meta({}) == prov.Lineage()
    for meta, match in (
        ({"dataset": "d", "split": "random"}, "split 'random' is not one of loo, time, replay"),
        ({"dataset": 5}, "'dataset' must be a string"),
        ({"split_cut": "5"}, "'split_cut' must be an integer"),
        ({"update_files": "new.csv"}, "'update_files' must be a list of paths"),
        ({"replay_fit": {"dataset": "d"}}, "'replay_fit' must be"),
    ):
        with pytest.raises(DynrecError, match=match):
            prov.from_meta(meta, source="m/config.json")


# ---- resume -----------------------------------------------------------------------------------


def test_resume_replays_only_training_events(tmp_path: Path, events_csv: Path) -> None:
    prepared = jobs.prepare(str(events_csv))
    jobs.train("itemknn", prepared, out=tmp_path / "m")
    before = _hr(tmp_path / "m")
    new = tmp_path / "new.csv"
    new.write_text("user_id,item_id,timestamp\nzz,i1,1\n")  # a new user, one event: no co-occurrence
    _, report = jobs.resume_training(tmp_path / "m", new, out=tmp_path / "m2")
    assert report.n_test_targets == 0 and report.out == str(tmp_path / "m2")
    assert _hr(tmp_path / "m2") == before
    # the memory is the split's training part + the new event, no validation/test target
    th = jobs.training_history(Recommender.load(tmp_path / "m2"))
    assert th.data.n_events == prepared.split.train.n_events + 1
    p = prov.from_meta(Recommender.load(tmp_path / "m2").meta).provenance
    assert p is not None and [r.path for r in p.resumes] == [str(new.resolve())]


def test_resume_on_test_targets_is_recorded_and_refused_by_evaluate(tmp_path: Path, events_csv: Path) -> None:
    prepared = jobs.prepare(str(events_csv))
    jobs.train("itemknn", prepared, out=tmp_path / "m")
    leak = tmp_path / "leak.csv"
    leak.write_text(prov.target_frame(prepared.data, prepared.split.test).head(3).write_csv())
    _, report = jobs.resume_training(tmp_path / "m", leak, out=tmp_path / "m2")
    assert report.n_test_targets == 3
    with pytest.raises(DynrecError, match="included 3 test target"):
        jobs.evaluate_saved(tmp_path / "m2")


def test_resume_refuses_all_invalid_file_and_leaves_model(tmp_path: Path, events_csv: Path) -> None:
    jobs.train("pop", jobs.prepare(str(events_csv)), out=tmp_path / "m")
    saved = {f.name: f.read_bytes() for f in (tmp_path / "m").iterdir()}
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,item_id,timestamp\n,i1,5\nu1,,6\n")
    for strict in (False, True):
        with pytest.raises(DynrecError):
            jobs.resume_training(tmp_path / "m", bad, strict=strict)
    assert {f.name: f.read_bytes() for f in (tmp_path / "m").iterdir()} == saved


def test_prepare_refuses_empty_data(tmp_path: Path) -> None:
    f = tmp_path / "empty.csv"
    f.write_text("user_id,item_id,timestamp\n")
    with pytest.raises(DynrecError, match="no valid events"):
        jobs.prepare(str(f))
    f.write_text("user_id,item_id,timestamp\nu1,a,1\nu2,b,2\n")  # one event per user: nothing to test
    with pytest.raises(DynrecError, match="too little data"):
        jobs.prepare(str(f))


# ---- cut-offs and warnings ----------------------------------------------------------------------


def test_cutoffs(tmp_path: Path, events_csv: Path) -> None:
    prepared = jobs.prepare(str(events_csv))
    model = jobs.train("pop", prepared)
    for bad in (0, -1):
        with pytest.raises(DynrecError, match="k must be an integer >= 1"):
            jobs.evaluate_model(model, prepared, ks=(bad,))
    res = jobs.evaluate_model(model, prepared, ks=(10, 500))
    # every target not in its own history is ranked, so within a cut-off above the catalogue
    assert res.metrics["HR@500"] == 1.0
    assert res.metrics["Precision@500"] == pytest.approx(1 / 500)
    model.save(tmp_path / "m")
    recs = jobs.recommend_for(tmp_path / "m", user="u0", k=500)
    assert len(recs.items) == 15 - 4  # the catalogue less u0's 4 training items
    with pytest.raises(DynrecError, match="k must be an integer >= 1"):
        jobs.recommend_for(tmp_path / "m", user="u0", k=0)


def test_warns_when_test_targets_are_in_their_own_history(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    f = tmp_path / "repeats.csv"
    rows = ["user_id,item_id,timestamp"]
    for u in range(5):  # every user ends on an item they already consumed
        rows += [f"u{u},a,1", f"u{u},b,2", f"u{u},c,3", f"u{u},a,4"]
    f.write_text("\n".join(rows) + "\n")
    prepared = jobs.prepare(str(f))
    with caplog.at_level(logging.WARNING):
        res = jobs.evaluate_model(jobs.train("pop", prepared), prepared)
    assert res.metrics["HR@10"] == 0.0
    assert "100% of the test targets are already in the user's own history" in caplog.text


# ---- one history for recommend --user and the online store -------------------------------------


@pytest.mark.parametrize("name", ["pop", "itemknn"])
def test_seeded_online_store_agrees_with_recommend_user(tmp_path: Path, events_csv: Path, name: str) -> None:
    prepared = jobs.prepare(str(events_csv))
    jobs.train(name, prepared, out=tmp_path / "m")
    store = InMemoryStore()
    report = jobs.seed_store(tmp_path / "m", store)
    assert report == jobs.SeedResult(name, 12, prepared.split.train.n_events)
    # the store holds training events only: u0's last two (validation, test) are not there
    u0 = [line.split(",")[1] for line in events_csv.read_text().splitlines() if line.startswith("u0,")]
    assert list(store.history("u0").items) == u0[:-2]
    online = OnlineRecommender(Recommender.load(tmp_path / "m"), store)
    for user in (f"u{u}" for u in range(12)):
        offline = jobs.recommend_for(tmp_path / "m", user=user, k=5)
        rec = online.recommend(user, 5)
        assert offline.items == rec.items
        np.testing.assert_allclose(offline.scores, rec.scores, rtol=1e-5)
    with pytest.raises(DynrecError, match="already holds events of user"):
        jobs.seed_store(tmp_path / "m", store)
