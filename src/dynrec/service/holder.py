"""`ModelHolder`: one model version as a serving process holds it.

A holder is the model of one `VersionRecord` with what is derived from it: its `OnlineRecommender`
over the shared store (hot per-user states, under ``holder.lock``), the scoring copy and
approximate index of the settings' precision and ANN options, titles and item vectors. It is
never changed after it is built except through its session's hot states; a newer model version is
a new holder (`dynrec.service.follower.VersionFollower` swaps them).

The session detects interest shifts (`dynrec.online.shifts`) with the version's calibration
(``shifts.json``, saved with it by every writer of a model version). For a version without one it
uses the calibration this process used for an earlier version of the root (`shifts_fallback`: the
same lineage), else — for the version a process starts with (`calibrate`) — one made on the
store's histories now (a warning: processes that calibrate on different histories tag their
users' states differently and rebuild them). A version swapped in later never calibrates (that
costs seconds, and readers would wait on the swap): without a calibration it detects nothing until
a version with one is published (updates publish theirs). Detection is also off when the model has
no space to detect in (no item vectors nor categories: checked before any history is read) or too
few events.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from dynrec.data import registry
from dynrec.data.items import ItemMetadata
from dynrec.data.vocab import Vocabulary
from dynrec.errors import DynrecError
from dynrec.jobs.items import ItemInfo, read_item_info
from dynrec.jobs.provenance import from_meta
from dynrec.jobs.shifts import saved_calibration
from dynrec.models.base import Recommender
from dynrec.models.retrieval import AnnIndex, unit_item_vectors
from dynrec.online.session import OnlineRecommender
from dynrec.online.shift_state import shift_space
from dynrec.online.shifts import ShiftCalibration
from dynrec.online.store import StateStore
from dynrec.online.store.versions import VersionRecord

log = logging.getLogger(__name__)

__all__ = ["ModelHolder", "dataset_items", "metadata_info", "read_info"]


class ModelHolder:
    """One model version and what is derived from it (see the module docstring)."""

    def __init__(
        self,
        record: VersionRecord,
        model_dir: Path,
        model: Recommender,
        store: StateStore,
        *,
        metadata: ItemMetadata | None,
        cache_size: int,
        persist_every: int = 1,
        item_info: ItemInfo | None = None,
        scoring: Recommender | None = None,
        index: AnnIndex | None = None,
        shifts_fallback: ShiftCalibration | None = None,
        calibrate: bool = True,
    ) -> None:
        self.record = record
        self.model_dir = model_dir
        self.model = model
        self.scoring = scoring if scoring is not None else model
        """The model session recommendations are scored with (`model` or its reduced-precision copy)."""
        self.index = index
        """The approximate index over `scoring`'s item table (None = exact); stored users' live
        states are served through it too when `scoring` is the model itself (float32)."""
        self.metadata = metadata
        self.item_info: ItemInfo = {**(item_info or {}), **metadata_info(metadata)}
        """Titles and tags per item: the version directory's item_info.json, then the metadata. Its
        tags are the categories of the session's interests and of the profile route (one source)."""
        self.online = OnlineRecommender(
            model,
            store,
            item_metadata=metadata,
            item_info=self.item_info,
            cache_size=cache_size,
            persist_every=persist_every,
            index=index if self.scoring is model else None,  # an index over a reduced copy ranks its scores
        )
        self._detect_shifts(shifts_fallback, calibrate)
        self.lock = threading.Lock()
        """Guards the session's hot per-user states (observe, recommend, interests, delete)."""
        self.titles: dict[str, str] = {
            i: r["title"] for i, r in self.item_info.items() if isinstance(r.get("title"), str)
        }
        self._unit: torch.Tensor | None = None

    def _detect_shifts(self, fallback: ShiftCalibration | None, calibrate: bool) -> None:
        """Turn on the session's shift detection (see the module docstring)."""
        vid = self.record.id
        saved = saved_calibration(self.model_dir)
        why = "has no shifts.json"
        for cal in (saved, fallback):
            if cal is None:
                continue
            try:
                self.online.detect_shifts(cal)
            except DynrecError as exc:
                why = f"has no shifts.json for its space ({exc})"
                continue
            if cal is not saved:
                log.info("model version %s has no shifts.json: reusing an earlier version's", vid)
            return
        if not calibrate:
            log.warning(
                "model version %s %s: interest shifts are not detected until a version with one", vid, why
            )
            return
        try:
            shift_space(self.model, self.online.categories())  # no space: no histories to read
            self.online.detect_shifts()
        except DynrecError as exc:
            log.warning("model version %s %s: interest shifts are not detected (%s)", vid, why, exc)
            return
        log.warning(
            "model version %s %s: calibrated interest-shift detection on the store's histories", vid, why
        )

    @property
    def shift_calibration(self) -> ShiftCalibration | None:
        """The calibration the session detects shifts with (None: detection is off)."""
        det = self.online.shift_detector
        return None if det is None else det.calibration

    @property
    def version(self) -> str:
        """The model version id (the store's record id; the model's content fingerprint)."""
        return self.record.id

    @property
    def item_vocab(self) -> Vocabulary:
        assert self.model.item_vocab is not None
        return self.model.item_vocab

    def title(self, item: str) -> str | None:
        return self.titles.get(item)

    def unit_vectors(self) -> torch.Tensor | None:
        """L2-normalised item vectors of an `ItemEmbeddings` model (None otherwise)."""
        if self._unit is None:
            self._unit = unit_item_vectors(self.model)
        return self._unit


def metadata_info(metadata: ItemMetadata | None) -> ItemInfo:
    """Titles and genres (as tags) of item metadata, in the form of ``item_info.json``."""
    if metadata is None:
        return {}
    f = metadata.frame
    return {
        str(i): {"title": None if t is None else str(t), "tags": [str(g) for g in (gs or [])]}
        for i, t, gs in zip(f["item_id"].to_list(), f["title"].to_list(), f["genres"].to_list(), strict=True)
    }


def read_info(model_dir: str | Path) -> ItemInfo:
    """The model directory's item_info.json, best effort ({} when missing or damaged)."""
    try:
        return read_item_info(model_dir)
    except (DynrecError, OSError) as exc:
        log.warning("ignoring the item_info.json of a model version: %s", exc)
        return {}


def dataset_items(model: Recommender) -> ItemMetadata | None:
    """Item metadata of the model's registered dataset, when the data registry has it."""
    try:
        name = from_meta(model.meta).dataset
    except DynrecError:
        name = None
    if name is None or name not in registry.DATASETS:
        return None
    try:
        return registry.load_items(name)
    except (DynrecError, OSError) as exc:
        log.info("no item metadata for %s: %s", name, exc)
        return None
