"""Streaming (prequential) replay: protocol cuts, strict causality, batched == one-at-a-time."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.data.vocab import Vocabulary
from dynrec.models.base import Recommender
from dynrec.online.adapters import RecomputeAdapter, StateBatch
from dynrec.replay import (
    ReplayConfig,
    ReplayData,
    holdout_last,
    replay,
    replay_split,
)
from tests.unit.online.test_state import tiny_model


def interleaved(n_users: int = 25, n_items: int = 30, per_user: int = 12, seed: int = 0) -> InteractionData:
    """Users active at the same time (random timestamps, some equal); the first events cover every
    item so the stream has no item unknown to the model."""
    rng = np.random.default_rng(seed)
    users, items, ts = [], [], []
    for u in range(1, n_users + 1):
        g = u % 3
        own = np.arange(g * 10, g * 10 + 10) + 1
        seq = rng.permutation(own)[: per_user - 2].tolist() + rng.integers(1, n_items + 1, 2).tolist()
        times = np.sort(rng.integers(100, 1000, per_user))
        users += [u] * per_user
        items += seq
        ts += times.tolist()
    users += [1] * n_items
    items += list(range(1, n_items + 1))
    ts += list(range(n_items))  # early: every item is known before any cut
    uv = Vocabulary(f"u{i}" for i in range(1, n_users + 1))
    iv = Vocabulary(f"i{i}" for i in range(1, n_items + 1))
    return InteractionData.from_arrays(users, items, timestamps=ts, user_vocab=uv, item_vocab=iv)


@pytest.fixture(scope="module")
def rd() -> ReplayData:
    return replay_split(interleaved(), quantile=0.6, name="toy")


# ---- the cut -------------------------------------------------------------------------------------


def test_time_cut_invariants(rd: ReplayData) -> None:
    d = rd.data
    t = d.timestamps[rd.stream]
    assert np.all(np.diff(rd.time) >= 0) and np.array_equal(rd.time, t)
    cut = int(t.min())
    assert rd.train.timestamps.max() < cut and rd.train.n_events + len(rd) == d.n_events
    # the model's vocabulary is a prefix of the replay vocabulary
    assert tuple(d.item_vocab.ids[: len(rd.train.item_vocab)]) == tuple(rd.train.item_vocab.ids)
    assert tuple(d.user_vocab.ids[: len(rd.train.user_vocab)]) == tuple(rd.train.user_vocab.ids)
    # each user's stream events follow their pre-cut events, contiguously, in replay order
    users = d.users[rd.stream]
    for u in np.unique(users):
        pos = rd.stream[users == u]
        assert np.array_equal(pos, np.arange(rd.pre_end[u], rd.pre_end[u] + len(pos)))
        assert d.indptr[u + 1] == rd.pre_end[u] + len(pos)


def test_last_n_cut_is_interleaved_round_robin() -> None:
    data = interleaved(n_users=6, per_user=5)
    data = InteractionData(**{**data.__dict__, "has_time": False})
    r = replay_split(data, last_n=3)
    users = r.data.users[r.stream]
    assert r.protocol == "last3" and len(r) == 6 * 3
    assert list(r.time) == [0] * 6 + [1] * 6 + [2] * 6  # everyone's 3rd-last, then 2nd-last, then last
    assert all(sorted(users[k * 6 : (k + 1) * 6].tolist()) == sorted(set(users.tolist())) for k in range(3))
    with pytest.raises(Exception, match="last_n"):
        replay_split(data, quantile=0.5)


def test_holdout_last() -> None:
    data = interleaved(n_users=5, per_user=4)
    train, valid = holdout_last(data)
    assert len(valid) == 5 and train.n_events == data.n_events - 5
    assert np.array_equal(valid.targets, data.items[data.indptr[1:][1:] - 1])


# ---- batched engine == naive one-event-at-a-time replay --------------------------------------------


def naive_ranks(model: Recommender, rd: ReplayData, delay: int, static: bool) -> np.ndarray:
    """Stream order, one event at a time: history = pre-cut + the user's revealed stream events."""
    d = rd.data
    out = np.full(len(rd), np.inf)
    users, times = d.users[rd.stream], rd.time
    for e in range(len(rd)):
        u = users[e]
        prior = np.flatnonzero((users[:e] == u) & (times[:e] + delay <= times[e]))
        if static:
            prior = prior[:0]
        pos = np.concatenate([np.arange(d.indptr[u], rd.pre_end[u]), rd.stream[prior]]).astype(np.int64)
        hist = d.items[pos]
        uid = u if u < model.user_vocab.size else 0  # type: ignore[union-attr]
        q = QueryBatch(np.array([uid]), np.array([0, len(hist)]), hist, d.timestamps[pos])
        s = model.score(q)[0]
        s[torch.from_numpy(hist)] = -torch.inf
        s[0] = -torch.inf
        t = int(d.items[rd.stream[e]])
        if t < s.shape[0] and torch.isfinite(s[t]):
            out[e] = float((s > s[t]).sum() + ((s == s[t]) & (torch.arange(s.shape[0]) < t)).sum())
    return out


