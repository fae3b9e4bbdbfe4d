"""Interest-shift detection: an online per-user change-point test over the event stream.

Every event's item is a unit vector ``u`` in the space the model already has (its item vectors,
`unit_item_vectors`; the item categories for a model without vectors). Per user the detector keeps
the *long-term interest* ``L`` (the mean of the vectors of the user's current interest: a running
mean over the first `ShiftConfig.memory` events, then an exponential mean with that horizon) and a
one-sided CUSUM over the distance of each new event to it::

    x_t = 1 - cos(u_t, L)          S_t = max(0, S_{t-1} + x_t - k)        shift when S_t >= h

While ``S > 0`` the events form a *run* that is kept apart (its vector sum and length): when the
statistic falls back to 0 the run was noise and is folded into ``L``; when it reaches ``h`` the run
is the new interest — a shift is recorded (``from`` = ``L``, ``to`` = the run's mean) and ``L``
restarts from the run. The state is O(d) per user (`state_keys`), updated in O(d) per event, and a
pure function of the user's history: recomputing it from the history gives the same state, so it
lives with the model's per-user state (`ShiftAdapter`) — in the `StateStore`, rebuilt after a
restart or a model update, deleted with the user.

Calibration (`dynrec.online.shift_calibration`) sets the detector's two numbers from the model's
training histories.

Strategy (the article's step 6, `lean_scores`): for `ShiftConfig.lean_events` events after a shift
the scores add ``lean · std(scores) · z(cos(item, L))`` (z = standardised over the catalogue), a
weight that falls linearly to 0 — the recommendations lean on the new interest until the model's
own state has caught up. The default weight per model family (`DEFAULT_LEAN`) is on only where the
benchmark measured it helping.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from dynrec.errors import DynrecError

__all__ = [
    "DEFAULT_LEAN",
    "Shift",
    "ShiftCalibration",
    "ShiftConfig",
    "ShiftDetector",
    "ShiftSpace",
    "init_shift_state",
    "lean_scores",
    "read_shifts",
    "run_histories",
    "shift_counts",
    "state_keys",
    "step_shifts",
]

DEFAULT_LEAN: Mapping[str, float] = {"als": 2.0}
"""Strategy weight per model name, on where `benchmarks/shifts.py` measured it helping (ALS: its
user vector averages the whole history and follows a shift slowly); 0 elsewhere (SASRec's own state
already follows the last events: leaning on top of it lowered HR@10 after shifts)."""

IntArray = npt.NDArray[np.int64]

# one float64 row per user: the CUSUM statistic, events in L, run length, events seen, shifts so far
_S, _N, _C, _SEEN, _COUNT = range(5)
# one shift in the log: event index, timestamp, score, index where its run began, then names
_IDX, _TS, _SCORE, _START = range(4)
_HEAD = 4


@dataclass(frozen=True)
class ShiftConfig:
    """How shifts are detected. `false_alarms_per_1000` is the one parameter to set: the rate of
    shifts the detector may flag on users whose interests do not change (calibrated on data)."""

    false_alarms_per_1000: float = 1.0
    warmup: int = 5
    """Events that form a user's first long-term interest before any shift can be flagged."""
    memory: int = 50
    """Horizon (events) of the long-term interest's exponential mean."""
    log_size: int = 8
    """Shifts kept per user (newest first)."""
    names: int = 3
    """Categories or items naming each side of a shift."""
    lean_events: int = 10
    """Events after a shift during which the recommendations lean on the new interest."""
    calibration_users: int = 5000
    calibration_length: int = 200
    """Calibration reads each user's last this many events (bounds its time on long histories)."""
    bootstrap_chains: int = 2000
    bootstrap_length: int = 500
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.false_alarms_per_1000 < 1000.0:
            raise DynrecError("false_alarms_per_1000 must be in (0, 1000)")
        if self.warmup < 1 or self.memory < 1 or self.log_size < 1 or self.names < 1:
            raise DynrecError("warmup, memory, log_size and names must be >= 1")


