"""Interest shifts at the job level (`dynrec.online.shifts` is the detector).

`calibrate_for` makes the detector's calibration for a freshly trained or updated model on what it
learned from (each user's item indices in time order). Every writer of a model directory passes it
to `dynrec.jobs.model_root` (``save_model_dir`` / ``write_version_dir``), which saves it as
``shifts.json`` (`dynrec.online.shift_calibration.save_calibration`) next to the weights, so every process
serving the version detects shifts with the same constants; a writer that keeps the model's
vectors' meaning (items added) carries the saved one over (`saved_calibration`). `shift_names` names a shift's sides
for people (categories, or item titles). ``dynrec shifts`` is `dynrec.jobs.shift_replay`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt

from dynrec.data.dataset import InteractionData
from dynrec.data.items import ItemMetadata
from dynrec.errors import DynrecError
from dynrec.models.base import Recommender
from dynrec.online.interests import ItemInfo, item_categories
from dynrec.online.shift_calibration import load_calibration
from dynrec.online.shift_state import build_detector
from dynrec.online.shifts import ShiftCalibration, ShiftDetector

log = logging.getLogger(__name__)

__all__ = ["calibrate_for", "saved_calibration", "shift_names", "training_sequences"]

IntArray = npt.NDArray[np.int64]


def training_sequences(data: InteractionData) -> list[IntArray]:
    """Each user's item indices in time order (the per-user slices of `data`; users without
    events left out)."""
    lens = data.lengths()
    return [data.sequence(u) for u in range(1, data.n_users) if lens[u] > 0]


def calibrate_for(
    model: Recommender,
    data: InteractionData | None,
    item_info: ItemInfo | None = None,
    metadata: ItemMetadata | None = None,
) -> ShiftCalibration | None:
    """The shift detector's calibration for `model` on `data` (what it learned from, in its
    vocabulary), in the space an `OnlineRecommender` over the model with these item titles/tags
    and metadata detects in (`dynrec.online.shift_state.shift_space`). None, logged, when there is
    none to make: the model has no item vectors and its items no categories, or the histories are
    too short to calibrate on."""
    if data is None:
        log.warning("no interest-shift calibration for %s: its training history is not known", model.name)
        return None
    try:
        cats = item_categories(model, item_info=item_info, metadata=metadata)
        return build_detector(model, training_sequences(data), cats).calibration
    except DynrecError as exc:
        log.warning("no interest-shift calibration for %s: %s", model.name, exc)
        return None


def shift_names(detector: ShiftDetector, names: Sequence[str], item_info: ItemInfo) -> list[str]:
    """What a shift's side is named by: category names as they are; item ids (a space without
    categories names each side by its nearest items) as their titles where `item_info` has them."""
    if detector.space.n_cats:
        return list(names)
    out = []
    for n in names:
        title = item_info.get(n, {}).get("title")
        out.append(title if isinstance(title, str) and title else n)
    return out


def saved_calibration(model_dir: str | Path) -> ShiftCalibration | None:
    """The calibration saved in a model directory (``shifts.json``), best effort: None when there
    is none, and (logged) when it is unreadable."""
    try:
        return load_calibration(model_dir)
    except DynrecError as exc:
        log.warning("ignoring the shifts.json of %s: %s", Path(model_dir).name, exc)
        return None
