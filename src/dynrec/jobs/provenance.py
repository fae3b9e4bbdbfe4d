"""Training provenance: what a saved model was built from, so later jobs can check it.

A model trained by `dynrec.jobs.train` records (``meta["provenance"]`` in its ``config.json``):

* the dataset (a registered name, or the *absolute* path of an event file) and the absolute
  location of the file that was read, plus the ``--columns`` spec used to read it;
* a content hash of the events (`events_hash`): SHA-256 over the canonical event arrays (user id,
  item id, timestamp, event type, value) in each user's time order, so it does not depend on file
  formatting (CSV vs TSV, column order, quoting) but changes whenever the content does — including
  a changed order of a user's events with equal or order-only timestamps;
* the split (kind and cut) and a hash of its test targets (user, item, timestamp);
* every event file it was later resumed on, with its hash and how many of its events are
  validation/test targets of the recorded split.

`evaluate` refuses a model whose data changed since training or whose training included test
targets; `recommend --user` and `seed_store` use the training history this record describes.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any, get_args

import numpy as np
import polars as pl

from dynrec.data.dataset import InteractionData
from dynrec.data.events import EventLog
from dynrec.errors import DynrecError
from dynrec.preprocessing.split import EvalSet, SplitKind

__all__ = [
    "PROVENANCE_KEY",
    "Provenance",
    "ResumedFile",
    "ServedEvents",
    "count_targets",
    "events_hash",
    "from_meta",
    "target_frame",
    "targets_hash",
]

PROVENANCE_KEY = "provenance"
"""Key of the record in a model's ``meta`` (saved in ``config.json``)."""

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ResumedFile:
    """An event file a model was resumed (warm-started) on."""

    path: str  # absolute
    events_hash: str
    n_events: int
    n_test_targets: int = 0  # events equal to a test target (user, item, timestamp) of the split
    n_valid_targets: int = 0  # ... to a validation target
    columns: str | None = None  # the --columns spec used to read it


@dataclass(frozen=True)
class ServedEvents:
    """Events a served model version learned (an update on the events the service ingested)."""

    version: str  # the model version that learned them
    events_hash: str
    n_events: int
    n_test_targets: int = 0  # events equal to a test target (user, item, timestamp) of the split
    n_valid_targets: int = 0

    @property
    def path(self) -> str:
        """How `evaluate`'s refusal names it."""
        return f"served events learned by model version {self.version}"


@dataclass(frozen=True)
class Provenance:
    """What a model was trained on (see the module docstring)."""

    dataset: str  # registered name, or the absolute path of the event file
    location: str  # absolute path of the file read
    events_hash: str
    n_events: int
    split: SplitKind
    split_cut: int | None
    test_hash: str
    n_test: int
    columns: str | None = None  # the --columns spec used to read the file, if any
    resumes: tuple[ResumedFile, ...] = field(default=())
    served: tuple[ServedEvents, ...] = field(default=())
    version: int = FORMAT_VERSION

    @property
    def short_hash(self) -> str:
        return self.events_hash[:12]

    def with_resume(self, entry: ResumedFile) -> Provenance:
        return replace(self, resumes=(*self.resumes, entry))

    def with_served(self, entry: ServedEvents) -> Provenance:
        return replace(self, served=(*self.served, entry))

    def leaked(self) -> list[ResumedFile | ServedEvents]:
        """Resumed files and served events holding test targets of the recorded split."""
        files: list[ResumedFile | ServedEvents] = [r for r in self.resumes if r.n_test_targets > 0]
        return files + [s for s in self.served if s.n_test_targets > 0]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["resumes"] = [asdict(r) for r in self.resumes]
        if self.served:  # absent when empty: the record stays readable by releases before it
            d["served"] = [asdict(r) for r in self.served]
        else:
            del d["served"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "config.json") -> Provenance:
        if not isinstance(d, dict):
            raise DynrecError(f"{source}: 'provenance' must be an object, got {type(d).__name__}")
        names = {f for f in cls.__dataclass_fields__}
        unknown = set(d) - names
        missing = {"dataset", "location", "events_hash", "n_events", "split", "test_hash", "n_test"} - set(d)
        if unknown or missing:
            raise DynrecError(
                f"{source}: 'provenance' has unknown field(s) {sorted(unknown)} / lacks {sorted(missing)}; "
                f"fields: {sorted(names)}"
            )
        version = int(d.get("version", FORMAT_VERSION))
        if version > FORMAT_VERSION:
            raise DynrecError(
                f"{source}: provenance version {version} is newer than this dynrec understands "
                f"({FORMAT_VERSION}); upgrade dynrec"
            )
        if d["split"] not in get_args(SplitKind):
            raise DynrecError(
                f"{source}: provenance split {d['split']!r} is not one of {', '.join(get_args(SplitKind))}"
            )
        try:
            resumes = tuple(ResumedFile(**r) for r in d.get("resumes", []))
            served = tuple(ServedEvents(**r) for r in d.get("served", []))
        except TypeError as exc:
            raise DynrecError(
                f"{source}: bad 'provenance.resumes' or 'provenance.served' entry: {exc}"
            ) from exc
        return cls(**{**d, "resumes": resumes, "served": served, "version": version})