@dataclass(frozen=True)
class ShiftCalibration:
    """The detector's constants for one model version (saved as ``shifts.json``)."""

    reference: float
    """k: the CUSUM's drift reference, halfway between `same` and `random`."""
    threshold: float
    """h: the alarm threshold."""
    same: float
    random: float
    n_events: int
    """Distances the calibration saw."""
    space: str
    """"item vectors" or "categories"."""
    lean: float = 0.0
    config: ShiftConfig = field(default_factory=ShiftConfig)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "config": asdict(self.config)}

    @staticmethod
    def from_json(raw: Mapping[str, Any]) -> ShiftCalibration:
        try:
            cfg = ShiftConfig(**raw["config"])
            rest = {k: raw[k] for k in ("reference", "threshold", "same", "random", "n_events", "space")}
            return ShiftCalibration(**rest, lean=float(raw.get("lean", 0.0)), config=cfg)
        except (KeyError, TypeError) as e:
            raise DynrecError(f"unreadable shift calibration: {e}") from e

    def with_lean(self, lean: float) -> ShiftCalibration:
        return ShiftCalibration(
            self.reference,
            self.threshold,
            self.same,
            self.random,
            self.n_events,
            self.space,
            lean,
            self.config,
        )


@dataclass(frozen=True)
class ShiftSpace:
    """Where the detector works: unit vectors per item index (row 0 = padding, zeros) and, for
    naming, category rows per item (each sums to 1 or is empty) with their names — or, without
    categories, the item ids (a shift is then named by the catalogue items nearest each side)."""

    vectors: torch.Tensor  # [n_items, d] float64, unit rows
    name_rows: torch.Tensor | None  # [n_items, C] float64 or None
    names: Sequence[str]  # category names, or item ids by index (index 0 = padding)
    kind: str = "item vectors"

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def n_cats(self) -> int:
        return 0 if self.name_rows is None else int(self.name_rows.shape[1])


@dataclass(frozen=True)
class Shift:
    """One detected shift of a user's interests. `event_index` counts the events the detector
    consumed (0-based, the event after which it was flagged); `start_index` is where the run of
    new-interest events began; `score` is the cosine distance between the two interests."""

    event_index: int
    timestamp: int
    score: float
    start_index: int
    from_: tuple[str, ...]
    to: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "event_index": self.event_index,
            "timestamp": self.timestamp,
            "score": round(self.score, 6),
            "start_index": self.start_index,
            "from": list(self.from_),
            "to": list(self.to),
        }


# ---- state --------------------------------------------------------------------------------------


def state_keys(space: ShiftSpace) -> tuple[str, ...]:
    keys = ("shift.long", "shift.run", "shift.stat", "shift.log")
    return (*keys, "shift.cat_long", "shift.cat_run") if space.n_cats else keys


def init_shift_state(batch: int, space: ShiftSpace, cfg: ShiftConfig) -> dict[str, torch.Tensor]:
    """Empty detector states for `batch` users."""
    d, c = space.dim, space.n_cats
    out = {
        "shift.long": torch.zeros(batch, d, dtype=torch.float64),
        "shift.run": torch.zeros(batch, d, dtype=torch.float64),
        "shift.stat": torch.zeros(batch, 5, dtype=torch.float64),
        "shift.log": torch.full((batch, cfg.log_size, _HEAD + 2 * cfg.names), -1.0, dtype=torch.float64),
    }
    if c:
        out["shift.cat_long"] = torch.zeros(batch, c, dtype=torch.float64)
        out["shift.cat_run"] = torch.zeros(batch, c, dtype=torch.float64)
    return out


