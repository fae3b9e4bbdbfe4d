"""Compressed inference: int8 dynamic quantisation of neural scoring, bf16 detection, refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dynrec.data.query import QueryBatch
from dynrec.errors import DynrecError
from dynrec.models import registry
from dynrec.models.base import Recommender
from dynrec.models.capabilities import IncrementalState
from dynrec.models.config import RunOptions
from dynrec.models.neural import quantize as quantize_module
from dynrec.models.neural.base import TorchRecommender
from dynrec.models.neural.quantize import cpu_bf16_supported, is_quantized, quantize
from tests.conftest import clustered_data

OPTS = RunOptions(num_threads=1, device="cpu")
HISTS = [[1, 2, 3, 4], [13, 14], [25, 26, 27, 28, 29, 30, 25], [7]]


@pytest.fixture(scope="module")
def sasrec() -> Recommender:
    data = clustered_data(n_users=40, n_items=32, n_groups=4, per_user=8, seed=1)
    cfg = {
        "embedding_dim": 32,
        "max_len": 6,
        "ffn_dim": 64,
        "epochs": 3,
        "dropout": 0.0,
        "learning_rate": 5e-3,
    }
    return registry.create_model("sasrec", config=cfg).fit(data, options=OPTS)


def test_int8_copy_scores_like_float32_and_leaves_the_original(sasrec: Recommender) -> None:
    q = QueryBatch.from_histories(HISTS)
    before = sasrec.score(q)
    q8 = quantize(sasrec, "int8")
    assert q8 is not sasrec and is_quantized(q8) and not is_quantized(sasrec)
    assert isinstance(q8, TorchRecommender) and q8.net is not None
    kinds = {type(m) for m in q8.net.modules()}
    assert torch.ao.nn.quantized.dynamic.Linear in kinds  # qkv stays float32 (FLOAT_LINEARS)
    assert all(n.endswith("qkv") for n, m in q8.net.named_modules() if type(m) is nn.Linear)
    torch.testing.assert_close(sasrec.score(q), before)  # the float32 model is untouched
    s8 = q8.score(q)
    finite = torch.isfinite(before)
    assert torch.equal(finite, torch.isfinite(s8))
    err = (s8[finite] - before[finite]).abs().max()
    assert 0 < err < 0.05 * before[finite].abs().max()  # changed, but by quantisation noise only
    assert q8.recommend(q, 1)[0].tolist() == sasrec.recommend(q, 1)[0].tolist()


def test_int8_incremental_state_matches_its_own_score(sasrec: Recommender) -> None:
    q8 = quantize(sasrec, "int8")
    state = q8.init_state(QueryBatch.from_histories([h[:1] for h in HISTS]))  # type: ignore[attr-defined]
    longest = max(len(h) for h in HISTS)
    for t in range(1, longest):
        rows = [i for i, h in enumerate(HISTS) if len(h) > t]
        sub = {k: v[:, rows] if k in ("keys", "values") else v[rows] for k, v in state.items()}
        sub = q8.step_state(sub, np.array([HISTS[i][t] for i in rows]), np.zeros(len(rows), np.int64))  # type: ignore[attr-defined]
        for k, v in sub.items():
            if k in ("keys", "values"):
                state[k][:, rows] = v
            else:
                state[k][rows] = v
    cached = q8.score_state(state)  # type: ignore[attr-defined]
    direct = q8.score(QueryBatch.from_histories(HISTS))
    fin = torch.isfinite(direct)
    assert (cached[fin] - direct[fin]).abs().max() < 0.05 * direct[fin].abs().max()
    assert cached.argmax(1).tolist() == direct.argmax(1).tolist()


def test_bf16_follows_the_hardware(sasrec: Recommender) -> None:
    if cpu_bf16_supported():
        qb = quantize(sasrec, "bf16")
        assert torch.isfinite(qb.score(QueryBatch.from_histories(HISTS))[:, 1:]).all()
    else:
        with pytest.raises(DynrecError, match="no bfloat16 units"):
            quantize(sasrec, "bf16")


NEURAL = {
    "mf": {"epochs": 2},
    "bpr": {"epochs": 2},
    "mlp": {"epochs": 2},
    "gru4rec": {"epochs": 2},
    "caser": {"epochs": 2, "max_len": 6},
    "bert4rec": {"epochs": 2, "max_len": 6},
    "sasrec": {"epochs": 2, "max_len": 6},
    "sasrec-gate": {"epochs": 2, "max_len": 6, "long_term": "gate"},
    "sasrec-absolute": {"epochs": 2, "max_len": 6, "positional": "absolute"},
}


@pytest.mark.parametrize("name", list(NEURAL))
def test_bf16_copy_scores_like_float32(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every neural model's bf16 copy scores (and, with incremental state, steps) in its own dtype
    without mixing it with float32, within bf16 rounding of the float32 model. Run on any CPU:
    the hardware check is bypassed (without bf16 units the arithmetic is emulated, same rounding)."""
    monkeypatch.setattr(quantize_module, "cpu_bf16_supported", lambda: True)
    data = clustered_data(n_users=40, n_items=32, n_groups=4, per_user=8, seed=1)
    model = registry.create_model(name.split("-")[0], config=NEURAL[name]).fit(data, options=OPTS)
    q = QueryBatch.from_histories([*HISTS, []])
    qb = quantize(model, "bf16")
    assert isinstance(qb, TorchRecommender) and qb.net is not None
    assert {p.dtype for p in qb.net.parameters()} == {torch.bfloat16}
    before, s16 = model.score(q), qb.score(q)
    assert s16.dtype == torch.float32
    fin = torch.isfinite(before)
    assert torch.equal(fin, torch.isfinite(s16))
    err = (s16[fin] - before[fin]).abs().max()
    assert 0 < err < 0.02 * before[fin].abs().max()  # changed, by bf16 rounding (2^-8 relative) only
    assert qb.recommend(q, 3)[0].shape == (len(q), 3)
    if isinstance(qb, IncrementalState) and qb.state_layout() is not None:  # bf16 too, equal to score
        state = qb.init_state(QueryBatch.from_histories([h[:-1] for h in HISTS]))
        state = qb.step_state(state, np.array([h[-1] for h in HISTS]), np.zeros(len(HISTS), np.int64))
        direct = qb.score(QueryBatch.from_histories(HISTS))
        torch.testing.assert_close(qb.score_state(state)[:, 1:], direct[:, 1:], rtol=0.02, atol=0.02)


