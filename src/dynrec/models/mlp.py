"""`mlp`: the article's "DynamicInterestModel", done right (NCF / YouTube-DNN style).

What the article's sample did wrong and what this does instead (see MISSION.md):
* it dropped the ids and fed the rating in as a feature *and* the label (leakage); here the input is
  the user's *earlier* items only (and optionally the user id) and the label is the next item;
* it normalised every column including the target and split randomly (future leaking into
  training); here items are embeddings, and every training target is predicted from events strictly
  before it, on a time-respecting split;
* it regressed a rating with a 1-D `output_dim` mismatch; here the output is a score for every item
  (implicit feedback), trained with full-catalogue softmax cross-entropy and Adam (torch's, the real
  one).

Model: the history's item embeddings are pooled two ways — a plain mean (long-term interest) and an
exponentially recency-weighted mean with a learned decay (short-term interest) — concatenated
(optionally with a user-id embedding), passed through an MLP to a d-vector, and scored by a dot product
with every item embedding plus an item bias. Training is SASRec-style: each training row of a user
gives a target at every position, with the causal pooled history at that position computed for all
positions at once (cumulative sums / one decay-matrix product): no per-prefix samples.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
import torch
from torch import nn

from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.errors import NotFittedError
from dynrec.models.config import Fraction, PositiveFloat, PositiveInt, Range
from dynrec.models.explain import leave_one_out
from dynrec.models.neural import TorchRecommender
from dynrec.models.neural.base import Optimizer
from dynrec.models.seq.common import (
    SequenceBatches,
    SequenceConfig,
    biased_ce,
    histories_right_padded,
    sampling_probs,
)
from dynrec.models.seq.event_samples import first_event_lookup, padded_lookup, position_rows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MLPConfig(SequenceConfig):
    """Options of the `mlp` model; `max_len` = recent history items pooled."""

    embedding_dim: PositiveInt = 64
    hidden: tuple[PositiveInt, ...] = (256,)
    """Hidden layer widths of the MLP (ReLU + dropout after each)."""
    dropout: Fraction = 0.2
    pooling: Literal["mean", "decay", "both"] = "both"
    """mean (long-term) | decay (short-term, learned recency decay) | both (concatenated)."""
    decay: Annotated[float, Range(0.0, 1.0, lo_open=True, hi_open=True)] = 0.9
    """Initial per-event decay of the short-term pooling (learned)."""
    use_user: bool = False
    """Add a user-id embedding (the learned unknown-user vector for unknown users)."""
    user_dropout: Fraction = 0.1
    """With `use_user`: probability that a training row is seen as the unknown user."""
    tied: bool = True
    """Score with the input item embeddings (else a separate output embedding)."""
    optimizer: Optimizer = "adam"
    batch_size: PositiveInt = 64
    learning_rate: PositiveFloat = 5e-3
    epochs: PositiveInt = 60
    patience: PositiveInt = 5


class MLPNet(nn.Module):
    """Pooled history (mean and/or learned-decay mean, + user embedding) -> MLP with a linear
    shortcut -> dot with the item embeddings + item bias.

    Built from its `config` and the vocabulary sizes `n_items`, `n_users` (row 0 of each: padding
    and the unknown user)."""

    def __init__(self, config: MLPConfig, n_items: int, n_users: int) -> None:
        super().__init__()
        c = config
        dim = c.embedding_dim
        self.config = config
        self.item_emb = nn.Embedding(n_items, dim, padding_idx=0)
        self.user_emb = nn.Embedding(n_users, dim) if c.use_user else None  # row 0 = unknown user
        d = min(max(c.decay, 1e-4), 1 - 1e-4)
        self.decay_logit = nn.Parameter(torch.tensor(float(np.log(d / (1 - d)))))
        self.drop = nn.Dropout(c.dropout)
        n_pool = 2 if c.pooling == "both" else 1
        n_in = dim * n_pool + (dim if c.use_user else 0)
        layers: list[nn.Module] = []
        for width in c.hidden:
            layers += [nn.Linear(n_in, width), nn.ReLU(), nn.Dropout(c.dropout)]
            n_in = width
        layers.append(nn.Linear(n_in, dim))
        self.mlp = nn.Sequential(*layers)
        # linear shortcut from the pooled history, initialised to their average: the untrained
        # model already scores by similarity to the history, and the MLP learns the correction
        self.skip = nn.Linear(n_pool * dim, dim, bias=False)
        with torch.no_grad():
            self.skip.weight.copy_(torch.cat([torch.eye(dim)] * n_pool, dim=1) / n_pool)
        self.out_emb = None if c.tied else nn.Embedding(n_items, dim)
        self.item_bias = nn.Parameter(torch.zeros(n_items))
        nn.init.normal_(self.item_emb.weight, std=0.05)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        if self.user_emb is not None:
            nn.init.normal_(self.user_emb.weight, std=0.05)
        if self.out_emb is not None:
            nn.init.normal_(self.out_emb.weight, std=0.05)

    def output_weight(self) -> torch.Tensor:
        return self.item_emb.weight if self.out_emb is None else self.out_emb.weight

    def _log_a(self) -> torch.Tensor:
        return nn.functional.logsigmoid(self.decay_logit)

    def pool_all(self, x: torch.Tensor) -> torch.Tensor:
        """Causal pooling at every position: right-padded x [B, L] -> [B, L, P*d] (position t pools
        items 0..t)."""
        e = self.drop(self.item_emb(x))  # [B, L, d]
        m = (x > 0).to(e.dtype)  # [B, L]
        parts = []
        if self.config.pooling in ("mean", "both"):
            parts.append(torch.cumsum(e, 1) / torch.cumsum(m, 1).clamp(min=1.0)[..., None])
        if self.config.pooling in ("decay", "both"):
            t = torch.arange(x.shape[1], device=x.device)
            diff = (t[:, None] - t[None, :]).to(e.dtype)  # [L, L] t - j
            w = torch.exp(diff.clamp(min=0) * self._log_a()) * (diff >= 0).to(e.dtype)  # a^(t-j), j <= t
            num = torch.einsum("tj,bjd->btd", w, e)
            den = (m @ w.T).clamp(min=1e-6)  # [B, L]
            parts.append(num / den[..., None])
        return torch.cat(parts, dim=-1)

    def pool_last(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Pooling of the whole (right-padded) history: [B, L], [B] -> [B, P*d]."""
        e = self.drop(self.item_emb(x))  # [B, L, d]
        m = (x > 0).to(e.dtype)
        parts = []
        if self.config.pooling in ("mean", "both"):
            parts.append(e.sum(1) / m.sum(1).clamp(min=1.0)[:, None])
        if self.config.pooling in ("decay", "both"):
            age = (lengths[:, None] - 1 - torch.arange(x.shape[1], device=x.device)[None, :]).to(e.dtype)
            w = torch.exp(age.clamp(min=0) * self._log_a()) * m  # [B, L]
            parts.append((w[..., None] * e).sum(1) / w.sum(1).clamp(min=1e-6)[:, None])
        return torch.cat(parts, dim=-1)

    def head(self, pooled: torch.Tensor, users: torch.Tensor | None) -> torch.Tensor:
        """[..., P*d] (+ users [...]) -> [..., d]."""
        x = pooled
        if self.user_emb is not None:
            assert users is not None
            x = torch.cat([pooled, self.drop(self.user_emb(users))], dim=-1)
        out: torch.Tensor = self.mlp(x) + self.skip(pooled)
        return out

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.output_weight().T + self.item_bias


