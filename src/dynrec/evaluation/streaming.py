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
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt
import torch

from dynrec.data.dataset import InteractionData
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError
from dynrec.evaluation import metrics as M
from dynrec.models.base import QueryBatch, Recommender
from dynrec.online.adapters import StateAdapter, StateBatch, adapter_for
from dynrec.online.updater import IncrementalUpdater, UpdateConfig
from dynrec.preprocessing.split import EvalSet

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]
Mode = Literal["static", "state", "incremental", "retrain"]
MODES: tuple[Mode, ...] = ("static", "state", "incremental", "retrain")

__all__ = [
    "MODES",
    "ReplayConfig",
    "ReplayData",
    "ReplayResult",
    "holdout_last",
    "replay",
    "replay_split",
]


# ---- the stream -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayData:
    """A dataset cut into a pre-cut part (to train on) and a stream of events to replay.

    `data` holds every event in the *replay vocabulary* (pre-cut ids first, so the model's
    vocabulary — `train`'s — is a prefix of it); each user's pre-cut events come before their stream
    events, so the history of user u after c revealed stream events is the contiguous range
    ``data.items[indptr[u] : pre_end[u] + c]``.
    """

    data: InteractionData
    train: InteractionData
    stream: IntArray  # [S] flat positions in `data`, in replay order
    time: IntArray  # [S] event time used for delay / time-based updates (ts, or round for order-only)
    pre_end: IntArray  # [n_users] flat position where each user's stream events start
    protocol: str
    name: str = "<data>"

    def __len__(self) -> int:
        return int(self.stream.shape[0])

    @property
    def stream_users(self) -> IntArray:
        return self.data.users[self.stream]

    @property
    def stream_items(self) -> IntArray:
        return self.data.items[self.stream]


def _reindex(values: IntArray, first: IntArray, size: int) -> IntArray:
    """A permutation putting `first` (in order) before the remaining indices 1..size-1 (0 stays 0);
    returns new index of each old index."""
    rest = np.setdiff1d(np.arange(1, size, dtype=np.int64), first, assume_unique=False)
    order = np.concatenate([np.zeros(1, np.int64), first, rest])
    new_of_old = np.empty(size, dtype=np.int64)
    new_of_old[order] = np.arange(size, dtype=np.int64)
    return new_of_old


