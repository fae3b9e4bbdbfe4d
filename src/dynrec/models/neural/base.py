"""The Torch model base: `TorchRecommender`, a model whose weights live in an `nn.Module` trained by
`Trainer` (which sees it as a `Trainable`), with `NeuralConfig` (`dynrec.models.neural.config`,
the hyper-parameters every neural model shares).

A model plugs in by building its `nn.Module`, yielding pre-tensorised batches (slices of tensors
built once per run — no per-sample Python in the epoch loop) and computing its loss.
"""

from __future__ import annotations

import logging
import os
from abc import abstractmethod
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.errors import DynrecError, NotFittedError
from dynrec.models.base import Recommender
from dynrec.models.capabilities import UpdateBatch, UpdateOutcome
from dynrec.models.files import expect_state_dict
from dynrec.models.neural.config import NeuralConfig, Optimizer, Schedule
from dynrec.models.neural.distributed import batch_rows, device_for, init_from_env
from dynrec.models.neural.growth import warm_start
from dynrec.models.neural.trainer import EpochRecord, Trainer
from dynrec.preprocessing.split import drop_last_events

__all__ = [
    "EpochCallback",
    "NeuralConfig",
    "Optimizer",
    "Schedule",
    "TorchRecommender",
    "resolve_device",
    "set_threads",
    "usable_cpus",
]

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """The torch device for a `RunOptions.device` value (auto = cuda when available, else cpu)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise DynrecError(f"device {name!r} was asked for but CUDA is not available here; use cpu or auto")
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


EpochCallback = Callable[[EpochRecord, "TorchRecommender"], None]
"""Called after every epoch (after validation, before the checkpoint) with the epoch's record and
the model in its just-trained state, e.g. to log or to track a metric; its time is not counted in
``elapsed`` / ``seconds_to_best``."""


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

    def loss_terms(self, batch: dict[str, torch.Tensor]) -> int:
        """How many terms `loss` averages over for this batch: by default its rows. Distributed
        training weights each rank's share of a batch by its terms, so the ranks' averaged
        gradient is the whole batch's; a model whose loss averages over something else (e.g. the
        next-item targets of its sequences) overrides this to count them."""
        return batch_rows(batch)

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
        set_threads(self.options.num_threads)
        device = resolve_device(self.options.device)
        # under torchrun: join the process group (gloo / NCCL), local rank r on GPU r
        self.device = device_for(init_from_env(device), device)
        torch.manual_seed(self.config.seed)
        self.meta["n_items"] = data.n_items
        self.meta["n_users"] = data.n_users
        self.net = self.build_net(data).to(self.device)
        if valid is not None and self.config.valid_gap > 0:
            data = drop_last_events(data, self.config.valid_gap)
        try:
            self.prepare(data)
            Trainer(self.config, self.options).fit(self, data, valid)
        finally:  # pre-tensorised training data lives for one run only
            self.release_training_data()

    def fit_passes(self) -> int:
        return max(1, self.config.epochs)

    def partial_fit(self, update: UpdateBatch) -> UpdateOutcome:
        """Warm start (`dynrec.models.neural.growth.warm_start`): grow the tables to the new
        vocabulary, then a few epochs from the current weights on the touched users + a replay
        sample of others."""
        n = warm_start(self, update)
        return UpdateOutcome("warm-start training", n * max(1, update.config.epochs))

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
        state = self.net.state_dict()
        packed = [k for k, v in state.items() if not isinstance(v, torch.Tensor) or v.is_quantized]
        if packed:  # dynamic int8 layers keep packed parameters, which are no model file tensors
            raise DynrecError(
                f"{self.name}: this is a quantised scoring copy ({packed[0]!r} is packed); save or "
                "version the float32 model it was made from"
            )
        return {k: v.detach().cpu() for k, v in state.items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Rebuild the module from `meta` and the config, check `tensors` against its state_dict
        (names, shapes, dtypes, finite values), then load them on the run's device."""
        self.meta_size("n_items", self.item_vocab)
        self.meta_size("n_users", self.user_vocab)
        self.device = resolve_device(self.options.device)
        net = self.build_net_from_meta()
        net.load_state_dict(expect_state_dict(net, tensors))
        self.net = net.to(self.device)
        self.net.eval()

    @abstractmethod
    def build_net_from_meta(self) -> nn.Module:
        """Rebuild the module from `self.meta` sizes (for `load`)."""
