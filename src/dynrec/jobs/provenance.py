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

`Lineage` is what jobs read of a saved model's data: this record, or for a model trained for a
streaming replay (`dynrec.jobs.replay.fit_for_replay`, ``meta["replay_fit"]``) its dataset and
replay protocol. `from_meta` is the one reader of a model's ``meta`` for these facts, including
the loose keys that releases before provenance wrote (``dataset``, ``split``, ``split_cut``,
``replay_protocol``, ``update_files``); `Lineage.write_to` the one writer.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, get_args

import numpy as np
import polars as pl

from dynrec.data.dataset import InteractionData
from dynrec.data.events import EventLog
from dynrec.errors import DynrecError
from dynrec.preprocessing.split import EvalSet, SplitKind

__all__ = [
    "LEGACY_KEYS",
    "PROVENANCE_KEY",
    "REPLAY_KEY",
    "Lineage",
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

REPLAY_KEY = "replay_fit"
"""Key of a replay model's ``{"dataset", "protocol"}`` in its ``meta``."""

LEGACY_KEYS = ("dataset", "split", "split_cut", "replay_protocol", "update_files")
"""The loose ``meta`` keys releases before `Lineage` wrote (read by `from_meta` only)."""

TrainedSplit = Literal["loo", "time", "replay"]
"""How a model's data was split: a `SplitKind`, or ``"replay"`` (the pre-cut events of a replay)."""

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


@dataclass(frozen=True)
class Lineage:
    """What a saved model says about the data it learned from, read from its ``meta`` by
    `from_meta` (whichever release saved it) and written there by `write_to`.

    A model trained by `dynrec.jobs.train` has a `provenance` (content hashes, split, resumes),
    from which `dataset`, `split` and `split_cut` come. A model trained for a replay has
    ``split == "replay"`` and its `replay_protocol`. A model saved before provenance was recorded
    has only what its loose keys said (content never hashed), and the event files it was resumed
    on then (`legacy_updates`). A model that records nothing has every field empty."""

    dataset: str | None = None  # registered name, or the absolute path of the event file
    split: TrainedSplit | None = None
    split_cut: int | None = None
    provenance: Provenance | None = None
    replay_protocol: str | None = None
    legacy_updates: tuple[str, ...] = ()

    @classmethod
    def trained(cls, provenance: Provenance) -> Lineage:
        """The lineage of a model trained on a recorded split."""
        return cls(provenance.dataset, provenance.split, provenance.split_cut, provenance)

    @classmethod
    def replay(cls, dataset: str, protocol: str) -> Lineage:
        """The lineage of a model trained on the pre-cut events of `dataset`'s replay `protocol`."""
        return cls(dataset, "replay", replay_protocol=protocol)

    def with_resume(self, entry: ResumedFile) -> Lineage:
        """This lineage after a resume on `entry`'s file: recorded in the provenance, or (a model
        without one, whose data was never hashed) appended to `legacy_updates`."""
        if self.provenance is not None:
            return Lineage.trained(self.provenance.with_resume(entry))
        return replace(self, legacy_updates=(*self.legacy_updates, entry.path))

    def to_meta(self) -> dict[str, Any]:
        """The ``meta`` entries of this lineage: the provenance record, the replay record, or (a
        model saved before provenance, rewritten by a resume) the loose keys it was read from."""
        if self.provenance is not None:
            return {PROVENANCE_KEY: self.provenance.to_dict()}
        if self.replay_protocol is not None and self.dataset is not None and not self.legacy_updates:
            return {REPLAY_KEY: {"dataset": self.dataset, "protocol": self.replay_protocol}}
        loose: dict[str, Any] = {
            "dataset": self.dataset,
            "split": self.split,
            "split_cut": self.split_cut,
            "replay_protocol": self.replay_protocol,
            "update_files": list(self.legacy_updates) or None,
        }
        return {k: v for k, v in loose.items() if v is not None}

    def write_to(self, meta: dict[str, Any]) -> None:
        """Replace whatever `meta` recorded of the model's data with this lineage."""
        for key in (PROVENANCE_KEY, REPLAY_KEY, *LEGACY_KEYS):
            meta.pop(key, None)
        meta.update(self.to_meta())


def from_meta(meta: dict[str, Any], *, source: str = "config.json") -> Lineage:
    """The lineage a model's `meta` records (see `Lineage`): its provenance record, its replay
    record, or — a model saved by a release before provenance — the loose keys ``dataset``,
    ``split``, ``split_cut``, ``replay_protocol`` and ``update_files`` (read here only). A model
    with provenance also carries loose keys when an earlier release saved it; the record wins."""
    raw = meta.get(PROVENANCE_KEY)
    if raw is not None:
        return Lineage.trained(Provenance.from_dict(raw, source=source))
    fit = meta.get(REPLAY_KEY)
    if fit is not None:
        if not (
            isinstance(fit, dict)
            and set(fit) == {"dataset", "protocol"}
            and all(isinstance(v, str) for v in fit.values())
        ):
            raise DynrecError(
                f"{source}: {REPLAY_KEY!r} must be {{'dataset': str, 'protocol': str}}, got {fit!r}"
            )
        return Lineage.replay(fit["dataset"], fit["protocol"])
    return _legacy(meta, source)


def _legacy(meta: dict[str, Any], source: str) -> Lineage:
    """The lineage of a model saved before provenance was recorded, from its loose keys."""
    dataset, split, cut = meta.get("dataset"), meta.get("split"), meta.get("split_cut")
    protocol, updates = meta.get("replay_protocol"), meta.get("update_files") or []
    if dataset is not None and not isinstance(dataset, str):
        raise DynrecError(f"{source}: 'dataset' must be a string, got {dataset!r}")
    if split is not None and split not in get_args(TrainedSplit):
        raise DynrecError(f"{source}: split {split!r} is not one of {', '.join(get_args(TrainedSplit))}")
    if cut is not None and (isinstance(cut, bool) or not isinstance(cut, int)):
        raise DynrecError(f"{source}: 'split_cut' must be an integer, got {cut!r}")
    if protocol is not None and not isinstance(protocol, str):
        raise DynrecError(f"{source}: 'replay_protocol' must be a string, got {protocol!r}")
    if not isinstance(updates, list) or not all(isinstance(f, str) for f in updates):
        raise DynrecError(f"{source}: 'update_files' must be a list of paths, got {updates!r}")
    return Lineage(dataset, split, cut, None, protocol, tuple(updates))


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
