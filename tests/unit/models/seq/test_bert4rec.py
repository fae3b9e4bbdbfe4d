"""BERT4Rec: learns planted cycles, save/load identical, seeded, [MASK] scoring from the history."""

from __future__ import annotations

from pathlib import Path

import torch

from dynrec.data.query import QueryBatch
from dynrec.models.base import Recommender
from dynrec.models.seq.bert4rec import BERT4Rec, BERT4RecConfig
from dynrec.preprocessing.split import leave_one_out

from .test_sasrec import OPTS, cycles_data, hr_at_1


def test_learns_planted_cycles() -> None:
    data = cycles_data()
    cfg = BERT4RecConfig(
        embedding_dim=32,
        ffn_dim=64,
        max_len=8,
        epochs=20,
        batch_size=16,
        learning_rate=1e-2,
        dropout=0.0,
        attn_dropout=0.0,
        mask_prob=0.3,
        last_mask_prob=0.5,
        mask_repeats=1,
    )  # type: ignore[arg-type]
    model = BERT4Rec(cfg).fit(leave_one_out(data).train, options=OPTS)
    assert hr_at_1(model, data) >= 0.4  # MostPopular: ~1/30 (a longer run reaches >= 0.9)


def test_save_load_and_seed(tmp_path: Path) -> None:
    data = cycles_data(n_users=50)
    cfg = BERT4RecConfig(
        embedding_dim=16,
        ffn_dim=16,
        max_len=6,
        epochs=1,
        positional="rope",
        attn_dropout=0.0,
        mask_repeats=1,
    )  # type: ignore[arg-type]
    train = leave_one_out(data).train
    model = BERT4Rec(cfg).fit(train, options=OPTS)
    q = QueryBatch.from_histories([[1, 2, 3], [], [4, 5, 6, 4, 5, 6, 4, 5, 6]])
    s = model.score(q)
    assert s.shape == (3, model.n_items) and torch.isfinite(s[:, 1:]).all() and torch.isneginf(s[:, 0]).all()
    model.save(tmp_path / "m")
    loaded = Recommender.load(tmp_path / "m")
    torch.testing.assert_close(loaded.score(q), s)
    again = BERT4Rec(cfg).fit(train, options=OPTS)
    for k, v in model.tensors().items():
        torch.testing.assert_close(again.tensors()[k], v)
