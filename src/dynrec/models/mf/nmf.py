"""Non-negative matrix factorisation of the binary user x item matrix, ``X ≈ W Hᵀ`` with W, H ≥ 0.

Trained with Lee & Seung's multiplicative updates for the Frobenius loss plus an L2 penalty
(`reg`), vectorised in torch over the sparse matrix:

    W ← W ⊙ (X H) / (W (HᵀH) + reg·W + ε),        H ← H ⊙ (Xᵀ W) / (H (WᵀW) + reg·H + ε)

Fold-in: a history h gets the non-negative least-squares user vector ``argmin_{w≥0} ||h − w Hᵀ||² +
reg||w||²`` with H fixed, by the same multiplicative update for `fold_in_steps` steps from a constant
start — deterministic, per query, batched.  Non-negativity makes every factor an additive "part"
of a user's interests (the article's NMF).
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
from dynrec.models.base import Recommender
from dynrec.models.config import ModelConfig, NonNegFloat, PositiveInt
from dynrec.models.explain import leave_one_out
from dynrec.models.files import expect, expect_only
from dynrec.models.mf._common import finish_scores, history_dense

log = logging.getLogger(__name__)

EPS = 1e-10


@dataclass(frozen=True)
class NMFConfig(ModelConfig):
    embedding_dim: PositiveInt = 64
    """Number of non-negative factors (k)."""
    epochs: PositiveInt = 200
    """Multiplicative-update sweeps (each updates W then H)."""
    reg: NonNegFloat = 0.1
    """L2 penalty on W and H."""
    fold_in_steps: PositiveInt = 100
    """Multiplicative-update steps when folding a history into a user vector."""


def _mu_step(w: torch.Tensor, numer: torch.Tensor, gram: torch.Tensor, reg: float) -> torch.Tensor:
    """One multiplicative update of rows `w` [B, k] for ``min ||X − w Hᵀ||² + reg||w||²``, given
    ``numer = X H`` [B, k] and ``gram = HᵀH`` [k, k] (the training loop applies the same rule)."""
    return w * numer / (w @ gram + reg * w + EPS)


def nnls_fold_in(
    numer: torch.Tensor, gram: torch.Tensor, reg: float, steps: int, start: float
) -> torch.Tensor:
    """[B, k] non-negative user vectors from ``numer = h H`` by `steps` multiplicative updates."""
    w = torch.full_like(numer, start)
    for _ in range(steps):
        w = _mu_step(w, numer, gram, reg)
    return w


class NMF(Recommender):
    name = "nmf"
    config_class = NMFConfig
    config: NMFConfig

    def __init__(self, config: NMFConfig | None = None) -> None:
        super().__init__(config)
        self.item_factors: torch.Tensor | None = None  # [n_items, k] H ≥ 0
        self.user_factors: torch.Tensor | None = None
        """[n_users, k] the trained W (not saved: scoring always folds in the history)."""
        self._start = torch.ones(1)  # constant fold-in start (mean of the trained W)

    def _fit(self, data: InteractionData, valid: object) -> None:
        cfg = self.config
        t0 = time.perf_counter()
        x = data.csr(binary=True)
        n_users, n_items = x.shape
        xt = x.T.tocsr()
        rng = np.random.default_rng(cfg.seed)
        k = cfg.embedding_dim
        scale = float(np.sqrt(max(x.nnz, 1) / (n_users * n_items) / k))  # so W Hᵀ ≈ mean of X
        w = (rng.random((n_users, k)) * 2 * scale).astype(np.float32)
        h = (rng.random((n_items, k)) * 2 * scale).astype(np.float32)
        # numpy + scipy.sparse here: sparse @ dense is several times faster than torch.sparse on CPU
        for _ in range(cfg.epochs):
            w *= (x @ h) / (w @ (h.T @ h) + cfg.reg * w + EPS)
            h *= (xt @ w) / (h @ (w.T @ w) + cfg.reg * h + EPS)
        h[0] = 0.0
        self.item_factors = torch.from_numpy(np.ascontiguousarray(h, dtype=np.float32))
        self.user_factors = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
        active = w[np.diff(x.indptr) > 0]
        self._start = torch.tensor([float(active.mean()) if active.size else scale])
        log.info("nmf: %d sweeps in %.1fs", cfg.epochs, time.perf_counter() - t0)

    def item_embeddings(self) -> torch.Tensor:
        return self.item_vectors().detach().float().cpu()

    # ---- QueryEmbeddings: scores are a dot product (for ANN retrieval) -----------------------
    def query_embeddings(self, batch: QueryBatch) -> torch.Tensor:
        return self.user_vectors(batch).float()

    def output_embeddings(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.item_embeddings(), None

    def item_vectors(self) -> torch.Tensor:
        """[n_items, k] non-negative item factors H."""
        if self.item_factors is None:
            raise NotFittedError("nmf is not fitted")
        return self.item_factors

    def user_vectors(self, batch: QueryBatch) -> torch.Tensor:
        """[B, k] non-negative least-squares fold-in of each binary history with H fixed."""
        h = self.item_vectors()
        x = history_dense(batch, h.shape[0], binary=True)
        return nnls_fold_in(x @ h, h.T @ h, self.config.reg, self.config.fold_in_steps, float(self._start))

    def explain(self, batch: QueryBatch, items: torch.Tensor) -> torch.Tensor:
        """Leave-one-out attribution (the multiplicative-update fold-in is not linear in the
        history): each of the last 50 events contributes the score drop when it alone is removed
        from the history."""
        return leave_one_out(self.score, batch, items)

    def score(self, batch: QueryBatch) -> torch.Tensor:
        return finish_scores(self.user_vectors(batch) @ self.item_vectors().T, self.n_items)

    def tensors(self) -> dict[str, torch.Tensor]:
        if self.item_factors is None:
            raise NotFittedError("nmf is not fitted")
        return {"item_factors": self.item_factors, "fold_in_start": self._start}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        expect_only(tensors, {"item_factors", "fold_in_start"})
        k = self.config.embedding_dim
        self.item_factors = expect(
            tensors, "item_factors", (None, k), torch.float32, low=0.0, max_rows=self.n_items
        )
        self._start = expect(tensors, "fold_in_start", (1,), torch.float32, low=0.0)
