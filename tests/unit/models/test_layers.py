"""Fast CPU dropout, SASRec's explicit attention-dropout path, pruned scoring states, amp resolution."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from dynrec.models.layers import Dropout, dropout_mask
from dynrec.models.seq.common import histories_right_padded, resolve_amp
from dynrec.models.seq.sasrec import SASRecConfig, SASRecNet
from dynrec.models.seq.transformer import Block, TransformerConfig


def test_dropout_mask_rate_and_independence() -> None:
    torch.manual_seed(0)
    m = dropout_mask((1000, 1001), 0.2)  # odd size: the last 64-bit word is only partly used
    assert m.shape == (1000, 1001) and m.dtype == torch.bool
    keep = m.float()
    assert abs(float(keep.mean()) - 0.8) < 0.002  # 1M draws: s.e. 0.0004
    # the four int16 lanes of one 64-bit draw are independent: neighbours are not correlated
    flat = keep.flatten()[: 4 * 250_000].view(-1, 4)
    c = torch.corrcoef(flat.T)
    assert float((c - torch.eye(4)).abs().max()) < 0.01


def test_dropout_forward_backward_scale_and_mask() -> None:
    torch.manual_seed(1)
    x = torch.randn(64, 33, requires_grad=True)
    d = Dropout(0.25).train()
    y = d(x)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / 0.75)
    (y * 3.0).sum().backward()  # type: ignore[no-untyped-call]
    assert x.grad is not None
    assert torch.allclose(x.grad, kept.float() * 3.0 / 0.75)


def test_dropout_identity_cases_and_reproducible() -> None:
    x = torch.randn(10, 10)
    assert torch.equal(Dropout(0.5).eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
    torch.manual_seed(3)
    a = Dropout(0.5).train()(x)
    torch.manual_seed(3)
    b = Dropout(0.5).train()(x)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="dropout probability"):
        Dropout(1.0)


@pytest.mark.parametrize("causal", [True, False])
def test_explicit_attention_equals_sdpa(causal: bool) -> None:
    torch.manual_seed(0)
    blk = Block(TransformerConfig(embedding_dim=16, num_heads=2, ffn_dim=32, dropout=0.0, attn_dropout=0.3))
    blk.attn_drop.eval()  # dropout off: the explicit products must be SDPA's function
    q, k, v = (torch.randn(3, 2, 7, 8) for _ in range(3))
    mask = None if causal else (torch.rand(3, 1, 7, 7) > 0.3) | torch.eye(7, dtype=torch.bool)
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)
    got = blk.dropout_attention(q, k, v, mask, causal)
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_pruned_states_equal_full_encode(layers: int) -> None:
    torch.manual_seed(0)
    cfg = SASRecConfig(
        embedding_dim=16, num_layers=layers, num_heads=2, ffn_dim=32, dropout=0.1, attn_dropout=0.0, max_len=6
    )
    net = SASRecNet(cfg, 50).eval()
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0.0, 0.3)
    rng = np.random.default_rng(0)
    lens = rng.integers(0, 40, 24)
    lens[:4] = [0, 1, 6, 6 * layers + 3]
    indptr = np.concatenate([[0], np.cumsum(lens)])
    items = rng.integers(1, 50, int(indptr[-1]))
    hist, clen = histories_right_padded(indptr, items, net.context_len())
    hist = hist[:, : int(clen.max())]
    with torch.no_grad():
        got = net.user_states(hist, clen)
        h = net.encode(hist, causal=True, window=net.config.max_len)
        want = h[torch.arange(len(lens)), (clen - 1).clamp(min=0)]
    ok = clen > 0
    assert torch.allclose(got[ok], want[ok], atol=1e-5)


def test_resolve_amp() -> None:
    cpu = torch.device("cpu")
    assert resolve_amp("none", cpu) is False
    assert resolve_amp("bf16", cpu) is True
    has = bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    assert resolve_amp("auto", cpu) is has
    with pytest.raises(ValueError, match="amp must be"):
        resolve_amp("fp8", cpu)
