"""Synthetic drift data: determinism, planted structure, a valid oracle."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dynrec.data.io import read_events
from dynrec.data.synthetic import SynthConfig, generate, load_oracle, oracle_ranks_for, write_synthetic
from dynrec.errors import DynrecError

SMALL = SynthConfig(n_users=50, n_items=60, n_groups=4, events_per_user=12, seed=3)


def test_deterministic_and_well_formed() -> None:
    a, b = generate(SMALL), generate(SMALL)
    assert a.oracle is not None and b.oracle is not None
    assert a.events.equals(b.events) and a.oracle.equals(b.oracle)
    assert not generate(SynthConfig(**{**SMALL.__dict__, "seed": 4})).events.equals(a.events)
    ev = a.events
    assert ev["timestamp"].is_sorted()
    # no repeats per user, strictly increasing times per user
    assert ev.group_by("user_id").agg(pl.col("item_id").n_unique() == pl.len()).to_series(1).all()
    per_user = ev.group_by("user_id", maintain_order=True).agg(pl.col("timestamp").diff().drop_nulls().min())
    assert (per_user["timestamp"].drop_nulls() > 0).all()
    r = a.oracle["oracle_rank"].to_numpy()
    assert a.oracle.height == ev.height and r.min() >= 0 and r.max() < SMALL.n_items


def test_no_drift_no_noise_means_one_group_per_user() -> None:
    # (at most 12 events per user < 15 items per group: the group is never exhausted)
    d = generate(
        SynthConfig(
            **{
                **SMALL.__dict__,
                "switch_prob": 0.0,
                "noise": 0.0,
                "new_item_fraction": 0.0,
                "events_per_user": 8,
            }
        )
    )
    grp = dict(zip(d.items["item_id"].to_list(), d.items["genres"].to_list(), strict=True))
    groups = d.events.with_columns(
        pl.col("item_id").replace_strict({k: v[0] for k, v in grp.items()}).alias("g")
    )
    assert (groups.group_by("user_id").agg(pl.col("g").n_unique())["g"] == 1).all()


def test_oracle_beats_chance_and_drift_costs_it() -> None:
    calm = generate(SynthConfig(**{**SMALL.__dict__, "switch_prob": 0.0})).summary()
    busy = generate(SynthConfig(**{**SMALL.__dict__, "switch_prob": 0.5})).summary()
    assert calm["oracle_HR@10"] > 10 / SMALL.n_items * 2
    assert busy["oracle_HR@10"] < calm["oracle_HR@10"]


def test_files_and_oracle_join(tmp_path: Path) -> None:
    summary = write_synthetic(tmp_path / "s", SMALL)
    meta = json.loads((tmp_path / "s" / "synth.json").read_text())
    assert meta["config"]["n_users"] == 50 and summary["n_events"] == meta["n_events"]
    log = read_events(tmp_path / "s" / "events.csv")
    assert len(log) == summary["n_events"] and log.has_time
    oracle = load_oracle(tmp_path / "s")
    ranks = oracle_ranks_for(oracle, log.frame["user_id"].to_list(), log.frame["timestamp"].to_numpy())
    assert np.isfinite(ranks).all() and abs(float((ranks < 10).mean()) - summary["oracle_HR@10"]) < 1e-12
    assert np.isinf(oracle_ranks_for(oracle, ["nobody"], np.array([1]))).all()


def test_bad_config() -> None:
    with pytest.raises(DynrecError):
        SynthConfig(n_groups=1)
    with pytest.raises(DynrecError):
        SynthConfig(switch_prob=1.5)


SAMPLED = SynthConfig(**{**SMALL.__dict__, "oracle": False})


def test_sampled_simulator_well_formed() -> None:
    a, b = generate(SAMPLED), generate(SAMPLED)
    assert a.oracle is None and a.events.equals(b.events)
    ev = a.events
    assert ev["timestamp"].is_sorted()
    assert ev.group_by("user_id").agg(pl.col("item_id").n_unique() == pl.len()).to_series(1).all()
    per_user = ev.group_by("user_id").agg(pl.col("timestamp").sort().diff().drop_nulls().min())
    assert (per_user["timestamp"].drop_nulls() > 0).all()
    # nothing is consumed before its release
    rel = ev.join(a.items.select("item_id", "release_time"), on="item_id", how="left")
    assert (rel["timestamp"] >= rel["release_time"]).all()
    # every user's event count is within [events_per_user / 2, 1.5 x] (the catalogue is not exhausted)
    counts = ev.group_by("user_id").len()["len"].to_numpy()
    assert counts.min() >= 6 and counts.max() <= 18
    assert set(a.summary()) == {"n_events", "n_users", "n_items", "n_shifts", "n_stable_users"}


@pytest.mark.parametrize("oracle", [True, False])
def test_planted_change_points_are_where_the_group_of_the_items_changes(oracle: bool) -> None:
    """Without noise every event is drawn from the user's current group: the planted change points
    are exactly the events whose item's group differs from the previous event's, and the stable
    users never change group."""
    cfg = SynthConfig(
        n_users=60,
        n_items=300,
        n_groups=6,
        events_per_user=20,
        switch_prob=0.2,
        noise=0.0,
        stable_fraction=0.25,
        new_item_fraction=0.0,
        seed=3,
        oracle=oracle,
    )
    d = generate(cfg)
    ev = (
        d.events.join(d.items.select("item_id", pl.col("genres").list.first().alias("g")), on="item_id")
        .sort(["user_id", "timestamp"])
        .with_columns(pl.int_range(pl.len()).over("user_id").alias("event_index"))
        .with_columns((pl.col("g") != pl.col("g").shift(1).over("user_id")).fill_null(False).alias("moved"))
    )
    moved = (
        ev.filter(pl.col("moved"))
        .select("user_id", "event_index", "timestamp")
        .sort(["user_id", "event_index"])
    )
    planted = d.shifts.filter(pl.col("event_index") >= 0)
    assert planted.select("user_id", "event_index", "timestamp").equals(moved)
    assert planted.height > 30
    stable = set(d.shifts.filter(pl.col("stable"))["user_id"])
    assert 5 <= len(stable) <= 30 and not stable & set(planted["user_id"])
    assert set(d.shifts.filter(pl.col("stable"))["event_index"]) == {-1}


def test_stable_users_leave_the_random_stream_unchanged() -> None:
    base = generate(SMALL)
    assert base.shifts.filter(pl.col("stable")).height == 0
    assert generate(SynthConfig(**{**SMALL.__dict__, "stable_fraction": 0.0})).events.equals(base.events)


def test_sampled_no_drift_no_noise_means_one_group_per_user() -> None:
    cfg = {
        **SAMPLED.__dict__,
        "switch_prob": 0.0,
        "noise": 0.0,
        "new_item_fraction": 0.0,
        "events_per_user": 8,
    }
    d = generate(SynthConfig(**cfg))
    grp = {k: v[0] for k, v in zip(d.items["item_id"].to_list(), d.items["genres"].to_list(), strict=True)}
    groups = d.events.with_columns(pl.col("item_id").replace_strict(grp).alias("g"))
    assert (groups.group_by("user_id").agg(pl.col("g").n_unique())["g"] == 1).all()


def test_sampled_exhausted_catalogue_falls_back_exactly() -> None:
    # 6 items, up to 12 events per user: groups and then the catalogue run out. The dense fallback
    # draws from what is left (uniformly once the group is empty) and skips events when nothing is.
    d = generate(SynthConfig(n_users=30, n_items=6, n_groups=2, events_per_user=8, new_item_fraction=0.0,
                             oracle=False, seed=1))  # fmt: skip
    per_user = d.events.group_by("user_id").agg(pl.col("item_id").n_unique().alias("u"), pl.len().alias("n"))
    assert (per_user["u"] == per_user["n"]).all() and per_user["n"].max() == 6
    # users with 6+ scheduled events consume the whole catalogue
    assert (per_user["n"] == 6).sum() > 0


def test_sampled_follows_popularity() -> None:
    # noise 0: within a group the Zipf-1 head item is drawn more often than the group's tail item
    d = generate(SynthConfig(n_users=400, n_items=40, n_groups=2, events_per_user=4, noise=0.0,
                             new_item_fraction=0.0, oracle=False, seed=2))  # fmt: skip
    counts = d.events.group_by("item_id").len()["len"].to_numpy()
    assert counts.max() >= 5 * max(1, int(counts.min()))


def test_sampled_writes_no_oracle(tmp_path: Path) -> None:
    summary = write_synthetic(tmp_path / "s", SAMPLED)
    assert (tmp_path / "s" / "events.csv").exists() and not (tmp_path / "s" / "oracle.csv").exists()
    assert "oracle_HR@10" not in summary and summary["n_events"] == len(
        read_events(tmp_path / "s" / "events.csv")
    )
