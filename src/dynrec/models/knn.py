"""Neighbourhood collaborative filtering: item-based and user-based KNN (cosine with shrinkage).

Both score from the query's history, so a user's new event changes their next recommendation at
once. History items can be recency-weighted (`recency_half_life`, counted in events back from the
newest), which is how the KNN models follow short-term interest in real time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import scipy.sparse as sp
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.query import IntArray, QueryBatch
from dynrec.errors import NotFittedError
from dynrec.models.base import Recommender
from dynrec.models.capabilities import StateBatch, StateLayout, UpdateBatch, UpdateOutcome
from dynrec.models.config import ModelConfig, NonNegFloat, PositiveInt
from dynrec.models.files import TensorFileError, expect, expect_only


@dataclass(frozen=True)
class KNNConfig(ModelConfig):
    k: PositiveInt = 100
    """Neighbours kept per item (ItemKNN) or per query (UserKNN)."""
    shrink: NonNegFloat = 10.0
    """Shrinkage added to the cosine denominator (damps similarities from few co-occurrences)."""
    recency_half_life: NonNegFloat = 0.0
    """Weight of a history item halves every this many events back from the newest; 0 = equal."""


CHUNK_FLOATS = 1 << 24
"""Similarity rows are computed in chunks of about this many floats (bounded memory)."""


def history_matrix(batch: QueryBatch, n_items: int, half_life: float = 0.0) -> sp.csr_matrix:
    """[B, n_items] sparse matrix of the histories (repeats summed, optional recency weights)."""
    rows = batch.row_ids()
    if half_life > 0 and rows.size:
        back = np.repeat(batch.indptr[1:], batch.lengths) - 1 - np.arange(rows.size)  # 0 = newest
        data = np.power(0.5, back / half_life).astype(np.float32)
    else:
        data = np.ones(rows.size, dtype=np.float32)
    h = sp.csr_matrix((data, (rows, batch.items)), shape=(len(batch), n_items), dtype=np.float32)
    h.sum_duplicates()
    return h


def _topk_sparse(dense: torch.Tensor, k: int, row_offset: int, n_rows: int) -> sp.coo_matrix:
    k = min(k, dense.shape[1])
    vals, idx = torch.topk(dense, k, dim=1)
    keep = vals > 0
    r = torch.arange(dense.shape[0])[:, None].expand_as(idx)[keep].numpy() + row_offset
    return sp.coo_matrix((vals[keep].numpy(), (r, idx[keep].numpy())), shape=(n_rows, dense.shape[1]))


def topk_cosine(
    cooccurrence_rows: Callable[[int, int], np.ndarray], norms: np.ndarray, k: int, shrink: float
) -> sp.csr_matrix:
    """Item-item cosine with shrinkage, ``co_ij / (|i||j| + shrink)``, keeping each *target* item's
    `k` most similar items (as Sarwar et al. / RecBole). `cooccurrence_rows(a, b)` returns the dense
    co-occurrence rows a..b-1; rows are processed in chunks of ~CHUNK_FLOATS so memory stays bounded.
    Returns `sim` [n, n] with row i = item i's contribution to every target (score = history @ sim)."""
    n = int(norms.shape[0])
    norms_t = torch.from_numpy(np.asarray(norms, dtype=np.float32))
    rows, cols, vals = [], [], []
    chunk = max(1, CHUNK_FLOATS // max(1, n))
    for a in range(0, n, chunk):
        b = min(n, a + chunk)
        co = torch.from_numpy(np.asarray(cooccurrence_rows(a, b), dtype=np.float32))  # [c, n]
        s = co / torch.clamp(norms_t[a:b, None] * norms_t[None, :] + shrink, min=1e-12)
        s[torch.arange(b - a), torch.arange(a, b)] = 0.0  # no self-similarity
        part = _topk_sparse(s, k, a, n)  # row j (global) = target j's neighbours
        rows.append(part.row)
        cols.append(part.col)
        vals.append(part.data)
    if not rows:
        return sp.csr_matrix((n, n), dtype=np.float32)
    # transpose while assembling: row i = source item i, column j = target item j
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(cols), np.concatenate(rows))), shape=(n, n), dtype=np.float32
    )


