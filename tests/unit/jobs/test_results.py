"""Every job answers a frozen dataclass whose ``to_json`` is the JSON ``dynrec ... --json`` prints
(a public interface: these tests pin its keys, their order and values), built by hand here with
known answers, and checked against the CLI's output on a small saved model."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from dynrec import jobs
from dynrec.cli.main import app
from dynrec.data.query import Recommendations
from dynrec.evaluation.offline import EvalResult
from dynrec.models.config import RunOptions
from dynrec.models.registry import create_model
from dynrec.online.interests import InterestProfile, ProfileWindow
from dynrec.online.updater import UpdateReport
from dynrec.replay import ReplayResult
from tests.unit.jobs.test_provenance import write_events


def _round_trip(result: Any) -> dict[str, Any]:
    """`result.to_json()`, checked to be plain JSON (it survives dumps/loads unchanged) and to be
    a frozen dataclass's."""
    assert dataclasses.is_dataclass(result)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(result, dataclasses.fields(result)[0].name, None)
    got: dict[str, Any] = result.to_json()
    assert json.loads(json.dumps(got)) == got
    return got


def _ordered(got: dict[str, Any], want: dict[str, Any]) -> None:
    assert got == want and list(got) == list(want)


# ---- recommend, profile, seed ---------------------------------------------------------------------


def test_recommend_result_json() -> None:
    recs = Recommendations((("i2", "i1"),), ((2.0, 1.0),), ("exact",))
    plain = jobs.RecommendResult(recs, "u1", "itemknn")
    assert (plain.items, plain.scores, plain.fallback, plain.explained) == (
        ["i2", "i1"],
        [2.0, 1.0],
        None,
        False,
    )
    _ordered(
        _round_trip(plain),
        {"user": "u1", "items": ["i2", "i1"], "scores": [2.0, 1.0], "model": "itemknn", "fallback": None},
    )
    ann = jobs.RecommendResult(dataclasses.replace(recs, retrieval=("ann:hnsw",)), None, "sasrec", "int8")
    _ordered(
        _round_trip(ann),
        {
            "user": None,
            "items": ["i2", "i1"],
            "scores": [2.0, 1.0],
            "model": "sasrec",
            "fallback": None,
            "retrieval": "hnsw",
            "precision": "int8",
        },
    )
    why = recs.with_explanations([[[("i7", 0.5), ("i8", 0.25)], []]])
    explained = jobs.RecommendResult(why, None, "itemknn", titles={"i2": "Two", "i7": "Seven"})
    assert explained.explanations == ([("i7", 0.5), ("i8", 0.25)], [])
    _ordered(
        _round_trip(explained),
        {
            "user": None,
            "items": ["i2", "i1"],
            "scores": [2.0, 1.0],
            "model": "itemknn",
            "fallback": None,
            "titles": ["Two", None],
            "because": [
                [
                    {"item": "i7", "title": "Seven", "weight": 0.5},
                    {"item": "i8", "title": None, "weight": 0.25},
                ],
                [],
            ],
            "explanation_unavailable": None,
        },
    )
    popular = Recommendations((("i3",),), ((9.0,),), ("popular",)).with_explanations([None])
    fallback = jobs.RecommendResult(popular, None, "pop", explanation_unavailable="no explanations")
    assert fallback.fallback == "popular" and fallback.explanations is None
    _ordered(
        _round_trip(fallback),
        {
            "user": None,
            "items": ["i3"],
            "scores": [9.0],
            "model": "pop",
            "fallback": "popular",
            "titles": [None],
            "because": None,
            "explanation_unavailable": "no explanations",
        },
    )


