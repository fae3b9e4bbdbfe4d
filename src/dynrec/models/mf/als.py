"""Implicit-feedback ALS (Hu, Koren & Volinsky, ICDM 2008), trained by the `implicit` library.

Training is delegated to ``implicit.cpu.als.AlternatingLeastSquares`` (multi-threaded, seeded).
Confidence follows the paper: ``c_ui = 1 + alpha · w_ui`` for an observed pair (w = summed event
weights, 1 per event by default) and 1 for every unobserved pair, preference p_ui = 1 if observed.

Scoring folds a history into a user vector with the exact closed form, batched over the queries
in torch:  ``u = (VᵀV + λI + Σ_{i∈h} (c_i − 1) v_i v_iᵀ)⁻¹ Σ_{i∈h} c_i v_i``  — the same normal
equations implicit solves per user, so a user need not have been in training and a new event
changes the next recommendation at once. `user_vectors` exposes the folded-in vectors.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.errors import NotFittedError
from dynrec.models.base import ModelConfig, Recommender
from dynrec.models.mf._common import (
    finish_scores,
    history_events,
    sum_duplicates,
    weighted_ridge_fold_in,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ALSConfig(ModelConfig):
    embedding_dim: int = 64
    """Latent factors (implicit's `factors`)."""
    reg: float = 0.01
    """λ, L2 penalty on user and item factors (implicit's `regularization`)."""
    alpha: float = 1.0
    """Confidence slope: c = 1 + alpha · w for observed pairs (0 = every pair weighted 1)."""
    epochs: int = 15
    """ALS sweeps (implicit's `iterations`)."""
    use_cg: bool = True
    """Conjugate-gradient user/item solves during training (faster); False = exact Cholesky."""
    num_threads: int = 0
    """Threads for implicit's solver; 0 = all cores of the machine."""
    progress: bool = False


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """implicit parallelises over users itself and wants BLAS single-threaded meanwhile."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl ships with implicit's deps
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


class ALS(Recommender):
    name = "als"
    config_class = ALSConfig
    config: ALSConfig

    def __init__(self, config: ALSConfig | None = None) -> None:
        super().__init__(config)
        self.item_factors: torch.Tensor | None = None  # [n_items, k]
        self.user_factors: torch.Tensor | None = None
        """[n_users, k] the vectors implicit trained (not saved: scoring always folds in the history)."""
        self._base_gram: torch.Tensor | None = None  # [k, k] VᵀV + λI (float64)

    def _fit(self, data: InteractionData, valid: object) -> None:
        from implicit.cpu.als import AlternatingLeastSquares

        cfg = self.config
        threads = cfg.num_threads if cfg.num_threads > 0 else max(1, os.cpu_count() or 1)
        conf = data.csr(binary=False)  # summed event weights per (user, item)
        conf.data = (1.0 + cfg.alpha * conf.data).astype(np.float32)
        t0 = time.perf_counter()
        with _single_threaded_blas():
            model = AlternatingLeastSquares(
                factors=cfg.embedding_dim,
                regularization=cfg.reg,
                alpha=1.0,  # confidence already in the matrix
                iterations=cfg.epochs,
                use_cg=cfg.use_cg,
                num_threads=threads,
                random_state=cfg.seed,
            )
            model.fit(conf, show_progress=cfg.progress)
        log.info("als: %d sweeps in %.1fs on %d threads", cfg.epochs, time.perf_counter() - t0, threads)
        items = np.asarray(model.item_factors, dtype=np.float32)
        items[0] = 0.0  # padding column has no events
        self.item_factors = torch.from_numpy(items.copy())
        self.user_factors = torch.from_numpy(np.asarray(model.user_factors, dtype=np.float32).copy())
        self._base_gram = self._gram(self.item_factors)

    # ---- factors ------------------------------------------------------------------------
    def item_vectors(self) -> torch.Tensor:
        """[n_items, k] item factors V."""
        if self.item_factors is None:
            raise NotFittedError("als is not fitted")
        return self.item_factors

    def _gram(self, items: torch.Tensor) -> torch.Tensor:
        """VᵀV + λI in float64, shared by every query's normal equations."""
        v = items.to(torch.float64)
        return v.T @ v + self.config.reg * torch.eye(v.shape[1], dtype=torch.float64)

    def user_vectors(self, batch: QueryBatch) -> torch.Tensor:
        """[B, k] folded-in user vectors: the exact least-squares solve for each history with V fixed
        (``batch.weights`` are the event weights w; repeats add up)."""
        v = self.item_vectors()
        rows, cols, w = history_events(batch, v.shape[0])
        rows, cols, w = sum_duplicates(rows, cols, w, v.shape[0])  # as the training matrix does
        conf = 1.0 + self.config.alpha * w
        assert self._base_gram is not None
        return weighted_ridge_fold_in(rows, cols, conf - 1.0, conf, v, self._base_gram, len(batch))

    def score(self, batch: QueryBatch) -> torch.Tensor:
        return finish_scores(self.user_vectors(batch) @ self.item_vectors().T, self.n_items)

    # ---- persistence ----------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        if self.item_factors is None:
            raise NotFittedError("als is not fitted")
        return {"item_factors": self.item_factors}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.item_factors = tensors["item_factors"]
        self._base_gram = self._gram(self.item_factors)
