"""BERT4Rec: a bidirectional Transformer trained to fill in masked items (Sun et al., CIKM 2019).

Training: each row (the last ``max_len`` items of a user's training sequence) has every real item
replaced by a [MASK] token with probability ``mask_prob`` (at least one per row; the last item is
also masked with probability ``last_mask_prob``, which matches the inference task); the model
predicts the masked items with a softmax over the whole catalogue (chunked, `common.full_ce_loss`)
or sampled softmax. Inference: [MASK] is appended after the last ``max_len - 1`` events and its
hidden state, dotted with the (tied) item embeddings, scores the catalogue.

The Transformer is `SeqTransformer` from `dynrec.models.seq.transformer` (pre-LN blocks,
`scaled_dot_product_attention`, built from the config's `TransformerConfig` options) without the
causal mask.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.errors import NotFittedError
from dynrec.models.config import Fraction, PositiveInt, Probability
from dynrec.models.explain import leave_one_out
from dynrec.models.neural import TorchRecommender
from dynrec.models.neural.base import Optimizer
from dynrec.models.seq.common import (
    SequenceBatches,
    catalogue_loss,
    histories_right_padded,
    log_popularity,
    resolve_amp,
    sampling_probs,
    training_sequences,
)
from dynrec.models.seq.transformer import Positional, SeqTransformer, TransformerConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BERT4RecConfig(TransformerConfig):
    """BERT4Rec options (on top of the Transformer's `TransformerConfig`)."""

    dropout: Fraction = 0.2
    """As in `TransformerConfig`; BERT4Rec takes no None (it resolves nothing from the data)."""
    attn_dropout: Fraction = 0.2
    max_len: PositiveInt = 200
    mask_prob: Probability = 0.2
    last_mask_prob: Probability = 0.1
    """Extra probability of masking each row's last item (the position inference asks about)."""
    mask_repeats: PositiveInt = 10
    """Passes over the training rows per epoch, each with fresh masks (BERT4Rec's "dupe factor"):
    only ~mask_prob of the positions give a target per pass."""
    positional: Positional = "absolute"
    """absolute (learned, as in the paper) | rope | none."""
    optimizer: Optimizer = "adam"
    epochs: PositiveInt = 40
    """Epochs of ``mask_repeats`` passes each."""
    patience: PositiveInt = 3
    score_batch: PositiveInt = 256


class BERT4Rec(TorchRecommender):
    name = "bert4rec"
    config_class = BERT4RecConfig
    config: BERT4RecConfig

    def __init__(self, config: BERT4RecConfig | None = None) -> None:
        super().__init__(config)
        self._batches: SequenceBatches | None = None
        self._mask_gen: torch.Generator | None = None
        self._loss_gen: torch.Generator | None = None
        self._probs: torch.Tensor | None = None

    def _make_net(self, n_items: int) -> SeqTransformer:
        c = self.config
        item_emb = nn.Embedding(n_items + 1, c.embedding_dim, padding_idx=0)  # + [MASK] (row n_items)
        return SeqTransformer(c, item_emb, n_items)

    def build_net(self, data: InteractionData) -> nn.Module:
        net = self._make_net(data.n_items)
        net.log_pop.copy_(log_popularity(data))
        return net

    def build_net_from_meta(self) -> nn.Module:
        return self._make_net(int(self.meta["n_items"]))

    def item_embeddings(self) -> torch.Tensor:
        """[n_items, d] the model's input item embeddings (row 0 = padding)."""
        return self._net().item_weight.detach()[: self.n_items].float().cpu()

    def _net(self) -> SeqTransformer:
        if not isinstance(self.net, SeqTransformer):
            raise NotFittedError(f"{self.name} is not fitted")
        return self.net

    # -- training --------------------------------------------------------------------------
    def prepare(self, data: InteractionData) -> None:
        c = self.config
        # rows of max_len items (training_sequences returns max_len_arg + 1 columns)
        seqs, lens = training_sequences(data, c.max_len - 1, stride=c.window_stride, min_len=1)
        self._batches = SequenceBatches(seqs, lens, c.batch_size, bucket=c.bucket)
        self._mask_gen = torch.Generator().manual_seed(c.seed + 2)
        self._loss_gen = torch.Generator().manual_seed(c.seed + 1)
        self._probs = sampling_probs(data)
        self.meta["train_precision"] = "bf16" if resolve_amp(c.amp, self.device) else "float32"

    def train_batches(self, data: InteractionData, gen: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        if self._batches is None:
            self.prepare(data)
        assert self._batches is not None
        for _ in range(max(1, self.config.mask_repeats)):
            for b in self._batches(gen):
                b["n_tokens"] = (b["seq"] > 0).sum().reshape(1)
                yield b

    def mask_batch(self, seq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Masked inputs and the boolean mask of positions to predict, for right-padded ``seq [B, L]``."""
        assert self._mask_gen is not None
        c = self.config
        cpu = seq.cpu()
        real = cpu > 0
        lens = real.sum(1)
        u = torch.rand(cpu.shape, generator=self._mask_gen)
        masked = (u < c.mask_prob) & real
        rows = torch.arange(cpu.shape[0])
        last = (lens - 1).clamp(min=0)
        force = (~masked.any(1)) | (torch.rand(cpu.shape[0], generator=self._mask_gen) < c.last_mask_prob)
        masked[rows[force], last[force]] = True
        masked &= real
        inputs = cpu.masked_fill(masked, self._net().n_items)
        return inputs.to(seq.device), masked.to(seq.device)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        net = self._net()
        seq = batch["seq"]
        inputs, masked = self.mask_batch(seq)
        bf16 = resolve_amp(self.config.amp, self.device)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            h = net.encode(inputs, causal=False)[masked]
        return catalogue_loss(
            self.config, h.float(), net.item_weight, seq[masked], gen=self._loss_gen, probs=self._probs
        )

    # -- scoring ---------------------------------------------------------------------------
    def explain(self, batch: QueryBatch, items: torch.Tensor) -> torch.Tensor:
        """Leave-one-out attribution (self-attention is not additive over the events): each of the
        last 50 events contributes the score drop when it alone is removed from the history."""
        return leave_one_out(self.score, batch, items)

    def score_net(self, batch: QueryBatch) -> torch.Tensor:
        net = self._net()
        n = len(batch)
        out = torch.empty(n, net.n_items, dtype=torch.float32, device=self.device)
        order = np.argsort(-batch.lengths, kind="stable")
        step = max(1, self.config.score_batch)
        for a in range(0, n, step):
            idx = order[a : a + step]
            sub = batch.take(idx)
            hist, clen = histories_right_padded(sub.indptr, sub.items, self.config.max_len - 1)
            width = int(clen.max()) + 1 if len(clen) else 1
            inp = torch.zeros(len(idx), width, dtype=torch.long)
            inp[:, : hist.shape[1]] = hist[:, :width]
            inp[torch.arange(len(idx)), clen] = net.n_items  # [MASK] after the last event
            inp = inp.to(self.device)
            h = net.encode(inp, causal=False)
            hq = h[torch.arange(len(idx), device=self.device), clen.to(self.device)]  # the net's dtype
            s = hq @ net.item_weight.T
            empty = torch.from_numpy(sub.lengths == 0).to(self.device)
            if bool(empty.any()):
                s[empty] = net.log_pop
            out[torch.from_numpy(idx).to(self.device)] = s.float()
        return out


__all__ = ["BERT4Rec", "BERT4RecConfig"]
