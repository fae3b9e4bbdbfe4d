"""The shift detector riding along a model's per-user state.

`ShiftAdapter` wraps any `StateAdapter`: its state is the model's tensors plus the detector's
(``shift.*``, `dynrec.online.shifts.state_keys`), so everything that keeps, moves or persists
per-user states — the `OnlineRecommender`'s hot cache and `StateStore` checkpoints, the replay
engine's batches — carries the detector too: it is rebuilt from the history whenever the model's
state is (a restart without checkpoint, a new model version), and deleted with the user. Scores
are the model's, leaning on a fresh shift's new interest when the calibration says so
(`dynrec.online.shifts.lean_scores`).

`shift_space` picks the detector's space for a model (its unit item vectors, else its items'
categories) and `build_detector` calibrates one on histories.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from dynrec.data.query import QueryBatch
from dynrec.errors import DynrecError
from dynrec.models.base import Recommender
from dynrec.models.retrieval import unit_item_vectors
from dynrec.online.adapters import StateAdapter, StateBatch
from dynrec.online.interests import Categories
from dynrec.online.shift_calibration import calibrate
from dynrec.online.shifts import (
    DEFAULT_LEAN,
    Shift,
    ShiftCalibration,
    ShiftConfig,
    ShiftDetector,
    ShiftSpace,
    shift_counts,
)
from dynrec.online.store import StateStore
from dynrec.online.store.protocol import histories_of

IntArray = npt.NDArray[np.int64]

__all__ = [
    "ShiftAdapter",
    "build_detector",
    "recent_shifts",
    "shift_space",
    "split_shift_state",
    "stored_histories",
]

PREFIX = "shift."


def split_shift_state(state: StateBatch) -> tuple[StateBatch, StateBatch]:
    """(the model's tensors, the detector's)."""
    inner = {k: v for k, v in state.items() if not k.startswith(PREFIX)}
    return inner, {k: v for k, v in state.items() if k.startswith(PREFIX)}


def shift_space(model: Recommender, categories: Categories | None = None) -> ShiftSpace:
    """The model's unit item vectors (float64) when it has them, else its items' category rows
    (unit length); shifts are named by `categories` when they are real categories (tags, genres),
    else by item ids. `DynrecError` when the model has neither vectors nor categories."""
    assert model.item_vocab is not None
    named = categories is not None and categories.basis == "categories"
    rows = None
    names: Sequence[str] = ["<pad>", *model.item_vocab.ids]
    if named:
        assert categories is not None
        m = sp.csr_matrix(categories.matrix, dtype=np.float64)
        rows = torch.from_numpy(np.asarray(m.todense()))
        names = list(categories.names)
    vecs = unit_item_vectors(model)
    if vecs is not None:
        return ShiftSpace(vecs.double(), rows, names, "item vectors")
    if rows is None:
        raise DynrecError(
            f"{model.name} has no item vectors and its items no categories: no space to detect interest shifts in"
        )
    return ShiftSpace(torch.nn.functional.normalize(rows, dim=1), rows, names, "categories")


def build_detector(
    model: Recommender,
    histories: Sequence[IntArray],
    categories: Categories | None = None,
    config: ShiftConfig | None = None,
    *,
    calibration: ShiftCalibration | None = None,
) -> ShiftDetector:
    """A detector for `model`: `calibration` when given (e.g. a model directory's ``shifts.json``),
    else calibrated on `histories` (item indices of the model, time order) with the strategy weight
    `DEFAULT_LEAN` gives the model."""
    space = shift_space(model, categories)
    if calibration is None:  # the strategy's weight: the model family's measured default
        calibration = calibrate(histories, space, config).with_lean(DEFAULT_LEAN.get(model.name, 0.0))
    cal = calibration
    if cal.space != space.kind:
        raise DynrecError(f"shift calibration is for {cal.space}, the model gives {space.kind}")
    return ShiftDetector(space, cal)


def stored_histories(model: Recommender, store: StateStore) -> list[IntArray]:
    """Every stored user's history as the model's item indices (unknown items left out)."""
    assert model.item_vocab is not None
    out = []
    for h in histories_of(store, store.users()):
        q = model.item_vocab.lookup(h.items, policy="skip")
        out.append(q[q > 0])
    return out


def recent_shifts(detector: ShiftDetector, state: StateBatch, last: int | None = None) -> list[Shift]:
    """The shifts recorded in a one-user state (model tensors and detector's), oldest first;
    with `last`, only those flagged on the detector's last `last` events."""
    _, det = split_shift_state(state)
    found = detector.shifts(det)[::-1]
    if last is None:
        return found
    seen = int(det["shift.stat"][0, 3])
    return [s for s in found if s.event_index >= seen - last]


class ShiftAdapter(StateAdapter):
    """`inner`'s state + the detector's (module docstring)."""

    def __init__(self, inner: StateAdapter, detector: ShiftDetector) -> None:
        super().__init__(inner.model, inner.kind, inner.batch_dims)
        self.inner = inner
        self.detector = detector

    # -- the three operations -----------------------------------------------------------------
    def init(self, batch: QueryBatch) -> StateBatch:
        lens = batch.lengths
        hist = np.split(batch.items, np.cumsum(lens)[:-1]) if len(batch) else []
        ts = (
            np.split(batch.timestamps, np.cumsum(lens)[:-1])
            if batch.timestamps is not None and len(batch)
            else None
        )
        return {**self.inner.init(batch), **self.detector.init(hist, ts)}

    def step(self, state: StateBatch, items: IntArray, timestamps: IntArray) -> StateBatch:
        inner, det = split_shift_state(state)
        det, _ = self.detector.step(det, items, timestamps)
        return {**self.inner.step(inner, items, timestamps), **det}

    def step_(self, state: StateBatch, items: IntArray, timestamps: IntArray) -> StateBatch:
        inner, det = split_shift_state(state)
        det, _ = self.detector.step(det, items, timestamps)
        return {**self.inner.step_(inner, items, timestamps), **det}

    def score(self, state: StateBatch) -> torch.Tensor:
        inner, det = split_shift_state(state)
        return self.detector.lean(self.inner.score(inner), det)

    def query_embeddings(self, state: StateBatch) -> torch.Tensor | None:
        return self.inner.query_embeddings(split_shift_state(state)[0])

    def dot_rows(self, state: StateBatch) -> npt.NDArray[np.bool_]:
        """The rows the lean leaves alone (a leaning row's scores are no dot product)."""
        inner, det = split_shift_state(state)
        leaning: npt.NDArray[np.bool_] = self.detector.leaning(det).numpy()
        return self.inner.dot_rows(inner) & ~leaning

    def counts(self, state: StateBatch) -> torch.Tensor:
        """[B] shifts detected so far per row (a row's count grows when a step completed a shift)."""
        return shift_counts(state)

    # -- plumbing: the model's part by the inner adapter, the detector's along dim 0 -------------
    def select(self, state: StateBatch, idx: torch.Tensor | IntArray) -> StateBatch:
        inner, det = split_shift_state(state)
        return {**self.inner.select(inner, idx), **super().select(det, idx)}

    def assign(self, state: StateBatch, idx: torch.Tensor | IntArray, part: StateBatch) -> StateBatch:
        inner, det = split_shift_state(state)
        p_inner, p_det = split_shift_state(part)
        return {**self.inner.assign(inner, idx, p_inner), **super().assign(det, idx, p_det)}

    def assign_(self, state: StateBatch, idx: torch.Tensor | IntArray, part: StateBatch) -> StateBatch:
        inner, det = split_shift_state(state)
        p_inner, p_det = split_shift_state(part)
        return {**self.inner.assign_(inner, idx, p_inner), **super().assign_(det, idx, p_det)}

    def row_view(self, state: StateBatch, b: int) -> StateBatch:
        inner, det = split_shift_state(state)
        return {**self.inner.row_view(inner, b), **super().row_view(det, b)}

    def concat(self, states: Sequence[StateBatch]) -> StateBatch:
        parts = [split_shift_state(s) for s in states]
        return {**self.inner.concat([p[0] for p in parts]), **super().concat([p[1] for p in parts])}

    def unbatch(self, state: StateBatch, b: int) -> dict[str, torch.Tensor]:
        inner, det = split_shift_state(state)
        return {**self.inner.unbatch(inner, b), **super().unbatch(det, b)}

    def batch(self, rows: Sequence[dict[str, torch.Tensor]]) -> StateBatch:
        parts = [split_shift_state(r) for r in rows]
        if any(not p[1] for p in parts):
            raise DynrecError("a stored state without the shift detector's part")
        return {**self.inner.batch([p[0] for p in parts]), **super().batch([p[1] for p in parts])}

    def narrow(self, state: StateBatch, n: int) -> StateBatch:
        inner, det = split_shift_state(state)
        return {**self.inner.narrow(inner, n), **super().narrow(det, n)}

    def step_where(
        self, state: StateBatch, items: IntArray, timestamps: IntArray, mask: npt.NDArray[np.bool_]
    ) -> StateBatch:
        inner, det = split_shift_state(state)
        rows = np.flatnonzero(mask)
        if rows.size:
            part, _ = self.detector.step(super().select(det, rows), items[rows], timestamps[rows])
            det = super().assign(det, rows, part)
        return {**self.inner.step_where(inner, items, timestamps, mask), **det}

    def step_rows_(
        self, state: StateBatch, rows: IntArray, items: IntArray, timestamps: IntArray
    ) -> StateBatch:
        inner, det = split_shift_state(state)
        rows = np.asarray(rows, dtype=np.int64)
        if rows.size:
            part, _ = self.detector.step(super().select(det, rows), items, timestamps)
            ix = torch.from_numpy(rows)
            for k, v in det.items():
                v.index_copy_(0, ix, part[k])
        return {**self.inner.step_rows_(inner, rows, items, timestamps), **det}