def test_refusals(sasrec: Recommender) -> None:
    assert quantize(sasrec, "float32") is sasrec
    with pytest.raises(DynrecError, match="precision='fp8'"):
        quantize(sasrec, "fp8")
    with pytest.raises(DynrecError, match="already"):
        quantize(quantize(sasrec, "int8"), "int8")
    pop = registry.create_model("pop").fit(clustered_data(n_users=10, n_items=8), options=OPTS)
    with pytest.raises(DynrecError, match="not a neural model"):
        quantize(pop, "int8")
    with pytest.raises(DynrecError, match="quantised scoring copy"):  # no model file of packed layers
        quantize(sasrec, "int8").tensors()


def test_int8_keeps_the_item_tables_float32_with_item_text() -> None:
    data = clustered_data(n_users=30, n_items=24, n_groups=3, per_user=6, seed=2)
    model = registry.create_model(
        "sasrec", config={"embedding_dim": 16, "max_len": 6, "ffn_dim": 32, "epochs": 1, "item_text": "on"}
    )
    table = torch.randn(data.n_items, 8, generator=torch.Generator().manual_seed(0))
    table[0] = 0.0
    model.set_item_text(table, "test")  # type: ignore[attr-defined]
    model.fit(data, options=OPTS)
    q8 = quantize(model, "int8")
    assert isinstance(q8, TorchRecommender) and q8.net is not None
    quantised = [n for n, m in q8.net.named_modules() if isinstance(m, torch.ao.nn.quantized.dynamic.Linear)]
    assert quantised and not any(n.startswith("item_emb") for n in quantised)
    torch.testing.assert_close(q8.item_embeddings(), model.item_embeddings())  # type: ignore[attr-defined]
    q = QueryBatch.from_histories(HISTS[:2])
    fin = torch.isfinite(model.score(q))
    assert (q8.score(q)[fin] - model.score(q)[fin]).abs().max() < 0.05 * model.score(q)[fin].abs().max()
