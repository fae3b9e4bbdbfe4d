"""Streaming (prequential) evaluation: replay events in time order after a cut.

For every replayed event: recommend from the current state → score the revealed item → only then
let the event reach the state (and, later, the model). Modes compared on the same stream:

* ``static``: the model and every user's state frozen at the cut (no event after the cut is used);
* ``state``: each user's state follows their events as they are revealed (no weight changes);
* ``incremental``: ``state`` + `IncrementalUpdater.update` every `update_every` events (or
  `update_every_time` of event time) on the events revealed since the last update;
* ``retrain``: ``state`` + a full refit from scratch on everything revealed, on the same schedule.

Causality. Event j is *revealed* at event e when it comes earlier in the stream and
``time_j + delay <= time_e``; a user's state at e holds exactly their revealed events, and an update
at a boundary receives only events that were predicted before it (and are revealed by then).
Between two model updates the model is fixed and users' states are independent, so the engine
batches: users in chunks, each user's events of the segment in rounds (round r = every user's r-th
event of the segment) — the same predictions as one-at-a-time processing in stream order, at
matrix-op speed. States live only inside a segment: a model change makes them stale, so each
segment starts from the users' revealed histories (that re-initialisation is charged to the mode).

Protocols (`replay_split`): a global time cut (``quantile`` of event times; ml-100k) or, for
order-only data (ml-1m, Amazon), each user's last ``last_n`` events, interleaved across users
(round-robin: everyone's n-th-last event, then everyone's (n-1)-th-last, ...). The model's
vocabulary is built from the pre-cut events only; items first seen in the stream are unknown to a
static model (a miss) until an update adds them.

Retrieval (`ReplayConfig.ann`): exact by default — every item scored, the revealed item's rank
counted. With an `AnnConfig`, each segment builds an index over its model's item table and every
prediction is the top k of `dynrec.online.retrieval.state_top_k` from the users' states (the same
seen-item exclusions; rows the index cannot answer stay exact): the revealed item's rank is its
position in that list, a miss when absent — what a user served by the index would see. Then the
engine keeps no dense per-user score or seen rows, only the states and the seen (row, item) pairs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.errors import DynrecError
from dynrec.evaluation import metrics as M
from dynrec.evaluation.offline import target_ranks
from dynrec.models.base import Recommender
from dynrec.models.retrieval import AnnConfig, AnnIndex
from dynrec.online.adapters import StateAdapter, adapter_for
from dynrec.online.retrieval import state_top_k
from dynrec.online.updater import IncrementalUpdater, UpdateConfig
from dynrec.replay.strategies import UpdateFn, incremental_fn, retrain_fn
from dynrec.replay.stream import ReplayData, holdout_last

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]


Mode = Literal["static", "state", "incremental", "retrain"]
MODES: tuple[Mode, ...] = ("static", "state", "incremental", "retrain")

__all__ = ["MODES", "Mode", "ReplayConfig", "ReplayResult", "replay"]


# ---- configuration and result ---------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayConfig:
    mode: Mode = "state"
    k: int = 10
    update_every: int = 0
    """Update (incremental/retrain) after this many stream events; 0 = `n_updates` even segments."""
    update_every_time: int = 0
    """...or after this much event time (takes precedence when > 0)."""
    n_updates: int = 4
    """Segments when neither `update_every` nor `update_every_time` is set."""
    delay: int = 0
    """Feedback delay in event-time units: an event reaches states/updates only this long after it."""
    n_windows: int = 10
    """Equal-count windows of the stream for the per-window metrics / plot."""
    exclude_seen: bool = True
    state_budget_mb: int = 256
    """Bounds the users processed together (their states + score rows)."""
    update: UpdateConfig = field(default_factory=UpdateConfig)
    retrain_epochs: int = 0
    """Epochs of each full retrain of a neural model; 0 = the initial fit's best epoch."""
    holdout: bool = True
    """Keep each user's last pre-cut event out of every update / retrain, as `fit_for_replay` keeps
    it out of the initial fit (it validates, and measures forgetting after the replay)."""
    ann: AnnConfig | None = None
    """Serve each prediction's top `k` through an approximate index (module docstring); None = exact."""


