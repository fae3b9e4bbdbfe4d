"""Incremental learning: ``update(events)`` — the one mutating call after ``fit``.

`IncrementalUpdater` keeps the model's *memory* (every event it has learned from, in the model's
index space) and, on each update:

1. **grows the vocabularies** with new users and items. Neural models get new embedding rows by
   walking ``model.net``: every ``nn.Embedding`` / ``nn.Linear`` output / parameter / buffer whose
   leading dimension equals the old item count gets rows for the new items, initialised to the mean
   of the rows of the items they co-occur with (same users), or the global mean when they co-occur
   with nothing yet; user tables (names containing "user") grow with the global mean;
2. **continues training from the current weights**: neural models train ``epochs`` passes over the
   sequences of the users with new events (their old events come along as context and as targets)
   mixed with a replay sample of ``replay_ratio`` × as many other users (against forgetting); ALS
   re-solves the touched users and items in closed form; ItemKNN adds the new co-occurrence counts
   (additive) and re-selects neighbours; popularity adds (decayed) counts — the last two are exactly
   a refit on everything seen;
3. reports what it did (events, new items/users, seconds, method).

Models with no incremental path are refit on the memory (reported as ``method = "refit"``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch
from torch import nn

from dynrec.data.dataset import InteractionData
from dynrec.data.events import EventLog
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError, NotFittedError
from dynrec.models.base import Recommender
from dynrec.online.state import Event

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]

__all__ = [
    "IncrementalUpdater",
    "UpdateConfig",
    "als_partial_fit_items",
    "fit_passes",
    "grow_torch_model",
    "neighbour_init",
    "refit_like",
]


@dataclass(frozen=True)
class UpdateConfig:
    epochs: int = 1
    """Passes over the update's training sample (neural models)."""
    learning_rate: float = 0.0
    """0 = `lr_scale` x the model's own learning rate."""
    lr_scale: float = 0.3
    """A gentler step than training from scratch: continuing at the full rate with a fresh
    optimiser moves the weights away from their early-stopped optimum (ml-100k replay, NDCG@10:
    sasrec 0.0963 at 1x vs 0.0977 at 0.3x, gru4rec 0.0927 vs 0.0943; see benchmarks)."""
    replay_ratio: float = 1.0
    """Old users replayed per user with new events (neural models), against forgetting."""
    max_replay_users: int = 0
    """Cap on replayed users (0 = no cap)."""
    batch_size: int = 0
    """0 = the model's own batch size."""
    seed: int = 0


def _events_to_log(events: Iterable[Event]) -> EventLog:
    import polars as pl

    from dynrec.data.events import SCHEMA

    evs = list(events)
    frame = pl.DataFrame(
        {
            "user_id": [e.user_id for e in evs],
            "item_id": [str(e.item_id) for e in evs],
            "timestamp": [int(e.timestamp) for e in evs],
            "event_type": [e.event_type for e in evs],
            "value": [1.0] * len(evs),
            "row": list(range(len(evs))),
            "line": list(range(1, len(evs) + 1)),
        },
        schema=SCHEMA,
    )
    return EventLog(frame, source="<events>")