def replay_split(
    data: InteractionData,
    *,
    quantile: float | None = None,
    cut: int | None = None,
    last_n: int | None = None,
    name: str = "<data>",
) -> ReplayData:
    """Cut `data` for replay: by global time (`cut` or `quantile` of event times) or each user's
    last `last_n` events (order-only data; every user keeps at least one pre-cut event)."""
    n = data.n_events
    pos_in_user = np.arange(n, dtype=np.int64) - data.indptr[data.users]
    lens = data.lengths()[data.users]
    if last_n is not None:
        if last_n < 1:
            raise DynrecError("last_n must be >= 1")
        back = lens - 1 - pos_in_user  # 0 = user's newest event
        n_rep = np.minimum(last_n, lens - 1)  # keep >= 1 pre-cut event
        in_stream = back < n_rep
        rnd = (last_n - 1 - back).astype(np.int64)  # round: n-th last first, newest last
        protocol = f"last{last_n}"
    else:
        if not data.has_time:
            raise DynrecError(
                "this dataset has order but no timestamps: replay each user's last events (last_n)"
            )
        ts = data.timestamps
        if cut is None:
            q = 0.8 if quantile is None else quantile
            if not 0.0 < q < 1.0:
                raise DynrecError("quantile must be in (0, 1)")
            cut = int(np.quantile(ts, q, method="lower")) + 1 if n else 0
        in_stream = ts >= cut
        rnd = ts
        protocol = f"time>={cut}"
    pos = np.flatnonzero(in_stream)
    # replay order: by (time or round, user, position) -> deterministic, causal within each user
    order = np.lexsort((pos, data.users[pos], rnd[pos]))
    stream_old = pos[order]
    # vocabularies: pre-cut ids first (in their current order), then ids first seen in the stream
    pre = ~in_stream
    pre_items = np.unique(data.items[pre])
    pre_users = np.unique(data.users[pre])
    new_items_in_order = _first_seen(data.items[stream_old], pre_items)
    new_users_in_order = _first_seen(data.users[stream_old], pre_users)
    item_map = _reindex(data.items, np.concatenate([pre_items, new_items_in_order]), data.n_items)
    user_map = _reindex(data.users, np.concatenate([pre_users, new_users_in_order]), data.n_users)
    iv_ids = _ids_in(data.item_vocab, item_map)
    uv_ids = _ids_in(data.user_vocab, user_map)
    full_iv, full_uv = Vocabulary.from_unique(iv_ids), Vocabulary.from_unique(uv_ids)
    pre_iv = Vocabulary.from_unique(iv_ids[: len(pre_items)])
    pre_uv = Vocabulary.from_unique(uv_ids[: len(pre_users)])
    # rebuild the arrays in the new index space (stable: (user, time, original order))
    seq = np.arange(n, dtype=np.int64)
    new_users = user_map[data.users]
    # key that keeps each user's pre-cut events before their stream events, stream in replay order
    stream_rank = np.full(n, -1, dtype=np.int64)
    stream_rank[stream_old] = np.arange(len(stream_old), dtype=np.int64)
    key2 = np.where(stream_rank >= 0, n + stream_rank, seq)
    order_all = np.lexsort((key2, new_users))
    full = InteractionData(
        full_uv,
        full_iv,
        new_users[order_all],
        item_map[data.items][order_all],
        data.timestamps[order_all],
        data.weights[order_all],
        data.values[order_all],
        _indptr(new_users, full_uv.size),
        data.has_time,
    )
    new_pos_of_old = np.empty(n, dtype=np.int64)
    new_pos_of_old[order_all] = seq
    stream = new_pos_of_old[stream_old]
    is_pre = np.ones(n, dtype=bool)
    is_pre[stream] = False
    pre_count = np.bincount(full.users[is_pre], minlength=full.n_users)
    pre_end = full.indptr[:-1] + pre_count
    train = dataclasses.replace(full.select(is_pre), user_vocab=pre_uv, item_vocab=pre_iv)
    train = dataclasses.replace(train, indptr=train.indptr[: pre_uv.size + 1])
    etime = (rnd[stream_old]).astype(np.int64)
    return ReplayData(full, train, stream.astype(np.int64), etime, pre_end.astype(np.int64), protocol, name)


def _first_seen(values: IntArray, exclude: IntArray) -> IntArray:
    """Distinct `values` not in `exclude`, in order of first appearance."""
    uniq, first = np.unique(values, return_index=True)
    keep = ~np.isin(uniq, exclude)
    return uniq[keep][np.argsort(first[keep], kind="stable")].astype(np.int64)


def _ids_in(vocab: Vocabulary, new_of_old: IntArray) -> list[str]:
    ids = vocab.ids
    out = [""] * (len(new_of_old) - 1)
    for old in range(1, len(new_of_old)):
        out[int(new_of_old[old]) - 1] = ids[old - 1]
    return out


def _indptr(users: IntArray, n_users: int) -> IntArray:
    indptr = np.zeros(n_users + 1, dtype=np.int64)
    np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
    return indptr


def holdout_last(data: InteractionData) -> tuple[InteractionData, EvalSet]:
    """(train, valid): each user's last event (users with >= 2 events) is the validation target,
    the rest trains — model selection inside the pre-cut period only."""
    lens = data.lengths()
    has = np.flatnonzero(lens >= 2)
    tpos = data.indptr[1:][has] - 1
    mask = np.ones(data.n_events, dtype=bool)
    mask[tpos] = False
    start = data.indptr[has]
    hl = tpos - start
    indptr = np.zeros(len(has) + 1, dtype=np.int64)
    np.cumsum(hl, out=indptr[1:])
    flat = np.repeat(start - indptr[:-1], hl) + np.arange(int(indptr[-1]), dtype=np.int64)
    q = QueryBatch(has.astype(np.int64), indptr, data.items[flat], data.timestamps[flat], data.weights[flat])
    valid = EvalSet(q, data.items[tpos].astype(np.int64), data.timestamps[tpos].astype(np.int64))
    return data.select(mask), valid


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

    def to_json(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "model": self.model,
            "dataset": self.dataset,
            "protocol": self.protocol,
            **self.metrics,
            **self.timing,
            "windows": self.windows,
            "updates": self.updates,
        }


