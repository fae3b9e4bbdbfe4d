"""Splits respect time: no target, nor anything after it, reaches training or its own history."""

from __future__ import annotations

import numpy as np
import pytest

from dynrec.data.dataset import InteractionData
from dynrec.data.vocab import Vocabulary
from dynrec.preprocessing.split import drop_last_events, leave_one_out, temporal_split


def _data() -> InteractionData:
    # user 1: items 1..5 at t=10..50; user 2: items 3,4 with a timestamp tie (file order decides);
    # user 3: a single event.
    users = [1, 1, 1, 1, 1, 2, 2, 2, 3]
    items = [5, 1, 2, 3, 4, 3, 4, 6, 2]
    ts = [50, 10, 20, 30, 40, 15, 15, 60, 5]
    return InteractionData.from_arrays(
        users,
        items,
        timestamps=ts,
        user_vocab=Vocabulary(["a", "b", "c"]),
        item_vocab=Vocabulary(str(i) for i in range(1, 7)),
    )


def test_events_sorted_stably_by_time() -> None:
    d = _data()
    assert d.sequence(1).tolist() == [1, 2, 3, 4, 5]
    assert d.sequence(2).tolist() == [3, 4, 6]  # tie at t=15: file order 3 then 4


def test_leave_one_out_targets_and_histories() -> None:
    d = _data()
    s = leave_one_out(d)
    assert s.test.targets.tolist() == [5, 6]
    assert s.valid.targets.tolist() == [4, 4]
    q = s.test.queries
    assert q.items[q.indptr[0] : q.indptr[1]].tolist() == [1, 2, 3, 4]
    assert q.items[q.indptr[1] : q.indptr[2]].tolist() == [3, 4]
    assert s.train.sequence(1).tolist() == [1, 2, 3]
    assert s.train.sequence(3).tolist() == [2]  # single-event user: train only


def test_no_target_or_later_event_reaches_training() -> None:
    d = _data()
    for s in (leave_one_out(d), temporal_split(d, cut=40)):
        for es in (s.valid, s.test):
            for u, t, item in zip(es.queries.users, es.target_timestamps, es.targets, strict=True):
                lo, hi = s.train.indptr[u], s.train.indptr[u + 1]
                assert np.all(s.train.timestamps[lo:hi] <= t)  # equal only for a file-order tie
                assert item not in s.train.items[lo:hi].tolist()
            # every history event is strictly before its target in the stable order
            for b in range(len(es)):
                h_ts = es.queries.timestamps[es.queries.indptr[b] : es.queries.indptr[b + 1]]  # type: ignore[index]
                assert np.all(h_ts <= es.target_timestamps[b])


def test_temporal_split() -> None:
    d = _data()
    s = temporal_split(d, cut=40, valid_fraction=0.3)
    assert sorted(s.test.targets.tolist()) == [4, 5, 6]  # events at t >= 40
    q = s.test.queries
    hist = {int(t): q.items[q.indptr[b] : q.indptr[b + 1]].tolist() for b, t in enumerate(s.test.targets)}
    assert hist[5] == [1, 2, 3, 4]  # earlier test events are part of later histories
    assert np.all(s.train.timestamps < 40)
    assert s.cut == 40


def test_temporal_split_needs_time() -> None:
    d = _data()
    od = InteractionData(
        d.user_vocab, d.item_vocab, d.users, d.items, d.timestamps, d.weights, d.values, d.indptr, False
    )
    with pytest.raises(ValueError, match="no timestamps"):
        temporal_split(od)


def test_drop_last_events_known_answer() -> None:
    # user 1: a b c d; user 2: e; user 3: f g
    users = [1, 1, 1, 1, 2, 3, 3]
    items = [1, 2, 3, 4, 5, 6, 7]
    uv = Vocabulary(f"u{i}" for i in range(1, 4))
    iv = Vocabulary(f"i{i}" for i in range(1, 8))
    data = InteractionData.from_arrays(users, items, user_vocab=uv, item_vocab=iv)
    one = drop_last_events(data, 1)
    assert [one.sequence(u).tolist() for u in range(1, 4)] == [[1, 2, 3], [5], [6]]
    two = drop_last_events(data, 2)
    assert [two.sequence(u).tolist() for u in range(1, 4)] == [[1, 2], [5], [6]]
    assert drop_last_events(data, 0) is data
