"""SASRec's pruned prefill (queries only where the state needs them, left-aligned rows, grouped by
context length) == running the whole context through every block, and == stepping event by event."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dynrec.data.query import QueryBatch
from dynrec.models.config import RunOptions
from dynrec.models.seq.common import histories_right_padded
from dynrec.models.seq.sasrec import SASRec, SASRecConfig, SASRecNet, SASRecState
from dynrec.online.adapters import adapter_for
from dynrec.preprocessing.split import leave_one_out
from tests.unit.models.seq.test_sasrec import cycles_data

W = 5  # max_len: histories below, at and above it and above the receptive field are tested


def full_prefill(net: SASRecNet, hist: torch.Tensor, clen: torch.Tensor, length: torch.Tensor) -> SASRecState:
    """Reference: every position of the right-padded context through every block (band mask),
    the cache read off each block's keys/values at the last ``max_len`` real positions."""
    b, c = hist.shape
    w = net.config.max_len
    cols = torch.arange(c)
    pos = (length - clen)[:, None] + cols[None, :]
    rope = net.rope(pos)
    x = net.embed(hist)
    d = cols[:, None] - cols[None, :]
    band = (d >= 0) & (d < w)
    keys = torch.zeros(len(net.blocks), b, net.config.num_heads, w, net.head_dim)
    values = torch.zeros_like(keys)
    for li, blk in enumerate(net.block_list()):
        q, k, v = blk.project(x, rope)
        for r in range(b):
            for j in range(max(0, int(clen[r]) - w), int(clen[r])):
                keys[li, r, :, int(pos[r, j]) % w] = k[r, :, j]
                values[li, r, :, int(pos[r, j]) % w] = v[r, :, j]
        x = blk.finish(x, F.scaled_dot_product_attention(q, k, v, attn_mask=band))
    h = net.ln_f(x)[torch.arange(b), (clen - 1).clamp(min=0)]
    h = torch.where((length > 0)[:, None], h, torch.zeros_like(h))
    return SASRecState(keys, values, length, h, torch.zeros_like(h))


def random_net(layers: int) -> SASRecNet:
    torch.manual_seed(layers)
    cfg = SASRecConfig(
        embedding_dim=16, num_layers=layers, num_heads=2, ffn_dim=24, dropout=0.1, attn_dropout=0.0, max_len=W
    )
    net = SASRecNet(cfg, 40).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    return net


@pytest.mark.parametrize("layers", [1, 2, 3])
@pytest.mark.parametrize("lengths", [(0, 1, 3, 4, 5, 6, 9, 13, 30), (2, 3), (0,), (31, 40)])
def test_prefill_equals_full_context(layers: int, lengths: tuple[int, ...]) -> None:
    net = random_net(layers)
    lens = np.array(lengths)
    indptr = np.concatenate([[0], np.cumsum(lens)])
    items = np.random.default_rng(layers).integers(1, 40, int(indptr[-1]))
    hist, clen = histories_right_padded(indptr, items, net.context_len())
    hist = hist[:, : max(1, int(clen.max()))]
    length = torch.from_numpy(lens)
    with torch.no_grad():
        got = net.prefill(hist, clen, length)
        want = full_prefill(net, hist, clen, length)
    for key in ("keys", "values", "hidden"):
        torch.testing.assert_close(getattr(got, key), getattr(want, key), rtol=1e-5, atol=1e-5)
    assert torch.equal(got.length, length)
    # the cache of a history shorter than the window holds zeros past its events
    short = int(np.flatnonzero(lens < W)[0]) if (lens < W).any() else None
    if short is not None:
        assert not bool(got.keys[:, short, :, int(lens[short]) :].any())


@pytest.fixture(scope="module")
def gate_model() -> SASRec:
    cfg = SASRecConfig.from_dict(
        {
            "ffn_dim": 16,
            "attn_dropout": 0.0,
            "embedding_dim": 16,
            "max_len": W,
            "epochs": 1,
            "batch_size": 64,
            "long_term": "gate",
            "score_batch": 3,  # several length groups in one init_state call
        }
    )
    return SASRec(cfg).fit(
        leave_one_out(cycles_data()).train, options=RunOptions(num_threads=1, device="cpu")
    )


def test_grouped_init_state_equals_one_by_one_and_stepping(gate_model: SASRec) -> None:
    rng = np.random.default_rng(3)
    hists = [list(rng.integers(1, 31, size=n)) for n in (7, 0, 23, 1, 5, 12, 4, 30)]  # unsorted
    batch = gate_model.init_state(QueryBatch.from_histories(hists))
    adapter = adapter_for(gate_model)  # layout-aware row selection
    for r, h in enumerate(hists):
        one = gate_model.init_state(QueryBatch.from_histories([h]))
        row = adapter.select(batch, np.array([r]))
        for key, v in one.items():
            torch.testing.assert_close(row[key], v, rtol=1e-5, atol=1e-5)
    # stepping from empty histories reaches the same scores (long-term mean included)
    state = gate_model.init_state(QueryBatch.from_histories([[] for _ in hists]))
    for t in range(max(map(len, hists))):
        mask = np.array([len(h) > t for h in hists])
        items = np.array([h[t] if len(h) > t else 1 for h in hists])
        state = adapter.step_where(state, items, np.zeros(len(hists), np.int64), mask)
    torch.testing.assert_close(
        gate_model.score_state(state), gate_model.score_state(batch), rtol=1e-4, atol=1e-4
    )
    torch.testing.assert_close(batch["lt_sum"], state["lt_sum"], rtol=1e-5, atol=1e-5)