class UpdateFn(Protocol):
    def __call__(
        self, model: Recommender, events: IntArray, rd: ReplayData
    ) -> tuple[Recommender, dict[str, Any]]: ...


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


def _chunk_users(adapter: StateAdapter, n_items: int, budget_mb: int) -> int:
    try:
        one = adapter.init(QueryBatch.from_histories([[1]]))
        per = sum(v.numel() * v.element_size() for v in one.values())
    except Exception:  # pragma: no cover - sizing is best effort
        per = 4 * n_items
    per += 8 * n_items  # score row + seen row
    return int(max(16, min(8192, budget_mb * (1 << 20) // max(1, per))))


@dataclass
class _Clock:
    serve: float = 0.0
    init: float = 0.0
    update: float = 0.0


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
        update_fn = _incremental_fn(updater)
    elif update_fn is None and cfg.mode == "retrain":
        update_fn = _retrain_fn(cfg, s)
    segs = _segments(rd, cfg)
    for si, (a, b) in enumerate(segs):
        adapter = make_adapter(model)
        _run_segment(model, adapter, rd, a, b, revealed, ranks, predicted, cfg, clock)
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
    return ReplayResult(
        cfg.mode, model.name, rd.name, rd.protocol, ranks, metrics, windows, timing, updates, model
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


def target_ranks(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """0-based rank of each target (ties broken by lower item index, as `recommend`); inf when the
    target scores -inf (masked). Same result as `offline.target_ranks`, one pass fewer when no ties."""
    s_t = scores.gather(1, targets[:, None])
    rank = (scores > s_t).sum(1)
    eq = (scores == s_t).sum(1)
    tie_rows = torch.nonzero(eq > 1).squeeze(1)
    if tie_rows.numel():
        sub = scores[tie_rows]
        idx = torch.arange(scores.shape[1])[None, :]
        rank[tie_rows] += ((sub == s_t[tie_rows]) & (idx < targets[tie_rows, None])).sum(1)
    out = rank.to(torch.float64)
    return torch.where(torch.isfinite(s_t[:, 0]), out, torch.full_like(out, float("inf")))


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
) -> None:
    """Predict stream events [a, b) with a fixed model, users in chunks, events in rounds.

    Users are ordered by their number of events in the segment (descending), so the users active
    in round r are a prefix of the chunk and every batched operation works on views."""
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
    chunk = _chunk_users(adapter, n_model, cfg.state_budget_mb)
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
        seen = torch.zeros(nb, n_model, dtype=torch.bool)
        if cfg.exclude_seen and len(q.items):
            seen[torch.from_numpy(q.row_ids()), torch.from_numpy(q.items)] = True
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
                        seen[torch.from_numpy(rows), torch.from_numpy(it[ok])] = True
                cnt[rr] += 1
            scores = adapter.score(adapter.narrow(state, n_act))
            if cfg.exclude_seen:
                scores.masked_fill_(seen[:n_act], -torch.inf)
            scores[:, 0] = -torch.inf
            tgt = data.items[rd.stream[ev]]
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


# ---- model updates ------------------------------------------------------------------------------


def _incremental_fn(updater: IncrementalUpdater) -> UpdateFn:
    def fn(model: Recommender, events: IntArray, rd: ReplayData) -> tuple[Recommender, dict[str, Any]]:
        pos = rd.stream[events]
        d = rd.data
        rep = updater.update_indexed(
            d.users[pos],
            d.items[pos],
            d.timestamps[pos],
            d.weights[pos],
            item_vocab=d.item_vocab,
            user_vocab=d.user_vocab,
        )
        return updater.model, rep

    return fn


def _retrain_fn(cfg: ReplayConfig, n_stream: int) -> UpdateFn:
    sent = np.zeros(n_stream, dtype=bool)

    def fn(model: Recommender, events: IntArray, rd: ReplayData) -> tuple[Recommender, dict[str, Any]]:
        from dynrec.models.base import create_model

        sent[events] = True
        train = revealed_data(rd, sent, holdout=cfg.holdout)
        new = create_model(model.name, config=model.config.to_dict())
        new.meta = {k: v for k, v in model.meta.items() if k in ("dataset", "split")}
        epochs = cfg.retrain_epochs or int(model.meta.get("best_epoch", 0) or 0)
        if epochs and hasattr(new.config, "epochs"):
            new.config = dataclasses.replace(new.config, epochs=epochs)  # type: ignore[call-arg]
        new.fit(train, None)
        for k in ("best_epoch",):
            if k in model.meta:
                new.meta[k] = model.meta[k]
        from dynrec.online.updater import fit_passes

        work = train.n_events * fit_passes(new)
        return new, {"n_events": int(len(events)), "method": "refit", "work_events": work}

    return fn


def revealed_data(rd: ReplayData, sent: npt.NDArray[np.bool_], *, holdout: bool = False) -> InteractionData:
    """Pre-cut events (without each user's last one when `holdout`, as `holdout_last`) + the stream
    events marked in `sent`, in a vocabulary that is the prefix of ``rd.data``'s covering them."""
    d = rd.data
    keep = np.ones(d.n_events, dtype=bool)
    keep[rd.stream] = False
    if holdout:
        n_pre = rd.pre_end - d.indptr[:-1]
        has = np.flatnonzero(n_pre >= 2)
        keep[rd.pre_end[has] - 1] = False
    keep[rd.stream[sent]] = True
    sub = d.select(keep)
    n_items = max(rd.train.n_items, int(sub.items.max(initial=0)) + 1)
    n_users = max(rd.train.n_users, int(sub.users.max(initial=0)) + 1)
    iv = Vocabulary.from_unique(list(d.item_vocab.ids[: n_items - 1]))
    uv = Vocabulary.from_unique(list(d.user_vocab.ids[: n_users - 1]))
    return dataclasses.replace(sub, item_vocab=iv, user_vocab=uv, indptr=sub.indptr[: n_users + 1])


__all__ += ["StateBatch", "revealed_data"]


# ---- jobs: what the CLI and the benchmarks call ------------------------------------------------------


def load_replay_data(
    dataset: str,
    *,
    data_dir: str | None = None,
    quantile: float | None = None,
    last_n: int | None = None,
) -> ReplayData:
    """A registered dataset (or event file) cut for replay: by time (`quantile`, default 0.8) when
    it has timestamps, else each user's last `last_n` (default 10) events."""
    from dynrec.data import registry

    events = registry.load(dataset, data_dir)
    data = InteractionData.from_events(events, event_weights=events.event_weights)
    if last_n is None and quantile is None and not data.has_time:
        last_n = 10
    if last_n is not None:
        return replay_split(data, last_n=last_n, name=dataset)
    return replay_split(data, quantile=quantile if quantile is not None else 0.8, name=dataset)


def fit_for_replay(
    model_name: str,
    rd: ReplayData,
    *,
    overrides: dict[str, str] | None = None,
    config: dict[str, Any] | None = None,
) -> Recommender:
    """Train `model_name` on the pre-cut events (each user's last pre-cut event validates)."""
    from dynrec.models.base import create_model

    model = create_model(model_name, overrides, config)
    train, valid = holdout_last(rd.train)
    t0 = time.perf_counter()
    model.fit(train, valid)
    model.meta.update(
        {
            "dataset": rd.name,
            "split": "replay",
            "replay_protocol": rd.protocol,
            "fit_seconds": time.perf_counter() - t0,
        }
    )
    # the model's vocabulary is the pre-cut one (train shares it)
    return model


def check_replay_model(model: Recommender, rd: ReplayData) -> None:
    """Refuse a saved model that was not trained on exactly this replay's pre-cut events."""
    proto = model.meta.get("replay_protocol")
    if (
        proto != rd.protocol
        or model.meta.get("dataset") != rd.name
        or model.item_vocab != rd.train.item_vocab
    ):
        raise DynrecError(
            f"this model was not trained for the replay of {rd.name!r} ({rd.protocol}): it would have "
            "seen replayed events. Train it for the replay: `dynrec replay MODEL --dataset D --save-model DIR`"
        )