def test_profile_and_seed_results_json() -> None:
    long = ProfileWindow(3, [("scifi", 0.75), ("drama", 0.25)], ["i1", "i2"], ["Film 1", "i2"])
    short = ProfileWindow(1, [("drama", 1.0)], ["i2"], ["i2"])
    prof = jobs.ProfileResult("u1", "itemknn", True, InterestProfile(long, short, [("drama", 0.75)], 1))
    _ordered(
        _round_trip(prof),
        {
            "user": "u1",
            "model": "itemknn",
            "has_item_info": True,
            "long_term": {
                "n_events": 3,
                "tags": [["scifi", 0.75], ["drama", 0.25]],
                "items": ["Film 1", "i2"],
                "item_ids": ["i1", "i2"],
            },
            "short_term": {"n_events": 1, "tags": [["drama", 1.0]], "items": ["i2"], "item_ids": ["i2"]},
            "shift": [["drama", 0.75]],
            "short_window": 1,
        },
    )
    seed = jobs.SeedResult("pop", 12, 48)
    _ordered(_round_trip(seed), {"model": "pop", "users": 12, "events": 48})
    named = dataclasses.replace(seed, store="redis://host:6379/0")
    _ordered(_round_trip(named), {"model": "pop", "users": 12, "events": 48, "store": "redis://host:6379/0"})


# ---- items, export, resume ------------------------------------------------------------------------


def test_add_items_export_and_resume_results_json() -> None:
    added = jobs.AddItemsResult("content", "/m", ("x1",), ("i3",), 14, 2, ("f.csv:3: bad",), "enc")
    want = {
        "model": "content",
        "model_dir": "/m",
        "added": ["x1"],
        "skipped": ["i3"],
        "n_items": 14,
        "invalid_rows": 2,
        "invalid": ["f.csv:3: bad"],
        "encoder": "enc",
    }
    _ordered(_round_trip(added), want)
    served = dataclasses.replace(added, model_version="abc-123")
    _ordered(_round_trip(served), {**want, "model_version": "abc-123"})
    _ordered(
        _round_trip(jobs.ExportResult("/e.csv", 101, 21)), {"path": "/e.csv", "events": 101, "users": 21}
    )

    report = {"n_events": 3, "new_items": 1, "new_users": 1, "method": "co-occurrence counts"}
    trained = jobs.ResumeResult.of_update(
        UpdateReport(3, 1, 1, "co-occurrence counts", seconds=0.5, work_events=3), out="/m"
    )
    _ordered(_round_trip(trained), {**report, "work_events": 3, "seconds": 0.5, "out": "/m"})
    everything = dataclasses.replace(
        trained, n_test_targets=0, n_duplicates=1, deleted_users_left_out=2, model_version="v2"
    )
    _ordered(
        _round_trip(everything),
        {
            **report,
            "work_events": 3,
            "seconds": 0.5,
            "n_test_targets": 0,
            "n_duplicates": 1,
            "deleted_users_left_out": 2,
            "out": "/m",
            "model_version": "v2",
        },
    )
    nothing = jobs.ResumeResult.of_update(UpdateReport(3, 1, 1, "none", seconds=0.0), out="/m")
    _ordered(_round_trip(nothing), {**report, "method": "none", "seconds": 0.0, "out": "/m"})


# ---- replay, evaluate, train ----------------------------------------------------------------------


def _replay_result(mode: str, hr: float) -> ReplayResult:
    return ReplayResult(
        mode=mode,
        model="pop",
        dataset="d.csv",
        protocol="time>=5",
        ranks=np.array([0.0, np.inf]),
        metrics={"HR@10": hr, "NDCG@10": hr / 2, "n_events": 2.0},
        windows=[{"start": 0.0, "end": 2.0, "HR@10": hr}],
        timing={"seconds": 1.0, "events_per_s": 2.0},
        updates=[],
    )


