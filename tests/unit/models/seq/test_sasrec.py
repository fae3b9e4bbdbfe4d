"""SASRec: planted cycles, incremental KV-cache state == recomputation, save/load, seeding."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError
from dynrec.models.base import Recommender
from dynrec.models.config import RunOptions
from dynrec.models.layers import Dropout
from dynrec.models.neural import EpochRecord, TorchRecommender
from dynrec.models.seq.common import full_ce_loss, resolve_loss, training_sequences
from dynrec.models.seq.sasrec import SASRec, SASRecConfig, auto_batch_size, auto_dropout, auto_profile
from dynrec.online.adapters import RecomputeAdapter, adapter_for
from dynrec.preprocessing.split import leave_one_out

OPTS = RunOptions(num_threads=1, device="cpu")


def small(**kw: object) -> SASRecConfig:
    """A small, fast config (tiny feed-forward, no attention dropout) with overrides."""
    return SASRecConfig.from_dict({"ffn_dim": 32, "attn_dropout": 0.0, **kw})


def cycles_data(
    n_users: int = 200, n_cycles: int = 10, cycle_len: int = 3, seq_len: int = 12, seed: int = 0
) -> InteractionData:
    """Items in disjoint cycles a→b→c→a; each user walks one cycle from a random start."""
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(n_users):
        c = rng.integers(n_cycles)
        start = rng.integers(cycle_len)
        walk = [c * cycle_len + (start + t) % cycle_len + 1 for t in range(seq_len)]
        users += [u + 1] * seq_len
        items += walk
    uv = Vocabulary(f"u{i}" for i in range(1, n_users + 1))
    iv = Vocabulary(f"i{i}" for i in range(1, n_cycles * cycle_len + 1))
    return InteractionData.from_arrays(users, items, user_vocab=uv, item_vocab=iv)


def hr_at_1(model: Recommender, data: InteractionData) -> float:
    split = leave_one_out(data)
    idx, _ = model.recommend(split.test.queries, k=1, exclude_seen=False)
    return float((idx[:, 0].numpy() == split.test.targets).mean())


@pytest.fixture(scope="module")
def cycles() -> InteractionData:
    return cycles_data()


@pytest.fixture(scope="module")
def small_model(cycles: InteractionData) -> SASRec:
    cfg = small(embedding_dim=16, max_len=6, epochs=2, batch_size=32, long_term="gate")
    return SASRec(cfg).fit(leave_one_out(cycles).train, options=OPTS)


def test_planted_cycles_learned_fast(cycles: InteractionData) -> None:
    split = leave_one_out(cycles)
    cfg = small(
        embedding_dim=32, max_len=10, epochs=15, batch_size=16, learning_rate=5e-3, dropout=0.0, num_heads=1
    )
    model = SASRec(cfg).fit(split.train, options=OPTS)
    assert hr_at_1(model, cycles) >= 0.95


@pytest.mark.parametrize("long_term", ["none", "gate"])
def test_kv_cache_equals_recompute(cycles: InteractionData, long_term: str) -> None:
    cfg = small(embedding_dim=16, num_heads=2, max_len=5, epochs=1, batch_size=64, long_term=long_term)
    model = SASRec(cfg).fit(leave_one_out(cycles).train, options=OPTS)
    rng = np.random.default_rng(1)
    # histories longer than the window (5) and than the 2-layer receptive field (9), plus short/empty
    hists = [list(rng.integers(1, 31, size=n)) for n in (0, 1, 4, 5, 9, 17, 23)]
    adapter = adapter_for(model)  # batch plumbing over the model's own state (layout-aware select)
    state = model.init_state(QueryBatch.from_histories([h[:2] for h in hists]))
    for t in range(2, 23):
        mask = np.array([len(h) > t for h in hists])
        items = np.array([h[t] if len(h) > t else 1 for h in hists])
        state = adapter.step_where(state, items, np.zeros(len(hists), np.int64), mask)
    cached = model.score_state(state)
    recomputed = model.score(QueryBatch.from_histories(hists))
    torch.testing.assert_close(cached, recomputed, rtol=1e-4, atol=1e-4)
    prefilled = model.score_state(model.init_state(QueryBatch.from_histories(hists)))
    torch.testing.assert_close(prefilled, recomputed, rtol=1e-4, atol=1e-4)


def test_step_does_not_mutate_state(small_model: SASRec) -> None:
    st = small_model.init_state(QueryBatch.from_histories([[1, 2, 3], [4]]))
    before = {k: v.clone() for k, v in st.items()}
    small_model.step_state(st, np.array([5, 6]), np.array([0, 0]))
    for k, v in st.items():
        torch.testing.assert_close(v, before[k])


def test_absolute_positions_have_no_incremental_state(cycles: InteractionData) -> None:
    cfg = small(embedding_dim=16, max_len=6, epochs=1, positional="absolute")
    model = SASRec(cfg).fit(leave_one_out(cycles).train, options=OPTS)
    assert torch.isfinite(model.score(QueryBatch.from_histories([[1, 2], []]))[:, 1:]).all()
    assert model.state_layout() is None  # positions shift as the window slides
    assert isinstance(adapter_for(model), RecomputeAdapter)
    with pytest.raises(DynrecError):
        model.init_state(QueryBatch.from_histories([[1, 2]]))


def test_save_load_identical(small_model: SASRec, tmp_path: Path) -> None:
    q = QueryBatch.from_histories([[1, 2, 3], [], [7, 8, 9, 7, 8, 9, 7, 8]])
    small_model.save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    assert isinstance(loaded, SASRec) and loaded.config == small_model.config
    torch.testing.assert_close(loaded.score(q), small_model.score(q))


def test_dropout_by_dataset_size(cycles: InteractionData, tmp_path: Path) -> None:
    assert auto_dropout(943) == 0.3 and auto_dropout(4095) == 0.3 and auto_dropout(6040) == 0.2
    cfg = SASRecConfig.from_dict({"embedding_dim": 16, "max_len": 6, "epochs": 1})
    model = SASRec(cfg).fit(leave_one_out(cycles).train, options=OPTS)  # 200 users: the small-data dropout
    assert model.dropouts() == (0.3, 0.3) and (model.config.dropout, model.config.attn_dropout) == (0.3, 0.3)
    net = model.net
    assert net is not None and {m.p for m in net.modules() if isinstance(m, Dropout)} == {0.3}
    model.save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    assert isinstance(loaded, SASRec) and loaded.dropouts() == (0.3, 0.3)
    set_ = SASRec(SASRecConfig.from_dict({**cfg.to_dict(), "dropout": 0.1}))
    set_.fit(leave_one_out(cycles).train, options=OPTS)
    assert set_.dropouts() == (0.1, 0.1)  # attention dropout follows the set dropout


def _uniform_lengths(n_users: int, events: int) -> InteractionData:
    users = np.repeat(np.arange(1, n_users + 1), events)
    items = np.tile(np.arange(1, events + 1), n_users)
    uv = Vocabulary(f"u{i}" for i in range(1, n_users + 1))
    iv = Vocabulary(f"i{i}" for i in range(1, events + 1))
    return InteractionData.from_arrays(users, items, user_vocab=uv, item_vocab=iv)


def test_training_profile_by_data() -> None:
    # 4,096 rows of 51 events = 50 targets each: long; one target fewer, or one row fewer: standard
    assert auto_profile(_uniform_lengths(4096, 51), max_len=200) == "long"
    assert auto_profile(_uniform_lengths(4096, 50), max_len=200) == "standard"
    assert auto_profile(_uniform_lengths(4095, 60), max_len=200) == "standard"
    assert auto_profile(_uniform_lengths(4096, 60), max_len=20) == "standard"  # rows cut at max_len + 1
    assert (auto_batch_size(6040, "long"), auto_batch_size(6040), auto_batch_size(943)) == (32, 128, 32)


def test_training_profile_written_into_config(cycles: InteractionData) -> None:
    base = {"embedding_dim": 16, "max_len": 6, "epochs": 1}
    std = SASRec(SASRecConfig.from_dict(base)).fit(leave_one_out(cycles).train, options=OPTS).config
    assert (std.profile, std.learning_rate, std.warmup_steps, std.attn_dropout) == ("standard", 1e-3, 0, 0.3)
    long = SASRec(SASRecConfig.from_dict({**base, "profile": "long", "learning_rate": 5e-3}))
    c = long.fit(leave_one_out(cycles).train, options=OPTS).config  # set values win over the profile
    assert (c.profile, c.learning_rate, c.warmup_steps, c.attn_dropout, c.batch_size) == (
        "long",
        5e-3,
        400,
        0.3,  # attention dropout follows dropout in every profile
        32,
    )


def test_optional_dropout_overrides() -> None:
    c = SASRecConfig()
    assert c.with_overrides({"dropout": "0.25"}).dropout == 0.25
    assert SASRecConfig(dropout=0.1).with_overrides({"dropout": "auto"}).dropout is None
    assert c.with_overrides({"attn_dropout": "none"}).attn_dropout is None
    with pytest.raises(DynrecError, match="dropout='abc'"):
        c.with_overrides({"dropout": "abc"})


def test_seeded_reproducible(cycles: InteractionData, small_model: SASRec) -> None:
    again = SASRec(small_model.config).fit(leave_one_out(cycles).train, options=OPTS)
    for k, v in small_model.tensors().items():
        torch.testing.assert_close(again.tensors()[k], v)


def test_sampled_softmax_trains(cycles: InteractionData) -> None:
    cfg = small(
        embedding_dim=16, max_len=6, epochs=1, loss="sampled", n_negatives=8, negative_sampling="popularity"
    )
    model = SASRec(cfg).fit(leave_one_out(cycles).train, options=OPTS)
    assert torch.isfinite(model.score(QueryBatch.from_histories([[1, 2]]))[:, 1:]).all()


def test_full_ce_matches_autograd() -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(37, 8, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(11, 8, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(1, 11, (37,), generator=g)
    full_ce_loss(h, w, t, chunk=5).backward()
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    logits = h2 @ w2.T
    logits[:, 0] = -torch.inf
    torch.nn.functional.cross_entropy(logits, t).backward()
    torch.testing.assert_close(h.grad, h2.grad)
    torch.testing.assert_close(w.grad, w2.grad)


def test_training_sequences_windows(cycles: InteractionData) -> None:
    seqs, lens = training_sequences(cycles, 4)
    assert seqs.shape == (200, 5) and bool((lens == 5).all())
    seqs2, lens2 = training_sequences(cycles, 4, stride=4)
    assert seqs2.shape[0] == 200 * 3  # 12 events: windows ending at 12, 8, 4
    assert int((lens2 - 1).sum()) == 200 * 11  # every event after the first is a target exactly once


def test_epoch_callbacks_see_each_epoch(cycles: InteractionData) -> None:
    split = leave_one_out(cycles)
    model = SASRec(small(embedding_dim=16, max_len=6, epochs=3, batch_size=32, patience=10, attn_dropout=0.2))
    seen: list[tuple[int, float, float | None, bool]] = []

    def cb(rec: EpochRecord, m: TorchRecommender) -> None:
        assert m.net is not None
        seen.append((rec.epoch, rec.elapsed, rec.valid_ndcg, m.net.training))
        m.net.eval()  # the Trainer puts the module back in training mode

    model.epoch_callbacks.append(cb)
    model.fit(split.train, split.valid, options=OPTS)
    assert [s[0] for s in seen] == [1, 2, 3]
    assert all(s[2] is not None for s in seen)
    assert all(b[1] >= a[1] > 0 for a, b in zip(seen, seen[1:], strict=False))
    assert [r["elapsed"] for r in model.meta["train_log"]] == [s[1] for s in seen]


def test_auto_loss_by_catalogue_size(cycles: InteractionData, tmp_path: Path) -> None:
    """loss="auto" (the default): full CE up to `sampled_above` catalogue items, sampled softmax
    above; `fit` writes the choice into the config (and config.json). An explicit loss stays."""
    assert SASRecConfig().loss == "auto" and SASRecConfig().sampled_above == 100_000
    cfg = small(embedding_dim=8, max_len=6, epochs=1, n_negatives=8)  # 30 items
    assert (
        resolve_loss(cfg, 31) == "ce"
        and resolve_loss(cfg.with_overrides({"sampled_above": 29}), 31) == "sampled"
    )
    assert resolve_loss(cfg.with_overrides({"sampled_above": 30}), 31) == "ce"  # at the threshold: ce
    train = leave_one_out(cycles).train
    big = SASRec(cfg.with_overrides({"sampled_above": "10"})).fit(train, options=OPTS)
    assert big.config.loss == "sampled"
    big.save(tmp_path / "big")
    assert json.loads((tmp_path / "big" / "config.json").read_text())["config"]["loss"] == "sampled"
    loaded = Recommender.load(tmp_path / "big")
    assert isinstance(loaded, SASRec) and loaded.config.loss == "sampled"
    small_cat = SASRec(cfg).fit(train, options=OPTS)
    assert small_cat.config.loss == "ce"
    kept = SASRec(cfg.with_overrides({"loss": "ce", "sampled_above": "10"})).fit(train, options=OPTS)
    assert kept.config.loss == "ce"


def test_auto_loss_trains_like_the_loss_it_resolves_to(cycles: InteractionData) -> None:
    """Same seed: "auto" above the threshold trains exactly like an explicit "sampled"."""
    train = leave_one_out(cycles).train
    cfg = small(embedding_dim=8, max_len=6, epochs=1, n_negatives=8, sampled_above=10)
    auto = SASRec(cfg).fit(train, options=OPTS)
    sampled = SASRec(cfg.with_overrides({"loss": "sampled"})).fit(train, options=OPTS)
    for k, v in auto.tensors().items():
        torch.testing.assert_close(sampled.tensors()[k], v)
