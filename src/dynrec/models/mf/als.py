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
from dynrec.data.query import IntArray, QueryBatch
from dynrec.errors import NotFittedError
from dynrec.models.base import Recommender
from dynrec.models.capabilities import StateBatch, StateLayout, UpdateBatch, UpdateOutcome
from dynrec.models.config import ModelConfig, NonNegFloat, PositiveInt
from dynrec.models.explain import first_occurrence
from dynrec.models.files import expect, expect_only
from dynrec.models.mf._common import (
    finish_scores,
    gram_per_query,
    history_events,
    sum_duplicates,
    weighted_ridge_fold_in,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ALSConfig(ModelConfig):
    embedding_dim: PositiveInt = 64
    """Latent factors (implicit's `factors`)."""
    reg: NonNegFloat = 0.01
    """λ, L2 penalty on user and item factors (implicit's `regularization`)."""
    alpha: NonNegFloat = 1.0
    """Confidence slope: c = 1 + alpha · w for observed pairs (0 = every pair weighted 1)."""
    epochs: PositiveInt = 15
    """ALS sweeps (implicit's `iterations`)."""
    use_cg: bool = True
    """Conjugate-gradient user/item solves during training (faster); False = exact Cholesky.
    (Solver threads and the progress bar are run options: `RunOptions.num_threads`, `.progress`.)"""


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
        threads = self._threads()
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
            model.fit(conf, show_progress=self.options.progress)
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

    def item_embeddings(self) -> torch.Tensor:
        return self.item_vectors().detach().float().cpu()

    # ---- QueryEmbeddings: scores are a dot product (for ANN retrieval) -----------------------
    def query_embeddings(self, batch: QueryBatch) -> torch.Tensor:
        return self.user_vectors(batch).float()

    def output_embeddings(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.item_embeddings(), None

    # ---- IncrementalState: the sufficient statistics of the user's normal equations ------------
    # u = A⁻¹ b with A = VᵀV + λI + Σ_i α w_i v_i v_iᵀ and b = Σ_i (1 + α w_i) v_i over the history's
    # items (w_i = events on item i). An event on item i adds α v_i v_iᵀ to A and α v_i to b (plus
    # v_i the first time i is seen): O(k²) per event; a read solves the k×k system, the same normal
    # equations `user_vectors` solves from the whole history.
    def state_layout(self) -> StateLayout:
        return StateLayout("fold-in")

    def _gram_or_base(self) -> torch.Tensor:
        return self._base_gram if self._base_gram is not None else self._gram(self.item_vectors())

    def init_state(self, batch: QueryBatch) -> StateBatch:
        v, g, alpha = self.item_vectors(), self._gram_or_base(), float(self.config.alpha)
        n, k = v.shape
        seen = torch.zeros(len(batch), n, dtype=torch.bool)
        a = g.to(torch.float64)[None].repeat(len(batch), 1, 1)
        b = torch.zeros(len(batch), k, dtype=torch.float64)
        if len(batch.items):
            rows, cols, _ = history_events(batch, n, np.ones(len(batch.items), dtype=np.float32))
            # one (row, item, count) per distinct pair: A gets α·count·v vᵀ, b gets (1 + α·count)·v
            rows, cols, cnt = sum_duplicates(rows, cols, torch.ones(rows.shape[0]), n)
            c64 = cnt.to(torch.float64)
            a += gram_per_query(rows, cols, alpha * c64, v, len(batch), dtype=torch.float64)
            b.index_add_(0, rows, v[cols].to(torch.float64) * (1.0 + alpha * c64)[:, None])
            seen[rows, cols] = True
        return {"A": a, "b": b, "seen": seen}

    def step_state(
        self, state: StateBatch, items: IntArray, timestamps: IntArray, *, inplace: bool = False
    ) -> StateBatch:
        v, alpha = self.item_vectors(), float(self.config.alpha)
        it = torch.from_numpy(np.asarray(items, dtype=np.int64))
        rows = torch.arange(it.shape[0])
        vv = v[it].to(torch.float64)
        first = ~state["seen"][rows, it]
        seen = state["seen"] if inplace else state["seen"].clone()
        seen[rows, it] = True
        a = state["A"] + alpha * vv[:, :, None] * vv[:, None, :]
        b = state["b"] + (alpha + first.to(torch.float64))[:, None] * vv
        return {"A": a, "b": b, "seen": seen}

    def step_state_rows_(
        self, state: StateBatch, rows: IntArray, items: IntArray, timestamps: IntArray
    ) -> None:
        """`RowStep`: the rows' A, b and seen flags updated where they are (no row is copied)."""
        v, alpha = self.item_vectors(), float(self.config.alpha)
        r = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        it = torch.from_numpy(np.asarray(items, dtype=np.int64))
        vv = v[it].to(torch.float64)
        first = ~state["seen"][r, it]
        state["seen"][r, it] = True
        state["A"].index_add_(0, r, alpha * vv[:, :, None] * vv[:, None, :])
        state["b"].index_add_(0, r, (alpha + first.to(torch.float64))[:, None] * vv)

    def state_query_embeddings(self, state: StateBatch) -> torch.Tensor:
        """`StateQueryEmbeddings`: the folded-in user vectors ``A⁻¹ b`` of the states."""
        a, b = state["A"], state["b"]
        chol, info = torch.linalg.cholesky_ex(a)  # A = VᵀV + λI + α Σ v vᵀ: positive definite when λ > 0
        if bool((info != 0).any()):  # λ = 0 and a rank-deficient history
            u: torch.Tensor = torch.linalg.solve(a, b)
        else:
            u = torch.cholesky_solve(b[:, :, None], chol)[:, :, 0]
        return u.to(torch.float32)

    def score_state(self, state: StateBatch) -> torch.Tensor:
        return finish_scores(self.state_query_embeddings(state) @ self.item_vectors().T, self.n_items)

    # ---- Explainer: the fold-in's right-hand side is a sum over the history ----------------------
    def explain(self, batch: QueryBatch, items: torch.Tensor) -> torch.Tensor:
        """Exact contributions (Hu, Koren & Volinsky 2008, section 5): with the user's
        ``A = VᵀV + λI + Σ α w_j v_j v_jᵀ`` fixed, ``score_i = v_iᵀ A⁻¹ b`` and ``b = Σ_e c_e v_{j(e)}``
        is a sum over the events, so event e contributes ``c_e · v_iᵀ A⁻¹ v_{j(e)}`` with
        ``c_e = α w_e`` plus 1 at the first event on its item (the ``1 + α Σ w`` of the fold-in).
        They sum to the score; events on items the model does not know contribute 0."""
        v = self.item_vectors()
        n, alpha = v.shape[0], float(self.config.alpha)
        targets = items.detach().to("cpu", torch.int64)
        out = torch.zeros(len(batch.items), targets.shape[1], dtype=torch.float32)
        all_items = torch.from_numpy(np.asarray(batch.items, dtype=np.int64))
        known = (all_items > 0) & (all_items < n)
        w_all = (
            np.ones(len(batch.items), dtype=np.float64)
            if batch.weights is None
            else np.asarray(batch.weights, dtype=np.float64)
        )
        c_all = torch.from_numpy(alpha * w_all + first_occurrence(batch))
        rows = torch.from_numpy(batch.row_ids())[known]
        cols, c = all_items[known], c_all[known]
        if rows.numel() == 0 or targets.shape[1] == 0:
            return out
        v64 = v.to(torch.float64)
        extra = torch.from_numpy(alpha * w_all)[known]
        a = gram_per_query(rows, cols, extra, v, len(batch)).to(torch.float64) + self._gram_or_base()[None]
        valid = (targets > 0) & (targets < n)
        vt = v64[torch.where(valid, targets, 0)]  # [B, k, d]; padding row = zeros
        z = torch.linalg.solve(a, vt.transpose(1, 2))  # [B, d, k] = A⁻¹ v_i
        vals = torch.einsum("ed,edk->ek", v64[cols], z[rows]) * c[:, None]
        out[known] = vals.to(torch.float32)
        return out

    # ---- PartialFit: closed-form re-solve of the touched items --------------------------------
    def partial_fit(self, update: UpdateBatch) -> UpdateOutcome:
        """One half ALS sweep restricted to the touched items, with implicit's own solver: every
        user's vector is recomputed from their whole history with the current item factors
        (`recalculate_user`, the closed form `score` folds in with), then the factors of the
        touched items (new ones included) are re-solved with the user vectors fixed
        (`recalculate_item`): ``v_i = (UᵀU + λI + Σ_u α w_ui u uᵀ)⁻¹ Σ_u (1 + α w_ui) u``. Other
        items keep their factors."""
        from implicit.cpu.als import AlternatingLeastSquares

        cfg, mem = self.config, update.memory
        v = self.item_vectors().detach().cpu().numpy().astype(np.float32)
        n, k = mem.n_items, int(v.shape[1])
        if v.shape[0] < n:
            v = np.concatenate([v, np.zeros((n - v.shape[0], k), dtype=np.float32)], 0)
        touched = np.unique(np.asarray(update.items, dtype=np.int64))
        touched = touched[(touched > 0) & (touched < n)]
        if touched.size:
            conf = mem.csr(binary=False)
            conf.data = (1.0 + cfg.alpha * conf.data).astype(np.float32)
            threads = self._threads()
            als = AlternatingLeastSquares(
                factors=k,
                regularization=cfg.reg,
                alpha=1.0,
                iterations=1,
                use_cg=False,
                num_threads=threads,
                random_state=cfg.seed,
            )
            als.item_factors = np.ascontiguousarray(v)
            als.user_factors = np.zeros((mem.n_users, k), dtype=np.float32)
            with _single_threaded_blas():
                als.user_factors = als.recalculate_user(np.arange(mem.n_users), conf)
                v[touched] = als.recalculate_item(touched, conf.T.tocsr()[touched])
        v[0] = 0.0
        self.item_factors = torch.from_numpy(np.ascontiguousarray(v))
        self._base_gram = self._gram(self.item_factors)
        return UpdateOutcome("closed-form item solve", mem.n_events)

    def fit_passes(self) -> int:
        return max(1, self.config.epochs)

    # ---- persistence ----------------------------------------------------------------------
    def tensors(self) -> dict[str, torch.Tensor]:
        if self.item_factors is None:
            raise NotFittedError("als is not fitted")
        return {"item_factors": self.item_factors}

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        expect_only(tensors, {"item_factors"})
        k = self.config.embedding_dim
        self.item_factors = expect(tensors, "item_factors", (None, k), torch.float32, max_rows=self.n_items)
        self._base_gram = self._gram(self.item_factors)

    def _threads(self) -> int:
        """Solver threads: the run option, 0 = every core of the machine."""
        n = self.options.num_threads
        return n if n > 0 else max(1, os.cpu_count() or 1)