@pytest.mark.parametrize(("mode", "delay"), [("state", 0), ("state", 150), ("static", 0)])
def test_batched_replay_equals_naive(rd: ReplayData, mode: str, delay: int) -> None:
    model = tiny_model("itemknn", rd.train, recency_half_life=2.0)
    res = replay(model, rd, ReplayConfig(mode=mode, delay=delay, state_budget_mb=1))  # type: ignore[arg-type]
    want = naive_ranks(model, rd, delay, mode == "static")
    assert np.array_equal(res.ranks, want)


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "als"])
def test_batched_replay_equals_naive_for_stateful_models(rd: ReplayData, name: str) -> None:
    model = tiny_model(name, rd.train)
    res = replay(model, rd, ReplayConfig(mode="state", state_budget_mb=1))
    want = naive_ranks(model, rd, 0, False)
    same = res.ranks == want
    # incremental and recomputed scores agree to float tolerance: ranks may differ only where two
    # items' scores are within rounding of each other
    assert same.mean() > 0.97 and np.all(np.abs(res.ranks[~same] - want[~same]) <= 2)


@pytest.mark.parametrize(("mode", "delay"), [("state", 0), ("state", 150), ("incremental", 0)])
def test_replay_through_an_exact_index_equals_exact_replay(rd: ReplayData, mode: str, delay: int) -> None:
    pytest.importorskip("faiss")
    from dynrec.models.retrieval import AnnConfig

    exact_index = AnnConfig(kind="ivf", nlist=1, nprobe=1, num_threads=1)  # one cell scanned whole
    cfgs = [
        ReplayConfig(mode=mode, delay=delay, update_every=20, state_budget_mb=1, ann=a)
        for a in (None, exact_index)
    ]  # type: ignore[arg-type]
    exact, ann = (replay(tiny_model("als", rd.train), rd, c) for c in cfgs)
    k = cfgs[0].k
    # the index's list is the exact top k: the same hits at the same positions, misses beyond k
    # (float32 dot products in the index: two items within rounding of each other may swap, so
    # a target at the list's end may move by a place or out of it)
    want = np.where(exact.ranks < k, exact.ranks, np.inf)
    same = want == ann.ranks
    assert same.mean() > 0.97 and np.isfinite(ann.ranks).sum() > 20
    assert np.all(np.minimum(want[~same], ann.ranks[~same]) >= k - 2)
    assert (exact.retrieval, ann.retrieval) == ("exact", "ann:ivf")
    assert ann.to_json()["retrieval"] == "ivf" and "retrieval" not in exact.to_json()
    assert ann.timing["ann_share"] > 0.9
    assert ann.timing["index_build_seconds"] > 0 and "ann_share" not in exact.timing


def test_incremental_itemknn_equals_retrain_and_reports(rd: ReplayData) -> None:
    model = tiny_model("itemknn", rd.train)
    inc = replay(model, rd, ReplayConfig(mode="incremental", update_every=10))
    ret = replay(tiny_model("itemknn", rd.train), rd, ReplayConfig(mode="retrain", update_every=10))
    assert np.array_equal(inc.ranks, ret.ranks)  # additive counts: an update is an exact refit
    out = inc.to_json()
    for key in ("HR@10", "NDCG@10", "n_events", "events_per_s", "windows", "updates"):
        assert key in out
    assert out["n_events"] == len(rd) and len(inc.updates) == int(np.ceil(len(rd) / 10)) - 1
    assert sum(w["end"] - w["start"] for w in out["windows"]) == len(rd)
    json.dumps(out)


# ---- strict causality (spies) ------------------------------------------------------------------------


class Spy:
    """Independent bookkeeping of what each prediction may see and what each update may receive."""

    def __init__(self, rd: ReplayData, delay: int) -> None:
        self.rd, self.delay = rd, delay
        d = rd.data
        self.users = d.users[rd.stream]
        self.next_k: dict[int, int] = {}  # user -> index of their next stream event to be predicted
        self.predicted = np.zeros(len(rd), dtype=bool)
        self.clock = -1  # time of the latest predicted event

    def events_of(self, u: int) -> np.ndarray:
        return np.flatnonzero(self.users == u)

    def on_score(self, user: int, history: np.ndarray) -> None:
        rd, d = self.rd, self.rd.data
        k = self.next_k.get(user, 0)
        e = int(self.events_of(user)[k])
        prior = np.flatnonzero((self.users[:e] == user) & (rd.time[:e] + self.delay <= rd.time[e]))
        expect = d.items[
            np.concatenate([np.arange(d.indptr[user], rd.pre_end[user]), rd.stream[prior]]).astype(np.int64)
        ]
        assert np.array_equal(history, expect), f"event {e}: state holds {history}, revealed {expect}"
        self.predicted[e] = True
        self.next_k[user] = k + 1
        self.clock = max(self.clock, int(rd.time[e]))

    def on_update(self, events: np.ndarray) -> None:
        if not self.predicted[events].all():
            raise AssertionError("an event reached update before it was predicted")
        if not np.all(self.rd.time[events] + self.delay <= self.clock):
            raise AssertionError("an update received an event before its feedback was revealed")