class ItemKNN(Recommender):
    name = "itemknn"
    config_class = KNNConfig
    config: KNNConfig

    dense_limit: ClassVar[int] = 1 << 24
    """Similarity matrices with at most this many entries are densified once for state steps."""

    def __init__(self, config: KNNConfig | None = None) -> None:
        super().__init__(config)
        self.sim: sp.csr_matrix | None = None  # [n_items, n_items]; score = history @ sim
        self._dense_sim: torch.Tensor | None = None  # cache of `sim` for fast row reads
        self._counts: sp.csr_matrix | None = None  # co-occurrence counts kept between updates

    def _set_sim(self, sim: sp.csr_matrix) -> None:
        self.sim = sim
        self._dense_sim = None

    def _sim(self) -> sp.csr_matrix:
        if self.sim is None:
            raise NotFittedError("itemknn is not fitted")
        return self.sim

    def _sim_rows(self, items: IntArray) -> torch.Tensor:
        """Rows ``sim[items]`` as a dense [len(items), n_items] tensor."""
        sim = self._sim()
        n = int(sim.shape[0])
        if self._dense_sim is None and n * n <= self.dense_limit:
            self._dense_sim = torch.from_numpy(np.asarray(sim.toarray(), dtype=np.float32))
        it = np.asarray(items, dtype=np.int64)
        if self._dense_sim is not None:
            return self._dense_sim[torch.from_numpy(it)]
        return torch.from_numpy(np.asarray(sim[it].toarray(), dtype=np.float32))

    # -- IncrementalState: ``s <- gamma s + sim[item]``, exactly ``history_weights @ sim`` --------
    def state_layout(self) -> StateLayout:
        return StateLayout("decayed-scores")

    def _gamma(self) -> float:
        hl = self.config.recency_half_life
        return float(0.5 ** (1.0 / hl)) if hl > 0 else 1.0

    def init_state(self, batch: QueryBatch) -> StateBatch:
        s = self.score(batch)
        s[:, 0] = 0.0
        return {"s": s}

    def step_state(
        self, state: StateBatch, items: IntArray, timestamps: IntArray, *, inplace: bool = False
    ) -> StateBatch:
        g = self._gamma()
        s = state["s"] if inplace else state["s"].clone()
        if g != 1.0:
            s.mul_(g)
        s += self._sim_rows(items)
        return {"s": s}

    def score_state(self, state: StateBatch) -> torch.Tensor:
        out = state["s"].clone()
        out[:, 0] = -torch.inf
        return out

    # -- PartialFit: additive co-occurrence counts, then neighbours re-selected --------------------
    def partial_fit(self, update: UpdateBatch) -> UpdateOutcome:
        """Exactly a refit on the memory: the co-occurrence counts change only through the new
        (user, item) pairs of the touched users, ``X_oldᵀD + DᵀX_old + DᵀD``."""
        if self._counts is None or update.fresh:
            x = update.previous.csr(binary=True)
            self._counts = (x.T @ x).tocsr().astype(np.float32)
        n = update.memory.n_items
        counts = _pad(self._counts, n, n)
        x_new = update.memory.csr(binary=True)[update.users]
        x_old = _pad(update.previous.csr(binary=True), update.memory.n_users, n)[update.users]
        d = (x_new - x_old).tocsr()
        d.eliminate_zeros()
        if d.nnz:
            cross = x_old.T @ d
            counts = (counts + cross + cross.T + d.T @ d).tocsr().astype(np.float32)
        self._counts = counts
        norms = np.sqrt(np.maximum(counts.diagonal(), 0.0)).astype(np.float32)
        self._set_sim(
            topk_cosine(lambda a, b: counts[a:b].toarray(), norms, self.config.k, self.config.shrink)
        )
        return UpdateOutcome("co-occurrence counts", int(update.users.shape[0]))

    # -- Explainer: score = Σ_j w_j sim[h_j, i], so event j contributes w_j sim[h_j, i] -----------
    def explain(self, batch: QueryBatch, items: torch.Tensor) -> torch.Tensor:
        sim = self._sim()
        rows = batch.row_ids()
        hl = self.config.recency_half_life
        if hl > 0 and rows.size:
            back = np.repeat(batch.indptr[1:], batch.lengths) - 1 - np.arange(rows.size)  # 0 = newest
            wt = np.power(0.5, back / hl).astype(np.float32)
        else:
            wt = np.ones(rows.size, dtype=np.float32)
        targets = items.cpu().numpy().astype(np.int64)[rows]  # [nnz, k]: the items of each event's query
        vals = np.zeros(targets.shape, dtype=np.float32)
        for c in range(targets.shape[1]):
            vals[:, c] = np.asarray(sim[batch.items, targets[:, c]]).ravel()
        return torch.from_numpy(vals * wt[:, None])

    def _fit(self, data: InteractionData, valid: object) -> None:
        x = data.csr(binary=True).tocsc()  # users x items
        xt = x.T.tocsr()
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel()).astype(np.float32)
        self._counts = None
        self._set_sim(
            topk_cosine(lambda a, b: (xt[a:b] @ x).toarray(), norms, self.config.k, self.config.shrink)
        )

    def score(self, batch: QueryBatch) -> torch.Tensor:
        if self.sim is None:
            raise NotFittedError("itemknn is not fitted")
        h = history_matrix(batch, self.n_items, self.config.recency_half_life)
        out = torch.from_numpy(np.asarray((h @ self.sim).toarray(), dtype=np.float32))
        out[:, 0] = -torch.inf
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        assert self.sim is not None
        return _csr_tensors(self.sim, "sim")

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        expect_only(tensors, _csr_names("sim"))
        self.sim = _csr_from(tensors, "sim", (self.n_items, self.n_items))