@dataclass
class ReplayResult:
    mode: str
    model: str
    dataset: str
    protocol: str
    ranks: npt.NDArray[np.float64]  # [S] 0-based rank of each revealed item (inf = miss)
    metrics: dict[str, float]
    windows: list[dict[str, float]]
    timing: dict[str, float]
    updates: list[dict[str, Any]]
    final_model: Recommender | None = None
    """The model at the end of the replay (changed by incremental / retrain modes)."""
    retrieval: str = "exact"
    """``"exact"`` or ``"ann:<kind>"`` (`ReplayConfig.ann`)."""

    def to_json(self) -> dict[str, Any]:
        """Mode, model, data, metrics, timing, windows, updates; ``"retrieval"`` (the index kind)
        when an approximate index served the predictions, as other results name it."""
        out = {"mode": self.mode, "model": self.model, "dataset": self.dataset, "protocol": self.protocol}
        if self.retrieval != "exact":
            out["retrieval"] = self.retrieval.removeprefix("ann:")
        return {**out, **self.metrics, **self.timing, "windows": self.windows, "updates": self.updates}


# ---- the engine ------------------------------------------------------------------------------------


def _segments(rd: ReplayData, cfg: ReplayConfig) -> list[tuple[int, int]]:
    s = len(rd)
    if s == 0:
        return []
    if cfg.mode in ("static", "state"):
        return [(0, s)]
    if cfg.update_every_time > 0:
        t0 = int(rd.time[0])
        bucket = (rd.time - t0) // cfg.update_every_time
        cuts = np.flatnonzero(np.diff(bucket)) + 1
    else:
        every = cfg.update_every or int(np.ceil(s / max(1, cfg.n_updates)))
        cuts = np.arange(every, s, every)
    bounds = np.concatenate([[0], cuts, [s]]).astype(np.int64)
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def _revealed_counts(rd: ReplayData, delay: int, static: bool) -> IntArray:
    """For every stream event, how many of its user's earlier stream events are revealed at it."""
    s = len(rd)
    users = rd.stream_users
    order = np.lexsort((np.arange(s), users))  # events grouped by user, stream order within
    u_sorted = users[order]
    starts = np.flatnonzero(np.r_[True, u_sorted[1:] != u_sorted[:-1]])
    first = np.repeat(starts, np.diff(np.r_[starts, s]))
    m = np.arange(s) - first  # index of the event among its user's stream events
    out = np.empty(s, dtype=np.int64)
    if static:
        out[order] = 0
        return out
    if delay <= 0:
        out[order] = m
        return out
    t = rd.time[order]
    # count of the user's earlier events with t_j <= t_e - delay (times are nondecreasing per user)
    key = u_sorted.astype(np.float64) * (float(t.max(initial=0)) + delay + 2) + t
    thr = u_sorted.astype(np.float64) * (float(t.max(initial=0)) + delay + 2) + (t - delay)
    c = np.searchsorted(key, thr, side="right") - first
    out[order] = np.minimum(np.maximum(c, 0), m)
    return out


