"""The SASRec recommender (`SASRec`; the architecture is described in `dynrec.models.seq.sasrec`):
training rows and loss, scoring, the incremental-state, item-text, explanation and embedding
capabilities over its module (`SASRecNet`)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from dynrec.data.dataset import InteractionData
from dynrec.data.query import IntArray, QueryBatch
from dynrec.errors import DynrecError, NotFittedError
from dynrec.models.capabilities import StateBatch, StateLayout
from dynrec.models.explain import leave_one_out
from dynrec.models.neural import TorchRecommender
from dynrec.models.seq.common import (
    SequenceBatches,
    catalogue_loss,
    histories_right_padded,
    log_popularity,
    next_item_pairs,
    resolve_amp,
    resolve_loss,
    sampling_probs,
    training_sequences,
)
from dynrec.models.seq.item_text import TextItemEmbedding
from dynrec.models.seq.sasrec.config import SASRecConfig, auto_batch_size, auto_dropout, auto_profile
from dynrec.models.seq.sasrec.net import SASRecNet, SASRecState

__all__ = ["EXPLAIN_EVENTS", "SASRec"]

log = logging.getLogger(__name__)

EXPLAIN_EVENTS = 50
"""History events a leave-one-out explanation scores (one extra history each)."""


class SASRec(TorchRecommender):
    """Self-attentive sequential recommendation (the architecture: `dynrec.models.seq.sasrec`)."""

    name = "sasrec"
    config_class = SASRecConfig
    config: SASRecConfig

    def __init__(self, config: SASRecConfig | None = None) -> None:
        super().__init__(config)
        self._batches: SequenceBatches | None = None
        self._loss_gen: torch.Generator | None = None
        self._drop_gen: torch.Generator | None = None
        self._probs: torch.Tensor | None = None
        self._item_text: torch.Tensor | None = None

    # -- module ----------------------------------------------------------------------------
    def dropouts(self) -> tuple[float, float]:
        """(dropout, attention dropout) the model was built with. `fit` writes the values it resolves
        by dataset size into the config; configs saved by older versions left them None and kept
        them in `meta`."""
        c = self.config
        d = c.dropout if c.dropout is not None else float(self.meta.get("dropout", 0.2))
        a = c.attn_dropout if c.attn_dropout is not None else float(self.meta.get("attn_dropout", d))
        return d, a

    def net_config(self) -> SASRecConfig:
        """The config the module is built from: this one with the dropouts resolved (`dropouts`)."""
        drop, attn_drop = self.dropouts()
        return dataclasses.replace(self.config, dropout=drop, attn_dropout=attn_drop)

    def build_net(self, data: InteractionData) -> nn.Module:
        c = self.config
        rows = int((np.diff(data.indptr) >= 2).sum())  # users with a training sequence
        d = c.dropout if c.dropout is not None else auto_dropout(rows)
        prof = c.profile if c.profile != "auto" else auto_profile(data, c.max_len)
        long = prof == "long"
        a = c.attn_dropout if c.attn_dropout is not None else d
        lr = c.learning_rate if c.learning_rate is not None else (2e-3 if long else 1e-3)
        warm = c.warmup_steps if c.warmup_steps is not None else (400 if long else 0)
        bs = c.batch_size or auto_batch_size(rows, prof)
        loss = resolve_loss(c, data.n_items)
        # config.json says what was trained
        self.config = dataclasses.replace(
            c,
            dropout=d,
            attn_dropout=a,
            loss=loss,
            profile=prof,
            learning_rate=lr,
            warmup_steps=warm,
            batch_size=bs,
        )
        text = known = None
        if self.wants_item_text():
            text = self._fit_text(data.n_items)
            known = torch.from_numpy(data.item_counts() > 0)
        net = SASRecNet(self.net_config(), data.n_items, text, known)
        net.log_pop.copy_(log_popularity(data))
        return net

    def build_net_from_meta(self) -> nn.Module:
        n = int(self.meta["n_items"])
        text = None
        if self.wants_item_text():  # placeholder of the saved shape; load_state_dict fills it
            text = torch.zeros(n, int(self.meta.get("item_text_dim", 1)))
        return SASRecNet(self.net_config(), n, text)

    # -- ItemText -------------------------------------------------------------------------
    def wants_item_text(self) -> bool:
        return self.config.item_text == "on"

    def item_text_encoder(self) -> str | None:
        return self.config.text_encoder if self.wants_item_text() else None

    def set_item_text(self, table: torch.Tensor, encoder: str) -> None:
        """The frozen text table ``[n_items, d_text]`` `fit` builds the item vectors from."""
        if table.dim() != 2 or not bool(torch.isfinite(table).all()):
            raise DynrecError(
                f"item text table must be a finite [n_items, d] matrix, got {tuple(table.shape)}"
            )
        self._item_text = table.detach().float().cpu()
        self.meta["item_text_dim"] = int(table.shape[1])
        self.meta["item_text_encoder"] = encoder

    def _fit_text(self, n_items: int) -> torch.Tensor:
        t = self._item_text
        if t is None:
            raise DynrecError(
                "sasrec with item_text=on needs the items' text: train it with `dynrec train` (which "
                "encodes the dataset's item text; --items FILE for other data) or call set_item_text first"
            )
        if t.shape[0] != n_items:
            raise DynrecError(f"item text table has {t.shape[0]} rows; the training data has {n_items} items")
        return t

    def add_items(self, ids: Sequence[str], table: torch.Tensor) -> None:
        """Append new items scored from their text alone (no retraining)."""
        net = self._net()
        if self.item_vocab is None or not isinstance(net.item_emb, TextItemEmbedding):
            raise DynrecError("this sasrec reads no item text (train it with --set item_text=on)")
        if table.shape != (len(ids), net.item_emb.text_dim):
            raise DynrecError(
                f"new item text must be [{len(ids)}, {net.item_emb.text_dim}], got {tuple(table.shape)}"
            )
        known = [i for i in ids if i in self.item_vocab]
        if known:
            raise DynrecError(f"item {known[0]!r} is already in the catalogue")
        self.item_vocab.add(ids)
        m = len(ids)
        with torch.no_grad():
            net.item_emb.append(table.detach().float())
            net.log_pop = torch.cat([net.log_pop, torch.zeros(m, device=net.log_pop.device)])
        net.n_items += m
        self.meta["n_items"] = net.n_items

    def _net(self) -> SASRecNet:
        if not isinstance(self.net, SASRecNet):
            raise NotFittedError(f"{self.name} is not fitted")
        return self.net

    # -- training --------------------------------------------------------------------------
    def prepare(self, data: InteractionData) -> None:
        c = self.config
        seqs, lens = training_sequences(data, c.max_len, stride=c.window_stride)
        bs = c.batch_size or auto_batch_size(len(lens), "standard" if c.profile == "auto" else c.profile)
        self.config = dataclasses.replace(c, batch_size=bs)  # config.json says what was trained
        self._batches = SequenceBatches(seqs, lens, bs, bucket=c.bucket)
        self._loss_gen = torch.Generator().manual_seed(c.seed + 1)
        self._drop_gen = torch.Generator().manual_seed(c.seed + 2)
        self._probs = sampling_probs(data)
        self.meta["train_precision"] = "bf16" if resolve_amp(c.amp, self.device) else "float32"
        log.info("sasrec: %d training rows, %d target events", len(lens), int((lens - 1).sum()))

    def train_batches(self, data: InteractionData, gen: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        if self._batches is None:
            self.prepare(data)
        assert self._batches is not None
        yield from self._batches(gen)

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        net = self._net()
        inputs, targets, mask = next_item_pairs(batch["seq"])
        bf16 = resolve_amp(self.config.amp, self.device)
        if isinstance(net.item_emb, TextItemEmbedding):
            net.item_emb.begin_step(self._drop_gen)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            h = net.train_hidden(inputs)[mask]
        h, t = h.float(), targets[mask]
        loss = catalogue_loss(self.config, h, net.item_weight, t, gen=self._loss_gen, probs=self._probs)
        w = self.config.text_loss_weight
        if w > 0.0 and isinstance(net.item_emb, TextItemEmbedding):
            text_only = net.item_emb.text_weight()[: net.n_items]
            loss = loss + w * catalogue_loss(
                self.config, h, text_only, t, gen=self._loss_gen, probs=self._probs
            )
        return loss

    def loss_terms(self, batch: dict[str, torch.Tensor]) -> int:
        """Next-item targets in `batch` (what `loss` averages over), for data-parallel weighting."""
        return int(next_item_pairs(batch["seq"])[2].sum())

    # -- scoring ---------------------------------------------------------------------------
    def score_net(self, batch: QueryBatch) -> torch.Tensor:
        net = self._net()
        n = len(batch)
        out = torch.empty(n, net.n_items, dtype=torch.float32, device=self.device)
        # longest histories first, so each sub-batch is trimmed to similar lengths
        order = np.argsort(-batch.lengths, kind="stable")
        step = max(1, self.config.score_batch)
        for a in range(0, n, step):
            idx = order[a : a + step]
            sub = batch.take(idx)
            h, lt, lens = self._states(net, sub)
            out[torch.from_numpy(idx).to(self.device)] = net.scores_from(h, lt, lens).float()
        return out

    def _states(
        self, net: SASRecNet, q: QueryBatch
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        ctx = net.context_len()
        hist, clen = histories_right_padded(q.indptr, q.items, ctx)
        width = max(1, int(clen.max()) if len(clen) else 1)
        hist, clen = hist[:, :width].to(self.device), clen.to(self.device)
        h = net.user_states(hist, clen)  # the net's dtype (bf16 in a bf16 copy), as the incremental state
        lens = torch.from_numpy(q.lengths).to(self.device)
        lt = None
        if net.config.long_term == "gate":
            lt = net.history_mean(
                torch.from_numpy(q.indptr).to(self.device), torch.from_numpy(q.items).to(self.device), len(q)
            )
        return h, lt, lens

    # -- IncrementalState: O(max_len) per event, independent of the history length -----------
    def state_layout(self) -> StateLayout | None:
        if self.config.positional != "rope":
            return None  # absolute positions shift as the window slides: recompute instead
        return StateLayout("kv-cache", {"keys": 1, "values": 1})

    @contextmanager
    def _reading(self) -> Iterator[SASRecNet]:
        """The module in eval mode under no_grad (restoring its mode after)."""
        net = self._net()
        was = net.training
        if was:
            net.eval()
        try:
            with torch.no_grad():
                yield net
        finally:
            if was:
                net.train()

    def init_state(self, batch: QueryBatch) -> StateBatch:
        """The incremental state of each history in `batch` (equal to replaying it with
        `step_state`): the per-layer key/value ring buffers of the last ``max_len`` events, the
        event count, the last hidden state and the sum of the history's item embeddings.

        Histories are prefilled `score_batch` at a time, longest first, each group padded only to
        its own longest context (bounds the activations; short histories cost little)."""
        with self._reading() as net:
            n, w, dev = len(batch), net.config.max_len, self.device
            hist, clen = histories_right_padded(batch.indptr, batch.items, net.context_len())
            length = torch.from_numpy(batch.lengths).to(dev)
            # every row is written by exactly one group below
            keys = torch.empty(
                len(net.blocks),
                n,
                net.config.num_heads,
                w,
                net.head_dim,
                device=dev,
                dtype=net.item_weight.dtype,
            )
            values = torch.empty_like(keys)
            hidden = torch.empty(n, net.config.embedding_dim, device=dev, dtype=net.item_weight.dtype)
            order = torch.from_numpy(np.argsort(-clen.numpy(), kind="stable"))
            step = max(1, self.config.score_batch)
            for a in range(0, n, step):
                idx = order[a : a + step]
                cl = clen[idx]
                width = max(1, int(cl.max()))
                st = net.prefill(hist[idx, :width].to(dev), cl.to(dev), length[idx.to(dev)])
                ix = idx.to(dev)
                keys.index_copy_(1, ix, st.keys.to(keys.dtype))
                values.index_copy_(1, ix, st.values.to(values.dtype))
                hidden.index_copy_(0, ix, st.hidden.to(hidden.dtype))
            ids = torch.from_numpy(batch.indptr).to(dev)
            mean = net.history_mean(ids, torch.from_numpy(batch.items).to(dev), n)
            lt_sum = mean * length.clamp(min=1)[:, None].to(mean.dtype)
            return SASRecState(keys, values, length.clone(), hidden, lt_sum).to_dict()

    def step_state(
        self, state: StateBatch, items: IntArray, timestamps: IntArray, *, inplace: bool = False
    ) -> StateBatch:
        """The state after each user appends one event (item indices ``[B]``)."""
        it = torch.as_tensor(np.asarray(items, dtype=np.int64)).to(self.device)
        with self._reading() as net:
            return net.step(SASRecState.from_dict(state), it, inplace=inplace).to_dict()

    def score_state(self, state: StateBatch) -> torch.Tensor:
        """[B, n_items] float32 scores from incremental states (column 0 = -inf), like `score`."""
        with self._reading() as net:
            s = net.score_state(SASRecState.from_dict(state)).float()
        s = s.cpu() if s.device.type != "cpu" else s.clone()
        s[:, 0] = -torch.inf
        return s

    def state_query_embeddings(self, state: StateBatch) -> torch.Tensor:
        """`StateQueryEmbeddings`: the fused user vectors of the states (zeros for an empty
        history, as `query_embeddings` gives)."""
        st = SASRecState.from_dict(state)
        with self._reading() as net:
            u = net.state_query(st).float()
        return torch.where((st.length > 0)[:, None].to(u.device), u, 0.0).cpu()

    # -- ItemEmbeddings ---------------------------------------------------------------------------
    def item_embeddings(self) -> torch.Tensor:
        return self._net().item_weight.detach().float().cpu()

    # -- Explainer: leave-one-out over the events the state depends on ------------------------
    def explain(self, batch: QueryBatch, items: torch.Tensor) -> torch.Tensor:
        """Score drop of each of `items` when one history event is left out (the last
        `EXPLAIN_EVENTS` events, within the attention's receptive field; older events 0)."""
        n = min(EXPLAIN_EVENTS, self._net().context_len())
        return leave_one_out(self.score, batch, items, max_events=n)

    # ---- QueryEmbeddings: scores are a dot product (for ANN retrieval) -----------------------
    def query_embeddings(self, batch: QueryBatch) -> torch.Tensor:
        """[B, d] fused user states u (scores = u · item_weightᵀ); zeros for an empty history,
        which `score` ranks by popularity instead."""
        out = torch.zeros(len(batch), self.config.embedding_dim, dtype=torch.float32)
        order = np.argsort(-batch.lengths, kind="stable")
        step = max(1, self.config.score_batch)
        with self._reading() as net:
            for a in range(0, len(batch), step):
                idx = order[a : a + step]
                h, lt, lens = self._states(net, batch.take(idx))
                u = net.fuse(h, lt).float()
                out[torch.from_numpy(idx)] = torch.where((lens > 0)[:, None], u, 0.0).cpu()
        return out

    def output_embeddings(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.item_embeddings(), None