class UserKNN(Recommender):
    name = "userknn"
    config_class = KNNConfig
    config: KNNConfig

    def __init__(self, config: KNNConfig | None = None) -> None:
        super().__init__(config)
        self.x: sp.csr_matrix | None = None  # training users x items (binary)
        self.norms: np.ndarray | None = None

    def _fit(self, data: InteractionData, valid: object) -> None:
        self.x = data.csr(binary=True)
        self.norms = np.sqrt(np.asarray(self.x.sum(axis=1)).ravel()).astype(np.float32)

    def partial_fit(self, update: UpdateBatch) -> UpdateOutcome:
        """The neighbour rows are the memory's users (exactly a refit)."""
        self._fit(update.memory, None)
        return UpdateOutcome("user rows", int(update.users.shape[0]))

    def score(self, batch: QueryBatch) -> torch.Tensor:
        if self.x is None or self.norms is None:
            raise NotFittedError("userknn is not fitted")
        h = history_matrix(batch, self.n_items, self.config.recency_half_life)
        hb = h.copy()
        hb.data[:] = 1.0
        qn = np.sqrt(np.asarray(hb.multiply(hb).sum(axis=1)).ravel()).astype(np.float32)
        co = torch.from_numpy(np.asarray((h @ self.x.T).toarray(), dtype=np.float32))  # [B, U]
        sim = co / (
            torch.from_numpy(qn)[:, None] * torch.from_numpy(self.norms)[None, :] + self.config.shrink
        )
        if batch.users.size:  # a known user is not their own neighbour
            own = torch.from_numpy(batch.users)
            valid = (own > 0) & (own < sim.shape[1])
            sim[torch.arange(len(batch))[valid], own[valid]] = 0.0
        nb = _topk_sparse(sim, self.config.k, 0, len(batch)).tocsr()
        out = torch.from_numpy(np.asarray((nb @ self.x).toarray(), dtype=np.float32))
        out[:, 0] = -torch.inf
        return out

    def tensors(self) -> dict[str, torch.Tensor]:
        assert self.x is not None
        return _csr_tensors(self.x, "x")

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        expect_only(tensors, _csr_names("x"))
        n_users = self.user_vocab.size if self.user_vocab is not None else 1
        self.x = _csr_from(tensors, "x", (None, self.n_items), max_rows=n_users, low=0.0)
        self.norms = np.sqrt(np.asarray(self.x.sum(axis=1)).ravel()).astype(np.float32)


