"""SASRec: a causal Transformer over the user's item sequence, full-catalogue cross-entropy.

Architecture (Kang & McAuley 2018, with the loss of Klenitskiy & Vasilev 2023 "SASRec+CE"):
item embeddings (tied with the output layer) → ``num_layers`` pre-LayerNorm Transformer blocks
(`F.scaled_dot_product_attention`, causal) → final LayerNorm → scores ``h @ Eᵀ``. Trained on one
row per user with a next-item target at every position (`dynrec.models.seq.common`).

Positions (``positional``):

* ``"rope"`` (default): rotary embeddings on queries and keys, so attention depends only on the
  *distance* between two events. Attention is limited to a sliding window of ``max_len`` events
  (each position sees itself and the ``max_len - 1`` previous events). The model is then a fixed
  function of the history that a per-user key/value cache reproduces exactly: `init_state` builds
  the cache, `step_state` appends one event in O(max_len) (independent of the history length — a ring
  buffer of ``max_len`` keys per layer; the rotation baked into a cached key stays valid as the
  window slides), `score_state` ranks the catalogue. `score` recomputes the same function from the
  last ``num_layers * (max_len - 1) + 1`` events (the receptive field of the stacked windows).
* ``"absolute"``: learned position embeddings (the original SASRec) over the last ``max_len``
  events; no incremental state (positions shift when the window slides). Kept for the ablation.

Long- and short-term interest (``long_term``):

* ``"none"``: the short-term state is the last position's hidden vector.
* ``"gate"``: a long-term representation — the mean embedding of the user's *whole* history
  (not just the window; a running sum in the incremental state) — is projected and fused with the
  short-term state by a learned gate ``g = σ(W[h; l])``, ``u = g ⊙ h + (1 − g) ⊙ l``. In training the
  mean runs over the events up to each position (causal prefix mean inside the training row).

Item text (``item_text="on"``): each item is its ID embedding plus a learned projection of its
frozen language-model text embedding (`dynrec.models.seq.item_text.TextItemEmbedding`), on the
input and the tied output side, with ID-dropout in training. Items without training events (cold
items, items added with `add_items`) are scored from their text alone. The jobs layer encodes the
text (`dynrec.text`) and hands the table over with `set_item_text` before `fit`; the table is saved
with the model.

Users with no history are scored by training popularity (``log(1 + count)``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dynrec.data.dataset import InteractionData
from dynrec.data.query import IntArray, QueryBatch
from dynrec.errors import DynrecError, NotFittedError
from dynrec.models.capabilities import StateBatch, StateLayout
from dynrec.models.config import Fraction, NonNegFloat, NonNegInt, PositiveFloat, PositiveInt
from dynrec.models.explain import leave_one_out
from dynrec.models.neural import TorchRecommender
from dynrec.models.neural.base import Optimizer
from dynrec.models.seq.common import (
    Amp,
    SequenceBatches,
    SequenceConfig,
    catalogue_loss,
    check_heads,
    histories_right_padded,
    log_popularity,
    next_item_pairs,
    resolve_amp,
    resolve_loss,
    sampling_probs,
    training_sequences,
)
from dynrec.models.seq.item_text import TextItemEmbedding, TextProjection
from dynrec.models.seq.transformer import SeqTransformer

log = logging.getLogger(__name__)

EXPLAIN_EVENTS = 50
"""History events a leave-one-out explanation scores (one extra history each)."""


@dataclass(frozen=True)
class SASRecConfig(SequenceConfig):
    """SASRec options; defaults reach the published SASRec+CE quality on ml-1m (see benchmarks)."""

    embedding_dim: PositiveInt = 64
    num_layers: PositiveInt = 2
    num_heads: PositiveInt = 2
    ffn_dim: NonNegInt = 256
    """Hidden size of the feed-forward sub-layer; 0 = ``embedding_dim`` (original SASRec)."""
    dropout: Fraction | None = None
    """Dropout on the embeddings, inside the feed-forward sub-layer and on each residual branch;
    None = by dataset size (`auto_dropout`): 0.3 below 4,096 users with a training sequence, 0.2
    from there (small data overfits sooner); `fit` writes the value it chose back into the config.
    How the thresholds were chosen: docs/experiments/README.md."""
    attn_dropout: Fraction | None = None
    """Dropout on attention weights; None = the resolved `dropout` (written back by `fit`). At 0,
    training runs the fused `scaled_dot_product_attention` kernel (a cheaper step on CPU, where
    attention with dropout runs as explicit matrix products with the fast
    `dynrec.models.layers.Dropout`)."""
    positional: Literal["rope", "absolute", "none"] = "rope"
    """rope (relative; enables the incremental KV-cache state) | absolute (learned) | none."""
    rope_base: PositiveFloat = 10000.0
    long_term: Literal["none", "gate"] = "none"
    """none | gate: fuse the mean embedding of the whole history with the sequence state."""
    batch_size: NonNegInt = 0
    """Training rows per batch; 0 = by the training profile (written back by `fit`, `auto_batch_size`):
    32 for ``long``, ``clamp(rows // 32, 32, 128)`` for ``standard`` (at least ~32 steps per epoch
    on small data)."""
    learning_rate: PositiveFloat | None = None  # type: ignore[assignment]  # resolved by fit
    """Adam's learning rate after `warmup_steps` of linear warm-up, then constant; None = by the
    training profile (written back by `fit`): 2e-3 for ``long``, 1e-3 for ``standard``."""
    warmup_steps: NonNegInt | None = None  # type: ignore[assignment]  # resolved by fit
    """None = by the training profile (written back by `fit`): 400 for ``long``, 0 for ``standard``."""
    profile: Literal["auto", "long", "standard"] = "auto"
    """Training profile that fills the options left to it (batch_size 0, learning_rate and
    warmup_steps None). ``long``: batch 32, Adam 2e-3 after 400 warm-up steps, for data whose
    training rows are long (many next-item targets per row): 32 rows already hold thousands of
    targets, and more optimiser steps per epoch reach a given quality in a fraction of the epochs
    (ml-1m). ``standard``: batch up to 128, Adam 1e-3, no warm-up, the schedule that stays
    better on small data (ml-100k) and on short rows (Amazon). ``auto`` (`auto_profile`): long
    from 4,096 training rows with a mean of at least 50 targets per row, else standard. Written
    back into the config by `fit`."""
    amp: Amp = "auto"
    """bf16 matrix products in training where the hardware has them (AVX512-BF16/AMX CPUs, bf16
    GPUs); scoring is always float32."""
    loss: Literal["ce", "sampled", "auto"] = "auto"
    """auto: full cross-entropy up to `sampled_above` catalogue items, sampled softmax (log-Q
    corrected) above (`dynrec.models.seq.common.resolve_loss`); `fit` writes the choice back into
    the config | ce | sampled."""
    optimizer: Optimizer = "adam"
    epochs: PositiveInt = 200
    """An upper bound: training runs at a constant learning rate (the Trainer's default schedule)
    and stops early on validation."""
    patience: PositiveInt = 20
    select_within_se: NonNegFloat = 1.0
    """Keep the latest epoch within one standard error of the best validation NDCG@10 (the
    Trainer's rule; the run stops as before, `patience` epochs after the best): with few
    validation queries, validation is flat within noise while the model still improves, and the
    single best epoch would be an early one picked by noise."""
    ema_decay: Fraction = 0.995
    """Weight averaging (the Trainer's EMA; validation and the kept model use the average): it
    smooths the epoch-to-epoch swings of the validation and test metrics late in training."""
    score_batch: PositiveInt = 256
    """Histories per forward pass when scoring (bounds memory)."""
    item_text: Literal["off", "on"] = "off"
    """on: each item = ID embedding + learned projection of its frozen text embedding (input and
    output side); items never trained on are scored from their text alone."""
    text_encoder: str = "all-MiniLM-L6-v2"
    """The sentence-transformers model that encodes item text (a name or a local path)."""
    id_dropout: Fraction = 0.2
    """With item text: probability of dropping an item's ID embedding in a training step (per item,
    shared by input and output side), so the text projection learns to stand for the item alone."""
    text_projection: TextProjection = "linear"
    """linear | mlp (two layers, GELU): the map from text embedding to item vector."""
    text_loss_weight: NonNegFloat = 0.0
    """With item text: weight of a second next-item loss whose output side is the text-only item
    vectors, training them directly as the vectors cold items are scored with."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_heads(self, self.embedding_dim, self.num_heads, self.positional)


# ---- incremental state ----------------------------------------------------------------------


@dataclass(frozen=True)
class SASRecState:
    """Per-user incremental state for B users (all tensors on the model's device).

    keys/values: ring buffers ``[num_layers, B, heads, max_len, head_dim]`` — the rotated keys and
    the values of each user's last ``max_len`` events at every layer, event ``p`` in slot
    ``p % max_len``; length: events consumed ``[B]``; hidden: final hidden state after the last
    event ``[B, d]``; lt_sum: sum of the raw embeddings of the whole history ``[B, d]``.
    """

    keys: torch.Tensor
    values: torch.Tensor
    length: torch.Tensor
    hidden: torch.Tensor
    lt_sum: torch.Tensor

    def __len__(self) -> int:
        return int(self.length.shape[0])

    def select(self, idx: torch.Tensor) -> SASRecState:
        """The states of users `idx` (a new state)."""
        return SASRecState(
            self.keys[:, idx], self.values[:, idx], self.length[idx], self.hidden[idx], self.lt_sum[idx]
        )

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in ("keys", "values", "length", "hidden", "lt_sum")}

    @classmethod
    def from_dict(cls, d: dict[str, torch.Tensor]) -> SASRecState:
        return cls(d["keys"], d["values"], d["length"], d["hidden"], d["lt_sum"])


class SASRecNet(SeqTransformer):
    """The SASRec module: causal `SeqTransformer` + last-position readout + incremental state."""

    def train_hidden(self, inputs: torch.Tensor) -> torch.Tensor:
        """Fused user states at every position of right-padded ``inputs [B, L]`` → ``[B, L, d]``."""
        h = self.encode(inputs, causal=True, window=self.max_len)
        if self.long_term == "gate":
            h = self.fuse(h, self.prefix_mean(inputs))
        return h

    def context_len(self) -> int:
        """Events of history that determine the last position's state."""
        if self.positional == "rope":
            return len(self.blocks) * (self.max_len - 1) + 1
        return self.max_len

    def history_mean(self, indptr: torch.Tensor, items: torch.Tensor, n: int) -> torch.Tensor:
        """Mean raw embedding of each whole ragged history ``[n, d]`` (0 for empty ones)."""
        lens = indptr[1:] - indptr[:-1]
        rows = torch.repeat_interleave(torch.arange(n, device=items.device), lens)
        e = self.item_emb(items)
        s = torch.zeros(n, self.dim, device=items.device, dtype=e.dtype)
        s.index_add_(0, rows, e)
        return s / lens.clamp(min=1)[:, None].to(s.dtype)

    def user_states(self, hist: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        """Last-position hidden state ``[B, d]`` of right-padded context ``hist [B, C]``.

        With RoPE only the positions the last state depends on are computed: block ``i`` of ``L``
        needs queries at the last ``(L-1-i)(max_len-1) + 1`` positions (the top block at the last
        one only), over keys at every position the block below produced. Rows are re-aligned to
        the right (left padding, padding keys masked) so that "the last positions" are shared
        columns. Same function as `encode` + readout (attention depends only on distances);
        scoring every ml-1m validation user is ~1.5x faster than the full encode (tested equal
        to it in `tests/unit/test_layers.py`).
        """
        if self.positional == "rope" and not self.training:
            return self._pruned_states(hist, lens)
        h = self.encode(hist, causal=True, window=self.max_len)
        last = (lens - 1).clamp(min=0)
        return h[torch.arange(h.shape[0], device=h.device), last]

    def _pruned_states(self, hist: torch.Tensor, lens: torch.Tensor) -> torch.Tensor:
        b, c = hist.shape
        dev, w = hist.device, self.max_len
        cols = torch.arange(c, device=dev)
        shift = (c - lens)[:, None]  # left-align: column j holds item j - shift
        src = (cols[None, :] - shift).clamp(min=0)
        items = torch.where(cols[None, :] >= shift, hist.gather(1, src), torch.zeros_like(hist))
        real = items > 0
        x = self.embed(items)
        pos = cols
        blocks = self.block_list()
        for i, blk in enumerate(blocks):
            n = x.shape[1]
            nq = min(n, (len(blocks) - 1 - i) * (w - 1) + 1)
            q, k, v = blk.project_last(x, nq, self.rope(pos))
            d = pos[-nq:, None] - pos[None, :]  # [nq, n] query - key distance
            band = (d >= 0) & (d < w)
            mask = (band[None] & real[:, None, :]) | (d == 0)[None]  # a query always sees itself
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None])
            x = blk.finish(x[:, -nq:], a)
            pos, real = pos[-nq:], real[:, -nq:]
        return self.ln_f(x[:, -1])  # type: ignore[no-any-return]

    def scores_from(
        self, hidden: torch.Tensor, lt_mean: torch.Tensor | None, lens: torch.Tensor
    ) -> torch.Tensor:
        u = self.fuse(hidden, lt_mean)
        s = u @ self.item_weight.T
        empty = lens == 0
        if bool(empty.any()):
            s[empty] = self.log_pop.to(s.dtype)
        return s

    # -- incremental API (rope only) ------------------------------------------------------------
    def _check_incremental(self) -> None:
        if self.positional != "rope":
            raise DynrecError(
                f"incremental state needs positional='rope' (this model uses {self.positional!r}); "
                "use score() on the history instead"
            )

    def prefill(self, hist: torch.Tensor, clen: torch.Tensor, length: torch.Tensor) -> SASRecState:
        """State after right-padded context ``hist [B, C]`` (`clen` real events per row) that ends a
        history of `length` events; `lt_sum` is left 0 (the caller adds the whole-history sum).

        Only what the state holds is computed: block ``i``'s cache is the keys/values of the last
        ``max_len`` positions, made from the block below's output there, and the hidden state is
        the top block's output at the last position. So block ``i`` of ``L`` needs queries at the
        last ``(L-1-i)(max_len-1) + 1`` positions (``max_len`` for the block under the top, one for
        the top), over keys at every position the block below produced — the pruning of
        `_pruned_states`. Rows are re-aligned to the right (left padding) so that those positions
        are shared columns; one band mask serves every row unless some row has padding keys in
        reach (then padding keys are masked per row). Same function as running the whole context
        through every block (tested equal to it and to stepping event by event).
        """
        self._check_incremental()
        b, c = hist.shape
        w, dev = self.max_len, hist.device
        blocks = self.block_list()
        n_blocks = len(blocks)
        cols = torch.arange(c, device=dev)
        shift = c - clen  # left padding of each row
        real = cols[None, :] >= shift[:, None]  # [B, C]
        src = (cols[None, :] - shift[:, None]).clamp(min=0)
        x = self.embed(torch.where(real, hist.gather(1, src), torch.zeros_like(hist)))
        rope = self.rope((length - c)[:, None] + cols[None, :])  # absolute positions [B, 1, C, h]
        assert rope is not None  # positional == rope (checked above)
        cos, sin = rope
        m = min(c, w)  # cached positions present in the context: the last m columns
        # ring slot s holds position p ≡ s (mod max_len) of the last max_len positions; as a column
        # of those positions left-padded to max_len: (s - length) mod max_len
        ring = (torch.arange(w, device=dev)[None, :] - length[:, None]) % w
        ring = ring[:, None, :, None].expand(b, self.heads, w, self.head_dim)
        # zero padding in the cache (only rows with fewer than m events have padding there)
        keep = real[:, None, c - m :, None] if bool((clen < m).any()) else None  # [B, 1, m, 1]
        keys = x.new_empty(n_blocks, b, self.heads, w, self.head_dim)
        values = torch.empty_like(keys)
        for i, blk in enumerate(blocks):
            n = x.shape[1]
            nq = min(n, (n_blocks - 1 - i) * (w - 1) + 1)
            q, k, v = blk.project_last(x, nq, (cos[..., c - n :, :], sin[..., c - n :, :]))
            for buf, t in ((keys, k), (values, v)):
                t = t[:, :, n - m :]
                if keep is not None:
                    t = torch.where(keep, t, 0.0)
                if m < w:
                    t = F.pad(t, (0, 0, w - m, 0))
                torch.gather(t, 2, ring, out=buf[i])
            d = cols[c - nq :, None] - cols[None, c - n :]  # [nq, n] query - key distance
            mask = (d >= 0) & (d < w)
            # padding keys within some query's window: mask them per row (a query always sees itself)
            reach = max(c - n, c - nq - (w - 1))  # leftmost column any query sees
            if bool((shift > reach).any()):
                mask = (mask[None] & real[:, None, c - n :]) | (d == 0)[None]
                mask = mask[:, None]
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            x = blk.finish(x[:, n - nq :], a)
        hidden = self.ln_f(x[:, -1])
        hidden = torch.where((length > 0)[:, None], hidden, torch.zeros_like(hidden))
        return SASRecState(keys, values, length.clone(), hidden, torch.zeros_like(hidden))

    def step(self, state: SASRecState, items: torch.Tensor, *, inplace: bool = False) -> SASRecState:
        """The state after each user consumes one more event ``items [B]``: a new state, or with
        `inplace` the new keys/values written into `state`'s ring buffers (copying both buffers,
        ``[layers, B, heads, max_len, head_dim]``, is most of an event's cost on a CPU)."""
        self._check_incremental()
        b, w, dev = items.shape[0], self.max_len, items.device
        p = state.length
        rope = self.rope(p[:, None])  # [B, 1, 1, h]
        slot = p % w
        valid = torch.arange(w, device=dev)[None, :] < (p + 1).clamp(max=w)[:, None]  # [B, W]
        mask = valid[:, None, None, :]
        rows = torch.arange(b, device=dev)
        keys, values = (state.keys, state.values) if inplace else (state.keys.clone(), state.values.clone())
        e = self.item_emb(items)
        x = self.embed(items[:, None])
        for li, blk in enumerate(self.block_list()):
            q, k, v = blk.project(x, rope)
            keys[li, rows, :, slot] = k[:, :, 0]
            values[li, rows, :, slot] = v[:, :, 0]
            a = F.scaled_dot_product_attention(q, keys[li], values[li], attn_mask=mask)
            x = blk.finish(x, a)
        hidden = self.ln_f(x)[:, 0]
        return SASRecState(keys, values, p + 1, hidden, state.lt_sum + e)

    def score_state(self, state: SASRecState) -> torch.Tensor:
        lt = state.lt_sum / state.length.clamp(min=1)[:, None].to(state.lt_sum.dtype)
        return self.scores_from(state.hidden, lt if self.long_term == "gate" else None, state.length)


