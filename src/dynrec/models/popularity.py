"""Most-popular baselines: global counts, optionally recency-decayed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.errors import NotFittedError
from dynrec.models.base import ModelConfig, Recommender


@dataclass(frozen=True)
class PopConfig(ModelConfig):
    half_life: float = 0.0
    """Recency decay: an event `half_life` time units older than the newest training event counts
    half. 0 = plain counts. For order-only datasets time is the per-user position."""


class MostPopular(Recommender):
    name = "pop"
    config_class = PopConfig
    config: PopConfig

    def __init__(self, config: PopConfig | None = None) -> None:
        super().__init__(config)
        self.popularity: torch.Tensor | None = None  # [n_items]

    def _fit(self, data: InteractionData, valid: object) -> None:
        if self.config.half_life > 0 and data.n_events:
            age = (data.timestamps.max() - data.timestamps).astype(np.float64)
            w = np.power(0.5, age / self.config.half_life)
        else:
            w = np.ones(data.n_events)
        pop = np.bincount(data.items, weights=w, minlength=data.n_items).astype(np.float32)
        self.popularity = torch.from_numpy(pop)

    def score(self, batch: QueryBatch) -> torch.Tensor:
        if self.popularity is None:
            raise NotFittedError("pop is not fitted")
        out = self.popularity[None, :].repeat(len(batch), 1)
        out[:, 0] = -torch.inf
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        assert self.popularity is not None
        return {"popularity": self.popularity}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.popularity = tensors["popularity"]
