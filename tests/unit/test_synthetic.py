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
