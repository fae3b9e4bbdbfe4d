"""Time-respecting splits. No target, nor anything after it, ever reaches training.

* `leave_one_out`: per user (events ordered by time, ties by source order) the last event is the
  test target, the second last the validation target, the rest train. Users with 2 events get no
  validation target; users with 1 event are train-only. Test history = every earlier event
  (train + the validation event); validation history = the train events.
* `temporal_split`: a global cut-off time (or a quantile of event times). Events at or after the cut
  are test targets, each with *all* of the user's earlier events as history (including earlier test
  events, as in a live system). Validation targets are the events in the last `valid_fraction` of
  the pre-cut period; training uses only events before the validation window.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from dynrec.data.dataset import IntArray, InteractionData
from dynrec.data.query import QueryBatch

SplitKind = Literal["loo", "time"]


@dataclass(frozen=True)
class EvalSet:
    """Next-item targets with their histories: query q asks for `targets[q]` given `queries[q]`."""

    queries: QueryBatch
    targets: IntArray  # [Q] item index of each target
    target_timestamps: IntArray  # [Q]

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def subset(self, idx: npt.NDArray[np.int64]) -> EvalSet:
        return EvalSet(self.queries.take(idx), self.targets[idx], self.target_timestamps[idx])


@dataclass(frozen=True)
class Split:
    kind: SplitKind
    train: InteractionData
    valid: EvalSet
    test: EvalSet
    full: InteractionData
    cut: int | None = None  # temporal split: the test cut-off time


def _eval_set(full: InteractionData, target_pos: IntArray, hist_start: IntArray | None = None) -> EvalSet:
    """Targets at flat positions `target_pos`; each history = the user's events before it."""
    users = full.users[target_pos]
    start = full.indptr[users] if hist_start is None else hist_start
    lens = target_pos - start
    indptr = np.zeros(len(target_pos) + 1, dtype=np.int64)
    np.cumsum(lens, out=indptr[1:])
    # flat gather of ranges [start, target_pos) without a Python loop
    flat = np.repeat(start - indptr[:-1], lens) + np.arange(int(indptr[-1]), dtype=np.int64)
    q = QueryBatch(
        users=users.astype(np.int64),
        indptr=indptr,
        items=full.items[flat],
        timestamps=full.timestamps[flat],
        weights=full.weights[flat],
    )
    return EvalSet(q, full.items[target_pos].astype(np.int64), full.timestamps[target_pos].astype(np.int64))


def leave_one_out(full: InteractionData) -> Split:
    lens = full.lengths()
    ends = full.indptr[1:]
    users = np.arange(full.n_users, dtype=np.int64)
    has_test = lens >= 2
    has_valid = lens >= 3
    test_pos = ends[has_test] - 1
    valid_pos = ends[has_valid] - 2
    mask = np.ones(full.n_events, dtype=bool)
    mask[test_pos] = False
    mask[valid_pos] = False
    train = full.select(mask)
    del users
    return Split("loo", train, _eval_set(full, valid_pos), _eval_set(full, test_pos), full)


def drop_last_events(data: InteractionData, k: int = 1) -> InteractionData:
    """`data` without each user's last `k` events (users keep at least one event).

    Used to train with a *validation gap*: a leave-one-out validation history ends with the user's
    last training event, which training fits as a target for that very user, while a test history
    ends with the validation event, which training never saw; dropping the last training event
    makes validation queries look like test queries (see `NeuralConfig.valid_gap`)."""
    if k <= 0:
        return data
    lens = data.lengths()
    drop = np.minimum(k, np.maximum(lens - 1, 0))  # keep >= 1 event per user that has any
    ends = data.indptr[1:]
    pos = np.repeat(ends - drop, drop) + (
        np.arange(int(drop.sum())) - np.repeat(np.cumsum(drop) - drop, drop)
    )
    mask = np.ones(data.n_events, dtype=bool)
    mask[pos] = False
    return data.select(mask)


def temporal_split(
    full: InteractionData,
    *,
    cut: int | None = None,
    quantile: float = 0.8,
    valid_fraction: float = 0.1,
) -> Split:
    if not 0.0 < quantile < 1.0:
        raise ValueError("quantile must be in (0, 1)")
    if not full.has_time:
        raise ValueError(
            "this dataset has order but no timestamps; a global temporal split needs times (use 'loo')"
        )
    ts = full.timestamps
    if cut is None:
        cut = int(np.quantile(ts, quantile, method="lower")) + 1 if ts.size else 0
        # the quantile's own time belongs to training: events strictly after it are test targets
    t0 = int(ts.min()) if ts.size else 0
    vcut = int(cut - max(1, round((cut - t0) * valid_fraction)))
    test_pos = np.flatnonzero(ts >= cut)
    valid_pos = np.flatnonzero((ts >= vcut) & (ts < cut))
    train = full.select(ts < vcut)
    return Split("time", train, _eval_set(full, valid_pos), _eval_set(full, test_pos), full, cut=cut)


def make_split(full: InteractionData, kind: SplitKind = "loo", **kwargs: float | int | None) -> Split:
    if kind == "loo":
        return leave_one_out(full)
    if kind == "time":
        return temporal_split(full, **kwargs)  # type: ignore[arg-type]
    raise ValueError(f"unknown split {kind!r}; use 'loo' or 'time'")
