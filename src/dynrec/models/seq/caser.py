"""Caser (Tang & Wang, WSDM 2018): convolutional sequence embedding.

The last L items of the history form an L x d "image". Horizontal filters of heights 1..L (ReLU,
max-pooled over time) capture union-level and point-level sequential patterns, vertical filters
(L x 1) a weighted sum of the recent items; both go through a fully connected layer to a d-vector,
which is concatenated with the user's embedding and scored against every item (``W' z + b'``).

Unknown users (not in training, or ``batch.users == 0``) use a learned "unknown user" vector (row 0
of the user table); training replaces the user by it with probability `user_dropout`, so that vector
— and the model's behaviour for cold users — is learned from the history alone.

Training: one sample per training event (its L predecessors, left-padded; a user's first event
teaches the empty-history scores), full-catalogue softmax cross-entropy (`common.catalogue_loss`), shuffled slices of
pre-tensorised arrays.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.errors import NotFittedError
from dynrec.models.config import Fraction, PositiveFloat, PositiveInt
from dynrec.models.explain import leave_one_out
from dynrec.models.neural import TorchRecommender
from dynrec.models.seq.common import SequenceConfig, biased_ce, sampling_probs
from dynrec.models.seq.event_samples import next_event_windows

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CaserConfig(SequenceConfig):
    """Caser options; `max_len` is L, the number of recent items the convolutions read."""

    embedding_dim: PositiveInt = 64
    max_len: PositiveInt = 5
    n_h: PositiveInt = 16
    """Horizontal filters per height (heights 1..max_len)."""
    n_v: PositiveInt = 4
    """Vertical filters."""
    dropout: Fraction = 0.5
    use_user: bool = True
    """Concatenate the user embedding (the learned unknown-user vector for unknown users)."""
    user_dropout: Fraction = 0.1
    """Probability that a training sample is seen as coming from the unknown user."""
    batch_size: PositiveInt = 512
    learning_rate: PositiveFloat = 5e-3
    epochs: PositiveInt = 40
    patience: PositiveInt = 4


class CaserNet(nn.Module):
    """Item embeddings -> horizontal and vertical convolutions over the last ``max_len`` items ->
    fully connected layer (+ user embedding) -> scores ``W' z + b'``.

    Built from its `config` and the vocabulary sizes `n_items`, `n_users` (row 0 of each: padding
    and the unknown user)."""

    def __init__(self, config: CaserConfig, n_items: int, n_users: int) -> None:
        super().__init__()
        c = config
        dim, window = c.embedding_dim, c.max_len
        self.config = config
        self.item_emb = nn.Embedding(n_items, dim, padding_idx=0)
        self.user_emb = nn.Embedding(n_users, dim) if c.use_user else None  # row 0 = unknown user
        self.conv_v = nn.Conv2d(1, c.n_v, (window, 1))
        self.conv_h = nn.ModuleList(nn.Conv2d(1, c.n_h, (h, dim)) for h in range(1, window + 1))
        self.fc = nn.Linear(c.n_v * dim + c.n_h * window, dim)
        self.drop = nn.Dropout(c.dropout)
        out_dim = 2 * dim if c.use_user else dim
        self.out_emb = nn.Embedding(n_items, out_dim)
        self.out_bias = nn.Parameter(torch.zeros(n_items))
        nn.init.normal_(self.item_emb.weight, std=1.0 / dim)
        with torch.no_grad():
            self.item_emb.weight[0].zero_()
        if self.user_emb is not None:
            nn.init.normal_(self.user_emb.weight, std=1.0 / dim)
        nn.init.normal_(self.out_emb.weight, std=1.0 / out_dim)

    def query(self, hist: torch.Tensor, users: torch.Tensor) -> torch.Tensor:
        """hist [B, L] left-padded item ids (newest last), users [B] -> [B, out_dim]."""
        b = hist.shape[0]
        e = self.item_emb(hist)[:, None, :, :]  # [B, 1, L, d]
        o_v = self.conv_v(e).reshape(b, -1)  # [B, n_v * d]
        o_h = [torch.relu(conv(e).squeeze(3)).amax(dim=2) for conv in self.conv_h]  # L x [B, n_h]
        z = torch.relu(self.fc(self.drop(torch.cat([o_v, *o_h], dim=1))))  # [B, d]
        if self.user_emb is not None:
            z = torch.cat([z, self.user_emb(users)], dim=1)
        return z

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.out_emb.weight.T + self.out_bias


class Caser(TorchRecommender):
    name = "caser"
    config_class = CaserConfig
    config: CaserConfig

    def __init__(self, config: CaserConfig | None = None) -> None:
        super().__init__(config)
        self._samples: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._probs: torch.Tensor | None = None
        self._gen: torch.Generator | None = None

    def build_net(self, data: InteractionData) -> nn.Module:
        return self.build_net_from_meta()

    def build_net_from_meta(self) -> nn.Module:
        return CaserNet(self.config, int(self.meta["n_items"]), int(self.meta["n_users"]))

    def prepare(self, data: InteractionData) -> None:
        self._samples = next_event_windows(data, self.config.max_len)
        self._probs = sampling_probs(data) if self.config.loss == "sampled" else None
        self._gen = torch.Generator().manual_seed(self.config.seed + 1)
        log.info("caser: %d training samples", int(self._samples[2].shape[0]))

    def train_batches(self, data: InteractionData, gen: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        if self._samples is None:
            self.prepare(data)
        assert self._samples is not None
        hist, users, targets = self._samples
        n = int(targets.shape[0])
        perm = torch.randperm(n, generator=gen)
        p = self.config.user_dropout
        unknown = torch.rand(n, generator=gen) < p if p > 0 else torch.zeros(n, dtype=torch.bool)
        for idx in torch.split(perm, self.config.batch_size):
            yield {
                "hist": hist[idx],
                "users": users[idx].masked_fill(unknown[idx], 0),
                "targets": targets[idx],
                "n_tokens": torch.tensor([idx.shape[0]]),
            }

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        net = self._caser()
        z = net.query(batch["hist"], batch["users"])
        return biased_ce(
            self.config,
            z,
            net.out_emb.weight,
            net.out_bias,
            batch["targets"],
            gen=self._gen,
            probs=self._probs,
        )

    def release_training_data(self) -> None:
        self._samples = self._probs = None

    def item_embeddings(self) -> torch.Tensor:
        """[n_items, d] the model's input item embeddings (row 0 = padding)."""
        return self._caser().item_emb.weight.detach()[: self.n_items].float().cpu()

    def _caser(self) -> CaserNet:
        if self.net is None:
            raise NotFittedError(f"{self.name} is not fitted")
        assert isinstance(self.net, CaserNet)
        return self.net

    def explain(self, batch: QueryBatch, items: torch.Tensor) -> torch.Tensor:
        """Leave-one-out attribution (convolutions over the recent window are not additive over the
        events): each of the last 50 events contributes the score drop when it alone is removed
        from the history."""
        return leave_one_out(self.score, batch, items)

    def score_net(self, batch: QueryBatch) -> torch.Tensor:
        net = self._caser()
        hist, _ = batch.padded(self.config.max_len, left=True)  # [B, L]
        users = batch.known_users(int(self.meta["n_users"]))  # unknown / post-training users -> 0
        return net.logits(net.query(hist.to(self.device), users.to(self.device)))
