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
from dynrec.online.shift_step import (
    LOG_HEAD,
    LOG_INDEX,
    LOG_SCORE,
    LOG_START,
    LOG_TS,
    STAT_COUNT,
    STAT_N,
    STAT_RUN,
    STAT_SEEN,
    step_arrays,
    unit_rows,
)

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
        "shift.log": torch.full((batch, cfg.log_size, LOG_HEAD + 2 * cfg.names), -1.0, dtype=torch.float64),
    }
    if c:
        out["shift.cat_long"] = torch.zeros(batch, c, dtype=torch.float64)
        out["shift.cat_run"] = torch.zeros(batch, c, dtype=torch.float64)
    return out


def step_shifts(
    state: dict[str, torch.Tensor],
    items: IntArray,
    timestamps: IntArray,
    space: ShiftSpace,
    cal: ShiftCalibration,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every row consumes one event (``items`` valid indices > 0); returns the new state (the
    input is not modified) and a bool mask of the rows whose event completed a shift. The step
    itself runs on numpy views of the tensors (`dynrec.online.shift_step`)."""
    arrays = {k: v.numpy() for k, v in state.items()}
    its = np.asarray(items, dtype=np.int64)
    out, alarm = step_arrays(arrays, its, np.asarray(timestamps, dtype=np.int64), space, cal)
    kept = {k for k, v in out.items() if v is arrays.get(k)}  # unchanged: the caller's own tensor
    return {k: state[k] if k in kept else torch.from_numpy(v) for k, v in out.items()}, torch.from_numpy(
        alarm
    )


def read_shifts(
    state: Mapping[str, torch.Tensor], row: int, space: ShiftSpace, cfg: ShiftConfig
) -> list[Shift]:
    """The shifts recorded in row `row` of a detector state, newest first."""
    log = state["shift.log"][row]
    out = []
    for e in log.tolist():
        if e[LOG_INDEX] < 0:
            break
        names = [int(v) for v in e[LOG_HEAD:]]
        frm = tuple(space.names[i] for i in names[: cfg.names] if i >= 0)
        to = tuple(space.names[i] for i in names[cfg.names :] if i >= 0)
        out.append(Shift(int(e[LOG_INDEX]), int(e[LOG_TS]), float(e[LOG_SCORE]), int(e[LOG_START]), frm, to))
    return out


def shift_counts(state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """[B] shifts detected so far per row."""
    return state["shift.stat"][:, STAT_COUNT]


def events_since_shift(state: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """[B] events consumed since the last shift (inf where none)."""
    last = state["shift.log"][:, 0, LOG_INDEX]
    seen = state["shift.stat"][:, STAT_SEEN]
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
    arrays = {k: v.numpy()[order] for k, v in state.items()}
    sorted_lens = lens[order]
    vectors = space.vectors.numpy()
    seen = np.full(mat.shape, np.nan) if distances is not None else None
    for t in range(mat.shape[1]):
        m = int((sorted_lens > t).sum())
        part = {k: v[:m] for k, v in arrays.items()}
        if seen is not None or probes is not None:
            warm = part["shift.stat"][:, STAT_N] < cal.config.warmup
            long = unit_rows(part["shift.long"])
        if seen is not None:
            seen[:m, t] = np.where(warm, np.nan, 1.0 - (vectors[mat[:m, t]] * long).sum(1))
        run_before = part["shift.stat"][:, STAT_RUN].astype(np.int64)
        if probes is not None:
            rng, pool, out = probes
            other = vectors[rng.choice(pool, m)]
            out.append(torch.from_numpy((1.0 - (other * long).sum(1))[~warm]))
        new, hit = step_arrays(part, mat[:m, t], tmat[:m, t], space, cal)
        if hit.any():
            rows = np.flatnonzero(hit)
            if alarms is not None:
                alarms.append((order[rows], t))
            if runs is not None:
                runs.append((order[rows], t - run_before[rows], t))
            if seen is not None:
                for r in rows.tolist():  # the run that made the shift: the new interest, not noise
                    seen[r, t - int(run_before[r]) : t + 1] = np.nan
        for k, v in arrays.items():  # the active rows are a prefix: write them back in place
            if new[k] is not part[k]:
                v[:m] = new[k]
    if distances is not None and seen is not None:
        distances.append(seen[~np.isnan(seen)])
    inverse = np.empty_like(order)
    inverse[order] = np.arange(b)
    return {k: torch.from_numpy(v[inverse]) for k, v in arrays.items()}


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
