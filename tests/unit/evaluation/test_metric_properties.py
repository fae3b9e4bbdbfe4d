"""Property-based tests (hypothesis) for the core invariants: `QueryBatch` indexing and padding,
deterministic top-k (`topk_stable`), target ranks and the rank metrics. Deterministic
(`derandomize=True`) so CI never sees a new counterexample on its own."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynrec.data.query import QueryBatch, topk_stable
from dynrec.evaluation import metrics as M
from dynrec.evaluation.offline import target_ranks

SETTINGS = settings(derandomize=True, deadline=None, max_examples=150)

# --------------------------------------------------------------------------- QueryBatch

histories_st = st.lists(st.lists(st.integers(1, 50), max_size=8), max_size=7)


@st.composite
def batches(
    draw: st.DrawFn,
) -> tuple[QueryBatch, list[list[int]], list[int], list[list[int]], list[list[float]]]:
    """A QueryBatch with users, timestamps and weights, plus the per-query lists it was built from."""
    hists = draw(histories_st)
    users = draw(st.lists(st.integers(-3, 20), min_size=len(hists), max_size=len(hists)))
    ts = [sorted(draw(st.lists(st.integers(0, 10**6), min_size=len(h), max_size=len(h)))) for h in hists]
    ws = [
        [float(x) for x in draw(st.lists(st.integers(1, 9), min_size=len(h), max_size=len(h)))] for h in hists
    ]
    q = QueryBatch.from_histories(hists, users=users, timestamps=ts)
    weights = np.array([w for h in ws for w in h], dtype=np.float32)
    q = QueryBatch(q.users, q.indptr, q.items, q.timestamps, weights)
    return q, hists, users, ts, ws


def unpack(q: QueryBatch) -> tuple[list[list[int]], list[int], list[list[int]], list[list[float]]]:
    """The per-query lists a batch holds (timestamps/weights required)."""
    assert q.timestamps is not None and q.weights is not None
    assert q.indptr.shape == (len(q) + 1,) and q.indptr[0] == 0 and q.indptr[-1] == q.items.shape[0]
    assert q.items.dtype == np.int64 and q.indptr.dtype == np.int64 and q.users.dtype == np.int64
    sl = [slice(int(a), int(b)) for a, b in zip(q.indptr[:-1], q.indptr[1:], strict=True)]
    return (
        [q.items[s].tolist() for s in sl],
        q.users.tolist(),
        [q.timestamps[s].tolist() for s in sl],
        [q.weights[s].tolist() for s in sl],
    )


@SETTINGS
@given(batches())
def test_from_histories_round_trips(data: tuple) -> None:  # type: ignore[type-arg]
    q, hists, users, ts, ws = data
    assert len(q) == len(hists)
    assert unpack(q) == (hists, users, ts, ws)
    assert q.lengths.tolist() == [len(h) for h in hists]
    assert q.row_ids().tolist() == [b for b, h in enumerate(hists) for _ in h]
    plain = QueryBatch.from_histories(hists)
    assert plain.users.tolist() == [0] * len(hists) and plain.timestamps is None and plain.weights is None


@SETTINGS
@given(batches(), st.data())
def test_slice_equals_building_from_selected(data: tuple, d: st.DataObject) -> None:  # type: ignore[type-arg]
    q, hists, users, ts, ws = data
    a = d.draw(st.integers(0, len(hists)))
    b = d.draw(st.integers(a, len(hists)))
    assert unpack(q.slice(a, b)) == (hists[a:b], users[a:b], ts[a:b], ws[a:b])


@SETTINGS
@given(batches(), st.data())
def test_take_equals_building_from_selected(data: tuple, d: st.DataObject) -> None:  # type: ignore[type-arg]
    q, hists, users, ts, ws = data
    idx = d.draw(st.lists(st.integers(0, len(hists) - 1), max_size=10)) if hists else []
    sub = q.take(np.array(idx, dtype=np.int64))
    assert unpack(sub) == (
        [hists[i] for i in idx],
        [users[i] for i in idx],
        [ts[i] for i in idx],
        [ws[i] for i in idx],
    )


@SETTINGS
@given(batches(), st.integers(0, 10), st.booleans())
def test_padded_keeps_last_items_in_order(data: tuple, max_len: int, left: bool) -> None:  # type: ignore[type-arg]
    q, hists, _, ts, _ = data
    items, times = q.padded(max_len, left=left)
    assert items.dtype == torch.long and times.dtype == torch.long
    assert tuple(items.shape) == tuple(times.shape) == (len(hists), max_len)
    for b, (h, t) in enumerate(zip(hists, ts, strict=True)):
        keep, tkeep = (h[-max_len:], t[-max_len:]) if max_len else ([], [])
        pad = [0] * (max_len - len(keep))
        row_i, row_t = (pad + keep, pad + tkeep) if left else (keep + pad, tkeep + pad)
        assert items[b].tolist() == row_i
        assert times[b].tolist() == row_t
    # without timestamps the time grid is all zeros but the items are the same
    items2, times2 = QueryBatch.from_histories(hists).padded(max_len, left=left)
    assert torch.equal(items2, items) and not times2.any()


@SETTINGS
@given(batches())
def test_seen_mask_indices_cover_exactly_the_history(data: tuple) -> None:  # type: ignore[type-arg]
    q, hists, *_ = data
    rows, cols = q.seen_mask_indices()
    assert rows.dtype == torch.long and cols.dtype == torch.long
    got = sorted(zip(rows.tolist(), cols.tolist(), strict=True))
    assert got == sorted((b, i) for b, h in enumerate(hists) for i in h)
    mask = torch.zeros(len(hists), 51, dtype=torch.bool)
    mask[rows, cols] = True
    assert mask.tolist() == [[i in set(h) for i in range(51)] for h in hists]


@SETTINGS
@given(batches(), st.integers(0, 25))
def test_known_users_maps_out_of_range_to_zero(data: tuple, n_users: int) -> None:  # type: ignore[type-arg]
    q, _, users, *_ = data
    got = q.known_users(n_users)
    assert got.dtype == torch.long
    assert got.tolist() == [u if 0 <= u < n_users else 0 for u in users]


# --------------------------------------------------------------------------- topk_stable / ranks

TIE_VALUES = [-math.inf, -1.0, -0.0, 0.0, 0.5, 2.0, 1e30, math.inf]


@st.composite
def score_matrices(draw: st.DrawFn, max_rows: int = 4, max_cols: int = 12) -> torch.Tensor:
    """[B, N] float32 scores drawn from a small value set (many ties, incl. +-inf) or free floats."""
    b = draw(st.integers(1, max_rows))
    n = draw(st.integers(1, max_cols))
    values = st.one_of(
        st.sampled_from(TIE_VALUES),
        st.floats(-10, 10, allow_nan=False, width=32),
    )
    flat = draw(st.lists(values, min_size=b * n, max_size=b * n))
    return torch.tensor(flat, dtype=torch.float32).reshape(b, n)


def reference_order(row: np.ndarray) -> np.ndarray:
    """Full order by (-score, index)."""
    return np.lexsort((np.arange(row.shape[0]), -row.astype(np.float64)))


@SETTINGS
@given(score_matrices(), st.data())
def test_topk_stable_matches_lexsort_reference(scores: torch.Tensor, d: st.DataObject) -> None:
    n = scores.shape[1]
    k = d.draw(st.integers(1, n + 3))
    idx, vals = topk_stable(scores, k)
    kk = min(k, n)  # k > n clamps to n
    assert tuple(idx.shape) == tuple(vals.shape) == (scores.shape[0], kk)
    assert idx.dtype == torch.long
    for b in range(scores.shape[0]):
        ref = reference_order(scores[b].numpy())[:kk]
        assert idx[b].tolist() == ref.tolist()
        assert torch.equal(vals[b], scores[b, idx[b]])
        v = vals[b].tolist()
        assert all(x >= y for x, y in zip(v, v[1:], strict=False))  # descending
        # each row is independent of the other rows of the batch
        i1, v1 = topk_stable(scores[b : b + 1], k)
        assert torch.equal(i1[0], idx[b]) and torch.equal(v1[0], vals[b])


@SETTINGS
@given(score_matrices(max_rows=3, max_cols=10))
def test_topk_stable_prefix_consistent_across_k(scores: torch.Tensor) -> None:
    n = scores.shape[1]
    full, _ = topk_stable(scores, n)
    for k in range(1, n + 1):
        assert torch.equal(topk_stable(scores, k)[0], full[:, :k])


def test_topk_stable_k_larger_than_n_clamps() -> None:
    scores = torch.tensor([[1.0, 3.0, 3.0], [0.0, -math.inf, 0.0]])
    idx, vals = topk_stable(scores, 10)
    assert idx.tolist() == [[1, 2, 0], [0, 2, 1]]
    assert vals.tolist() == [[3.0, 3.0, 1.0], [0.0, 0.0, -math.inf]]


@pytest.mark.parametrize(("k", "n"), [(0, 3), (-2, 3), (5, 0)])
def test_topk_stable_empty_result(k: int, n: int) -> None:
    """k <= 0 or an empty catalogue gives [B, 0] results (like torch.topk), not a broadcasting error."""
    idx, vals = topk_stable(torch.zeros(2, n), k)
    assert tuple(idx.shape) == tuple(vals.shape) == (2, 0) and idx.dtype == torch.long


@SETTINGS
@given(score_matrices(), st.data())
def test_target_ranks_equal_position_in_stable_order(scores: torch.Tensor, d: st.DataObject) -> None:
    b, n = scores.shape
    targets = torch.tensor(d.draw(st.lists(st.integers(0, n - 1), min_size=b, max_size=b)), dtype=torch.long)
    ranks = target_ranks(scores, targets)
    assert ranks.dtype == torch.float64 and tuple(ranks.shape) == (b,)
    order, _ = topk_stable(scores, n)
    for r in range(b):
        t = int(targets[r])
        if scores[r, t] == -math.inf:
            assert ranks[r] == math.inf
        else:
            assert ranks[r] == order[r].tolist().index(t)


# --------------------------------------------------------------------------- metrics

RANK_METRICS = [M.hit_rate, M.recall, M.ndcg, M.mrr, M.precision, M.average_precision]

ranks_st = st.lists(
    st.one_of(st.integers(0, 30).map(float), st.just(math.inf)),
    max_size=40,
).map(lambda xs: np.array(xs, dtype=np.float64))


@SETTINGS
@given(ranks_st, st.integers(1, 35))
def test_metric_bounds_and_orderings(ranks: np.ndarray, k: int) -> None:
    vals = {f.__name__: f(ranks, k) for f in RANK_METRICS}
    for name, v in vals.items():
        assert isinstance(v, float) and 0.0 <= v <= 1.0, name
    hr = vals["hit_rate"]
    assert vals["ndcg"] <= hr + 1e-12
    assert vals["mrr"] <= vals["ndcg"] + 1e-12  # 1/(r+1) <= 1/log2(r+2)
    assert vals["recall"] == hr and vals["average_precision"] == vals["mrr"]
    assert vals["precision"] == pytest.approx(hr / k)
    assert hr == pytest.approx(float(np.mean(ranks < k)) if ranks.size else 0.0)
    # monotone in k
    for f in (M.hit_rate, M.ndcg, M.mrr):
        assert f(ranks, k) <= f(ranks, k + 1) + 1e-12
    se = M.ndcg_standard_error(ranks, k)
    assert se >= 0.0 and math.isfinite(se)


@SETTINGS
@given(ranks_st, st.integers(1, 35), st.randoms(use_true_random=False))
def test_metrics_permutation_invariant(ranks: np.ndarray, k: int, rnd) -> None:  # type: ignore[no-untyped-def]
    perm = np.array(rnd.sample(range(ranks.size), ranks.size), dtype=np.int64)
    for f in [*RANK_METRICS, M.ndcg_standard_error]:
        assert f(ranks[perm], k) == pytest.approx(f(ranks, k), abs=1e-12)


@SETTINGS
@given(ranks_st, st.integers(1, 35))
def test_metrics_per_query_contributions(ranks: np.ndarray, k: int) -> None:
    """Per query: a miss (rank >= k or inf) contributes 0; a hit at rank r contributes 1, 1/log2(r+2), 1/(r+1)."""
    gains = M.ndcg_gains(ranks, k)
    assert gains.shape == ranks.shape
    for r, g in zip(ranks.tolist(), gains.tolist(), strict=True):
        one = np.array([r])
        if r >= k:
            assert g == 0.0 and M.hit_rate(one, k) == 0.0 and M.mrr(one, k) == 0.0 and M.ndcg(one, k) == 0.0
        else:
            assert g == pytest.approx(1 / math.log2(r + 2))
            assert M.hit_rate(one, k) == 1.0 and M.mrr(one, k) == pytest.approx(1 / (r + 1))
    if ranks.size:
        assert M.ndcg(ranks, k) == pytest.approx(float(gains.mean()))
    if ranks.size >= 2:
        assert M.ndcg_standard_error(ranks, k) == pytest.approx(
            float(gains.std(ddof=1) / math.sqrt(ranks.size))
        )


@pytest.mark.parametrize("k", [1, 3, 10])
def test_rank_zero_hit_scores_one(k: int) -> None:
    zero = np.zeros(5)
    for f in (M.hit_rate, M.ndcg, M.mrr, M.recall, M.average_precision):
        assert f(zero, k) == 1.0
    assert M.precision(zero, k) == pytest.approx(1 / k)
    assert M.ndcg_standard_error(zero, k) == 0.0


def test_hand_computed_small_array() -> None:
    ranks = np.array([0.0, 1.0, 4.0, math.inf])
    assert M.hit_rate(ranks, 3) == pytest.approx(0.5)
    assert M.ndcg(ranks, 3) == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert M.mrr(ranks, 3) == pytest.approx((1 + 0.5) / 4)
    assert M.precision(ranks, 3) == pytest.approx(0.5 / 3)
    g = np.array([1.0, 1 / math.log2(3), 0.0, 0.0])
    assert M.ndcg_standard_error(ranks, 3) == pytest.approx(float(g.std(ddof=1) / 2))
    # empty input: every metric is 0, no warning
    empty = np.array([], dtype=np.float64)
    for f in [*RANK_METRICS, M.ndcg_standard_error]:
        assert f(empty, 3) == 0.0
    assert M.ndcg_standard_error(np.array([2.0]), 3) == 0.0