class SpyAdapter(RecomputeAdapter):
    def __init__(self, model: Recommender, spy: Spy) -> None:
        super().__init__(model)
        self.spy = spy

    def score(self, state: StateBatch) -> torch.Tensor:
        q = self.queries(state)
        for b in range(len(q)):
            self.spy.on_score(int(q.users[b]), q.items[q.indptr[b] : q.indptr[b + 1]])
        return super().score(state)


@pytest.mark.parametrize(
    ("mode", "delay"), [("incremental", 0), ("incremental", 200), ("retrain", 100), ("state", 50)]
)
def test_no_leakage(rd: ReplayData, mode: str, delay: int) -> None:
    spy = Spy(rd, delay)
    model = tiny_model("pop", rd.train)
    # the user index must reach the spy: replay users that the model does not know map to 0, so
    # give every replay user a row
    model.user_vocab = rd.data.user_vocab

    def update_fn(m: Recommender, events: np.ndarray, r: ReplayData) -> tuple[Recommender, dict[str, Any]]:
        spy.on_update(events)
        return m, {"n_events": len(events)}

    res = replay(
        model,
        rd,
        ReplayConfig(mode=mode, delay=delay, update_every=7, state_budget_mb=1),  # type: ignore[arg-type]
        adapter_factory=lambda m: SpyAdapter(m, spy),
        update_fn=update_fn,
    )
    assert spy.predicted.all() and np.isfinite(res.ranks).any()
    if mode != "state":
        assert len(res.updates) == int(np.ceil(len(rd) / 7)) - 1


def test_spy_catches_leakage(rd: ReplayData) -> None:
    spy = Spy(rd, 0)
    with pytest.raises(AssertionError, match="before it was predicted"):
        spy.on_update(np.array([0]))
    u = int(spy.users[1])
    with pytest.raises(AssertionError, match="revealed"):  # a state holding a not-yet-revealed event
        e = spy.events_of(u)
        d = rd.data
        leaked = d.items[np.arange(d.indptr[u], rd.pre_end[u] + len(e))]
        spy.on_score(u, leaked)


# ---- synthetic drift end to end (CLI) ------------------------------------------------------------------


def test_cli_synth_and_replay(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from dynrec.cli.main import app

    runner = CliRunner()
    out = tmp_path / "synth"
    r = runner.invoke(
        app,
        ["data", "synth", "--out", str(out), "--users", "60", "--items", "80", "--groups", "4",
         "--events-per-user", "16", "--json"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (out / "events.csv").exists() and (out / "oracle.csv").exists() and (out / "items.csv").exists()
    plot = tmp_path / "p.png"
    r = runner.invoke(
        app,
        ["replay", "itemknn", "--dataset", str(out), "--mode", "static", "--mode", "state",
         "--json", "--plot", str(plot)],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    res = json.loads(r.output.strip().splitlines()[-1])["results"]
    assert [x["mode"] for x in res] == ["static", "state"]
    for x in res:
        for key in ("HR@10", "NDCG@10", "n_events", "events_per_s", "oracle_HR@10", "HR@10_vs_oracle"):
            assert key in x
        assert 0 < x["oracle_HR@10"] <= 1
    assert res[1]["HR@10"] > res[0]["HR@10"]  # following the drift beats a frozen state
    assert plot.exists() and plot.stat().st_size > 1000
    r = runner.invoke(app, ["replay", "pop", "--dataset", str(out), "--mode", "incremental", "--json"])
    one = json.loads(r.output.strip().splitlines()[-1])  # one mode: a flat object
    assert one["mode"] == "incremental" and {"HR@10", "NDCG@10", "n_events", "events_per_s"} <= set(one)
    r = runner.invoke(app, ["replay", "itemknn", "--dataset", str(out), "--mode", "bogus"])
    assert r.exit_code != 0
    pytest.importorskip("faiss")
    ann = ["--ann", "ivf", "--ann-set", "nlist=1", "--ann-set", "nprobe=1"]  # one cell: exact
    saved = tmp_path / "als"  # trained once, replayed exactly and through the index
    for extra in (["als", "--save-model", str(saved)], [str(saved), *ann]):
        r = runner.invoke(app, ["replay", *extra, "--dataset", str(out), "--json"])
        assert r.exit_code == 0, r.output
        res.append(json.loads(r.output.strip().splitlines()[-1]))
    assert "retrieval" not in res[-2] and res[-1]["retrieval"] == "ivf"
    assert res[-1]["HR@10"] == pytest.approx(res[-2]["HR@10"], abs=0.01) and res[-1]["HR@10"] > 0
    r = runner.invoke(app, ["replay", "pop", "--dataset", str(out), *ann])
    assert r.exit_code != 0 and "does not score by a dot product" in r.output
