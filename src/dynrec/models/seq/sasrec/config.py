"""SASRec's options (`SASRecConfig`) and the rules that fill the options left to the data
(`auto_profile`, `auto_batch_size`, `auto_dropout`), which `SASRec.fit` applies and writes back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from dynrec.data.dataset import InteractionData
from dynrec.models.config import Fraction, NonNegFloat, NonNegInt, PositiveFloat, PositiveInt
from dynrec.models.neural.base import Optimizer
from dynrec.models.seq.common import Amp
from dynrec.models.seq.item_text import TextProjection
from dynrec.models.seq.transformer import LongTerm, TransformerConfig

__all__ = ["SASRecConfig", "auto_batch_size", "auto_dropout", "auto_profile"]


@dataclass(frozen=True)
class SASRecConfig(TransformerConfig):
    """SASRec options; defaults reach the published SASRec+CE quality on ml-1m (see benchmarks)."""

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
    long_term: LongTerm = "none"
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