class IncrementalUpdater:
    """Continues training `model` on new events (see the module docstring).

    `history`: what the model was trained on (InteractionData in the model's vocabulary), the
    initial memory used for replay samples, co-occurrence counts and fold-ins. Without it the
    memory starts empty (updates then learn from new events only).
    """

    def __init__(
        self,
        model: Recommender,
        history: InteractionData | None = None,
        config: UpdateConfig | None = None,
    ) -> None:
        if model.item_vocab is None or model.user_vocab is None:
            raise NotFittedError(f"{model.name} is not fitted")
        self.model = model
        self.config = config or UpdateConfig()
        iv, uv = model.item_vocab, model.user_vocab
        if history is None:
            history = InteractionData.from_arrays(
                np.zeros(0, np.int64), np.zeros(0, np.int64), user_vocab=uv, item_vocab=iv
            )
        self.memory = history
        self._pending: list[Event] = []
        self._knn: _KNNCounts | None = None
        self._rng = np.random.default_rng(self.config.seed)
        self.n_updates = 0

    # -- bookkeeping --------------------------------------------------------------------------
    def remember(self, events: Iterable[Event]) -> None:
        """Queue events (from `OnlineRecommender.observe`) for the next `update()`."""
        self._pending.extend(events)

    def forget_user(self, user: str) -> bool:
        """Privacy: drop the user's events from the memory and the queue."""
        n0 = len(self._pending)
        self._pending = [e for e in self._pending if e.user_id != user]
        found = len(self._pending) != n0
        uv = self.memory.user_vocab
        if user in uv:
            u = uv.index(user)
            keep = self.memory.users != u
            if not keep.all():
                self.memory = self.memory.select(keep)
                self._knn = None  # counts included the user: rebuild on next update
                found = True
        return found

    # -- the public update ----------------------------------------------------------------------
    def update(self, events: EventLog | Iterable[Event] | None = None) -> dict[str, Any]:
        """Learn from `events` (external ids; None = the events queued by `remember`)."""
        if events is None:
            evs: EventLog | Iterable[Event] = self._pending
            self._pending = []
        else:
            evs = events
        elog = evs if isinstance(evs, EventLog) else _events_to_log(evs)
        assert self.model.item_vocab is not None and self.model.user_vocab is not None
        iv = Vocabulary(self.model.item_vocab.ids)
        uv = Vocabulary(self.model.user_vocab.ids)
        new = InteractionData.from_events(
            elog, event_weights=elog.event_weights, user_vocab=uv, item_vocab=iv
        )
        return self.update_indexed(
            new.users, new.items, new.timestamps, new.weights, item_vocab=iv, user_vocab=uv
        )

    def update_indexed(
        self,
        users: IntArray,
        items: IntArray,
        timestamps: IntArray,
        weights: npt.NDArray[np.float32] | None = None,
        *,
        item_vocab: Vocabulary | None = None,
        user_vocab: Vocabulary | None = None,
    ) -> dict[str, Any]:
        """Learn from events already in index space. Indices beyond the model's vocabulary are new
        ids; `item_vocab` / `user_vocab` (a superset of the model's, same order) name them."""
        t0 = time.perf_counter()
        model = self.model
        assert model.item_vocab is not None and model.user_vocab is not None
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        timestamps = np.asarray(timestamps, dtype=np.int64)
        w = np.ones(len(items), np.float32) if weights is None else np.asarray(weights, np.float32)
        old_items, old_users = model.n_items, model.user_vocab.size
        n_items = max(old_items, int(items.max(initial=0)) + 1)
        n_users = max(old_users, int(users.max(initial=0)) + 1)
        iv = _grown(model.item_vocab, item_vocab, n_items, "item")
        uv = _grown(model.user_vocab, user_vocab, n_users, "user")
        prev = self.memory
        self.memory = _append(prev, users, items, timestamps, w, uv, iv)
        model.item_vocab, model.user_vocab = iv, uv
        report: dict[str, Any] = {
            "n_events": int(len(items)),
            "new_items": n_items - old_items,
            "new_users": n_users - old_users,
        }
        if len(items) == 0:
            report.update(method="none", seconds=time.perf_counter() - t0)
            return report
        report["method"], report["work_events"] = self._dispatch(prev, users, items, old_items, old_users)
        self.n_updates += 1
        report["seconds"] = time.perf_counter() - t0
        log.info("update %d of %s: %s", self.n_updates, model.name, report)
        return report

    # -- per family -----------------------------------------------------------------------------
    def _dispatch(
        self, prev: InteractionData, users: IntArray, items: IntArray, old_items: int, old_users: int
    ) -> tuple[str, int]:
        """Apply the update; returns (method, work) where work = events processed x passes over
        them, a device-independent measure of the update's compute."""
        from dynrec.models.knn import ItemKNN, UserKNN
        from dynrec.models.neural import TorchRecommender
        from dynrec.models.popularity import MostPopular

        model = self.model
        mem = self.memory
        hook = getattr(model, "partial_update", None)
        if callable(hook):  # a model's own incremental step
            hook(mem, np.unique(users), np.unique(items))
            return "model.partial_update", mem.n_events
        if isinstance(model, TorchRecommender):
            n = self._update_torch(model, users, items, old_items, old_users)
            return "warm-start training", n * max(1, self.config.epochs)
        if isinstance(model, ItemKNN):
            self._update_itemknn(model, prev, users)
            return "co-occurrence counts", len(users)
        if isinstance(model, UserKNN):
            model.x = mem.csr(binary=True)
            model.norms = np.sqrt(np.asarray(model.x.sum(axis=1)).ravel()).astype(np.float32)
            return "user rows", len(users)
        if isinstance(model, MostPopular):
            _update_pop(model, mem)
            return "counts", len(users)
        mf = _update_mf(model, mem, np.unique(users), np.unique(items))
        if mf is not None:
            return mf, mem.n_events
        refit_like(model, mem)
        return "refit", mem.n_events * fit_passes(model)

    def _update_torch(
        self, model: Any, users: IntArray, items: IntArray, old_items: int, old_users: int
    ) -> int:
        mem = self.memory
        if mem.n_items > old_items or mem.n_users > old_users:
            init = neighbour_init(mem, old_items)
            grow_torch_model(model, mem.n_items, mem.n_users, init)
        touched = np.unique(users)
        others = np.setdiff1d(np.flatnonzero(mem.lengths() > 1), touched)
        n_rep = int(round(self.config.replay_ratio * len(touched)))
        if self.config.max_replay_users:
            n_rep = min(n_rep, self.config.max_replay_users)
        n_rep = min(n_rep, len(others))
        replay = self._rng.choice(others, n_rep, replace=False) if n_rep else np.zeros(0, np.int64)
        keep_users = np.zeros(mem.n_users, dtype=bool)
        keep_users[touched] = True
        keep_users[replay] = True
        sub = mem.select(keep_users[mem.users])
        train_continue(model, sub, self.config)
        return sub.n_events

    def _update_itemknn(self, model: Any, prev: InteractionData, users: IntArray) -> None:
        mem = self.memory
        if self._knn is None:
            self._knn = _KNNCounts.build(prev)
        self._knn.add(prev, mem, np.unique(users))
        model.sim = self._knn.similarity(model.config.k, model.config.shrink)