class MLPRecommender(TorchRecommender):
    name = "mlp"
    config_class = MLPConfig
    config: MLPConfig

    def __init__(self, config: MLPConfig | None = None) -> None:
        super().__init__(config)
        self._batches: SequenceBatches | None = None
        self._row_users: torch.Tensor | None = None
        self._probs: torch.Tensor | None = None
        self._gen: torch.Generator | None = None

    def build_net(self, data: InteractionData) -> nn.Module:
        return self.build_net_from_meta()

    def build_net_from_meta(self) -> nn.Module:
        return MLPNet(self.config, int(self.meta["n_items"]), int(self.meta["n_users"]))

    def prepare(self, data: InteractionData) -> None:
        c = self.config
        pos, lens = position_rows(data, c.max_len, c.window_stride)  # flat positions + 1
        seqs = padded_lookup(data.items, 0)[pos]  # [n_rows, max_len + 1] items
        row_users = torch.from_numpy(data.users)[pos[:, 0] - 1]  # every row has >= 2 events
        first = first_event_lookup(data)[pos[:, 0]].long()  # row starts at the user's first event
        # user and first-flag ride as two extra columns, split off in train_batches
        self._batches = SequenceBatches(
            torch.cat([seqs, row_users[:, None], first[:, None]], dim=1), lens, c.batch_size, bucket=False
        )
        self._probs = sampling_probs(data) if c.loss == "sampled" else None
        self._gen = torch.Generator().manual_seed(c.seed + 1)
        log.info("mlp: %d training rows, %d targets", len(lens), int((lens - 1).sum()))

    def train_batches(self, data: InteractionData, gen: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        if self._batches is None:
            self.prepare(data)
        assert self._batches is not None
        p = self.config.user_dropout if self.config.use_user else 0.0
        for idx in self._batches.batch_indices(gen):
            rows = self._batches.seqs[idx]
            seq, users, first = rows[:, :-2], rows[:, -2], rows[:, -1].bool()
            lens = self._batches.lengths[idx]
            seq = seq[:, : int(lens.max())]
            if p > 0:
                users = users.masked_fill(torch.rand(users.shape, generator=gen) < p, 0)
            yield {"seq": seq, "users": users, "first": first, "n_tokens": (lens - 1).sum().reshape(1)}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        net = self._mlp()
        seq = batch["seq"]
        inputs, targets = seq[:, :-1], seq[:, 1:]  # [B, m]
        pooled = net.pool_all(inputs)  # [B, m, P*d]
        mask = targets > 0
        users = batch["users"][:, None].expand_as(inputs)[mask]
        z = net.head(pooled[mask], users)  # [T, d]
        tgt = targets[mask]
        first = batch["first"]  # a user's first event is also the target of the empty history
        z0 = net.head(pooled.new_zeros(int(first.sum()), pooled.shape[-1]), batch["users"][first])
        z, tgt = torch.cat([z, z0]), torch.cat([tgt, seq[:, 0][first]])
        return biased_ce(
            self.config,
            z,
            net.output_weight(),
            net.item_bias,
            tgt,
            gen=self._gen,
            probs=self._probs,
        )

    def release_training_data(self) -> None:
        self._batches = self._probs = None

    def item_embeddings(self) -> torch.Tensor:
        """[n_items, d] the model's input item embeddings (row 0 = padding)."""
        return self._mlp().item_emb.weight.detach()[: self.n_items].float().cpu()

    def _mlp(self) -> MLPNet:
        if self.net is None:
            raise NotFittedError(f"{self.name} is not fitted")
        assert isinstance(self.net, MLPNet)
        return self.net

    def explain(self, batch: QueryBatch, items: torch.Tensor) -> torch.Tensor:
        """Leave-one-out attribution (the network is not additive over the events): each of the last
        50 events contributes the score drop when it alone is removed from the history."""
        return leave_one_out(self.score, batch, items)

    def score_net(self, batch: QueryBatch) -> torch.Tensor:
        net = self._mlp()
        hist, lens = histories_right_padded(batch.indptr, batch.items, self.config.max_len)
        users = batch.known_users(int(self.meta["n_users"]))  # unknown / post-training users -> 0
        pooled = net.pool_last(hist.to(self.device), lens.to(self.device))
        return net.logits(net.head(pooled, users.to(self.device)))
