"""Real-data checks on ml-100k (marked slow; still run in CI)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from dynrec.cli.main import app
from tests.conftest import data_dir

pytestmark = pytest.mark.slow


def _independent_pop(path: str) -> dict[str, float]:
    """Pop under temporal leave-one-out, written without any dynrec code."""
    df = pd.read_csv(path, sep="\t", names=["u", "i", "r", "t"])
    df["row"] = np.arange(len(df))
    df = df.sort_values(["u", "t", "row"], kind="stable")
    pos_from_end = df.groupby("u").cumcount(ascending=False)
    test = df[pos_from_end == 0]
    train = df[pos_from_end >= 2]
    counts = train["i"].value_counts()
    items = np.sort(df["i"].unique())
    score = pd.Series(0.0, index=items)
    score[counts.index] = counts.values
    hits, ndcgs, rrs = [], [], []
    seen_by_user = df[pos_from_end >= 1].groupby("u")["i"].apply(set)
    for u, target in zip(test["u"], test["i"], strict=True):
        cand = score.drop(index=list(seen_by_user[u]))
        # rank = #higher + #equal with lower id (the documented tie-break)
        s_t = cand[target]
        rank = int((cand > s_t).sum() + ((cand == s_t) & (cand.index < target)).sum())
        hits.append(rank < 10)
        ndcgs.append(1 / np.log2(rank + 2) if rank < 10 else 0.0)
        rrs.append(1 / (rank + 1) if rank < 10 else 0.0)
    return {"HR@10": float(np.mean(hits)), "NDCG@10": float(np.mean(ndcgs)), "MRR@10": float(np.mean(rrs))}


def test_cli_pop_equals_independent_computation() -> None:
    res = CliRunner().invoke(app, ["evaluate", "pop", "--dataset", "ml-100k", "--json"])
    assert res.exit_code == 0, res.output
    ours = json.loads(res.output.strip().splitlines()[-1])
    ref = _independent_pop(str(data_dir() / "ml-100k" / "u.data"))
    for k, v in ref.items():
        assert ours[k] == pytest.approx(v, abs=5e-4), k
    assert ours["n_users"] == 943


def test_train_evaluate_recommend_round_trip(tmp_path: object) -> None:
    out = str(tmp_path) + "/iknn"  # type: ignore[operator]
    r = CliRunner()
    res = r.invoke(app, ["train", "itemknn", "--dataset", "ml-100k", "--out", out, "--set", "k=50", "--json"])
    assert res.exit_code == 0, res.output
    res = r.invoke(app, ["evaluate", out, "--json"])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output.strip().splitlines()[-1])
    assert m["NDCG@10"] > 0.05 and m["n_users"] == 943  # well above Pop's 0.045
    res = r.invoke(app, ["evaluate", out, "--split", "time"])
    assert res.exit_code != 0 and "trained with split 'loo'" in res.output
    res = r.invoke(app, ["recommend", out, "--user", "1", "--k", "5", "--json"])
    assert res.exit_code == 0, res.output
    rec = json.loads(res.output)
    assert len(rec["items"]) == 5


def test_cli_user_errors_are_one_line() -> None:
    r = CliRunner()
    res = r.invoke(app, ["evaluate", "nosuchmodel", "--dataset", "ml-100k"])
    assert res.exit_code != 0
    res = r.invoke(app, ["train", "pop", "--dataset", "ml-100k", "--out", "/tmp/x", "--set", "nokey=1"])
    assert res.exit_code != 0
