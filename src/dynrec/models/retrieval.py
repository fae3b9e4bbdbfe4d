"""Approximate top-k retrieval with a FAISS index over a model's output item table.

A model whose score is a dot product (`dynrec.models.capabilities.QueryEmbeddings`) ranks the
catalogue as ``q · v_i + b_i``. `AnnIndex` indexes the items once; `retrieve` then answers a batch
of queries without scoring every item:

* ``kind="hnsw"`` (default): ``IndexHNSWFlat`` with the inner-product metric (a graph walk; the
  vectors are stored in full, so the returned scores are exact dot products). `m` is the graph
  degree, `ef_search` the search beam (recall against speed).
* ``kind="ivf"``: ``IndexIVFFlat`` (inner product): k-means cells, `nprobe` of them scanned.

A per-item bias becomes one more dimension (items ``[v_i, b_i]``, queries ``[q, 1]``), so the
index ranks exactly the model's scores. Row 0 (padding) is never indexed. Seen items are excluded
like `Recommender.recommend` does: each query asks for ``k`` plus its number of excluded items
and drops those (the beam is widened to match). Queries with an empty history are ranked by the
model's own `score` (a model may score them otherwise, e.g. by popularity).

Exact search stays the default everywhere; an index is built when a caller asks for one.
Persistence: `AnnIndex.save` writes FAISS's own binary format (``faiss.write_index``, not pickle)
and a JSON sidecar with the configuration and a SHA-256 fingerprint of the indexed table;
`AnnIndex.load` refuses an index whose fingerprint does not match the model's current table (the
model was retrained or grew), so a stale file is rebuilt rather than used. Rebuilding from the
embeddings is always valid.

Threads: a positive `num_threads` (the config's, else the model's `RunOptions.num_threads`) is set
with ``faiss.omp_set_num_threads`` before building and searching; 0 leaves FAISS's default.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from dynrec.data.query import QueryBatch, Recommendations, check_k, topk_stable
from dynrec.errors import DynrecError, MissingExtraError, UnknownIdError, requires_extra
from dynrec.models.base import Recommender
from dynrec.models.capabilities import ItemEmbeddings, QueryEmbeddings
from dynrec.models.config import ModelConfig, NonNegInt, PositiveInt

__all__ = [
    "AnnConfig",
    "AnnIndex",
    "AnnUnavailable",
    "exact_search",
    "retrieve",
    "similar_items",
    "unit_item_vectors",
]

AnnKind = Literal["hnsw", "ivf"]
INDEX_FILE = "ann.faiss"
META_FILE = "ann.json"


class AnnUnavailable(MissingExtraError):
    """FAISS (the ``ann`` extra) is not installed."""


def _faiss() -> Any:
    with requires_extra("ann", "approximate retrieval (--ann)", AnnUnavailable):
        import faiss  # type: ignore[import-untyped, unused-ignore]
    return faiss


@dataclass(frozen=True)
class AnnConfig(ModelConfig):
    """How the index is built and searched: a run-time choice, never saved in a model's config
    (a `ModelConfig` for its validated fields and ``key=value`` parsing; `seed` seeds IVF k-means)."""

    kind: AnnKind = "hnsw"
    m: PositiveInt = 32
    """HNSW: neighbours per node (memory and build time grow with it; so does recall)."""
    ef_construction: PositiveInt = 200
    """HNSW: beam width while building."""
    ef_search: PositiveInt = 128
    """HNSW: beam width while searching (at least k plus the excluded items of the query)."""
    nlist: NonNegInt = 0
    """IVF: number of k-means cells; 0 = 4 * sqrt(items)."""
    nprobe: PositiveInt = 16
    """IVF: cells scanned per query."""
    num_threads: NonNegInt = 0
    """FAISS OpenMP threads; 0 = the model's RunOptions.num_threads, and FAISS's default if that is 0."""

    def replace(self, **changes: Any) -> AnnConfig:
        return dataclasses.replace(self, **changes)


def _as_f32(t: torch.Tensor | np.ndarray) -> np.ndarray:
    a = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return np.ascontiguousarray(a, dtype=np.float32)


def _fingerprint(vectors: np.ndarray, bias: np.ndarray | None) -> str:
    h = hashlib.sha256()
    h.update(np.asarray(vectors.shape, dtype=np.int64).tobytes())
    h.update(vectors.tobytes())
    if bias is not None:
        h.update(bias.tobytes())
    return h.hexdigest()


def _augment(vectors: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    return vectors if bias is None else np.ascontiguousarray(np.hstack([vectors, bias[:, None]]))


def _queries(q: torch.Tensor | np.ndarray, has_bias: bool) -> np.ndarray:
    a = _as_f32(q)
    if has_bias and a.ndim == 2:  # [q, 1] against the items' [v, b]
        out = np.empty((a.shape[0], a.shape[1] + 1), dtype=np.float32)
        out[:, :-1] = a
        out[:, -1] = 1.0
        return out
    return a


def _exclusions(
    exclude: tuple[torch.Tensor, torch.Tensor] | None, n_queries: int
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, items) of the excluded (row, item) pairs, duplicates dropped."""
    if exclude is None:
        e = np.zeros(0, dtype=np.int64)
        return e, e
    rows = np.asarray(exclude[0], dtype=np.int64)
    cols = np.asarray(exclude[1], dtype=np.int64)
    if rows.shape != cols.shape:
        raise DynrecError(f"exclude: {rows.shape[0]} rows but {cols.shape[0]} items")
    if rows.size and (rows.min() < 0 or rows.max() >= n_queries):
        raise DynrecError(f"exclude: row index out of range for {n_queries} queries")
    pairs = np.unique(np.stack([rows, cols], axis=1), axis=0) if rows.size else np.zeros((0, 2), np.int64)
    return pairs[:, 0], pairs[:, 1]


