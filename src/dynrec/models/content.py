"""Content-based recommendation from item text: a recency-weighted mean of the history's text
embeddings, compared with every item's embedding.

The item table T (one frozen language-model embedding per item, from `dynrec.text`, handed over by
the jobs layer through the `ItemText` capability) is L2-normalised, so for a history h the score of
item i is the weighted mean cosine similarity

    score_i = Σ_j w_j <t_j, t_i> / W,    w_j = 0.5 ** (back_j / half_life),    W = Σ_j w_j

over the history's events that have text (back_j = 0 for the newest event; ``half_life = 0`` gives
every event weight 1). Nothing is learned from co-occurrence: the model ranks by what items are
about, so an item with text but no events (a new arrival, `add_items`) is recommendable at once.

* **State** (`IncrementalState`): the decayed sum ``s`` [B, d] and weight ``W`` [B];
  one event is O(d): ``s ← s·2^(-1/h) + t_item``, ``W ← W·2^(-1/h) + 1`` (an event without text only
  decays them).
* **Explanations** (`Explainer`): event j contributes ``w_j <t_j, t_i> / W``; the contributions
  sum to the score (its popularity term aside, when `popularity_weight` > 0).
* **Items without text** (zero rows) score ``FLOOR − popularity_weight`` plus their popularity term:
  below every item with text (whose cosine is at least -1), ordered among themselves by popularity.
* **Histories without text** (empty, or only events on items without text) fall back to
  popularity, ``log(1 + training events)``, like the other models' cold start.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.query import IntArray, QueryBatch
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError, NotFittedError
from dynrec.models.base import Recommender
from dynrec.models.capabilities import StateBatch, StateLayout
from dynrec.models.config import ModelConfig, NonNegFloat
from dynrec.models.files import TensorFileError, expect, expect_only

__all__ = ["FLOOR", "ContentConfig", "ContentModel"]

FLOOR = -2.0
"""Score of an item without text (before the popularity term): below any cosine similarity."""


@dataclass(frozen=True)
class ContentConfig(ModelConfig):
    half_life: NonNegFloat = 20.0
    """Recency in events: the j-th most recent event (j = 0 newest) weighs 0.5 ** (j / half_life);
    0 = every event weighs the same (the plain mean)."""
    text_encoder: str = "all-MiniLM-L6-v2"
    """The sentence-transformers model (name or local path) that encodes the item text."""
    popularity_weight: NonNegFloat = 0.0
    """Weight of a popularity prior added to the text score: ``log(1 + events) / log(1 + max
    events)`` in [0, 1]. 0 = pure content."""


class ContentModel(Recommender):
    name = "content"
    config_class = ContentConfig
    config: ContentConfig

    def __init__(self, config: ContentConfig | None = None) -> None:
        super().__init__(config)
        self.item_text: torch.Tensor | None = None  # [n_items, d] L2-normalised rows (0 = no text)
        self.log_pop: torch.Tensor | None = None  # [n_items] log(1 + training events)
        self._with_text = torch.zeros(0, dtype=torch.bool)  # [n_items] rows of item_text that are not 0

    # ---- ItemText -------------------------------------------------------------------------------
    def wants_item_text(self) -> bool:
        return True

    def set_item_text(self, table: torch.Tensor, encoder: str) -> None:
        """Set the text table (before `fit`): rows are L2-normalised, row 0 and all-zero rows mean
        "no text"."""
        text = _normalised(_checked_table(table, "item text table"))
        if text.shape[0]:
            text[0] = 0.0  # padding
        self._set_table(text)
        self.meta["text_encoder"] = str(encoder)

    def item_text_encoder(self) -> str | None:
        enc = self.meta.get("text_encoder")
        return enc if isinstance(enc, str) else self.config.text_encoder

    def add_items(self, ids: Sequence[str], table: torch.Tensor) -> None:
        """Append items (with their text embeddings ``[len(ids), d]``); they have no events, so
        they rank by text alone (and last in the popularity fallback)."""
        text, pop, vocab = self._table(), self._pop(), self._vocab()
        new = [str(i) for i in ids]
        known = [i for i in new if i in vocab]
        if known:
            raise DynrecError(f"content.add_items: item {known[0]!r} is already in the item vocabulary")
        if len(set(new)) != len(new):
            raise DynrecError("content.add_items: ids contain duplicates")
        rows = _checked_table(table, "new item text table")
        if rows.shape != (len(new), text.shape[1]):
            raise DynrecError(
                f"content.add_items: table has shape {list(rows.shape)}, "
                f"expected [{len(new)}, {text.shape[1]}] (one row per id, the model's text dimension)"
            )
        grown = Vocabulary.from_unique(vocab.ids)  # a copy: the training data's vocabulary is not ours
        grown.add(new)
        self.item_vocab = grown
        self._set_table(torch.cat([text, _normalised(rows)]))
        self.log_pop = torch.cat([pop, torch.zeros(len(new), dtype=torch.float32)])

    # ---- ItemEmbeddings -------------------------------------------------------------------------
    def item_embeddings(self) -> torch.Tensor:
        return self._table().clone()

    # ---- fit and score --------------------------------------------------------------------------
    def _fit(self, data: InteractionData, valid: object) -> None:
        if self.item_text is None:
            raise DynrecError(
                "content: no item text; train it through `dynrec train content` (the job encodes "
                "the items' text) or call set_item_text(table, encoder) before fit"
            )
        if self.item_text.shape[0] != data.n_items:
            raise DynrecError(
                f"content: the item text table has {self.item_text.shape[0]} rows, but the data has "
                f"{data.n_items} item indices (set_item_text needs one row per item of the vocabulary)"
            )
        counts = np.bincount(np.asarray(data.items, dtype=np.int64), minlength=data.n_items)
        self.log_pop = torch.from_numpy(np.log1p(counts[: data.n_items]).astype(np.float32))

    def score(self, batch: QueryBatch) -> torch.Tensor:
        return self.score_state(self.init_state(batch))

    def _decay(self) -> float:
        h = self.config.half_life
        return float(0.5 ** (1.0 / h)) if h > 0 else 1.0

    def _weights(self, batch: QueryBatch) -> tuple[IntArray, IntArray, np.ndarray, np.ndarray]:
        """(row, item, recency weight, has text) of every history event the model knows; recency
        is counted over those events only (padding and unknown indices are not events)."""
        text = self._table()
        items = np.asarray(batch.items, dtype=np.int64)
        rows = batch.row_ids()
        keep = (items > 0) & (items < text.shape[0])
        rows, items = rows[keep], items[keep]
        counts = np.bincount(rows, minlength=len(batch))
        ends = np.cumsum(counts)
        back = np.repeat(ends, counts) - 1 - np.arange(rows.size)  # 0 = newest known event
        h = self.config.half_life
        w = np.power(0.5, back / h) if h > 0 else np.ones(rows.size)
        has_text = self._has_text()[torch.from_numpy(items)].numpy()
        return rows, items, w, has_text

    def _has_text(self) -> torch.Tensor:
        """[n_items] whether each item has a text row (cached with the table)."""
        self._table()
        return self._with_text

    def _set_table(self, text: torch.Tensor) -> None:
        self.item_text = text
        self._with_text = text.abs().sum(1) > 0

    # ---- IncrementalState -----------------------------------------------------------------------
    def state_layout(self) -> StateLayout:
        return StateLayout("decayed-profile")

    def init_state(self, batch: QueryBatch) -> StateBatch:
        text = self._table()
        rows, items, w, has_text = self._weights(batch)
        wt = torch.from_numpy(w * has_text)  # float64
        r = torch.from_numpy(rows)
        s = torch.zeros(len(batch), text.shape[1], dtype=torch.float64)
        s.index_add_(0, r, text[torch.from_numpy(items)].to(torch.float64) * wt[:, None])
        total = torch.zeros(len(batch), dtype=torch.float64).index_add_(0, r, wt)
        return {"s": s, "w": total}

    def step_state(
        self, state: StateBatch, items: IntArray, timestamps: IntArray, *, inplace: bool = False
    ) -> StateBatch:
        """One event per row in O(d); an index the model does not know is not an event."""
        text = self._table()
        it = torch.from_numpy(np.asarray(items, dtype=np.int64))
        known = (it > 0) & (it < text.shape[0])
        it = torch.where(known, it, 0)
        g = torch.where(known, self._decay(), 1.0).to(torch.float64)
        add = (known & self._has_text()[it]).to(torch.float64)
        s = state["s"] if inplace else state["s"].clone()
        w = state["w"] if inplace else state["w"].clone()
        s.mul_(g[:, None]).add_(text[it].to(torch.float64) * add[:, None])
        w.mul_(g).add_(add)
        return {"s": s, "w": w}

    def score_state(self, state: StateBatch) -> torch.Tensor:
        text, pop = self._table(), self._pop()
        w = state["w"]
        has_profile = w > 0
        profile = (state["s"] / torch.where(has_profile, w, 1.0)[:, None]).to(torch.float32)
        out = profile @ text.T  # [B, n] weighted mean cosine
        pw = self.config.popularity_weight
        out[:, ~self._has_text()] = FLOOR - pw
        if pw > 0:
            out += pw * _unit_pop(pop)[None, :]
        out = torch.where(has_profile[:, None], out, pop[None, :].expand_as(out))
        n = self.n_items
        if out.shape[1] < n:  # items added to the vocabulary without text rows: not recommendable
            out = torch.cat([out, torch.full((out.shape[0], n - out.shape[1]), -torch.inf)], 1)
        out = out.contiguous()
        out[:, 0] = -torch.inf
        return out

    # ---- Explainer ------------------------------------------------------------------------------
    def explain(self, batch: QueryBatch, items: torch.Tensor) -> torch.Tensor:
        """Event j contributes ``w_j <t_j, t_i> / W`` to item i (0 for events without text, for
        targets without text and for queries scored by the popularity fallback)."""
        text = self._table()
        targets = items.detach().to("cpu", torch.int64)
        out = torch.zeros(len(batch.items), targets.shape[1], dtype=torch.float32)
        all_items = np.asarray(batch.items, dtype=np.int64)
        keep = np.flatnonzero((all_items > 0) & (all_items < text.shape[0]))
        rows, ev_items, w, has_text = self._weights(batch)
        wt = w * has_text
        total = np.bincount(rows, weights=wt, minlength=len(batch))
        coef = np.divide(wt, total[rows], out=np.zeros_like(wt), where=total[rows] > 0)
        t_ev = text[torch.from_numpy(ev_items)]  # [m, d]
        tg = targets[torch.from_numpy(rows)]  # [m, k]
        valid = (tg > 0) & (tg < text.shape[0])
        t_tg = text[torch.where(valid, tg, 0)]  # [m, k, d]; padding row = zeros
        dots = torch.einsum("md,mkd->mk", t_ev, t_tg)
        out[torch.from_numpy(keep)] = dots * torch.from_numpy(coef.astype(np.float32))[:, None]
        return out

    # ---- persistence ----------------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        return {"item_text": self._table(), "log_pop": self._pop()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        expect_only(tensors, {"item_text", "log_pop"})
        n = self.n_items
        text = expect(tensors, "item_text", (n, None), torch.float32)
        if text.shape[1] < 1:
            raise TensorFileError("tensor 'item_text' has no columns")
        if bool((text[0] != 0).any()):
            raise TensorFileError("tensor 'item_text' row 0 (padding) is not zeros")
        norms = text.norm(dim=1)
        if bool(((norms > 0) & ((norms - 1).abs() > 1e-3)).any()):
            raise TensorFileError("tensor 'item_text' has rows that are neither L2-normalised nor zero")
        self._set_table(text)
        log_pop = expect(tensors, "log_pop", (n,), torch.float32, low=0.0, finite=True)
        counts = torch.expm1(log_pop.double())
        if bool((log_pop > 30).any()) or bool(
            ((counts - counts.round()).abs() > 1e-2 * counts.clamp(min=1)).any()
        ):
            raise TensorFileError("tensor 'log_pop' is not log(1 + an event count) for every item")
        self.log_pop = log_pop
        enc = self.meta.get("text_encoder")
        if enc is not None and not isinstance(enc, str):
            raise DynrecError(f"meta 'text_encoder' is {enc!r}, expected a string")

    # ---- helpers --------------------------------------------------------------------------------
    def _table(self) -> torch.Tensor:
        if self.item_text is None or self.log_pop is None:
            raise NotFittedError("content is not fitted")
        return self.item_text

    def _pop(self) -> torch.Tensor:
        if self.log_pop is None:
            raise NotFittedError("content is not fitted")
        return self.log_pop

    def _vocab(self) -> Vocabulary:
        if self.item_vocab is None:
            raise NotFittedError("content is not fitted")
        return self.item_vocab


def _checked_table(table: torch.Tensor, what: str) -> torch.Tensor:
    """`table` as a contiguous float32 CPU matrix with finite values, or a `DynrecError`."""
    if not isinstance(table, torch.Tensor) or table.dim() != 2 or table.shape[1] < 1:
        shape = list(table.shape) if isinstance(table, torch.Tensor) else type(table).__name__
        raise DynrecError(f"content: the {what} must be a [n_items, d] tensor, got {shape}")
    out = table.detach().to("cpu", torch.float32).contiguous()
    if not bool(torch.isfinite(out).all()):
        raise DynrecError(f"content: the {what} has non-finite values (NaN or inf)")
    return out


def _normalised(table: torch.Tensor) -> torch.Tensor:
    """Rows scaled to unit L2 norm; all-zero rows (no text) stay zero; a copy."""
    norms = table.norm(dim=1, keepdim=True)
    out = torch.where(norms > 0, table / norms.clamp(min=1e-12), torch.zeros((), dtype=table.dtype))
    return out.contiguous()


def _unit_pop(log_pop: torch.Tensor) -> torch.Tensor:
    """``log(1 + events)`` scaled to [0, 1] by the most popular item."""
    top = float(log_pop.max()) if log_pop.numel() else 0.0
    return log_pop / top if top > 0 else torch.zeros_like(log_pop)
