"""Neural models' shared machinery: the Torch model base and the Trainer."""

from dynrec.models.neural.base import NeuralConfig, TorchRecommender, resolve_device, set_threads, usable_cpus
from dynrec.models.neural.optim import WeightAverage
from dynrec.models.neural.trainer import CheckpointSelector, EpochRecord, Trainer

__all__ = [
    "CheckpointSelector",
    "EpochRecord",
    "NeuralConfig",
    "TorchRecommender",
    "Trainer",
    "WeightAverage",
    "resolve_device",
    "set_threads",
    "usable_cpus",
]
