"""Most-popular baselines: global counts, optionally recency-decayed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.query import IntArray, QueryBatch
from dynrec.errors import NotFittedError
from dynrec.models.base import Recommender
from dynrec.models.capabilities import StateBatch, StateLayout, UpdateBatch, UpdateOutcome
from dynrec.models.config import ModelConfig, NonNegFloat
from dynrec.models.files import expect, expect_only


@dataclass(frozen=True)
class PopConfig(ModelConfig):
    half_life: NonNegFloat = 0.0
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

    # -- IncrementalState: scores do not depend on the history; the state only counts events -----
    def state_layout(self) -> StateLayout:
        return StateLayout("none")

    def init_state(self, batch: QueryBatch) -> StateBatch:
        return {"n": torch.from_numpy(batch.lengths.astype(np.int64))}

    def step_state(
        self, state: StateBatch, items: IntArray, timestamps: IntArray, *, inplace: bool = False
    ) -> StateBatch:
        return {"n": state["n"] + 1}

    def score_state(self, state: StateBatch) -> torch.Tensor:
        return self.score(QueryBatch.from_histories([[]] * int(state["n"].shape[0])))

    # -- PartialFit: the counts of everything seen (exactly a refit) ------------------------------
    def partial_fit(self, update: UpdateBatch) -> UpdateOutcome:
        self._fit(update.memory, None)
        return UpdateOutcome("counts", int(update.users.shape[0]))

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
        expect_only(tensors, {"popularity"})
        self.popularity = expect(tensors, "popularity", (self.n_items,), torch.float32, low=0.0)