# ---- the recommender --------------------------------------------------------------------------


class SASRec(TorchRecommender):
    """Self-attentive sequential recommendation (see the module docstring)."""

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

    def _make_net(
        self, n_items: int, text: torch.Tensor | None = None, known: torch.Tensor | None = None
    ) -> SASRecNet:
        c = self.config
        drop, attn_drop = self.dropouts()
        return SASRecNet(
            n_items,
            n_items,
            dim=c.embedding_dim,
            layers=c.num_layers,
            heads=c.num_heads,
            ffn_dim=c.ffn_dim,
            dropout=drop,
            max_len=c.max_len,
            positional=c.positional,
            rope_base=c.rope_base,
            long_term=c.long_term,
            attn_dropout=attn_drop,
            item_text=text,
            known_items=known,
            id_dropout=c.id_dropout,
            text_projection=c.text_projection,
        )

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
        net = self._make_net(data.n_items, text, known)
        net.log_pop.copy_(log_popularity(data))
        return net

    def build_net_from_meta(self) -> nn.Module:
        n = int(self.meta["n_items"])
        text = None
        if self.wants_item_text():  # placeholder of the saved shape; load_state_dict fills it
            text = torch.zeros(n, int(self.meta.get("item_text_dim", 1)))
        return self._make_net(n, text)

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
        if net.long_term == "gate":
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
            n, w, dev = len(batch), net.max_len, self.device
            hist, clen = histories_right_padded(batch.indptr, batch.items, net.context_len())
            length = torch.from_numpy(batch.lengths).to(dev)
            # every row is written by exactly one group below
            keys = torch.empty(
                len(net.blocks), n, net.heads, w, net.head_dim, device=dev, dtype=net.item_weight.dtype
            )
            values = torch.empty_like(keys)
            hidden = torch.empty(n, net.dim, device=dev, dtype=net.item_weight.dtype)
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


