"""Cleaning steps on tiny hand-checked event logs."""

from __future__ import annotations

import logging

import polars as pl
import pytest

from dynrec.data.events import EventLog
from dynrec.data.io import ColumnMap, from_dataframe
from dynrec.preprocessing.filters import dedup, implicit_by_threshold, k_core

CM = ColumnMap(user="u", item="i", timestamp="t", event_type="e", value="v")


def make(rows: list[tuple[str, str, int, str, float]]) -> EventLog:
    u, i, t, e, v = (list(c) for c in zip(*rows, strict=True))
    return from_dataframe(pl.DataFrame({"u": u, "i": i, "t": t, "e": e, "v": v}), columns=CM)


def kept_rows(log: EventLog) -> list[int]:
    return log.frame["row"].to_list()


DEDUP_ROWS = [
    ("u1", "a", 1, "view", 1.0),  # r0
    ("u1", "a", 1, "view", 1.0),  # r1 exact duplicate of r0
    ("u1", "a", 2, "view", 1.0),  # r2 consecutive repeat of a
    ("u1", "b", 3, "view", 1.0),  # r3
    ("u1", "a", 3, "view", 1.0),  # r4 same second as r3 but later in the file: comes after b
    ("u1", "a", 4, "click", 1.0),  # r5 repeat of a (another event type)
    ("u2", "a", 1, "view", 1.0),  # r6
    ("u2", "a", 1, "view", 2.0),  # r7 differs in value: not exact, but a consecutive repeat
    ("u2", "b", 0, "view", 1.0),  # r8 earliest event of u2, although last in the file
]


def test_dedup_exact_keeps_first_in_file() -> None:
    log = make(DEDUP_ROWS)
    out, stats = dedup(log)
    assert kept_rows(out) == [0, 2, 3, 4, 5, 6, 7, 8]
    assert (stats.n_before, stats.n_after, stats.n_removed) == (9, 8, 1)
    assert stats.details == {"exact": 1, "consecutive": 0}
    assert out.report.n_duplicates == 1 and len(log) == 9  # input untouched


def test_dedup_consecutive_uses_stable_time_order() -> None:
    out, stats = dedup(make(DEDUP_ROWS), consecutive=True)
    # u1 in (time, row) order: r0 a, r2 a, r3 b, r4 a, r5 a -> a b a; u2: r8 b, r6 a, r7 a -> b a
    assert kept_rows(out) == [0, 3, 4, 6, 8]
    assert stats.details == {"exact": 1, "consecutive": 3}
    assert out.report.n_duplicates == 4
    by_type, s2 = dedup(make(DEDUP_ROWS), consecutive=True, consecutive_by_event_type=True)
    assert kept_rows(by_type) == [0, 3, 4, 5, 6, 8] and s2.details == {"exact": 1, "consecutive": 2}


def test_dedup_ties_follow_file_order() -> None:
    b_first = make([("u", "a", 1, "x", 1.0), ("u", "b", 5, "x", 1.0), ("u", "a", 5, "x", 1.0)])
    a_first = make([("u", "a", 1, "x", 1.0), ("u", "a", 5, "x", 1.0), ("u", "b", 5, "x", 1.0)])
    assert kept_rows(dedup(b_first, consecutive=True)[0]) == [0, 1, 2]  # a b a
    assert kept_rows(dedup(a_first, consecutive=True)[0]) == [0, 2]  # a a b -> a b


def test_dedup_preserves_input_order_when_not_in_file_order() -> None:
    log = make(DEDUP_ROWS).sorted()  # time order, not file order
    out, _ = dedup(log)
    assert kept_rows(out) == [8, 0, 6, 7, 2, 3, 4, 5]  # r1 (the later copy of r0) removed


KCORE_ROWS = [
    ("u1", "a", 1, "x", 1.0),
    ("u1", "b", 2, "x", 1.0),
    ("u1", "c", 3, "x", 1.0),
    ("u2", "a", 1, "x", 1.0),
    ("u2", "b", 2, "x", 1.0),
    ("u3", "c", 1, "x", 1.0),
    ("u3", "d", 2, "x", 1.0),
    ("u4", "d", 1, "x", 1.0),
    ("u5", "e", 1, "x", 1.0),
    ("u5", "e", 2, "x", 1.0),
    ("u5", "e", 3, "x", 1.0),
]


def test_k_core_iterates_until_stable(caplog: pytest.LogCaptureFixture) -> None:
    # pass 1: u4 has 1 event -> (u4,d) out; pass 2: d has 1 -> (u3,d) out; pass 3: u3 has 1 ->
    # (u3,c) out; pass 4: c has 1 -> (u1,c) out; pass 5: everything has >= 2 -> stop.
    caplog.set_level(logging.INFO)
    out, stats = k_core(make(KCORE_ROWS), user_k=2, item_k=2)
    assert out.frame.select("user_id", "item_id").rows() == [
        ("u1", "a"),
        ("u1", "b"),
        ("u2", "a"),
        ("u2", "b"),
        ("u5", "e"),
        ("u5", "e"),
        ("u5", "e"),
    ]
    assert stats.details == {"iterations": 4, "users_removed": 2, "items_removed": 2}
    assert stats.n_removed == 4
    assert "k_core(user_k=2, item_k=2): removed 4 of 11 events" in caplog.text


def test_k_core_distinct_counts() -> None:
    # u5 has 3 events but 1 distinct item (and e 1 distinct user): dropped with distinct=True
    out, stats = k_core(make(KCORE_ROWS), user_k=2, item_k=2, distinct=True)
    assert sorted(set(out.frame["user_id"].to_list())) == ["u1", "u2"]
    assert stats.details["users_removed"] == 3 and stats.details["items_removed"] == 3


def test_k_core_asymmetric_and_noop() -> None:
    log = make(KCORE_ROWS)
    out, stats = k_core(log, user_k=3, item_k=1)  # only u1 and u5 have >= 3 events
    assert sorted(set(out.frame["user_id"].to_list())) == ["u1", "u5"]
    assert stats.details["iterations"] == 1
    same, s0 = k_core(log, user_k=1, item_k=1)
    assert same.frame.equals(log.frame) and s0.n_removed == 0 and s0.details["iterations"] == 0
    with pytest.raises(ValueError):
        k_core(log, user_k=-1)


def test_implicit_by_threshold() -> None:
    log = make(
        [("u", "a", 1, "x", 5.0), ("u", "b", 2, "x", 3.0), ("v", "a", 3, "x", 4.0), ("v", "c", 4, "x", 1.0)]
    )
    out, stats = implicit_by_threshold(log, 4)
    assert out.frame.select("item_id", "value").rows() == [("a", 5.0), ("a", 4.0)]
    assert stats.details == {"below_threshold": 2} and stats.n_after == 2
    binary, _ = implicit_by_threshold(log, 4, binarize=True)
    assert binary.frame["value"].to_list() == [1.0, 1.0]


def test_implicit_by_threshold_warns_when_nothing_is_left(caplog: pytest.LogCaptureFixture) -> None:
    out, stats = implicit_by_threshold(make([("u", "a", 1, "x", 1.0)]), 4)
    assert len(out) == 0 and stats.n_removed == 1
    assert "does this source have ratings" in caplog.text