def _chunk_users(adapter: StateAdapter, n_items: int, budget_mb: int, dense: bool) -> int:
    try:
        one = adapter.init(QueryBatch.from_histories([[1]]))
        per = sum(v.numel() * v.element_size() for v in one.values())
    except Exception:  # pragma: no cover - sizing is best effort
        per = 4 * n_items
    if dense:
        per += 8 * n_items  # score row + seen row
    return int(max(16, min(8192, budget_mb * (1 << 20) // max(1, per))))


@dataclass
class _Clock:
    serve: float = 0.0
    init: float = 0.0
    update: float = 0.0
    index: float = 0.0
    ann_rows: int = 0


def replay(
    model: Recommender,
    rd: ReplayData,
    config: ReplayConfig | None = None,
    *,
    adapter_factory: Callable[[Recommender], StateAdapter] | None = None,
    update_fn: UpdateFn | None = None,
    progress: bool = False,
) -> ReplayResult:
    """Prequential replay of `rd` with `model` (fitted on ``rd.train``); see the module docstring.

    `adapter_factory` / `update_fn` replace the state adapter and the model update (tests use
    spies here)."""
    cfg = config or ReplayConfig()
    if cfg.mode not in MODES:
        raise DynrecError(f"unknown replay mode {cfg.mode!r}; use one of {', '.join(MODES)}")
    make_adapter = adapter_factory or adapter_for
    s = len(rd)
    t_start = time.perf_counter()
    clock = _Clock()
    ranks = np.full(s, np.inf, dtype=np.float64)
    revealed = _revealed_counts(rd, cfg.delay, cfg.mode == "static")
    users_s = rd.stream_users
    updates: list[dict[str, Any]] = []
    sent = np.zeros(s, dtype=bool)  # events already given to an update
    predicted = np.zeros(s, dtype=bool)
    if update_fn is None and cfg.mode == "incremental":
        updater = IncrementalUpdater(
            model, holdout_last(rd.train)[0] if cfg.holdout else rd.train, cfg.update
        )
        update_fn = incremental_fn(updater)
    elif update_fn is None and cfg.mode == "retrain":
        update_fn = retrain_fn(s, holdout=cfg.holdout, retrain_epochs=cfg.retrain_epochs)
    segs = _segments(rd, cfg)
    for si, (a, b) in enumerate(segs):
        adapter = make_adapter(model)
        index = None
        if cfg.ann is not None:  # the segment's model: a new index after every update
            t0 = time.perf_counter()
            index = AnnIndex.for_model(model, cfg.ann)
            clock.index += time.perf_counter() - t0
        _run_segment(model, adapter, rd, a, b, revealed, ranks, predicted, cfg, clock, index)
        if cfg.mode in ("incremental", "retrain") and si + 1 < len(segs):
            assert update_fn is not None
            t_b = int(rd.time[b - 1])
            ready = np.flatnonzero(~sent[:b] & (rd.time[:b] + cfg.delay <= t_b))
            if not predicted[ready].all():  # pragma: no cover - engine invariant
                raise AssertionError("an event would reach an update before it was predicted")
            t0 = time.perf_counter()
            model, rep = update_fn(model, ready, rd)
            clock.update += time.perf_counter() - t0
            sent[ready] = True
            rep = {"after_event": int(b), **rep, "seconds": time.perf_counter() - t0}
            updates.append(rep)
        if progress:
            log.info("replay %s: segment %d/%d done", cfg.mode, si + 1, len(segs))
    wall = time.perf_counter() - t_start
    metrics = _metrics(ranks, cfg.k)
    metrics["n_events"] = float(s)
    metrics["n_users"] = float(np.unique(users_s).size)
    windows = _windows(ranks, cfg.k, cfg.n_windows)
    timing = {
        "seconds": wall,
        "serve_seconds": clock.serve,
        "state_init_seconds": clock.init,
        "update_seconds": clock.update,
        "events_per_s": s / wall if wall > 0 else 0.0,
        "serve_events_per_s": s / clock.serve if clock.serve > 0 else 0.0,
        "n_updates": float(len(updates)),
        "work_events": float(sum(float(u.get("work_events", 0)) for u in updates)),
    }
    served = "exact"
    if cfg.ann is not None:
        served = f"ann:{cfg.ann.kind}"
        timing["index_build_seconds"] = clock.index
        timing["ann_share"] = clock.ann_rows / s if s else 0.0
    return ReplayResult(
        cfg.mode, model.name, rd.name, rd.protocol, ranks, metrics, windows, timing, updates, model, served
    )


def _metrics(ranks: npt.NDArray[np.float64], k: int) -> dict[str, float]:
    return {
        f"HR@{k}": M.hit_rate(ranks, k),
        f"NDCG@{k}": M.ndcg(ranks, k),
        f"MRR@{k}": M.mrr(ranks, k),
    }


def _windows(ranks: npt.NDArray[np.float64], k: int, n: int) -> list[dict[str, float]]:
    s = ranks.shape[0]
    if s == 0:
        return []
    edges = np.linspace(0, s, max(1, min(n, s)) + 1).astype(np.int64)
    out = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        out.append({"start": float(a), "end": float(b), **_metrics(ranks[a:b], k)})
    return out


def _run_segment(
    model: Recommender,
    adapter: StateAdapter,
    rd: ReplayData,
    a: int,
    b: int,
    revealed: IntArray,
    ranks: npt.NDArray[np.float64],
    predicted: npt.NDArray[np.bool_],
    cfg: ReplayConfig,
    clock: _Clock,
    index: AnnIndex | None = None,
) -> None:
    """Predict stream events [a, b) with a fixed model, users in chunks, events in rounds.

    Users are ordered by their number of events in the segment (descending), so the users active
    in round r are a prefix of the chunk and every batched operation works on views. With `index`,
    predictions come from `state_top_k` and seen items are kept as (row, item) pairs."""
    data = rd.data
    n_model = model.n_items
    n_model_users = model.user_vocab.size if model.user_vocab is not None else 1
    idx = np.arange(a, b, dtype=np.int64)
    users = rd.stream_users[idx]
    order = np.lexsort((idx, users))
    ev_sorted = idx[order]  # events grouped by user, stream order within
    u_sorted = users[order]
    starts = np.flatnonzero(np.r_[True, u_sorted[1:] != u_sorted[:-1]])
    counts = np.diff(np.r_[starts, len(ev_sorted)])
    # most events first (active rows form a prefix in every round), then longest history first
    # (a chunk's histories are padded to its longest one when the states are built)
    hist_len = rd.pre_end[u_sorted[starts]] - data.indptr[u_sorted[starts]] + revealed[ev_sorted[starts]]
    by_count = np.lexsort((-hist_len, -counts))
    starts, counts = starts[by_count], counts[by_count]
    seg_users = u_sorted[starts]
    chunk = _chunk_users(adapter, n_model, cfg.state_budget_mb, dense=index is None)
    for c0 in range(0, len(seg_users), chunk):
        c1 = min(len(seg_users), c0 + chunk)
        cu = seg_users[c0:c1]
        c_starts, c_counts = starts[c0:c1], counts[c0:c1]
        nb = len(cu)
        # initial state: each user's history up to the revealed count at their first segment event
        cnt = revealed[ev_sorted[c_starts]].copy()  # stream events of each row in its state so far
        t0 = time.perf_counter()
        q = _history_batch(data, cu, data.indptr[cu], rd.pre_end[cu] + cnt, n_model, n_model_users)
        state = adapter.init(q)
        seen = _Seen(nb, n_model, dense=index is None)
        if cfg.exclude_seen:
            seen.add(q.row_ids(), q.items)
        clock.init += time.perf_counter() - t0
        t1 = time.perf_counter()
        for r in range(int(c_counts.max(initial=0))):
            n_act = int(np.searchsorted(-c_counts, -r, side="left"))  # rows with > r events
            ev = ev_sorted[c_starts[:n_act] + r]
            need = revealed[ev]
            # advance states to the revealed count (with no delay: exactly the previous event)
            while True:
                lag = need - cnt[:n_act]
                rr = np.flatnonzero(lag > 0)
                if rr.size == 0:
                    break
                p = rd.pre_end[cu[rr]] + cnt[rr]
                it = data.items[p]
                ok = it < n_model  # items the model does not know yet are skipped
                if ok.any():
                    rows = rr[ok]
                    state = adapter.step_rows_(state, rows, it[ok], data.timestamps[p[ok]])
                    if cfg.exclude_seen:
                        seen.add(rows, it[ok])
                cnt[rr] += 1
            tgt = data.items[rd.stream[ev]]
            if index is not None:
                got = state_top_k(
                    adapter, adapter.narrow(state, n_act), cfg.k, exclude=seen.pairs(n_act), index=index
                )
                clock.ann_rows += sum(x != "exact" for x in got.served)
                ranks[ev] = _list_ranks(got.items, tgt)
                predicted[ev] = True
                continue
            scores = adapter.score(adapter.narrow(state, n_act))
            if cfg.exclude_seen:
                scores.masked_fill_(seen.dense[:n_act], -torch.inf)
            scores[:, 0] = -torch.inf
            known = tgt < n_model
            rk = np.full(n_act, np.inf)
            if known.all():
                rk[:] = target_ranks(scores, torch.from_numpy(tgt)).numpy()
            elif known.any():
                kr = np.flatnonzero(known)
                rk[kr] = target_ranks(scores[torch.from_numpy(kr)], torch.from_numpy(tgt[kr])).numpy()
            ranks[ev] = rk
            predicted[ev] = True
        clock.serve += time.perf_counter() - t1


class _Seen:
    """The seen items of a chunk's rows: a dense [rows, items] mask (exact scoring masks with it)
    or (row, item) pairs (an index takes those)."""

    def __init__(self, n_rows: int, n_items: int, *, dense: bool) -> None:
        self.dense = torch.zeros(n_rows if dense else 0, n_items if dense else 0, dtype=torch.bool)
        self.is_dense = dense
        self._rows: list[IntArray] = []
        self._items: list[IntArray] = []

    def add(self, rows: IntArray, items: IntArray) -> None:
        if self.is_dense:
            self.dense[torch.from_numpy(np.asarray(rows)), torch.from_numpy(np.asarray(items))] = True
        else:
            self._rows.append(np.asarray(rows, dtype=np.int64))
            self._items.append(np.asarray(items, dtype=np.int64))

    def pairs(self, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (row, item) pairs of rows 0..n_rows-1."""
        if len(self._rows) > 1:  # merged once, then appended to
            self._rows, self._items = [np.concatenate(self._rows)], [np.concatenate(self._items)]
        r = self._rows[0] if self._rows else np.zeros(0, np.int64)
        i = self._items[0] if self._items else np.zeros(0, np.int64)
        keep = r < n_rows
        return torch.from_numpy(r[keep]), torch.from_numpy(i[keep])


def _list_ranks(items: torch.Tensor, targets: IntArray) -> npt.NDArray[np.float64]:
    """0-based position of each row's target in its top list (inf when absent)."""
    hit = items.numpy() == np.asarray(targets, dtype=np.int64)[:, None]
    pos = hit.argmax(axis=1).astype(np.float64)
    return np.where(hit.any(axis=1), pos, np.inf)


def _history_batch(
    data: InteractionData, users: IntArray, start: IntArray, end: IntArray, n_items: int, n_users: int
) -> QueryBatch:
    """Histories data.items[start:end] per row, without items the model does not know."""
    lens = end - start
    indptr = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(lens, out=indptr[1:])
    flat = np.repeat(start - indptr[:-1], lens) + np.arange(int(indptr[-1]), dtype=np.int64)
    items = data.items[flat]
    ts = data.timestamps[flat]
    keep = items < n_items
    if not keep.all():
        rows = np.repeat(np.arange(len(users)), lens)[keep]
        indptr = np.zeros(len(users) + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=len(users)), out=indptr[1:])
        items, ts = items[keep], ts[keep]
    u = np.where(users < n_users, users, 0).astype(np.int64)
    return QueryBatch(u, indptr, items.astype(np.int64), ts.astype(np.int64), None)