def auto_batch_size(n_rows: int, profile: str = "standard") -> int:
    """The default batch size for `n_rows` training rows: 32 for the ``long`` training profile,
    ``clamp(n_rows // 32, 32, 128)`` for ``standard``."""
    return 32 if profile == "long" else int(min(128, max(32, n_rows // 32)))


def auto_profile(data: InteractionData, max_len: int) -> Literal["long", "standard"]:
    """``long`` when `data` gives at least 4,096 training rows (users with 2+ events) whose mean
    number of next-item targets (``min(events, max_len + 1) - 1``) is at least 50, else ``standard``."""
    lens = np.diff(data.indptr)
    lens = lens[lens >= 2]
    if len(lens) < 4096:
        return "standard"
    return "long" if float((np.minimum(lens, max_len + 1) - 1).mean()) >= 50.0 else "standard"


def auto_dropout(n_rows: int) -> float:
    """The default dropout for `n_rows` training sequences: 0.3 below 4,096 (ml-100k), else 0.2."""
    return 0.3 if n_rows < 4096 else 0.2


__all__ = [
    "SASRec",
    "SASRecConfig",
    "SASRecNet",
    "SASRecState",
    "SeqTransformer",
    "auto_batch_size",
    "auto_dropout",
    "auto_profile",
]