def _csr_tensors(m: sp.csr_matrix, prefix: str) -> dict[str, torch.Tensor]:
    if not m.has_canonical_format:  # what `_csr_from` accepts: sorted, no repeats within a row
        m = m.copy()
        m.sum_duplicates()
    return {
        f"{prefix}.data": torch.from_numpy(np.asarray(m.data, dtype=np.float32)),
        f"{prefix}.indices": torch.from_numpy(np.asarray(m.indices, dtype=np.int64)),
        f"{prefix}.indptr": torch.from_numpy(np.asarray(m.indptr, dtype=np.int64)),
        f"{prefix}.shape": torch.tensor(m.shape, dtype=torch.int64),
    }


def _csr_names(prefix: str) -> frozenset[str]:
    return frozenset(f"{prefix}.{part}" for part in ("data", "indices", "indptr", "shape"))


def _csr_from(
    t: dict[str, torch.Tensor],
    prefix: str,
    shape: tuple[int | None, int],
    *,
    max_rows: int | None = None,
    low: float | None = None,
) -> sp.csr_matrix:
    """The CSR matrix saved by `_csr_tensors`, checked before scipy sees it (scipy's sparse
    products do not bounds-check): `shape` (rows None = any count from 1 to `max_rows`), row
    pointer from 0 to nnz and non-decreasing, column indices in range and strictly increasing
    within each row, finite values (>= `low`)."""
    sh = expect(t, f"{prefix}.shape", (2,), torch.int64).tolist()
    rows, cols = shape
    if sh[1] != cols or (sh[0] != rows if rows is not None else not 1 <= sh[0] <= (max_rows or sh[0])):
        want = f"[{rows if rows is not None else f'1..{max_rows}'}, {cols}]"
        raise TensorFileError(f"tensor '{prefix}.shape' is {sh}, expected {want}")
    n_rows = int(sh[0])
    data = expect(t, f"{prefix}.data", (None,), torch.float32, low=low)
    nnz = int(data.shape[0])
    indices = expect(t, f"{prefix}.indices", (nnz,), torch.int64, low=0, high=cols)
    indptr = expect(t, f"{prefix}.indptr", (n_rows + 1,), torch.int64)
    if int(indptr[0]) != 0 or int(indptr[-1]) != nnz or bool((indptr.diff() < 0).any()):
        raise TensorFileError(
            f"tensor '{prefix}.indptr' is not a row pointer from 0 to {nnz} (non-decreasing)"
        )
    if nnz > 1:
        increasing = indices.diff() > 0
        row_start = torch.zeros(nnz - 1, dtype=torch.bool)
        starts = indptr[1:-1]
        row_start[starts[(starts > 0) & (starts < nnz)] - 1] = True
        if not bool((increasing | row_start).all()):
            raise TensorFileError(f"tensor '{prefix}.indices' is not sorted without repeats within each row")
    return sp.csr_matrix((data.numpy(), indices.numpy(), indptr.numpy()), shape=(n_rows, cols))


def _pad(m: sp.spmatrix, rows: int, cols: int) -> sp.csr_matrix:
    """`m` as a csr matrix of shape (rows, cols) (zero rows/columns appended)."""
    if m.shape == (rows, cols):
        return sp.csr_matrix(m)
    c = m.tocoo()
    return sp.csr_matrix((c.data, (c.row, c.col)), shape=(rows, cols), dtype=np.float32)