# ---- neural models -----------------------------------------------------------------------------


def train_continue(model: Any, data: InteractionData, cfg: UpdateConfig) -> None:
    """A few epochs of the model's own loss on `data`, from the current weights, no validation."""
    from dynrec.models.neural import Trainer

    mc = model.config
    tc = dataclasses.replace(
        mc,
        epochs=max(1, cfg.epochs),
        learning_rate=cfg.learning_rate or cfg.lr_scale * mc.learning_rate,
        batch_size=cfg.batch_size or mc.batch_size,
        warmup_steps=0,
        schedule="constant",
        checkpoint_dir="",
        progress=False,
        ema_decay=0.0,  # an update is a few steps: a fresh weight average would lag behind them
        seed=mc.seed + 7919 * (1 + int(model.meta.get("n_updates", 0))),
    )
    saved = {
        k: model.meta[k]
        for k in (
            "train_log",
            "epochs_run",
            "train_seconds",
            "valid_ndcg@10",
            "best_valid_ndcg@10",
            "best_epoch",
            "seconds_to_best",
        )
        if k in model.meta
    }
    orig_config = model.config
    model.config = tc
    try:
        model.prepare(data)
        Trainer(tc).fit(model, data, None)
    finally:
        model.config = orig_config
        if hasattr(model, "_batches"):
            model._batches = None  # training tensors of this update only
    model.meta.update(saved)
    model.meta["n_updates"] = int(model.meta.get("n_updates", 0)) + 1


def neighbour_init(mem: InteractionData, old_items: int) -> sp.csr_matrix:
    """[n_new, old_items] row-normalised co-occurrence of each new item with the old items (rows
    with no co-occurrence are empty → the caller uses the global mean)."""
    x = mem.csr(binary=True).tocsc()
    new = x[:, old_items:]
    old = x[:, 1:old_items]
    co = (new.T @ old).tocsr().astype(np.float32)
    sums = np.asarray(co.sum(axis=1)).ravel()
    inv = np.where(sums > 0, 1.0 / np.maximum(sums, 1e-12), 0.0).astype(np.float32)
    co = sp.diags(inv) @ co
    # column j of `co` is old item j + 1; pad a zero column for item 0
    return sp.hstack([sp.csr_matrix((co.shape[0], 1), dtype=np.float32), co]).tocsr()


def _grow_rows(t: torch.Tensor, n_new_total: int, init: sp.csr_matrix | None) -> torch.Tensor:
    """`t` [old, ...] extended to [n_new_total, ...]: new rows = init @ old rows, or the mean."""
    old = t.shape[0]
    extra = n_new_total - old
    flat = t.detach().reshape(old, -1).float()
    mean = flat[1:].mean(0, keepdim=True) if old > 1 else flat.mean(0, keepdim=True)
    rows = mean.repeat(extra, 1)
    if init is not None and init.shape[0] == extra:
        nb = torch.from_numpy(np.asarray(init @ flat.cpu().numpy(), dtype=np.float32)).to(flat.device)
        has = torch.from_numpy(np.asarray(init.sum(axis=1)).ravel() > 0).to(flat.device)
        rows[has] = nb[has]
    out = torch.cat([flat, rows], 0).reshape(n_new_total, *t.shape[1:]).to(t.dtype)
    return out.to(t.device)


