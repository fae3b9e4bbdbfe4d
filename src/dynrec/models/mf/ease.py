"""EASE (Steck, WWW 2019): a closed-form item-item model, a strong full-ranking baseline.

``B = argmin ||X − X B||² + λ||B||²  s.t. diag(B) = 0`` has the solution
``P = (XᵀX + λI)⁻¹``, ``B = I − P · diag(1 / diag(P))`` (then the diagonal set to 0). A query's
scores are its binary history times B, so any history (a new user, a new event) is scored exactly.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.errors import NotFittedError
from dynrec.models.base import ModelConfig, Recommender
from dynrec.models.mf._common import finish_scores, history_dense

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EASEConfig(ModelConfig):
    reg: float = 200.0
    """λ, the L2 penalty on B. Validation HR@10 is flat for λ ≈ 100-300 on ml-100k and ml-1m
    (falls off by 1000); larger, denser catalogues often want more."""


class EASE(Recommender):
    name = "ease"
    config_class = EASEConfig
    config: EASEConfig

    def __init__(self, config: EASEConfig | None = None) -> None:
        super().__init__(config)
        self.weights: torch.Tensor | None = None  # [n_items, n_items] item-item matrix B

    def _fit(self, data: InteractionData, valid: object) -> None:
        t0 = time.perf_counter()
        x = data.csr(binary=True)
        gram = torch.from_numpy((x.T @ x).toarray().astype(np.float64))  # [n, n] co-occurrences
        n = gram.shape[0]
        gram.diagonal().add_(self.config.reg)
        p = torch.linalg.inv(gram)
        b = p / (-p.diagonal())[None, :]  # B_ij = -P_ij / P_jj
        b.diagonal().zero_()
        b[0, :] = 0.0  # padding row/column carry nothing
        b[:, 0] = 0.0
        self.weights = b.to(torch.float32)
        log.info("ease: solved %d x %d in %.1fs", n, n, time.perf_counter() - t0)

    def score(self, batch: QueryBatch) -> torch.Tensor:
        if self.weights is None:
            raise NotFittedError("ease is not fitted")
        h = history_dense(batch, self.weights.shape[0], binary=True)
        return finish_scores(h @ self.weights, self.n_items)

    def tensors(self) -> dict[str, torch.Tensor]:
        if self.weights is None:
            raise NotFittedError("ease is not fitted")
        return {"weights": self.weights}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.weights = tensors["weights"]
