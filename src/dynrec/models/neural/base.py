"""The Torch model base: `NeuralConfig` (hyper-parameters shared by every neural model) and
`TorchRecommender` (a model whose weights live in an `nn.Module` trained by `Trainer`).

A model plugs in by building its `nn.Module`, yielding pre-tensorised batches (slices of tensors
built once per run — no per-sample Python in the epoch loop) and computing its loss.
"""

from __future__ import annotations

import logging
import os
from abc import abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.errors import NotFittedError
from dynrec.models.base import ModelConfig, Recommender
from dynrec.models.neural.trainer import EpochCallback, Trainer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NeuralConfig(ModelConfig):
    """Training options shared by every neural model (one vocabulary project-wide)."""

    embedding_dim: int = 64
    epochs: int = 50
    batch_size: int = 128
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adamw"  # adam | adamw | sgd
    warmup_steps: int = 0
    schedule: str = "constant"  # constant | cosine | linear
    grad_clip: float = 1.0
    ema_decay: float = 0.0
    """Exponential moving average of the weights, updated after every step (0 = off; e.g. 0.99).
    When on, validation, epoch callbacks, the best checkpoint and the fitted model all use the
    averaged weights; the optimiser keeps training the live ones. The decay ramps up as
    ``min(ema_decay, (1 + t) / (10 + t))`` so early averages are not dominated by the random init."""
    patience: int = 5
    """Stop after this many validations without a better validation NDCG@10."""
    select_within_se: float = 0.0
    """Which checkpoint to keep: 0 = the epoch with the best validation NDCG@10; s > 0 = the latest
    epoch whose validation NDCG@10 is within s standard errors (over the validation queries, of the
    best epoch's value) of the best so far. Validation only either way; s > 0 prefers the
    longer-trained model when validation cannot tell the epochs apart (a plateau within noise).
    When to stop is unchanged (`patience` counts from the last new best)."""
    eval_every: int = 1
    valid_gap: int = 0
    """When fitting with a validation set, train without each user's last `valid_gap` training
    events, so a validation history — like a test history — ends with events the model was not
    trained to predict for that user (`dynrec.preprocessing.split.drop_last_events`). Measured on
    ml-100k SASRec: +0.0017 test NDCG@10 over 5 seeds, within noise (benchmarks/results_sasrec.md,
    "valid_gap probe")."""
    valid_max_queries: int = 0
    """Validate on at most this many queries (0 = all); the subset is fixed by the seed."""
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int = 0
    """torch intra-op threads; 0 = every CPU this process may run on (or OMP_NUM_THREADS)."""
    progress: bool = True
    checkpoint_dir: str = ""
    """If set, save a resumable checkpoint there after every epoch and resume from it if present."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. under taskset or a container's cpuset),
    falling back to the machine's count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not on Linux
        return max(1, os.cpu_count() or 1)


def set_threads(n: int) -> None:
    if n > 0:
        torch.set_num_threads(n)
    elif "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(usable_cpus())


class TorchRecommender(Recommender):
    """Base for models whose weights live in an `nn.Module` trained by `Trainer`."""

    config: NeuralConfig

    def __init__(self, config: NeuralConfig | None = None) -> None:
        super().__init__(config)
        self.net: nn.Module | None = None
        self.device = torch.device("cpu")
        self.epoch_callbacks: list[EpochCallback] = []

    # -- to implement ----------------------------------------------------------------------
    @abstractmethod
    def build_net(self, data: InteractionData) -> nn.Module:
        """Create the module for this data's vocabulary sizes (store sizes in `self.meta`)."""

    @abstractmethod
    def train_batches(self, data: InteractionData, gen: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        """Yield one epoch of CPU tensor batches (shuffled with `gen`)."""

    @abstractmethod
    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor: ...

    @abstractmethod
    def score_net(self, batch: QueryBatch) -> torch.Tensor:
        """[B, n_items] scores from `self.net` (called under no_grad, eval mode)."""

    def prepare(self, data: InteractionData) -> None:  # noqa: B027 - optional hook
        """Pre-tensorise training data once per run (optional)."""

    def release_training_data(self) -> None:  # noqa: B027 - optional hook
        """Drop what `prepare` built (training rows are not model state); called after every fit."""

    def generators(self) -> dict[str, torch.Generator]:
        """The model's own random generators (e.g. negative sampling, masking), which resumable
        checkpoints save and restore with the Trainer's: by default every `torch.Generator`
        attribute of the model."""
        return {k: v for k, v in vars(self).items() if isinstance(v, torch.Generator)}

    # -- shared machinery ------------------------------------------------------------------
    def _fit(self, data: InteractionData, valid: Any) -> None:
        set_threads(self.config.num_threads)
        self.device = resolve_device(self.config.device)
        torch.manual_seed(self.config.seed)
        self.meta["n_items"] = data.n_items
        self.meta["n_users"] = data.n_users
        self.net = self.build_net(data).to(self.device)
        if valid is not None and self.config.valid_gap > 0:
            from dynrec.preprocessing.split import drop_last_events  # local: no import cycle

            data = drop_last_events(data, self.config.valid_gap)
        try:
            self.prepare(data)
            Trainer(self.config).fit(self, data, valid)
        finally:  # pre-tensorised training data lives for one run only
            self.release_training_data()

    def score(self, batch: QueryBatch) -> torch.Tensor:
        if self.net is None:
            raise NotFittedError(f"{self.name} is not fitted")
        was_training = self.net.training
        self.net.eval()
        try:
            with torch.no_grad():
                out = self.score_net(batch).float()
        finally:
            self.net.train(was_training)
        out = out.cpu() if out.device.type != "cpu" else out
        out[:, 0] = -torch.inf
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        if self.net is None:
            raise NotFittedError(f"{self.name} is not fitted")
        return {k: v.detach().cpu() for k, v in self.net.state_dict().items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.device = resolve_device(self.config.device)
        self.net = self.build_net_from_meta().to(self.device)
        self.net.load_state_dict(tensors)
        self.net.eval()

    @abstractmethod
    def build_net_from_meta(self) -> nn.Module:
        """Rebuild the module from `self.meta` sizes (for `load`)."""