def _drop_excluded(
    labels: np.ndarray,
    scores: np.ndarray,
    k: int,
    ex_rows: np.ndarray,
    ex_cols: np.ndarray,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `k` candidates of each row that are found (label > 0) and not excluded; rows
    with fewer candidates are padded with item 0 and score -inf."""
    b, width = labels.shape
    bad = labels <= 0
    if ex_rows.size:
        # excluded (row, item) pairs: look each candidate up in the sorted pair keys
        span = int(max(labels.max(initial=0), ex_cols.max(initial=0))) + 1
        keys = np.sort(ex_rows * span + ex_cols)
        cand = np.arange(b, dtype=np.int64)[:, None] * span + np.maximum(labels, 0)
        pos = np.clip(np.searchsorted(keys, cand), 0, keys.size - 1)
        bad |= keys[pos] == cand
    keep_rank = np.where(bad, width, np.cumsum(~bad, axis=1) - 1)  # rank among the kept, else width
    out_i = np.zeros((b, k), dtype=np.int64)
    out_s = np.full((b, k), -np.inf, dtype=np.float32)
    r, c = np.nonzero(keep_rank < k)
    out_i[r, keep_rank[r, c]] = labels[r, c]
    out_s[r, keep_rank[r, c]] = scores[r, c]
    return torch.from_numpy(out_i), torch.from_numpy(out_s)


def exact_search(
    vectors: torch.Tensor,
    bias: torch.Tensor | None,
    queries: torch.Tensor,
    k: int,
    *,
    exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
    chunk: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The exact top-k (indices [B, k], scores [B, k]) of ``queries @ vectorsᵀ + bias`` over rows
    ``1..n-1`` (row 0 = padding), excluded (row, item) pairs removed, ties by lower index: the
    reference `AnnIndex.search` is measured against. Queries run in chunks of `chunk`."""
    v = vectors.float()
    outs_i, outs_s = [], []
    rows_all = None if exclude is None else exclude[0].to(torch.int64)
    for a in range(0, queries.shape[0], chunk):
        s = queries[a : a + chunk].float() @ v.T
        if bias is not None:
            s += bias.float()[None, :]
        s[:, 0] = -torch.inf
        if exclude is not None and rows_all is not None:
            sel = (rows_all >= a) & (rows_all < a + chunk)
            s[rows_all[sel] - a, exclude[1][sel].to(torch.int64)] = -torch.inf
        i, sc = topk_stable(s, k)
        outs_i.append(i)
        outs_s.append(sc)
    return torch.cat(outs_i), torch.cat(outs_s)


class AnnIndex:
    """A FAISS index over the item rows ``1..n-1`` of a dot-product item table (see the module
    docstring). Build with `build` (a table) or `for_model` (a `QueryEmbeddings` model)."""

    def __init__(
        self, index: Any, config: AnnConfig, n_rows: int, dim: int, has_bias: bool, fingerprint: str
    ):
        self.index = index
        self.config = config
        self.n_rows = n_rows
        """Rows of the indexed table (row 0 = padding, never returned)."""
        self.dim = dim
        """Query dimension (without the bias column)."""
        self.has_bias = has_bias
        self.fingerprint = fingerprint
        """SHA-256 of the indexed table (`load` compares it with the model's)."""
        self.build_seconds = 0.0
        self._search_params: dict[tuple[str, int, int], Any] = {}

    # ---- building ------------------------------------------------------------------------------
    @classmethod
    def build(
        cls, vectors: torch.Tensor, bias: torch.Tensor | None = None, config: AnnConfig | None = None
    ) -> AnnIndex:
        """An index over ``vectors [n, d]`` (+ ``bias [n]``); row 0 is padding and not indexed."""
        import time

        cfg = config or AnnConfig()
        faiss = _faiss()
        v = _as_f32(vectors)
        b = None if bias is None else _as_f32(bias).reshape(-1)
        if v.ndim != 2 or v.shape[0] < 2:
            raise DynrecError(f"ann: expected an item table [n >= 2, d], got shape {list(v.shape)}")
        if b is not None and b.shape[0] != v.shape[0]:
            raise DynrecError(f"ann: bias has {b.shape[0]} rows, the item table {v.shape[0]}")
        if not np.isfinite(v).all() or (b is not None and not np.isfinite(b).all()):
            raise DynrecError("ann: the item table has non-finite values")
        data = _augment(v, b)[1:]  # row 0 = padding: FAISS label j is item j + 1
        dim = data.shape[1]
        _set_threads(cfg.num_threads)
        t0 = time.perf_counter()
        if cfg.kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, cfg.m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = cfg.ef_construction
            index.add(data)
        else:
            nlist = cfg.nlist or max(1, int(4 * math.sqrt(data.shape[0])))
            nlist = min(nlist, data.shape[0])
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.cp.seed = cfg.seed
            rng = np.random.default_rng(cfg.seed)
            n_train = min(data.shape[0], 64 * nlist)
            sample = data[np.sort(rng.choice(data.shape[0], n_train, replace=False))]
            index.train(sample)
            index.add(data)
        out = cls(index, cfg, v.shape[0], v.shape[1], b is not None, _fingerprint(v, b))
        out.build_seconds = time.perf_counter() - t0
        return out

    @classmethod
    def for_model(cls, model: Recommender, config: AnnConfig | None = None) -> AnnIndex:
        """An index over `model`'s output item table (`QueryEmbeddings.output_embeddings`)."""
        vectors, bias = _output_table(model)
        cfg = config or AnnConfig()
        if cfg.num_threads == 0 and model.options.num_threads > 0:
            cfg = cfg.replace(num_threads=model.options.num_threads)
        return cls.build(vectors, bias, cfg)

    def fits(self, model: Recommender) -> bool:
        """Whether this index was built from `model`'s current output item table."""
        vectors, bias = _output_table(model)
        return (
            _fingerprint(_as_f32(vectors), None if bias is None else _as_f32(bias).reshape(-1))
            == self.fingerprint
        )

    # ---- searching -----------------------------------------------------------------------------
    def search(
        self,
        queries: torch.Tensor | np.ndarray,
        k: int,
        *,
        exclude: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Approximate top-k (item indices [B, k] int64, scores [B, k] float32 = ``q · v + b``) of
        ``queries [B, d]``, sorted by descending score; `exclude` = (row, item) pairs to leave out
        (e.g. ``batch.seen_mask_indices()``). Missing results (fewer than k reachable items) are
        item 0 with score -inf."""
        q = _queries(queries, self.has_bias)
        if q.ndim != 2 or q.shape[1] != self.dim + int(self.has_bias):
            raise DynrecError(f"ann: queries have shape {list(np.shape(queries))}, expected [B, {self.dim}]")
        b = q.shape[0]
        k = max(0, min(int(k), self.n_rows - 1))
        if b == 0 or k == 0:
            return torch.zeros(b, k, dtype=torch.int64), torch.zeros(b, k, dtype=torch.float32)
        ex_rows, ex_cols = _exclusions(exclude, b)
        inside = (ex_cols > 0) & (ex_cols < self.n_rows)  # others are never retrieved anyway
        ex_rows, ex_cols = ex_rows[inside], ex_cols[inside]
        _set_threads(self.config.num_threads)
        if ex_rows.size == 0:  # nothing excluded: one search for k candidates, no regrouping
            dist, lab = self.index.search(q, k, params=self._params(k))
            missing = lab < 0  # fewer than k items reachable
            lab += 1  # FAISS label j is item j + 1
            if missing.any():
                lab[missing] = 0
                dist[missing] = -np.inf
            return torch.from_numpy(lab), torch.from_numpy(dist)
        counts = np.bincount(ex_rows, minlength=b).astype(np.int64)
        # queries grouped by how many candidates they need, so one long history does not widen
        # every query's search (groups: k + excluded rounded up to a power of two)
        need = np.minimum(k + counts, self.n_rows - 1)
        width = np.minimum(2 ** np.ceil(np.log2(np.maximum(need, 1))).astype(np.int64), self.n_rows - 1)
        labels = np.full((b, int(width.max())), -1, dtype=np.int64)
        scores = np.full((b, int(width.max())), -np.inf, dtype=np.float32)
        for w in np.unique(width).tolist():
            rows = np.nonzero(width == w)[0]
            dist, lab = self.index.search(q[rows], int(w), params=self._params(int(w)))
            labels[rows, :w] = np.where(lab >= 0, lab + 1, -1)
            scores[rows, :w] = dist
        return _drop_excluded(labels, scores, k, ex_rows, ex_cols)

    def _params(self, width: int) -> Any:
        """FAISS search parameters for a search of `width` candidates (kept per setting: making
        them costs more than a small search)."""
        cfg = self.config
        key = (cfg.kind, max(cfg.ef_search, width), cfg.nprobe)
        p = self._search_params.get(key)
        if p is None:
            faiss = _faiss()
            if cfg.kind == "hnsw":
                p = faiss.SearchParametersHNSW()
                p.efSearch = key[1]
            else:
                p = faiss.SearchParametersIVF()
                p.nprobe = cfg.nprobe
            self._search_params[key] = p
        return p

    # ---- persistence ---------------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``ann.faiss`` (FAISS binary format) and ``ann.json`` (config, sizes, fingerprint)
        into `directory` (e.g. next to the model's files)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        _faiss().write_index(self.index, str(d / INDEX_FILE))
        meta = {
            "config": dataclasses.asdict(self.config),
            "n_rows": self.n_rows,
            "dim": self.dim,
            "has_bias": self.has_bias,
            "fingerprint": self.fingerprint,
        }
        (d / META_FILE).write_text(json.dumps(meta, indent=2))
        return d / INDEX_FILE

    @classmethod
    def load(cls, directory: str | Path, model: Recommender) -> AnnIndex:
        """The index saved in `directory` for `model`; refused (`DynrecError` naming the file)
        when it was built from another item table than the model's current one (rebuild with
        `for_model`)."""
        d = Path(directory)
        meta_file, index_file = d / META_FILE, d / INDEX_FILE
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
            cfg = AnnConfig.from_dict(meta["config"])
            n_rows, dim, has_bias, fp = (
                int(meta["n_rows"]),
                int(meta["dim"]),
                bool(meta["has_bias"]),
                str(meta["fingerprint"]),
            )
        except FileNotFoundError:
            raise DynrecError(f"{meta_file}: file not found") from None
        except (ValueError, KeyError, TypeError, DynrecError) as exc:
            raise DynrecError(f"{meta_file}: not a valid ANN index description ({exc})") from None
        vectors, bias = _output_table(model)
        v = _as_f32(vectors)
        b = None if bias is None else _as_f32(bias).reshape(-1)
        if _fingerprint(v, b) != fp:
            raise DynrecError(
                f"{index_file}: built from another item table than this model's (retrained or grown); rebuild it"
            )
        if not index_file.is_file():
            raise DynrecError(f"{index_file}: file not found")
        try:
            index = _faiss().read_index(str(index_file))
        except RuntimeError as exc:
            raise DynrecError(f"{index_file}: not a readable FAISS index ({exc})") from None
        if index.ntotal != n_rows - 1 or index.d != dim + int(has_bias):
            raise DynrecError(
                f"{index_file}: holds {index.ntotal} vectors of dimension {index.d}, "
                f"expected {n_rows - 1} of dimension {dim + int(has_bias)}"
            )
        return cls(index, cfg, n_rows, dim, has_bias, fp)


def _set_threads(n: int) -> None:
    if n > 0:
        _faiss().omp_set_num_threads(n)


def _output_table(model: Recommender) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not isinstance(model, QueryEmbeddings):
        raise DynrecError(
            f"model {model.name!r} does not score by a dot product (no QueryEmbeddings); use exact search"
        )
    return model.output_embeddings()


def retrieve(
    model: Recommender,
    batch: QueryBatch,
    k: int,
    index: AnnIndex,
    *,
    exclude_seen: bool = True,
    exclude: QueryBatch | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k like ``model.recommend(batch, k, exclude_seen=..., exclude=...)`` through `index`:
    (item indices [B, k], scores [B, k]). Scores are the dot product ``q · v + b`` (they may
    differ from `model.score` by a per-query constant, e.g. MF's user bias); queries with an empty
    history are ranked by `model.recommend` itself."""
    if not isinstance(model, QueryEmbeddings):
        raise DynrecError(
            f"model {model.name!r} does not score by a dot product (no QueryEmbeddings); use exact search"
        )
    if exclude is not None and len(exclude) != len(batch):
        raise DynrecError(f"exclude has {len(exclude)} queries, the batch {len(batch)}")
    if index.n_rows > model.n_items:
        raise DynrecError(f"ann index has {index.n_rows} items, the model {model.n_items}; rebuild it")
    k = max(0, min(int(k), model.n_items - 1))
    with torch.no_grad():
        q = model.query_embeddings(batch)
        ex = (exclude or batch).seen_mask_indices() if exclude_seen else None
        idx, scores = index.search(q, k, exclude=ex)
        empty = np.nonzero(batch.lengths == 0)[0]
        if empty.size:
            sub = batch.take(empty)
            sub_ex = None if exclude is None else exclude.take(empty)
            i2, s2 = model.recommend(sub, k, exclude_seen=exclude_seen, exclude=sub_ex)
            pos = torch.from_numpy(empty)
            idx[pos, : i2.shape[1]] = i2
            scores[pos, : s2.shape[1]] = s2.to(scores.dtype)
    return idx, scores


# ---- similar items ------------------------------------------------------------------------------------


def unit_item_vectors(model: Recommender) -> torch.Tensor | None:
    """[n_items, d] float32 L2-normalised item vectors of `model` (row 0 = padding), or None when
    it has no item vectors (`ItemEmbeddings`) or its table does not have one row per item."""
    if not isinstance(model, ItemEmbeddings):
        return None
    v = model.item_embeddings().detach().float().cpu()
    if v.dim() != 2 or v.shape[0] != model.n_items:
        return None
    return torch.nn.functional.normalize(v, dim=1)


def similar_items(
    model: Recommender, item: str, k: int, *, unit: torch.Tensor | None = None
) -> tuple[list[str], list[float]]:
    """The `k` items most like `item` (never itself): cosine of the model's item vectors when it
    has them (`ItemEmbeddings`; `unit` = precomputed `unit_item_vectors`), else the model's scores
    for a one-item history. `UnknownIdError` for an item the model lacks."""
    assert model.item_vocab is not None
    i = model.item_vocab.index(item, policy="skip")
    if i == 0:
        raise UnknownIdError(f"item {item!r} is not in the model's catalogue")
    k = check_k(k)
    if unit is None:
        unit = unit_item_vectors(model)
    if unit is not None:
        s = unit @ unit[i]
    else:
        q = QueryBatch(np.zeros(1, np.int64), np.array([0, 1], np.int64), np.array([i], np.int64))
        s = model.score(q)[0].clone()
    s[0] = -torch.inf
    s[i] = -torch.inf
    top, vals = topk_stable(s[None, :].float(), min(k, s.shape[0]))
    return Recommendations.from_topk(top, vals, model.item_vocab).row()
