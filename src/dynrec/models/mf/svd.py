"""PureSVD (Cremonesi et al., RecSys 2010): truncated SVD of the binary user x item matrix.

``X ≈ U Σ Vᵀ`` with the top `embedding_dim` singular triplets. The user vector of a history h
(binary row over items) is its projection ``h V`` and the scores are ``h V Vᵀ`` — for a training
user this equals ``U_u Σ Vᵀ`` exactly, so fold-in of any history is exact and instantaneous.
`item_exponent` optionally rescales the item columns by popularity^(-β) before the SVD and ranks in
that scaled space (EigenRec-style damping of PureSVD's popularity bias); 0 = plain PureSVD.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.errors import NotFittedError
from dynrec.models.base import Recommender
from dynrec.models.config import ModelConfig, NonNegFloat, PositiveInt
from dynrec.models.explain import first_occurrence
from dynrec.models.files import TensorFileError, expect, expect_only
from dynrec.models.mf._common import finish_scores, history_dense

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SVDConfig(ModelConfig):
    embedding_dim: PositiveInt = 64
    """Number of singular triplets kept (k)."""
    item_exponent: NonNegFloat = 0.0
    """β: columns scaled by item-popularity^(-β) before the SVD; 0 = plain PureSVD."""


class PureSVD(Recommender):
    name = "svd"
    config_class = SVDConfig
    config: SVDConfig

    def __init__(self, config: SVDConfig | None = None) -> None:
        super().__init__(config)
        self.item_factors: torch.Tensor | None = None  # [n_items, k] right singular vectors V
        self.singular_values: torch.Tensor | None = None  # [k], descending
        self._scale = torch.ones(0)  # [n_items] column scale popularity^(-β) (ones for plain PureSVD)

    def _fit(self, data: InteractionData, valid: object) -> None:
        x = data.csr(binary=True).astype(np.float64)
        n_users, n_items = x.shape
        k = max(1, min(self.config.embedding_dim, min(n_users, n_items) - 1))
        scale = self._column_scale(np.asarray(x.sum(axis=0)).ravel())
        xs = x @ sp.diags(scale)
        rng = np.random.default_rng(self.config.seed)
        v0 = rng.uniform(-1.0, 1.0, size=min(xs.shape))
        _, s, vt = spla.svds(xs, k=k, v0=v0)
        order = np.argsort(-s, kind="stable")
        v = vt[order].T  # [n_items, k]
        # deterministic sign: the largest-magnitude entry of each vector is positive
        sign = np.sign(v[np.argmax(np.abs(v), axis=0), np.arange(v.shape[1])])
        v = v * np.where(sign == 0, 1.0, sign)[None, :]
        v[0] = 0.0
        self.item_factors = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32))
        self.singular_values = torch.from_numpy(s[order].astype(np.float32))
        self._scale = torch.from_numpy(scale.astype(np.float32))

    def _column_scale(self, counts: np.ndarray) -> np.ndarray:
        beta = self.config.item_exponent
        if beta == 0.0:
            return np.ones_like(counts, dtype=np.float64)
        out: np.ndarray = np.power(np.maximum(counts, 1.0), -beta)
        return out

    def item_embeddings(self) -> torch.Tensor:
        return self.item_vectors().detach().float().cpu()

    # ---- QueryEmbeddings: scores are a dot product (for ANN retrieval) -----------------------
    def query_embeddings(self, batch: QueryBatch) -> torch.Tensor:
        return self.user_vectors(batch).float()

    def output_embeddings(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.item_embeddings(), None

    def item_vectors(self) -> torch.Tensor:
        """[n_items, k] item factors V (scores = user_vectors @ Vᵀ, rescaled by popularity^β)."""
        if self.item_factors is None:
            raise NotFittedError("svd is not fitted")
        return self.item_factors

    def user_vectors(self, batch: QueryBatch) -> torch.Tensor:
        """[B, k] projection of each (column-scaled) binary history onto the item factors: ``h V``."""
        v = self.item_vectors()
        h = history_dense(batch, v.shape[0], binary=True)
        return (h * self._scale[None, :]) @ v

    def score(self, batch: QueryBatch) -> torch.Tensor:
        out = self.user_vectors(batch) @ self.item_vectors().T
        return finish_scores(out, self.n_items)

    def explain(self, batch: QueryBatch, items: torch.Tensor) -> torch.Tensor:
        """Exact contributions: ``score_i = Σ_{distinct j ∈ h} s_j v_j·v_i`` (s = column scale), so
        the first event on item j contributes ``s_j v_j·v_i`` and a repeat 0 (the history is
        binary). They sum to the score."""
        v = self.item_vectors()
        n = v.shape[0]
        targets = items.detach().to("cpu", torch.int64)
        out = torch.zeros(len(batch.items), targets.shape[1], dtype=torch.float32)
        all_items = torch.from_numpy(np.asarray(batch.items, dtype=np.int64))
        use = (all_items > 0) & (all_items < n) & torch.from_numpy(first_occurrence(batch))
        rows = torch.from_numpy(batch.row_ids())[use]
        cols = all_items[use]
        valid = (targets > 0) & (targets < n)
        vt = v[torch.where(valid, targets, 0)]  # [B, k, d]
        vals = torch.einsum("ed,ekd->ek", v[cols] * self._scale[cols][:, None], vt[rows])
        out[use] = vals
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        if self.item_factors is None or self.singular_values is None:
            raise NotFittedError("svd is not fitted")
        return {
            "item_factors": self.item_factors,
            "singular_values": self.singular_values,
            "item_scale": self._scale,
        }

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        expect_only(tensors, {"item_factors", "singular_values", "item_scale"})
        # k = min(embedding_dim, min(n_users, n_items) - 1) at fit time
        factors = expect(tensors, "item_factors", (None, None), torch.float32, max_rows=self.n_items)
        n, k = factors.shape
        if not 1 <= k <= self.config.embedding_dim:
            raise TensorFileError(
                f"tensor 'item_factors' has {k} columns, expected 1 to {self.config.embedding_dim}"
            )
        self.singular_values = expect(tensors, "singular_values", (k,), torch.float32)
        self._scale = expect(tensors, "item_scale", (n,), torch.float32)
        self.item_factors = factors
