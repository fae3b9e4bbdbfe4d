"""benchmarks/shifts.py's measurement helpers: known answers for the matching of flags to change
points, the scores, the distances, the windows, the held-out split and the batched detection."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from benchmarks.shifts import (
    Flag,
    detect,
    detection_scores,
    heldout_split,
    match_shifts,
    separation,
    tv_js,
    window_distributions,
    window_marks,
)
from dynrec.data.dataset import InteractionData
from dynrec.data.vocab import Vocabulary
from dynrec.online.shifts import ShiftCalibration, ShiftConfig, ShiftSpace


def test_each_change_point_takes_the_earliest_unused_flag_within_its_tolerance() -> None:
    # change points 10 and 12; flags 11 (-> 10), 13 (-> 12), 30 (unmatched); 9 is before 10
    assert match_shifts([10, 12], [30, 13, 11, 9], tolerance=5) == [1, 1]
    # one flag cannot serve two change points; the boundary c + tolerance is inside
    assert match_shifts([10, 11], [15], tolerance=5) == [5, -1]
    assert match_shifts([10], [16], tolerance=5) == [-1]
    assert match_shifts([], [3]) == []


def test_scores_count_unmatched_flags_as_false_positives() -> None:
    s = detection_scores([0, 2, -1, -1], n_flagged=4)  # 2 hits, 2 misses, 2 flags unmatched
    assert (s["tp"], s["fp"], s["fn"]) == (2, 2, 2)
    assert s["precision"] == s["recall"] == s["F1"] == 0.5
    # a flag matched to a change point left out of the recall is neither true nor false positive
    assert detection_scores([1], n_flagged=2, n_unscored_matched=1)["precision"] == 1.0


def test_distances_of_disjoint_and_equal_distributions() -> None:
    p, q = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert tv_js(p, q) == (1.0, 1.0)
    assert tv_js(p, p) == (0.0, 0.0)
    tv, js = tv_js(np.array([0.5, 0.5]), p)
    assert tv == 0.5
    # m = (0.75, 0.25): KL(p||m) = 0.5 log2(0.5/0.75) + 0.5 log2(0.5/0.25), KL(q||m) = log2(1/0.75)
    kl_p = 0.5 * math.log2(0.5 / 0.75) + 0.5 * math.log2(0.5 / 0.25)
    assert js == pytest.approx(math.sqrt(0.5 * kl_p + 0.5 * math.log2(1 / 0.75)))


def test_window_marks_cover_the_union_of_half_open_ranges() -> None:
    m = window_marks(np.array([1, 3, 8]), np.array([4, 5, 12]), 10)
    assert m.tolist() == [False, True, True, True, True, False, False, False, True, True]


def test_heldout_users_become_the_whole_stream_in_their_own_order() -> None:
    users = np.array([1, 1, 1, 2, 2, 3, 3, 3, 4, 4])
    items = np.array([1, 2, 3, 2, 4, 5, 1, 2, 3, 4])
    ts = np.array([5, 6, 9, 1, 7, 2, 3, 8, 4, 10])
    data = InteractionData.from_arrays(
        users,
        items,
        timestamps=ts,
        user_vocab=Vocabulary.from_unique([f"u{i}" for i in range(1, 5)]),
        item_vocab=Vocabulary.from_unique([f"i{i}" for i in range(1, 6)]),
    )
    rd, held = heldout_split(data, 0.5, seed=0, name="t")
    assert len(held) == 2
    stream_users = set(rd.stream_users.tolist())
    assert stream_users == set(held.tolist())
    assert rd.train.n_events == 10 - sum(int(rd.data.lengths()[u]) for u in held)
    for u in held:  # every event of a held-out user is streamed, in their time order
        mine = rd.stream[rd.stream_users == u]
        assert mine.tolist() == list(range(int(rd.data.indptr[u]), int(rd.data.indptr[u + 1])))
        assert rd.pre_end[u] == rd.data.indptr[u]


def test_detection_flags_each_shift_with_where_its_run_began() -> None:
    v = torch.zeros(9, 2, dtype=torch.float64)
    v[1:5, 0] = v[5:9, 1] = 1.0
    space = ShiftSpace(v, None, [f"i{i}" for i in range(9)], "item vectors")
    cal = ShiftCalibration(0.5, 1.0, 0.0, 1.0, 0, "item vectors", 0.0, ShiftConfig())
    a, b = [1, 2, 3, 4, 1, 2, 3], [5, 6, 7, 8]
    flags = detect([np.array(a * 2 + b * 2), np.array(b * 3), np.array(a + b + a)], space, cal)
    # k = 0.5, h = 1: a far event adds 0.5, so the second event of a new interest is flagged (its
    # run began one event earlier); after a shift the new interest needs `warmup` (5) events before
    # the next can be flagged, so row 2's return to A at 11 is folded in and a run starts only at
    # 12 (distance to 4/5 B + 1/5 A: 1 - 0.2/sqrt(0.68) = 0.76, so 4 events reach h)
    assert sorted((f.row, f.at, f.start) for f in flags) == [(0, 15, 14), (2, 8, 7), (2, 15, 12)]


def test_window_distributions_spread_each_event_over_its_categories() -> None:
    cats = np.array([[0.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.0, 0.0]])  # item 3 has no category
    flat = np.array([1, 2, 3, 3, 1])
    d = window_distributions(flat, np.array([0, 2]), 2, cats)
    assert d.tolist() == [[0.75, 0.25], [0.0, 0.0]]


def test_separation_at_a_clean_change_and_where_no_window_fits() -> None:
    cats = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    seq = np.array([1] * 10 + [2] * 10)
    # run began at 10, flagged at 11: change-point windows [0, 10) and [10, 20) are the only split
    # of a 20-event history, so the random draws land there too; after the flag, [12, 22) overflows
    flags = [Flag(0, 11, 10)]
    out = separation([seq], [np.arange(20)], flags, cats, 10, np.random.default_rng(0))
    assert (out["cp_n"], out["cp_tv"], out["cp_tv_random"], out["cp_js"]) == (1.0, 1.0, 1.0, 1.0)
    assert out["flag_n"] == 0.0 and math.isnan(out["flag_tv_ratio"])
