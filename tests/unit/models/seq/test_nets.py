"""Each neural model's module is built from its config (plus only the vocabulary sizes and, for
SASRec's item text, the text table): sizes follow the config's fields, and the tensor names a saved
model directory holds stay the ones earlier versions wrote."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from dynrec.errors import DynrecError
from dynrec.models.mf.bpr import BPRConfig, BPRNet
from dynrec.models.mf.mf import MFConfig, MFNet
from dynrec.models.mlp import MLPConfig, MLPNet
from dynrec.models.seq.bert4rec import BERT4Rec, BERT4RecConfig
from dynrec.models.seq.caser import CaserConfig, CaserNet
from dynrec.models.seq.gru4rec import GRU4RecConfig, GRU4RecNet
from dynrec.models.seq.sasrec import SASRecConfig, SASRecNet
from dynrec.models.seq.transformer import SeqTransformer, TransformerConfig

BLOCK0 = [
    f"blocks.0.{m}.{p}" for m in ("ff1", "ff2", "ln1", "ln2", "proj", "qkv") for p in ("bias", "weight")
]


def _nets() -> dict[str, tuple[nn.Module, list[str]]]:
    sas = SASRecConfig(dropout=0.2, attn_dropout=0.2, num_layers=1, long_term="gate")
    text = SASRecConfig(dropout=0.2, attn_dropout=0.2, num_layers=1, item_text="on", text_projection="mlp")
    return {
        "sasrec gate": (
            SASRecNet(sas, 10),
            [*BLOCK0, "item_emb.weight", "ln_f.bias", "ln_f.weight", "log_pop"]
            + ["lt_gate.bias", "lt_gate.weight", "lt_proj.bias", "lt_proj.weight"],
        ),
        "sasrec text": (
            SASRecNet(text, 10, torch.zeros(10, 4)),
            [
                *BLOCK0,
                "item_emb.id.weight",
                "item_emb.known",
                "item_emb.proj.0.bias",
                "item_emb.proj.0.weight",
            ]
            + ["item_emb.proj.2.bias", "item_emb.proj.2.weight", "item_emb.text", "ln_f.bias", "ln_f.weight"]
            + ["log_pop"],
        ),
        "gru4rec": (
            GRU4RecNet(GRU4RecConfig(time_gaps=True, tied=False), 10),
            ["gap_emb.weight", "grus.0.bias_hh_l0", "grus.0.bias_ih_l0", "grus.0.weight_hh_l0"]
            + [
                "grus.0.weight_ih_l0",
                "item_bias",
                "item_emb.weight",
                "out_emb.weight",
                "proj.bias",
                "proj.weight",
            ],
        ),
        "caser": (
            CaserNet(CaserConfig(max_len=2), 10, 5),
            ["conv_h.0.bias", "conv_h.0.weight", "conv_h.1.bias", "conv_h.1.weight", "conv_v.bias"]
            + ["conv_v.weight", "fc.bias", "fc.weight", "item_emb.weight", "out_bias", "out_emb.weight"]
            + ["user_emb.weight"],
        ),
        "mlp": (
            MLPNet(MLPConfig(use_user=True, tied=False), 10, 5),
            ["decay_logit", "item_bias", "item_emb.weight", "mlp.0.bias", "mlp.0.weight", "mlp.3.bias"]
            + ["mlp.3.weight", "out_emb.weight", "skip.weight", "user_emb.weight"],
        ),
        "mf": (MFNet(MFConfig(), 5, 10), ["item", "item_bias", "item_rating", "mu", "user", "user_bias"]),
        "bpr": (BPRNet(BPRConfig(), 5, 10), ["bias", "item", "user"]),
    }


@pytest.mark.parametrize("name", list(_nets()))
def test_tensor_names_of_saved_models_do_not_change(name: str) -> None:
    net, want = _nets()[name]
    assert sorted(net.state_dict()) == sorted(want)


def test_sizes_follow_the_config() -> None:
    cfg = SASRecConfig(
        embedding_dim=16, num_layers=3, num_heads=4, ffn_dim=0, dropout=0.1, attn_dropout=0.0, max_len=7
    )
    net = SASRecNet(cfg, 30)
    assert len(net.blocks) == 3 and net.head_dim == 4 and net.context_len() == 3 * 6 + 1
    assert net.state_dict()["blocks.0.ff1.weight"].shape == (16, 16)  # ffn_dim 0 = embedding_dim
    assert net.item_weight.shape == (30, 16) and net.pos_emb is None  # rope: no position table
    absolute = SASRecNet(SASRecConfig(positional="absolute", dropout=0.1, attn_dropout=0.1, max_len=7), 30)
    assert absolute.pos_emb is not None and absolute.pos_emb.weight.shape == (8, 64)
    gru = GRU4RecNet(GRU4RecConfig(embedding_dim=8, hidden_dim=12, num_layers=2), 30)
    assert gru.top(torch.zeros(3, 24)).shape == (3, 12) and gru.gap_emb is None and gru.out_emb is None
    caser = CaserNet(CaserConfig(embedding_dim=8, max_len=3, n_h=5, n_v=2, use_user=False), 30, 4)
    assert len(caser.conv_h) == 3 and caser.fc.in_features == 2 * 8 + 5 * 3 and caser.user_emb is None
    assert MFNet(MFConfig(embedding_dim=6), 4, 30).item.shape == (30, 6)


def test_bert4rec_table_holds_the_mask_token() -> None:
    model = BERT4Rec(BERT4RecConfig(embedding_dim=8, num_heads=2))
    model.meta["n_items"] = 12
    net = model.build_net_from_meta()
    assert isinstance(net, SeqTransformer)
    assert net.item_emb.weight.shape == (13, 8) and net.item_weight.shape == (12, 8)


def test_the_same_seed_builds_the_same_factors() -> None:
    a, b = MFNet(MFConfig(seed=3), 4, 9), MFNet(MFConfig(seed=3), 4, 9)
    assert torch.equal(a.user, b.user) and not torch.equal(a.user, MFNet(MFConfig(seed=4), 4, 9).user)


def test_unresolved_dropout_is_refused() -> None:
    with pytest.raises(DynrecError, match="resolved before the net is built"):
        SASRecNet(SASRecConfig(), 10)  # dropout None: SASRec resolves it from the data first


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"embedding_dim": 10, "num_heads": 4}, "must divide embedding_dim=10"),
        ({"embedding_dim": 6, "num_heads": 2}, "embedding_dim / num_heads must be even"),
    ],
)
def test_transformer_config_checks_heads(settings: dict[str, int], message: str) -> None:
    with pytest.raises(DynrecError, match=message):
        TransformerConfig(**settings)


def test_odd_head_width_is_fine_without_rope() -> None:
    assert TransformerConfig(embedding_dim=6, num_heads=2, positional="absolute").num_heads == 2