def _fold(mean: torch.Tensor, add: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return mean + (add - mean) * w[:, None]


def step_shifts(
    state: dict[str, torch.Tensor],
    items: IntArray,
    timestamps: IntArray,
    space: ShiftSpace,
    cal: ShiftCalibration,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every row consumes one event (``items`` valid indices > 0); returns the new state (the
    input is not modified) and a bool mask of the rows whose event completed a shift.
    """
    cfg = cal.config
    it = torch.from_numpy(np.asarray(items, dtype=np.int64))
    u = space.vectors.index_select(0, it)
    stat = state["shift.stat"].clone()
    long, run = state["shift.long"].clone(), state["shift.run"].clone()
    s, n, c = stat[:, _S], stat[:, _N], stat[:, _C]
    cats = "shift.cat_long" in state
    if cats:
        assert space.name_rows is not None
        cu = space.name_rows.index_select(0, it)
        clong, crun = state["shift.cat_long"].clone(), state["shift.cat_run"].clone()
    warm = n < cfg.warmup
    x = 1.0 - (u * torch.nn.functional.normalize(long, dim=1)).sum(1)
    s_new = torch.where(warm, torch.zeros_like(s), torch.clamp(s + x - cal.reference, min=0.0))
    in_run = ~warm & (s_new > 0)
    alarm = in_run & (s_new >= cal.threshold)
    settle = ~warm & ~in_run  # back to 0: the pending run (if any) was noise, fold it in
    # the run collects this event
    run = torch.where(in_run[:, None], torch.where((c > 0)[:, None], run + u, u), run)
    c_run = torch.where(in_run, c + 1, c)
    if cats:
        crun = torch.where(in_run[:, None], torch.where((c > 0)[:, None], crun + cu, cu), crun)
    # settle: fold the pending run as one block, then this event
    has_run = settle & (c > 0)
    w_run = torch.minimum(
        torch.ones_like(c),
        c * torch.maximum(1.0 / (n + c).clamp(min=1), torch.full_like(n, 1.0 / cfg.memory)),
    )
    mean_run = run / c.clamp(min=1)[:, None]
    long = torch.where(has_run[:, None], _fold(long, mean_run, w_run), long)
    if cats:
        clong = torch.where(has_run[:, None], _fold(clong, crun / c.clamp(min=1)[:, None], w_run), clong)
    n2 = torch.where(has_run, n + c, n)
    grow = warm | settle
    w_ev = torch.maximum(1.0 / (n2 + 1), torch.full_like(n2, 1.0 / cfg.memory))
    long = torch.where(grow[:, None], _fold(long, u, w_ev), long)
    if cats:
        clong = torch.where(grow[:, None], _fold(clong, cu, w_ev), clong)
    n2 = torch.where(grow, n2 + 1, n2)
    c_new = torch.where(settle, torch.zeros_like(c), c_run)
    run = torch.where(settle[:, None], torch.zeros_like(run), run)
    if cats:
        crun = torch.where(settle[:, None], torch.zeros_like(crun), crun)
    log = state["shift.log"]
    if bool(alarm.any()):
        log = log.clone()
        rows = torch.nonzero(alarm).squeeze(1)
        to = run[rows] / c_run[rows, None]
        frm = long[rows]
        score = 1.0 - (
            torch.nn.functional.normalize(frm, dim=1) * torch.nn.functional.normalize(to, dim=1)
        ).sum(1)
        if cats:
            names_from = _top(clong[rows], cfg.names)
            names_to = _top(crun[rows] / c_run[rows, None], cfg.names)
        else:
            names_from = _nearest(frm, space.vectors, cfg.names)
            names_to = _nearest(to, space.vectors, cfg.names)
        seen = stat[rows, _SEEN]
        entry = torch.cat(
            [
                torch.stack(
                    [
                        seen,
                        torch.from_numpy(np.asarray(timestamps, dtype=np.int64))[rows].double(),
                        score,
                        seen - c_run[rows] + 1,
                    ],
                    1,
                ),
                names_from,
                names_to,
            ],
            1,
        )
        log[rows] = torch.cat([entry[:, None, :], log[rows, :-1]], 1)
        long[rows] = to
        n2[rows] = c_run[rows]
        if cats:
            clong[rows] = crun[rows] / c_run[rows, None]
            crun[rows] = 0.0
        run[rows] = 0.0
        c_new[rows] = 0.0
        s_new[rows] = 0.0
        stat[rows, _COUNT] += 1
    stat[:, _S], stat[:, _N], stat[:, _C] = s_new, n2, c_new
    stat[:, _SEEN] += 1
    out = {**state, "shift.long": long, "shift.run": run, "shift.stat": stat, "shift.log": log}
    if cats:
        out["shift.cat_long"], out["shift.cat_run"] = clong, crun
    return out, alarm


def _top(shares: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the `n` largest shares per row (-1 where the share is 0)."""
    k = min(n, shares.shape[1])
    val, idx = torch.topk(shares, k, dim=1)
    idx = torch.where(val > 0, idx.double(), torch.full_like(val, -1.0))
    if k < n:
        idx = torch.cat([idx, torch.full((idx.shape[0], n - k), -1.0, dtype=torch.float64)], 1)
    return idx


def _nearest(mean: torch.Tensor, vectors: torch.Tensor, n: int) -> torch.Tensor:
    """The `n` catalogue items nearest (cosine) each row's mean vector (padding never)."""
    sims = torch.nn.functional.normalize(mean, dim=1) @ vectors.T
    sims[:, 0] = -torch.inf
    return torch.topk(sims, min(n, sims.shape[1] - 1), dim=1).indices.double()


def read_shifts(
    state: Mapping[str, torch.Tensor], row: int, space: ShiftSpace, cfg: ShiftConfig
) -> list[Shift]:
    """The shifts recorded in row `row` of a detector state, newest first."""
    log = state["shift.log"][row]
    out = []
    for e in log.tolist():
        if e[_IDX] < 0:
            break
        names = [int(v) for v in e[_HEAD:]]
        frm = tuple(space.names[i] for i in names[: cfg.names] if i >= 0)
        to = tuple(space.names[i] for i in names[cfg.names :] if i >= 0)
        out.append(Shift(int(e[_IDX]), int(e[_TS]), float(e[_SCORE]), int(e[_START]), frm, to))
    return out


def shift_counts(state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """[B] shifts detected so far per row."""
    return state["shift.stat"][:, _COUNT]


def events_since_shift(state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """[B] events consumed since the last shift (inf where none)."""
    last = state["shift.log"][:, 0, _IDX]
    seen = state["shift.stat"][:, _SEEN]
    return torch.where(last >= 0, seen - 1 - last, torch.full_like(last, torch.inf))


def lean_weights(state: Mapping[str, torch.Tensor], cal: ShiftCalibration) -> torch.Tensor:
    """[B] the lean's weight per state (0: its scores are the model's own)."""
    since = events_since_shift(state)
    return (cal.lean * (1.0 - since / cal.config.lean_events)).clamp(min=0.0)


def lean_scores(
    scores: torch.Tensor, state: Mapping[str, torch.Tensor], space: ShiftSpace, cal: ShiftCalibration
) -> torch.Tensor:
    """`scores` [B, n_items] leaning on the new interest for `lean_events` events after a shift
    (in place on the rows concerned; returned)."""
    if cal.lean <= 0:
        return scores
    w = lean_weights(state, cal)
    rows = torch.nonzero(w > 0).squeeze(1)
    if rows.numel() == 0:
        return scores
    sims = (torch.nn.functional.normalize(state["shift.long"][rows], dim=1) @ space.vectors.T).float()
    sims = (sims - sims[:, 1:].mean(1, keepdim=True)) / sims[:, 1:].std(1, keepdim=True).clamp(min=1e-9)
    sub = scores[rows]
    finite = torch.isfinite(sub)
    spread = torch.where(finite, sub, torch.zeros_like(sub))
    cnt = finite.sum(1).clamp(min=2)
    mean = spread.sum(1) / cnt
    std = (((spread - mean[:, None]) * finite).pow(2).sum(1) / (cnt - 1)).sqrt()
    sub = sub + (w[rows] * std.double()).float()[:, None] * sims
    scores[rows] = sub
    return scores


# ---- calibration --------------------------------------------------------------------------------


def run_histories(
    histories: Sequence[IntArray],
    space: ShiftSpace,
    cal: ShiftCalibration,
    timestamps: Sequence[IntArray] | None = None,
    *,
    distances: list[npt.NDArray[np.float64]] | None = None,
    probes: tuple[np.random.Generator, IntArray, list[torch.Tensor]] | None = None,
    alarms: list[tuple[IntArray, int]] | None = None,
    runs: list[tuple[IntArray, IntArray, int]] | None = None,
) -> dict[str, torch.Tensor]:
    """Detector states after each history (valid item indices > 0), time steps batched across
    users: row b's state equals stepping its events one at a time.

    Calibration: `distances` receives the distance of every event past the warm-up that is not
    part of a run ending in a shift (the user's everyday behaviour, as the detector sees it);
    `probes` (a generator, a pool of item indices, a list) receives, at every such step, the
    distance of an item drawn from the pool to the same long-term interest. `alarms` receives, per
    time step with shifts, the histories' indices and the step (0-based event position); `runs` the
    same with the position where each shift's run began: (indices, starts, step)."""
    b = len(histories)
    state = init_shift_state(b, space, cal.config)
    lens = np.array([len(h) for h in histories], dtype=np.int64)
    if b == 0 or lens.max(initial=0) == 0:
        return state
    order = np.argsort(-lens, kind="stable")  # longest first: the rows still active are a prefix
    mat = np.zeros((b, int(lens.max())), dtype=np.int64)
    tmat = np.zeros_like(mat)
    for r, j in enumerate(order):
        mat[r, : lens[j]] = histories[j]
        if timestamps is not None:
            tmat[r, : lens[j]] = timestamps[j]
    state = {k: v[torch.from_numpy(order)] for k, v in state.items()}
    sorted_lens = lens[order]
    seen = np.full(mat.shape, np.nan) if distances is not None else None
    for t in range(mat.shape[1]):
        m = int((sorted_lens > t).sum())
        part = {k: v[:m] for k, v in state.items()}
        if seen is not None or probes is not None:
            warm = (part["shift.stat"][:, _N] < cal.config.warmup).numpy()
            long = torch.nn.functional.normalize(part["shift.long"], dim=1)
        if seen is not None:
            u = space.vectors.index_select(0, torch.from_numpy(mat[:m, t]))
            seen[:m, t] = np.where(warm, np.nan, (1.0 - (u * long).sum(1)).numpy())
        run_before = part["shift.stat"][:, _C].numpy().astype(np.int64)
        if probes is not None:
            rng, pool, out = probes
            other = space.vectors.index_select(0, torch.from_numpy(rng.choice(pool, m)))
            out.append((1.0 - (other * long).sum(1))[torch.from_numpy(~warm)])
        part, hit = step_shifts(part, mat[:m, t], tmat[:m, t], space, cal)
        if bool(hit.any()):
            rows = np.flatnonzero(hit.numpy())
            if alarms is not None:
                alarms.append((order[rows], t))
            if runs is not None:
                runs.append((order[rows], t - run_before[rows], t))
            if seen is not None:
                for r in rows.tolist():  # the run that made the shift: the new interest, not noise
                    seen[r, t - int(run_before[r]) : t + 1] = np.nan
        for k, v in state.items():  # the active rows are a prefix: write them back in place
            v[:m] = part[k]
    if distances is not None and seen is not None:
        distances.append(seen[~np.isnan(seen)])
    inverse = np.empty_like(order)
    inverse[order] = np.arange(b)
    return {k: v[torch.from_numpy(inverse)] for k, v in state.items()}


# ---- the detector beside a model's state ----------------------------------------------------------


@dataclass(frozen=True)
class ShiftDetector:
    """A calibrated detector in a space: what `ShiftAdapter` and the callers that name shifts need."""

    space: ShiftSpace
    calibration: ShiftCalibration

    @property
    def config(self) -> ShiftConfig:
        return self.calibration.config

    def init(
        self, histories: Sequence[IntArray], timestamps: Sequence[IntArray] | None = None
    ) -> dict[str, torch.Tensor]:
        """States after each history (valid item indices > 0, time order)."""
        return run_histories(histories, self.space, self.calibration, timestamps)

    def step(
        self, state: dict[str, torch.Tensor], items: IntArray, timestamps: IntArray
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return step_shifts(state, items, timestamps, self.space, self.calibration)

    def shifts(self, state: Mapping[str, torch.Tensor], row: int = 0) -> list[Shift]:
        return read_shifts(state, row, self.space, self.config)

    def lean(self, scores: torch.Tensor, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return lean_scores(scores, state, self.space, self.calibration)

    def leaning(self, state: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """[B] bool: the states whose scores `lean` changes."""
        return lean_weights(state, self.calibration) > 0