def grow_torch_model(model: Any, n_items: int, n_users: int, init: sp.csr_matrix | None = None) -> list[str]:
    """Grow every item-indexed table of ``model.net`` to `n_items` rows (and user-indexed tables,
    i.e. named "user…", to `n_users`); returns the grown parameter names."""
    net: nn.Module | None = model.net
    if net is None:
        raise NotFittedError(f"{model.name} is not fitted")
    old_items = int(model.meta.get("n_items", 0)) or _guess_items(model)
    old_users = int(model.meta.get("n_users", 0))
    grown: list[str] = []

    def target(name: str, lead: int) -> tuple[int, sp.csr_matrix | None] | None:
        if lead == old_items and n_items > old_items and "user" not in name.lower():
            return n_items, init
        if old_users and lead == old_users and n_users > old_users and "user" in name.lower():
            return n_users, None
        return None

    with torch.no_grad():
        for mname, mod in net.named_modules():
            if isinstance(mod, nn.Embedding):
                t = target(mname, mod.num_embeddings)
                if t is not None:
                    mod.weight = nn.Parameter(_grow_rows(mod.weight, t[0], t[1]))
                    mod.num_embeddings = t[0]
                    grown.append(f"{mname}.weight")
                continue
            if isinstance(mod, nn.Linear):
                t = target(mname, mod.out_features)
                if t is not None:
                    mod.weight = nn.Parameter(_grow_rows(mod.weight, t[0], t[1]))
                    if mod.bias is not None:
                        mod.bias = nn.Parameter(_grow_rows(mod.bias, t[0], t[1]))
                    mod.out_features = t[0]
                    grown.append(f"{mname}.weight")
                continue
            for pname, p in list(mod.named_parameters(recurse=False)):
                if p.dim() >= 1:
                    t = target(f"{mname}.{pname}", p.shape[0])
                    if t is not None:
                        setattr(mod, pname, nn.Parameter(_grow_rows(p, t[0], t[1])))
                        grown.append(f"{mname}.{pname}")
            for bname, b in list(mod.named_buffers(recurse=False)):
                if b is not None and b.dim() >= 1:
                    t = target(f"{mname}.{bname}", b.shape[0])
                    if t is not None:
                        mod.register_buffer(bname, _grow_rows(b, t[0], t[1]))
                        grown.append(f"{mname}.{bname}")
            for attr, old, new in (("n_items", old_items, n_items), ("n_users", old_users, n_users)):
                if isinstance(getattr(mod, attr, None), int) and getattr(mod, attr) == old and new > old:
                    setattr(mod, attr, new)
    model.meta["n_items"] = max(n_items, old_items)
    if old_users:
        model.meta["n_users"] = max(n_users, old_users)
    return grown


def _guess_items(model: Any) -> int:
    return int(model.item_vocab.size) if model.item_vocab is not None else 0


# ---- ItemKNN: additive co-occurrence counts -------------------------------------------------------


@dataclass
class _KNNCounts:
    co: sp.csr_matrix  # [n, n] co-occurrence counts of the binary user x item matrix

    @classmethod
    def build(cls, data: InteractionData) -> _KNNCounts:
        x = data.csr(binary=True)
        return cls((x.T @ x).tocsr().astype(np.float32))

    def add(self, prev: InteractionData, mem: InteractionData, touched: IntArray) -> None:
        """co += X_newᵀX_new − X_oldᵀX_old over the touched users. With binary rows X_new = X_old + D
        (D = the user-item pairs that are new), the change is ``X_oldᵀD + DᵀX_old + DᵀD``: its cost
        follows the new pairs, not the touched users' whole histories."""
        n = mem.n_items
        self.co = _pad(self.co, n, n)
        x_new = mem.csr(binary=True)[touched]
        x_old = _pad(prev.csr(binary=True), mem.n_users, n)[touched]
        d = (x_new - x_old).tocsr()
        d.eliminate_zeros()
        if d.nnz == 0:
            return
        cross = x_old.T @ d
        delta = cross + cross.T + d.T @ d
        self.co = (self.co + delta).tocsr().astype(np.float32)

    def similarity(self, k: int, shrink: float) -> sp.csr_matrix:
        """Cosine with shrinkage, top-`k` neighbours per target item (as `ItemKNN.fit`)."""
        from dynrec.models.knn import topk_cosine

        norms = np.sqrt(np.maximum(self.co.diagonal(), 0.0)).astype(np.float32)
        return topk_cosine(lambda a, b: self.co[a:b].toarray(), norms, k, shrink)


def _pad(m: sp.spmatrix, rows: int, cols: int) -> sp.csr_matrix:
    """`m` as a csr matrix of shape (rows, cols) (zero rows/columns appended)."""
    if m.shape == (rows, cols):
        return sp.csr_matrix(m)
    c = m.tocoo()
    return sp.csr_matrix((c.data, (c.row, c.col)), shape=(rows, cols), dtype=np.float32)


