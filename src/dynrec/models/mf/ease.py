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
from dynrec.data.query import IntArray, QueryBatch
from dynrec.errors import NotFittedError
from dynrec.models.base import Recommender
from dynrec.models.capabilities import StateBatch, StateLayout
from dynrec.models.config import ModelConfig, PositiveFloat
from dynrec.models.files import TensorFileError, expect, expect_only
from dynrec.models.mf._common import finish_scores, history_dense

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EASEConfig(ModelConfig):
    reg: PositiveFloat = 200.0
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

    def _w(self) -> torch.Tensor:
        if self.weights is None:
            raise NotFittedError("ease is not fitted")
        return self.weights

    # -- IncrementalState: the linear score vector ``binary_history @ B`` -------------------------
    def state_layout(self) -> StateLayout:
        return StateLayout("linear")

    def init_state(self, batch: QueryBatch) -> StateBatch:
        w = self._w()
        n = w.shape[0]
        seen = torch.zeros(len(batch), n, dtype=torch.bool)
        if len(batch.items):
            cols = torch.from_numpy(batch.items.astype(np.int64))
            keep = (cols > 0) & (cols < n)
            seen[torch.from_numpy(batch.row_ids())[keep], cols[keep]] = True
        return {"s": seen.float() @ w, "seen": seen}

    def step_state(
        self, state: StateBatch, items: IntArray, timestamps: IntArray, *, inplace: bool = False
    ) -> StateBatch:
        """``s += B[item]`` the first time an item is seen: O(n_items) per event."""
        w = self._w()
        it = torch.from_numpy(np.asarray(items, dtype=np.int64))
        rows = torch.arange(it.shape[0])
        first = ~state["seen"][rows, it]
        seen = state["seen"] if inplace else state["seen"].clone()
        seen[rows, it] = True
        return {"s": state["s"] + first.float()[:, None] * w[it], "seen": seen}

    def score_state(self, state: StateBatch) -> torch.Tensor:
        return finish_scores(state["s"].clone(), self.n_items)

    # -- Explainer: score_i = Σ_{j in distinct history items} B[j, i] ----------------------------
    def explain(self, batch: QueryBatch, items: torch.Tensor) -> torch.Tensor:
        """Each distinct history item contributes ``B[j, i]`` once (at its first occurrence;
        repeats contribute 0, as the binary history counts an item once)."""
        w = self._w()
        rows = batch.row_ids()
        first = np.ones(rows.size, dtype=bool)
        key = rows * (w.shape[0] + 1) + batch.items
        _, idx = np.unique(key, return_index=True)
        first[:] = False
        first[idx] = True
        targets = torch.from_numpy(items.cpu().numpy().astype(np.int64)[rows])  # [nnz, k]
        vals = w[torch.from_numpy(batch.items.astype(np.int64))[:, None], targets]
        return vals * torch.from_numpy(first)[:, None].to(vals.dtype)

    def tensors(self) -> dict[str, torch.Tensor]:
        if self.weights is None:
            raise NotFittedError("ease is not fitted")
        return {"weights": self.weights}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        expect_only(tensors, {"weights"})
        w = expect(tensors, "weights", (None, None), torch.float32, max_rows=self.n_items)
        if w.shape[1] != w.shape[0]:
            raise TensorFileError(f"tensor 'weights' has shape {list(w.shape)}, expected a square matrix")
        self.weights = w
