"""Neighbourhood collaborative filtering: item-based and user-based KNN (cosine with shrinkage).

Both score from the query's history, so a user's new event changes their next recommendation at
once. History items can be recency-weighted (`recency_half_life`, counted in events back from the
newest), which is how the KNN models follow short-term interest in real time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.errors import NotFittedError
from dynrec.models.base import ModelConfig, Recommender


@dataclass(frozen=True)
class KNNConfig(ModelConfig):
    k: int = 100
    """Neighbours kept per item (ItemKNN) or per query (UserKNN)."""
    shrink: float = 10.0
    """Shrinkage added to the cosine denominator (damps similarities from few co-occurrences)."""
    recency_half_life: float = 0.0
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

    def __init__(self, config: KNNConfig | None = None) -> None:
        super().__init__(config)
        self.sim: sp.csr_matrix | None = None  # [n_items, n_items]; score = history @ sim

    def _fit(self, data: InteractionData, valid: object) -> None:
        x = data.csr(binary=True).tocsc()  # users x items
        xt = x.T.tocsr()
        norms = np.sqrt(np.asarray(x.multiply(x).sum(axis=0)).ravel()).astype(np.float32)
        self.sim = topk_cosine(lambda a, b: (xt[a:b] @ x).toarray(), norms, self.config.k, self.config.shrink)

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
        self.sim = _csr_from(tensors, "sim")


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
        self.x = _csr_from(tensors, "x")
        self.norms = np.sqrt(np.asarray(self.x.sum(axis=1)).ravel()).astype(np.float32)


def _csr_tensors(m: sp.csr_matrix, prefix: str) -> dict[str, torch.Tensor]:
    return {
        f"{prefix}.data": torch.from_numpy(np.asarray(m.data, dtype=np.float32)),
        f"{prefix}.indices": torch.from_numpy(np.asarray(m.indices, dtype=np.int64)),
        f"{prefix}.indptr": torch.from_numpy(np.asarray(m.indptr, dtype=np.int64)),
        f"{prefix}.shape": torch.tensor(m.shape, dtype=torch.int64),
    }


def _csr_from(t: dict[str, torch.Tensor], prefix: str) -> sp.csr_matrix:
    shape = tuple(int(v) for v in t[f"{prefix}.shape"].tolist())
    return sp.csr_matrix(
        (t[f"{prefix}.data"].numpy(), t[f"{prefix}.indices"].numpy(), t[f"{prefix}.indptr"].numpy()),
        shape=shape,
    )