def from_meta(meta: dict[str, Any], *, source: str = "config.json") -> Provenance | None:
    """The model's provenance, or None for models saved before provenance was recorded."""
    raw = meta.get(PROVENANCE_KEY)
    return None if raw is None else Provenance.from_dict(raw, source=source)


# ---- hashing ------------------------------------------------------------------------------------


def _update_strings(h: Any, s: pl.Series) -> None:
    """Length-prefixed UTF-8 strings (no separator can collide with an id's content)."""
    s = s.cast(pl.String).fill_null("")
    h.update(s.str.len_bytes().cast(pl.Int64).to_numpy().astype("<i8").tobytes())
    step = 1 << 20  # in slices (SHA-256 streams): memory stays bounded on 10M-row logs
    for a in range(0, s.len(), step):
        h.update("".join(s.slice(a, step).to_list()).encode("utf-8"))


def events_hash(log: EventLog) -> str:
    """SHA-256 of the canonical event arrays: each user's events in (timestamp, source row) order —
    the order every model sees — as user ids, item ids, timestamps, event types and values.

    Independent of the file's format and of how users' events interleave; any change of ids,
    times, types, values, or of the order of a user's events, changes it."""
    f = log.frame.sort(["user_id", "timestamp", "row"])
    h = hashlib.sha256()
    h.update(f"dynrec-events-v1 n={f.height} time={int(log.has_time)}\n".encode())
    _update_strings(h, f["user_id"])
    _update_strings(h, f["item_id"])
    h.update(f["timestamp"].cast(pl.Int64).to_numpy().astype("<i8").tobytes())
    _update_strings(h, f["event_type"])
    h.update(f["value"].cast(pl.Float64).fill_null(float("nan")).to_numpy().astype("<f8").tobytes())
    return h.hexdigest()


def target_frame(data: InteractionData, es: EvalSet) -> pl.DataFrame:
    """The targets of `es` as external (user_id, item_id, timestamp) rows."""
    return pl.DataFrame(
        {
            "user_id": data.user_vocab.to_ids(es.queries.users),
            "item_id": data.item_vocab.to_ids(es.targets),
            "timestamp": np.asarray(es.target_timestamps, dtype=np.int64),
        },
        schema={"user_id": pl.String, "item_id": pl.String, "timestamp": pl.Int64},
    )


def targets_hash(data: InteractionData, es: EvalSet) -> str:
    """SHA-256 of the sorted (user, item, timestamp) targets of `es`."""
    f = target_frame(data, es).sort(["user_id", "timestamp", "item_id"])
    h = hashlib.sha256()
    h.update(f"dynrec-targets-v1 n={f.height}\n".encode())
    _update_strings(h, f["user_id"])
    _update_strings(h, f["item_id"])
    h.update(f["timestamp"].to_numpy().astype("<i8").tobytes())
    return h.hexdigest()


def count_targets(log: EventLog | pl.DataFrame, targets: pl.DataFrame) -> int:
    """How many events of `log` (an event log, or a frame with user_id, item_id and timestamp
    columns) are one of `targets` (same user, item and timestamp)."""
    frame = log.frame if isinstance(log, EventLog) else log
    if frame.height == 0 or targets.height == 0:
        return 0
    keys = targets.unique()
    hit = frame.select("user_id", "item_id", "timestamp").join(
        keys, on=["user_id", "item_id", "timestamp"], how="semi"
    )
    return int(hit.height)