def test_replay_run_json() -> None:
    row = jobs.ReplayRow(_replay_result("state", 0.5), 10)
    base = {
        "mode": "state",
        "model": "pop",
        "dataset": "d.csv",
        "protocol": "time>=5",
        "HR@10": 0.5,
        "NDCG@10": 0.25,
        "n_events": 2.0,
        "seconds": 1.0,
        "events_per_s": 2.0,
        "windows": [{"start": 0.0, "end": 2.0, "HR@10": 0.5}],
        "updates": [],
    }
    _ordered(_round_trip(row), base)
    assert (row.hr, row.ndcg, row.n_events, row.events_per_s, row.hr_vs_oracle) == (0.5, 0.25, 2, 2.0, None)
    oracle = jobs.ReplayRow(_replay_result("state", 0.5), 10, oracle_hr=0.8)
    assert oracle.hr_vs_oracle == pytest.approx(0.625)
    _ordered(_round_trip(oracle), {**base, "oracle_HR@10": 0.8, "HR@10_vs_oracle": 0.625})
    assert jobs.ReplayRow(_replay_result("state", 0.5), 10, oracle_hr=0.0).hr_vs_oracle == 0.0
    one = jobs.ReplayRun((row,))
    _ordered(_round_trip(one), base)  # one mode: its row, as the CLI always printed
    two = jobs.ReplayRun((row, jobs.ReplayRow(_replay_result("static", 0.25), 10)))
    got = _round_trip(two)
    assert list(got) == ["results"] and got["results"][0] == base and got["results"][1]["mode"] == "static"


def test_evaluation_and_train_summary_json() -> None:
    metrics = {"HR@10": 0.5, "NDCG@10": 0.25, "n_users": 4.0}
    res = EvalResult(metrics, np.array([0.0, np.inf]), 0.1)
    model = create_model("pop")
    exact = jobs.Evaluation.of(model, res, None)
    assert (exact.retrieval, exact.precision, exact.metrics) == (None, None, metrics)
    _ordered(_round_trip(exact), metrics)
    approx = jobs.Evaluation(model, res, retrieval="hnsw", precision="int8")
    _ordered(_round_trip(approx), {**metrics, "retrieval": "hnsw", "precision": "int8"})
    int8 = create_model("pop", options=RunOptions(precision="int8"))
    assert jobs.Evaluation.of(int8, res, None).precision == "int8"
    summary = jobs.TrainSummary("pop", "/m", 1.5, 2, 3, metrics)
    _ordered(
        _round_trip(summary),
        {
            "model": "pop",
            "out": "/m",
            "fit_seconds": 1.5,
            "n_invalid_rows": 2,
            "n_duplicate_rows": 3,
            **metrics,
        },
    )


# ---- the CLI prints exactly the jobs' to_json --------------------------------------------------


def _cli_json(*args: str) -> Any:
    r = CliRunner().invoke(app, [*args, "--json"])
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_cli_prints_the_jobs_to_json(tmp_path: Path) -> None:
    events = write_events(tmp_path / "events.csv")
    model_dir = tmp_path / "m"
    trained = _cli_json("train", "itemknn", "--dataset", str(events), "--out", str(model_dir))
    model = jobs.train("itemknn", jobs.prepare(str(events)))
    summary = jobs.validate("itemknn", model, jobs.prepare(str(events)), model_dir).to_json()
    assert list(trained) == list(summary)
    assert {k: v for k, v in trained.items() if k != "fit_seconds"} == {
        k: v for k, v in summary.items() if k != "fit_seconds"
    }
    for args, kw in (
        (["--user", "u1"], {"user": "u1"}),
        (["--history", "i1,i2", "--explain"], {"history": ["i1", "i2"], "explain": True}),
        (["--history", "", "--k", "3"], {"history": [], "k": 3}),
    ):
        got = _cli_json("recommend", str(model_dir), *args)
        _ordered(got, jobs.recommend_for(model_dir, **kw).to_json())
    _ordered(
        _cli_json("profile", str(model_dir), "--user", "u2"),
        jobs.profile_for(model_dir, user="u2").to_json(),
    )
    _ordered(
        _cli_json("evaluate", str(model_dir), "--k", "5"), jobs.evaluate_saved(model_dir, ks=(5,)).to_json()
    )
