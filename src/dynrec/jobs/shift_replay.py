"""``dynrec shifts MODEL_DIR --events FILE``: the file's events replayed in time order through an
`OnlineRecommender` over an in-memory store in which every user the model trained on starts from
their training history (`dynrec.jobs.recommend.seed_store`, what ``dynrec store seed`` does), others
from an empty one; every interest shift the detector flags, with its position among that user's
events in the file.

Events of the file are replayed in the order the online state would take them if they arrived
sorted: a stable sort by timestamp (equal timestamps keep file order), each appended after the
user's training history (the online state takes a user's events in arrival order). Invalid rows
are reported by line and field and skipped (``strict``: the first one is an error); events whose
item the model does not know are counted and skipped (they cannot move the state).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dynrec.data.events import Event
from dynrec.data.io import read_events
from dynrec.errors import DynrecError
from dynrec.jobs.items import read_item_info
from dynrec.jobs.prepare import column_map
from dynrec.jobs.recommend import seed_store
from dynrec.jobs.shifts import shift_names
from dynrec.models.base import Recommender
from dynrec.online.interests import ItemInfo
from dynrec.online.session import OnlineRecommender
from dynrec.online.shift_calibration import load_calibration
from dynrec.online.shifts import Shift, ShiftCalibration, ShiftDetector
from dynrec.online.store import InMemoryStore

__all__ = ["ReplayedShift", "ShiftReplay", "replay_shifts"]

OBSERVE_CHUNK = 512
"""Events observed per `OnlineRecommender.observe` call while replaying a file."""


# ---- dynrec shifts ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayedShift:
    """One shift flagged while replaying a file: `event_index` is the 0-based position, among the
    user's events in the file in time order, of the event after which it was flagged; `from_` /
    `to` name the interests before and after (categories, or representative titles)."""

    user_id: str
    event_index: int
    timestamp: int
    score: float
    from_: tuple[str, ...]
    to: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "event_index": self.event_index,
            "timestamp": self.timestamp,
            "score": round(self.score, 6),
            "from": list(self.from_),
            "to": list(self.to),
        }


@dataclass(frozen=True)
class ShiftReplay:
    """What `replay_shifts` found: every shift in the order flagged, the file's users and valid
    events, the events skipped for an unknown item, the rows rejected (invalid; their first few
    as ``FILE:LINE: field 'F': reason``) and dropped (exact duplicates), the users who started
    from their training history, where the calibration came from (``"shifts.json"`` or
    ``"training histories"``) and the detector's space."""

    shifts: list[ReplayedShift]
    n_users: int
    n_events: int
    n_unknown_items: int
    n_invalid_rows: int
    n_duplicate_rows: int
    n_seeded_users: int
    calibration: str
    space: str
    invalid: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default=())
    """What the caller should tell the user (no training history, a calibration made now)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "shifts": [s.to_json() for s in self.shifts],
            "n_users": self.n_users,
            "n_events": self.n_events,
            "n_unknown_items": self.n_unknown_items,
            "n_invalid_rows": self.n_invalid_rows,
            "n_duplicate_rows": self.n_duplicate_rows,
            "n_seeded_users": self.n_seeded_users,
            "calibration": self.calibration,
            "space": self.space,
        }


def replay_shifts(
    model_dir: str | Path,
    events_file: str | Path,
    *,
    strict: bool = False,
    columns: str | None = None,
    data_dir: str | Path | None = None,
) -> ShiftReplay:
    """Replay `events_file` through the online state of the model at `model_dir` and collect the
    interest shifts it flags (see the module docstring). The calibration is the directory's
    ``shifts.json``, else one made now on the training histories (said in `ShiftReplay.notes`)."""
    src = Path(model_dir)
    events = read_events(Path(events_file), strict=strict, columns=column_map(columns)).sorted()
    model = Recommender.load(src)
    assert model.item_vocab is not None
    info = read_item_info(src)
    store = InMemoryStore()
    notes: list[str] = []
    try:
        seed_store(src, store, data_dir=data_dir)
    except DynrecError as exc:
        notes.append(f"no training history ({exc}): every user starts from an empty history")
    seeded = len(store.users())
    online = OnlineRecommender(model, store, item_info=info)
    detector, source = _detector(online, load_calibration(src), notes)
    frame = events.frame
    users: list[str] = frame["user_id"].to_list()
    items: list[str] = frame["item_id"].to_list()
    stamps: list[int] = frame["timestamp"].to_list()
    types: list[str] = frame["event_type"].to_list()
    known = model.item_vocab.lookup(items, policy="skip") > 0
    position: dict[str, int] = {}  # events of the user in the file so far
    consumed: dict[str, int] = {}  # events the user's detector had consumed before the file
    at: dict[str, list[int]] = {}  # file position of each known event of the user
    found: list[ReplayedShift] = []
    chunk: list[Event] = []
    per_user: dict[str, int] = {}
    limit = detector.config.log_size  # a user's shifts of one chunk all stay in their log
    for j, user in enumerate(users):
        pos = position.get(user, 0)
        position[user] = pos + 1
        if not known[j]:
            continue
        if user not in consumed:
            consumed[user] = int(
                (model.item_vocab.lookup(store.history(user).items, policy="skip") > 0).sum()
            )
        at.setdefault(user, []).append(pos)
        if len(chunk) >= OBSERVE_CHUNK or per_user.get(user, 0) >= limit:
            found += _observe(online, chunk, detector, consumed, at, info)
            chunk, per_user = [], {}
        chunk.append(Event(user, items[j], int(stamps[j]), types[j]))
        per_user[user] = per_user.get(user, 0) + 1
    found += _observe(online, chunk, detector, consumed, at, info)
    rep = events.report
    return ShiftReplay(
        shifts=found,
        n_users=len(position),
        n_events=len(events),
        n_unknown_items=int((~known).sum()),
        n_invalid_rows=rep.n_invalid,
        n_duplicate_rows=rep.exact_duplicates,
        n_seeded_users=seeded,
        calibration=source,
        space=detector.space.kind,
        invalid=tuple(str(r) for r in rep.invalid[:5]),
        notes=tuple(notes),
    )


def _detector(
    online: OnlineRecommender, saved: ShiftCalibration | None, notes: list[str]
) -> tuple[ShiftDetector, str]:
    """Detection turned on with the saved calibration, else one made on the store's (training)
    histories; (the detector, where its calibration came from)."""
    if saved is not None:
        try:
            return online.detect_shifts(saved), "shifts.json"
        except DynrecError as exc:
            notes.append(f"ignoring shifts.json ({exc})")
    else:
        notes.append("the model directory has no shifts.json")
    try:
        det = online.detect_shifts()
    except DynrecError as exc:
        raise DynrecError(f"cannot detect interest shifts with this model: {exc}") from None
    notes.append("calibrated the shift detector on the training histories")
    return det, "training histories"


def _observe(
    online: OnlineRecommender,
    chunk: list[Event],
    detector: ShiftDetector,
    consumed: Mapping[str, int],
    at: Mapping[str, list[int]],
    info: ItemInfo,
) -> list[ReplayedShift]:
    """Observe `chunk`; its shifts with their users' file positions. A `Shift.event_index` counts
    the events the user's detector consumed (training history included): minus those consumed
    before the file it is the index of the user's known event in the file."""
    if not chunk:
        return []
    out = []
    for user, shifts in online.observe(chunk).items():
        for s in shifts:
            out.append(_replayed(user, s, at[user][s.event_index - consumed[user]], detector, info))
    out.sort(key=lambda r: (r.timestamp, r.user_id, r.event_index))
    return out


def _replayed(user: str, s: Shift, pos: int, detector: ShiftDetector, info: ItemInfo) -> ReplayedShift:
    return ReplayedShift(
        user,
        pos,
        s.timestamp,
        s.score,
        tuple(shift_names(detector, s.from_, info)),
        tuple(shift_names(detector, s.to, info)),
    )
