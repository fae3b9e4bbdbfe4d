"""The replayed stream: a time cut of the events (`replay_split`), the pre-cut training and
validation parts (`holdout_last`), and the data revealed up to a point of the stream
(`revealed_data`). See `dynrec.replay.engine` for the causality rules."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from dynrec.data.dataset import InteractionData
from dynrec.data.query import QueryBatch
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError
from dynrec.preprocessing.split import EvalSet

log = logging.getLogger(__name__)

IntArray = npt.NDArray[np.int64]

__all__ = ["ReplayData", "holdout_last", "replay_split", "revealed_data"]


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
