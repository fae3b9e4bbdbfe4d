"""`NeuralConfig`: the hyper-parameters every neural model shares — what the `Trainer` reads (its
own module, so the Trainer and the Torch model base both depend on it and not on each other)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dynrec.models.config import Fraction, ModelConfig, NonNegFloat, NonNegInt, PositiveFloat, PositiveInt

__all__ = ["NeuralConfig", "Optimizer", "Schedule"]


Optimizer = Literal["adam", "adamw", "sgd"]
Schedule = Literal["constant", "cosine", "linear"]


@dataclass(frozen=True)
class NeuralConfig(ModelConfig):
    """Training options shared by every neural model (one vocabulary project-wide)."""

    embedding_dim: PositiveInt = 64
    epochs: PositiveInt = 50
    batch_size: PositiveInt = 128
    learning_rate: PositiveFloat = 1e-3
    weight_decay: NonNegFloat = 0.0
    optimizer: Optimizer = "adamw"
    warmup_steps: NonNegInt = 0
    schedule: Schedule = "constant"
    grad_clip: NonNegFloat = 1.0
    """Clip the gradient norm to this (0 = off)."""
    ema_decay: Fraction = 0.0
    """Exponential moving average of the weights, updated after every step (0 = off; e.g. 0.99).
    When on, validation, epoch callbacks, the best checkpoint and the fitted model all use the
    averaged weights; the optimiser keeps training the live ones. The decay ramps up as
    ``min(ema_decay, (1 + t) / (10 + t))`` so early averages are not dominated by the random init."""
    patience: PositiveInt = 5
    """Stop after this many validations without a better validation NDCG@10."""
    select_within_se: NonNegFloat = 0.0
    """Which checkpoint to keep: 0 = the epoch with the best validation NDCG@10; s > 0 = the latest
    epoch whose validation NDCG@10 is within s standard errors (over the validation queries, of the
    best epoch's value) of the best so far. Validation only either way; s > 0 prefers the
    longer-trained model when validation cannot tell the epochs apart (a plateau within noise).
    When to stop is unchanged (`patience` counts from the last new best)."""
    eval_every: PositiveInt = 1
    valid_gap: NonNegInt = 0
    """When fitting with a validation set, train without each user's last `valid_gap` training
    events, so a validation history — like a test history — ends with events the model was not
    trained to predict for that user (`dynrec.preprocessing.split.drop_last_events`). Opt-in."""
    valid_max_queries: NonNegInt = 0
    """Validate on at most this many queries (0 = all); the subset is fixed by the seed."""
