"""The shift detector's step (`dynrec.online.shifts`) on numpy arrays: every row consumes one event.

The step is some sixty elementwise operations on rows of a few dozen numbers, run for every
ingested event and for every event of a history replayed when a user's state is built. On arrays
this small the cost is per operation, and numpy's is a fraction of torch's dispatch; the states
stay torch tensors elsewhere (`dynrec.online.shifts.step_shifts` wraps this step, sharing memory
both ways).
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch

FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]

# one float64 row per user: the CUSUM statistic, events in L, run length, events seen, shifts so far
STAT_CUSUM, STAT_N, STAT_RUN, STAT_SEEN, STAT_COUNT = range(5)
# one shift in the log: event index, timestamp, score, index where its run began, then names
LOG_INDEX, LOG_TS, LOG_SCORE, LOG_START = range(4)
LOG_HEAD = 4


class StepSpace(Protocol):
    """What the step reads of its space (`dynrec.online.shifts.ShiftSpace`)."""

    @property
    def vectors(self) -> torch.Tensor: ...  # [n_items, d] float64 unit rows, row 0 = padding

    @property
    def name_rows(self) -> torch.Tensor | None: ...  # [n_items, C] float64 category shares


class StepSettings(Protocol):
    """What the step reads of `dynrec.online.shifts.ShiftConfig`."""

    @property
    def warmup(self) -> int: ...

    @property
    def memory(self) -> int: ...

    @property
    def names(self) -> int: ...


class StepConstants(Protocol):
    """What the step reads of `dynrec.online.shifts.ShiftCalibration`."""

    @property
    def reference(self) -> float: ...

    @property
    def threshold(self) -> float: ...

    @property
    def config(self) -> StepSettings: ...


def _fold(mean: FloatArray, add: FloatArray, w: FloatArray) -> FloatArray:
    return mean + (add - mean) * w[:, None]


def unit_rows(x: FloatArray) -> FloatArray:
    """Rows scaled to unit length (rows of zeros stay zeros), as `torch.nn.functional.normalize`."""
    out: FloatArray = x / np.maximum(np.sqrt((x * x).sum(1)), 1e-12)[:, None]
    return out


def _top(shares: FloatArray, n: int) -> FloatArray:
    """Indices of the `n` largest shares per row (-1 where the share is 0); ties in torch's order."""
    k = min(n, shares.shape[1])
    val, idx = torch.topk(torch.from_numpy(shares), k, dim=1)
    out = np.where(val.numpy() > 0, idx.numpy().astype(np.float64), -1.0)
    if k < n:
        out = np.concatenate([out, np.full((out.shape[0], n - k), -1.0)], 1)
    return out


def _nearest(mean: FloatArray, vectors: torch.Tensor, n: int) -> FloatArray:
    """The `n` catalogue items nearest (cosine) each row's mean vector (padding never)."""
    sims = torch.nn.functional.normalize(torch.from_numpy(mean), dim=1) @ vectors.T
    sims[:, 0] = -torch.inf
    return torch.topk(sims, min(n, sims.shape[1] - 1), dim=1).indices.double().numpy()


def step_arrays(
    state: dict[str, FloatArray],
    items: IntArray,
    timestamps: IntArray,
    space: StepSpace,
    cal: StepConstants,
) -> tuple[dict[str, FloatArray], BoolArray]:
    """Every row of `state` (float64 arrays, `dynrec.online.shifts.state_keys`) consumes one event
    (``items``: valid indices > 0); returns the new state (the input is not modified) and the
    rows whose event completed a shift."""
    cfg = cal.config
    vectors = space.vectors.numpy()
    u = vectors[items]
    stat = state["shift.stat"].copy()
    long, run = state["shift.long"], state["shift.run"]
    s, n, c = stat[:, STAT_CUSUM], stat[:, STAT_N], stat[:, STAT_RUN]
    cats = "shift.cat_long" in state
    if cats:
        assert space.name_rows is not None
        cu = space.name_rows.numpy()[items]
        clong, crun = state["shift.cat_long"], state["shift.cat_run"]
    warm = n < cfg.warmup
    x = 1.0 - (u * unit_rows(long)).sum(1)
    s_new = np.where(warm, 0.0, np.maximum(s + x - cal.reference, 0.0))
    in_run = ~warm & (s_new > 0)
    alarm = in_run & (s_new >= cal.threshold)
    settle = ~warm & ~in_run  # back to 0: the pending run (if any) was noise, fold it in
    # the run collects this event
    going = (c > 0)[:, None]
    run = np.where(in_run[:, None], np.where(going, run + u, u), run)
    c_run = np.where(in_run, c + 1, c)
    if cats:
        crun = np.where(in_run[:, None], np.where(going, crun + cu, cu), crun)
    # settle: fold the pending run as one block, then this event
    has_run = settle & (c > 0)
    w_run = np.minimum(1.0, c * np.maximum(1.0 / np.maximum(n + c, 1.0), 1.0 / cfg.memory))
    c1 = np.maximum(c, 1.0)[:, None]
    long = np.where(has_run[:, None], _fold(long, run / c1, w_run), long)
    if cats:
        clong = np.where(has_run[:, None], _fold(clong, crun / c1, w_run), clong)
    n2 = np.where(has_run, n + c, n)
    grow = warm | settle
    w_ev = np.maximum(1.0 / (n2 + 1), 1.0 / cfg.memory)
    long = np.where(grow[:, None], _fold(long, u, w_ev), long)
    if cats:
        clong = np.where(grow[:, None], _fold(clong, cu, w_ev), clong)
    n2 = np.where(grow, n2 + 1, n2)
    c_new = np.where(settle, 0.0, c_run)
    run = np.where(settle[:, None], 0.0, run)
    if cats:
        crun = np.where(settle[:, None], 0.0, crun)
    log = state["shift.log"]
    if alarm.any():
        log = log.copy()
        rows = np.flatnonzero(alarm)
        to = run[rows] / c_run[rows, None]
        frm = long[rows]
        score = 1.0 - (unit_rows(frm) * unit_rows(to)).sum(1)
        if cats:
            names_from = _top(clong[rows], cfg.names)
            names_to = _top(crun[rows] / c_run[rows, None], cfg.names)
        else:
            names_from = _nearest(frm, space.vectors, cfg.names)
            names_to = _nearest(to, space.vectors, cfg.names)
        seen = stat[rows, STAT_SEEN]
        head = np.stack([seen, timestamps[rows].astype(np.float64), score, seen - c_run[rows] + 1], 1)
        entry = np.concatenate([head, names_from, names_to], 1)
        log[rows] = np.concatenate([entry[:, None, :], log[rows, :-1]], 1)
        long[rows] = to
        n2[rows] = c_run[rows]
        if cats:
            clong[rows] = crun[rows] / c_run[rows, None]
            crun[rows] = 0.0
        run[rows] = 0.0
        c_new[rows] = 0.0
        s_new[rows] = 0.0
        stat[rows, STAT_COUNT] += 1
    stat[:, STAT_CUSUM], stat[:, STAT_N], stat[:, STAT_RUN] = s_new, n2, c_new
    stat[:, STAT_SEEN] += 1
    out = {**state, "shift.long": long, "shift.run": run, "shift.stat": stat, "shift.log": log}
    if cats:
        out["shift.cat_long"], out["shift.cat_run"] = clong, crun
    return out, alarm