# ---- popularity -------------------------------------------------------------------------------


def _update_pop(model: Any, mem: InteractionData) -> None:
    """Refit-equivalent counts (decayed relative to the newest event when `half_life` is set)."""
    hl = float(getattr(model.config, "half_life", 0.0))
    if hl > 0 and mem.n_events:
        age = (mem.timestamps.max() - mem.timestamps).astype(np.float64)
        wts = np.power(0.5, age / hl)
    else:
        wts = np.ones(mem.n_events)
    model.popularity = torch.from_numpy(
        np.bincount(mem.items, weights=wts, minlength=mem.n_items).astype(np.float32)
    )


# ---- matrix factorisation ------------------------------------------------------------------------


def _update_mf(model: Any, mem: InteractionData, users: IntArray, items: IntArray) -> str | None:
    """Incremental steps for the MF family (None: no incremental path, refit)."""
    try:
        from dynrec.models.mf.als import ALS
    except ImportError:  # pragma: no cover
        return None
    if isinstance(model, ALS):
        als_partial_fit_items(model, mem, items)
        return "closed-form item solve"
    return None


def als_partial_fit_items(model: Any, mem: InteractionData, items: IntArray) -> None:
    """One half ALS sweep restricted to `items`, with implicit's own solver: every user's vector
    is recomputed from their whole history with the current item factors (`recalculate_user`, the
    same closed form `ALS` folds in with), then the factors of `items` (new ones included) are
    re-solved with the user vectors fixed (`recalculate_item` = `partial_fit_items`):
    ``v_i = (UᵀU + λI + Σ_u α w_ui u uᵀ)⁻¹ Σ_u (1 + α w_ui) u``. Other items keep their factors."""
    import os

    from implicit.cpu.als import AlternatingLeastSquares

    from dynrec.models.mf.als import _single_threaded_blas

    cfg = model.config
    v = model.item_factors.detach().cpu().numpy().astype(np.float32)
    n, k = mem.n_items, int(v.shape[1])
    if v.shape[0] < n:
        v = np.concatenate([v, np.zeros((n - v.shape[0], k), dtype=np.float32)], 0)
    touched = np.unique(np.asarray(items, dtype=np.int64))
    touched = touched[(touched > 0) & (touched < n)]
    if touched.size:
        conf = mem.csr(binary=False)
        conf.data = (1.0 + cfg.alpha * conf.data).astype(np.float32)
        threads = cfg.num_threads if cfg.num_threads > 0 else max(1, os.cpu_count() or 1)
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
    model.item_factors = torch.from_numpy(np.ascontiguousarray(v))
    model._base_gram = model._gram(model.item_factors)


def fit_passes(model: Recommender) -> int:
    """Passes over the data a fit makes (epochs / ALS sweeps; 1 for one-pass models)."""
    return max(1, int(getattr(model.config, "epochs", 1) or 1))


# ---- fallback ---------------------------------------------------------------------------------------


def refit_like(model: Recommender, data: InteractionData) -> None:
    """Refit `model` from scratch on `data` with its own config (no validation)."""
    model.fit(data, None)


# ---- helpers ---------------------------------------------------------------------------------------


def _grown(current: Vocabulary, superset: Vocabulary | None, size: int, what: str) -> Vocabulary:
    """A copy of `current` grown to `size` rows, naming new ids from `superset` (same order)."""
    if size <= current.size:
        return current
    if superset is None or superset.size < size:
        raise DynrecError(f"new {what} indices up to {size - 1} but no vocabulary names them")
    ids = superset.ids
    if tuple(ids[: len(current)]) != tuple(current.ids):
        raise DynrecError(f"the {what} vocabulary is not an extension of the model's")
    return Vocabulary(ids[: size - 1])


def _append(
    prev: InteractionData,
    users: IntArray,
    items: IntArray,
    ts: IntArray,
    w: npt.NDArray[np.float32],
    uv: Vocabulary,
    iv: Vocabulary,
) -> InteractionData:
    n_old = prev.n_events
    return InteractionData.from_arrays(
        np.concatenate([prev.users, users]),
        np.concatenate([prev.items, items]),
        timestamps=np.concatenate([prev.timestamps, ts]),
        weights=np.concatenate([prev.weights, w]),
        values=np.concatenate([prev.values, np.ones(len(items), np.float32)]),
        user_vocab=uv,
        item_vocab=iv,
        has_time=prev.has_time if n_old else True,
    )
